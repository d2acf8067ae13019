"""train / evaluate: the same functions the CLI calls.

train: config -> data.build -> tasks.build -> models.build -> trainer.fit -> run folder,
then the final evaluation (metrics.json, predictions.csv, report.md, plots).
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from danlu import config as config_mod
from danlu import data as data_mod
from danlu import models, registry, tasks
from danlu.config import RunConfig
from danlu.data import text as text_mod
from danlu.data.tabular import TensorData, read_table
from danlu.errors import DanluError, did_you_mean
from danlu.predict import Predictor, prediction_frame
from danlu.run import RunDir
from danlu.training import distributed
from danlu.training.checkpoint import save_weights
from danlu.training.trainer import evaluate_split, fit, pick_device

# keys that may change when resuming; any other difference changes shapes or the
# optimizer's state and cannot continue the same run
RESUMABLE_CHANGES = (
    "name",
    "train.epochs",
    "train.max_steps",
    "train.early_stopping",
    "train.device",
    "train.precision",
    "train.tensorboard",
    "train.restore_best",
    "train.checkpoint_every",
    "train.log_every",
    "eval",
    "output",
    "tune",
)


@dataclass
class Run:
    """A finished run: its folder, config, per-epoch history and final metrics."""

    path: Path
    config: RunConfig
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    def evaluate(
        self,
        split: str = "test",
        data: str | Path | None = None,
        plots: bool = True,
        trust_code: bool = False,
    ) -> dict[str, Any]:
        return evaluate(self.path, split=split, data=data, plots=plots, trust_code=trust_code)

    def load(self, trust_code: bool = False) -> Any:
        from danlu.predict import load

        return load(self.path, trust_code)  # a Predictor, or a Recognizer for audio runs

    def predict(self, rows: Any, trust_code: bool = False) -> np.ndarray:
        return self.load(trust_code).predict(rows)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@registry.own_context  # --resume: the saved config's names are checked until train returns
def train(
    config: str | Path | dict[str, Any] | RunConfig | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    name: str | None = None,
    resume: str | Path | None = None,
    progress: str = "auto",
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
    trust_code: bool = False,
    **kw_overrides: Any,
) -> Run:
    """Train from a YAML path, a dict or a RunConfig. Keyword overrides use `__` for dots:
    danlu.train("tutorial.yaml", train__lr=0.01). `on_eval(n, row)` is called after each
    evaluation's metrics row is logged (n counts evaluations from 1); `danlu tune` prunes there.
    trust_code: a resumed run's config.yaml may name user code ("package.module:Name")."""
    overrides = _merge_overrides(overrides, kw_overrides)
    if name is not None:
        config_mod.check_run_name(name, "--name")
        overrides["name"] = name
    run = RunDir.open(resume, need_model=False) if resume else None
    if run is not None:
        registry.distrust(run.config, trust_code)
        saved = _absolute_paths(config_mod.load(run.config))
        cfg = _absolute_paths(config_mod.load(config if config is not None else saved, overrides))
        _check_resumable(saved, cfg, run)
        if not run.has_checkpoint():
            raise DanluError(
                f"{run.path}: no checkpoint to resume from in {run.checkpoints} (the run stopped before"
                " its first checkpoint); start a new run"
            )
    elif config is None:
        raise DanluError("give a config file to train, or --resume RUN_DIR")
    else:
        # data paths as absolute paths: the run's config.yaml then works from any folder
        cfg = _absolute_paths(config_mod.load(config, overrides))

    # everything that can fail on bad input happens before the run folder exists
    seed_everything(cfg.seed)
    pretrained = None
    if getattr(cfg.model, "from_", None):  # fine-tuning: the checkpoint decides the architecture
        from danlu.models.lm import load_pretrained

        pretrained = load_pretrained(cfg.model)
        cfg = cfg.model_copy(update={"model": pretrained.config})
    prepared = data_mod.build(cfg.data, cfg.task.type, cfg.seed, cfg.model, pretrained=pretrained)
    task = tasks.build(cfg.task, prepared.schema, prepared.splits["train"].y, prepared.preprocessor)
    _check_before_training(cfg, task, prepared.splits)
    model = pretrained.model if pretrained else _build_model(cfg, prepared.schema, task.out_dim)
    device = pick_device(cfg.train.device)
    dist = distributed.init(device.type)

    if run is None:
        path = None
        if dist.is_main:
            run = _create_run_dir(cfg)
            path = str(run.path)
        run = RunDir(distributed.broadcast(path, dist))
    if dist.is_main:
        run.write_config(cfg.to_yaml())
        run.failed.unlink(missing_ok=True)  # a resumed run is no longer the failed one
    try:
        result = fit(
            model,
            task,
            prepared.splits,
            cfg.train,
            run,
            seed=cfg.seed,
            resume=resume is not None,
            progress=progress,
            on_eval=on_eval,
        )
    except (DanluError, RuntimeError, MemoryError) as e:
        # a divergence, a full disk, a crash: the folder says so instead of looking unfinished
        # (Ctrl-C leaves a resumable run and a tuning pruner's stop is not a failure: not marked)
        if dist.is_main:
            run.mark_failed(str(e))
        raise

    metrics: dict[str, Any] = {}
    if dist.is_main:
        model_section = cfg.model.model_dump(mode="json")
        if pretrained is not None:
            # the saved model is a plain GPT: adapters merged, no need of the base checkpoint
            from danlu.models.lm import merge_lora

            if cfg.model.lora is not None:
                model.save_pretrained(str(run.path / "adapter"))  # peft's own format, for reuse
            model = merge_lora(model)
            model_section = {k: v for k, v in model_section.items() if k not in ("from", "lora")}
        save_weights(model, run.weights)
        run.write_model_json(
            {
                "task": tasks.resolved_config(cfg.task, task).model_dump(mode="json"),
                "model": model_section,
                "schema": prepared.schema.to_dict(),
                "preprocessor": prepared.preprocessor.state(),
                "out_dim": task.out_dim,
                "sizes": {k: len(v) for k, v in prepared.splits.items()},
                "best_epoch": result.best_epoch + 1,
                "stopped_early": result.stopped_early,
                **({"fine_tuned_from": cfg.model.from_} if pretrained is not None else {}),
            }
        )
        if hasattr(prepared.preprocessor, "save_files"):  # e.g. text: tokenizer.json
            prepared.preprocessor.save_files(run.path)
        split = cfg.eval.split if cfg.eval.split in prepared.splits else "val"
        if task.kind == "language_modeling":
            prepared.preprocessor.save(run.tokenizer)
            # the model is the last evaluation's when that was the best: its numbers stand
            last = result.history[-1] if result.history else {}
            known = None
            if result.best_epoch == len(result.history) - 1 and "val.loss" in last:
                known = {"loss": last["val.loss"], "perplexity": last["val.perplexity"]}
            metrics = _finish_lm(run, model, task, prepared.splits["val"], cfg.eval.plots, known)
        elif getattr(prepared.schema, "input_kind", "") == "audio" and split in prepared.splits:
            from danlu.speech.evaluation import finish_audio

            metrics = finish_audio(
                run, cfg, model, task, prepared.schema, prepared.splits[split], prepared.frames[split], split,
                cfg.eval.plots,
            )
        elif split in prepared.splits:
            metrics = _finish(
                run,
                cfg,
                Predictor(run, trust_code=resume is None or trust_code),
                prepared.splits[split],
                prepared.frames[split],
                split,
                plots=cfg.eval.plots,
            )
    distributed.barrier(dist)
    distributed.shutdown(dist)
    return Run(run.path, cfg, result.history, metrics)


