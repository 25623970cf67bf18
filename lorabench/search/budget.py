"""Spend accounting for a search: every trial's cost counts against the study's budget.

A search budget is a :class:`~lorabench.harness.config.Budget` over the *total* spend of all
trials of one study (variant x task), pruned and failed ones included, like a GPU bill. The spend
lives in the Optuna storage as trial user attributes, so every worker of a shared study computes
the same total from the same rows:

* ``spend``: the trial's full spend once its run ended (finished, pruned or failed with a record);
* ``partial_spend``: what a running trial has spent so far, refreshed at every evaluation, so the
  trial of a killed worker (failed later by Optuna's heartbeat) still counts what it reported;
* ``reserved``: the spend a running trial is expected to cost, claimed when it starts so that
  other workers see the budget as taken.

Units: ``steps`` and ``tokens`` and ``flops`` as the runner counts them; ``seconds`` is training
*plus evaluation* seconds (the machine time a trial bills, model loading excluded).

Guarantee: a worker starts a trial only while (spend of ended trials + the larger of reserved and
reported spend of running trials) is below the budget. A single worker therefore stops within one
trial of the budget; W workers can each pass the check in the same instant before either's trial
is visible, so the total stays below ``budget + W x (one trial's spend)``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from lorabench.harness.config import Budget

SPEND_ATTR = "spend"
PARTIAL_ATTR = "partial_spend"
RESERVED_ATTR = "reserved"
UNITS = ("steps", "tokens", "seconds", "flops")


def spend_from_record_spent(spent: Mapping[str, Any]) -> dict[str, float]:
    """A run record's ``spent`` dict in the four budget units (seconds = train + eval)."""
    seconds = float(spent.get("train_seconds") or 0.0) + float(spent.get("eval_seconds") or 0.0)
    return {
        "steps": float(spent.get("steps") or 0),
        "tokens": float(spent.get("tokens") or 0),
        "seconds": seconds,
        "flops": float(spent.get("flops") or 0),
    }


@dataclass
class StudySpend:
    """The spend of one study in the search budget's unit."""

    unit: str
    ended: float = 0.0  # finished, pruned and failed trials
    in_flight: float = 0.0  # running trials: max(reserved, reported so far)
    states: Counter[str] = field(default_factory=Counter)
    per_trial: dict[int, float] = field(default_factory=dict)

    @property
    def committed(self) -> float:
        """Ended trials' spend plus what running trials have reserved or reported, whichever is
        larger: the spend no new trial may count on."""
        return self.ended + self.in_flight

    def exhausted(self, budget: Budget) -> bool:
        """Whether :attr:`committed` has reached ``budget.limit`` (no new trial may start)."""
        return self.committed >= budget.limit


def trial_spend(
    trial: FrozenTrial, unit: str, rates: Mapping[str, float], default_reservation: float
) -> float:
    """What one trial counts against the budget, in ``unit``.

    ``rates`` converts steps to other units (observed tokens/flops/seconds per step) for a failed
    trial that only reported its step count.
    """
    attrs = trial.user_attrs
    if trial.state == TrialState.WAITING:
        return 0.0
    if SPEND_ATTR in attrs:
        return float(attrs[SPEND_ATTR].get(unit, 0.0))
    partial = _partial_in(attrs.get(PARTIAL_ATTR) or {}, unit, rates)
    if trial.state == TrialState.RUNNING:
        reserved = attrs.get(RESERVED_ATTR)
        return max(partial, float(default_reservation if reserved is None else reserved))
    # Ended without a full spend: a killed worker (failed by the heartbeat) or an interrupted run.
    return partial


def study_spend(trials: Iterable[FrozenTrial], unit: str, default_reservation: float) -> StudySpend:
    """Totals the spend of all trials of a study (see the module docstring for the rules)."""
    trials = list(trials)
    rates = per_step_rates(trials)
    out = StudySpend(unit=unit)
    for t in trials:
        amount = trial_spend(t, unit, rates, default_reservation)
        out.states[t.state.name] += 1
        out.per_trial[t.number] = amount
        if t.state == TrialState.RUNNING:
            out.in_flight += amount
        else:
            out.ended += amount
    return out


def per_step_rates(trials: Iterable[FrozenTrial]) -> dict[str, float]:
    """Average tokens, FLOPs and seconds per step over trials with a full spend."""
    totals: Counter[str] = Counter()
    for t in trials:
        spend = t.user_attrs.get(SPEND_ATTR)
        if spend and spend.get("steps"):
            for unit in UNITS:
                totals[unit] += float(spend.get(unit, 0.0))
    if not totals["steps"]:
        return {}
    return {unit: totals[unit] / totals["steps"] for unit in UNITS}


def estimate_trial_spend(
    trial_budget: Budget, unit: str, trials: Iterable[FrozenTrial]
) -> float | None:
    """The spend one full trial is expected to cost, in ``unit``; ``None`` when not yet knowable.

    A trial budget in the same unit bounds it (a run stops at its budget). Otherwise the largest
    spend of a finished trial is the estimate; before any trial finished it is unknown.
    """
    observed = [
        float(t.user_attrs[SPEND_ATTR].get(unit, 0.0))
        for t in trials
        if t.state == TrialState.COMPLETE and SPEND_ATTR in t.user_attrs
    ]
    candidates = list(observed)
    if trial_budget.kind == unit:
        candidates.append(float(trial_budget.limit))
    finite = [c for c in candidates if math.isfinite(c)]
    return max(finite) if finite else None


def _partial_in(partial: Mapping[str, Any], unit: str, rates: Mapping[str, float]) -> float:
    if unit in partial:
        return float(partial[unit])
    steps = partial.get("steps")
    if steps is not None and unit in rates:
        return float(steps) * rates[unit]
    return 0.0
