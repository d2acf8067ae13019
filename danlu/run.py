"""The run folder: the only module that knows its layout.

runs/<name>-<YYYYmmdd-HHMMSS>/
  config.yaml          the resolved config (every default written out)
  model.safetensors    final weights
  model.json           kind of input, architecture, Schema, preprocessing, label names, danlu version
  checkpoints/
    last-<step>/       model.safetensors + state.pt (optimizer/scheduler/RNG/trainer state):
                       written in .last-<step>.tmp/ and renamed into place whole, so a kill
                       leaves the previous checkpoint or the new one, never half of each
    best.safetensors   the best weights so far (restored at the end)
  metrics.csv          one row per evaluation (every epoch, or every train.eval_every steps)
  steps.csv            training loss every train.log_every steps, between evaluations too
  metrics.json         final evaluation
  predictions.csv      the evaluated split's predictions
  report.md, plots/    tables and PNG plots
  evaluations/<data>/  `danlu evaluate --data FILE`: metrics.json, predictions.csv, report.md, plots/
  tensorboard/         event files when train.tensorboard is on
  tokenizer.json       language models and text inputs: the tokenizer (Hugging Face tokenizers format)
  samples.md           language models: a sample of generated text at each evaluation
  onnx/                `danlu export RUN --format onnx RUN/onnx`: model.onnx, metadata.json (and
                       tokenizer.json); where `danlu predict --runtime onnx|auto` looks
  failed.json          only when training stopped on an error (a divergence, a full disk):
                       {"reason": ..., "when": ...}; removed when the run is resumed
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from danlu import fileio
from danlu.errors import DanluError

STEP_COLUMNS = ["step", "epoch", "train.loss", "lr"]
FORMAT = 1  # bump when model.json changes in a way older danlu cannot read
MODEL_JSON_KEYS = ("task", "model", "schema", "preprocessor")  # what loading a model reads


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # ---- layout
    config = property(lambda self: self.path / "config.yaml")
    weights = property(lambda self: self.path / "model.safetensors")
    model_json = property(lambda self: self.path / "model.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    best_weights = property(lambda self: self.path / "checkpoints" / "best.safetensors")
    metrics_csv = property(lambda self: self.path / "metrics.csv")
    metrics_json = property(lambda self: self.path / "metrics.json")
    steps_csv = property(lambda self: self.path / "steps.csv")
    predictions = property(lambda self: self.path / "predictions.csv")
    report = property(lambda self: self.path / "report.md")
    plots = property(lambda self: self.path / "plots")
    tensorboard = property(lambda self: self.path / "tensorboard")
    tokenizer = property(lambda self: self.path / "tokenizer.json")  # language models, text inputs
    samples = property(lambda self: self.path / "samples.md")  # language models: text at each evaluation
    failed = property(lambda self: self.path / "failed.json")  # why training stopped, when it failed
    # recommendation: the training interactions (what each user has seen) and the item catalog
    interactions = property(lambda self: self.path / "interactions.npz")
    items = property(lambda self: self.path / "items.csv")

    # ---- creating and opening
    @classmethod
    def create(cls, output_dir: str | Path, name: str, timestamp: bool = True) -> RunDir:
        """A new, empty run folder. Race-free: the folder (or, for an existing empty one,
        its checkpoints/ sub-folder) is created with exist_ok=False, so two processes with
        the same name at the same instant get different folders."""
        base = Path(output_dir)
        base.mkdir(parents=True, exist_ok=True)
        stem = f"{name}-{datetime.now():%Y%m%d-%H%M%S}" if timestamp else name
        n = 1
        while True:
            path = base / (stem if n == 1 else f"{stem}-{n}")
            try:
                path.mkdir()
            except FileExistsError:
                # an empty folder named for the run (made by hand) is used when still empty
                if timestamp or not path.is_dir() or any(path.iterdir()):
                    n += 1
                    continue
            try:
                (path / "checkpoints").mkdir()
            except FileExistsError:  # another process claimed it first
                n += 1
                continue
            return cls(path)

    @classmethod
    def open(cls, path: str | Path, need_model: bool = True) -> RunDir:
        run = cls(path)
        if not run.path.is_dir():
            raise DanluError(f"{run.path}: run folder not found")
        if not run.config.is_file():
            raise DanluError(f"{run.path}: not a danlu run folder (no config.yaml)")
        if need_model and not (run.model_json.is_file() and run.weights.is_file()):
            raise DanluError(
                f"{run.path}: the run has no final model yet (model.json/model.safetensors);"
                f" finish it with: danlu train --resume {run.path}"
            )
        return run

    # ---- config and model description
    def write_config(self, yaml_text: str) -> None:
        fileio.write_text(self.config, yaml_text)

    def write_model_json(self, meta: dict[str, Any]) -> None:
        from danlu import __version__

        fileio.write_json(self.model_json, {"format": FORMAT, "danlu_version": __version__, **meta})

    def read_model_json(self) -> dict[str, Any]:
        meta = self._read_json(self.model_json)
        missing = [k for k in MODEL_JSON_KEYS if not isinstance(meta.get(k), dict)]
        if missing:
            raise DanluError(
                f"{self.model_json}: damaged: no {', '.join(missing)} object in it; retrain the run"
                f" (danlu train --resume {self.path} rewrites it while checkpoints/ is intact)"
            )
        if not isinstance(meta.get("format", 0), int) or meta.get("format", 0) > FORMAT:
            raise DanluError(
                f"{self.model_json}: written by danlu {meta.get('danlu_version')} (format"
                f" {meta.get('format')}); this danlu reads format {FORMAT}: upgrade danlu"
            )
        return meta

    def read_failed(self) -> str | None:
        """Why training stopped on an error (failed.json), or None when it did not."""
        if not self.failed.is_file():
            return None
        try:
            return str(json.loads(self.failed.read_text(encoding="utf-8")).get("reason", ""))
        except (OSError, ValueError, AttributeError):
            return "failed.json is damaged"

    def mark_failed(self, reason: str) -> None:
        """Say in the folder that training stopped on an error, and why. Best effort: on a
        full disk this write can fail too, and the original error is the one to report."""
        with contextlib.suppress(OSError, DanluError):
            fileio.write_json(self.failed, {"reason": reason, "when": f"{datetime.now():%Y-%m-%d %H:%M:%S}"})

    # ---- metrics
    def write_history(self, rows: list[dict[str, Any]]) -> None:
        # The trainer calls this every evaluation with the same growing list. When only rows
        # were added under the same columns, append them: replacing the file (write a temp
        # file, rename over the old one) makes ext4 flush it, 2 ms an epoch, as long as a
        # small model's epoch takes. A new column rewrites the whole file atomically.
        done = getattr(self, "_history_written", None)  # (columns, rows, last row, file size)
        path = self.metrics_csv
        if (
            done
            and len(rows) > done[1] > 0
            and rows[done[1] - 1] is done[2]
            and all(k in done[0] for row in rows[done[1] :] for k in row)
            and _size(path) == done[3]
        ):
            keys = done[0]
            text = _csv_rows(keys, rows[done[1] :], header=False)
            with open(path, "a", encoding="utf-8", newline="") as f:
                f.write(text)
            size = done[3] + len(text.encode("utf-8"))
        else:
            keys = list(dict.fromkeys(k for row in rows for k in row))
            text = _csv_rows(keys, rows, header=True)
            fileio.write_text(path, text)
            size = len(text.encode("utf-8"))
        self._history_written = (keys, len(rows), rows[-1] if rows else None, size)

    def read_history(self) -> list[dict[str, float]]:
        if not self.metrics_csv.is_file():
            return []
        try:
            with self.metrics_csv.open(encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            return [{str(k): _number(v) for k, v in row.items()} for row in rows]
        except (OSError, UnicodeDecodeError, csv.Error, ValueError, TypeError) as e:
            raise DanluError(
                f"{self.metrics_csv}: damaged ({_first_line(e)}); delete it to list the run without"
                " its history, or retrain"
            ) from None

    def write_steps(self, rows: list[dict[str, Any]]) -> None:
        """steps.csv as `rows` (a resumed run drops the steps logged after its checkpoint)."""
        if rows:
            fileio.write_text(self.steps_csv, _csv_rows(STEP_COLUMNS, rows, header=True))
        else:
            self.steps_csv.unlink(missing_ok=True)

    def append_steps(self, row: dict[str, Any]) -> None:
        # one short line per logged step: appended, as samples.md is
        header = not self.steps_csv.is_file() or self.steps_csv.stat().st_size == 0
        with open(self.steps_csv, "a", encoding="utf-8", newline="") as f:
            f.write(_csv_rows(STEP_COLUMNS, [row], header=header))

    def read_steps(self) -> list[dict[str, float]]:
        if not self.steps_csv.is_file():
            return []
        with self.steps_csv.open(encoding="utf-8") as f:
            return [
                {k: float(v) if v != "" else math.nan for k, v in row.items()} for row in csv.DictReader(f)
            ]

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        fileio.write_json(self.metrics_json, metrics)

    def read_metrics(self) -> dict[str, Any]:
        if not self.metrics_json.is_file():
            return {}
        return self._read_json(self.metrics_json, "rerun: danlu evaluate " + str(self.path))

    def for_data(self, data: str | Path) -> RunDir:
        """The run as an evaluation on another data file sees it: its results (metrics.json,
        predictions.csv, report.md, plots/) go to evaluations/<file stem>/, so the run's own
        are kept; everything else is the run's."""
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(data).stem).lstrip(".") or "data"
        return _Evaluation(self.path, self.path / "evaluations" / stem)

    def _read_json(self, path: Path, fix: str = "retrain the run") -> dict[str, Any]:
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DanluError(f"{path}: damaged, not readable JSON ({_first_line(e)}); {fix}") from None
        if not isinstance(obj, dict):
            raise DanluError(f"{path}: damaged, a JSON {type(obj).__name__} instead of an object; {fix}")
        return obj

    def append_sample(self, step: int, text: str) -> None:
        with open(self.samples, "a", encoding="utf-8") as f:
            f.write(f"## step {step}\n\n```text\n{text}\n```\n\n")

    # ---- checkpoints
    def has_checkpoint(self) -> bool:
        return bool(self.checkpoint_files())

    def checkpoint_files(self) -> list[tuple[Path, Path]]:
        """(weights, state) of every complete `last` checkpoint, newest first. A folder
        last-<step>/ exists only once complete (it is renamed into place whole); the
        layout of danlu before that, last.safetensors + last.state.pt, comes last."""
        steps = []
        for p in self.checkpoints.glob("last-*"):
            step = p.name.removeprefix("last-")
            if step.isdigit() and p.is_dir():
                steps.append((int(step), p))
        found = [(p / "model.safetensors", p / "state.pt") for _, p in sorted(steps, reverse=True)]
        old = (self.checkpoints / "last.safetensors", self.checkpoints / "last.state.pt")
        if old[1].is_file():
            found.append(old)
        return found

    def checkpoint_folder(self, step: int) -> tuple[Path, Path]:
        """(temporary folder to write in, folder to rename it to) for the checkpoint at `step`."""
        return self.checkpoints / f".last-{step}.tmp", self.checkpoints / f"last-{step}"

    def drop_checkpoints_except(self, keep: Path) -> None:
        """Delete every `last` checkpoint but the folder `keep` (once `keep` is complete)."""
        for weights, state in self.checkpoint_files():
            if state.parent == keep:
                continue
            if state.parent == self.checkpoints:  # the old layout's pair of files
                weights.unlink(missing_ok=True)
                state.unlink(missing_ok=True)
            else:
                shutil.rmtree(state.parent, ignore_errors=True)

    def set_aside(self, state: Path) -> Path | None:
        """Move a damaged checkpoint out of the way (kept for inspection, never resumed)."""
        if state.parent == self.checkpoints:
            return None  # the old layout's single pair: left where it is
        target = self.checkpoints / f"damaged-{state.parent.name}"
        shutil.rmtree(target, ignore_errors=True)
        os.replace(state.parent, target)
        return target

    def clean_partial(self) -> list[Path]:
        """Remove what a killed process left half-written: temporary files and folders
        (.*.tmp) of atomic writes and unfinished checkpoints."""
        removed = []
        for p in sorted(self.path.rglob(".*.tmp")):
            fileio.remove(p)
            removed.append(p)
        return removed


