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

`--jobs J` starts J worker processes once (`python -m danlu.tuning worker STUDY_DIR I`),
each running trials until the study has its trial count; the parent only watches the
storage, prints one line per finished trial and writes the summary at the end.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from danlu import config as config_mod
from danlu import fileio
from danlu.config import RunConfig
from danlu.errors import DanluError, did_you_mean
from danlu.evaluation.metrics import direction as metric_direction

KINDS = ("choice", "grid", "float", "log_float", "int", "log_int")
DEFAULT_TRIALS = 20
optuna.logging.set_verbosity(optuna.logging.WARNING)


# --------------------------------------------------------------------------- the space
@dataclass(frozen=True)
class Param:
    """One searched key. Choices that Optuna cannot store (lists, mappings) are stored as
    their JSON text and decoded back when the config is built."""

    key: str
    kind: str  # choice | float | log_float | int | log_int
    values: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    step: float | None = None

    def distribution(self) -> optuna.distributions.BaseDistribution:
        d = optuna.distributions
        if self.kind == "choice":
            return d.CategoricalDistribution([_encode(v) for v in self.values])
        log = self.kind.startswith("log_")
        if self.kind.endswith("int"):
            return d.IntDistribution(int(self.low), int(self.high), log=log, step=int(self.step or 1))
        return d.FloatDistribution(self.low, self.high, log=log, step=self.step)

    def grid(self) -> list[Any]:
        if self.kind == "choice":
            return [_encode(v) for v in self.values]
        return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))  # int ranges

    def decode(self, stored: Any) -> Any:
        if self.kind == "choice":
            return {_encode(v): v for v in self.values}.get(stored, stored)
        return stored


