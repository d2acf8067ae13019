"""The CLI on a real terminal (a pseudo-terminal), where rich draws live progress bars, and
the plain progress lines and logged training steps of a run whose output is not a terminal.

Every other test captures output through pipes, where no bar is ever drawn: a crash in the
bar (issue 14: `KeyError: 0` at the first evaluation of every `train.eval_every` run) is
only visible here."""

from __future__ import annotations

import csv
import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from conftest import REPO, _env, cli

COLUMNS, LINES = 120, 40
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[=>()][0-9A-Za-z]?")


def on_terminal(
    *args: Any, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> tuple[int, str]:
    """`python -m danlu ARGS` with stdin, stdout and stderr on a pseudo-terminal, read until
    the program closes it -> (exit code, everything it wrote, escape sequences removed)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
    terminal = {"TERM": "xterm", "COLUMNS": str(COLUMNS), "LINES": str(LINES), **(env or {})}
    full_env = _env(terminal)
    full_env.pop("NO_COLOR", None)  # as a user's terminal: colours and all
    proc = subprocess.Popen(
        [sys.executable, "-m", "danlu", *map(str, args)],
        cwd=str(cwd),
        env=full_env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,  # the terminal becomes the program's controlling terminal
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                raise AssertionError(f"danlu {args} still running after {timeout} s:\n{_text(chunks)}")
            ready, _, _ = select.select([master], [], [], left)
            if not ready:
                continue
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: the program and its children closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, _text(chunks)


def _text(chunks: list[bytes]) -> str:
    return ESCAPES.sub("", b"".join(chunks).decode("utf-8", "replace")).replace("\r\n", "\n")


def assert_sane(code: int, screen: str, *expected: str) -> None:
    assert code == 0, screen
    assert "Traceback" not in screen and "KeyError" not in screen, screen
    assert not [line for line in screen.splitlines() if line.startswith("error")], screen
    for text in expected:
        assert text in screen, screen


def write_yaml(path: Path, body: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return path


def lm_config(tmp_path: Path, **train: Any) -> Path:
    """A 2-layer GPT on a repeated sentence, evaluated every 20 of 60 steps."""
    text = tmp_path / "cats.txt"
    text.write_text("the cat sat on the mat. " * 400, encoding="utf-8")
    body = {
        "name": "lm",
        "seed": 0,
        "task": {"type": "language_modeling"},
        "data": {"path": str(text), "tokenizer": "char", "split": {"val": 0.1}},
        "model": {"type": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32},
        "train": {
            "optimizer": "adamw",
            "lr": 3e-3,
            "batch_size": 16,
            "max_steps": 60,
            "eval_every": 20,
            "early_stopping": None,
            "device": "cpu",
            **train,
        },
        "output": {"dir": str(tmp_path / "runs"), "timestamp": False},
    }
    return write_yaml(tmp_path / "lm.yaml", body)


# ---------------------------------------------------------------------------- on a terminal


@pytest.mark.slow
def test_train_tabular_on_a_terminal(tmp_path, write_config):
    cfg = write_config({"data": {"source": "iris"}})
    code, screen = on_terminal("train", cfg, cwd=tmp_path)
    assert_sane(code, screen, "run folder:", "epoch 3:")


@pytest.mark.slow
def test_train_language_model_with_eval_every_on_a_terminal(tmp_path):
    pytest.importorskip("tokenizers", reason="tokenizers is not installed (pip install 'danlu[hf]')")
    code, screen = on_terminal("train", lm_config(tmp_path), cwd=tmp_path)
    # three evaluations, each in the middle of an epoch: the bar goes on after each
    assert_sane(code, screen, "run folder:", "step 20/60:", "step 40/60:", "step 60/60:")
    # the bar counts the run's steps (rich draws its last frame when it stops), not one
    # epoch's batches
    assert "60/60" in screen.replace(" ", "")
    run = tmp_path / "runs" / "lm"
    assert [r["step"] for r in csv.DictReader((run / "metrics.csv").open())] == ["20", "40", "60"]


def test_train_images_on_a_terminal(tmp_path, write_config):
    pytest.importorskip("PIL", reason="image support needs Pillow (pip install 'danlu[images]')")
    sys.path.insert(0, str(REPO / "examples"))
    from make_shapes import make as make_shapes

    make_shapes(tmp_path / "pics", per_class=8, seed=1)
    rows = [(str(p.relative_to(tmp_path)), p.parent.name) for p in sorted((tmp_path / "pics").rglob("*.png"))]
    pd.DataFrame(rows, columns=["file", "shape"]).to_csv(tmp_path / "shapes.csv", index=False)
    cfg = write_config(
        {
            "data": {
                "path": str(tmp_path / "shapes.csv"),
                "target": "shape",
                "images": {"column": "file", "size": 16},
            },
            "model": {"type": "cnn", "channels": [4, 8]},
            "train": {"epochs": 2},
        }
    )
    code, screen = on_terminal("train", cfg, cwd=tmp_path)
    assert_sane(code, screen, "run folder:", "epoch 2:")


@pytest.mark.slow
def test_tune_on_a_terminal(tmp_path):
    pytest.importorskip("optuna", reason="optuna is not installed (pip install 'danlu[tune]')")
    body = {
        "name": "t",
        "seed": 0,
        "task": {"type": "classification"},
        "data": {
            "source": "make_classification",
            "params": {"n_samples": 200, "n_features": 6, "random_state": 1},
        },
        "model": {"hidden": [8]},
        "train": {"epochs": 2, "batch_size": 32, "device": "cpu", "early_stopping": False},
        "eval": {"plots": False},
        "output": {"dir": str(tmp_path / "runs")},
        "tune": {
            "sampler": "random",
            "pruner": "none",
            "trials": 2,
            "space": {"train.lr": {"log_float": [1e-3, 0.1]}},
        },
    }
    code, screen = on_terminal("tune", write_yaml(tmp_path / "tune.yaml", body), cwd=tmp_path)
    assert_sane(code, screen, "best config:", "study folder:")


@pytest.mark.slow
def test_transcribe_on_a_terminal(tmp_path):
    pytest.importorskip("transformers", reason="transformers is not installed (pip install 'danlu[hf]')")
    sf = pytest.importorskip("soundfile", reason="soundfile is not installed (pip install 'danlu[audio]')")
    from asr_models import make_wav2vec2, noise_speech

    model = make_wav2vec2(tmp_path / "w2v")  # random, 2 layers: quick, and its text is noise
    sf.write(tmp_path / "a.wav", noise_speech(3.0, seed=3), 16000, subtype="PCM_16")
    code, screen = on_terminal("transcribe", model, "a.wav", "--output-dir", "out", cwd=tmp_path)
    assert_sane(code, screen)
    assert (tmp_path / "out" / "a.txt").is_file()


@pytest.mark.slow
def test_generate_stream_on_a_terminal(tmp_path):
    pytest.importorskip("transformers", reason="transformers is not installed (pip install 'danlu[hf]')")
    from conftest import make_tiny_gpt2

    model = make_tiny_gpt2(tmp_path / "gpt2", initializer_range=0.2)
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # bytes: a random model's text may hold "\r", which text mode would turn into "\n"
    piped = subprocess.run(
        [sys.executable, "-m", "danlu", "generate", str(model), "--prompt=The quick", "--max-new-tokens=9"],
        cwd=tmp_path, env=_env(env), capture_output=True, timeout=300,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr.decode()
    code, screen = on_terminal(
        "generate", model, "--prompt", "The quick", "--max-new-tokens", 9, "--stream", cwd=tmp_path, env=env
    )
    assert code == 0, screen
    assert "Traceback" not in screen
    # the terminal turns "\n" into "\r\n": the same text as through a pipe, but for "\r"
    assert screen.replace("\r", "") == piped.stdout.decode("utf-8", "replace").replace("\r", "")


# ---------------------------------------------------------------------------- without a terminal


def test_step_run_prints_lines_and_logs_steps_without_a_terminal(tmp_path):
    """A max_steps run through a pipe: a line every logged step (by default a twentieth of
    the run, or a tenth of eval_every), each with the steps of max_steps and an ETA; the
    logged steps in steps.csv, the evaluations alone in metrics.csv."""
    pytest.importorskip("tokenizers", reason="tokenizers is not installed (pip install 'danlu[hf]')")
    r = cli("train", lm_config(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("step ")]
    # eval_every 20 -> a point every 2 steps (a tenth), max_steps 60 -> every 3 (a twentieth)
    assert [int(line.split()[1].split("/")[0]) for line in lines] == list(range(2, 61, 2))
    assert all("/60" in line and "tok/s" in line and "ETA" in line and "train.loss" in line for line in lines)
    run = tmp_path / "runs" / "lm"
    steps = list(csv.DictReader((run / "steps.csv").open()))
    assert [int(s["step"]) for s in steps] == list(range(2, 61, 2))
    assert list(steps[0]) == ["step", "epoch", "train.loss", "lr"]
    evaluations = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(e["step"]) for e in evaluations] == [20, 40, 60]  # early stopping sees these only
    # a repeated sentence is learnt: the curve goes down
    assert float(steps[-1]["train.loss"]) < float(steps[0]["train.loss"]) / 2


@pytest.mark.slow
def test_log_every_is_a_config_key_and_epoch_runs_log_no_steps(tmp_path, write_config):
    cfg = write_config({"data": {"source": "iris"}})
    r = cli("train", cfg, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert not (run / "steps.csv").exists()  # an epoch run: metrics.csv has a row per epoch
    assert not [line for line in r.stderr.splitlines() if line.startswith("step ")]

    r = cli("train", cfg, "--set", "train.log_every=4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    newest = max((tmp_path / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    steps = [int(s["step"]) for s in csv.DictReader((newest / "steps.csv").open())]
    assert steps and all(s % 4 == 0 for s in steps)
    assert len([line for line in r.stderr.splitlines() if line.startswith("step ")]) == len(steps)


def test_history_plot_draws_every_logged_step(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from danlu.evaluation import report

    drawn: dict[str, int] = {}
    real = report._draw_series
    monkeypatch.setattr(
        report,
        "_draw_series",
        lambda ax, x, y, label: drawn.__setitem__(label, len(x)) or real(ax, x, y, label),
    )
    history = [
        {"epoch": 1, "step": 10, "train.loss": 2.0, "val.loss": 2.1, "lr": 1e-3, "time": 1.0},
        {"epoch": 1, "step": 20, "train.loss": 1.5, "val.loss": 1.7, "lr": 1e-3, "time": 1.0},
    ]
    steps = [{"step": s, "epoch": 1, "train.loss": 2.5 - s / 20, "lr": 1e-3} for s in range(2, 21, 2)]
    assert report.plot_history(history, tmp_path / "h.png", steps) is not None
    assert drawn == {"train.loss": 10, "val.loss": 2, "lr": 2}
    drawn.clear()
    assert report.plot_history(history, tmp_path / "h2.png") is not None
    assert drawn == {"train.loss": 2, "val.loss": 2, "lr": 2}


def test_first_logged_step_counts_its_batch_in_rate_and_eta(monkeypatch, capsys) -> None:
    """The plain line of step 1 of 5 after a 10 s batch of 100 tokens: 10 tok/s, ETA 40 s
    (the clock starts before the first batch, not after its compute)."""
    import torch

    from danlu.training import progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    with progress.Progress("lines", unit="tok", max_steps=5) as bar:
        bar.start_epoch(0, 1, 5, 0, 0)
        now[0] = 10.0
        bar.step(0, torch.tensor(1.0), 100, 0)
        bar.log_step({"step": 1, "epoch": 1, "train.loss": 1.0, "lr": 0.1})
    line = capsys.readouterr().err.strip()
    assert line.endswith("10 tok/s  ETA 40s"), line
