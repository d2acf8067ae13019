"""Our numpy metrics against scikit-learn, number by number."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from danlu.errors import DanluError
from danlu.evaluation import metrics as M

RTOL = 1e-10


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


# name -> (n_classes, seed, tweak)
CASES = {
    "binary": (2, 0, None),
    "binary_ties": (2, 1, "ties"),
    "binary_imbalanced": (2, 2, "imbalanced"),
    "multi3": (3, 3, None),
    "multi3_ties": (3, 4, "ties"),
    "multi5": (5, 5, None),
    "multi5_ties": (5, 6, "ties"),
    "multi5_never_predicted": (5, 7, "never_predicted"),
    "multi3_absent": (3, 8, "absent"),
    "multi5_absent": (5, 9, "absent"),
    "multi3_unseen": (3, 10, "unseen"),
    "multi5_unseen": (5, 11, "unseen"),
}


def _case(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, proba) for a named scenario; predictions correlate with the truth."""
    n_classes, seed, tweak = CASES[name]
    rng = np.random.default_rng(seed)
    n = 400
    y = (rng.random(n) < 0.04).astype(np.int64) if tweak == "imbalanced" else rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += 1.0
    if tweak == "ties":
        # integer logits repeat across rows, so many scores tie exactly
        logits = np.round(logits).clip(-1, 2)
    elif tweak == "never_predicted":
        logits[:, 1] -= 20.0
    elif tweak == "absent":
        y[y == 2] = 0  # class 2 never occurs in y_true, but is predicted
    elif tweak == "unseen":
        y[y == 2] = 0
        logits[:, 2] -= 20.0  # class 2 neither occurs nor is predicted
    return y, _softmax(logits)


ALL_PRESENT = [
    "binary",
    "binary_ties",
    "binary_imbalanced",
    "multi3",
    "multi3_ties",
    "multi5",
    "multi5_ties",
    "multi5_never_predicted",
]
SOME_ABSENT = ["multi3_absent", "multi5_absent", "multi3_unseen", "multi5_unseen"]


def _ours(y: np.ndarray, proba: np.ndarray) -> dict:
    names = [f"c{k}" for k in range(proba.shape[1])]
    # our implementation answers edge cases quietly
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return M.classification_metrics(y, proba, names)


def _check_label_metrics(ours: dict, y: np.ndarray, proba: np.ndarray) -> None:
    n_classes = proba.shape[1]
    pred = proba.argmax(axis=1)
    labels = list(range(n_classes))
    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "log_loss": skm.log_loss(y, proba, labels=labels),
    }
    for avg in ("macro", "micro", "weighted"):
        kw = {"average": avg, "zero_division": 0}
        expected[f"precision_{avg}"] = skm.precision_score(y, pred, **kw)
        expected[f"recall_{avg}"] = skm.recall_score(y, pred, **kw)
        expected[f"f1_{avg}"] = skm.f1_score(y, pred, **kw)
    for key, value in expected.items():
        np.testing.assert_allclose(ours[key], value, rtol=RTOL, err_msg=key)
        assert isinstance(ours[key], float), key

    np.testing.assert_array_equal(
        ours["confusion_matrix"], skm.confusion_matrix(y, pred, labels=labels)
    )
    p, r, f, s = skm.precision_recall_fscore_support(
        y, pred, labels=labels, average=None, zero_division=0
    )
    for k in range(n_classes):
        row = ours["per_class"][f"c{k}"]
        np.testing.assert_allclose(
            [row["precision"], row["recall"], row["f1"]], [p[k], r[k], f[k]], rtol=RTOL
        )
        assert row["support"] == s[k]


@pytest.mark.parametrize("name", ALL_PRESENT)
def test_classification_matches_sklearn(name: str) -> None:
    y, proba = _case(name)
    ours = _ours(y, proba)
    _check_label_metrics(ours, y, proba)
    if proba.shape[1] == 2:
        auc = skm.roc_auc_score(y, proba[:, 1])
        ap = skm.average_precision_score(y, proba[:, 1])
    else:
        auc = skm.roc_auc_score(y, proba, multi_class="ovr", average="macro")
        onehot = label_binarize(y, classes=list(range(proba.shape[1])))
        ap = skm.average_precision_score(onehot, proba, average="macro")
    np.testing.assert_allclose(ours["roc_auc"], auc, rtol=RTOL)
    np.testing.assert_allclose(ours["average_precision"], ap, rtol=RTOL)


