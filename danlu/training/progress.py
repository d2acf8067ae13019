"""What the user sees while training: a rich bar per epoch on a terminal, one plain line
per epoch otherwise, nothing with --quiet. Updates are throttled by time so the bar
costs nothing measurable in the loop."""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

REFRESH_SECONDS = 0.1


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress:
    def __init__(self, mode: str = "auto", monitor: str = "val.loss") -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode, self.monitor = mode, monitor
        self._bar: Any = None
        self._next = 0.0

    def __enter__(self) -> Progress:
        if self.mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]epoch {task.fields[epoch]}"),
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

    def start_epoch(self, epoch: int, epochs: int, batches: int, done: int = 0) -> None:
        if self._bar is not None:
            self._task = self._bar.add_task(
                "", total=batches, completed=done, epoch=f"{epoch + 1}/{epochs}", info=""
            )
        self._next = 0.0

    def step(self, i: int, loss: torch.Tensor) -> None:
        """Called every batch; does real work at most every REFRESH_SECONDS."""
        if self._bar is None:
            return
        now = time.perf_counter()
        if now >= self._next:
            self._next = now + REFRESH_SECONDS
            self._bar.update(self._task, completed=i + 1, info=f"loss {float(loss):.4f}")

    def end_epoch(self, row: dict[str, Any], improved: bool) -> None:
        if self._bar is not None:
            self._bar.remove_task(self._task)
        if self.mode == "quiet":
            return
        keys = ["train.loss", "val.loss", self.monitor]
        shown = dict.fromkeys(k for k in keys if k in row)
        parts = [f"{k} {_fmt(row[k])}" for k in shown]
        line = f"epoch {int(row['epoch'])}: " + "  ".join(parts) + f"  ({row['time']:.1f}s)"
        if improved:
            line += " *"
        self.print(line)

    def print(self, line: str) -> None:
        if self.mode == "quiet":
            return
        if self._bar is not None:
            self._bar.console.print(line, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)
