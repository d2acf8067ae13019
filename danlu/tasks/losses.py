"""Built-in losses. Each is a factory (task config, training targets, number of classes)
-> loss module, so data-dependent settings ("balanced" weights) are computed once."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from danlu.config import TaskConfig
from danlu.errors import DanluError
from danlu.registry import LOSSES, UntrustedCodeError


def _class_weights(cfg: TaskConfig, y: torch.Tensor, n_classes: int) -> torch.Tensor | None:
    if cfg.class_weights is None:
        return None
    if cfg.class_weights == "balanced":  # n / (C * count), as scikit-learn defines it
        counts = torch.bincount(y, minlength=n_classes).clamp(min=1).float()
        return len(y) / (n_classes * counts)
    return torch.tensor(cfg.class_weights, dtype=torch.float32)


def cross_entropy(cfg: TaskConfig, y: torch.Tensor, n_classes: int) -> nn.Module:
    return nn.CrossEntropyLoss(weight=_class_weights(cfg, y, n_classes), label_smoothing=cfg.label_smoothing)


def bce_with_logits(cfg: TaskConfig, y: torch.Tensor, n_classes: int) -> nn.Module:
    pos_weight = cfg.pos_weight
    if pos_weight == "balanced":
        pos = float(y.float().sum())
        pos_weight = (len(y) - pos) / max(pos, 1.0)
    return nn.BCEWithLogitsLoss(pos_weight=None if pos_weight is None else torch.tensor([float(pos_weight)]))


def mse(cfg: TaskConfig, y: torch.Tensor, n_classes: int) -> nn.Module:
    return nn.MSELoss()


def l1(cfg: TaskConfig, y: torch.Tensor, n_classes: int) -> nn.Module:
    return nn.L1Loss()


def huber(cfg: TaskConfig, y: torch.Tensor, n_classes: int) -> nn.Module:
    return nn.HuberLoss(delta=cfg.huber_delta)


def smooth_l1(cfg: TaskConfig, y: torch.Tensor, n_classes: int) -> nn.Module:
    return nn.SmoothL1Loss(beta=cfg.huber_delta)


def make_loss(name: str, cfg: TaskConfig, y_train: torch.Tensor, n_classes: int) -> Any:
    try:
        fn = LOSSES.get(name)
    except UntrustedCodeError:
        raise
    except DanluError as e:
        raise DanluError(f"task.loss: {e}") from None
    if ":" not in name:
        return fn(cfg, y_train, n_classes)
    # user loss: a class is instantiated with no arguments, a function is used as is
    return fn() if inspect.isclass(fn) else fn


CLASSIFICATION_LOSSES = ("cross_entropy", "bce_with_logits")
REGRESSION_LOSSES = ("mse", "mae", "l1", "huber", "smooth_l1")


def next_token(cfg: TaskConfig, y: torch.Tensor, n_classes: int) -> nn.Module:
    # targets of -100 (padding, prompt tokens) do not count
    return nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=cfg.label_smoothing)
