"""Binary and multiclass classification."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from danlu.config import TaskConfig
from danlu.errors import DanluError
from danlu.tasks.losses import CLASSIFICATION_LOSSES, make_loss


class ClassificationTask:
    kind = "classification"
    metric_names = [
        "loss",
        "accuracy",
        "balanced_accuracy",
        "precision_macro",
        "recall_macro",
        "f1_macro",
        "precision_micro",
        "recall_micro",
        "f1_micro",
        "precision_weighted",
        "recall_weighted",
        "f1_weighted",
        "roc_auc",
        "average_precision",
        "log_loss",
    ]

    def __init__(self, cfg: TaskConfig, schema: Any, y_train: torch.Tensor, preprocessor: Any = None) -> None:
        self.class_names = schema.class_names
        n = schema.n_classes
        what = f"the target '{schema.targets[0]}' holds {n} classes ({_preview(self.class_names)})"
        loss = "cross_entropy" if cfg.loss == "auto" else cfg.loss
        if ":" not in loss and loss not in CLASSIFICATION_LOSSES:
            raise DanluError(
                f"task.loss: '{loss}' is a regression loss but {what};"
                " use cross_entropy (or bce_with_logits for two classes)"
            )
        if loss == "bce_with_logits" and n != 2:
            raise DanluError(
                f"task.loss: bce_with_logits needs exactly two classes but {what}; use cross_entropy"
            )
        if isinstance(cfg.class_weights, list) and len(cfg.class_weights) != n:
            raise DanluError(f"task.class_weights: {len(cfg.class_weights)} weights given but {what}")
        self.binary_logit = loss == "bce_with_logits"
        self.out_dim = 1 if self.binary_logit else n
        self.loss_name = loss
        self.criterion = make_loss(loss, cfg, y_train, n)

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.binary_logit:
            return self.criterion(output.squeeze(-1), y.to(output.dtype))
        return self.criterion(output, y)

    def decode(self, output: torch.Tensor) -> np.ndarray:
        """Raw outputs -> class probabilities (n, C)."""
        output = output.float()
        if self.binary_logit:
            p = torch.sigmoid(output.squeeze(-1))
            return torch.stack([1 - p, p], dim=1).numpy()
        return torch.softmax(output, dim=-1).numpy()

    def target(self, y: torch.Tensor) -> np.ndarray:
        return y.numpy()

    def metrics(self, y_true: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
        from danlu.evaluation.metrics import classification_metrics

        return classification_metrics(y_true, proba, self.class_names)


def _preview(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
