"""Checkpoints: model weights in safetensors, and beside them everything else needed to
continue exactly (optimizer, scheduler, RNG states, position, early-stopping state).
Loading uses torch.load(weights_only=True): a checkpoint cannot run code."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from danlu.errors import DanluError
from danlu.fileio import atomic_path


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """All weights, or only those the model names in `saved_keys()` (e.g. LoRA adapters and
    a head over a frozen pretrained encoder that is loaded from its own folder)."""
    keys = _saved_keys(model)
    with atomic_path(path) as tmp:
        if keys is None:
            save_model(model, str(tmp), metadata=metadata)
        else:
            from safetensors.torch import save_file

            state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k in keys}
            save_file(state, str(tmp), metadata=metadata)


def _saved_keys(model: nn.Module) -> set[str] | None:
    fn = getattr(model, "saved_keys", None)
    return fn() if callable(fn) else None


def load_weights(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise DanluError(f"{path}: weights file not found")
    keys = _saved_keys(model)
    try:
        if keys is None:
            missing, unexpected = load_model(model, str(path), strict=False)
        else:
            from safetensors.torch import load_file

            missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
            missing = [k for k in missing if k in keys]  # the rest comes from the base model
    except Exception as e:  # safetensors raises several types for corrupt files
        raise DanluError(f"{path}: cannot load weights: {str(e).splitlines()[0]}") from None
    if missing or unexpected:
        raise DanluError(
            f"{path}: weights do not fit the model (missing: {sorted(missing)[:5]},"
            f" unexpected: {sorted(unexpected)[:5]}); was the config changed?"
        )


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": _numpy_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state() -> tuple[Any, ...]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x


def save(
    model: nn.Module,
    directory: Path,
    name: str,
    *,
    optimizer: Any,
    scheduler: Any,
    scaler: Any,
    trainer: dict[str, Any],
) -> None:
    """checkpoints/<name>.safetensors + checkpoints/<name>.state.pt, tagged with the step
    so a pair written by two different saves is detected."""
    tag = f"{trainer['step']}:{trainer['epoch']}:{trainer['batch']}"
    save_weights(model, directory / f"{name}.safetensors", {"tag": tag})
    state = {
        "tag": tag,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "trainer": trainer,
    }
    with atomic_path(directory / f"{name}.state.pt") as tmp:
        torch.save(state, tmp)


def load(
    model: nn.Module, directory: Path, name: str, *, optimizer: Any, scheduler: Any, scaler: Any
) -> dict[str, Any]:
    weights, state_path = directory / f"{name}.safetensors", directory / f"{name}.state.pt"
    if not state_path.is_file():
        raise DanluError(f"{state_path}: no checkpoint to resume from")
    state = torch.load(state_path, weights_only=True)
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        if (f.metadata() or {}).get("tag") != state["tag"]:
            raise DanluError(f"{directory}: checkpoint '{name}' is incomplete (weights and state differ)")
    load_weights(model, weights)
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return state["trainer"]
