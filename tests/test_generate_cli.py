"""`danlu generate`, `danlu export --format hf` and danlu.generate(...) on tiny models.

The Hugging Face fixture is a random 2-layer GPT2LMHeadModel with a byte-level BPE tokenizer
trained on a few sentences; the danlu fixture is a run folder written by hand (random GPT,
char-level tokenizer.json, model.json, config.yaml), so these tests do not need the trainer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_SENTENCES as SENTENCES
from conftest import _env, assert_user_error, make_tiny_gpt2

pytest.importorskip("transformers", reason="transformers is not installed (pip install 'danlu[hf]')")
from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    GPT2LMHeadModel,
)

import danlu  # noqa: E402
from danlu.errors import DanluError  # noqa: E402
from danlu.lm.model import GPT, GPTConfig  # noqa: E402

HUB_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def danlu_cli(*args: object, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    # bytes, decoded here: a random model's text may hold "\r", which text mode would turn
    # into "\n"
    raw = subprocess.run(
        [sys.executable, "-m", "danlu", *map(str, args)],
        cwd=str(cwd),
        env=_env(HUB_OFFLINE),
        input=(stdin or "").encode("utf-8"),
        capture_output=True,
        timeout=300,
    )
    return subprocess.CompletedProcess(
        raw.args, raw.returncode, raw.stdout.decode("utf-8"), raw.stderr.decode("utf-8")
    )


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 folder: config.json, model.safetensors, tokenizer files."""
    # peaked logits: greedy choices are not decided by rounding
    return make_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), initializer_range=0.2)


def hf_greedy(path: Path, prompt: str, max_new_tokens: int) -> str:
    model = GPT2LMHeadModel.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.eos_token_id,
        )
    new = out[0, ids.shape[1] :].tolist()
    return tok.decode(new, skip_special_tokens=True)


# ---------------------------------------------------------------------------- generate


