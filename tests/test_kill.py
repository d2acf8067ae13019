"""kill -9 at many moments of a training run, including inside checkpoint writes: every
kill leaves a folder that `danlu train --resume` continues to exactly the numbers of an
uninterrupted run, or, killed before the first checkpoint, one `danlu runs` lists as failed.

The kills come from a wrapper around `python -m danlu` that sends itself SIGKILL at the
N-th os.replace / os.rename onto a given name (every file danlu writes, and every
checkpoint, is published by one of these), before or after the call: no hook in danlu.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import _env

# SIGKILL at the N-th rename onto a file or folder whose name matches PATTERN (fnmatch),
# just before or just after it: KILL_AT=PATTERN:N:before|after
WRAPPER = r"""
import fnmatch, os, signal, sys
pattern, nth, when = os.environ["KILL_AT"].split(":")
seen = 0

def wrap(real):
    def call(src, dst, *args, **kwargs):
        global seen
        hit = fnmatch.fnmatch(os.path.basename(os.fspath(dst)), pattern)
        seen += hit
        if hit and seen == int(nth) and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        out = real(src, dst, *args, **kwargs)
        if hit and seen == int(nth) and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    return call

os.replace, os.rename = wrap(os.replace), wrap(os.rename)
sys.argv[0] = "danlu"
from danlu.cli import main
main()
"""

CONFIG = {
    "name": "k",
    "seed": 5,
    "data": {
        "source": "make_classification",
        "params": {"n_samples": 240, "n_features": 6, "n_informative": 3, "random_state": 2},
        "split": {"val": 0.25, "test": 0.25},
    },
    "model": {"hidden": [16], "dropout": 0.2},
    "train": {"epochs": 6, "batch_size": 32, "device": "cpu", "checkpoint_every": 0, "early_stopping": None},
    "eval": {"plots": False},
}

# one interrupted run, killed again and again: the first call trains, the others resume
CHAIN = [
    "last-*:2:before",  # second checkpoint written in full, not yet renamed into place
    "last-*:1:after",  # a new checkpoint published, the older one not yet deleted
    "config.yaml:1:after",  # a resume killed as it starts
    "metrics.csv:1:before",  # the history file being rewritten
    "last-*:1:before",  # metrics.csv has a row the newest checkpoint lacks
    "last-*:2:after",
    "model.safetensors:1:before",  # training done, the final model not yet written
    "model.json:1:after",  # final model written, its evaluation not
    "report.md:1:before",  # metrics.json and predictions.csv written, the report not
]


def danlu(tmp_path: Path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", WRAPPER, *args] if kill_at else [sys.executable, "-m", "danlu", *args]
    env = _env({"KILL_AT": kill_at} if kill_at else None)
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def history(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", encoding="utf-8") as f:
        return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_kill_9_anywhere_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    (tmp_path / "k.yaml").write_text(yaml.safe_dump({**CONFIG, "output": {"dir": "runs"}}), encoding="utf-8")
    whole = danlu(tmp_path, "train", "k.yaml", "--quiet", "--name", "whole")
    assert whole.returncode == 0, whole.stderr
    (whole_run,) = (tmp_path / "runs").glob("whole-*")

    first, *rest = CHAIN
    r = danlu(tmp_path, "train", "k.yaml", "--quiet", "--name", "cut", kill_at=first)
    assert r.returncode == -signal.SIGKILL, (first, r.stderr)
    (cut,) = (tmp_path / "runs").glob("cut-*")
    for kill_at in rest:
        r = danlu(tmp_path, "train", "--resume", str(cut), "--quiet", kill_at=kill_at)
        assert r.returncode == -signal.SIGKILL, (kill_at, r.stderr)
    r = danlu(tmp_path, "train", "--resume", str(cut), "--quiet")
    assert r.returncode == 0, r.stderr

    assert history(cut) == history(whole_run)
    assert (cut / "metrics.json").read_text() == (whole_run / "metrics.json").read_text()
    assert (cut / "predictions.csv").read_text() == (whole_run / "predictions.csv").read_text()
    assert (cut / "model.safetensors").read_bytes() == (whole_run / "model.safetensors").read_bytes()
    # what the kills left half-written is gone; one checkpoint remains
    assert not list(cut.rglob("*.tmp"))
    assert [p.name for p in (cut / "checkpoints").iterdir() if p.name.startswith(("last", "damaged"))] == [
        "last-24"
    ]


@pytest.mark.slow
def test_kill_9_before_the_first_checkpoint_is_listed_as_failed(tmp_path: Path) -> None:
    (tmp_path / "k.yaml").write_text(yaml.safe_dump({**CONFIG, "output": {"dir": "runs"}}), encoding="utf-8")
    # before config.yaml exists, and with the first checkpoint written but not renamed into place
    for name, kill_at in [("early", "config.yaml:1:before"), ("first", "last-*:1:before")]:
        r = danlu(tmp_path, "train", "k.yaml", "--quiet", "--name", name, kill_at=kill_at)
        assert r.returncode == -signal.SIGKILL, (kill_at, r.stderr)
    listed = danlu(tmp_path, "runs", "runs", "--json")
    assert listed.returncode == 0, listed.stderr
    status = {row["run"].split("-")[0]: row["status"] for row in json.loads(listed.stdout)}
    assert status == {"early": "failed", "first": "failed"}
    (first,) = (tmp_path / "runs").glob("first-*")
    r = danlu(tmp_path, "train", "--resume", str(first))
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and "no checkpoint to resume from" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
