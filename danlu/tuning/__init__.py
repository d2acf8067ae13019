"""Hyperparameter search (`danlu tune`) on top of Optuna.

The study, samplers, pruners and storage are Optuna's. danlu adds the space syntax over
run-config keys, runs every trial as an ordinary run (`api.train`) whose evaluations are
reported to the pruner through `on_eval`, and writes the study folder:

  <output.dir>/<study>/
    study.yaml       the base config with its tune section (what the workers run)
    study.json       the study's name and storage, for --resume and `danlu tune show`
    journal.log      Optuna's journal file storage (the default storage)
    trials/trial-0007/   one run folder per trial, with trial.json (state, value, error)
    trials.csv, best.yaml, report.md, plots/
    refit/           --refit: the best config trained on train+val, evaluated on test

The default storage is Optuna's JournalStorage on a file in the study folder rather than
SQLite: it is Optuna's recommended storage for several processes on one machine (appends
under a file lock, no "database is locked" under concurrent writes) and needs no SQLAlchemy.
`--storage` takes any URL Optuna accepts (sqlite:///..., postgresql://...) to share a study.

`--jobs J` runs trials in this process and starts J-1 worker processes once (`python -m
danlu.tuning worker STUDY_DIR I`), each running trials until the study has its trial count,
with cores/J torch threads each. The workers start before this process imports torch, so
their start-up overlaps its own. This process also prints one line per finished trial (its
own and the workers', read from the storage) and rewrites the summary after each. A worker
that dies (kill -9, out of memory) does not stop the search: its trial is failed and run
again (heartbeat.py).

  space.py    tune.space -> Params, checked against the run-config schema
  study.py    the search setup (sampler, pruner, trial count) and the storage
  pruners.py  the median pruner that also judges against trials running in other processes
  trials.py   one trial as a danlu run, the ask/tell loop, the --jobs workers
  heartbeat.py  running trials recorded alive; a dead process's trials failed and run again
  report.py   progress, leaderboard, trials.csv, best.yaml, report.md + plots, `tune show`
  here        tune(): open or resume the study, run, summarize, --refit
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from danlu import fileio, registry
from danlu.config import RunConfig
from danlu.errors import DanluError
from danlu.tuning.heartbeat import Watch
from danlu.tuning.report import Reporter, StudySummary, TuneResult, print_leaderboard, show, summarize
from danlu.tuning.space import Param, parse_space
from danlu.tuning.study import (
    Search,
    SearchError,
    SearchInterrupted,
    mask_url,
    open_storage,
    prepare,
    read_study_json,
    trial_config,
)
from danlu.tuning.trials import run_trial, run_workers, search_loop, work

__all__ = [
    "Param",
    "Search",
    "StudySummary",
    "TuneResult",
    "open_storage",
    "parse_space",
    "prepare",
    "print_leaderboard",
    "refit_best",
    "run_trial",
    "show",
    "summarize",
    "tune",
    "work",
]


@registry.own_context  # a saved study's names are checked until tune returns
def tune(
    config: str | Path | dict[str, Any] | RunConfig,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    space: str | Path | None = None,
    trials: int | None = None,
    sampler: str | None = None,
    pruner: str | None = None,
    metric: str | None = None,
    timeout: float | str | None = None,
    jobs: int = 1,
    storage: str | None = None,
    study: str | None = None,
    resume: bool = False,
    refit: bool = False,
    progress: str = "auto",
    trust_code: bool = False,
) -> TuneResult:
    """Search the config's `tune.space`; every trial is an ordinary danlu run.

    danlu.tune("examples/tune_tutorial.yaml", trials=20, jobs=2).best_params

    `config` may also be a study folder (or its study.yaml) to continue with resume=True:
    that config was saved by someone, so user code it names ("package.module:Name") is
    imported only with trust_code (`--trust-code`), as for `train --resume`.
    """
    if jobs < 1:
        raise DanluError(f"--jobs {jobs}: give 1 or more worker processes")
    options = {"trials": trials, "sampler": sampler, "pruner": pruner, "metric": metric, "timeout": timeout}
    saved = _saved_study(config)
    if saved is not None:
        config = saved / "study.yaml"
        registry.distrust(config, trust_code)  # the trials of this process, the workers' below
        meta = read_study_json(saved)
        study = study or meta.get("study")
        storage = storage or meta.get("storage")
    search = prepare(config, overrides=overrides, space=space, study=study, storage=storage, **options)
    if saved is not None:
        search.study_dir = saved
        if not trust_code:  # refused in one line now, not trial by trial
            search.untrusted = str(config)
            registry.refuse_code_refs(search.raw, config)
    reporter = Reporter(search, progress)
    fresh = search.storage is None and not search.study_dir.exists()
    optuna_study = _open_study(search, resume, reporter)
    deadline = time.time() + search.timeout if search.timeout else None
    interrupted = False
    with reporter:
        reporter.start(optuna_study)
        try:
            if jobs == 1:
                search_loop(search, optuna_study, reporter, deadline)
            else:
                run_workers(search, optuna_study, jobs, reporter, deadline)
        except (SearchInterrupted, KeyboardInterrupt):
            interrupted = True
        except SearchError:
            # a mistake in the search itself: leave no half-made study behind to trip the rerun
            if fresh and not any(
                t.state == TrialState.COMPLETE for t in optuna_study.get_trials(deepcopy=False)
            ):
                import shutil

                shutil.rmtree(search.study_dir, ignore_errors=True)
            raise
    result = summarize(search, optuna_study, plots=not interrupted and search.cfg.eval.plots)
    result.interrupted = interrupted
    if interrupted:
        return result
    if progress != "quiet":
        print_leaderboard(result.trials, search.metric, search.direction, [p.key for p in search.params])
    if refit:
        result.refit = refit_best(search, result, progress)
    return result


def _saved_study(config: Any) -> Path | None:
    """The study folder when `config` is one, or the study.yaml inside one (beside its
    study.json): a config someone saved, not one the user wrote."""
    if not isinstance(config, str | Path):
        return None
    p = Path(config)
    folder = p if p.is_dir() else p.parent if p.name == "study.yaml" else None
    if folder is None:
        return None
    if not (folder / "study.json").is_file() or not (folder / "study.yaml").is_file():
        if p.is_dir():
            raise DanluError(f"{p}: not a study folder (no study.json and study.yaml); give a config YAML")
        return None
    return folder


def _open_study(search: Search, resume: bool, reporter: Reporter) -> optuna.Study:
    """Create the study (or join/resume it) and write study.yaml / study.json."""
    d = search.study_dir
    marker = d / "study.json"
    if search.storage is None:
        if resume and not marker.is_file():
            raise DanluError(
                f"--resume: no study to resume in {d} (no study.json); run without --resume first"
            )
        if not resume and marker.is_file():
            raise DanluError(
                f"{d}: a study is already there; continue it with --resume or start another with --study NAME"
            )
    d.mkdir(parents=True, exist_ok=True)
    storage = search.open_storage()
    known = optuna.study.get_all_study_names(storage)
    if resume and search.study_name not in known:
        raise DanluError(
            f"--resume: no study '{search.study_name}' in the storage; it holds: {', '.join(known) or 'none'}"
        )
    study = optuna.create_study(
        study_name=search.study_name,
        storage=storage,
        pruner=search.pruner(),
        direction=search.direction,
        load_if_exists=True,
    )
    if study.direction.name.lower() != search.direction:
        raise DanluError(
            f"study '{search.study_name}' {study.direction.name.lower()}s its objective but tune.metric"
            f" {search.metric} is to {search.direction}; set tune.direction or start another --study"
        )
    search.queue_startup(study)
    search.set_sampler(study)
    if search.study_name in known and not resume:
        reporter.print(f"joining study '{search.study_name}' ({len(study.trials)} trials so far)")
    if resume:
        # trials left RUNNING by a process that died run again; an orphaned worker of a killed
        # search that still runs its trial keeps it (heartbeat.py)
        Watch(search.tune.grace_period).fail_dead(study)
    study.set_user_attr(
        "danlu", {"metric": search.metric, "config": yaml.safe_dump(search.raw, sort_keys=False)}
    )
    fileio.write_text(d / "study.yaml", yaml.safe_dump(search.raw, sort_keys=False, allow_unicode=True))
    fileio.write_json(
        marker,
        {
            "study": search.study_name,
            "storage": None if search.storage is None else mask_url(search.storage),
            "metric": search.metric,
            "direction": search.direction,
        },
    )
    return study


def refit_best(search: Search, result: TuneResult, progress: str = "auto") -> Any:
    """The best config trained on train+val for as long as its trial trained to its best
    evaluation, then evaluated on the test split (study/refit)."""
    from danlu import api
    from danlu.run import RunDir

    if result.best_trial is None:
        raise DanluError("--refit: no trial completed, so there is no best config to retrain")
    cfg = search.cfg
    if not (cfg.data.source or cfg.data.path) or cfg.task.type == "language_modeling":
        raise DanluError(
            "--refit merges the validation rows into training, which needs data split by fractions"
            " (data.source or data.path); with separate split files, train best.yaml yourself"
        )
    best = RunDir(result.best_run) if result.best_run else None
    history = best.read_history() if best else []
    best_eval = len(history)
    if best is not None and best.model_json.is_file():
        best_eval = int(best.read_model_json().get("best_epoch", best_eval))
    raw = trial_config(search, result.best_params, "refit", search.study_dir)
    raw["data"].setdefault("split", {})["val"] = 0.0  # the test split stays the same rows
    train = raw["train"]
    train.update({"monitor": "train.loss", "early_stopping": None, "restore_best": False})
    if history and (train.get("eval_every") or train.get("max_steps")):
        train["max_steps"] = int(history[best_eval - 1]["step"])
    elif history:
        train["epochs"] = int(history[best_eval - 1]["epoch"])
    raw.setdefault("eval", {})["split"] = "test"
    return api.train(raw, progress="quiet" if progress == "quiet" else "lines")
