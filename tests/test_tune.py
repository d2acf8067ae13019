"""`danlu tune`: hyperparameter search on Optuna, every trial an ordinary run.

Quality bars of issue 4: the tuned tutorial beats the introduction's three-value grid,
the median pruner saves epochs, failed and interrupted trials are recorded and the search
goes on / resumes, two processes share a PostgreSQL study, and bad input is one line."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, _env, assert_user_error, cli

optuna = pytest.importorskip("optuna", reason="optuna is not installed (pip install 'danlu[tune]')")

from typer.testing import CliRunner  # noqa: E402

import danlu  # noqa: E402
from danlu import config as config_mod  # noqa: E402
from danlu import tuning  # noqa: E402
from danlu.cli import app  # noqa: E402

TUTORIAL = REPO / "examples" / "tune_tutorial.yaml"


def small_tune_config(tmp_path: Path, tune: dict[str, Any], **sections: Any) -> Path:
    """A quick classification search: 300 rows of make_classification, a few epochs."""
    body: dict[str, Any] = {
        "name": "t",
        "seed": 0,
        "task": {"type": "classification"},
        "data": {
            "source": "make_classification",
            "params": {"n_samples": 300, "n_features": 8, "n_informative": 4, "random_state": 1},
        },
        "model": {"hidden": [16]},
        "train": {"epochs": 4, "batch_size": 32, "device": "cpu", "early_stopping": False},
        "eval": {"plots": False},
        "output": {"dir": str(tmp_path / "runs")},
        "tune": {"sampler": "random", "pruner": "none", "trials": 3, **tune},
    }
    for key, value in sections.items():
        body[key] = {**body.get(key, {}), **value}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return path


def trial_epochs(study_dir: Path) -> int:
    """Training epochs of every trial, counted from the run folders' metrics.csv."""
    total = 0
    for metrics in (study_dir / "trials").glob("*/metrics.csv"):
        with metrics.open(encoding="utf-8") as f:
            total += sum(1 for _ in csv.DictReader(f))
    return total


def read_trials(study_dir: Path) -> list[dict[str, str]]:
    with (study_dir / "trials.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def invoke(*args: Any) -> Any:
    """The CLI in this process (fast): exit code, stdout and stderr."""
    return CliRunner().invoke(app, [str(a) for a in args])


# --------------------------------------------------------------------------- bad input: one line, exit 2
@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"train.lrr": {"log_float": [1e-4, 1e-1]}}, ["tune.space", "train.lrr", "did you mean 'lr'?"]),
        ({"model.hiden": [[8], [16]]}, ["model.hiden", "did you mean 'hidden'?"]),
        ({"train.optimizer": {"choice": []}}, ["tune.space.train.optimizer", "empty choice list"]),
        ({"model.dropout": {"float": [0.5, 0.1]}}, ["tune.space.model.dropout", "low 0.5 is above high 0.1"]),
        ({"train.lr": {"log_float": [0, 0.1]}}, ["tune.space.train.lr", "must be above 0"]),
        ({"train.lr": {"log_float": [-1, 0.1]}}, ["tune.space.train.lr", "must be above 0"]),
        ({"train.lr": {"logfloat": [1e-4, 0.1]}}, ["unknown kind 'logfloat'", "did you mean 'log_float'?"]),
        ({"model.dropout": {"float": [0.0, 1.5]}}, ["tune.space.model.dropout value 1.5", "less than 1"]),
        ({"train.batch_size": {"float": [8, 64]}}, ["tune.space.train.batch_size", "integer"]),
        ({"train.optimizer": ["adam", "adamm"]}, ["'adamm'", "did you mean 'adam'?"]),
        ({}, ["tune.space is empty"]),
    ],
)
def test_bad_space_is_one_line(tmp_path, space, expected):
    cfg = small_tune_config(tmp_path, {"space": space})
    assert_user_error(invoke("tune", cfg), str(cfg), *expected)
    assert not (tmp_path / "runs").exists()


def test_grid_sampler_rejects_continuous_range(tmp_path):
    cfg = small_tune_config(
        tmp_path,
        {"sampler": "grid", "space": {"train.lr": {"log_float": [1e-4, 0.1]}, "model.hidden": [[8]]}},
    )
    assert_user_error(invoke("tune", cfg), "grid", "tune.space.train.lr is a log_float range")


