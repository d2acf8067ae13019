"""The run folder under faults: atomic checkpoints (and the old layout still resumes), a
damaged newest checkpoint, damaged run files giving one line, safe run names, two runs
created at once, `evaluate --data` beside the run's results, `danlu runs`, file modes
under the umask, and data paths that work from any folder."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import _env
from typer.testing import CliRunner

import danlu
from danlu.cli import app
from danlu.errors import DanluError
from danlu.run import RunDir

BASE: dict[str, Any] = {
    "name": "r",
    "seed": 7,
    "data": {
        "source": "make_classification",
        "params": {"n_samples": 200, "n_features": 6, "n_informative": 3, "random_state": 3},
        "split": {"val": 0.2, "test": 0.2},
    },
    "model": {"hidden": [16], "dropout": 0.1},
    "train": {"epochs": 4, "batch_size": 32, "device": "cpu", "checkpoint_every": 0, "early_stopping": None},
    "eval": {"plots": False},
}


def config(tmp_path: Path, **train: Any) -> dict[str, Any]:
    c = json.loads(json.dumps(BASE))
    c["output"] = {"dir": str(tmp_path / "runs")}
    c["train"].update(train)
    return c


def history(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", encoding="utf-8") as f:
        return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(f)]


def danlu_cli(*args: Any) -> Any:
    """The CLI in this process (as `danlu ARGS` would run it): exit_code, stdout, stderr."""
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result: Any, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> danlu.Run:
    """4 epochs in one go: what every resumed run below must equal."""
    return danlu.train(config(tmp_path_factory.mktemp("whole")), progress="quiet")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch run; tests copy it before damaging it."""
    return danlu.train(config(tmp_path_factory.mktemp("finished"), epochs=2), progress="quiet").path


