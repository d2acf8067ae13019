"""Hyperparameter search: `danlu tune` against a plain Optuna script written by hand.

The search of examples/tune_tutorial.yaml (the introduction's MLP on make_classification:
lr, optimizer, hidden sizes, dropout; TPE, seed 0; early stopping on val.loss with
patience 20), `--trials` trials, with and without the median pruner, for:

  danlu         danlu.tune: every trial an ordinary run folder (config, metrics.csv,
                checkpoints, final test evaluation), the study in a journal file
  hand          the obvious hand-written Optuna script: an in-memory study, an objective
                with a torch loop over DataLoader(TensorDataset, shuffle=True) batches,
                trial.report / should_prune each epoch, best weights kept in memory
  hand_tensor   the same script batching by slicing pre-shuffled tensors (as danlu does):
                the same training work as danlu, so the difference is danlu's overhead

The hand scripts run the configurations danlu's search drew, in the same order
(`study.enqueue_trial`): an epoch of a [256, 128] MLP costs twice one of a [32] MLP, so
searches that draw different configurations would compare different work. The figure
that compares is the time per training epoch (wall time over all epochs trained), since
early stopping and pruning end trials at different epochs.

Each method runs in its own process; imports and the first-use imports of the training
path (sklearn, the optimizer) are warmed before the clock starts, so the numbers are per
search. Reported: wall time, trials per minute, training epochs, seconds per epoch (trials
stop early at different points), the best validation loss and the test accuracy of the
trial it selects. Then `danlu tune --jobs 2` against `--jobs 1`, each a whole CLI run
(process start-up included), in trials per minute: once on the search above (TPE + median
pruner: parallel trials see fewer finished ones, so they are pruned less and train more
epochs, and the sampler draws other configurations) and once on a grid of 20 fixed
configurations without pruning, where both run exactly the same training work.

    python benchmarks/tune.py              # 20 trials, prints markdown tables
    python benchmarks/tune.py --quick      # a small smoke run (4 trials, 4 epochs)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TUTORIAL = REPO / "examples" / "tune_tutorial.yaml"
METHODS = ["danlu", "hand", "hand_tensor"]
HIDDEN = [[32], [64, 64], [128, 64], [256, 128]]


def warm_up() -> None:
    """First-use imports that any search pays once (sklearn, torch.optim's compile hooks)."""
    import sklearn.datasets  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import torch

    p = torch.nn.Parameter(torch.zeros(1))
    torch.optim.Adam([p]).step()


# --------------------------------------------------------------------------- danlu
def run_danlu(trials: int, pruner: str, epochs: int, out: str) -> dict:
    import danlu
    from danlu import api  # noqa: F401  (imported before the clock, like the hand script's torch)

    warm_up()
    overrides = [f"train.epochs={epochs}", "eval.plots=false", f"output.dir={out}"]
    start = time.perf_counter()
    result = danlu.tune(
        TUTORIAL, overrides, trials=trials, pruner=pruner, study=f"bench-{pruner}", progress="quiet"
    )
    wall = time.perf_counter() - start
    best = next(r for r in result.trials if r["trial"] == result.best_trial)
    keys = ("train.lr", "train.optimizer", "model.hidden", "model.dropout")
    drawn = [{k: r[k] for k in keys} for r in sorted(result.trials, key=lambda r: r["trial"])]
    return {
        "params": drawn,
        "wall": wall,
        "trials": len(result.trials),
        "pruned": sum(r["state"] == "PRUNED" for r in result.trials),
        "epochs": sum(r["epochs"] or 0 for r in result.trials),
        "best_val_loss": result.best_value,
        "test_accuracy": best["test.accuracy"],
    }


# --------------------------------------------------------------------------- by hand
def run_hand(trials: int, pruner: str, epochs: int, loader: str, replay: list[dict] | None = None) -> dict:
    """The plain Optuna script, written the way its tutorials show; `replay`: the
    configurations to run, in order (else TPE draws them)."""
    import copy

    import numpy as np
    import optuna
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    warm_up()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    X, y = make_classification(n_samples=1000, n_features=10, n_informative=5, random_state=42)
    X_rest, X_test, y_rest, y_test = train_test_split(X, y, test_size=0.2, random_state=42)
    X_train, X_val, y_train, y_val = train_test_split(X_rest, y_rest, test_size=0.125, random_state=42)
    scaler = StandardScaler().fit(X_train)

    def tensors(a: np.ndarray, b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(scaler.transform(a), dtype=torch.float32), torch.tensor(b)

    (xt, yt), (xv, yv), (xs, ys) = tensors(X_train, y_train), tensors(X_val, y_val), tensors(X_test, y_test)

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("train.lr", 1e-4, 1e-1, log=True)
        name = trial.suggest_categorical("train.optimizer", ["adam", "adamw", "sgd"])
        hidden = json.loads(trial.suggest_categorical("model.hidden", [json.dumps(h) for h in HIDDEN]))
        dropout = trial.suggest_float("model.dropout", 0.0, 0.5)
        torch.manual_seed(0)
        layers, width = [], 10
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        model = nn.Sequential(*layers, nn.Linear(width, 2))
        if name == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        else:
            opt = (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(model.parameters(), lr=lr)
        batches = (
            DataLoader(TensorDataset(xt, yt), batch_size=32, shuffle=True) if loader == "dataloader" else None
        )
        best, bad, best_state, epoch = float("inf"), 0, None, 0
        for epoch in range(1, epochs + 1):
            model.train()
            if batches is None:
                order = torch.randperm(len(xt))
                batches_now = [(xt[order[i : i + 32]], yt[order[i : i + 32]]) for i in range(0, len(xt), 32)]
            for xb, yb in batches if batches is not None else batches_now:
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                val_loss = F.cross_entropy(model(xv), yv).item()
            trial.report(val_loss, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
            if val_loss < best:
                best, bad, best_state = val_loss, 0, copy.deepcopy(model.state_dict())
            else:
                bad += 1
                if bad >= 20:
                    break
        model.load_state_dict(best_state)
        model.eval()
        with torch.no_grad():
            accuracy = (model(xs).argmax(1) == ys).float().mean().item()
        trial.set_user_attr("test_accuracy", accuracy)
        trial.set_user_attr("epochs", epoch)
        return best

    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=5)
    chosen = optuna.pruners.MedianPruner(5, 5) if pruner == "median" else optuna.pruners.NopPruner()
    start = time.perf_counter()
    study = optuna.create_study(direction="minimize", sampler=sampler, pruner=chosen)
    for params in replay or []:
        hidden = params["model.hidden"]
        hidden = json.dumps(json.loads(hidden) if isinstance(hidden, str) else hidden)
        study.enqueue_trial({**params, "model.hidden": hidden})
    study.optimize(objective, n_trials=trials)
    wall = time.perf_counter() - start
    epochs_run = sum(t.user_attrs.get("epochs") or len(t.intermediate_values) for t in study.trials)
    return {
        "wall": wall,
        "trials": len(study.trials),
        "pruned": sum(t.state.name == "PRUNED" for t in study.trials),
        "epochs": epochs_run,
        "best_val_loss": study.best_value,
        "test_accuracy": study.best_trial.user_attrs["test_accuracy"],
    }


# --------------------------------------------------------------------------- --jobs
GRID = """tune:
  sampler: grid
  pruner: none
  space:
    train.lr: {choice: [0.0003, 0.001, 0.003, 0.01, 0.03]}
    model.hidden: {choice: [[32], [64, 64], [128, 64], [256, 128]]}
"""  # 20 configurations: --jobs 1 and --jobs 2 train exactly the same ones


def run_jobs(trials: int, jobs: int, epochs: int, out: str, grid: bool = False) -> dict:
    import csv

    space = []
    if grid:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "grid.yaml").write_text(GRID, encoding="utf-8")
        space = ["--space", str(Path(out) / "grid.yaml")]
    cmd = [
        sys.executable, "-m", "danlu", "tune", str(TUTORIAL), "--trials", str(trials), "--jobs", str(jobs),
        "--study", f"jobs{jobs}", "--set", f"train.epochs={epochs}", "--set", "eval.plots=false",
        "--set", f"output.dir={out}", "--quiet", *space,
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    wall = time.perf_counter() - start
    with open(Path(out) / f"jobs{jobs}" / "trials.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {"wall": wall, "trials": len(rows), "epochs": sum(int(r["epochs"] or 0) for r in rows)}


# --------------------------------------------------------------------------- driver
def child(args: argparse.Namespace) -> None:
    if args.run == "danlu":
        result = run_danlu(args.trials, args.pruner, args.epochs, args.out)
    elif args.run.startswith("hand"):
        replay = json.loads(Path(args.replay).read_text()) if args.replay else None
        loader = "tensor" if args.run == "hand_tensor" else "dataloader"
        result = run_hand(args.trials, args.pruner, args.epochs, loader, replay)
    else:
        jobs, grid = args.run.removeprefix("jobs").split("-")[0], args.run.endswith("-grid")
        result = run_jobs(args.trials, int(jobs), args.epochs, args.out, grid)
    print(json.dumps(result))


def measure(method: str, trials: int, pruner: str, epochs: int, out: str, replay: str = "") -> dict:
    cmd = [sys.executable, __file__, "--run", method, "--trials", str(trials), "--pruner", pruner,
           "--epochs", str(epochs), "--out", out, "--replay", replay]  # fmt: skip
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="4 trials of at most 4 epochs: a smoke run")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=200, help="at most, per trial (early stopping on)")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--pruner", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--replay", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        child(args)
        return
    if args.quick:
        args.trials, args.epochs = 4, 4
    print(f"{args.trials} trials, at most {args.epochs} epochs each, {os.cpu_count()} CPU cores", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for pruner in ("none", "median"):
            replay = str(Path(out) / f"params-{pruner}.json")
            for method in METHODS:
                r = measure(
                    method, args.trials, pruner, args.epochs, str(Path(out) / f"{method}-{pruner}"),
                    replay if method != "danlu" else "",
                )  # fmt: skip
                if method == "danlu":  # the hand scripts run the same configurations
                    Path(replay).write_text(json.dumps(r.pop("params")), encoding="utf-8")
                rows.append((method, pruner, r))
                print(f"  {method} pruner={pruner}: {r}", file=sys.stderr, flush=True)
        jobs = {}
        for setting in ("", "-grid"):
            for j in (1, 2):
                name = f"jobs{j}{setting}"
                jobs[name] = measure(name, args.trials, "median", args.epochs, str(Path(out) / name))
                print(f"  {name}: {jobs[name]}", file=sys.stderr, flush=True)

    print("\n| method | pruner | wall (s) | trials/min | epochs | ms/epoch | best val.loss | test accuracy |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for method, pruner, r in rows:
        per_min, ms = 60 * r["trials"] / r["wall"], 1000 * r["wall"] / max(r["epochs"], 1)
        print(
            f"| {method} | {pruner} | {r['wall']:.1f} | {per_min:.1f} | {r['epochs']} ({r['pruned']} pruned)"
            f" | {ms:.1f} | {r['best_val_loss']:.4f} | {r['test_accuracy']:.4f} |"
        )
    by = {(m, p): r for m, p, r in rows}
    for pruner in ("none", "median"):
        per_epoch = {m: by[(m, pruner)]["wall"] / max(by[(m, pruner)]["epochs"], 1) for m in METHODS}
        same, loader = (
            per_epoch["danlu"] / per_epoch["hand_tensor"] - 1,
            per_epoch["danlu"] / per_epoch["hand"] - 1,
        )
        print(
            f"\npruner={pruner}: danlu's time per epoch is {same:+.0%} over the hand-written script with the"
            f" same batching, {loader:+.0%} over the DataLoader one (goal: at most +10%)"
        )
    rate = {name: 60 * r["trials"] / r["wall"] for name, r in jobs.items()}
    print("\n| danlu tune (whole command) | search | wall (s) | trials/min | epochs | epochs/s |")
    print("|---|---|---:|---:|---:|---:|")
    for name, r in jobs.items():
        search = "grid of 20, no pruner" if name.endswith("-grid") else "TPE + median pruner"
        print(
            f"| --jobs {name[4]} | {search} | {r['wall']:.1f} | {rate[name]:.1f} | {r['epochs']}"
            f" | {r['epochs'] / r['wall']:.1f} |"
        )
    for setting, what in (("", "TPE + median"), ("-grid", "the same 20 grid configurations")):
        one, two = jobs[f"jobs1{setting}"], jobs[f"jobs2{setting}"]
        epoch_rate = two["epochs"] * one["wall"] / (one["epochs"] * two["wall"])
        print(
            f"\n{what}: --jobs 2 runs {rate[f'jobs2{setting}'] / rate[f'jobs1{setting}']:.2f}x the trials per"
            f" minute of --jobs 1 (goal: at least 1.6x), {epoch_rate:.2f}x the epochs per second"
        )


if __name__ == "__main__":
    main()
