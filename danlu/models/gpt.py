"""A GPT-2 style decoder-only Transformer in one file, in the spirit of nanoGPT's model.py.

The parameter names follow Hugging Face's GPT2LMHeadModel (transformer.h.0.attn.c_attn, ...)
so that `GPT.from_hf` and `GPT.to_hf` are a rename-free copy plus a transpose: HF stores the
c_attn/c_proj/c_fc weights as Conv1D (in, out) matrices while nn.Linear keeps (out, in).

Inference uses a preallocated key/value cache (`KVCache`): the prompt is run once (prefill)
and every later step feeds one token per sequence. Left-padded batches carry an attention
mask over keys; positions then come from the mask so a padded prompt sees the same positions
as it would alone, as Hugging Face's generate does. On CPU those one-token steps run each
block through danlu's C step (`Block.c_step`, danlu/cpu_kernels.c) where it was built;
`Block.forward` is the reference it is tested against.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from danlu import cpu_kernels
from danlu.errors import DanluError


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True
    layer_norm_eps: float = 1e-5
    # GPT-2 uses the tanh approximation ("gelu_new"); nanoGPT and BERT the exact erf GELU,
    # which is also ~35% cheaper on CPU
    activation: str = "gelu_tanh"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise DanluError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise DanluError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise DanluError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in _APPROXIMATE:
            valid = ", ".join(_APPROXIMATE)
            raise DanluError(f"GPTConfig.activation must be one of {valid}, got {self.activation!r}")


# danlu's activation names -> F.gelu's `approximate`
_APPROXIMATE = {"gelu": "none", "gelu_tanh": "tanh"}


class KVCache:
    """Keys and values of every layer for up to `max_len` positions, filled left to right.

    One tensor per layer of shape (batch, n_head, max_len, head_dim) is allocated up front,
    so a decoding step writes into a slice instead of concatenating (which would copy the
    whole cache every step).
    """

    def __init__(
        self,
        config: GPTConfig,
        batch_size: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if max_len > config.block_size:
            raise DanluError(f"KV cache length {max_len} exceeds the model's block_size {config.block_size}")
        head_dim = config.n_embd // config.n_head
        shape = (batch_size, config.n_head, max_len, head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.max_len = max_len
        self.length = 0  # filled positions; a Python int so no step has to read a tensor
        # the blocks prepared for danlu's C step, by the first one-token step; a cache serves
        # one generation, during which the weights do not change
        self.c_steps: list[cpu_kernels.BlockStep | None] | None = None

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the rows `index` (beam search picks which hypotheses continue)."""
        self.k = [k.index_select(0, index) for k in self.k]
        self.v = [v.index_select(0, index) for v in self.v]


