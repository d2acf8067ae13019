"""`danlu serve` under load, on this machine's CPU.

Predict: the tutorial-style MLP run (tests/fixtures/runs_v1/tabular_classification: iris, one
hidden layer) behind `danlu serve` against a bare FastAPI endpoint that calls the same model
(`danlu.load(run).predict` on a DataFrame of the same JSON rows), at 1, 16 and 64 concurrent
clients: requests/s, p50/p99 latency, failures.

Generation: a GPT-2 124M-shaped danlu GPT (12 layers, 768 wide, 1,024 positions, a 50,257-token
vocabulary) with random weights, 64 new greedy tokens per streamed completion, 1, 4 and 8
concurrent clients: aggregate tokens/s and time to first token (p50/p99).

The load generator is asyncio + httpx in one process, not locust: each client is a coroutine
issuing its next request as soon as the last one answered (a closed loop), so N clients keep
exactly N requests in flight; one event loop drives 64 clients with a small share of the CPU
the servers need, and the timings are taken where the bytes arrive (time to first streamed
token included) without a second tool or process to coordinate. Both servers run as separate
processes, one at a time, started the same way.

    python benchmarks/serve.py            # the figures in BENCHMARKS.md
    python benchmarks/serve.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import httpx
except ImportError:  # the openai client's fork of it (what the test extra installs)
    import httpx2 as httpx  # type: ignore[no-redef]
from machine import cpu_model  # benchmarks/machine.py (this folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "tests" / "fixtures" / "runs_v1" / "tabular_classification"
ROWS = [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]

BARE = """
import sys
import pandas as pd
import uvicorn
from fastapi import FastAPI
import danlu

model = danlu.load(sys.argv[2])
app = FastAPI()

@app.get("/health")
def health():
    return {"status": "ok"}

@app.post("/predict")
def predict(body: dict):
    return {"predictions": [str(p) for p in model.predict(pd.DataFrame(body["rows"]))]}

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, *args, str(port)] if args[0] == "-c" else
                            [sys.executable, *args, "--port", str(port), "--quiet"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not come up")


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")


async def predict_load(url: str, path: str, clients: int, requests: int) -> dict[str, float]:
    latencies: list[float] = []
    failures = 0
    left = requests

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal left, failures
        while left > 0:
            left -= 1
            t = time.perf_counter()
            try:
                r = await http.post(f"{url}{path}", json={"model": "iris", "rows": ROWS})
                ok = r.status_code == 200 and r.json()["predictions"]
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - t)
            failures += not ok

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    return {"rps": requests / wall, "p50": percentile(latencies, 0.5) * 1000,
            "p99": percentile(latencies, 0.99) * 1000, "failures": failures}


