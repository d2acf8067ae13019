"""Tabular data formats, split files, multi-output regression, model/loss options and
user plug-ins ("package.module:Name"), checked in process on small data."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import danlu
from danlu import config, data
from danlu.errors import DanluError


def frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    color = rng.choice(["red", "green", "blue"], n)
    label = np.where(a + (color == "red") * 1.5 - b > 0.3, "yes", "no")
    return pd.DataFrame({"a": a, "b": b, "color": color, "label": label})


def quick(tmp_path: Path, data_cfg: dict, **sections: dict) -> danlu.Run:
    cfg = {
        "data": data_cfg,
        "train": {"epochs": 15, "batch_size": 32, "lr": 0.01, **sections.pop("train", {})},
        "eval": {"plots": False},
        "output": {"dir": str(tmp_path / "runs")},
        **sections,
    }
    return danlu.train(cfg, progress="quiet")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".jsonl"])
def test_every_file_format_trains_and_predicts(tmp_path: Path, suffix: str) -> None:
    df = frame()
    path = tmp_path / f"d{suffix}"
    {
        ".csv": lambda: df.to_csv(path, index=False),
        ".tsv": lambda: df.to_csv(path, sep="\t", index=False),
        ".parquet": lambda: df.to_parquet(path),
        ".jsonl": lambda: df.to_json(path, orient="records", lines=True),
    }[suffix]()
    run = quick(tmp_path, {"path": str(path), "target": "label"})
    assert run.metrics["metrics"]["accuracy"] > 0.8
    assert set(danlu.load(run.path).predict(df.head(20))) <= {"yes", "no"}


def test_separate_split_files(tmp_path: Path) -> None:
    df = frame(400)
    for name, part in (("train", df[:250]), ("val", df[250:320]), ("test", df[320:])):
        part.to_csv(tmp_path / f"{name}.csv", index=False)
    run = quick(
        tmp_path,
        {
            "train": str(tmp_path / "train.csv"),
            "val": str(tmp_path / "val.csv"),
            "test": str(tmp_path / "test.csv"),
            "target": "label",
        },
    )
    assert run.metrics["rows"] == 80
    sizes = danlu.load(run.path).run.read_model_json()["sizes"]
    assert sizes == {"train": 250, "val": 70, "test": 80}


def test_multi_output_regression_in_target_units(tmp_path: Path) -> None:
    run = quick(
        tmp_path,
        {"source": "linnerud", "split": {"val": 0.2, "test": 0.2}},
        train={"epochs": 5, "monitor": "val.loss"},
    )
    m = run.metrics["metrics"]
    assert set(m["per_target"]) == {"Weight", "Waist", "Pulse"}
    pred = danlu.load(run.path).predict(pd.DataFrame({"Chins": [5.0], "Situps": [150.0], "Jumps": [60.0]}))
    assert pred.shape == (1, 3)
    assert 100 < pred[0, 0] < 250  # weight in pounds, not standardized units


def test_make_regression_and_generators(tmp_path: Path) -> None:
    run = quick(
        tmp_path,
        {
            "source": "make_regression",
            "params": {"n_samples": 400, "n_features": 5, "noise": 1.0, "random_state": 0},
        },
        train={"epochs": 40},
    )
    assert run.metrics["task"] == "regression" and run.metrics["metrics"]["r2"] > 0.9
    for gen in ("make_moons", "make_circles", "make_blobs"):
        prepared = data.build(
            config.load({"data": {"source": gen, "params": {"n_samples": 100}}}).data, "auto", 0
        )
        assert prepared.schema.task == "classification"


@pytest.mark.parametrize(
    "model",
    [
        {"norm": "batch", "residual": True, "hidden": [32, 32], "init": "kaiming", "activation": "gelu"},
        {"norm": "layer", "hidden": [16], "init": "xavier", "activation": "tanh", "dropout": 0.3},
        {"init": "orthogonal", "activation": "leaky_relu"},
    ],
)
def test_mlp_options_train(tmp_path: Path, model: dict) -> None:
    df = frame()
    df.to_csv(tmp_path / "d.csv", index=False)
    run = quick(
        tmp_path, {"path": str(tmp_path / "d.csv"), "target": "label"}, model={"type": "mlp", **model}
    )
    assert run.metrics["metrics"]["accuracy"] > 0.75


def test_residual_block_adds_its_input() -> None:
    from danlu.data.tabular import Schema
    from danlu.models.mlp import MLP

    schema = Schema("classification", ["a"] * 4, ["a"] * 4, [], 4, [], ["y"], [0, 1])
    x = torch.tensor([[1.0, -1.0, 0.25, 0.75]])
    outputs = {}
    for residual in (True, False):
        cfg = config.parse_model({"type": "mlp", "hidden": [4, 3], "residual": residual})
        mlp = MLP(cfg, schema, 2)
        with torch.no_grad():  # linear = 2x - 1, so the block computes relu(2x - 1)
            mlp.blocks[0].linear.weight.copy_(2 * torch.eye(4))
            mlp.blocks[0].linear.bias.fill_(-1.0)
        outputs[residual] = (mlp.blocks[0](x), mlp.blocks[1].residual)
    # relu(2x - 1) = [1, 0, 0, 0.5]; with the residual connection x is added to it
    assert outputs[True][0].tolist() == [[2.0, -1.0, 0.25, 1.25]]
    assert outputs[False][0].tolist() == [[1.0, 0.0, 0.0, 0.5]]
    # a block that changes the width (4 -> 3) has no residual connection, even when asked
    assert outputs[True][1] is False and outputs[False][1] is False


@pytest.mark.parametrize(
    "task",
    [
        {"class_weights": "balanced"},
        {"class_weights": [1.0, 3.0], "label_smoothing": 0.1},
        {"loss": "bce_with_logits", "pos_weight": "balanced"},
    ],
)
def test_classification_loss_options(tmp_path: Path, task: dict) -> None:
    df = frame(400)
    df.to_csv(tmp_path / "d.csv", index=False)
    run = quick(tmp_path, {"path": str(tmp_path / "d.csv"), "target": "label"}, task=task)
    assert run.metrics["metrics"]["accuracy"] > 0.75
    # the saved task rebuilds the same loss without the training data
    predictor = danlu.load(run.path)
    saved = predictor.run.read_model_json()["task"]
    if task.get("class_weights") == "balanced":
        counts = df["label"].value_counts()
        assert isinstance(saved["class_weights"], list) and len(saved["class_weights"]) == 2
        assert saved["class_weights"][1] < saved["class_weights"][0] or counts["yes"] <= counts["no"]
    if task.get("loss") == "bce_with_logits":
        assert predictor.task.out_dim == 1 and isinstance(saved["pos_weight"], float)


def test_balanced_weights_are_sklearns() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    from danlu.tasks.losses import _class_weights

    y = torch.tensor([0] * 70 + [1] * 20 + [2] * 10)
    ours = _class_weights(config.TaskConfig(class_weights="balanced"), y, 3)
    ref = compute_class_weight("balanced", classes=np.arange(3), y=y.numpy())
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6)


@pytest.mark.parametrize("loss", ["mse", "mae", "huber", "smooth_l1"])
def test_regression_losses(tmp_path: Path, loss: str) -> None:
    run = quick(tmp_path, {"source": "diabetes"}, task={"loss": loss}, train={"epochs": 20, "lr": 0.003})
    assert run.metrics["metrics"]["r2"] > 0.2


@pytest.mark.parametrize("mode", ["norm", "value"])
def test_gradient_clipping(tmp_path: Path, mode: str) -> None:
    df = frame()
    df.to_csv(tmp_path / "d.csv", index=False)
    run = quick(
        tmp_path,
        {"path": str(tmp_path / "d.csv"), "target": "label"},
        train={"grad_clip": 0.5, "grad_clip_mode": mode},
    )
    assert run.metrics["metrics"]["accuracy"] > 0.75


def test_user_model_loss_and_metric_plug_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "myplug.py"
    pkg.write_text(
        textwrap.dedent("""
        import torch
        from torch import nn

        class Linear(nn.Module):
            def __init__(self, schema, out_dim, scale=1.0):
                super().__init__()
                self.scale = scale
                self.fc = nn.Linear(schema.n_inputs, out_dim)

            def forward(self, x, x_cat=None):
                return self.fc(x) * self.scale

        def my_loss(output, y):
            return nn.functional.cross_entropy(output, y)

        def positives(y_true, proba):
            return float((proba.argmax(1) == 1).mean())
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("myplug", None)
    df = frame()
    df.to_csv(tmp_path / "d.csv", index=False)
    run = quick(
        tmp_path,
        {"path": str(tmp_path / "d.csv"), "target": "label"},
        model={"type": "myplug:Linear", "params": {"scale": 2.0}},
        task={"loss": "myplug:my_loss"},
        eval={"plots": False, "metrics": ["myplug:positives"]},
    )
    assert run.metrics["metrics"]["accuracy"] > 0.75
    assert 0 < run.metrics["metrics"]["positives"] < 1
    # the saved run names user code: it loads again only when trusted
    with pytest.raises(DanluError, match="task.loss 'myplug:my_loss' is not a registered danlu loss"):
        danlu.load(run.path)
    assert danlu.load(run.path, trust_code=True).model.scale == 2.0


def test_user_model_import_error_is_one_line(tmp_path: Path) -> None:
    df = frame()
    df.to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DanluError, match="model.type: cannot import module 'nosuchpkg.mod'"):
        quick(
            tmp_path,
            {"path": str(tmp_path / "d.csv"), "target": "label"},
            model={"type": "nosuchpkg.mod:Net"},
        )
    assert not (tmp_path / "runs").exists()


def test_auto_task_inference() -> None:
    from danlu.data.tabular import infer_task

    assert infer_task(pd.Series(["a", "b", "a"])) == "classification"
    assert infer_task(pd.Series([0, 1, 1, 0] * 10)) == "classification"
    assert infer_task(pd.Series(np.linspace(0, 1, 50))) == "regression"
    assert infer_task(pd.Series(np.arange(200) % 150)) == "regression"
