"""Bad input through the CLI: exit code 2, one `error:` line naming what is at fault,
no traceback, and nothing half-written (no run folder, no output file).

Message contracts run the CLI in this process (invoke_cli); a few run `python -m danlu` as a
real process (run_cli): the exit code of a missing file, --debug's traceback, a training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import assert_user_error, make_mixed_frame


def _mixed(tmp_path: Path, frame: pd.DataFrame | None = None, name: str = "mixed.csv") -> Path:
    path = tmp_path / name
    (make_mixed_frame() if frame is None else frame).to_csv(path, index=False)
    return path


def _csv_cfg(write_config, path: Path, **data) -> Path:
    return write_config({"data": {"path": str(path), "target": "label", **data}})


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


# --------------------------------------------------------------------------- the config file
def test_missing_config_file(run_cli, runs_dir):
    r = run_cli("train", "nope.yaml")
    assert_user_error(r, "nope.yaml", "not found", runs_dir=runs_dir)


def test_unreadable_config_invalid_utf8(invoke_cli, tmp_path, runs_dir):
    (tmp_path / "bad.yaml").write_bytes(b"name: caf\xe9\xff\ndata: {source: iris}\n")
    r = invoke_cli("train", "bad.yaml")
    assert_user_error(r, "bad.yaml", runs_dir=runs_dir)


def test_yaml_syntax_error_names_line(invoke_cli, write_config, runs_dir):
    write_config("name: a\ndata:\n  source: iris\n model: x\n", name="syntax.yaml")
    r = invoke_cli("train", "syntax.yaml")
    assert_user_error(r, "syntax.yaml", "line 4", runs_dir=runs_dir)


def test_unknown_key_did_you_mean(invoke_cli, write_config, runs_dir):
    write_config({"data": {"source": "iris"}, "modle": {"hidden": [8]}})
    r = invoke_cli("train", "config.yaml")
    assert_user_error(r, "config.yaml", "modle", "did you mean 'model'", runs_dir=runs_dir)


def test_wrong_type(invoke_cli, write_config, runs_dir):
    write_config({"data": {"source": "iris"}, "train": {"lr": "abc"}})
    r = invoke_cli("train", "config.yaml")
    assert_user_error(r, "config.yaml", "train.lr", "abc", runs_dir=runs_dir)


@pytest.mark.parametrize(
    "section, value, valid",
    [
        ({"model": {"type": "mpl"}}, "mpl", ["mlp"]),
        ({"task": {"loss": "crossentropy"}}, "crossentropy", ["cross_entropy", "mse", "huber"]),
        ({"train": {"optimizer": "adamm"}}, "adamm", ["adam", "sgd", "adamw"]),
    ],
    ids=["model", "loss", "optimizer"],
)
def test_unknown_name_lists_valid(invoke_cli, write_config, runs_dir, section, value, valid):
    write_config({"data": {"source": "iris"}, **section})
    r = invoke_cli("train", "config.yaml")
    assert_user_error(r, f"'{value}'", *valid, runs_dir=runs_dir)


def test_set_unknown_key_did_you_mean(invoke_cli, write_config, runs_dir):
    write_config({"data": {"source": "iris"}})
    r = invoke_cli("train", "config.yaml", "--set", "train.epohcs=2")
    assert_user_error(r, "train.epohcs", "did you mean 'epochs'", runs_dir=runs_dir)


def test_debug_shows_traceback(run_cli, write_config, runs_dir):
    write_config({"data": {"source": "iris"}, "modle": {}})
    r = run_cli("train", "config.yaml", "--debug")
    assert r.returncode != 0
    assert "Traceback" in r.stderr
    assert "DanluError" in r.stderr
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


# --------------------------------------------------------------------------- the data
def test_missing_feature_column(invoke_cli, tmp_path, write_config, runs_dir):
    _csv_cfg(write_config, _mixed(tmp_path), features=["age", "heigth"])
    r = invoke_cli("train", "config.yaml")
    assert_user_error(r, "mixed.csv", "'heigth'", "income", runs_dir=runs_dir)  # lists the columns


def test_missing_target_column(invoke_cli, tmp_path, write_config, runs_dir):
    write_config({"data": {"path": str(_mixed(tmp_path)), "target": "lable"}})
    r = invoke_cli("train", "config.yaml")
    assert_user_error(r, "mixed.csv", "'lable'", "did you mean 'label'", runs_dir=runs_dir)


def test_non_numeric_value_in_numeric_column(invoke_cli, tmp_path, write_config, runs_dir):
    df = make_mixed_frame()
    df["income"] = df["income"].astype(object)
    df.loc[6, "income"] = "n/a?"  # 7th data row of the file (line 8 counting the header)
    _csv_cfg(write_config, _mixed(tmp_path, df))
    r = invoke_cli("train", "config.yaml")
    line = assert_user_error(r, "mixed.csv", "'income'", "'n/a?'", "data.categorical", runs_dir=runs_dir)
    assert "row 7" in line or "line 8" in line, line


def _with_missing(tmp_path: Path) -> Path:
    df = make_mixed_frame()
    df.loc[3, "income"] = np.nan
    df.loc[10, "age"] = np.inf
    return _mixed(tmp_path, df)


def test_nan_inf_without_imputation_policy(invoke_cli, tmp_path, write_config, runs_dir):
    _csv_cfg(write_config, _with_missing(tmp_path))
    r = invoke_cli("train", "config.yaml")
    line = assert_user_error(r, "mixed.csv", "data.missing", runs_dir=runs_dir)
    assert "'age'" in line or "'income'" in line, line


@pytest.mark.slow
def test_nan_inf_with_impute_trains(run_cli, tmp_path, write_config, runs_dir):
    _csv_cfg(write_config, _with_missing(tmp_path), missing="impute")
    r = run_cli("train", "config.yaml", "-q")
    assert r.returncode == 0, r.stderr
    runs = [p for p in runs_dir.iterdir() if p.is_dir()]
    assert len(runs) == 1
    assert (runs[0] / "model.safetensors").is_file()


def test_empty_data_file(invoke_cli, tmp_path, write_config, runs_dir):
    (tmp_path / "empty.csv").write_bytes(b"")
    write_config({"data": {"path": str(tmp_path / "empty.csv"), "target": "label"}})
    r = invoke_cli("train", "config.yaml")
    assert_user_error(r, "empty.csv", "empty", runs_dir=runs_dir)


def test_header_only_csv(invoke_cli, tmp_path, write_config, runs_dir):
    (tmp_path / "header.csv").write_text("age,income,color,size,label\n", encoding="utf-8")
    write_config({"data": {"path": str(tmp_path / "header.csv"), "target": "label"}})
    r = invoke_cli("train", "config.yaml")
    assert_user_error(r, "header.csv", "no rows", runs_dir=runs_dir)


def test_split_with_no_rows(invoke_cli, tmp_path, write_config, runs_dir):
    # test takes 10 of 20 rows; val 0.49 of the whole is 98% of the other 10: none left to train on
    _csv_cfg(write_config, _mixed(tmp_path, make_mixed_frame(n=20)), split={"test": 0.5, "val": 0.49})
    r = invoke_cli("train", "config.yaml")
    assert_user_error(r, "data.split.val", "0.49", "20 rows", runs_dir=runs_dir)


def test_target_with_one_class(invoke_cli, tmp_path, write_config, runs_dir):
    df = make_mixed_frame()
    df["label"] = "cat"
    _csv_cfg(write_config, _mixed(tmp_path, df), split={"stratify": False})
    r = invoke_cli("train", "config.yaml")
    assert_user_error(r, "'label'", "'cat'", "class", runs_dir=runs_dir)


@pytest.mark.parametrize("loss, n_classes", [("mse", 3), ("bce_with_logits", 5)])
def test_loss_does_not_fit_task(invoke_cli, tmp_path, write_config, runs_dir, loss, n_classes):
    df = make_mixed_frame(n=100)
    df["label"] = np.asarray(["a", "b", "c", "d", "e"])[np.arange(100) % n_classes]
    write_config({"data": {"path": str(_mixed(tmp_path, df)), "target": "label"}, "task": {"loss": loss}})
    r = invoke_cli("train", "config.yaml")
    assert_user_error(r, "task.loss", loss, f"{n_classes} classes", runs_dir=runs_dir)


# --------------------------------------------------------------------------- resume, predict, evaluate
@pytest.mark.slow
def test_resume_with_shape_changing_config(invoke_cli, mixed_run, tmp_path):
    cfg = yaml.safe_load(mixed_run.config.read_text())
    cfg["model"]["hidden"] = [8, 8]
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(cfg))
    before = _snapshot(mixed_run.run)
    r = invoke_cli("train", "other.yaml", "--resume", mixed_run.run)
    assert_user_error(r, "--resume", mixed_run.run.name, "model.hidden", "[16]", "[8, 8]")
    assert list(mixed_run.run.parent.iterdir()) == [mixed_run.run]  # no new run folder
    assert _snapshot(mixed_run.run) == before  # the run is untouched


def test_resume_not_a_run_folder(invoke_cli, write_config, tmp_path, runs_dir):
    write_config({"data": {"source": "iris"}})
    (tmp_path / "notarun").mkdir()
    r = invoke_cli("train", "config.yaml", "--resume", "notarun")
    assert_user_error(r, "notarun", "not a danlu run folder", runs_dir=runs_dir)


def test_predict_input_missing_training_column(invoke_cli, mixed_run, tmp_path):
    rows = make_mixed_frame(n=5, seed=3).drop(columns=["income", "label"])
    rows.to_csv(tmp_path / "rows.csv", index=False)
    r = invoke_cli("predict", mixed_run.run, "--input", "rows.csv", "--output", "out.csv")
    assert_user_error(r, "rows.csv", "'income'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv"]  # no out.csv, no temp file


def test_evaluate_not_a_run(invoke_cli, tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "notes.txt").write_text("hi")
    r = invoke_cli("evaluate", folder)
    assert_user_error(r, "plain", "not a danlu run folder")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
