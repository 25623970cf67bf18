"""Evaluation metrics, one record each, computed with scikit-learn and SciPy (``evaluate`` needs
the network).

Each metric is a :class:`Metric` record, registered with :func:`register_metric` above its
function and looked up with :func:`get_metric` (an unknown name fails with "did you mean"). The
record holds everything that is said about a metric anywhere: the function, its direction, the
kind of task it applies to, and how reports show it (x100 or not, and the column label).

A metric function takes predictions and references as 1-D arrays and returns a float.
Classification predictions are class ids (2-D logits are reduced with argmax by
:func:`compute_metrics`); regression predictions are scores.

``METRICS`` (name -> function), ``HIGHER_IS_BETTER`` (name -> direction) and
``REGRESSION_METRICS`` (names for regression tasks) are read-only views of the records, kept for
the code that reads those tables.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from lorabench.registry import UnknownNameError

if TYPE_CHECKING:  # spec.py imports this module (a metric's default direction), not vice versa
    from lorabench.tasks.spec import TaskSpec, TaskType

MetricFn = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class Metric:
    """One metric: how to compute it, which way is better, and how a report shows it.

    Attributes:
        name: the key in task specs and result dicts ("accuracy", "f1", "matthews").
        fn: ``fn(predictions, labels) -> float`` on 1-D arrays.
        higher_is_better: the direction rankings, searches and regression checks use.
        percent: reports print it x100 with one decimal (bounded scores: accuracy, F1,
            correlations), as papers do; otherwise as is, to 3 significant digits.
        short: the label a report table puts after the task name ("RTE (Acc)").
        task_type: the kind of task it applies to, "classification" or "regression".
        description: one line for listings (the function's first docstring line).
    """

    name: str
    fn: MetricFn = field(repr=False)
    higher_is_better: bool = True
    percent: bool = True
    short: str = ""
    task_type: TaskType = "classification"
    description: str = ""

    def __call__(self, predictions: np.ndarray, labels: np.ndarray) -> float:
        """``self.fn(predictions, labels)``."""
        return self.fn(predictions, labels)


# The registry: metric name -> record. Fill it with register_metric, read it with get_metric.
METRIC_RECORDS: dict[str, Metric] = {}


def register_metric(
    name: str,
    *,
    short: str,
    higher_is_better: bool = True,
    percent: bool = True,
    task_type: TaskType = "classification",
    overwrite: bool = False,
) -> Callable[[MetricFn], MetricFn]:
    """Decorator: registers the function below it as the metric ``name`` (see :class:`Metric`
    for the fields); the function itself is returned unchanged.

    A name already taken fails unless ``overwrite=True``, so two metrics cannot silently share
    a results key.
    """

    def decorator(fn: MetricFn) -> MetricFn:
        if name in METRIC_RECORDS and not overwrite and METRIC_RECORDS[name].fn is not fn:
            raise ValueError(
                f"a metric named {name!r} is already registered; pick another name or pass "
                "overwrite=True"
            )
        doc = (fn.__doc__ or "").strip()
        METRIC_RECORDS[name] = Metric(
            name=name,
            fn=fn,
            higher_is_better=higher_is_better,
            percent=percent,
            short=short,
            task_type=task_type,
            description=doc.splitlines()[0] if doc else "",
        )
        return fn

    return decorator


def get_metric(name: str) -> Metric:
    """The record of the metric ``name``; an unknown name fails with "did you mean" and the
    known names (:class:`lorabench.registry.UnknownNameError`, a ``KeyError``)."""
    if name in METRIC_RECORDS:
        return METRIC_RECORDS[name]
    known = sorted(METRIC_RECORDS)
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownNameError(f"unknown metric {name!r}.{hint} Known metrics: {', '.join(known)}.")


# -- the built-in metrics -------------------------------------------------------------------------
# Short labels and x100 follow what the report tables have always printed.
@register_metric("accuracy", short="Acc")
def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of exact matches."""
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, predictions))