def test_greedy_matches_hf_generate(hf_dir: Path, tmp_path: Path) -> None:
    result = danlu_cli("generate", hf_dir, "--prompt", "The quick", "--max-new-tokens", 12, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == hf_greedy(hf_dir, "The quick", 12) + "\n"


def test_json_has_token_ids_and_logprobs(hf_dir: Path, tmp_path: Path) -> None:
    result = danlu_cli(
        "generate", hf_dir, "--prompt", "Once upon", "--max-new-tokens", 6, "--json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    obj = json.loads(line)
    assert obj["prompt"] == "Once upon"
    assert obj["text"] == hf_greedy(hf_dir, "Once upon", 6)
    assert len(obj["token_ids"]) == len(obj["logprobs"]) > 0
    assert all(lp <= 0 for lp in obj["logprobs"])
    assert obj["finish_reason"] in ("eos", "length")


def test_prompts_file_of_different_lengths(hf_dir: Path, tmp_path: Path) -> None:
    prompts = ["A", "Language models predict the next", "Once upon a time there"]
    file = tmp_path / "prompts.txt"
    file.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    result = danlu_cli("generate", hf_dir, "--prompts", file, "--max-new-tokens", 8, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["prompt"] for r in rows] == prompts
    # left-padded in one batch, each prompt continues as it would alone
    assert [r["text"] for r in rows] == [hf_greedy(hf_dir, p, 8) for p in prompts]


def test_stop_string_cuts_the_text(hf_dir: Path, tmp_path: Path) -> None:
    full = hf_greedy(hf_dir, "The quick", 16)
    stop = full.strip()[2:4] if len(full.strip()) >= 4 else full.strip()[:1]
    assert stop, full
    result = danlu_cli(
        "generate", hf_dir, "--prompt", "The quick", "--max-new-tokens", 16, "--stop", stop, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == full[: full.find(stop)] + "\n"


@pytest.mark.slow
def test_prompt_from_stdin_and_streaming(hf_dir: Path, tmp_path: Path) -> None:
    expected = hf_greedy(hf_dir, "A furnace", 10)
    result = danlu_cli("generate", hf_dir, "--max-new-tokens", 10, cwd=tmp_path, stdin="A furnace\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"
    streamed = danlu_cli(
        "generate", hf_dir, "--prompt", "A furnace", "--max-new-tokens", 10, "--stream", cwd=tmp_path
    )
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == expected + "\n"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--top-p", "0", "--temperature", "0.7"], "top_p"),
        (["--temperature", "-1"], "temperature"),
        (["--num-beams", "3", "--temperature", "0.7"], "num_beams"),
        (
            ["--max-new-tokens", "40", "--prompt", "The quick brown fox jumps over the lazy dog. " * 3],
            "prompt 0",
        ),
    ],
)
def test_bad_options_are_one_line_errors(hf_dir: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    if "--prompt" not in args:
        args = [*args, "--prompt", "The"]
    assert_user_error(danlu_cli("generate", hf_dir, *args, cwd=tmp_path), needle)


@pytest.mark.slow
def test_too_long_prompt_keeps_its_latest_tokens(hf_dir: Path, tmp_path: Path) -> None:
    # a GPT-2 folder runs on danlu's GPT, which samples past its context of 48 with a sliding
    # window: the truncated prompt is the last 48 tokens, and every step sees the last 48
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    long = "The quick brown fox jumps over the lazy dog. " * 6
    ids = tok.encode(long)

    def window_greedy(prompt_ids: list[int]) -> str:
        seq, new = list(prompt_ids), []
        with torch.no_grad():
            for _ in range(20):
                nxt = int(model(torch.tensor([seq[-48:]])).logits[0, -1].argmax())
                if nxt == tok.eos_token_id:
                    break
                seq.append(nxt)
                new.append(nxt)
        return tok.decode(new, skip_special_tokens=True)

    latest, oldest = window_greedy(ids[-48:]), window_greedy(ids[:48])
    assert len(ids) > 48 and latest != oldest  # which tokens were kept shows in the output
    result = danlu_cli(
        "generate", hf_dir, "--prompt", long, "--max-new-tokens", 20, "--truncate-prompt", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == latest + "\n"


@pytest.mark.slow
def test_json_logprobs_past_the_context_use_the_sliding_window(hf_dir: Path, tmp_path: Path) -> None:
    # prompt + new tokens exceed the context of 48: each token's log-probability is the one
    # transformers gives it from the 48 tokens before it, as the sliding window generated it
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    prompt = "The quick brown fox jumps over the lazy dog. " * 4
    result = danlu_cli(
        "generate", hf_dir, "--prompt", prompt, "--max-new-tokens", 20, "--truncate-prompt", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    obj = json.loads(result.stdout)
    seq = tok.encode(prompt)[-48:] + obj["token_ids"]
    assert len(seq) > 48 and len(obj["token_ids"]) == len(obj["logprobs"]) > 0
    with torch.no_grad():
        expected = []
        for t in range(len(seq) - len(obj["token_ids"]), len(seq)):
            logits = model(torch.tensor([seq[max(0, t - 48) : t]])).logits[0, -1]
            expected.append(float(torch.log_softmax(logits, -1)[seq[t]]))
    assert obj["logprobs"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_broken_model_folders_say_what_is_missing(hf_dir: Path, tmp_path: Path) -> None:
    import shutil

    no_config = tmp_path / "no_config"
    shutil.copytree(hf_dir, no_config)
    (no_config / "config.json").unlink()
    assert_user_error(danlu_cli("generate", no_config, "--prompt", "A", cwd=tmp_path), "config.json")

    no_tok = tmp_path / "no_tok"
    shutil.copytree(hf_dir, no_tok)
    for f in no_tok.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            f.unlink()
    assert_user_error(danlu_cli("generate", no_tok, "--prompt", "A", cwd=tmp_path), "tokenizer")

    no_weights = tmp_path / "no_weights"
    shutil.copytree(hf_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    assert_user_error(danlu_cli("generate", no_weights, "--prompt", "A", cwd=tmp_path), "weights")


def test_unknown_hub_id_offline(tmp_path: Path) -> None:
    result = danlu_cli("generate", "nobody-here/no-such-model-xyz", "--prompt", "A", cwd=tmp_path)
    assert_user_error(result, "not a local folder", "offline")


def test_missing_path_says_it_does_not_exist(tmp_path: Path) -> None:
    r = danlu_cli("generate", "./nowhere/model", "--prompt", "A", cwd=tmp_path)
    assert_user_error(r, "does not exist")


def test_generic_causal_lm_path_matches_hf(hf_dir: Path) -> None:
    """The transformers path (other causal LMs) maps the options onto model.generate."""
    from danlu.lm.complete import complete
    from danlu.lm.load import _load_hf_causal_lm, _place
    from danlu.lm.options import make_options

    lm = _place(
        _load_hf_causal_lm(hf_dir, json.loads((hf_dir / "config.json").read_text()), False), None, "cpu"
    )
    assert lm.kind == "hf-causal-lm"
    opts = make_options(lm, max_new_tokens=7)
    (c,) = complete(lm, ["The quick"], opts, logprobs=True)
    assert c.text == hf_greedy(hf_dir, "The quick", 7)
    assert len(c.logprobs or []) == len(c.token_ids)
    from danlu.lm.complete import stream_text

    assert "".join(stream_text(lm, "The quick", opts)) == c.text


# ---------------------------------------------------------------------------- danlu run folders + export


def make_lm_run(path: Path, text: str = "".join(SENTENCES)) -> Path:
    """A language-model run folder as the trainer writes it, built by hand."""
    from safetensors.torch import save_model

    chars = sorted(set(text))
    vocab = {"<eos>": 0, **{c: i + 1 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<eos>"])
    path.mkdir(parents=True)
    tok.save(str(path / "tokenizer.json"))
    model_cfg = {
        "type": "gpt",
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 32,
        "block_size": 32,
        "dropout": 0.0,
        "bias": True,
        "tie_embeddings": True,
    }
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=len(vocab), **{k: v for k, v in model_cfg.items() if k != "type"}))
    save_model(gpt, str(path / "model.safetensors"))
    meta = {
        "format": 1,
        "task": {"type": "language_modeling"},
        "model": model_cfg,
        "schema": {"vocab_size": len(vocab), "eos_token_id": 0},
        "preprocessor": {"kind": "char", "file": "tokenizer.json"},
    }
    (path / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    (path / "config.yaml").write_text(
        yaml.safe_dump({"task": {"type": "language_modeling"}, "model": model_cfg}), encoding="utf-8"
    )
    return path


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lm_run(tmp_path_factory.mktemp("runs") / "lm-20261124-101500")


def test_run_folder_generates(lm_run: Path, tmp_path: Path) -> None:
    from danlu.lm.load import resolve_lm

    lm = resolve_lm(lm_run, device="cpu")
    assert lm.kind == "danlu-run" and lm.block_size == 32
    result = danlu_cli("generate", lm_run, "--prompt", "The", "--max-new-tokens", 5, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    obj = json.loads(result.stdout)
    assert 1 <= len(obj["token_ids"]) <= 5
    assert obj["text"] == lm.tokenizer.decode([t for t in obj["token_ids"] if t != 0])


@pytest.mark.slow
def test_export_round_trip(lm_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "exported"
    result = danlu_cli("export", lm_run, "--format", "hf", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    from danlu.lm.load import resolve_lm

    lm = resolve_lm(lm_run, device="cpu")
    text = "Once upon a time"
    ids = lm.tokenizer.encode(text)
    assert tok.encode(text) == ids
    assert tok.decode(ids) == text
    assert tok.eos_token == "<eos>" and hf.config.eos_token_id == 0
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, lm.model(x), atol=1e-4, rtol=1e-4)
    # the exported folder is itself a model reference (danlu's GPT-2 path)
    assert danlu.generate(out, text, max_new_tokens=4, device="cpu") == danlu.generate(
        lm_run, text, max_new_tokens=4, device="cpu"
    )

    again = danlu_cli("export", lm_run, "--format", "hf", out, cwd=tmp_path)
    assert_user_error(again, "already exists")
    # a format danlu has no exporter for (onnx, once refused here, is an export of its own now)
    tflite = danlu_cli("export", lm_run, "--format", "tflite", tmp_path / "x", cwd=tmp_path)
    assert_user_error(tflite, "hf", "onnx")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_export_refuses_other_runs(tmp_path: Path) -> None:
    run = tmp_path / "tab"
    run.mkdir()
    (run / "config.yaml").write_text("task: {type: classification}\n", encoding="utf-8")
    meta = {"format": 1, "task": {"type": "classification"}, "model": {"type": "mlp"}}
    meta |= {"schema": {}, "preprocessor": {}}
    (run / "model.json").write_text(json.dumps(meta))
    (run / "model.safetensors").write_bytes(b"")
    assert_user_error(danlu_cli("export", run, tmp_path / "out", cwd=tmp_path), "language")


# ---------------------------------------------------------------------------- Python API


def test_python_api(hf_dir: Path) -> None:
    expected = hf_greedy(hf_dir, "The quick", 8)
    assert danlu.generate(hf_dir, "The quick", max_new_tokens=8, device="cpu") == expected
    both = danlu.generate(hf_dir, ["The quick", "A"], max_new_tokens=8, device="cpu")
    assert both == [expected, hf_greedy(hf_dir, "A", 8)]
    pieces = list(danlu.generate_stream(hf_dir, "The quick", max_new_tokens=8, device="cpu"))
    assert "".join(pieces) == expected
    sampled = danlu.generate(
        hf_dir,
        "The quick",
        max_new_tokens=8,
        temperature=0.9,
        top_k=20,
        seed=3,
        num_return_sequences=2,
        device="cpu",
    )
    assert isinstance(sampled, list) and len(sampled) == 2
    assert sampled == danlu.generate(
        hf_dir,
        "The quick",
        max_new_tokens=8,
        temperature=0.9,
        top_k=20,
        seed=3,
        num_return_sequences=2,
        device="cpu",
    )
    with pytest.raises(DanluError, match="top_p"):
        danlu.generate(hf_dir, "A", temperature=0.5, top_p=1.5, device="cpu")
    with pytest.raises(DanluError, match="did you mean"):
        danlu.generate(hf_dir, "A", max_new_token=3, device="cpu")


def test_model_references_resolve_without_torch_or_transformers(tmp_path: Path) -> None:
    # danlu/hub.py is core: resolving a folder (here one that exists) imports nothing heavy
    code = (
        "import sys, danlu.hub as h; p = h.locate_model(sys.argv[1]);"
        " assert p.is_dir(); heavy = [m for m in ('torch', 'transformers') if m in sys.modules];"
        " assert not heavy, heavy"
    )
    cmd = [sys.executable, "-c", code, str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
