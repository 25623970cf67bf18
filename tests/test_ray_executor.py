"""``--executor ray``: a suite on a local Ray instance (2 CPUs, started once for the module)
stores each run once with the scores of the local executor, retries the run of a Ray worker
killed mid-run (stored once) and resumes; a driver killed mid-suite loses nothing and trains
nothing twice when re-run; the slots fit the cluster; Ray missing, or ``--address`` without
``--executor ray``, is refused before any work.

Every Ray actor imports torch (seconds each): three suites start actors."""

from __future__ import annotations

import functools
import io
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import toy_suite

ray = pytest.importorskip("ray")

from lorabench.harness.ray_pool import RayExecutorError, plan_ray_slots  # noqa: E402
from lorabench.harness.runner import SuiteInputError, run_suite  # noqa: E402
from lorabench.harness.suite import VariantEntry  # noqa: E402
from lorabench.results.store import ResultStore  # noqa: E402
from lorabench.variants import VARIANTS  # noqa: E402
from lorabench.variants.lora import LoRA  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
DEADLINE_S = 300  # the longest any poll below waits (a loaded machine is slow)


class Marked(LoRA):
    """LoRA that leaves a file ``<phase>-r<r>-<pid>-<n>`` in :attr:`marks` when it starts
    training (its first step), so a test counts how often each run (one rank each) trained,
    in which driver phase and in which process. r=5 blocks at its first attempt until it is
    killed from outside."""

    name = "marked"
    marks: Path | None = None
    phase = "first"

    def before_step(self, step: int) -> None:
        if step != 1 or self.marks is None:
            return
        r = self.config.r
        earlier = list(self.marks.glob(f"*-r{r}-*"))
        (self.marks / f"{self.phase}-r{r}-{os.getpid()}-{uuid.uuid4().hex[:8]}").touch()
        if r == 5 and not earlier:  # the test kills this process now
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline:
                time.sleep(0.05)
            raise RuntimeError("marked r=5: was not killed")


def _setup(marks: str | None = None, phase: str = "first") -> None:
    """In each Ray actor (and a subprocess driver): the toy task and the marked variant, as the
    fixtures registered them in the test process."""
    from conftest import register_toy_task

    register_toy_task()
    Marked.marks = Path(marks) if marks else None
    Marked.phase = phase
    VARIANTS.add(Marked, name="marked", overwrite=True)


@pytest.fixture
def marks(tmp_path):
    folder = tmp_path / "marks"
    folder.mkdir()
    _setup(str(folder))
    yield folder
    Marked.marks = None
    VARIANTS.unregister("marked")


make_suite = functools.partial(toy_suite, seeds=(0,))


def started(marks: Path, phase: str | None = None) -> list[tuple[int, int]]:
    """(rank, pid) of every training start the marked variant left, of ``phase`` or all."""
    found = []
    for path in marks.iterdir():
        mark_phase, rank, pid, _ = path.name.split("-")
        if phase is None or mark_phase == phase:
            found.append((int(rank[1:]), int(pid)))
    return found


