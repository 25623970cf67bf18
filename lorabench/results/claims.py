"""Claims: two drivers on one results database never train the same run twice.

Before a driver trains a run it claims the run in the database's ``claims`` table (a row per run
in progress: owner, host, pid, ``expires_at``). A claim is a lease: the driver renews its claims
every :data:`RENEW_FRACTION` of the lease from a background thread while its runs train (a run may
take hours), and drops them when they end. A killed driver renews nothing, so its claims expire
after the lease and another driver takes the runs over. A driver that finds a run under a live
claim of another skips it (and says so at the end); it does not wait.

The lease is :data:`DEFAULT_LEASE_S` seconds, or ``LORABENCH_CLAIM_LEASE_S``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "DEFAULT_LEASE_S",
    "LEASE_ENV",
    "Claim",
    "ClaimKeeper",
    "ClaimOwner",
    "ClaimStore",
    "lease_seconds",
    "left_to_others",
]

DEFAULT_LEASE_S = 120.0
LEASE_ENV = "LORABENCH_CLAIM_LEASE_S"
# Renewed four times per lease: a renewal may be late by three quarters of a lease (a busy
# database, a paused process) before another driver may take the run over.
RENEW_FRACTION = 0.25


def lease_seconds() -> float:
    """The claim lease: ``LORABENCH_CLAIM_LEASE_S`` when set, else :data:`DEFAULT_LEASE_S`."""
    text = os.environ.get(LEASE_ENV)
    if not text:
        return DEFAULT_LEASE_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(
            f"{LEASE_ENV}={text!r} is not a positive number of seconds; "
            f"unset it or give e.g. {LEASE_ENV}=120"
        )
    return value


@dataclass(frozen=True)
class ClaimOwner:
    """A driver: ``owner`` is unique per driver (host, pid and a random part, so two suites in
    one process are two owners); ``host`` and ``pid`` are what the messages show."""

    owner: str
    host: str
    pid: int

    @classmethod
    def this_process(cls) -> ClaimOwner:
        """A new owner for a driver in this process."""
        host, pid = socket.gethostname(), os.getpid()
        return cls(f"{host}:{pid}:{uuid.uuid4().hex[:12]}", host, pid)

    def row(self) -> dict[str, object]:
        """The owner's columns of a claim row."""
        return {"owner": self.owner, "host": self.host, "pid": self.pid}

    def describe(self) -> str:
        """``pid 1234 on host``."""
        return f"pid {self.pid} on {self.host}"


@dataclass(frozen=True)
class Claim:
    """A stored claim: ``run_id`` is held by ``owner`` until ``expires_at`` (Unix seconds)."""

    run_id: str
    owner: ClaimOwner
    expires_at: float


class ClaimStore(Protocol):
    """What :class:`ClaimKeeper` needs (:class:`lorabench.results.store.ResultStore` has it)."""

    def claim(
        self, run_id: str, owner: ClaimOwner, *, lease_s: float, now: float
    ) -> Claim | None: ...
    def renew_claims(
        self, run_ids: Iterable[str], owner: ClaimOwner, *, lease_s: float, now: float
    ) -> set[str]: ...
    def release_claims(self, run_ids: Iterable[str], owner: ClaimOwner) -> None: ...


class ClaimKeeper:
    """One driver's claims on one store: :meth:`claim` before a run trains, :meth:`release`
    when it ends, renewed by a daemon thread in between (:meth:`start`/:meth:`stop`, or a
    ``with`` block). Runs it could not claim are counted per other driver in :attr:`skipped`.

    Args:
        store: the results database (see :class:`ClaimStore`).
        lease_s: seconds a claim lasts unrenewed (default :func:`lease_seconds`).
        clock: the time in Unix seconds (tests pass a fake one).
        owner: this driver (default :meth:`ClaimOwner.this_process`).
    """

    def __init__(
        self,
        store: ClaimStore,
        *,
        lease_s: float | None = None,
        clock: Callable[[], float] = time.time,
        owner: ClaimOwner | None = None,
    ) -> None:
        self.store = store
        self.lease_s = lease_seconds() if lease_s is None else float(lease_s)
        self.clock = clock
        self.owner = owner or ClaimOwner.this_process()
        self.skipped: dict[str, ClaimOwner] = {}  # run_id -> the driver holding it
        self._held: set[str] = set()
        # Claims another driver took over (this one stalled past its lease: a suspended process,
        # an unreachable database, clocks apart): the run may be training twice.
        self.lost: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def claim(self, run_id: str) -> bool:
        """Claims ``run_id``; False (and remembered in :attr:`skipped`) when another driver
        holds a live claim on it."""
        # Held before the claim commits: a Ctrl-C between the two still releases it in stop().
        with self._lock:
            self._held.add(run_id)
        try:
            other = self.store.claim(run_id, self.owner, lease_s=self.lease_s, now=self.clock())
        except BaseException:
            with self._lock:
                self._held.discard(run_id)
            raise
        if other is not None:
            with self._lock:
                self._held.discard(run_id)
            self.skipped[run_id] = other.owner
            return False
        return True

    def release(self, run_id: str) -> None:
        """Drops the claim on ``run_id`` (its run ended: stored, or stopped)."""
        with self._lock:
            self._held.discard(run_id)
        self.store.release_claims([run_id], self.owner)

    def renew(self) -> None:
        """Extends every held claim by a lease from now."""
        with self._lock:
            held = set(self._held)
        if held:
            kept = self.store.renew_claims(held, self.owner, lease_s=self.lease_s, now=self.clock())
            if kept is not None:
                with self._lock:
                    # Only claims still held here and not renewed: a released one is not lost.
                    self.lost |= (held - set(kept)) & self._held

    def start(self) -> ClaimKeeper:
        """Starts renewing the held claims every quarter lease, in a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._renew_loop, name="lorabench-claims", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stops renewing and releases every claim still held (the driver is done or stopped:
        its unfinished runs are free for the next driver at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            held, self._held = set(self._held), set()
        if held:
            self.store.release_claims(held, self.owner)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s * RENEW_FRACTION):
            try:
                self.renew()
            except Exception:  # a busy or briefly unreachable database: try again next beat
                continue

    def __enter__(self) -> ClaimKeeper:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def left_to_others(skipped: dict[str, ClaimOwner]) -> str | None:
    """The end-of-suite line for runs left to other drivers, e.g. ``3 runs left to another
    driver (pid 1234 on host)``; None when none were."""
    if not skipped:
        return None
    owners = sorted({owner.describe() for owner in skipped.values()})
    runs = f"{len(skipped)} run{'s' if len(skipped) != 1 else ''}"
    drivers = "another driver" if len(owners) == 1 else f"{len(owners)} other drivers"
    return (
        f"{runs} left to {drivers} ({', '.join(owners)}), which claimed them in the results "
        "database; re-run this command after it ends to train any it did not finish"
    )
