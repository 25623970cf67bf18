"""SIGTERM handled as Ctrl-C is: an exception that unwinds cleanly, not a silent death.

A scheduler or ``timeout`` stops a job with SIGTERM, whose default action ends the process at
once: no message, and a record being written is lost half-way. Inside :func:`stop_signals_raise`
SIGTERM raises :class:`Interrupted` (a ``KeyboardInterrupt``, so every ``except
KeyboardInterrupt`` that cleans up after Ctrl-C cleans up after it too), and the command line
turns it into one message and exit code 143 (128 + 15, as a shell reports it).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped the work. :attr:`message` says what was kept and how to
    go on (empty: the command line says it generically); :attr:`exit_code` is 128 + the signal
    number (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, message: str = "", *, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.message = message
        self.signum = int(signum)
        self.exit_code = 128 + int(signum)


def signal_name(signum: int) -> str:
    """``"Ctrl-C"`` for SIGINT, else the signal's name (``"SIGTERM"``)."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def raise_interrupted(signum: int, frame: Any) -> None:
    """A signal handler: raises :class:`Interrupted` for ``signum``."""
    raise Interrupted(signum=signum)


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Interrupted` (Ctrl-C already raises
    ``KeyboardInterrupt``). Installs nothing outside the main thread (Python allows handlers only
    there) or when a caller has set its own SIGTERM handler; restores the previous one."""
    installed = False
    previous: Any = None
    if (
        hasattr(signal, "SIGTERM")
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        previous = signal.signal(signal.SIGTERM, raise_interrupted)
        installed = True
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)


def is_default_handler(signum: int, handler: Any) -> bool:
    """Whether ``handler`` is what ``signum`` has when nobody chose otherwise: Python's own
    (``default_int_handler`` for SIGINT, ``SIG_DFL`` for SIGTERM) or :func:`raise_interrupted`."""
    if handler is raise_interrupted:
        return True
    if signum == signal.SIGINT:
        return handler is signal.default_int_handler
    return handler is signal.SIG_DFL
