"""Training logs, one per run, written while it trains: a CSV file and/or TensorBoard events.

``--log csv`` (the default) writes ``OUT/logs/<run_id>.csv``, one row per optimiser step::

    step, seconds, loss, reg_loss, learning_rate, eval/<metric>..., rank/mean, rank/total,
    rank/<module>...

``loss`` is the task loss of that step and ``reg_loss`` the adapter's regulariser (0 without
one), apart, as in the learning curve; ``learning_rate`` the adapter's rate for that step;
``seconds`` the training seconds spent so far. The ``eval/`` columns are filled in the rows of
the steps after which the run evaluated (``eval/<split>/<metric>`` for a task with several
evaluation splits), empty elsewhere. ``rank/mean`` and ``rank/total`` are the live ranks over the
adapted matrices; the per-module ``rank/<module>`` columns only for variants whose ranks change
while training (``Variant.adaptive_rank``). Each row is flushed as it is written, so ``tail -f``
follows a run and a killed run keeps its rows; a run trained again replaces its own file.

``--log tensorboard`` writes the same scalars to ``OUT/tensorboard/<run_id>/`` (the training ones
as ``train/loss``, ``train/reg_loss``, ``train/learning_rate``, ``train/seconds``); it needs the
optional ``tensorboard`` package. ``--log none`` writes nothing; ``--log csv,tensorboard`` both.

The log setting is not part of a run's identity: the same run logged otherwise is the same run.

Also here: whether progress goes to a terminal (:func:`progress_bars`). Progress bars redraw
themselves with escape sequences; piped to a file or in CI they become thousands of lines, so
there the runner prints one plain line per run instead.
"""

from __future__ import annotations

import csv
import difflib
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from lorabench.harness.config import BenchmarkConfigError

__all__ = [
    "DEFAULT_LOG",
    "LOG_KINDS",
    "CsvLog",
    "LogColumns",
    "LogRow",
    "LogSettingError",
    "LogSettings",
    "RunLogs",
    "TensorBoardLog",
    "TrainingLogger",
    "csv_log_path",
    "parse_log",
    "progress_bars",
    "rank_columns",
    "require_log_backends",
    "row_scalars",
    "tensorboard_dir",
]

# The log kinds, in the order they are opened; "none" (no log) is spelled on its own.
LOG_KINDS = ("csv", "tensorboard")
DEFAULT_LOG: tuple[str, ...] = ("csv",)
TENSORBOARD_INSTALL = "pip install tensorboard (or pip install 'lorabench[tensorboard]')"
# TensorBoard names its event files so; a run trained again removes its old ones.
EVENT_FILE_PREFIX = "events.out.tfevents."


class LogSettingError(BenchmarkConfigError):
    """A bad ``log`` setting, or a log kind whose package is not installed; the message names
    the value and the fix."""


