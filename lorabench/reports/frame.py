"""Loading run records for a report and aggregating them over seeds.

A report row is a *variant config*: the variant plus its rank ("LoRA r=8"), as in the
LoRA/AdaLoRA papers' tables. How a variant is named and how its rank reads ("AdaLoRA r=12→8",
"DyLoRA r≤8") are facts of the variant (:meth:`~lorabench.variants.Variant.report_name`,
:meth:`~lorabench.variants.Variant.rank_label`), computed from each record's resolved config;
a record of a variant this process does not know keeps its registered name and ``r=<rank>``.

Runs are seeds of one row only when everything that changes the score agrees: the variant's
resolved settings, the training recipe, the model (name and fingerprint), the budget and, per
task, the data fingerprint. When runs of one variant differ in a setting (another learning
rate, alpha, AdaLoRA schedule: a search's confirmation runs beside a plain run), each row names
what differs ("LoRA r=2 (alpha=32, lr=0.000416)"); runs of another model, budget or data get a
bracketed tag ("[data not recorded]"), so that different experiments are never averaged together
as if they were seeds of one. Search trials (``search.role == "trial"``) are excluded from the
tables (they are many configs tried once) and kept apart for the search-history figure; the
confirmation runs of a search's best config count as ordinary runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lorabench.results.records import RunRecord, config_hash
from lorabench.results.store import ResultStore
from lorabench.tasks.metrics import Metric, get_metric

if TYPE_CHECKING:
    from lorabench.variants.base import Variant

# GLUE's usual column order; other tasks follow alphabetically.
TASK_ORDER = (
    "cola", "sst2", "sst-2", "mrpc", "qqp", "stsb", "sts-b", "mnli", "qnli", "rte", "wnli",
)  # fmt: skip
# Characters of a fingerprint a label shows (16 are stored; 8 tell runs apart in one report).
FINGERPRINT_CHARS = 8
NOT_RECORDED = "not recorded"  # records written before fingerprints (release 0.1) have ""


# -- variant facts, from the registry -------------------------------------------------------------
def variant_class(variant: str) -> type[Variant] | None:
    """The registered class of ``variant``, or None when this process does not know it (a
    record written with a plugin that is not installed here)."""
    from lorabench.variants import VARIANTS, Variant

    try:
        cls = VARIANTS.get(variant)
    except KeyError:  # UnknownNameError: not registered here
        return None
    return cls if isinstance(cls, type) and issubclass(cls, Variant) else None


def variant_name(variant: str) -> str:
    """How a report names ``variant`` ("LoRA"); the registry name when it is not known here."""
    cls = variant_class(variant)
    return cls.report_name() if cls is not None else variant


def variant_position(variant: str) -> int | None:
    """The variant's ``report_order`` (None: unordered, after the ordered ones)."""
    cls = variant_class(variant)
    return cls.report_position() if cls is not None else None


def variant_sort_key(variant: str) -> tuple[float, str]:
    """Ordered variants first (LoRA, DoRA, AdaLoRA, DyLoRA, VeRA), then the others by name."""
    position = variant_position(variant)
    return (math.inf if position is None else position, variant)


def stored_variant_config(record: RunRecord) -> dict[str, Any]:
    """The variant config as the record stored it: resolved, or (older records) the overrides."""
    config = record.config or {}
    return dict(config.get("resolved_variant_config") or config.get("variant_config") or {})


def resolved_variant_config(record: RunRecord) -> dict[str, Any]:
    """The record's variant config as the variant resolves it today (legacy names mapped,
    defaults filled in); as stored for a variant not known here."""
    cls = variant_class(record.variant)
    stored = stored_variant_config(record)
    return cls.config_class.resolve_stored(stored) if cls is not None else stored


def rank_label(record: RunRecord, ranks: Mapping[str, float] | None = None) -> str:
    """The rank part of a record's label ("r=8", "r=12→8"): the variant's own, else ``r=<rank>``."""
    cls = variant_class(record.variant)
    if cls is not None:
        return cls.rank_label(resolved_variant_config(record), ranks)
    return "" if record.rank is None else f"r={record.rank}"


def record_label(record: RunRecord, ranks: Mapping[str, float] | None = None) -> str:
    """A record's label without its row's tags: ``"LoRA r=8"`` (just the name without a rank)."""
    cls = variant_class(record.variant)
    name = cls.report_name(resolved_variant_config(record)) if cls else record.variant
    return " ".join(p for p in (name, rank_label(record, ranks)) if p)


def short_fingerprint(fingerprint: str) -> str:
    """``"1a2b3c4d"`` (the first characters), or ``"not recorded"`` for a legacy record's ``""``."""
    return fingerprint[:FINGERPRINT_CHARS] if fingerprint else NOT_RECORDED


@dataclass(frozen=True)
class MemoryKind:
    """How a report shows one ``memory_kind`` of ``spent["peak_memory_bytes"]``.

    Attributes:
        column: the table column ("Train mem (MiB)").
        axis: the figure axis label.
        caption: a sentence for the table caption and the figure, saying what was measured.
    """

    column: str
    axis: str
    caption: str


