"""Evaluation report: plots as PNG files and a report.md that embeds them.

Figures are built with matplotlib's object-oriented `Figure` and rendered by the Agg
(PNG) backend. pyplot is never imported: it would switch the process-wide backend (a
user's notebook included) and keep every figure alive until closed. matplotlib
itself is imported lazily, so `import danlu` stays fast.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from danlu.errors import DanluError, choose_from
from danlu.evaluation import metrics as M
from danlu.fileio import atomic_path, write_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

TASKS = ("classification", "regression")
DPI = 110
MAX_CURVES = 10  # more one-vs-rest curves than this is an unreadable tangle
MAX_TARGETS = 4
MAX_POINTS = 20_000  # scatter plots are subsampled beyond this; the picture is the same
MAX_ANNOTATED_CLASSES = 15
MAX_LABELLED_CLASSES = 30


# ---------------------------------------------------------------------------
# figure helpers


def new_figure(nrows: int, ncols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def save_png(fig: Figure, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        # the temporary name ends in .tmp, so the format cannot be guessed from it
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    return path


def _short(name: str, width: int = 20) -> str:
    name = str(name)
    return name if len(name) <= width else name[: width - 1] + "…"


# ---------------------------------------------------------------------------
# training history


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan  # blank cells of metrics.csv, None


def _columns(history: list[dict[str, float]]) -> dict[str, np.ndarray]:
    keys: dict[str, None] = {}  # ordered set: keep the CSV's column order
    for row in history:
        keys.update(dict.fromkeys(row))
    return {k: np.array([_as_float(row.get(k)) for row in history]) for k in keys}


def _x_axis(cols: dict[str, np.ndarray], n_rows: int) -> tuple[str, np.ndarray]:
    epoch = cols.get("epoch")
    # with one row per epoch, epochs read best; step-level rows repeat the epoch
    if epoch is not None and np.all(np.isfinite(epoch)) and np.all(np.diff(epoch) > 0):
        return "epoch", epoch
    step = cols.get("step")
    if step is not None and np.any(np.isfinite(step)):
        return "step", step
    if epoch is not None and np.any(np.isfinite(epoch)):
        return "epoch", epoch
    return "row", np.arange(n_rows, dtype=float)


def _families(cols: dict[str, np.ndarray]) -> list[tuple[str, list[str]]]:
    """(title, series) per subplot: losses together, then each val metric, then lr."""
    has_data = [k for k, v in cols.items() if np.any(np.isfinite(v))]
    losses = [k for k in has_data if k == "loss" or k.endswith(".loss")]
    families = [("loss", losses)] if losses else []
    for key in has_data:
        if key.startswith("val.") and key not in losses:
            metric = key.removeprefix("val.")
            train = f"train.{metric}"
            families.append((metric, [train, key] if train in has_data else [key]))
    lrs = [k for k in has_data if k == "lr" or k.startswith("lr_") or k.endswith(".lr")]
    if lrs:
        families.append(("learning rate", lrs))
    return families


def _draw_series(ax: Axes, x: np.ndarray, y: np.ndarray, label: str) -> None:
    ok = np.isfinite(x) & np.isfinite(y)
    # markers keep short runs (or a single epoch) visible
    marker = "o" if ok.sum() <= 50 else None
    ax.plot(x[ok], y[ok], marker=marker, markersize=3, label=label)


def plot_history(
    history: list[dict[str, float]], path: Path, steps: list[dict[str, float]] | None = None
) -> Path | None:
    """One subplot per metric family of metrics.csv rows; None if there is nothing to draw.

    steps: steps.csv rows (the training loss every train.log_every steps). They draw the
    training-loss curve, on a step axis, in place of the evaluations' averages of it."""
    if not history and not steps:
        return None
    cols = _columns(history)
    x_name, x = _x_axis(cols, len(history))
    curves = {k: (x, v) for k, v in cols.items()}  # key -> (x, y)
    logged = _columns(steps or [])
    if "train.loss" in logged and "step" in logged:
        x_name, x = "step", cols.get("step", np.full(len(history), np.nan))
        curves = {k: (x, v) for k, v in cols.items()}
        curves["train.loss"] = (logged["step"], logged["train.loss"])
    families = _families({k: y for k, (_, y) in curves.items()})
    if not families:
        return None
    from matplotlib.ticker import MaxNLocator

    ncols = min(3, len(families))
    nrows = math.ceil(len(families) / ncols)
    fig, axes = new_figure(nrows, ncols, 4.6, 3.4)
    for ax, (title, series) in zip(axes.flat, families, strict=False):
        for key in series:
            _draw_series(ax, *curves[key], key)
        values = np.concatenate([y[np.isfinite(y)] for y in (curves[k][1] for k in series)])
        # learning-rate schedules span decades; a log axis shows warmup and decay
        if title == "learning rate" and values.min() > 0 and values.max() / values.min() > 10:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel(x_name)
        # epochs and steps are counts: no "epoch 2.5" ticks
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(families) :]:
        ax.set_visible(False)
    fig.suptitle("Training history")
    return save_png(fig, path)


