"""Parallel workers and claims: ``--workers 2`` trains each run once with the scores one worker
gets, resumes, records a worker's exception or death as a failed run (a death retried once), and
two drivers on one results database never train a run twice (live claims skipped and reported,
expired ones taken over). A custom task given as a YAML file reaches the workers.

Spawned workers import torch (seconds each): only the first three tests start them."""

from __future__ import annotations

import io
import os
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import toy_suite

import lorabench.harness.runner as runner
from lorabench.harness.runner import RunCache, resolve_suite, run_suite
from lorabench.harness.suite import VariantEntry
from lorabench.harness.workers import plan_workers
from lorabench.results.claims import LEASE_ENV, ClaimKeeper, ClaimOwner, lease_seconds
from lorabench.results.store import ResultStore
from lorabench.variants import VARIANTS
from lorabench.variants.lora import LoRA

pytestmark = pytest.mark.usefixtures("single_thread")

KILL_DIR_ENV = "LORABENCH_TEST_KILL_DIR"  # where Misbehave counts the deaths it caused
OTHER = ClaimOwner("elsewhere:4242:other", "elsewhere", 4242)


class Misbehave(LoRA):
    """LoRA whose rank says how it misbehaves at its first step: r=3 raises, r=5 kills its
    process once (the retry trains), r=6 kills it every time."""

    name = "misbehave"

    def before_step(self, step: int) -> None:
        if step != 1:
            return
        if self.config.r == 3:
            raise RuntimeError("misbehave: planned failure at step 1")
        if self.config.r in (5, 6):
            deaths = Path(os.environ[KILL_DIR_ENV]) / f"r{self.config.r}"
            deaths.mkdir(parents=True, exist_ok=True)
            if self.config.r == 6 or not any(deaths.iterdir()):
                (deaths / str(os.getpid())).touch()
                os.kill(os.getpid(), signal.SIGKILL)


def _worker_setup() -> None:
    """In each spawned worker: the toy task and the misbehaving variant, as the test registered
    them in this process (fixtures do not reach a spawned process)."""
    from conftest import register_toy_task

    register_toy_task()
    VARIANTS.add(Misbehave, name="misbehave", overwrite=True)


@pytest.fixture
def misbehave(tmp_path, monkeypatch):
    monkeypatch.setenv(KILL_DIR_ENV, str(tmp_path / "deaths"))
    VARIANTS.add(Misbehave, name="misbehave", overwrite=True)
    yield Misbehave
    VARIANTS.unregister("misbehave")


make_suite = toy_suite


def test_two_workers_train_each_run_once_with_the_scores_of_one_and_resume(
    tiny_model_dir, toy_task, tmp_path
):
    variants = [VariantEntry("lora", {"r": 2}), VariantEntry("lora", {"r": 4})]
    serial_suite = make_suite(tiny_model_dir, toy_task, tmp_path / "serial", variants)
    serial = run_suite(serial_suite, ResultStore(tmp_path / "serial.db"), progress=False)
    assert [r.status for r in serial] == ["finished"] * 4

    # A partial earlier run: one of the four is stored already, so three train.
    store = ResultStore(tmp_path / "parallel.db")
    store.add(serial[2])
    out = io.StringIO()
    suite = make_suite(tiny_model_dir, toy_task, tmp_path / "parallel", variants)
    records = run_suite(
        suite, store, progress=True, stream=out, workers=2, threads=2, worker_setup=_worker_setup
    )
    text = out.getvalue()
    assert "2 workers (1: 1 thread, 2: 1 thread)" in text
    assert "1 already finished, skipped" in text
    assert text.count("[start] lora(r=") == 3
    assert sorted(line.split("]")[0] for line in text.splitlines() if "/3]" in line) == [
        "[1/3",
        "[2/3",
        "[3/3",
    ]
    # Each run once, scores as one worker got them (a seed fixes a CPU run).
    assert [r.run_id for r in records] == [r.run_id for r in serial]
    assert len(store.records(status=None)) == 4
    assert {r.run_id: r.score for r in records} == {r.run_id: r.score for r in serial}
    assert [r.started_at for r in records][2] == serial[2].started_at  # not trained again
    assert store.claims() == []  # every claim released
    assert (tmp_path / "parallel" / "adapters" / records[0].run_id).is_dir()