# memory_kind -> how it reads. The first two are what lorabench records now (the peak above what
# the process held when training began); the others are older records' whole-process figures,
# which grow with every run one process did before, so they are never mixed with the first two.
MEMORY_KINDS = {
    "cpu_rss_peak_above_baseline": MemoryKind(
        "Train mem (MiB)",
        "peak memory above the pre-training baseline (MiB)",
        "Train mem: peak resident memory during training above what the process held when "
        "training began (CPU RSS).",
    ),
    "cuda_peak_above_baseline": MemoryKind(
        "Train mem (MiB)",
        "peak memory above the pre-training baseline (MiB)",
        "Train mem: peak CUDA memory allocated during training above what was allocated when "
        "training began.",
    ),
    "cpu_rss_peak": MemoryKind(
        "Process mem (MiB)",
        "whole-process peak RSS, older records (MiB)",
        "Process mem: older records' whole-process peak RSS (model, data and every earlier run "
        "of the process included; not comparable across runs).",
    ),
    "cuda_peak_allocated": MemoryKind(
        "CUDA mem (MiB)",
        "peak CUDA allocated incl. the model, older records (MiB)",
        "CUDA mem: older records' peak CUDA memory allocated, the model included.",
    ),
}


def memory_kind(kind: str) -> MemoryKind:
    """How a report shows ``kind`` (one this version does not know keeps its name)."""
    if kind in MEMORY_KINDS:
        return MEMORY_KINDS[kind]
    name = kind or "kind not recorded"
    return MemoryKind(f"Peak mem, {name} (MiB)", f"peak memory, {name} (MiB)", f"Peak mem: {name}.")


def is_adaptive_rank(record: RunRecord) -> bool:
    """Whether the run chose its own ranks: a variant with ``adaptive_rank`` (AdaLoRA), or a
    variant this process does not know whose final ranks are not all its nominal rank."""
    cls = variant_class(record.variant)
    if cls is not None:
        return bool(cls.adaptive_rank)
    return any(int(v) != record.rank for v in (record.ranks or {}).values())


def axis_rank(record: RunRecord) -> float:
    """Where a run sits on a rank axis: its nominal rank, or for an adaptive-rank run (see
    :func:`is_adaptive_rank`) the mean of its final per-matrix ranks (what the adapter ended
    with: AdaLoRA's target, give or take ties), never its initial rank. NaN when unknown (an
    adaptive run that recorded no final ranks, a run without a rank)."""
    if is_adaptive_rank(record):
        ranks = [float(v) for v in (record.ranks or {}).values()]
        return float(np.mean(ranks)) if ranks else np.nan
    return np.nan if record.rank is None else float(record.rank)


@dataclass
class ReportData:
    """Everything a report is built from.

    Attributes:
        runs: one row per finished, non-trial run (see :func:`runs_frame` for the columns).
        records: those runs' records, in the same order.
        trials: search-trial records of any status (for the search history).
        unfinished: failed and pruned non-trial records (listed so nothing silently vanishes).
        source: the database the data came from (for the report header).
        filters: the filters applied, for the header and the "what is missing" notes.
        notes: what is missing or odd, in plain sentences.
        score: which evaluation the ``score`` column holds (see :data:`SCORE_CHOICES`).
    """

    runs: pd.DataFrame
    records: list[RunRecord]
    trials: list[RunRecord]
    unfinished: list[RunRecord]
    source: str = ""
    filters: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    search_budgets: dict[str, str] = field(default_factory=dict)  # study -> its budget kind
    score: str = "final"

    @property
    def empty(self) -> bool:
        return not self.records and not self.trials

    def config_of(self, record: RunRecord) -> str:
        """The table row label of one of :attr:`records` (the plain label for anything else)."""
        match = self.runs.loc[self.runs["run_id"] == record.run_id, "config"]
        return str(match.iloc[0]) if len(match) else record_label(record)


def load_report_data(
    results: str | Path | ResultStore,
    *,
    tasks: Iterable[str] | None = None,
    variants: Iterable[str] | None = None,
    seeds: Iterable[int] | None = None,
    tag: str | None = None,
    score: str = "final",
) -> ReportData:
    """Reads the records matching the filters and says what is missing.

    ``results`` is a results database path/URL or an open store. A database that does not exist
    raises :class:`~lorabench.results.store.ResultStoreError`; an empty one gives empty data
    with notes saying so. ``score``: which evaluation each run's ``score`` column holds,
    ``"final"`` (the record's score) or ``"best"`` (:func:`best_score`; see
    :data:`SCORE_CHOICES`). Every evaluation stays in the records either way.
    """
    check_score_choice(score)
    filters = {
        "tasks": _list(tasks),
        "variants": _list(variants),
        "seeds": _list(seeds),
        "tag": tag,
    }
    store = results if isinstance(results, ResultStore) else ResultStore(results, create=False)
    try:
        everything = store.records(**filters, status=None)
        summary = store.summary()
        trials = [r for r in everything if (r.search or {}).get("role") == "trial"]
        search_budgets = _search_budgets(store.url) if trials else {}
    finally:
        if store is not results:
            store.close()
    main = [r for r in everything if (r.search or {}).get("role") != "trial"]
    finished = [
        r for r in main if r.status == "finished" and r.score is not None and math.isfinite(r.score)
    ]
    unfinished = [r for r in main if r.status != "finished"]
    data = ReportData(
        runs=runs_frame(finished, score=score),
        records=finished,
        trials=trials,
        unfinished=unfinished,
        source=store.name,
        filters=filters,
        search_budgets=search_budgets,
        score=score,
    )
    data.notes = missing_notes(data, summary) + score_notes(finished, score) + recipe_notes(data)
    return data


