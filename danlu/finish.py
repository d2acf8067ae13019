"""The evaluation that ends a run, and `danlu evaluate` of a saved one, for the kinds whose
examples are rows (tables, text, images, multimodal: `finish_rows`, `evaluate_rows`) and for a
language model's corpus (`finish_corpus`, `evaluate_corpus`). The kinds' hooks (danlu/kinds.py)
name these; speech runs have theirs in danlu/speech_run.py.

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
from danlu import tasks
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


# --------------------------------------------------------------------------- corpus
def finish_corpus(t: Trained) -> dict[str, Any]:
    """After training a language model: its tokenizer.json, then loss and perplexity on val."""
    t.prepared.preprocessor.save(t.run.tokenizer)
    # the model is the last evaluation's when that was the best: its numbers stand
    history = t.result.history
    last = history[-1] if history else {}
    known = None
    if t.result.best_epoch == len(history) - 1 and "val.loss" in last:
        known = {"loss": last["val.loss"], "perplexity": last["val.perplexity"]}
    return _finish_lm(t.run, t.model, t.task, t.prepared.splits["val"], t.cfg.eval.plots, known)


def evaluate_corpus(
    run: RunDir, cfg: RunConfig, split: str, data: str | Path | None, plots: bool, trust_code: bool
) -> dict[str, Any]:
    return _evaluate_lm(run, cfg, split, data, plots)


def load_corpus(run_dir: str | Path, trust_code: bool = False) -> Any:
    """A language-model run predicts no rows: it generates text."""
    raise DanluError(
        f"{run_dir}: a language-model run generates text rather than predicting rows;"
        f" use danlu generate {run_dir} (or danlu.generate)"
    )


def _evaluate_lm(
    run: RunDir, cfg: RunConfig, split: str, data: str | Path | None, plots: bool
) -> dict[str, Any]:
    """A language-model run on its validation split (its own tokenizer, the same blocks
    as in training), or on a text file with a sliding window (--data)."""
    from danlu.data import text as text_mod
    from danlu.modelref import resolve_lm

    lm = resolve_lm(run.path, device="cpu")
    if data is not None:
        from danlu.evaluation.perplexity import read_text, text_perplexity

        metrics = text_perplexity(lm, read_text(data))
        return {"split": Path(data).name, "rows": metrics.pop("windows"), "task": cfg.task.type,
                "metrics": metrics}
    if split not in ("val", "test"):
        raise DanluError(f"--split {split}: a language-model run has a validation split only (val)")
    data_cfg = cfg.data.model_copy(update={"tokenizer": str(run.tokenizer)})
    schema, tokenizer, splits = text_mod.build(data_cfg, cfg.model.block_size, cfg.seed)
    task = tasks.build(cfg.task, schema, splits["train"].y, tokenizer)
    task.out_dim = lm.model.config.vocab_size
    return _finish_lm(run, lm.model, task, splits["val"], plots, None)


def _finish_lm(
    run: RunDir, model: Any, task: Any, val: TensorData, plots: bool, known: dict[str, float] | None
) -> dict[str, Any]:
    """Loss and perplexity over the whole validation split, a short report and curves."""
    from danlu import fileio
    from danlu.evaluation.report import plot_history

    metrics = known or evaluate_split(model, task, val, torch.device("cpu"))[0]
    summary = {"split": "val", "rows": len(val), "tokens": int(val.y.numel()), "task": task.kind,
               "metrics": metrics}
    run.write_metrics(summary)
    curve = plot_history(run.read_history(), run.plots / "history.png", run.read_steps()) if plots else None
    lines = [f"# danlu run {run.path.name}", "", "| metric (validation, all tokens) | value |",
             "| --- | ---: |", *(f"| {k} | {v:.4f} |" for k, v in metrics.items())]
    if curve:
        lines += ["", "![training history](plots/history.png)"]
    fileio.write_text(run.report, "\n".join(lines) + "\n")
    return summary
