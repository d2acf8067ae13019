"""Classification and regression metrics in plain numpy.

The numbers match scikit-learn (tests/test_metrics.py checks them against it), but
sklearn is not imported here: it costs seconds at import time and emits warnings
for cases we would rather answer quietly.

Conventions where sklearn warns or raises:

* zero division in precision / recall / F1 gives 0.0, like `zero_division=0`;
* macro averages of precision / recall / F1 run over the classes that occur in
  `y_true` or in the predictions, like sklearn's default `labels=None`: a class the
  model neither saw nor predicted says nothing about it either way;
* ROC AUC of a class is undefined when `y_true` has no positive or no negative for
  it, average precision when it has no positive. Undefined classes are left out of
  the macro average; when none is defined the result is NaN.
"""

from __future__ import annotations

import numpy as np

from danlu.errors import DanluError

LOWER_IS_BETTER: frozenset[str] = frozenset(
    {"loss", "log_loss", "nll", "mse", "rmse", "mae", "mape", "perplexity", "wer", "cer"}
)


def direction(metric: str) -> str:
    """'min' or 'max': which way `metric` improves. 'val.loss' is judged by 'loss'."""
    name = metric.rsplit(".", 1)[-1].lower()
    # custom losses ("ce_loss", "kd_loss") are still losses
    if name in LOWER_IS_BETTER or name.endswith("_loss"):
        return "min"
    return "max"


# ---------------------------------------------------------------------------
# validation


