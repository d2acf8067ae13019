"""How recommendations are measured; the protocol is part of the result.

Ratings: RMSE and MAE over every test rating (an unseen user or item is predicted from what
is known: the mean and the other side's bias).

Ranking, binary relevance, per user then averaged over users with at least one test positive:
- full (the default): every training item ranked for the user, the items the user has seen
  (training and validation interactions) left out unless `eval.exclude_seen` is false.
  P@K = hits/K; R@K = hits/|positives|; HR@K = 1 if any hit; NDCG@K = DCG/IDCG with
  DCG = sum 1/log2(rank+1) over hits, IDCG over min(|positives|, K) hits; MAP@K = sum of P@k
  at each hit k <= K / min(|positives|, K); MRR@K = 1/rank of the first hit (0 past K);
  coverage@K = distinct items in all top-K lists / items. |positives| counts test items
  unseen in training (no model can rank them).
- sampled: each test positive ranked against `negatives` items the user never interacted
  with, drawn with the run's seed (as NCF/SASRec papers report): HR@K, NDCG@K, MRR per
  positive, named sampled_hr@K, sampled_ndcg@K, sampled_mrr.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from danlu.errors import DanluError

RANKING = ("precision", "recall", "hr", "ndcg", "map", "mrr")


# --------------------------------------------------------------------------- the metric functions
def rmse(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(y) - np.asarray(pred)) ** 2)))


def mae(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y) - np.asarray(pred))))


def user_metrics(ranked: Sequence[int], positives: Sequence[int], k: int) -> dict[str, float]:
    """One user's ranking metrics at k: ranked = the recommended items best first,
    positives = the held-out relevant items (any order)."""
    relevant = set(int(p) for p in positives)
    top = [int(i) for i in ranked[:k]]
    hits = np.array([i in relevant for i in top], dtype=float)
    ranks = np.arange(1, len(top) + 1)
    n = len(relevant)
    ideal = min(n, k)
    dcg = float((hits / np.log2(ranks + 1)).sum())
    idcg = float((1.0 / np.log2(np.arange(1, ideal + 1) + 1)).sum())
    precision_at = np.cumsum(hits) / ranks
    first = int(np.argmax(hits)) if hits.any() else -1
    return {
        "precision": float(hits.sum() / k),
        "recall": float(hits.sum() / n) if n else 0.0,
        "hr": float(hits.any()),
        "ndcg": dcg / idcg if idcg else 0.0,
        "map": float((precision_at * hits).sum() / ideal) if ideal else 0.0,
        "mrr": 1.0 / (first + 1) if first >= 0 else 0.0,
    }


def ranking_metrics(
    ranked: Sequence[Sequence[int]], positives: Sequence[Sequence[int]], ks: Sequence[int], n_items: int
) -> tuple[dict[str, float], np.ndarray]:
    """Mean over users of each metric at each k ("ndcg@10"), coverage@k, and the per-user
    NDCG at the first k (for the report's histogram)."""
    out: dict[str, float] = {}
    per_user = np.zeros(len(ranked))
    for k in ks:
        rows = [user_metrics(r, p, k) for r, p in zip(ranked, positives, strict=True)]
        for m in RANKING:
            out[f"{m}@{k}"] = float(np.mean([r[m] for r in rows])) if rows else 0.0
        items = {int(i) for r in ranked for i in r[:k]}
        out[f"coverage@{k}"] = len(items) / n_items if n_items else 0.0
        if k == ks[0]:
            per_user = np.array([r["ndcg"] for r in rows])
    return out, per_user


def sampled_metrics(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """ranks: for each test positive, how many of its sampled negatives score higher (0: first).
    Named sampled_* wherever they appear, never to be read as full-ranking numbers."""
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"sampled_hr@{k}"] = float(hit.mean())
        out[f"sampled_ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2), 0.0).mean())
    out["sampled_mrr"] = float((1.0 / (ranks + 1)).mean())
    return out


# --------------------------------------------------------------------------- scoring a model
def top_k(
    model: Any,
    index: Any,
    users: np.ndarray,
    k: int,
    exclude: Any = None,
    batch_size: int = 1024,
    history: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(items, scores), each (len(users), k): the model's best k items per user (item rows),
    leaving out the items `exclude` (rows of `users`, or of `history` when given, x items,
    sparse) marks. history: the users' interactions (multi-hot), for users the index does not
    hold (a new user's liked items); by default their training positives."""
    model.eval()
    items, scores = [], []
    with torch.no_grad():
        for s in range(0, len(users), batch_size):
            u = users[s : s + batch_size]
            h = index.positives[u].toarray() if history is None else history[s : s + batch_size]
            # contiguous: popularity's scores are one row expanded, and seen items are masked in place
            out = model(users=torch.from_numpy(u), history=torch.from_numpy(h)).float().contiguous()
            if exclude is not None:
                seen = (exclude[u] if history is None else exclude[s : s + batch_size]).tocoo()
                out[
                    torch.from_numpy(seen.row.astype(np.int64)), torch.from_numpy(seen.col.astype(np.int64))
                ] = -torch.inf
            best = torch.topk(out, k, dim=1)
            items.append(best.indices.numpy())
            scores.append(best.values.numpy())
    return np.concatenate(items), np.concatenate(scores)


def evaluate_ranking(
    model: Any,
    index: Any,
    split: Any,
    eval_cfg: Any,
    seed: int,
    name: str = "test",
    ks: Sequence[int] | None = None,
) -> tuple[dict[str, float], np.ndarray]:
    """A RankingSplit (users and their held-out positives, split `name`) under eval_cfg's
    protocol, at eval_cfg.k (or at `ks`: the report's metric@K curves)."""
    ks = list(ks or eval_cfg.k)
    users = split.users.numpy()
    positives = [row[row >= 0] for row in split.y[:, 1:].numpy()]
    if eval_cfg.protocol == "sampled":
        ranks = _sampled_ranks(
            model, index.exclusion(name), index, users, positives, eval_cfg.negatives, seed
        )
        return sampled_metrics(ranks, ks), np.zeros(0)
    exclude = index.exclusion(name) if eval_cfg.exclude_seen else None
    ranked, _ = top_k(model, index, users, max(ks), exclude)
    return ranking_metrics(list(ranked), positives, ks, index.n_items)


CURVE_KS = (1, 2, 3, 5, 10, 15, 20, 30, 50, 100)


def curve_ks(ks: Sequence[int], n_items: int) -> list[int]:
    """The cut-offs of the report's metric@K curves: the usual ones and eval.k, up to the items."""
    return sorted({k for k in (*CURVE_KS, *ks) if k <= n_items})


def check(eval_cfg: Any, index: Any, splits: dict[str, Any]) -> None:
    """What the final evaluation would refuse, refused before the run folder exists: a cut-off
    past the items ranked, or (sampled protocol) a user of an evaluated split with fewer
    untouched items than eval.negatives."""
    if max(eval_cfg.k) > index.n_items:
        raise DanluError(f"eval.k: {max(eval_cfg.k)} is more than the {index.n_items} items the model ranks")
    if eval_cfg.protocol != "sampled":
        return
    for name, split in splits.items():
        if name == "train":
            continue
        seen = index.exclusion(name)
        for u, row in zip(split.users.numpy(), split.y[:, 1:].numpy(), strict=True):
            pos = row[(row >= 0) & (row < index.n_items)]
            if len(pos):
                touched = set(seen[u].indices.tolist()) | set(pos.tolist())
                _check_untouched(index, int(u), touched, eval_cfg.negatives)


def _check_untouched(index: Any, u: int, touched: set[int], negatives: int) -> None:
    if index.n_items - len(touched) < negatives:
        raise DanluError(
            f"eval.negatives: {negatives} per positive, but user {index.users[u]} has only"
            f" {index.n_items - len(touched)} items never interacted with; lower eval.negatives"
        )


def _sampled_ranks(
    model: Any,
    seen: Any,
    index: Any,
    users: np.ndarray,
    positives: list[np.ndarray],
    negatives: int,
    seed: int,
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ranks = []
    model.eval()
    with torch.no_grad():
        for u, pos in zip(users, positives, strict=True):
            pos = pos[pos < index.n_items]
            if not len(pos):
                continue
            touched = set(seen[u].indices.tolist()) | set(pos.tolist())
            if index.n_items - len(touched) < negatives:
                _check_untouched(index, int(u), touched, negatives)
            history = torch.from_numpy(index.positives[[u]].toarray())
            scores = model(users=torch.tensor([u]), history=history)[0].numpy()
            for p in pos:
                neg = rng.integers(index.n_items, size=negatives * 2)
                neg = np.array([n for n in neg if n not in touched][:negatives], dtype=np.int64)
                while len(neg) < negatives:  # nearly every item touched: draw until enough
                    draw = rng.integers(index.n_items, size=negatives)
                    more = np.array([n for n in draw if n not in touched], dtype=np.int64)
                    neg = np.concatenate([neg, more])[:negatives]
                ranks.append(int((scores[neg] > scores[p]).sum()))
    return np.asarray(ranks)


def protocol(cfg: Any, split: str, objective: str) -> dict[str, Any]:
    """What a run's numbers mean, recorded in metrics.json and the report."""
    data = cfg.data
    p: dict[str, Any] = {
        "split": split,
        "split_method": data.split.method
        + (f" {data.split.predefined or 'ua'}" if data.split.method == "predefined" else ""),
        "objective": objective,
    }
    if objective == "ranking":
        p["positives"] = (
            f"rating >= {data.implicit.min_rating}"
            if data.implicit and data.implicit.min_rating is not None
            else "all interactions"
        )
        p["ranking"] = (
            f"sampled: each positive against {cfg.eval.negatives} sampled negatives"
            if cfg.eval.protocol == "sampled"
            else "full: every training item"
        )
        p["exclude_seen"] = cfg.eval.exclude_seen if cfg.eval.protocol == "full" else True
        p["k"] = list(cfg.eval.k)
    return p
