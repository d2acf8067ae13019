"""Image training throughput: danlu against a hand-written PyTorch loop doing the same work.

The digits CNN of examples/digits_cnn.yaml (channels [32, 64, 128], batch norm, max
pooling, Adam, cosine schedule) on scikit-learn's digits as 1x8x8 images, measured in
training images per second, for:

  loop   a plain PyTorch loop: the same normalized tensors, a fresh permutation per epoch,
         the same batch augmentation (random rotation and translation through one
         affine_grid/grid_sample per batch), forward, backward, Adam step, scheduler step
  danlu  danlu's trainer on the same prepared split (progress bar, per-epoch metrics row
         and last/best checkpoints on)

Both start from the same weights, train the same number of epochs on the same rows and
are scored on the same test split. Each method runs in its own process, `--repeats`
times; the table shows the median. `--no-augment` measures the plain tensor path.

    python benchmarks/train_images.py                    # full run, prints a markdown table
    python benchmarks/train_images.py --device cuda      # on a GPU
    python benchmarks/train_images.py --quick            # a short smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["loop", "danlu"]


def prepare(epochs: int, augment: bool, device: str, out_dir: str):  # noqa: ANN201
    import torch

    from danlu import config, data, models, tasks
    from danlu.api import seed_everything

    over = {"train.epochs": epochs, "train.device": device, "output.dir": out_dir, "eval.plots": False}
    if not augment:
        over["data.images.augment"] = {}
    cfg = config.load(ROOT / "examples" / "digits_cnn.yaml", over)
    seed_everything(cfg.seed)
    prepared = data.build(cfg.data, "auto", cfg.seed, cfg.model)
    task = tasks.build(cfg.task, prepared.schema, prepared.splits["train"].y, prepared.preprocessor)
    torch.manual_seed(0)
    model = models.build(cfg.model, prepared.schema, task.out_dim)
    return cfg, prepared, task, model


def accuracy(model, test, device) -> float:  # noqa: ANN001
    import torch

    model.eval()
    with torch.no_grad():
        out = model(test.inputs["x"].to(device)).argmax(1).cpu()
    return float((out == test.y).float().mean())


def run_method(method: str, epochs: int, augment: bool, device_name: str) -> dict:
    import torch

    from danlu.data import transforms as T
    from danlu.training.trainer import pick_device

    out_dir = tempfile.mkdtemp(prefix="danlu-bench-")
    cfg, prepared, task, model = prepare(epochs, augment, device_name, out_dir)
    device = pick_device(device_name)
    train, test = prepared.splits["train"], prepared.splits["test"]
    n, bs = len(train), cfg.train.batch_size
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    if method == "loop":
        pre = prepared.preprocessor
        # what a careful hand-written loop holds: the [0, 1] images (or the normalized tensors
        # when nothing is augmented) on the device, and the labels
        if augment:
            images, aug = train.images.to(device), T.Augment(cfg.data.images.augment, pre.size)
        else:
            images, aug = train.inputs["x"].to(device), None
        y = train.y.to(device)
        model.to(device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, fused=device.type == "cuda" or None)
        steps = epochs * -(-n // bs)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        loss_fn = torch.nn.CrossEntropyLoss()
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch)).to(device)
            for i in range(0, n, bs):
                idx = order[i : i + bs]
                x = images[idx]
                if aug is not None:
                    x = T.normalize(aug(x.float(), T.batch_generator(0, epoch, i)), pre.mean, pre.std)
                loss = loss_fn(model(x), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    else:
        from danlu.run import RunDir
        from danlu.training.trainer import fit

        run = RunDir.create(out_dir, "bench")
        fit(model, task, prepared.splits, cfg.train, run, seed=cfg.seed, progress="bar")
        model.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "method": method,
        "images_per_s": n * epochs / seconds,
        "seconds": seconds,
        "accuracy": accuracy(model, test, device),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 epochs, 1 repeat")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one method, print JSON
    args = ap.parse_args()
    augment = not args.no_augment
    if args.one:
        print(json.dumps(run_method(args.one, args.epochs, augment, args.device)))
        return
    epochs = 2 if args.quick else args.epochs
    repeats = 1 if args.quick else args.repeats
    results: dict[str, list[dict]] = {}
    for _ in range(repeats):
        for m in METHODS:
            cmd = [sys.executable, __file__, "--one", m, "--epochs", str(epochs), "--device", args.device]
            out = subprocess.run(
                [*cmd, *(["--no-augment"] if not augment else [])],
                capture_output=True,
                text=True,
                env={**os.environ},
            )
            if out.returncode != 0:
                sys.exit(f"{m} failed:\n{out.stderr[-2000:]}")
            results.setdefault(m, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    loop = statistics.median(r["images_per_s"] for r in results["loop"])
    print(
        f"digits CNN (examples/digits_cnn.yaml), {epochs} epochs, batch 32, augmentation "
        f"{'on' if augment else 'off'}, device {args.device}; median of {repeats}; "
        f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}\n"
    )
    print("| method | images/s | × loop | test accuracy |")
    print("|---|---:|---:|---:|")
    for m, rs in results.items():
        ips = statistics.median(r["images_per_s"] for r in rs)
        acc = statistics.median(r["accuracy"] for r in rs)
        print(f"| {m} | {ips:,.0f} | {ips / loop:.2f} | {acc:.4f} |")


if __name__ == "__main__":
    main()