def test_workers_train_a_custom_task_given_as_a_yaml_file(tiny_model_dir, tmp_path):
    """The task is registered from its YAML file in the driver only; the workers get its spec
    (a spawned process knows only the built-in tasks)."""
    from lorabench.tasks import TASKS

    task_file = Path(__file__).parent / "fixtures" / "custom" / "reviews.yaml"
    variants = [VariantEntry("lora", {"r": 2})]
    suite = make_suite(tiny_model_dir, str(task_file), tmp_path / "out", variants)
    try:
        records = run_suite(suite, ResultStore(tmp_path / "r.db"), progress=False, workers=2)
    finally:
        TASKS.unregister("fixture-reviews")
    assert [(r.task, r.status) for r in records] == [("fixture-reviews", "finished")] * 2, [
        r.error for r in records
    ]


def test_worker_exception_and_death_are_failed_runs_and_the_suite_goes_on(
    tiny_model_dir, toy_task, tmp_path, misbehave
):
    suite = make_suite(
        tiny_model_dir,
        toy_task,
        tmp_path,
        [
            VariantEntry("misbehave", {"r": 3}),
            VariantEntry("misbehave", {"r": 5}),
            VariantEntry("misbehave", {"r": 6}),
            VariantEntry("lora", {"r": 2}),
        ],
        seeds=[0],
    )
    store = ResultStore(tmp_path / "results.db")
    out = io.StringIO()
    records = run_suite(
        suite, store, progress=True, stream=out, workers=2, threads=2, worker_setup=_worker_setup
    )
    assert [r.status for r in records] == ["failed", "finished", "failed", "finished"]
    raised, retried, killed, _ = records
    assert "planned failure at step 1" in raised.error
    assert retried.score is not None and retried.error is None
    # r=5 died once and its retry trained; r=6 died twice and is recorded failed.
    assert len(list((tmp_path / "deaths" / "r5").iterdir())) == 1
    assert len(list((tmp_path / "deaths" / "r6").iterdir())) == 2
    assert "died twice (killed by SIGKILL)" in killed.error and "--workers" in killed.error
    assert out.getvalue().count("retrying it once in a new worker") == 2
    assert store.claims() == []


def test_store_claims_take_over_only_expired_or_own_claims(tmp_path):
    store = ResultStore(tmp_path / "results.db")
    me = ClaimOwner("here:1:me", "here", 1)
    assert store.claim("run-a", OTHER, lease_s=60, now=1000.0) is None
    held = store.claim("run-a", me, lease_s=60, now=1059.0)
    assert held is not None and held.owner == OTHER and held.expires_at == 1060.0
    assert store.claim("run-a", OTHER, lease_s=60, now=1059.0) is None  # its own: renewed
    assert store.renew_claims(["run-a"], me, lease_s=60, now=1100.0) == set()  # not mine
    assert store.claim("run-a", me, lease_s=60, now=1119.0) is None  # expired: taken over
    assert store.renew_claims(["run-a"], me, lease_s=60, now=1150.0) == {"run-a"}
    assert store.claims()[0].expires_at == 1210.0
    store.release_claims(["run-a"], OTHER)  # not its claim any more: nothing happens
    assert [c.owner for c in store.claims()] == [me]
    store.release_claims(["run-a"], me)
    assert store.claims() == []


def test_claim_keeper_renews_and_releases_with_its_clock(tmp_path):
    store = ResultStore(tmp_path / "results.db")
    now = [100.0]
    keeper = ClaimKeeper(store, lease_s=10, clock=lambda: now[0], owner=OTHER)
    assert keeper.claim("run-a") and keeper.claim("run-b")
    now[0] = 108.0
    keeper.renew()
    assert {c.expires_at for c in store.claims()} == {118.0}
    keeper.release("run-a")
    assert [c.run_id for c in store.claims()] == ["run-b"]
    keeper.stop()
    assert store.claims() == []


def test_a_claim_taken_over_while_its_run_trains_is_known_as_lost(tmp_path):
    store = ResultStore(tmp_path / "results.db")
    now = [100.0]
    keeper = ClaimKeeper(store, lease_s=10, clock=lambda: now[0], owner=OTHER)
    assert keeper.claim("run-a") and keeper.claim("run-b")
    # This driver stalls past its lease; another takes run-a over.
    me = ClaimOwner("here:1:me", "here", 1)
    assert store.claim("run-a", me, lease_s=10, now=111.0) is None
    now[0] = 112.0
    keeper.renew()
    assert keeper.lost == {"run-a"}  # run-b was renewed: not lost
    keeper.release("run-b")
    keeper.renew()
    assert keeper.lost == {"run-a"}  # a released claim is not a lost one
    keeper.stop()