def test_a_suite_on_ray_stores_each_run_once_with_local_scores_survives_a_killed_worker_and_resumes(
    tiny_model_dir, toy_task, tmp_path, ray_cluster, marks
):
    """One test for the three (each Ray actor spends seconds importing torch): the scores of
    the local executor, the actor of the marked r=5 run killed from outside mid-run (as an OOM
    killer would) with its run retried once in another or a new actor, and the resume."""
    lora = [VariantEntry("lora", {"r": r}) for r in (2, 4, 8)]
    local_suite = make_suite(tiny_model_dir, toy_task, tmp_path / "local", lora)
    local = run_suite(local_suite, ResultStore(tmp_path / "local.db"), progress=False)
    assert [r.status for r in local] == ["finished"] * 3

    killed: list[int] = []

    def kill_when_r5_trains() -> None:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            found = started(marks)
            if found:
                ((_rank, pid),) = found
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    store = ResultStore(tmp_path / "ray.db")
    store.add(local[1])  # a partial earlier run: three of the four train
    suite = make_suite(
        tiny_model_dir, toy_task, tmp_path / "ray", [*lora, VariantEntry("marked", {"r": 5})]
    )
    out = io.StringIO()
    killer = threading.Thread(target=kill_when_r5_trains)
    killer.start()
    try:
        records = run_suite(
            suite,
            store,
            progress=True,
            stream=out,
            executor="ray",
            worker_setup=functools.partial(_setup, str(marks)),
        )
    finally:
        killer.join()
    text = out.getvalue()
    assert "2 Ray workers (1: 1 thread, 2: 1 thread)" in text  # the cluster's 2 CPUs
    assert "1 already finished, skipped" in text
    assert [r.status for r in records] == ["finished"] * 4, records[3].error
    # Each run once, with the scores the local executor got (a seed fixes a CPU run).
    assert [r.run_id for r in records[:3]] == [r.run_id for r in local]
    assert [r.score for r in records[:3]] == [r.score for r in local]
    assert records[1].started_at == local[1].started_at  # stored before: not trained again
    assert len(store.records(status=None)) == 4 and store.claims() == []
    # The killed run: trained a second time, in another process, and stored once.
    assert len(killed) == 1, "the r=5 run never started"
    starts = started(marks)
    assert len(starts) == 2 and killed[0] in {pid for _, pid in starts}
    assert starts[0][1] != starts[1][1]
    assert text.count("retrying it once in a new worker") == 1 and "died (" in text
    # Written on the actors, where the driver said.
    assert (tmp_path / "ray" / "adapters" / records[0].run_id).is_dir()
    assert (tmp_path / "ray" / "logs" / f"{records[0].run_id}.csv").is_file()
    assert ray.is_initialized()  # the caller's connection is left as it was

    # Everything stored: the re-run trains nothing and starts no actor.
    again = run_suite(suite, store, progress=True, stream=io.StringIO(), executor="ray")
    assert [r.started_at for r in again] == [r.started_at for r in records]


RERUN_VARIANTS = [VariantEntry("marked", {"r": r}) for r in (1, 2, 3, 4, 6, 7)]
# The driver to kill: a process of its own on the module's Ray instance, as a second command
# joins a cluster with --address; one worker (one actor to start: the first record comes soon).
DRIVER = """
import functools, sys
sys.path[:0] = [{tests!r}, {repo!r}]
import test_ray_executor as t
from conftest import TOY_TASK
from lorabench.harness.runner import run_suite
from lorabench.results.store import ResultStore
t._setup({marks!r})
suite = t.make_suite({model!r}, TOY_TASK, {out!r}, t.RERUN_VARIANTS, steps=30)
run_suite(suite, ResultStore({db!r}), progress=False, executor="ray", address={address!r},
          workers=1, worker_setup=functools.partial(t._setup, {marks!r}, "first"))
"""


def stored_started(db: Path) -> dict[str, str]:
    """run_id -> started_at of every stored record (empty before the database exists)."""
    if not db.exists():
        return {}
    with sqlite3.connect(db) as conn:
        try:
            rows = conn.execute("SELECT run_id, record FROM runs").fetchall()
        except sqlite3.OperationalError:
            return {}
    import json

    return {run_id: json.loads(record)["started_at"] for run_id, record in rows}


