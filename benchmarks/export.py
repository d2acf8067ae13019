"""Eager PyTorch against onnxruntime on CPU, for models exported with
`danlu export RUN --format onnx`: latency at batch 1 and throughput at batch 64, same threads.

Models (each trained briefly here: the speed of a forward pass does not depend on how well
it was trained): the tutorial MLP (examples/tutorial.yaml), the digits CNN
(examples/digits_cnn.yaml), the sentiment Transformer (examples/sentiment_transformer.yaml)
and, with --minilm, all-MiniLM-L6-v2 fine-tuned (examples/sentiment_minilm.yaml, one short
epoch). Both runtimes run the same graph inputs (danlu/onnx/rows.py: the fitted
preprocessing inside the graph for both), rows of the run's test split; each measurement is
the median of `--repeats` timed passes of `--iters` calls after a warm-up.

    python benchmarks/export.py                 # prints the CPU, threads and a markdown table
    python benchmarks/export.py --threads 1 --minilm
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import cpu_model  # benchmarks/machine.py (this folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {  # name -> (example config, overrides that keep training short)
    "tutorial MLP": ("tutorial.yaml", ["train.epochs=5"]),
    "digits CNN": ("digits_cnn.yaml", ["train.epochs=1"]),
    "sentiment Transformer": ("sentiment_transformer.yaml", ["train.epochs=1"]),
    "MiniLM (sentiment)": ("sentiment_minilm.yaml", ["train.epochs=1", "train.max_steps=5"]),
}



def batch_of(sample: list[dict[str, np.ndarray]], size: int) -> dict[str, np.ndarray]:
    """`size` rows of the sample batches (repeated when there are fewer), at one width."""
    from danlu.onnx.rows import BATCH

    rows = sum(len(next(iter(b.values()))) for b in sample)
    first = sample[0]
    n = len(next(iter(first.values())))
    assert n <= BATCH and rows > 0
    take = np.arange(size) % n
    return {k: np.ascontiguousarray(v[take]) for k, v in first.items()}


def median_ms(fn: Any, iters: int, repeats: int) -> float:
    fn()  # warm-up (and the first call's allocations)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        times.append((time.perf_counter() - start) / iters)
    return statistics.median(times) * 1000


def bench(name: str, config: str, overrides: list[str], tmp: Path, args: argparse.Namespace) -> list[str]:
    import danlu
    from danlu.onnx.export import export_onnx
    from danlu.onnx.runtime import session
    from danlu.run import RunDir

    cfg = ROOT / "examples" / config
    run = danlu.train(str(cfg), [*overrides, f"output.dir={tmp}", "eval.plots=false"], progress="quiet")
    run_dir = RunDir.open(run.path)
    out = run_dir.path / "onnx"
    export_onnx(run_dir.path, out)
    from danlu import kinds

    kind = kinds.of_run(run_dir.read_model_json(), run_dir.model_json)
    graph = kind.hook("export_onnx")(run_dir.path)
    sess = session(out / "model.onnx")
    rows = []
    for size in (1, 64):
        feeds = batch_of(graph.sample, size)
        tensors = tuple(torch.from_numpy(feeds[n]) for n in graph.inputs)

        def eager(t: tuple[torch.Tensor, ...] = tensors) -> None:
            with torch.no_grad():
                graph.module(*t)

        def ort(f: dict[str, np.ndarray] = feeds) -> None:
            sess.run(graph.outputs, f)

        iters = args.iters if size == 1 else max(5, args.iters // 10)
        t_eager = median_ms(eager, iters, args.repeats)
        t_ort = median_ms(ort, iters, args.repeats)
        ratio = t_eager / t_ort
        rows.append(
            f"| {name} | {size} | {t_eager:.3f} | {t_ort:.3f} | {size / t_eager * 1000:,.0f} |"
            f" {size / t_ort * 1000:,.0f} | {ratio:.2f}x {'onnxruntime' if ratio > 1 else 'PyTorch'} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--minilm", action="store_true", help="also fine-tune and time all-MiniLM-L6-v2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # onnxruntime's session takes the same (danlu.onnx.runtime.session)
    import onnxruntime

    versions = f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
    print(f"CPU: {cpu_model()}; threads: {args.threads}; {versions}")
    print()
    print("| model | batch | PyTorch ms | onnxruntime ms | PyTorch rows/s | onnxruntime rows/s | faster |")
    print("|---|---:|---:|---:|---:|---:|---|")
    names = [n for n in MODELS if args.minilm or not n.startswith("MiniLM")]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            config, overrides = MODELS[name]
            bench(name, config, overrides, Path(tmp), args)


if __name__ == "__main__":
    main()