def _encode(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return json.dumps(v)


def parse_space(space: dict[str, Any], raw: dict[str, Any], where: str) -> list[Param]:
    """tune.space -> Params; every key must be a config key and every value valid there."""
    if not space:
        raise DanluError(
            f"{where}: tune.space is empty; give at least one key,"
            " e.g. train.lr: {log_float: [1.0e-4, 1.0e-1]}"
        )
    params = [_parse_one(key, spec, where) for key, spec in space.items()]
    base = {k: v for k, v in raw.items() if k != "tune"}
    for p in params:
        for value in _samples(p):
            trial = copy.deepcopy(base)
            config_mod.set_path(trial, p.key, value, where, label="tune.space:")
            try:
                config_mod.validate(trial, f"{where}: tune.space.{p.key} value {value!r}")
            except DanluError as e:
                raise DanluError(str(e)) from None
    return params


def _parse_one(key: str, spec: Any, where: str) -> Param:
    at = f"{where}: tune.space.{key}"
    if isinstance(spec, list):
        spec = {"choice": spec}
    if not isinstance(spec, dict) or len(spec) != 1:
        raise DanluError(
            f"{at}: give a list of values or one of {{choice: [...]}}, {{float: [low, high]}},"
            f" {{log_float: [low, high]}}, {{int: [low, high]}}, {{log_int: [low, high]}}; got {spec!r}"
        )
    kind, args = next(iter(spec.items()))
    if kind not in KINDS:
        hint = (
            f" (keys are dotted paths: {key}.{kind})"
            if isinstance(args, dict | list) and "." not in key
            else ""
        )
        raise DanluError(
            f"{at}: unknown kind '{kind}'{did_you_mean(kind, KINDS)}; valid: {', '.join(KINDS)}{hint}"
        )
    if kind in ("choice", "grid"):
        if not isinstance(args, list):
            raise DanluError(f"{at}: {kind} takes a list of values, got {args!r}")
        if not args:
            raise DanluError(f"{at}: empty {kind} list; give at least one value")
        encoded = [_encode(v) for v in args]
        if len(set(map(repr, encoded))) != len(encoded):
            raise DanluError(f"{at}: {kind} lists a value twice: {args}")
        return Param(key, "choice", tuple(args))
    is_int = kind.endswith("int")
    if not isinstance(args, list) or len(args) not in (2, 3) or not all(_is_number(a, is_int) for a in args):
        number = "integers" if is_int else "numbers"
        raise DanluError(f"{at}: {kind} takes [low, high] or [low, high, step] ({number}), got {args!r}")
    low, high, *rest = args
    step = rest[0] if rest else None
    if low > high:
        raise DanluError(f"{at}: low {low} is above high {high}")
    if kind.startswith("log_"):
        if low <= 0:
            raise DanluError(
                f"{at}: {kind} range [{low}, {high}] must be above 0 (a log scale cannot reach 0 or"
                f" negatives); use {kind.removeprefix('log_')} for it"
            )
        if step is not None:
            raise DanluError(f"{at}: {kind} takes no step (Optuna's log scales are continuous)")
    if step is not None and step <= 0:
        raise DanluError(f"{at}: step {step} must be above 0")
    if is_int:
        return Param(key, kind, low=int(low), high=int(high), step=step)
    return Param(key, kind, low=float(low), high=float(high), step=None if step is None else float(step))


def _is_number(v: Any, integer: bool) -> bool:
    if isinstance(v, bool):
        return False
    return isinstance(v, int) if integer else isinstance(v, int | float)


def _samples(p: Param) -> list[Any]:
    """Values that stand for the whole range when checking it against the config schema:
    the ends and an inner point (which catches a float range on an integer key)."""
    if p.kind == "choice":
        return list(p.values)
    if p.kind.endswith("int"):
        return [int(p.low), int(p.high)]
    inner = (
        p.low + (p.high - p.low) * 0.3819660113 if p.kind == "float" else math.sqrt(p.low * p.high) * 1.0001
    )
    return [p.low, p.high, inner]


# --------------------------------------------------------------------------- the search setup
@dataclass
class Search:
    """Everything a process needs to run trials of one study."""

    study_dir: Path
    raw: dict[str, Any]  # the resolved base config, tune section included
    cfg: RunConfig
    params: list[Param]
    metric: str
    direction: str  # minimize | maximize
    study_name: str
    storage: str | None  # None: the journal file in the study folder
    target: int  # trials the study should end with
    timeout: float | None

    @property
    def tune(self) -> Any:
        return self.cfg.tune

    @property
    def trials_dir(self) -> Path:
        return self.study_dir / "trials"

    def open_storage(self) -> Any:
        return open_storage(self.storage, self.study_dir)

    def load_study(self, worker: int | None = None) -> optuna.Study:
        """The study with this process's sampler and pruner (workers differ in sampler seed)."""
        study = optuna.load_study(study_name=self.study_name, storage=self.open_storage())
        study.sampler = self.sampler(worker, len(study.trials))
        study.pruner = self.pruner()
        return study

    def sampler(self, worker: int | None = None, done: int = 0) -> optuna.samplers.BaseSampler:
        """The sampler, seeded from the config; a resumed study or a second worker gets other
        seeds, so that it does not draw the same configurations again."""
        t = self.tune
        seed: int | None = (t.seed if t.seed is not None else self.cfg.seed) + done
        if self.storage is not None:
            seed = None  # processes on other machines share the study: fresh entropy each
        elif worker is not None:
            seed += 1000 * (worker + 1)
        if t.sampler == "grid":
            return _GridSampler({p.key: p.grid() for p in self.params}, seed=seed)
        if t.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if t.sampler == "cmaes":
            return optuna.samplers.CmaEsSampler(
                seed=seed, n_startup_trials=max(t.startup_trials, 1), warn_independent_sampling=False
            )
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=t.startup_trials)

    def pruner(self) -> optuna.pruners.BasePruner:
        t = self.tune
        if t.pruner == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=t.startup_trials, n_warmup_steps=t.warmup)
        if t.pruner == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=max(t.warmup, 1))
        if t.pruner == "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(t.warmup, 1))
        return optuna.pruners.NopPruner()


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler. Its after_trial calls study.stop(), which only works inside
    study.optimize; the ask/tell loop (`work`) checks is_exhausted itself."""

    def after_trial(self, *args: Any) -> None:
        pass


def open_storage(url: str | None, study_dir: Path) -> Any:
    """The journal file in the study folder, or an Optuna RDB storage; errors name the URL."""
    if url is None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(study_dir / "journal.log")))
    shown = _mask(url)
    if "://" not in url:
        raise DanluError(
            f"--storage {shown}: not a database URL; e.g. sqlite:///study.db or postgresql://host/db"
        )
    url = _with_driver(url)
    engine: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine["connect_args"] = {"timeout": 60}  # several processes: wait for the lock, do not fail
    elif url.startswith("postgres"):
        engine["connect_args"] = {"connect_timeout": 10}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except ImportError:
        driver = "psycopg2-binary" if url.startswith("postgres") else "the database's SQLAlchemy driver"
        raise DanluError(
            f"--storage {shown}: no database driver for it is installed: pip install {driver}"
        ) from None
    except Exception as e:  # sqlalchemy.exc.*: unreachable host, bad credentials, bad URL
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()
        raise DanluError(
            f"--storage {shown}: cannot open the study storage: {reason[0] if reason else type(e).__name__}"
        ) from None


def _with_driver(url: str) -> str:
    """postgresql:// means psycopg 3 to SQLAlchemy 2.1; use psycopg2 when that is what is installed."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2{sep}{rest}"
    return f"postgresql{sep}{rest}"


