"""``lorabench search --workers N``: N spawned processes on one study and its budget.

A fake harness (exact spend, a pause per evaluation, a barrier so that both workers train at
once) checks the accounting: the budget holds to one trial per worker, every trial ran and was
stored once, a worker killed mid-trial leaves the other going and its trial failed with the
spend it reported, and the parent confirms the best once. The workers search a task registered in
code, which reaches them through ``worker_setup``. Ctrl-C, sent to the parent's process group
as a terminal sends it, stops both workers, each failing its running trial with its spend. The
command line, end to end on the real harness (``slow``: each worker imports transformers), checks
the trials, one confirmation and the summary.

Spawned workers import torch and Optuna (seconds each): only three tests start them.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lorabench.harness.config import Budget, RunConfig, TrainConfig
from lorabench.results.records import RunRecord
from lorabench.results.store import ResultStore
from lorabench.search.loop import SearchConfig, prepare_search
from lorabench.search.parallel import run_search_workers

optuna.logging.set_verbosity(optuna.logging.WARNING)

BUDGET = 400
TRIAL_STEPS = 100
EVAL_EVERY = 25
# Only a guard against a hang: on a machine shared with heavy jobs, starting a process that
# imports torch can take minutes.
START_TIMEOUT_S = 600


class BarrierHarness:
    """A picklable fake ``execute_run``: ``TRIAL_STEPS`` steps, an evaluation every 25 with a
    pause, a score from the sampled rank. The first call in each process waits until
    ``processes`` processes have called (the workers overlap for certain). With ``kill``, the
    first worker process to start its second trial kills itself after two evaluations."""

    def __init__(self, folder: Path, processes: int, pause: float = 0.04, kill: bool = False):
        self.folder = Path(folder)
        self.processes = processes
        self.pause = pause
        self.kill = kill
        self.calls = 0

    def _log(self, cfg: RunConfig) -> None:
        with open(self.folder / "calls.log", "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()} {cfg.run_id} {cfg.tag}\n")

    def _barrier(self) -> None:
        (self.folder / f"started-{os.getpid()}").touch()
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(list(self.folder.glob("started-*"))) < self.processes:
            assert time.monotonic() < deadline, "the other worker never started"
            time.sleep(0.02)

    def _dies_now(self) -> bool:
        if not self.kill or multiprocessing.parent_process() is None or self.calls != 2:
            return False
        try:  # the first worker to get here, only
            os.close(os.open(self.folder / "killed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def __call__(self, cfg: RunConfig, *, on_eval=None, progress=True) -> RunRecord:
        self.calls += 1
        if self.calls == 1:
            self._barrier()
        self._log(cfg)
        dies = self._dies_now()
        r = cfg.variant_config.get("r", 8)
        score = 0.5 + 0.01 * r + 1e-3 * cfg.train.learning_rate + 1e-4 * cfg.seed
        for step in range(EVAL_EVERY, TRIAL_STEPS + 1, EVAL_EVERY):
            time.sleep(self.pause)
            if on_eval is not None:
                on_eval(step, {"accuracy": score}, score)
            if dies and step == 2 * EVAL_EVERY:
                os.kill(os.getpid(), signal.SIGKILL)
        return RunRecord(
            run_id=cfg.run_id,
            status="finished",
            variant=cfg.variant,
            task=cfg.task,
            model="fake",
            seed=cfg.seed,
            config=cfg.to_dict(),
            score=score,
            primary_metric="accuracy",
            rank=r,
            trainable_params=1000 * r,
            budget=cfg.budget.to_dict(),
            tag=cfg.tag,
            spent={"steps": TRIAL_STEPS, "train_seconds": 0.2, "eval_seconds": 0.0},
        )


def _config(tmp_path: Path, **overrides) -> SearchConfig:
    values = dict(
        variant="lora",
        task="rte",
        budget=Budget("steps", BUDGET),
        trial_budget=Budget("steps", TRIAL_STEPS),
        train=TrainConfig(eval_every=EVAL_EVERY),
        storage=str(tmp_path / "search.db"),
        study="w",
        sampler="random",  # cheaper than TPE per trial; the sampler is not what is tested
        pruner="none",
        confirm_seeds=2,
        heartbeat_interval=None,
    )
    values.update(overrides)
    return SearchConfig(**values)


def _worker_setup() -> None:
    """In each spawned worker: the toy task, as the test session registered it here."""
    from conftest import register_toy_task

    register_toy_task()


def test_two_workers_share_the_budget_store_each_trial_once_and_confirm_once(
    tmp_path, capfd, toy_task
):
    results = str(tmp_path / "results.db")
    # The toy task is registered in code, here: a spawned worker knows it only through the
    # setup hook (without it, joining the study fails with "unknown task").
    prepared = prepare_search(_config(tmp_path, task=toy_task))
    harness = BarrierHarness(tmp_path, processes=2, kill=True)
    (outcome,) = run_search_workers(
        [prepared],
        workers=2,
        results=results,
        threads=2,
        execute=harness,
        worker_setup=_worker_setup,
    )
    err = capfd.readouterr().err

    trials = prepared.study.get_trials(deepcopy=False)
    # The budget holds to one trial per worker (the dead worker's trial counts what it reported).
    assert BUDGET <= outcome.spend.committed <= BUDGET + 2 * TRIAL_STEPS
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # The killed worker: its trial failed at once by the parent, its 50 reported steps counted;
    # the other worker went on to spend the budget.
    (dead,) = [t for t in trials if t.state == TrialState.FAIL]
    assert "killed by SIGKILL" in dead.user_attrs["error"]
    assert outcome.spend.per_trial[dead.number] == 2 * EVAL_EVERY
    assert "died (killed by SIGKILL)" in err and "the other workers go on" in err

    calls = [line.split() for line in (tmp_path / "calls.log").read_text().splitlines()]
    trial_calls = [c for c in calls if not c[2].endswith(":confirm")]
    assert len({pid for pid, _, _ in trial_calls}) == 2  # both workers trained
    run_ids = [run_id for _, run_id, _ in trial_calls]
    assert len(run_ids) == len(set(run_ids))  # no trial trained twice

    store = ResultStore(results)
    records = store.records(status=None)
    stored = [r for r in records if r.search and r.search["role"] == "trial"]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    # Every trial that trained to its end stored once, by its trial number and run id.
    assert sorted(r.search["trial"] for r in stored) == sorted(
        t.number for t in complete if "duplicate_of" not in t.user_attrs
    )
    assert {r.run_id for r in stored} <= set(run_ids)
    # One progress line per finished trial, naming its worker.
    finished_lines = [line for line in err.splitlines() if " complete " in line]
    assert len(finished_lines) == len(complete)
    assert any("worker 1: trial" in line for line in finished_lines)
    assert any("worker 2: trial" in line for line in finished_lines)

    # The confirmation: once, here, on seeds 1 and 2 of the best trial.
    confirm_calls = [c for c in calls if c[2].endswith(":confirm")]
    assert sorted({pid for pid, _, _ in confirm_calls}) == [str(os.getpid())]
    assert len(confirm_calls) == 2
    confirmed = [r for r in records if r.search and r.search["role"] == "confirm"]
    assert sorted(r.seed for r in confirmed) == [1, 2]
    assert outcome.summary["confirm"]["trial"] == outcome.best_trial
    assert err.count("confirming trial") == 2


# A parent process as the command line runs one (SIGTERM raises as Ctrl-C does), on the fake
# harness: the test stops it as a terminal's Ctrl-C does, signalling its whole process group.
PARENT = r"""
import sys
from pathlib import Path
from lorabench.harness.config import Budget
from lorabench.interrupts import stop_signals_raise
from lorabench.search.loop import prepare_search
from lorabench.search.parallel import run_search_workers
from test_search_workers import BarrierHarness, _config

