"""Training-loop overhead: danlu against the loops people write today.

The tutorial MLP (10 -> 64 -> 64 -> 2, ReLU, Adam, batch 256) for 3 epochs on
make_classification(n_samples=200_000, n_features=10, n_informative=5, random_state=42),
measured in samples per second of training, for:

  floor       the same number of forward/backward/step calls on one fixed batch
  danlu       danlu's trainer with progress bar, per-epoch validation metrics and
              checkpoints (last + best) on
  dataloader  the introduction's loop: TensorDataset + DataLoader(shuffle=True)
  lightning   PyTorch Lightning's Trainer (no logger, no checkpointing, no progress bar)

Every method trains on the same rows (danlu's training split: 70%) and is scored on the
same test split. Each method runs in its own process (clean peak memory), `--repeats`
times; the table shows the median.

    python benchmarks/train_loop.py            # full run, prints a markdown table
    python benchmarks/train_loop.py --quick    # a smaller smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ["floor", "danlu", "dataloader", "lightning"]
BATCH, EPOCHS, LR = 256, 3, 1e-3


def config(n: int, out_dir: str) -> dict:
    return {
        "name": "bench",
        "seed": 0,
        "data": {
            "source": "make_classification",
            "params": {"n_samples": n, "n_features": 10, "n_informative": 5, "random_state": 42},
            "split": {"val": 0.1, "test": 0.2, "seed": 42},
        },
        "model": {"type": "mlp", "hidden": [64, 64]},
        "train": {
            "optimizer": "adam",
            "lr": LR,
            "batch_size": BATCH,
            "epochs": EPOCHS,
            "early_stopping": None,
        },
        "eval": {"plots": False},
        "output": {"dir": out_dir},
    }


def prepare(n: int, out_dir: str):  # noqa: ANN201
    import torch

    from danlu import config as config_mod
    from danlu import data, models, tasks
    from danlu.api import seed_everything

    cfg = config_mod.load(config(n, out_dir))
    seed_everything(0)
    prepared = data.build(cfg.data, "classification", 0)
    task = tasks.build(cfg.task, prepared.schema, prepared.splits["train"].y, prepared.preprocessor)
    model = models.build(cfg.model, prepared.schema, task.out_dim)
    torch.manual_seed(0)
    return cfg, prepared, task, model


def accuracy(model, test) -> float:  # noqa: ANN001
    import torch

    model.eval()
    with torch.no_grad():
        return float((model(test.inputs["x"]).argmax(1) == test.y).float().mean())


def run_method(method: str, n: int) -> dict:
    import torch
    from torch import nn

    out_dir = tempfile.mkdtemp(prefix="danlu-bench-")
    cfg, prepared, task, model = prepare(n, out_dir)
    train, test = prepared.splits["train"], prepared.splits["test"]
    x, y = train.inputs["x"], train.y
    steps = -(-len(y) // BATCH) * EPOCHS
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=LR, fused=True)  # what danlu uses

    start = time.perf_counter()
    if method == "floor":
        xb, yb = x[:BATCH], y[:BATCH]
        model.train()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xb), yb).backward()
            opt.step()
    elif method == "danlu":
        from danlu.run import RunDir
        from danlu.training.trainer import fit

        run = RunDir.create(out_dir, "bench")
        fit(model, task, prepared.splits, cfg.train, run, seed=0, progress="bar")
    elif method == "dataloader":
        from torch.utils.data import DataLoader, TensorDataset

        loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)
        for _ in range(EPOCHS):
            model.train()
            for xb, yb in loader:
                opt.zero_grad()
                loss_fn(model(xb), yb).backward()
                opt.step()
    elif method == "lightning":
        import lightning as L
        from torch.utils.data import DataLoader, TensorDataset

        class Module(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
                xb, yb = batch
                return loss_fn(self.model(xb), yb)

            def configure_optimizers(self):  # noqa: ANN201
                return torch.optim.Adam(self.model.parameters(), lr=LR, fused=True)

        trainer = L.Trainer(
            max_epochs=EPOCHS,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            devices=1,
        )
        trainer.fit(Module(), DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True))
    seconds = time.perf_counter() - start
    return {
        "method": method,
        "samples_per_s": len(y) * EPOCHS / seconds,
        "seconds": seconds,
        "accuracy": accuracy(model, test) if method != "floor" else float("nan"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def help_startup(repeats: int) -> float:
    exe = Path(sys.executable).with_name("danlu")
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([str(exe), "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20k samples, 1 repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one method, print JSON
    ap.add_argument("--n", type=int, default=200_000)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_method(args.one, args.n)))
        return
    n = 20_000 if args.quick else args.n
    repeats = 1 if args.quick else args.repeats
    results: dict[str, list[dict]] = {}
    for _ in range(repeats):
        for m in args.methods.split(","):
            out = subprocess.run(
                [sys.executable, __file__, "--one", m, "--n", str(n)],
                capture_output=True,
                text=True,
                env={**os.environ},
            )
            if out.returncode != 0:
                sys.exit(f"{m} failed:\n{out.stderr[-2000:]}")
            results.setdefault(m, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    floor = statistics.median(r["samples_per_s"] for r in results["floor"]) if "floor" in results else None
    print(
        f"make_classification(n_samples={n}), {EPOCHS} epochs, batch {BATCH}, Adam; "
        f"median of {repeats}; torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}\n"
    )
    print("| method | samples/s | × floor | test accuracy | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|")
    for m, rs in results.items():
        sps = statistics.median(r["samples_per_s"] for r in rs)
        ratio = f"{sps / floor:.2f}" if floor else ""
        acc = statistics.median(r["accuracy"] for r in rs)
        acc_s = "" if acc != acc else f"{acc:.4f}"
        rss = statistics.median(r["peak_rss_mb"] for r in rs)
        print(f"| {m} | {sps:,.0f} | {ratio} | {acc_s} | {rss:.0f} |")
    print(f"\n`danlu --help` start-up: {help_startup(5) * 1000:.0f} ms (median of 5)")


if __name__ == "__main__":
    main()