def _mask(url: str) -> str:
    """The URL without its password (never printed or written)."""
    try:
        from sqlalchemy.engine import make_url

        u = make_url(url)
        return u.render_as_string(hide_password=True).replace("***", "") if u.password else url
    except Exception:
        return url


def _resolve(
    config: str | Path | dict[str, Any] | RunConfig,
    overrides: list[str] | dict[str, Any] | None,
    space: str | Path | None,
    options: dict[str, Any],
) -> tuple[dict[str, Any], RunConfig, str]:
    """The base config with --space and the tune options merged into its tune section."""
    where = "config"
    if isinstance(config, RunConfig):
        raw = config.to_dict()
    elif isinstance(config, dict):
        raw = copy.deepcopy(config)
    else:
        where = str(config)
        raw = config_mod.read_yaml(config)
    for key, value in config_mod._parse_overrides(overrides).items():
        config_mod.set_path(raw, key, value, where)
    if space is not None:
        extra = config_mod.read_yaml(space)
        extra = extra.get("tune", extra)
        if "space" not in extra:
            extra = {"space": extra}  # a file holding only the space
        raw["tune"] = {**(raw.get("tune") or {}), **extra}
        where = f"{where} (space from {space})" if where != "config" else str(space)
    if not raw.get("tune"):
        raise DanluError(f"{where}: no tune: section; add one with a space, or give --space FILE")
    raw["tune"] = dict(raw["tune"])
    raw["tune"].update({k: v for k, v in options.items() if v is not None})
    cfg = config_mod.validate(raw, where)
    return cfg.to_dict(), cfg, where


def prepare(
    config: str | Path | dict[str, Any] | RunConfig,
    *,
    overrides: list[str] | dict[str, Any] | None = None,
    space: str | Path | None = None,
    study: str | None = None,
    storage: str | None = None,
    **options: Any,
) -> Search:
    raw, cfg, where = _resolve(config, overrides, space, options)
    tune = cfg.tune
    assert tune is not None
    params = parse_space(tune.space, raw, where)
    if tune.sampler == "grid":
        for p in params:
            if p.kind != "choice" and (p.kind != "int" or p.high - p.low > 10_000):
                raise DanluError(
                    f"{where}: tune.sampler grid takes listed values, but tune.space.{p.key} is a {p.kind}"
                    " range; list the values ({choice: [...]} or a list) or use sampler random or tpe"
                )
    if tune.sampler == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise DanluError("tune.sampler cmaes needs the cmaes package: pip install cmaes") from None
    metric = tune.metric or cfg.train.monitor
    direction = tune.direction
    if direction == "auto":
        direction = "minimize" if metric_direction(metric) == "min" else "maximize"
    grid_size = math.prod(len(p.grid()) for p in params) if tune.sampler == "grid" else None
    target = tune.trials or grid_size or DEFAULT_TRIALS
    name = study or f"{cfg.name}-tune"
    study_dir = Path(cfg.output.dir) / _safe(name)
    return Search(study_dir, raw, cfg, params, metric, direction, name, storage, target, tune.timeout)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


