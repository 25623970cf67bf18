"""Several workers, one study, one budget: real processes on a real PostgreSQL server.

The PostgreSQL tests need ``LORABENCH_TEST_POSTGRES_URL`` (``source scripts/ci_postgres.sh``
starts a throwaway server on loopback and exports it) and are skipped otherwise; the same check
runs on Optuna's journal file (several processes on one machine) without a server. Two worker
processes search one study with a shared steps budget; the test checks that every trial ended
exactly once, that each was run by exactly one worker, that both workers saw the same total, and
that the budget held (overshoot at most one trial per worker). A worker killed mid-trial leaves a
trial that the next worker marks failed (heartbeat), its reported spend counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

URL = os.environ.get("LORABENCH_TEST_POSTGRES_URL")
postgres = pytest.mark.skipif(
    not URL, reason="LORABENCH_TEST_POSTGRES_URL is not set (source scripts/ci_postgres.sh)"
)

TRIAL_STEPS = 100
# A worker: the real search loop and storage, with a harness that "trains" by sleeping, so the
# two processes overlap for certain and the spend of every trial is known to the step.
WORKER = r"""
import json, sys, time
import optuna
from lorabench.harness.config import Budget, TrainConfig
from lorabench.results.records import RunRecord
from lorabench.search.loop import SearchConfig, prepare_search, run_search

url, study, budget = sys.argv[1], sys.argv[2], sys.argv[3]
trial_steps, tag = int(sys.argv[4]), sys.argv[5]
heartbeat, hang_at = int(sys.argv[6]), int(sys.argv[7])  # hang_at > 0: freeze after that eval
optuna.logging.set_verbosity(optuna.logging.WARNING)
mine = []

def execute(cfg, *, on_eval=None, progress=True):
    r = cfg.variant_config["r"]
    for step in range(25, trial_steps + 1, 25):
        time.sleep(0.05)
        if on_eval is not None:
            on_eval(step, {}, 0.5 + 0.01 * r)
        if step == hang_at:
            print("HUNG", flush=True)
            time.sleep(3600)  # the test kills this worker here, mid-trial
    mine.append(cfg.run_id)
    return RunRecord(run_id=cfg.run_id, status="finished", variant=cfg.variant, task=cfg.task,
                     model="fake", seed=cfg.seed, config=cfg.to_dict(),
                     score=0.5 + 0.01 * r + 1e-4 * cfg.train.learning_rate,
                     rank=r, trainable_params=100 * r,
                     spent={"steps": trial_steps, "tokens": 0, "train_seconds": 0.2,
                            "eval_seconds": 0.0, "flops": 0})

class Store:
    def add(self, record):
        print("TRIAL " + json.dumps({"worker": tag, "trial": record.search["trial"]}), flush=True)
    def get(self, run_id):
        return None

cfg = SearchConfig(variant="lora", task="rte", budget=Budget.parse(budget),
                   trial_budget=Budget("steps", trial_steps), train=TrainConfig(eval_every=25),
                   storage=url, study=study, pruner="none", confirm_seeds=0,
                   heartbeat_interval=heartbeat)
