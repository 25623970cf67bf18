"""``lorabench search --workers N``: N processes search one set of studies, sharing each study's
budget, as N hand-started ``lorabench search`` processes on one storage do.

The parent has prepared every study (every check, before any trial: see
:func:`~lorabench.search.study.prepare_search`). :func:`run_search_workers` then spawns N
workers (the ``spawn`` context: torch and ``fork`` do not mix). Each worker joins the studies
(no budget probe: the parent made it), runs their trial loops in order with its share of the CPU
threads (or its GPU, :func:`~lorabench.harness.workers.plan_workers`), stores its trials' records
in the results database itself, and confirms nothing. When every worker has ended, the parent
confirms each study's best configuration once and saves its summary: the manual recipe of
docs/search.md (workers with ``--confirm-seeds 0``, then the command once with
``--confirm-seeds 3``) as one command.

Sharing: the workers meet in the Optuna storage and the results database, as separate commands
do, so a ``--workers`` search can be resumed, or joined, by any other ``lorabench search`` on the
same storage. Both are written by several processes at once: a journal file (its own file lock),
a database server, or SQLite, where each writer waits for the file's lock (a 60 s busy timeout;
the results database is in WAL mode, so readers never wait). Only an in-memory SQLite database,
which lives inside one process, is refused.

Stopping: a worker ignores Ctrl-C (the terminal sends it to the whole process group); the parent
alone decides, and stops each worker with SIGTERM, which the worker turns into the
``KeyboardInterrupt`` a single process gets from Ctrl-C: its running trial is marked failed with
the spend it reached. A worker that dies (killed, out of memory) leaves the others running; the
parent marks its running trial failed at once, keeping the spend the trial reported at its last
evaluation, as the heartbeat of a database storage would later (a journal file has none).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from lorabench.harness.config import BenchmarkConfigError
from lorabench.harness.workers import WorkerSlot, _exit_text, _exit_with_parent, plan_workers
from lorabench.interrupts import Interrupted
from lorabench.search.loop import (
    WORKER_ATTR,
    WORKER_PID_ATTR,
    SearchHarness,
    fail_stale_trials,
    finish_search,
    prepare_search,
    run_trials,
    search_harness,
)
from lorabench.search.storage import JOURNAL_PREFIX, database_url, normalize_storage_url, redact
from lorabench.search.study import (
    ExecuteRun,
    PreparedSearch,
    RecordStore,
    SearchConfig,
    SearchError,
    SearchOutcome,
    _say,
)

__all__ = [
    "STOP_GRACE_S",
    "SearchJob",
    "WorkerState",
    "check_shareable",
    "fail_worker_trials",
    "finish_after_workers",
    "run_search_workers",
    "search_as_worker",
    "workers_problem",
]

# How long a stopped worker may take to mark its running trial failed before it is killed.
STOP_GRACE_S = 60.0


def workers_problem(workers: Any) -> str | None:
    """Why ``--workers`` is unusable (None when it is fine)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        return (
            f"--workers {workers} must be an integer >= 1 (1: this process runs the trials; "
            "N: N worker processes share each study's budget, e.g. --workers 2)"
        )
    return None


def run_search_workers(
    prepared: Sequence[PreparedSearch],
    *,
    workers: int,
    results: str,
    threads: int | None = None,
    device: str | None = None,
    store: RecordStore | None = None,
    execute: ExecuteRun | None = None,
    worker_setup: Callable[[], None] | None = None,
    progress: bool = True,
) -> list[SearchOutcome]:
    """Runs the trials of ``prepared`` (checked studies, in order) in ``workers`` processes, then
    confirms each study's best once here; returns the outcomes, as :func:`run_search` would.

    Args:
        prepared: the studies, prepared (and so checked) in this process.
        workers: how many worker processes run trials (each study's budget is shared).
        results: the results database (path or URL) every worker stores its trials' records in;
            the confirmation runs and the summaries go there too.
        threads: torch CPU threads in total (default: this machine's cores), divided between the
            workers, at least one each.
        device: where the trials compute (:func:`~lorabench.harness.workers.plan_workers`:
            ``cuda`` spreads the workers over the GPUs); None: the harness's choice.
        store: where this process stores the confirmation runs (default: ``results``).
        execute: the run function of the workers and the confirmation (default
            :func:`~lorabench.harness.runner.execute_run`); with workers, a picklable top-level
            callable (tests inject a fake harness).
        worker_setup: a picklable top-level function each worker calls first, to register what
            was registered in code in this process (a variant or task not from an installed
            entry point): a spawned process starts without it.
        progress: each worker prints one line per finished trial, naming itself.

    Raises:
        SearchError: ``workers`` below 1, an in-memory database, a worker's study that cannot go
            on (trials failing in a row: the message of the first such worker), or a study no
            worker finished (every worker died). Studies before the one at fault are confirmed.
        KeyboardInterrupt: Ctrl-C or SIGTERM; every worker has stopped (its running trial
            failed with its spend) before it propagates.
    """
    problem = workers_problem(workers)
    if problem:
        raise SearchError(problem)
    for storage in sorted({str(p.config.storage) for p in prepared}) or [results]:
        check_shareable(storage, results)
    slots = plan_workers(workers, threads, device)
    _say(progress, _start_line(slots, prepared))
    configs = [p.config for p in prepared]
    job = SearchJob(configs, results, execute, worker_setup, progress)
    team = _Team(slots, job, prepared)
    team.run()
    return finish_after_workers(
        prepared,
        team.workers,
        lambda p: search_harness(p, results=results, store=store, execute=execute),
        results=results,
        progress=progress,
    )


