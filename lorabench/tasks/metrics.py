"""Evaluation metrics, computed with scikit-learn and SciPy (``evaluate`` needs the network).

Each metric takes predictions and references as 1-D arrays and returns a float. Classification
predictions are class ids (2-D logits are reduced with argmax); regression predictions are scores.
``METRICS`` is the table task specs name metrics from; ``HIGHER_IS_BETTER`` gives each one's
direction for specs written by hand (custom YAML tasks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lorabench.tasks.spec import TaskSpec

MetricFn = Callable[[np.ndarray, np.ndarray], float]


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of exact matches."""
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, predictions))


def f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 of the positive class 1 (GLUE's MRPC/QQP convention); 0 when nothing is positive."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0.0))


def f1_macro(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Unweighted mean of per-class F1 (for multi-class custom tasks)."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predictions, average="macro", zero_division=0.0))


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


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson correlation (STS-B's primary metric)."""
    from scipy.stats import pearsonr

    return _correlation(pearsonr, predictions.astype(float), labels.astype(float))


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Spearman rank correlation."""
    from scipy.stats import spearmanr

    return _correlation(spearmanr, predictions.astype(float), labels.astype(float))


def mse(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared error (lower is better)."""
    return float(np.mean((predictions.astype(float) - labels.astype(float)) ** 2))


METRICS: dict[str, MetricFn] = {
    "accuracy": accuracy,
    "f1": f1,
    "f1_macro": f1_macro,
    "matthews": matthews,
    "pearson": pearson,
    "spearman": spearman,
    "mse": mse,
}
HIGHER_IS_BETTER: dict[str, bool] = {name: name != "mse" for name in METRICS}
REGRESSION_METRICS = frozenset({"pearson", "spearman", "mse"})


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
        if metric.name not in METRICS:
            raise KeyError(f"task {spec.name!r} asks for unknown metric {metric.name!r}; known: {sorted(METRICS)}")
        results[metric.name] = METRICS[metric.name](preds, refs)
    return results