def test_no_tune_section_and_unknown_sampler(tmp_path):
    plain = tmp_path / "plain.yaml"
    raw = yaml.safe_load(small_tune_config(tmp_path, {"space": {"train.lr": [0.1]}}).read_text())
    raw.pop("tune")
    plain.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert_user_error(invoke("tune", plain), "no tune: section", "--space FILE")
    cfg = small_tune_config(tmp_path, {"space": {"train.lr": [0.1]}})
    assert_user_error(invoke("tune", cfg, "--sampler", "tpee"), "tune.sampler", "'tpee'", "tpe")


def test_metric_not_logged_lists_the_logged_ones(tmp_path):
    cfg = small_tune_config(tmp_path, {"metric": "val.acuracy", "space": {"train.lr": [0.01, 0.1]}})
    line = assert_user_error(invoke("tune", cfg), "tune.metric", "'val.acuracy' is not logged")
    assert "val.accuracy" in line and "val.loss" in line
    # a mistake in the search leaves no study behind: fixing the metric and rerunning just works
    assert not (tmp_path / "runs" / "t-tune").exists()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://nobody@127.0.0.1:1/optuna", ["postgresql://nobody@127.0.0.1:1/optuna", "cannot open"]),
        (
            "sqlite:////nonexistent-dir/sub/study.db",
            ["sqlite:////nonexistent-dir/sub/study.db", "cannot open"],
        ),
        ("not-a-url", ["not-a-url", "not a database URL"]),
    ],
)
def test_unreachable_storage_names_the_url(tmp_path, url, expected):
    cfg = small_tune_config(tmp_path, {"space": {"train.lr": [0.01]}})
    assert_user_error(invoke("tune", cfg, "--storage", url), "--storage", *expected)


def test_cmaes_sampler(tmp_path):
    cfg = small_tune_config(
        tmp_path, {"sampler": "cmaes", "trials": 2, "space": {"train.lr": {"log_float": [1e-3, 0.1]}}}
    )
    try:
        import cmaes  # noqa: F401
    except ImportError:
        assert_user_error(invoke("tune", cfg), "cmaes", "pip install cmaes")
        return
    result = danlu.tune(cfg, progress="quiet")
    assert [r["state"] for r in result.trials] == ["COMPLETE", "COMPLETE"]


# --------------------------------------------------------------------------- quality bar 1: tuned >= the grid
@pytest.mark.slow
def test_tuned_tutorial_beats_the_introductions_grid(tmp_path):
    """The introduction picks lr from [0.001, 0.01, 0.1]; the search over lr, hidden sizes,
    dropout and optimizer must pick a config at least as accurate on the test split. Each
    search selects its best trial by validation loss, as a user would; then we compare the
    test accuracy of the two selected runs (evaluated on the same 200 test rows)."""
    # the example is the introduction's setup (examples/tutorial.yaml) plus its tune section
    base = config_mod.load(TUTORIAL).to_dict()
    intro = config_mod.load(REPO / "examples" / "tutorial.yaml").to_dict()
    assert base.pop("tune")["space"] and intro.pop("tune") is None and base == intro
    common = [
        "train.epochs=100",
        "train.early_stopping.patience=10",
        "eval.plots=false",
        f"output.dir={tmp_path}",
    ]
    grid = danlu.tune(
        TUTORIAL,
        [*common, "tune.space={train.lr: [0.001, 0.01, 0.1]}"],
        sampler="grid",
        study="grid",
        progress="quiet",
    )
    assert sorted(r["train.lr"] for r in grid.trials) == [0.001, 0.01, 0.1]
    tuned = danlu.tune(TUTORIAL, common, trials=12, study="tuned", progress="quiet")
    assert len(tuned.trials) == 12
    assert set(tuned.best_params) == {"train.lr", "train.optimizer", "model.hidden", "model.dropout"}

    def selected_test_accuracy(result: Any) -> float:
        row = next(r for r in result.trials if r["trial"] == result.best_trial)
        metrics = yaml.safe_load((result.best_run / "metrics.json").read_text())  # JSON is YAML
        assert metrics["split"] == "test" and metrics["metrics"]["accuracy"] == row["test.accuracy"]
        return metrics["metrics"]["accuracy"]

    grid_acc, tuned_acc = selected_test_accuracy(grid), selected_test_accuracy(tuned)
    assert tuned.best_value <= grid.best_value  # the validation loss that selected them
    assert tuned_acc >= grid_acc, (tuned_acc, grid_acc)
    assert grid_acc >= 0.9  # the grid is a real baseline, not a straw man
    # best.yaml is the winning configuration, complete and valid
    best = config_mod.load(tuned.best_config)
    assert best.train.lr == pytest.approx(tuned.best_params["train.lr"])
    assert best.model.hidden == tuned.best_params["model.hidden"] and best.tune is None


