"""``lorabench search --executor ray``: the workers of a search as actors on a local Ray instance
(2 CPUs, ``ray_cluster``).

The fake harness of ``test_search_workers`` (exact spend, a pause per evaluation) checks the
accounting: two actors share the study's budget, every trial is stored once, an actor killed
mid-trial has its trial failed at once with the spend it reported and is started again, and the
best is confirmed once. The command line, end to end on the real harness (``slow``), checks the
trials, one confirmation on the cluster and the summary; bad settings are refused before any
work. Every actor imports torch (seconds each).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

pytest.importorskip("ray")

from test_search_workers import (
    BUDGET,
    EVAL_EVERY,
    TRIAL_STEPS,
    BarrierHarness,
    _config,
    _worker_setup,
    check_cli_search_end_to_end,
)

from lorabench.results.store import ResultStore
from lorabench.search.loop import WORKER_PID_ATTR, prepare_search
from lorabench.search.ray_search import run_search_ray

pytestmark = pytest.mark.usefixtures("single_thread")

DEADLINE_S = 300  # the longest any wait below lasts (a loaded machine is slow)
KILLED = "killed-by-test"


class RestartHarness(BarrierHarness):
    """The fake harness, where once the test has killed an actor, every trial waits until the
    restarted actor has started one: the survivor cannot spend the budget alone first."""

    def __call__(self, cfg, *, on_eval=None, progress=True):
        if (self.folder / KILLED).exists() and not cfg.tag.endswith(":confirm"):
            (self.folder / f"started-{os.getpid()}").touch()
            deadline = time.monotonic() + DEADLINE_S
            while len(list(self.folder.glob("started-*"))) < 3:
                assert time.monotonic() < deadline, "the killed actor was not started again"
                time.sleep(0.02)
        return super().__call__(cfg, on_eval=on_eval, progress=progress)


def _kill_first_running_trial(
    prepared, folder: Path, killed: list[int], stop: threading.Event
) -> None:
    """Kills the actor of the first trial seen running after its first evaluation (its process
    id is in the trial), as a node's out-of-memory killer would."""
    deadline = time.monotonic() + DEADLINE_S
    while not stop.is_set() and time.monotonic() < deadline:
        for trial in prepared.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            partial = trial.user_attrs.get("partial_spend") or {}
            pid = trial.user_attrs.get(WORKER_PID_ATTR)
            if pid and partial.get("steps", 0) >= EVAL_EVERY:
                (folder / KILLED).touch()
                os.kill(pid, signal.SIGKILL)
                killed.append(trial.number)
                return
        time.sleep(0.05)