def test_a_driver_killed_mid_suite_loses_nothing_and_trains_nothing_twice_when_rerun(
    tiny_model_dir, toy_task, tmp_path, ray_cluster, marks
):
    db, out = tmp_path / "results.db", tmp_path / "out"
    env = {
        **os.environ,
        "LORABENCH_CLAIM_LEASE_S": "2",  # a killed driver's claims expire soon
        "LORABENCH_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
    }

    code = DRIVER.format(
        tests=str(TESTS), repo=str(REPO), marks=str(marks),
        model=str(tiny_model_dir), out=str(out), db=str(db), address=ray_cluster,
    )  # fmt: skip
    # Its output to a file, not a pipe: a process it started may hold a pipe open after it died.
    log = tmp_path / "driver.log"
    with log.open("w") as sink:
        first = subprocess.Popen(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=sink, stderr=sink
        )
    try:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and first.poll() is None and not stored_started(db):
            time.sleep(0.05)
        assert first.poll() is None, f"the suite ended before the kill: {log.read_text()}"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    before = stored_started(db)
    assert 1 <= len(before) < 6, "kill the driver mid-suite: some runs stored, not all"

    # The killed driver's claims expire after their lease; then a re-run (in this process, to
    # import nothing again) takes its runs over.
    store = ResultStore(db)
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and any(c.expires_at > time.time() for c in store.claims()):
        time.sleep(0.1)
    suite = make_suite(tiny_model_dir, toy_task, out, RERUN_VARIANTS, steps=30)
    run_suite(
        suite,
        store,
        progress=False,
        executor="ray",
        workers=1,  # one actor to start
        worker_setup=functools.partial(_setup, str(marks), "second"),
    )

    after = stored_started(db)
    records = store.records(status=None)
    assert len(records) == 6 and all(r.status == "finished" for r in records)  # 0 lost
    assert {k: after[k] for k in before} == before  # stored runs kept, not trained again
    # Each driver trained each of its runs once; the re-run none of those already stored.
    first = [rank for rank, _ in started(marks, "first")]
    assert len(first) == len(set(first))
    again = [rank for rank, _ in started(marks, "second")]
    by_rank = {r.config["variant_config"]["r"]: r.run_id for r in records}
    assert sorted(again) == sorted(rank for rank, run_id in by_rank.items() if run_id not in before)
    # The re-run released its claims (one the killed driver left between storing a run and
    # releasing its claim stays behind, expired and harmless).
    assert [c for c in store.claims() if c.owner.pid == os.getpid()] == []


def test_the_slots_fit_the_cluster():
    two_nodes = [{"CPU": 8.0, "GPU": 2.0}, {"CPU": 3.0}]
    assert [(s.threads, s.device) for s in plan_ray_slots(None, None, "cpu", two_nodes)] == [
        (1, "cpu")
    ] * 11
    assert len(plan_ray_slots(None, 2, "cpu", two_nodes)) == 4 + 1  # per node: 3 // 2 == 1
    gpu = plan_ray_slots(None, 4, "cuda:1", two_nodes)
    assert [(s.threads, s.device) for s in gpu] == [(4, "cuda")] * 2  # one GPU each
    assert len(plan_ray_slots(3, None, "cpu", two_nodes)) == 3
    with pytest.raises(RayExecutorError, match=r"--workers 6: .* holds 5 runs .* --workers 5"):
        plan_ray_slots(6, 2, "cpu", two_nodes)
    with pytest.raises(RayExecutorError, match=r"cannot hold one run.*--device cpu"):
        plan_ray_slots(None, None, "cuda", [{"CPU": 8.0}])
    with pytest.raises(RayExecutorError, match=r"cannot hold one run.*fewer --threads"):
        plan_ray_slots(None, 16, "cpu", two_nodes)


def test_ray_missing_or_an_address_without_ray_is_refused_before_any_work(
    tiny_model_dir, toy_task, tmp_path, monkeypatch, cli_main, capsys
):
    suite = make_suite(tiny_model_dir, toy_task, tmp_path, [VariantEntry("lora", {"r": 2})])
    store = ResultStore(tmp_path / "api.db")
    with pytest.raises(SuiteInputError, match=r"--address auto .* add --executor ray"):
        run_suite(suite, store, progress=False, address="auto")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    with pytest.raises(SuiteInputError, match=r'not installed: pip install "lorabench\[ray\]"'):
        run_suite(suite, store, progress=False, executor="ray")
    assert store.records(status=None) == []

    out = tmp_path / "cli"
    argv = ["run", "--variants", "lora", "--tasks", toy_task, "--model", str(tiny_model_dir)]
    argv += ["--budget", "steps=3", "--out", str(out), "--quiet"]
    assert cli_main([*argv, "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert 'needs Ray, which is not installed: pip install "lorabench[ray]"' in err
    assert "Traceback" not in err
    assert cli_main([*argv, "--address", "ray://head:10001"]) == 2
    assert "add --executor ray" in capsys.readouterr().err
    assert not out.exists()  # nothing created