# --------------------------------------------------------------------------- one trial
class _FatalError(DanluError):
    """A problem with the search itself (not one configuration): stop the search."""


class SearchInterrupted(Exception):
    """Ctrl-C: the running trials were recorded as interrupted; --resume continues."""


def trial_config(search: Search, values: dict[str, Any], name: str, out_dir: Path | str) -> dict[str, Any]:
    """The base config with the trial's values, as a plain run config (no tune section)."""
    raw = copy.deepcopy(search.raw)
    raw.pop("tune", None)
    for key, value in values.items():
        config_mod.set_path(raw, key, value, "tune.space")
    raw["name"] = name
    raw["output"] = {"dir": str(out_dir), "timestamp": False}
    return raw


def run_trial(search: Search, study: optuna.Study, trial: optuna.Trial) -> FrozenTrial:
    """Train one configuration and tell the study how it went."""
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
            raise _FatalError(f"tune.metric: '{metric}' is not logged by this task; it logs: {logged}")
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
    except optuna.TrialPruned:
        state = TrialState.PRUNED
        trial.set_user_attr("epochs", len(RunDir(run_path).read_history()))
    except _FatalError as e:
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
        state, error = TrialState.FAIL, _one_line(e)
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


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else ""
    return msg if isinstance(e, DanluError) else f"{type(e).__name__}: {msg}".rstrip(": ")


# --------------------------------------------------------------------------- the trial loop
def _counted(trials: list[FrozenTrial]) -> int:
    """Trials toward the study's count: interrupted and surplus ones are run again."""
    skip = ("interrupted", "surplus", "aborted")
    return sum(1 for t in trials if not any(t.user_attrs.get(k) for k in skip))


def work(
    search: Search,
    study: optuna.Study,
    on_trial: Callable[[FrozenTrial], None] | None = None,
    deadline: float | None = None,
) -> int:
    """Run trials until the study has `search.target` of them (or the deadline passes)."""
    done = 0
    grid = study.sampler if isinstance(study.sampler, optuna.samplers.GridSampler) else None
    distributions = {p.key: p.distribution() for p in search.params}
    while deadline is None or time.time() < deadline:
        trials = study.get_trials(deepcopy=False)
        if _counted(trials) >= search.target or (grid is not None and grid.is_exhausted(study)):
            break
        trial = study.ask(distributions)
        # another process may have asked between the count and ours: the trial numbers decide
        before = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
        if _counted(before) >= search.target:
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
            break
        frozen = run_trial(search, study, trial)
        done += 1
        if on_trial is not None:
            on_trial(frozen)
    return done


# --------------------------------------------------------------------------- the public function
@dataclass
class TuneResult:
    """What a search found: the best value, its parameters and a runnable best.yaml."""

    study_dir: Path
    study_name: str
    storage: str | None
    metric: str
    direction: str
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    best_config: Path | None  # best.yaml
    best_run: Path | None  # the best trial's run folder
    trials: list[dict[str, Any]] = field(default_factory=list)  # one row per trial, as in trials.csv
    refit: Any = None  # danlu.Run of --refit
    interrupted: bool = False

    def load_study(self) -> optuna.Study:
        return optuna.load_study(
            study_name=self.study_name, storage=open_storage(self.storage, self.study_dir)
        )


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
) -> TuneResult:
    """Search the config's `tune.space`; every trial is an ordinary danlu run.

    danlu.tune("examples/tune_tutorial.yaml", trials=20, jobs=2).best_params
    """
    if jobs < 1:
        raise DanluError(f"--jobs {jobs}: give 1 or more worker processes")
    options = {"trials": trials, "sampler": sampler, "pruner": pruner, "metric": metric, "timeout": timeout}
    search = prepare(config, overrides=overrides, space=space, study=study, storage=storage, **options)
    reporter = Reporter(search, progress)
    fresh = search.storage is None and not search.study_dir.exists()
    optuna_study = _open_study(search, resume, reporter)
    deadline = time.time() + search.timeout if search.timeout else None
    interrupted = False
    with reporter:
        reporter.start(optuna_study)
        try:
            if jobs == 1:
                work(search, optuna_study, reporter.trial_done, deadline)
            else:
                _run_workers(search, optuna_study, jobs, reporter, deadline)
        except (SearchInterrupted, KeyboardInterrupt):
            interrupted = True
        except _FatalError:
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
    study.sampler = search.sampler(None, len(study.trials))
    if study.direction.name.lower() != search.direction:
        raise DanluError(
            f"study '{search.study_name}' {study.direction.name.lower()}s its objective but tune.metric"
            f" {search.metric} is to {search.direction}; set tune.direction or start another --study"
        )
    if search.study_name in known and not resume:
        reporter.print(f"joining study '{search.study_name}' ({len(study.trials)} trials so far)")
    if resume and search.storage is None:
        _abandon_stale(study)
    study.set_user_attr(
        "danlu", {"metric": search.metric, "config": yaml.safe_dump(search.raw, sort_keys=False)}
    )
    fileio.write_text(d / "study.yaml", yaml.safe_dump(search.raw, sort_keys=False, allow_unicode=True))
    fileio.write_json(
        marker,
        {
            "study": search.study_name,
            "storage": None if search.storage is None else _mask(search.storage),
            "metric": search.metric,
            "direction": search.direction,
        },
    )
    return study


