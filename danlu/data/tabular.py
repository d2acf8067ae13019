"""Tabular data: reading files and built-in datasets, splitting, and the fitted
preprocessing (imputation, scaling, category encoding, label encoding) that is saved
with the model so that `predict` sees exactly what training saw.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from danlu.errors import DanluError, choose_from, did_you_mean

BUILTIN_DATASETS = {  # name -> task type
    "iris": "classification",
    "wine": "classification",
    "breast_cancer": "classification",
    "digits": "classification",
    "digits_images": "classification",  # the digits as 1x8x8 images (danlu/data/images.py)
    "diabetes": "regression",
    "linnerud": "regression",
    "make_classification": "classification",
    "make_regression": "regression",
    "make_moons": "classification",
    "make_circles": "classification",
    "make_blobs": "classification",
}
FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}


# --------------------------------------------------------------------------- reading
def read_table(path: str | Path, fmt: str = "auto", nrows: int | None = None) -> pd.DataFrame:
    """CSV/TSV/Parquet/JSONL -> DataFrame, with one-line errors for the usual failures.
    nrows: read only the first rows (CSV, TSV, JSONL; Parquet is read whole)."""
    path = Path(path)
    if not path.exists():
        raise DanluError(f"{path}: data file not found")
    if not path.is_file():
        raise DanluError(f"{path}: not a file")
    if fmt == "auto":
        fmt = FORMATS.get(path.suffix.lower(), "")
        if not fmt:
            raise DanluError(
                f"{path}: cannot tell the format from the extension '{path.suffix}';"
                " use .csv, .tsv, .parquet or .jsonl, or set data.format"
            )
    if path.stat().st_size == 0:
        raise DanluError(f"{path}: file is empty")
    try:
        if fmt == "csv":
            df = pd.read_csv(path, nrows=nrows)
        elif fmt == "tsv":
            df = pd.read_csv(path, sep="\t", nrows=nrows)
        elif fmt == "parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_json(path, lines=True, nrows=nrows)
    except pd.errors.EmptyDataError:
        raise DanluError(f"{path}: file is empty") from None
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DanluError(f"{path}: cannot read as {fmt}: {first}") from None
    if len(df) == 0:
        raise DanluError(f"{path}: file has a header but no rows")
    df.columns = [str(c) for c in df.columns]
    return df


def load_builtin(name: str, params: dict[str, Any]) -> tuple[pd.DataFrame, list[str]]:
    """A scikit-learn dataset or generator -> (frame, target columns)."""
    if name not in BUILTIN_DATASETS:
        raise choose_from(name, BUILTIN_DATASETS, "built-in dataset (data.source)")
    from danlu.data import dataset_cache

    x, y, columns, classes = dataset_cache.load(name, params, lambda: _from_sklearn(name, params))
    feature_names = [str(f) for f in columns]
    target_names = list(classes)
    df = pd.DataFrame(x, columns=feature_names)
    if y.ndim == 2:
        names = (
            [str(t) for t in target_names]
            if len(target_names) == y.shape[1]
            else [f"y{i}" for i in range(y.shape[1])]
        )
        for i, t in enumerate(names):
            df[t] = y[:, i]
        return df, names
    if BUILTIN_DATASETS[name] == "classification" and len(target_names) and name != "digits":
        # keep the dataset's own label names ("setosa", "malignant") for reports
        df["target"] = np.asarray(target_names, dtype=object)[y]
    else:
        df["target"] = y
    return df, ["target"]


def _from_sklearn(name: str, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x, y, feature names and target names from scikit-learn's loader or generator."""
    from sklearn import datasets as skd

    fn = getattr(skd, name if name.startswith("make_") else f"load_{name}")
    try:
        if name.startswith("make_"):
            out = fn(**params)
            x, y = np.asarray(out[0]), np.asarray(out[1])
            return x, y, np.asarray([f"x{i}" for i in range(x.shape[1])]), np.asarray([])
        bunch = fn(**params)
    except (TypeError, ValueError) as e:
        raise DanluError(f"data.params for '{name}': {e}") from None
    names = np.asarray([str(f) for f in bunch.feature_names])
    classes = np.asarray(getattr(bunch, "target_names", []))
    return np.asarray(bunch.data), np.asarray(bunch.target), names, classes


