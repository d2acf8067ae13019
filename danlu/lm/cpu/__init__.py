"""Everything danlu's decoders (GPT, Llama) have only for decoding speed on a CPU, installed by one call.

    model = danlu.lm.cpu.accelerate(model, batch_size=8)

`accelerate` swaps the model's nn.Linear layers for `FastLinear` and GPT's blocks for
`KernelBlock` (same parameters and state_dict; only `forward` differs, see layers.py) and
lays the weights out in memory for one-token steps of `batch_size` rows. danlu's decoding
engine (danlu/lm/generate.py) calls it before every generation. Where danlu's C kernels
cannot be used (no compiler, no AVX2/FMA, an unsafe or unwritable cache, DANLU_CPU_KERNELS=0;
see kernels.py) torch does the work and the results are the same up to float32 rounding.
`cast` gives the model bfloat16 weight matrices beside float32 activations, or int8 ones
(`quantize`, the int8 weight-only tier: quant.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from danlu.errors import DanluError
from danlu.lm.cpu import kernels
from danlu.lm.cpu.layers import FastLinear, KernelBlock, StepBuffers
from danlu.lm.cpu.quant import Int8Linear, is_quantized, quantize
from danlu.lm.model import Block

__all__ = [
    "FastLinear",
    "Int8Linear",
    "KernelBlock",
    "accelerate",
    "cast",
    "is_quantized",
    "kernels",
    "lay_out",
    "quantize",
]


def accelerate(model: nn.Module, batch_size: int = 1) -> nn.Module:
    """`model`, in place, with danlu's CPU decoding path installed for `batch_size` rows per
    step (see the module docstring); a model on another device is returned as it is."""
    if model.lm_head.weight.device.type != "cpu":
        return model
    _install_linear(model)
    lay_out(model, batch_size)
    if kernels.available():
        buffers = StepBuffers()
        for module in model.modules():
            if type(module) is Block or isinstance(module, KernelBlock):
                module.__class__ = KernelBlock
                module.step_buffers = buffers
                module.prepare()  # after the layout: the C step reads the weights' new places
    return model


def cast(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The model in `dtype` for inference, in place.

    bfloat16 on CPU casts only the weight matrices (and the tied embedding) and keeps
    activations, norms and biases in float32, as llama.cpp keeps activations in float32
    beside 16-bit weights: decoding is bound by reading the weights, which this halves,
    while CPUs without bf16 instructions run bf16 element-wise ops and attention slower
    than float32 ones (`FastLinear` takes the mixed dtypes). Elsewhere (CUDA) the whole
    model is cast. torch.int8 quantizes the Linear layers (`quantize`, any device; danlu's
    kernel on CPU). An int8 model is not cast back: its float weights are gone.
    """
    if is_quantized(model):
        if dtype == torch.int8:
            return model
        raise DanluError(f"this model was quantized to int8; load it again to run it in {str(dtype)[6:]}")
    if dtype == torch.int8:
        return quantize(model.float())
    if dtype != torch.bfloat16 or model.lm_head.weight.device.type != "cpu":
        return model.to(dtype)
    model.float()
    # GPT-2's position embeddings stay float32 (the Llama family has none: rotary positions)
    wpe = getattr(getattr(model, "transformer", None), "wpe", None)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Embedding) and module is not wpe:
                module.weight.data = module.weight.data.to(dtype)
    _install_linear(model)
    return model


def lay_out(model: nn.Module, batch_size: int = 1) -> nn.Module:
    """Lay the Linear weights out in memory for one-token steps of `batch_size` rows;
    values are unchanged.

    danlu's CPU kernel (see `FastLinear`) reads row-major weights. Without it, MKL's float32
    matrix-vector products (batch 1) stream a weight stored column-major (an (in, out)
    matrix, like Hugging Face's Conv1D) fastest: the 50257 x 768 head takes ~7 ms instead
    of ~12 ms; from two rows on, and for bfloat16, row-major is fastest again. Changing
    layout copies every weight once (a fraction of a second for GPT-2 124M), so
    alternating batch 1 with larger batches pays that each time. Shapes stay the same
    and only strides change, so state_dict tensors may be non-contiguous (safetensors'
    save_model copes; save_file needs .contiguous()).
    """
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.Linear):
                continue
            w = module.weight
            column_major = batch_size == 1 and w.device.type == "cpu" and w.dtype == torch.float32
            column_major = column_major and not kernels.available()
            if column_major and w.stride() != (1, w.shape[0]):
                w.data = w.data.t().contiguous().t()
            elif not column_major and not w.is_contiguous():
                w.data = w.data.contiguous()
        _huge_pages_for_kernel(model)
    return model


def _install_linear(model: nn.Module) -> None:
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = FastLinear  # forward only: the parameters stay where they are


def _huge_pages_for_kernel(model: nn.Module) -> None:
    """Move the weight matrices the CPU kernel streams into 2 MB pages, once (int8 ones with
    their scales)."""
    weights = list({id(m.weight): m.weight for m in model.modules() if isinstance(m, nn.Linear)}.values())
    weights += [t for m in model.modules() if isinstance(m, Int8Linear) for t in (m.qweight, m.scales)]
    if not weights or len({w.untyped_storage().data_ptr() for w in weights}) == 1:
        return  # already views of the one mapping huge_page_copies makes
    if not kernels.available() or not all(w.is_contiguous() for w in weights):
        return
    copies = kernels.huge_page_copies([w.data for w in weights])
    if copies is not None:
        for w, c in zip(weights, copies, strict=True):
            w.data = c
