"""data.build: RunConfig.data -> splits as tensors + Schema + fitted preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    looks_numeric,
    read_table,
)
from danlu.errors import DanluError, did_you_mean

__all__ = ["Prepared", "Schema", "TensorData", "build", "read_table"]


@dataclass
class Prepared:
    schema: Schema
    preprocessor: TabularPreprocessor
    splits: dict[str, TensorData]  # "train", and "val"/"test" when present
    frames: dict[str, pd.DataFrame]  # the raw rows of each split, for predictions output


def build(
    cfg: DataConfig, task_type: str, seed: int, model_cfg: Any = None, pretrained: Any = None
) -> Prepared:
    """Read, split (train/val/test), fit preprocessing on train, and tensorize."""
    if cfg.inputs is not None:  # several named inputs of one row (danlu/data/multimodal.py)
        from danlu.data import multimodal

        return multimodal.build(cfg, task_type, seed, model_cfg)
    if cfg.audio is not None or task_type == "speech_recognition":
        from danlu.data import speech

        return speech.build(cfg, task_type, seed, model_cfg)
    if cfg.text is not None or cfg.sequence is not None:
        return _build_sequences(cfg, task_type, seed, model_cfg)
    if task_type == "language_modeling" or (task_type == "auto" and getattr(model_cfg, "type", "") == "gpt"):
        from danlu.data import text

        if model_cfg is None or getattr(model_cfg, "type", "") != "gpt":
            raise DanluError("task.type language_modeling trains a model of type gpt; set model.type: gpt")
        schema, tokenizer, splits = text.build(cfg, model_cfg.block_size, seed, pretrained)
        return Prepared(schema, tokenizer, splits, {})  # type: ignore[arg-type]
    from danlu.data import images

    if images.is_image_data(cfg, model_cfg):
        return images.build(cfg, task_type, seed, model_cfg)
    frames, targets, where, task_type = _read_frames(cfg, task_type)
    full = frames.get("all", frames.get("train"))
    features = _features(cfg, full, targets, where)
    categorical = _categorical(cfg, full, features, where)
    if "all" in frames:
        frames = _split(frames.pop("all"), cfg, task_type, targets, seed, where)
    elif "val" not in frames and cfg.split.val > 0:
        rest = _split(
            frames.pop("train"),
            cfg.model_copy(update={"split": cfg.split.model_copy(update={"test": 0.0})}),
            task_type,
            targets,
            seed,
            where,
        )
        frames.update(rest)
    pre = TabularPreprocessor.fit(
        frames["train"], cfg, task_type, targets, _where(cfg, "train"), features, categorical
    )
    splits = {}
    for name, df in frames.items():
        w = _where(cfg, name)
        splits[name] = TensorData(pre.transform(df, w), pre.transform_target(df, w))
    return Prepared(pre.schema(), pre, splits, frames)


def _build_sequences(cfg: DataConfig, task_type: str, seed: int, model_cfg: Any) -> Prepared:
    """Text or numeric-sequence columns (danlu/data/sequences.py), split like tabular data."""
    from danlu.data import sequences

    if cfg.text is not None and cfg.sequence is not None:
        raise DanluError("data.text and data.sequence: give one input (multimodal data is not this)")
    if cfg.sequence is not None and cfg.path and cfg.path.endswith((".npy", ".npz")):
        df = sequences.read_arrays(cfg)
        target = str(df.columns[1])
        frames, targets, where = {"all": df}, [target], cfg.path
        if task_type == "auto":
            task_type = infer_task(df[target]) if df[target].ndim == 1 else "regression"
    else:
        frames, targets, where, task_type = _read_frames(cfg, task_type)
    if "all" in frames:
        frames = _split(frames.pop("all"), cfg, task_type, targets, seed, where)
    elif "val" not in frames and cfg.split.val > 0:
        no_test = cfg.model_copy(update={"split": cfg.split.model_copy(update={"test": 0.0})})
        frames.update(_split(frames.pop("train"), no_test, task_type, targets, seed, where))
    schema, pre, splits = sequences.build(
        cfg, frames, task_type, targets, model_cfg, lambda split: _where(cfg, split)
    )
    return Prepared(schema, pre, splits, frames)  # type: ignore[arg-type]


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


def _features(cfg: DataConfig, df: pd.DataFrame, targets: list[str], where: str) -> list[str]:
    if cfg.features is None:
        features = [c for c in df.columns if c not in targets]
    else:
        features = list(cfg.features)
        for f in features:
            if f not in df.columns:
                raise DanluError(
                    f"{where}: feature column '{f}' not found{did_you_mean(f, df.columns)};"
                    f" columns are: {', '.join(df.columns)}"
                )
        overlap = [f for f in features if f in targets]
        if overlap:
            raise DanluError(f"data.features: '{overlap[0]}' is also the target")
    for c in cfg.exclude:  # a misspelt name would otherwise leave the column in, silently
        if c not in df.columns:
            raise DanluError(
                f"{where}: data.exclude names column '{c}', which is not in the file"
                f"{did_you_mean(c, df.columns)}; columns are: {', '.join(df.columns)}"
            )
        if c in targets:
            raise DanluError(f"data.exclude: '{c}' is the target; remove it from data.exclude")
    features = [f for f in features if f not in cfg.exclude]
    if not features:
        raise DanluError(f"{where}: no feature columns left besides the target")
    return features


def _categorical(cfg: DataConfig, df: pd.DataFrame, features: list[str], where: str) -> list[str]:
    if cfg.categorical is not None:
        for c in cfg.categorical:
            if c not in features:
                raise DanluError(
                    f"data.categorical: '{c}' is not a feature column{did_you_mean(c, features)}"
                )
        return [f for f in features if f in cfg.categorical]
    return [f for f in features if not looks_numeric(df[f])]


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