def _labels(y: np.ndarray, n_classes: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise DanluError(f"{what} must be one-dimensional, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise DanluError(f"{what} must hold integer class indices")
        y = y.astype(np.int64)
    outside = y[(y < 0) | (y >= n_classes)]
    if outside.size:
        raise DanluError(f"{what} holds class index {int(outside[0])}, outside 0..{n_classes - 1}")
    return y.astype(np.int64, copy=False)


def _binary_inputs(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    score = np.asarray(score)
    if y_true.ndim != 1 or score.shape != y_true.shape:
        raise DanluError(
            f"y_true and score must be 1-D of equal length, got {y_true.shape} and {score.shape}"
        )
    if y_true.size == 0:
        raise DanluError("no samples to score")
    if not np.isin(y_true, (0, 1)).all():
        raise DanluError("y_true for a binary curve must hold only 0 and 1")
    if not np.all(np.isfinite(score)):
        raise DanluError("score holds NaN or infinite values")
    return y_true.astype(bool), score


# ---------------------------------------------------------------------------
# confusion matrix and threshold curves


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes), int64; rows are true classes, columns predicted."""
    y_true = _labels(y_true, n_classes, "y_true")
    y_pred = _labels(y_pred, n_classes, "y_pred")
    if y_true.shape != y_pred.shape:
        raise DanluError(f"y_true has {y_true.size} samples but y_pred has {y_pred.size}")
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).astype(np.int64)


def _counts_at_thresholds(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive counts when predicting positive for score >= each threshold.

    Thresholds are the distinct scores, decreasing; tied samples enter together, which
    is what makes the curves (and the AUC) tie-aware.
    """
    y_true, score = _binary_inputs(y_true, score)
    order = np.argsort(-score, kind="stable")
    score = score[order]
    hits = y_true[order].astype(np.float64)
    last_of_tie = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]
    tps = np.cumsum(hits)[last_of_tie]
    fps = 1.0 + last_of_tie - tps
    return fps, tps, score[last_of_tie]


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fpr, tpr, thresholds as sklearn.metrics.roc_curve (drop_intermediate=True).

    The first threshold is +inf (nothing predicted positive). Without negatives fpr is
    all NaN, without positives tpr is (sklearn's values, minus its warning).
    """
    fps, tps, thresholds = _counts_at_thresholds(y_true, score)
    if fps.size > 2:
        # points collinear with their neighbours never show on the curve
        corner = np.logical_or(np.diff(fps, 2), np.diff(tps, 2))
        keep = np.flatnonzero(np.r_[True, corner, True])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps = np.r_[0.0, fps]
    tps = np.r_[0.0, tps]
    thresholds = np.r_[np.inf, thresholds.astype(np.float64)]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thresholds


def precision_recall_curve(
    y_true: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """precision, recall, thresholds as sklearn.metrics.precision_recall_curve.

    Recall decreases; the last point is (recall 0, precision 1) and has no threshold.
    """
    fps, tps, thresholds = _counts_at_thresholds(y_true, score)
    predicted = tps + fps
    precision = np.divide(tps, predicted, out=np.zeros_like(tps), where=predicted != 0)
    # sklearn's convention when there is no positive at all
    recall = tps / tps[-1] if tps[-1] > 0 else np.ones_like(tps)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def roc_auc_binary(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve, ties counted as half (Mann-Whitney U / (n_pos n_neg)).

    NaN when y_true holds only one class.
    """
    y, _ = _binary_inputs(y_true, score)
    if y.all() or not y.any():
        return float("nan")
    fpr, tpr, _ = roc_curve(y_true, score)
    # the trapezoid rule over the tie-grouped curve is exactly the Mann-Whitney
    # statistic, and the same float operations sklearn uses
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def average_precision_binary(y_true: np.ndarray, score: np.ndarray) -> float:
    """Sum over thresholds of precision times the recall gained (no interpolation).

    NaN when y_true holds no positive (sklearn would return 0.0 with a warning).
    """
    y, _ = _binary_inputs(y_true, score)
    if not y.any():
        return float("nan")
    precision, recall, _ = precision_recall_curve(y_true, score)
    # clipped because rounding can give -0.0
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


# ---------------------------------------------------------------------------
# classification


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def _check_proba(
    y_true: np.ndarray, proba: np.ndarray, class_names: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    proba = np.asarray(proba)
    if proba.ndim != 2:
        raise DanluError(f"proba must be 2-D (samples, classes), got shape {proba.shape}")
    n, n_classes = proba.shape
    if n_classes < 2:
        raise DanluError(f"classification needs at least 2 classes, got {n_classes}")
    if len(class_names) != n_classes:
        raise DanluError(f"{len(class_names)} class names given but proba has {n_classes} columns")
    if n == 0:
        raise DanluError("no samples to evaluate")
    y_true = _labels(y_true, n_classes, "y_true")
    if y_true.size != n:
        raise DanluError(f"y_true has {y_true.size} samples but proba has {n}")
    if not np.issubdtype(proba.dtype, np.floating):
        proba = proba.astype(np.float64)
    if not np.all(np.isfinite(proba)):
        raise DanluError("proba holds NaN or infinite values")
    # a generous tolerance: float32 softmax outputs are not exactly normalised
    if proba.min() < -1e-6 or proba.max() > 1 + 1e-6 or not np.allclose(proba.sum(1), 1, atol=1e-3):
        raise DanluError("proba rows must be probabilities summing to 1 (apply softmax to logits)")
    return y_true, proba


def _prf(cm: np.ndarray) -> dict[str, np.ndarray]:
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    return {
        "precision": _safe_div(tp, predicted),
        "recall": _safe_div(tp, support),
        # 2tp / (2tp + fp + fn): defined even where precision or recall is not
        "f1": _safe_div(2 * tp, support + predicted),
        "support": support,
        "predicted": predicted,
    }


def _averages(prf: dict[str, np.ndarray], cm: np.ndarray) -> dict[str, float]:
    support, predicted = prf["support"], prf["predicted"]
    seen = (support + predicted) > 0
    out: dict[str, float] = {}
    for key in ("precision", "recall", "f1"):
        out[f"{key}_macro"] = float(np.mean(prf[key][seen]))
    # single-label: every error is one false positive and one false negative, so
    # micro precision, recall and F1 all equal accuracy
    micro = float(np.trace(cm) / cm.sum())
    for key in ("precision", "recall", "f1"):
        out[f"{key}_micro"] = micro
    for key in ("precision", "recall", "f1"):
        out[f"{key}_weighted"] = float(np.average(prf[key], weights=support))
    return out


def _macro_over_defined(scores: list[float]) -> float:
    defined = [s for s in scores if not np.isnan(s)]
    return float(np.mean(defined)) if defined else float("nan")


def _ranking_scores(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    n_classes = proba.shape[1]
    if n_classes == 2:
        positive = (y_true == 1).astype(np.int64)
        return {
            "roc_auc": roc_auc_binary(positive, proba[:, 1]),
            "average_precision": average_precision_binary(positive, proba[:, 1]),
        }
    aucs, aps = [], []
    for k in range(n_classes):
        is_k = (y_true == k).astype(np.int64)
        aucs.append(roc_auc_binary(is_k, proba[:, k]))
        aps.append(average_precision_binary(is_k, proba[:, k]))
    return {"roc_auc": _macro_over_defined(aucs), "average_precision": _macro_over_defined(aps)}


def _log_loss(y_true: np.ndarray, proba: np.ndarray) -> float:
    # sklearn clips to the machine epsilon of the input dtype, without renormalising
    eps = np.finfo(proba.dtype).eps
    p = np.clip(proba[np.arange(y_true.size), y_true].astype(np.float64), eps, 1 - eps)
    return float(-np.mean(np.log(p)))


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, class_names: list[str]) -> dict:
    """Flat dict of float metrics plus 'per_class' and 'confusion_matrix'.

    y_true: (n,) class indices; proba: (n, C) probabilities, column k for class k
    (binary: C == 2, column 1 positive). Predictions are the argmax.
    """
    y_true, proba = _check_proba(y_true, proba, class_names)
    n_classes = proba.shape[1]
    cm = confusion_matrix(y_true, proba.argmax(axis=1), n_classes)
    prf = _prf(cm)
    present = prf["support"] > 0

    out: dict = {
        "accuracy": float(np.trace(cm) / cm.sum()),
        # like sklearn: mean recall over the classes that occur in y_true
        "balanced_accuracy": float(np.mean(prf["recall"][present])),
    }
    out.update(_averages(prf, cm))
    out.update(_ranking_scores(y_true, proba))
    out["log_loss"] = _log_loss(y_true, proba)
    out["per_class"] = {
        name: {
            "precision": float(prf["precision"][k]),
            "recall": float(prf["recall"][k]),
            "f1": float(prf["f1"][k]),
            "support": int(prf["support"][k]),
        }
        for k, name in enumerate(class_names)
    }
    out["confusion_matrix"] = cm.tolist()
    return out


# ---------------------------------------------------------------------------
# regression


def _as_columns(y: np.ndarray, what: str) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise DanluError(f"{what} must be (n,) or (n, targets), got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise DanluError(f"{what} holds NaN or infinite values")
    return y


def _per_output(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, np.ndarray]:
    err = y_pred - y_true
    mse = np.mean(err**2, axis=0)
    # sklearn's guard against division by zero targets: huge, but finite
    mape = np.mean(np.abs(err) / np.maximum(np.abs(y_true), np.finfo(np.float64).eps), axis=0)
    return {
        "mse": mse,
        "rmse": np.sqrt(mse),
        "mae": np.mean(np.abs(err), axis=0),
        "r2": _r2(y_true, err),
        "mape": mape,
    }


def _r2(y_true: np.ndarray, err: np.ndarray) -> np.ndarray:
    if y_true.shape[0] < 2:
        return np.full(y_true.shape[1], np.nan)
    residual = np.sum(err**2, axis=0)
    total = np.sum((y_true - y_true.mean(axis=0)) ** 2, axis=0)
    # sklearn's force_finite: a constant target scores 1 if predicted exactly, else 0
    r2 = np.where(residual == 0, 1.0, 0.0)
    ok = (total != 0) & (residual != 0)
    r2[ok] = 1 - residual[ok] / total[ok]
    return r2


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, target_names: list[str]) -> dict:
    """mse, rmse, mae, r2, mape averaged uniformly over targets; 'per_target' when k > 1.

    rmse is the mean of per-target RMSEs (as sklearn), not the root of the mean MSE.
    r2 is NaN with fewer than two samples.
    """
    y_true = _as_columns(y_true, "y_true")
    y_pred = _as_columns(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise DanluError(f"y_true has shape {y_true.shape} but y_pred has {y_pred.shape}")
    if y_true.shape[0] == 0:
        raise DanluError("no samples to evaluate")
    if len(target_names) != y_true.shape[1]:
        raise DanluError(f"{len(target_names)} target names given but there are {y_true.shape[1]} targets")
    per = _per_output(y_true, y_pred)
    out: dict = {key: float(np.mean(values)) for key, values in per.items()}
    if y_true.shape[1] > 1:
        out["per_target"] = {
            name: {key: float(values[j]) for key, values in per.items()}
            for j, name in enumerate(target_names)
        }
    return out
