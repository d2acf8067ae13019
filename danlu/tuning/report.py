"""What a search shows and leaves behind: progress lines and bar, the leaderboard, trials.csv,
best.yaml, report.md with plots, and `danlu tune show`."""

from __future__ import annotations

import csv
import io
import math
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from danlu import config as config_mod
from danlu import fileio
from danlu.errors import DanluError, did_you_mean
from danlu.tuning.study import Search, counted, mask_url, open_storage, read_study_json, trial_config


@dataclass
class TuneResult:
    """What a search found: the best value, its parameters and a runnable best.yaml."""

    study_dir: Path
    study_name: str
    storage: str | None
    metric: str
    direction: str
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    best_config: Path | None  # best.yaml
    best_run: Path | None  # the best trial's run folder
    trials: list[dict[str, Any]] = field(default_factory=list)  # one row per trial, as in trials.csv
    refit: Any = None  # danlu.Run of --refit
    interrupted: bool = False

    def load_study(self) -> optuna.Study:
        return optuna.load_study(
            study_name=self.study_name, storage=open_storage(self.storage, self.study_dir)
        )


class Reporter:
    """One line per finished trial (stderr) and an overall bar on a terminal; trials.csv,
    best.yaml and report.md rewritten as each trial finishes (a search that is killed, or
    waits for a dead worker's trial to run again, has its results so far)."""

    def __init__(self, search: Search, progress: str = "auto") -> None:
        self.search = search
        self.mode = ("bar" if sys.stderr.isatty() else "lines") if progress == "auto" else progress
        self._bar: Any = None
        self.best: tuple[float, int] | None = None

    def __enter__(self) -> Reporter:
        if self.mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("[bold]trials"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                transient=True,
            )
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def start(self, study: optuna.Study) -> None:
        self._study = study
        trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
        for t in trials:
            self._track_best(t)
        if self._bar is not None:
            self._task = self._bar.add_task("", total=self.search.target, completed=counted(trials), info="")

    def _track_best(self, t: FrozenTrial) -> None:
        if t.state == TrialState.COMPLETE and t.value is not None:
            better = self.best is None or (
                t.value < self.best[0] if self.search.direction == "minimize" else t.value > self.best[0]
            )
            if better:
                self.best = (t.value, t.number)

    def trial_done(self, t: FrozenTrial) -> None:
        self._track_best(t)
        if self._bar is not None:
            best = f"best {self.best[0]:.4g} (#{self.best[1]})" if self.best else ""
            self._bar.update(self._task, advance=1, info=best)
        self.print(trial_line(t, self.search.metric, self.best))
        summarize(self.search, self._study, plots=False)

    def print(self, line: str) -> None:
        if self.mode == "quiet":
            return
        if self._bar is not None:
            self._bar.console.print(line, highlight=False, markup=False)
        else:
            print(line, file=sys.stderr, flush=True)


def trial_line(t: FrozenTrial, metric: str, best: tuple[float, int] | None = None) -> str:
    params = "  ".join(f"{_short(k)}={_fmt(v)}" for k, v in t.params.items())
    seconds = t.user_attrs.get("seconds")
    took = f"  ({seconds:.1f}s)" if seconds is not None else ""
    epochs = t.user_attrs.get("epochs")
    if t.state == TrialState.COMPLETE:
        mark = "  *" if best is not None and best[1] == t.number else ""
        return f"trial {t.number}: {metric} {t.value:.4g}  {params}  {epochs} epochs{took}{mark}"
    if t.state == TrialState.PRUNED:
        last = t.intermediate_values.get(max(t.intermediate_values)) if t.intermediate_values else None
        at = f" at epoch {max(t.intermediate_values)}" if t.intermediate_values else ""
        value = f" ({metric} {last:.4g})" if last is not None else ""
        return f"trial {t.number}: pruned{at}{value}  {params}{took}"
    return f"trial {t.number}: failed: {t.user_attrs.get('error', 'unknown error')}  {params}{took}"


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------- results
def leaderboard(trials: list[FrozenTrial], direction: str) -> list[FrozenTrial]:
    """Completed trials best first, then pruned (by their last report), then failed."""
    sign = 1 if direction == "minimize" else -1
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: sign * t.value)
    pruned = sorted((t for t in trials if t.state == TrialState.PRUNED), key=lambda t: sign * _last(t))
    other = [t for t in trials if t.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING)]
    return done + pruned + [t for t in other if not t.user_attrs.get("surplus")]


def _last(t: FrozenTrial) -> float:
    return t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else math.nan


