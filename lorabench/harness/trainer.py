"""The training loop: our own, small enough to read, with the hook order variants rely on.

Per optimiser step (see docs/ARCHITECTURE.md)::

    adapter.before_step(step) -> forward -> loss (+ adapter.regularization_loss()) -> backward
    -> clip -> optimizer.step() -> scheduler.step() -> adapter.after_step(step) -> zero_grad()

``adapter.on_train_begin(total_steps)`` is called once before the first step, with the number of
steps the budget allows (computed up front, see :func:`lorabench.harness.meter.plan_steps`).

Gradient accumulation (``train.grad_accum`` = N): an optimiser step runs N forwards and backwards
on N micro-batches of ``batch_size``, each task loss divided by N (the mean over the step's
examples when the micro-batches are equal); ``before_step`` runs before the first micro-batch,
the regulariser is added once (to the last micro-batch's loss), and clip, the optimiser,
``after_step`` and ``zero_grad`` run once. The step's tokens are the sum over its micro-batches.

Precision (``train.precision``): ``bf16``/``fp16`` run the model's forward under
``torch.autocast``; every parameter (frozen weights, adapter, head) and AdamW's state stay
float32, as PEFT keeps adapters float32, because a bf16 parameter loses small updates. The
regulariser and the loss are computed in float32. ``fp16`` scales the loss with
``torch.amp.GradScaler``; a step whose gradients overflow is skipped by the scaler (no update)
but still counts as an optimiser step taken (its tokens and time were spent; the budget stays
comparable), is counted in ``spend.skipped_steps``, and its variant hooks run on zeroed
gradients (a variant that reads gradients sees no signal rather than infinities).

The learning curve (``CurvePoint``) holds the task loss in ``loss`` and the regulariser in
``reg_loss``, each averaged over the steps since the previous point; the step minimises their sum.

A training log (``logger``, see :mod:`lorabench.harness.logs`) gets one row per optimiser step:
the step's task loss, regulariser, learning rate and live ranks, and the metrics of the evaluation
that follows the step, if any. Logging happens outside the timed part of a step, so it never
counts against a ``seconds`` budget.

Optimiser: AdamW over the adapter's declared parameters and, when the head trains, the task head
(its own learning rate when ``train.head_learning_rate`` is set). Weight decay applies to matrices
only; vectors (biases, LayerNorm, DoRA's magnitude, VeRA's scaling vectors, SoRA's gates) are not
decayed - nanoGPT's rule, which also keeps decay from shrinking a vector that *is* the adapted
quantity. AdaLoRA's and IncreLoRA's singular values are stored (r, 1), as in PEFT, and so are
decayed, as under PEFT with transformers' Trainer. Learning rate: linear warm-up over
``warmup_ratio`` of the steps, then linear decay to 0 at the last step (the LoRA paper's GLUE
schedule).
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from lorabench.harness.batches import BatchPlan, iterate_eval
from lorabench.harness.config import TrainConfig
from lorabench.harness.logs import (
    LogColumns,
    LogRow,
    TrainingLogger,
    progress_bars,
    rank_columns,
)
from lorabench.harness.meter import (
    TIMING_PROBE_STEPS,
    Spend,
    Stopwatch,
    count_flops,
    plan_steps,
)
from lorabench.models import head_parameters
from lorabench.results.records import CurvePoint
from lorabench.tasks.metrics import compute_metrics

if TYPE_CHECKING:
    from lorabench.harness.prepared import PreparedRun

# Loss points per run in the learning curve (more steps are averaged into one point).
CURVE_POINTS = 50
# Characters of traceback kept in a failed record.
TRACEBACK_TAIL = 3000

OnEval = Callable[[int, Mapping[str, float], "float | None"], None]


class RunPruned(Exception):
    """Raised by an ``on_eval`` callback to stop a run early; the record gets status "pruned"."""


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite."""


