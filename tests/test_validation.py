"""Bad input found before anything is written, in one line naming the key: settings the
trainer or the final evaluation used to trip over after the run folder existed, numbers no
setting can mean (inf, nan, seeds numpy refuses), YAML duplicate keys, outputs that cannot be
written, a model too large to allocate, a full disk, and a diverging training run."""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_user_error, small_config

from danlu import api, config, fileio
from danlu.errors import DanluError


def _config_error(raw: dict[str, Any], overrides: list[str] | None = None) -> str:
    with pytest.raises(DanluError) as info:
        config.load({"data": {"source": "iris"}, **raw}, overrides)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def _train_error(runs: Path, body: dict[str, Any]) -> str:
    """api.train in process on a small config: the DanluError's line; no run folder made."""
    with pytest.raises(DanluError) as info:
        api.train(small_config(body, runs), progress="quiet")
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())
    return msg


# --------------------------------------------------------------------------- numbers in the config
@pytest.mark.parametrize(
    "value, expected",
    [
        (math.inf, "train.lr: must be a finite positive number, got inf"),
        (math.nan, "train.lr: must be a finite positive number, got nan"),
        (-0.1, "train.lr: must be a positive number, got -0.1"),
    ],
    ids=["inf", "nan", "negative"],
)
def test_lr_must_be_finite_and_positive(value, expected):
    assert expected in _config_error({"train": {"lr": value}})


def test_no_float_setting_takes_inf():
    # `lr: .inf` was accepted and trained into NaN weights; the same holds for every float key
    msg = _config_error({"train": {"weight_decay": "inf"}})
    assert "train.weight_decay: must be a finite number >= 0" in msg, msg
    assert "train.grad_clip: must be a finite" in _config_error({}, ["train.grad_clip=.inf"])


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"seed": 2**70}, "seed"),
        ({"seed": -1}, "seed"),  # was "cannot make a stratified test split (Seed must be ...)"
        ({"data": {"source": "iris", "split": {"seed": 2**32}}}, "data.split.seed"),
    ],
    ids=["2**70", "-1", "split-2**32"],
)
def test_seed_range(raw, key):
    msg = _config_error(raw)
    assert f"{key}: must be an integer from 0 to 4294967295" in msg, msg
    assert "stratified" not in msg


def test_seed_at_the_limits_is_valid():
    assert config.load({"data": {"source": "iris"}, "seed": 2**32 - 1}).seed == 2**32 - 1


def test_model_given_as_a_string():
    msg = _config_error({"model": "mlp"})
    assert "model: expected a mapping like {type: mlp, ...}" in msg, msg
    assert "did you mean" not in msg


# --------------------------------------------------------------------------- the config file itself
def test_duplicate_keys_rejected_with_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: a\ndata: {source: iris}\ntrain: {epochs: 1}\ntrain: {lr: 0.1}\n")
    with pytest.raises(DanluError) as info:
        config.load(path)
    msg = str(info.value)
    assert "dup.yaml" in msg and "line 4" in msg and "duplicate key 'train'" in msg and "line 3" in msg, msg


def test_duplicate_nested_key_and_in_set():
    path_msg = _config_error({}, ["train={lr: 0.1, lr: 0.2}"])
    assert "--set" in path_msg and "duplicate key 'lr'" in path_msg, path_msg


def test_yaml_merge_keys_may_be_overridden():
    assert config.yaml_load("a: &b {x: 1, y: 2}\nc: {<<: *b, y: 3}\n")["c"] == {"x": 1, "y": 3}


def test_config_that_is_a_directory(tmp_path):
    run = tmp_path / "somerun"
    run.mkdir()
    (run / "config.yaml").write_text("data: {source: iris}\n")
    with pytest.raises(DanluError) as info:
        config.load(run)
    msg = str(info.value)
    assert "is a directory, not a config file" in msg and "not found" not in msg, msg
    assert str(run / "config.yaml") in msg  # a run folder: where its config is


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null")
def test_config_that_is_a_device():
    with pytest.raises(DanluError) as info:
        config.load("/dev/null")
    assert "/dev/null: is a character device, not a config file" in str(info.value)


# --------------------------------------------------------------------------- checked before the run folder
def test_monitor_never_logged_is_found_before_training(tmp_path):
    msg = _train_error(tmp_path / "runs", {"data": {"source": "iris"}, "train": {"monitor": "val.acuracy"}})
    assert "train.monitor: 'val.acuracy' is not logged" in msg and "did you mean 'val.accuracy'" in msg, msg
    assert "val.f1_macro" in msg and "train.loss" in msg


def test_regression_monitor_and_penalty_names(tmp_path):
    # the names come from the task: a classification metric is not logged by a regression task
    body = {"data": {"source": "diabetes"}, "train": {"monitor": "val.accuracy", "l2": 0.01}}
    msg = _train_error(tmp_path / "runs", body)
    assert "regression task" in msg and "val.r2" in msg and "train.l2_penalty" in msg, msg


def test_val_monitor_without_validation_split(tmp_path):
    body = {"data": {"source": "iris", "split": {"val": 0}}, "train": {"monitor": "val.loss"}}
    msg = _train_error(tmp_path / "runs", body)
    assert "no validation split" in msg and "data.split.val" in msg, msg


def test_train_monitor_without_validation_split_trains(tmp_path):
    body = {"data": {"source": "iris", "split": {"val": 0}}, "train": {"monitor": "train.loss", "epochs": 1}}
    run = api.train(small_config(body, tmp_path / "runs"), progress="quiet")
    assert (run.path / "model.safetensors").is_file()


