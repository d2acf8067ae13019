"""The Llama-family decoder in one file, in the spirit of nanoGPT's model.py: Llama (and
SmolLM, which is a Llama), Qwen2, Mistral, Phi-3 and Gemma are one block with a few switches.

    x = x + attn(rms_norm(x))      grouped-query attention with rotary position embeddings
    x = x + mlp(rms_norm(x))       gated MLP: down(act(gate(x)) * up(x)), SwiGLU or GeGLU

What differs between the families is a field of `LlamaConfig` (danlu/lm/llama_hf.py maps
each family's config.json onto it and converts the weights):
  - Qwen2: biases on the query/key/value projections;
  - Mistral (and Phi-3): a sliding window, each token attends to the last `sliding_window`;
  - Phi-3: stored with fused qkv and gate_up matrices (danlu fuses them for every family:
    one matmul instead of three, and two instead of three, per decoding step);
  - Gemma: GeGLU, embeddings scaled by sqrt(n_embd), RMSNorm weights stored as w - 1;
  - Llama 3: rotary frequencies rescaled for long contexts ("llama3" rope scaling).

The forward signature and the KV cache (danlu/lm/model.py `KVCache`, with n_kv_head heads)
are GPT's, so danlu's decoding engine (danlu/lm/generate.py) runs these models as it runs
its GPT: greedy, sampling, beam search, stop strings, streaming. Numerics follow
transformers' implementations (float32 RMSNorm, rotate-half rotary embeddings), so logits
match theirs to float32 rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from danlu.errors import DanluError
from danlu.lm.model import KVCache, append_kv, causal_mask

ACTIVATIONS = ("silu", "gelu_tanh", "gelu")
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass
class LlamaConfig:
    family: str = "llama"  # the config.json model_type it came from
    vocab_size: int = 32000
    block_size: int = 2048  # max_position_embeddings
    n_layer: int = 2
    n_head: int = 4
    n_kv_head: int = 4  # < n_head: grouped-query attention (heads share keys and values)
    n_embd: int = 64
    head_dim: int = 16
    intermediate_size: int = 172
    norm_eps: float = 1e-6
    norm_plus_one: bool = False  # Gemma: the norm scales by (1 + w)
    activation: str = "silu"  # of the gate: silu (SwiGLU), gelu_tanh / gelu (GeGLU)
    embed_scale: bool = False  # Gemma: embeddings times sqrt(n_embd)
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0  # "linear" and "llama3"
    rope_low_freq_factor: float = 1.0  # "llama3"
    rope_high_freq_factor: float = 4.0  # "llama3"
    rope_original_max_positions: int = 8192  # "llama3"
    partial_rotary_factor: float = 1.0  # the fraction of each head's dims that rotate
    sliding_window: int | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise DanluError(f"LlamaConfig.{name} must be a positive integer, got {value!r}")
        if self.n_head % self.n_kv_head:
            raise DanluError(
                f"LlamaConfig.n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})"
            )
        for name, valid in (("activation", ACTIVATIONS), ("rope_type", ROPE_TYPES)):
            if getattr(self, name) not in valid:
                raise DanluError(
                    f"LlamaConfig.{name} must be one of {', '.join(valid)}, got {getattr(self, name)!r}"
                )


# ---------------------------------------------------------------------------- pieces


class RMSNorm(nn.Module):
    """x / rms(x) * w, computed in float32 (as transformers does for every family)."""

    def __init__(self, dim: int, eps: float, plus_one: bool = False) -> None:
        super().__init__()
        self.eps, self.plus_one = eps, plus_one
        self.weight = nn.Parameter(torch.zeros(dim) if plus_one else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.plus_one:  # Gemma multiplies in float32, then casts
            return (h * (1.0 + self.weight.float())).to(x.dtype)
        return self.weight * h.to(x.dtype)


def rope_frequencies(cfg: LlamaConfig) -> torch.Tensor:
    """The inverse frequencies of the rotating dims, with the config's scaling variant."""
    dim = int(cfg.head_dim * cfg.partial_rotary_factor)
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if cfg.rope_type == "linear":  # positions divided by the factor
        return inv_freq / cfg.rope_factor
    if cfg.rope_type == "llama3":
        # Llama 3.1: long wavelengths slowed down by the factor, short ones kept, and a
        # smooth blend between the two bands
        factor, old = cfg.rope_factor, cfg.rope_original_max_positions
        low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old / low, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / high) & ~(wavelen > old / low)
        return torch.where(medium, blended, scaled)
    return inv_freq


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of every head of x (B, heads, T, head_dim)."""
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)


# ---------------------------------------------------------------------------- the block


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.dropout = cfg.dropout
        # queries, keys and values in one matmul: n_head + 2 * n_kv_head heads
        self.qkv = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim, bias=cfg.qkv_bias)
        self.o = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=cfg.o_bias)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        cache: tuple[torch.Tensor, torch.Tensor, int] | None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        H, KV, D = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.qkv(x).split([H * D, KV * D, KV * D], dim=-1)
        q = apply_rope(q.view(B, T, H, D).transpose(1, 2), cos, sin)
        k = apply_rope(k.view(B, T, KV, D).transpose(1, 2), cos, sin)
        v = v.view(B, T, KV, D).transpose(1, 2)
        if cache is not None:  # keys are cached after rotation, as transformers does
            k, v = append_kv(cache, k, v)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
            enable_gqa=KV != H,  # each group of H / KV query heads reads one key/value head
        )
        return self.o(y.transpose(1, 2).reshape(B, T, H * D))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(cfg.n_embd, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=cfg.mlp_bias)
        self.activation = cfg.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        if self.activation == "silu":
            gate = F.silu(gate)
        else:
            gate = F.gelu(gate, approximate="tanh" if self.activation == "gelu_tanh" else "none")
        return self.down(gate * up)


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.n_embd, cfg.norm_eps, cfg.norm_plus_one)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.n_embd, cfg.norm_eps, cfg.norm_plus_one)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        cache: tuple[torch.Tensor, torch.Tensor, int] | None,
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, is_causal, cache)
        return x + self.mlp(self.mlp_norm(x))


def packed_mask(segment_ids: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """(B, 1, T, T) boolean SDPA mask of packed rows: causal, within one segment, and within
    the sliding window."""
    T = segment_ids.shape[1]
    pos = torch.arange(T, device=segment_ids.device)
    allowed = pos[None, :] <= pos[:, None]
    if window is not None:
        allowed = allowed & (pos[None, :] > pos[:, None] - window)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (same & allowed)[:, None]


# ---------------------------------------------------------------------------- the model


class Llama(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.norm_eps, config.norm_plus_one)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        # a plain attribute, not a buffer: casting the model to bfloat16 must not round it
        self.inv_freq = rope_frequencies(config)
        self.gradient_checkpointing = False  # training: recompute each block in the backward pass

    def forward(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        last_only: bool = False,
        segment_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids `idx` (B, T); (B, 1, vocab) with `last_only`.
        The arguments are GPT.forward's (danlu/lm/model.py), plus `segment_ids` (B, T) for
        packed training rows: a token attends only to earlier tokens of its own segment (one
        example each; position_ids then restart at each segment)."""
        B, T = idx.shape
        cfg = self.config
        past = kv_cache.length if kv_cache is not None else 0
        end = past + T
        if end > cfg.block_size:
            raise DanluError(f"sequence of {end} tokens exceeds the model's context of {cfg.block_size}")
        if kv_cache is not None and end > kv_cache.max_len:
            raise DanluError(f"sequence of {end} tokens exceeds the KV cache length {kv_cache.max_len}")

        if position_ids is None:
            if attention_mask is not None:  # left padding: count real tokens only
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)[:, past:end]
            else:
                position_ids = torch.arange(past, end, device=idx.device)[None]
        dtype = self.compute_dtype
        cos, sin = (t.to(dtype) for t in self._rotary(position_ids))
        x = self.embed(idx).to(dtype)
        if cfg.embed_scale:
            x = x * torch.tensor(cfg.n_embd**0.5, dtype=self.embed.weight.dtype).to(dtype)
        if segment_ids is not None:
            mask, is_causal = packed_mask(segment_ids, cfg.sliding_window), False
        else:
            mask, is_causal = causal_mask(attention_mask, past, T, idx.device, cfg.sliding_window)
        for i, block in enumerate(self.layers):
            cache = (kv_cache.k[i], kv_cache.v[i], past) if kv_cache is not None else None
            if self.gradient_checkpointing and self.training and cache is None:
                x = checkpoint(block, x, cos, sin, mask, is_causal, None, use_reentrant=False)
            else:
                x = block(x, cos, sin, mask, is_causal, cache)
        if kv_cache is not None:
            kv_cache.length = end

        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x))

    def _rotary(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (B, 1, T, rotary dims) for positions (B, T), in float32."""
        if self.inv_freq.device != position_ids.device:
            self.inv_freq = self.inv_freq.to(position_ids.device)
        freqs = position_ids[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        return emb.cos(), emb.sin()

    @property
    def compute_dtype(self) -> torch.dtype:
        """The activations' dtype: the norms'. danlu.lm.cpu.cast keeps it float32 beside
        bfloat16 weight matrices."""
        return self.norm.weight.dtype

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
