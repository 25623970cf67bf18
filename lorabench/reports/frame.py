"""Loading run records for a report and aggregating them over seeds.

A report row is a *variant config*: the variant plus its nominal rank ("LoRA r=8"), as in the
LoRA/AdaLoRA papers' tables. When runs of one variant differ in anything else that changes the score
(another learning rate, alpha, AdaLoRA schedule: a search's confirmation runs beside a plain run),
each row names what differs ("LoRA r=2 (alpha=32, lr=0.000416)") so that different experiments are
never averaged together as if they were seeds of one. Search trials (``search.role == "trial"``) are excluded from the
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

from lorabench.results.records import RunRecord, config_hash
from lorabench.results.store import ResultStore

# How papers print variant names; unknown (plugin) variants keep their registry name.
VARIANT_NAMES = {"lora": "LoRA", "dora": "DoRA", "adalora": "AdaLoRA", "dylora": "DyLoRA", "vera": "VeRA"}
VARIANT_ORDER = ("lora", "dora", "adalora", "dylora", "vera")
# Bounded metrics that papers print x100 with one decimal (accuracy, F1, MCC, correlations).
PERCENT_METRICS = frozenset({"accuracy", "f1", "f1_macro", "matthews", "mcc", "pearson", "spearman", "auc"})
# GLUE's usual column order; other tasks follow alphabetically.
TASK_ORDER = ("cola", "sst2", "sst-2", "mrpc", "qqp", "stsb", "sts-b", "mnli", "qnli", "rte", "wnli")
METRIC_LABELS = {"accuracy": "Acc", "f1": "F1", "f1_macro": "F1", "matthews": "Mcc", "pearson": "Corr",
                 "spearman": "Corr", "mse": "MSE"}  # fmt: skip


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
    """

    runs: pd.DataFrame
    records: list[RunRecord]
    trials: list[RunRecord]
    unfinished: list[RunRecord]
    source: str = ""
    filters: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    search_budgets: dict[str, str] = field(default_factory=dict)  # study -> its budget kind

    @property
    def empty(self) -> bool:
        return not self.records and not self.trials

    def config_of(self, record: RunRecord) -> str:
        """The table row label of one of :attr:`records` (the plain label for anything else)."""
        match = self.runs.loc[self.runs["run_id"] == record.run_id, "config"]
        return str(match.iloc[0]) if len(match) else config_label(record.variant, record.rank)


def load_report_data(
    results: str | Path | ResultStore,
    *,
    tasks: Iterable[str] | None = None,
    variants: Iterable[str] | None = None,
    seeds: Iterable[int] | None = None,
    tag: str | None = None,
) -> ReportData:
    """Reads the records matching the filters and says what is missing.

    ``results`` is a results database path/URL or an open store. A database that does not exist
    raises :class:`~lorabench.results.store.ResultStoreError`; an empty one gives empty data
    with notes saying so.
    """
    filters = {"tasks": _list(tasks), "variants": _list(variants), "seeds": _list(seeds), "tag": tag}
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
    finished = [r for r in main if r.status == "finished" and r.score is not None and math.isfinite(r.score)]
    unfinished = [r for r in main if r.status != "finished"]
    data = ReportData(
        runs=runs_frame(finished), records=finished, trials=trials, unfinished=unfinished,
        source=store.name, filters=filters, search_budgets=search_budgets,
    )  # fmt: skip
    data.notes = missing_notes(data, summary)
    return data


def _search_budgets(url: str) -> dict[str, str]:
    """study -> the kind of its spend budget (steps, tokens, seconds, flops), from the search
    summaries ``lorabench search`` leaves in the results database; empty when there are none."""
    try:
        from lorabench.search.summary import load_search_summaries

        summaries = load_search_summaries(url)
    except Exception:  # no optuna, or an older database: the search history falls back to steps
        return {}
    return {str(s.get("study")): str((s.get("budget") or {}).get("kind") or "steps") for s in summaries}


def _list(values: Iterable[Any] | None) -> list[Any] | None:
    if values is None:
        return None
    values = [values] if isinstance(values, str | int) else list(values)
    return values or None


def variant_name(variant: str) -> str:
    return VARIANT_NAMES.get(variant, variant)


def config_label(variant: str, rank: int | None) -> str:
    """The row key of the tables: ``"LoRA r=8"`` (just the name when the rank is unknown)."""
    return variant_name(variant) if rank is None else f"{variant_name(variant)} r={rank}"


