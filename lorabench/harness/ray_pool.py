"""Parallel runs on a Ray cluster: one Ray actor per slot, each training one run at a time.

:class:`RayPool` has the interface of :class:`~lorabench.harness.workers.WorkerPool`, so the
suite runner drives either one the same way (claims, a run retried once when its worker dies,
Ctrl-C). Each actor keeps its own :class:`~lorabench.harness.prepared.RunCache` across its runs,
trains with its CPU threads or on the GPU Ray gave it, and sends back each record as JSON: the
driver stores every record, so a SQLite results database keeps a single writer and the claims
of :mod:`lorabench.results.claims` work as with local workers.

An actor is created with ``max_restarts=0``: one that dies mid-run (killed, out of memory, its
node lost) is reported by :meth:`RayPool.wait` and replaced by a new actor on the next
:meth:`RayPool.submit` to its slot; Ray does not retry the run behind the driver's back, which
would count it twice. Actors are owned by the driver's Ray job, so they end with the driver.

Ray is imported lazily (``pip install "lorabench[ray]"``): lorabench works without it, and
``--executor ray`` without it is refused before any work (:func:`ray_error`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lorabench.harness.workers import SlotPool, WorkerEvent, WorkerSlot

__all__ = [
    "RAY_INSTALL",
    "RayExecutorError",
    "RayPool",
    "connect",
    "death_errors",
    "error_line",
    "import_ray",
    "is_cuda",
    "open_ray_pool",
    "plan_ray_slots",
    "ray_error",
]

RAY_INSTALL = 'pip install "lorabench[ray]"'


class RayExecutorError(RuntimeError):
    """Ray is missing, its cluster cannot be reached, or the cluster cannot hold the slots asked
    for: found before any run trains (the command exits 2)."""


def ray_error() -> str | None:
    """Why ``--executor ray`` cannot run here (Ray is not installed), with the command that
    installs it; None when it can."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}"
    return None


def import_ray() -> Any:
    """The ``ray`` module (imported only here and when a Ray suite runs)."""
    problem = ray_error()
    if problem is not None:
        raise RayExecutorError(problem)
    import ray

    return ray