if __name__ == "__main__":
    import signal

    # As a terminal's foreground job has it: a job started in the background by a shell (CI
    # under nohup, say) inherits SIGINT ignored, and Python then installs no handler for it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    folder = Path(sys.argv[1])
    prepared = prepare_search(_config(folder, budget=Budget("steps", 100_000)))
    harness = BarrierHarness(folder, processes=2, pause=0.3)
    try:
        with stop_signals_raise():
            run_search_workers(
                [prepared], workers=2, results=str(folder / "results.db"), threads=2,
                execute=harness,
            )
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        sys.exit(130)
"""


def test_ctrl_c_stops_every_worker_and_fails_their_trials_with_their_spend(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent), str(here)])}
    log = tmp_path / "parent.out"  # a file, not a pipe: read whole on failure, never full
    with open(log, "w", encoding="utf-8") as out_file:
        parent = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path)],
            stdout=out_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
    calls = tmp_path / "calls.log"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        # Both workers past the barrier, in their first trial (4 evaluations of 0.3 s).
        while not calls.is_file() or len(calls.read_text().splitlines()) < 2:
            running = parent.poll() is None
            assert running and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        time.sleep(0.4)
        os.killpg(parent.pid, signal.SIGINT)
        parent.wait(timeout=START_TIMEOUT_S)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
    out = log.read_text()
    assert parent.returncode == 130, out[-3000:]
    assert "search: stopping 2 worker(s)" in out and "INTERRUPTED" in out

    from lorabench.search.storage import open_storage

    storage = open_storage(str(tmp_path / "search.db"), heartbeat_interval=None)
    trials = optuna.load_study(study_name="w/lora/rte", storage=storage).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    # Each worker failed its own running trial, with the spend it had reached.
    assert sorted(t.user_attrs["worker"] for t in stopped) == [1, 2]
    for t in stopped:
        assert t.user_attrs["error"].startswith("Interrupted: the search was stopped")
        assert "partial_spend" in t.user_attrs


def test_cli_refuses_workers_0_before_any_work(tmp_path, capsys):
    import argparse

    from lorabench.cli import search_cmd

    parser = argparse.ArgumentParser(prog="lorabench search")
    search_cmd.add_arguments(parser)
    results = tmp_path / "r.db"
    argv = ["--variants", "lora", "--tasks", "rte", "--budget", "steps=500"]
    for bad in ("0", "-2"):
        args = parser.parse_args([*argv, "--results", str(results), "--workers", bad])
        assert search_cmd.run(args) == 2
        err = capsys.readouterr().err
        assert f"--workers {bad} must be an integer >= 1" in err and "--workers 2" in err
    assert not results.exists()  # nothing was created, let alone trained
    memory = parser.parse_args([*argv, "--results", "sqlite://", "--workers", "2"])
    assert search_cmd.run(memory) == 2
    assert "in-memory database" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_api_refuses_a_bad_worker_count(tmp_path, workers):
    from lorabench.search.loop import SearchError

    with pytest.raises(SearchError, match="must be an integer >= 1"):
        run_search_workers([], workers=workers, results=str(tmp_path / "r.db"))


def check_cli_search_end_to_end(
    tmp_path, tiny_model_dir, capsys, extra, started, task="rte", task_name="rte"
) -> None:
    """``lorabench search`` on the real harness (the tiny model, ``task``: by default the RTE
    fixture, a 12-step budget of 3-step trials) with the options ``extra``: the line
    ``started``, the trials each stored once, one confirmation, the summary."""
    import argparse

    import yaml

    from lorabench.cli import search_cmd
    from lorabench.search.loop import load_search_summaries

    config = tmp_path / "search.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "train": {"batch_size": 4, "eval_batch_size": 8, "max_length": 32, "eval_every": 3},
                "space": {"lora": {"r": {"type": "categorical", "choices": [1, 2, 4]}}},
            }
        )
    )
    results = tmp_path / "results.db"
    parser = argparse.ArgumentParser(prog="lorabench search")
    search_cmd.add_arguments(parser)
    args = parser.parse_args(
        [
            "--variants", "lora", "--tasks", task, "--config", str(config),
            "--data-dir", str(Path(__file__).parent / "fixtures" / "glue"),
            "--model", str(tiny_model_dir), "--budget", "steps=12", "--trial-budget", "steps=3",
            "--pruner", "none", "--confirm-seeds", "1", "--results", str(results), *extra,
        ]
    )  # fmt: skip
    code = search_cmd.run(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert started in captured.err
    (summary,) = load_search_summaries(results)
    assert 12 <= summary["spent"] <= 12 + 2 * 3
    assert summary["states"] == {"COMPLETE": summary["n_trials"]}
    records = ResultStore(results).records()
    trials = [r for r in records if r.search["role"] == "trial"]
    assert len({r.search["trial"] for r in trials}) == len(trials) > 0
    assert [r.seed for r in records if r.search["role"] == "confirm"] == [1]
    assert summary["confirm"]["runs"][0]["seed"] == 1
    assert f"lorabench/lora/{task_name}" in captured.out  # the summary table


@pytest.mark.slow
def test_cli_workers_end_to_end_on_the_real_harness(tmp_path, tiny_model_dir, capsys):
    check_cli_search_end_to_end(
        tmp_path,
        tiny_model_dir,
        capsys,
        ["--workers", "2", "--threads", "2"],
        "search: 2 workers (1 thread each)",
    )
