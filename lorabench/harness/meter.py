"""Measuring what a run spends, and turning a budget into a number of optimiser steps.

What is counted (``RunRecord.spent``):

* ``steps``: optimiser steps taken.
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
* ``peak_memory_bytes`` with ``memory_kind``: on CUDA, ``torch.cuda.max_memory_allocated`` since
  the run began (``"cuda_peak_allocated"``); on CPU, the peak resident set size of the process
  sampled every 20 ms by a background thread with psutil (``"cpu_rss_peak"``). The CPU figure is
  the whole process (model, data, Python), so ``memory_baseline_bytes`` (RSS when the run began)
  is recorded beside it; ``getrusage`` was not used because its maximum never resets between runs.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lorabench.harness.batches import BatchPlan
from lorabench.harness.config import Budget

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


class PeakMemory:
    """Peak memory while a run trains and evaluates; see the module docstring for the kinds."""

    def __init__(self, device: torch.device, interval: float = 0.02) -> None:
        self.device = device
        self.interval = interval
        self.kind = "cuda_peak_allocated" if device.type == "cuda" else "cpu_rss_peak"
        self.baseline = 0
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = int(torch.cuda.memory_allocated(self.device))
        else:
            import psutil

            process = psutil.Process()
            self.baseline = self._peak = int(process.memory_info().rss)

            def sample() -> None:
                while not self._stop.wait(self.interval):
                    self._peak = max(self._peak, int(process.memory_info().rss))

            self._thread = threading.Thread(target=sample, name="lorabench-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stops the CPU sampling thread; :attr:`peak` keeps its value. Does nothing on CUDA or
        when already stopped."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    @property
    def peak(self) -> int:
        """Peak memory in bytes since entry: CUDA's peak allocated memory, or on CPU the highest
        resident set size sampled (the whole process; see :attr:`baseline`)."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return self._peak


def plan_steps(
    budget: Budget,
    plan: BatchPlan,
    *,
    flops_per_padded_token: float,
    seconds_per_step: float | None = None,
    seconds_already_spent: float = 0.0,
) -> int:
    """The number of optimiser steps ``budget`` allows, known before training starts.

    ``steps``: the limit. ``tokens``: the most steps whose non-padding tokens stay within the
    limit (the batch order is fixed by the seed, so this is exact). ``flops``: the same with
    measured FLOPs per padded token. ``seconds``: (limit - seconds already spent) / measured
    seconds per step; the loop also stops when the clock runs out, whichever comes first.
    At least one step is always allowed, so that every run has something to evaluate.
    """
    if budget.kind == "steps":
        return max(1, int(budget.limit))
    if budget.kind == "tokens":
        return max(1, plan.steps_within(budget.limit, "tokens"))
    if budget.kind == "flops":
        if flops_per_padded_token <= 0:
            raise RuntimeError(
                "the FLOP counter saw no FLOPs in the sample step, so a flops budget cannot be "
                "converted to steps; use a steps, tokens or seconds budget for this model"
            )
        return max(
            1, plan.steps_within(budget.limit, "padded", per_padded_token=flops_per_padded_token)
        )
    if budget.kind == "seconds":
        if not seconds_per_step or seconds_per_step <= 0:
            raise RuntimeError("a seconds budget needs the measured seconds per step")
        return max(1, math.floor((budget.limit - seconds_already_spent) / seconds_per_step))
    raise ValueError(f"unknown budget kind {budget.kind!r}")


class Stopwatch:
    """``with watch: ...`` adds the elapsed wall time to ``watch.seconds`` (CUDA-synchronised)."""

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
