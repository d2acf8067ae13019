"""The trainer: determinism, exact resume (end of epoch and Ctrl-C mid-epoch),
gradient accumulation, regularization logging, schedulers, TensorBoard, reload."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import danlu

BASE = {
    "name": "t",
    "seed": 3,
    "data": {
        "source": "make_classification",
        "params": {"n_samples": 800, "n_features": 8, "n_informative": 4, "random_state": 1},
        "split": {"val": 0.1, "test": 0.2},
    },
    "model": {"hidden": [32, 32], "dropout": 0.1},
    "train": {"epochs": 6, "batch_size": 32, "early_stopping": None},
    "eval": {"plots": False},
}


def cfg(tmp_path: Path, **over: object) -> dict:
    c = yaml.safe_load(yaml.safe_dump(BASE))
    c["output"] = {"dir": str(tmp_path / "runs")}
    for key, value in over.items():
        node = c
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return c


def history(run_path: Path) -> list[dict[str, str]]:
    with open(run_path / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(f)]


def test_same_seed_same_numbers(tmp_path: Path) -> None:
    a = danlu.train(cfg(tmp_path), progress="quiet")
    b = danlu.train(cfg(tmp_path), progress="quiet")
    assert history(a.path) == history(b.path)
    assert a.metrics["metrics"]["accuracy"] == b.metrics["metrics"]["accuracy"]


def test_resume_after_epoch_equals_uninterrupted(tmp_path: Path) -> None:
    full = danlu.train(cfg(tmp_path), progress="quiet")
    part = danlu.train(cfg(tmp_path, train__epochs=3), progress="quiet")
    assert len(history(part.path)) == 3
    resumed = danlu.train(None, {"train.epochs": 6}, resume=part.path, progress="quiet")
    assert resumed.path == part.path
    assert history(resumed.path) == history(full.path)


@pytest.mark.slow
def test_ctrl_c_mid_epoch_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    # big enough epochs that SIGINT lands inside one
    c = cfg(tmp_path, train__epochs=12, train__batch_size=8)
    c["data"]["params"]["n_samples"] = 2000
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(c))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "danlu", "train", str(path), "--quiet"]
    full = subprocess.run([*cmd, "--name", "full"], env=env, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen([*cmd, "--name", "cut"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    cut_dir = None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "runs").glob("cut-*/metrics.csv"))
        if found and len(found[0].read_text().splitlines()) >= 3:  # header + 2 epochs
            cut_dir = found[0].parent
            # the trainer looks at the flag after each optimizer step, so the stop lands inside
            # epoch 3 (its first step at the earliest) whatever this machine's speed
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.01)
    _, err = proc.communicate(timeout=300)
    assert cut_dir is not None, "run finished before it could be interrupted"
    assert proc.returncode == 130, err
    assert "danlu train --resume" in err
    assert not (cut_dir / "model.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "danlu", "train", "--resume", str(cut_dir), "--quiet"],
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    full_dir = next((tmp_path / "runs").glob("full-*"))
    assert history(cut_dir) == history(full_dir)
    assert (cut_dir / "metrics.json").read_text() == (full_dir / "metrics.json").read_text()


def test_gradient_accumulation_matches_larger_batch(tmp_path: Path) -> None:
    # 640 training rows: every batch of 32 is exactly two batches of 16
    over = {"data__split": {"val": 0.0, "test": 0.2}, "train__monitor": "train.loss",
            "model__dropout": 0.0, "train__epochs": 3}
    big = danlu.train(cfg(tmp_path, **over), progress="quiet")
    acc = danlu.train(cfg(tmp_path, **over, train__batch_size=16, train__accumulate=2), progress="quiet")
    for a, b in zip(history(big.path), history(acc.path), strict=True):
        assert float(a["train.loss"]) == pytest.approx(float(b["train.loss"]), rel=1e-4)
        assert a["step"] == b["step"]


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path: Path) -> None:
    # train.compile runs the step through torch.compile (inductor on CPU): the same numbers
    # as eager up to float rounding, and a run folder that loads like any other
    over = {"model__dropout": 0.0, "train__epochs": 2}
    eager = danlu.train(cfg(tmp_path, **over), progress="quiet")
    compiled = danlu.train(cfg(tmp_path, **over, train__compile=True), progress="quiet")
    for a, b in zip(history(eager.path), history(compiled.path), strict=True):
        for key in ("train.loss", "val.loss", "val.accuracy"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-5), key
    # the test metrics come from the weights reloaded from the run folder
    assert compiled.metrics["metrics"]["accuracy"] == pytest.approx(eager.metrics["metrics"]["accuracy"])
    assert not any(k.startswith("_orig_mod") for k in compiled.load().model.state_dict())


def test_l1_l2_penalties_are_logged_and_shrink_weights(tmp_path: Path) -> None:
    plain = danlu.train(cfg(tmp_path), progress="quiet")
    reg = danlu.train(cfg(tmp_path, train__l1=1e-3, train__l2=1e-2), progress="quiet")
    rows = history(reg.path)
    assert float(rows[0]["train.l1_penalty"]) > 0 and float(rows[0]["train.l2_penalty"]) > 0

    def norm(run: danlu.Run) -> float:
        model = danlu.load(run.path).model
        return sum(float(p.detach().abs().sum()) for p in model.parameters() if p.ndim >= 2)

    assert norm(reg) < norm(plain)


# base lr 0.1, 6 epochs of 5 steps: the lr each of the 30 steps runs at, from the schedule's
# closed form (not from the scheduler objects under test)
BASE_LR, EPOCHS, PER_EPOCH = 0.1, 6, 5
TOTAL = EPOCHS * PER_EPOCH


def _cos(p: float) -> float:
    return 0.5 * (1 + math.cos(math.pi * p))


def _onecycle(s: int) -> float:
    # torch's OneCycleLR (cos annealing): 0.1/25 up to 0.1 over 30% of the steps (step 8), then
    # down to 0.1/25/1e4 at the last step (29)
    lo, hi, end, peak = BASE_LR / 25, BASE_LR, BASE_LR / 25 / 1e4, 0.3 * TOTAL - 1
    if s <= peak:
        return hi + (lo - hi) * _cos(s / peak)
    return end + (hi - end) * _cos((s - peak) / (TOTAL - 1 - peak))


CLOSED_FORMS: dict[str, tuple[dict[str, Any], Any]] = {
    "none": ({}, lambda s: BASE_LR),
    "step": ({"step_size": 2, "gamma": 0.5}, lambda s: BASE_LR * 0.5 ** ((s // PER_EPOCH) // 2)),
    "exponential": ({"gamma": 0.5}, lambda s: BASE_LR * 0.5 ** (s // PER_EPOCH)),
    # no warm-up: from 0.1 down a half cosine to min_lr_ratio * 0.1 at the 30th step
    "cosine": ({"min_lr_ratio": 0.1}, lambda s: BASE_LR * (0.1 + 0.9 * _cos(s / TOTAL))),
    # 6 warm-up steps (0.2 of 30) climb 1/6, 2/6, ... 6/6; then the decay over the other 24
    "warmup_cosine": (
        {"warmup": 0.2},
        lambda s: BASE_LR * ((s + 1) / 6 if s < 6 else _cos((s - 6) / 24)),
    ),
    "warmup_linear": (
        {"warmup": 6},
        lambda s: BASE_LR * ((s + 1) / 6 if s < 6 else 1 - (s - 6) / 24),
    ),
    "onecycle": ({}, _onecycle),
}


@pytest.mark.parametrize("name", list(CLOSED_FORMS))
def test_scheduler_follows_its_closed_form(name: str) -> None:
    from danlu.config import SchedulerConfig
    from danlu.registry import SCHEDULERS

    settings, closed_form = CLOSED_FORMS[name]
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=BASE_LR, momentum=0.9)
    sched, interval = SCHEDULERS.get(name)(opt, SchedulerConfig(name=name, **settings), TOTAL, PER_EPOCH)
    lrs = []
    for _epoch in range(EPOCHS):  # stepped as the trainer steps it
        for _ in range(PER_EPOCH):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            if sched is not None and interval == "step":
                sched.step()
        if sched is not None and interval == "epoch":
            sched.step()
    assert lrs == pytest.approx([closed_form(s) for s in range(TOTAL)], rel=1e-6, abs=1e-12)


def test_warmup_schedules_warm_up_for_five_percent_by_default() -> None:
    from danlu.config import SchedulerConfig
    from danlu.registry import SCHEDULERS

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched, _ = SCHEDULERS.get("warmup_linear")(opt, SchedulerConfig(name="warmup_linear"), 100, 10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # 5 warm-up steps (the 5th reaches the peak, where the decay starts), then linear to 0
    # over the other 95
    assert lrs[:7] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1 - 1 / 95])
    assert lrs[-1] == pytest.approx(1 / 95)


def test_reduce_on_plateau_halves_after_each_epoch_without_improvement() -> None:
    from danlu.config import SchedulerConfig
    from danlu.registry import SCHEDULERS

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    cfg = SchedulerConfig(name="reduce_on_plateau", factor=0.5, patience=0)
    sched, interval = SCHEDULERS.get("reduce_on_plateau")(opt, cfg, TOTAL, PER_EPOCH, mode="min")
    assert interval == "eval"
    lrs = []
    for val_loss in [1.0, 0.9, 0.95, 0.96, 0.8, 0.85]:
        lrs.append(opt.param_groups[0]["lr"])
        sched.step(val_loss)
    # worse at epochs 3 and 4 (counting from 1): halved after each; better at 5: kept
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.025, 0.025])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0125)


def test_trainer_steps_the_schedule_per_epoch_and_over_all_steps(tmp_path: Path) -> None:
    # `step` changes the lr per epoch: the lr logged at the end of epoch e is the one it ran at
    run = danlu.train(
        cfg(tmp_path, train__scheduler={"name": "step", "step_size": 2, "gamma": 0.5}, train__lr=0.05),
        progress="quiet",
    )
    expected = [0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125]
    assert [float(r["lr"]) for r in history(run.path)] == pytest.approx(expected)
    # a per-step cosine spans every step of the run: after the last one it is at its floor
    run = danlu.train(
        cfg(tmp_path, train__scheduler={"name": "cosine", "min_lr_ratio": 0.1}, train__lr=0.05),
        progress="quiet",
    )
    lrs = [float(r["lr"]) for r in history(run.path)]
    assert lrs[-1] == pytest.approx(0.005) and all(a > b for a, b in zip(lrs, lrs[1:], strict=False))


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "adagrad", "rmsprop"])
def test_optimizers_learn(tmp_path: Path, optimizer: str) -> None:
    over = {"train__optimizer": optimizer, "train__lr": 0.01, "train__nesterov": optimizer == "sgd",
            "train__weight_decay": 0.01}
    run = danlu.train(cfg(tmp_path, **over), progress="quiet")
    assert run.metrics["metrics"]["accuracy"] > 0.7


def test_early_stopping_restores_best(tmp_path: Path) -> None:
    run = danlu.train(cfg(tmp_path, train__epochs=200, train__early_stopping={"patience": 3},
                          train__lr=0.05), progress="quiet")
    rows = history(run.path)
    assert len(rows) < 200
    losses = [float(r["val.loss"]) for r in rows]
    best = int(np.argmin(losses))
    assert len(rows) == best + 1 + 3
    meta = (run.path / "model.json").read_text()
    assert f'"best_epoch": {best + 1}' in meta


def test_load_predicts_exactly_what_training_evaluated(tmp_path: Path) -> None:
    run = danlu.train(cfg(tmp_path), progress="quiet")
    saved = pd.read_csv(run.path / "predictions.csv")
    predictor = danlu.load(run.path)
    # rebuild the same test split the trainer evaluated
    from danlu import config, data

    prepared = data.build(config.load(run.path / "config.yaml").data, "classification", 3)
    frame = prepared.frames["test"]
    proba = predictor.predict_proba(frame)
    np.testing.assert_array_equal(predictor.predict(frame), saved["prediction"].to_numpy())
    np.testing.assert_allclose(proba[:, 1], saved["proba_1"].to_numpy(), rtol=0, atol=1e-7)
    acc = float((predictor.predict(frame) == frame["target"].to_numpy()).mean())
    assert acc == pytest.approx(run.metrics["metrics"]["accuracy"])


def test_tensorboard_event_files(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard extra not installed")
    run = danlu.train(cfg(tmp_path, train__tensorboard=True, train__epochs=2), progress="quiet")
    assert list((run.path / "tensorboard").glob("events.out.tfevents.*"))


def test_checkpoints_are_safetensors_and_weights_only(tmp_path: Path) -> None:
    run = danlu.train(cfg(tmp_path, train__epochs=2), progress="quiet")
    ck = run.path / "checkpoints"
    assert (ck / "best.safetensors").is_file()  # the best weights, restored at the end
    (last,) = ck.glob("last-*")  # one checkpoint folder, named for its step
    assert (last / "model.safetensors").is_file()
    state = torch.load(last / "state.pt", weights_only=True)  # resuming continues from last
    assert {"optimizer", "rng", "trainer"} <= set(state)
    assert state["trainer"]["step"] == run.history[-1]["step"]
    assert not list(run.path.rglob("*.tmp"))


def test_last_checkpoint_is_throttled_but_always_final(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from danlu.training import checkpoint

    written: list[int] = []
    real = checkpoint.save

    def spy(*args: Any, **kwargs: Any) -> None:
        written.append(kwargs["trainer"]["step"])
        real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", spy)
    run = danlu.train(cfg(tmp_path, train__epochs=6), progress="quiet")  # epochs take milliseconds
    steps = [int(r["step"]) for r in run.history]
    assert written == [steps[0], steps[-1]]  # the first evaluation, then the end
    written.clear()
    run = danlu.train(cfg(tmp_path, train__epochs=3, train__checkpoint_every=0), progress="quiet")
    assert written == [int(r["step"]) for r in run.history]  # 0: every evaluation


@pytest.mark.slow
def test_ddp_two_processes(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not found beside the interpreter")
    c = cfg(tmp_path, train__epochs=8)
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(c))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "danlu", "train",
                        str(path), "--quiet", "--name", "ddp"], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list((tmp_path / "runs").glob("ddp-*"))
    assert len(runs) == 1, runs  # only rank 0 creates and writes the folder
    rows = history(runs[0])
    assert len(rows) == 8
    losses = [float(x["train.loss"]) for x in rows]
    assert losses[-1] < losses[0] * 0.7
    # each rank takes half of the rows per step: 520 train rows / 2 ranks / 32 = 9 steps an epoch
    assert int(rows[0]["step"]) == 9
    summary = (runs[0] / "metrics.json").read_text()
    assert '"accuracy"' in summary
    assert r.stdout.count("run folder:") == 1
