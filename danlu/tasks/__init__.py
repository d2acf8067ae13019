"""tasks.build: RunConfig.task + Schema -> Task (loss, metrics, output decoding).

A task never touches the training loop: the trainer asks it for the loss of a batch
and for metrics of a whole split, and that is all.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from danlu.config import TaskConfig


class Task(Protocol):
    kind: str
    out_dim: int
    metric_names: list[str]

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...
    def decode(self, output: torch.Tensor) -> np.ndarray: ...
    def target(self, y: torch.Tensor) -> np.ndarray: ...
    def metrics(self, y_true: np.ndarray, decoded: np.ndarray) -> dict[str, Any]: ...


def build(cfg: TaskConfig, schema: Any, y_train: torch.Tensor, preprocessor: Any = None) -> Task:
    """The task registered for schema.task (registry.TASKS)."""
    from danlu.registry import TASKS

    return TASKS.get(schema.task, "task.type")(cfg, schema, y_train, preprocessor)


def resolved_config(cfg: TaskConfig, task: Any) -> TaskConfig:
    """The task config with data-derived values ("balanced" weights) written out, so a
    saved model rebuilds the same loss without the training data."""
    update: dict[str, Any] = {"type": task.kind, "loss": task.loss_name}
    weight = getattr(task.criterion, "weight", None)
    if cfg.class_weights == "balanced" and weight is not None:
        update["class_weights"] = weight.tolist()
    pos = getattr(task.criterion, "pos_weight", None)
    if cfg.pos_weight == "balanced" and pos is not None:
        update["pos_weight"] = float(pos[0])
    return cfg.model_copy(update=update)