def finish_after_workers(
    prepared: Sequence[PreparedSearch],
    workers: Sequence[WorkerState],
    harness_of: Callable[[PreparedSearch], SearchHarness],
    *,
    results: str,
    progress: bool,
) -> list[SearchOutcome]:
    """After every worker has ended: confirms (with ``harness_of(study)``) and summarises each
    study some worker finished, in order, up to the first a worker stopped on with an error;
    raises :class:`SearchError` for that error, or for a study no worker finished."""
    # (study index, worker, message) of every worker that stopped on an error; None: setup.
    errors = sorted((w.error[0] or 0, w.number, w.error[1]) for w in workers if w.error is not None)
    failed_at = errors[0][0] if errors else None
    outcomes: list[SearchOutcome] = []
    for index, p in enumerate(prepared):
        if failed_at is not None and index >= failed_at:
            break
        if not any(index in w.finished for w in workers):
            ends = "; ".join(f"worker {w.number}: {w.ending()}" for w in workers)
            raise SearchError(
                f"study {p.config.study_name!r}: no worker finished its trials ({ends}); re-run "
                "the same command to resume (finished trials and their spend are kept)"
            )
        fail_stale_trials(p)
        outcomes.append(finish_search(p, harness_of(p), results=results, progress=progress))
    if errors:
        _, number, message = errors[0]
        raise SearchError(f"worker {number}: {message}")
    return outcomes


def check_shareable(storage: str, results: str) -> None:
    """Refuses a search storage or results database that several processes cannot share: an
    in-memory SQLite database lives inside one process. Raises :class:`SearchError`."""
    for what, url in (
        ("search storage", normalize_storage_url(str(storage))),
        ("results database", database_url(str(results))),
    ):
        if url.startswith(JOURNAL_PREFIX):
            continue
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and (parsed.database or ":memory:") == ":memory:":
            raise SearchError(
                f"{what} {redact(url)!r} is an in-memory database, which lives inside one "
                "process: --workers needs one the workers share, e.g. a file (runs/results.db), "
                "journal:runs/search.journal or a database server URL"
            )


def _start_line(slots: list[WorkerSlot], prepared: Sequence[PreparedSearch]) -> str:
    each = slots[0].threads
    devices = sorted({s.device for s in slots if s.device is not None})
    on = f" on {', '.join(devices)}" if devices else ""
    studies = f"{len(prepared)} stud{'y' if len(prepared) == 1 else 'ies'}"
    return (
        f"search: {len(slots)} workers ({each} thread{'s' if each != 1 else ''} each{on}) on "
        f"{studies}, sharing each study's budget; the best of each is confirmed once at the end"
    )


# ---------------------------------------------------------------------------------------------
# the parent's side


@dataclass(frozen=True)
class SearchJob:
    """What every worker of a search is given: the studies (in order), the results database its
    trials' records go to, the run function (None: the real harness), the setup it calls first,
    and whether it prints a line per trial."""

    configs: list[SearchConfig]
    results: str
    execute: ExecuteRun | None = None
    setup: Callable[[], None] | None = None
    progress: bool = True