# ------------------------------------------------------------------ quality bar 2: pruning saves epochs
@pytest.mark.slow
def test_median_pruner_prunes_and_saves_epochs(tmp_path):
    space = {"train.lr": {"log_float": [1e-5, 0.3]}, "train.optimizer": ["sgd", "adam"]}
    tune = {"space": space, "trials": 8, "sampler": "random", "startup_trials": 2, "warmup": 2}
    cfg = small_tune_config(tmp_path, tune, train={"epochs": 12})
    plain = danlu.tune(cfg, pruner="none", study="plain", progress="quiet")
    pruned = danlu.tune(cfg, pruner="median", study="pruned", progress="quiet")
    states = [r["state"] for r in pruned.trials]
    assert states.count("PRUNED") >= 1 and states.count("COMPLETE") >= 2, states
    assert all(r["state"] == "COMPLETE" for r in plain.trials) and len(plain.trials) == 8
    # the random sampler draws the same 8 configurations in both searches
    key = lambda r: r["trial"]  # noqa: E731
    assert [r["train.lr"] for r in sorted(plain.trials, key=key)] == [
        r["train.lr"] for r in sorted(pruned.trials, key=key)
    ]
    epochs_plain, epochs_pruned = trial_epochs(plain.study_dir), trial_epochs(pruned.study_dir)
    assert epochs_plain == 8 * 12
    assert epochs_pruned < epochs_plain
    assert epochs_pruned == sum(r["epochs"] for r in pruned.trials)
    # a pruned trial's run folder is consistent: its metrics up to the pruning, marked pruned
    row = next(r for r in pruned.trials if r["state"] == "PRUNED")
    run = pruned.study_dir / row["run"]
    marker = yaml.safe_load((run / "trial.json").read_text())
    assert marker["state"] == "PRUNED" and list((run / "checkpoints").glob("last-*/state.pt"))
    assert len(list(csv.DictReader((run / "metrics.csv").open()))) == row["epochs"] >= tune["warmup"]


@pytest.mark.parametrize("pruner", ["hyperband", "successive_halving"])
def test_other_pruners_run(tmp_path, pruner):
    cfg = small_tune_config(tmp_path, {"space": {"train.lr": {"log_float": [1e-5, 0.3]}}, "trials": 4})
    result = danlu.tune(cfg, pruner=pruner, progress="quiet")
    assert len(result.trials) == 4 and result.best_trial is not None


# ------------------------------------------------------------------ quality bar 3: failures and Ctrl-C
BOOM = '''
import torch
from torch import nn


class Boom(nn.Module):
    """A user model that raises mid-training when asked to."""

    def __init__(self, schema, out_dim, explode=False):
        super().__init__()
        self.lin = nn.Linear(schema.n_inputs, out_dim)
        self.explode, self.calls = explode, 0

    def forward(self, x, x_cat=None):
        self.calls += 1
        if self.explode and self.calls > 3:
            raise RuntimeError("boom: the model exploded")
        return self.lin(x)
'''


def test_failed_trial_is_recorded_and_the_search_goes_on(tmp_path, monkeypatch):
    (tmp_path / "boom_model.py").write_text(BOOM, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    space = {"model.params.explode": [True, False], "train.lr": [0.01, 0.1]}
    tune = {"sampler": "grid", "trials": None, "space": space}  # trials: every grid point
    cfg = small_tune_config(tmp_path, tune, model={"type": "boom_model:Boom"})
    cfg_raw = yaml.safe_load(cfg.read_text())
    cfg_raw["model"] = {"type": "boom_model:Boom", "params": {"explode": False}}
    cfg.write_text(yaml.safe_dump(cfg_raw), encoding="utf-8")
    result = danlu.tune(cfg, progress="quiet")
    rows = {r["trial"]: r for r in result.trials}
    assert len(rows) == 4  # every grid point ran: the failures did not stop the search
    failed = [r for r in rows.values() if r["state"] == "FAIL"]
    assert len(failed) == 2 and all(r["model.params.explode"] is True for r in failed)
    assert all(r["error"] == "RuntimeError: boom: the model exploded" for r in failed)
    assert result.best_params["model.params.explode"] is False
    csv_rows = read_trials(result.study_dir)
    assert sorted(r["state"] for r in csv_rows) == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]
    run = result.study_dir / failed[0]["run"]
    assert "RuntimeError: boom" in (run / "error.txt").read_text()
    assert yaml.safe_load((run / "trial.json").read_text())["state"] == "FAIL"


