"""data.build: RunConfig.data -> splits as tensors + Schema + fitted preprocessing."""

from __future__ import annotations

from typing import Any

import pandas as pd

from danlu.config import DataConfig
from danlu.data.frames import Prepared, _read_frames, _split, _where
from danlu.data.tabular import (
    Schema,
    TabularPreprocessor,
    TensorData,
    infer_task,
    looks_numeric,
    read_table,
)
from danlu.errors import DanluError, did_you_mean

__all__ = ["Prepared", "Schema", "TensorData", "build", "read_table"]


def build(
    cfg: DataConfig, task_type: str, seed: int, model_cfg: Any = None, pretrained: Any = None
) -> Prepared:
    """Read, split (train/val/test), fit preprocessing on train, and tensorize."""
    if cfg.inputs is not None:  # several named inputs of one row (danlu/data/multimodal.py)
        from danlu.data import multimodal

        return multimodal.build(cfg, task_type, seed, model_cfg)
    if cfg.audio is not None or task_type == "speech_recognition":
        from danlu.registry import import_object  # danlu/speech/ is a domain above the core

        return import_object("danlu.speech.data:build")(cfg, task_type, seed, model_cfg)  # type: ignore[no-any-return]
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