def connect(address: str | None = None) -> bool:
    """Connects this process to Ray, unless it is connected already (a caller's ``ray.init``
    is used as it is, ``address`` ignored); returns whether it connected (then the caller
    disconnects with ``ray.shutdown()`` when done).

    ``address``: None starts a local Ray instance on this machine (Ray's own rule: it joins the
    cluster of ``RAY_ADDRESS``, or one started here by ``ray start``, when there is one);
    ``"auto"`` joins the cluster this machine belongs to (``ray start`` ran here) and fails
    without one; ``"HOST:PORT"`` a cluster's head; ``"ray://HOST:10001"`` a remote cluster
    through Ray Client. Nothing of the runtime environment is sent: every node must have
    lorabench installed and see the model, data and output folders at the same paths.

    ``ray.init`` replaces the SIGTERM handler with one that exits at once; the previous one is
    put back, so that SIGTERM still stops a suite after storing what finished (exit 143).
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if in_main else None
    options: dict[str, Any] = {"log_to_driver": False}
    if address is None:
        options["include_dashboard"] = False  # a local instance: no web server needed
    try:
        ray.init(address=address, **options)
    except Exception as exc:  # a bad address, no cluster there, a version mismatch
        where = address if address is not None else "a local instance"
        hint = (
            "start one with 'ray start --head' on this machine, or drop --address to start a "
            "local instance"
            if address == "auto"
            else "check --address (auto, HOST:6379 or ray://HOST:10001) and that the cluster "
            "runs the same Ray and Python versions"
        )
        reason = str(exc).strip().rstrip(".")
        raise RayExecutorError(f"cannot connect to Ray ({where}): {reason}; {hint}") from None
    finally:
        if in_main and previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return True


def is_cuda(device: str | None) -> bool:
    """Whether ``device`` names a CUDA device (``cuda``, ``cuda:N``)."""
    return device is not None and device.split(":", 1)[0] == "cuda"


def plan_ray_slots(
    workers: int | None,
    threads: int | None,
    device: str | None,
    nodes: Sequence[Mapping[str, float]] | None = None,
) -> list[WorkerSlot]:
    """The slots of a suite on a Ray cluster whose live nodes have the resources ``nodes``
    (``[{"CPU": 16, "GPU": 2}, ...]``; default: the connected cluster's).

    Each run reserves ``threads`` CPUs (default 1; on Ray ``--threads`` is per run, not a total
    to divide) and, on CUDA, one GPU; a run's resources must be on one node. Slots: ``workers``
    when given, else as many as the cluster holds at once: its CPUs // ``threads`` (per node),
    or on CUDA its GPUs. More ``workers`` than that are refused (:class:`RayExecutorError`),
    since the extra actors would wait for resources forever with a run each. Ray gives a CUDA
    actor its own GPU (``CUDA_VISIBLE_DEVICES``), so its device is ``"cuda"``: an index in
    ``device`` is dropped.
    """
    if workers is not None and workers < 1:
        raise RayExecutorError(f"--workers {workers} must be >= 1 (e.g. --workers 2)")
    if threads is not None and threads < 1:
        raise RayExecutorError(f"--threads {threads} must be >= 1 (e.g. --threads 1)")
    each = threads or 1
    gpu = is_cuda(device)
    if nodes is None:
        nodes = [n["Resources"] for n in import_ray().nodes() if n.get("Alive")]
    fits = 0
    for resources in nodes:
        runs = int(resources.get("CPU", 0) // each)
        fits += min(runs, int(resources.get("GPU", 0))) if gpu else runs
    cpus = int(sum(r.get("CPU", 0) for r in nodes))
    gpus = int(sum(r.get("GPU", 0) for r in nodes))
    if fits == 0:
        held = f"{cpus} CPUs and {gpus} GPUs" if gpu else f"{cpus} CPUs"
        need = f"one GPU and {each} CPU(s) on one node" if gpu else f"{each} CPUs on one node"
        raise RayExecutorError(
            f"the Ray cluster ({held}) cannot hold one run, which needs {need}; "
            + ("use --device cpu or add GPU nodes" if gpu else "use fewer --threads")
        )
    if workers is not None and workers > fits:
        unit = "GPU" if gpu else f"{each} CPU(s)"
        raise RayExecutorError(
            f"--workers {workers}: the Ray cluster holds {fits} runs at once ({unit} each, "
            f"{cpus} CPUs, {gpus} GPUs in all); use --workers {fits} or fewer"
            + ("" if gpu else ", or fewer --threads")
        )
    slot_device = "cuda" if gpu else device
    return [WorkerSlot(i, each, slot_device) for i in range(workers or fits)]


class _RunActor:
    """One slot on the cluster: trains the runs it is sent, one at a time (made a Ray actor by
    :class:`RayPool`; a plain class so that importing this module needs no Ray)."""

    def __init__(
        self,
        slot: WorkerSlot,
        setup: Callable[[], None] | None,
        adapter_root: str | None,
        log: Any,
    ) -> None:
        import torch

        from lorabench.harness.prepared import RunCache
        from lorabench.harness.trainer import error_text

        torch.set_num_threads(slot.threads)
        self.slot, self.adapter_root, self.log = slot, adapter_root, log
        self.setup_error: str | None = None
        if setup is not None:
            try:
                setup()
            except Exception as exc:  # every run of this actor fails with it (and says why)
                self.setup_error = f"the worker's setup failed: {error_text(exc)}"
        self.cache = RunCache()

    def pid(self) -> int:
        """This actor's process id (to watch or kill it)."""
        return os.getpid()

    def run(self, cfg_data: dict[str, Any]) -> tuple[str, str]:
        """``("record", record JSON)``, or ``("error", why)`` when the run could not train."""
        from lorabench.harness.config import RunConfig
        from lorabench.harness.runner import execute_run
        from lorabench.harness.trainer import error_text

        if self.setup_error is not None:
            return "error", self.setup_error
        try:
            record = execute_run(
                RunConfig.from_dict(cfg_data),
                progress=False,
                cache=self.cache,
                adapter_root=self.adapter_root,
                device=self.slot.device,
                log=self.log,
            )
        except Exception as exc:  # execute_run records failures itself; this is a bug's path
            return "error", error_text(exc)
        return "record", record.to_json()


_ACTOR_CLASS: Any = None  # ray.remote(_RunActor), made once (each one is exported to the cluster)


def _actor_class() -> Any:
    global _ACTOR_CLASS
    if _ACTOR_CLASS is None:
        _ACTOR_CLASS = import_ray().remote(_RunActor)
    return _ACTOR_CLASS


def death_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """Ray's exceptions for a run whose worker is gone (the actor died, its process crashed or
    was killed for memory, its node died, its result was lost), not for a run that raised."""
    names = (
        "RayActorError",  # ActorDiedError, ActorUnavailableError
        "WorkerCrashedError",
        "OutOfMemoryError",
        "NodeDiedError",
        "LocalRayletDiedError",
        "ObjectLostError",
    )
    return tuple(getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n))