HOLD = """
import os
import sys
import time
from pathlib import Path

from torch import nn

trained = 0  # models that trained in this process: one per trial


class Hold(nn.Module):
    \"\"\"A user model that holds one trial mid-training when a test asks (HOLD_DIR): the
    `hold_trial`-th model this process trains (in a tune worker only, if `worker_only`) writes
    HOLD_DIR/held with its process id at its first batch and waits until HOLD_DIR/go exists.
    One hold per search (HOLD_DIR/claimed): a trial run again does not hold.\"\"\"

    def __init__(self, schema, out_dim, hold_trial=0, worker_only=False):
        super().__init__()
        self.lin = nn.Linear(schema.n_inputs, out_dim)
        self.hold_trial, self.worker_only, self.started = hold_trial, worker_only, False

    def forward(self, x, x_cat=None):
        global trained
        if self.training and not self.started:  # the first batch of a trial's training
            self.started = True
            trained += 1
            worker = "worker" in sys.argv  # python -m danlu.tuning worker ...
            asked = "HOLD_DIR" in os.environ and (worker or not self.worker_only)
            if asked and trained == self.hold_trial + 1:
                self._hold(Path(os.environ["HOLD_DIR"]))
        return self.lin(x)

    def _hold(self, d):
        try:
            os.close(os.open(d / "claimed", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        (d / "held.tmp").write_text(str(os.getpid()))
        (d / "held.tmp").rename(d / "held")
        while not (d / "go").exists():
            time.sleep(0.01)
"""


def hold_config(tmp_path: Path, tune: dict[str, Any], params: dict[str, Any], **sections: Any) -> Path:
    """small_tune_config with the Hold model (hold_model.py in tmp_path)."""
    (tmp_path / "hold_model.py").write_text(HOLD, encoding="utf-8")
    (tmp_path / "hold").mkdir()
    cfg = small_tune_config(tmp_path, tune, **sections)
    raw = yaml.safe_load(cfg.read_text())
    raw["model"] = {"type": "hold_model:Hold", "params": params}
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return cfg


