"""Parallel search (`danlu tune --jobs`): danlu's median pruner (danlu/tuning/pruners.py)
against a hand computation and, one trial at a time, against Optuna's MedianPruner; the TPE
sampler's constant liar and queued start-up trials; and no torch import before the workers start."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

optuna = pytest.importorskip("optuna", reason="optuna is not installed (pip install 'danlu[tune]')")

from optuna.trial import TrialState  # noqa: E402

from danlu.tuning.pruners import MedianPruner  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def add_trial(study: optuna.Study, curve: list[float], state: TrialState | None = None) -> optuna.Trial:
    """A trial that reported `curve` at steps 0, 1, ...; told `state` (None: left running)."""
    trial = study.ask()
    for step, value in enumerate(curve):
        trial.report(value, step)
    if state == TrialState.COMPLETE:
        study.tell(trial, curve[-1])
    elif state is not None:
        study.tell(trial, state=state)
    return trial


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["minimize", "maximize"])
def test_running_trials_join_the_median_by_hand(sign):
    """Step 3: completed 1, 2, 3, 4, 5 and a running trial at 0.5 -> median (2 + 3) / 2 = 2.5;
    Optuna's rule, completed trials only, has median 3. A trial whose best is 2.8 is pruned
    by danlu's pruner and kept by Optuna's. (maximize: every value negated.)"""
    direction = "minimize" if sign > 0 else "maximize"
    study = optuna.create_study(direction=direction, pruner=MedianPruner(n_startup_trials=5))
    for last in (1.0, 2.0, 3.0, 4.0, 5.0):
        add_trial(study, [sign * v for v in (9.0, 8.0, 7.0, last)], TrialState.COMPLETE)
    add_trial(study, [sign * v for v in (9.0, 8.0, 7.0, 0.1)], TrialState.PRUNED)  # pruned: not a peer
    add_trial(study, [sign * v for v in (9.0, 8.0, 7.0, 0.5)])  # running, reached step 3: a peer
    add_trial(study, [sign * v for v in (0.2, 0.2)])  # running, not at step 3 yet: no value to compare

    def judged(best: float) -> tuple[bool, bool]:
        trial = add_trial(study, [sign * v for v in (9.0, best, 7.0, 6.0)])  # best of its curve: step 1
        frozen = study._storage.get_trial(trial._trial_id)
        ours = trial.should_prune()
        optunas = optuna.pruners.MedianPruner(n_startup_trials=5).prune(study, frozen)
        study.tell(trial, state=TrialState.FAIL)  # not a running peer of the next judged trial
        return ours, optunas

    assert judged(2.8) == (True, False)  # 2.8 worse than 2.5, better than 3
    assert judged(2.4) == (False, False)  # better than both medians
    assert judged(3.2) == (True, True)  # worse than both


def test_startup_counts_completed_trials_and_earlier_running_ones():
    """Pruning waits for 5 start-up trials: completed ones, and ones started before the judged
    trial that still run (in parallel the 5th start-up trial runs beside the 6th; Optuna's
    rule, completed trials only, would let the 6th train unpruned until the 5th finishes).
    Trials started after the judged one do not count."""
    study = optuna.create_study(pruner=MedianPruner(n_startup_trials=5))
    for last in (1.0, 2.0, 3.0):
        add_trial(study, [last], TrialState.COMPLETE)
    add_trial(study, [0.5])  # trial 3, running
    trial = add_trial(study, [100.0])  # trial 4: 3 completed + 1 earlier running = 4 < 5
    add_trial(study, [0.6])  # trial 5, running, started after trial 4: not one of its start-up trials
    assert not trial.should_prune()
    study.tell(trial, state=TrialState.FAIL)  # failed: not a start-up trial either
    add_trial(study, [4.0], TrialState.COMPLETE)  # trial 6
    # trial 7: completed 1, 2, 3, 4 and the earlier trials 3 and 5 running: 6 >= 5
    trial = add_trial(study, [2.6])
    frozen = study._storage.get_trial(trial._trial_id)
    assert not optuna.pruners.MedianPruner(n_startup_trials=5).prune(study, frozen)  # 4 completed
    # peers 1, 2, 3, 4, 0.5, 0.6 -> median 1.5
    assert trial.should_prune()
    assert not add_trial(study, [1.4]).should_prune()


def test_warmup_steps_are_kept():
    study = optuna.create_study(pruner=MedianPruner(n_startup_trials=1, n_warmup_steps=2))
    add_trial(study, [1.0, 1.0, 1.0], TrialState.COMPLETE)
    trial = study.ask()
    trial.report(50.0, 0)
    assert not trial.should_prune()  # step 0 < 2 warm-up steps
    trial.report(50.0, 1)
    assert not trial.should_prune()
    trial.report(50.0, 2)
    assert trial.should_prune()


def test_one_trial_at_a_time_decides_as_optunas_median_pruner():
    """Serially the only running trial is the judged one: the same trials are pruned at the
    same steps as with optuna.pruners.MedianPruner."""

    def objective(trial: optuna.Trial) -> float:
        x, y = trial.suggest_float("x", 0.0, 1.0), trial.suggest_float("y", 0.0, 1.0)
        value = 0.0
        for step in range(30):
            # learning curves that cross: a slow start can still end well
            value = (x - 0.3) ** 2 + y * math.exp(-step / (2 + 10 * x)) + 0.01 * math.sin(7 * step * y)
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    runs = {}
    for name, pruner in (
        ("optuna", optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3)),
        ("danlu", MedianPruner(n_startup_trials=5, n_warmup_steps=3)),
    ):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3), pruner=pruner)
        study.optimize(objective, n_trials=40)
        runs[name] = [(t.state, t.last_step) for t in study.trials]
    assert runs["danlu"] == runs["optuna"]
    pruned = sum(state == TrialState.PRUNED for state, _ in runs["danlu"])
    assert 5 <= pruned < 35  # a test that prunes some trials, not none or all


def test_median_search_uses_it(tmp_path):
    from danlu.tuning import prepare

    body = {
        "data": {"source": "iris"},
        "output": {"dir": str(tmp_path)},
        "tune": {"pruner": "median", "startup_trials": 3, "space": {"train.lr": {"log_float": [1e-3, 0.1]}}},
    }
    search = prepare(body)
    pruner = search.pruner()
    assert isinstance(pruner, MedianPruner) and pruner.startup_trials == 3
    assert search.sampler()._constant_liar  # TPE spreads parallel trials apart


def test_cli_starts_tune_workers_before_importing_torch():
    """The workers start once the study exists; the CLI importing torch first (about 1.5 s)
    would delay them by that much."""
    code = (
        "import sys\n"
        "from danlu import cli\n"
        "with cli._errors(False):\n"
        "    from danlu import tuning\n"
        "    tuning.prepare({'data': {'source': 'iris'}, 'tune': {'space': {'train.lr': [0.1, 0.01]}}})\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_parallel_and_resumed_grid_runs_every_point_once(tmp_path):
    """Processes asking for grid trials at once (the search and a worker, each with its own
    sampler), and a resumed search, draw every grid point once: none twice, none skipped."""
    from danlu.tuning import prepare

    space = {"train.lr": [0.1, 0.01, 0.001], "model.hidden": [[8], [16], [32], [8, 8]]}
    search = prepare({"data": {"source": "iris"}, "tune": {"sampler": "grid", "space": space}})
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="grid")
    main, worker = (optuna.load_study(study_name="grid", storage=storage) for _ in range(2))
    main.sampler, worker.sampler = search.sampler(None, 0), search.sampler(1, 0)
    distributions = {p.key: p.distribution() for p in search.params}
    running = [study.ask(distributions) for study in (main, worker, worker, main, worker)]
    for trial in running[:3]:
        main.tell(trial, 1.0)
    resumed = optuna.load_study(study_name="grid", storage=storage)
    resumed.sampler = search.sampler(None, len(resumed.trials))  # --resume: another TPE seed, one grid
    running += [resumed.ask(distributions) for _ in range(7)]
    drawn = [tuple(str(v) for v in t.params.values()) for t in running]
    assert len(drawn) == search.target == 12 and len(set(drawn)) == 12


def test_tpe_startup_trials_are_queued_alike_for_any_jobs():
    """TPE's random start-up trials are drawn once from the seed and queued: trial k is the
    same configuration whether one process asks for them or two take turns (each with its
    own sampler seed), and a search resumed with more trials gets the rest of them."""
    from danlu.tuning import prepare
    from danlu.tuning.report import leaderboard
    from danlu.tuning.trials import counted

    space = {"train.lr": {"log_float": [1e-4, 0.1]}, "model.hidden": {"choice": [[8], [16], [16, 8]]}}
    body = {"data": {"source": "iris"}, "tune": {"sampler": "tpe", "startup_trials": 4, "space": space}}
    search = prepare({**body, "seed": 7})
    distributions = {p.key: p.distribution() for p in search.params}

    def new_study() -> tuple[optuna.Study, optuna.Study]:
        storage = optuna.storages.InMemoryStorage()
        main = optuna.create_study(storage=storage, study_name="s")
        search.queue_startup(main)
        search.set_sampler(main)
        worker = optuna.load_study(study_name="s", storage=storage)
        search.set_sampler(worker, 1)
        return main, worker

    serial, _ = new_study()
    assert counted(serial.trials) == 0 and len(serial.trials) == 4  # queued, not yet run
    assert leaderboard(serial.trials, "minimize") == []  # queued trials are not results
    alone = [serial.ask(distributions) for _ in range(4)]
    main, worker = new_study()
    turns = [main.ask(distributions), worker.ask(distributions), worker.ask(distributions)]
    turns.append(main.ask(distributions))
    assert [t.number for t in turns] == [0, 1, 2, 3]
    assert [t.params for t in turns] == [t.params for t in alone]
    assert len({t.params["train.lr"] for t in alone}) == 4
    # the other seed draws other start-up trials; the queue is what makes the two agree
    other = prepare({**body, "seed": 8})
    study = optuna.create_study()
    other.queue_startup(study)
    assert study.ask(distributions).params != alone[0].params

    # a search shorter than the start-up phase queues only its trials; resumed with more, the rest
    short = prepare({**body, "seed": 7, "tune": {**body["tune"], "trials": 2}})
    study = optuna.create_study()
    short.queue_startup(study)
    first = [study.ask(distributions) for _ in range(2)]
    for t in first:
        study.tell(t, 1.0)
    search.queue_startup(study)  # --resume --trials 20
    search.set_sampler(study)
    rest = [study.ask(distributions) for _ in range(2)]
    assert [t.params for t in first + rest] == [t.params for t in alone]
    search.queue_startup(study)  # nothing more to queue once TPE has been asked
    assert not [t for t in study.trials if t.state == TrialState.WAITING]
    # a shared storage: processes on several machines may create the study at once, each
    # would queue a set (they draw from fresh entropy there anyway): nothing is queued
    shared = prepare({**body, "seed": 7}, storage="postgresql://host/db")
    study = optuna.create_study()
    shared.queue_startup(study)
    assert study.trials == []


def test_watch_fails_dead_trials_and_queues_them_once():
    """heartbeat.Watch: a trial whose process on this machine is gone is failed at once; one
    whose heartbeat stops changing for the grace period (0 here: two looks) is failed then;
    a live one is left alone; each dead configuration is queued again once, and the failed
    trials no longer count toward the study's trials."""
    import os

    from danlu.tuning.heartbeat import HEARTBEAT, HOST, Watch
    from danlu.tuning.trials import counted

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its pid names no process
    study = optuna.create_study()
    distributions = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    dead, silent, alive, mine = (study.ask(distributions) for _ in range(4))
    study._storage.set_trial_system_attr(dead._trial_id, HEARTBEAT, [HOST, gone.pid, 1.0])
    study._storage.set_trial_system_attr(silent._trial_id, HEARTBEAT, ["elsewhere", 1, 1.0])
    study._storage.set_trial_system_attr(alive._trial_id, HEARTBEAT, ["elsewhere", 2, 1.0])
    study._storage.set_trial_system_attr(mine._trial_id, HEARTBEAT, [HOST, os.getpid(), 1.0])
    watch = Watch(grace_period=0.0)
    assert watch.fail_dead(study) == [dead.number]  # the others: first seen now
    study._storage.set_trial_system_attr(alive._trial_id, HEARTBEAT, ["elsewhere", 2, 2.0])  # a beat
    assert watch.fail_dead(study) == [silent.number]
    trials = study.get_trials()
    assert [t.state for t in trials[:4]] == [TrialState.FAIL] * 2 + [TrialState.RUNNING] * 2
    assert (
        trials[0].user_attrs["error"]
        == f"abandoned: its process {gone.pid} stopped; its configuration runs again"
    )
    assert trials[1].user_attrs["error"].startswith("abandoned: no heartbeat for 0s (process 1 on elsewhere)")
    queued = trials[4:]
    assert [(t.state, t.user_attrs["retry_of"], t.system_attrs["fixed_params"]) for t in queued] == [
        (TrialState.WAITING, dead.number, dead.params),
        (TrialState.WAITING, silent.number, silent.params),
    ]
    assert counted(trials) == 2  # the two running ones; the failed ones run again
    # a retried configuration whose process dies too stays failed: it is not queued a third time
    again = study.ask(distributions)
    assert again.number == queued[0].number and again.params == dead.params
    study._storage.set_trial_system_attr(again._trial_id, HEARTBEAT, [HOST, gone.pid, 3.0])
    study._storage.set_trial_system_attr(alive._trial_id, HEARTBEAT, ["elsewhere", 2, 3.0])  # alive still
    assert watch.fail_dead(study) == [again.number]
    assert len(study.get_trials()) == 6
    assert study.get_trials()[again.number].user_attrs["error"].endswith("it had run once before, not again")
