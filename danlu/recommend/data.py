"""Interactions: reading (a table, or MovieLens 100K's folder), duplicates, splits, the id
index fitted on training, and the splits as the trainer iterates them.

Ids are kept as strings (a user "1" in a CSV and `--users 1` are the same user). The item
universe is the items of the training split: an item or user met only in val/test is
*unseen*; it is counted and reported (metrics.json "data"), never dropped silently: its test
interactions stay in the denominators (an unseen item is a positive no model can rank).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from danlu.data.batches import epoch_order
from danlu.data.frames import Prepared
from danlu.data.tabular import SchemaMethods, TensorData, read_table
from danlu.errors import DanluError, did_you_mean

COLUMNS = ("user", "item", "rating", "timestamp")
GENRES = [  # the 19 flags of u.item, in order
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip
PREDEFINED = ("ua", "ub", "u1", "u2", "u3", "u4", "u5")  # MovieLens 100K's split files
RATING_MODELS = ("mf",)  # models that learn ratings; the others rank items
HISTORY_MODELS = ("dae",)  # trained on whole users (history in, the same items as targets), not pairs


@dataclass
class Table:
    """Interactions with columns user, item (str), rating (float), timestamp (when given),
    the item catalog (id -> title, genres) when the data has one, and predefined splits."""

    frame: pd.DataFrame
    where: str
    items: pd.DataFrame | None = None
    predefined: dict[str, pd.DataFrame] | None = None


# --------------------------------------------------------------------------- reading
def read(cfg: Any) -> Table:
    if cfg.source == "movielens_100k":
        return read_movielens(Path(cfg.path), cfg.split)
    cols = cfg.columns
    want = {
        "user": cols.user if cols else "user",
        "item": cols.item if cols else "item",
        "rating": cols.rating if cols else None,
        "timestamp": cols.timestamp if cols else None,
    }
    df = read_table(cfg.path, cfg.format)
    for key, col in want.items():
        if col is not None and col not in df.columns:
            raise DanluError(
                f"{cfg.path}: data.columns.{key}: column '{col}' not found{did_you_mean(col, df.columns)};"
                f" columns are: {', '.join(df.columns)}"
            )
    out = pd.DataFrame({k: df[c] for k, c in want.items() if c is not None})
    return Table(_clean(out, cfg.path, want), cfg.path)


def _clean(df: pd.DataFrame, where: str, names: dict[str, str | None]) -> pd.DataFrame:
    """Ids as strings, ratings and timestamps as numbers: one line naming the first bad row."""
    for key in ("user", "item"):
        missing = df[key].isna().to_numpy()
        if missing.any():
            row = int(np.argmax(missing))
            raise DanluError(
                f"{where}: column '{names[key]}' is empty at row {row + 1}; every row needs a {key}"
            )
        df[key] = df[key].astype(str)
    for key in ("rating", "timestamp"):
        if key not in df.columns:
            continue
        values = pd.to_numeric(df[key], errors="coerce")
        bad = values.isna().to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            raise DanluError(
                f"{where}: column '{names[key]}' must hold numbers; row {row + 1} has {df[key].iloc[row]!r}"
            )
        df[key] = values.astype(float)
    return df.reset_index(drop=True)


def read_movielens(folder: Path, split: Any) -> Table:
    """u.data (tab-separated user, item, rating, time), u.item (latin-1, '|': title and the 19
    genre flags) and, for split.method predefined, the <name>.base/<name>.test files."""
    if not (folder / "u.data").is_file():
        raise DanluError(f"{folder}: no u.data here; data.path must be MovieLens 100K's folder (ml-100k)")
    names = {k: k for k in COLUMNS}
    frame = _clean(_ml_ratings(folder / "u.data"), str(folder / "u.data"), names)
    items = None
    if (folder / "u.item").is_file():
        raw = pd.read_csv(folder / "u.item", sep="|", header=None, encoding="latin-1", dtype=str)
        items = pd.DataFrame({"item": raw[0].astype(str), "title": raw[1].fillna("")})
        flags = raw.iloc[:, 5:24].astype(int).to_numpy()
        items["genres"] = ["|".join(g for g, f in zip(GENRES, row, strict=True) if f) for row in flags]
    predefined = None
    if split.method == "predefined":
        name = split.predefined or "ua"
        files = [folder / f"{name}.base", folder / f"{name}.test"]
        if name not in PREDEFINED or not all(f.is_file() for f in files):
            have = [
                p for p in PREDEFINED if (folder / f"{p}.base").is_file() and (folder / f"{p}.test").is_file()
            ]
            raise DanluError(
                f"data.split.predefined: '{name}' has no {name}.base/{name}.test in {folder};"
                f" available: {', '.join(have) or 'none'}"
            )
        predefined = {
            part: _clean(_ml_ratings(f), str(f), names)
            for part, f in zip(("train", "test"), files, strict=True)
        }
    return Table(frame, str(folder), items, predefined)


def read_file(cfg: Any, path: Path) -> pd.DataFrame:
    """Interactions of another file, read as the run read its own (`danlu evaluate RUN --data`):
    the run's data.columns; for a MovieLens run, MovieLens' own format (u1.test: tab-separated
    user, item, rating, time) or a table with user, item[, rating, timestamp] columns."""
    if not path.is_file():
        raise DanluError(f"--data {path}: no such file")
    if cfg.source == "movielens_100k":
        with path.open("rb") as f:
            first = f.readline().split(b"\t")
        if len(first) == 4 and all(x.strip().isdigit() for x in first):
            return _clean(_ml_ratings(path), str(path), {k: k for k in COLUMNS})
        df = read_table(path)
        names = {k: (k if k in df.columns else None) for k in COLUMNS}
        if names["user"] is None or names["item"] is None:
            raise DanluError(
                f"--data {path}: needs user and item columns (or MovieLens' tab-separated format);"
                f" columns are: {', '.join(map(str, df.columns))}"
            )
        return _clean(df[[c for c in names.values() if c]].copy(), str(path), names)
    return read(cfg.model_copy(update={"path": str(path)})).frame


def _ml_ratings(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", header=None, names=list(COLUMNS))


# --------------------------------------------------------------------------- duplicates
def dedupe(df: pd.DataFrame, policy: str, where: str) -> tuple[pd.DataFrame, int]:
    """One row per (user, item): the last (by timestamp when there is one, else file order),
    the mean rating (latest timestamp), or an error. Returns the frame and how many rows went."""
    dup = df.duplicated(["user", "item"], keep=False)
    if not dup.any():
        return df, 0
    first = df[dup].iloc[0]
    n = int(df.duplicated(["user", "item"]).sum())
    if policy == "error":
        raise DanluError(
            f"{where}: {n} duplicate (user, item) rows, e.g. user {first['user']} item {first['item']};"
            " set data.duplicates: last or mean"
        )
    if policy == "mean":
        agg = {c: ("mean" if c == "rating" else "max") for c in df.columns if c not in ("user", "item")}
        out = (
            df.groupby(["user", "item"], sort=False, as_index=False).agg(agg)
            if agg
            else df.drop_duplicates(["user", "item"])
        )
        return out.reset_index(drop=True), n
    order = df.sort_values("timestamp", kind="stable") if "timestamp" in df.columns else df
    return order.drop_duplicates(["user", "item"], keep="last").sort_index().reset_index(drop=True), n


# --------------------------------------------------------------------------- splits
def split(table: Table, cfg: Any, seed: int) -> dict[str, pd.DataFrame]:
    """train / val / test frames by data.split.method (see config.SplitConfig)."""
    s = cfg.split
    seed = s.seed if s.seed is not None else seed
    rng = np.random.default_rng(seed)
    df = table.frame
    if s.method == "predefined":
        if table.predefined is None:
            raise DanluError("data.split.method predefined: only data.source movielens_100k has split files")
        train, test = table.predefined["train"], table.predefined["test"]
        if s.val > 0:  # val from each user's training interactions
            train, val = _per_user(train, s.val, rng)
            return {"train": train, "val": val, "test": test}
        return {"train": train, "test": test}
    if s.method in ("leave_last_out", "temporal") and "timestamp" not in df.columns:
        raise DanluError(
            f"data.split.method {s.method} orders interactions by time: set data.columns.timestamp"
        )
    if s.method == "random":
        order = rng.permutation(len(df))
        n_test, n_val = int(round(s.test * len(df))), int(round(s.val * len(df)))
        parts = {
            "test": order[:n_test],
            "val": order[n_test : n_test + n_val],
            "train": order[n_test + n_val :],
        }
        out = {k: df.iloc[np.sort(v)] for k, v in parts.items()}
    elif s.method == "per_user":
        rest, test = _per_user(df, s.test, rng)
        train, val = _per_user(rest, s.val / (1 - s.test), rng) if s.val else (rest, rest.iloc[:0])
        out = {"train": train, "val": val, "test": test}
    elif s.method == "leave_last_out":
        pos = df.sort_values(["timestamp"], kind="stable").groupby("user").cumcount(ascending=False)
        pos, size = pos.reindex(df.index), df.groupby("user")["item"].transform("size")
        keep_train = size - 1 - (1 if s.val else 0) >= 1  # a user keeps at least one training item
        test = (pos == 0) & keep_train
        val = (pos == 1) & keep_train & bool(s.val)
        out = {"train": df[~test & ~val], "val": df[val], "test": df[test]}
    else:  # temporal: one cut in time for everyone
        order = np.argsort(df["timestamp"].to_numpy(), kind="stable")
        n_test, n_val = int(round(s.test * len(df))), int(round(s.val * len(df)))
        cut_val = len(df) - n_test - n_val
        out = {
            "train": df.iloc[np.sort(order[:cut_val])],
            "val": df.iloc[np.sort(order[cut_val : len(df) - n_test])],
            "test": df.iloc[np.sort(order[len(df) - n_test :])],
        }
    return {k: v.reset_index(drop=True) for k, v in out.items() if len(v) or k == "train"}


def _per_user(df: pd.DataFrame, frac: float, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rest, taken): `frac` of each user's interactions at random (floor; at least one stays)."""
    key = rng.random(len(df))
    rank = pd.Series(key, index=df.index).groupby(df["user"]).rank(method="first") - 1
    size = df.groupby("user")["item"].transform("size")
    take = rank < np.minimum(np.floor(frac * size), size - 1)
    return df[~take].reset_index(drop=True), df[take].reset_index(drop=True)