# -- which evaluation is the score ---------------------------------------------------------------
# ``--score`` choice -> what the report says it shows (the table caption, the HTML overview).
SCORE_CHOICES = {
    "final": "final evaluation",
    "best": "best evaluation on the dev split during training (optimistic: the same split "
    "picks and scores)",
}


def check_score_choice(score: str) -> None:
    """Raises ValueError for a ``score`` that is not one of :data:`SCORE_CHOICES`."""
    if score not in SCORE_CHOICES:
        raise ValueError(f"unknown score {score!r}; choose one of {', '.join(SCORE_CHOICES)}")


def score_caption(score: str) -> str:
    """``"score: final evaluation"``: which evaluation the report's scores are."""
    check_score_choice(score)
    return f"score: {SCORE_CHOICES[score]}"


def primary_key(record: RunRecord) -> str:
    """The key of the record's score in its metrics dicts: the primary metric, or with several
    eval splits ``"<first split>/<metric>"`` (as the trainer keys them). The record does not
    name its splits, so among the ``…/<metric>`` keys of the final evaluation the one holding
    the record's score is taken (the first of them on a tie)."""
    metric = record.primary_metric or "score"
    final = record.metrics or _last_metrics(record)
    if metric in final:
        return metric
    candidates = [k for k in final if k.endswith("/" + metric)]
    holding = [k for k in candidates if _finite(final[k]) and float(final[k]) == record.score]
    return (holding or candidates or [metric])[0]


def _last_metrics(record: RunRecord) -> Mapping[str, Any]:
    for point in reversed(record.curve or []):
        if point.metrics:
            return point.metrics
    return {}


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def evaluations(record: RunRecord) -> list[float]:
    """The primary metric at every evaluation the curve recorded (finite values only), in
    step order; the final evaluation is the last."""
    key = primary_key(record)
    return [
        float(p.metrics[key])
        for p in record.curve or []
        if p.metrics and key in p.metrics and _finite(p.metrics[key])
    ]


def intermediate_evaluations(record: RunRecord) -> int:
    """How many evaluations the run did during training, the final one aside."""
    return max(0, len(evaluations(record)) - 1)


def best_score(record: RunRecord) -> float:
    """The best primary metric over the run's evaluations (the highest, or the lowest for a
    lower-is-better metric), the final score included: a run never evaluated during training
    keeps its final score."""
    values = [float(record.score), *evaluations(record)]  # type: ignore[arg-type]
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return float(record.score)  # type: ignore[arg-type]
    return max(values) if record.higher_is_better else min(values)


def run_score(record: RunRecord, score: str = "final") -> float:
    """The run's score as the report shows it: the final evaluation or :func:`best_score`."""
    check_score_choice(score)
    return best_score(record) if score == "best" else float(record.score)  # type: ignore[arg-type]


def recipe_notes(data: ReportData) -> list[str]:
    """A note when the rows of one table trained with different recipes (a per-variant
    ``train:`` in the suite, ``--train VARIANT.SETTING=VALUE``): which rows used what, for the
    settings not shared by every row. Empty when every row trained alike."""
    if data.runs.empty:
        return []
    by_row: dict[str, dict[str, str]] = {}
    for record in data.records:
        by_row.setdefault(data.config_of(record), _train_recipe(record))
    rows = list(by_row)
    differing = sorted(
        {k for r in by_row.values() for k in r}
        - _same_everywhere(list(by_row.values()), list(range(len(rows))))
    )
    if not differing:
        return []
    parts = [
        f"{row}: "
        + ", ".join(f"{k.removeprefix('train.')}={by_row[row].get(k, '-')}" for k in differing)
        for row in rows
    ]
    return [
        "The rows trained with different recipes (the suite gave some variants their own "
        "training settings): " + "; ".join(parts) + "."
    ]