def _abandon_stale(study: optuna.Study) -> None:
    """Trials left RUNNING by a process that died: record them as interrupted."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial = optuna.Trial(study, t._trial_id)
        trial.set_user_attr("interrupted", True)
        trial.set_user_attr("error", "abandoned: the process running it stopped")
        study.tell(t.number, state=TrialState.FAIL)


# --------------------------------------------------------------------------- parallel workers
def _run_workers(
    search: Search, study: optuna.Study, jobs: int, reporter: Reporter, deadline: float | None
) -> None:
    """J worker processes on this machine, each started once and running trials in a loop."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        DANLU_TUNE_THREADS=str(threads),
    )
    if search.storage is not None:
        env["DANLU_TUNE_STORAGE"] = search.storage  # not on the command line: it may hold a password
    logs = search.study_dir / "workers"
    logs.mkdir(exist_ok=True)
    procs = []
    for i in range(jobs):
        cmd = [
            sys.executable,
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
    seen: set[int] = set()
    try:
        while True:
            alive = [p for p in procs if p.poll() is None]
            for t in study.get_trials(
                deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
            ):
                if t.number not in seen:
                    seen.add(t.number)
                    if not t.user_attrs.get("surplus"):
                        reporter.trial_done(t)
            if not alive:
                break
            failed = [p for p in procs if p.returncode == 2]
            if failed:
                raise _FatalError(_worker_error(logs, procs.index(failed[0])))
            time.sleep(0.3)
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
    for i, p in enumerate(procs):
        if p.returncode == 2:
            raise _FatalError(_worker_error(logs, i))
        if p.returncode == 130:
            raise SearchInterrupted()
        if p.returncode != 0:
            raise DanluError(
                f"tune worker {i} stopped with exit code {p.returncode}; see {logs / f'worker-{i}.log'}"
            )


def _worker_error(logs: Path, i: int) -> str:
    lines = (logs / f"worker-{i}.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return errors[-1] if errors else (lines[-1] if lines else f"tune worker {i} failed")


def _worker_main(study_dir: str, index: str, deadline: str) -> int:
    """One worker process: the study's config from its folder, trials until the count is reached."""
    import torch

    torch.set_num_threads(int(os.environ.get("DANLU_TUNE_THREADS", "1")))
    d = Path(study_dir)
    meta = json.loads((d / "study.json").read_text(encoding="utf-8"))
    try:
        search = prepare(
            config_mod.read_yaml(d / "study.yaml"),
            study=meta["study"],
            storage=os.environ.get("DANLU_TUNE_STORAGE") or meta["storage"],
        )
        search.study_dir = d
        study = search.load_study(int(index))
        work(search, study, deadline=float(deadline) or None)
    except DanluError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except (SearchInterrupted, KeyboardInterrupt):
        return 130
    return 0


# --------------------------------------------------------------------------- progress
class Reporter:
    """One line per finished trial (stderr) and an overall bar on a terminal."""

    def __init__(self, search: Search, progress: str = "auto") -> None:
        self.search = search
        self.mode = ("bar" if sys.stderr.isatty() else "lines") if progress == "auto" else progress
        self._bar: Any = None
        self.best: tuple[float, int] | None = None

    def __enter__(self) -> Reporter:
        if self.mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("[bold]trials"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                transient=True,
            )
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def start(self, study: optuna.Study) -> None:
        trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
        for t in trials:
            self._track_best(t)
        if self._bar is not None:
            self._task = self._bar.add_task("", total=self.search.target, completed=_counted(trials), info="")

    def _track_best(self, t: FrozenTrial) -> None:
        if t.state == TrialState.COMPLETE and t.value is not None:
            better = self.best is None or (
                t.value < self.best[0] if self.search.direction == "minimize" else t.value > self.best[0]
            )
            if better:
                self.best = (t.value, t.number)

    def trial_done(self, t: FrozenTrial) -> None:
        self._track_best(t)
        if self._bar is not None:
            best = f"best {self.best[0]:.4g} (#{self.best[1]})" if self.best else ""
            self._bar.update(self._task, advance=1, info=best)
        self.print(trial_line(t, self.search.metric, self.best))

    def print(self, line: str) -> None:
        if self.mode == "quiet":
            return
        if self._bar is not None:
            self._bar.console.print(line, highlight=False, markup=False)
        else:
            print(line, file=sys.stderr, flush=True)


def trial_line(t: FrozenTrial, metric: str, best: tuple[float, int] | None = None) -> str:
    params = "  ".join(f"{_short(k)}={_fmt(v)}" for k, v in t.params.items())
    seconds = t.user_attrs.get("seconds")
    took = f"  ({seconds:.1f}s)" if seconds is not None else ""
    epochs = t.user_attrs.get("epochs")
    if t.state == TrialState.COMPLETE:
        mark = "  *" if best is not None and best[1] == t.number else ""
        return f"trial {t.number}: {metric} {t.value:.4g}  {params}  {epochs} epochs{took}{mark}"
    if t.state == TrialState.PRUNED:
        last = t.intermediate_values.get(max(t.intermediate_values)) if t.intermediate_values else None
        at = f" at epoch {max(t.intermediate_values)}" if t.intermediate_values else ""
        value = f" ({metric} {last:.4g})" if last is not None else ""
        return f"trial {t.number}: pruned{at}{value}  {params}{took}"
    return f"trial {t.number}: failed: {t.user_attrs.get('error', 'unknown error')}  {params}{took}"


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------- results
def leaderboard(trials: list[FrozenTrial], direction: str) -> list[FrozenTrial]:
    """Completed trials best first, then pruned (by their last report), then failed."""
    sign = 1 if direction == "minimize" else -1
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: sign * t.value)
    pruned = sorted((t for t in trials if t.state == TrialState.PRUNED), key=lambda t: sign * _last(t))
    other = [t for t in trials if t.state not in (TrialState.COMPLETE, TrialState.PRUNED)]
    return done + pruned + [t for t in other if not t.user_attrs.get("surplus")]


def _last(t: FrozenTrial) -> float:
    return t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else math.nan


def trial_rows(trials: list[FrozenTrial], direction: str, metric: str) -> list[dict[str, Any]]:
    """One row per trial, best first: rank, trial, state, metric, params, epochs, seconds,
    the final evaluation's metrics, run folder, error."""
    rows, rank = [], 0
    for t in leaderboard(trials, direction):
        complete = t.state == TrialState.COMPLETE
        rank += complete
        value = t.value if complete else (_last(t) if t.intermediate_values else None)
        state = "INTERRUPTED" if t.user_attrs.get("interrupted") else t.state.name
        row: dict[str, Any] = {
            "rank": rank if complete else None,
            "trial": t.number,
            "state": state,
            metric: value,
        }
        row.update(t.params)
        row["epochs"] = t.user_attrs.get("epochs")
        row["seconds"] = t.user_attrs.get("seconds")
        ev = dict(t.user_attrs.get("eval") or {})
        split = ev.pop("split", None) or "test"
        row.update({f"{split}.{k}": v for k, v in ev.items() if f"{split}.{k}" not in row})
        row["run"] = t.user_attrs.get("run")
        row["error"] = t.user_attrs.get("error")
        rows.append(row)
    return rows


def summarize(search: Search, study: optuna.Study, plots: bool = True) -> TuneResult:
    """trials.csv, best.yaml and report.md (+ plots) from the study's trials."""
    d = search.study_dir
    trials = study.get_trials(deepcopy=False)
    rows = trial_rows(trials, search.direction, search.metric)
    _write_csv(d / "trials.csv", rows)
    result = TuneResult(
        d,
        search.study_name,
        search.storage,
        search.metric,
        search.direction,
        None,
        {},
        None,
        None,
        None,
        rows,
    )
    complete = leaderboard([t for t in trials if t.state == TrialState.COMPLETE], search.direction)
    if complete:
        best = complete[0]
        values = {p.key: p.decode(best.params[p.key]) for p in search.params if p.key in best.params}
        raw = trial_config(search, values, search.cfg.name, search.cfg.output.dir)
        raw["output"] = search.raw["output"]
        text = config_mod.validate(raw, "best.yaml").to_yaml()
        header = (
            f"# best of study '{search.study_name}': trial {best.number}, {search.metric} {best.value:.6g}\n"
            f"# run it with: danlu train {d / 'best.yaml'}\n"
        )
        fileio.write_text(d / "best.yaml", header + text)
        run = best.user_attrs.get("run")
        result.best_value, result.best_params, result.best_trial = best.value, values, best.number
        result.best_config = d / "best.yaml"
        result.best_run = d / run if run else None
    _write_report(search, study, rows, result, plots)
    return result


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r)) or ["trial", "state"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, restval="", lineterminator="\n")
    w.writeheader()
    w.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    fileio.write_text(path, buf.getvalue())