def test_eval_metric_that_does_not_import(tmp_path):
    body = {"data": {"source": "iris"}, "eval": {"metrics": ["no_such_pkg.mod:fn"]}}
    msg = _train_error(tmp_path / "runs", body)
    assert msg.startswith("eval.metrics:") and "no_such_pkg" in msg, msg


def test_infinite_regression_target(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    frame = pd.DataFrame({"x": x, "y": 2 * x})
    frame.loc[7, "y"] = np.inf
    frame.to_csv(tmp_path / "reg.csv", index=False)  # written as 'inf'
    msg = _train_error(tmp_path / "runs", {"data": {"path": str(tmp_path / "reg.csv"), "target": "y"}})
    assert "reg.csv" in msg and "target column 'y' has infinite values (rows 8)" in msg, msg


def test_model_too_large_says_size_and_key(tmp_path):
    # 10**12 hidden units: 4 TB for the first layer, refused by the allocator at once
    body = {"data": {"source": "iris"}, "model": {"hidden": [10**12]}}
    msg = _train_error(tmp_path / "runs", body)
    assert msg.startswith("model: cannot allocate the model"), msg
    assert "8,000,000,000,003 parameters" in msg and "GB" in msg, msg
    assert "model.hidden=[1000000000000]" in msg, msg


def test_model_too_large_to_even_describe(tmp_path):
    body = {"data": {"source": "iris"}, "model": {"hidden": [10**20]}}
    msg = _train_error(tmp_path / "runs", body)
    assert msg.startswith("model: cannot allocate the model") and "model.hidden" in msg, msg


def test_name_too_long_for_the_file_system(tmp_path):
    msg = _train_error(tmp_path / "runs", {"name": "a" * 300, "data": {"source": "iris"}})
    assert "name" in msg, msg


def test_cli_check_before_run_folder_exit_2(invoke_cli, write_config, runs_dir):
    write_config({"data": {"source": "iris"}, "train": {"monitor": "val.acuracy"}})
    r = invoke_cli("train", "config.yaml")
    assert_user_error(r, "train.monitor", "'val.acuracy'", runs_dir=runs_dir)


# --------------------------------------------------------------------------- divergence
def test_diverging_run_stops_names_lr_and_marks_folder_failed(run_cli, write_config, runs_dir):
    write_config({"data": {"source": "iris"}, "train": {"lr": 1e30, "epochs": 5}})
    r = run_cli("train", "config.yaml")
    line = assert_user_error(r, "training diverged", "train.lr is 1e+30", "at step")
    (run,) = list(runs_dir.iterdir())
    failed = fileio_json(run / "failed.json")
    assert failed["reason"] == line.removeprefix("error: ")
    assert not (run / "model.json").exists()  # never presented as a finished model
    listed = json.loads(run_cli("runs", str(runs_dir), "--json").stdout)
    assert [(r["status"], r["error"]) for r in listed] == [("failed", failed["reason"])]
    best = run / "checkpoints" / "best.safetensors"
    if best.exists():  # a best model is one from before the divergence
        from safetensors.torch import load_file

        assert all(torch.isfinite(t).all() for t in load_file(best).values())


def test_divergence_caught_within_an_epoch(tmp_path, monkeypatch):
    # without eval_every an epoch can be long: the loss is looked at every DIVERGENCE_CHECK steps
    from danlu.training import trainer

    monkeypatch.setattr(trainer, "DIVERGENCE_CHECK", 1)
    body = {"data": {"source": "iris"}, "train": {"lr": 1e30, "batch_size": 8, "epochs": 1}}
    with pytest.raises(DanluError) as info:
        api.train(small_config(body, tmp_path / "runs"), progress="quiet")
    step = int(str(info.value).split(" at step ")[1].split(";")[0])
    assert step < 13, str(info.value)  # before the end of the first epoch (105 rows: 14 steps)
    (run,) = list((tmp_path / "runs").iterdir())
    assert (run / "failed.json").is_file()


def fileio_json(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- writing
def test_disk_full_names_the_file_and_leaves_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text("old\n")

    def full(self: Path, *args: Any, **kwargs: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(DanluError) as info:
        fileio.write_json(target, {"a": 1})
    msg = str(info.value)
    assert str(target) in msg and "No space left on device" in msg, msg
    monkeypatch.undo()
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temp file left


def test_write_to_a_directory_is_one_line(tmp_path):
    with pytest.raises(DanluError) as info:
        fileio.write_text(tmp_path, "x")
    assert "is a directory" in str(info.value)


def test_predict_output_is_a_directory(invoke_cli, mixed_run, tmp_path):
    rows = tmp_path / "rows.csv"
    pd.read_csv(mixed_run.csv).drop(columns=["label"]).head(5).to_csv(rows, index=False)
    (tmp_path / "outdir").mkdir()
    r = invoke_cli("predict", mixed_run.run, "--input", rows, "--output", "outdir")
    assert_user_error(r, "--output outdir", "is a directory")
    r = invoke_cli("predict", mixed_run.run, "--input", rows, "--output", "rows.csv/out.csv")
    assert_user_error(r, "rows.csv/out.csv", "is a file, not a folder")


def test_init_and_export_output_not_writable(invoke_cli, tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    assert_user_error(invoke_cli("init", "--output", "adir"), "--output adir", "is a directory")
    assert_user_error(invoke_cli("init", "--output", "afile/my.yaml"), "afile", "is a file, not a folder")
    # OUT_DIR is checked before the run is even opened
    assert_user_error(invoke_cli("export", "norun", "afile/hf"), "afile", "is a file, not a folder")
    assert_user_error(invoke_cli("export", "norun", "afile"), "OUT_DIR afile", "is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]