def score_notes(records: list[RunRecord], score: str) -> list[str]:
    """What the ``best`` score could not do: runs never evaluated during training keep their
    final score; nothing to say for ``final``."""
    if score != "best" or not records:
        return []
    without = [r for r in records if intermediate_evaluations(r) == 0]
    notes = []
    if len(without) == len(records):
        notes.append("best = final: no run evaluated during training (set --eval-every).")
    elif without:
        notes.append(
            f"{len(without)} of {len(records)} run(s) were not evaluated during training; their "
            "best score is their final score (set --eval-every)."
        )
    if any(r.rank_scores for r in records):
        notes.append(
            "The one-run curves over eval ranks (score vs rank) are final evaluations; the rows "
            "show the best evaluation."
        )
    return notes


def _search_budgets(url: str) -> dict[str, str]:
    """study -> the kind of its spend budget (steps, tokens, seconds, flops), from the search
    summaries ``lorabench search`` leaves in the results database; empty when there are none."""
    try:
        from lorabench.search.summary import load_search_summaries

        summaries = load_search_summaries(url)
    except Exception:  # no optuna, or an older database: the search history falls back to steps
        return {}
    return {
        str(s.get("study")): str((s.get("budget") or {}).get("kind") or "steps") for s in summaries
    }


def _list(values: Iterable[Any] | None) -> list[Any] | None:
    if values is None:
        return None
    values = [values] if isinstance(values, str | int) else list(values)
    return values or None


def _metric_record(metric: str) -> Metric | None:
    """The metric's record (``"validation/accuracy"`` is accuracy); None for a metric this
    process does not know (a record from another tool or a plugin not installed)."""
    try:
        return get_metric(metric.rsplit("/", 1)[-1])
    except KeyError:
        return None


def is_percent(metric: str) -> bool:
    """Whether papers print this metric x100, as its record says."""
    record = _metric_record(metric)
    return record is not None and record.percent


def metric_label(metric: str) -> str:
    """The metric's short column label ("Acc", "F1", "Mcc"), as its record says."""
    record = _metric_record(metric)
    return record.short if record is not None else metric


def metric_value(metrics: Mapping[str, Any] | None, metric: str) -> float | None:
    """The primary metric in a metrics dict: ``metric`` itself, ``score``, or ``SPLIT/metric``."""
    if not metrics:
        return None
    for key in (metric, "score"):
        if key in metrics and metrics[key] is not None:
            return float(metrics[key])
    for key, value in metrics.items():
        if key.endswith("/" + metric) and value is not None:
            return float(value)
    return None


def runs_frame(records: list[RunRecord], score: str = "final") -> pd.DataFrame:
    """One row per record: identity, row label, score in display units and resources.

    ``score`` is the record's final score, or with ``score="best"`` the best evaluation during
    training (:func:`run_score`).

    ``display`` is the score as papers print it (x100 for accuracy-like metrics). ``config`` is
    the row label (:func:`row_labels`), ``series`` the same label without the rank (the runs of
    one score-vs-rank line), ``rank_label`` the rank part alone ("r=12→8"). ``axis_rank`` is
    where the run sits on a rank axis (:func:`axis_rank`: an adaptive-rank run at its final mean
    rank), ``peak_memory_mb`` the memory in MiB of the kind ``memory_kind`` names (see
    :data:`MEMORY_KINDS`).
    """
    rows = []
    for r in records:
        memory = r.spent.get("peak_memory_bytes")
        rows.append(
            {
                "run_id": r.run_id,
                "variant": r.variant,
                "rank": r.rank,
                "task": r.task,
                "seed": r.seed,
                "model": r.model,
                "budget": _budget_label(r.budget),
                "data_fingerprint": r.data_fingerprint or "",
                "model_fingerprint": r.model_fingerprint or "",
                "metric": r.primary_metric or "score",
                "higher_is_better": bool(r.higher_is_better),
                "score": run_score(r, score),
                "percent": is_percent(r.primary_metric or ""),
                "adapter_params": r.adapter_params or np.nan,
                "trainable_params": r.trainable_params or np.nan,
                "total_params": r.total_params or np.nan,
                "train_seconds": _float(r.spent.get("train_seconds")),
                "peak_memory_mb": np.nan if memory is None else float(memory) / 2**20,
                "memory_kind": str(r.spent.get("memory_kind") or ""),
                "adapter_kb": r.adapter_bytes / 1024 if r.adapter_bytes else np.nan,
                "steps": _float(r.spent.get("steps")),
                "axis_rank": axis_rank(r),
                "adaptive_rank": is_adaptive_rank(r),
            }
        )
    columns = [
        "run_id", "variant", "rank", "task", "seed", "model", "budget", "data_fingerprint",
        "model_fingerprint", "metric", "higher_is_better", "score", "percent", "adapter_params",
        "trainable_params", "total_params", "train_seconds", "peak_memory_mb", "memory_kind",
        "adapter_kb", "steps", "axis_rank", "adaptive_rank",
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=columns)
    frame["axis_rank"] = frame["axis_rank"].astype(float)
    frame["adaptive_rank"] = frame["adaptive_rank"].astype(bool)
    frame["rank"] = frame["rank"].astype("Int64")
    frame["display"] = np.where(frame["percent"], frame["score"] * 100, frame["score"])
    labels = row_labels(records)
    frame["config"] = [label.config for label in labels]
    frame["series"] = [label.series for label in labels]
    frame["rank_label"] = [label.rank for label in labels]
    frame["data_tag"] = [label.data_tag for label in labels]
    frame["model_tag"] = [label.model_tag for label in labels]
    frame["config_order"] = [
        (*variant_sort_key(v), -1 if pd.isna(k) else int(k))
        for v, k in zip(frame["variant"], frame["rank"], strict=True)
    ]
    return frame


