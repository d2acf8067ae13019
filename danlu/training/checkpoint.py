"""Checkpoints: model weights in safetensors, and beside them everything else needed to
continue exactly (optimizer, scheduler, RNG states, position, early-stopping state).
Loading uses torch.load(weights_only=True): a checkpoint cannot run code.

A checkpoint is one unit: both files are written and flushed to disk in a temporary
folder, which one rename publishes (the layout is danlu.run's). The previous checkpoint is
deleted only after that, so a kill at any moment leaves at least one complete checkpoint
once the first exists; resuming takes the newest that loads.

Disk full. torch.save to a path reports a failed write as an opaque RuntimeError ("unexpected
pos"), and safetensors as a SafetensorError naming only the OS error; both are turned into the
OSError they stand for, so a full disk is one line naming the file (fileio.cannot_write) and
the temporary checkpoint is removed, the previous one kept."""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from danlu.errors import DanluError
from danlu.fileio import atomic_path, cannot_write
from danlu.run import RunDir


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """All weights, or only those the model names in `saved_keys()` (e.g. LoRA adapters and
    a head over a frozen pretrained encoder that is loaded from its own folder)."""
    with atomic_path(path) as tmp:
        _write_weights(model, tmp, metadata)


def _write_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None) -> None:
    from safetensors import SafetensorError

    keys = _saved_keys(model)
    try:
        if keys is None:
            save_model(model, str(path), metadata=metadata)
        else:
            from safetensors.torch import save_file

            state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k in keys}
            save_file(state, str(path), metadata=metadata)
    except SafetensorError as e:  # "I/O error: No space left on device (os error 28)"
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        n = int(code[1])
        raise OSError(n, os.strerror(n), str(path)) from None


def _write_state(state: dict[str, Any], path: Path) -> None:
    # unbuffered: a failed write raises its OSError (ENOSPC) through torch.save, where a path
    # or a buffered file gives only "unexpected pos"
    with open(path, "wb", buffering=0) as f:
        torch.save(state, f)


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
    run: RunDir,
    *,
    optimizer: Any,
    scheduler: Any,
    scaler: Any,
    trainer: dict[str, Any],
) -> Path:
    """checkpoints/last-<step>/ (model.safetensors + state.pt, tagged with the step), written
    whole in a temporary folder, flushed, renamed into place; then the older ones go."""
    tag = f"{trainer['step']}:{trainer['epoch']}:{trainer['batch']}"
    tmp, final = run.checkpoint_folder(trainer["step"])
    shutil.rmtree(tmp, ignore_errors=True)  # a kill's leftover
    state = {
        "tag": tag,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "trainer": trainer,
    }
    writing = tmp
    try:
        tmp.mkdir(parents=True)
        writing = tmp / "model.safetensors"
        _write_weights(model, writing, {"tag": tag})
        writing = tmp / "state.pt"
        _write_state(state, writing)
        for f in (tmp / "model.safetensors", tmp / "state.pt"):
            writing = f
            _fsync(f, file=True)  # on disk before the rename publishes them (a full disk may say so here)
        _fsync(tmp)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoint is untouched
        kept = run.checkpoint_files()
        last = f" (the last complete checkpoint, {kept[0][1].parent.name}, is kept)" if kept else ""
        raise cannot_write(writing, e, last) from None
    if final.exists():  # the same step saved again (a resumed run's end): replace it
        old = final.with_name(f".{final.name}.old.tmp")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync(final.parent)
    run.drop_checkpoints_except(final)
    return final


def _fsync(path: Path, file: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a folder cannot be opened on Windows
        if file:
            raise
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems cannot sync a folder; the files themselves are synced
        if file and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
            raise
    finally:
        os.close(fd)


def load(
    model: nn.Module,
    run: RunDir,
    *,
    optimizer: Any,
    scheduler: Any,
    scaler: Any,
    say: Callable[[str], None] | None = None,
    main: bool = True,
) -> dict[str, Any]:
    """Restore the newest checkpoint that loads; a damaged newer one is set aside (by the
    main process), saying so in one line. Returns the trainer state."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    candidates = run.checkpoint_files()
    if not candidates:
        raise DanluError(f"{run.checkpoints}: no checkpoint to resume from")
    problems = []
    for i, (weights, state_path) in enumerate(candidates):
        try:
            trainer = _load_one(model, weights, state_path, optimizer, scheduler, scaler)
        except DanluError as e:
            problems.append(str(e))
            continue
        if i:
            for _, bad_state in candidates[:i] if main else []:  # kept for inspection, out of the way
                run.set_aside(bad_state)
            say(f"note: {problems[0]}; resuming from the older checkpoint {state_path.parent.name}"
                f" (step {trainer['step']})")
        return trainer
    raise DanluError(f"{problems[0]}; no older complete checkpoint: start a new run")


def _load_one(
    model: nn.Module, weights: Path, state_path: Path, optimizer: Any, scheduler: Any, scaler: Any
) -> dict[str, Any]:
    try:
        state = torch.load(state_path, weights_only=True)
        if not isinstance(state, dict) or not {"tag", "optimizer", "rng", "trainer"} <= set(state):
            raise ValueError("not a danlu checkpoint state")
    except Exception as e:  # torch raises EOFError, RuntimeError, UnpicklingError... for damage
        raise DanluError(f"{state_path}: damaged checkpoint, cannot be read ({_first_line(e)})") from None
    from safetensors import safe_open

    try:
        with safe_open(str(weights), "pt") as f:
            tag = (f.metadata() or {}).get("tag")
    except Exception as e:
        raise DanluError(f"{weights}: damaged checkpoint, cannot be read ({_first_line(e)})") from None
    if tag != state["tag"]:
        raise DanluError(
            f"{weights.parent}: checkpoint is incomplete (weights and state are from different steps)"
        )
    load_weights(model, weights)
    try:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        return dict(state["trainer"])
    except Exception as e:
        raise DanluError(f"{state_path}: damaged checkpoint, cannot be restored ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