def start_tune(tmp_path: Path, *args: Any) -> subprocess.Popen[str]:
    """`danlu tune ARGS` in tmp_path, finding hold_model there, holding when the model says."""
    env = _env({"HOLD_DIR": str(tmp_path / "hold")})
    env["PYTHONPATH"] += os.pathsep + str(tmp_path)
    return subprocess.Popen(
        [sys.executable, "-m", "danlu", "tune", *map(str, args)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(condition: Any, proc: subprocess.Popen[str] | list[subprocess.Popen[str]], what: str) -> None:
    """Poll `condition` while `proc` (any of them) runs. The 600 s bound only keeps a broken
    search from hanging the suite; the outcome never depends on how long anything takes."""
    procs = proc if isinstance(proc, list) else [proc]
    give_up = time.monotonic() + 600
    while not condition():
        if all(p.poll() is not None for p in procs):
            errs = "\n".join(p.communicate()[1] for p in procs)
            pytest.fail(f"danlu tune ended (exit {[p.returncode for p in procs]}) before {what}:\n{errs}")
        if time.monotonic() > give_up:
            for p in procs:
                p.kill()
            pytest.fail(f"no {what} after 600 s:\n" + "\n".join(p.communicate()[1] for p in procs))
        time.sleep(0.02)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_resume_continues(tmp_path, monkeypatch):
    """Ctrl-C while trial 2 trains (held by the model until the signal was sent, so that
    exactly trials 0 and 1 finished before it, on any machine)."""
    tune = {"space": {"train.lr": {"log_float": [1e-3, 0.1]}}, "trials": 50}
    cfg = hold_config(tmp_path, tune, {"hold_trial": 2}, train={"epochs": 30})
    hold = tmp_path / "hold"
    proc = start_tune(tmp_path, cfg)
    try:
        wait_until((hold / "held").exists, proc, "trial 2 started training")
        proc.send_signal(signal.SIGINT)  # the first Ctrl-C: the trial stops after its batch
        (hold / "go").touch()
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    study = tmp_path / "runs" / "t-tune"
    before = read_trials(study)
    assert sorted((r["trial"], r["state"]) for r in before) == [
        ("0", "COMPLETE"), ("1", "COMPLETE"), ("2", "INTERRUPTED")
    ]  # fmt: skip
    # without --resume the study is not silently mixed with a new one
    assert_user_error(invoke("tune", cfg), "a study is already there", "--resume")
    monkeypatch.syspath_prepend(str(tmp_path))  # hold_model for the trials run here (no HOLD_DIR)
    result = danlu.tune(cfg, resume=True, trials=4, progress="quiet")
    counted = [r for r in result.trials if r["state"] != "INTERRUPTED"]
    assert len(counted) == 4 and all(r["state"] == "COMPLETE" for r in counted)
    numbers = [r["trial"] for r in result.trials]
    assert sorted(numbers) == [0, 1, 2, 3, 4]
    runs = [r["run"] for r in result.trials]
    assert len(runs) == len(set(runs)) and all((study / r).is_dir() for r in runs)
    assert len({r["train.lr"] for r in counted}) == 4
    # the trials that were done before Ctrl-C were kept, not re-run
    assert {0, 1} <= {r["trial"] for r in counted}


# ------------------------------------------------------------------ a worker killed or stopped mid-trial
FAULT_TUNE = {
    "space": {"train.lr": {"log_float": [1e-3, 0.1]}},
    "trials": 4,
    "heartbeat": 1,
    "grace_period": 3,
}


def study_trials(tmp_path: Path) -> list[Any]:
    study = optuna.load_study(
        study_name="t-tune", storage=tuning.open_storage(None, tmp_path / "runs" / "t-tune")
    )
    return study.get_trials()


def assert_dead_trial_ran_again(tmp_path: Path, pid: int, reason: str) -> None:
    """The held trial is FAIL with why, its configuration ran again as another trial, and the
    search has its 4 trials: trials.csv, best.yaml and report.md written without --resume."""
    trials = study_trials(tmp_path)
    dead = [t for t in trials if t.state.name == "FAIL" and not t.user_attrs.get("surplus")]
    assert len(dead) == 1, [(t.number, t.state.name, t.user_attrs) for t in trials]
    assert dead[0].system_attrs["danlu_heartbeat"][1] == pid
    assert dead[0].user_attrs["error"].startswith(f"abandoned: {reason}")
    again = [t for t in trials if t.user_attrs.get("retry_of") == dead[0].number]
    assert len(again) == 1 and again[0].state.name == "COMPLETE" and again[0].params == dead[0].params
    study = tmp_path / "runs" / "t-tune"
    rows = read_trials(study)
    assert sorted(r["state"] for r in rows) == ["COMPLETE"] * 4 + ["FAIL"], rows
    assert next(r for r in rows if r["state"] == "FAIL")["error"].startswith("abandoned: ")
    assert (study / "best.yaml").is_file() and (study / "report.md").is_file()


@pytest.mark.slow
def test_killed_worker_trial_fails_and_runs_again(tmp_path):
    """kill -9 of a --jobs worker mid-trial: its trial is failed (its process is gone) and run
    again, the search finishes without --resume, and its results were written as trials
    finished, while the worker's trial still ran."""
    cfg = hold_config(tmp_path, FAULT_TUNE, {"worker_only": True})
    hold, study = tmp_path / "hold", tmp_path / "runs" / "t-tune"
    proc = start_tune(tmp_path, cfg, "--jobs", "2")
    try:
        wait_until((hold / "held").exists, proc, "the worker's trial started training")
        # the other trials finish while the worker's trial is held: results are there already
        wait_until(lambda: (study / "best.yaml").is_file(), proc, "best.yaml while a trial runs")
        assert any(r["state"] == "COMPLETE" for r in read_trials(study))
        pid = int((hold / "held").read_text())
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        (hold / "go").touch()  # a worker left holding by a failure here ends
        proc.kill()
    assert proc.returncode == 0, err
    assert "tune worker 1 stopped (killed by SIGKILL)" in err and "Traceback" not in err
    assert "abandoned: its process" in err  # the trial's line
    assert "best config:" in out
    assert_dead_trial_ran_again(tmp_path, pid, f"its process {pid} stopped")


@pytest.mark.slow
def test_stopped_worker_trial_fails_and_the_worker_goes_on(tmp_path):
    """A worker stopped (SIGSTOP) past the grace period: its trial has no heartbeat, is failed
    and run again; the worker, continued, finds its trial failed, says so in one line and
    ends cleanly (exit 0, no traceback)."""
    cfg = hold_config(tmp_path, FAULT_TUNE, {"worker_only": True})
    hold = tmp_path / "hold"
    proc = start_tune(tmp_path, cfg, "--jobs", "2")
    try:
        wait_until((hold / "held").exists, proc, "the worker's trial started training")
        pid = int((hold / "held").read_text())
        os.kill(pid, signal.SIGSTOP)
        try:
            (hold / "go").touch()  # it trains on once continued

            def failed() -> bool:
                return any(t.state.name == "FAIL" for t in study_trials(tmp_path))

            wait_until(failed, proc, "the stopped worker's trial failed")
        finally:
            os.kill(pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "tune worker" not in err and "Traceback" not in err  # the worker ended well
    log = (tmp_path / "runs" / "t-tune" / "workers" / "worker-1.log").read_text()
    assert "Traceback" not in log and "abandoned: another process failed it" in log, log
    assert_dead_trial_ran_again(tmp_path, pid, "no heartbeat for 3s")


@pytest.mark.slow
def test_resume_keeps_a_running_orphaned_worker_trial(tmp_path):
    """The search is killed (kill -9) while its worker trains a trial; --resume, started while
    that orphaned worker still runs, runs the dead search's own trial again but leaves the
    worker's trial to it, and waits for it; the worker finishes it without a traceback."""
    cfg = hold_config(tmp_path, FAULT_TUNE, {"worker_only": True})
    hold, study = tmp_path / "hold", tmp_path / "runs" / "t-tune"
    proc = start_tune(tmp_path, cfg, "--jobs", "2")
    try:
        wait_until((hold / "held").exists, proc, "the worker's trial started training")
        proc.kill()
        proc.communicate()
    except BaseException:
        (hold / "go").touch()  # a worker left holding by a failure here ends
        raise
    finally:
        proc.kill()
    pid = int((hold / "held").read_text())
    held = next(t.number for t in study_trials(tmp_path) if t.system_attrs["danlu_heartbeat"][1] == pid)
    resumed = start_tune(tmp_path, cfg, "--resume")
    try:
        # the resumed search runs the rest, then waits for the orphan's trial: release it
        lines = []
        for line in resumed.stderr:
            lines.append(line)
            if line.startswith(f"waiting for trial {held}, running in another process ({pid})"):
                break
        assert lines and lines[-1].startswith("waiting for trial"), "".join(lines)
        assert next(t for t in study_trials(tmp_path) if t.number == held).state.name == "RUNNING"
        (hold / "go").touch()
        _, err = resumed.communicate(timeout=300)
    finally:
        (hold / "go").touch()
        resumed.kill()
    assert resumed.returncode == 0, err
    trials = {t.number: t for t in study_trials(tmp_path)}
    assert trials[held].state.name == "COMPLETE"  # the orphan's trial was kept, and it finished it
    rows = read_trials(study)
    assert sum(r["state"] == "COMPLETE" for r in rows) == 4, rows
    log = (study / "workers" / "worker-1.log").read_text()
    assert "Traceback" not in log, log


def test_resume_continues_to_the_trial_count(tmp_path):
    cfg = small_tune_config(tmp_path, {"space": {"train.lr": {"log_float": [1e-3, 0.1]}}, "sampler": "tpe"})
    first = danlu.tune(cfg, trials=2, progress="quiet")
    assert [r["trial"] for r in first.trials] != [] and len(first.trials) == 2
    second = danlu.tune(cfg, trials=4, resume=True, progress="quiet")
    assert sorted(r["trial"] for r in second.trials) == [0, 1, 2, 3]
    assert len({r["train.lr"] for r in second.trials}) == 4
    assert {r["train.lr"] for r in first.trials} <= {r["train.lr"] for r in second.trials}
    # nothing left to do but --refit: the best config retrained on train+val, scored on test
    again = danlu.tune(cfg, trials=4, resume=True, refit=True, progress="quiet")
    assert len(again.trials) == 4
    best_run = yaml.safe_load((again.best_run / "model.json").read_text())
    refit = yaml.safe_load((again.refit.path / "model.json").read_text())
    assert refit["sizes"] == {"train": best_run["sizes"]["train"] + best_run["sizes"]["val"],
                              "test": best_run["sizes"]["test"]}  # fmt: skip
    assert again.refit.metrics["split"] == "test" and again.refit.path == again.study_dir / "refit"
    assert again.refit.config.train.lr == pytest.approx(again.best_params["train.lr"])
    assert len(again.refit.history) == best_run["best_epoch"]  # as long as the best trial's best epoch


def test_timeout_stops_starting_trials(tmp_path):
    """No trial starts after --timeout: trial 0 is held (Hold model) until the search's
    deadline, set before trial 0 started, has passed, so the search ends after that one
    trial on any machine (before: 1 s of trials, none on a machine slow to start one)."""
    cfg = hold_config(tmp_path, {"space": {"train.lr": {"log_float": [1e-3, 0.1]}}, "trials": 500}, {})
    hold = tmp_path / "hold"
    proc = start_tune(tmp_path, cfg, "--timeout", "1s")
    try:
        wait_until((hold / "held").exists, proc, "trial 0 started training")
        past = time.time() + 1.0  # the deadline is 1 s after a moment before this one
        while time.time() <= past:
            time.sleep(0.05)
        (hold / "go").touch()
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    rows = read_trials(tmp_path / "runs" / "t-tune")
    assert [(r["trial"], r["state"]) for r in rows] == [("0", "COMPLETE")]
    assert (
        config_mod.TuneConfig(timeout="1h30m").timeout == 5400
        and config_mod.TuneConfig(timeout=90).timeout == 90
    )
    with pytest.raises(danlu.DanluError, match="not a duration"):
        config_mod.load({"data": {"source": "iris"}, "tune": {"timeout": "soon"}})


# --------------------------------------------------------------------------- CLI end to end, --jobs 2
@pytest.mark.slow
def test_cli_end_to_end_with_two_jobs(tmp_path):
    space = {"train.lr": {"log_float": [1e-3, 0.1]}, "model.hidden": {"choice": [[8], [16, 8]]}}
    cfg = small_tune_config(tmp_path, {"trials": 4})  # the space comes from its own file
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space), encoding="utf-8")
    args = ["--space", "space.yaml", "--jobs", "2", "--set", "eval.plots=true"]
    result = cli("tune", cfg, *args, cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stderr
    study = tmp_path / "runs" / "t-tune"
    trial_lines = [line for line in result.stderr.splitlines() if line.startswith("trial ")]
    assert len(trial_lines) == 4, result.stderr  # one line per finished trial
    assert "rank" in result.stdout and "val.loss ↓" in result.stdout and "best config:" in result.stdout
    for name in ("trials.csv", "best.yaml", "report.md", "study.json", "study.yaml", "journal.log"):
        assert (study / name).is_file(), name
    assert (study / "plots" / "history.png").stat().st_size > 1000
    report = (study / "report.md").read_text()
    assert "![optimization history](plots/history.png)" in report and "## Trials" in report
    rows = read_trials(study)
    assert sorted(int(r["trial"]) for r in rows) == [0, 1, 2, 3]
    assert len({r["train.lr"] for r in rows}) == 4  # two processes, no duplicated configuration
    assert len(list((study / "workers").glob("worker-*.log"))) == 1  # this process is the other one
    # best.yaml is a complete run config holding the best trial's values
    best = config_mod.load(study / "best.yaml")
    top = min(rows, key=lambda r: float(r["val.loss"]) if r["state"] == "COMPLETE" else 1e9)
    assert best.train.lr == pytest.approx(float(top["train.lr"]))
    trial_cfg = config_mod.load(study / top["run"] / "config.yaml")
    assert best.model == trial_cfg.model and best.train.optimizer == trial_cfg.train.optimizer
    assert best.output.dir == str(tmp_path / "runs")

    shown = cli("tune", "show", study, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "rank" in shown.stdout and "complete" in shown.stdout and "best config:" in shown.stdout
    assert f"│ {top['trial']}" in shown.stdout.split("\n", 4)[3]  # the best trial is ranked first
    assert_user_error(invoke("tune", "show", tmp_path / "nope"), "nope", "no such study folder")
    assert_user_error(invoke("tune", "show", tmp_path), "not a danlu study folder")


# ------------------------------------------------------------------ PostgreSQL: two processes, one study
def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on loopback with a database `optuna`; stopped afterwards.
    As root, the server runs as the `postgres` system user (initdb refuses root)."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb); scripts/system_deps.sh")
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install psycopg2-binary)")
    prefix: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        if runuser is None:
            pytest.skip("running as root without runuser to start PostgreSQL as 'postgres'")
        prefix = [runuser, "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="danlu-pg-"))
    root.chmod(0o777)
    data = root / "data"
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C"}

    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, *cmd], capture_output=True, text=True, env=env, timeout=120, cwd=root)

    init = run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    opts = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=50"
    start = run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start")
    try:
        if start.returncode != 0:
            log = (root / "log").read_text(errors="replace")[-300:] if (root / "log").exists() else ""
            pytest.skip(f"PostgreSQL did not start: {start.stderr.strip()[-300:]} {log}")
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE optuna")
        conn.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_processes_share_a_postgresql_study(tmp_path, postgres_url):
    """Two searches on one study: the first trial to start holds (Hold model) until the other
    process has started one too, so that both take part on any machine, however fast either
    one starts."""
    tune = {"space": {"train.lr": {"log_float": [1e-3, 0.1]}}, "sampler": "tpe"}
    cfg = hold_config(tmp_path, tune, {})
    hold = tmp_path / "hold"
    procs = [start_tune(tmp_path, cfg, "--storage", postgres_url, "--study", "shared", "--trials", "6")]
    procs.append(start_tune(tmp_path, cfg, "--storage", postgres_url, "--study", "shared", "--trials", "6"))
    try:
        wait_until((hold / "held").exists, procs, "a trial started")
        pid = int((hold / "held").read_text())
        other = next(p for p in procs if p.pid != pid)
        storage = tuning.open_storage(postgres_url, tmp_path)

        def other_started() -> bool:
            trials = optuna.load_study(study_name="shared", storage=storage).get_trials()
            return any(t.system_attrs.get("danlu_heartbeat", [None, pid])[1] != pid for t in trials)

        wait_until(other_started, other, "the other process started a trial")
    finally:
        (hold / "go").touch()
    outputs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    # which trials each process ran: its one line per finished trial
    ran = [
        [int(line.split(":")[0].split()[1]) for line in err.splitlines() if line.startswith("trial ")]
        for _, err in outputs
    ]
    assert all(ran), ran  # both processes worked on the study
    assert sorted(ran[0] + ran[1]) == list(range(6)), ran  # they add up, nobody ran a trial twice
    study = optuna.load_study(study_name="shared", storage=tuning.open_storage(postgres_url, tmp_path))
    # two workers asking at the same moment may get a 7th trial number: it is told FAIL as
    # "surplus" before running anything and does not count (see danlu.tuning.trials.work)
    every = study.get_trials()
    surplus = [t for t in every if t.user_attrs.get("surplus")]
    assert all(t.state.name == "FAIL" and "run" not in t.user_attrs for t in surplus)
    trials = [t for t in every if not t.user_attrs.get("surplus")]
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.params["train.lr"] for t in trials}) == 6
    assert len({t.user_attrs["run"] for t in trials}) == 6
    assert all((tmp_path / "runs" / "shared" / t.user_attrs["run"] / "model.json").is_file() for t in trials)
    shown = tuning.show(postgres_url, "shared")
    assert len(shown.rows) == 6 and shown.rows[0]["rank"] == 1
    assert shown.best_config is not None


