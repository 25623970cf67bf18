"""The original GLUE TSV layout (``glue_data/<TASK>/{train,dev}.tsv``, as the official download
script writes it).

How a task's files look is data in its spec, ``spec.options["tsv"]``::

    {"header": True,                       # False for CoLA train/dev
     "columns": {"sentence1": "#1 String",  # canonical column -> header name, or position
                 "label": "Quality"},       # (negative positions count from the end)
     "files": {"train": "train.tsv", "validation": "dev.tsv"}}

Quirks of the real files handled here (all true of the official download):

* quoting is disabled (``csv.QUOTE_NONE``): MRPC and others contain unbalanced ``"`` characters
  that are text, not CSV quoting;
* a UTF-8 byte-order mark at the start (MRPC) is dropped (``utf-8-sig``);
* rows with fewer fields than the columns need, or an empty label (a few QQP lines, where a
  question held a line break), are skipped, counted and reported in one warning per file.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pandas as pd

from lorabench.tasks.sources.common import DataNotFoundError, TaskDataError
from lorabench.tasks.spec import TaskSpec


class MalformedRowsWarning(UserWarning):
    """Some rows of a TSV file were skipped because fields were missing."""


def _resolve_positions(
    columns: dict[str, str | int], header: list[str] | None, path: Path
) -> dict[str, int]:
    positions: dict[str, int] = {}
    for canonical, field in columns.items():
        if isinstance(field, int):
            positions[canonical] = field
            continue
        if header is None:
            raise ValueError(
                f"tsv layout of {path} names column {field!r} but the file has no header"
            )
        if field not in header:
            raise TaskDataError(
                f"{path}: header has no column {field!r} (needed for {canonical!r}); the header is "
                f"{header}. Is this the right task folder?"
            )
        positions[canonical] = header.index(field)
    return positions


def read_tsv(
    path: Path, columns: dict[str, str | int], *, header: bool, label_column: str = "label"
) -> tuple[pd.DataFrame, int]:
    """One GLUE TSV file as a DataFrame of the canonical columns (all strings), and the number of
    malformed rows skipped."""
    rows: list[list[str]] = []
    skipped = 0
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        names = next(reader, None) if header else None
        if header and names is None:
            raise TaskDataError(f"{path} is empty; expected a header row and examples")
        positions = _resolve_positions(columns, names, path)
        # A row must reach the furthest position asked for, and a position counted from the end
        # (STS-B's score: last of ten fields) must lie beyond all others, not on top of them.
        forward = max((p + 1 for p in positions.values() if p >= 0), default=0)
        backward = max((-p for p in positions.values() if p < 0), default=0)
        needed = max(forward + backward, 1)
        label_at = positions.get(label_column)
        for row in reader:
            if len(row) < needed or (label_at is not None and not row[label_at].strip()):
                if any(cell.strip() for cell in row):  # a blank trailing line is not malformed
                    skipped += 1
                continue
            rows.append([row[p] for p in positions.values()])
    return pd.DataFrame(rows, columns=list(positions), dtype=object), skipped


def read_glue_tsv_folder(
    spec: TaskSpec, folder: Path
) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """Every split the spec needs from ``folder``; also the skipped-row count per split.

    Skipped rows raise one :class:`MalformedRowsWarning` per file, naming the file and the count.
    """
    layout = spec.options["tsv"]
    splits: dict[str, pd.DataFrame] = {}
    skipped: dict[str, int] = {}
    for split in (spec.train_split, *spec.eval_splits):
        filename = layout["files"][split]
        path = folder / filename
        if not path.is_file():
            present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
            raise DataNotFoundError(
                f"task {spec.name!r}: {path} not found (the {split!r} split); files in {folder}: "
                f"{present}. Expected the official GLUE layout: {sorted(layout['files'].values())}"
            )
        frame, bad = read_tsv(
            path, layout["columns"], header=layout["header"], label_column=spec.label_column
        )
        if bad:
            warnings.warn(
                f"{path}: skipped {bad} malformed row(s) with missing fields; kept {len(frame)}",
                MalformedRowsWarning,
                stacklevel=3,
            )
        splits[split], skipped[split] = frame, bad
    return splits, skipped
