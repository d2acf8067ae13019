"""The evaluation that ends a run, and `danlu evaluate` of a saved one, for the kinds whose
examples are rows (tables, text, images, multimodal: `finish_rows`, `evaluate_rows`). The kinds'
hooks (danlu/kinds.py) name these; a language model's corpus has its own in danlu/lm/kind.py and
speech runs theirs in the speech package.

Each writes metrics.json, the predictions and report.md into the run folder (or, for another
file, under evaluations/<file stem>/) and returns the summary `danlu` prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from danlu import data as data_mod
from danlu.config import RunConfig
from danlu.data.tabular import TensorData, read_table
from danlu.errors import DanluError
from danlu.kinds import Trained
from danlu.predict import Predictor, prediction_frame
from danlu.run import RunDir
from danlu.training.trainer import evaluate_split


# --------------------------------------------------------------------------- rows
def finish_rows(t: Trained) -> dict[str, Any]:
    """After training: the saved model, rebuilt from the folder as `predict` will, on eval.split."""
    p = t.prepared
    if t.split not in p.splits:
        return {}
    predictor = Predictor(t.run, trust_code=t.trust_code)
    return _finish(t.run, t.cfg, predictor, p.splits[t.split], p.frames[t.split], t.split, t.cfg.eval.plots)


def evaluate_rows(
    run: RunDir, cfg: RunConfig, split: str, data: str | Path | None, plots: bool, trust_code: bool
) -> dict[str, Any]:
    """A saved run on one of its splits (re-read and re-split as in training) or on a file."""
    predictor = Predictor(run, trust_code)
    if data is not None:
        pre = predictor.preprocessor
        frame = pre.read(data) if hasattr(pre, "read") else read_table(data)  # images: folders too
        where, split = str(data), Path(data).name
    else:
        prepared = data_mod.build(cfg.data, predictor.schema.task, cfg.seed, cfg.model)
        if split not in prepared.frames:
            raise DanluError(
                f"--split {split}: this run has no '{split}' split; it has: {', '.join(prepared.frames)}"
            )
        frame, where = prepared.frames[split], f"{split} split"
    pre = predictor.preprocessor
    if hasattr(pre, "dataset"):  # sequences: their own batching
        tensors = pre.dataset(frame, where)
    else:
        tensors = TensorData(pre.transform(frame, where), pre.transform_target(frame, where))
    return _finish(run, cfg, predictor, tensors, frame, split, plots=plots, data=data)


def _finish(
    run: RunDir,
    cfg: RunConfig,
    predictor: Predictor,
    tensors: TensorData,
    frame: pd.DataFrame,
    split: str,
    plots: bool,
    data: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate the saved model on one split (or the file `data`) and write metrics.json,
    predictions, report."""
    task = predictor.task
    metrics, decoded = evaluate_split(predictor.model, task, tensors, torch.device("cpu"))
    metrics = _extra_metrics(cfg, task, tensors, decoded, metrics)
    summary = {"split": split, "rows": len(tensors), "task": task.kind, "metrics": metrics}
    if data is not None:  # another file: its results beside the run's own, not over them
        run = run.for_data(data)
        summary["data"] = str(Path(data).resolve())
    run.write_metrics(summary)

    preds = prediction_frame(predictor, decoded, proba=True)
    truth = frame[predictor.schema.targets].reset_index(drop=True)
    truth.columns = [f"true_{t}" if len(truth.columns) > 1 else "true" for t in truth.columns]
    from danlu import fileio

    with fileio.atomic_path(run.predictions) as tmp:
        pd.concat([truth, preds], axis=1).to_csv(tmp, index=False)

    from danlu.evaluation.report import write_report

    names = predictor.schema.class_names if task.kind == "classification" else predictor.schema.targets
    meta = run.read_model_json()
    details = {
        "run": run.path.name,
        "task": task.kind,
        "model": cfg.model.type,
        "loss": task.loss_name,
        "data": cfg.data.source or cfg.data.path or cfg.data.train or "",
        "rows (train/val/test)": "/".join(str(v) for v in meta.get("sizes", {}).values()),
        "best epoch": str(meta.get("best_epoch", "")),
    }
    write_report(
        run.report,
        run.plots,
        title=f"danlu run {run.path.name}" + (f" on {Path(data).name}" if data is not None else ""),
        task=task.kind,
        split=split,
        metrics=metrics,
        history=run.read_history(),
        steps=run.read_steps(),
        y_true=task.target(tensors.y),
        output=decoded,
        names=names,
        details=details,
        plots=plots,
    )
    return summary


def _extra_metrics(
    cfg: RunConfig, task: Any, data: TensorData, decoded: np.ndarray, metrics: dict[str, Any]
) -> dict[str, Any]:
    from danlu.registry import METRICS

    for name in cfg.eval.metrics:
        fn = METRICS.get(name)
        metrics[name.rpartition(":")[2]] = float(fn(task.target(data.y), decoded))
    return metrics