def _write_report(
    search: Search, study: optuna.Study, rows: list[dict[str, Any]], result: TuneResult, plots: bool
) -> None:
    t = search.tune
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"].lower()] = counts.get(r["state"].lower(), 0) + 1
    lines = [
        f"# danlu study {search.study_name}",
        "",
        "| | |",
        "| --- | --- |",
        f"| metric | {search.metric} ({search.direction}) |",
        f"| sampler / pruner | {t.sampler} / {t.pruner} |",
        f"| trials | {', '.join(f'{v} {k}' for k, v in counts.items()) or 'none'} |",
    ]
    if result.best_trial is not None:
        lines += [
            f"| best | trial {result.best_trial}: {result.best_value:.6g} |",
            "| best config | [best.yaml](best.yaml): `danlu train best.yaml` |",
            "",
            "## Best parameters",
            "",
            *(f"- `{k}`: `{v}`" for k, v in result.best_params.items()),
        ]
    keys = ["rank", "trial", search.metric, *(p.key for p in search.params), "epochs", "seconds", "state"]
    lines += ["", "## Trials", "", "| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += [
        "| " + " | ".join("" if r.get(k) is None else _fmt(r[k]) for k in keys) + " |" for r in rows[:50]
    ]
    made = _plots(study, search, search.study_dir / "plots") if plots else []
    if made:
        lines += ["", "## Plots", "", *(f"![{title}](plots/{name})" for name, title in made)]
    fileio.write_text(search.study_dir / "report.md", "\n".join(lines) + "\n")


