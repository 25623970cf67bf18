"""What every loader shares: label encoding, column checks and the deterministic subsets.

Each loader reads its format into one raw DataFrame per split; :func:`finalize` turns those into
the :class:`~lorabench.tasks.data.TaskData` contract (exactly the spec's text columns and label
column, labels as ``int64`` class ids or ``float64`` scores) and applies the example limits of the
:class:`~lorabench.tasks.data.LoadRequest`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from lorabench.tasks.data import LoadRequest, TaskData
from lorabench.tasks.spec import TaskSpec

# The subsets taken for max_train_examples / max_eval_examples come from one fixed permutation per
# split, so every variant, seed and run sees the same examples, and a smaller limit gives a prefix
# of a larger one. Changing this constant changes the data: bump the task versions if you do.
SUBSET_SEED = 20240521


class TaskDataError(ValueError):
    """The data a task was pointed at does not fit its spec (missing column, unknown label, ...)."""


class DataNotFoundError(FileNotFoundError):
    """No source the task can read was found; the message says what to pass instead."""


def not_utf8_error(path: object, exc: UnicodeDecodeError, what: str = "file") -> TaskDataError:
    """The error for a data file that is not UTF-8 (a Latin-1 or Windows-1252 export, say):
    names the file and the first bad byte, and says to save it as UTF-8."""
    where = ""
    try:
        # The reader's offset is into the chunk it decoded; the file's own bytes say the line.
        data = Path(str(path)).read_bytes()
        data.decode("utf-8")
    except UnicodeDecodeError as whole:
        line = data.count(b"\n", 0, whole.start) + 1
        where = f"byte 0x{data[whole.start]:02x} on line {line}"
    except OSError:
        pass
    if not where:
        where = f"byte 0x{exc.object[exc.start : exc.start + 1].hex()}" if exc.object else "?"
    return TaskDataError(
        f"{what} {path} is not UTF-8 text ({where}); save it as UTF-8 "
        "(in a spreadsheet: 'CSV UTF-8'; or iconv -f latin1 -t utf-8)"
    )


def require_columns(present: Iterable[str], needed: Iterable[str], where: str) -> None:
    """Fails naming every missing column and the columns that are there."""
    present = list(present)
    missing = [c for c in needed if c not in present]
    if missing:
        raise TaskDataError(
            f"{where}: missing column(s) {missing}; the columns present are {present}"
        )


def encode_labels(values: pd.Series, spec: TaskSpec, where: str) -> pd.Series:
    """Raw labels (names, id strings, ids or scores) as class ids / float scores.

    Classification: a value equal to a label name maps to that name's position; otherwise an
    integer (or its string form) in ``0..num_labels-1`` is taken as the id itself. GLUE files use
    both (RTE/QNLI/MNLI names, SST-2/MRPC/QQP/CoLA/WNLI ids); the ids agree with the Hugging Face
    ``nyu-mll/glue`` ClassLabel order, which is how the specs' ``label_names`` are ordered.
    """
    if spec.task_type == "regression":
        scores = pd.to_numeric(values, errors="coerce")
        bad = values[scores.isna()]
        if len(bad):
            raise TaskDataError(
                f"{where}: {len(bad)} label(s) in column {spec.label_column!r} are not numbers, "
                f"e.g. {bad.iloc[0]!r} (row {bad.index[0]}); a regression task needs float scores"
            )
        return scores.astype("float64")

    names = list(spec.label_names or ())
    by_name = {name: i for i, name in enumerate(names)}

    def to_id(value: object) -> int:
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)  # a CSV column with a blank cell reads as floats: 1.0 -> 1
        text = str(value).strip()
        if text in by_name:  # names first: inferred names "1", "2", "3" are ids 0, 1, 2
            return by_name[text]
        if text.isdigit() and int(text) < len(names):
            return int(text)
        return -1

    ids = values.map(to_id)
    bad = values[ids < 0]
    if len(bad):
        raise TaskDataError(
            f"{where}: {len(bad)} label(s) in column {spec.label_column!r} are not labels of task "
            f"{spec.name!r}, e.g. {bad.iloc[0]!r} (row {bad.index[0]}); expected one of {names} "
            f"or an id 0..{len(names) - 1}"
        )
    return ids.astype("int64")


def subset(frame: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    """The first ``limit`` rows of a fixed shuffle of ``frame`` (all rows when ``limit`` is None).

    The permutation depends only on :data:`SUBSET_SEED` and the number of rows, never on the run's
    seed: comparisons between variants are on identical examples.
    """
    if limit is not None and limit <= 0:
        raise ValueError(f"an example limit must be positive, got {limit}")
    if limit is None or limit >= len(frame):
        return frame.reset_index(drop=True)
    order = np.random.default_rng(SUBSET_SEED).permutation(len(frame))[:limit]
    return frame.iloc[order].reset_index(drop=True)


def finalize(
    spec: TaskSpec,
    raw_splits: Mapping[str, pd.DataFrame],
    request: LoadRequest,
    source: str,
    extras: dict | None = None,
) -> TaskData:
    """Raw per-split frames -> :class:`TaskData` in the canonical layout, with limits applied."""
    columns = [*spec.text_columns, spec.label_column]
    wanted = [spec.train_split, *spec.eval_splits]
    missing_splits = [s for s in wanted if s not in raw_splits]
    if missing_splits:
        raise TaskDataError(
            f"{source}: task {spec.name!r} needs split(s) {missing_splits}; "
            f"found {sorted(raw_splits)}"
        )
    splits: dict[str, pd.DataFrame] = {}
    for name in wanted:
        frame = raw_splits[name]
        where = f"{source} (split {name!r})"
        require_columns(frame.columns, columns, where)
        frame = frame[columns].copy()
        for column in spec.text_columns:
            # Empty cells are real in GLUE (a few QQP questions are blank); keep them as "".
            frame[column] = frame[column].fillna("").astype(str)
        frame[spec.label_column] = encode_labels(frame[spec.label_column], spec, where)
        limit = (
            request.max_train_examples if name == spec.train_split else request.max_eval_examples
        )
        splits[name] = subset(frame, limit)
    return TaskData(spec=spec, splits=splits, source=source, extras=dict(extras or {}))
