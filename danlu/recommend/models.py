"""Recommendation models. Every model answers one call:

    forward(users, items=None, history=None) -> scores

`items` (batch, n) scores those items for each user; without it, every item (batch, n_items).
`history` (batch, n_items) is the user's training interactions, multi-hot: what EASE scores
from. In training mode `mf` and `bpr` return (scores, penalty), the L2 of the rows the batch
used (the regularisation of SGD matrix factorisation), which the task adds to the loss.

popularity and ease are fitted in closed form when built from a schema that carries the
training matrix (schema.train, at training time): their weights are buffers, not parameters,
so the trainer takes no steps, and they are saved to model.safetensors like any weights. Built
from a saved run (no schema.train) they start empty and the weights are loaded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


class Popularity(nn.Module):
    """Score = how many training users interacted with the item: the floor every model is
    reported beside."""

    from_history = True  # ranks a user from their items: a new user can be given as liked items

    def __init__(self, cfg: Any, schema: Any, out_dim: int = 1) -> None:
        super().__init__()
        counts = torch.zeros(schema.n_items)
        if schema.train is not None:
            counts = torch.from_numpy(np.asarray(schema.train.sum(0)).ravel().astype(np.float32))
        self.register_buffer("counts", counts)

    def forward(
        self, users: torch.Tensor, items: torch.Tensor | None = None, history: Any = None
    ) -> torch.Tensor:
        scores = self.counts.expand(len(users), -1)
        return scores if items is None else scores.gather(1, items)


class EASE(nn.Module):
    """Steck (2019): B = I - P diagMat(1 / diag(P)), P = (X'X + lambda I)^-1, so diag(B) = 0;
    a user's scores are history @ B."""

    from_history = True  # ranks a user from their items: a new user can be given as liked items

    def __init__(self, cfg: Any, schema: Any, out_dim: int = 1) -> None:
        super().__init__()
        n = schema.n_items
        weights = torch.zeros(n, n)
        if schema.train is not None:
            x = schema.train
            gram = torch.from_numpy((x.T @ x).toarray().astype(np.float64))
            gram += cfg.lambda_ * torch.eye(n, dtype=torch.float64)
            p = torch.linalg.inv(gram)
            weights = (-p / torch.diag(p)).float()
            weights.fill_diagonal_(0.0)
        self.register_buffer("weights", weights)

    def forward(
        self, users: torch.Tensor, items: torch.Tensor | None = None, history: Any = None
    ) -> torch.Tensor:
        if history is None:
            raise ValueError("EASE scores a user's history: give history")
        scores = history.float() @ self.weights
        return scores if items is None else scores.gather(1, items)


class _Factors(nn.Module):
    """User and item factor tables with one extra row each: the unknown user or item (an id
    unseen in training), left at zero and never trained."""

    def __init__(self, schema: Any, factors: int, init_std: float, reg: float) -> None:
        super().__init__()
        self.n_items, self.reg = schema.n_items, reg
        self.user = nn.Embedding(schema.n_users + 1, factors)
        self.item = nn.Embedding(schema.n_items + 1, factors)
        self.user_bias = nn.Embedding(schema.n_users + 1, 1)
        self.item_bias = nn.Embedding(schema.n_items + 1, 1)
        nn.init.normal_(self.user.weight, std=init_std)
        nn.init.normal_(self.item.weight, std=init_std)
        with torch.no_grad():
            self.user_bias.weight.zero_()
            self.item_bias.weight.zero_()
            self.user.weight[-1].zero_()
            self.item.weight[-1].zero_()

    def items_of(self, items: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        return torch.arange(self.n_items, device=device)[None] if items is None else items

    @staticmethod
    def penalty(reg: float, *rows: torch.Tensor) -> torch.Tensor:
        """reg x the mean over the batch of each row's squared norm (SGD-style L2)."""
        return reg * sum(r.pow(2).sum(-1).mean() for r in rows)  # type: ignore[return-value]


class MF(_Factors):
    """Biased matrix factorisation: rating = mean + b_u + b_i + p_u . q_i."""

    def __init__(self, cfg: Any, schema: Any, out_dim: int = 1) -> None:
        super().__init__(schema, cfg.factors, cfg.init_std, cfg.reg)
        self.bias_reg = cfg.bias_reg
        self.register_buffer("mean", torch.tensor(float(schema.rating_mean)))

    def forward(self, users: torch.Tensor, items: torch.Tensor | None = None, history: Any = None) -> Any:
        items = self.items_of(items, users.device)
        p, q = self.user(users)[:, None], self.item(items)  # (b, 1, f), (b or 1, n, f)
        bu, bi = self.user_bias(users), self.item_bias(items)[..., 0]
        scores = self.mean + bu + bi + (p * q).sum(-1)
        if self.training:
            factors = self.penalty(self.reg, p[:, 0], q.flatten(0, 1))
            return scores, factors + self.penalty(self.bias_reg, bu, bi.flatten()[:, None])
        return scores


class BPR(_Factors):
    """Pairwise ranking: score = b_i + p_u . q_i, trained so positives outscore sampled negatives."""

    def __init__(self, cfg: Any, schema: Any, out_dim: int = 1) -> None:
        super().__init__(schema, cfg.factors, cfg.init_std, cfg.reg)

    def forward(self, users: torch.Tensor, items: torch.Tensor | None = None, history: Any = None) -> Any:
        items = self.items_of(items, users.device)
        p, q = self.user(users)[:, None], self.item(items)
        scores = self.item_bias(items)[..., 0] + (p * q).sum(-1)
        if self.training:
            return scores, self.penalty(self.reg, p[:, 0], q.flatten(0, 1))
        return scores


class DAE(nn.Module):
    """Mult-DAE (Liang et al. 2018): the user's history, L2-normalised and (in training) with
    inputs dropped, through one tanh layer back to a score per item; trained with the softmax
    cross-entropy of the user's items over all items (task.py), so it ranks, like EASE, from the
    history alone (a user is their items, no user table)."""

    from_history = True  # ranks a user from their items: a new user can be given as liked items

    def __init__(self, cfg: Any, schema: Any, out_dim: int = 1) -> None:
        super().__init__()
        self.dropout = cfg.dropout
        self.encode = nn.Linear(schema.n_items, cfg.hidden)
        self.decode = nn.Linear(cfg.hidden, schema.n_items)

    def forward(
        self, users: torch.Tensor, items: torch.Tensor | None = None, history: Any = None
    ) -> torch.Tensor:
        if history is None:
            raise ValueError("DAE scores a user's history: give history")
        x = torch.nn.functional.normalize(history.float(), dim=1)
        x = torch.nn.functional.dropout(x, self.dropout, self.training)
        scores = self.decode(torch.tanh(self.encode(x)))
        return scores if items is None else scores.gather(1, items)