def parse_log(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """The log kinds a setting asks for: ``"csv"``, ``"tensorboard"``, ``"none"`` (no log), a
    comma list (``"csv,tensorboard"``) or a list of those; None gives :data:`DEFAULT_LOG`.
    Returns the kinds in :data:`LOG_KINDS` order, each once (``()`` for none)."""
    if value is None:
        return DEFAULT_LOG
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, Sequence):
        items = list(value)
    else:
        raise LogSettingError(
            f"log={value!r} must be a string or a list; give csv, tensorboard, none or "
            "csv,tensorboard"
        )
    names = []
    for item in items:
        if not isinstance(item, str):
            raise LogSettingError(f"log entry {item!r} must be a string: csv, tensorboard or none")
        name = item.strip().lower()
        if not name:
            continue  # "csv," (a trailing comma) is csv
        if name not in (*LOG_KINDS, "none"):
            close = difflib.get_close_matches(name, [*LOG_KINDS, "none"], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise LogSettingError(
                f"log {item!r} is not a log kind.{hint} Give csv, tensorboard, none or "
                "csv,tensorboard."
            )
        names.append(name)
    if not names:
        raise LogSettingError(
            f"log={value!r} names no log kind; give csv, tensorboard, none or csv,tensorboard"
        )
    if "none" in names:
        if set(names) != {"none"}:
            raise LogSettingError(
                f"log={value!r}: 'none' cannot go with another kind; give none alone, or drop it"
            )
        return ()
    return tuple(kind for kind in LOG_KINDS if kind in names)


def require_log_backends(kinds: Sequence[str]) -> None:
    """Raises :class:`LogSettingError` with the pip command when a log kind's package is not
    installed (TensorBoard's), so that a suite stops before anything trains."""
    if "tensorboard" not in kinds:
        return
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise LogSettingError(
            f"log 'tensorboard' needs the tensorboard package ({exc}); install it with "
            f"{TENSORBOARD_INSTALL}, or log with --log csv"
        ) from None


def progress_bars(stream: IO[str] | None = None) -> bool:
    """Whether progress bars may be drawn on ``stream`` (default stderr, where tqdm draws): only
    on a terminal. Piped to a file or in CI, a bar's redraws are escape sequences and lines of
    noise; the callers print plain lines there instead."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


# -- what a trainer hands to a logger ---------------------------------------------------------
@dataclass(frozen=True)
class LogColumns:
    """What a run's log will hold, known before its first step: the evaluation's metric keys (as
    :meth:`Trainer.evaluate` names them) and the modules whose rank gets its own column."""

    metric_names: tuple[str, ...] = ()
    rank_modules: tuple[str, ...] = ()


@dataclass
class LogRow:
    """One optimiser step (and the evaluation after it, if any); None: not known for this row
    (an evaluation that follows a step already logged has only its metrics and ranks)."""

    step: int
    seconds: float | None = None
    loss: float | None = None
    reg_loss: float | None = None
    learning_rate: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)


def row_scalars(row: LogRow, columns: LogColumns) -> dict[str, float]:
    """The row's scalars by column name (the CSV's header names; absent ones left out)."""
    values: dict[str, float] = {}
    for name in ("seconds", "loss", "reg_loss", "learning_rate"):
        value = getattr(row, name)
        if value is not None:
            values[name] = float(value)
    for name, value in row.metrics.items():
        values[f"eval/{name}"] = float(value)
    if row.ranks:
        ranks = list(row.ranks.values())
        values["rank/mean"] = sum(ranks) / len(ranks)
        values["rank/total"] = float(sum(ranks))
        for module in columns.rank_modules:
            if module in row.ranks:
                values[f"rank/{module}"] = float(row.ranks[module])
    return values


class TrainingLogger(Protocol):
    """What :class:`~lorabench.harness.trainer.Trainer` calls: :meth:`start` once before the
    first step, :meth:`log` after every step (with the metrics of the evaluation after it). The
    one who opened the logger closes it."""

    def start(self, columns: LogColumns) -> None:
        """Begins the run's log (a run trained again replaces what an earlier one wrote)."""
        ...

    def log(self, row: LogRow) -> None:
        """Writes one row and makes it visible at once."""
        ...

    def close(self) -> None:
        """Ends the log; safe to call twice, or without :meth:`start`."""
        ...


# -- the writers ------------------------------------------------------------------------------
def csv_log_path(out: str | Path, run_id: str) -> Path:
    """Where ``--log csv`` writes run ``run_id`` of a suite whose output folder is ``out``."""
    return Path(out) / "logs" / f"{run_id}.csv"


def tensorboard_dir(out: str | Path, run_id: str) -> Path:
    """Where ``--log tensorboard`` writes run ``run_id`` (``tensorboard --logdir OUT/tensorboard``
    shows every run of the suite side by side)."""
    return Path(out) / "tensorboard" / run_id


def _cell(value: float | int | None) -> str:
    """A CSV cell: empty when unknown; integers without '.0'; floats with every digit."""
    if value is None:
        return ""
    if isinstance(value, int) or (
        math.isfinite(value) and value == int(value) and abs(value) < 1e15
    ):
        return str(int(value))
    return repr(float(value))