def is_percent(metric: str) -> bool:
    """Whether papers print this metric x100 (``"validation/accuracy"`` counts as accuracy)."""
    return metric.rsplit("/", 1)[-1] in PERCENT_METRICS


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


def runs_frame(records: list[RunRecord]) -> pd.DataFrame:
    """One row per record: identity, config label, score in display units and resources.

    ``display`` is the score as papers print it (x100 for accuracy-like metrics); ``config`` is
    the row label, suffixed with the model or budget when runs of several models/budgets are mixed.
    """
    rows = []
    for r in records:
        memory = r.spent.get("peak_memory_bytes")
        rows.append(
            {
                "run_id": r.run_id, "variant": r.variant, "rank": r.rank, "task": r.task, "seed": r.seed,
                "model": r.model, "budget": _budget_label(r.budget), "metric": r.primary_metric or "score",
                "higher_is_better": bool(r.higher_is_better), "score": float(r.score),  # type: ignore[arg-type]
                "percent": is_percent(r.primary_metric or ""),
                "adapter_params": r.adapter_params or np.nan, "trainable_params": r.trainable_params or np.nan,
                "total_params": r.total_params or np.nan,
                "train_seconds": _float(r.spent.get("train_seconds")),
                "peak_memory_mb": np.nan if memory is None else float(memory) / 2**20,
                "memory_kind": r.spent.get("memory_kind") or "",
                "adapter_kb": r.adapter_bytes / 1024 if r.adapter_bytes else np.nan,
                "steps": _float(r.spent.get("steps")),
            }
        )  # fmt: skip
    columns = ["run_id", "variant", "rank", "task", "seed", "model", "budget", "metric", "higher_is_better",
               "score", "percent", "adapter_params", "trainable_params", "total_params", "train_seconds",
               "peak_memory_mb", "memory_kind", "adapter_kb", "steps"]  # fmt: skip
    frame = pd.DataFrame(rows, columns=columns)
    frame["rank"] = frame["rank"].astype("Int64")
    frame["display"] = np.where(frame["percent"], frame["score"] * 100, frame["score"])
    frame["config"] = [
        config_label(v, None if pd.isna(k) else int(k)) for v, k in zip(frame["variant"], frame["rank"])
    ]
    # Runs of different models or budgets are different experiments: keep them on separate rows.
    for column in ("model", "budget"):
        if frame[column].nunique() > 1:
            frame["config"] = frame["config"] + " [" + frame[column].map(_short) + "]"
    frame["config"] = frame["config"] + recipe_suffixes(records, frame["variant"].tolist())
    frame["config_order"] = [_config_sort_key(v, k) for v, k in zip(frame["variant"], frame["rank"])]
    return frame


# Training settings that change when or how fast a run is evaluated, never its score.
_NON_SCORING_TRAIN = frozenset({"eval_batch_size", "eval_every"})
# Variant fields that hold the nominal rank (VariantConfig.nominal_rank): already in the label.
_RANK_FIELDS = frozenset({"r", "init_r"})
_SHORT_KEYS = {"train.learning_rate": "lr", "train.head_learning_rate": "head_lr"}
MAX_SUFFIX_ITEMS = 3  # settings named in a row label; more get a short hash instead


def recipe(record: RunRecord) -> dict[str, str]:
    """What decides a run's score besides its variant, rank, task, seed, model and budget: the
    variant's resolved settings and the training recipe, as ``{"alpha": "32", "train.lr": ...}``."""
    config = record.config or {}
    variant_config = config.get("resolved_variant_config") or config.get("variant_config") or {}
    out = {str(k): _setting(v) for k, v in variant_config.items() if k not in _RANK_FIELDS and k != "seed"}
    for key, value in (config.get("train") or {}).items():
        if key not in _NON_SCORING_TRAIN:
            out[f"train.{key}"] = _setting(value)
    return out


