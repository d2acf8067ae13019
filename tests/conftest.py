"""Shared fixtures: run the CLI in a subprocess, write small configs and data files."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
# named datasets (dataset://NAME in the examples) resolve to the copies beside the repository
# (danlu/datasets.py); tests that need them skip when ../shared/data is absent
SHARED_DATA = REPO.parent / "shared" / "data"
os.environ["DANLU_DATA"] = str(SHARED_DATA)


def _danlu_modules() -> list[str]:
    """Every module of the package, by its dotted name (from the files: nothing imported)."""
    names = []
    for p in sorted((REPO / "danlu").rglob("*.py")):
        parts = p.relative_to(REPO).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


# pyproject's filterwarnings (error::DeprecationWarning:danlu) for the CLI run as a subprocess:
# -W / PYTHONWARNINGS take the module field literally (re.escape(module) + \Z, unlike pytest's
# regex), so every danlu module is named; third-party modules' own warnings stay warnings
WARNINGS_AS_ERRORS = ",".join(
    f"error::{category}:{module}"
    for category in ("DeprecationWarning", "FutureWarning")
    for module in _danlu_modules()
)


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONIOENCODING": "utf-8",
            "COLUMNS": "200",  # rich tables and help text: no wrapping mid-word
            "NO_COLOR": "1",
            "TERM": "dumb",
        }
    )
    env.pop("FORCE_COLOR", None)
    env["PYTHONWARNINGS"] = ",".join(w for w in (env.get("PYTHONWARNINGS"), WARNINGS_AS_ERRORS) if w)
    # the package is importable from a subprocess started in any folder
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def cli(
    *args: Any, cwd: str | Path, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    """`python -m danlu ARGS` in cwd -> CompletedProcess with text stdout/stderr."""
    return subprocess.run(
        [sys.executable, "-m", "danlu", *map(str, args)],
        cwd=str(cwd),
        env=_env(env),
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
    )


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """run_cli("train", "cfg.yaml", cwd=..., env=...) -> CompletedProcess (text output).

    Runs `python -m danlu ARGS` in tmp_path unless cwd is given."""

    def run(
        *args: Any, cwd: str | Path | None = None, env: dict[str, str] | None = None, timeout: int = 300
    ) -> subprocess.CompletedProcess[str]:
        return cli(*args, cwd=cwd or tmp_path, env=env, timeout=timeout)

    return run


@pytest.fixture
def invoke_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """invoke_cli("train", "cfg.yaml", cwd=..., input=...) -> click's Result (exit_code, stdout, stderr).

    The CLI in this process through Typer's CliRunner, in tmp_path unless cwd is given: for
    tests that only check what a command prints and its exit code (no interpreter start-up,
    no imports paid again). Exit codes of the real process, Ctrl-C and --debug tracebacks
    are tested with run_cli."""
    from typer.testing import CliRunner

    from danlu.cli import app

    def invoke(
        *args: Any, cwd: str | Path | None = None, env: dict[str, str] | None = None, input: str | None = None
    ) -> Any:
        monkeypatch.chdir(cwd or tmp_path)
        keep = ("COLUMNS", "NO_COLOR", "TERM", "PYTHONIOENCODING")
        extra = {k: v for k, v in _env(env).items() if k in keep or k in (env or {})}
        environ = {**extra, "FORCE_COLOR": None}
        return CliRunner().invoke(app, [str(a) for a in args], env=environ, input=input)  # input: stdin

    return invoke


def assert_user_error(
    result: Any, *expected: str, runs_dir: Path | None = None, after_progress: bool = False
) -> str:
    """A user error as the CLI reports it: exit 2, stderr is exactly one `error:` line holding
    every expected substring, no traceback, and (if runs_dir is given) no run folder under it.
    after_progress: the command showed progress (a download) before failing, so the error
    line is the last line and the only `error:` one. `result` is a CompletedProcess (run_cli)
    or a CliRunner result (invoke_cli). Returns the line."""
    code = result.returncode if hasattr(result, "returncode") else result.exit_code
    err = result.stderr
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    if after_progress:
        assert [x for x in lines if x.startswith("error:")] == lines[-1:], err
        lines = lines[-1:]
    crash = getattr(result, "exception", None)  # CliRunner: an exception the CLI did not handle
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}{crash or ''}"
    line = lines[0]
    assert line.startswith("error: "), line
    for s in expected:
        assert s in line, f"{s!r} not in: {line}"
    assert code == 2, (code, err)
    if runs_dir is not None:
        assert not runs_dir.exists() or not any(runs_dir.iterdir()), list(runs_dir.iterdir())
    return line


@pytest.fixture
def tmp_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the current directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def small_config(body: dict[str, Any], runs_dir: Path) -> dict[str, Any]:
    """body over fast defaults: 3 epochs, small batches, CPU, no plots, output.dir=runs_dir."""
    return _merge(
        {
            "name": "t",
            "train": {"epochs": 3, "batch_size": 16, "device": "cpu"},
            "eval": {"plots": False},
            "output": {"dir": str(runs_dir)},
        },
        body,
    )


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """Where configs written by write_config put their run folders (not created up front)."""
    return tmp_path / "runs"


@pytest.fixture
def write_config(tmp_path: Path, runs_dir: Path) -> Callable[..., Path]:
    """write_config({"data": {...}}, name="config.yaml") -> path of a small, fast YAML config.

    Defaults (merged under the given mapping): output.dir = tmp_path/runs, 3 epochs,
    small batches, no plots. Pass defaults=False to write the mapping exactly as given,
    or a str to write raw text."""

    def write(body: dict[str, Any] | str, name: str = "config.yaml", defaults: bool = True) -> Path:
        path = tmp_path / name
        if isinstance(body, str):
            path.write_text(body, encoding="utf-8")
            return path
        if defaults:
            body = small_config(body, runs_dir)
        path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
        return path

    return write


def make_mixed_frame(n: int = 90, seed: int = 0) -> pd.DataFrame:
    """Numeric + categorical features and a string label that depends on them."""
    rng = np.random.default_rng(seed)
    age = rng.normal(40, 12, n).round(1)
    income = rng.lognormal(10, 0.5, n).round(2)
    color = rng.choice(["red", "green", "blue"], n)
    size = rng.choice(["S", "M", "L", "XL"], n)
    score = (age - 40) / 12 + (color == "red") * 1.5 - (color == "blue") * 1.5
    label = np.where(score > 0.5, "cat", np.where(score < -0.5, "dog", "bird"))
    return pd.DataFrame({"age": age, "income": income, "color": color, "size": size, "label": label})


@pytest.fixture
def mixed_frame() -> pd.DataFrame:
    return make_mixed_frame()


@pytest.fixture
def mixed_csv(tmp_path: Path, mixed_frame: pd.DataFrame) -> Path:
    """tmp_path/mixed.csv: columns age, income (numeric), color, size (text), label (3 string classes)."""
    path = tmp_path / "mixed.csv"
    mixed_frame.to_csv(path, index=False)
    return path


@dataclass
class TrainedRun:
    root: Path  # folder holding the csv, the config and runs/
    csv: Path
    config: Path
    run: Path  # the run folder
    result: subprocess.CompletedProcess[str]  # the `danlu train` call
    files: list[str]  # what training wrote into the run folder (relative paths)


@pytest.fixture(scope="session")
def mixed_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """One `danlu train` on the mixed CSV (one-hot categories, hidden [16], 2 epochs),
    shared by the tests of a worker. Tests may add files to the run but not break it."""
    root = tmp_path_factory.mktemp("mixed_run")
    csv = root / "mixed.csv"
    make_mixed_frame().to_csv(csv, index=False)
    body = {"data": {"path": str(csv), "target": "label"}, "model": {"hidden": [16]}, "train": {"epochs": 2}}
    config = root / "first.yaml"
    config.write_text(yaml.safe_dump(small_config(body, root / "runs"), sort_keys=False), encoding="utf-8")
    result = cli("train", config, cwd=root)
    assert result.returncode == 0, result.stderr
    (run,) = [p for p in (root / "runs").iterdir() if p.is_dir()]
    return TrainedRun(root, csv, config, run, result, run_files(run))


def run_files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


TINY_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A furnace turns base metal into gold, or so the alchemists said.",
    "Language models predict the next token from the tokens before it.",
    "Once upon a time there was a tiny model that wrote tiny stories.",
]
EOS_TEXT = "<|endoftext|>"


def make_tiny_gpt2(path: Path, **config: Any) -> Path:
    """A tiny random GPT-2 folder (2 layers, 32-dim, 48 positions; `config` overrides) with a
    byte-level BPE tokenizer trained on TINY_SENTENCES, written with save_pretrained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=[EOS_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TINY_SENTENCES, trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TEXT, bos_token=EOS_TEXT)
    eos = hf_tok.convert_tokens_to_ids(EOS_TEXT)
    torch.manual_seed(0)
    settings = dict(n_positions=48, n_embd=32, n_layer=2, n_head=2, bos_token_id=eos, eos_token_id=eos)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(hf_tok), **{**settings, **config})).eval().save_pretrained(
        path, safe_serialization=True
    )
    hf_tok.save_pretrained(path)
    return path


def write_tokenizer(path: Path, chat_template: str | None) -> Any:
    """A byte-level BPE tokenizer (300 tokens, <pad> and ChatML's specials) trained on
    TINY_SENTENCES, with `chat_template` when given, saved to `path`: for tiny Llama folders."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(TINY_SENTENCES, trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>")
    if chat_template:
        hf_tok.chat_template = chat_template
    hf_tok.save_pretrained(path)
    return hf_tok
