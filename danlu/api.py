"""train / evaluate: the same functions the CLI calls.

train: config -> the data's kind prepares it (danlu/kinds.py) -> tasks.build -> models.build
-> trainer.fit -> run folder, then the kind's final evaluation (metrics.json, predictions,
report.md, plots). evaluate: the saved run's kind evaluates it.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from danlu import config as config_mod
from danlu import kinds, models, registry, tasks
from danlu.config import RunConfig
from danlu.errors import DanluError, did_you_mean
from danlu.kinds import Trained
from danlu.run import RunDir
from danlu.training import distributed
from danlu.training.checkpoint import save_weights
from danlu.training.trainer import fit, pick_device

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

        return load(self.path, trust_code)  # the run's kind's predictor (audio: a Recognizer)

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
        # config.yaml lists every key: a fine-tuning run's data.tokenizer was not the user's
        cfg.data.__pydantic_fields_set__.discard("tokenizer")
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
        from danlu.lm.finetune import load_pretrained

        pretrained = load_pretrained(cfg.model)
        cfg = cfg.model_copy(update={"model": pretrained.config})
    kind = kinds.detect(cfg.data, cfg.task.type, cfg.model)
    prepared = kind.hook("prepare")(cfg.data, cfg.task.type, cfg.seed, cfg.model, pretrained)
    task = tasks.build(cfg.task, prepared.schema, prepared.splits["train"].y, prepared.preprocessor)
    model = pretrained.model if pretrained else _build_model(cfg, prepared.schema, task.out_dim)
    # a model fitted in closed form when built (no trainable parameters) takes no steps: no monitor
    _check_before_training(cfg, task, prepared.splits, any(p.requires_grad for p in model.parameters()))
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
            from danlu.lm.build import merge_lora

            if cfg.model.lora is not None:
                model.save_pretrained(str(run.path / "adapter"))  # peft's own format, for reuse
            model = merge_lora(model)
            model_section = {k: v for k, v in model_section.items() if k not in ("from", "lora")}
            model_section |= pretrained.meta  # causal_lm: the Llama's config
        save_weights(model, run.weights)
        run.write_model_json(
            {
                "kind": kind.name if cfg.data.kind == "auto" else cfg.data.kind,
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
        # a new run's config is the user's own: the folder may name their code
        trusted = resume is None or trust_code
        metrics = kind.hook("finish")(Trained(run, cfg, model, task, prepared, result, split, trusted))
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
    kind = kinds.of_run(run.read_model_json(), run.model_json, trust_code)
    return kind.hook("evaluate")(run, cfg, split, data, plots, trust_code)


def _check_before_training(cfg: RunConfig, task: Any, splits: dict[str, Any], steps: bool = True) -> None:
    """What the trainer or the final evaluation would otherwise find only after the run folder
    exists (at the first evaluation, or at the end): checked before anything is written.
    steps: the model trains (no monitor for one fitted in closed form)."""
    if hasattr(task, "check"):  # the task's own checks of the config against the data
        task.check(cfg, splits)
    monitor = cfg.train.monitor
    if steps and monitor.startswith("val.") and "val" not in splits:
        raise DanluError(
            f"train.monitor is {monitor} but there is no validation split (data.split.val is"
            f" {cfg.data.split.val}); set data.split.val > 0 or monitor a train.* metric"
        )
    names = getattr(task, "metric_names", None)
    if names is not None and steps:  # the names of the trainer's metrics.csv row (training/trainer.py)
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
