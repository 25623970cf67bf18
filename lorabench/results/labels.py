"""How a run is named: the labels reports and :func:`~lorabench.results.store.load_results`
share, the rank a run is compared at, and its best evaluation.

A row label is the variant plus its rank ("LoRA r=8"), as in the LoRA/AdaLoRA papers' tables.
How a variant is named and how its rank reads ("AdaLoRA r=12→8", "DyLoRA r≤8") are facts of the
variant (:meth:`~lorabench.variants.Variant.report_name`,
:meth:`~lorabench.variants.Variant.rank_label`), computed from each record's resolved config; a
record of a variant this process does not know keeps its registered name and ``r=<rank>``.

Runs are seeds of one row only when everything that changes the score agrees: the variant's
resolved settings, the training recipe, the model (name and fingerprint), the budget and, per
task, the data fingerprint. When runs of one variant differ in a setting, each row names what
differs ("LoRA r=2 (alpha=32, lr=0.000416)"); runs of another model, budget or data get a
bracketed tag ("[data not recorded]"). This module reads records only (layer 3), so that the
results layer and the reports (:mod:`lorabench.reports.frame`) label a run the same way.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lorabench.results.records import RunRecord, config_hash

if TYPE_CHECKING:
    from lorabench.variants.base import Variant

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
# Training settings added after runs were first stored, with the value every older run had.
# At that value they are left out of a run's identity (its id stays what it was) and out of the
# recipe a row is grouped by, so an older record and a new one of the same run share a row.
LATER_TRAIN_DEFAULTS: dict[str, Any] = {"precision": "fp32", "grad_accum": 1}
# Shown in the label itself ("LoRA r=8 bf16"), so never repeated in the settings suffix.
_LABELLED_TRAIN = frozenset({"train.precision"})
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
    per_task = _per_task_settings(records, resolved)
    # A configuration trained with one recipe per task (a suite's per-task settings) is one
    # row: its training settings and budget belong to the task, not to the row.
    recipes = [
        _without_train(recipe(r)) if per_task[i] else recipe(r) for i, r in enumerate(records)
    ]
    keys = [
        _row_key(r, cfg, per_task=per_task[i])
        for i, (r, cfg) in enumerate(zip(records, resolved, strict=True))
    ]
    # Final ranks averaged per matrix over the runs of one config (all tasks, all seeds), so
    # that one config reads the same in every task column.
    pooled: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for key, r in zip(keys, records, strict=True):
        for matrix, value in (r.ranks or {}).items():
            pooled[key][matrix].append(float(value))
    mean_ranks = {
        k: {m: float(np.mean(v)) for m, v in ranks.items()} for k, ranks in pooled.items()
    }

    tags = _tags(records, per_task)
    suffixes = recipe_suffixes(records, [r.variant for r in records], recipes)
    out: list[RowLabel] = []
    for i, r in enumerate(records):
        cls = variant_class(r.variant)
        name = cls.report_name(resolved[i]) if cls is not None else r.variant
        tag_text = f" [{', '.join(tags[i].values())}]" if tags[i] else ""
        rank_part = rank_label(r, mean_ranks.get(keys[i]) or None)
        # The precision is always named when not float32: a bf16 score is not an fp32 one.
        precision = precision_label(r)
        config = " ".join(p for p in (name, rank_part, precision) if p) + tag_text + suffixes[i]
        out.append(
            RowLabel(
                config,
                " ".join(p for p in (name, precision) if p) + tag_text + suffixes[i],
                rank_label(r),
                data_tag=tags[i].get("data", ""),
                model_tag=tags[i].get("model_fingerprint", ""),
            )
        )
    return _disambiguated(out, keys, records)


def _row_key(record: RunRecord, resolved: Mapping[str, Any], *, per_task: bool = False) -> str:
    """What makes runs seeds of one config (the task and its data aside; with ``per_task``,
    its training settings and budget too: see :func:`_per_task_settings`)."""
    identity = {
        "variant": record.variant,
        "rank": record.rank,
        "variant_config": {str(k): _setting(v) for k, v in resolved.items() if k != "seed"},
        "model": record.model,
        "model_fingerprint": record.model_fingerprint or "",
    }
    if not per_task:
        identity["train"] = train_recipe(record)
        identity["budget"] = budget_label(record.budget)
    return config_hash(identity)


def _per_task_settings(records: list[RunRecord], resolved: list[dict[str, Any]]) -> list[bool]:
    """Per record, whether its configuration (variant, settings, model) was trained with one
    training recipe and budget per task, differing between tasks: a suite's per-task settings
    (``tasks: [{stsb: {budget: steps=100, train: {...}}}]``), under which the configuration is
    one method and so one row across tasks. A configuration with several recipes on one task
    (a learning-rate sweep) keeps a row per recipe, told apart by the settings that differ."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (r, cfg) in enumerate(zip(records, resolved, strict=True)):
        groups[_row_key(r, cfg, per_task=True)].append(i)
    out = [False] * len(records)
    for indices in groups.values():
        by_task: dict[str, set[str]] = defaultdict(set)
        for i in indices:
            r = records[i]
            by_task[r.task].add(config_hash([train_recipe(r), budget_label(r.budget)]))
        if all(len(v) == 1 for v in by_task.values()) and len(set().union(*by_task.values())) > 1:
            for i in indices:
                out[i] = True
    return out


