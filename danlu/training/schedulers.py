"""Learning-rate schedules. Each factory returns (scheduler, interval) where interval is
"step" (after every optimizer step), "epoch" or "eval" (given the monitored value)."""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer, lr_scheduler

from danlu.config import SchedulerConfig


def _warmup_steps(cfg: SchedulerConfig, total: int) -> int:
    return int(cfg.warmup * total) if cfg.warmup < 1 else int(cfg.warmup)


def _lambda(opt: Optimizer, fn: Any) -> lr_scheduler.LambdaLR:
    return lr_scheduler.LambdaLR(opt, fn)


def constant(opt: Optimizer, cfg: SchedulerConfig, total: int, per_epoch: int) -> tuple[Any, str]:
    return None, "step"


def step(opt: Optimizer, cfg: SchedulerConfig, total: int, per_epoch: int) -> tuple[Any, str]:
    return lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma), "epoch"


def exponential(opt: Optimizer, cfg: SchedulerConfig, total: int, per_epoch: int) -> tuple[Any, str]:
    return lr_scheduler.ExponentialLR(opt, gamma=cfg.gamma), "epoch"


def _warmup_then(decay: str, cfg: SchedulerConfig, total: int) -> Any:
    warm = _warmup_steps(cfg, total)
    floor = cfg.min_lr_ratio

    def factor(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        progress = min(1.0, (s - warm) / max(1, total - warm))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
        return floor + (1 - floor) * shape

    return factor


def cosine(opt: Optimizer, cfg: SchedulerConfig, total: int, per_epoch: int) -> tuple[Any, str]:
    return _lambda(opt, _warmup_then("cosine", cfg, total)), "step"


def _with_warmup(cfg: SchedulerConfig) -> SchedulerConfig:
    # the warmup_* schedules warm up for 5% of the steps unless told otherwise
    return cfg if cfg.warmup > 0 else cfg.model_copy(update={"warmup": 0.05})


def warmup_cosine(opt: Optimizer, cfg: SchedulerConfig, total: int, per_epoch: int) -> tuple[Any, str]:
    return _lambda(opt, _warmup_then("cosine", _with_warmup(cfg), total)), "step"


def warmup_linear(opt: Optimizer, cfg: SchedulerConfig, total: int, per_epoch: int) -> tuple[Any, str]:
    return _lambda(opt, _warmup_then("linear", _with_warmup(cfg), total)), "step"


def onecycle(opt: Optimizer, cfg: SchedulerConfig, total: int, per_epoch: int) -> tuple[Any, str]:
    max_lr = [g["lr"] for g in opt.param_groups]
    pct = cfg.warmup if 0 < cfg.warmup < 1 else 0.3
    return lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total, pct_start=pct), "step"


def reduce_on_plateau(
    opt: Optimizer, cfg: SchedulerConfig, total: int, per_epoch: int, mode: str = "min"
) -> tuple[Any, str]:
    return lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=cfg.factor, patience=cfg.patience), "eval"
