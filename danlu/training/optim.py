"""Optimizer and scheduler construction from TrainConfig."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from danlu.config import TrainConfig
from danlu.registry import OPTIMIZERS, SCHEDULERS


def decay_and_no_decay(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Weight matrices decay; biases, norm scales and other 1-d parameters do not."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return decay, no_decay


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    cls = OPTIMIZERS.get(cfg.optimizer)
    decay, no_decay = decay_and_no_decay(model)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if cfg.weight_decay == 0:  # one group: one optimizer kernel launch per step, not two
        groups = [{"params": decay + no_decay, "weight_decay": 0.0}]
    own = getattr(model, "param_groups", None)
    if callable(own):  # a model with its own groups (e.g. layer-wise learning-rate decay)
        groups = [g for g in own(cfg.lr, cfg.weight_decay) if g["params"]]
    kwargs: dict[str, Any] = {"lr": cfg.lr}
    accepted = inspect.signature(cls).parameters
    if "momentum" in accepted and cfg.optimizer in ("sgd", "rmsprop"):
        kwargs["momentum"] = cfg.momentum
    if "nesterov" in accepted and cfg.nesterov:
        kwargs["nesterov"] = True
    if "betas" in accepted:
        kwargs["betas"] = tuple(cfg.betas)
    if "fused" in accepted and cfg.optimizer in ("adam", "adamw", "sgd", "adagrad"):
        # one fused kernel per step instead of a Python loop over parameters: 25-30% faster
        # steps for small models on CPU as well as on GPU
        try:
            return cls(groups, **kwargs, fused=True)
        except (RuntimeError, ValueError):
            pass  # a device or dtype the fused kernels do not cover
    return cls(groups, **kwargs)


def build_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int, monitor_mode: str
) -> tuple[Any, str]:
    # the schedule spans the steps that will actually run: max_steps cuts epochs short
    total = max(1, min(steps_per_epoch * cfg.epochs, cfg.max_steps or steps_per_epoch * cfg.epochs))
    factory = SCHEDULERS.get(cfg.scheduler.name)
    if cfg.scheduler.name == "reduce_on_plateau":
        return factory(opt, cfg.scheduler, total, steps_per_epoch, mode=monitor_mode)
    return factory(opt, cfg.scheduler, total, steps_per_epoch)
