"""``lorabench search --executor ray``: the workers of a search as actors on a Ray cluster.

Each worker is one Ray actor (``--threads`` CPUs, or a GPU with ``--device cuda``) that does
what a ``--workers`` process does (:func:`~lorabench.search.parallel.search_as_worker`): it
joins every study in order, runs trials until the study's shared budget is spent, and stores
their records in the results database itself. Every worker therefore needs the search storage
and the results database: a database server (PostgreSQL) reaches every node; a journal or
SQLite file works on one machine or on a shared file system.

This process (the driver) prepared and checked every study before any actor starts, prints a
line per ended trial as it sees them in the storage (the actors' own output stays on their
nodes), and, when every worker has ended, confirms each study's best once, on the cluster (one
actor, as :class:`~lorabench.harness.ray_pool.RayPool` trains a suite's runs), and saves the
summaries.

A worker whose actor dies (killed, out of memory, its node lost) has its running trial marked
failed at once, keeping the spend it reported at its last evaluation, and is started again once
(:data:`RESTARTS`) on whichever node Ray picks: it rejoins the studies where they stand. Ctrl-C
(or SIGTERM) kills every actor and fails their running trials the same way; re-running the
command resumes every study.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import TrialState

from lorabench.harness.ray_pool import (
    RayPool,
    connect,
    death_errors,
    error_line,
    import_ray,
    is_cuda,
    plan_ray_slots,
)
from lorabench.harness.workers import WorkerSlot, worker_setup_for
from lorabench.results.records import RunRecord
from lorabench.search.loop import WORKER_ATTR, SearchHarness, search_harness, trial_line
from lorabench.search.parallel import (
    SearchJob,
    WorkerState,
    check_shareable,
    fail_worker_trials,
    finish_after_workers,
    search_as_worker,
)
from lorabench.search.study import (
    ExecuteRun,
    PreparedSearch,
    RecordStore,
    SearchError,
    SearchOutcome,
    _say,
)

__all__ = ["POLL_S", "RESTARTS", "run_search_ray"]

# How often the driver looks in the storage for trials that ended (its progress lines).
POLL_S = 2.0
# How many times a worker whose actor died is started again.
RESTARTS = 1
_ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def run_search_ray(
    prepared: Sequence[PreparedSearch],
    *,
    results: str,
    workers: int | None = None,
    address: str | None = None,
    threads: int | None = None,
    device: str | None = None,
    store: RecordStore | None = None,
    execute: ExecuteRun | None = None,
    worker_setup: Callable[[], None] | None = None,
    progress: bool = True,
) -> list[SearchOutcome]:
    """Runs the trials of ``prepared`` (checked studies, in order) in ``workers`` Ray actors,
    then confirms each study's best once on the cluster; returns the outcomes, as
    :func:`~lorabench.search.loop.run_search` would.

    Args:
        prepared: the studies, prepared (and so checked) in this process.
        results: the results database (path or URL) every worker stores its trials' records in.
        workers: how many actors (default: as many as the cluster holds at once,
            :func:`~lorabench.harness.ray_pool.plan_ray_slots`).
        address: the Ray cluster (:func:`~lorabench.harness.ray_pool.connect`; None: Ray's own
            rule, else a new local instance). A caller's ``ray.init`` is used as it is.
        threads: CPUs (torch threads) per worker, default 1.
        device: ``cuda`` gives each worker a GPU of its own; None or ``cpu``: CPUs only.
        store: where the confirmation runs are stored (default: ``results``).
        execute: a fake run function for the workers and the confirmation (tests); then the
            confirmation runs here. Default: the real harness, the confirmation on the cluster.
        worker_setup: a picklable top-level function each actor calls first, to register what
            was registered in code here.
        progress: a line per ended trial, and the confirmation's.

    Raises:
        SearchError: an in-memory database; a worker's study that cannot go on; a study no
            worker finished. Studies before the one at fault are confirmed.
        RayExecutorError: Ray missing, unreachable, or too small for ``workers``.
        KeyboardInterrupt: Ctrl-C or SIGTERM, after every actor was stopped.
    """
    for storage in sorted({str(p.config.storage) for p in prepared}) or [results]:
        check_shareable(storage, results)
    connected = connect(address)
    try:
        slots = plan_ray_slots(workers, threads, device)
        _say(progress, _start_line(slots, prepared))
        # Nobody reads an actor's output: this driver prints the trials.
        job = SearchJob([p.config for p in prepared], results, execute, worker_setup, False)
        team = _RayTeam(slots, prepared, job, progress)
        team.run()
        for index, p in enumerate(prepared):
            reasons = [w.finished[index] for w in team.workers if w.finished.get(index)]
            if reasons:
                _say(progress, f"[{p.config.study_name}] stopped: {reasons[0]}")
        with contextlib.ExitStack() as stack:
            if execute is None:
                # The confirmation runs' tasks are resolved names: a custom (YAML) task's spec
                # must reach the actor, as the search workers registered it from its file.
                tasks = (p.config.task for p in prepared)
                setup = worker_setup_for(tasks, worker_setup)
                pool = stack.enter_context(RayPool(slots[:1], setup=setup))

                def harness_of(p: PreparedSearch) -> SearchHarness:
                    local = search_harness(p, results=results, store=store)
                    return SearchHarness(local.store, _on_cluster(pool), local.resolve)
            else:

                def harness_of(p: PreparedSearch) -> SearchHarness:
                    return search_harness(p, results=results, store=store, execute=execute)

            return finish_after_workers(
                prepared, team.workers, harness_of, results=results, progress=progress
            )
    finally:
        if connected:
            import_ray().shutdown()


def _start_line(slots: list[WorkerSlot], prepared: Sequence[PreparedSearch]) -> str:
    each = slots[0].threads
    gpu = " and a GPU" if is_cuda(slots[0].device) else ""
    studies = f"{len(prepared)} stud{'y' if len(prepared) == 1 else 'ies'}"
    return (
        f"search: {len(slots)} Ray workers ({each} CPU{'s' if each != 1 else ''}{gpu} each) on "
        f"{studies}, sharing each study's budget; the best of each is confirmed once at the end"
    )


def _on_cluster(pool: RayPool) -> ExecuteRun:
    """A run function that trains each run on ``pool``'s one actor and returns its record."""

    def execute(cfg: Any, **_: Any) -> RunRecord:
        pool.submit(0, cfg.run_id, cfg.to_dict())
        events: list[Any] = []
        while not events:
            events = pool.wait()
        (event,) = events
        if event.kind != "record":
            raise SearchError(f"the confirmation run {cfg.run_id} {event.kind}: {event.payload}")
        return RunRecord.from_json(event.payload)

    return execute


