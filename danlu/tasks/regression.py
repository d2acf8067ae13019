"""Regression with one or several outputs; targets are standardized for training and
mapped back to the user's units for metrics and predictions."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from danlu.config import TaskConfig
from danlu.errors import DanluError
from danlu.tasks.losses import REGRESSION_LOSSES, make_loss


class RegressionTask:
    kind = "regression"
    metric_names = ["loss", "mse", "rmse", "mae", "r2", "mape"]

    def __init__(self, cfg: TaskConfig, schema: Any, y_train: torch.Tensor, preprocessor: Any) -> None:
        self.target_names = schema.targets
        loss = "mse" if cfg.loss == "auto" else cfg.loss
        if ":" not in loss and loss not in REGRESSION_LOSSES:
            raise DanluError(
                f"task.loss: '{loss}' is a classification loss but the target"
                f" {', '.join(repr(t) for t in schema.targets)} is numeric (regression);"
                f" use one of {', '.join(REGRESSION_LOSSES)}, or set task.type: classification"
            )
        if cfg.class_weights is not None or cfg.pos_weight is not None:
            raise DanluError("task.class_weights/pos_weight apply to classification, not regression")
        self.out_dim = len(schema.targets)
        self.loss_name = loss
        self.criterion = make_loss(loss, cfg, y_train, 0)
        self.center = np.asarray(preprocessor.target_center) if preprocessor else 0.0
        self.scale = np.asarray(preprocessor.target_scale) if preprocessor else 1.0

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.criterion(output, y.to(output.dtype))

    def decode(self, output: torch.Tensor) -> np.ndarray:
        """Raw outputs -> predictions in the target's own units (n, k)."""
        return output.float().numpy() * self.scale + self.center

    def target(self, y: torch.Tensor) -> np.ndarray:
        return y.numpy() * self.scale + self.center

    def metrics(self, y_true: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
        from danlu.evaluation.metrics import regression_metrics

        return regression_metrics(y_true, pred, self.target_names)
