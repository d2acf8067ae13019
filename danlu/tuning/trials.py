"""Running trials: one trial as an ordinary danlu run, the ask/tell loop that runs them until
the study has its count, and the worker processes of `--jobs`."""

from __future__ import annotations

import gc
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from danlu import config as config_mod
from danlu import fileio
from danlu.errors import DanluError
from danlu.tuning.heartbeat import HEARTBEAT, HOST, Heartbeat, Watch
from danlu.tuning.study import Search, SearchError, SearchInterrupted, counted, prepare, trial_config

if TYPE_CHECKING:
    from danlu.tuning.report import Reporter


def run_trial(search: Search, study: optuna.Study, trial: optuna.Trial) -> FrozenTrial | None:
    """Train one configuration and tell the study how it went; None when another process
    failed the trial meanwhile, taking this one for dead (see heartbeat.py)."""
    try:
        return _run_trial(search, study, trial)
    except UpdateFinishedTrialError:
        error = "abandoned: another process failed it, taking this one for dead (stopped too long?)"
        print(f"trial {trial.number}: {error}; its configuration runs again", file=sys.stderr, flush=True)
        values = {p.key: p.decode(trial.params[p.key]) for p in search.params}
        _write_trial_json(
            search.trials_dir / f"trial-{trial.number:04d}", trial.number, values, "FAIL", None, error
        )
        return None


def _run_trial(search: Search, study: optuna.Study, trial: optuna.Trial) -> FrozenTrial:
    from danlu import api
    from danlu.run import RunDir
    from danlu.training.trainer import Interrupted

    values = {p.key: p.decode(trial.params[p.key]) for p in search.params}
    name = f"trial-{trial.number:04d}"
    raw = trial_config(search, values, name, search.trials_dir)
    raw.setdefault("eval", {})["plots"] = False  # the study report has the plots that matter
    trial.set_user_attr("run", f"trials/{name}")
    trial.set_user_attr("values", values)
    metric = search.metric

    def on_eval(n: int, row: dict[str, float]) -> None:
        if metric not in row:
            logged = ", ".join(k for k in row if k.startswith(("val.", "train.")))
            raise SearchError(f"tune.metric: '{metric}' is not logged by this task; it logs: {logged}")
        trial.report(row[metric], n)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at evaluation {n}")

    started = time.perf_counter()
    state, value, error = TrialState.COMPLETE, None, None
    run_path = search.trials_dir / name
    try:
        run = api.train(raw, progress="quiet", on_eval=on_eval)
        history = run.history
        best = RunDir(run.path).read_model_json().get("best_epoch", len(history))
        row = history[best - 1] if history and 0 < best <= len(history) else (history[-1] if history else {})
        value = row.get(metric)
        if value is None or not math.isfinite(value):
            state, error = TrialState.FAIL, f"{metric} is {value} (training diverged?)"
        trial.set_user_attr("epochs", len(history))
        test = {k: v for k, v in (run.metrics.get("metrics") or {}).items() if isinstance(v, int | float)}
        trial.set_user_attr("eval", {"split": run.metrics.get("split"), **test})
    except UpdateFinishedTrialError:
        raise  # the trial is no longer this process's (run_trial)
    except optuna.TrialPruned:
        state = TrialState.PRUNED
        trial.set_user_attr("epochs", len(RunDir(run_path).read_history()))
    except SearchError as e:
        trial.set_user_attr("aborted", True)
        _tell(study, trial, TrialState.FAIL, None, str(e), started)
        _write_trial_json(run_path, trial.number, values, "FAIL", None, str(e))
        raise
    except (Interrupted, KeyboardInterrupt):
        trial.set_user_attr("interrupted", True)
        _tell(study, trial, TrialState.FAIL, None, "interrupted (Ctrl-C)", started)
        _write_trial_json(run_path, trial.number, values, "FAIL", None, "interrupted (Ctrl-C)")
        raise SearchInterrupted() from None
    except Exception as e:
        state, error = TrialState.FAIL, _failure_reason(e)
        if run_path.is_dir():
            fileio.write_text(run_path / "error.txt", traceback.format_exc())
    frozen = _tell(study, trial, state, value, error, started)
    _write_trial_json(run_path, trial.number, values, state.name, value, error)
    return frozen


