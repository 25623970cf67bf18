"""Parallel runs on one machine: a pool of worker processes, each training one run at a time.

Workers are started with the ``spawn`` context (torch and ``fork`` do not mix: a forked child
inherits the parent's thread pools and CUDA state half-initialised). Each worker keeps its own
:class:`~lorabench.harness.prepared.RunCache` across its runs, trains with its share of the CPU
threads, or on its GPU (:func:`plan_workers`), and sends back each record as JSON; the parent
process stores them (SQLite keeps a single writer) and decides what runs next.

A worker ignores Ctrl-C (the terminal sends it to the whole process group): the parent alone
decides to stop, and then terminates the workers. A worker process that dies mid-run (killed,
out of memory) is reported by :meth:`WorkerPool.wait` and restarted for the next run.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

__all__ = [
    "SlotPool",
    "WorkerEvent",
    "WorkerPool",
    "WorkerSlot",
    "plan_workers",
    "register_tasks_then",
    "worker_setup_for",
    "workers_error",
]


@dataclass(frozen=True)
class WorkerSlot:
    """One worker: its index (0-based), its torch CPU threads, and its device (``"cuda:1"``;
    None: the default device, CPU on a machine without a GPU)."""

    index: int
    threads: int
    device: str | None = None


def workers_error(workers: int | None) -> str | None:
    """Why ``--workers`` is unusable (None when it is fine or not given)."""
    if workers is not None and workers < 1:
        return f"--workers {workers} must be >= 1 (e.g. --workers 2)"
    return None


def plan_workers(
    workers: int, threads: int | None = None, device: str | None = None
) -> list[WorkerSlot]:
    """The slots of ``workers`` workers.

    CPU threads: ``threads`` in total (default: this machine's cores), divided evenly, at least
    one each. Devices: on CUDA without an index (``device`` ``"cuda"``, or None with a GPU
    present) the workers are spread round-robin over the visible GPUs, one per GPU, or several
    per GPU when there are more workers than GPUs; a device with an index (``"cuda:1"``) or any
    other device is shared by every worker.
    """
    import torch

    if workers < 1:
        raise ValueError(workers_error(workers))
    total = threads if threads is not None else (os.cpu_count() or 1)
    each = max(1, total // workers)
    kind = torch.device(device).type if device is not None else None
    gpus = torch.cuda.device_count() if kind in (None, "cuda") else 0
    if (device is None or device == "cuda") and gpus > 0:
        return [WorkerSlot(i, each, f"cuda:{i % gpus}") for i in range(workers)]
    return [WorkerSlot(i, each, device) for i in range(workers)]


@dataclass(frozen=True)
class WorkerEvent:
    """What :meth:`WorkerPool.wait` reports for a job: ``"record"`` (``payload`` is the
    record's JSON), ``"error"`` (the worker could not train it; ``payload`` says why) or
    ``"died"`` (the worker process ended mid-run; ``payload`` gives its exit code)."""

    kind: str
    job: Any
    slot: int
    payload: str


def register_tasks_then(specs: tuple[Any, ...], setup: Callable[[], None] | None) -> None:
    """A worker's setup: registers ``specs`` (the custom tasks, read from YAML files, that the
    driver's runs use: a spawned process or Ray actor knows only the built-in tasks), then calls
    the caller's ``setup``."""
    from lorabench.tasks import TASKS

    for spec in specs:
        TASKS.add(spec, overwrite=True)
    if setup is not None:
        setup()


def worker_setup_for(
    task_names: Any, setup: Callable[[], None] | None
) -> Callable[[], None] | None:
    """The setup a worker of runs on ``task_names`` needs: ``setup``, after registering every
    custom task among them (their specs, as registered here)."""
    from lorabench.tasks import get_task

    specs = {spec.name: spec for spec in map(get_task, set(task_names)) if spec.source == "custom"}
    if not specs:
        return setup
    return functools.partial(register_tasks_then, tuple(specs.values()), setup)


def _exit_with_parent() -> None:
    """Ends this worker as soon as its driver is gone (killed with -9, out of memory): a worker
    only reads its pipe between runs, and an orphan training on would compete with the re-run
    driver for the machine and train the same runs again once their claims expire."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="lorabench-parent-watch", daemon=True).start()


def _worker_main(
    conn: Connection,
    slot: WorkerSlot,
    setup: Callable[[], None] | None,
    adapter_root: str | None,
    log: Any,
) -> None:
    """A worker process: trains the runs it is sent, one at a time, until it is sent None."""
    # Ctrl-C reaches the whole process group; the parent decides to stop and terminates us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    import torch

    from lorabench.harness.config import RunConfig
    from lorabench.harness.prepared import RunCache
    from lorabench.harness.runner import execute_run
    from lorabench.harness.trainer import error_text

    torch.set_num_threads(slot.threads)
    setup_error: str | None = None
    if setup is not None:
        try:
            setup()
        except Exception as exc:  # every run of this worker fails with it (and says why)
            setup_error = f"the worker's setup failed: {error_text(exc)}"
    cache = RunCache()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if message is None:
            return
        job, cfg_data = message
        if setup_error is not None:
            conn.send(("error", job, setup_error))
            continue
        try:
            record = execute_run(
                RunConfig.from_dict(cfg_data),
                progress=False,
                cache=cache,
                adapter_root=adapter_root,
                device=slot.device,
                log=log,
            )
            conn.send(("record", job, record.to_json()))
        except Exception as exc:  # execute_run records failures itself; this is a bug's path
            conn.send(("error", job, error_text(exc)))


class SlotPool:
    """What every pool of workers holds: its slots, what each worker is set up with, and the job
    of each busy slot (:class:`WorkerPool` here, :class:`~lorabench.harness.ray_pool.RayPool`
    on Ray)."""

    def __init__(
        self,
        slots: list[WorkerSlot],
        *,
        setup: Callable[[], None] | None = None,
        adapter_root: str | os.PathLike | None = None,
        log: Any = None,
    ) -> None:
        self.slots = list(slots)
        self.setup = setup
        self.adapter_root = None if adapter_root is None else str(Path(adapter_root))
        self.log = log
        self._busy: dict[int, Any] = {}  # slot index -> its job

    def busy(self) -> dict[int, Any]:
        """The job of every busy slot."""
        return dict(self._busy)


class WorkerPool(SlotPool):
    """``slots`` worker processes (spawned on first use), each sent one job at a time.

    Args:
        slots: the workers (:func:`plan_workers`).
        setup: called once in each worker before its first run: a picklable top-level function
            that registers plugins the runs need (variants or tasks registered in code, not
            by an installed entry point), as the parent did.
        adapter_root: where runs keep their adapters (``execute_run``'s argument).
        log: the runs' training logs (a :class:`~lorabench.harness.logs.LogSettings`).
    """

    def __init__(
        self,
        slots: list[WorkerSlot],
        *,
        setup: Callable[[], None] | None = None,
        adapter_root: str | os.PathLike | None = None,
        log: Any = None,
    ) -> None:
        super().__init__(slots, setup=setup, adapter_root=adapter_root, log=log)
        self._context = multiprocessing.get_context("spawn")
        self._procs: dict[int, Any] = {}
        self._conns: dict[int, Connection] = {}

    def idle(self) -> list[int]:
        """Slots without a job, in order."""
        return [s.index for s in self.slots if s.index not in self._busy]

    def submit(self, slot: int, job: Any, cfg_data: dict[str, Any]) -> None:
        """Sends ``cfg_data`` (a ``RunConfig.to_dict()``) to idle worker ``slot``, starting the
        worker when it is not running."""
        if slot in self._busy:
            raise RuntimeError(f"worker {slot} is busy with {self._busy[slot]!r}; wait first")
        proc = self._procs.get(slot)
        if proc is None or not proc.is_alive():
            self._start(slot)
        self._conns[slot].send((job, cfg_data))
        self._busy[slot] = job

    def _start(self, slot: int) -> None:
        self._discard(slot)
        parent_end, child_end = self._context.Pipe()
        proc = self._context.Process(
            target=_worker_main,
            args=(child_end, self.slots[slot], self.setup, self.adapter_root, self.log),
            name=f"lorabench-worker-{slot}",
            daemon=True,
        )
        proc.start()
        child_end.close()  # only the child's copy stays open: its death ends the pipe
        self._procs[slot], self._conns[slot] = proc, parent_end

    def wait(self, timeout: float | None = None) -> list[WorkerEvent]:
        """Blocks until a busy worker answers or dies (or ``timeout`` passes); returns what
        happened, and frees those slots. A dead worker is restarted by the next
        :meth:`submit` to its slot."""
        if not self._busy:
            return []
        watched: dict[Any, int] = {}
        for slot in self._busy:
            watched[self._conns[slot]] = slot
            watched[self._procs[slot].sentinel] = slot
        ready = wait(list(watched), timeout=timeout)
        events: list[WorkerEvent] = []
        for slot in sorted({watched[r] for r in ready}):
            job = self._busy.get(slot)
            conn = self._conns[slot]
            message = None
            try:
                if conn.poll():
                    message = conn.recv()
            except (EOFError, OSError):
                message = None
            if message is not None:
                kind, answered, payload = message
                events.append(WorkerEvent(kind, answered, slot, payload))
            else:
                proc = self._procs[slot]
                proc.join(timeout=5)
                if proc.is_alive():
                    continue  # woken by the pipe closing early: still running; look again
                events.append(WorkerEvent("died", job, slot, _exit_text(proc.exitcode)))
                self._discard(slot)
            self._busy.pop(slot, None)
        return events

    def _discard(self, slot: int) -> None:
        conn = self._conns.pop(slot, None)
        if conn is not None:
            conn.close()
        proc = self._procs.pop(slot, None)
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join(timeout=5)

    def close(self, *, now: bool = False) -> None:
        """Stops every worker: asks idle ones to exit, or (``now``, or a worker that does not
        exit within seconds) terminates them; a stopped suite's runs in flight are lost."""
        for slot, proc in list(self._procs.items()):
            if now or slot in self._busy:
                proc.terminate()
            else:
                try:
                    self._conns[slot].send(None)
                except (OSError, ValueError):
                    proc.terminate()
        for slot, proc in list(self._procs.items()):
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
            self._conns[slot].close()
        self._procs.clear()
        self._conns.clear()
        self._busy.clear()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(now=exc[0] is not None)


def _exit_text(code: int | None) -> str:
    """A dead worker's exit status in words (``killed by SIGKILL``, ``exit code 3``)."""
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
