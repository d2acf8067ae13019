"""What a kind's `export_onnx` hook returns: the exportable forward of a run, described well
enough to export it, check it and document it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

Batch = dict[str, np.ndarray]  # graph input name -> array (the dtype the graph takes)


@dataclass
class Graph:
    module: nn.Module  # eager PyTorch: graph inputs, positional in `inputs` order -> `outputs`
    inputs: list[str]
    outputs: list[str]
    dynamic_axes: dict[str, dict[int, str]]  # input or output name -> {axis: its name}
    sample: list[Batch]  # batches for tracing (the first) and for the parity check (all)
    sample_from: str  # where the sample comes from: "test split", "generated inputs", ...
    preprocessing: dict[str, Any]  # what happens before the graph (and inside it), for metadata.json
    labels: list[str] | None = None  # class names (classification), or None
    # output 0 -> predicted labels (argmax ...), compared 100% between runtimes; None: no labels
    predicted: Callable[[np.ndarray], np.ndarray] | None = None
    files: dict[str, Path] = field(default_factory=dict)  # name in OUT -> file copied there
    about: dict[str, Any] = field(default_factory=dict)  # kind, model type, task: for metadata.json
    # what the parity check compares against, when `module` is an exportable rewrite of it
    # (recurrent layers without packed sequences: danlu/onnx/rnn.py); None: `module` itself
    reference: nn.Module | None = None


def argmax(out: np.ndarray) -> np.ndarray:
    """Predicted labels of logits or log-probabilities: the best class on the last axis."""
    return out.argmax(axis=-1)