def _setting(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def recipe_suffixes(records: list[RunRecord], variants: list[str]) -> list[str]:
    """Per record, "" or " (k=v, ...)" naming the settings in which its variant's runs differ.

    Computed per variant (not per rank) so that one variant's rows across ranks share a suffix and
    a score-vs-rank series stays one line.
    """
    recipes = [recipe(r) for r in records]
    by_variant: dict[str, list[int]] = {}
    for i, variant in enumerate(variants):
        by_variant.setdefault(variant, []).append(i)
    suffixes = [""] * len(records)
    for indices in by_variant.values():
        distinct = {tuple(sorted(recipes[i].items())) for i in indices}
        if len(distinct) < 2:
            continue
        keys = sorted({k for i in indices for k in recipes[i]} - _same_everywhere(recipes, indices), key=_key_order)
        for i in indices:
            items = [f"{_SHORT_KEYS.get(k, k.removeprefix('train.'))}={recipes[i].get(k, '-')}" for k in keys]
            text = ", ".join(items[:MAX_SUFFIX_ITEMS])
            if len(items) > MAX_SUFFIX_ITEMS:  # the hash keeps rows apart that differ in hidden settings
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
    return f"{budget['kind']}={limit:g}" if isinstance(limit, int | float) else f"{budget['kind']}={limit}"


def _short(text: str) -> str:
    return Path(str(text)).name or str(text)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def _config_sort_key(variant: str, rank: Any) -> tuple[int, str, int]:
    position = VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER)
    return (position, variant, -1 if pd.isna(rank) else int(rank))


def ordered_tasks(tasks: Iterable[str]) -> list[str]:
    """GLUE order first, then the rest alphabetically."""
    known = {name: i for i, name in enumerate(TASK_ORDER)}
    return sorted(set(tasks), key=lambda t: (known.get(t, len(known)), t))


def ordered_configs(runs: pd.DataFrame) -> list[str]:
    """Row order: LoRA, DoRA, AdaLoRA, DyLoRA, VeRA, plugins; rank ascending within a variant."""
    if runs.empty:
        return []
    firsts = runs.drop_duplicates("config").sort_values(["config_order", "config"])
    return firsts["config"].tolist()


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof=1) over seeds, per (config, task).

    Columns: config, variant, rank, task, metric, percent, higher_is_better, mean, std (NaN for
    one seed), n, seeds, and the means of adapter/trainable/total params, train seconds, peak
    memory (MiB) and adapter size (KiB). ``mean``/``std`` are in display units.
    """
    columns = ["config", "variant", "rank", "task", "metric", "percent", "higher_is_better", "mean", "std",
               "n", "seeds", "adapter_params", "trainable_params", "total_params", "train_seconds",
               "peak_memory_mb", "adapter_kb"]  # fmt: skip
    if runs.empty:
        return pd.DataFrame(columns=columns)
    grouped = runs.groupby(["config", "task"], sort=False)
    out = grouped.agg(
        variant=("variant", "first"), rank=("rank", "first"), metric=("metric", "first"),
        percent=("percent", "first"), higher_is_better=("higher_is_better", "first"),
        mean=("display", "mean"), std=("display", "std"), n=("display", "size"),
        seeds=("seed", lambda s: sorted(set(int(x) for x in s))),
        adapter_params=("adapter_params", "mean"), trainable_params=("trainable_params", "mean"),
        total_params=("total_params", "mean"), train_seconds=("train_seconds", "mean"),
        peak_memory_mb=("peak_memory_mb", "mean"), adapter_kb=("adapter_kb", "mean"),
    ).reset_index()  # fmt: skip
    return out[columns]


def missing_notes(data: ReportData, summary: Mapping[str, Any]) -> list[str]:
    """Plain sentences on what the report lacks: no runs, filters matching nothing, missing cells,
    fewer seeds than elsewhere, failed or pruned runs."""
    notes: list[str] = []
    f = data.filters
    if summary.get("runs", 0) == 0:
        notes.append(
            f"The results database {data.source} holds no runs yet. Run 'lorabench run' (or 'lorabench search') "
            "with --results pointing at it, then report again."
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
        notes.append(f"No runs have tag {f['tag']!r}; tags present: {', '.join(repr(t) for t in summary.get('tag', []))}.")
    if not data.records:
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(summary.get("status", {}).items()))
        notes.append(f"No finished runs match the filters (the database has {statuses} run(s) in all).")
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
            notes.append(f"{', '.join(configs)}: no finished run on {', '.join(absent)} (cells shown as '–').")
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
    for record in data.unfinished:
        reason = (record.error or "").strip().splitlines()[0][:200] if record.error else "no error recorded"
        notes.append(
            f"{config_label(record.variant, record.rank)} on {record.task}, seed {record.seed}: {record.status} "
            f"({reason}); not in the tables."
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
