"""Loading run records for a report and aggregating them over seeds.

A report row is a *variant config*: the variant plus its rank ("LoRA r=8"), as in the
LoRA/AdaLoRA papers' tables. How a variant is named and how its rank reads ("AdaLoRA r=12→8",
"DyLoRA r≤8") are facts of the variant (:meth:`~lorabench.variants.Variant.report_name`,
:meth:`~lorabench.variants.Variant.rank_label`), computed from each record's resolved config;
a record of a variant this process does not know keeps its registered name and ``r=<rank>``.
The labels are computed in :mod:`lorabench.results.labels`, shared with ``load_results``.

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

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# How runs are labelled lives with the records (lorabench.results.labels, layer 3), so that
# load_results labels a run exactly as a report does.
from lorabench.results.labels import (  # noqa: F401 (the report modules import them from here)
    FINGERPRINT_CHARS,
    MAX_SUFFIX_ITEMS,
    NOT_RECORDED,
    RowLabel,
    axis_rank,
    best_score,
    evaluations,
    intermediate_evaluations,
    is_adaptive_rank,
    primary_key,
    rank_label,
    recipe,
    recipe_suffixes,
    record_label,
    resolved_variant_config,
    row_labels,
    short_fingerprint,
    stored_variant_config,
    variant_class,
    variant_name,
    variant_position,
    variant_sort_key,
)
from lorabench.results.labels import budget_label as _budget_label
from lorabench.results.labels import same_everywhere as _same_everywhere
from lorabench.results.labels import short_name as _short
from lorabench.results.labels import train_recipe as _train_recipe
from lorabench.results.records import RunRecord
from lorabench.results.store import ResultStore
from lorabench.tasks.metrics import Metric, get_metric

# GLUE's usual column order; other tasks follow alphabetically.
TASK_ORDER = (
    "cola", "sst2", "sst-2", "mrpc", "qqp", "stsb", "sts-b", "mnli", "qnli", "rte", "wnli",
)  # fmt: skip


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
        "The rows trained with different recipes (the variants' paper recipes, `recipes: "
        "paper`, or their own `train:` settings in the suite): " + "; ".join(parts) + "."
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
