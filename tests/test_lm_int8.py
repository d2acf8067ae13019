"""The int8 weight-only decoding tier (`--dtype int8`, dtype="int8"; danlu/lm/cpu/quant.py):
int8 weights in groups of 32 with float32 scales, float32 activations, for danlu's GPT and
Llama-family engine.

Numerics: the quantized weight against the float one (each value within half a step of its
group), danlu's C kernel against the torch fallback (dequantise, F.linear), int8 logits
against float32 ones, tokens with and without the kernel. The real-model figures (perplexity
on Tiny Shakespeare, greedy agreement, speed) are benchmarks/generate.py's."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import assert_user_error, make_tiny_gpt2

from danlu.errors import DanluError
from danlu.lm import cpu
from danlu.lm.cpu import kernels, quant
from danlu.lm.generate import generate_tokens
from danlu.lm.llama import Llama, LlamaConfig
from danlu.lm.model import GPT, GPTConfig
from danlu.lm.options import GenerationOptions

transformers = pytest.importorskip("transformers")
NO_KERNEL = "danlu's CPU kernel is off (DANLU_CPU_KERNELS=0, no compiler or no AVX2): torch does the work"


def test_quantized_weight_is_within_half_a_step() -> None:
    torch.manual_seed(0)
    for k in (96, 50):  # groups of 32, and one scale per row where 32 does not divide the row
        w = torch.randn(7, k) * torch.logspace(-3, 1, 7)[:, None]  # rows of very different sizes
        q, scales = quant.quantize_weight(w)
        group = 32 if k % 32 == 0 else k
        assert q.dtype is torch.int8 and scales.shape == (7, k // group)
        step = scales.repeat_interleave(group, dim=1)
        back = q.float() * step
        assert torch.all((back - w).abs() <= step / 2 + 1e-7)
        assert q.abs().max() == 127  # each group's largest value uses the whole range


@pytest.mark.parametrize(("rows", "n", "k"), [(1, 5, 32), (2, 64, 96), (3, 130, 768), (16, 67, 64)])
def test_kernel_matches_the_torch_fallback(rows: int, n: int, k: int) -> None:
    if not kernels.available():
        pytest.skip(NO_KERNEL)
    torch.manual_seed(rows)
    layer = quant.Int8Linear.from_linear(nn.Linear(k, n, bias=rows % 2 == 1))
    x = torch.randn(rows, k)
    with torch.no_grad():
        got = kernels.linear_q8(x, layer.qweight, layer.scales, layer.bias)
        bias = None if layer.bias is None else layer.bias.double()
        ref = F.linear(x.double(), layer.dequantized(torch.float64), bias)
        assert torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-5)  # float32 sums in another order
        assert torch.equal(layer(x), got)  # the layer takes the kernel for these rows


def _llama() -> Llama:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_kv_head=2, head_dim=16,
                      intermediate_size=96, block_size=64, tie_embeddings=True)  # fmt: skip
    model = Llama(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)  # peaked logits, as the parity tests use
    return model


def _gpt(n_embd: int = 64) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=96, block_size=64, n_layer=2, n_head=2, n_embd=n_embd)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("family", ["gpt", "llama", "gpt-rows-of-48"])
def test_int8_logits_close_to_float32(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # rows of 48 (no multiple of 32): one scale per row, and torch does every product
    model = {"gpt": _gpt, "llama": _llama, "gpt-rows-of-48": lambda: _gpt(48)}[family]()
    int8 = cpu.cast(copy.deepcopy(model), torch.int8)
    assert not any(type(m) is nn.Linear for m in int8.modules()) and int8.lm_head.weight.dtype is torch.int8
    assert all(type(m) is nn.Linear for m in (model.lm_head,))  # the float model is left as it was
    idx = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = model(idx), int8(idx)
    # Rounding each weight to its group's step (max|w| / 127) errs by up to half a step,
    # ~0.6% of a Gaussian weight's size in RMS; through two blocks and the head of these
    # small peaked models the logits move by 2-3% of their norm (measured 2.1% GPT, 3.0%
    # Llama) and the top token of a position changes in a few percent of positions (measured
    # 2%, 6%). The bounds leave 2x room; a wrong scale or group layout moves the logits by
    # about their whole size.
    relative = float((got - ref).norm() / ref.norm())
    assert relative < 0.06, relative
    assert float((got.argmax(-1) == ref.argmax(-1)).float().mean()) >= 0.85
    # greedy tokens: the kernel (one-token steps) and the torch fallback agree exactly
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    opts = GenerationOptions(max_new_tokens=12)
    with_kernel = generate_tokens(int8, prompts, opts)
    monkeypatch.setattr(kernels, "available", lambda: False)
    assert generate_tokens(int8, prompts, opts) == with_kernel
    assert generate_tokens(model, prompts, GenerationOptions(max_new_tokens=12, dtype="int8")) == with_kernel
    assert type(model.lm_head) is not quant.Int8Linear  # dtype="int8" quantized a copy


def test_layers_and_models_int8_does_not_cover(tmp_path: Path, invoke_cli: Any) -> None:
    class Adapter(nn.Module):  # e.g. a LoRA wrapper from another library
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(64, 192)

    model = _gpt()
    model.transformer.h[1].attn.c_attn = Adapter()
    with pytest.raises(DanluError, match=r"layer 'transformer.h.1.attn.c_attn' is a .*Adapter") as e:
        cpu.quantize(model)
    assert "GPT" in str(e.value) and "Llama family" in str(e.value)
    folder = make_tiny_gpt2(tmp_path / "gpt2", initializer_range=0.2)
    r = invoke_cli("generate", folder, "-p", "The", "--dtype", "int8", "--engine", "transformers")
    assert_user_error(r, "--dtype int8 covers danlu's own engine", "'gpt2' model that transformers runs")
    r = invoke_cli("generate", folder, "-p", "The", "--dtype", "int4")
    assert_user_error(r, "valid: bfloat16, float32, int8")


def test_cli_int8_generates_and_leaves_the_model_files_alone(tmp_path: Path, invoke_cli: Any) -> None:
    folder = make_tiny_gpt2(tmp_path / "gpt2", initializer_range=0.2)
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    args = ("generate", folder, "-p", "The quick brown fox", "--max-new-tokens", 8)
    fp32 = invoke_cli(*args)
    int8 = invoke_cli(*args, "--dtype", "int8")
    assert fp32.exit_code == 0 and int8.exit_code == 0, int8.stderr
    assert int8.stdout == fp32.stdout  # peaked logits: int8 rounding does not change greedy choices
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()} == digest


@pytest.mark.parametrize("rows", [1, 3])
def test_int8_block_step_matches_the_torch_block(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """GPT's one-call C block step (kernels.c danlu_block_step) with int8 weights against
    Block.forward over the same Int8Linear layers."""
    if not kernels.available():
        pytest.skip(NO_KERNEL)
    from danlu.lm.cpu.layers import KernelBlock
    from danlu.lm.model import KVCache

    def decode(c_step: bool) -> list[torch.Tensor]:
        model = cpu.accelerate(cpu.quantize(_gpt()), rows)
        calls: list[int] = []
        real = kernels.block_step
        with monkeypatch.context() as patch:
            patch.setattr(kernels, "block_step", lambda *a: calls.append(1) or real(*a))
            if not c_step:
                patch.setattr(KernelBlock, "_c_step_usable", lambda self, x, k_cache: False)
            idx = torch.randint(0, 96, (rows, 7), generator=torch.Generator().manual_seed(rows))
            cache = KVCache(model.config, rows, 12)
            with torch.inference_mode():
                model(idx, kv_cache=cache)
                out = [model(idx[:, i : i + 1], kv_cache=cache) for i in range(2)]
        assert len(calls) == (2 * model.config.n_layer if c_step else 0)
        assert model.transformer.h[0].kernel_step.weight_kind == 2  # int8 weights with scales
        return [*out, *(k[:, :, :9] for k in cache.k), *(v[:, :, :9] for v in cache.v)]

    for a, b in zip(decode(True), decode(False), strict=True):
        torch.testing.assert_close(a, b, atol=2e-5 * b.abs().max().item(), rtol=1e-5)


def test_serve_int8_answers_as_generate_int8(tmp_path: Path) -> None:
    """`danlu serve --dtype int8` (the ASGI app in process): a greedy completion equals
    danlu.generate(..., dtype="int8")."""
    from fastapi.testclient import TestClient

    import danlu
    from danlu.serve import app

    folder = make_tiny_gpt2(tmp_path / "gpt2", initializer_range=0.2)
    want = danlu.generate(folder, "The quick", max_new_tokens=6, dtype="int8", device="cpu")
    with TestClient(app({"m": folder}, dtype="int8")) as client:
        ask = {"model": "m", "prompt": "The quick", "max_tokens": 6, "temperature": 0}
        r = client.post("/v1/completions", json=ask)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == want