# --------------------------------------------------------------------------- the index
@dataclass
class RecSchema(SchemaMethods):
    """What models are sized from. `train` (the training positives, users x items, CSR) is
    there for closed-form models to fit on when built; it is not saved (to_dict)."""

    n_users: int
    n_items: int
    objective: str  # "rating" (mf) or "ranking"
    rating_mean: float = 0.0
    rating_range: list[float] | None = None
    task: str = "recommendation"
    targets: list[str] = field(default_factory=list)
    classes: list[Any] | None = None
    input_kind: str = "interactions"
    train: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "train"}


@dataclass
class Index:
    """The preprocessor: raw ids <-> rows of the model's tables (fitted on training), and how
    positives are defined. Its state goes to model.json; the training interactions themselves
    go to interactions.npz (save_files) for excluding what a user has seen."""

    users: list[str]
    items: list[str]
    objective: str
    min_rating: float | None = None
    rating_mean: float = 0.0
    rating_range: list[float] | None = None

    def __post_init__(self) -> None:
        self.user_index = {u: i for i, u in enumerate(self.users)}
        self.item_index = {it: i for i, it in enumerate(self.items)}
        self.seen: sparse.csr_matrix | None = None  # every training interaction (any rating)
        self.val_seen: sparse.csr_matrix | None = None  # every validation interaction
        self.positives: sparse.csr_matrix | None = None  # training positives (what models learn from)
        self.catalog: pd.DataFrame | None = None

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def schema(self) -> RecSchema:
        return RecSchema(
            self.n_users,
            self.n_items,
            self.objective,
            self.rating_mean,
            self.rating_range,
            train=self.positives,
        )

    def state(self) -> dict[str, Any]:
        keys = ("users", "items", "objective", "min_rating", "rating_mean", "rating_range")
        return {k: getattr(self, k) for k in keys}

    @classmethod
    def from_state(cls, state: dict[str, Any], run_dir: Path | None = None) -> Index:
        return cls(**state)

    def codes(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Rows of users and items; an unseen id is n_users / n_items (the unknown row)."""
        u = np.array(df["user"].map(self.user_index).fillna(self.n_users), dtype=np.int64)
        i = np.array(df["item"].map(self.item_index).fillna(self.n_items), dtype=np.int64)
        return u, i

    def is_positive(self, df: pd.DataFrame) -> np.ndarray:
        if self.min_rating is None:
            return np.ones(len(df), dtype=bool)
        return (df["rating"] >= self.min_rating).to_numpy()

    def matrix(self, df: pd.DataFrame, positives_only: bool = False) -> sparse.csr_matrix:
        """users x items of the known ids in df (1 where an interaction is)."""
        u, i = self.codes(df)
        keep = (u < self.n_users) & (i < self.n_items)
        if positives_only:
            keep &= self.is_positive(df)
        data = np.ones(int(keep.sum()), dtype=np.float32)
        m = sparse.csr_matrix((data, (u[keep], i[keep])), shape=(self.n_users, self.n_items))
        m.data[:] = 1.0  # duplicates summed by the constructor count once
        return m

    def exclusion(self, split: str) -> sparse.csr_matrix:
        """What a user has seen when ranking for `split`: training interactions for val, and
        validation ones too for test and for new recommendations."""
        if split in ("train", "val") or self.val_seen is None:
            return self.seen  # type: ignore[return-value]
        return (self.seen + self.val_seen).sign().tocsr()  # type: ignore[operator]

    def history_frame(self) -> pd.DataFrame:
        """user, item of every training interaction, from the saved matrix (for reports of a
        run whose training data is not read again)."""
        coo = self.seen.tocoo()  # type: ignore[union-attr]
        users, items = np.asarray(self.users, dtype=object), np.asarray(self.items, dtype=object)
        return pd.DataFrame({"user": users[coo.row], "item": items[coo.col]})

    def save_files(self, folder: Path) -> None:
        """interactions.npz (what each user has seen, and the training positives) and, when the
        data has a catalog, items.csv (id, title, genres) for reports and predictions."""
        import io

        from danlu import fileio

        buf = io.BytesIO()
        parts = {"seen": self.seen, "val": self.val_seen, "pos": self.positives}
        arrays = {}
        for name, m in parts.items():
            coo = (m if m is not None else sparse.csr_matrix((self.n_users, self.n_items))).tocoo()
            arrays[f"{name}_user"], arrays[f"{name}_item"] = coo.row, coo.col
        np.savez_compressed(buf, **arrays)
        fileio.write_bytes(folder / "interactions.npz", buf.getvalue())
        if self.catalog is not None:
            fileio.write_text(folder / "items.csv", self.catalog.to_csv(index=False))

    def load_files(self, folder: Path) -> None:
        path = folder / "interactions.npz"
        if not path.is_file():
            raise DanluError(f"{path}: missing; the run folder is incomplete, retrain the run")
        z = np.load(path)
        shape = (self.n_users, self.n_items)
        ones = lambda r: np.ones(len(r), dtype=np.float32)  # noqa: E731
        m = {
            n: sparse.csr_matrix((ones(z[f"{n}_user"]), (z[f"{n}_user"], z[f"{n}_item"])), shape=shape)
            for n in ("seen", "val", "pos")
        }
        self.seen, self.val_seen, self.positives = m["seen"], m["val"], m["pos"]
        if (folder / "items.csv").is_file():
            self.catalog = pd.read_csv(folder / "items.csv", dtype=str, keep_default_na=False)


def fit_index(
    frames: dict[str, pd.DataFrame], objective: str, cfg: Any, catalog: pd.DataFrame | None
) -> Index:
    train = frames["train"]
    rating = "rating" in train.columns
    min_rating = cfg.implicit.min_rating if cfg.implicit is not None else None
    if min_rating is not None and not rating:
        raise DanluError("data.implicit.min_rating needs ratings: set data.columns.rating")
    if objective == "rating" and min_rating is not None:
        raise DanluError("data.implicit: model type mf learns the ratings themselves; remove data.implicit")
    index = Index(
        users=sorted(train["user"].unique(), key=_natural),
        items=sorted(train["item"].unique(), key=_natural),
        objective=objective,
        min_rating=min_rating,
        rating_mean=float(train["rating"].mean()) if rating else 0.0,
        rating_range=[float(train["rating"].min()), float(train["rating"].max())] if rating else None,
    )
    index.seen = index.matrix(train)
    index.val_seen = index.matrix(frames["val"]) if "val" in frames else None
    index.positives = index.matrix(train, positives_only=True)
    if catalog is not None:
        index.catalog = catalog[catalog["item"].isin(index.item_index)].reset_index(drop=True)
    return index


def _natural(s: str) -> tuple[int, Any]:
    """Numeric ids in numeric order, then the others."""
    return (0, int(s)) if s.isdigit() else (1, s)


# --------------------------------------------------------------------------- what the trainer iterates
@dataclass
class RankingSplit:
    """Users with their held-out positives, for the trainer's validation (and the task's
    metrics): x = users and their training history (multi-hot), y = [user, item, item, ...]
    padded with -1 (an unseen item is n_items: a positive no model can rank)."""

    users: torch.Tensor
    y: torch.Tensor
    history: sparse.csr_matrix

    def __len__(self) -> int:
        return len(self.users)

    def batches(
        self, batch_size: int, *, shuffle: bool, seed: int, rank: int = 0, world: int = 1, device: Any = "cpu"
    ) -> Any:
        split, n = self, len(self) // world

        class Source:
            def __len__(self) -> int:
                return -(-n // batch_size)

            def epoch(self, epoch: int, start: int = 0) -> Any:
                order, _ = epoch_order(
                    len(split), n, shuffle=shuffle, seed=seed, epoch=epoch, rank=rank, world=world
                )
                for b in range(start, len(self)):
                    rows = order[b * batch_size : (b + 1) * batch_size]
                    users = split.users[rows]
                    hist = torch.from_numpy(split.history[users.numpy()].toarray())
                    yield {"users": users.to(device), "history": hist.to(device)}, split.y[rows].to(device)

        return Source()


def ranking_split(index: Index, df: pd.DataFrame) -> tuple[RankingSplit, dict[str, int]]:
    """The held-out positives of df by known user; users unseen in training are counted."""
    pos = df[index.is_positive(df)]
    u, i = index.codes(pos)
    known = u < index.n_users
    order = np.argsort(u[known], kind="stable")
    users, starts = np.unique(u[known][order], return_index=True)
    groups = np.split(i[known][order], starts[1:]) if len(users) else []
    width = max((len(g) for g in groups), default=0)
    y = np.full((len(users), 1 + width), -1, dtype=np.int64)
    y[:, 0] = users
    for r, g in enumerate(groups):
        y[r, 1 : 1 + len(g)] = g
    unseen = {
        "users": int(len(np.unique(u[~known]))),
        "user_interactions": int((~known).sum()),
        "items": int(len(np.unique(i[known & (i >= index.n_items)]))),
        "item_interactions": int((known & (i >= index.n_items)).sum()),
    }
    split = RankingSplit(torch.from_numpy(users), torch.from_numpy(y), index.positives)  # type: ignore[arg-type]
    return split, unseen


def rating_split(index: Index, df: pd.DataFrame) -> TensorData:
    """(user, item) -> rating; unseen ids go to the unknown rows (mean + the known biases)."""
    u, i = index.codes(df)
    inputs = {"users": torch.from_numpy(u), "items": torch.from_numpy(i)[:, None]}
    return TensorData(inputs, torch.tensor(df["rating"].to_numpy(), dtype=torch.float32))


@dataclass
class PairSplit:
    """Training positives with negatives sampled per (seed, epoch), so a resumed run draws the
    same ones: x = users, items [positive, negative...]; y = zeros (the positive is column 0)."""

    users: torch.Tensor
    items: torch.Tensor
    positives: sparse.csr_matrix
    negatives: int
    y: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.y = torch.zeros(len(self.users))
        n_items = self.positives.shape[1]
        coo = self.positives.tocoo()
        self._keys = np.sort(coo.row.astype(np.int64) * n_items + coo.col)  # the user's positives

    def __len__(self) -> int:
        return len(self.users)

    def sample(self, users: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Uniform items that are not the user's positives (redrawn up to 20 times)."""
        n_items = self.positives.shape[1]
        neg = torch.randint(n_items, (len(users), self.negatives), generator=generator)
        for _ in range(20):
            keys = users[:, None].numpy() * n_items + neg.numpy()
            pos = np.searchsorted(self._keys, keys).clip(max=len(self._keys) - 1)
            clash = torch.from_numpy(self._keys[pos] == keys)
            if not clash.any():
                break
            redraw = torch.randint(n_items, (int(clash.sum()),), generator=generator)
            neg[clash] = redraw
        return neg

    def batches(
        self, batch_size: int, *, shuffle: bool, seed: int, rank: int = 0, world: int = 1, device: Any = "cpu"
    ) -> Any:
        split, rows = self, len(self) // world

        class Source:
            def __len__(self) -> int:
                return -(-rows // batch_size)

            def epoch(self, epoch: int, start: int = 0) -> Any:
                order, _ = epoch_order(
                    len(split), rows, shuffle=shuffle, seed=seed, epoch=epoch, rank=rank, world=world
                )
                generator = torch.Generator().manual_seed(seed * 100_003 + epoch + 7_919)
                users = split.users[order]
                neg = split.sample(users, generator)  # the whole epoch's, so batch `start` is the same
                items = torch.cat([split.items[order][:, None], neg], 1)
                for b in range(start, len(self)):
                    s = slice(b * batch_size, (b + 1) * batch_size)
                    yield {"users": users[s].to(device), "items": items[s].to(device)}, split.y[s].to(device)

        return Source()


# --------------------------------------------------------------------------- prepare
@dataclass
class RecPrepared(Prepared):
    """data.Prepared, with what the reports need: the interactions by split, duplicates merged,
    unseen ids."""

    info: dict[str, Any] = field(default_factory=dict)


def prepare(
    cfg: Any, task_type: str, seed: int, model_cfg: Any = None, pretrained: Any = None
) -> RecPrepared:
    model_type = getattr(model_cfg, "type", "")
    objective = "rating" if model_type in RATING_MODELS else "ranking"
    table = read(cfg)
    if objective == "rating" and "rating" not in table.frame.columns:
        raise DanluError(
            f"model.type {model_type} learns ratings, and {table.where} has none: set data.columns.rating,"
            " or use a ranking model (ease, bpr, popularity)"
        )
    table.frame, merged = dedupe(table.frame, cfg.duplicates, table.where)
    if table.predefined is not None:
        for k, f in table.predefined.items():
            table.predefined[k], n = dedupe(f, cfg.duplicates, f"{table.where} ({k} file)")
            merged += n
    frames = split(table, cfg, seed)
    index = fit_index(frames, objective, cfg, table.items)
    splits: dict[str, Any] = {}
    info: dict[str, Any] = {
        "interactions": {k: len(v) for k, v in frames.items()},
        "duplicates_merged": merged,
        "users": index.n_users,
        "items": index.n_items,
        "unseen": {},
    }
    for name, df in frames.items():
        if objective == "rating":
            splits[name] = rating_split(index, df)
            u, i = index.codes(df)
            if name != "train":
                info["unseen"][name] = {
                    "users": int((u >= index.n_users).sum()),
                    "items": int((i >= index.n_items).sum()),
                }
        elif name == "train" and model_type in HISTORY_MODELS:
            splits[name], _ = ranking_split(index, df)
        elif name == "train":
            coo = index.positives.tocoo()  # type: ignore[union-attr]
            negatives = getattr(model_cfg, "negatives", 1)
            splits[name] = PairSplit(
                torch.from_numpy(coo.row.astype(np.int64)),
                torch.from_numpy(coo.col.astype(np.int64)),
                index.positives,
                negatives,
            )
        else:
            splits[name], info["unseen"][name] = ranking_split(index, df)
    if len(splits["train"]) == 0:
        raise DanluError(f"{table.where}: no training interactions (after data.implicit); loosen min_rating")
    return RecPrepared(index.schema(), index, splits, frames, info)  # type: ignore[arg-type]