def _plots(study: optuna.Study, search: Search, folder: Path) -> list[tuple[str, str]]:
    """Optuna's matplotlib plots as PNGs; a plot that does not apply (too few trials) is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    folder.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    wanted: list[tuple[str, str, Callable[[], Any]]] = [
        ("history.png", "optimization history", lambda: vis.plot_optimization_history(study)),
    ]
    if len(complete) >= 2 and len(search.params) >= 2:
        wanted += [
            ("importances.png", "parameter importances", lambda: vis.plot_param_importances(study)),
            ("parallel.png", "parallel coordinates", lambda: vis.plot_parallel_coordinate(study)),
        ]
    wanted.append(("slice.png", "slice", lambda: vis.plot_slice(study)))
    if any(t.state == TrialState.PRUNED for t in trials):
        wanted.append(
            ("intermediate.png", "intermediate values", lambda: vis.plot_intermediate_values(study))
        )
    made = []
    for name, title, draw in wanted:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna.visualization.matplotlib is "experimental"
                ax = draw()
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            width, height = fig.get_size_inches()
            fig.set_size_inches(max(width, 8), max(height, 5))
            fig.tight_layout()
            fig.savefig(folder / name, dpi=100)
            made.append((name, title))
        except Exception:  # e.g. importances when no parameter varies: no plot, not a failed search
            pass
        finally:
            plt.close("all")
    return made


def print_leaderboard(
    rows: list[dict[str, Any]], metric: str, direction: str, params: list[str], top: int = 20
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not rows:
        console.print("no trials yet")
        return
    short = [_short(k) for k in params]
    names = short if len(set(short)) == len(short) else params
    arrow = "↓" if direction == "minimize" else "↑"
    table = Table("rank", "trial", f"{metric} {arrow}", *names, "epochs", "time", "state")
    for r in rows[:top]:
        state = r["state"].lower()
        if r.get("error") and r["state"] == "FAIL":
            state += f": {r['error']}"
        table.add_row(
            "" if r["rank"] is None else str(r["rank"]),
            str(r["trial"]),
            "" if r.get(metric) is None else f"{r[metric]:.4f}",
            *("" if r.get(k) is None else _fmt(r[k]) for k in params),
            "" if r.get("epochs") is None else str(r["epochs"]),
            "" if r.get("seconds") is None else f"{r['seconds']:.1f}s",
            state,
        )
    console.print(table)
    if len(rows) > top:
        console.print(f"... and {len(rows) - top} more trials (trials.csv has them all)")


# --------------------------------------------------------------------------- refit
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


# --------------------------------------------------------------------------- tune show
@dataclass
class StudySummary:
    study: str
    metric: str
    direction: str
    params: list[str]
    rows: list[dict[str, Any]]
    best_config: str | None = None  # best.yaml path, or the best config's YAML text for a URL


def show(target: str | Path, study: str | None = None) -> StudySummary:
    """The leaderboard of a study folder or of a study in a storage URL."""
    folder = Path(target)
    meta: dict[str, Any] = {}
    if folder.is_dir():
        if not (folder / "study.json").is_file():
            raise DanluError(f"{folder}: not a danlu study folder (no study.json)")
        meta = json.loads((folder / "study.json").read_text(encoding="utf-8"))
        storage = open_storage(meta.get("storage"), folder)
        name = study or meta["study"]
    elif "://" in str(target):
        storage = open_storage(str(target), folder)
        names = optuna.study.get_all_study_names(storage)
        if study is None and len(names) != 1:
            raise DanluError(
                f"{_mask(str(target))}: give --study NAME; the storage holds:"
                f" {', '.join(names) or 'no studies'}"
            )
        name = study or names[0]
    else:
        raise DanluError(f"{target}: no such study folder, and not a storage URL (e.g. postgresql://host/db)")
    try:
        s = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.study.get_all_study_names(storage)
        raise DanluError(
            f"--study {name}: not in {target}{did_you_mean(name, names)};"
            f" it holds: {', '.join(names) or 'none'}"
        ) from None
    attrs = s.user_attrs.get("danlu") or {}
    metric = attrs.get("metric") or meta.get("metric") or "value"
    direction = s.direction.name.lower()
    trials = s.get_trials(deepcopy=False)
    params = list(dict.fromkeys(k for t in trials for k in t.params))
    summary = StudySummary(name, metric, direction, params, trial_rows(trials, direction, metric))
    best = leaderboard([t for t in trials if t.state == TrialState.COMPLETE], direction)
    if folder.is_dir() and (folder / "best.yaml").is_file():
        summary.best_config = str(folder / "best.yaml")
    elif best and attrs.get("config"):
        raw = yaml.safe_load(attrs["config"])
        raw.pop("tune", None)
        for key, value in (best[0].user_attrs.get("values") or {}).items():
            config_mod.set_path(raw, key, value, "tune.space")
        summary.best_config = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    return summary


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "worker":
        sys.exit(_worker_main(*sys.argv[2:5]))
    sys.exit("usage: python -m danlu.tuning worker STUDY_DIR INDEX DEADLINE (started by danlu tune --jobs)")