@registry.own_context
def evaluate(
    run_dir: str | Path,
    split: str = "test",
    data: str | Path | None = None,
    plots: bool = True,
    trust_code: bool = False,
) -> dict[str, Any]:
    """Metrics of a saved run on one of its splits or on a file with the same columns;
    writes metrics.json, predictions.csv and the report into the run folder (for a file:
    under evaluations/<file stem>/, keeping the run's own results).
    trust_code: the run may name user code (a model, loss or metric "package.module:Name")."""
    run = RunDir.open(run_dir)
    registry.distrust(run.config, trust_code)  # e.g. eval.metrics
    cfg = config_mod.load(run.config)
    if data is None:
        _check_data_paths(run, cfg)
    if run.read_model_json().get("schema", {}).get("input_kind") == "audio":
        from danlu.speech.evaluation import evaluate_audio_run

        return evaluate_audio_run(run, cfg, split, data, plots, trust_code)
    if cfg.task.type == "language_modeling":
        return _evaluate_lm(run, cfg, split, data, plots)
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


def _evaluate_lm(
    run: RunDir, cfg: RunConfig, split: str, data: str | Path | None, plots: bool
) -> dict[str, Any]:
    """A language-model run on its validation split (its own tokenizer, the same blocks
    as in training), or on a text file with a sliding window (--data)."""
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