# sklearn warns about predicted classes missing from y_true; we do not
@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("name", SOME_ABSENT)
def test_absent_class_is_skipped_in_ranking_macro(name: str) -> None:
    y, proba = _case(name)
    assert 2 not in y
    ours = _ours(y, proba)
    _check_label_metrics(ours, y, proba)
    present = np.unique(y)
    auc = np.mean([skm.roc_auc_score(y == k, proba[:, k]) for k in present])
    ap = np.mean([skm.average_precision_score(y == k, proba[:, k]) for k in present])
    np.testing.assert_allclose(ours["roc_auc"], auc, rtol=RTOL)
    np.testing.assert_allclose(ours["average_precision"], ap, rtol=RTOL)


def test_never_predicted_class_scores_zero_without_warning() -> None:
    y, proba = _case("multi5_never_predicted")
    assert 1 not in proba.argmax(axis=1) and 1 in y
    row = _ours(y, proba)["per_class"]["c1"]
    assert row["precision"] == 0.0 and row["recall"] == 0.0 and row["f1"] == 0.0


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_single_class_ranking_metrics_are_nan() -> None:
    y = np.zeros(20, dtype=int)
    proba = _softmax(np.random.default_rng(0).normal(size=(20, 2)))
    ours = _ours(y, proba)
    assert np.isnan(ours["roc_auc"]) and np.isnan(ours["average_precision"])
    assert ours["balanced_accuracy"] == skm.balanced_accuracy_score(y, proba.argmax(1))


def test_log_loss_clips_like_sklearn() -> None:
    y = np.array([0, 1, 1, 0])
    proba = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    np.testing.assert_allclose(_ours(y, proba)["log_loss"], skm.log_loss(y, proba), rtol=RTOL)
    p32 = proba.astype(np.float32)
    np.testing.assert_allclose(_ours(y, p32)["log_loss"], skm.log_loss(y, p32), rtol=1e-6)


# --- curves -----------------------------------------------------------------


def _binary_scores(seed: int, ties: bool, imbalance: float = 0.5):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    y = (rng.random(n) < imbalance).astype(int)
    score = rng.normal(size=n) + y
    if ties:
        score = np.round(score, 0)
    return y, score


CURVE_CASES = [
    (seed, ties, imb) for seed in range(6) for ties in (False, True) for imb in (0.5, 0.1)
]


@pytest.mark.parametrize(("seed", "ties", "imbalance"), CURVE_CASES)
def test_curves_equal_sklearn(seed: int, ties: bool, imbalance: float) -> None:
    y, score = _binary_scores(seed, ties, imbalance)
    if len(np.unique(y)) < 2:
        y[0], y[-1] = 0, 1
    for ours, theirs in zip(
        M.roc_curve(y, score), skm.roc_curve(y, score, drop_intermediate=True), strict=True
    ):
        np.testing.assert_array_equal(ours, theirs)
    for ours, theirs in zip(
        M.precision_recall_curve(y, score), skm.precision_recall_curve(y, score), strict=True
    ):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_allclose(M.roc_auc_binary(y, score), skm.roc_auc_score(y, score), rtol=RTOL)
    np.testing.assert_allclose(
        M.average_precision_binary(y, score), skm.average_precision_score(y, score), rtol=RTOL
    )


