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


def _rate(n: float, unit: str) -> str:
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix} {unit}/s"
    return f"{n:.0f} {unit}/s"


class Progress:
    """`unit`: what a batch holds for the throughput shown (samples, or tok for language models)."""

    def __init__(self, mode: str = "auto", monitor: str = "val.loss", unit: str = "samples") -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode, self.monitor, self.unit = mode, monitor, unit
        self._bar: Any = None
        self._next = 0.0
        self._items, self._since = 0, time.perf_counter()

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
        self._items, self._since = 0, time.perf_counter()

    def step(self, i: int, loss: torch.Tensor, items: int = 0) -> None:
        """Called every batch with the batch's samples or tokens; does real work (reading
        the loss, which waits for the device) at most every REFRESH_SECONDS."""
        self._items += items
        if self._bar is None:
            return
        now = time.perf_counter()
        if now >= self._next:
            self._next = now + REFRESH_SECONDS
            rate = _rate(self._items / max(now - self._since, 1e-9), self.unit)
            self._bar.update(self._task, completed=i + 1, info=f"loss {float(loss.detach()):.4f}  {rate}")

    def end_epoch(self, row: dict[str, Any], improved: bool) -> None:
        if self._bar is not None:
            self._bar.remove_task(self._task)
        if self.mode == "quiet":
            return
        keys = ["train.loss", "val.loss", self.monitor]
        shown = dict.fromkeys(k for k in keys if k in row)
        parts = [f"{k} {_fmt(row[k])}" for k in shown]
        took = f"{row['time']:.1f}s"
        if self._items:
            took += ", " + _rate(self._items / max(row["time"], 1e-9), self.unit)
        line = f"epoch {int(row['epoch'])}: " + "  ".join(parts) + f"  ({took})"
        self._items, self._since = 0, time.perf_counter()
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
