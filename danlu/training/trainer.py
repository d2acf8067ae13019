"""The training loop. Every task trains through `fit`; a task supplies the loss and the
metrics, never the loop. Read it top to bottom: set-up, resume, epochs of steps,
evaluation, early stopping, checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from danlu.config import TrainConfig
from danlu.data.batches import batches
from danlu.data.tabular import TensorData
from danlu.errors import DanluError
from danlu.evaluation.metrics import direction
from danlu.run import RunDir
from danlu.training import checkpoint, distributed
from danlu.training.optim import build_optimizer, build_scheduler
from danlu.training.progress import Progress


class Interrupted(Exception):
    """Ctrl-C during training: a checkpoint was saved and the run can be resumed."""

    def __init__(self, run: RunDir, epoch: int, step: int) -> None:
        super().__init__(
            f"interrupted at epoch {epoch + 1}, step {step}; checkpoint saved."
            f" Resume with: danlu train --resume {run.path}"
        )


DIVERGENCE_CHECK = 100  # optimizer steps between looks at the training loss between evaluations


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_value: float | None
    stopped_early: bool
    steps: int


@dataclass
class TrainerState:
    """Everything besides weights/optimizer that a resumed run needs to continue exactly."""

    epoch: int = 0  # the epoch in progress (0-based)
    batch: int = 0  # next batch within that epoch
    step: int = 0  # optimizer steps taken
    best: float | None = None
    best_epoch: int = -1  # index into history of the best evaluation
    bad_epochs: int = 0  # evaluations without improvement
    loss_sum: float = 0.0  # partial epoch, for a mid-epoch checkpoint
    loss_count: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)  # logged steps (steps.csv)
    log_sum: float = 0.0  # training loss since the last logged step
    log_count: int = 0


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DanluError("train.device: cuda was asked for but no CUDA GPU is available; use auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise DanluError("train.device: mps was asked for but is not available; use auto or cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision on GPUs only: bf16 where supported, else fp16; fp32 on CPU."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def evaluate_split(
    model: nn.Module,
    task: Any,
    data: TensorData,
    device: torch.device,
    batch_size: int = 4096,
    amp: torch.dtype | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Loss and metrics of a whole split, and the decoded outputs (probabilities or
    predictions in the target's units)."""
    model.eval()
    keep = getattr(task, "keeps_outputs", True)
    if not keep:  # sequence logits are (block x vocab) per row: keep chunks small
        batch_size = min(batch_size, 64)
    # variable-length outputs (transcripts) cannot be concatenated: decode them batch by batch
    per_batch = hasattr(task, "decode_batch")
    outputs, targets, loss_sum, rows = [], [], 0.0, 0
    with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        for x, y in batches(data, batch_size, shuffle=False, seed=0, device=device).epoch(0):
            out = model(**x)
            # mean losses are weighted by what they average over (rows, or tokens)
            n = int((y != -100).sum()) if not keep else len(y)
            loss_sum += float(task.loss(out, y)) * n
            rows += n
            if per_batch:
                outputs.extend(task.decode_batch(out))
                targets.extend(task.target(y.cpu()))
            elif keep:
                outputs.append(out.float().cpu())
                targets.append(y.cpu())
    loss = loss_sum / max(rows, 1)
    if per_batch:
        decoded = np.asarray(outputs, dtype=object)
        return {**task.metrics(np.asarray(targets, dtype=object), decoded), "loss": loss}, decoded
    if not keep:
        return {"loss": loss, **task.metrics_from_loss(loss)}, np.zeros(0)
    decoded = task.decode(torch.cat(outputs))
    metrics = task.metrics(task.target(torch.cat(targets)), decoded)
    metrics["loss"] = loss
    return metrics, decoded


