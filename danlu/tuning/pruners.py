"""The median stopping rule for trials that run at the same time.

Optuna's MedianPruner judges a trial at step s against the completed trials only. Run one
at a time, those are all the other trials there are (pruned ones are left out by design).
Run J at a time (`--jobs`, or processes on several machines sharing a storage), the J-1
trials running beside it are left out too, though they reported step s already, so a
parallel search prunes less than a serial one. Optuna's own asynchronous pruner
(SuccessiveHalvingPruner) compares against every trial that reached a rung, running or
not; this does the same for the median: the other RUNNING trials' values at step s join
the completed ones'.

The start-up rule ("pruning is disabled until the given number of trials finish") counts
the completed trials and, likewise, the trials started before the judged one that are
still running. Otherwise, with two at a time, the trial started beside the last start-up
trial trains unpruned until that one finishes (41 epochs instead of 5 in one tutorial
search). Trials started after the judged one do not count, so with many at a time the
first trials are not judged against one another's partial curves; as with Optuna's rule,
a long start-up trial can still be pruned once `n_startup_trials` others have completed.

`benchmarks/tune.py --parallel-pruning 40` simulates both rules (see BENCHMARKS.md):
Optuna's trains 4% (2 at a time) and 8% (4 at a time) more steps than one at a time, this
one between 3% more and 8% fewer, with similar best values. Everything else is Optuna's
PercentilePruner, unchanged: warm-up, interval, NaN handling, n_min_trials and the
percentile itself. With one trial at a time, the only running trial is the one judged, so
the decisions are those of Optuna's MedianPruner (tests/test_tune_parallel.py checks both).
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState


class MedianPruner(optuna.pruners.MedianPruner):
    """optuna.pruners.MedianPruner whose peers at a step include the other running trials."""

    def __init__(self, n_startup_trials: int = 5, n_warmup_steps: int = 0, interval_steps: int = 1) -> None:
        super().__init__(n_startup_trials, n_warmup_steps, interval_steps)
        self.startup_trials = n_startup_trials

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        peers = [t for t in trials if t.number != trial.number]
        startup = sum(t.state == TrialState.COMPLETE or t.number < trial.number for t in peers)
        if startup < self.startup_trials:
            return False
        return super().prune(_Peers(study, peers), trial)  # type: ignore[arg-type]


class _Peers:
    """The study as PercentilePruner.prune reads it, whose 'completed' trials are `peers`
    (the way Optuna's HyperbandPruner hands each bracket a filtered study)."""

    def __init__(self, study: optuna.Study, peers: list[FrozenTrial]) -> None:
        self._study = study
        self._peers = peers

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._peers

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)