def _extra_metrics(
    cfg: RunConfig, task: Any, data: TensorData, decoded: np.ndarray, metrics: dict[str, Any]
) -> dict[str, Any]:
    from danlu.registry import METRICS

    for name in cfg.eval.metrics:
        fn = METRICS.get(name)
        metrics[name.rpartition(":")[2]] = float(fn(task.target(data.y), decoded))
    return metrics


def _check_before_training(cfg: RunConfig, task: Any, splits: dict[str, Any]) -> None:
    """What the trainer or the final evaluation would otherwise find only after the run folder
    exists (at the first evaluation, or at the end): checked before anything is written."""
    monitor = cfg.train.monitor
    if monitor.startswith("val.") and "val" not in splits:
        raise DanluError(
            f"train.monitor is {monitor} but there is no validation split (data.split.val is"
            f" {cfg.data.split.val}); set data.split.val > 0 or monitor a train.* metric"
        )
    names = getattr(task, "metric_names", None)
    if names is not None:  # the names of the trainer's metrics.csv row (training/trainer.py)
        logged = ["train.loss"]
        logged += ["train.l1_penalty"] if cfg.train.l1 else []
        logged += ["train.l2_penalty"] if cfg.train.l2 else []
        logged += [f"val.{m}" for m in names] if "val" in splits else []
        if monitor not in logged:
            raise DanluError(
                f"train.monitor: '{monitor}' is not logged by this {task.kind} task"
                f"{did_you_mean(monitor, logged)}; valid: {', '.join(logged)}"
            )
    from danlu.registry import METRICS

    for name in cfg.eval.metrics:  # imported now, not after training
        try:
            fn = METRICS.get(name)
        except DanluError as e:
            raise DanluError(f"eval.metrics: {e}") from None
        if not callable(fn):
            raise DanluError(f"eval.metrics: '{name}' is a {type(fn).__name__}, not a function")


def _build_model(cfg: RunConfig, schema: Any, out_dim: int) -> torch.nn.Module:
    """models.build, with a model too large to allocate reported as its size and the keys
    that made it large instead of the allocator's traceback."""
    try:
        return models.build(cfg.model, schema, out_dim)
    except (RuntimeError, MemoryError, TypeError, OverflowError) as e:
        text = str(e).lower()
        if not isinstance(e, MemoryError) and not any(w in text for w in ("alloc", "of memory", "overflow")):
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    # the same model on the meta device: shapes without memory, to say what is large
    largest, total = None, None
    try:
        with torch.device("meta"):
            meta = models.build(cfg.model, schema, out_dim)
        params = list(meta.named_parameters())
        total = sum(p.numel() for _, p in params)
        largest = max(params, key=lambda kv: kv[1].numel(), default=None)
    except Exception:  # noqa: BLE001 (too large even to describe: the keys below still tell)
        pass
    if total is not None:
        size = f"{total:,} parameters ({total * 4 / 1e9:,.1f} GB as float32)"
    else:
        size = f"too large to describe ({reason})"
    biggest = f"; the largest weight is {largest[0]} {list(largest[1].shape)}" if largest else ""
    dims = [d for d in largest[1].shape if d > 16] if largest else []
    keys = _large_keys(cfg.model.model_dump(mode="json", by_alias=True), dims)
    raise DanluError(f"model: cannot allocate the model: {size}{biggest}; it comes from {keys}") from None


