"""What `danlu explain` leaves in the run folder: a global feature-importance bar plot
(plots/explain_<method>.png) and its section of report.md, replaced when the same method
runs again (between `<!-- explain:<method> -->` markers), other sections kept."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from danlu.fileio import atomic_path, write_text

MAX_BARS = 30
TITLES = {
    "ig": "Integrated Gradients: mean |attribution| per feature",
    "shap": "Shapley values: mean |attribution| per feature",
    "occlusion": "Occlusion: mean |f(x) - f(x with the feature at the baseline)|",
    "permutation": "Permutation importance: drop in the score when the feature is shuffled",
}


def plot_importance(importance: Any, path: Path, title: str) -> Path:
    """Horizontal bars, the largest at the top (at most MAX_BARS)."""
    from matplotlib.figure import Figure

    top = importance.sort_values(ascending=False).iloc[:MAX_BARS][::-1]
    fig = Figure(figsize=(6.4, 0.8 + 0.28 * len(top)), layout="constrained")
    ax = fig.subplots()
    ax.barh([str(n) for n in top.index], top.to_numpy(), color="#4477aa")
    ax.set_title(title, fontsize=10)
    ax.axvline(0, color="black", linewidth=0.6)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def section(
    method: str,
    importance: Any,
    info: dict[str, Any],
    plot: Path | None,
    report: Path,
    source: str,
    page: Path | None = None,
) -> str:
    lines = [f"<!-- explain:{method} -->", f"## Explanations: {method} ({source})", ""]
    if plot is not None:
        lines += [f"![{TITLES[method]}]({plot.relative_to(report.parent).as_posix()})", ""]
    if page is not None:
        lines += [
            f"Each row coloured per token: [{page.name}]({page.relative_to(report.parent).as_posix()})",
            "",
        ]
    pngs = [p for p in info.pop("pngs", [])][:8]
    if pngs:  # images: the first saliency maps
        lines += [f"![saliency]({Path(p).relative_to(report.parent).as_posix()})" for p in pngs] + [""]
    what = "token" if page is not None else "image" if pngs else "feature"
    lines += [f"| {what} | importance |", "| --- | --- |"]
    for name, v in importance.sort_values(ascending=False).iloc[:MAX_BARS].items():
        lines.append(f"| {name} | {v:.4g} |")
    lines.append("")
    for k, v in info.items():
        lines.append(f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}")
    lines += ["", f"<!-- /explain:{method} -->", ""]
    return "\n".join(lines)


def add_to_report(
    run: Any, method: str, importance: Any, info: dict[str, Any], source: str, page: Path | None = None
) -> Path:
    """Draw the plot and put the method's section into the run's report.md."""
    finite = importance[np.isfinite(importance.to_numpy(dtype=float))]
    plot = (
        plot_importance(finite, run.plots / f"explain_{method}.png", TITLES[method]) if len(finite) else None
    )
    text = (
        run.report.read_text(encoding="utf-8") if run.report.exists() else f"# danlu run {run.path.name}\n\n"
    )
    body = section(method, importance, info, plot, run.report, source, page)
    marked = re.compile(rf"<!-- explain:{method} -->.*?<!-- /explain:{method} -->\n?", re.S)
    text = marked.sub(lambda _: body, text) if marked.search(text) else text.rstrip("\n") + "\n\n" + body
    write_text(run.report, text)
    return run.report