def seed_everything(seed: int) -> None:
    """Seeds python, numpy and torch (all devices)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def linear_schedule(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Learning-rate factor: 0 -> 1 over ``warmup_steps``, then 1 -> 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def build_optimizer(
    adapter_params: list[nn.Parameter], head_params: list[nn.Parameter], cfg: TrainConfig
) -> torch.optim.AdamW:
    """AdamW with decay on matrices only, and the head at its own learning rate if set."""
    head_lr = cfg.head_learning_rate or cfg.learning_rate
    groups = []
    for params, lr in ((adapter_params, cfg.learning_rate), (head_params, head_lr)):
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        if decay:
            groups.append({"params": decay, "lr": lr, "weight_decay": cfg.weight_decay})
        if no_decay:
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0})
    if not groups:
        raise ValueError(
            "nothing to train: the adapter declares no parameters and the head is frozen"
        )
    return torch.optim.AdamW(groups)


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns; the runner turns it into a :class:`RunRecord`."""

    status: str  # "finished" | "failed" | "pruned"
    spend: Spend
    metrics: dict[str, float] = field(default_factory=dict)
    score: float | None = None
    curve: list[CurvePoint] = field(default_factory=list)
    rank_scores: dict[int, dict[str, float]] | None = None
    error: str | None = None


