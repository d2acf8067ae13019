"""The run folder: the only module that knows its layout.

runs/<name>-<YYYYmmdd-HHMMSS>/
  config.yaml          the resolved config (every default written out)
  model.safetensors    final weights
  model.json           architecture, Schema, preprocessing, label names, danlu version
  checkpoints/         last.* and best.*: weights + optimizer/scheduler/RNG/trainer state
  metrics.csv          one row per evaluation (every epoch, or every train.eval_every steps)
  steps.csv            training loss every train.log_every steps, between evaluations too
  metrics.json         final evaluation
  predictions.csv      the evaluated split's predictions
  report.md, plots/    tables and PNG plots
  tensorboard/         event files when train.tensorboard is on
  tokenizer.json       language models and text inputs: the tokenizer (Hugging Face tokenizers format)
  samples.md           language models: a sample of generated text at each evaluation
"""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from danlu import fileio
from danlu.errors import DanluError

STEP_COLUMNS = ["step", "epoch", "train.loss", "lr"]
FORMAT = 1  # bump when model.json changes in a way older danlu cannot read


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # ---- layout
    config = property(lambda self: self.path / "config.yaml")
    weights = property(lambda self: self.path / "model.safetensors")
    model_json = property(lambda self: self.path / "model.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    metrics_csv = property(lambda self: self.path / "metrics.csv")
    metrics_json = property(lambda self: self.path / "metrics.json")
    steps_csv = property(lambda self: self.path / "steps.csv")
    predictions = property(lambda self: self.path / "predictions.csv")
    report = property(lambda self: self.path / "report.md")
    plots = property(lambda self: self.path / "plots")
    tensorboard = property(lambda self: self.path / "tensorboard")
    tokenizer = property(lambda self: self.path / "tokenizer.json")  # language models, text inputs
    samples = property(lambda self: self.path / "samples.md")  # language models: text at each evaluation

    # ---- creating and opening
    @classmethod
    def create(cls, output_dir: str | Path, name: str, timestamp: bool = True) -> RunDir:
        base = Path(output_dir)
        stem = f"{name}-{datetime.now():%Y%m%d-%H%M%S}" if timestamp else name
        path, n = base / stem, 1
        while path.exists() and (timestamp or any(path.iterdir())):
            n += 1
            path = base / f"{stem}-{n}"
        path.mkdir(parents=True, exist_ok=True)
        (path / "checkpoints").mkdir(exist_ok=True)
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
        try:
            meta = json.loads(self.model_json.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DanluError(f"{self.model_json}: cannot read: {e}") from None
        if meta.get("format", 0) > FORMAT:
            raise DanluError(
                f"{self.model_json}: written by danlu {meta.get('danlu_version')} (format"
                f" {meta.get('format')}); this danlu reads format {FORMAT}: upgrade danlu"
            )
        return meta

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
        with self.metrics_csv.open(encoding="utf-8") as f:
            return [
                {k: float(v) if v != "" else math.nan for k, v in row.items()} for row in csv.DictReader(f)
            ]

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
        return json.loads(self.metrics_json.read_text(encoding="utf-8"))

    def append_sample(self, step: int, text: str) -> None:
        with open(self.samples, "a", encoding="utf-8") as f:
            f.write(f"## step {step}\n\n```text\n{text}\n```\n\n")

    def has_checkpoint(self, name: str = "last") -> bool:
        return (self.checkpoints / f"{name}.state.pt").is_file()


def list_runs(root: str | Path) -> list[dict[str, Any]]:
    """Summaries of the run folders under root (newest first) for `danlu runs`."""
    import yaml

    rows = []
    for cfg_path in sorted(Path(root).glob("*/config.yaml")):
        run = RunDir(cfg_path.parent)
        try:
            cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue
        metrics = run.read_metrics()
        history = run.read_history()
        monitor = (cfg.get("train") or {}).get("monitor", "val.loss")
        vals = [r[monitor] for r in history if monitor in r and not math.isnan(r[monitor])]
        from danlu.evaluation.metrics import direction

        best = (min(vals) if direction(monitor) == "min" else max(vals)) if vals else None
        rows.append(
            {
                "run": run.path.name,
                "task": (metrics.get("task") or (cfg.get("task") or {}).get("type", "")),
                "model": (cfg.get("model") or {}).get("type", ""),
                "monitor": monitor,
                "best": best,
                "epochs": len(history),
                "status": "done" if run.model_json.is_file() else "incomplete",
                "when": datetime.fromtimestamp(cfg_path.stat().st_mtime).strftime("%Y-%m-%d %H:%M"),
            }
        )
    return sorted(rows, key=lambda r: r["when"], reverse=True)


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