@dataclass(frozen=True)
class RowLabel:
    """The labels of one record's report row.

    Attributes:
        config: the row label, ``"AdaLoRA r=12→8 [data not recorded] (lr=0.001)"``.
        series: the same without the rank part: the score-vs-rank line the row belongs to.
        rank: the rank part alone, from the config only (``"r=12→8"``; "" when unknown).
        data_tag: ``"data 1a2b3c4d"`` when the row is tagged with its data fingerprint, else "".
        model_tag: ``"model 1a2b3c4d"`` likewise for the model fingerprint.
    """

    config: str
    series: str
    rank: str
    data_tag: str = ""
    model_tag: str = ""


# Training settings that change when or how fast a run is evaluated, never its score.
_NON_SCORING_TRAIN = frozenset({"eval_batch_size", "eval_every"})
_SHORT_KEYS = {"train.learning_rate": "lr", "train.head_learning_rate": "head_lr"}
MAX_SUFFIX_ITEMS = 3  # settings named in a row label; more get a short hash instead


def row_labels(records: list[RunRecord]) -> list[RowLabel]:
    """Per record, the label of the report row it is a seed of.

    Records share a row exactly when they share the variant, its resolved settings, the
    training recipe, the model name and fingerprint, the budget and (per task) the data
    fingerprint. The label is the variant's own (:func:`record_label`, with the final ranks
    averaged over the row's runs of every task), then a bracketed tag for what tells rows of
    otherwise equal settings apart (the model or budget when several are mixed; the model or
    data fingerprint when runs of one model or task read different ones: the fingerprint most
    of them read stays untagged), then the settings in which one variant's rows differ.
    """
    if not records:
        return []
    resolved = [resolved_variant_config(r) for r in records]
    recipes = [recipe(r) for r in records]
    keys = [_row_key(r, cfg) for r, cfg in zip(records, resolved, strict=True)]
    # Final ranks averaged per matrix over the runs of one config (all tasks, all seeds), so
    # that one config reads the same in every task column.
    pooled: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for key, r in zip(keys, records, strict=True):
        for matrix, value in (r.ranks or {}).items():
            pooled[key][matrix].append(float(value))
    mean_ranks = {
        k: {m: float(np.mean(v)) for m, v in ranks.items()} for k, ranks in pooled.items()
    }

    tags = _tags(records)
    suffixes = recipe_suffixes(records, [r.variant for r in records], recipes)
    out: list[RowLabel] = []
    for i, r in enumerate(records):
        cls = variant_class(r.variant)
        name = cls.report_name(resolved[i]) if cls is not None else r.variant
        tag_text = f" [{', '.join(tags[i].values())}]" if tags[i] else ""
        rank_part = rank_label(r, mean_ranks.get(keys[i]) or None)
        config = " ".join(p for p in (name, rank_part) if p) + tag_text + suffixes[i]
        out.append(
            RowLabel(
                config,
                name + tag_text + suffixes[i],
                rank_label(r),
                data_tag=tags[i].get("data", ""),
                model_tag=tags[i].get("model_fingerprint", ""),
            )
        )
    return _disambiguated(out, keys, records)


def _row_key(record: RunRecord, resolved: Mapping[str, Any]) -> str:
    """What makes runs seeds of one config (the task and its data aside)."""
    identity = {
        "variant": record.variant,
        "rank": record.rank,
        "variant_config": {str(k): _setting(v) for k, v in resolved.items() if k != "seed"},
        "train": _train_recipe(record),
        "model": record.model,
        "model_fingerprint": record.model_fingerprint or "",
        "budget": _budget_label(record.budget),
    }
    return config_hash(identity)


def _tags(records: list[RunRecord]) -> list[dict[str, str]]:
    """Per record, the bracketed tags of its row, in order: the model (when several are mixed),
    its fingerprint, the budget (when several are mixed) and the data fingerprint (see
    :func:`_odd_fingerprints` for when a fingerprint is shown)."""
    tags: list[dict[str, str]] = [{} for _ in records]
    models = {r.model for r in records}
    budgets = {_budget_label(r.budget) for r in records}
    odd_model = _odd_fingerprints(records, lambda r: r.model, lambda r: r.model_fingerprint)
    odd_data = _odd_fingerprints(records, lambda r: r.task, lambda r: r.data_fingerprint)
    for i, r in enumerate(records):
        if len(models) > 1:
            tags[i]["model"] = _short(r.model)
        if i in odd_model:
            tags[i]["model_fingerprint"] = f"model {short_fingerprint(r.model_fingerprint)}"
        if len(budgets) > 1:
            tags[i]["budget"] = _budget_label(r.budget)
        if i in odd_data:
            tags[i]["data"] = f"data {short_fingerprint(r.data_fingerprint)}"
    return tags