def trial_rows(trials: list[FrozenTrial], direction: str, metric: str) -> list[dict[str, Any]]:
    """One row per trial, best first: rank, trial, state, metric, params, epochs, seconds,
    the final evaluation's metrics, run folder, error."""
    rows, rank = [], 0
    for t in leaderboard(trials, direction):
        complete = t.state == TrialState.COMPLETE
        rank += complete
        value = t.value if complete else (_last(t) if t.intermediate_values else None)
        state = "INTERRUPTED" if t.user_attrs.get("interrupted") else t.state.name
        row: dict[str, Any] = {
            "rank": rank if complete else None,
            "trial": t.number,
            "state": state,
            metric: value,
        }
        row.update(t.params)
        row["epochs"] = t.user_attrs.get("epochs")
        row["seconds"] = t.user_attrs.get("seconds")
        ev = dict(t.user_attrs.get("eval") or {})
        split = ev.pop("split", None) or "test"
        row.update({f"{split}.{k}": v for k, v in ev.items() if f"{split}.{k}" not in row})
        row["run"] = t.user_attrs.get("run")
        row["error"] = t.user_attrs.get("error")
        rows.append(row)
    return rows


def summarize(search: Search, study: optuna.Study, plots: bool = True) -> TuneResult:
    """trials.csv, best.yaml and report.md (+ plots) from the study's trials."""
    d = search.study_dir
    trials = study.get_trials(deepcopy=False)
    rows = trial_rows(trials, search.direction, search.metric)
    _write_csv(d / "trials.csv", rows)
    result = TuneResult(
        d,
        search.study_name,
        search.storage,
        search.metric,
        search.direction,
        None,
        {},
        None,
        None,
        None,
        rows,
    )
    complete = leaderboard([t for t in trials if t.state == TrialState.COMPLETE], search.direction)
    if complete:
        best = complete[0]
        values = {p.key: p.decode(best.params[p.key]) for p in search.params if p.key in best.params}
        raw = trial_config(search, values, search.cfg.name, search.cfg.output.dir)
        raw["output"] = search.raw["output"]
        text = config_mod.validate(raw, "best.yaml").to_yaml()
        header = (
            f"# best of study '{search.study_name}': trial {best.number}, {search.metric} {best.value:.6g}\n"
            f"# run it with: danlu train {d / 'best.yaml'}\n"
        )
        fileio.write_text(d / "best.yaml", header + text)
        run = best.user_attrs.get("run")
        result.best_value, result.best_params, result.best_trial = best.value, values, best.number
        result.best_config = d / "best.yaml"
        result.best_run = d / run if run else None
    _write_report(search, study, rows, result, plots)
    return result


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r)) or ["trial", "state"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, restval="", lineterminator="\n")
    w.writeheader()
    w.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    fileio.write_text(path, buf.getvalue())


def _write_report(
    search: Search, study: optuna.Study, rows: list[dict[str, Any]], result: TuneResult, plots: bool
) -> None:
    t = search.tune
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"].lower()] = counts.get(r["state"].lower(), 0) + 1
    lines = [
        f"# danlu study {search.study_name}",
        "",
        "| | |",
        "| --- | --- |",
        f"| metric | {search.metric} ({search.direction}) |",
        f"| sampler / pruner | {t.sampler} / {t.pruner} |",
        f"| trials | {', '.join(f'{v} {k}' for k, v in counts.items()) or 'none'} |",
    ]
    if result.best_trial is not None:
        lines += [
            f"| best | trial {result.best_trial}: {result.best_value:.6g} |",
            "| best config | [best.yaml](best.yaml): `danlu train best.yaml` |",
            "",
            "## Best parameters",
            "",
            *(f"- `{k}`: `{v}`" for k, v in result.best_params.items()),
        ]
    keys = ["rank", "trial", search.metric, *(p.key for p in search.params), "epochs", "seconds", "state"]
    lines += ["", "## Trials", "", "| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += [
        "| " + " | ".join("" if r.get(k) is None else _fmt(r[k]) for k in keys) + " |" for r in rows[:50]
    ]
    made = _plots(study, search, search.study_dir / "plots") if plots else []
    if made:
        lines += ["", "## Plots", "", *(f"![{title}](plots/{name})" for name, title in made)]
    fileio.write_text(search.study_dir / "report.md", "\n".join(lines) + "\n")


def _fit(fig: Any, panels: int) -> None:
    """Room for every panel, and readable axes: log axes label their decades only (the
    2x, 3x ... minor labels run into each other), long category names are slanted. A
    figure with a colour bar (the slice plot) keeps its own layout: tight_layout cannot
    place one beside several panels and draws it over the last."""
    from matplotlib.ticker import NullFormatter

    width, height = fig.get_size_inches()
    fig.set_size_inches(max(width, 8, 3.5 * panels + 1.5), max(height, 5))
    for ax in fig.axes:
        if ax.get_xscale() == "log":
            ax.xaxis.set_minor_formatter(NullFormatter())
        labels = ax.get_xticklabels()
        if any(len(label.get_text()) > 6 for label in labels):
            ax.tick_params(axis="x", labelrotation=25)
    if panels == 1 or not any(ax.get_label() == "<colorbar>" for ax in fig.axes):
        fig.tight_layout()