@dataclass
class WorkerState:
    """What the parent knows of one worker: the messages of :func:`search_as_worker` it sent."""

    number: int  # 1-based, as progress lines show it
    finished: dict[int, str | None] = field(default_factory=dict)  # study index -> stop reason
    error: tuple[int | None, str] | None = None  # (study index or None: every study, message)
    interrupted: bool = False
    done: bool = False
    died: str | None = None  # how, when it ended without saying so

    def apply(self, message: tuple[Any, ...]) -> None:
        """Takes in one message of :func:`_worker_main`."""
        kind = message[0]
        if kind == "study":
            self.finished[message[1]] = message[2]
        elif kind == "error":
            self.error = (message[1], message[2])
        elif kind == "interrupted":
            self.interrupted = True
        elif kind == "done":
            self.done = True

    def ended_cleanly(self) -> bool:
        """Whether it said how it ended (done, an error, or stopped) before exiting."""
        return self.done or self.error is not None or self.interrupted

    def ending(self) -> str:
        """How it ended, in words."""
        if self.died:
            return f"died ({self.died})"
        if self.error is not None:
            first = (self.error[1].strip().splitlines() or ["(no message)"])[0]
            return f"stopped on an error ({first})"
        if self.interrupted:
            return "stopped"
        return "finished"


@dataclass
class _Worker(WorkerState):
    """One worker process as the parent sees it."""

    process: Any = None
    conn: Any = None  # the parent's end of the worker's pipe (a Connection)
    open: bool = True  # the pipe has not reached its end


class _Team:
    """The worker processes of one ``run_search_workers`` call, from start to end."""

    def __init__(
        self, slots: list[WorkerSlot], job: SearchJob, prepared: Sequence[PreparedSearch]
    ) -> None:
        self.slots = slots
        self.job = job
        self.progress = job.progress
        self.prepared = prepared
        self.workers: list[_Worker] = []

    def run(self) -> None:
        """Starts every worker and returns when all have ended; on Ctrl-C (or SIGTERM) stops
        them first, then re-raises."""
        try:
            self._start()
            self._follow(self.workers)
        except KeyboardInterrupt:
            self._stop()
            raise
        finally:
            for w in self.workers:  # a bug in this loop must not leave workers training on
                if w.process.is_alive():
                    w.process.kill()
                    w.process.join(timeout=5)
                    self._fail_trials_of(w, "killed by the search's parent")

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        for slot in self.slots:
            parent_end, child_end = context.Pipe(duplex=False)
            number = slot.index + 1
            process = context.Process(
                target=_worker_main,
                args=(child_end, number, slot.threads, slot.device, self.job),
                name=f"lorabench-search-worker-{number}",
                daemon=True,
            )
            process.start()
            child_end.close()  # only the child's copy stays open: its end closes the pipe
            self.workers.append(_Worker(number, process=process, conn=parent_end))

    def _follow(self, workers: list[_Worker], deadline: float | None = None) -> None:
        """Reads the workers' messages until every one in ``workers`` has ended (or until
        ``deadline``, a ``time.monotonic()``)."""
        live = [w for w in workers if w.process.exitcode is None or w.open]
        while live:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            watched: dict[Any, _Worker] = {w.process.sentinel: w for w in live}
            watched.update({w.conn: w for w in live if w.open})
            ready = wait(list(watched), timeout=timeout)
            if not ready:
                return  # the deadline passed
            for handle in ready:
                w = watched[handle]
                if w.open:
                    self._read(w)
                if not w.open and w.process.exitcode is None:
                    w.process.join(timeout=5)  # its pipe is closed: it is exiting
                if not w.open and w.process.exitcode is not None and w in live:
                    live.remove(w)
                    self._ended(w)

    def _read(self, w: _Worker) -> None:
        """Takes in every message ``w`` has sent so far; notes the end of its pipe."""
        try:
            while w.conn.poll():
                w.apply(w.conn.recv())
        except (EOFError, OSError):
            w.open = False
            w.conn.close()

    def _ended(self, w: _Worker) -> None:
        """Called once per worker whose process has exited."""
        if w.ended_cleanly():
            return
        w.died = _exit_text(w.process.exitcode)
        failed = self._fail_trials_of(w, w.died)
        running = (
            f"its trial {', '.join(failed)} marked failed, the spend it reported kept"
            if failed
            else "it was running no trial"
        )
        _say(
            True,  # a lost worker is never kept quiet
            f"search: worker {w.number} died ({w.died}); {running}; the other workers go on",
        )

    def _stop(self) -> None:
        """Stops every running worker: each fails its running trial with its spend and exits;
        one that has not within :data:`STOP_GRACE_S` (or after a second Ctrl-C) is killed."""
        running = [w for w in self.workers if w.process.exitcode is None]
        if not running:
            return
        _say(
            self.progress,
            f"search: stopping {len(running)} worker(s); each marks its running trial failed with "
            "the spend it reached",
        )
        try:
            for w in running:
                w.process.terminate()  # SIGTERM: the worker raises KeyboardInterrupt
            self._follow(running, deadline=time.monotonic() + STOP_GRACE_S)
        except KeyboardInterrupt:
            pass  # asked twice: stop waiting
        for w in running:
            if w.process.exitcode is None:
                w.process.kill()
                w.process.join(timeout=5)
                w.died = "killed while stopping"
                self._fail_trials_of(w, w.died)

    def _fail_trials_of(self, w: _Worker, why: str) -> list[str]:
        return fail_worker_trials(self.prepared, w.number, w.process.pid, why)