def _odd_fingerprints(
    records: list[RunRecord],
    group: Callable[[RunRecord], Any],
    fingerprint: Callable[[RunRecord], str],
) -> set[int]:
    """Indices of records whose fingerprint is not the one most records of their group (model
    name, task) have: those rows get a tag. Ties go to the most recently finished."""
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_group[str(group(r))].append(i)
    odd: set[int] = set()
    for indices in by_group.values():
        prints = {fingerprint(records[i]) or "" for i in indices}
        if len(prints) < 2:
            continue
        main = _majority_fingerprint(records, indices, fingerprint)
        odd.update(i for i in indices if (fingerprint(records[i]) or "") != main)
    return odd


def _majority_fingerprint(
    records: list[RunRecord], indices: list[int], fingerprint: Callable[[RunRecord], str]
) -> str:
    counts: dict[str, int] = defaultdict(int)
    latest: dict[str, str] = defaultdict(str)
    for i in indices:
        value = fingerprint(records[i]) or ""
        counts[value] += 1
        latest[value] = max(latest[value], records[i].finished_at or "")
    return max(counts, key=lambda v: (counts[v], latest[v], v))


def _disambiguated(
    labels: list[RowLabel], keys: list[str], records: list[RunRecord]
) -> list[RowLabel]:
    """Appends ``#abcd`` to labels that different configs share (e.g. two plugins printing the
    same name): a row label must name exactly one config."""
    owners: dict[tuple[str, str], set[str]] = defaultdict(set)
    for label, key, r in zip(labels, keys, records, strict=True):
        owners[(label.config, r.task)].add(key + (r.data_fingerprint or ""))
        owners[(label.config, "")].add(key)
    clashing = {config for (config, _), owned in owners.items() if len(owned) > 1}
    if not clashing:
        return labels
    out = []
    for label, key in zip(labels, keys, strict=True):
        if label.config in clashing:
            mark = f" #{key[:4]}"
            label = dataclasses.replace(
                label, config=label.config + mark, series=label.series + mark
            )
        out.append(label)
    return out


def recipe(record: RunRecord) -> dict[str, str]:
    """What decides a run's score besides its variant, rank, task, seed, model and budget: the
    variant's resolved settings (those its label does not already show) and the training
    recipe, as ``{"alpha": "32", "train.learning_rate": ...}``."""
    cls = variant_class(record.variant)
    shown = cls.label_fields if cls is not None else frozenset({"r"})
    out = {
        str(k): _setting(v)
        for k, v in resolved_variant_config(record).items()
        if k not in shown and k != "seed"
    }
    adapted = (record.config or {}).get("adapted_modules")
    if adapted and "target_modules" in out:
        # The modules the run adapted ("auto" chose them for its model), not the request.
        out["target_modules"] = _setting(adapted)
    out.update(_train_recipe(record))
    return out


def _train_recipe(record: RunRecord) -> dict[str, str]:
    train = (record.config or {}).get("train") or {}
    return {f"train.{k}": _setting(v) for k, v in train.items() if k not in _NON_SCORING_TRAIN}


