"""The decoding-speed versions of GPT's modules that `danlu.lm.cpu.accelerate` installs.

Each subclasses the module of danlu/lm/model.py and only overrides `forward`: same
parameters, same state_dict keys, same results up to float32 rounding, and it falls back to
the parent's forward for every call its fast path does not take (training, autograd, CUDA,
many rows, no kernel).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from danlu.lm.cpu import kernels
from danlu.lm.cpu.quant import Int8Linear
from danlu.lm.model import Block


class FastLinear(nn.Linear):
    """nn.Linear that multiplies a few rows faster on CPU.

    A decoding step pushes only batch-size rows through each weight matrix, so it runs at
    the speed weights stream from memory. Up to 16 float32 or bfloat16 rows go through
    danlu's own kernel (kernels.c) where it could be built: on two cores it reads the GPT-2
    124M float32 weights in ~16 ms where MKL's one-core matrix-vector product takes ~24 ms,
    and bf16 weights at batch 8 in ~29 ms instead of ~98 ms. Without it, 2 to 64 float32
    rows are quicker as (W @ x^T)^T than as x @ W^T (batch 8: ~35 ms instead of ~57 ms for
    the weights). bfloat16 weights under float32 activations (`danlu.lm.cpu.cast`) are
    widened per call. Everything else goes through F.linear as usual.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        w = self.weight
        if kernels.usable(x, w, self.bias, rows):
            return kernels.linear(x, w, self.bias)
        if w.dtype != x.dtype:  # bf16 weights under float32 activations (cast)
            return F.linear(x, w.to(x.dtype), self.bias)
        if 1 < rows <= 64 and x.dtype == torch.float32 and x.device.type == "cpu" and (w.is_contiguous()):
            x2 = x.reshape(rows, x.shape[-1]).t()
            y = torch.mm(w, x2) if self.bias is None else torch.addmm(self.bias[:, None], w, x2)
            return y.t().reshape(*x.shape[:-1], w.shape[0])
        return F.linear(x, w, self.bias)


class StepBuffers:
    """What every block of one decoding step shares: the key mask as bytes and the C step's
    work memory, made by the first block that runs the C step and reused by the others."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None
        self.shape: tuple[int, int] | None = None
        self.key_mask: torch.Tensor | None = None
        self.scratch: torch.Tensor | None = None

    def get(
        self, mask: torch.Tensor | None, rows: int, past: int, n_embd: int, n_head: int
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        if self.scratch is None or mask is not self.mask or (rows, past) != self.shape:
            self.mask, self.shape = mask, (rows, past)
            # the one-token mask of GPT._attention_mask is (rows, 1, 1, past + 1)
            self.key_mask = None if mask is None else mask.reshape(rows, -1).to(torch.uint8).contiguous()
            self.scratch = kernels.block_scratch(rows, n_embd, n_head, past)
        return self.key_mask, self.scratch


class KernelBlock(Block):
    """A GPT block whose one-token decoding steps run as one call of danlu's C step
    (kernels.c `danlu_block_step`), which does what `Block.forward` does for one new token
    per row, writing into `x` and the KV cache in place.

    `prepare` gathers the block's 12 parameters once (looking them up through torch modules
    costs more than the C step of a small model); a step re-prepares when a weight moved
    (a new layout, a cast). Set by `danlu.lm.cpu.accelerate`."""

    kernel_step: kernels.BlockStep | None
    prepared_for: tuple[int, ...]
    params: tuple[torch.Tensor, ...]
    step_buffers: StepBuffers

    def prepare(self) -> kernels.BlockStep | None:
        """This block for the C step; None where its tensors cannot go through it."""
        attn, mlp = self.attn, self.mlp
        linears = (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)
        norms = [self.ln_1.weight, self.ln_1.bias, self.ln_2.weight, self.ln_2.bias]
        self.params = tuple(t for t in (*norms, *(m.weight for m in linears)) if t is not None)
        self.prepared_for = tuple(t.data_ptr() for t in self.params)
        int8 = all(isinstance(m, Int8Linear) for m in linears)  # danlu.lm.cpu.quantize
        if not int8 and not all(isinstance(m, nn.Linear) for m in linears):
            self.kernel_step = None  # e.g. LoRA adapters (peft) around a layer: torch runs them
            return None
        self.kernel_step = kernels.prepare_block(
            norms,
            [m.weight for m in linears],
            [m.bias for m in linears],
            self.ln_1.eps,
            tanh_gelu=mlp.approximate == "tanh",
            scales=[m.scales for m in linears] if int8 else None,  # type: ignore[misc]
        )
        return self.kernel_step

    def __getstate__(self) -> dict[str, Any]:
        # a copy (copy.deepcopy, pickle) has weights of its own: it prepares on its first step
        return {**super().__getstate__(), "kernel_step": None, "prepared_for": ()}

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        cache: tuple[torch.Tensor, torch.Tensor, int] | None,
    ) -> torch.Tensor:
        if cache is not None and x.shape[1] == 1 and self._c_step_usable(x, cache[0]):
            step = self.kernel_step
            if tuple(t.data_ptr() for t in self.params) != self.prepared_for:
                step = self.prepare()
            if step is not None:
                rows, _, n_embd = x.shape
                k_cache, v_cache, past = cache
                key_mask, scratch = self.step_buffers.get(mask, rows, past, n_embd, k_cache.shape[1])
                if kernels.block_step(step, x, k_cache, v_cache, past, key_mask, scratch):
                    return x
        return super().forward(x, mask, is_causal, cache)

    def _c_step_usable(self, x: torch.Tensor, k_cache: torch.Tensor) -> bool:
        """float32 activations and caches on the CPU, at most kernels.MAX_ROWS rows, no
        dropout and no autograd (the C step has no backward and writes into `x`)."""
        if x.dtype is not torch.float32 or not x.is_cpu or x.shape[0] > kernels.MAX_ROWS:
            return False
        if self.training or (torch.is_grad_enabled() and self.ln_1.weight.requires_grad):
            return False
        # KVCache makes its tensors contiguous (torch.empty, index_select) in one dtype
        return k_cache.dtype is torch.float32 and k_cache.is_cpu and x.is_contiguous()
