"""End to end through the `danlu` command in a subprocess: train, evaluate, predict, runs, init."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TrainedRun, _env, cli, make_mixed_frame, run_files, small_config

import danlu

CLASSES = {"bird", "cat", "dog"}


def _ok(result) -> str:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr
    return result.stdout


def _run_folder(stdout: str) -> Path:
    m = re.search(r"^run folder: (.+)$", stdout, re.MULTILINE)
    assert m, stdout
    return Path(m.group(1).strip())


@pytest.fixture(scope="module")
def embedding_run(tmp_path_factory) -> TrainedRun:
    root = tmp_path_factory.mktemp("embedding_run")
    csv = root / "mixed.csv"
    make_mixed_frame().to_csv(csv, index=False)
    body = {"data": {"path": str(csv), "target": "label", "encoding": "embedding"}, "model": {"hidden": [16]}}
    config = root / "emb.yaml"
    config.write_text(yaml.safe_dump(small_config(body, root / "runs")), encoding="utf-8")
    result = cli("train", config, cwd=root)
    _ok(result)
    run = _run_folder(result.stdout)
    return TrainedRun(root, csv, config, run, result, run_files(run))


# --------------------------------------------------------------------------- help, version, init
def test_version(run_cli):
    assert _ok(run_cli("--version")).strip() == f"danlu {danlu.__version__}"


def test_help_lists_commands(run_cli):
    out = _ok(run_cli("--help"))
    for command in ("train", "evaluate", "predict", "runs", "init"):
        assert command in out
    assert "danlu init" in out  # how to start


def test_help_has_examples(run_cli):
    assert "Examples" in _ok(run_cli("--help"))


def test_train_help_has_examples(run_cli):
    out = _ok(run_cli("train", "--help"))
    assert "Examples" in out
    assert "--set" in out and "--resume" in out


@pytest.mark.slow
def test_init_to_stdout_then_train(run_cli, tmp_path):
    text = _ok(run_cli("init"))
    (tmp_path / "my.yaml").write_text(text, encoding="utf-8")
    out = _ok(run_cli("train", "my.yaml", "--set", "train.epochs=2", "--set", "eval.plots=false", "-q"))
    run = tmp_path / _run_folder(out)
    assert run.parent == tmp_path / "runs"
    assert (run / "model.safetensors").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2


@pytest.mark.slow
def test_init_csv_template_with_output_then_train(run_cli, tmp_path):
    make_mixed_frame().to_csv(tmp_path / "data.csv", index=False)  # the template's data.path and target
    r = run_cli("init", "csv", "--output", "my.yaml")
    _ok(r)
    assert (tmp_path / "my.yaml").is_file()
    again = run_cli("init", "csv", "--output", "my.yaml")  # never overwrites
    assert again.returncode == 2 and "already exists" in again.stderr
    out = _ok(run_cli("train", "my.yaml", "--set", "train.epochs=2", "--set", "eval.plots=false", "-q"))
    assert (tmp_path / _run_folder(out) / "model.json").is_file()


# --------------------------------------------------------------------------- train, evaluate, predict, runs
def test_train_mixed_csv_onehot(mixed_run):
    out = mixed_run.result.stdout
    assert "accuracy" in out  # the metrics table
    assert _run_folder(out) == mixed_run.run
    for name in ("config.yaml", "model.json", "model.safetensors", "metrics.csv", "metrics.json"):
        assert (mixed_run.run / name).is_file(), name
    schema = json.loads((mixed_run.run / "model.json").read_text())["schema"]
    assert schema["categorical"] == ["color", "size"]
    assert schema["n_inputs"] == 2 + 3 + 4  # age, income + one-hot color (3) and size (4)
    assert set(schema["classes"]) == CLASSES


def test_train_leaves_no_temp_files(mixed_run):
    assert not [f for f in mixed_run.files if f.endswith(".tmp") or "/." in f or f.startswith(".")]


def test_eval_plots_false_writes_no_plots(mixed_run):
    # mixed_run is trained with eval.plots: false (see conftest.small_config)
    assert not [f for f in mixed_run.files if f.startswith("plots/")], mixed_run.files


@pytest.mark.slow
def test_train_mixed_csv_embedding(embedding_run):
    schema = json.loads((embedding_run.run / "model.json").read_text())["schema"]
    assert schema["categorical"] == ["color", "size"]
    assert schema["n_inputs"] == 2
    assert schema["cat_cardinalities"] == [3 + 1, 4 + 1]  # + the unseen-category row


@pytest.mark.slow
def test_evaluate_run(run_cli, mixed_run):
    out = _ok(run_cli("evaluate", mixed_run.run))
    assert "accuracy" in out and "test split" in out
    metrics = json.loads((mixed_run.run / "metrics.json").read_text())
    assert metrics["split"] == "test"
    assert metrics["rows"] == 18  # 20% of 90
    assert 0.0 <= metrics["metrics"]["accuracy"] <= 1.0
    assert (mixed_run.run / "predictions.csv").is_file()


@pytest.mark.slow
def test_evaluate_other_data(run_cli, mixed_run, tmp_path):
    make_mixed_frame(n=30, seed=7).to_csv(tmp_path / "other.csv", index=False)
    out = _ok(run_cli("evaluate", mixed_run.run, "--data", "other.csv"))
    assert "accuracy" in out
    # beside the run's own test-split results, which stay (tests/test_run_folder.py)
    metrics = json.loads((mixed_run.run / "evaluations" / "other" / "metrics.json").read_text())
    assert metrics["rows"] == 30
    assert "other.csv" in metrics["split"]


def _rows(n: int = 12, seed: int = 5) -> pd.DataFrame:
    rows = make_mixed_frame(n=n, seed=seed).drop(columns=["label"])
    rows.insert(0, "id", [f"r{i}" for i in range(n)])  # an extra column: passed through
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("which", ["mixed_run", "embedding_run"])
def test_predict_proba_to_file(run_cli, tmp_path, request, which):
    run = request.getfixturevalue(which).run
    rows = _rows()
    rows.to_csv(tmp_path / "rows.csv", index=False)
    r = run_cli("predict", run, "--input", "rows.csv", "--output", "out.csv", "--proba")
    _ok(r)
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns[: len(rows.columns)]) == list(rows.columns)
    assert out["id"].tolist() == rows["id"].tolist()
    assert set(out["prediction"]) <= CLASSES
    proba = out[[f"proba_{c}" for c in sorted(CLASSES)]].to_numpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert ((proba >= 0) & (proba <= 1)).all()
    # the predicted class is the most probable one
    assert (np.asarray(sorted(CLASSES))[proba.argmax(axis=1)] == out["prediction"].to_numpy()).all()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["mixed_run", "embedding_run"])
def test_predict_unseen_category_to_stdout(run_cli, tmp_path, request, which):
    run = request.getfixturevalue(which).run
    rows = _rows(n=4)
    rows.loc[0, "color"] = "purple"
    rows.loc[1, "size"] = "XXL"
    rows.to_csv(tmp_path / "rows.csv", index=False)
    out = pd.read_csv(io.StringIO(_ok(run_cli("predict", run, "--input", "rows.csv"))))
    assert len(out) == 4
    assert set(out["prediction"]) <= CLASSES
    assert "proba_cat" not in out.columns  # only with --proba


def test_runs_lists_run(run_cli, mixed_run):
    out = _ok(run_cli("runs", mixed_run.run.parent))
    assert mixed_run.run.name in out
    assert "classification" in out
    assert "done" in out


# --------------------------------------------------------------------------- regression
@pytest.mark.slow
def test_regression_diabetes_predictions_in_target_units(run_cli, write_config, tmp_path):
    from sklearn.datasets import load_diabetes

    write_config({"data": {"source": "diabetes"}, "model": {"hidden": [32]}, "train": {"epochs": 8}})
    run = _run_folder(_ok(run_cli("train", "config.yaml", "-q")))
    meta = json.loads((run / "model.json").read_text())
    assert meta["schema"]["task"] == "regression"

    frame = load_diabetes(as_frame=True).frame
    frame.drop(columns=["target"]).to_csv(tmp_path / "rows.csv", index=False)
    _ok(run_cli("predict", run, "--input", "rows.csv", "--output", "out.csv"))
    pred = pd.read_csv(tmp_path / "out.csv")["prediction"].to_numpy()
    y = frame["target"].to_numpy()
    assert len(pred) == len(y)
    assert abs(pred.mean() - y.mean()) < 0.15 * y.mean(), (pred.mean(), y.mean())
    assert pred.std() > 0.1 * y.std()  # not a constant
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert "rmse" in metrics or "mse" in metrics


@pytest.mark.slow
def test_help_and_a_tabular_run_import_no_heavy_packages(tmp_path: Path) -> None:
    # DESIGN.md: `danlu --help` and a tabular run must not import transformers, optuna,
    # faster-whisper and the like (seconds of start-up each)
    code = (
        "import sys, danlu, danlu.cli\n"
        "danlu.train({'data': {'source': 'iris'}, 'train': {'epochs': 2},"
        f" 'output': {{'dir': {str(tmp_path)!r}}}}}, progress='quiet')\n"
        "heavy = ['transformers', 'optuna', 'faster_whisper', 'ctranslate2', 'peft',"
        " 'soundfile', 'tokenizers', 'jiwer',"
        " 'fastapi', 'uvicorn', 'starlette', 'prometheus_client']\n"
        "loaded = [m for m in heavy if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow
def test_predict_into_a_pipe_closed_early_is_not_a_bug(mixed_run, tmp_path):
    """`danlu predict RUN --input big.csv | head -1`: the reader goes away mid-output; danlu
    stops quietly with SIGPIPE's status instead of reporting an internal error."""
    big = tmp_path / "big.csv"
    pd.concat([make_mixed_frame()] * 60).to_csv(big, index=False)  # far more than a pipe holds
    proc = subprocess.Popen(
        [sys.executable, "-m", "danlu", "predict", mixed_run.run, "--input", big],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.readline().startswith(b"age,")
    proc.stdout.close()  # as `head -1` does
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 141, err.decode()
    assert b"internal error" not in err and b"Traceback" not in err, err.decode()