def _tell(
    study: optuna.Study,
    trial: optuna.Trial,
    state: TrialState,
    value: float | None,
    error: str | None,
    started: float,
) -> FrozenTrial:
    trial.set_user_attr("seconds", round(time.perf_counter() - started, 3))
    if error:
        trial.set_user_attr("error", error)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a pruned trial without reports is fine
        return study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)


def _write_trial_json(
    path: Path, number: int, values: dict[str, Any], state: str, value: Any, error: Any
) -> None:
    if path.is_dir():
        fileio.write_json(
            path / "trial.json",
            {"trial": number, "state": state, "value": value, "params": values, "error": error},
        )


def _failure_reason(e: BaseException) -> str:
    """What a failed trial's row says: the first line, with the exception's type unless it is
    a user error (a library's error type is half the story)."""
    text = str(e).strip().splitlines()
    msg = text[0] if text else ""
    return msg if isinstance(e, DanluError) else f"{type(e).__name__}: {msg}".rstrip(": ")


# --------------------------------------------------------------------------- the trial loop
def work(
    search: Search,
    study: optuna.Study,
    on_trial: Callable[[FrozenTrial], None] | None = None,
    deadline: float | None = None,
    watch: Watch | None = None,
) -> int:
    """Run trials until the study has `search.target` of them (or the deadline passes); the
    trials of processes that died are failed and run again on the way."""
    done = 0
    grid = study.sampler if isinstance(study.sampler, optuna.samplers.GridSampler) else None
    distributions = {p.key: p.distribution() for p in search.params}
    watch = watch or Watch(search.tune.grace_period)
    while deadline is None or time.time() < deadline:
        watch.fail_dead(study)
        trials = study.get_trials(deepcopy=False)
        queued = any(t.state == TrialState.WAITING for t in trials)  # a dead trial's point is visited
        if counted(trials) >= search.target or (grid is not None and grid.is_exhausted(study) and not queued):
            break
        trial = study.ask(distributions)
        # another process may have asked between the count and ours: the trial numbers decide
        if counted(study.get_trials(deepcopy=False), below=trial.number) >= search.target:
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
            break
        with Heartbeat(study, trial, search.tune.heartbeat):
            frozen = run_trial(search, study, trial)
        if frozen is None:
            continue
        done += 1
        if on_trial is not None:
            on_trial(frozen)
    return done