def fail_worker_trials(
    prepared: Sequence[PreparedSearch], number: int, pid: int | None, why: str
) -> list[str]:
    """Marks the running trials of worker ``number`` (process ``pid``) failed, as the heartbeat
    of a database storage would (a journal file has none); the spend they reported stays
    counted. Returns them as ``"N of STUDY"``."""
    failed: list[str] = []
    for p in prepared:
        try:
            running = p.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except Exception:  # the storage is unreachable: the heartbeat will do it
            continue
        for trial in running:
            owner = (trial.user_attrs.get(WORKER_ATTR), trial.user_attrs.get(WORKER_PID_ATTR))
            if owner != (number, pid):
                continue
            storage = p.study._storage
            with contextlib.suppress(optuna.exceptions.OptunaError, RuntimeError):
                storage.set_trial_user_attr(
                    trial._trial_id, "error", f"worker {number} ended mid-trial ({why})"
                )
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
                failed.append(f"{trial.number} of {p.config.study_name}")
    return failed


# ---------------------------------------------------------------------------------------------
# a worker process


def _stop_once(signum: int, frame: Any) -> None:
    """SIGTERM from the parent: stop as Ctrl-C stops a single process. Later signals are
    ignored, so that they cannot cut short the write of the interrupted trial's state."""
    signal.signal(signum, signal.SIG_IGN)
    raise Interrupted("the search was stopped", signum=signum)


def _worker_main(
    conn: Connection, number: int, threads: int, device: str | None, job: SearchJob
) -> None:
    """A worker: runs the trials of every study in order, then says how it ended."""
    # Ctrl-C reaches the whole process group; the parent decides, and stops us with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _stop_once)
    _exit_with_parent()

    def send(message: tuple[Any, ...]) -> None:
        _send(conn, message)

    try:
        search_as_worker(send, number, threads, device, job)
    except KeyboardInterrupt:
        send(("interrupted",))
        return
    send(("done",))


def search_as_worker(
    send: Callable[[tuple[Any, ...]], None],
    number: int,
    threads: int,
    device: str | None,
    job: SearchJob,
) -> None:
    """The work of worker ``number`` (a process here, or a Ray actor): joins each study of
    ``job`` in order and runs its trials, storing their records in its results database; tells
    the parent through ``send`` ``("study", index, stop reason)`` per study, or ``("error",
    index or None, message)`` and stops."""
    import torch

    from lorabench.harness.prepared import RunCache
    from lorabench.results.store import ResultStore

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(threads)
    try:
        if job.setup is not None:
            job.setup()
        store = ResultStore(database_url(job.results))
    except Exception as exc:
        send(("error", None, f"the worker's setup failed: {_message(exc)}"))
        return
    execute = job.execute
    cache = RunCache() if execute is None else None  # shared by every trial of this worker
    for index, cfg in enumerate(job.configs):
        try:
            # The parent checked everything (and probed the budget): this only joins the study.
            prepared = prepare_search(cfg, cache=cache, probe=False)
            harness = search_harness(prepared, store=store, execute=execute, device=device)
            reason = run_trials(prepared, harness, progress=job.progress, worker=number)
        except Exception as exc:
            send(("error", index, _message(exc)))
            return
        send(("study", index, reason))


def _message(exc: Exception) -> str:
    """The error for the parent: a config or database problem as its message; anything else
    (a bug) with its type, its traceback printed here."""
    from lorabench.results.store import ResultStoreError

    if isinstance(exc, BenchmarkConfigError | ResultStoreError):
        return str(exc)
    traceback.print_exc(file=sys.stderr)
    return f"{type(exc).__name__}: {exc}"


def _send(conn: Connection, message: tuple[Any, ...]) -> None:
    with contextlib.suppress(OSError, ValueError):  # the parent is gone: nobody to tell
        conn.send(message)
