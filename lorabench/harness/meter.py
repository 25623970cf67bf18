"""Measuring what a run spends, and turning a budget into a number of optimiser steps.

What is counted (``RunRecord.spent``):

* ``steps``: optimiser steps taken (with ``train.grad_accum`` = N, each of N micro-batches; a
  fp16 step the gradient scaler skipped counts too, and in ``skipped_steps``).
* ``tokens``: non-padding training tokens seen; ``padded_tokens``: tokens including padding
  (what the model actually computes on).
* ``train_seconds``: wall-clock seconds of training steps (forward, backward, optimiser, hooks),
  plus the timing probe of a seconds budget; ``eval_seconds``: evaluation, counted separately.
  ``probe_seconds``: the FLOP-counting sample step (not training; reported for completeness).
* ``flops``: training FLOPs. One sample step (forward + backward on the first batch, without the
  adapter's regulariser: no variant hook runs before ``on_train_begin``) runs under
  :class:`torch.utils.flop_counter.FlopCounterMode`; FLOPs per padded token from it are scaled by
  each step's padded tokens. Padded, not non-padding, tokens: the model computes on the padding.
  Attention's quadratic term makes this an approximation for batches much longer than the sample.
  ``flops_per_step`` is the mean over the steps taken.
* ``peak_memory_bytes`` with ``memory_kind``: the peak during training *above* what the process
  held when training began (``memory_baseline_bytes``, recorded beside it), so that runs of one
  process compare (a whole-process figure grows with every run the process has done: caches,
  allocator pools). On CUDA, ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats`` minus the memory allocated at the start
  (``"cuda_peak_above_baseline"``); on CPU, the peak resident set size sampled every 20 ms by a
  background thread with psutil (and once more at the end) minus the RSS at the start, after
  freed heap memory was handed back to the system (``malloc_trim`` where glibc has it)
  (``"cpu_rss_peak_above_baseline"``). ``getrusage`` was not used because its maximum never
  resets between runs. Records written before this hold whole-process figures under the kinds
  ``"cpu_rss_peak"`` (peak RSS of the process) and ``"cuda_peak_allocated"`` (peak allocated,
  model included); reports keep the kinds apart.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from lorabench.harness.batches import BatchPlan, epoch_batches
from lorabench.harness.config import MAX_PLANNED_STEPS, BenchmarkConfigError, Budget

# Steps timed to estimate seconds per step for a seconds budget (after one untimed warm-up).
TIMING_PROBE_STEPS = 3


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs torch's flop counter sees while ``fn`` runs (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@dataclass
class Spend:
    """Running totals of one run's spend (see the module docstring for the units)."""

    steps: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    train_seconds: float = 0.0
    max_step_seconds: float = (
        0.0  # the slowest optimiser step (a seconds budget overshoots by less)
    )
    eval_seconds: float = 0.0
    probe_seconds: float = 0.0
    flops: float = 0.0
    flops_per_padded_token: float = 0.0
    planned_steps: int = 0
    stop_reason: str = ""
    # fp16 steps whose update the gradient scaler skipped (overflow); counted in ``steps`` too.
    skipped_steps: int = 0

    def add_step(self, tokens: int, padded_tokens: int, seconds: float) -> None:
        """Counts one optimiser step: its non-padding and padded tokens, its wall-clock seconds,
        and its FLOPs (padded tokens x ``flops_per_padded_token``)."""
        self.steps += 1
        self.tokens += tokens
        self.padded_tokens += padded_tokens
        self.train_seconds += seconds
        self.max_step_seconds = max(self.max_step_seconds, seconds)
        self.flops += padded_tokens * self.flops_per_padded_token

    def to_dict(self) -> dict[str, Any]:
        """The totals as plain data, plus ``flops_per_step`` (mean over the steps taken; 0.0
        before the first)."""
        out = asdict(self)
        out["flops_per_step"] = self.flops / self.steps if self.steps else 0.0
        return out


# The kinds of ``peak_memory_bytes`` PeakMemory records (older records: "cpu_rss_peak",
# "cuda_peak_allocated", whole-process figures; see the module docstring).
CUDA_MEMORY_KIND = "cuda_peak_above_baseline"
CPU_MEMORY_KIND = "cpu_rss_peak_above_baseline"