def _large_keys(section: dict[str, Any], dims: list[int]) -> str:
    """'model.hidden=[100000]': the model keys holding a dimension of the largest weight,
    else the largest numbers of the section."""
    flat = {f"model.{k}": v for k, v in _flatten(section).items()}
    numbers = {
        k: [v] if isinstance(v, int) else v
        for k, v in flat.items()
        if (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v))
    }
    keys = [k for k, vs in numbers.items() if any(x in dims for x in vs)]
    if not keys:
        keys = sorted(numbers, key=lambda k: max(numbers[k]), reverse=True)[:2]
    return ", ".join(f"{k}={flat[k]}" for k in keys) or "the model section"


def _create_run_dir(cfg: RunConfig) -> RunDir:
    try:
        return RunDir.create(cfg.output.dir, cfg.name, cfg.output.timestamp)
    except OSError as e:  # e.g. a name too long for the file system, output.dir not writable
        where = Path(e.filename) if e.filename else Path(cfg.output.dir)
        raise DanluError(
            f"name / output.dir: cannot create the run folder {where}: {e.strerror or e}"
            + ("; use a shorter name" if e.errno == errno.ENAMETOOLONG else "")
        ) from None


def _merge_overrides(overrides: list[str] | dict[str, Any] | None, kw: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    if isinstance(overrides, dict):
        merged.update(overrides)
    elif overrides:
        merged.update(config_mod._parse_overrides(overrides))
    merged.update({k.replace("__", "."): v for k, v in kw.items()})
    return merged


DATA_FILES = ("path", "train", "val", "test")  # data.* keys naming files or folders


def _absolute_paths(cfg: RunConfig) -> RunConfig:
    """cfg with data.path/train/val/test (and a tokenizer.json path) made absolute against the
    current folder, so the run's saved config reads the same files from anywhere."""
    import os

    def absolute(value: str | None) -> str | None:
        if not value or "://" in value or Path(value).is_absolute():
            return value
        return os.path.abspath(value)

    update = {k: absolute(getattr(cfg.data, k)) for k in DATA_FILES}
    if cfg.data.tokenizer.endswith(".json"):
        update["tokenizer"] = absolute(cfg.data.tokenizer)
    if all(update[k] == getattr(cfg.data, k) for k in update):
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(update=update)})


def _check_data_paths(run: RunDir, cfg: RunConfig) -> None:
    """A run trained before data paths were saved absolute names them relative to the
    folder training ran in: say so, rather than 'file not found' from deep in the reader."""
    for key in DATA_FILES:
        value = getattr(cfg.data, key)
        if value and "://" not in value and not Path(value).exists():
            raise DanluError(
                f"{run.config}: data.{key} '{value}' not found from {Path.cwd()} (a relative path is"
                f" read from the current folder); run from the folder training ran in, or make data.{key}"
                " in that file absolute"
            )


def _check_resumable(saved: RunConfig, new: RunConfig, run: RunDir) -> None:
    a, b = _flatten(saved.to_dict()), _flatten(new.to_dict())
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key) and not key.startswith(RESUMABLE_CHANGES):
            raise DanluError(
                f"--resume {run.path}: the config differs at {key} ({a.get(key)!r} in the run,"
                f" {b.get(key)!r} now); that changes the model or its training state, so it"
                " cannot continue this run: start a new run instead"
            )


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key != "data.params":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