class _SearchActor:
    """One worker on the cluster (made a Ray actor by :class:`_RayTeam`; a plain class so that
    importing this module needs no Ray)."""

    def __init__(self, slot: WorkerSlot) -> None:
        self.slot = slot

    def pid(self) -> int:
        """This actor's process id: its trials record it, so the driver knows them."""
        return os.getpid()

    def search(self, job: SearchJob) -> list[tuple[Any, ...]]:
        """Runs the worker; returns its messages (:func:`search_as_worker`), ``("done",)`` last."""
        messages: list[tuple[Any, ...]] = []
        search_as_worker(
            messages.append, self.slot.index + 1, self.slot.threads, self.slot.device, job
        )
        messages.append(("done",))
        return messages


@dataclass
class _RayWorker(WorkerState):
    """One worker as the driver sees it: its current actor and the refs of its calls."""

    slot: WorkerSlot | None = None
    actor: Any = None
    pid_ref: Any = None
    result_ref: Any = None
    restarts: int = RESTARTS


class _RayTeam:
    """The actors of one :func:`run_search_ray` call, from start to end."""

    def __init__(
        self,
        slots: list[WorkerSlot],
        prepared: Sequence[PreparedSearch],
        job: SearchJob,
        progress: bool,
    ) -> None:
        self.ray = import_ray()
        self.actor_class = self.ray.remote(_SearchActor)
        self.slots, self.prepared, self.job, self.progress = slots, prepared, job, progress
        self.workers: list[_RayWorker] = []
        # Trials that had ended before the workers started are not news.
        self.seen = {(i, t.number) for i, t in self._ended_trials()}

    def run(self) -> None:
        """Starts every actor and returns when all have ended; on Ctrl-C (or SIGTERM) stops
        them first (their running trials failed with their reported spend), then re-raises."""
        try:
            for slot in self.slots:
                worker = _RayWorker(slot.index + 1, slot=slot)
                self._start(worker)
                self.workers.append(worker)
            self._follow()
        except KeyboardInterrupt:
            self._stop("stopped by Ctrl-C")
            raise
        except BaseException:
            self._stop("the driver stopped on an error")
            raise
        finally:
            for w in self.workers:  # an idle actor still holds its CPUs (or GPU)
                self._release(w)

    def _release(self, w: _RayWorker) -> None:
        if w.actor is not None:
            with contextlib.suppress(Exception):  # gone already
                self.ray.kill(w.actor, no_restart=True)
            w.actor = None

    def _start(self, w: _RayWorker) -> None:
        assert w.slot is not None
        options: dict[str, Any] = {"num_cpus": w.slot.threads, "max_restarts": 0}
        if is_cuda(w.slot.device):
            options["num_gpus"] = 1
        w.actor = self.actor_class.options(**options).remote(w.slot)
        w.pid_ref = w.actor.pid.remote()
        w.result_ref = w.actor.search.remote(self.job)

    def _follow(self) -> None:
        died = death_errors(self.ray)
        while pending := {w.result_ref: w for w in self.workers if w.result_ref is not None}:
            ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            self._print_ended_trials()
            for ref in ready:
                w = pending[ref]
                w.result_ref = None
                try:
                    messages = self.ray.get(ref)
                except died as exc:
                    self._died(w, error_line(exc))
                    continue
                except Exception as exc:  # a bug in the worker, past its own handler
                    w.error = (None, error_line(exc, 2000))
                    self._release(w)
                    continue
                for message in messages:
                    w.apply(message)
                self._release(w)  # its resources go to the confirmation, or to other jobs
        self._print_ended_trials()

    def _died(self, w: _RayWorker, why: str) -> None:
        """A worker's actor died: fails its running trial, starts it again if it may."""
        failed = fail_worker_trials(self.prepared, w.number, self._pid(w), why)
        running = (
            f"its trial {', '.join(failed)} marked failed, the spend it reported kept"
            if failed
            else "it was running no trial"
        )
        again = w.restarts > 0
        _say(
            True,  # a lost worker is never kept quiet
            f"search: Ray worker {w.number} died ({why}); {running}; "
            + ("starting it again" if again else "the other workers go on"),
        )
        self._release(w)
        if again:
            w.restarts -= 1
            self._start(w)
        else:
            w.died = why

    def _pid(self, w: _RayWorker) -> int | None:
        """The process id of ``w``'s actor (None: it died before it said, so before any trial)."""
        try:
            return self.ray.get(w.pid_ref, timeout=10)
        except Exception:
            return None

    def _stop(self, why: str) -> None:
        """Kills every actor still working and fails their running trials."""
        running = [w for w in self.workers if w.result_ref is not None]
        if running:
            _say(self.progress, f"search: stopping {len(running)} Ray worker(s)")
        for w in running:
            pid = self._pid(w)
            self._release(w)
            w.result_ref = None
            w.interrupted = True
            fail_worker_trials(self.prepared, w.number, pid, why)

    def _ended_trials(self) -> list[tuple[int, Any]]:
        ended: list[tuple[int, Any]] = []
        for index, p in enumerate(self.prepared):
            with contextlib.suppress(Exception):  # the storage is busy: next poll
                ended += [(index, t) for t in p.study.get_trials(deepcopy=False, states=_ENDED)]
        return ended

    def _print_ended_trials(self) -> None:
        """A line per trial that ended since the last look, naming its worker."""
        for index, trial in sorted(self._ended_trials(), key=lambda it: (it[0], it[1].number)):
            if (index, trial.number) in self.seen:
                continue
            self.seen.add((index, trial.number))
            p = self.prepared[index]
            who = trial.user_attrs.get(WORKER_ATTR)
            line = trial_line(p.config, trial, p.spend(), "" if who is None else f"worker {who}: ")
            _say(self.progress, line)
