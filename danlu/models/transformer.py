"""A Transformer encoder with a task head, for text or numeric sequences.

Embeddings (tokens, or a linear map of each step's features) plus learned or sinusoidal
positions, then pre- or post-norm blocks whose attention runs through
F.scaled_dot_product_attention with padded positions masked out as keys, so a row's
output does not depend on how much padding its batch has. Pooling: a learned [CLS]
vector prepended to every row, or the mean over real tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from danlu.config import TransformerConfig
from danlu.errors import DanluError


class SelfAttention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keep, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.pre_norm = cfg.pre_norm
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = SelfAttention(d, cfg.heads, cfg.dropout)
        self.ff = nn.Sequential(nn.Linear(d, cfg.ff), nn.GELU(), nn.Linear(cfg.ff, d))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.drop(self.attn(self.norm1(x), keep))
            return x + self.drop(self.ff(self.norm2(x)))
        x = self.norm1(x + self.drop(self.attn(x, keep)))
        return self.norm2(x + self.drop(self.ff(x)))


def sinusoidal(n: int, d: int) -> torch.Tensor:
    """The fixed sine/cosine position table of "Attention Is All You Need"."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return table


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: TransformerConfig, schema: object, out_dim: int) -> None:
        super().__init__()
        kind = getattr(schema, "input_kind", "tabular")
        if kind not in ("text", "sequence"):
            raise DanluError("model.type transformer reads text (data.text) or sequences (data.sequence)")
        d = cfg.d_model
        if kind == "text":
            self.embed: nn.Module = nn.Embedding(schema.vocab_size, d)  # type: ignore[attr-defined]
        else:
            self.embed = nn.Linear(schema.n_features, d)  # type: ignore[attr-defined]
        self.cls = nn.Parameter(torch.zeros(1, 1, d)) if cfg.pooling == "cls" else None
        n_pos = schema.max_length + (1 if self.cls is not None else 0)  # type: ignore[attr-defined]
        if cfg.positions == "learned":
            self.pos: nn.Embedding | None = nn.Embedding(n_pos, d)
        else:
            self.pos = None
            self.register_buffer("table", sinusoidal(n_pos, d), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(d) if cfg.pre_norm else nn.Identity()
        self.head = nn.Linear(d, out_dim)
        self.apply(_init)
        if self.cls is not None:
            nn.init.normal_(self.cls, std=0.02)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        x: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.embed(input_ids if input_ids is not None else x)
        b, t, _ = h.shape
        mask = attention_mask.bool() if attention_mask is not None else torch.ones(b, t, dtype=torch.bool)
        mask = mask.to(h.device)
        if self.cls is not None:
            h = torch.cat([self.cls.expand(b, 1, -1), h], dim=1)
            mask = torch.cat([mask.new_ones(b, 1), mask], dim=1)
            t += 1
        h = h + (self.pos.weight[:t] if self.pos is not None else self.table[:t])
        h = self.drop(h)
        # every query may attend to the row's real tokens only
        keep = mask[:, None, None, :] if attention_mask is not None else None
        for block in self.blocks:
            h = block(h, keep)
        h = self.norm(h)
        if self.cls is not None:
            pooled = h[:, 0]
        else:
            m = mask[..., None].to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return self.head(pooled)


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear | nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)
    if isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)