class _Evaluation(RunDir):
    def __init__(self, path: Path, folder: Path) -> None:
        super().__init__(path)
        self.folder = folder

    metrics_json = property(lambda self: self.folder / "metrics.json")
    predictions = property(lambda self: self.folder / "predictions.csv")
    report = property(lambda self: self.folder / "report.md")
    plots = property(lambda self: self.folder / "plots")


# the metric `danlu runs` shows for a task: its test split's main number
MAIN_METRIC = {
    "classification": "accuracy",
    "regression": "rmse",
    "language_modeling": "perplexity",
    "speech_recognition": "wer",
    "recommendation": "ndcg@10",  # a ratings (mf) run has none: its row shows no test metric
}


def list_runs(root: str | Path) -> list[dict[str, Any]]:
    """Summaries of the run folders under root (newest first) for `danlu runs`. status:
    done (a final model), incomplete (a checkpoint to --resume from), failed (neither:
    stopped before its first checkpoint) or damaged (a run file that cannot be read; the
    reason is in `error`)."""
    rows = []
    root = Path(root)
    # a run folder has config.yaml; one killed before writing it has only checkpoints/
    folders = {p.parent for p in root.glob("*/config.yaml")} | {p.parent for p in root.glob("*/checkpoints")}
    for folder in sorted(folders):
        run = RunDir(folder)
        try:
            stamp = run.config if run.config.is_file() else run.path
            when = datetime.fromtimestamp(stamp.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        except OSError:
            continue  # removed while listing
        row: dict[str, Any] = {
            "run": run.path.name, "path": str(run.path), "task": "", "model": "", "monitor": "",
            "best": None, "epochs": 0, "metric": None, "value": None, "split": None,
            "status": "", "when": when, "error": None,
        }
        try:
            row.update(_summary(run))
        except DanluError as e:
            row.update(status="damaged", error=str(e))
        rows.append(row)
    return sorted(rows, key=lambda r: r["when"], reverse=True)


def _read_config_mapping(path: Path) -> dict[str, Any]:
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DanluError(f"{path}: damaged, not readable YAML ({_first_line(e)})") from None
    if not isinstance(cfg, dict):
        raise DanluError(f"{path}: damaged, not a mapping of config sections")
    return cfg


def _summary(run: RunDir) -> dict[str, Any]:
    from danlu.evaluation.metrics import direction

    if not run.config.is_file():
        return {"status": "incomplete" if run.has_checkpoint() else "failed"}
    cfg = _read_config_mapping(run.config)
    section = lambda key: cfg.get(key) if isinstance(cfg.get(key), dict) else {}  # noqa: E731
    metrics = run.read_metrics()
    history = run.read_history()
    monitor = str(section("train").get("monitor", "val.loss"))
    vals = [r[monitor] for r in history if isinstance(r.get(monitor), float) and not math.isnan(r[monitor])]
    best = (min(vals) if direction(monitor) == "min" else max(vals)) if vals else None
    task = str(metrics.get("task") or section("task").get("type", ""))
    if run.model_json.is_file():
        run.read_model_json()  # damage shows here rather than at `danlu predict`
        status = "done" if run.weights.is_file() else "incomplete"
    else:
        status = "incomplete" if run.has_checkpoint() else "failed"
    failed = run.read_failed() if status != "done" else None
    if failed is not None:  # stopped on an error (a divergence): resuming would repeat it
        status = "failed"
    numbers = metrics.get("metrics") if isinstance(metrics.get("metrics"), dict) else {}
    name = MAIN_METRIC.get(task, "loss")
    value = numbers.get(name)
    if not isinstance(value, int | float):
        name, value = None, None
    return {
        "task": task,
        "model": str(section("model").get("type", "")),
        "monitor": monitor,
        "best": best,
        "epochs": len(history),
        "error": failed,
        "metric": name,
        "value": value,
        "split": metrics.get("split") if name else None,
        "status": status,
    }


def _number(v: Any) -> float:
    if v is None:  # a row with fewer fields than the header: a cut-off line
        raise ValueError("a row is cut short")
    return float(v) if v != "" else math.nan


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _csv_rows(keys: list[str], rows: list[dict[str, Any]], header: bool) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, restval="", lineterminator="\n")
    if header:
        w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1