def test_auc_is_mann_whitney_with_ties() -> None:
    y, score = _binary_scores(3, ties=True)
    pos, neg = score[y == 1], score[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    np.testing.assert_allclose(M.roc_auc_binary(y, score), wins / (pos.size * neg.size), rtol=RTOL)


@pytest.mark.parametrize("y", [np.zeros(6, int), np.ones(6, int)])
def test_one_class_curves_match_sklearn_values(y: np.ndarray) -> None:
    score = np.array([0.1, 0.4, 0.4, 0.8, 0.2, 0.9])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        roc = skm.roc_curve(y, score)
        pr = skm.precision_recall_curve(y, score)
    for ours, theirs in zip(M.roc_curve(y, score), roc, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    for ours, theirs in zip(M.precision_recall_curve(y, score), pr, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert np.isnan(M.roc_auc_binary(y, score))


def test_confusion_matrix() -> None:
    rng = np.random.default_rng(1)
    y, pred = rng.integers(0, 4, 100), rng.integers(0, 4, 100)
    cm = M.confusion_matrix(y, pred, 6)
    assert cm.dtype == np.int64 and cm.shape == (6, 6)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y, pred, labels=range(6)))


# --- regression -------------------------------------------------------------

SK_REGRESSION = {
    "mse": skm.mean_squared_error,
    "rmse": skm.root_mean_squared_error,
    "mae": skm.mean_absolute_error,
    "r2": skm.r2_score,
    "mape": skm.mean_absolute_percentage_error,
}


def _regression_case(seed: int, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (200,) if k is None else (200, k)
    y = rng.normal(3.0, 2.0, shape)
    pred = y + rng.normal(0.0, 0.7, shape)
    if k:
        y[:5, 0] = 0.0  # zero targets exercise MAPE's epsilon
        if k > 2:
            y[:, 2] = 1.5  # a constant target exercises R²'s finite fallback
    return y, pred


@pytest.mark.parametrize(("seed", "k"), [(0, None), (1, 1), (2, 2), (3, 3), (4, 5)])
def test_regression_matches_sklearn(seed: int, k: int | None) -> None:
    y, pred = _regression_case(seed, k)
    names = [f"t{j}" for j in range(k or 1)]
    ours = M.regression_metrics(y, pred, names)
    for key, fn in SK_REGRESSION.items():
        np.testing.assert_allclose(ours[key], fn(y, pred), rtol=RTOL, err_msg=key)
    if k and k > 1:
        for key, fn in SK_REGRESSION.items():
            raw = fn(y, pred, multioutput="raw_values")
            got = [ours["per_target"][name][key] for name in names]
            np.testing.assert_allclose(got, raw, rtol=RTOL, err_msg=key)
    else:
        assert "per_target" not in ours


def test_regression_edge_cases() -> None:
    y = np.array([2.0, 2.0, 2.0])
    assert M.regression_metrics(y, y, ["t"])["r2"] == skm.r2_score(y, y) == 1.0
    assert M.regression_metrics(y, y + [0, 0, 1], ["t"])["r2"] == 0.0
    one = M.regression_metrics(np.array([1.0]), np.array([2.0]), ["t"])
    assert np.isnan(one["r2"]) and one["mse"] == 1.0


# --- direction, errors, imports ---------------------------------------------


@pytest.mark.parametrize(
    ("metric", "want"),
    [
        ("loss", "min"),
        ("val.loss", "min"),
        ("train.log_loss", "min"),
        ("val.rmse", "min"),
        ("val.wer", "min"),
        ("val.kd_loss", "min"),
        ("val.accuracy", "max"),
        ("val.f1_macro", "max"),
        ("r2", "max"),
    ],
)
def test_direction(metric: str, want: str) -> None:
    assert M.direction(metric) == want
    assert {"loss", "mse", "perplexity", "cer"} <= M.LOWER_IS_BETTER


@pytest.mark.parametrize(
    ("y", "proba", "names"),
    [
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], ["a"]),  # names vs columns
        ([0, 3], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"]),  # label out of range
        ([0, 1, 1], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"]),  # length mismatch
        ([0, 1], [[2.0, -1.0], [0.3, 0.1]], ["a", "b"]),  # logits, not probabilities
        ([0, 1], [0.5, 0.5], ["a", "b"]),  # 1-D proba
        ([0, 1], [[np.nan, 1.0], [0.5, 0.5]], ["a", "b"]),
    ],
)
def test_bad_classification_input(y, proba, names) -> None:
    with pytest.raises(DanluError):
        M.classification_metrics(np.array(y), np.array(proba), names)


def test_bad_binary_and_regression_input() -> None:
    with pytest.raises(DanluError):
        M.roc_curve(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(DanluError):
        M.roc_auc_binary(np.array([0, 1]), np.array([0.1, np.inf]))
    with pytest.raises(DanluError):
        M.regression_metrics(np.zeros(3), np.zeros(4), ["t"])
    with pytest.raises(DanluError):
        M.regression_metrics(np.zeros((3, 2)), np.zeros((3, 2)), ["t"])


def test_import_does_not_load_sklearn() -> None:
    code = "import sys, danlu.evaluation.metrics; assert 'sklearn' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