def error_line(exc: BaseException, limit: int = 300) -> str:
    """``ActorDiedError: The actor died unexpectedly ...``: Ray's messages run to many lines."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    if len(line) > limit:
        line = line[: limit - 3] + "..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


class RayPool(SlotPool):
    """``slots`` Ray actors (created on first use), each sent one job at a time; the interface
    of :class:`~lorabench.harness.workers.WorkerPool`.

    Args:
        slots: the actors (:func:`plan_ray_slots`): each reserves ``threads`` CPUs, or one GPU
            and ``threads`` CPUs when its device is CUDA.
        setup: called once in each actor before its first run: a picklable function that
            registers plugins the runs need (as for local workers).
        adapter_root: where runs keep their adapters (a folder every node sees at that path).
        log: the runs' training logs (a :class:`~lorabench.harness.logs.LogSettings`).
        shutdown: disconnect from Ray on :meth:`close` (the caller connected for this pool).
    """

    def __init__(
        self,
        slots: list[WorkerSlot],
        *,
        setup: Callable[[], None] | None = None,
        adapter_root: str | os.PathLike | None = None,
        log: Any = None,
        shutdown: bool = False,
    ) -> None:
        super().__init__(slots, setup=setup, adapter_root=adapter_root, log=log)
        self._shutdown = shutdown
        self._actors: dict[int, Any] = {}
        self._refs: dict[int, Any] = {}  # slot index -> the result of its run in flight

    def idle(self) -> list[int]:
        """Slots without a job, those with a live actor first (a new actor spends seconds
        importing torch: a run retried after its actor died goes to a running one if idle)."""
        free = [s.index for s in self.slots if s.index not in self._busy]
        return sorted(free, key=lambda slot: slot not in self._actors)

    def actor(self, slot: int) -> Any:
        """The actor handle of ``slot`` (None before its first run or after it died)."""
        return self._actors.get(slot)

    def submit(self, slot: int, job: Any, cfg_data: dict[str, Any]) -> None:
        """Sends ``cfg_data`` (a ``RunConfig.to_dict()``) to idle slot ``slot``, creating its
        actor when it has none (first use, or the last one died)."""
        if slot in self._busy:
            raise RuntimeError(f"worker {slot} is busy with {self._busy[slot]!r}; wait first")
        actor = self._actors.get(slot)
        if actor is None:
            actor = self._start(slot)
        self._refs[slot] = actor.run.remote(cfg_data)
        self._busy[slot] = job

    def _start(self, slot: int) -> Any:
        spec = self.slots[slot]
        options: dict[str, Any] = {"num_cpus": spec.threads, "max_restarts": 0}
        if is_cuda(spec.device):
            options["num_gpus"] = 1
        actor = (
            _actor_class().options(**options).remote(spec, self.setup, self.adapter_root, self.log)
        )
        self._actors[slot] = actor
        return actor

    def wait(self, timeout: float | None = None) -> list[WorkerEvent]:
        """Blocks until a busy actor answers or dies (or ``timeout`` passes); returns what
        happened, and frees those slots. A dead actor is replaced by the next :meth:`submit`
        to its slot."""
        if not self._busy:
            return []
        ray = import_ray()
        slot_of = {ref: slot for slot, ref in self._refs.items()}
        refs = list(slot_of)
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready and len(refs) > 1:  # others that ended meanwhile, without waiting for them
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        died = death_errors(ray)
        events: list[WorkerEvent] = []
        for slot in sorted(slot_of[ref] for ref in ready):
            ref = self._refs.pop(slot)
            job = self._busy.pop(slot)
            try:
                kind, payload = ray.get(ref)
            except died as exc:
                events.append(WorkerEvent("died", job, slot, error_line(exc)))
                self._discard(slot)
            except Exception as exc:  # the run raised past the actor's own handler
                events.append(WorkerEvent("error", job, slot, error_line(exc, 2000)))
            else:
                events.append(WorkerEvent(kind, job, slot, payload))
        return events

    def _discard(self, slot: int) -> None:
        actor = self._actors.pop(slot, None)
        if actor is not None:
            with contextlib.suppress(Exception):  # gone already
                import_ray().kill(actor, no_restart=True)

    def close(self, *, now: bool = False) -> None:
        """Stops every actor (runs in flight are lost: a stopped suite's, or with ``now``) and,
        when this pool connected to Ray, disconnects (stopping a local instance it started)."""
        ray = import_ray()
        if ray.is_initialized():
            for slot in list(self._actors):
                self._discard(slot)
        self._actors.clear()
        self._refs.clear()
        self._busy.clear()
        if self._shutdown and ray.is_initialized():
            ray.shutdown()
            self._shutdown = False

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(now=exc[0] is not None)


def open_ray_pool(
    address: str | None,
    workers: int | None,
    threads: int | None,
    device: str | None,
    *,
    setup: Callable[[], None] | None = None,
    adapter_root: str | os.PathLike | None = None,
    log: Any = None,
) -> RayPool:
    """Connects to Ray (:func:`connect`), plans the slots (:func:`plan_ray_slots`) and returns
    the pool, which disconnects on close when it connected here. Raises
    :class:`RayExecutorError` (disconnected again) when Ray is missing, unreachable, or too
    small for ``workers``."""
    connected = connect(address)
    try:
        slots = plan_ray_slots(workers, threads, device)
    except BaseException:
        if connected:
            import_ray().shutdown()
        raise
    return RayPool(slots, setup=setup, adapter_root=adapter_root, log=log, shutdown=connected)