class _StopFlag:
    """First Ctrl-C asks the loop to checkpoint and stop; a second one aborts at once."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> _StopFlag:
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def fit(
    model: nn.Module,
    task: Any,
    splits: dict[str, TensorData],
    cfg: TrainConfig,
    run: RunDir,
    *,
    seed: int,
    resume: bool = False,
    progress: str = "auto",
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    # ---- set-up: devices, processes, optimizer, schedule
    device = pick_device(cfg.device)
    dist = distributed.init(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    amp = autocast_dtype(cfg.precision, device)
    model.to(device)
    if not any(p.requires_grad for p in model.parameters()):
        # fitted in closed form when it was built (danlu/recommend: popularity, ease): no steps
        return _fitted_in_closed_form(model, task, splits.get("val"), device, run, dist.is_main)
    if hasattr(task, "criterion") and isinstance(task.criterion, nn.Module):
        task.criterion.to(device)  # class weights live on the model's device
    ddp = nn.parallel.DistributedDataParallel(model) if dist.enabled else model
    # the training step runs the compiled wrapper; checkpoints and evaluation use `model`
    # itself, so saved weights keep their names and evaluation never recompiles
    step_model = torch.compile(ddp) if cfg.compile else ddp
    train = batches(
        splits["train"],
        cfg.batch_size,
        shuffle=True,
        seed=seed,
        rank=dist.rank,
        world=dist.world,
        device=device,
    )
    val = splits.get("val")
    if cfg.monitor.startswith("val.") and val is None:
        raise DanluError(
            f"train.monitor is {cfg.monitor} but there is no validation split;"
            " set data.split.val > 0 or monitor a train.* metric"
        )
    mode = direction(cfg.monitor)
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(train) / cfg.accumulate)
    scheduler, interval = build_scheduler(optimizer, cfg, steps_per_epoch, mode)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    penalized = [p for p in model.parameters() if p.ndim >= 2] if cfg.l1 or cfg.l2 else []
    writer = _tensorboard(run) if cfg.tensorboard and dist.is_main else None

    # ---- resume: weights, optimizer, scheduler, RNG and position from checkpoints/last
    state = TrainerState()
    if resume:
        if dist.is_main:
            run.clean_partial()  # temporary files and unfinished checkpoints of a killed run
        distributed.barrier(dist)
        saved = checkpoint.load(
            model, run, optimizer=optimizer, scheduler=scheduler, scaler=scaler, main=dist.is_main
        )
        state = TrainerState(**saved)
    if dist.is_main and (resume or state.steps):
        run.write_steps(state.steps)  # steps logged after the checkpoint are logged again

    last_written = {"step": -1, "at": time.perf_counter()}

    def save_last(force: bool = False) -> None:
        """checkpoints/last (weights + optimizer, scheduler, RNG, position): every evaluation
        at first, then at most every `checkpoint_every` seconds (pickling the whole state
        each epoch of a tiny model costs more than the epoch), and always at the end and on
        Ctrl-C. A crash loses at most that long; metrics.csv is written every evaluation."""
        due = time.perf_counter() - last_written["at"] >= cfg.checkpoint_every
        if dist.is_main and state.step != last_written["step"] and (force or due):
            state.log_sum, state.log_count = float(log_sum), log_count
            checkpoint.save(
                model,
                run,
                optimizer=optimizer,
                scheduler=scheduler,
                scaler=scaler,
                trainer=state.__dict__,
            )
            last_written.update(step=state.step, at=time.perf_counter())

    def save_best() -> None:
        # weights only: the best model is restored at the end, never resumed from
        if dist.is_main:
            tag = f"{state.step}:{state.epoch}:{state.batch}"
            checkpoint.save_weights(model, run.best_weights, {"tag": tag})

    max_steps = cfg.max_steps or math.inf
    # the bar counts steps of the run when it has a step budget (epochs may end it sooner)
    planned = min(cfg.max_steps, cfg.epochs * steps_per_epoch) if cfg.max_steps else None
    log_every = cfg.log_every or _auto_log_every(cfg)
    # contexts entered every step: build them once (an autocast object costs microseconds)
    no_op = contextlib.nullcontext()
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp is not None else (lambda: no_op)
    loss_sum = torch.tensor(state.loss_sum, device=device)  # training loss since the last evaluation
    count, started = state.loss_count, time.perf_counter()
    log_sum, log_count = torch.tensor(state.log_sum, device=device), state.log_count
    stopped_early = False

    def step_row() -> dict[str, float]:
        return {
            "step": state.step,
            "epoch": state.epoch + 1,
            "train.loss": float(log_sum / max(log_count, 1)),
            "lr": optimizer.param_groups[0]["lr"],
        }

    def log_step(bar: Progress) -> None:
        """A training-loss point every `log_every` steps: steps.csv and a plain line. Not an
        evaluation: early stopping and the monitor see evaluations only."""
        nonlocal log_sum, log_count
        row = step_row()
        state.steps.append(row)
        log_sum, log_count = torch.zeros((), device=device), 0
        if dist.is_main:
            run.append_steps(row)
        if writer is not None:
            writer.add_scalar("train.loss_step", row["train.loss"], state.step)
        bar.log_step(row)

    def evaluate_and_log(bar: Progress) -> None:
        """Validation metrics, one metrics.csv row, early stopping and checkpoints."""
        nonlocal loss_sum, count, started, stopped_early
        sums = distributed.all_reduce_sum(
            torch.stack([loss_sum.float(), torch.tensor(float(count), device=device)]), dist
        )
        row: dict[str, float] = {
            "epoch": state.epoch + 1 if state.batch else state.epoch,
            "step": state.step,
            "train.loss": float(sums[0] / sums[1]),
        }
        # before anything (a NaN "best" model) is written; the weights too, as the last step
        # can turn them NaN after a finite loss (one device sync, small beside the evaluation)
        if not math.isfinite(row["train.loss"]):
            raise _diverged(f"the training loss is {row['train.loss']}", state.step, cfg)
        finite = [p.detach().isfinite().all() for p in model.parameters()]
        if finite and not bool(torch.stack(finite).all()):
            raise _diverged("the model's weights are no longer finite numbers", state.step, cfg)
        if penalized:
            with torch.no_grad():
                if cfg.l1:
                    row["train.l1_penalty"] = float(cfg.l1 * sum(p.abs().sum() for p in penalized))
                if cfg.l2:
                    row["train.l2_penalty"] = float(cfg.l2 * sum(p.pow(2).sum() for p in penalized))
        if val is not None:
            metrics, _ = evaluate_split(model, task, val, device, amp=amp)
            row.update({f"val.{k}": float(v) for k, v in metrics.items() if _is_number(v)})
            model.train()
        row["lr"] = optimizer.param_groups[0]["lr"]
        row["time"] = time.perf_counter() - started
        if cfg.monitor not in row:
            valid = ", ".join(k for k in row if k.startswith(("val.", "train.")))
            raise DanluError(f"train.monitor: '{cfg.monitor}' is not logged by this task; valid: {valid}")
        value = row[cfg.monitor]
        improved = _improved(value, state.best, mode, cfg.early_stopping)
        if improved:
            state.best, state.best_epoch, state.bad_epochs = value, len(state.history), 0
        else:
            state.bad_epochs += 1
        if scheduler is not None and interval == "epoch":
            scheduler.step()
        elif scheduler is not None and interval == "eval":
            scheduler.step(value)
        state.history.append(row)
        state.loss_sum, state.loss_count = 0.0, 0
        loss_sum, count, started = torch.zeros((), device=device), 0, time.perf_counter()
        stopped_early = cfg.early_stopping is not None and state.bad_epochs >= cfg.early_stopping.patience
        if improved:
            save_best()
        if dist.is_main:
            run.write_history(state.history)
        save_last(force=last_written["step"] < 0)
        if writer is not None:
            for k, v in row.items():
                writer.add_scalar(k, v, state.step)
        bar.end_epoch(row, improved)
        sample = task.sample(model) if dist.is_main and hasattr(task, "sample") else None
        if sample:  # language models: what the model writes now, in the run folder too
            run.append_sample(state.step, sample)
            bar.print(f"sample at step {state.step}:\n{sample}")
        if on_eval is not None and dist.is_main:
            # after the row and checkpoints are written: an exception here (a tuning pruner's)
            # leaves a consistent, resumable run folder
            on_eval(len(state.history), row)

    # throughput in the bar: tokens for sequence tasks (every target position), else samples
    tokens = getattr(task, "unit", "samples") == "tok"
    bar_mode = "quiet" if not dist.is_main else progress
    unit = "tok" if tokens else "samples"
    with Progress(bar_mode, cfg.monitor, unit, planned) as bar, _StopFlag() as stop:
        while state.epoch < cfg.epochs and state.step < max_steps and not stopped_early:
            # ---- one epoch of steps (evaluating every `eval_every` steps when set)
            model.train()
            bar.start_epoch(state.epoch, cfg.epochs, len(train), state.batch, state.step)
            for i, (x, y) in enumerate(train.epoch(state.epoch, state.batch), start=state.batch):
                last_micro = (i + 1) % cfg.accumulate == 0 or i + 1 == len(train)
                sync = ddp.no_sync() if dist.enabled and not last_micro else no_op
                with sync:
                    with autocast():
                        loss = task.loss(step_model(**x), y)
                        total = loss + _penalty(penalized, cfg.l1, cfg.l2) if penalized else loss
                    total = total / cfg.accumulate
                    (scaler.scale(total) if scaler else total).backward()
                loss_sum.add_(loss.detach(), alpha=len(y))
                count += len(y)
                log_sum.add_(loss.detach(), alpha=len(y))
                log_count += len(y)
                bar.step(i, loss, y.numel() if tokens else len(y), state.step)
                if not last_micro:
                    continue
                _clip(model, optimizer, scaler, cfg)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                if scheduler is not None and interval == "step":
                    scheduler.step()
                state.batch = i + 1
                # a long epoch without eval_every would train NaN weights to its end: look at
                # the summed loss now and then (one device sync per DIVERGENCE_CHECK steps)
                if state.step % DIVERGENCE_CHECK == 0 and not dist.enabled and not torch.isfinite(loss_sum):
                    raise _diverged(f"the training loss is {float(loss_sum)}", state.step, cfg)
                if log_every and state.step % log_every == 0:
                    log_step(bar)
                elif bar.due():  # no terminal and a long silence: a line, not a logged point
                    bar.log_step(step_row())
                if stop.requested:
                    state.loss_sum, state.loss_count = float(loss_sum), count
                    save_last(force=True)
                    raise Interrupted(run, state.epoch, state.step)
                if (cfg.eval_every and state.step % cfg.eval_every == 0) or state.step >= max_steps:
                    evaluate_and_log(bar)
                    if stopped_early or state.step >= max_steps:
                        break
            if state.batch >= len(train):  # the epoch ran to its end
                state.epoch, state.batch = state.epoch + 1, 0
                if not cfg.eval_every:
                    evaluate_and_log(bar)
        if count and not stopped_early:  # steps since the last evaluation (eval_every runs)
            evaluate_and_log(bar)
        if stopped_early:
            bar.print(
                f"early stopping: {cfg.monitor} has not improved for {state.bad_epochs}"
                f" evaluations; best {state.best:.4g} at step {state.history[state.best_epoch]['step']:.0f}"
            )

    save_last(force=True)  # no-op when the last evaluation already wrote it

    # ---- finish: the best weights (not the last) are the model, unless told otherwise
    if cfg.restore_best and state.best_epoch >= 0 and run.best_weights.is_file():
        distributed.barrier(dist)
        checkpoint.load_weights(model, run.best_weights)
    if writer is not None:
        writer.close()
    model.to("cpu")
    return FitResult(state.history, state.best_epoch, state.best, stopped_early, state.step)


def _fitted_in_closed_form(
    model: nn.Module, task: Any, val: Any, device: torch.device, run: RunDir, main: bool
) -> FitResult:
    """A model without trainable parameters: one metrics.csv row, its validation metrics."""
    row: dict[str, float] = {"epoch": 0, "step": 0}
    if val is not None:
        metrics, _ = evaluate_split(model, task, val, device)
        row.update({f"val.{k}": float(v) for k, v in metrics.items() if _is_number(v)})
    if main:
        run.write_history([row])
    model.to("cpu")
    return FitResult([row], 0, None, False, 0)


def _diverged(what: str, step: int, cfg: TrainConfig) -> DanluError:
    hints = "lower train.lr" + ("" if cfg.grad_clip else ", or set train.grad_clip (e.g. 1.0)")
    return DanluError(
        f"training diverged: {what} at step {step}; the learning rate is the likely cause"
        f" (train.lr is {cfg.lr:g}): {hints}"
    )


def _auto_log_every(cfg: TrainConfig) -> int | None:
    """Runs counted in steps log a training-loss point a tenth of the way to each
    evaluation and a twentieth of the run; epoch runs have a point per epoch already."""
    if not cfg.max_steps and not cfg.eval_every:
        return None
    tenth = cfg.eval_every // 10 if cfg.eval_every else math.inf
    twentieth = cfg.max_steps // 20 if cfg.max_steps else math.inf
    return max(1, int(min(tenth, twentieth)))


def _penalty(params: list[torch.Tensor], l1: float, l2: float) -> torch.Tensor:
    total = torch.zeros((), device=params[0].device)
    if l1:
        total = total + l1 * sum(p.abs().sum() for p in params)
    if l2:
        total = total + l2 * sum(p.pow(2).sum() for p in params)
    return total


def _clip(model: nn.Module, optimizer: Any, scaler: Any, cfg: TrainConfig) -> None:
    if cfg.grad_clip is None:
        return
    if scaler is not None:
        scaler.unscale_(optimizer)
    if cfg.grad_clip_mode == "norm":
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    else:
        nn.utils.clip_grad_value_(model.parameters(), cfg.grad_clip)


def _improved(value: float, best: float | None, mode: str, es: Any) -> bool:
    if math.isnan(value):
        return False
    if best is None:
        return True
    delta = es.min_delta if es is not None else 0.0
    return value < best - delta if mode == "min" else value > best + delta


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.floating) and not isinstance(v, bool)


def _tensorboard(run: RunDir) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise DanluError(
            "train.tensorboard needs the tensorboard package: pip install 'danlu[tensorboard]'"
        ) from None
    return SummaryWriter(str(run.tensorboard))