def _setting(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def recipe_suffixes(
    records: list[RunRecord], variants: list[str], recipes: list[dict[str, str]] | None = None
) -> list[str]:
    """Per record, "" or " (k=v, ...)" naming the settings in which its variant's runs differ.

    Computed per variant (not per rank) so that one variant's rows across ranks share a suffix
    and a score-vs-rank series stays one line.
    """
    recipes = [recipe(r) for r in records] if recipes is None else recipes
    by_variant: dict[str, list[int]] = {}
    for i, variant in enumerate(variants):
        by_variant.setdefault(variant, []).append(i)
    suffixes = [""] * len(records)
    for indices in by_variant.values():
        distinct = {tuple(sorted(recipes[i].items())) for i in indices}
        if len(distinct) < 2:
            continue
        differing = {k for i in indices for k in recipes[i]} - _same_everywhere(recipes, indices)
        keys = sorted(differing, key=_key_order)
        for i in indices:
            items = [
                f"{_SHORT_KEYS.get(k, k.removeprefix('train.'))}={recipes[i].get(k, '-')}"
                for k in keys
            ]
            text = ", ".join(items[:MAX_SUFFIX_ITEMS])
            if (
                len(items) > MAX_SUFFIX_ITEMS
            ):  # the hash keeps rows apart that differ in hidden settings
                text += f", … #{config_hash(recipes[i])[:4]}"
            suffixes[i] = f" ({text})"
    return suffixes


def _same_everywhere(recipes: list[dict[str, str]], indices: list[int]) -> set[str]:
    keys = {k for i in indices for k in recipes[i]}
    return {k for k in keys if len({recipes[i].get(k) for i in indices}) == 1}


def _key_order(key: str) -> tuple[int, str]:
    """The learning rate first (what a search most often changes), then variant, then training."""
    return (0 if key == "train.learning_rate" else 2 if key.startswith("train.") else 1, key)


def _budget_label(budget: Mapping[str, Any]) -> str:
    if not budget or "kind" not in budget:
        return ""
    limit = budget.get("limit")
    if isinstance(limit, int | float):
        return f"{budget['kind']}={limit:g}"
    return f"{budget['kind']}={limit}"


def _short(text: str) -> str:
    return Path(str(text)).name or str(text)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def ordered_tasks(tasks: Iterable[str]) -> list[str]:
    """GLUE order first, then the rest alphabetically."""
    known = {name: i for i, name in enumerate(TASK_ORDER)}
    return sorted(set(tasks), key=lambda t: (known.get(t, len(known)), t))


def ordered_configs(runs: pd.DataFrame) -> list[str]:
    """Row order: variants by their ``report_order`` (then unordered ones by name), rank
    ascending within a variant."""
    if runs.empty:
        return []
    firsts = runs.drop_duplicates("config").sort_values(["config_order", "config"])
    return firsts["config"].tolist()


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof=1) over seeds, per (config, task).

    Columns: config, series, variant, model, rank, rank_label, axis_rank (the mean over seeds
    of :func:`axis_rank`), adaptive_rank, task, metric, percent, higher_is_better, mean, std
    (NaN for one seed), n, seeds, and the means of adapter/trainable/total params, train
    seconds, peak memory (MiB; NaN when the runs recorded different ``memory_kind``s, which
    names them) and adapter size (KiB). ``mean``/``std`` are in display units.
    """
    columns = [
        "config", "series", "variant", "model", "rank", "rank_label", "axis_rank",
        "adaptive_rank", "task", "metric", "percent", "higher_is_better", "mean", "std", "n",
        "seeds", "adapter_params", "trainable_params", "total_params", "train_seconds",
        "peak_memory_mb", "memory_kind", "adapter_kb",
    ]  # fmt: skip
    if runs.empty:
        return pd.DataFrame(columns=columns)
    grouped = runs.groupby(["config", "task"], sort=False)
    out = grouped.agg(
        series=("series", "first"),
        variant=("variant", "first"),
        model=("model", "first"),
        rank=("rank", "first"),
        rank_label=("rank_label", "first"),
        axis_rank=("axis_rank", "mean"),
        adaptive_rank=("adaptive_rank", "first"),
        metric=("metric", "first"),
        percent=("percent", "first"),
        higher_is_better=("higher_is_better", "first"),
        mean=("display", "mean"),
        std=("display", "std"),
        n=("display", "size"),
        seeds=("seed", lambda s: sorted({int(x) for x in s})),
        adapter_params=("adapter_params", "mean"),
        trainable_params=("trainable_params", "mean"),
        total_params=("total_params", "mean"),
        train_seconds=("train_seconds", "mean"),
        peak_memory_mb=("peak_memory_mb", "mean"),
        memory_kind=("memory_kind", lambda k: ", ".join(sorted({str(x) for x in k if x}))),
        adapter_kb=("adapter_kb", "mean"),
    ).reset_index()
    # Memory of different kinds (an older record's whole-process figure beside a new one) has no
    # meaningful mean.
    out.loc[out["memory_kind"].str.contains(","), "peak_memory_mb"] = np.nan
    return out[columns]


def missing_notes(data: ReportData, summary: Mapping[str, Any]) -> list[str]:
    """Plain sentences on what the report lacks or mixes: no runs, filters matching nothing,
    missing cells, fewer seeds than elsewhere, runs that read different data or model files,
    failed or pruned runs."""
    notes: list[str] = []
    f = data.filters
    if summary.get("runs", 0) == 0:
        notes.append(
            f"The results database {data.source} holds no runs yet. Run 'lorabench run' (or "
            "'lorabench search') with --results pointing at it, then report again."
        )
        return notes
    for key, present in (("tasks", "task"), ("variants", "variant"), ("seeds", "seed")):
        unknown = [v for v in (f.get(key) or []) if v not in summary.get(present, [])]
        if unknown:
            notes.append(
                f"No runs at all for {key} {', '.join(map(str, unknown))}; the database has "
                f"{', '.join(map(str, summary.get(present, [])))}."
            )
    if f.get("tag") is not None and f["tag"] not in summary.get("tag", []):
        present_tags = ", ".join(repr(t) for t in summary.get("tag", []))
        notes.append(f"No runs have tag {f['tag']!r}; tags present: {present_tags}.")
    if not data.records:
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(summary.get("status", {}).items()))
        notes.append(
            f"No finished runs match the filters (the database has {statuses} run(s) in all)."
        )
    runs = data.runs
    if not runs.empty:
        tasks = ordered_tasks(runs["task"])
        all_seeds = sorted(set(runs["seed"]))
        # Configs lacking the same tasks share one sentence, so a sparse grid stays readable.
        lacking_tasks: dict[tuple[str, ...], list[str]] = {}
        for config in ordered_configs(runs):
            mine = runs[runs["config"] == config]
            absent = tuple(t for t in tasks if t not in set(mine["task"]))
            if absent:
                lacking_tasks.setdefault(absent, []).append(config)
        for absent, configs in lacking_tasks.items():
            notes.append(
                f"{', '.join(configs)}: no finished run on {', '.join(absent)} "
                f"(cells shown as '{MISSING_CELL}')."
            )
        for config in ordered_configs(runs):
            mine = runs[runs["config"] == config]
            for task in tasks:
                seeds = set(mine.loc[mine["task"] == task, "seed"])
                if seeds and len(all_seeds) > 1 and seeds != set(all_seeds):
                    lacking = sorted(set(all_seeds) - seeds)
                    notes.append(
                        f"{config} on {task}: {len(seeds)} of {len(all_seeds)} seeds (missing seed "
                        f"{', '.join(map(str, lacking))})."
                    )
        notes += fingerprint_notes(runs)
        notes += adapted_module_notes(data.records)
    for record in data.unfinished:
        error = (record.error or "").strip()
        reason = error.splitlines()[0][:200] if error else "no error recorded"
        notes.append(
            f"{record_label(record)} on {record.task}, seed {record.seed}: {record.status} "
            f"({reason}); not in the tables."
        )
    return notes


MISSING_CELL = "\u2013"  # an en dash, as papers mark a missing cell


def adapted_module_notes(records: list[RunRecord]) -> list[str]:
    """One line per model: the modules its runs adapted (what ``target_modules`` chose), with
    the number of adapted matrices; records written before this was recorded are left out."""
    seen: dict[str, set[tuple[str, int]]] = {}
    for record in records:
        config = record.config or {}
        if config.get("adapted_modules"):
            patterns = ", ".join(map(str, config["adapted_modules"]))
            seen.setdefault(record.model, set()).add(
                (patterns, int(config.get("adapted_module_count") or 0))
            )
    notes = []
    for model, choices in sorted(seen.items()):
        described = "; ".join(f"{p} ({n} matrices)" for p, n in sorted(choices))
        notes.append(f"Adapted modules on {model}: {described}.")
    return notes


def fingerprint_notes(runs: pd.DataFrame) -> list[str]:
    """One sentence per task whose runs read different data, and per model whose runs loaded
    different files (their fingerprints differ), naming the fingerprints and how many runs read
    each. Such runs are never seeds of one row; rows of a fingerprint other than the one most
    runs read carry a ``[data …]`` / ``[model …]`` tag."""
    notes = []
    for column, group, what, tag in (
        ("data_fingerprint", "task", "data", "data"),
        ("model_fingerprint", "model", "model files", "model"),
    ):
        for name in sorted(set(runs[group])):
            mine = runs[runs[group] == name]
            counts = mine[column].fillna("").value_counts()
            if len(counts) < 2:
                continue
            tag_column = f"{tag}_tag"
            parts = []
            for fingerprint, n in counts.items():
                short = short_fingerprint(str(fingerprint))
                tagged = bool((mine.loc[mine[column].fillna("") == fingerprint, tag_column]).any())
                where = f"rows tagged [{tag} {short}]" if tagged else "untagged rows"
                if not fingerprint:
                    where += "; written before fingerprints were recorded"
                parts.append(f"{short} ({n} run(s), {where})")
            notes.append(
                f"{_short(str(name))}: the runs read {len(counts)} different {what} "
                f"(fingerprints {'; '.join(parts)}). Runs of different {what} are never "
                "averaged together; compare their rows with care."
            )
    return notes


# -- module names of adapted matrices ------------------------------------------------------------
_LAYER_RE = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.(.+)$")


def split_module_name(name: str) -> tuple[int, str] | None:
    """``"bert.encoder.layer.3.attention.self.query"`` -> ``(3, "attention.self.query")``.

    Works for BERT/RoBERTa (``.layer.N.``), Llama/Mistral (``.layers.N.``), GPT-2 (``.h.N.``) and
    ViT-like ``.blocks.N.``; None when the name has no layer index.
    """
    match = _LAYER_RE.search(name)
    return None if match is None else (int(match.group(1)), match.group(2))


def short_matrix_labels(matrices: Iterable[str]) -> dict[str, str]:
    """The shortest dotted suffix that still tells each matrix apart ("attention.self.query" ->
    "query", but "output.dense" and "attention.output.dense" stay distinct)."""
    names = sorted(set(matrices))
    labels: dict[str, str] = {}
    for name in names:
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            suffix = ".".join(parts[-k:])
            clashes = [o for o in names if o != name and (o == suffix or o.endswith("." + suffix))]
            if not clashes:
                labels[name] = suffix
                break
        else:
            labels[name] = name
    return labels
