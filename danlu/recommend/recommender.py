"""A recommendation run as a predictor: `danlu.load(run).recommend(users, k=10)`, and
`danlu predict RUN --users 1,2,3 --k 10` (or `--input users.csv` with a user column).

Recommendations leave out what the user has seen (training and validation interactions,
interactions.npz in the run folder) unless include_seen. A new user, unknown to the model, is
given as the items they liked (`recommend_liked`, `--liked 50,172`): models that rank from a
history (ease, dae; popularity ignores it) score that history; models with a user table (mf,
bpr) have no row for them and say so."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from danlu.errors import DanluError, did_you_mean
from danlu.recommend.data import Index, RecSchema
from danlu.recommend.evaluation import top_k


class Recommender:
    def __init__(self, model: Any, index: Index, where: str = "the run") -> None:
        self.model, self.index, self.where = model.eval(), index, where

    @classmethod
    def load(cls, run_dir: str | Path, trust_code: bool = False) -> Recommender:
        from danlu import config, models
        from danlu.registry import reading_saved
        from danlu.run import RunDir
        from danlu.training.checkpoint import load_weights

        run = RunDir.open(run_dir)
        meta = run.read_model_json()
        with reading_saved(run.model_json, trust_code):
            model_cfg = config.parse_model(meta["model"])
            schema = RecSchema.from_dict(meta["schema"])
            model = models.build(model_cfg, schema, int(meta.get("out_dim", 1)))
        load_weights(model, run.weights)
        index = Index.from_state(meta["preprocessor"])
        index.load_files(run.path)
        return cls(model, index, str(run.path))

    def recommend(self, users: Iterable[Any], k: int = 10, include_seen: bool = False) -> pd.DataFrame:
        """Columns user, rank, item, score (and title, genres when the data has a catalog):
        the k best items per user, best first."""
        users = [str(u) for u in ([users] if isinstance(users, str | int) else users)]
        self._check_k(k)
        rows = []
        for u in users:
            if u not in self.index.user_index:
                raise DanluError(
                    f"user '{u}' is not in the training data of {self.where}"
                    f"{did_you_mean(u, self.index.users)};"
                    f" it knows {self.index.n_users} users (e.g. {', '.join(self.index.users[:3])})"
                )
            rows.append(self.index.user_index[u])
        if not rows:
            raise DanluError("no users to recommend for: give at least one")
        exclude = None if include_seen else self.index.exclusion("test")
        items, scores = top_k(self.model, self.index, np.asarray(rows, dtype=np.int64), k, exclude)
        return self._frame(users, items, scores, k)

    def _check_k(self, k: int) -> None:
        if k < 1 or k > self.index.n_items:
            raise DanluError(f"k: {k} is not between 1 and the {self.index.n_items} items the model ranks")

    def _frame(self, users: list[str], items: np.ndarray, scores: np.ndarray, k: int) -> pd.DataFrame:
        out = pd.DataFrame(
            {
                "user": np.repeat(users, k),
                "rank": np.tile(np.arange(1, k + 1), len(users)),
                "item": np.asarray(self.index.items, dtype=object)[items.ravel()],
                "score": scores.ravel(),
            }
        )
        out = out[np.isfinite(out["score"])].reset_index(drop=True)  # fewer than k unseen items left
        if self.index.catalog is not None:
            out = out.merge(self.index.catalog, on="item", how="left")
        return out

    def recommend_liked(self, liked: Iterable[Any], k: int = 10, include_seen: bool = False) -> pd.DataFrame:
        """The k best items for a new user who liked `liked` (item ids): columns as recommend's,
        user "new"; the liked items themselves are left out unless include_seen."""
        model_type = type(self.model).__name__.lower()
        if not getattr(self.model, "from_history", False):
            raise DanluError(
                f"--liked: a {model_type} model ranks from its table of known users and has no row for a"
                " new one; models that rank a new user from liked items: ease, dae, popularity"
            )
        liked = [str(i) for i in ([liked] if isinstance(liked, str | int) else liked)]
        if not liked:
            raise DanluError("--liked: give at least one item")
        rows = []
        for item in liked:
            if item not in self.index.item_index:
                raise DanluError(
                    f"--liked: item '{item}' is not in the training data of {self.where}"
                    f"{did_you_mean(item, self.index.items)}; it knows {self.index.n_items} items"
                )
            rows.append(self.index.item_index[item])
        self._check_k(k)
        history = np.zeros((1, self.index.n_items), dtype=np.float32)
        history[0, rows] = 1.0
        exclude = None if include_seen else sparse.csr_matrix(history)
        items, scores = top_k(
            self.model, self.index, np.array([self.index.n_users]), k, exclude, history=history
        )
        return self._frame(["new"], items, scores, k)

    def predict(self, rows: Any, k: int = 10, include_seen: bool = False) -> pd.DataFrame:
        """Recommendations for a table's `user` column (or a list of users)."""
        if isinstance(rows, pd.DataFrame):
            if "user" not in rows.columns:
                raise DanluError(f"no 'user' column; columns are: {', '.join(map(str, rows.columns))}")
            rows = rows["user"].tolist()
        return self.recommend(rows, k, include_seen)

    def predict_frame(
        self, path: str | Path, proba: bool = False, k: int = 10, include_seen: bool = False
    ) -> Any:
        from danlu.data.tabular import read_table

        df = read_table(path)
        if "user" not in df.columns:
            raise DanluError(f"{path}: no 'user' column; columns are: {', '.join(df.columns)}")
        return self.recommend(df["user"].tolist(), k, include_seen)


def load(run_dir: str | Path, trust_code: bool = False) -> Recommender:
    """The interactions kind's load hook."""
    return Recommender.load(run_dir, trust_code)
