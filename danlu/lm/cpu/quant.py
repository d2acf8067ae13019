"""The int8 weight-only tier of danlu's decoders (`--dtype int8`): `quantize` and `Int8Linear`.

Decoding one token reads every weight once, so its speed is the weights' bytes. Each Linear
weight row is cut into groups of 32 values, stored as int8 with one float32 scale per group
(scale = max |w| / 127, w ~= scale * q: symmetric, as llama.cpp's q8_0), a quarter of the
float32 bytes plus an eighth for the scales. Activations, norms, biases and the embedding
lookup stay float32. Rows of a length that is no multiple of 32 get one scale per row.

`Int8Linear.forward` multiplies through danlu's C kernel (kernels.c `danlu_linear_q8`: the
int8 weights widened to float in registers, AVX2 or AVX-512) for the few rows of a decoding
step, and otherwise (a prompt, perplexity over a window, no compiler or AVX2,
DANLU_CPU_KERNELS=0, CUDA) dequantises the weight on the fly and calls F.linear: the same
values up to float32 rounding. A quantized model lives in memory only: danlu never saves one
over its float weights.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from danlu.errors import DanluError
from danlu.lm.cpu import kernels

GROUP = 32
COVERED = (
    "danlu's own engine: GPT (danlu GPT runs, GPT-2 folders) and the Llama family (llama, qwen2, "
    "mistral, phi3, gemma; SmolLM)"
)


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values (N, K), float32 scales (N, K / group)) of a float weight (N, K); the group
    is 32 where K is a multiple of 32, else the whole row."""
    n, k = w.shape
    group = GROUP if k % GROUP == 0 else k
    groups = w.detach().float().reshape(n, k // group, group)
    scales = groups.abs().amax(-1) / 127.0
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # an all-zero group stays 0
    q = torch.round(groups / scales.unsqueeze(-1)).clamp_(-127, 127).to(torch.int8)
    return q.reshape(n, k).contiguous(), scales.contiguous()


class Int8Linear(nn.Module):
    """A Linear layer with int8 weights in groups (see the module docstring); inference only."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.group = self.in_features // scales.shape[1]
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        q, scales = quantize_weight(linear.weight)
        return cls(q, scales, linear.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The int8 values: what a model's `lm_head.weight.dtype` and `.device` report (the
        dtype names the tier, see danlu.lm.options.DTYPES)."""
        return self.qweight

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight the int8 values stand for, (out, in) in `dtype`."""
        n, k = self.qweight.shape
        q = self.qweight.reshape(n, k // self.group, self.group).to(dtype)
        return (q * self.scales.unsqueeze(-1).to(dtype)).reshape(n, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if self._kernel_usable(x, rows):
            return kernels.linear_q8(x, self.qweight, self.scales, self.bias)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized(x.dtype), bias)

    def _kernel_usable(self, x: torch.Tensor, rows: int) -> bool:
        if rows > kernels.MAX_ROWS or x.dtype is not torch.float32 or not x.is_cpu or self.group != GROUP:
            return False
        if not self.qweight.is_cpu or (torch.is_grad_enabled() and x.requires_grad):
            return False
        return kernels.available()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, groups of {self.group}"


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())


def quantize(model: nn.Module) -> nn.Module:
    """`model` (danlu's GPT or Llama) with every Linear layer, the output head included, made an
    `Int8Linear`, in place; the embedding lookup keeps its float table (a tied head gets an int8
    copy). A DanluError naming the layer where one holds weights this tier does not cover (a
    LoRA adapter, a layer of another type)."""
    for name, module in model.named_modules():
        # danlu's own layers and torch's; anything else (peft's LoRA wrappers, user code) may
        # compute with its weights in ways an Int8Linear would not reproduce
        if not type(module).__module__.startswith(("torch.nn.", "danlu.lm.")):
            raise DanluError(
                f"--dtype int8 covers {COVERED}, whose Linear layers it quantizes; layer '{name}' is a "
                f"{type(module).__module__}.{type(module).__name__}: merge adapters into the weights first"
                " (danlu export) or use float32/bfloat16"
            )
    with torch.no_grad():
        for parent in list(model.modules()):
            for child_name, child in parent.named_children():
                if isinstance(child, nn.Linear):
                    setattr(parent, child_name, Int8Linear.from_linear(child))
    return model
