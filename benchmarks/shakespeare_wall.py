"""Wall time of the whole Shakespeare example against nanoGPT's CPU run, in one session.

The issue's bar: `danlu train examples/shakespeare_char.yaml` must take no more wall time
than nanoGPT's own train.py with its documented CPU settings (`--device=cpu --compile=False
--eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4
--n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0` on top of
config/train_shakespeare_char.py). nanoGPT is not on PyPI and this machine cannot clone it,
and its wall time moves with the machine (memory bandwidth here varies by 1.5x from one day
to the next), so a figure from another session says little. This script therefore runs,
in the same session and alternating:

  danlu    `danlu train examples/shakespeare_char.yaml --quiet` in a fresh process: start-up,
           2,000 steps, validation over all 111k validation tokens every 500 steps, samples,
           checkpoints, report and plots.
  nanogpt  nanoGPT's train.py CPU run re-created step for step in a fresh process (below):
           uint16 token arrays, random windows per step, AdamW as its configure_optimizers
           builds it on CPU (decay on matrices, not fused), warmup + cosine to 1e-4, clipping
           at 1.0, `loss.item()` logged every step, an estimate of train and val loss on 20
           random batches every 250 steps, a checkpoint whenever that estimate improves,
           and 2,001 steps (iterations 0 to 2,000). The network is danlu's GPT module
           configured as nanoGPT's (exact GELU, no biases, tied embeddings), so the two differ
           in everything around the model and in nothing inside it.

Wall time counts from launching the process to the end of training (for nanoGPT, its last
step; its validation loss over all tokens is computed afterwards, outside the timing).

    python benchmarks/shakespeare_wall.py              # 1 repeat of each, ~5 minutes
    python benchmarks/shakespeare_wall.py --repeats 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "shakespeare_char.yaml"
TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def nanogpt_run(out_dir: Path, max_iters: int = 2000) -> None:
    """nanoGPT's train.py CPU run (settings in the module docstring); prints one JSON line."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from danlu.lm.model import GPT, GPTConfig

    block_size, batch_size, eval_interval, eval_iters = 64, 12, 250, 20
    learning_rate, min_lr, warmup_iters, lr_decay_iters = 1e-3, 1e-4, 100, max_iters
    # data/shakespeare_char/prepare.py: characters -> uint16 ids, the first 90% to train
    text = TEXT.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(0.9 * len(ids))
    train_data, val_data = ids[:n], ids[n:]

    torch.manual_seed(1337)
    model = GPT(
        GPTConfig(
            vocab_size=len(chars),
            block_size=block_size,
            n_layer=4,
            n_head=4,
            n_embd=128,
            dropout=0.0,
            bias=False,
            activation="gelu",
        )
    )
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.99))  # fused on CUDA only

    def get_batch(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        data = train_data if split == "train" else val_data
        ix = torch.randint(len(data) - block_size, (batch_size,))
        x = torch.stack([torch.from_numpy(data[i : i + block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + block_size].astype(np.int64)) for i in ix])
        return x, y

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-1)

    @torch.no_grad()
    def estimate_loss() -> dict[str, float]:
        model.eval()
        out = {}
        for split in ("train", "val"):
            out[split] = float(
                torch.tensor([loss_of(*get_batch(split)).item() for _ in range(eval_iters)]).mean()
            )
        model.train()
        return out

    def get_lr(it: int) -> float:
        if it < warmup_iters:
            return learning_rate * (it + 1) / (warmup_iters + 1)
        if it > lr_decay_iters:
            return min_lr
        ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)

    best_val, estimate = 1e9, {}
    x, y = get_batch("train")
    t0 = time.time()
    for it in range(max_iters + 1):
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it)
        if it % eval_interval == 0:
            estimate = estimate_loss()
            print(
                f"step {it}: train loss {estimate['train']:.4f}, val loss {estimate['val']:.4f}",
                file=sys.stderr,
            )
            if estimate["val"] < best_val:
                best_val = estimate["val"]
                if it > 0:
                    torch.save(
                        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iter_num": it},
                        out_dir / "ckpt.pt",
                    )
        loss = loss_of(x, y)
        x, y = get_batch("train")  # the next batch while (on a GPU) the step runs
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t1 = time.time()
        print(f"iter {it}: loss {loss.item():.4f}, time {(t1 - t0) * 1000:.2f}ms", file=sys.stderr)
        t0 = t1
    trained_at = time.time()

    # outside the timing: the loss over every validation token, as danlu reports it
    model.eval()
    windows = torch.from_numpy(val_data.astype(np.int64))
    total, count = 0.0, 0
    with torch.no_grad():
        starts = range(0, len(windows) - 1, block_size)
        for i in range(0, len(starts), 64):
            chunk = [windows[s : s + block_size + 1] for s in starts[i : i + 64]]
            chunk = [c for c in chunk if len(c) == block_size + 1]
            if not chunk:
                continue
            batch = torch.stack(chunk)
            logits = model(batch[:, :-1])
            total += float(
                F.cross_entropy(
                    logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum"
                )
            )
            count += batch[:, 1:].numel()
    print(
        json.dumps(
            {
                "trained_at": trained_at,
                "estimated_val_loss": estimate["val"],
                "val_loss_all_tokens": total / count,
            }
        )
    )


def time_nanogpt() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        start = time.time()
        proc = subprocess.run(
            [sys.executable, __file__, "--nanogpt-run", out], capture_output=True, text=True, check=False
        )
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "wall": result["trained_at"] - start,
        "loss": result["val_loss_all_tokens"],
        "estimate": result["estimated_val_loss"],
    }


def time_danlu() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        start = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "danlu", "train", str(EXAMPLE), "--quiet", "--set", f"output.dir={out}"],
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.time() - start
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        (run,) = Path(out).iterdir()
        metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    return {"wall": wall, "loss": metrics["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--nanogpt-run", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not TEXT.is_file():
        sys.exit(f"needs {TEXT} (../shared/data beside the repository)")
    if args.nanogpt_run:
        nanogpt_run(args.nanogpt_run)
        return
    results: dict[str, list[dict[str, float]]] = {"danlu": [], "nanogpt": []}
    for _ in range(args.repeats):  # alternate, so both see the same machine
        results["nanogpt"].append(time_nanogpt())
        results["danlu"].append(time_danlu())
    import torch

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, {args.repeats} repeat(s), median wall"
    )
    print("| run | wall (s) | validation loss, all tokens |")
    print("| --- | ---: | ---: |")

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    nano, ours = results["nanogpt"], results["danlu"]
    print(
        f"| nanoGPT's CPU run, re-created (lr 1e-3; its estimate {med(nano, 'estimate'):.3f})"
        f" | {med(nano, 'wall'):.1f} | {med(nano, 'loss'):.4f} |"
    )
    print(
        f"| `danlu train examples/shakespeare_char.yaml` (lr 2e-3)"
        f" | {med(ours, 'wall'):.1f} | {med(ours, 'loss'):.4f} |"
    )


if __name__ == "__main__":
    main()
