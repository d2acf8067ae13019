"""`danlu explain RUN (--input FILE | --split NAME) [--method M] [--target T] [--output FILE]`:
the rows' attributions as a table (stdout or --output), and the run's report.md section."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from danlu import fileio
from danlu.errors import DanluError
from danlu.explain import Explanation, check_method, explainer


def run_command(
    run_dir: Path,
    input: Path | None,
    split: str | None,
    method: str | None,
    target: str | None,
    trust_code: bool,
    report: bool,
    echo: Callable[[str], None],
) -> Explanation:
    """Explain the rows; add the method's section to the run's report; `echo` the summary line."""
    if (input is None) == (split is None):
        raise DanluError(
            "give the rows to explain: --input FILE, or --split NAME for one of the run's splits"
        )
    ex = explainer(run_dir, trust_code)
    method = method or ex.methods[0]  # the kind's first: ig, or occlusion for audio
    check_method(method, ex.methods, ex.kind)  # before any data is read
    if report and hasattr(ex, "png_dir"):  # images: one saliency PNG per image, in the run's plots/
        ex.png_dir = ex.run.plots / f"explain_{method}"
    if input is not None:
        rows, where, source = ex.read(input), str(input), Path(input).name
    else:
        rows, where, source = ex.split(split), f"{split} split", f"{split} split"
    result = ex.explain(rows, method=method, target=target, where=where)
    if report:
        from danlu.explain.report import add_to_report

        page = None
        if result.html is not None:  # text: the sentences coloured per token
            page = ex.run.plots / f"explain_{method}.html"
            page.parent.mkdir(parents=True, exist_ok=True)
            fileio.write_text(page, result.html)
        path = add_to_report(ex.run, method, result.importance, result.info, source, page)
        result.info["report"] = str(path)
    echo(summary_line(result))
    return result


def summary_line(e: Explanation) -> str:
    info = e.info
    parts = [f"{e.method}: {info.get('rows', len(e.frame))} rows"]
    if "completeness_within_1pct" in info:
        parts.append(
            f"completeness within 1% on {100 * info['completeness_within_1pct']:.1f}% of rows"
            f" (largest error {100 * info['completeness_max_error']:.2g}%)"
        )
    if "steps_max" in info:
        parts.append(f"IG steps {info['steps_min']}-{info['steps_max']}")
    if "metric" in info:
        parts.append(f"{info['metric']} {info['score']:.4g} before shuffling")
    if "report" in info:
        parts.append(f"report: {info['report']}")
    return "; ".join(parts)
