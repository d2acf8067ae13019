"""Kinds of input (danlu/kinds.py): detection reproduces the order data.build always had, a
saved run finds its kind by name, and a kind registered from outside danlu (tests/toykind.py)
trains, predicts and evaluates through the CLI with no edit to danlu's files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, assert_user_error, cli, make_mixed_frame, small_config

from danlu import config, kinds
from danlu.config import DataConfig
from danlu.errors import DanluError
from danlu.registry import KINDS, import_object


def _data(tmp_path: Path, **keys: object) -> DataConfig:
    csv = tmp_path / "t.csv"
    if not csv.exists():
        make_mixed_frame(30).to_csv(csv, index=False)
    return DataConfig.model_validate({"path": str(csv), "target": "label", **keys})


@pytest.mark.parametrize(
    ("keys", "task_type", "model", "expected"),
    [
        ({}, "auto", "mlp", "tabular"),
        ({"text": {"column": "color"}}, "auto", "rnn", "text"),
        ({"sequence": {"column": "color"}}, "auto", "rnn", "text"),
        ({"images": {}}, "auto", "cnn", "image"),
        ({}, "auto", "gpt", "corpus"),
        ({}, "language_modeling", "mlp", "corpus"),
        ({"audio": {}}, "auto", "ctc", "audio"),
        ({}, "speech_recognition", "ctc", "audio"),
        # the order of the old if-chain: multimodal, audio, text/sequence, corpus, image, tabular
        ({"inputs": {"a": {"kind": "tabular", "columns": ["age"]}}}, "speech_recognition", "fusion",
         "multimodal"),
        ({"text": {"column": "color"}}, "speech_recognition", "ctc", "audio"),
        ({"text": {"column": "color"}}, "language_modeling", "gpt", "text"),
        ({"images": {}}, "language_modeling", "gpt", "corpus"),
        ({"kind": "image"}, "auto", "mlp", "image"),  # named: no detection
    ],
)
def test_detection_order(tmp_path, keys, task_type, model, expected):
    model_cfg = config.parse_model({"type": model, **({"encoders": {"a": {}}} if model == "fusion" else {})})
    assert kinds.detect(_data(tmp_path, **keys), task_type, model_cfg).name == expected


def test_every_built_in_hook_imports():
    for name in KINDS.names():
        kind = kinds.get(name)
        hooks = ("detect", "prepare", "preprocessor", "load", "finish", "evaluate", "describe_inputs")
        hooks += ("explain", "export_onnx")
        for hook in hooks:
            ref = getattr(kind, hook)
            assert ref is None or callable(import_object(ref) if isinstance(ref, str) else ref), (name, hook)


def test_a_saved_run_names_its_kind():
    # folders written before model.json had "kind": the schema says it
    assert kinds.saved_name({"schema": {"task": "classification", "input_kind": "tabular"}}) == "tabular"
    assert kinds.saved_name({"schema": {"task": "regression", "input_kind": "sequence"}}) == "sequence"
    assert kinds.saved_name({"schema": {"task": "language_modeling", "input_kind": "text"}}) == "corpus"
    assert kinds.saved_name({"schema": {"task": "speech_recognition", "input_kind": "audio"}}) == "audio"
    assert kinds.get("sequence") is kinds.TEXT
    with pytest.raises(DanluError, match="kind 'os:system' is not a registered danlu kind; load it only if"):
        kinds.of_run({"kind": "os:system"}, "model.json")
    unknown = r"^model.json: unknown kind 'tabul' \(did you mean 'tabular'\?\); valid: audio, "
    with pytest.raises(DanluError, match=unknown):
        kinds.of_run({"kind": "tabul"}, "model.json")


def test_tabular_inputs_are_described(tmp_path):
    from danlu import data

    prepared = data.build(_data(tmp_path, exclude=["size"]), "auto", 0)
    described = kinds.TABULAR.hook("describe_inputs")(prepared.schema)
    assert described == [
        {"name": "age", "type": "number"},
        {"name": "income", "type": "number"},
        {"name": "color", "type": "category"},
    ]


def test_unknown_kind_is_one_line(invoke_cli, tmp_path):
    cfg = small_config({"data": {"path": "t.csv", "target": "label", "kind": "tabluar"}}, tmp_path / "runs")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    line = assert_user_error(invoke_cli("train", "c.yaml"), runs_dir=tmp_path / "runs")
    assert line == (
        "error: c.yaml: data.kind: unknown kind 'tabluar' (did you mean 'tabular'?);"
        " valid: audio, corpus, image, interactions, multimodal, sequence, tabular, text"
    )


# --------------------------------------------------------------------------- a kind from outside
def _bags(n: int, seed: int) -> pd.DataFrame:
    """Bags of 2-8 numbers around +1 ("pos") or -1 ("neg")."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(["neg", "pos"], n)
    bags = [np.round(rng.normal(1.0 if y == "pos" else -1.0, 1.0, rng.integers(2, 9)), 3) for y in labels]
    return pd.DataFrame({"numbers": [list(b) for b in bags], "label": labels})


@pytest.mark.slow
def test_toy_kind_trains_predicts_and_evaluates_through_the_cli(tmp_path, invoke_cli):
    train, new = tmp_path / "bags.jsonl", tmp_path / "new.jsonl"
    _bags(240, 0).to_json(train, orient="records", lines=True)
    _bags(60, 1).to_json(new, orient="records", lines=True)
    body = {
        "data": {"kind": "toykind:BAG", "path": str(train), "target": "label"},
        "model": {"type": "toykind:BagNet", "params": {"hidden": 16}},
        "train": {"epochs": 15, "lr": 0.01},
    }
    body["data"]["split"] = {"val": 0.2, "test": 0.2}
    cfg = small_config(body, tmp_path / "runs")
    (tmp_path / "bags.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}  # where toykind.py is

    trained = cli("train", "bags.yaml", cwd=tmp_path, env=env)  # the user's own config: their code runs
    assert trained.returncode == 0, trained.stderr
    (run,) = (tmp_path / "runs").iterdir()
    meta = json.loads((run / "model.json").read_text())
    assert meta["kind"] == "toykind:BAG" and meta["schema"]["input_kind"] == "bag"
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["split"] == "test" and summary["rows"] == 48
    assert summary["metrics"]["accuracy"] >= 0.85, summary  # the classes are 2 sd apart

    # a folder naming user code loads it only when trusted, like a user model (refused before
    # anything is imported, so in this process, where toykind is not importable)
    refused = invoke_cli("predict", run, "--input", new)
    assert_user_error(
        refused, f"{run / 'model.json'}: kind 'toykind:BAG' is not a registered danlu kind", "--trust-code"
    )
    assert_user_error(invoke_cli("evaluate", run), "kind 'toykind:BAG'", "--trust-code")

    out = tmp_path / "pred.csv"
    predicted = cli(
        "predict", run, "--input", new, "--output", out, "--proba", "--trust-code", cwd=tmp_path, env=env
    )
    assert predicted.returncode == 0, predicted.stderr
    preds = pd.read_csv(out)
    assert list(preds.columns) == ["numbers", "label", "prediction", "proba_neg", "proba_pos"]
    assert (preds["prediction"] == preds["label"]).mean() >= 0.85

    evaluated = cli("evaluate", run, "--data", new, "--trust-code", cwd=tmp_path, env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    on_new = json.loads((run / "evaluations" / "new" / "metrics.json").read_text())
    assert on_new["rows"] == 60
    # the same model on the same rows: evaluate's accuracy is predict's
    assert on_new["metrics"]["accuracy"] == pytest.approx((preds["prediction"] == preds["label"]).mean())
