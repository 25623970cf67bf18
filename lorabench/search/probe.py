"""What one search trial will spend, estimated before any training.

A search refuses a budget smaller than one trial before it trains. When the search budget and
the trial budget share a unit the trial budget bounds a trial; when they do not (the usual
``--budget seconds=1800 --trial-budget steps=200``) and no trial of the study has finished yet,
this module estimates one trial's spend the way the runner plans a run:

* steps and non-padding tokens exactly, from the task's training batches in the run's order
  (:class:`~lorabench.harness.batches.BatchPlan`, the same seed and batch size);
* FLOPs from one forward and backward pass under torch's FLOP counter, per padded token;
* seconds as a lower bound: the fastest of a few timed forward-backward passes per step (no
  optimiser step, no evaluation, model loading excluded).

No parameter is updated: the passes run on a copy of the base model with the variant attached in
its default (or fixed) configuration, and their gradients are thrown away. A trial budget in
seconds gives no step count without training, so that case is left unknown (``None``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lorabench.harness.config import RunConfig
    from lorabench.harness.prepared import RunCache

# Forward-backward passes timed for a seconds estimate, after one untimed warm-up.
TIMED_PASSES = 3
MEASURED_UNITS = ("flops", "seconds")


@dataclass(frozen=True)
class TrialEstimate:
    """One trial's expected spend in the search budget's unit, and how it was obtained."""

    unit: str
    amount: float
    steps: int
    # steps and tokens: exact unless a FLOP trial budget sets the steps; FLOPs, seconds: measured
    exact: bool

    def describe(self) -> str:
        """The estimate for messages: ``tokens=51200 over 200 steps``, or with ``~`` and "measured
        on sample batches" when not exact."""
        if self.exact:
            return f"{self.unit}={self.amount:.6g} over {self.steps} steps"
        return f"{self.unit}~{self.amount:.4g} over {self.steps} steps, measured on sample batches"


def estimate_trial(
    run_cfg: RunConfig, unit: str, cache: RunCache, device: Any = None
) -> TrialEstimate | None:
    """The spend of one trial of ``run_cfg`` in ``unit``; ``None`` when it cannot be known
    untrained.

    Raises whatever loading the task or the model raises (missing data, unknown model): every
    trial would fail the same way, so the caller reports it before any training.
    """
    from lorabench.harness.batches import BatchPlan
    from lorabench.harness.meter import plan_steps
    from lorabench.harness.prepared import prepare_run

    if run_cfg.budget.kind == "seconds":
        return None
    # The same prepared run a trial trains (a private copy of the base model), left bare: the
    # adapter is attached inside the guarded measurement below.
    prepared = prepare_run(run_cfg, cache, device=device, attach=False)
    model, pad_id = prepared.model, prepared.pad_id
    plan = BatchPlan(prepared.train_split, run_cfg.train.batch_size, seed=run_cfg.seed)

    flops_per_padded_token = seconds_per_padded_token = 0.0
    if run_cfg.budget.kind == "flops" or unit in MEASURED_UNITS:
        try:
            flops_per_padded_token, seconds_per_padded_token = _measure(
                model, run_cfg, plan, pad_id, device, timed=unit == "seconds"
            )
        except Exception:
            # The probed config is the variant's default; the sampled ones differ (a default rank
            # too large for this model, say), so a failure here says nothing certain about trials.
            return None
    accum = run_cfg.train.grad_accum
    steps = plan_steps(
        run_cfg.budget, plan, flops_per_padded_token=flops_per_padded_token, grad_accum=accum
    )
    # Optimiser step s trains on micro-batches s*accum ... s*accum + accum - 1.
    micro = range(steps * accum)
    if unit == "steps":
        amount = float(steps)
    elif unit == "tokens":
        amount = float(sum(plan.tokens(m) for m in micro))
    else:
        padded = sum(plan.padded_tokens(m) for m in micro)
        amount = padded * (flops_per_padded_token if unit == "flops" else seconds_per_padded_token)
    # A FLOP trial budget's step count rests on the measured FLOPs too.
    exact = unit not in MEASURED_UNITS and run_cfg.budget.kind != "flops"
    return TrialEstimate(unit=unit, amount=amount, steps=steps, exact=exact)


def _measure(
    model: Any, run_cfg: RunConfig, plan: Any, pad_id: int, device: Any, *, timed: bool
) -> tuple[float, float]:
    """(FLOPs, fastest seconds) per padded token of a forward-backward pass of the attached model.

    Per padded token because the model computes on padded batches and batches differ in length.
    """
    import torch

    from lorabench.harness.meter import count_flops
    from lorabench.variants.adapter import attach

    device = next(model.parameters()).device
    model.train()
    attach(model, run_cfg.variant, dict(run_cfg.variant_config))

    def batch(step: int) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in plan.batch(step, pad_id).items()}

    def forward_backward(inputs: dict[str, torch.Tensor]) -> None:
        model(**inputs).loss.backward()
        model.zero_grad(set_to_none=True)

    first = batch(0)
    flops = count_flops(lambda: forward_backward(first))
    per_padded_token = flops / max(1, plan.padded_tokens(0))
    if not timed:
        return per_padded_token, 0.0
    fastest = float("inf")
    for step in range(TIMED_PASSES):  # step 0 already warmed up under the counter
        inputs = batch(step)
        _sync(device)
        started = time.perf_counter()
        forward_backward(inputs)
        _sync(device)
        fastest = min(fastest, (time.perf_counter() - started) / max(1, plan.padded_tokens(step)))
    return per_padded_token, fastest


def _sync(device: Any) -> None:
    import torch

    if getattr(device, "type", None) == "cuda":
        torch.cuda.synchronize(device)