@register_metric("f1", short="F1")
def f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 of the positive class 1 (GLUE's MRPC/QQP convention); 0 when nothing is
    positive."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0.0))


@register_metric("f1_macro", short="F1")
def f1_macro(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Unweighted mean of per-class F1 (for multi-class custom tasks)."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predictions, average="macro", zero_division=0.0))


@register_metric("matthews", short="Mcc")
def matthews(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation coefficient (CoLA); 0 when either side is constant."""
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, predictions))


def _correlation(fn: Callable[..., Any], predictions: np.ndarray, labels: np.ndarray) -> float:
    # A constant prediction (common early in training) has no defined correlation; report 0, as
    # sklearn's Matthews coefficient does, so rankings and searches see "no signal", not NaN.
    if len(labels) < 2 or np.ptp(predictions) == 0 or np.ptp(labels) == 0:
        return 0.0
    value = float(fn(predictions, labels)[0])
    return 0.0 if math.isnan(value) else value


@register_metric("pearson", short="Corr", task_type="regression")
def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson correlation (STS-B's primary metric)."""
    from scipy.stats import pearsonr

    return _correlation(pearsonr, predictions.astype(float), labels.astype(float))


@register_metric("spearman", short="Corr", task_type="regression")
def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Spearman rank correlation."""
    from scipy.stats import spearmanr

    return _correlation(spearmanr, predictions.astype(float), labels.astype(float))


@register_metric("mse", short="MSE", higher_is_better=False, percent=False, task_type="regression")
def mse(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared error (lower is better)."""
    return float(np.mean((predictions.astype(float) - labels.astype(float)) ** 2))


# -- older tables, as views of the records --------------------------------------------------------
V = TypeVar("V")


class _RecordField(Mapping[str, V]):
    """``{metric name: one field of its record}``, read live from ``METRIC_RECORDS`` so it can
    never disagree with the records (a metric registered later appears here too)."""

    def __init__(self, get: Callable[[Metric], V]) -> None:
        self._get = get

    def __getitem__(self, name: str) -> V:
        return self._get(METRIC_RECORDS[name])

    def __iter__(self) -> Iterator[str]:
        return iter(METRIC_RECORDS)

    def __len__(self) -> int:
        return len(METRIC_RECORDS)

    def __repr__(self) -> str:
        return repr(dict(self))


class _RecordNames(AbstractSet[str]):
    """The names of the metrics whose record passes ``where``, read live from
    ``METRIC_RECORDS``."""

    def __init__(self, where: Callable[[Metric], bool]) -> None:
        self._where = where

    @classmethod
    def _from_iterable(cls, it: Any) -> frozenset[str]:
        return frozenset(it)  # set operations (|, &, -) give a plain frozenset

    def __contains__(self, name: object) -> bool:
        record = METRIC_RECORDS.get(name) if isinstance(name, str) else None
        return record is not None and self._where(record)

    def __iter__(self) -> Iterator[str]:
        return (name for name, record in METRIC_RECORDS.items() if self._where(record))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return repr(set(self))


METRICS: Mapping[str, MetricFn] = _RecordField(lambda m: m.fn)
HIGHER_IS_BETTER: Mapping[str, bool] = _RecordField(lambda m: m.higher_is_better)
REGRESSION_METRICS: AbstractSet[str] = _RecordNames(lambda m: m.task_type == "regression")


# -- scoring a task -------------------------------------------------------------------------------
def _as_array(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, possibly on an accelerator
        values = values.detach().float().cpu().numpy()
    array = np.asarray(values)
    if array.ndim == 0:
        raise ValueError(f"{name} must be a sequence, got the scalar {values!r}")
    return array


def compute_metrics(
    spec: TaskSpec, predictions: Sequence[Any] | np.ndarray, labels: Sequence[Any] | np.ndarray
) -> dict[str, float]:
    """Every metric of ``spec`` on one evaluation split, keyed by metric name.

    Args:
        spec: the task; its ``metrics`` say what to compute.
        predictions: class ids (or logits of shape ``(n, num_labels)``, reduced by argmax) for
            classification; scores (``(n,)`` or ``(n, 1)``) for regression.
        labels: the split's label column.
    """
    preds = _as_array(predictions, "predictions")
    refs = _as_array(labels, "labels").reshape(-1)
    if spec.task_type == "classification" and preds.ndim == 2:
        preds = preds.argmax(axis=-1)
    preds = preds.reshape(-1)
    if len(preds) != len(refs):
        raise ValueError(f"task {spec.name!r}: {len(preds)} predictions for {len(refs)} labels")
    if len(refs) == 0:
        raise ValueError(f"task {spec.name!r}: no examples to score")
    results: dict[str, float] = {}
    for metric in spec.metrics:
        try:
            record = get_metric(metric.name)
        except UnknownNameError as exc:
            raise UnknownNameError(f"task {spec.name!r} asks for an {exc}") from None
        results[metric.name] = record(preds, refs)
    return results