# ---------------------------------------------------------------------------
# classification plots


def _plot_confusion(cm: np.ndarray, names: list[str], path: Path) -> Path:
    n = cm.shape[0]
    support = cm.sum(axis=1, keepdims=True)
    normalized = np.divide(cm, support, out=np.zeros(cm.shape), where=support > 0)
    side = min(max(4.0, 0.45 * n + 2.5), 14.0)
    fig, axes = new_figure(1, 2, side + 1.0, side)
    panels = [(cm, "counts", "d"), (normalized, "normalized by true class", ".2f")]
    for ax, (data, title, fmt) in zip(axes[0], panels, strict=True):
        image = ax.imshow(data, cmap="Blues", vmin=0)
        fig.colorbar(image, ax=ax, shrink=0.8)
        if n <= MAX_ANNOTATED_CLASSES:
            _annotate(ax, data, fmt)
        if n <= MAX_LABELLED_CLASSES:
            labels = [_short(s) for s in names]
            ax.set_xticks(range(n), labels, rotation=45, ha="right")
            ax.set_yticks(range(n), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"Confusion matrix ({title})")
    return save_png(fig, path)


def _annotate(ax: Axes, data: np.ndarray, fmt: str) -> None:
    top = data.max() if data.size else 0
    for (i, j), value in np.ndenumerate(data):
        # white on dark cells, black on light ones
        color = "white" if top and value > top / 2 else "black"
        ax.text(j, i, format(value, fmt), ha="center", va="center", color=color, fontsize=8)


def _curve_classes(y_true: np.ndarray, names: list[str]) -> tuple[list[int], str]:
    """Classes to draw one-vs-rest curves for: all, or the most frequent MAX_CURVES."""
    if len(names) == 2:
        return [1], ""
    counts = np.bincount(y_true, minlength=len(names))
    present = [k for k in np.argsort(-counts, kind="stable") if counts[k] > 0]
    if len(present) <= MAX_CURVES:
        return sorted(present), ""
    return sorted(present[:MAX_CURVES]), f" ({MAX_CURVES} most frequent of {len(names)})"


def _plot_roc(y_true: np.ndarray, proba: np.ndarray, names: list[str], path: Path) -> Path | None:
    binary = len(names) == 2
    classes, note = _curve_classes(y_true, names)
    curves = []
    for k in classes:
        is_k = (y_true == k).astype(np.int64)
        auc = M.roc_auc_binary(is_k, proba[:, k])
        if math.isnan(auc):  # every sample in, or none: no curve to draw
            continue
        fpr, tpr, _ = M.roc_curve(is_k, proba[:, k])
        label = f"AUC = {auc:.4f}" if binary else f"{_short(names[k])} (AUC {auc:.3f})"
        curves.append((fpr, tpr, label))
    if not curves:
        return None
    fig, axes = new_figure(1, 1, 5.5, 5.0)
    ax = axes[0, 0]
    for fpr, tpr, label in curves:
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    title = f"ROC curve, {names[1]} vs {names[0]}" if binary else "ROC, one-vs-rest"
    _finish_curve(ax, title + note, "false positive rate", "true positive rate")
    return save_png(fig, path)


