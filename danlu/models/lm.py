"""Builds danlu's GPT from the `model:` section and the tokenizer's vocabulary."""

from __future__ import annotations

from typing import Any

from danlu.models.gpt import GPT, GPTConfig


def gpt(cfg: Any, schema: Any, out_dim: int) -> GPT:
    return GPT(GPTConfig(vocab_size=out_dim, block_size=cfg.block_size, n_layer=cfg.n_layer,
                         n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias,
                         tie_embeddings=cfg.tie_embeddings))