def copy_run(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "runs" / run.name
    shutil.copytree(run, target)
    return target


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_is_one_folder_and_the_old_one_goes(tmp_path: Path) -> None:
    run = danlu.train(config(tmp_path, epochs=3), progress="quiet")
    ck = run.path / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["best.safetensors", f"last-{run.history[-1]['step']:.0f}"]
    assert not list(run.path.rglob("*.tmp"))


def test_old_layout_checkpoint_still_resumes(tmp_path: Path, whole: danlu.Run) -> None:
    """Run folders written before versioned checkpoint folders (checkpoints/last.safetensors +
    last.state.pt) resume, and the old pair is replaced by the new layout."""
    part = danlu.train(config(tmp_path, epochs=2), progress="quiet")
    ck = part.path / "checkpoints"
    (folder,) = ck.glob("last-*")
    os.replace(folder / "model.safetensors", ck / "last.safetensors")
    os.replace(folder / "state.pt", ck / "last.state.pt")
    folder.rmdir()
    assert RunDir(part.path).has_checkpoint()
    resumed = danlu.train(None, {"train.epochs": 4}, resume=part.path, progress="quiet")
    assert history(resumed.path) == history(whole.path)
    assert resumed.metrics == whole.metrics
    assert not (ck / "last.state.pt").exists() and not (ck / "last.safetensors").exists()


def test_damaged_newest_checkpoint_falls_back_to_the_older_one(
    tmp_path: Path, whole: danlu.Run, capfd: pytest.CaptureFixture[str]
) -> None:
    """A kill cannot leave a half-written checkpoint folder, but a disk can: resume from the
    newest checkpoint that loads, saying so in one line, and continue exactly."""
    part = danlu.train(config(tmp_path, epochs=1), progress="quiet")
    ck = part.path / "checkpoints"
    (older,) = ck.glob("last-*")
    keep = tmp_path / "older"
    shutil.copytree(older, keep)
    danlu.train(None, {"train.epochs": 2}, resume=part.path, progress="quiet")
    (newest,) = ck.glob("last-*")
    shutil.copytree(keep, older)  # two checkpoints, as a kill between publish and delete leaves
    (newest / "state.pt").write_bytes((newest / "state.pt").read_bytes()[:100])  # truncated
    capfd.readouterr()
    resumed = danlu.train(None, {"train.epochs": 4}, resume=part.path, progress="quiet")
    err = capfd.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and newest.name in notes[0] and "damaged" in notes[0] and older.name in notes[0]
    assert history(resumed.path) == history(whole.path)
    assert resumed.metrics == whole.metrics
    assert (ck / f"damaged-{newest.name}").is_dir()  # kept for inspection, never resumed


def test_leftovers_of_a_kill_are_cleaned_on_resume(tmp_path: Path, whole: danlu.Run) -> None:
    part = danlu.train(config(tmp_path, epochs=2), progress="quiet")
    leftovers = [
        part.path / "checkpoints" / ".last-99.tmp",
        part.path / ".metrics.json.abc123.tmp",
        part.path / "checkpoints" / ".best.safetensors.x1.tmp",
    ]
    leftovers[0].mkdir()
    (leftovers[0] / "state.pt").write_bytes(b"half")
    for p in leftovers[1:]:
        p.write_bytes(b"half")
    resumed = danlu.train(None, {"train.epochs": 4}, resume=part.path, progress="quiet")
    assert not any(p.exists() for p in leftovers)
    assert history(resumed.path) == history(whole.path)


# --------------------------------------------------------------------------- damaged run files
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _last(run: Path, name: str) -> Path:
    (folder,) = (run / "checkpoints").glob("last-*")
    return folder / name


# (what is damaged, how, the command that reads it, the file its error names)
DAMAGES = {
    "empty state": (lambda r: _last(r, "state.pt").write_bytes(b""), "resume", "state.pt"),
    "garbage state": (lambda r: _last(r, "state.pt").write_bytes(b"\x00garbage" * 50), "resume", "state.pt"),
    "truncated checkpoint weights": (lambda r: _truncate(_last(r, "model.safetensors")), "resume",
                                     "model.safetensors"),
    "empty checkpoint weights": (lambda r: _last(r, "model.safetensors").write_bytes(b""), "resume",
                                 "model.safetensors"),
    "model.json a list": (lambda r: (r / "model.json").write_text("[1, 2]"), "predict", "model.json"),
    "model.json missing keys": (lambda r: (r / "model.json").write_text('{"format": 1}'), "predict",
                                "model.json"),
    "model.json garbage": (lambda r: (r / "model.json").write_text("{not json"), "evaluate", "model.json"),
    "truncated model weights": (lambda r: _truncate(r / "model.safetensors"), "predict", "model.safetensors"),
    "config.yaml garbage": (lambda r: (r / "config.yaml").write_text("name: [unclosed\n"), "evaluate",
                            "config.yaml"),
    "config.yaml a list": (lambda r: (r / "config.yaml").write_text("- 1\n- 2\n"), "runs", "config.yaml"),
    "metrics.json garbage": (lambda r: (r / "metrics.json").write_text('{"split": "te'), "runs",
                             "metrics.json"),
    "metrics.json a list": (lambda r: (r / "metrics.json").write_text("[]"), "runs", "metrics.json"),
    "metrics.csv garbage": (lambda r: (r / "metrics.csv").write_text("epoch,step\n1,abc\n"), "runs",
                            "metrics.csv"),
    "metrics.csv cut short": (lambda r: (r / "metrics.csv").write_text("epoch,step,train.loss\n1,4\n"),
                              "runs", "metrics.csv"),
}


@pytest.mark.parametrize("case", list(DAMAGES))
def test_a_damaged_run_file_gives_one_line(case: str, finished: Path, tmp_path: Path) -> None:
    damage, command, named = DAMAGES[case]
    run = copy_run(finished, tmp_path)
    damage(run)
    if command == "runs":
        # the damaged run is listed as damaged, with the reason; the others still listed
        copy_run(finished, tmp_path / "other")
        shutil.move(tmp_path / "other" / "runs" / finished.name, tmp_path / "runs" / "healthy")
        r = danlu_cli("runs", tmp_path / "runs", "--json")
        assert r.exit_code == 0, r.stderr
        rows = {row["run"]: row for row in json.loads(r.stdout)}
        assert rows[run.name]["status"] == "damaged"
        assert named in rows[run.name]["error"] and "\n" not in rows[run.name]["error"]
        assert rows["healthy"]["status"] == "done" and rows["healthy"]["error"] is None
        r = danlu_cli("runs", tmp_path / "runs")
        assert r.exit_code == 0 and "damaged" in r.stdout and "healthy" in r.stdout
        return
    if command == "resume":
        r = danlu_cli("train", "--resume", run, "--set", "train.epochs=3", "--quiet")
    elif command == "predict":
        rows = tmp_path / "rows.csv"
        rows.write_text("x0,x1,x2,x3,x4,x5\n" + ",".join(["0.1"] * 6) + "\n")
        r = danlu_cli("predict", run, "--input", rows)
    else:
        r = danlu_cli("evaluate", run)
    one_line_error(r, named)


# --------------------------------------------------------------------------- run names
BAD_NAMES = ["..", "../x", "/abs/x", "", ".hidden", "a/b", "a b", "x" * 101]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_run_name_is_one_safe_path_component(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    c = config(tmp_path)
    c["output"] = {"dir": "runs", "timestamp": False}
    with pytest.raises(DanluError) as e:
        danlu.train({**c, "name": name}, progress="quiet")
    assert str(e.value).startswith("config: name:") and "letters, digits" in str(e.value)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(c))
    r = danlu_cli("train", cfg, "--name", name, "--quiet")
    one_line_error(r, "--name", "letters, digits, '-', '_' or '.'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # nothing written anywhere


def test_good_run_names_are_accepted(tmp_path: Path) -> None:
    c = config(tmp_path, epochs=1)
    c["output"]["timestamp"] = False
    run = danlu.train(c, name="v1.2_lr-0.01", progress="quiet")
    assert run.path == tmp_path / "runs" / "v1.2_lr-0.01"


# --------------------------------------------------------------------------- two runs at once
@pytest.mark.parametrize("timestamp", [False, True])
def test_runs_created_at_the_same_instant_get_distinct_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, timestamp: bool
) -> None:
    """8 threads create a run of the same name at once. Every one is held at its first mkdir
    of the run folder until all 8 are there, so all decide about the folder before any
    creates it: the interleaving that gave two processes one folder."""
    n = 8
    barrier = threading.Barrier(n, timeout=60)
    waited: set[int] = set()
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        if self.name.startswith("same") and threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            barrier.wait()
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    made: list[Path] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            made.append(RunDir.create(tmp_path / "runs", "same", timestamp=timestamp).path)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=create) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(set(made)) == n
    assert all((p / "checkpoints").is_dir() for p in made)


