"""danlu.config.load in process: messages, --set type checking, resolved defaults, shorthands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from danlu import config
from danlu.errors import DanluError

BASE: dict[str, Any] = {"data": {"source": "iris"}}


def _load(extra: dict[str, Any] | None = None, overrides: list[str] | None = None) -> config.RunConfig:
    return config.load({**BASE, **(extra or {})}, overrides)


def _error(extra: dict[str, Any] | None = None, overrides: list[str] | None = None) -> str:
    with pytest.raises(DanluError) as info:
        _load(extra, overrides)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


# --------------------------------------------------------------------------- did you mean
@pytest.mark.parametrize(
    "extra, expected",
    [
        ({"modle": {}}, ["modle", "did you mean 'model'"]),
        ({"train": {"epohcs": 3}}, ["train.epohcs", "did you mean 'epochs'"]),
        ({"train": {"scheduler": {"nmae": "cosine"}}}, ["train.scheduler.nmae", "did you mean 'name'"]),
        ({"data": {"source": "iris", "catgorical": []}}, ["data.catgorical", "did you mean 'categorical'"]),
        ({"model": {"type": "mlp", "hiden": [8]}}, ["model.hiden", "did you mean 'hidden'"]),
        ({"model": {"type": "mpl"}}, ["model", "'mpl'", "did you mean 'mlp'"]),
        ({"train": {"optimizer": "adamm"}}, ["train.optimizer", "did you mean 'adam'"]),
        ({"train": {"scheduler": "cosin"}}, ["train.scheduler", "did you mean 'cosine'"]),
        ({"task": {"loss": "cross_entropi"}}, ["task.loss", "did you mean 'cross_entropy'"]),
        ({"data": {"source": "iris", "encoding": "onehto"}}, ["data.encoding", "did you mean 'onehot'"]),
    ],
    ids=lambda v: None if isinstance(v, list) else str(v),
)
def test_did_you_mean(extra, expected):
    msg = _error(extra)
    for s in expected:
        assert s in msg, msg


def test_unknown_key_lists_valid_keys():
    msg = _error({"train": {"epohcs": 3}})
    assert "valid keys here" in msg
    assert "batch_size" in msg and "lr" in msg


def test_error_names_the_file(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**BASE, "train": {"lr": "fast"}}))
    with pytest.raises(DanluError, match=r"run\.yaml: train\.lr: .*'fast'"):
        config.load(path)


def test_missing_data_section():
    with pytest.raises(DanluError, match="data"):
        config.load({"name": "x"})


# --------------------------------------------------------------------------- --set
def test_set_rejects_wrong_type():
    msg = _error(overrides=["train.epochs=abc"])
    assert "train.epochs" in msg and "abc" in msg


def test_set_list_value():
    cfg = _load(overrides=["model.hidden=[8,8]"])
    assert cfg.model.hidden == [8, 8]


def test_set_types_from_yaml():
    cfg = _load(
        overrides=["train.lr=0.01", "train.epochs=7", "train.early_stopping=false", "data.split.stratify=no"]
    )
    assert cfg.train.lr == 0.01
    assert cfg.train.epochs == 7 and isinstance(cfg.train.epochs, int)
    assert cfg.train.early_stopping is None
    assert cfg.data.split.stratify is False


def test_set_overrides_file_value(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**BASE, "train": {"epochs": 50, "lr": 0.1}}))
    cfg = config.load(path, ["train.epochs=2"])
    assert cfg.train.epochs == 2
    assert cfg.train.lr == 0.1  # untouched keys keep the file's value


def test_set_unknown_key_did_you_mean():
    msg = _error(overrides=["train.epohcs=3"])
    assert "train.epohcs" in msg and "did you mean 'epochs'" in msg


def test_set_unknown_section_did_you_mean():
    msg = _error(overrides=["trian.epochs=3"])
    assert "did you mean 'train'" in msg


def test_set_without_equals():
    msg = _error(overrides=["train.epochs"])
    assert "key.path=value" in msg


def test_set_range_checked():
    msg = _error(overrides=["train.epochs=0"])
    assert "train.epochs" in msg


def test_set_into_free_form_params():
    cfg = config.load({"data": {"source": "make_moons"}}, ["data.params.n_samples=50"])
    assert cfg.data.params == {"n_samples": 50}


# --------------------------------------------------------------------------- scheduler shorthand
def test_scheduler_string_shorthand():
    cfg = _load({"train": {"scheduler": "cosine"}})
    assert cfg.train.scheduler.name == "cosine"
    assert cfg.train.scheduler == config.SchedulerConfig(name="cosine")  # the rest are defaults


def test_scheduler_shorthand_then_set_nested_key():
    cfg = _load({"train": {"scheduler": "warmup_cosine"}}, ["train.scheduler.warmup=0.1"])
    assert cfg.train.scheduler.name == "warmup_cosine"
    assert cfg.train.scheduler.warmup == 0.1


def test_scheduler_shorthand_via_set():
    cfg = _load(overrides=["train.scheduler=step"])
    assert cfg.train.scheduler.name == "step"


def test_early_stopping_shorthand():
    assert _load({"train": {"early_stopping": True}}).train.early_stopping == config.EarlyStoppingConfig()
    assert _load({"train": {"early_stopping": False}}).train.early_stopping is None


# --------------------------------------------------------------------------- resolved config
def _flat_keys(d: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for k, v in d.items():
        if isinstance(v, dict) and v and f"{prefix}{k}" != "data.params":
            keys |= _flat_keys(v, f"{prefix}{k}.")
        else:
            keys.add(f"{prefix}{k}")
    return keys


def test_to_yaml_round_trips():
    cfg = _load({"train": {"scheduler": "cosine", "lr": 0.01}, "model": {"hidden": [4]}})
    again = config.load(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_run_folder_config_has_every_default(tmp_path: Path):
    import danlu

    cfg = {
        "name": "defaults",
        "data": {"source": "iris"},
        "train": {"epochs": 1, "device": "cpu"},
        "eval": {"plots": False},
        "output": {"dir": str(tmp_path / "runs")},
    }
    run = danlu.train(cfg, progress="quiet")
    written = yaml.safe_load((Path(run.path) / "config.yaml").read_text(encoding="utf-8"))
    assert written["train"]["weight_decay"] == 0.0
    assert written["train"]["scheduler"]["name"] == "none"
    assert written["data"]["split"]["test"] == 0.2
    assert written["model"]["type"] == "mlp" and written["model"]["hidden"] == [64, 64]
    expected = _flat_keys(config.load(cfg).to_dict())
    assert _flat_keys(written) == expected  # every key, default or not, is written out
    assert config.load(written) == config.load(cfg)
