"""report.md of a recommendation run: the metric table with the floor beside the model, the
protocol, the data (interactions per split, duplicates merged, unseen ids), metric@K curves of
the model and the floor and a histogram of per-user NDCG (plots/, PNG), and ten example users
with their history and recommendations (titles when the data has them); and predictions.csv,
every evaluated user's top K."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from danlu import fileio

EXAMPLES = 10  # users shown in the report
HISTORY = 5  # of their training items (best rated, then latest)


def write_report(
    run: Any,
    cfg: Any,
    rec: Any,
    frames: dict[str, pd.DataFrame],
    split: str,
    summary: dict[str, Any],
    per_user: np.ndarray,
    curves: dict[str, dict[str, float]] | None = None,
) -> None:
    objective = rec.index.objective
    model_name = cfg.model.type
    ((floor_name, floor),) = summary["floor"].items()
    lines = [f"# {run.path.name}: recommendation ({model_name})", ""]
    lines += ["## Protocol", ""] + [f"- {k}: {v}" for k, v in summary["protocol"].items()] + [""]
    lines += [
        f"## Metrics ({split} split, {summary['rows']} {'ratings' if objective == 'rating' else 'users'})",
        "",
    ]
    lines += [f"| metric | {model_name} | {floor_name} (floor) |", "| --- | --- | --- |"]
    for name, value in summary["metrics"].items():
        other = floor.get(name)
        lines.append(f"| {name} | {value:.4f} | {'' if other is None else f'{other:.4f}'} |")
    if len(per_user):
        hist, edges = np.histogram(per_user, bins=5, range=(0.0, 1.0))
        k = summary["protocol"]["k"][0]
        lines += [
            "",
            f"Users by NDCG@{k}: "
            + ", ".join(f"{a:.1f}-{b:.1f}: {n}" for a, b, n in zip(edges[:-1], edges[1:], hist, strict=True)),
        ]
    if curves:
        lines += ["", *_plots(run, curves, per_user, summary["protocol"]["k"][0])]
    info = summary["data"]
    lines += ["", "## Data", "", f"- {info['users']} users and {info['items']} items in training"]
    lines.append("- interactions: " + ", ".join(f"{k} {v}" for k, v in info["interactions"].items()))
    lines.append(
        f"- duplicate (user, item) rows merged: {info['duplicates_merged']} (data.duplicates: "
        f"{cfg.data.duplicates})"
    )
    for name, unseen in info["unseen"].items():
        lines.append(f"- unseen in training, {name}: " + ", ".join(f"{k} {v}" for k, v in unseen.items()))
    if objective == "ranking":
        lines += ["", "## Example users", ""] + _examples(rec, frames, split)
        _write_predictions(run, rec, frames[split], max(cfg.eval.k))
    fileio.write_text(run.report, "\n".join(lines) + "\n")


def _label(index: Any, items: list[str]) -> list[str]:
    if index.catalog is None:
        return list(items)
    titles = dict(zip(index.catalog["item"], index.catalog["title"], strict=True))
    return [f"{titles.get(i, i)}" for i in items]


def _examples(rec: Any, frames: dict[str, pd.DataFrame], split: str) -> list[str]:
    index = rec.index
    users = [u for u in pd.unique(frames[split]["user"]) if u in index.user_index][:EXAMPLES]
    if not users:
        return ["(no user of this split was seen in training)"]
    recs = rec.recommend(users, k=min(10, index.n_items))
    train = frames["train"]
    keys = [c for c in ("rating", "timestamp") if c in train.columns]
    lines = []
    for u in users:
        mine = train[train["user"] == u]
        if keys:
            mine = mine.sort_values(keys, ascending=False)
        held = frames[split][frames[split]["user"] == u]["item"].tolist()
        top = recs[recs["user"] == u]["item"].tolist()
        hits = set(top) & set(held)
        lines += [
            f"### user {u}",
            "",
            f"- history ({len(mine)} items; {HISTORY} shown): "
            + "; ".join(_label(index, mine["item"].head(HISTORY).tolist())),
        ]
        shown = [f"{t}{' ✓' if i in hits else ''}" for i, t in zip(top, _label(index, top), strict=True)]
        lines += [f"- recommended (✓ in the {split} split): " + "; ".join(shown), ""]
    return lines


def _write_predictions(run: Any, rec: Any, frame: pd.DataFrame, k: int) -> None:
    users = [u for u in pd.unique(frame["user"]) if u in rec.index.user_index]
    if users:
        fileio.write_text(run.predictions, rec.recommend(users, k=k).to_csv(index=False))


CURVES = ("ndcg", "hr", "recall", "precision")


def _plots(run: Any, curves: dict[str, dict[str, float]], per_user: np.ndarray, k: int) -> list[str]:
    """metric_at_k.png (each metric against K, the model solid, the floor dashed) and, under
    the full protocol, ndcg_per_user.png; returns the report lines that embed them."""
    from danlu.evaluation.report import new_figure, save_png

    names = [m for m in CURVES if any(key.startswith(f"{m}@") for key in next(iter(curves.values())))]
    fig, axes = new_figure(1, len(names), 3.2, 3.0)
    for ax, m in zip(axes[0], names, strict=True):
        for i, (model, values) in enumerate(curves.items()):
            ks = sorted(int(key.split("@")[1]) for key in values if key.startswith(f"{m}@"))
            ax.plot(ks, [values[f"{m}@{x}"] for x in ks], "o-" if i == 0 else "s--", ms=3, label=model)
        ax.set_xscale("log")
        ax.set_xlabel("K")
        ax.set_title(f"{m.upper() if m in ('hr', 'ndcg') else m.capitalize()}@K")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    save_png(fig, run.plots / "metric_at_k.png")
    lines = ["## Metrics at K", "", "![metric@K](plots/metric_at_k.png)", ""]
    if len(per_user):
        fig, axes = new_figure(1, 1, 4.5, 3.0)
        ax = axes[0][0]
        ax.hist(per_user, bins=20, range=(0.0, 1.0), color="#4472c4")
        ax.set_xlabel(f"NDCG@{k} of a user")
        ax.set_ylabel("users")
        save_png(fig, run.plots / "ndcg_per_user.png")
        lines += [f"![NDCG@{k} per user](plots/ndcg_per_user.png)", ""]
    return lines