# --------------------------------------------------------------------------- evaluate --data
@pytest.mark.slow
def test_evaluate_on_another_file_keeps_the_runs_own_results(
    run_cli: Any, tmp_path: Path, mixed_csv: Path, write_config: Any
) -> None:
    write_config({"data": {"path": str(mixed_csv), "target": "label"}, "model": {"hidden": [8]},
                  "train": {"epochs": 1}})
    r = run_cli("train", "config.yaml", "--quiet")
    assert r.returncode == 0, r.stderr
    (run,) = (tmp_path / "runs").iterdir()
    own = {f: (run / f).read_bytes() for f in ("metrics.json", "predictions.csv", "report.md")}
    other = tmp_path / "new_rows.csv"
    other.write_text("".join(mixed_csv.read_text().splitlines(keepends=True)[:21]))  # header + 20 rows
    r = run_cli("evaluate", run, "--data", other)
    assert r.returncode == 0, r.stderr
    assert {f: (run / f).read_bytes() for f in own} == own
    folder = run / "evaluations" / "new_rows"
    assert str(folder) in r.stdout
    result = json.loads((folder / "metrics.json").read_text())
    assert result["rows"] == 20 and result["split"] == "new_rows.csv"
    assert len((folder / "predictions.csv").read_text().splitlines()) == 21
    assert "new_rows.csv" in (folder / "report.md").read_text()


