"""A GPT-2 style decoder-only Transformer in one file, in the spirit of nanoGPT's model.py.

The parameter names follow Hugging Face's GPT2LMHeadModel (transformer.h.0.attn.c_attn, ...)
so that loading and exporting (danlu/lm/hf.py) is a rename-free copy plus a transpose: HF
stores the c_attn/c_proj/c_fc weights as Conv1D (in, out) matrices while nn.Linear keeps
(out, in).

Inference uses a preallocated key/value cache (`KVCache`): the prompt is run once (prefill)
and every later step feeds one token per sequence. Left-padded batches carry an attention
mask over keys; positions then come from the mask so a padded prompt sees the same positions
as it would alone, as Hugging Face's generate does. What exists only for decoding speed on a
CPU (danlu's C kernels, weight layouts, bfloat16 weights beside float32 activations) lives in
danlu/lm/cpu/ and is installed onto a model by `danlu.lm.cpu.accelerate`; this file is the
reference those are tested against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

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

    # what KVCache reads (danlu/lm/llama.py's config has them as fields: grouped-query attention)
    @property
    def n_kv_head(self) -> int:
        return self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


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
        config: GPTConfig | Any,  # any config with block_size, n_layer, n_kv_head, head_dim
        batch_size: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if max_len > config.block_size:
            raise DanluError(f"KV cache length {max_len} exceeds the model's block_size {config.block_size}")
        shape = (batch_size, config.n_kv_head, max_len, config.head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.max_len = max_len
        self.length = 0  # filled positions; a Python int so no step has to read a tensor

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the rows `index` (beam search picks which hypotheses continue)."""
        self.k = [k.index_select(0, index) for k in self.k]
        self.v = [v.index_select(0, index) for v in self.v]


def append_kv(
    cache: tuple[torch.Tensor, torch.Tensor, int], k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write this step's keys and values into one layer's cache slices (from position `start`)
    and return the keys and values of every position so far."""
    k_cache, v_cache, start = cache
    end = start + k.shape[2]
    k_cache[:, :, start:end] = k
    v_cache[:, :, start:end] = v
    return k_cache[:, :, :end], v_cache[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # query, key and value projections in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
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
            k, v = append_kv(cache, k, v)
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
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
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
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
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
        for i, block in enumerate(self.transformer.h):
            cache = (kv_cache.k[i], kv_cache.v[i], past) if kv_cache is not None else None
            x = block(x, mask, is_causal, cache)
        if kv_cache is not None:
            kv_cache.length = end

        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.transformer.ln_f(x))

    @staticmethod
    def _attention_mask(
        attention_mask: torch.Tensor | None, past: int, T: int, device: torch.device
    ) -> tuple[torch.Tensor | None, bool]:
        return causal_mask(attention_mask, past, T, device)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The activations' dtype: the norms'. danlu.lm.cpu.cast keeps it float32 beside
        bfloat16 weight matrices."""
        return self.transformer.ln_f.weight.dtype

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


def causal_mask(
    attention_mask: torch.Tensor | None, past: int, T: int, device: torch.device, window: int | None = None
) -> tuple[torch.Tensor | None, bool]:
    """(boolean SDPA mask or None, is_causal) for T queries after `past` cached keys.

    attention_mask: (B, past + T) as GPT.forward takes it; window: a query sees only the
    `window` most recent keys, itself included (Mistral's sliding window)."""
    end = past + T
    windowed = window is not None and end > window  # some key lies outside some query's window
    if attention_mask is None and not windowed:
        if T == 1:
            return None, False  # one new token may see every cached key
        if past == 0:
            return None, True  # SDPA's fast causal path
    keys = torch.arange(end, device=device)
    queries = keys[past:, None]
    allowed = keys <= queries  # (T, end), causal with the cache offset
    if windowed:
        allowed = allowed & (keys > queries - window)
    if attention_mask is None:
        return allowed, False
    real = attention_mask[:, :end].bool()[:, None, None, :]  # (B, 1, 1, end)
    if T == 1 and not windowed:
        return real, False
    # a padding query still sees itself: a row with no visible key would make SDPA
    # return NaN, and those outputs are ignored anyway
    return (allowed & real) | (keys == queries), False
