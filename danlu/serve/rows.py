"""POST /v1/predict/{model} and GET /v1/models/{model} for runs of rows (tabular, text,
image, multimodal): rows in, what `danlu predict --proba` writes out, row by row.

    {"rows": [{"sepal_length": 5.1, ...}, ...]}
 -> {"model": "iris", "predictions": [{"label": "setosa", "probabilities": {"setosa": 0.97, ...}}]}

The rows come as JSON (above), as a CSV body (Content-Type text/csv) or a Parquet body
(application/vnd.apache.parquet), or, for a model with one image input, as a multipart
upload of image files (one row per file). An image field in a JSON row is the file's bytes in
base64 (or a data: URL); it is never a path: a request must not make the server read its own
files. Images are written to a temporary folder for the request and decoded as
`danlu predict` decodes files.

A classification row gets `label` (in the user's own label names) and `probabilities` (per
class); a regression row gets `value`, or `values` (per target) for several targets. Requests
are micro-batched (danlu/serve/batching.py): one forward pass for the rows of every request
that arrived within a few milliseconds, up to --max-batch rows.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

from danlu.serve.errors import APIError
from danlu.serve.models import Served, image_fields

TABLE_TYPES = {
    "text/csv": "csv",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
}


def table_rows(body: bytes, media: str) -> list[dict[str, Any]]:
    """A CSV or Parquet body -> rows (empty cells are missing values)."""
    import pandas as pd

    try:
        if TABLE_TYPES[media] == "csv":
            df = pd.read_csv(io.BytesIO(body))
        else:
            df = pd.read_parquet(io.BytesIO(body))
    except Exception as e:  # pandas' and pyarrow's parse errors
        reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise APIError(400, f"cannot read the {TABLE_TYPES[media]} body: {reason}", param="body") from None
    if df.empty:
        raise APIError(400, f"the {TABLE_TYPES[media]} body has no rows", param="body")
    return [{k: (None if _missing(v) else v) for k, v in row.items()} for row in df.to_dict("records")]


def _missing(v: Any) -> bool:
    return isinstance(v, float) and v != v  # NaN


def write_images(served: Served, rows: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """Rows whose image fields hold base64 (or data: URLs) -> rows naming files in `folder`."""
    fields = image_fields(served)
    if not fields:
        return rows
    out = []
    for i, row in enumerate(rows):
        row = dict(row)
        for name in fields:
            value = row.get(name)
            if not isinstance(value, str):
                raise APIError(400, f"rows[{i}].{name}: an image is given as base64 text (or a data: URL)",
                               param=f"rows[{i}].{name}")
            data = value.split(",", 1)[1] if value.startswith("data:") else value
            try:
                raw = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise APIError(400, f"rows[{i}].{name}: not base64; an image is given as its bytes in base64",
                               param=f"rows[{i}].{name}") from None
            path = folder / f"{i}-{name}"
            path.write_bytes(raw)
            row[name] = str(path)
        out.append(row)
    return out


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
    frame = pd.concat([predictor.frame(pd.DataFrame(rows)) for rows in batches], ignore_index=True)
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
