"""Run folders written by an earlier danlu (tests/fixtures/runs_v1, see its README.md) still
load, predict, evaluate, resume, generate and export, with the numbers that code recorded.

The fixtures are never regenerated: they are the run-folder compatibility contract. Their data
paths are relative to runs_v1/, so every command runs from a copy of runs_v1."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import cli

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "runs_v1"
EXPECTED = FIXTURES / "expected"
TOL = 1e-5

# run -> (predict input relative to runs_v1, --proba), as tests/fixtures/make_runs.py recorded them
PREDICT = {
    "tabular_classification": ("data/iris.csv", True),
    "tabular_regression": ("data/regression.csv", False),
    "text": ("data/sentences.csv", True),
    "image": ("data/shapes/light", True),
    "multimodal": ("data/multimodal.csv", True),
    "speech_recognition": ("data/tones/high", False),
    "audio_classification": ("data/tones/low", True),
}
FAST = {"tabular_classification"}  # the inner loop (make check) keeps one of each check


def kinds(names: list[str]) -> list[Any]:
    return [pytest.param(k, marks=() if k in FAST else pytest.mark.slow) for k in names]


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """A copy of runs_v1 (commands write into run folders; the fixture stays as it was)."""
    return Path(shutil.copytree(FIXTURES, tmp_path / "runs_v1"))


def ok(*args: Any, cwd: Path) -> str:
    r = cli(*args, cwd=cwd)
    assert r.returncode == 0, f"danlu {' '.join(map(str, args))}: exit {r.returncode}\n{r.stderr}"
    return r.stdout


def assert_same(got: Any, want: Any, where: str = "") -> None:
    """Equal, numbers within TOL (absolute or relative)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (where, got, want)
        for k in want:
            assert_same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, float) or (isinstance(want, int) and isinstance(got, float)):
        assert got == pytest.approx(want, rel=TOL, abs=TOL, nan_ok=True), where
    else:
        assert got == want, (where, got, want)


def assert_same_frame(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns) and len(got) == len(want)
    for col in want.columns:
        if pd.api.types.is_float_dtype(want[col]):
            np.testing.assert_allclose(got[col], want[col], rtol=TOL, atol=TOL, err_msg=col)
        else:  # class labels, transcripts, paths: exactly
            assert got[col].astype(str).tolist() == want[col].astype(str).tolist(), col


@pytest.mark.parametrize("kind", kinds(list(PREDICT)))
def test_predict_gives_the_recorded_predictions(runs: Path, kind: str) -> None:
    source, proba = PREDICT[kind]
    out = ok("predict", kind, "--input", source, *(["--proba"] if proba else []), cwd=runs)
    got = pd.read_csv(io.StringIO(out), keep_default_na=False)
    want = pd.read_csv(EXPECTED / kind / "predictions.csv", keep_default_na=False)
    assert_same_frame(got, want)


@pytest.mark.parametrize("kind", kinds([*PREDICT, "language_model"]))
def test_evaluate_gives_the_recorded_metrics(runs: Path, kind: str) -> None:
    (runs / kind / "metrics.json").unlink()  # evaluate writes it again
    ok("evaluate", kind, cwd=runs)
    got = json.loads((runs / kind / "metrics.json").read_text(encoding="utf-8"))
    want = json.loads((EXPECTED / kind / "metrics.json").read_text(encoding="utf-8"))
    assert want["metrics"], want
    # a newer danlu may state more (speech: the text normalization it scored with); every
    # recorded entry stays the same
    assert set(got) >= set(want), (got, want)
    assert_same({k: got[k] for k in want}, want)


def test_runs_lists_every_old_run_with_its_status(runs: Path) -> None:
    got = {r["run"]: r["status"] for r in json.loads(ok("runs", ".", "--json", cwd=runs))}
    want = {r["run"]: r["status"] for r in json.loads((EXPECTED / "runs.json").read_text(encoding="utf-8"))}
    assert got == want
    assert got["interrupted"] == "incomplete" and set(got.values()) == {"done", "incomplete"}


def epochs_logged(run: Path) -> list[int]:
    return pd.read_csv(run / "metrics.csv")["epoch"].astype(int).tolist()


@pytest.mark.slow
def test_resume_finishes_an_interrupted_old_run(runs: Path) -> None:
    run = runs / "interrupted"
    assert not (run / "model.safetensors").exists() and epochs_logged(run) == [1]
    ok("train", "--resume", "interrupted", "--quiet", cwd=runs)
    assert epochs_logged(run) == [1, 2, 3]
    assert (run / "model.safetensors").is_file() and (run / "metrics.json").is_file()
    # the same config and seed as tabular_classification, trained to the end in one go:
    # resuming the old checkpoint gives the same training curve and the same model
    np.testing.assert_allclose(
        pd.read_csv(run / "metrics.csv").drop(columns="time"),
        pd.read_csv(runs / "tabular_classification" / "metrics.csv").drop(columns="time"),
        rtol=TOL,
        atol=TOL,
    )
    out = ok("predict", "interrupted", "--input", "data/iris.csv", "--proba", cwd=runs)
    want = pd.read_csv(EXPECTED / "tabular_classification" / "predictions.csv")
    assert_same_frame(pd.read_csv(io.StringIO(out)), want)
    statuses = {r["run"]: r["status"] for r in json.loads(ok("runs", ".", "--json", cwd=runs))}
    assert statuses["interrupted"] == "done"


@pytest.mark.slow
def test_resume_extends_a_finished_old_run_by_an_epoch(runs: Path) -> None:
    run = runs / "tabular_classification"
    assert epochs_logged(run) == [1, 2, 3]
    ok("train", "--resume", "tabular_classification", "--set", "train.epochs=4", "--quiet", cwd=runs)
    assert epochs_logged(run) == [1, 2, 3, 4]
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["split"] == "test" and 0.0 <= metrics["metrics"]["accuracy"] <= 1.0


@pytest.mark.slow
def test_old_language_model_generates_the_recorded_text_and_exports(runs: Path) -> None:
    args = ("--prompt", "the cat", "--max-new-tokens", "12", "--no-stream")
    want = (EXPECTED / "language_model" / "generated.txt").read_text(encoding="utf-8")
    assert want.strip(), "the recorded greedy text is empty"
    assert ok("generate", "language_model", *args, cwd=runs) == want

    ok("export", "language_model", "hf", "--format", "hf", cwd=runs)
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from danlu.lm.load import resolve_lm

    ref = GPT2LMHeadModel.from_pretrained(runs / "hf").eval()
    ids = torch.tensor([AutoTokenizer.from_pretrained(runs / "hf").encode("the cat sat")])
    ours = resolve_lm(str(runs / "language_model")).model.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), ref(ids).logits, atol=1e-4, rtol=1e-4)
    # the exported folder is a model reference too, and writes the same greedy text
    assert ok("generate", "hf", *args, cwd=runs) == want
