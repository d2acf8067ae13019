"""A full disk while a checkpoint is written: one line naming the file and saying to free
space (exit 2), no temporary left, the previous checkpoint intact (`--resume` continues from
it). The writers are made to fail as a full disk makes them: torch.save into the unbuffered
file raises OSError(ENOSPC) after part of the file, safetensors raises its SafetensorError
naming os error 28. Where a tiny tmpfs can be mounted (root), the real writers are filled up."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from conftest import assert_user_error
from safetensors import SafetensorError

from danlu.training import checkpoint

CONFIG = {
    "name": "full",
    "seed": 1,
    "data": {"source": "make_classification", "params": {"n_samples": 200, "random_state": 0}},
    "model": {"hidden": [8]},
    "train": {"epochs": 4, "batch_size": 32, "device": "cpu", "checkpoint_every": 0, "early_stopping": None},
    "eval": {"plots": False},
}


def write_config(tmp_path: Path) -> Path:
    cfg = {**CONFIG, "output": {"dir": str(tmp_path / "runs")}}
    path = tmp_path / "full.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def fail_on_call(n: int, real, fail):
    calls = []

    def writer(*args, **kwargs):
        calls.append(args)
        if len(calls) == n:
            return fail(*args, **kwargs)
        return real(*args, **kwargs)

    return writer


def test_disk_full_in_checkpoint_state_is_one_line_and_keeps_the_last_checkpoint(
    tmp_path, invoke_cli, monkeypatch
):
    def full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04" + b"\0" * 100)  # part of the file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", fail_on_call(2, torch.save, full))  # the second checkpoint
    config = write_config(tmp_path)
    result = invoke_cli("train", config, "--quiet")
    (run,) = (tmp_path / "runs").iterdir()
    line = assert_user_error(result, "state.pt: cannot write: No space left on device", "free some space")
    kept, best = sorted((run / "checkpoints").iterdir(), key=lambda p: p.suffix)  # no temporary left
    assert best.name == "best.safetensors" and kept.name.startswith("last-")
    assert line.startswith(f"error: {run / 'checkpoints'}/.last-")
    assert f"checkpoint, {kept.name}, is kept" in line
    assert checkpoint.torch.load(kept / "state.pt", weights_only=True)["trainer"]["epoch"] >= 1
    monkeypatch.undo()
    resumed = invoke_cli("train", "--resume", run)
    assert resumed.exit_code == 0, resumed.stderr
    assert (run / "model.safetensors").is_file()


def fill_disk_on(monkeypatch, full_for) -> None:
    """safetensors' save_model writes a little, then fails as on a full disk, for the files
    `full_for(filename)` picks; the others are written as usual."""

    def full(model, filename, *args, **kwargs):
        if not full_for(filename):
            return real(model, filename, *args, **kwargs)
        Path(filename).write_bytes(b"\0" * 10)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    real = checkpoint.save_model
    monkeypatch.setattr(checkpoint, "save_model", full)


def test_disk_full_in_checkpoint_weights_is_one_line(tmp_path, invoke_cli, monkeypatch):
    fill_disk_on(monkeypatch, lambda filename: ".last-" in filename)  # not best.safetensors
    result = invoke_cli("train", write_config(tmp_path), "--quiet")
    (run,) = (tmp_path / "runs").iterdir()
    line = assert_user_error(result, "model.safetensors: cannot write: No space left on device", "free some")
    assert ".last-" in line and "kept" not in line  # the first checkpoint: none to keep
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["best.safetensors"]


def test_disk_full_in_the_best_weights_is_one_line(tmp_path, invoke_cli, monkeypatch):
    """best.safetensors (like the run's model.safetensors) goes through fileio.atomic_path:
    its temporary is removed."""
    fill_disk_on(monkeypatch, lambda filename: ".last-" not in filename)
    result = invoke_cli("train", write_config(tmp_path), "--quiet")
    (run,) = (tmp_path / "runs").iterdir()
    assert_user_error(result, "best.safetensors: cannot write: No space left on device", "free some space")
    assert not list(run.rglob(".*.tmp"))


@pytest.fixture
def full_tmpfs(tmp_path):
    """A 1 MiB tmpfs filled to the last byte, where mounting is allowed (root)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "full"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with open(where / "filler", "wb", buffering=0) as f, pytest.raises(OSError):
            while True:
                f.write(b"\0" * 4096)
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_the_real_writers_report_a_full_disk_as_enospc(full_tmpfs):
    with pytest.raises(OSError) as state:
        checkpoint._write_state({"x": torch.zeros(10_000)}, full_tmpfs / "state.pt")
    assert state.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as weights:
        checkpoint._write_weights(torch.nn.Linear(100, 100), full_tmpfs / "w.safetensors", {"tag": "1"})
    assert weights.value.errno == errno.ENOSPC and weights.value.filename == str(full_tmpfs / "w.safetensors")