def _plot_pr(y_true: np.ndarray, proba: np.ndarray, names: list[str], path: Path) -> Path | None:
    binary = len(names) == 2
    classes, note = _curve_classes(y_true, names)
    curves = []
    for k in classes:
        is_k = (y_true == k).astype(np.int64)
        if not is_k.any():
            continue
        ap = M.average_precision_binary(is_k, proba[:, k])
        precision, recall, _ = M.precision_recall_curve(is_k, proba[:, k])
        label = f"AP = {ap:.4f}" if binary else f"{_short(names[k])} (AP {ap:.3f})"
        curves.append((recall, precision, label))
    if not curves:
        return None
    fig, axes = new_figure(1, 1, 5.5, 5.0)
    ax = axes[0, 0]
    for recall, precision, label in curves:
        # a step plot is what average precision integrates
        ax.step(recall, precision, where="post", label=label)
    if binary:
        # a classifier that guesses scores the positive rate
        rate = float(np.mean(y_true == 1))
        ax.axhline(rate, linestyle="--", color="grey", linewidth=1, label="chance")
    title = f"Precision-recall, {names[1]}" if binary else "Precision-recall, one-vs-rest"
    _finish_curve(ax, title + note, "recall", "precision")
    return save_png(fig, path)


def _finish_curve(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")


def _classification_plots(
    y_true: np.ndarray, proba: np.ndarray, names: list[str], plots_dir: Path
) -> list[tuple[str, Path]]:
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] != len(names) or len(names) < 2:
        raise DanluError(f"classification output must be (samples, {len(names)} classes), got {proba.shape}")
    cm = M.confusion_matrix(y_true, proba.argmax(axis=1), len(names))
    y_true = np.asarray(y_true).astype(np.int64)
    plots = [("Confusion matrix", _plot_confusion(cm, names, plots_dir / "confusion_matrix.png"))]
    roc = _plot_roc(y_true, proba, names, plots_dir / "roc_curve.png")
    if roc:
        plots.append(("ROC curve", roc))
    pr = _plot_pr(y_true, proba, names, plots_dir / "pr_curve.png")
    if pr:
        plots.append(("Precision-recall curve", pr))
    return plots


# ---------------------------------------------------------------------------
# regression plots


def _subsample(n: int) -> np.ndarray:
    if n <= MAX_POINTS:
        return np.arange(n)
    # fixed seed: the same run always draws the same picture
    return np.sort(np.random.default_rng(0).choice(n, MAX_POINTS, replace=False))


def _plot_pred_vs_true(y: np.ndarray, pred: np.ndarray, names: list[str], path: Path) -> Path:
    k = min(y.shape[1], MAX_TARGETS)
    idx = _subsample(y.shape[0])
    fig, axes = new_figure(1, k, 4.6, 4.4)
    for j, ax in enumerate(axes[0]):
        ax.scatter(y[idx, j], pred[idx, j], s=8, alpha=0.5, edgecolors="none")
        lo = min(y[:, j].min(), pred[:, j].min())
        hi = max(y[:, j].max(), pred[:, j].max())
        ax.plot([lo, hi], [lo, hi], linestyle="--", color="grey", linewidth=1, label="y = x")
        ax.set_title(_short(names[j], 30))
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper left")
    fig.suptitle("Predicted vs true" + _target_note(y.shape[1]))
    return save_png(fig, path)


def _plot_residuals(y: np.ndarray, pred: np.ndarray, names: list[str], path: Path) -> Path:
    k = min(y.shape[1], MAX_TARGETS)
    idx = _subsample(y.shape[0])
    residual = y - pred
    fig, axes = new_figure(2, k, 4.6, 3.4)
    for j in range(k):
        hist, scatter = axes[0, j], axes[1, j]
        hist.hist(residual[:, j], bins=min(50, max(5, int(np.sqrt(y.shape[0])))))
        hist.axvline(0, color="grey", linestyle="--", linewidth=1)
        hist.set_title(f"{_short(names[j], 30)}: residuals")
        hist.set_xlabel("true − predicted")
        hist.set_ylabel("count")
        scatter.scatter(pred[idx, j], residual[idx, j], s=8, alpha=0.5, edgecolors="none")
        scatter.axhline(0, color="grey", linestyle="--", linewidth=1)
        scatter.set_title(f"{_short(names[j], 30)}: residual vs predicted")
        scatter.set_xlabel("predicted")
        scatter.set_ylabel("true − predicted")
        for ax in (hist, scatter):
            ax.grid(alpha=0.3)
    fig.suptitle("Residuals" + _target_note(y.shape[1]))
    return save_png(fig, path)


