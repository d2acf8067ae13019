"""Next-token prediction: cross-entropy over the vocabulary; perplexity = exp(loss)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from danlu.config import TaskConfig
from danlu.errors import DanluError
from danlu.tasks import make_loss


class LanguageModelingTask:
    kind = "language_modeling"
    metric_names = ["loss", "perplexity"]
    keeps_outputs = False  # (tokens x vocab) logits are never gathered for metrics

    def __init__(self, cfg: TaskConfig, schema: Any) -> None:
        loss = "next_token" if cfg.loss == "auto" else cfg.loss
        if ":" not in loss and loss != "next_token":
            raise DanluError(f"task.loss: language modeling uses next_token (cross-entropy), not '{loss}'")
        self.out_dim = schema.vocab_size
        self.loss_name = loss
        self.criterion = make_loss(loss, cfg, torch.zeros(0), schema.vocab_size)

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.criterion(output.reshape(-1, output.shape[-1]), y.reshape(-1))

    def decode(self, output: torch.Tensor) -> np.ndarray:
        return output.float().numpy()

    def target(self, y: torch.Tensor) -> np.ndarray:
        return y.numpy()

    def metrics_from_loss(self, loss: float) -> dict[str, float]:
        return {"perplexity": math.exp(min(loss, 50.0))}