class CsvLog:
    """``--log csv``: one row per step in ``path``, flushed as written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None
        self._writer: Any = None
        self._columns = LogColumns()
        self._header: list[str] = []

    def start(self, columns: LogColumns) -> None:
        """Creates (or replaces) the file and writes the header."""
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # "w", not "a": a failed run trained again, or one killed and resumed, starts over; rows of
        # the earlier attempt would read as steps of this one.
        self._file = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._writer = csv.writer(self._file)
        self._columns = columns
        self._header = [
            "step",
            "seconds",
            "loss",
            "reg_loss",
            "learning_rate",
            *(f"eval/{name}" for name in columns.metric_names),
            "rank/mean",
            "rank/total",
            *(f"rank/{module}" for module in columns.rank_modules),
        ]
        self._writer.writerow(self._header)
        self._file.flush()

    def log(self, row: LogRow) -> None:
        """Appends the row (a metric the header does not name is left out) and flushes it."""
        if self._file is None:
            raise RuntimeError(f"CsvLog({str(self.path)!r}).log before start()")
        values: dict[str, float | int | None] = dict(row_scalars(row, self._columns))
        values["step"] = row.step
        self._writer.writerow([_cell(values.get(name)) for name in self._header])
        self._file.flush()

    def close(self) -> None:
        """Closes the file (its rows are already on disk)."""
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorBoardLog:
    """``--log tensorboard``: the same scalars as the CSV, as TensorBoard events in ``folder``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._writer: Any = None
        self._columns = LogColumns()

    def start(self, columns: LogColumns) -> None:
        """Opens the event writer, removing the event files of an earlier attempt of this run
        (TensorBoard would otherwise draw both attempts as one curve)."""
        from torch.utils.tensorboard import SummaryWriter

        self.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob(f"{EVENT_FILE_PREFIX}*"):
            old.unlink(missing_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.folder))
        self._columns = columns

    def log(self, row: LogRow) -> None:
        """Adds the row's scalars at its step; flushes after an evaluation (the writer also
        flushes on its own every few seconds)."""
        if self._writer is None:
            raise RuntimeError(f"TensorBoardLog({str(self.folder)!r}).log before start()")
        for name, value in row_scalars(row, self._columns).items():
            tag = f"train/{name}" if "/" not in name else name
            self._writer.add_scalar(tag, value, row.step)
        if row.metrics:
            self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class RunLogs:
    """The logs of one run, written together (what ``--log csv,tensorboard`` opens)."""

    def __init__(self, loggers: Sequence[TrainingLogger]) -> None:
        self.loggers = list(loggers)

    def start(self, columns: LogColumns) -> None:
        """Starts every log."""
        for logger in self.loggers:
            logger.start(columns)

    def log(self, row: LogRow) -> None:
        """Writes the row to every log."""
        for logger in self.loggers:
            logger.log(row)

    def close(self) -> None:
        """Closes every log, even when one fails to close."""
        errors = []
        for logger in self.loggers:
            try:
                logger.close()
            except Exception as exc:  # the others still get closed
                errors.append(exc)
        if errors:
            raise errors[0]


@dataclass(frozen=True)
class LogSettings:
    """Which logs a suite's runs write (``kinds``, as :func:`parse_log` returns them) and under
    which output folder (``out``); :meth:`open` gives one run's."""

    kinds: tuple[str, ...]
    out: Path

    def open(self, run_id: str) -> RunLogs | None:
        """The logs of run ``run_id`` (None when no kind is asked for). Nothing is created
        before the trainer starts them."""
        loggers: list[TrainingLogger] = []
        for kind in self.kinds:
            if kind == "csv":
                loggers.append(CsvLog(csv_log_path(self.out, run_id)))
            elif kind == "tensorboard":
                loggers.append(TensorBoardLog(tensorboard_dir(self.out, run_id)))
            else:
                raise LogSettingError(
                    f"log kind {kind!r} is unknown; give one of {', '.join(LOG_KINDS)}"
                )
        return RunLogs(loggers) if loggers else None

    def describe(self) -> str:
        """Where the logs go, for a suite's first lines (empty with no log)."""
        places = {
            "csv": str(Path(self.out) / "logs" / "<run_id>.csv"),
            "tensorboard": f"{Path(self.out) / 'tensorboard'} (tensorboard --logdir ...)",
        }
        return ", ".join(places[kind] for kind in self.kinds if kind in places)


def rank_columns(ranks: Mapping[str, int], adaptive: bool) -> tuple[str, ...]:
    """The modules that get their own rank column: every adapted matrix when the variant's ranks
    change while training, none otherwise (they would repeat the nominal rank every row)."""
    return tuple(ranks) if adaptive else ()