def _target_note(k: int) -> str:
    return f" (first {MAX_TARGETS} of {k} targets)" if k > MAX_TARGETS else ""


def _regression_plots(
    y_true: np.ndarray, pred: np.ndarray, names: list[str], plots_dir: Path
) -> list[tuple[str, Path]]:
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    p = p[:, None] if p.ndim == 1 else p
    if y.shape != p.shape or y.ndim != 2 or p.shape[1] != len(names) or not y.size:
        raise DanluError(
            f"regression y_true {np.shape(y_true)} and predictions {np.shape(pred)} "
            f"must match, with {len(names)} target name(s)"
        )
    return [
        ("Predicted vs true", _plot_pred_vs_true(y, p, names, plots_dir / "pred_vs_true.png")),
        ("Residuals", _plot_residuals(y, p, names, plots_dir / "residuals.png")),
    ]


# ---------------------------------------------------------------------------
# markdown


def _fmt(value: Any) -> str:
    """Numbers to 4 decimals; scientific (4 significant digits) when very small or large."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return _cell(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    x = float(value)
    if not math.isfinite(x):
        return str(x)
    if x == 0 or 1e-3 <= abs(x) < 1e6:
        return f"{x:.4f}"
    return f"{x:.4g}"


def _cell(value: Any) -> str:
    # a pipe or newline inside a cell would break the table
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]], align: str = "") -> list[str]:
    header = list(header)
    rule = ["---"] + [f"---{align}" for _ in header[1:]]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def _scalar_metrics(metrics: dict) -> list[tuple[str, Any]]:
    return [
        (key, value)
        for key, value in metrics.items()
        if isinstance(value, numbers.Real) and not isinstance(value, bool)
    ]


def _nested_table(title: str, first: str, nested: dict[str, dict[str, Any]]) -> list[str]:
    fields = list(next(iter(nested.values())))
    rows = [[name, *(row.get(f, "") for f in fields)] for name, row in nested.items()]
    return ["", f"## {title}", "", *_table([first, *fields], rows, align=":")]


def _markdown(
    report_path: Path,
    title: str,
    split: str,
    metrics: dict,
    details: dict[str, str] | None,
    plots: list[tuple[str, Path]],
) -> str:
    lines = [f"# {title}"]
    if details:
        lines += ["", *_table(["", ""], [(k, str(v)) for k, v in details.items()])]
    scalars = _scalar_metrics(metrics)
    if scalars:
        lines += ["", f"## Metrics on {split}", "", *_table(["metric", "value"], scalars, ":")]
    if metrics.get("per_class"):
        lines += _nested_table("Per class", "class", metrics["per_class"])
    if metrics.get("per_target"):
        lines += _nested_table("Per target", "target", metrics["per_target"])
    if plots:
        lines += ["", "## Plots"]
    for caption, path in plots:
        link = Path(os.path.relpath(path, report_path.parent)).as_posix()
        lines += ["", f"### {caption}", "", f"![{caption}]({link})"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------


def write_report(
    report_path: Path,
    plots_dir: Path,
    *,
    title: str,
    task: str,
    split: str,
    metrics: dict,
    history: list[dict[str, float]],
    y_true: np.ndarray,
    output: np.ndarray,
    names: list[str],
    details: dict[str, str] | None = None,
    plots: bool = True,
    steps: list[dict[str, float]] | None = None,
) -> list[Path]:
    """Write the plots and report.md; return every file written (report last).
    With plots=False only the tables are written (and matplotlib is never imported).

    output: class probabilities (n, C) for classification, with `names` the classes;
    predictions (n,) or (n, k) for regression, with `names` the targets.
    """
    if task not in TASKS:
        raise choose_from(task, TASKS, "task")
    report_path, plots_dir = Path(report_path), Path(plots_dir)
    names = [str(n) for n in names]
    drawn: list = []
    if plots and task == "classification":
        drawn = _classification_plots(y_true, output, names, plots_dir)
    elif plots:
        drawn = _regression_plots(y_true, output, names, plots_dir)
    history_png = plot_history(history, plots_dir / "history.png", steps) if plots else None
    if history_png:
        drawn.append(("Training history", history_png))
    write_text(report_path, _markdown(report_path, title, split, metrics, details, drawn))
    return [path for _, path in drawn] + [report_path]
