"""Every example YAML trains end to end and meets its quality bar."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import danlu

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def train(tmp_path: Path, name: str, **over: object) -> dict:
    over = {"output.dir": str(tmp_path / "runs"), "eval.plots": False, **over}
    return danlu.train(EXAMPLES / name, over, progress="quiet").metrics["metrics"]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.slow
def test_tutorial_reaches_095_for_every_seed(tmp_path: Path, seed: int) -> None:
    # the introduction's split: make_classification(1000, 10, 5, random_state=42), 80/20 at 42
    assert train(tmp_path, "tutorial.yaml", seed=seed)["accuracy"] >= 0.95


def test_tutorial_test_split_is_the_introductions(tmp_path: Path) -> None:
    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split

    from danlu import config, data

    x, y = make_classification(n_samples=1000, n_features=10, n_informative=5, random_state=42)
    _, x_test, _, _ = train_test_split(x, y, test_size=0.2, random_state=42)
    prepared = data.build(config.load(EXAMPLES / "tutorial.yaml").data, "classification", 0)
    test = prepared.frames["test"][[f"x{i}" for i in range(10)]].to_numpy()
    assert (test == x_test).all()


@pytest.mark.slow
def test_tutorial_dropout_adamw(tmp_path: Path) -> None:
    assert train(tmp_path, "tutorial_dropout_adamw.yaml")["accuracy"] >= 0.95


@pytest.mark.slow
def test_breast_cancer_auc(tmp_path: Path) -> None:
    assert train(tmp_path, "breast_cancer.yaml")["roc_auc"] >= 0.98


@pytest.mark.slow
def test_wine(tmp_path: Path) -> None:
    assert train(tmp_path, "wine.yaml")["accuracy"] >= 0.9


@pytest.mark.slow
def test_diabetes_regression(tmp_path: Path) -> None:
    m = train(tmp_path, "diabetes_regression.yaml")
    assert m["r2"] >= 0.3 and m["rmse"] < 65


@pytest.mark.parametrize("encoding", ["onehot", "embedding"])
@pytest.mark.slow
def test_csv_mixed(tmp_path: Path, encoding: str, monkeypatch: pytest.MonkeyPatch) -> None:
    csv = tmp_path / "mixed.csv"
    subprocess.run([sys.executable, str(EXAMPLES / "make_mixed_csv.py"), "--out", str(csv)], check=True)
    m = train(tmp_path, "csv_mixed.yaml", **{"data.path": str(csv), "data.encoding": encoding})
    # the label is noisy by construction; a logistic model on the true logit gets ~0.78
    assert m["accuracy"] >= 0.7 and m["roc_auc"] >= 0.75
