"""The study: the search setup from the config (space, sampler, pruner, trial count) and the
storage it lives in."""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from danlu import config as config_mod
from danlu.config import RunConfig
from danlu.errors import DanluError
from danlu.evaluation.metrics import direction as metric_direction
from danlu.tuning.heartbeat import retried
from danlu.tuning.pruners import MedianPruner
from danlu.tuning.space import Param, parse_space

DEFAULT_TRIALS = 20
STARTUP_ATTR = "danlu_startup_queued"  # study user attribute: TPE's start-up trials were queued
optuna.logging.set_verbosity(optuna.logging.WARNING)


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
    untrusted: str | None = None  # a saved study.yaml whose user code was not trusted (--trust-code)

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
        self.set_sampler(study, worker)
        study.pruner = self.pruner()
        return study

    def set_sampler(self, study: optuna.Study, worker: int | None = None) -> None:
        done = sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))
        study.sampler = self.sampler(worker, done, startup_queued=STARTUP_ATTR in study.user_attrs)

    @property
    def seed(self) -> int:
        """The search's seed: tune.seed, else the run's."""
        return self.tune.seed if self.tune.seed is not None else self.cfg.seed

    def queue_startup(self, study: optuna.Study) -> None:
        """Draw TPE's random start-up trials from the seed and queue them in the study.

        Drawn by each process as it asks (Optuna's way), the start-up trials would depend on
        --jobs and timing: a worker draws them from its own seed, and a sixth random trial
        starts while the fifth still runs. Queued, trial k is the same configuration with any
        --jobs, and TPE models the space from trial `startup_trials` on (with the trials
        finished by then; running ones count as bad results, constant_liar). A study that
        asked TPE already is left as it is; one resumed with more trials gets the rest.
        Not on a shared --storage: processes on several machines starting at once would each
        queue a set, and there every process draws from fresh entropy anyway."""
        if self.tune.sampler != "tpe" or self.storage is not None:
            return
        queued = study.user_attrs.get(STARTUP_ATTR, 0)
        n = min(self.tune.startup_trials, self.target)
        if n <= queued or len(study.trials) > queued:
            return
        draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=self.seed))
        distributions = {p.key: p.distribution() for p in self.params}
        for k in range(n):
            params = draw.ask(distributions).params
            if k >= queued:
                study.enqueue_trial(params)
        study.set_user_attr(STARTUP_ATTR, n)

    def sampler(
        self, worker: int | None = None, done: int = 0, startup_queued: bool = False
    ) -> optuna.samplers.BaseSampler:
        """The sampler, seeded from the config; a resumed study or a second worker gets other
        seeds, so that it does not draw the same configurations again. On a shared storage,
        processes on other machines each draw from fresh entropy instead."""
        t = self.tune
        seed: int | None = None
        if self.storage is None:
            seed = self.seed + done + (1000 * (worker + 1) if worker is not None else 0)
        if t.sampler == "grid":
            # Optuna gives trial number k the k-th point of the grid shuffled by the seed: one
            # seed in every process and on --resume, or they run some points twice and skip others
            return _GridSampler({p.key: p.grid() for p in self.params}, seed=self.seed)
        if t.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if t.sampler == "cmaes":
            return optuna.samplers.CmaEsSampler(
                seed=seed, n_startup_trials=max(t.startup_trials, 1), warn_independent_sampling=False
            )
        # constant_liar: trials running in other processes count as bad results, so that
        # parallel processes do not all sample next to the current best (Optuna's advice for
        # parallel search; the default in Optuna 5, experimental in older releases)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=0 if startup_queued else t.startup_trials, constant_liar=True
            )

    def pruner(self) -> optuna.pruners.BasePruner:
        t = self.tune
        if t.pruner == "median":
            # Optuna's median rule, also judging against trials running in other processes
            return MedianPruner(n_startup_trials=t.startup_trials, n_warmup_steps=t.warmup)
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
        from optuna.storages.journal import JournalStorage

        return JournalStorage(_journal_file(study_dir / "journal.log"))
    shown = mask_url(url)
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
        for attempt in range(5):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return optuna.storages.RDBStorage(url, engine_kwargs=engine)
            except Exception as e:
                # workers starting together on an empty database race to create Optuna's
                # tables; the loser sees "already exists" / a duplicate key: try again
                if not any(w in str(e) for w in ("already exists", "duplicate key")) or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")
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


def _journal_file(path: Path) -> Any:
    """Optuna's journal file backend, appending without an fsync per write.

    Every report and attribute is one append; an fsync costs milliseconds (5 ms on a
    virtual disk), as much as an epoch of a small model. Without it a process that dies
    (Ctrl-C, OOM, kill) still loses nothing, since its writes are in the OS page cache;
    only a power cut can lose the last ones. The file and its lock are the stock ones, so
    Optuna's own JournalFileBackend (and optuna-dashboard) read and write it alongside."""
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    class JournalFile(JournalFileBackend):
        def __init__(self, file_path: str) -> None:
            self._append_lock = JournalFileSymlinkLock(file_path)
            self._append_path = file_path
            super().__init__(file_path, lock_obj=self._append_lock)

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
            self._append_lock.acquire()
            try:
                with open(self._append_path, "ab") as f:
                    f.write(text.encode("utf-8"))
            finally:
                self._append_lock.release()

    return JournalFile(str(path))


def _with_driver(url: str) -> str:
    """postgresql:// means psycopg 3 to SQLAlchemy 2.1; use psycopg2 when that is what is installed."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2{sep}{rest}"
    return f"postgresql{sep}{rest}"


def mask_url(url: str) -> str:
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


class SearchError(DanluError):
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


def counted(trials: list[FrozenTrial], below: int | None = None) -> int:
    """Trials toward the study's count (numbered below `below`, if given): interrupted and
    surplus ones are run again, so are the ones whose process died (their configuration is
    queued again, maybe as a trial numbered above), and queued ones are still to run."""
    skip = ("interrupted", "surplus", "aborted")
    again = retried(trials)
    return sum(
        1
        for t in trials
        if t.state != TrialState.WAITING
        and (below is None or t.number < below)
        and t.number not in again
        and not any(t.user_attrs.get(k) for k in skip)
    )


def read_study_json(folder: Path) -> dict[str, Any]:
    """A study folder's study.json (its study name and storage); damage is one line."""
    try:
        meta = json.loads((folder / "study.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DanluError(
            f"{folder / 'study.json'}: cannot read it ({e}); the study folder is damaged"
        ) from None
    if not isinstance(meta, dict):
        raise DanluError(f"{folder / 'study.json'}: not a JSON object; the study folder is damaged")
    return meta