def _plots(study: optuna.Study, search: Search, folder: Path) -> list[tuple[str, str]]:
    """Optuna's matplotlib plots as PNGs; a plot that does not apply (too few trials) is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    folder.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    wanted: list[tuple[str, str, Callable[[], Any]]] = [
        ("history.png", "optimization history", lambda: vis.plot_optimization_history(study)),
    ]
    if len(complete) >= 2 and len(search.params) >= 2:
        wanted += [
            ("importances.png", "parameter importances", lambda: vis.plot_param_importances(study)),
            ("parallel.png", "parallel coordinates", lambda: vis.plot_parallel_coordinate(study)),
        ]
    wanted.append(("slice.png", "slice", lambda: vis.plot_slice(study)))
    if any(t.state == TrialState.PRUNED for t in trials):
        wanted.append(
            ("intermediate.png", "intermediate values", lambda: vis.plot_intermediate_values(study))
        )
    made = []
    for name, title, draw in wanted:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna.visualization.matplotlib is "experimental"
                ax = draw()
            panels = list(ax.flat) if hasattr(ax, "flat") else [ax]
            fig = panels[0].figure
            _fit(fig, len(panels))
            fig.savefig(folder / name, dpi=100, bbox_inches="tight")
            made.append((name, title))
        except Exception:  # e.g. importances when no parameter varies: no plot, not a failed search
            pass
        finally:
            plt.close("all")
    return made


def print_leaderboard(
    rows: list[dict[str, Any]], metric: str, direction: str, params: list[str], top: int = 20
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)  # piped to a file: no 80-column squeeze of the parameters
    if not rows:
        console.print("no trials yet")
        return
    short = [_short(k) for k in params]
    names = short if len(set(short)) == len(short) else params
    arrow = "↓" if direction == "minimize" else "↑"
    table = Table("rank", "trial", f"{metric} {arrow}", *names, "epochs", "time", "state")
    for r in rows[:top]:
        state = r["state"].lower()
        if r.get("error") and r["state"] == "FAIL":
            state += f": {r['error']}"
        table.add_row(
            "" if r["rank"] is None else str(r["rank"]),
            str(r["trial"]),
            "" if r.get(metric) is None else f"{r[metric]:.4f}",
            *("" if r.get(k) is None else _fmt(r[k]) for k in params),
            "" if r.get("epochs") is None else str(r["epochs"]),
            "" if r.get("seconds") is None else f"{r['seconds']:.1f}s",
            state,
        )
    console.print(table)
    if len(rows) > top:
        console.print(f"... and {len(rows) - top} more trials (trials.csv has them all)")


@dataclass
class StudySummary:
    study: str
    metric: str
    direction: str
    params: list[str]
    rows: list[dict[str, Any]]
    best_config: str | None = None  # best.yaml path, or the best config's YAML text for a URL


def show(target: str | Path, study: str | None = None) -> StudySummary:
    """The leaderboard of a study folder or of a study in a storage URL."""
    folder = Path(target)
    meta: dict[str, Any] = {}
    if folder.is_dir():
        if not (folder / "study.json").is_file():
            raise DanluError(f"{folder}: not a danlu study folder (no study.json)")
        meta = read_study_json(folder)
        storage = open_storage(meta.get("storage"), folder)
        name = study or meta["study"]
    elif "://" in str(target):
        storage = open_storage(str(target), folder)
        names = optuna.study.get_all_study_names(storage)
        if study is None and len(names) != 1:
            raise DanluError(
                f"{mask_url(str(target))}: give --study NAME; the storage holds:"
                f" {', '.join(names) or 'no studies'}"
            )
        name = study or names[0]
    else:
        raise DanluError(f"{target}: no such study folder, and not a storage URL (e.g. postgresql://host/db)")
    try:
        s = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.study.get_all_study_names(storage)
        raise DanluError(
            f"--study {name}: not in {target}{did_you_mean(name, names)};"
            f" it holds: {', '.join(names) or 'none'}"
        ) from None
    attrs = s.user_attrs.get("danlu") or {}
    metric = attrs.get("metric") or meta.get("metric") or "value"
    direction = s.direction.name.lower()
    trials = s.get_trials(deepcopy=False)
    params = list(dict.fromkeys(k for t in trials for k in t.params))
    summary = StudySummary(name, metric, direction, params, trial_rows(trials, direction, metric))
    best = leaderboard([t for t in trials if t.state == TrialState.COMPLETE], direction)
    if folder.is_dir() and (folder / "best.yaml").is_file():
        summary.best_config = str(folder / "best.yaml")
    elif best and attrs.get("config"):
        raw = yaml.safe_load(attrs["config"])
        raw.pop("tune", None)
        for key, value in (best[0].user_attrs.get("values") or {}).items():
            config_mod.set_path(raw, key, value, "tune.space")
        summary.best_config = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    return summary
