"""What the user sees while training: a rich bar on a terminal, plain lines otherwise,
nothing with --quiet. Updates are throttled by time so the bar costs nothing measurable
in the loop.

A run with `train.max_steps` shows one bar over its steps (the ETA is the run's); other
runs show a bar per epoch. Without a terminal, a line is printed at every logged step
(`train.log_every`) and at least every LINE_SECONDS, so a log file never sits silent
until the first evaluation.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

REFRESH_SECONDS = 0.1
LINE_SECONDS = 30.0  # without a terminal: the longest silence between two lines


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _rate(n: float, unit: str) -> str:
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix} {unit}/s"
    return f"{n:.0f} {unit}/s"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """`unit`: what a batch holds for the throughput shown (samples, or tok for language
    models). `max_steps`: the run's step budget, when it has one: the bar then counts steps
    of it instead of batches of an epoch."""

    def __init__(
        self,
        mode: str = "auto",
        monitor: str = "val.loss",
        unit: str = "samples",
        max_steps: int | None = None,
    ) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode, self.monitor, self.unit, self.max_steps = mode, monitor, unit, max_steps
        self._bar: Any = None
        self._task: Any = None
        self._next = 0.0
        self._items, self._since = 0, time.perf_counter()
        # throughput and ETA of plain lines: since the first epoch this process started (its
        # first batch's compute included, or the first step's line would claim a rate and ETA
        # of an optimizer step alone)
        self._first_step: int | None = None
        self._run_items, self._run_since = 0, time.perf_counter()
        self._last_line = time.perf_counter()
        self._step = 0

    def __enter__(self) -> Progress:
        if self.mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.fields[label]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                transient=True,
            )
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def start_epoch(self, epoch: int, epochs: int, batches: int, done: int = 0, step: int = 0) -> None:
        """An epoch begins (or resumes at batch `done`, `step` optimizer steps into the run)."""
        self._step = step
        if self._first_step is None:  # the clock of rate and ETA starts before the first batch
            self._first_step, self._run_since = step, time.perf_counter()
        if self._bar is not None:
            if self.max_steps:  # one task for the whole run, created once
                label = f"epoch {epoch + 1} · step"
                if self._task is None:
                    self._task = self._bar.add_task(
                        "", total=self.max_steps, completed=step, label=label, info=""
                    )
                else:
                    self._bar.update(self._task, label=label)
            else:
                if self._task is not None:
                    self._bar.remove_task(self._task)
                self._task = self._bar.add_task(
                    "", total=batches, completed=done, label=f"epoch {epoch + 1}/{epochs}", info=""
                )
        self._next = 0.0
        self._items, self._since = 0, time.perf_counter()

    def step(self, i: int, loss: torch.Tensor, items: int = 0, step: int | None = None) -> None:
        """Called every batch (`i` within the epoch, `step` optimizer steps done) with the
        batch's samples or tokens; does real work (reading the loss, which waits for the
        device) at most every REFRESH_SECONDS."""
        self._items += items
        self._run_items += items
        if step is not None:
            self._step = step
        if self._bar is None:
            return
        now = time.perf_counter()
        if now >= self._next:
            self._next = now + REFRESH_SECONDS
            rate = _rate(self._items / max(now - self._since, 1e-9), self.unit)
            completed = self._step if self.max_steps else i + 1
            self._bar.update(self._task, completed=completed, info=f"loss {float(loss.detach()):.4f}  {rate}")

    def _advance(self, step: int) -> None:
        # step() updates the bar before each batch's optimizer step, throttled: an evaluation
        # or a logged step shows the steps actually done
        self._step = step
        if self._bar is not None and self.max_steps and self._task is not None:
            self._bar.update(self._task, completed=step)

    def due(self) -> bool:
        """Whether a plain line is overdue (no terminal, nothing printed for LINE_SECONDS)."""
        return self.mode == "lines" and time.perf_counter() - self._last_line >= LINE_SECONDS

    def log_step(self, row: dict[str, Any]) -> None:
        """A logged training step (step, epoch, train.loss, lr): one plain line without a
        terminal; the bar already shows it."""
        self._advance(int(row["step"]))
        if self.mode != "lines":
            return
        step = int(row["step"])
        parts = [f"step {step}" + (f"/{self.max_steps}" if self.max_steps else "")]
        parts.append(f"epoch {int(row['epoch'])}")
        parts.append(f"train.loss {row['train.loss']:.4f}")
        parts.append(f"lr {row['lr']:.3g}")
        took = time.perf_counter() - self._run_since
        if self._run_items and took > 0:
            parts.append(_rate(self._run_items / took, self.unit))
        done = step - (self._first_step or 0)
        if self.max_steps and done > 0 and took > 0:
            parts.append(f"ETA {_duration((self.max_steps - step) * took / done)}")
        self.print("  ".join(parts))

    def end_epoch(self, row: dict[str, Any], improved: bool) -> None:
        """An evaluation's line. The bar stays: an evaluation every N steps can come in the
        middle of an epoch, whose batches go on afterwards."""
        self._advance(int(row["step"]))
        if self.mode == "quiet":
            return
        keys = ["train.loss", "val.loss", self.monitor]
        shown = dict.fromkeys(k for k in keys if k in row)
        parts = [f"{k} {_fmt(row[k])}" for k in shown]
        took = f"{row['time']:.1f}s"
        if self._items:
            took += ", " + _rate(self._items / max(row["time"], 1e-9), self.unit)
        line = f"epoch {int(row['epoch'])}"
        if self.max_steps:
            line += f", step {int(row['step'])}/{self.max_steps}"
        line += ": " + "  ".join(parts) + f"  ({took})"
        self._items, self._since = 0, time.perf_counter()
        if improved:
            line += " *"
        self.print(line)

    def print(self, line: str) -> None:
        if self.mode == "quiet":
            return
        self._last_line = time.perf_counter()
        if self._bar is not None:
            self._bar.console.print(line, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)