async def stream_load(url: str, clients: int, rounds: int, new_tokens: int) -> dict[str, float]:
    ttfts: list[float] = []
    tokens = 0
    failures = 0

    async def one(http: httpx.AsyncClient, i: int) -> None:
        nonlocal tokens, failures
        body = {"model": "gpt", "prompt": f"Client {i} says", "max_tokens": new_tokens, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}}
        t, first = time.perf_counter(), None
        try:
            async with http.stream("POST", f"{url}/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if event.get("usage"):
                        tokens += event["usage"]["completion_tokens"]
                    elif first is None and event["choices"] and event["choices"][0]["text"]:
                        first = time.perf_counter() - t
        except httpx.HTTPError:
            failures += 1
        if first is not None:
            ttfts.append(first)

    wall = 0.0
    async with httpx.AsyncClient(timeout=600) as http:
        for _ in range(rounds):
            start = time.perf_counter()
            await asyncio.gather(*(one(http, i) for i in range(clients)))
            wall += time.perf_counter() - start
    return {"tok_s": tokens / wall, "ttft50": percentile(ttfts, 0.5) * 1000,
            "ttft99": percentile(ttfts, 0.99) * 1000, "failures": failures}


def make_gpt(path: Path) -> Path:
    """A GPT-2 124M-shaped danlu run folder with random weights and a 50,257-token vocabulary
    (printable characters first, then filler tokens)."""
    import torch
    from safetensors.torch import save_model
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from danlu.lm.model import GPT, GPTConfig

    chars = [chr(c) for c in range(32, 127)]
    vocab = {"<eos>": 0, **{c: i + 1 for i, c in enumerate(chars)}}
    vocab.update({f"<{i}>": i for i in range(len(vocab), 50257)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    path.mkdir(parents=True)
    tok.save(str(path / "tokenizer.json"))
    cfg = {"type": "gpt", "n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "dropout": 0.0,
           "bias": True, "tie_embeddings": True}
    torch.manual_seed(0)
    save_model(GPT(GPTConfig(vocab_size=50257, **{k: v for k, v in cfg.items() if k != "type"})),
               str(path / "model.safetensors"))
    meta = {"format": 1, "task": {"type": "language_modeling"}, "model": cfg,
            "schema": {"vocab_size": 50257}, "preprocessor": {"kind": "char", "file": "tokenizer.json"}}
    (path / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    config = {"task": {"type": "language_modeling"}, "model": cfg}
    (path / "config.yaml").write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores (shared with other work: see BENCHMARKS.md)")
    print(f"python {platform.python_version()}, {sys.platform}")

    print("\n## predict: danlu serve vs bare FastAPI, same model, same JSON rows")
    print("| clients | server | req/s | p50 ms | p99 ms | failures |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    results: dict[tuple[str, int], dict[str, float]] = {}
    for name, cmd, path in [
        ("bare FastAPI", ["-c", BARE.replace("sys.argv[2]", repr(str(RUN)))], "/predict"),
        ("danlu serve", ["-m", "danlu", "serve", "--name", f"iris={RUN}"], "/v1/predict/iris"),
    ]:
        proc, url = start(cmd)
        try:
            for clients in (1, 16, 64):
                n = max(clients * 4, int({1: 300, 16: 1500, 64: 3000}[clients] * scale))
                asyncio.run(predict_load(url, path, clients, min(n, 50)))  # warm-up
                r = asyncio.run(predict_load(url, path, clients, n))
                results[(name, clients)] = r
                print(f"| {clients} | {name} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | "
                      f"{r['failures']} |", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    for clients in (1, 16, 64):
        ratio = results[("danlu serve", clients)]["rps"] / results[("bare FastAPI", clients)]["rps"]
        goal = "  (goal >= 0.8x)" if clients == 16 else ""
        print(f"danlu / bare at {clients} clients: {ratio:.2f}x{goal}")

    print("\n## generation: GPT-2 124M-shaped danlu GPT, random weights, 64 new greedy tokens, streamed")
    print("| clients | aggregate tok/s | TTFT p50 ms | TTFT p99 ms | failures |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        gpt = make_gpt(Path(tmp) / "gpt")
        proc, url = start(["-m", "danlu", "serve", "--name", f"gpt={gpt}", "--max-batch", "8"])
        try:
            new = 16 if args.quick else 64
            asyncio.run(stream_load(url, 1, 1, 4))  # warm-up: the kernels, the cache
            gen: dict[int, dict[str, float]] = {}
            for clients in (1, 4, 8):
                r = gen[clients] = asyncio.run(stream_load(url, clients, 1 if args.quick else 3, new))
                print(f"| {clients} | {r['tok_s']:.1f} | {r['ttft50']:.0f} | {r['ttft99']:.0f} | "
                      f"{r['failures']} |", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print(f"8 clients / 1 client tok/s: {gen[8]['tok_s'] / gen[1]['tok_s']:.2f}x (goal >= 3x); "
          f"TTFT p99 8 / 1: {gen[8]['ttft99'] / gen[1]['ttft99']:.2f}x (goal <= 2x)")


if __name__ == "__main__":
    main()