def run_workers(
    search: Search, study: optuna.Study, jobs: int, reporter: Reporter, deadline: float | None
) -> None:
    """J processes on this machine: this one runs trials itself, and J-1 workers started once
    each run trials in a loop. They start before this process imports torch, so their
    start-up overlaps its own; every process gets its share of the cores."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        DANLU_TUNE_THREADS=str(threads),
    )
    if search.storage is not None:
        env["DANLU_TUNE_STORAGE"] = search.storage  # not on the command line: it may hold a password
    if search.untrusted is not None:
        env["DANLU_TUNE_UNTRUSTED"] = search.untrusted  # the workers refuse its user code too
    # -P: `python -m` would put the working directory first on sys.path, and an optuna.py (or
    # any module name) there would run in the worker. danlu itself is found as this process
    # found it: where it was imported from only the working directory, that folder is named.
    root, path = str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")
    if root == os.path.realpath(os.getcwd()) and root not in path.split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, path) if p)
    logs = search.study_dir / "workers"
    logs.mkdir(exist_ok=True)
    procs = []
    for i in range(1, jobs):
        cmd = [
            sys.executable,
            "-P",
            "-m",
            "danlu.tuning",
            "worker",
            str(search.study_dir),
            str(i),
            str(deadline or 0),
        ]
        with open(logs / f"worker-{i}.log", "w", encoding="utf-8") as log:
            # their own session: a terminal's Ctrl-C reaches the parent, which forwards it once
            procs.append(
                subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )
    import torch  # after starting the workers: they start up while this process imports it

    own_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        search_loop(search, study, reporter, deadline, procs, logs)
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    finally:
        torch.set_num_threads(own_threads)
    if any(p.returncode == 130 for p in procs):
        raise SearchInterrupted()


def search_loop(
    search: Search,
    study: optuna.Study,
    reporter: Reporter,
    deadline: float | None,
    procs: Sequence[subprocess.Popen[bytes]] = (),
    logs: Path | None = None,
) -> None:
    """Trials in this process until the study has its count, and until this search's workers
    and the other trials running in the study folder ended, each finished or failed as dead
    (its configuration then runs again, here if no other process takes it). A line for every
    trial of this search finished, in any of its processes (on a shared storage, not those of
    searches on other machines); trials.csv and best.yaml are rewritten after each."""
    watch = Watch(search.tune.grace_period)
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    seen = {t.number for t in study.get_trials(deepcopy=False, states=finished)}  # --resume: shown already
    stopped: set[int] = set()
    waiting: set[int] = set()  # trials of other processes, said to be waited for
    pids = {os.getpid(), *(p.pid for p in procs)}

    def ours(t: FrozenTrial) -> bool:
        beat = t.system_attrs.get(HEARTBEAT)
        return search.storage is None or (beat is not None and beat[0] == HOST and beat[1] in pids)

    def report() -> None:
        for t in study.get_trials(deepcopy=False, states=finished):
            if t.number not in seen:
                seen.add(t.number)
                if not t.user_attrs.get("surplus") and ours(t):
                    reporter.trial_done(t)
        for i, p in enumerate(procs, start=1):
            code = p.poll()
            if code == 2 and logs is not None:
                raise SearchError(_worker_error(logs, i))
            if code not in (None, 0, 2, 130) and i not in stopped:
                # killed (or a bug): the trial it ran is failed as dead and runs again
                stopped.add(i)
                how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                where = f"; see {logs / f'worker-{i}.log'}" if logs is not None else ""
                reporter.print(f"tune worker {i} stopped ({how}); the search goes on without it{where}")

    while True:
        alive = any(p.poll() is None for p in procs)
        work(search, study, lambda _: report(), deadline, watch)
        report()
        # in the study folder every process is on this machine: wait for them all (an orphaned
        # worker of a killed search); on a shared storage, for this search's own workers
        running = search.storage is None and study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not alive and not running:
            return
        for t in running if not alive else []:
            if t.number not in waiting:
                waiting.add(t.number)
                pid = (t.system_attrs.get(HEARTBEAT) or [None, "unknown"])[1]
                reporter.print(f"waiting for trial {t.number}, running in another process ({pid})")
        time.sleep(0.05)  # the other processes' last trials: notice their end soon, reading is cheap


def _worker_error(logs: Path, i: int) -> str:
    lines = (logs / f"worker-{i}.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return errors[-1] if errors else (lines[-1] if lines else f"tune worker {i} failed")


def worker_main(study_dir: str, index: str, deadline: str) -> int:
    """One worker process: the study's config from its folder, trials until the count is reached."""
    d = Path(study_dir)
    meta = json.loads((d / "study.json").read_text(encoding="utf-8"))
    if os.environ.get("DANLU_TUNE_UNTRUSTED"):
        from danlu import registry

        registry.distrust(os.environ["DANLU_TUNE_UNTRUSTED"])
    try:
        search = prepare(
            config_mod.read_yaml(d / "study.yaml"),
            study=meta["study"],
            storage=os.environ.get("DANLU_TUNE_STORAGE") or meta["storage"],
        )
        search.study_dir = d
        study = search.load_study(int(index))
        if counted(study.get_trials(deepcopy=False)) >= search.target:
            return 0  # the other processes ran every trial while this one started: skip importing torch
        import torch

        torch.set_num_threads(int(os.environ.get("DANLU_TUNE_THREADS", "1")))
        work(search, study, deadline=float(deadline) or None)
    except DanluError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except (SearchInterrupted, KeyboardInterrupt):
        return 130
    # Every trial is told and written. The interpreter's last garbage collection walks the
    # millions of objects torch and sklearn created (about 0.8 s, while the search waits for
    # this process to end); freezing them skips that walk, files and the storage are closed.
    gc.freeze()
    return 0