def test_report_plots_lay_out_without_overlap(tmp_path):
    """The slice plot's colour bar stays beside its last panel (tight_layout used to draw it
    over that panel, with a warning), and no plot warns."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    from danlu.tuning.report import _fit, _plots

    space = {"train.lr": {"log_float": [1e-4, 0.1]}, "model.hidden": {"choice": [[8], [16], [16, 8]]}}
    search = tuning.prepare({"data": {"source": "iris"}, "tune": {"space": space}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    distributions = {p.key: p.distribution() for p in search.params}
    for k in range(6):
        trial = study.ask(distributions)
        trial.report(1.0 / (k + 1), 0)
        study.tell(trial, 1.0 / (k + 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        made = _plots(study, search, tmp_path)
    assert {name for name, _ in made} == {"history.png", "importances.png", "parallel.png", "slice.png"}
    assert all((tmp_path / name).stat().st_size > 5000 for name, _ in made)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = vis.plot_slice(study)
    fig = axes.flat[0].figure
    _fit(fig, panels=len(axes.flat))
    fig.canvas.draw()
    bar = next(ax for ax in fig.axes if ax.get_label() == "<colorbar>")
    last = max((ax for ax in fig.axes if ax is not bar), key=lambda ax: ax.get_position().x1)
    assert bar.get_position().x0 > last.get_position().x1
    plt.close("all")