class Linear(nn.Linear):
    """nn.Linear that multiplies a few rows faster on CPU.

    A decoding step pushes only batch-size rows through each weight matrix, so it runs at
    the speed weights stream from memory. Up to 16 float32 or bfloat16 rows go through
    danlu's own kernel (danlu/cpu_kernels.c) where it could be built: on two cores it reads
    the GPT-2 124M float32 weights in ~16 ms where MKL's one-core matrix-vector product takes
    ~24 ms, and bf16 weights at batch 8 in ~29 ms instead of ~98 ms. Without it, 2 to 64
    float32 rows are quicker as (W @ x^T)^T than as x @ W^T (batch 8: ~35 ms instead of ~57
    ms for the weights). Everything else goes through F.linear as usual.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        w = self.weight
        if cpu_kernels.usable(x, w, self.bias, rows):
            return cpu_kernels.linear(x, w, self.bias)
        if w.dtype != x.dtype:  # bf16 weights under float32 activations (GPT.cast)
            return F.linear(x, w.to(x.dtype), self.bias)
        if 1 < rows <= 64 and x.dtype == torch.float32 and x.device.type == "cpu" and (w.is_contiguous()):
            x2 = x.reshape(rows, x.shape[-1]).t()
            y = torch.mm(w, x2) if self.bias is None else torch.addmm(self.bias[:, None], w, x2)
            return y.t().reshape(*x.shape[:-1], w.shape[0])
        return F.linear(x, w, self.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # query, key and value projections in one matmul
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        cache: tuple[torch.Tensor, torch.Tensor, int] | None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k_cache, v_cache, start = cache
            end = start + T
            k_cache[:, :, start:end] = k
            v_cache[:, :, start:end] = v
            k, v = k_cache[:, :, :end], v_cache[:, :, :end]
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.approximate = _APPROXIMATE[config.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        cache: tuple[torch.Tensor, torch.Tensor, int] | None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, is_causal, cache)
        return x + self.mlp(self.ln_2(x))

    def c_step(self) -> cpu_kernels.BlockStep | None:
        """This block prepared for danlu's C decoding step (cpu_kernels.c), which does what
        `forward` does for one new token per row; None where its weights cannot go through it."""
        attn, mlp = self.attn, self.mlp
        linears = (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)
        return cpu_kernels.prepare_block(
            [self.ln_1.weight, self.ln_1.bias, self.ln_2.weight, self.ln_2.bias],
            [m.weight for m in linears],
            [m.bias for m in linears],
            self.ln_1.eps,
            tanh_gelu=mlp.approximate == "tanh",
        )


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias),
            )
        )
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

        self.apply(self._init_weights)
        # GPT-2 scales the projections that write into the residual stream so its variance
        # does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids `idx` (B, T); (B, 1, vocab) with `last_only`.

        attention_mask: (B, past + T), 1 for real tokens and 0 for (left) padding, covering
            the cached positions too, like Hugging Face's. None means no padding.
        position_ids: (B, T); by default counted from the mask (cumsum - 1, clamped at 0)
            or, without a mask, continuing after the cached positions.
        kv_cache: appended to in place; its `length` advances by T.
        """
        B, T = idx.shape
        past = kv_cache.length if kv_cache is not None else 0
        end = past + T
        if end > self.config.block_size:
            raise DanluError(
                f"sequence of {end} tokens exceeds the model's block_size {self.config.block_size}"
            )
        if kv_cache is not None and end > kv_cache.max_len:
            raise DanluError(f"sequence of {end} tokens exceeds the KV cache length {kv_cache.max_len}")

        wte, wpe = self.transformer.wte, self.transformer.wpe
        if position_ids is None and attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)[:, past:end]
        # without position ids a slice of the table does: no index tensor on every step
        pos = wpe.weight[past:end] if position_ids is None else wpe(position_ids)
        dtype = self.compute_dtype
        x = wte(idx).to(dtype) + pos.to(dtype)
        x = self.transformer.drop(x)

        mask, is_causal = self._attention_mask(attention_mask, past, T, idx.device)
        c_steps = None
        if kv_cache is not None and T == 1 and self._c_step_usable(x, kv_cache):
            if kv_cache.c_steps is None:
                kv_cache.c_steps = [block.c_step() for block in self.transformer.h]
            # None for every block where the kernel is absent (not built, disabled, no AVX2/FMA)
            # or declines this model's tensors: torch runs those blocks below
            c_steps = kv_cache.c_steps if any(kv_cache.c_steps) else None
            key_mask = None
            if attention_mask is not None:
                key_mask = attention_mask[:, :end].to(torch.uint8).contiguous()
            if c_steps is not None:
                scratch = cpu_kernels.block_scratch(B, self.config.n_embd, self.config.n_head, past)
        for i, block in enumerate(self.transformer.h):
            c_step = c_steps[i] if c_steps else None
            if c_step is not None and cpu_kernels.block_step(
                c_step, x, kv_cache.k[i], kv_cache.v[i], past, key_mask, scratch
            ):
                continue
            cache = (kv_cache.k[i], kv_cache.v[i], past) if kv_cache is not None else None
            x = block(x, mask, is_causal, cache)
        if kv_cache is not None:
            kv_cache.length = end

        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.transformer.ln_f(x))

    def _c_step_usable(self, x: torch.Tensor, kv_cache: KVCache) -> bool:
        """Whether a one-token step may run its blocks through `Block.c_step`: float32
        activations and caches on the CPU, at most cpu_kernels.MAX_ROWS rows, no dropout and
        no autograd (the C step has no backward and writes into `x`)."""
        if x.dtype is not torch.float32 or not x.is_cpu or x.shape[0] > cpu_kernels.MAX_ROWS:
            return False
        if not cpu_kernels.available():  # torch alone: no kernel to prepare the blocks for
            return False
        if self.training or (torch.is_grad_enabled() and self.lm_head.weight.requires_grad):
            return False
        # KVCache makes its tensors contiguous (torch.empty, index_select) in one dtype
        k = kv_cache.k[0]
        return k.dtype is torch.float32 and k.is_cpu and x.is_contiguous()

    @staticmethod
    def _attention_mask(
        attention_mask: torch.Tensor | None, past: int, T: int, device: torch.device
    ) -> tuple[torch.Tensor | None, bool]:
        """(boolean SDPA mask or None, is_causal) for T queries after `past` cached keys."""
        end = past + T
        if attention_mask is None:
            if T == 1:
                return None, False  # one new token may see every cached key
            if past == 0:
                return None, True  # SDPA's fast causal path
        keys = torch.arange(end, device=device)
        queries = keys[past:, None]
        allowed = keys <= queries  # (T, end), causal with the cache offset
        if attention_mask is None:
            return allowed, False
        real = attention_mask[:, :end].bool()[:, None, None, :]  # (B, 1, 1, end)
        if T == 1:
            return real, False
        # a padding query still sees itself: a row with no visible key would make SDPA
        # return NaN, and those outputs are ignored anyway
        return (allowed & real) | (keys == queries), False

    @property
    def compute_dtype(self) -> torch.dtype:
        """The activations' dtype, which `cast` may keep above the weights'."""
        return self.transformer.ln_f.weight.dtype

    def cast(self, dtype: torch.dtype) -> GPT:
        """The model in `dtype` for inference, in place.

        bfloat16 on CPU casts only the weight matrices (and the tied embedding) and keeps
        activations, norms and biases in float32, as llama.cpp keeps activations in float32
        beside 16-bit weights: decoding is bound by reading the weights, which this halves,
        while CPUs without bf16 instructions run bf16 element-wise ops and attention slower
        than float32 ones. Elsewhere (CUDA) the whole model is cast.
        """
        if dtype != torch.bfloat16 or self.lm_head.weight.device.type != "cpu":
            return self.to(dtype)
        self.float()
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear | nn.Embedding) and module is not self.transformer.wpe:
                    module.weight.data = module.weight.data.to(dtype)
        return self

    def optimize_for_decoding(self, batch_size: int = 1) -> GPT:
        """Lay the Linear weights out in memory for one-token steps of `batch_size` rows;
        values are unchanged.

        danlu's CPU kernel (see `Linear`) reads row-major weights. Without it, MKL's float32
        matrix-vector products (batch 1) stream a weight stored column-major (an (in, out)
        matrix, like Hugging Face's Conv1D) fastest: the 50257 x 768 head takes ~7 ms instead
        of ~12 ms; from two rows on, and for bfloat16, row-major is fastest again. Changing
        layout copies every weight once (a fraction of a second for GPT-2 124M), so
        alternating batch 1 with larger batches pays that each time. Shapes stay the same
        and only strides change, so state_dict tensors may be non-contiguous (safetensors'
        save_model copes; save_file needs .contiguous()).
        """
        with torch.no_grad():
            for module in self.modules():
                if not isinstance(module, nn.Linear):
                    continue
                w = module.weight
                column_major = (
                    batch_size == 1
                    and w.device.type == "cpu"
                    and w.dtype == torch.float32
                    and not cpu_kernels.available()
                )
                if column_major and w.stride() != (1, w.shape[0]):
                    w.data = w.data.t().contiguous().t()
                elif not column_major and not w.is_contiguous():
                    w.data = w.data.contiguous()
            self._huge_pages_for_kernel()
        return self

    def _huge_pages_for_kernel(self) -> None:
        """Move the weight matrices the CPU kernel streams into 2 MB pages, once."""
        weights = list({id(m.weight): m.weight for m in self.modules() if isinstance(m, nn.Linear)}.values())
        if len({w.untyped_storage().data_ptr() for w in weights}) == 1:
            return  # already views of the one mapping huge_page_copies makes
        if not cpu_kernels.available() or not all(w.is_contiguous() for w in weights):
            return
        copies = cpu_kernels.huge_page_copies([w.data for w in weights])
        if copies is not None:
            for w, c in zip(weights, copies, strict=True):
                w.data = c

    def crop_block_size(self, block_size: int) -> None:
        """Shorten the context to `block_size` positions (nanoGPT's model surgery), e.g. to
        fine-tune GPT-2 on shorter blocks; the first position embeddings are kept."""
        if not 0 < block_size <= self.config.block_size:
            raise DanluError(f"block_size {block_size} must be in 1..{self.config.block_size}")
        if block_size == self.config.block_size:
            return
        wpe = self.transformer.wpe
        wpe.weight = nn.Parameter(wpe.weight.detach()[:block_size].clone())
        wpe.num_embeddings = block_size
        self.config.block_size = block_size

    # ------------------------------------------------------------------ size

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count (tied weights once); without position embeddings by default,
        as nanoGPT counts them for the FLOPs estimate."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward), as nanoGPT's estimate_mfu: 6N for
        the weights plus 12 * n_layer * n_embd * seq_len for attention over the context."""
        cfg = self.config
        T = seq_len or cfg.block_size
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embd * T

    # ------------------------------------------------------------------ Hugging Face

    @classmethod
    def from_hf(cls, path: str | Path) -> GPT:
        """Load a Hugging Face GPT-2 folder (config.json + model.safetensors or
        pytorch_model.bin)."""
        path = Path(path)
        if not path.is_dir():
            raise DanluError(f"Hugging Face model folder '{path}' does not exist")
        config_file = path / "config.json"
        if not config_file.is_file():
            raise DanluError(f"'{config_file}' not found; a Hugging Face GPT-2 folder needs config.json")
        try:
            hf = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DanluError(f"cannot read '{config_file}': {e}") from e
        config = _config_from_hf(hf, config_file)
        state = _read_hf_weights(path)

        model = cls(config)
        ours = model.state_dict()
        loaded: dict[str, torch.Tensor] = {}
        for name, tensor in state.items():
            name = name.removeprefix("transformer.")
            if name.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # causal-mask buffers stored by old checkpoints
            if name != "lm_head.weight":
                name = "transformer." + name
            if name not in ours:
                raise DanluError(f"unexpected weight '{name}' in '{path}' for a GPT-2 model")
            if name.endswith(_CONV1D_WEIGHTS):
                tensor = tensor.t()
            if tensor.shape != ours[name].shape:
                raise DanluError(
                    f"weight '{name}' in '{path}' has shape {tuple(tensor.shape)}, "
                    f"config.json implies {tuple(ours[name].shape)}"
                )
            loaded[name] = tensor
        if config.tie_embeddings:
            loaded.pop("lm_head.weight", None)
            ours.pop("lm_head.weight", None)
        missing = sorted(set(ours) - set(loaded))
        if missing:
            raise DanluError(f"weights in '{path}' lack {len(missing)} tensors, e.g. '{missing[0]}'")
        with torch.no_grad():
            for name, p in model.state_dict().items():
                if name in loaded:
                    p.copy_(loaded[name])
        return model

    def to_hf(
        self,
        out_dir: str | Path,
        tokenizer_dir: str | Path | None = None,
        *,
        overwrite: bool = False,
    ) -> Path:
        """Write a folder that transformers.GPT2LMHeadModel.from_pretrained loads."""
        return export_hf(self, out_dir, tokenizer_dir, overwrite=overwrite)


_CONV1D_WEIGHTS = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)
# the tanh-approximate GELU under its Hugging Face names
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)


def _config_from_hf(hf: dict[str, Any], config_file: Path) -> GPTConfig:
    model_type = hf.get("model_type")
    if model_type != "gpt2":
        raise DanluError(f"'{config_file}' has model_type {model_type!r}; only 'gpt2' can be loaded")
    n_embd = hf.get("n_embd", 768)
    act = hf.get("activation_function", "gelu_new")
    if act not in (*_GELU_TANH, "gelu"):
        raise DanluError(
            f"'{config_file}' has activation_function {act!r}; valid: gelu, {', '.join(_GELU_TANH)}"
        )
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise DanluError(f"'{config_file}' has n_inner {hf['n_inner']}; only 4 * n_embd is supported")
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
        raise DanluError(f"'{config_file}' changes attention scaling; only GPT-2's 1/sqrt(head_dim)")
    if hf.get("add_cross_attention", False):
        raise DanluError(f"'{config_file}' has add_cross_attention; only decoder-only GPT-2")
    return GPTConfig(
        vocab_size=hf.get("vocab_size", 50257),
        block_size=hf.get("n_positions", 1024),
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=n_embd,
        dropout=0.0,
        bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        activation="gelu" if act == "gelu" else "gelu_tanh",
    )


def _read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    binary = path / "pytorch_model.bin"
    try:
        if single.is_file():
            return load_file(single)
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(load_file(path / shard))
            return state
        if binary.is_file():
            # weights_only: a pickle from the internet must not run code
            return torch.load(binary, map_location="cpu", weights_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise DanluError(f"cannot read the weights in '{path}': {e}") from e
    raise DanluError(
        f"no weights in '{path}': expected model.safetensors (or model.safetensors.index.json) "
        "or pytorch_model.bin"
    )


def export_hf(
    model: GPT,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    *,
    overwrite: bool = False,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write `model` as a Hugging Face GPT-2 folder (config.json + model.safetensors, plus
    the tokenizer files of `tokenizer_dir`). The folder is built beside `out_dir` and renamed
    into place, so a reader never sees half of it. `extra_config` adds config.json keys
    (e.g. eos_token_id, bos_token_id, pad_token_id)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DanluError(f"'{out_dir}' already exists and is not empty; pass overwrite=True")
    tokenizer_files: list[Path] = []
    if tokenizer_dir is not None:
        tokenizer_dir = Path(tokenizer_dir)
        tokenizer_files = [tokenizer_dir / f for f in _TOKENIZER_FILES if (tokenizer_dir / f).is_file()]
        if not tokenizer_files:
            raise DanluError(
                f"no tokenizer files in '{tokenizer_dir}'; expected one of {', '.join(_TOKENIZER_FILES)}"
            )

    cfg = model.config
    dtype = next(model.parameters()).dtype
    hf_config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": "gelu" if cfg.activation == "gelu" else "gelu_new",
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "use_cache": True,
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": str(dtype).removeprefix("torch."),
        # a bias-free model (nanoGPT's bias=False) is exported with zero biases, which GPT-2's
        # Conv1D and LayerNorm add exactly: the same model, read back as bias=True
        "danlu_config": {**asdict(cfg), "bias": True},
    }
    if cfg.vocab_size <= 50256:  # not GPT-2's vocabulary: its default <|endoftext|> id does not exist
        hf_config.update(bos_token_id=None, eos_token_id=None)
    hf_config.update({k: v for k, v in (extra_config or {}).items() if v is not None})
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue  # HF re-ties it to wte on load; safetensors refuses shared storage
        if name.endswith(_CONV1D_WEIGHTS):
            tensor = tensor.t()
        state[name] = tensor.detach().to("cpu").contiguous().clone()
        bias = name.removesuffix("weight") + "bias"
        if not cfg.bias and name.endswith(_CONV1D_WEIGHTS + (".ln_1.weight", ".ln_2.weight", "ln_f.weight")):
            state[bias] = torch.zeros(state[name].shape[-1], dtype=state[name].dtype)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        for f in tokenizer_files:
            shutil.copy2(f, tmp / f.name)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old.{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
        raise
    return out_dir
