"""Tidy pandas frames of run records: one flat row per run, and the learning curves in long form.

:func:`runs_table` is what :func:`lorabench.results.store.load_results` returns and
:func:`curves_table` what :func:`lorabench.results.store.load_curves` returns. Every cell is a
scalar (a number, a string, a bool, a timestamp or missing): lists become comma-separated text,
mappings are flattened into columns or left out (the whole record stays in
``ResultStore.records()``). Rows join on ``run_id``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from lorabench.results.labels import (
    axis_rank,
    best_score,
    budget_label,
    evaluations,
    is_adaptive_rank,
    record_label,
    resolved_variant_config,
    row_labels,
)
from lorabench.results.records import CurvePoint, RunRecord

# The columns every runs table has, in order (the record's own settings, metrics and spend come
# after them; see runs_table).
RUN_COLUMNS = (
    "run_id", "label", "variant", "task", "model", "seed", "tag", "status",
    "primary_metric", "higher_is_better", "final_score", "best_score", "evaluations",
    "rank", "nominal_rank", "final_rank_mean", "final_rank_total", "final_rank_min",
    "final_rank_max", "adapted_matrices", "adaptive_rank",
    "trainable_params", "adapter_params", "total_params", "adapter_bytes",
    "budget", "budget_kind", "budget_limit",
)  # fmt: skip
# Provenance and time, last.
TAIL_COLUMNS = (
    "variant_version", "task_version", "data_fingerprint", "model_fingerprint", "device",
    "data_source", "adapted_modules", "adapted_module_count", "search_study", "search_trial",
    "search_role", "git_commit", "git_dirty", "python_version", "lorabench_version",
    "torch_version", "transformers_version", "error", "schema_version", "started_at",
    "finished_at",
)  # fmt: skip
TIME_COLUMNS = ("started_at", "finished_at")
# Fixed columns that hold text; any other column without a single value (a setting every run
# left unset, such as eval_every) is a float column of NaN, so that numbers stay numeric.
TEXT_COLUMNS = frozenset(
    {
        "run_id", "label", "variant", "task", "model", "tag", "status", "primary_metric",
        "budget", "budget_kind", "variant_version", "task_version", "data_fingerprint",
        "model_fingerprint", "device", "data_source", "adapted_modules", "search_study",
        "search_role", "git_commit", "python_version", "lorabench_version", "torch_version",
        "transformers_version", "error",
    }
)  # fmt: skip
# The columns every curves table has, before the curve point's other fields and the metrics.
CURVE_COLUMNS = ("run_id", "label", "variant", "task", "seed", "step")
# Packages whose version gets a column (``torch_version``); the record keeps them all.
VERSION_COLUMNS = ("lorabench", "torch", "transformers")


def runs_table(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One flat row per record, with pandas dtypes (floats, ints, bools, UTC datetimes).

    Columns, in order:

    - identity: ``run_id`` (joins with :func:`curves_table`), ``label`` (the report's row label,
      see below), ``variant``, ``task``, ``model``, ``seed``, ``tag``, ``status``;
    - score: ``primary_metric``, ``higher_is_better``, ``final_score`` (the final evaluation's
      primary metric), ``best_score`` (the best evaluation during training, the final one
      included: what ``lorabench report --score best`` shows), ``evaluations`` (how many);
    - rank: ``rank``, the rank the run is compared at (its nominal rank; for an adaptive-rank
      variant such as AdaLoRA the mean of its *final* per-matrix ranks, never its initial
      ``r``), ``nominal_rank`` (the config's: AdaLoRA's initial, DyLoRA's maximum),
      ``final_rank_mean``/``_total``/``_min``/``_max`` over the adapted matrices' final ranks,
      ``adapted_matrices`` (how many), ``adaptive_rank`` (whether the variant chooses ranks);
    - size: ``trainable_params``, ``adapter_params``, ``total_params``, ``adapter_bytes``;
    - budget: ``budget`` (``"steps=500"``), ``budget_kind``, ``budget_limit``;
    - the final evaluation's metrics, one column per key (``accuracy``, ``f1``,
      ``validation_matched/accuracy`` on a task with several eval splits);
    - the spend, one column per key (``steps``, ``tokens``, ``train_seconds``, ``eval_seconds``,
      ``flops``, ``peak_memory_bytes``, ``memory_kind``...);
    - the variant's resolved config (``r``, ``alpha``, ``dropout``, ``target_modules`` as
      text, ``target_r``...: the union over the variants present, missing where a variant has
      no such field) and the training recipe (``learning_rate``, ``batch_size``,
      ``warmup_ratio``, ``eval_every``...);
    - provenance and time: ``variant_version``, ``task_version``, ``data_fingerprint``,
      ``model_fingerprint``, ``device``, ``data_source``, ``adapted_modules`` (the patterns the
      run adapted, comma-separated), ``adapted_module_count``, ``search_study``,
      ``search_trial``, ``search_role`` (a search's runs), ``git_commit``, ``git_dirty``,
      ``python_version``, ``lorabench_version``, ``torch_version``, ``transformers_version``,
      ``error``, ``schema_version``, ``started_at`` and ``finished_at`` (``datetime64``, UTC).

    A metric, spend, config or recipe key that would take the name of a column before it gets
    a prefix instead (DyLoRA's config ``seed`` is ``variant_seed``; likewise ``metric_``,
    ``spent_``, ``train_``).

    ``label`` is the label ``lorabench report`` gives the run's row ("AdaLoRA r=12→8", with
    "(lr=...)" or "[data ...]" where runs of one variant differ), computed over the finished,
    non-trial runs of ``records`` as a report of the same filters computes it; a search trial or
    an unfinished run gets its plain label ("LoRA r=8"). Left out (see the record): the
    per-matrix ranks, DyLoRA's scores at every rank, planted ranks, the learning curve (see
    :func:`curves_table`) and the environment beyond the columns above.
    """
    records = list(records)
    labels = _labels(records)
    rows = [_run_row(record, label) for record, label in zip(records, labels, strict=True)]
    frame = pd.DataFrame(rows)
    for column in (*RUN_COLUMNS, *TAIL_COLUMNS):
        if column not in frame.columns:
            frame[column] = None
    middle = [c for c in frame.columns if c not in RUN_COLUMNS and c not in TAIL_COLUMNS]
    frame = frame[[*RUN_COLUMNS, *middle, *TAIL_COLUMNS]]
    return _typed(frame)


