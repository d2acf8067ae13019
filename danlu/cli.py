"""The `danlu` command: thin Typer commands over danlu.api.

A DanluError becomes one line on stderr and exit code 2 (the traceback only with
--debug); Ctrl-C during training saves a checkpoint and exits with 130.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from danlu import __version__
from danlu.errors import DanluError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="丹炉 danlu: one YAML file from data to a trained, evaluated, reloadable model.",
    epilog="Examples:\n\n  danlu init > my.yaml && danlu train my.yaml\n\n"
    "  danlu train examples/tutorial.yaml --set train.lr=0.01\n\n"
    "  danlu evaluate runs/tutorial-20261124-101500\n\n"
    "  danlu predict runs/tutorial-20261124-101500 --input rows.csv --proba",
)

Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]


@contextlib.contextmanager
def _errors(debug: bool) -> Iterator[None]:
    from danlu.training.trainer import Interrupted

    try:
        yield
    except DanluError as e:
        if debug:
            raise
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except Interrupted as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"danlu {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


@app.command(
    epilog="Examples:\n\n  danlu train examples/tutorial.yaml\n\n"
    "  danlu train examples/tutorial.yaml --set train.lr=0.01 --set model.hidden=[128,64]\n\n"
    "  danlu train --resume runs/tutorial-20261124-101500"
)
def train(
    config: Annotated[Path | None, typer.Argument(help="Run config YAML.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: key.path=value (repeatable).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Run name (default: the config's name).")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue an interrupted run from its last checkpoint.")
    ] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train a model from a YAML config; evaluate it and write the run folder."""
    with _errors(debug):
        from danlu import api
        from danlu.training.distributed import is_main_process

        run = api.train(config, set_ or [], name=name, resume=resume, progress="quiet" if quiet else "auto")
        if not is_main_process():
            return  # under torchrun only rank 0 reports
        if run.metrics and not quiet:
            _print_metrics(run.metrics)
        typer.echo(f"run folder: {run.path}")


@app.command(
    epilog="Examples:\n\n  danlu evaluate runs/tutorial-20261124-101500\n\n"
    "  danlu evaluate runs/tutorial-20261124-101500 --data new_rows.csv"
)
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    data: Annotated[
        Path | None, typer.Option(help="Evaluate on this file (same columns as training).")
    ] = None,
    split: Annotated[str, typer.Option(help="Which split of the run's data: test, val or train.")] = "test",
    debug: Debug = False,
) -> None:
    """Print the metrics table; write metrics.json, predictions.csv and the report."""
    with _errors(debug):
        from danlu import api

        result = api.evaluate(run_dir, split=split, data=data)
        _print_metrics(result)
        typer.echo(f"report: {Path(run_dir) / 'report.md'}")


@app.command(
    epilog="Examples:\n\n  danlu predict runs/wine-20261124-101500 --input rows.csv\n\n"
    "  danlu predict runs/wine-20261124-101500 --input rows.parquet --output out.csv --proba"
)
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    input: Annotated[Path, typer.Option("--input", "-i", help="CSV, TSV, Parquet or JSONL rows.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write here (format from the extension); default: CSV on stdout."
        ),
    ] = None,
    proba: Annotated[bool, typer.Option(help="Add one probability column per class.")] = False,
    debug: Debug = False,
) -> None:
    """Predict for new rows; extra input columns are passed through."""
    with _errors(debug):
        import pandas as pd

        from danlu.data.tabular import read_table
        from danlu.predict import load, prediction_frame

        predictor = load(run_dir)
        rows = read_table(input)
        out = prediction_frame(predictor, predictor.outputs(rows, str(input)), proba)
        result = pd.concat([rows.reset_index(drop=True), out], axis=1)
        if output is None:
            result.to_csv(sys.stdout, index=False)
        else:
            _write_table(result, output)
            typer.echo(f"wrote {len(result)} predictions to {output}", err=True)


@app.command(epilog="Example:\n\n  danlu runs runs/")
def runs(
    directory: Annotated[Path, typer.Argument(help="Folder holding run folders.")] = Path("runs"),
    debug: Debug = False,
) -> None:
    """List runs: name, task, model, best monitored metric, when."""
    with _errors(debug):
        from rich.console import Console
        from rich.table import Table

        from danlu.run import list_runs

        rows = list_runs(directory)
        if not rows:
            typer.echo(f"no runs in {directory}")
            return
        table = Table("run", "task", "model", "monitor", "best", "epochs", "status", "when")
        for r in rows:
            best = "" if r["best"] is None else f"{r['best']:.4g}"
            table.add_row(
                r["run"], r["task"], r["model"], r["monitor"], best, str(r["epochs"]), r["status"], r["when"]
            )
        Console().print(table)


@app.command(epilog="Examples:\n\n  danlu init > my.yaml\n\n  danlu init csv --output my.yaml")
def init(
    template: Annotated[
        str, typer.Argument(help="tabular (a built-in dataset) or csv (your own file).")
    ] = "tabular",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")
    ] = None,
    debug: Debug = False,
) -> None:
    """Write a starter config with every section commented."""
    with _errors(debug):
        from danlu import fileio
        from danlu.config import template as get_template

        text = get_template(template)
        if output is None:
            typer.echo(text, nl=False)
        else:
            if output.exists():
                raise DanluError(f"{output}: already exists; choose another --output")
            fileio.write_text(output, text)
            typer.echo(f"wrote {output}", err=True)


def _write_table(df: Any, path: Path) -> None:
    from danlu import fileio

    suffix = path.suffix.lower()
    with fileio.atomic_path(path) as tmp:
        if suffix in (".parquet", ".pq"):
            df.to_parquet(tmp, index=False)
        elif suffix in (".jsonl", ".json"):
            df.to_json(tmp, orient="records", lines=True)
        elif suffix in (".tsv", ".tab"):
            df.to_csv(tmp, sep="\t", index=False)
        else:
            df.to_csv(tmp, index=False)


def _print_metrics(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    metrics = summary["metrics"]
    table = Table("metric", "value", title=f"{summary['split']} split ({summary['rows']} rows)")
    for k, v in metrics.items():
        if isinstance(v, int | float):
            table.add_row(k, f"{v:.4f}")
    Console().print(table)
    per_class = metrics.get("per_class")
    if per_class:
        t = Table("class", "precision", "recall", "f1", "support")
        for name, m in per_class.items():
            t.add_row(
                name, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", str(m["support"])
            )
        Console().print(t)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
