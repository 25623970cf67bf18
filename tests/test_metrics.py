"""Metrics against values worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lorabench.tasks import MetricSpec, TaskSpec, compute_metrics, get_task
from lorabench.tasks.metrics import (
    HIGHER_IS_BETTER,
    METRIC_RECORDS,
    METRICS,
    REGRESSION_METRICS,
    get_metric,
    register_metric,
)

# Five binary examples: predictions vs labels.
#   index:  0  1  2  3  4
#   pred:   1  0  1  1  0
#   label:  1  1  1  0  0
# TP = {0, 2} = 2, FN = {1} = 1, FP = {3} = 1, TN = {4} = 1.
PREDS = [1, 0, 1, 1, 0]
LABELS = [1, 1, 1, 0, 0]


def test_accuracy():
    # correct at 0, 2, 4: 3 / 5
    assert METRICS["accuracy"](np.array(PREDS), np.array(LABELS)) == pytest.approx(0.6)


def test_f1_of_positive_class():
    # precision = 2 / (2 + 1), recall = 2 / (2 + 1), F1 = 2PR / (P + R) = 2/3
    assert METRICS["f1"](np.array(PREDS), np.array(LABELS)) == pytest.approx(2 / 3)


def test_f1_positive_class_is_one_not_the_majority():
    # Swapping the roles of 0 and 1: TP = {4} = 1, FP = {1} = 1, FN = {3} = 1 -> F1 = 1/2.
    assert METRICS["f1"](1 - np.array(PREDS), 1 - np.array(LABELS)) == pytest.approx(0.5)


def test_matthews():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 - 1) / sqrt(3*3*2*2) = 1/6
    assert METRICS["matthews"](np.array(PREDS), np.array(LABELS)) == pytest.approx(1 / 6)


def test_pearson():
    # x = 1 2 3 4 (mean 2.5), y = 2 4 5 9 (mean 5); dx = -1.5 -.5 .5 1.5, dy = -3 -1 0 4
    # sum dx*dy = 4.5 + .5 + 0 + 6 = 11; sum dx^2 = 5; sum dy^2 = 26; r = 11 / sqrt(130)
    value = METRICS["pearson"](np.array([1.0, 2, 3, 4]), np.array([2.0, 4, 5, 9]))
    assert value == pytest.approx(11 / math.sqrt(130))
    assert value == pytest.approx(0.964764, abs=1e-6)


def test_spearman():
    # prediction ranks 1 2 3 4, label ranks 1 3 2 4; d = 0 -1 1 0; sum d^2 = 2
    # rho = 1 - 6 * 2 / (4 * (16 - 1)) = 1 - 12/60 = 0.8
    value = METRICS["spearman"](np.array([10.0, 20, 30, 40]), np.array([1.0, 3, 2, 4]))
    assert value == pytest.approx(0.8)


def test_mse_and_directions():
    # errors 1, -1, 0, 2 -> (1 + 1 + 0 + 4) / 4 = 1.5
    assert METRICS["mse"](np.array([1.0, 1, 3, 6]), np.array([0.0, 2, 3, 4])) == pytest.approx(1.5)
    assert HIGHER_IS_BETTER["mse"] is False
    assert all(HIGHER_IS_BETTER[m] for m in ("accuracy", "f1", "matthews", "pearson", "spearman"))


def test_constant_predictions_score_zero_correlation_not_nan():
    assert METRICS["pearson"](np.array([3.0, 3, 3]), np.array([1.0, 2, 5])) == 0.0
    assert METRICS["spearman"](np.array([3.0, 3, 3]), np.array([1.0, 2, 5])) == 0.0
    assert METRICS["matthews"](np.array([1, 1, 1]), np.array([0, 1, 1])) == 0.0
    assert METRICS["f1"](np.array([0, 0, 0]), np.array([0, 1, 1])) == 0.0


def test_compute_metrics_for_glue_specs():
    mrpc = compute_metrics(get_task("mrpc"), PREDS, LABELS)
    assert mrpc == pytest.approx({"accuracy": 0.6, "f1": 2 / 3})
    cola = compute_metrics(get_task("cola"), PREDS, LABELS)
    assert cola == pytest.approx({"matthews": 1 / 6, "accuracy": 0.6})
    # STS-B: a regression head emits (n, 1)
    stsb = compute_metrics(get_task("stsb"), [[10.0], [20.0], [30.0], [40.0]], [1.0, 3.0, 2.0, 4.0])
    # pearson: dx = -15 -5 5 15, dy = -1.5 .5 -.5 1.5 -> 22.5 + -2.5 + -2.5 + 22.5 = 40;
    # sum dx^2 = 500, sum dy^2 = 5 -> r = 40 / sqrt(2500) = 0.8
    assert stsb == pytest.approx({"pearson": 0.8, "spearman": 0.8})


def test_logits_and_tensors_are_accepted():
    # MNLI logits: argmax rows -> 2, 0, 1 against labels 2, 1, 1 -> 2/3 correct
    logits = torch.tensor([[0.1, 0.2, 3.0], [2.0, 1.0, 0.0], [0.0, 5.0, 1.0]])
    mnli = compute_metrics(get_task("mnli"), logits, torch.tensor([2, 1, 1]))
    assert mnli == pytest.approx({"accuracy": 2 / 3})


def test_bad_inputs():
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        compute_metrics(get_task("rte"), [0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="no examples"):
        compute_metrics(get_task("rte"), [], [])


# -- the metric records ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(METRIC_RECORDS))
def test_every_record_is_complete_and_scores_a_perfect_prediction(name):
    record = get_metric(name)
    assert record.name == name and record.short and record.description
    assert record.task_type in ("classification", "regression")
    assert record.percent == record.higher_is_better  # bounded scores x100; errors as they are
    if record.task_type == "classification":
        labels = np.array([0, 1, 1, 0, 1])
    else:
        labels = np.array([0.5, 1, 3, 2, 4])
    perfect = record(labels, labels)
    assert isinstance(perfect, float)
    assert perfect == pytest.approx(1.0 if record.higher_is_better else 0.0)


def test_records_carry_what_reports_show():
    assert {n: (get_metric(n).short, get_metric(n).percent) for n in METRIC_RECORDS} == {
        "accuracy": ("Acc", True), "f1": ("F1", True), "f1_macro": ("F1", True),
        "matthews": ("Mcc", True), "pearson": ("Corr", True), "spearman": ("Corr", True),
        "mse": ("MSE", False),
    }  # fmt: skip


def test_unknown_metric_says_did_you_mean():
    with pytest.raises(KeyError, match=r"unknown metric 'acuracy'\. Did you mean 'accuracy'\?"):
        get_metric("acuracy")
    spec = TaskSpec("t", "1", "custom", ("text",), metrics=(MetricSpec("bleu", True),))
    with pytest.raises(
        KeyError, match=r"task 't' asks for an unknown metric 'bleu'.*Known metrics: accuracy"
    ):
        compute_metrics(spec, [0, 1], [0, 1])


def test_metric_spec_direction_comes_from_the_record():
    assert MetricSpec("mse").higher_is_better is False
    assert MetricSpec("accuracy") == MetricSpec("accuracy", True)
    assert MetricSpec("mse", True).higher_is_better is True  # an explicit direction wins
    assert MetricSpec("my-loss", False).higher_is_better is False  # no record needed when given
    with pytest.raises(KeyError, match="Did you mean 'matthews'"):
        MetricSpec("mathews")


def test_older_tables_are_views_of_the_records():
    assert dict(METRICS) == {n: r.fn for n, r in METRIC_RECORDS.items()}
    assert dict(HIGHER_IS_BETTER) == {n: r.higher_is_better for n, r in METRIC_RECORDS.items()}
    assert set(REGRESSION_METRICS) == {"pearson", "spearman", "mse"}
    assert "accuracy" not in REGRESSION_METRICS and 3 not in REGRESSION_METRICS

    @register_metric(
        "max_error", short="MaxErr", higher_is_better=False, percent=False, task_type="regression"
    )
    def max_error(predictions, labels):
        """Largest absolute error."""
        return float(np.max(np.abs(predictions - labels)))

    try:
        assert METRICS["max_error"] is max_error and HIGHER_IS_BETTER["max_error"] is False
        assert "max_error" in REGRESSION_METRICS
        assert get_metric("max_error").description == "Largest absolute error."
        with pytest.raises(ValueError, match="already registered"):
            register_metric("max_error", short="X")(lambda preds, refs: 0.0)
    finally:
        METRIC_RECORDS.pop("max_error")
    assert "max_error" not in METRICS and "max_error" not in REGRESSION_METRICS