def _release_freed_heap() -> None:
    """Hands memory that earlier runs freed back to the system before the baseline is taken, so
    that their allocator pools do not hide this run's growth (glibc's ``malloc_trim``; nothing
    elsewhere)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): the RSS as it is
        pass


class PeakMemory:
    """Peak memory while a run trains and evaluates, above what the process held on entry; see
    the module docstring for the kinds.

    ``with PeakMemory(device) as memory: ...`` then :attr:`peak` (bytes above
    :attr:`baseline`), :attr:`baseline` and :attr:`kind`.
    """

    def __init__(self, device: torch.device, interval: float = 0.02) -> None:
        self.device = device
        self.interval = interval
        self.kind = CUDA_MEMORY_KIND if device.type == "cuda" else CPU_MEMORY_KIND
        self.baseline = 0
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process: Any = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = int(torch.cuda.memory_allocated(self.device))
        else:
            import psutil

            _release_freed_heap()
            self._process = process = psutil.Process()
            self.baseline = self._peak = int(process.memory_info().rss)

            def sample() -> None:
                while not self._stop.wait(self.interval):
                    self._sample()

            self._thread = threading.Thread(target=sample, name="lorabench-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _sample(self) -> None:
        self._peak = max(self._peak, int(self._process.memory_info().rss))

    def stop(self) -> None:
        """Stops the CPU sampling thread after one last sample; :attr:`peak` keeps its value.
        Does nothing on CUDA or when already stopped."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._sample()

    @property
    def absolute_peak(self) -> int:
        """The peak in bytes including :attr:`baseline`: CUDA's peak allocated memory since
        entry, or on CPU the highest resident set size sampled (the whole process)."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return self._peak

    @property
    def peak(self) -> int:
        """Peak memory in bytes since entry above :attr:`baseline` (never negative)."""
        return max(0, self.absolute_peak - self.baseline)


class BudgetBelowOneBatch(BenchmarkConfigError):
    """A tokens or FLOPs budget smaller than the run's first batch; ``smallest`` is the least
    valid limit for that run (a suite reports the largest over its runs)."""

    def __init__(self, message: str, smallest: float) -> None:
        super().__init__(message)
        self.smallest = smallest


def plan_steps(
    budget: Budget,
    plan: BatchPlan,
    *,
    flops_per_padded_token: float,
    seconds_per_step: float | None = None,
    seconds_already_spent: float = 0.0,
    grad_accum: int = 1,
) -> int:
    """The number of optimiser steps ``budget`` allows, known before training starts.

    ``steps``: the limit. ``tokens``: the most steps whose non-padding tokens stay within the
    limit (the batch order is fixed by the seed, so this is exact). ``flops``: the same with
    measured FLOPs per padded token. ``seconds``: (limit - seconds already spent) / measured
    seconds per step; the loop also stops when the clock runs out, whichever comes first.
    At least one step is always allowed, so that every run has something to evaluate.

    Raises :class:`BenchmarkConfigError` before any training for a ``tokens`` or ``flops``
    budget smaller than the run's first batch (it would train one batch over the budget), and
    for any budget that implies more than :data:`MAX_PLANNED_STEPS` steps (a typo such as
    ``tokens=1e20``); the message names the budget and the valid range. Planning costs one pass
    over an epoch's batch lengths per epoch planned, never one Python iteration per step for a
    tokens budget.

    ``grad_accum``: micro-batches (``plan``'s batches) per optimiser step; optimiser step ``s``
    trains on micro-batches ``s*N .. s*N+N-1`` and costs their sum. Since every cost is
    positive, the most whole optimiser steps within a tokens or FLOPs budget are exactly the
    micro-batches within it, divided by N and rounded down. ``seconds_per_step`` is then the
    time of a whole optimiser step.
    """
    if budget.kind == "steps":
        return max(1, int(budget.limit))  # Budget refuses fractions and more than the maximum
    if budget.kind in ("tokens", "flops"):
        per_token: float | None = None
        if budget.kind == "flops":
            if flops_per_padded_token <= 0:
                raise RuntimeError(
                    "the FLOP counter saw no FLOPs in the sample step, so a flops budget cannot "
                    "be converted to steps; use a steps, tokens or seconds budget for this model"
                )
            per_token = flops_per_padded_token
        micro = _steps_within(budget, plan, per_padded_token=per_token)
        if grad_accum > 1 and micro < grad_accum:
            _refuse_below_one_step(budget, plan, per_token, grad_accum)
        return micro // grad_accum if grad_accum > 1 else micro
    if budget.kind == "seconds":
        if not seconds_per_step or seconds_per_step <= 0:
            raise RuntimeError("a seconds budget needs the measured seconds per step")
        implied = (budget.limit - seconds_already_spent) / seconds_per_step
        if implied > MAX_PLANNED_STEPS:
            per_step = f"{seconds_per_step:.3g} s per step"
            raise BenchmarkConfigError(
                _too_many_steps(budget, implied, per_step, MAX_PLANNED_STEPS * seconds_per_step)
            )
        return max(1, math.floor(implied))
    raise ValueError(f"unknown budget kind {budget.kind!r}")


def _refuse_below_one_step(
    budget: Budget, plan: BatchPlan, per_padded_token: float | None, grad_accum: int
) -> None:
    """Raises :class:`BudgetBelowOneBatch` for a budget that covers fewer than the
    ``grad_accum`` micro-batches of the first optimiser step."""
    costs, epoch = _epoch_costs(plan, 0, per_padded_token), 1
    while len(costs) < grad_accum:  # an epoch shorter than one optimiser step
        costs = np.concatenate([costs, _epoch_costs(plan, epoch, per_padded_token)])
        epoch += 1
    first = float(costs[:grad_accum].sum())
    smallest = int(first) if per_padded_token is None else _round_up(first)
    least = str(smallest) if per_padded_token is None else f"{smallest:g}"
    unit = "tokens" if per_padded_token is None else "FLOPs"
    raise BudgetBelowOneBatch(
        f"budget {_shown(budget)} is smaller than one optimiser step (the first step of seed "
        f"{plan.seed} costs {first:,.4g} {unit}: {grad_accum} micro-batches of "
        f"{plan.batch_size}); use at least {budget.kind}={least}, or a smaller grad_accum",
        smallest,
    )


def _epoch_costs(plan: BatchPlan, epoch: int, per_padded_token: float | None) -> np.ndarray:
    """The cost of each batch of one epoch, in training order: non-padding tokens
    (``per_padded_token`` None) or padded tokens x ``per_padded_token``.

    The batches are those :class:`BatchPlan` trains on (an epoch is determined by ``(seed,
    epoch)``, see :func:`epoch_batches`), generated here without keeping them, so planning a
    long budget does not hold every batch of every epoch in memory.
    """
    lengths = plan.split.lengths
    batches = epoch_batches(
        lengths, plan.batch_size, seed=plan.seed, epoch=epoch, bucket_batches=plan.bucket_batches
    )
    order = np.concatenate(batches)
    sizes = np.fromiter((len(b) for b in batches), dtype=np.int64, count=len(batches))
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    if per_padded_token is None:
        return np.add.reduceat(lengths[order], starts).astype(np.float64)
    return np.maximum.reduceat(lengths[order], starts) * sizes * float(per_padded_token)


def _steps_within(budget: Budget, plan: BatchPlan, *, per_padded_token: float | None) -> int:
    """The most steps whose cumulative cost stays within a tokens or FLOPs budget (the same
    count as :meth:`BatchPlan.steps_within`), after refusing a budget below the first batch or
    above :data:`MAX_PLANNED_STEPS` steps."""
    limit = float(budget.limit)
    unit = "tokens" if per_padded_token is None else "FLOPs"
    first = _epoch_costs(plan, 0, per_padded_token)
    if limit < first[0]:
        # Tokens are whole: the exact minimum; FLOPs: rounded up, so the shown value is valid.
        smallest = int(first[0]) if per_padded_token is None else _round_up(first[0])
        cost = f"{int(first[0]):,}" if per_padded_token is None else f"{first[0]:.4g}"
        least = str(smallest) if per_padded_token is None else f"{smallest:g}"
        raise BudgetBelowOneBatch(
            f"budget {_shown(budget)} is smaller than one training batch (the first batch of "
            f"seed {plan.seed} costs {cost} {unit}, at batch size {plan.batch_size}); "
            f"use at least {budget.kind}={least}, or a smaller batch size",
            smallest,
        )
    # Epoch 0 stands for every epoch in the estimate: a tokens epoch always costs the same (every
    # example once), a FLOPs epoch nearly so (padding differs a little between epochs).
    epoch_cost = float(first.sum())
    implied = limit / epoch_cost * len(first)
    if implied > MAX_PLANNED_STEPS:
        per_epoch = f"{epoch_cost:,.4g} {unit} per epoch of {len(first)} steps"
        raise BenchmarkConfigError(
            _too_many_steps(budget, implied, per_epoch, MAX_PLANNED_STEPS * epoch_cost / len(first))
        )
    steps, spent, epoch, costs = 0, 0.0, 0, first
    if per_padded_token is None:
        # Every tokens epoch costs the same: skip the whole ones arithmetically.
        epoch = int(limit // epoch_cost)
        steps, spent = epoch * len(first), epoch * epoch_cost
        costs = _epoch_costs(plan, epoch, None) if epoch else first
    while True:
        total = float(costs.sum())
        if spent + total > limit:
            break
        spent += total
        steps += len(costs)
        epoch += 1
        if steps > MAX_PLANNED_STEPS:  # later epochs cheaper than the first: still refused
            raise BenchmarkConfigError(_too_many_steps(budget, steps, "", 0.0))
        costs = _epoch_costs(plan, epoch, per_padded_token)
    within = np.cumsum(costs) + spent
    steps += int(np.searchsorted(within, limit, side="right"))
    if steps > MAX_PLANNED_STEPS:
        raise BenchmarkConfigError(_too_many_steps(budget, steps, "", 0.0))
    return max(1, steps)


def _too_many_steps(budget: Budget, implied: float, rate: str, largest: float) -> str:
    """The message for a budget implying more than :data:`MAX_PLANNED_STEPS` steps."""
    fix = (
        f"use at most {budget.kind}={_round_down(largest):g}, or a steps budget"
        if largest > 0
        else "use a smaller budget, or a steps budget"
    )
    return (
        f"budget {_shown(budget)} implies about {implied:,.3g} optimiser steps"
        + (f" ({rate})" if rate else "")
        + f", more than lorabench plans ({MAX_PLANNED_STEPS:,} steps); {fix} (e.g. steps=1000)"
    )


def _shown(budget: Budget) -> str:
    """``KIND=LIMIT`` with a large limit in exponent form (``tokens=1e+20``, not 21 digits)."""
    limit = budget.limit
    text = f"{limit:g}" if abs(limit) >= 1e7 or not float(limit).is_integer() else str(int(limit))
    return f"{budget.kind}={text}"


def _round_up(value: float) -> float:
    """``value`` rounded up to three significant digits (a minimum that stays valid when shown)."""
    if value <= 0:
        return value
    scale = 10.0 ** (math.floor(math.log10(value)) - 2)
    return math.ceil(value / scale - 1e-9) * scale


def _round_down(value: float) -> float:
    """``value`` rounded down to two significant digits (a maximum that stays valid when shown)."""
    if value <= 0:
        return value
    scale = 10.0 ** (math.floor(math.log10(value)) - 1)
    return math.floor(value / scale + 1e-9) * scale


class Stopwatch:
    """``with watch: ...`` adds the elapsed wall time to ``watch.seconds``.

    On CUDA (and MPS) the device is synchronised before the clock is read at either end: kernels
    run asynchronously, so an unsynchronised clock would time their launch, not their work, and
    a ``seconds`` budget would be spent on the host's view of the device rather than the device's.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self.last = 0.0
        self._start = 0.0

    def __enter__(self) -> Stopwatch:
        self._sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.last = time.perf_counter() - self._start
        self.seconds += self.last

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()
