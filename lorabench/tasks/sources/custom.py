"""Custom tasks: CSV/TSV/JSONL files described by a small YAML spec.

Example ``sentiment.yaml`` (paths are relative to the YAML file)::

    name: my-sentiment
    type: classification          # or regression
    train: data/train.csv         # .csv, .tsv, .jsonl (one JSON object per line)
    validation: data/dev.jsonl    # or a mapping of several: {dev: dev.csv, test: test.csv}
    text_columns: [text]          # one column, or two for sentence pairs
    label_column: label
    label_names: [negative, positive]   # optional: sorted distinct training labels if absent
    metrics: [accuracy, f1]       # optional: accuracy (classification) / pearson, spearman
    primary_metric: accuracy      # optional: the first metric
    description: Product reviews, two classes
    version: "1"

:func:`register_custom_task` reads the YAML, checks the columns of every file (a missing column
fails naming it and the columns present), fixes the label names, and registers the spec so that
``load_task(name)`` works. ``load_task`` also accepts the YAML path itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from lorabench.tasks.data import LoadRequest, TaskData, register_source
from lorabench.tasks.metrics import HIGHER_IS_BETTER, METRICS, REGRESSION_METRICS
from lorabench.tasks.sources.common import (
    DataNotFoundError,
    TaskDataError,
    finalize,
    not_utf8_error,
    require_columns,
)
from lorabench.tasks.spec import MetricSpec, TaskSpec

SPEC_KEYS = {
    "name",
    "type",
    "train",
    "validation",
    "text_columns",
    "label_column",
    "label_names",
    "metrics",
    "primary_metric",
    "description",
    "version",
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def read_table(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A CSV, TSV or JSONL file as a DataFrame; text cells stay text ("NA" is not a missing
    value)."""
    if not path.is_file():
        raise DataNotFoundError(f"custom task file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in {".csv", ".tsv", ".jsonl", ".ndjson"}:
        raise TaskDataError(
            f"custom task file {path}: unsupported format {suffix!r}; use .csv, .tsv or .jsonl"
        )
    wanted = f"the columns {columns}" if columns else "its columns"
    if path.stat().st_size == 0:
        raise TaskDataError(
            f"custom task file {path} is empty; it needs a header row with {wanted} and at "
            "least one example"
        )
    # pandas' own errors name neither the file nor the fix (UnicodeDecodeError, "No columns to
    # parse from file"); a suite names the task, so the file is said here.
    try:
        if suffix in {".csv", ".tsv"}:
            frame = pd.read_csv(
                path, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False, na_values=[""]
            )
        else:
            frame = pd.read_json(path, lines=True, dtype=False, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise not_utf8_error(path, exc, "custom task file") from None
    except pd.errors.EmptyDataError:
        raise TaskDataError(
            f"custom task file {path} has no data (blank lines only); it needs a header row "
            f"with {wanted} and at least one example"
        ) from None
    except ValueError as exc:  # ParserError is a ValueError, as are read_json's errors
        problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        kind = "JSON lines (one object per line)" if suffix in {".jsonl", ".ndjson"} else suffix
        raise TaskDataError(
            f"custom task file {path} cannot be read as {kind}: {problem}"
        ) from None
    if columns is not None:
        require_columns(frame.columns, columns, str(path))
    if frame.empty:
        raise TaskDataError(
            f"custom task file {path} has no examples (a header only, or no rows); "
            "add at least one row"
        )
    return frame


def _as_list(value: Any, key: str, where: Path) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise TaskDataError(f"{where}: {key!r} must be a column name or a list of names, got {value!r}")


def _infer_label_names(labels: pd.Series) -> tuple[str, ...]:
    """Sorted distinct labels; numbers sort numerically (so 2 < 10) and are named by their text."""
    distinct = labels.dropna().unique().tolist()
    numeric = pd.to_numeric(pd.Series(distinct), errors="coerce")
    if len(distinct) and numeric.notna().all():
        ordered = [distinct[i] for i in numeric.argsort()]
        return tuple(str(int(v)) if float(v).is_integer() else str(v) for v in ordered)
    return tuple(sorted(str(v) for v in distinct))


def read_custom_spec(yaml_path: str | Path) -> TaskSpec:
    """Parses and checks a custom task YAML (and the columns of its files) without registering
    it."""
    path = Path(yaml_path).expanduser().resolve()
    if not path.is_file():
        raise DataNotFoundError(f"custom task spec {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise not_utf8_error(path, exc, "custom task spec") from None
    except yaml.YAMLError as exc:
        raise TaskDataError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise TaskDataError(f"{path}: expected a YAML mapping with keys {sorted(SPEC_KEYS)}")
    unknown = sorted(set(raw) - SPEC_KEYS)
    if unknown:
        raise TaskDataError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(SPEC_KEYS)}")
    for key in ("name", "train", "validation", "text_columns", "label_column"):
        if key not in raw:
            raise TaskDataError(f"{path}: missing required key {key!r}")

    name = str(raw["name"]).lower()
    if not _NAME.match(name):
        raise TaskDataError(
            f"{path}: task name {raw['name']!r} must be letters, digits, '.', '_' or '-'"
        )
    task_type = raw.get("type", "classification")
    if task_type not in ("classification", "regression"):
        raise TaskDataError(
            f"{path}: type must be 'classification' or 'regression', got {task_type!r}"
        )
    text_columns = _as_list(raw["text_columns"], "text_columns", path)
    if len(text_columns) > 2:
        raise TaskDataError(f"{path}: text_columns takes one column or a pair, got {text_columns}")
    label_column = str(raw["label_column"])
    if label_column in text_columns:
        raise TaskDataError(f"{path}: label_column {label_column!r} is also a text column")

    evals = (
        raw["validation"]
        if isinstance(raw["validation"], dict)
        else {"validation": raw["validation"]}
    )
    if not evals:
        raise TaskDataError(f"{path}: 'validation' needs at least one file")
    if "train" in evals:
        raise TaskDataError(f"{path}: an evaluation split cannot be called 'train'")
    files = {"train": raw["train"], **evals}
    files = {split: str((path.parent / str(f)).resolve()) for split, f in files.items()}
    columns = [*text_columns, label_column]
    frames = {split: read_table(Path(f), columns) for split, f in files.items()}

    label_names: tuple[str, ...] | None = None
    if task_type == "classification":
        given = raw.get("label_names")
        if given is not None and (not isinstance(given, list) or len(given) < 2):
            raise TaskDataError(
                f"{path}: label_names must be a list of at least two names, got {given!r}"
            )
        label_names = (
            tuple(str(v) for v in given)
            if given
            else _infer_label_names(frames["train"][label_column])
        )
        if len(label_names) < 2:
            raise TaskDataError(
                f"{path}: the training labels in {label_column!r} have fewer than two classes: "
                f"{list(label_names)}"
            )
    elif raw.get("label_names"):
        raise TaskDataError(f"{path}: a regression task has no label_names")

    default_metrics = ["accuracy"] if task_type == "classification" else ["pearson", "spearman"]
    metric_names = _as_list(raw.get("metrics", default_metrics), "metrics", path)
    for metric in metric_names:
        if metric not in METRICS:
            raise TaskDataError(f"{path}: unknown metric {metric!r}; known: {sorted(METRICS)}")
        if (metric in REGRESSION_METRICS) != (task_type == "regression"):
            raise TaskDataError(f"{path}: metric {metric!r} does not apply to a {task_type} task")
        if metric == "f1" and label_names is not None and len(label_names) != 2:
            raise TaskDataError(
                f"{path}: 'f1' is binary (positive class id 1); "
                f"use 'f1_macro' for {len(label_names)} classes"
            )
    primary = str(raw.get("primary_metric", metric_names[0]))
    if primary not in metric_names:
        raise TaskDataError(
            f"{path}: primary_metric {primary!r} is not among metrics {metric_names}"
        )

    spec = TaskSpec(
        name=name,
        version=str(raw.get("version", "1")),
        source="custom",
        text_columns=tuple(text_columns),
        label_column=label_column,
        task_type=task_type,
        label_names=label_names,
        metrics=tuple(MetricSpec(m, HIGHER_IS_BETTER[m]) for m in metric_names),
        primary_metric=primary,
        eval_splits=tuple(evals),
        options={"files": files, "spec_file": str(path)},
        description=str(raw.get("description") or f"custom {task_type} task from {path.name}"),
    )
    # Fail now, not mid-run, on labels outside the names (e.g. a class only in validation).
    finalize(spec, frames, LoadRequest(), source=str(path))
    return spec


def register_custom_task(yaml_path: str | Path, *, overwrite: bool = False) -> TaskSpec:
    """Reads a custom task YAML and registers its spec in ``TASKS``; returns the spec.

    A custom task is its ``name``: registering a custom task of that name again (the same file,
    or the file moved or copied) replaces the spec. A custom task that takes a built-in task's
    name (a GLUE task's, say) fails unless ``overwrite=True``.
    """
    from lorabench.tasks import TASKS

    spec = read_custom_spec(yaml_path)
    if spec.name in TASKS and not overwrite:
        existing = TASKS.get(spec.name)
        if existing.source != "custom":
            raise ValueError(
                f"custom task {spec.name!r} from {spec.options['spec_file']} "
                f"clashes with the registered task of that name ({existing.source}); "
                "rename it in the YAML or pass overwrite=True"
            )
    TASKS.add(spec, overwrite=True)
    return spec


def custom_files(spec: TaskSpec, request: LoadRequest) -> list[Path]:
    """The data files a custom task reads (its spec names them)."""
    return [Path(f) for f in spec.options["files"].values()]


@register_source("custom", files=custom_files)
def load_custom(spec: TaskSpec, request: LoadRequest) -> TaskData:
    """Reads a custom task's files as its spec names them (``data_dir`` is not used)."""
    columns = [*spec.text_columns, spec.label_column]
    files: dict[str, str] = spec.options["files"]
    frames = {split: read_table(Path(f), columns) for split, f in files.items()}
    return finalize(spec, frames, request, source=f"custom:{spec.options.get('spec_file', '')}")
