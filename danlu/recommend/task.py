"""The recommendation tasks: what the one trainer (training/trainer.py) asks for, the loss of a
batch and the metrics of a split.

- RatingTask (mf): batches of (user, item) -> rating; MSE plus the model's L2 penalty;
  validation RMSE/MAE (predictions clipped to the training ratings' range).
- RankingTask (bpr; popularity and ease are evaluated by it too): training batches score
  [positive, negatives...] per user, BPR loss -log sigmoid(s_pos - s_neg) plus the penalty.
  Validation batches score every item for a user (y = [user, held-out items...]): the loss
  is the softmax cross-entropy of the held-out items over all items, and the metrics are
  evaluation.py's, with the user's training items left out (decode_batch keeps enough best
  items that K remain once the seen ones are removed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from danlu.recommend import evaluation

VAL_K = (
    10,
)  # validation during training: full ranking at 10, training items left out (eval.k is the final one)


def _split(out: Any) -> tuple[torch.Tensor, Any]:
    return out if isinstance(out, tuple) else (out, 0.0)


class RatingTask:
    kind = "recommendation"
    loss_name = "mse"
    criterion = None
    out_dim = 1
    metric_names = ["rmse", "mae", "loss"]

    def __init__(self, cfg: Any, schema: Any) -> None:
        self.low, self.high = schema.rating_range or (-np.inf, np.inf)

    def loss(self, output: Any, y: torch.Tensor) -> torch.Tensor:
        scores, penalty = _split(output)
        return F.mse_loss(scores[:, 0], y) + penalty

    def decode(self, output: torch.Tensor) -> np.ndarray:
        return output[:, 0].clamp(self.low, self.high).numpy()

    def target(self, y: torch.Tensor) -> np.ndarray:
        return y.numpy()

    def metrics(self, y_true: np.ndarray, decoded: np.ndarray) -> dict[str, Any]:
        return {"rmse": evaluation.rmse(y_true, decoded), "mae": evaluation.mae(y_true, decoded)}


class RankingTask:
    kind = "recommendation"
    loss_name = "bpr"
    criterion = None
    out_dim = 1

    def __init__(self, cfg: Any, schema: Any, index: Any, ks: tuple[int, ...] = VAL_K) -> None:
        self.index, self.ks = index, list(ks)
        seen = index.exclusion("val")
        self.keep = max(self.ks) + int(np.diff(seen.indptr).max(initial=0))
        self.metric_names = [f"{m}@{k}" for k in self.ks for m in (*evaluation.RANKING, "coverage")] + [
            "loss"
        ]

    def check(self, cfg: Any, splits: dict[str, Any]) -> None:
        """Before the run folder exists (api._check_before_training): eval.k and eval.negatives."""
        evaluation.check(cfg.eval, self.index, splits)

    def loss(self, output: Any, y: torch.Tensor) -> torch.Tensor:
        scores, penalty = _split(output)
        if y.ndim == 2:  # validation: held-out items (-1 pads, n_items: unseen) over all items
            logp = F.log_softmax(scores.float(), dim=1)
            known = (y[:, 1:] >= 0) & (y[:, 1:] < scores.shape[1])
            picked = logp.gather(1, y[:, 1:].clamp(0, scores.shape[1] - 1))
            return -(picked * known).sum() / known.sum().clamp(min=1)
        return -F.logsigmoid(scores[:, :1] - scores[:, 1:]).mean() + penalty

    def decode_batch(self, output: torch.Tensor) -> list[np.ndarray]:
        keep = min(self.keep, output.shape[1])
        return list(torch.topk(output.float(), keep, dim=1).indices.numpy())

    def target(self, y: torch.Tensor) -> list[np.ndarray]:
        return [row[row >= 0] for row in y.numpy()]  # [user, positives...]

    def metrics(self, y_true: Any, decoded: Any) -> dict[str, Any]:
        seen = self.index.exclusion("val")
        ranked, positives = [], []
        for target, best in zip(y_true, decoded, strict=True):
            user = int(target[0])
            best = best[~np.isin(best, seen[user].indices)]
            ranked.append(best[: max(self.ks)])
            positives.append(target[1:])
        out, _ = evaluation.ranking_metrics(ranked, positives, self.ks, self.index.n_items)
        return out
