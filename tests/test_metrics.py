"""Metrics against values worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lorabench.tasks import compute_metrics, get_task
from lorabench.tasks.metrics import HIGHER_IS_BETTER, METRICS

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
    assert METRICS["spearman"](np.array([10.0, 20, 30, 40]), np.array([1.0, 3, 2, 4])) == pytest.approx(0.8)


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
    assert compute_metrics(get_task("mnli"), logits, torch.tensor([2, 1, 1])) == pytest.approx({"accuracy": 2 / 3})


def test_bad_inputs():
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        compute_metrics(get_task("rte"), [0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="no examples"):
        compute_metrics(get_task("rte"), [], [])
