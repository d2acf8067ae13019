"""GPT generation and training where danlu's C kernel is absent (issue 14): disabled with
DANLU_CPU_KERNELS=0, no C compiler, or a cache folder it cannot write. That is every macOS,
Windows and ARM user (no AVX2/FMA or no compiler), so torch must do the work there.

The GPT test files run again, whole, in a subprocess with the kernel disabled: on this
machine the kernel builds, so the rest of the suite exercises the kernel path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, _env, cli, make_tiny_gpt2

pytest.importorskip("transformers", reason="transformers is not installed (pip install 'danlu[hf]')")

HUB_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
GPT_TESTS = [
    "tests/test_gpt.py",
    "tests/test_generate_cli.py",
    "tests/test_lm_int8.py",  # the int8 tier's torch fallback (dequantise on the fly)
    # training with a sample generated at every evaluation, generation from the run, export
    "tests/test_language_model.py::test_train_generate_export",
    "tests/test_lm_finetune.py::test_samples_are_logged_without_disturbing_training",
]


@pytest.mark.slow
def test_gpt_suite_passes_with_the_kernel_disabled(tmp_path):
    env = _env({"DANLU_CPU_KERNELS": "0", **HUB_OFFLINE})
    r = subprocess.run(
        [sys.executable, "-m", "pytest", *GPT_TESTS, "-q", "-p", "no:randomly", "-p", "no:cacheprovider"]
        + ["--basetemp", str(tmp_path / "inner")]
        + (["-n", "0"] if "xdist" in sys.modules else []),
        cwd=str(REPO),
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    tail = r.stdout[-4000:] + r.stderr[-2000:]
    assert r.returncode == 0, tail
    assert " passed" in r.stdout and " failed" not in r.stdout, tail


def hf_greedy(path: Path, prompt: str, max_new_tokens: int) -> str:
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tok.eos_token_id,
        )  # fmt: skip
    return tok.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True)


def no_compiler(tmp_path: Path) -> dict[str, str]:
    """CC names a program that does not exist, and PATH holds no cc or gcc."""
    empty = tmp_path / "empty-bin"
    empty.mkdir(exist_ok=True)
    return {"CC": str(tmp_path / "no-such-cc"), "PATH": str(empty), "XDG_CACHE_HOME": str(tmp_path / "cache")}


def unwritable_cache(tmp_path: Path) -> dict[str, str]:
    """XDG_CACHE_HOME is a read-only folder (for root, who may write anywhere, a file)."""
    cache = tmp_path / "read-only-cache"
    if os.geteuid() == 0:
        cache.write_text("not a folder")
    else:
        cache.mkdir()
        cache.chmod(0o500)
    return {"XDG_CACHE_HOME": str(cache)}


@pytest.mark.slow
@pytest.mark.parametrize("setting", [no_compiler, unwritable_cache], ids=["no compiler", "unwritable cache"])
def test_generate_and_train_without_the_kernel(tmp_path, setting):
    env = {**HUB_OFFLINE, **setting(tmp_path)}
    model = make_tiny_gpt2(tmp_path / "gpt2", initializer_range=0.2)  # peaked logits: greedy is stable
    # bytes: a random model's text may hold "\r", which text mode would turn into "\n"
    raw = subprocess.run(
        [sys.executable, "-m", "danlu", "generate", model, "--prompt", "The quick", "--max-new-tokens", "12"],
        cwd=tmp_path, env=_env(env), capture_output=True, timeout=300,
    )  # fmt: skip
    assert raw.returncode == 0, raw.stderr.decode()
    assert raw.stdout.decode("utf-8") == hf_greedy(model, "The quick", 12) + "\n"

    # a short step-based run: each evaluation writes a sample, decoded with a KV cache
    text = tmp_path / "cats.txt"
    text.write_text("the cat sat on the mat. " * 200, encoding="utf-8")
    body = {
        "name": "lm",
        "task": {"type": "language_modeling", "sample_tokens": 16},
        "data": {"path": str(text), "tokenizer": "char", "split": {"val": 0.1}},
        "model": {"type": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16},
        "train": {"batch_size": 8, "max_steps": 10, "eval_every": 5, "device": "cpu", "early_stopping": None},
        "output": {"dir": str(tmp_path / "runs"), "timestamp": False},
    }
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(body), encoding="utf-8")
    r = cli("train", "lm.yaml", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "lm"
    assert (run / "samples.md").read_text(encoding="utf-8").count("## step") == 2
    r = cli("generate", run, "--prompt", "the ", "--max-new-tokens", 8, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert not list(tmp_path.rglob("*.so"))  # the kernel was never built: torch did the work