# --------------------------------------------------------------------------- danlu runs
def test_runs_shows_full_names_metric_and_status(finished: Path, tmp_path: Path, run_cli: Any) -> None:
    long = "a-rather-long-experiment-name-that-would-not-fit-a-narrow-column-20261202-101500"
    copy_run(finished, tmp_path)
    os.replace(tmp_path / "runs" / finished.name, tmp_path / "runs" / long)
    resumable = copy_run(finished, tmp_path / "b")
    (resumable / "model.json").unlink()
    shutil.move(resumable, tmp_path / "runs" / "resumable")
    failed = tmp_path / "runs" / "failed"
    shutil.copytree(finished, failed, ignore=shutil.ignore_patterns("model.*", "last-*", "metrics.json"))
    # in a pipe, 80 columns: plain text, nothing cut
    r = run_cli("runs", "runs", env={"COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["run", "status"] and "test metric" in lines[0]
    by_name = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(by_name) == {long, "resumable", "failed"}
    accuracy = json.loads((finished / "metrics.json").read_text())["metrics"]["accuracy"]
    assert by_name[long][1] == "done" and f"accuracy {accuracy:.4g}" in " ".join(by_name[long])
    assert by_name["resumable"][1] == "incomplete" and by_name["failed"][1] == "failed"
    r = run_cli("runs", "runs", "--json")
    rows = {row["run"]: row for row in json.loads(r.stdout)}
    assert rows[long]["metric"] == "accuracy" and rows[long]["value"] == accuracy
    assert rows[long]["split"] == "test" and rows[long]["epochs"] == 2
    assert rows["failed"]["value"] is None


def test_runs_on_a_narrow_terminal_keeps_names_whole(finished: Path, tmp_path: Path) -> None:
    pty = pytest.importorskip("pty")
    import fcntl
    import struct
    import termios

    long = "tutorial-with-a-long-name-20261202-101500"
    shutil.copytree(finished, tmp_path / "runs" / long)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 60, 0, 0))
    env = {k: v for k, v in _env().items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.run([sys.executable, "-m", "danlu", "runs", "runs"], cwd=tmp_path, env=env,
                          stdout=slave, stderr=subprocess.PIPE, timeout=120)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.returncode == 0, proc.stderr
    lines = out.decode().splitlines()
    assert lines[1].split()[:2] == [long, "done"]
    assert all(len(line) <= 60 for line in lines)


# --------------------------------------------------------------------------- umask
@pytest.mark.slow
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o007, 0o660)])
def test_files_are_written_with_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    c = config(tmp_path, epochs=1)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(c))
    r = subprocess.run([sys.executable, "-m", "danlu", "train", "c.yaml", "--quiet"], cwd=tmp_path,
                       env=_env(), capture_output=True, text=True, timeout=300,
                       preexec_fn=lambda: os.umask(umask))
    assert r.returncode == 0, r.stderr
    (run,) = (tmp_path / "runs").iterdir()
    written = ["config.yaml", "metrics.json", "model.json", "model.safetensors"]
    for name in [*written, "checkpoints/best.safetensors"]:
        assert stat.S_IMODE((run / name).stat().st_mode) == mode, name


# --------------------------------------------------------------------------- data paths
@pytest.mark.slow
def test_evaluate_from_another_folder_finds_the_training_data(
    tmp_path: Path, mixed_csv: Path, run_cli: Any
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    shutil.copy(mixed_csv, a / "data.csv")
    c = {"name": "p", "data": {"path": "data.csv", "target": "label"}, "model": {"hidden": [8]},
         "train": {"epochs": 1, "device": "cpu"}, "eval": {"plots": False}}
    (a / "c.yaml").write_text(yaml.safe_dump(c))
    r = run_cli("train", "c.yaml", "--quiet", cwd=a)
    assert r.returncode == 0, r.stderr
    (run,) = (a / "runs").iterdir()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["path"] == str(a / "data.csv")
    r = run_cli("evaluate", run, cwd=b)
    assert r.returncode == 0, r.stderr
    # a run saved before paths were made absolute: one line naming the key and the path
    saved["data"]["path"] = "data.csv"
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    r = run_cli("evaluate", run, cwd=b)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "data.path 'data.csv' not found" in line and "config.yaml" in line
    r = run_cli("evaluate", run, cwd=a)  # from the folder training ran in it still works
    assert r.returncode == 0, r.stderr
