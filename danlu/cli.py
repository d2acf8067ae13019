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


@app.command(
    epilog="Examples:\n\n"
    "  danlu generate runs/shakespeare-20261124-101500 --prompt 'ROMEO:' --max-new-tokens 100\n\n"
    "  danlu generate path/to/gpt2 --prompt 'Once upon a time' --temperature 0.8 --top-p 0.95 --seed 1\n\n"
    "  danlu generate path/to/gpt2 --prompts prompts.txt --json > out.jsonl\n\n"
    "  echo 'The meaning of life is' | danlu generate path/to/gpt2 --stop '.' --num-beams 4\n\n"
    "MODEL is a danlu language-model run folder, a Hugging Face model folder (GPT-2 runs on "
    "danlu's own GPT, other causal LMs on transformers) or a hub id when online."
)
def generate(
    model: Annotated[str, typer.Argument(help="Run folder, Hugging Face model folder or hub id.")],
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="The prompt text.")] = None,
    prompts: Annotated[
        Path | None,
        typer.Option("--prompts", help="File with one prompt per line ('-': stdin)."),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per sequence.")] = 64,
    temperature: Annotated[
        float | None, typer.Option(help="Sampling temperature; 0 or unset: greedy.")
    ] = None,
    top_k: Annotated[int | None, typer.Option(help="Sample from the k most likely tokens.")] = None,
    top_p: Annotated[
        float | None, typer.Option(help="Nucleus sampling: smallest set with this mass.")
    ] = None,
    min_p: Annotated[
        float | None, typer.Option(help="Drop tokens below min_p x the top probability.")
    ] = None,
    repetition_penalty: Annotated[
        float | None, typer.Option(help="> 1 discourages tokens already seen.")
    ] = None,
    num_beams: Annotated[int, typer.Option(help="Beam search with this many beams.")] = 1,
    num_return_sequences: Annotated[int, typer.Option(help="Sequences per prompt.")] = 1,
    stop: Annotated[
        list[str] | None, typer.Option("--stop", help="End a sequence at this text (repeatable).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed for sampling.")] = None,
    stream: Annotated[
        bool | None,
        typer.Option("--stream/--no-stream", help="Print tokens as they come (default: on a terminal)."),
    ] = None,
    json_: Annotated[
        bool,
        typer.Option(
            "--json", help="One JSON object per sequence: text, token ids, per-token log-probabilities."
        ),
    ] = False,
    dtype: Annotated[str | None, typer.Option(help="float32 or bfloat16.")] = None,
    truncate_prompt: Annotated[
        bool, typer.Option(help="Drop the oldest prompt tokens when a prompt is too long.")
    ] = False,
    trust_remote_code: Annotated[
        bool, typer.Option(help="Let a Hugging Face folder run its own model code.")
    ] = False,
    debug: Debug = False,
) -> None:
    """Generate text with a language model."""
    with _errors(debug):
        import json

        from danlu.modelref import complete, load_cached, make_options, stream_text

        if dtype is not None and dtype not in ("float32", "bfloat16"):
            raise DanluError(f"unknown dtype '{dtype}'; valid: bfloat16, float32")
        texts = _read_prompts(prompt, prompts)
        options: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            num_beams=num_beams,
            num_return_sequences=num_return_sequences,
            stop=stop or [],
            seed=seed,
            truncate_prompt=truncate_prompt,
            dtype=dtype,
        )
        make_options(**options)  # bad options fail before the model loads
        lm = load_cached(model, trust_remote_code=trust_remote_code, dtype=dtype)
        opts = make_options(lm, **options)
        if stream is None:
            stream = sys.stdout.isatty() and num_beams == 1 and num_return_sequences == 1
        if json_:
            for c in complete(lm, texts, opts, logprobs=True):
                typer.echo(json.dumps(c.to_json(), ensure_ascii=False))
        elif stream:
            for i, text in enumerate(texts):
                if i:
                    typer.echo()
                for piece in stream_text(lm, text, opts):
                    sys.stdout.write(piece)
                    sys.stdout.flush()
                typer.echo()
        else:
            for i, c in enumerate(complete(lm, texts, opts)):
                if i:
                    typer.echo()
                typer.echo(c.text)


def _read_prompts(prompt: str | None, prompts: Path | None) -> list[str]:
    if prompt is not None and prompts is not None:
        raise DanluError("give either --prompt or --prompts, not both")
    if prompt is not None:
        return [prompt]
    if prompts is not None and str(prompts) != "-":
        try:
            lines = prompts.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DanluError(f"cannot read --prompts {prompts}: {e}") from None
        where = str(prompts)
    else:
        if prompts is None and sys.stdin.isatty():
            raise DanluError("no prompt: give --prompt TEXT, --prompts FILE or pipe prompts on stdin")
        lines = sys.stdin.read().splitlines()
        where = "stdin"
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise DanluError(f"no prompts in {where} (one prompt per line)")
    return texts


@app.command(
    epilog="Examples:\n\n  danlu export runs/shakespeare-20261124-101500 --format hf exported/\n\n"
    '  python -c "from transformers import AutoModelForCausalLM; '
    "AutoModelForCausalLM.from_pretrained('exported')\""
)
def export(
    run_dir: Annotated[Path, typer.Argument(help="A language-model run folder.")],
    out_dir: Annotated[Path, typer.Argument(help="New folder to write (must not exist or be empty).")],
    format: Annotated[str, typer.Option("--format", "-f", help="hf: a Hugging Face GPT-2 folder.")] = "hf",
    debug: Debug = False,
) -> None:
    """Export a run for other tools (hf: a transformers GPT-2 folder with its tokenizer)."""
    with _errors(debug):
        from danlu.modelref import export_run

        path = export_run(run_dir, out_dir, format=format)
        typer.echo(f"wrote {path}")


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