# --------------------------------------------------------------------------- schema
class SchemaMethods:
    """What every kind of Schema (tabular, sequence, speech) answers the same way; the
    dataclass below each holds its own fields."""

    classes: list[Any] | None

    @property
    def n_classes(self) -> int:
        return len(self.classes or [])

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.classes or []]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        return cls(**d)


@dataclass
class Schema(SchemaMethods):
    """What the data holds: the model and task are sized from this, never by hand."""

    task: str  # "classification" | "regression"
    features: list[str]
    numeric: list[str]
    categorical: list[str]
    n_inputs: int  # width of the float input `x` (numeric + one-hot)
    cat_cardinalities: list[int]  # embedding encoding: rows per categorical column
    targets: list[str]
    classes: list[Any] | None = None  # classification: label values in index order
    input_kind: str = "tabular"
    image_shape: list[int] | None = None  # images: [channels, height, width]


@dataclass
class TensorData:
    """A split held in memory as tensors: model inputs by name, and the target."""

    inputs: dict[str, torch.Tensor]
    y: torch.Tensor | None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))


# --------------------------------------------------------------------------- preprocessing
@dataclass
class TabularPreprocessor:
    """Fitted on the training split only; its state is saved in model.json."""

    features: list[str]
    numeric: list[str]
    categorical: list[str]
    encoding: str
    missing: str
    fill: dict[str, Any] = field(default_factory=dict)
    center: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    categories: dict[str, list[str]] = field(default_factory=dict)
    task: str = "classification"
    targets: list[str] = field(default_factory=list)
    classes: list[Any] | None = None
    target_center: list[float] = field(default_factory=list)
    target_scale: list[float] = field(default_factory=list)

    # ---- fitting
    @classmethod
    def fit(
        cls,
        df: pd.DataFrame,
        cfg: Any,
        task: str,
        targets: list[str],
        where: str,
        features: list[str],
        categorical: list[str],
    ) -> TabularPreprocessor:
        numeric = [c for c in features if c not in categorical]
        pre = cls(
            features=features,
            numeric=numeric,
            categorical=categorical,
            encoding=cfg.encoding,
            missing=cfg.missing,
            task=task,
            targets=targets,
        )
        num = pre._numeric_block(df, where, fitting=True, impute_numeric=cfg.impute_numeric)
        if cfg.scale == "standard":
            center, scale = num.mean(axis=0), num.std(axis=0)
        elif cfg.scale == "minmax":
            center, scale = num.min(axis=0), num.max(axis=0) - num.min(axis=0)
        else:
            center, scale = np.zeros(num.shape[1]), np.ones(num.shape[1])
        scale = np.where(scale > 1e-12, scale, 1.0)  # constant columns stay finite
        pre.center, pre.scale = center.tolist(), scale.tolist()
        for c in categorical:
            col = _as_category_strings(df[c])
            if col.isna().any() and cfg.missing == "error":
                raise _missing_error(where, c, col.isna().to_numpy(), df.index)
            if cfg.missing == "impute":  # also for columns whose gaps only show up later
                pre.fill[c] = col.mode(dropna=True).iloc[0]
            pre.categories[c] = sorted(col.dropna().unique().tolist())
            _check_categorical(col, c, where)
        pre._fit_target(df, where, cfg.scale_target)
        return pre

    def _fit_target(self, df: pd.DataFrame, where: str, scale_target: bool) -> None:
        y = df[self.targets]
        for t in self.targets:
            if y[t].isna().any():
                rows = _row_numbers(y[t].isna().to_numpy(), df.index)
                raise DanluError(f"{where}: target column '{t}' has missing values (rows {rows})")
        if self.task == "classification":
            values = y[self.targets[0]]
            self.classes = sorted(pd.unique(values).tolist(), key=_sort_key)
            self.classes = [_plain(v) for v in self.classes]
            if len(self.classes) < 2:
                raise DanluError(
                    f"{where}: target column '{self.targets[0]}' has a single class"
                    f" ({self.classes[0]!r}); classification needs at least two"
                )
            return
        arr = _finite_target(_to_float(y, where, self.targets), where, self.targets, df.index)
        if scale_target:
            std = arr.std(axis=0)
            self.target_center = arr.mean(axis=0).tolist()
            self.target_scale = np.where(std > 1e-12, std, 1.0).tolist()
        else:
            self.target_center = [0.0] * arr.shape[1]
            self.target_scale = [1.0] * arr.shape[1]

    # ---- transforming
    def raw(self, df: pd.DataFrame, where: str = "data") -> tuple[np.ndarray, np.ndarray]:
        """Rows -> (numeric columns (n, numeric), unscaled, gaps filled; category codes
        (n, categorical): each value's index in `categories`, -1 for one training never saw).
        What `transform` scales and encodes, and what an ONNX export takes as its inputs."""
        missing = [c for c in self.features if c not in df.columns]
        if missing:
            hint = did_you_mean(missing[0], [str(c) for c in df.columns])
            raise DanluError(
                f"{where}: missing column{'s' if len(missing) > 1 else ''} "
                f"{', '.join(repr(m) for m in missing)}{hint}; the model was trained on: "
                f"{', '.join(self.features)}"
            )
        num = self._numeric_block(df, where)
        codes = np.empty((len(df), len(self.categorical)), dtype=np.int64)
        for j, c in enumerate(self.categorical):
            col = _as_category_strings(df[c])
            if col.isna().any():
                if self.missing == "error":
                    raise _missing_error(where, c, col.isna().to_numpy(), df.index)
                col = col.fillna(self.fill[c])
            codes[:, j] = pd.Index(self.categories[c]).get_indexer(col)  # unseen -> -1
        return num, codes

    def transform(self, df: pd.DataFrame, where: str = "data") -> dict[str, torch.Tensor]:
        num, index = self.raw(df, where)
        num = (num - np.asarray(self.center)) / np.asarray(self.scale)
        blocks = [num]
        codes = []
        for j, c in enumerate(self.categorical):
            if self.encoding == "onehot":
                onehot = np.zeros((len(df), len(self.categories[c])))
                seen = index[:, j] >= 0  # an unseen category is all zeros
                onehot[np.nonzero(seen)[0], index[seen, j]] = 1.0
                blocks.append(onehot)
            else:
                codes.append(index[:, j] + 1)  # 0 is the unseen-category row
        x = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(df), 0))
        inputs = {"x": torch.as_tensor(x, dtype=torch.float32)}
        if codes:
            inputs["x_cat"] = torch.as_tensor(np.stack(codes, axis=1), dtype=torch.long)
        return inputs

    def transform_target(self, df: pd.DataFrame, where: str = "data") -> torch.Tensor:
        missing = [t for t in self.targets if t not in df.columns]
        if missing:
            raise DanluError(f"{where}: missing target column '{missing[0]}'")
        if self.task == "classification":
            col = df[self.targets[0]].map(_plain)
            lookup = {c: i for i, c in enumerate(self.classes or [])}
            index = col.map(lookup)
            if index.isna().any():
                bad = col[index.isna()].iloc[0]
                raise DanluError(
                    f"{where}: target '{self.targets[0]}' holds label {bad!r} that training never"
                    f" saw; known labels: {', '.join(map(str, self.classes or []))}"
                )
            return torch.tensor(index.to_numpy(dtype=np.int64))
        arr = _finite_target(_to_float(df[self.targets], where, self.targets), where, self.targets, df.index)
        arr = (arr - np.asarray(self.target_center)) / np.asarray(self.target_scale)
        return torch.as_tensor(arr, dtype=torch.float32)

    def inverse_target(self, y: np.ndarray) -> np.ndarray:
        return y * np.asarray(self.target_scale) + np.asarray(self.target_center)

    @property
    def n_inputs(self) -> int:
        onehot = sum(len(v) for v in self.categories.values()) if self.encoding == "onehot" else 0
        return len(self.numeric) + onehot

    def schema(self) -> Schema:
        return Schema(
            task=self.task,
            features=self.features,
            numeric=self.numeric,
            categorical=self.categorical,
            n_inputs=self.n_inputs,
            cat_cardinalities=[len(self.categories[c]) + 1 for c in self.categorical]
            if self.encoding == "embedding"
            else [],
            targets=self.targets,
            classes=self.classes,
        )

    def state(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_state(cls, state: dict[str, Any], run_dir: Any = None) -> TabularPreprocessor:
        return cls(**state)

    def _numeric_block(
        self, df: pd.DataFrame, where: str, fitting: bool = False, impute_numeric: str = "mean"
    ) -> np.ndarray:
        out = np.empty((len(df), len(self.numeric)))
        for j, c in enumerate(self.numeric):
            col = _numeric_column(df[c], where, c)
            bad = ~np.isfinite(col)
            if bad.any() and self.missing == "error":
                raise _missing_error(where, c, bad, df.index)
            if fitting and self.missing == "impute":  # every column, for gaps met after training
                good = col[~bad]
                if len(good) == 0:
                    raise DanluError(f"{where}: column '{c}' has no finite values to impute from")
                self.fill[c] = float(np.median(good) if impute_numeric == "median" else good.mean())
            if bad.any():
                col = np.where(bad, self.fill[c], col)
            out[:, j] = col
        return out


# --------------------------------------------------------------------------- helpers
def _numeric_column(s: pd.Series, where: str, name: str) -> np.ndarray:
    if pd.api.types.is_bool_dtype(s):
        return s.astype(float).to_numpy()
    if pd.api.types.is_numeric_dtype(s):
        return s.to_numpy(dtype=float, na_value=np.nan)
    parsed = pd.to_numeric(s, errors="coerce")
    bad = parsed.isna() & s.notna()
    if bad.any():
        i = int(np.argmax(bad.to_numpy()))
        raise DanluError(
            f"{where}: column '{name}' is numeric but row {_row_numbers(bad.to_numpy(), s.index, 1)}"
            f" holds {s.iloc[i]!r};"
            f" fix the value or list '{name}' in data.categorical"
        )
    return parsed.to_numpy(dtype=float, na_value=np.nan)


def _finite_target(arr: np.ndarray, where: str, names: list[str], index: pd.Index) -> np.ndarray:
    # NaN is caught as missing above; an inf (read from 'inf' in a CSV) made the scaled targets
    # NaN and failed only at the first evaluation, after the run folder existed
    for j, t in enumerate(names):
        bad = np.isinf(arr[:, j])
        if bad.any():
            raise DanluError(
                f"{where}: target column '{t}' has infinite values (rows {_row_numbers(bad, index)});"
                " a regression target must be a finite number"
            )
    return arr


def _to_float(df: pd.DataFrame, where: str, names: list[str]) -> np.ndarray:
    return np.stack([_numeric_column(df[n], where, n) for n in names], axis=1)


def _as_category_strings(s: pd.Series) -> pd.Series:
    return s.map(lambda v: None if _is_missing(v) else str(v)).astype(object)


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _plain(v: Any) -> Any:
    """numpy scalars -> Python, so labels survive JSON and compare equal after reload."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _sort_key(v: Any) -> tuple[int, Any]:
    return (0, v) if isinstance(v, int | float) else (1, str(v))


def _row_numbers(mask: np.ndarray, index: pd.Index, limit: int = 5) -> str:
    """Data rows of the file (1-based, header not counted): splits keep the file's index."""
    rows = [int(i) + 1 if isinstance(i, int | np.integer) else i for i in index[mask]]
    shown = ", ".join(map(str, rows[:limit]))
    return shown + (f", ... {len(rows)} in all" if len(rows) > limit else "")


def _missing_error(where: str, column: str, mask: np.ndarray, index: pd.Index) -> DanluError:
    return DanluError(
        f"{where}: column '{column}' has {int(mask.sum())} missing or infinite value(s)"
        f" (rows {_row_numbers(mask, index)}); set data.missing: impute, or clean the file"
    )


def looks_numeric(s: pd.Series) -> bool:
    """Numeric dtype, or text where at least 90% of the values parse as numbers
    (so a stray 'abc' in a number column is reported rather than silently one-hot)."""
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
        return True
    present = s.dropna()
    if len(present) == 0:
        return False
    parsed = pd.to_numeric(present, errors="coerce")
    return parsed.notna().mean() >= 0.9


def infer_task(y: pd.Series) -> str:
    """Text, booleans and small sets of integer values are classes; other numbers regress."""
    if not looks_numeric(y) or pd.api.types.is_bool_dtype(y):
        return "classification"
    values = pd.to_numeric(y, errors="coerce").dropna().to_numpy()
    values = values[np.isfinite(values)]  # an inf is reported by the target check, not warned about here
    integral = np.all(np.equal(np.mod(values, 1), 0))
    n_unique = len(np.unique(values))
    return "classification" if integral and n_unique <= max(2, min(20, len(values) // 5)) else "regression"


# --------------------------------------------------------------------------- column roles
# What a column is, from its values: what `danlu init csv` writes into the config it makes,
# and what training checks before one-hot encoding a column (an identifier or free text
# one-hot encoded is one input per row: the model memorises rows and learns nothing).
ROLES = ("numeric", "categorical", "text", "identifier", "date", "empty")
_DATE_SHAPE = r"(?<!\d)[12]\d{3}(?!\d)|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}"
_ID_NAME = re.compile(r"(^|[^a-z])(id|ids|key|uuid|guid)$|^(id|uuid|guid|index)([^a-z]|$)", re.IGNORECASE)


def column_role(s: pd.Series, name: str = "") -> tuple[str, str]:
    """-> (role, why): one of ROLES and the evidence, for a comment or a warning.

    identifier: unique per row (or nearly: at least 20 distinct values in at least half
    the rows), strings, or integers whose name says id or that count up (1, 2, 3, ...);
    text: as many distinct values, 3 or more words on average; date: 90% of the values
    parse as dates and hold a year or a day/month/year; categorical: the other non-numeric
    columns."""
    present = s.dropna()
    n = len(present)
    if n == 0:
        return "empty", "no values"
    distinct = int(present.astype(str).nunique())
    many = distinct >= 20 and distinct >= 0.5 * n  # too many distinct values to be categories
    if distinct == len(s):
        unique = f"unique per row, {distinct} of {len(s)}"
    else:
        unique = f"{distinct} distinct values in {len(s)} rows"
    if pd.api.types.is_bool_dtype(s):
        return "numeric", "true/false"
    if looks_numeric(s):
        values = pd.to_numeric(present, errors="coerce").dropna().to_numpy(dtype=float)
        if distinct == len(s) >= 20 and np.all(np.mod(values, 1) == 0):
            by_name = bool(_ID_NAME.search(name))
            counts_up = bool(np.all(np.diff(values) > 0)) or values.max() - values.min() == len(values) - 1
            if by_name or counts_up:
                why = "its name says id" if by_name else "consecutive or increasing integers"
                return "identifier", f"{unique}, {why}"
        return "numeric", "numbers"
    strings = present.astype(str)
    sample = strings.iloc[:: max(1, n // 200)]  # enough to tell dates without parsing them all
    # a year, or day/month/year: so that "1-2" (a score) or "18-25" (an age band) is not a date
    datelike = sample.str.contains(_DATE_SHAPE, regex=True)
    if datelike.mean() >= 0.9:
        try:
            parsed = pd.to_datetime(sample[datelike], errors="coerce", format="mixed", utc=True)
        except (ValueError, OverflowError):  # what errors="coerce" still lets through: not dates
            parsed = pd.Series([pd.NaT])
        if parsed.notna().sum() >= 0.9 * len(sample):
            return "date", f"parses as dates (e.g. {sample.iloc[0]!r})"
    if not many:
        return "categorical", f"{distinct} distinct values"
    words = float(strings.str.split().str.len().mean())
    if words >= 3:
        return "text", f"{distinct} distinct values, {words:.1f} words on average"
    return "identifier", unique


def _check_categorical(col: pd.Series, name: str, where: str) -> None:
    """Free text is never one-hot encoded (an error naming the fix); an identifier or a
    column of dates with a value per row is, with a warning, since it may be meant."""
    role, why = column_role(col, name)
    if role == "text":
        raise DanluError(
            f"{where}: column '{name}' looks like free text ({why}), which one-hot encoding would"
            f" make one input per row; read it with a text encoder (data.text: {{column: {name}}},"
            f" or a text input of data.inputs: `danlu init csv FILE` writes such a config)"
            f" or list it in data.exclude"
        )
    distinct = col.dropna().nunique()
    if role == "identifier" or (role == "date" and distinct >= 20 and distinct >= 0.5 * len(col)):
        what = "an identifier" if role == "identifier" else "dates"
        print(
            f"warning: {where}: categorical column '{name}' looks like {what} ({why}); one-hot encoding"
            " it gives one input per value, which the model can only memorise: list it in data.exclude"
            " unless it is meant",
            file=sys.stderr,
            flush=True,
        )
