"""Trials whose process died: the process running a trial records it alive, and every process
of the search fails the trials of processes that stopped and runs their configurations again.

Optuna's own heartbeat belongs to RDBStorage and runs only inside study.optimize; danlu asks
and tells, and its default storage is the journal file. So a thread of the process running a
trial writes [host, pid, time] into the trial (a system attribute) every tune.heartbeat
seconds. A RUNNING trial is dead when its process was on this machine and is gone (known at
once: a killed worker, or on --resume a killed search), or when its heartbeat has not changed
for tune.grace_period seconds of this process's own watching (a process on another machine,
or one stopped). Watching for a change, rather than comparing the written time with this
machine's clock, needs no synchronized clocks and does not take a laptop's sleep for a death.

A dead trial is told FAIL and its configuration is queued as a new trial (user attribute
`retry_of`); the failed one then does not count toward the trial count. A configuration is
run again once: one whose process dies twice (out of memory, say) stays failed. A process
whose trial was failed while it still ran (stopped longer than the grace period) finds the
trial closed at its next write to it (optuna's UpdateFinishedTrialError), and goes on."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

HEARTBEAT = "danlu_heartbeat"  # trial system attribute: [host, pid, unix time of the last beat]
RETRY_OF = "retry_of"  # user attribute of a trial re-running a dead trial's configuration: its number
HOST = socket.gethostname()


class Heartbeat:
    """`with Heartbeat(study, trial, seconds):` records the trial alive until the block ends."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, interval: float) -> None:
        self._storage, self._trial_id, self._interval = study._storage, trial._trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="danlu-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._record()  # the first beat before training: other processes know whose trial it is
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _record(self) -> None:
        beat = [HOST, os.getpid(), round(time.time(), 3)]
        self._storage.set_trial_system_attr(self._trial_id, HEARTBEAT, beat)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._record()
            except Exception:  # the trial was told, by this process or by one that took it for dead
                return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class Watch:
    """Finds the running trials whose process stopped; fails them and queues them again."""

    def __init__(self, grace_period: float) -> None:
        self.grace_period = grace_period
        self._seen: dict[int, tuple[Any, float]] = {}  # trial id -> (its heartbeat, when first seen)

    def dead(self, t: FrozenTrial) -> str | None:
        """Why the trial's process is taken for dead, or None while it may be alive."""
        beat = t.system_attrs.get(HEARTBEAT)
        if beat is not None and beat[0] == HOST:
            if beat[1] == os.getpid():
                return None  # this process's own trial
            if not _alive(beat[1]):
                return f"its process {beat[1]} stopped"
        now = time.monotonic()
        seen = self._seen.get(t._trial_id)
        if seen is None or seen[0] != beat:
            self._seen[t._trial_id] = (beat, now)
            return None
        if now - seen[1] < self.grace_period:
            return None
        where = f" (process {beat[1]} on {beat[0]})" if beat is not None else ""
        return f"no heartbeat for {self.grace_period:g}s{where}"

    def fail_dead(self, study: optuna.Study) -> list[int]:
        """Fail the running trials of processes that stopped and queue their configurations
        again (once); the numbers of the trials failed."""
        failed = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            reason = self.dead(t)
            if reason is None:
                continue
            again = RETRY_OF not in t.user_attrs
            try:
                # the error before the state: a finished trial's attributes cannot change
                tail = "; its configuration runs again" if again else "; it had run once before, not again"
                study._storage.set_trial_user_attr(t._trial_id, "error", f"abandoned: {reason}{tail}")
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except UpdateFinishedTrialError:
                continue  # it finished meanwhile, or another process failed it first
            if again:
                study.enqueue_trial(t.params, user_attrs={RETRY_OF: t.number}, skip_if_exists=False)
            failed.append(t.number)
        return failed


def retried(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the dead trials whose configuration was queued again."""
    return {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}
