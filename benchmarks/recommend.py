"""Recommendation on MovieLens 100K's ua split: danlu against Surprise and implicit, in one run.

- Ratings (RMSE/MAE over all 9,430 ua.test ratings): danlu `mf` (examples/movielens_mf.yaml)
  against Surprise's SVD (its defaults: 100 factors, 20 epochs, lr 0.005, reg 0.02), and
  SVD++ with --svdpp (minutes).
- Ranking (every ua.base interaction a positive, full ranking of the training items, the
  user's training items left out): danlu `ease`, `dae` against implicit's
  BPR and ALS fitted on the same training matrix; implicit's scores (user factors . item
  factors) are measured by danlu's own evaluation (recommend/evaluation.py), so the protocol
  and the metric code are the same for all.

Every contender runs with one thread (torch.set_num_threads(1), implicit num_threads=1); wall
times are whole fits (danlu's include reading the data and its final evaluation).

    pip install -e '.[bench]'     # scikit-surprise, implicit
    python benchmarks/recommend.py [--svdpp]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import cpu_model  # benchmarks/machine.py (this folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]



def danlu_run(example: str, out: str, **over: Any) -> tuple[dict[str, float], float]:
    import danlu

    start = time.perf_counter()
    run = danlu.train(ROOT / "examples" / example, {"output.dir": out, **over}, progress="quiet")
    return run.metrics["metrics"], time.perf_counter() - start


class FactorScores(torch.nn.Module):
    """An implicit model's user . item factors, answering danlu's model call."""

    def __init__(self, users: np.ndarray, items: np.ndarray) -> None:
        super().__init__()
        self.users, self.items = torch.from_numpy(users), torch.from_numpy(items)

    def forward(self, users: torch.Tensor, items: Any = None, history: Any = None) -> torch.Tensor:
        return self.users[users] @ self.items.T


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--svdpp", action="store_true", help="also Surprise's SVD++ (minutes)")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores visible; one thread per contender)")
    rows: list[tuple[str, str, float]] = []

    from danlu import config
    from danlu.recommend import evaluation
    from danlu.recommend.data import prepare, ranking_split

    cfg = config.load(ROOT / "examples" / "movielens_ease.yaml")
    prepared = prepare(cfg.data, "recommendation", cfg.seed, cfg.model)
    index, frames = prepared.preprocessor, prepared.frames
    test, _ = ranking_split(index, frames["test"])

    with tempfile.TemporaryDirectory() as out:
        # ---- ratings
        m, t = danlu_run("movielens_mf.yaml", out)
        rows.append(("danlu mf", f"RMSE {m['rmse']:.4f}, MAE {m['mae']:.4f}", t))
        from surprise import SVD, Dataset, Reader, SVDpp, accuracy

        reader = Reader(rating_scale=(1, 5))
        train = Dataset.load_from_df(
            frames["train"][["user", "item", "rating"]], reader
        ).build_full_trainset()
        testset = list(frames["test"][["user", "item", "rating"]].itertuples(index=False, name=None))
        for name, algo in [("Surprise SVD", SVD(random_state=0))] + (
            [("Surprise SVD++", SVDpp(random_state=0))] if args.svdpp else []
        ):
            start = time.perf_counter()
            algo.fit(train)
            pred = algo.test(testset)
            t = time.perf_counter() - start
            rmse, mae = accuracy.rmse(pred, verbose=False), accuracy.mae(pred, verbose=False)
            rows.append((name, f"RMSE {rmse:.4f}, MAE {mae:.4f}", t))

        # ---- ranking
        for name, example in [("danlu ease", "movielens_ease.yaml"), ("danlu dae", "movielens_dae.yaml")]:
            m, t = danlu_run(example, out)
            rows.append((name, f"NDCG@10 {m['ndcg@10']:.4f}, P@10 {m['precision@10']:.4f}", t))
        from implicit.cpu.als import AlternatingLeastSquares
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        user_items = index.positives.tocsr().astype(np.float32)
        contenders = [
            (
                "implicit BPR (64 factors, 100 iterations)",
                BayesianPersonalizedRanking(factors=64, iterations=100, num_threads=1, random_state=0),
            ),
            (
                "implicit ALS (64 factors, 15 iterations)",
                AlternatingLeastSquares(factors=64, iterations=15, num_threads=1, random_state=0),
            ),
        ]
        for name, model in contenders:
            start = time.perf_counter()
            model.fit(user_items, show_progress=False)
            scores = FactorScores(np.asarray(model.user_factors), np.asarray(model.item_factors))
            m, _ = evaluation.evaluate_ranking(scores, index, test, cfg.eval, cfg.seed, "test")
            t = time.perf_counter() - start
            rows.append((name, f"NDCG@10 {m['ndcg@10']:.4f}, P@10 {m['precision@10']:.4f}", t))

    print(f"\n{'contender':<44} {'metric on ua test':<32} wall s")
    for name, metric, t in rows:
        print(f"{name:<44} {metric:<32} {t:6.1f}")


if __name__ == "__main__":
    main()
