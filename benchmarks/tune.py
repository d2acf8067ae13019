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
(process start-up included), in trials per minute: on the search above with several
sampler seeds (`tune.seed`; TPE + median pruner: the random start-up trials are the same
with any --jobs, but after them TPE in parallel draws other configurations and the pruner
sees other trials, so the epochs trained differ from run to run, and one seed is one
draw), and once on a grid of 20 fixed configurations without pruning, where both run
exactly the same training work.

    python benchmarks/tune.py                          # 20 trials, prints markdown tables
    python benchmarks/tune.py --only-jobs --seeds 0,1,2,3,4,5,6,7
    python benchmarks/tune.py --quick                  # a small smoke run (4 trials, 4 epochs)
    python benchmarks/tune.py --parallel-pruning 40    # the median pruner in parallel, simulated
"""

from __future__ import annotations

import argparse
import json
import math
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


def run_jobs(trials: int, jobs: int, epochs: int, out: str, grid: bool = False, seed: int = 0) -> dict:
    import csv

    space = []
    if grid:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "grid.yaml").write_text(GRID, encoding="utf-8")
        space = ["--space", str(Path(out) / "grid.yaml")]
    study = f"jobs{jobs}-seed{seed}"
    cmd = [
        sys.executable, "-m", "danlu", "tune", str(TUTORIAL), "--trials", str(trials), "--jobs", str(jobs),
        "--study", study, "--set", f"train.epochs={epochs}", "--set", "eval.plots=false",
        "--set", f"output.dir={out}", "--set", f"tune.seed={seed}", "--quiet", *space,
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    wall = time.perf_counter() - start
    with open(Path(out) / study / "trials.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    best = min((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: float(r["val.loss"]))
    return {
        "wall": wall,
        "trials": len(rows),
        "pruned": sum(r["state"] == "PRUNED" for r in rows),
        "epochs": sum(int(r["epochs"] or 0) for r in rows),
        "best_val_loss": float(best["val.loss"]),
        "test_accuracy": float(best["test.accuracy"]),
    }


# --------------------------------------------------------------------------- pruning in parallel
def parallel_pruning(seeds: int) -> None:
    """The median pruner with J trials at a time against one at a time, on synthetic learning
    curves (2 ms a step, so the trials' interleaving is real but the CPU is idle): Optuna's
    MedianPruner, which judges against completed trials only, and danlu's, which adds the
    other running trials (and counts the earlier ones toward its start-up trials). Steps
    trained, trials pruned and the best value, over many seeds."""
    import statistics

    import optuna

    from danlu.tuning.pruners import MedianPruner

    optuna.logging.set_verbosity(optuna.logging.ERROR)

    def objective(trial: optuna.Trial) -> float:
        x, y = trial.suggest_float("x", 0.0, 1.0), trial.suggest_float("y", 0.0, 1.0)
        length, value = int(20 + 100 * (1 - x) * y), 0.0  # early stopping: some trials run long
        for step in range(length):
            value = (x - 0.3) ** 2 + y * math.exp(-step / (2 + 10 * x)) + 0.01 * math.sin(7 * step * y)
            trial.report(value, step)
            if trial.should_prune():
                trial.set_user_attr("steps", step + 1)
                raise optuna.TrialPruned()
            time.sleep(0.002)
        trial.set_user_attr("steps", length)
        return value

    settings = [("one at a time (both pruners decide the same)", 1, "optuna")] + [
        (f"{jobs} at a time, {who}'s MedianPruner", jobs, who.lower())
        for jobs in (2, 4)
        for who in ("Optuna", "danlu")
    ]
    print(f"\n| median pruner, 20 trials, {seeds} seeds | steps trained | pruned | best value |")
    print("|---|---:|---:|---:|")
    for name, n_jobs, which in settings:
        runs = []
        for seed in range(seeds):
            cls = optuna.pruners.MedianPruner if which == "optuna" else MedianPruner
            study = optuna.create_study(
                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5),
                pruner=cls(n_startup_trials=5, n_warmup_steps=5),
            )
            study.optimize(objective, n_trials=20, n_jobs=n_jobs)
            trials = study.trials
            pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)
            runs.append((sum(t.user_attrs["steps"] for t in trials), pruned, study.best_value))
        steps, pruned, best = (statistics.mean(r[i] for r in runs) for i in range(3))
        print(f"| {name} | {steps:.0f} | {pruned:.2f} | {best:.4f} |", flush=True)


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
        result = run_jobs(args.trials, int(jobs), args.epochs, args.out, grid, args.seed)
    print(json.dumps(result))


def measure(
    method: str, trials: int, pruner: str, epochs: int, out: str, replay: str = "", seed: int = 0
) -> dict:
    cmd = [sys.executable, __file__, "--run", method, "--trials", str(trials), "--pruner", pruner,
           "--epochs", str(epochs), "--out", out, "--replay", replay, "--seed", str(seed)]  # fmt: skip
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
    parser.add_argument(
        "--seeds", default="0,1,2,3,4", help="tune.seed of the --jobs 1/2 TPE searches (comma-separated)"
    )
    parser.add_argument("--only-jobs", action="store_true", help="only the --jobs 1/2 comparison")
    parser.add_argument(
        "--parallel-pruning",
        type=int,
        metavar="SEEDS",
        help="only the median pruner one, 2 and 4 trials at a time on synthetic curves, SEEDS seeds",
    )
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--pruner", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--replay", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        child(args)
        return
    if args.parallel_pruning:
        parallel_pruning(args.parallel_pruning)
        return
    if args.quick:
        args.trials, args.epochs = 4, 4
    print(f"{args.trials} trials, at most {args.epochs} epochs each, {os.cpu_count()} CPU cores", flush=True)
    seeds = [int(x) for x in args.seeds.split(",")]
    rows, jobs = [], {}
    with tempfile.TemporaryDirectory() as out:
        for pruner in () if args.only_jobs else ("none", "median"):
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
        # the TPE + median search on each seed, --jobs 1 and 2 taking turns (first one, then the
        # other), then the fixed grid once each
        runs = [
            (f"jobs{j}", seed) for i, seed in enumerate(seeds) for j in ((1, 2) if i % 2 == 0 else (2, 1))
        ]
        for name, seed in [*runs, ("jobs1-grid", 0), ("jobs2-grid", 0)]:
            r = measure(
                name, args.trials, "median", args.epochs, str(Path(out) / f"{name}-{seed}"), seed=seed
            )
            jobs[(name, seed)] = r
            print(f"  {name} seed={seed}: {r}", file=sys.stderr, flush=True)

    if rows:
        print(
            "\n| method | pruner | wall (s) | trials/min | epochs | ms/epoch | best val.loss"
            " | test accuracy |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|")
    for method, pruner, r in rows:
        per_min, ms = 60 * r["trials"] / r["wall"], 1000 * r["wall"] / max(r["epochs"], 1)
        print(
            f"| {method} | {pruner} | {r['wall']:.1f} | {per_min:.1f} | {r['epochs']} ({r['pruned']} pruned)"
            f" | {ms:.1f} | {r['best_val_loss']:.4f} | {r['test_accuracy']:.4f} |"
        )
    by = {(m, p): r for m, p, r in rows}
    for pruner in ("none", "median") if rows else ():
        per_epoch = {m: by[(m, pruner)]["wall"] / max(by[(m, pruner)]["epochs"], 1) for m in METHODS}
        same, loader = (
            per_epoch["danlu"] / per_epoch["hand_tensor"] - 1,
            per_epoch["danlu"] / per_epoch["hand"] - 1,
        )
        print(
            f"\npruner={pruner}: danlu's time per epoch is {same:+.0%} over the hand-written script with the"
            f" same batching, {loader:+.0%} over the DataLoader one (goal: at most +10%)"
        )

    def rate(r: dict) -> float:
        return 60 * r["trials"] / r["wall"]

    print(
        "\n| `danlu tune` (whole command) | search | wall (s) | trials/min | epochs (pruned) | epochs/s"
        " | best val.loss | its test accuracy |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for (name, seed), r in sorted(
        jobs.items(), key=lambda kv: (kv[0][0].endswith("grid"), kv[0][1], kv[0][0])
    ):
        search = "grid of 20, no pruner" if name.endswith("-grid") else f"TPE + median, seed {seed}"
        print(
            f"| --jobs {name[4]} | {search} | {r['wall']:.1f} | {rate(r):.1f} | {r['epochs']} ({r['pruned']})"
            f" | {r['epochs'] / r['wall']:.1f} | {r['best_val_loss']:.4f} | {r['test_accuracy']:.3f} |"
        )
    print()
    ratios = []
    for seed in seeds:
        one, two = jobs[("jobs1", seed)], jobs[("jobs2", seed)]
        ratios.append(rate(two) / rate(one))
        print(f"TPE + median, seed {seed}: --jobs 2 runs {ratios[-1]:.2f}x the trials per minute of --jobs 1")
    total = {j: [jobs[(f"jobs{j}", s)] for s in seeds] for j in (1, 2)}
    pooled = {j: 60 * sum(r["trials"] for r in rs) / sum(r["wall"] for r in rs) for j, rs in total.items()}
    mean = {
        j: (sum(r["epochs"] for r in rs) / len(rs), sum(r["pruned"] for r in rs) / len(rs))
        for j, rs in total.items()
    }
    geo = math.prod(ratios) ** (1 / len(ratios))
    print(
        f"TPE + median, {len(seeds)} seeds pooled: --jobs 2 runs {pooled[2] / pooled[1]:.2f}x the trials"
        f" per minute of --jobs 1 (geometric mean of the seeds {geo:.2f}x; goal: at least 1.6x);"
        f" epochs per search {mean[1][0]:.0f} against {mean[2][0]:.0f},"
        f" pruned {mean[1][1]:.1f} against {mean[2][1]:.1f}"
    )
    one, two = jobs[("jobs1-grid", 0)], jobs[("jobs2-grid", 0)]
    print(
        f"the same 20 grid configurations: --jobs 2 runs {rate(two) / rate(one):.2f}x the trials per"
        f" minute of --jobs 1, {two['epochs'] * one['wall'] / (one['epochs'] * two['wall']):.2f}x the"
        " epochs per second"
    )


if __name__ == "__main__":
    main()