def test_a_run_another_driver_stored_during_this_suite_is_not_trained_again(tmp_path):
    from lorabench.results.records import RunRecord

    store = ResultStore(tmp_path / "results.db")
    keeper = ClaimKeeper(store, lease_s=60, owner=OTHER)
    cfg = runner.RunConfig(variant="lora", task="t", seed=0)

    def stored(status: str, finished_at: str) -> None:
        store.add(
            RunRecord(
                run_id=cfg.run_id, status=status, variant="lora", task="t", model="m", seed=0,
                config=cfg.to_dict(), finished_at=finished_at, error="boom",
            )
        )  # fmt: skip

    stored("failed", "2026-01-01T09:00:00+00:00")  # failed before this suite: retried
    before = runner._stored_before([cfg], store, keeper)
    assert runner._take(cfg, keeper, store, before)
    keeper.release(cfg.run_id)
    # Another driver tried it meanwhile: not tried again here.
    stored("failed", "2026-01-01T10:05:00+00:00")
    assert not runner._take(cfg, keeper, store, before)
    assert store.claims() == []  # the claim was dropped again
    keeper.stop()


def test_a_live_claim_is_skipped_and_reported_an_expired_one_taken_over(
    tiny_model_dir, toy_task, tmp_path
):
    suite = make_suite(
        tiny_model_dir, toy_task, tmp_path, [VariantEntry("lora", {"r": 2})], seeds=[0, 1, 2]
    )
    ids = [cfg.run_id for cfg in resolve_suite(suite, RunCache())]
    store = ResultStore(tmp_path / "results.db")
    store.claim(ids[0], OTHER, lease_s=3600, now=time.time())  # live: another driver trains it
    store.claim(ids[1], OTHER, lease_s=60, now=time.time() - 3600)  # its driver was killed
    out = io.StringIO()
    records = run_suite(suite, store, progress=True, stream=out)
    assert [r.run_id for r in records] == ids[1:]
    assert store.finished_ids() == set(ids[1:])
    assert "1 run left to another driver (pid 4242 on elsewhere)" in out.getvalue()
    assert [(c.run_id, c.owner) for c in store.claims()] == [(ids[0], OTHER)]  # untouched


def test_two_drivers_on_one_database_train_each_run_once(
    tiny_model_dir, toy_task, tmp_path, monkeypatch
):
    suite = make_suite(
        tiny_model_dir, toy_task, tmp_path, [VariantEntry("lora", {"r": 2})], seeds=[0, 1, 2, 3]
    )
    trained: list[str] = []
    real = runner.execute_run

    def counting(cfg, **kwargs):
        trained.append(cfg.run_id)
        return real(cfg, **kwargs)

    monkeypatch.setattr(runner, "execute_run", counting)
    errors: list[BaseException] = []

    def driver() -> None:
        try:
            run_suite(suite, ResultStore(tmp_path / "results.db"), progress=False)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    # The database exists before the drivers start (as when a second command joins a running
    # one): this test is about claims, not about two processes creating one file at once.
    ResultStore(tmp_path / "results.db").engine.dispose()
    threads = [threading.Thread(target=driver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    store = ResultStore(tmp_path / "results.db")
    assert sorted(trained) == sorted(store.finished_ids()) and len(trained) == 4
    assert store.claims() == []


def test_an_old_database_gets_the_claims_table_and_keeps_its_runs(tmp_path):
    folder = tmp_path / "release"
    shutil.copytree(Path(__file__).parent / "fixtures" / "release_0_1", folder)
    path = folder / "results.db"
    with sqlite3.connect(path) as conn:
        before = conn.execute("select run_id, record from runs order by run_id").fetchall()
    reader = ResultStore(path, create=False)
    assert "claims" not in sa.inspect(reader.engine).get_table_names()
    assert reader.claims() == []
    store = ResultStore(path)
    assert "claims" in sa.inspect(store.engine).get_table_names()
    with sqlite3.connect(path) as conn:
        assert conn.execute("select run_id, record from runs order by run_id").fetchall() == before


def test_lease_and_worker_plan_settings(monkeypatch):
    monkeypatch.setenv(LEASE_ENV, "5")
    assert lease_seconds() == 5.0
    monkeypatch.setenv(LEASE_ENV, "soon")
    with pytest.raises(ValueError, match=r"LORABENCH_CLAIM_LEASE_S='soon'.*=120"):
        lease_seconds()
    assert [(s.threads, s.device) for s in plan_workers(3, 8, "cpu")] == [(2, "cpu")] * 3
    assert [s.threads for s in plan_workers(4, 2, "cpu")] == [1] * 4
    with pytest.raises(ValueError, match="--workers 0 must be >= 1"):
        plan_workers(0)
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    plan = plan_workers(3, 6, "cuda")
    assert [s.device for s in plan] == ["cuda:0", "cuda:1", "cuda:0"]
    assert [s.device for s in plan_workers(2, 2, "cuda:1")] == ["cuda:1", "cuda:1"]
