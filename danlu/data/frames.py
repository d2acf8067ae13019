"""What every data kind shares: the `Prepared` result of data.build, reading a table
config's files into frames, and splitting them into train/val/test."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from danlu.config import DataConfig
from danlu.data.tabular import (
    BUILTIN_DATASETS,
    Schema,
    TabularPreprocessor,
    TensorData,
    infer_task,
    load_builtin,
    read_table,
)
from danlu.errors import DanluError, did_you_mean


@dataclass
class Prepared:
    schema: Schema
    preprocessor: TabularPreprocessor
    splits: dict[str, TensorData]  # "train", and "val"/"test" when present
    frames: dict[str, pd.DataFrame]  # the raw rows of each split, for predictions output


def _where(cfg: DataConfig, split: str) -> str:
    if cfg.source:
        return f"data.source {cfg.source} ({split} split)"
    if cfg.path:
        return f"{cfg.path} ({split} split)"
    return getattr(cfg, split) or f"{cfg.train} ({split} split)"


def _read_frames(cfg: DataConfig, task_type: str) -> tuple[dict[str, pd.DataFrame], list[str], str, str]:
    if cfg.source:
        df, default_targets = load_builtin(cfg.source, cfg.params)
        frames, where = {"all": df}, f"data.source {cfg.source}"
        builtin_task = BUILTIN_DATASETS[cfg.source]
    else:
        if cfg.params:
            raise DanluError("data.params is for built-in datasets (data.source); remove it for files")
        if cfg.path:
            frames, where = {"all": read_table(cfg.path, cfg.format)}, cfg.path
        else:
            frames = {
                s: read_table(getattr(cfg, s), cfg.format)
                for s in ("train", "val", "test")
                if getattr(cfg, s)
            }
            where = cfg.train or ""
        default_targets, builtin_task = [], None
    first = next(iter(frames.values()))
    if cfg.target is None and not default_targets:
        raise DanluError(f"{where}: data.target is not set; columns are: {', '.join(first.columns)}")
    targets = [cfg.target] if isinstance(cfg.target, str) else list(cfg.target or default_targets)
    for t in targets:
        for split, df in frames.items():
            if t not in df.columns:
                name = where if split in ("all", "train") else getattr(cfg, split)
                raise DanluError(
                    f"{name}: target column '{t}' not found{did_you_mean(t, df.columns)};"
                    f" columns are: {', '.join(df.columns)}"
                )
    if task_type == "auto":
        task_type = builtin_task or ("regression" if len(targets) > 1 else infer_task(first[targets[0]]))
    if task_type == "classification" and len(targets) > 1:
        raise DanluError(f"data.target: classification takes one target column, got {targets}")
    return frames, targets, where, task_type


def _split(
    df: pd.DataFrame, cfg: DataConfig, task_type: str, targets: list[str], seed: int, where: str
) -> dict[str, pd.DataFrame]:
    """Test first, then validation from the rest, like two calls to scikit-learn's
    train_test_split (the same rows for the same seed)."""
    from danlu.data.splitting import train_test_split

    s = cfg.split
    seed = s.seed if s.seed is not None else seed
    stratify_on = df[targets[0]] if task_type == "classification" and s.stratify else None
    index = np.arange(len(df))
    parts: dict[str, np.ndarray] = {}
    n = len(df)
    for name, frac in (("test", s.test), ("val", s.val / (1.0 - s.test) if s.test else s.val)):
        if frac <= 0:
            continue
        rows = int(np.ceil(frac * len(index)))
        if rows == 0 or rows >= len(index):
            raise DanluError(
                f"data.split.{name}: {getattr(s, name)} of {n} rows leaves no rows for"
                f" {'it' if rows == 0 else 'training'}; choose a fraction that does"
            )
        strat = stratify_on.iloc[index].to_numpy() if stratify_on is not None else None
        try:
            index, parts[name] = train_test_split(index, frac, seed, stratify=strat)
        except ValueError as e:
            raise DanluError(
                f"{where}: cannot make a stratified {name} split ({e});"
                " set data.split.stratify: false or use more rows"
            ) from None
    # splits keep the file's row index so errors can name the row in the file
    out = {"train": df.iloc[index]}
    for name in ("val", "test"):
        if name in parts:
            out[name] = df.iloc[parts[name]]
    return out
