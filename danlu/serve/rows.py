"""POST /v1/predict/{model} and GET /v1/models/{model} for runs of rows (tabular, text,
multimodal): JSON rows in, what `danlu predict --proba` writes out, row by row.

    {"rows": [{"sepal_length": 5.1, ...}, ...]}
 -> {"model": "iris", "predictions": [{"label": "setosa", "probabilities": {"setosa": 0.97, ...}}]}

A classification row gets `label` (in the user's own label names) and `probabilities` (per
class); a regression row gets `value`, or `values` (per target) for several targets. Requests
are micro-batched (danlu/serve/batching.py): one forward pass for the rows of every request
that arrived within a few milliseconds, up to --max-batch rows.
"""

from __future__ import annotations

from typing import Any

from danlu.serve.models import Served


def schema_card(served: Served) -> dict[str, Any]:
    """What GET /v1/models/{model} adds for a rows model: its inputs (the kind's
    describe_inputs hook), task and label names."""
    schema = served.model.schema
    card: dict[str, Any] = {"task": schema.task, "inputs": served.inputs}
    if schema.task == "classification":
        card["labels"] = [str(c) for c in schema.classes]
    else:
        card["targets"] = list(schema.targets)
    for field in _tabular_fields(served):  # categories: the values seen in training
        values = _categories(served.model.preprocessor, field["name"])
        if values is not None:
            field["categories"] = values
    return card


def _tabular_fields(served: Served) -> list[dict[str, Any]]:
    return [f for f in served.inputs or [] if f.get("type") == "category"]


def _categories(pre: Any, column: str) -> list[str] | None:
    for name in ("categories", "vocab", "levels"):
        table = getattr(pre, name, None)
        if isinstance(table, dict) and isinstance(table.get(column), list | dict):
            return [str(v) for v in table[column]]
    return None


def predict_rows(served: Served, batches: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """Several requests' rows through one forward pass; each request's answers."""
    import pandas as pd

    from danlu.predict import prediction_frame

    predictor = served.model
    frame = pd.concat([predictor.frame(rows) for rows in batches], ignore_index=True)
    out = prediction_frame(predictor, predictor.outputs(frame, "request"), proba=True)
    answers = [_answer(served, row) for row in out.to_dict(orient="records")]
    split, at = [], 0
    for rows in batches:
        split.append(answers[at : at + len(rows)])
        at += len(rows)
    return split


def _answer(served: Served, row: dict[str, Any]) -> dict[str, Any]:
    schema = served.model.schema
    if schema.task == "classification":
        proba = {str(name): float(row[f"proba_{name}"]) for name in schema.class_names}
        label = row["prediction"]
        return {"label": label.item() if hasattr(label, "item") else label, "probabilities": proba}
    if "prediction" in row:
        return {"value": float(row["prediction"])}
    return {"values": {t: float(row[f"prediction_{t}"]) for t in schema.targets}}