def test_ray_workers_share_the_budget_restart_a_killed_actor_and_confirm_once(
    tmp_path, capfd, toy_task, ray_cluster
):
    results = str(tmp_path / "results.db")
    prepared = prepare_search(
        _config(tmp_path, task=toy_task, storage=f"journal:{tmp_path / 'search.journal'}")
    )
    harness = RestartHarness(tmp_path, processes=2, pause=0.3)
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(
        target=_kill_first_running_trial, args=(prepared, tmp_path, killed, stop)
    )
    killer.start()
    try:
        (outcome,) = run_search_ray(
            [prepared],
            workers=2,
            results=results,
            address=ray_cluster,
            execute=harness,
            worker_setup=_worker_setup,
        )
    finally:
        stop.set()
        killer.join()
    err = capfd.readouterr().err
    assert "search: 2 Ray workers (1 CPU each)" in err

    trials = prepared.study.get_trials(deepcopy=False)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # The killed actor's trial: failed at once by the driver, the spend it reported counted.
    (dead,) = killed
    assert trials[dead].state == TrialState.FAIL
    assert "ended mid-trial" in trials[dead].user_attrs["error"]
    reported = outcome.spend.per_trial[dead]
    assert EVAL_EVERY <= reported < TRIAL_STEPS
    assert "died" in err and "marked failed" in err and "starting it again" in err
    # The budget holds to one trial per worker, dead trial included.
    assert BUDGET <= outcome.spend.committed <= BUDGET + 2 * TRIAL_STEPS

    calls = [line.split() for line in (tmp_path / "calls.log").read_text().splitlines()]
    trial_calls = [c for c in calls if not c[2].endswith(":confirm")]
    # Both actors and the restarted one trained; no trial trained twice.
    assert len({pid for pid, _, _ in trial_calls}) == 3
    run_ids = [run_id for _, run_id, _ in trial_calls]
    assert len(run_ids) == len(set(run_ids))
    records = ResultStore(results).records(status=None)
    stored = [r for r in records if r.search and r.search["role"] == "trial"]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(r.search["trial"] for r in stored) == sorted(
        t.number for t in complete if "duplicate_of" not in t.user_attrs
    )
    # The driver's progress: one line per ended trial, naming its worker.
    ended_lines = [line for line in err.splitlines() if "] worker " in line and " trial " in line]
    assert len(ended_lines) == len(trials)

    # With a fake harness the confirmation runs here, once, on seeds 1 and 2 of the best trial.
    confirm_calls = [c for c in calls if c[2].endswith(":confirm")]
    assert {pid for pid, _, _ in confirm_calls} == {str(os.getpid())}
    confirmed = [r for r in records if r.search and r.search["role"] == "confirm"]
    assert sorted(r.seed for r in confirmed) == [1, 2]
    assert outcome.summary["confirm"]["trial"] == outcome.best_trial


def _parser() -> argparse.ArgumentParser:
    from lorabench.cli import search_cmd

    parser = argparse.ArgumentParser(prog="lorabench search")
    search_cmd.add_arguments(parser)
    return parser


def test_cli_refuses_bad_ray_settings_before_any_work(tmp_path, capsys):
    from lorabench.cli import search_cmd

    results = tmp_path / "r.db"
    argv = ["--variants", "lora", "--tasks", "rte", "--budget", "steps=50"]
    argv += ["--results", str(results)]
    cases = {
        ("--address", "auto"): "add --executor ray",
        ("--executor", "ray", "--workers", "0"): "--workers 0 must be an integer >= 1",
        ("--device", "cuda:7"): "cuda:7",
    }
    for extra, message in cases.items():
        assert search_cmd.run(_parser().parse_args([*argv, *extra])) == 2
        assert message in capsys.readouterr().err
    memory = ["--variants", "lora", "--tasks", "rte", "--budget", "steps=50"]
    args = _parser().parse_args([*memory, "--results", "sqlite://", "--executor", "ray"])
    assert search_cmd.run(args) == 2
    assert "in-memory database" in capsys.readouterr().err
    assert not results.exists()  # nothing was created, let alone trained


@pytest.mark.slow
def test_cli_executor_ray_end_to_end_on_a_custom_task(
    tmp_path, tiny_model_dir, capsys, ray_cluster, monkeypatch
):
    from lorabench.tasks import TASKS

    # Trials train in the actors and the confirmation on the cluster too: none in this process.
    def here(*args, **kwargs):
        raise AssertionError("a run trained in the driver")

    monkeypatch.setattr("lorabench.harness.runner.execute_run", here)
    journal = f"journal:{tmp_path / 'search.journal'}"
    options = ["--storage", journal, "--executor", "ray", "--address", ray_cluster]
    options += ["--workers", "2", "--threads", "1"]
    started = "search: 2 Ray workers (1 CPU each)"
    # A custom task given as its YAML file: the actors that search and the one that confirms
    # know it only through the driver.
    task = str(Path(__file__).parent / "fixtures" / "custom" / "reviews.yaml")
    try:
        # (the study is named after the task as given: its path)
        check_cli_search_end_to_end(tmp_path, tiny_model_dir, capsys, options, started, task, task)
    finally:
        TASKS.unregister("fixture-reviews")