def curves_table(records: Iterable[RunRecord]) -> pd.DataFrame:
    """The learning curves in long form: one row per (run, curve point), each run's points in
    step order as recorded, the runs in the order given.

    Columns: ``run_id``, ``label`` (as in :func:`runs_table`), ``variant``, ``task``, ``seed``,
    ``step``, then the curve point's own values (``loss``: the task loss, ``seconds``: training
    seconds so far, ``reg_loss``: the adapter's regulariser, and any value a newer record stores
    per point, such as a learning rate), then one column per evaluated metric (``accuracy``,
    ``f1``...; missing at the points without an evaluation; prefixed ``eval_`` where a metric
    shares a point value's name). Every value column is a float.
    """
    records = list(records)
    labels = _labels(records)
    rows = []
    for record, label in zip(records, labels, strict=True):
        identity = {
            "run_id": record.run_id,
            "label": label,
            "variant": record.variant,
            "task": record.task,
            "seed": record.seed,
        }
        for point in record.curve or []:
            values = _point_values(point)
            row = {**identity, **values}
            for key, value in (point.metrics or {}).items():
                row[_free_name(str(key), "eval_", row)] = value
            rows.append(row)
    frame = pd.DataFrame(rows)
    for column in CURVE_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    rest = [c for c in frame.columns if c not in CURVE_COLUMNS]
    frame = _typed(frame[[*CURVE_COLUMNS, *rest]])
    # Values as floats throughout: a whole-number metric, a value no point recorded (reg_loss of
    # records written before it existed) and a real-valued one all compare and plot alike.
    numeric = [
        c for c in rest if pd.api.types.is_numeric_dtype(frame[c].dtype) or frame[c].isna().all()
    ]
    frame[numeric] = frame[numeric].astype(float)
    return frame


# -- rows --------------------------------------------------------------------------------------
def _labels(records: Sequence[RunRecord]) -> list[str]:
    """Each record's label: the report's row label for the runs a report tables (finished,
    scored, not a search trial), the plain label (with the final ranks) for the others."""
    tabled = [i for i, r in enumerate(records) if _tabled(r)]
    labels = [record_label(r, r.ranks or None) for r in records]
    for i, label in zip(tabled, row_labels([records[i] for i in tabled]), strict=True):
        labels[i] = label.config
    return labels


def _tabled(record: RunRecord) -> bool:
    return (
        record.status == "finished"
        and (record.search or {}).get("role") != "trial"
        and _is_number(record.score)
        and math.isfinite(float(record.score))  # type: ignore[arg-type]
    )