def _without_train(settings: dict[str, str]) -> dict[str, str]:
    """``settings`` without its training settings (those a per-task row leaves to the task)."""
    return {k: v for k, v in settings.items() if not k.startswith("train.")}


def _tags(records: list[RunRecord], per_task: list[bool] | None = None) -> list[dict[str, str]]:
    """Per record, the bracketed tags of its row, in order: the model (when several are mixed),
    its fingerprint, the budget (when several are mixed) and the data fingerprint (see
    :func:`_odd_fingerprints` for when a fingerprint is shown)."""
    tags: list[dict[str, str]] = [{} for _ in records]
    models = {r.model for r in records}
    # A row with per-task settings has a budget per task: its budget tells no row apart.
    per_task = per_task or [False] * len(records)
    budgets = {budget_label(r.budget) for i, r in enumerate(records) if not per_task[i]}
    odd_model = _odd_fingerprints(records, lambda r: r.model, lambda r: r.model_fingerprint)
    odd_data = _odd_fingerprints(records, lambda r: r.task, lambda r: r.data_fingerprint)
    for i, r in enumerate(records):
        if len(models) > 1:
            tags[i]["model"] = short_name(r.model)
        if i in odd_model:
            tags[i]["model_fingerprint"] = f"model {short_fingerprint(r.model_fingerprint)}"
        if len(budgets) > 1 and not per_task[i]:
            tags[i]["budget"] = budget_label(r.budget)
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
    out.update(train_recipe(record))
    return out


def train_recipe(record: RunRecord) -> dict[str, str]:
    """The training settings that decide the score, as ``{"train.learning_rate": "0.0005"}``."""
    train = (record.config or {}).get("train") or {}
    return {
        f"train.{k}": _setting(v)
        for k, v in train.items()
        if k not in _NON_SCORING_TRAIN
        and not (k in LATER_TRAIN_DEFAULTS and v == LATER_TRAIN_DEFAULTS[k])
    }


def precision_label(record: RunRecord) -> str:
    """``"bf16"`` or ``"fp16"`` for a run trained under autocast; ``""`` for float32 (the
    default, and every record written before precision was recorded)."""
    precision = ((record.config or {}).get("train") or {}).get("precision")
    default = LATER_TRAIN_DEFAULTS["precision"]
    return "" if precision in (None, default) else str(precision)


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
        differing = {
            k for i in indices for k in recipes[i] if k not in _LABELLED_TRAIN
        } - same_everywhere(recipes, indices)
        keys = sorted(differing, key=_key_order)
        if not keys:  # they differ only in what the label shows already (the precision)
            continue
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


def same_everywhere(recipes: list[dict[str, str]], indices: list[int]) -> set[str]:
    """The keys whose value is the same in every one of ``recipes[indices]``."""
    keys = {k for i in indices for k in recipes[i]}
    return {k for k in keys if len({recipes[i].get(k) for i in indices}) == 1}


def _key_order(key: str) -> tuple[int, str]:
    """The learning rate first (what a search most often changes), then variant, then training."""
    return (0 if key == "train.learning_rate" else 2 if key.startswith("train.") else 1, key)


def budget_label(budget: Mapping[str, Any]) -> str:
    """``"steps=500"`` for a record's budget dict (``""`` when it names none)."""
    if not budget or "kind" not in budget:
        return ""
    limit = budget.get("limit")
    if isinstance(limit, int | float):
        return f"{budget['kind']}={limit:g}"
    return f"{budget['kind']}={limit}"


def short_name(text: str) -> str:
    """The last part of a model path (``"models/tiny-bert"`` -> ``"tiny-bert"``), else the text."""
    return Path(str(text)).name or str(text)