outcome = run_search(prepare_search(cfg), store=Store(), execute=execute, progress=False)
print("DONE " + json.dumps({"worker": tag, "committed": outcome.spend.committed}), flush=True)
"""


def _worker(
    study: str,
    budget: str,
    tag: str,
    *,
    storage: str | None = None,
    heartbeat: int = 2,
    hang_at: int = 0,
) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            WORKER,
            storage or URL,
            study,
            budget,
            str(TRIAL_STEPS),
            tag,
            str(heartbeat),
            str(hang_at),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.mark.postgres
@postgres
def test_two_workers_share_one_study_and_its_budget():
    _two_workers_share_one_study(URL, budget=2000)  # 20 full trials of 100 steps between them


def test_two_processes_share_one_study_through_a_journal_file(tmp_path):
    _two_workers_share_one_study(f"journal:{tmp_path / 'search.journal'}", budget=2000)


def _two_workers_share_one_study(storage_url: str, budget: int) -> None:
    import optuna
    from optuna.trial import TrialState

    study_prefix = f"w2-{uuid.uuid4().hex[:8]}"
    workers = [
        _worker(study_prefix, f"steps={budget}", tag, storage=storage_url) for tag in ("a", "b")
    ]
    outputs = [w.communicate(timeout=180) for w in workers]
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]

    ran: dict[int, str] = {}
    for out, _ in outputs:
        for line in out.splitlines():
            if line.startswith("TRIAL "):
                event = json.loads(line[len("TRIAL ") :])
                assert event["trial"] not in ran, f"trial {event['trial']} ran twice"
                ran[event["trial"]] = event["worker"]
    assert set(ran.values()) == {"a", "b"}, "both workers must have run trials"

    from lorabench.search.storage import open_storage

    storage = open_storage(storage_url, heartbeat_interval=None)
    study = optuna.load_study(study_name=f"{study_prefix}/lora/rte", storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # No trial lost: every trial in the study was run (and recorded) by exactly one worker.
    assert sorted(ran) == [t.number for t in trials if "duplicate_of" not in t.user_attrs]
    spent = sum(t.user_attrs["spend"]["steps"] for t in trials)
    assert budget <= spent <= budget + 2 * TRIAL_STEPS  # at most one trial over per worker
    # Both workers saw the same total: no trial's spend counted twice or missed by either.
    done = [
        json.loads(line[len("DONE ") :])
        for out, _ in outputs
        for line in out.splitlines()
        if line.startswith("DONE ")
    ]
    assert [d["committed"] for d in done] == [spent, spent]


@pytest.mark.postgres
@postgres
def test_killed_worker_trial_is_failed_by_heartbeat_and_its_spend_counted():
    import signal
    import time

    import optuna
    from optuna.trial import TrialState

    from lorabench.search.storage import open_storage

    study_prefix = f"pg-{uuid.uuid4().hex[:8]}"
    budget, heartbeat = 500, 1
    doomed = _worker(study_prefix, f"steps={budget}", "doomed", heartbeat=heartbeat, hang_at=50)
    assert doomed.stdout is not None
    for line in doomed.stdout:  # wait until it reported 50 steps of its first trial, then kill it
        if line.startswith("HUNG"):
            break
    else:
        raise AssertionError(f"the worker ended before hanging: {doomed.communicate()[1][-3000:]}")
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate(timeout=30)
    time.sleep(
        3 * heartbeat + 0.5
    )  # past the grace period (3 beats), so the survivor fails it at once

    survivor = _worker(study_prefix, f"steps={budget}", "survivor", heartbeat=heartbeat)
    out, err = survivor.communicate(timeout=180)
    assert survivor.returncode == 0, err[-3000:]
    study = optuna.load_study(
        study_name=f"{study_prefix}/lora/rte", storage=open_storage(URL, heartbeat_interval=None)
    )
    trials = study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].number == 0, [t.state for t in trials]
    assert failed[0].user_attrs["partial_spend"]["steps"] == 50  # what it reported before dying
    assert all(t.state == TrialState.COMPLETE for t in trials[1:])
    spent = 50 + sum(t.user_attrs["spend"]["steps"] for t in trials[1:])
    assert budget <= spent < budget + TRIAL_STEPS  # the killed trial's 50 steps count
    (done,) = [
        json.loads(line[len("DONE ") :]) for line in out.splitlines() if line.startswith("DONE ")
    ]
    assert done["committed"] == spent


@pytest.mark.postgres
@postgres
def test_worker_with_another_budget_is_refused_before_training():
    study_prefix = f"pg-{uuid.uuid4().hex[:8]}"
    first = _worker(study_prefix, "steps=200", "a")
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-3000:]
    second = _worker(study_prefix, "steps=400", "b")
    out, err = second.communicate(timeout=120)
    assert second.returncode != 0
    assert "created with search budget steps=200, but this worker has steps=400" in err
    assert "TRIAL" not in out
