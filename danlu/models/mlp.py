"""The multilayer perceptron for tabular data."""

from __future__ import annotations

import torch
from torch import nn

from danlu.config import MLPConfig
from danlu.data.tabular import Schema
from danlu.registry import ACTIVATIONS


class Block(nn.Module):
    """Linear -> norm -> activation -> dropout, with an optional residual connection."""

    def __init__(self, n_in: int, n_out: int, cfg: MLPConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.norm = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}.get(cfg.norm, lambda _: nn.Identity())(
            n_out
        )
        self.act = ACTIVATIONS.get(cfg.activation)()
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.residual = cfg.residual and n_in == n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.act(self.norm(self.linear(x))))
        return x + h if self.residual else h


class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig, schema: Schema, out_dim: int) -> None:
        super().__init__()
        # categorical columns with `encoding: embedding` get one table each
        self.embeddings = nn.ModuleList(
            nn.Embedding(n, cfg.embedding_dim or min(50, (n + 1) // 2)) for n in schema.cat_cardinalities
        )
        width = schema.n_inputs + sum(e.embedding_dim for e in self.embeddings)
        blocks = []
        for h in cfg.hidden:
            blocks.append(Block(width, h, cfg))
            width = h
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(width, out_dim)
        if cfg.init != "default":
            self._init(cfg.init, cfg.activation)

    def _init(self, scheme: str, activation: str) -> None:
        nonlinearity = activation if activation in ("relu", "leaky_relu", "tanh", "sigmoid") else "relu"
        for m in self.modules():
            if isinstance(m, nn.Linear):
                if scheme == "kaiming":
                    nn.init.kaiming_normal_(m.weight, nonlinearity=nonlinearity)
                elif scheme == "xavier":
                    nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain(nonlinearity))
                else:
                    nn.init.orthogonal_(m.weight, gain=nn.init.calculate_gain(nonlinearity))
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, x_cat: torch.Tensor | None = None) -> torch.Tensor:
        if self.embeddings:
            x = torch.cat([x, *(e(x_cat[:, i]) for i, e in enumerate(self.embeddings))], dim=1)
        return self.head(self.blocks(x))