def _run_row(record: RunRecord, label: str) -> dict[str, Any]:
    config = record.config or {}
    ranks = pd.Series([float(v) for v in (record.ranks or {}).values()], dtype=float)
    environment = record.environment or {}
    packages = environment.get("packages") or {}
    search = record.search or {}
    row: dict[str, Any] = {
        "run_id": record.run_id,
        "label": label,
        "variant": record.variant,
        "task": record.task,
        "model": record.model,
        "seed": record.seed,
        "tag": record.tag or "",
        "status": record.status,
        "primary_metric": record.primary_metric,
        "higher_is_better": bool(record.higher_is_better),
        "final_score": _number(record.score),
        "best_score": _best(record),
        "evaluations": len(evaluations(record)),
        "rank": axis_rank(record),
        "nominal_rank": _number(record.rank),
        "final_rank_mean": ranks.mean(),
        "final_rank_total": ranks.sum() if len(ranks) else math.nan,
        "final_rank_min": ranks.min(),
        "final_rank_max": ranks.max(),
        "adapted_matrices": len(ranks),
        "adaptive_rank": is_adaptive_rank(record),
        "trainable_params": record.trainable_params,
        "adapter_params": record.adapter_params,
        "total_params": record.total_params,
        "adapter_bytes": record.adapter_bytes,
        "budget": budget_label(record.budget or {}),
        "budget_kind": (record.budget or {}).get("kind"),
        "budget_limit": _number((record.budget or {}).get("limit")),
    }
    for prefix, values in (
        ("metric_", record.metrics or {}),
        ("spent_", record.spent or {}),
        ("variant_", resolved_variant_config(record)),
        ("train_", config.get("train") or {}),
    ):
        for key, value in values.items():
            row[_free_name(str(key), prefix, row)] = _scalar(value)
    row.update(
        {
            "variant_version": record.variant_version,
            "task_version": record.task_version,
            "data_fingerprint": record.data_fingerprint,
            "model_fingerprint": record.model_fingerprint,
            "device": _scalar(config.get("device")),
            "data_source": _scalar(config.get("data_source")),
            "adapted_modules": _scalar(config.get("adapted_modules")),
            "adapted_module_count": _number(config.get("adapted_module_count")),
            "search_study": _scalar(search.get("study")),
            "search_trial": _number(search.get("trial")),
            "search_role": _scalar(search.get("role")),
            "git_commit": _scalar(environment.get("git_commit")),
            "git_dirty": _scalar(environment.get("git_dirty")),
            "python_version": _scalar(environment.get("python")),
            **{f"{name}_version": _scalar(packages.get(name)) for name in VERSION_COLUMNS},
            "error": record.error,
            "schema_version": record.schema_version,
            "started_at": record.started_at or None,
            "finished_at": record.finished_at or None,
        }
    )
    return row


def _point_values(point: CurvePoint) -> dict[str, Any]:
    """A curve point's scalar fields (``step``, ``loss``, ``seconds``, ``reg_loss`` and any a
    newer record adds), its metrics aside."""
    values = dataclasses.asdict(point)
    values.pop("metrics", None)
    return {k: v for k, v in values.items() if not isinstance(v, Mapping | list | tuple)}


def _free_name(key: str, prefix: str, row: Mapping[str, Any]) -> str:
    """``key``, or ``prefix + key`` when the row already has a column of that name (a spend
    key that is also a metric, DyLoRA's config ``seed``)."""
    if key not in row and key not in RUN_COLUMNS and key not in TAIL_COLUMNS:
        return key
    return prefix + key


def _best(record: RunRecord) -> float:
    """:func:`~lorabench.results.labels.best_score`; for a run without a final score (failed,
    pruned) the best of its evaluations, NaN without any."""
    if _is_number(record.score) and math.isfinite(float(record.score)):  # type: ignore[arg-type]
        return best_score(record)
    values = evaluations(record)
    if not values:
        return math.nan
    return max(values) if record.higher_is_better else min(values)


# -- cells and dtypes ----------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: Any) -> float:
    return float(value) if _is_number(value) else math.nan


def _scalar(value: Any) -> Any:
    """A cell value: lists as ``"query,value"``, mappings as sorted JSON, scalars as they are."""
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(map(str, value))
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Numbers as numeric dtypes, bools as bool (``boolean`` when some are missing), the time
    columns as UTC datetimes, a column without any value as float (see
    :data:`TEXT_COLUMNS`); text stays text."""
    frame = frame.copy()
    for column in frame.columns:
        if column in TIME_COLUMNS:
            # Records store ISO 8601 text with an offset (UTC); older ones have none: read as UTC.
            frame[column] = pd.to_datetime(
                frame[column], utc=True, format="ISO8601", errors="coerce"
            )
            continue
        values = frame[column].dropna()
        if values.empty and column not in TEXT_COLUMNS:
            frame[column] = frame[column].astype(float)
            continue
        if frame[column].dtype != object or values.empty:
            continue
        if all(isinstance(v, bool) for v in values):
            frame[column] = frame[column].astype("boolean" if len(values) < len(frame) else bool)
        elif all(_is_number(v) for v in values):
            frame[column] = pd.to_numeric(frame[column])
    for column in ("seed", "step", "evaluations", "adapted_matrices"):
        if column in frame.columns and frame[column].notna().all():
            frame[column] = frame[column].astype("int64")
    return frame
