"""Evaluation reports: valid PNGs on disk and a report.md that shows and links them."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from danlu.errors import DanluError
from danlu.evaluation import metrics as M
from danlu.evaluation.report import plot_history, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAN = float("nan")


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5_000, f"{path} is suspiciously small ({len(data)} bytes)"


def _links(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


def _check_report(report: Path, files: list[Path], expected_pngs: set[str]) -> str:
    assert files[-1] == report and report.exists()
    pngs = [f for f in files if f.suffix == ".png"]
    assert {f.name for f in pngs} == expected_pngs
    for png in pngs:
        _assert_png(png)
    text = report.read_text(encoding="utf-8")
    links = _links(text)
    # every plot on disk is linked, relative to the report, and every link resolves
    assert sorted(links) == sorted(f"plots/{name}" for name in expected_pngs)
    for link in links:
        assert (report.parent / link).is_file()
    # atomic writes leave no temporaries behind
    assert not list(report.parent.rglob("*.tmp"))
    return text


def _history(n: int = 8) -> list[dict[str, float]]:
    rows = []
    for epoch in range(1, n + 1):
        rows.append(
            {
                "epoch": epoch,
                "step": 50 * epoch,
                "train.loss": 1.0 / epoch,
                "val.loss": 1.1 / epoch,
                "val.accuracy": 0.5 + 0.04 * epoch,
                "lr": 1e-3 * 0.7**epoch,
            }
        )
    return rows


def _proba(y: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(y.size, n_classes))
    logits[np.arange(y.size), y] += 1.5
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def _classification(tmp_path: Path, n_classes: int, y: np.ndarray | None = None, **kw):
    rng = np.random.default_rng(n_classes)
    y = rng.integers(0, n_classes, 300) if y is None else y
    proba = _proba(y, n_classes, seed=1)
    names = [f"class_{k}" for k in range(n_classes)]
    metrics = M.classification_metrics(y, proba, names)
    report = tmp_path / "out" / "report.md"
    files = write_report(
        report,
        tmp_path / "out" / "plots",
        title="Iris run",
        task="classification",
        split="test",
        metrics=metrics,
        history=kw.pop("history", _history()),
        y_true=y,
        output=proba,
        names=names,
        **kw,
    )
    return report, files, metrics


CLASSIFICATION_PNGS = {"confusion_matrix.png", "roc_curve.png", "pr_curve.png", "history.png"}


def test_binary_report(tmp_path: Path) -> None:
    details = {"run": "r-001", "model": "mlp | small", "epochs": "8"}
    report, files, metrics = _classification(tmp_path, 2, details=details)
    text = _check_report(report, files, CLASSIFICATION_PNGS)
    assert text.startswith("# Iris run\n")
    for key in ("accuracy", "f1_macro", "roc_auc", "average_precision", "log_loss"):
        assert f"| {key} | {metrics[key]:.4f} |" in text
    assert "| run | r-001 |" in text
    assert r"| model | mlp \| small |" in text  # a pipe must not split the cell
    assert "## Per class" in text and "| class_1 |" in text
    f1 = metrics["per_class"]["class_1"]["f1"]
    support = metrics["per_class"]["class_1"]["support"]
    assert f"{f1:.4f} | {support} |" in text
    assert "confusion_matrix" not in text.split("## Plots")[0]  # nested values stay out


@pytest.mark.slow
def test_multiclass_report_with_many_classes(tmp_path: Path) -> None:
    report, files, metrics = _classification(tmp_path, 12)
    text = _check_report(report, files, CLASSIFICATION_PNGS)
    assert f"| balanced_accuracy | {metrics['balanced_accuracy']:.4f} |" in text
    assert all(f"| class_{k} |" in text for k in range(12))


def test_single_class_truth_has_no_curves(tmp_path: Path) -> None:
    # ROC and PR curves are undefined with one class: left out, not drawn empty
    report, files, _ = _classification(tmp_path, 2, y=np.zeros(40, dtype=int), history=[])
    text = _check_report(report, files, {"confusion_matrix.png"})
    assert "nan" in text  # roc_auc is reported as undefined


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 3, 6])
def test_regression_report(tmp_path: Path, k: int) -> None:
    rng = np.random.default_rng(k)
    y = rng.normal(size=(250, k))
    pred = y + rng.normal(scale=0.3, size=y.shape)
    if k == 1:
        y, pred = y[:, 0], pred[:, 0]
    names = [f"target_{j}" for j in range(k)]
    metrics = M.regression_metrics(y, pred, names)
    history = [
        {"epoch": e, "train.loss": 1 / e, "val.loss": 1.2 / e, "val.rmse": 1 / e} for e in (1, 2)
    ]
    report = tmp_path / "report.md"
    files = write_report(
        report,
        tmp_path / "plots",
        title="House prices",
        task="regression",
        split="val",
        metrics=metrics,
        history=history,
        y_true=y,
        output=pred,
        names=names,
    )
    text = _check_report(report, files, {"pred_vs_true.png", "residuals.png", "history.png"})
    assert "## Metrics on val" in text
    for key in ("mse", "rmse", "mae", "r2", "mape"):
        assert f"| {key} | {metrics[key]:.4f} |" in text
    assert ("## Per target" in text) == (k > 1)
    assert "## Per class" not in text


def test_history_with_nans_and_gaps(tmp_path: Path) -> None:
    history = _history(6)
    history[0]["val.loss"] = NAN  # no validation before the first epoch ended
    history[2].pop("val.accuracy")  # a missing cell
    history[3]["lr"] = ""  # a blank cell read from CSV
    for row in history:
        row["val.never"] = NAN  # all-NaN columns are skipped, not drawn empty
    out = plot_history(history, tmp_path / "h.png")
    assert out == tmp_path / "h.png"
    _assert_png(out)


def test_history_step_rows(tmp_path: Path) -> None:
    # step-level rows repeat the epoch: plotted against steps instead
    history = [
        {"epoch": s // 10, "step": s, "train.loss": 1 / (s + 1), "val.loss": NAN} for s in range(40)
    ]
    history[-1]["val.loss"] = 0.2
    _assert_png(plot_history(history, tmp_path / "h.png"))


def test_single_row_history(tmp_path: Path) -> None:
    _assert_png(plot_history(_history(1), tmp_path / "h.png"))


@pytest.mark.parametrize(
    "history", [[], [{"epoch": 1.0}], [{"epoch": 1.0, "val.loss": NAN}, {"epoch": 2.0}]]
)
def test_history_with_nothing_to_draw(tmp_path: Path, history: list[dict]) -> None:
    assert plot_history(history, tmp_path / "h.png") is None
    assert not list(tmp_path.iterdir())


def test_bad_input(tmp_path: Path) -> None:
    y = np.array([0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]])
    common = dict(title="t", split="test", metrics={}, history=[], y_true=y)
    with pytest.raises(DanluError, match="task"):
        write_report(
            tmp_path / "r.md", tmp_path, task="ranking", output=proba, names=["a", "b"], **common
        )
    with pytest.raises(DanluError):
        write_report(
            tmp_path / "r.md", tmp_path, task="classification", output=proba, names=["a"], **common
        )
    with pytest.raises(DanluError):
        write_report(
            tmp_path / "r.md", tmp_path, task="regression", output=proba, names=["a"], **common
        )
    assert not (tmp_path / "r.md").exists()


def test_nonfinite_metric_values_are_written(tmp_path: Path) -> None:
    y = np.array([0.0, 1.0, 2.0])
    metrics = {"mse": 1e-7, "rmse": 123456789.0, "r2": math.nan, "n": 3}
    report = tmp_path / "r.md"
    write_report(
        report, tmp_path / "plots", title="t", task="regression", split="test",
        metrics=metrics, history=[], y_true=y, output=y, names=["y"],
    )  # fmt: skip
    text = report.read_text()
    assert "| mse | 1e-07 |" in text
    assert "| rmse | 1.235e+08 |" in text
    assert "| r2 | nan |" in text
    assert "| n | 3 |" in text


def test_import_is_lazy() -> None:
    code = (
        "import sys, danlu.evaluation.report; "
        "assert 'matplotlib' not in sys.modules and 'sklearn' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
