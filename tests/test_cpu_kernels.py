"""danlu's C kernel for few-row linear layers against float64 references and torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from danlu.lm import cpu
from danlu.lm.cpu import kernels as cpu_kernels
from danlu.lm.cpu.layers import KernelBlock
from danlu.lm.model import GPT, GPTConfig, KVCache

needs_kernel = pytest.mark.skipif(
    not cpu_kernels.available(),
    reason="danlu's CPU kernel could not be built here (no C compiler, not Linux, or no AVX2/FMA)",
)


F32, BF16 = torch.float32, torch.bfloat16


@needs_kernel
@pytest.mark.parametrize(("dtype", "w_dtype"), [(F32, F32), (BF16, BF16), (F32, BF16)])
@pytest.mark.parametrize("rows", [1, 2, 3, 8, 16])
@pytest.mark.parametrize(("n", "k"), [(96, 64), (50, 37), (3, 5), (8, 3072)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_float64(dtype, w_dtype, rows, n, k, with_bias):
    g = torch.Generator().manual_seed(rows * 1000 + n + k)
    x = torch.randn(rows, k, generator=g).to(dtype)
    w = torch.randn(n, k, generator=g).to(w_dtype)
    b = torch.randn(n, generator=g).to(dtype) if with_bias else None
    assert cpu_kernels.usable(x, w, b, rows)
    got = cpu_kernels.linear(x, w, b)
    assert got.dtype == dtype and got.shape == (rows, n)
    # the reference multiplies the very same (bf16-rounded) numbers exactly
    exact = F.linear(x.double(), w.double(), None if b is None else b.double())
    if dtype == torch.float32:
        torch.testing.assert_close(got.double(), exact, atol=1e-4 * k**0.5, rtol=1e-5)
    else:
        # float32 sums rounded once to bf16 (8 bits of mantissa): within one bf16 step of the exact
        # value, as torch's own bf16 linear is
        step = exact.abs().clamp(min=1e-3) * 2.0**-7
        assert ((got.double() - exact).abs() <= step).all()
        theirs = F.linear(x, w, b).double()
        assert ((got.double() - theirs).abs() <= step).all()


@needs_kernel
def test_batched_leading_dims_and_strided_input():
    w = torch.randn(24, 16)
    x = torch.randn(2, 3, 32)[..., ::2]  # (2, 3, 16), not contiguous
    got = cpu_kernels.linear(x, w, None)
    torch.testing.assert_close(got, F.linear(x, w), atol=1e-5, rtol=0)


def test_not_used_where_it_can_not_help_or_would_break_autograd():
    w = torch.randn(8, 16, requires_grad=True)
    x = torch.randn(1, 16)
    assert not cpu_kernels.usable(x, w, None, 1)  # autograd needs torch's backward
    with torch.no_grad():
        assert cpu_kernels.usable(x, w, None, 1) == cpu_kernels.available()
        assert not cpu_kernels.usable(torch.randn(17, 16), w, None, 17)  # many rows: MKL's gemm
        assert not cpu_kernels.usable(x.double(), w.double(), None, 1)
        assert not cpu_kernels.usable(x, w.t().contiguous().t(), None, 1)  # column-major weight
        assert not cpu_kernels.usable(x.bfloat16(), w, None, 1)  # bf16 activations, float32 weights
        assert not cpu_kernels.usable(x, w.bfloat16(), torch.randn(8).bfloat16(), 1)  # bias not in x's dtype


@needs_kernel
@pytest.mark.parametrize("tanh_form", [True, False])
def test_gelu_matches_float64(tanh_form):
    special = torch.tensor([0.0, -0.0, 1e-30, -1e-8, 3e38, float("inf")])
    x = torch.cat([torch.linspace(-40, 40, 20001), special])
    got = cpu_kernels.gelu(x, tanh_form).double()
    exact = F.gelu(x.double(), approximate="tanh" if tanh_form else "none")
    # torch's own float32 GELU is up to ~4.3e-7 from the exact value on this range
    torch.testing.assert_close(got, exact, atol=1e-6, rtol=0)


def _gpt(activation: str, bias: bool, w_dtype: torch.dtype):
    config = GPTConfig(
        vocab_size=97, block_size=32, n_layer=2, n_head=3, n_embd=30, activation=activation, bias=bias
    )
    torch.manual_seed(0)
    model = GPT(config).eval()
    # larger weights than GPT-2's initialisation, so activations reach GELU's curved range;
    # n_embd 30 leaves remainders in every vector loop (rows of 30, 90 outputs, heads of 10)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)
    return cpu.cast(model, w_dtype) if w_dtype == BF16 else model


def _decode_two_steps(model, rows: int, c_step: bool, monkeypatch) -> list[torch.Tensor]:
    calls = []
    real = cpu_kernels.block_step
    monkeypatch.setattr(cpu_kernels, "block_step", lambda *a: calls.append(1) or real(*a))
    if c_step:
        cpu.accelerate(model, rows)
    else:  # the torch reference: Block.forward in every block
        monkeypatch.setattr(KernelBlock, "_c_step_usable", lambda self, x, k_cache: False)
    g = torch.Generator().manual_seed(rows)
    idx = torch.randint(0, 97, (rows, 7), generator=g)
    mask = torch.ones(rows, 9, dtype=torch.long)
    mask[0, :3] = 0  # a left-padded row: its first keys must stay unseen
    cache = KVCache(model.config, rows, 12)
    with torch.inference_mode():
        model(idx, attention_mask=mask[:, :7], kv_cache=cache)
        out = [model(idx[:, i : i + 1], attention_mask=mask[:, : 8 + i], kv_cache=cache) for i in range(2)]
    assert len(calls) == (2 * model.config.n_layer if c_step else 0)
    return [*out, *(k[:, :, :9] for k in cache.k), *(v[:, :, :9] for v in cache.v)]


@needs_kernel
@pytest.mark.parametrize("activation", ["gelu_tanh", "gelu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("w_dtype", [F32, BF16])
@pytest.mark.parametrize("rows", [1, 3])
def test_block_step_matches_the_torch_block(activation, bias, w_dtype, rows, monkeypatch):
    model = _gpt(activation, bias, w_dtype)
    ours = _decode_two_steps(model, rows, True, monkeypatch)
    theirs = _decode_two_steps(model, rows, False, monkeypatch)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5 * b.abs().max().item(), rtol=1e-5)


@needs_kernel
def test_block_step_not_used_for_training_or_autograd(monkeypatch):
    used = []
    monkeypatch.setattr(cpu_kernels, "block_step", lambda *a: used.append(1) or False)
    model = cpu.accelerate(_gpt("gelu", True, F32))
    idx = torch.randint(0, 97, (1, 1))
    model(idx, kv_cache=KVCache(model.config, 1, 4))  # autograd on: the C step writes in place
    model.train()
    with torch.no_grad():
        model(idx, kv_cache=KVCache(model.config, 1, 4))  # dropout lives in torch's modules
        assert not used
        model.eval()
        model(idx, kv_cache=KVCache(model.config, 1, 4))
        assert len(used) == model.config.n_layer


@needs_kernel
def test_block_step_skips_blocks_it_cannot_take(monkeypatch):
    model = _gpt("gelu_tanh", True, F32)
    model.transformer.h[1].mlp.c_fc.weight.data = model.transformer.h[1].mlp.c_fc.weight.double()
    cpu.accelerate(model)
    assert model.transformer.h[0].kernel_step is not None
    assert model.transformer.h[1].kernel_step is None  # float64: torch runs this block

    idx = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        mixed = model(idx, kv_cache=KVCache(model.config, 2, 8))[:, -1]
        cache = KVCache(model.config, 2, 8)
        model(idx[:, :5], kv_cache=cache)
        stepped = model(idx[:, 5:], kv_cache=cache)[:, -1]
    assert model.transformer.h[0].kernel_step is not None and model.transformer.h[1].kernel_step is None
    torch.testing.assert_close(stepped, mixed, atol=1e-4, rtol=1e-5)


def test_without_a_compiler_torch_does_the_work(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "_lib", None)
    monkeypatch.setattr(cpu_kernels, "_tried", False)
    assert not cpu_kernels.available()
    with torch.no_grad():
        assert not cpu_kernels.usable(torch.randn(1, 4), torch.randn(3, 4), None, 1)
    assert not list(tmp_path.rglob("*.so"))  # nothing half-built left behind


def test_unwritable_cache_means_torch_does_the_work(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setattr(cpu_kernels, "_lib", None)
    monkeypatch.setattr(cpu_kernels, "_tried", False)
    assert not cpu_kernels.available()


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("DANLU_CPU_KERNELS", "0")
    monkeypatch.setattr(cpu_kernels, "_lib", None)
    monkeypatch.setattr(cpu_kernels, "_tried", False)
    assert not cpu_kernels.available()


@needs_kernel
def test_block_step_leaves_wrapped_layers_to_torch():
    """A block whose Linear sits inside another module (peft's LoRA layers do that) keeps
    torch's forward: the C step would read the bare weight and skip the wrapper."""

    class Wrapped(torch.nn.Module):
        def __init__(self, base: torch.nn.Linear) -> None:
            super().__init__()
            self.base_layer = base

        @property
        def weight(self) -> torch.Tensor:
            return self.base_layer.weight

        @property
        def bias(self) -> torch.Tensor | None:
            return self.base_layer.bias

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.base_layer(x) + 0.5

    model = _gpt("gelu_tanh", True, F32)
    model.transformer.h[0].mlp.c_fc = Wrapped(model.transformer.h[0].mlp.c_fc)
    cpu.accelerate(model)
    assert model.transformer.h[0].kernel_step is None
    assert model.transformer.h[1].kernel_step is not None
    idx = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        full = model(idx)[:, -1]
        cache = KVCache(model.config, 2, 8)
        model(idx[:, :5], kv_cache=cache)
        stepped = model(idx[:, 5:], kv_cache=cache)[:, -1]
    torch.testing.assert_close(stepped, full, atol=1e-4, rtol=1e-5)
