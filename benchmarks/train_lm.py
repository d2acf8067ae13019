"""Language-model training throughput: danlu's trainer against a plain hand-written loop.

Both train the same character-level GPT on Tiny Shakespeare with the settings of
examples/shakespeare_char.yaml (4 layers, 4 heads, 128-dim, block 64, batch 12, AdamW
fused, betas (0.9, 0.99), weight decay 0.1 on matrices, warmup + cosine, gradient clipping
at 1.0) for the same number of steps, in the same process, alternating methods; the table
shows the median training tokens per second. The hand loop is nanoGPT's inner loop with
random windows; danlu runs `danlu.train` on the example (progress bar, step-based
evaluation over the whole validation split, samples and checkpoints). Each method's clock
starts after its first WARM steps; for danlu the time of a WARM-step run is subtracted from
that of a (WARM + steps)-step run, which takes out start-up and the validation pass alike.

    python benchmarks/train_lm.py              # 400 steps x 3 repeats
    python benchmarks/train_lm.py --quick      # a smoke run
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "shakespeare_char.yaml"
WARM = 50  # steps that run before either method's clock starts


def hand_loop(steps: int) -> float:
    """nanoGPT's loop on danlu's GPT module: random windows, AdamW, cosine, clipping."""
    from danlu import config as config_mod
    from danlu import data
    from danlu.lm.model import GPT, GPTConfig

    cfg = config_mod.load(EXAMPLE)
    prepared = data.build(cfg.data, "language_modeling", cfg.seed, cfg.model)
    ids = prepared.splits["train"].inputs["idx"]  # windows; rebuild the token stream
    stream = torch.cat([ids[0], ids[1:, -1]]) if ids.shape[0] > 1 else ids[0]
    m = cfg.model
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=prepared.schema.vocab_size, block_size=m.block_size, n_layer=m.n_layer,
                          n_head=m.n_head, n_embd=m.n_embd, dropout=0.0, bias=m.bias,
                          activation=m.activation))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    t = cfg.train
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=t.lr, betas=t.betas, fused=True)
    warm, block, batch = 100, m.block_size, t.batch_size

    def lr_at(i: int) -> float:
        if i < warm:
            return t.lr * (i + 1) / warm
        ratio = (i - warm) / max(1, WARM + steps - warm)
        return t.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * ratio)))

    model.train()
    for i in range(WARM + steps):
        if i == WARM:
            start = time.perf_counter()
        ix = torch.randint(len(stream) - block - 1, (batch,))
        x = torch.stack([stream[j : j + block] for j in ix])
        y = torch.stack([stream[j + 1 : j + 1 + block] for j in ix])
        for g in opt.param_groups:
            g["lr"] = lr_at(i)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - start
    return steps * batch * block / elapsed


def danlu_loop(steps: int) -> float:
    """danlu.train on the example: the fit time of WARM + steps steps minus that of WARM
    steps, so start-up, the first slow steps and the one validation pass (the same in both)
    drop out and what is left is the cost of `steps` training steps in the trainer."""
    import danlu

    def fit_seconds(n: int) -> float:
        with tempfile.TemporaryDirectory() as out:
            run = danlu.train(
                EXAMPLE,
                {"train.max_steps": n, "train.eval_every": n, "output.dir": out, "eval.plots": False},
                progress="bar" if sys.stderr.isatty() else "quiet",
            )
            return sum(r["time"] for r in run.history)  # from fit's start to its evaluation's end

    return steps * 12 * 64 / (fit_seconds(WARM + steps) - fit_seconds(WARM))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="40 steps, 1 repeat")
    args = parser.parse_args()
    steps, repeats = (40, 1) if args.quick else (args.steps, args.repeats)
    if not (ROOT.parent / "shared" / "data" / "tinyshakespeare.txt").is_file():
        sys.exit("needs ../shared/data/tinyshakespeare.txt beside the repository")
    results: dict[str, list[float]] = {"hand": [], "danlu": []}
    for _ in range(repeats):  # alternate so both see the same machine state
        results["hand"].append(hand_loop(steps))
        results["danlu"].append(danlu_loop(steps))
    hand, ours = statistics.median(results["hand"]), statistics.median(results["danlu"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {steps} steps x {repeats}")
    print("| method | training tokens/s | × hand loop |")
    print("| --- | ---: | ---: |")
    print(f"| hand-written loop (nanoGPT's, random windows) | {hand:,.0f} | 1.00 |")
    print(f"| **danlu** `train` (bar, checkpoints, samples) | {ours:,.0f} | **{ours / hand:.2f}** |")


if __name__ == "__main__":
    main()