def error_text(exc: BaseException) -> str:
    """``Type: message`` plus the tail of the traceback (where it happened)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if len(tb) > TRACEBACK_TAIL:
        # Keep the header, so the message part stays separable (runner.error_message).
        tb = "Traceback (most recent call last; earlier frames cut):\n..." + tb[-TRACEBACK_TAIL:]
    return f"{type(exc).__name__}: {exc}\n{tb}"


class Trainer:
    """Trains one attached adapter on one task under one budget, and evaluates it."""

    def __init__(
        self,
        prepared: PreparedRun,
        *,
        on_eval: OnEval | None = None,
        progress: bool = True,
        logger: TrainingLogger | None = None,
    ) -> None:
        """``on_eval(step, metrics, score)`` runs after every evaluation (raise
        :class:`RunPruned` there to stop); ``progress`` draws a bar of the steps on a terminal
        (never when stderr is not one); ``logger`` gets a row per optimiser step (the caller
        opened it and closes it)."""
        if prepared.adapter is None:
            raise ValueError("the prepared run has no adapter attached (prepare_run(attach=True))")
        cfg = prepared.cfg
        model, adapter, train_head = prepared.model, prepared.adapter, prepared.train_head
        self.model = model
        self.adapter = adapter
        self.spec = prepared.spec
        self.eval_splits = prepared.eval_splits
        self.cfg = cfg.train
        self.budget = cfg.budget
        self.pad_id = prepared.pad_id
        self.device = prepared.device
        self.on_eval = on_eval
        self.progress = progress
        self.progress_desc = prepared.progress_desc
        self.logger = logger
        # A step's row waits here while the evaluation after that step runs (one row per step).
        self._pending_row: LogRow | None = None
        # The plan's batches are micro-batches: optimiser step s trains on s*N .. s*N+N-1.
        self.plan = BatchPlan(prepared.train_split, cfg.train.batch_size, seed=cfg.seed)
        self.grad_accum = cfg.train.grad_accum
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            cfg.train.precision
        )
        self.head_params = head_parameters(model) if train_head else []
        for p in self.head_params:
            p.requires_grad_(True)
        self.adapter_params = adapter.trainable_parameters()
        self.params = [*self.adapter_params, *self.head_params]
        self.spend = Spend()
        self.curve: list[CurvePoint] = []
        self._train_watch = Stopwatch(self.device)
        self._eval_watch = Stopwatch(self.device)

    # -- one step's pieces ------------------------------------------------------------------
    def _batch(self, micro: int) -> dict[str, torch.Tensor]:
        """Micro-batch ``micro`` of the plan on the device."""
        return {k: v.to(self.device) for k, v in self.plan.batch(micro, self.pad_id).items()}

    def _micro_steps(self, step: int) -> range:
        """The plan's micro-batches that optimiser step ``step`` trains on."""
        return range(step * self.grad_accum, (step + 1) * self.grad_accum)

    def step_tokens(self, step: int) -> tuple[int, int]:
        """Non-padding and padded tokens of optimiser step ``step`` (all its micro-batches)."""
        micro = self._micro_steps(step)
        return (
            sum(self.plan.tokens(m) for m in micro),
            sum(self.plan.padded_tokens(m) for m in micro),
        )

    def _autocast(self) -> Any:
        """``torch.autocast`` to the run's precision (a no-op context for fp32)."""
        return torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        )

    def _loss(self, batch: dict[str, torch.Tensor], *, regularize: bool = True) -> torch.Tensor:
        """The task loss plus the adapter's regulariser. Probes before training pass
        ``regularize=False``: no variant hook may run before ``on_train_begin``."""
        loss, extra = self._loss_parts(batch, regularize=regularize)
        return loss if extra is None else loss + extra

    def _loss_parts(
        self, batch: dict[str, torch.Tensor], *, regularize: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The task loss and the adapter's regulariser (None when it has none), apart: the
        learning curve records them apart, so a large regulariser does not read as task loss."""
        with self._autocast():
            output = self.model(**batch)
        # The loss in float32 (autocast computes cross-entropy in float32 already; a model's own
        # loss may not), so the division by grad_accum and the regulariser lose nothing.
        loss = output.loss.float() if output.loss is not None else None
        if loss is None:
            raise RuntimeError(
                f"{type(self.model).__name__} returned no loss for a batch with labels; the runner "
                "needs a transformers *ForSequenceClassification model"
            )
        extra = self.adapter.regularization_loss() if regularize else None
        return loss, extra

    # -- probes before training -------------------------------------------------------------
    def probe_flops(self) -> float:
        """FLOPs per padded token from one forward+backward on the first batch (no update);
        kept in ``spend.flops_per_padded_token`` and returned."""
        batch = self._batch(0)
        watch = Stopwatch(self.device)
        with watch:
            flops = count_flops(lambda: self._loss(batch, regularize=False).backward())
        self._zero_grad()
        self.spend.probe_seconds += watch.last
        self.spend.flops_per_padded_token = flops / self.plan.padded_tokens(0)
        return self.spend.flops_per_padded_token

    def _probe_seconds_per_step(self) -> float:
        """Times a few full steps with a throw-away optimiser, then restores the parameters.

        Their time counts in ``train_seconds`` (the machine was busy training); the first step is
        a warm-up (allocations, kernel selection) and is timed but not used in the estimate.
        """
        saved = [p.detach().clone() for p in self.params]
        probe_optimizer = build_optimizer(self.adapter_params, self.head_params, self.cfg)
        times = []
        # probing(): these throw-away updates happen before on_train_begin by design; they must
        # not trip the variant's "trained without its hooks" warning.
        with self.adapter.variant.probing():
            for i in range(TIMING_PROBE_STEPS + 1):
                with self._train_watch:
                    for micro in self._micro_steps(i):
                        batch = self._batch(micro)
                        (self._loss(batch, regularize=False) / self.grad_accum).backward()
                    torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
                    probe_optimizer.step()
                    probe_optimizer.zero_grad(set_to_none=True)
                times.append(self._train_watch.last)
        with torch.no_grad():
            for p, value in zip(self.params, saved):
                p.copy_(value)
        self.spend.train_seconds += sum(times)
        return float(np.median(times[1:]))

    def _zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> tuple[dict[str, float], float | None]:
        """Metrics on every eval split (keys prefixed ``split/`` when there are several) and the
        score: the primary metric on the first split. Counted in ``eval_seconds``."""
        was_training = self.model.training
        self.model.eval()
        metrics: dict[str, float] = {}
        score = None
        with self._eval_watch:
            for i, (name, split) in enumerate(self.eval_splits.items()):
                outputs = np.zeros((len(split), max(1, self.spec.num_labels)), dtype=np.float32)
                for idx, batch in iterate_eval(split, self.cfg.eval_batch_size, self.pad_id):
                    batch = {k: v.to(self.device) for k, v in batch.items() if k != "labels"}
                    with self._autocast():
                        logits = self.model(**batch).logits
                    logits = logits.float().cpu().numpy()
                    outputs[idx] = logits.reshape(len(idx), -1)
                split_metrics = compute_metrics(self.spec, outputs, split.labels)
                prefix = f"{name}/" if len(self.eval_splits) > 1 else ""
                metrics.update({f"{prefix}{k}": float(v) for k, v in split_metrics.items()})
                if i == 0:
                    score = float(split_metrics[self.spec.primary_metric])
        self.spend.eval_seconds += self._eval_watch.last
        self.model.train(was_training)
        return metrics, score

    def evaluate_ranks(self) -> dict[int, dict[str, float]] | None:
        """Nested-rank variants (DyLoRA): metrics at every rank one training covers."""
        ranks = self.adapter.eval_ranks()
        if len(ranks) <= 1:
            return None
        scores: dict[int, dict[str, float]] = {}
        try:
            for rank in ranks:
                self.adapter.set_eval_rank(rank)
                scores[int(rank)], _ = self.evaluate()
        finally:
            self.adapter.set_eval_rank(None)
        return scores

    def _evaluate_and_report(
        self, step: int, loss: float | None
    ) -> tuple[dict[str, float], float | None]:
        metrics, score = self.evaluate()
        if self.curve and self.curve[-1].step == step:
            self.curve[-1].metrics = metrics
        else:
            self.curve.append(
                CurvePoint(step=step, loss=loss, metrics=metrics, seconds=self.spend.train_seconds)
            )
        self._log_evaluation(step, metrics)
        if self.on_eval is not None:
            self.on_eval(step, metrics, score)
        return metrics, score

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Trains within the budget and evaluates. Never raises for a failed run (NaN loss, an
        exception in a variant): the result says "failed" with the error. KeyboardInterrupt
        propagates."""
        metrics: dict[str, float] = {}
        score: float | None = None
        rank_scores = None
        try:
            self.model.train()
            self.probe_flops()
            seconds_per_step = None
            if self.budget.kind == "seconds":
                seconds_per_step = self._probe_seconds_per_step()
            total = plan_steps(
                self.budget,
                self.plan,
                flops_per_padded_token=self.spend.flops_per_padded_token,
                seconds_per_step=seconds_per_step,
                seconds_already_spent=self.spend.train_seconds,
                grad_accum=self.grad_accum,
            )
            self.spend.planned_steps = total
            self._train(total)
            metrics, score = self._evaluate_and_report(self.spend.steps, self._last_loss())
            rank_scores = self.evaluate_ranks()
            return self._result("finished", metrics, score, rank_scores)
        except RunPruned as exc:
            self.spend.stop_reason = f"pruned: {exc}"
            return self._result("pruned", self._last_metrics(), self._last_score(), None)
        except Exception as exc:
            self.spend.stop_reason = "error"
            return self._result("failed", self._last_metrics(), None, None, error_text(exc))
        finally:
            # A step whose evaluation failed or was interrupted still gets its row.
            self._flush_log()

    def _train(self, total: int) -> None:
        from tqdm import tqdm

        optimizer = build_optimizer(self.adapter_params, self.head_params, self.cfg)
        warmup = math.ceil(self.cfg.warmup_ratio * total)
        lr_factor = linear_schedule(warmup, total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        log_every = max(1, total // CURVE_POINTS)
        eval_every = self.cfg.eval_every
        seconds_limit = self.budget.limit if self.budget.kind == "seconds" else math.inf
        # fp16 only: bf16 has float32's exponent range, so its gradients do not underflow.
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.cfg.precision == "fp16")
        self.adapter.on_train_begin(total)
        if self.logger is not None:
            self.logger.start(
                LogColumns(
                    metric_names=tuple(self._metric_names()),
                    rank_modules=rank_columns(
                        self.adapter.ranks(), type(self.adapter.variant).adaptive_rank
                    ),
                )
            )
        self._zero_grad()
        running: list[float] = []  # task losses since the last curve point
        running_reg: list[float] = []  # the regulariser's values over the same steps
        bar = tqdm(
            total=total,
            desc=self.progress_desc or "train",
            unit="step",
            leave=False,
            # Piped or in CI a bar is escape sequences and a line per redraw: none there.
            disable=not (self.progress and progress_bars()),
            dynamic_ncols=True,
        )
        try:
            for step in range(total):
                # Checked before the step, and never before the first: every run takes one step.
                if step > 0 and self.spend.train_seconds >= seconds_limit:
                    self.spend.stop_reason = "seconds"
                    return
                micro_steps = self._micro_steps(step)
                with self._train_watch:
                    self.adapter.before_step(step)
                    task_total = 0.0
                    for micro in micro_steps:
                        last_micro = micro == micro_steps[-1]
                        # The regulariser once per optimiser step, with the last micro-batch.
                        task_loss, extra = self._loss_parts(
                            self._batch(micro), regularize=last_micro
                        )
                        # Divided by N so that N micro-batches sum to the step's mean loss; for
                        # N = 1 the division is exact, so the gradients are those of before.
                        loss = task_loss / self.grad_accum
                        task_total += float(loss.detach())
                        if extra is not None:
                            loss = loss + extra
                        value = float(loss.detach())
                        if not math.isfinite(value):
                            raise NonFiniteLoss(
                                f"training loss is {value} at step {step}; lower the learning "
                                f"rate (now {self.cfg.learning_rate:g}) or check the data"
                            )
                        scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)  # clip the true gradients (no-op unless fp16)
                    torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
                    scale = scaler.get_scale() if scaler.is_enabled() else 1.0
                    scaler.step(optimizer)  # skips the update when fp16 gradients overflowed
                    scaler.update()
                    skipped = scaler.is_enabled() and scaler.get_scale() < scale
                    if skipped:
                        self.spend.skipped_steps += 1
                        for p in self.params:
                            if p.grad is not None:
                                p.grad.zero_()
                    scheduler.step()
                    # The rate this step used (the scheduler has already moved to the next).
                    step_lr = self.cfg.learning_rate * lr_factor(step)
                    self.adapter.after_step(step, learning_rate=step_lr)
                    optimizer.zero_grad(set_to_none=True)
                self.spend.add_step(*self.step_tokens(step), self._train_watch.last)
                # The curve's loss is the task loss (the mean over the step's micro-batches);
                # the regulariser (0 without one) apart.
                step_loss = task_total
                step_reg = 0.0 if extra is None else float(torch.as_tensor(extra).detach())
                running.append(step_loss)
                running_reg.append(step_reg)
                done = step + 1
                bar.update(1)
                if done % log_every == 0 or done == total:
                    self.curve.append(
                        CurvePoint(
                            step=done,
                            loss=float(np.mean(running)),
                            seconds=self.spend.train_seconds,
                            reg_loss=float(np.mean(running_reg)),
                        )
                    )
                    bar.set_postfix(loss=f"{self.curve[-1].loss:.4f}")
                    running, running_reg = [], []
                evaluate_now = bool(eval_every and done % eval_every == 0 and done < total)
                if self.logger is not None:
                    # The last step (the run's final evaluation follows it, in fit) is the one
                    # where the loop stops: all steps taken, or the seconds budget spent.
                    last = done == total or self.spend.train_seconds >= seconds_limit
                    self._log_step(
                        LogRow(
                            step=done,
                            seconds=self.spend.train_seconds,
                            loss=step_loss,
                            reg_loss=step_reg,
                            learning_rate=step_lr,
                            ranks=self.adapter.step_ranks(),
                        ),
                        evaluation_follows=evaluate_now or last,
                    )
                if evaluate_now:
                    self._evaluate_and_report(done, None)
            self.spend.stop_reason = (
                self.budget.kind if self.budget.kind != "seconds" else "planned_steps"
            )
        finally:
            bar.close()

    # -- the training log -------------------------------------------------------------------
    def _metric_names(self) -> list[str]:
        """The keys :meth:`evaluate` returns, known before it runs (the log's header)."""
        names = [metric.name for metric in self.spec.metrics]
        if len(self.eval_splits) > 1:
            return [f"{split}/{name}" for split in self.eval_splits for name in names]
        return names

    def _log_step(self, row: LogRow, *, evaluation_follows: bool) -> None:
        """Hands a step's row to the logger now, or, when an evaluation of this step follows,
        keeps it until that evaluation adds its metrics."""
        self._flush_log()
        if evaluation_follows:
            self._pending_row = row
        elif self.logger is not None:
            self.logger.log(row)

    def _log_evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
        """Logs an evaluation's metrics in the row of its step (a row of its own when that
        step's row is already written)."""
        if self.logger is None:
            return
        row, self._pending_row = self._pending_row, None
        if row is not None and row.step != step:
            self.logger.log(row)
            row = None
        if row is None:
            row = LogRow(step=step, seconds=self.spend.train_seconds, ranks=self.adapter.ranks())
        row.metrics = dict(metrics)
        self.logger.log(row)

    def _flush_log(self) -> None:
        """Writes a step's row still waiting for its evaluation."""
        row, self._pending_row = self._pending_row, None
        if row is not None and self.logger is not None:
            self.logger.log(row)

    # -- helpers ----------------------------------------------------------------------------
    def _last_loss(self) -> float | None:
        for point in reversed(self.curve):
            if point.loss is not None:
                return point.loss
        return None

    def _last_metrics(self) -> dict[str, float]:
        for point in reversed(self.curve):
            if point.metrics:
                return dict(point.metrics)
        return {}

    def _last_score(self) -> float | None:
        metrics = self._last_metrics()
        key = self.spec.primary_metric
        if len(self.eval_splits) > 1:
            key = f"{next(iter(self.eval_splits))}/{key}"
        return metrics.get(key)

    def _result(
        self,
        status: str,
        metrics: dict[str, float],
        score: float | None,
        rank_scores: Any,
        error: str | None = None,
    ) -> TrainResult:
        return TrainResult(status, self.spend, metrics, score, self.curve, rank_scores, error)
