"""IncreLoRA (Zhang et al., 2023): SVD-form adapters that start small and gain rank by importance.

    y = W x + bias + (dropout(x) Q^T * (lambda * m)) P^T * alpha / (ranknum + 1e-5)

with right singular vectors ``Q = lora_A`` (r, in), left singular vectors ``P = lora_B``
(out, r), singular values ``lambda = lora_E`` (r, 1) and ``m`` the mask of active ranks
(``rank_mask``); ``r`` is the cap, the most ranks a matrix may reach, all pre-allocated. The layer
is AdaLoRA's (:class:`~lorabench.variants.adalora.AdaLoRALayer`: ``P``, ``Q`` normal(0, 0.02),
``lambda`` zeros, so the adapted model starts equal to the base model) with the first ``init_r``
ranks active. ``ranknum`` is the number of active ranks, as in the authors' ``SVDLinear``
(``loralib/loralib/increlora.py``). An inactive rank contributes exactly zero and its ``Q`` row,
``P`` column and ``lambda`` get exactly zero gradient (``lambda * m`` is zero there).

Training, driven by the harness through the :class:`Variant` hooks:

* the orthogonality regulariser ``orth_reg_weight * mean_M ||M M^T - I||_F`` over the active
  rows of every ``Q`` and the active columns of every ``P`` (the authors' trainer,
  ``compute_svd_orth_regu``), returned by :meth:`IncreLoRA.regularization_loss`;
* module importance, recorded in every backward pass while ranks are still to be added: the
  authors' score of one matrix, ``s = sum |dW * dL/d(dW)| / sqrt(out * in)`` with ``dW`` the
  whole update (``P diag(lambda m) Q * scale``), from a gradient hook on the layer's output
  (``dL/d(dW) = g^T dropout(x)``); after every optimiser step, :meth:`IncreLoRA.after_step`
  smooths it as AdaLoRA does, per module instead of per entry:
  ``I_bar = b1 I_bar + (1 - b1) s``, ``U_bar = b2 U_bar + (1 - b2) |s - I_bar|``, importance
  ``I_bar * U_bar``;
* growth: after 0-based step ``t`` with ``t > init_warmup`` and ``t % incre_interval == 0`` (the
  authors' test on their ``global_step``, which counts the steps before the current one), one
  round adds ``min(top_h * incre_rank_num, ranks still missing)`` ranks: ``incre_rank_num`` to
  each of the highest-importance modules in turn (:meth:`IncreLoRA.grow`), until the average rank
  reaches ``target_rank``. A new rank starts with ``lambda = 0`` and fresh normal(0, 0.02) ``Q``
  row and ``P`` column (the authors' new rank without advance learning), and the active singular
  values of a grown matrix are multiplied by ``(ranknum_new + 1e-5) / (ranknum_old + 1e-5)``
  so that its update, and the model's output, are unchanged by the growth.

Departures from the authors' code, on purpose (docs/variants/increlora.md has the details):

* **a cap**: ranks are pre-allocated up to ``r`` per matrix (the harness' one optimiser is built
  once over fixed tensors); the authors append new parameters without limit. A module at the cap
  is passed over and the next most important one takes its share.
* **no advance learning**: the authors' default trains reserve ranks (``lambda`` fixed at 1e-5)
  before they are activated; here an inactive rank contributes exactly zero, as their
  ``advance_learn=False`` path does.
* **no output jump at growth**: the authors divide by the new ``ranknum`` at once, shrinking the
  grown matrix's update by ``ranknum_old / ranknum_new``; here the active ``lambda`` are rescaled
  to compensate (the same function of the parameters afterwards).
* **no learning-rate restart for new ranks**: the authors put each round's new parameters in a
  new optimiser group with its own warm-up and linear decay over the remaining steps
  (``Multi_LambdaLR``, fresh Adam state); here they share the harness' AdamW and schedule.
  AdamW's decoupled weight decay shrinks the unused ``Q`` rows and ``P`` columns (harmless:
  they are redrawn when activated); an inactive ``lambda`` stays exactly 0 (zero gradient, zero
  moments, decay of 0). Adam's step count is shared, so a new rank's first updates are
  bias-corrected as if its moments had run since step 0: larger (a few times the learning rate
  at first) than the authors' fresh group gives.
* **round size**: the authors pick the ``min(top_h, ranks missing)`` modules at or above the
  k-th score (ties add more) and give each ``incre_rank_num``, which overshoots the target when
  ``incre_rank_num > 1``; here a round adds exactly ``min(top_h * incre_rank_num, missing)``
  ranks, ties broken by module order, so the target is met exactly.
* **regulariser over active ranks only**: the authors' sum also covers the reserve vectors.
* step numbering follows the authors' ``global_step`` (see above), unlike AdaLoRA's module here.

Saving stores only the active ranks plus the pattern of active ranks (as AdaLoRA does), so the
file has the final ranks' size; loading puts them back, giving identical outputs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lorabench.variants.adalora import AdaLoRALayer
from lorabench.variants.base import (
    ConfigError,
    Variant,
    VariantConfig,
    add_low_rank,
    check_fraction,
    check_non_negative_float,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
    layer_shape,
    saved_rank_pattern,
    scheduled_rank_label,
)
from lorabench.variants.registry import VARIANTS

# The authors add this to ranknum before dividing (as AdaLoRA does).
_RANKNUM_EPS = 1e-5
# Standard deviation of the authors' init of P and Q, also of every new rank.
_INIT_STD = 0.02


@dataclass
class IncreLoRAConfig(VariantConfig):
    """IncreLoRA hyper-parameters (defaults: the authors' GLUE QNLI script at average rank 2,
    ``NLU/scripts/rank=2/run_qnli.sh``).

    Attributes:
        r: the cap, the most ranks one matrix may reach (pre-allocated; the authors have none).
            Must be at least ``target_rank``; the default 8 is never reached by the authors'
            QNLI schedule (at most 1 + 6 rounds).
        init_r: the rank every matrix starts at (the authors' ``lora_r``).
        target_rank: the average rank over all adapted matrices at the end of the schedule
            (the total is ``target_rank * n_matrices``); the rank a report puts on its axis.
        alpha: the scale numerator (``lora_alpha``); the update is scaled by
            ``alpha / (ranknum + 1e-5)``, ``ranknum`` the matrix's active ranks.
        init_warmup: steps before the first growth (growth happens after 0-based step ``t``
            with ``t > init_warmup`` and ``t % incre_interval == 0``). None (the default):
            sized to the run, a tenth of its steps (see :meth:`schedule`); the authors' QNLI
            script: 500 of about 16,000 steps.
        incre_interval: steps between two growth rounds. None (the default): sized to the
            run, so that the last round comes at half of its steps; the authors' QNLI script:
            500, its growth over by a fifth of the run.
        top_h: the modules that gain rank in one round. None (the default): a sixth of the
            adapted matrices (at least 1), the authors' proportion (their 12 of 72: query, key,
            value, attention output and both feed-forward layers of 12 layers). Their 12 given
            outright would, on a model where only 12 matrices are adapted (query and value of 6
            layers), grow every matrix in each round: no allocation at all.
        incre_rank_num: ranks one module gains in a round; None: the authors' rule
            ``target_rank // 2`` (at least 1).
        beta1: EMA factor of the sensitivity.
        beta2: EMA factor of the uncertainty.
        orth_reg_weight: weight of the orthogonality regulariser (the authors' ``reg_orth_coef``).
    """

    r: int = 8
    init_r: int = 1
    target_rank: int = 2
    alpha: float = 32.0
    init_warmup: int | None = None
    incre_interval: int | None = None
    top_h: int | None = None
    incre_rank_num: int | None = None
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.1

    def validate(self) -> None:
        super().validate()
        r = check_positive_int(self, "r")
        init_r = check_positive_int(self, "init_r")
        target = check_positive_int(self, "target_rank")
        if init_r > target:
            raise ConfigError(
                f"init_r={init_r} is larger than target_rank={target}: IncreLoRA only adds "
                f"ranks; choose init_r <= {target} (the authors start at 1)"
            )
        if target > r:
            raise ConfigError(
                f"r={r} (the cap on one matrix's rank) is below target_rank={target}: the "
                f"average cannot reach the target; choose r >= {target} (e.g. r={4 * target})"
            )
        check_positive_float(self, "alpha")
        if self.init_warmup is not None:
            check_non_negative_int(self, "init_warmup")
        if self.incre_interval is not None:
            check_positive_int(self, "incre_interval")
        if self.top_h is not None:
            check_positive_int(self, "top_h")
        if self.incre_rank_num is not None:
            check_positive_int(self, "incre_rank_num")
        for name in ("beta1", "beta2"):
            check_fraction(self, name, default="the authors use 0.85")
        check_non_negative_float(
            self, "orth_reg_weight", default="the authors use 0.1 to 0.3; 0 disables it"
        )

    @property
    def nominal_rank(self) -> int:
        """The final average rank ``target_rank``: what the adapter costs once grown."""
        return int(self.target_rank)

    @property
    def ranks_per_module(self) -> int:
        """Ranks one module gains in a round: ``incre_rank_num``, or the authors' default
        ``target_rank // 2`` (their table {2: 1, 4: 2, 6: 3, 8: 4}), at least 1."""
        if self.incre_rank_num is not None:
            return int(self.incre_rank_num)
        return max(1, int(self.target_rank) // 2)

    def modules_per_round(self, n_matrices: int | None = None) -> int:
        """``top_h``, or when None a sixth of the ``n_matrices`` adapted matrices (at least 1;
        the authors' 12 when the count is unknown)."""
        if self.top_h is not None:
            return int(self.top_h)
        return 12 if n_matrices is None else max(1, round(n_matrices / 6))

    def ranks_per_round(self, n_matrices: int | None = None) -> int:
        """Ranks one growth round adds over ``n_matrices`` matrices (the last may add fewer)."""
        return self.modules_per_round(n_matrices) * self.ranks_per_module

    def schedule(
        self, total_steps: int | None, missing: int, n_matrices: int | None = None
    ) -> tuple[int, int]:
        """(``init_warmup``, ``incre_interval``) for a run of ``total_steps`` steps adding
        ``missing`` ranks: the configured values, or for those left None, sized to the run (no
        round before a tenth of the steps, the rounds evenly spaced up to half of them) so that
        the default schedule fits any budget longer than its rounds. A run of unknown length
        uses the authors' 500 for both."""
        warmup, interval = self.init_warmup, self.incre_interval
        if total_steps is None:
            return (500 if warmup is None else warmup, 500 if interval is None else interval)
        if warmup is None:
            warmup = total_steps // 10
        if interval is None:
            rounds = max(1, math.ceil(max(0, missing) / self.ranks_per_round(n_matrices)))
            interval = max(1, (total_steps // 2 - warmup) // rounds)
        return warmup, interval


def growth_steps(
    config: IncreLoRAConfig,
    missing: int,
    total_steps: int | None = None,
    n_matrices: int | None = None,
) -> list[int]:
    """The 0-based steps after which the rounds adding ``missing`` ranks over ``n_matrices``
    matrices happen in a run of ``total_steps``: the first multiple of ``incre_interval`` above
    ``init_warmup``, then every ``incre_interval`` (as :meth:`IncreLoRAConfig.schedule` gives
    them)."""
    warmup, interval = config.schedule(total_steps, missing, n_matrices)
    rounds = math.ceil(max(0, missing) / config.ranks_per_round(n_matrices))
    first = (warmup // interval + 1) * interval
    return [first + k * interval for k in range(rounds)]


def check_schedule(
    config: IncreLoRAConfig, total_steps: int, missing: int, n_matrices: int | None = None
) -> None:
    """Every growth round adding ``missing`` ranks must come before the last of ``total_steps``
    steps, so that the ranks it adds train at least one step (a round after the last step would
    report ranks that never changed the model)."""
    steps = growth_steps(config, missing, total_steps, n_matrices)
    warmup, interval = config.schedule(total_steps, missing, n_matrices)
    if not steps or steps[-1] < total_steps - 1:
        return
    rounds = len(steps)
    fit = (total_steps - 2) // (rounds + 1)
    fix = (
        f"lower them (e.g. init_warmup={fit}, incre_interval={fit}), raise top_h, or train for "
        "more steps"
        if fit >= 1
        else f"raise top_h or incre_rank_num, or train for at least {rounds + 2} steps"
    )
    raise ConfigError(
        f"IncreLoRA's schedule does not fit in {total_steps} steps: {missing} ranks to add, "
        f"top_h={config.modules_per_round(n_matrices)} x "
        f"incre_rank_num={config.ranks_per_module} per round, is "
        f"{rounds} rounds, after steps {steps[0] + 1}, ..., {steps[-1] + 1} with "
        f"init_warmup={warmup} and incre_interval={interval}; {fix}"
    )


class IncreLoRALayer(AdaLoRALayer):
    """AdaLoRA's SVD-form layer at the cap ``r``, with the active ranks masked in and the scale
    ``alpha / (ranknum + 1e-5)`` following the number of active ranks."""

    trainable_names: ClassVar[tuple[str, ...]] = ("lora_A", "lora_B", "lora_E")

    def __init__(self, base_layer: nn.Module, config: IncreLoRAConfig, variant: Variant) -> None:
        super().__init__(base_layer, config, variant)  # lora_A/B/E at the cap, rank_mask
        init_r = int(config.init_r)
        self.rank_mask[init_r:] = False
        # A Python number kept equal to rank_mask.sum(), so that forward needs no device sync.
        self.ranknum = float(init_r)
        # The authors' sensitivity of this step, summed over its backward passes (None: none).
        self._sensitivity: torch.Tensor | None = None

    @property
    def scale(self) -> float:
        """``alpha / (ranknum + 1e-5)``: the authors' scale at the current rank."""
        return self.scaling / (self.ranknum + _RANKNUM_EPS)

    def _masked_e(self) -> torch.Tensor:
        # (r, 1); inactive singular values are exactly zero, and so are their gradients.
        return self.lora_E * self.rank_mask.view(-1, 1)

    def adapter_forward(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x).to(self.lora_A.dtype)
        h = F.linear(x, self.lora_A * self._masked_e())  # (..., in) -> (..., r)
        out = add_low_rank(base_out, h, self.lora_B.T, self.scale)  # (..., r) -> (..., out)
        if out.requires_grad and self.variant.tracking:
            out.register_hook(functools.partial(self._record_sensitivity, x.detach()))
        return out

    def delta_weight(self) -> torch.Tensor:
        # (out, r) @ (r, in) -> (out, in)
        return self.lora_B @ (self.lora_A * self._masked_e()) * self.scale

    def rank(self) -> int:
        """The active ranks of this matrix."""
        return int(self.ranknum)

    @torch.no_grad()
    def _record_sensitivity(self, x: torch.Tensor, grad: torch.Tensor) -> None:
        """The authors' score, ``sum |dW * dL/d(dW)| / sqrt(out * in)``; ``dL/d(dW)`` is
        ``g^T x`` over the tokens (x after dropout), an (out, in) product."""
        g = grad.reshape(-1, self.out_features)
        grad_w = g.T @ x.reshape(-1, self.in_features).to(g.dtype)  # (out, in)
        delta = self.delta_weight().to(grad_w.dtype)
        score = (delta * grad_w).abs().sum().float() / math.sqrt(delta.numel())
        self._sensitivity = score if self._sensitivity is None else self._sensitivity + score

    def take_sensitivity(self) -> torch.Tensor:
        """This step's score (0 if no backward pass reached the layer), then forgets it."""
        score = self._sensitivity
        self._sensitivity = None
        if score is None:
            return torch.zeros((), device=self.lora_E.device)
        return score

    @torch.no_grad()
    def add_ranks(self, k: int) -> None:
        """Activates the first ``k`` inactive ranks: ``lambda = 0``, fresh normal(0, 0.02) ``Q``
        row and ``P`` column; the active ``lambda`` are rescaled by the change of ``ranknum``
        so that the update is unchanged."""
        if k <= 0:
            return
        free = (~self.rank_mask).nonzero().view(-1)[:k]
        if free.numel() < k:
            raise ValueError(f"cannot add {k} ranks: {free.numel()} left below the cap")
        old = self.ranknum
        new = old + k
        self.lora_E[self.rank_mask] *= (new + _RANKNUM_EPS) / (old + _RANKNUM_EPS)
        fresh_a = torch.empty(k, self.in_features, dtype=self.lora_A.dtype, device=free.device)
        fresh_b = torch.empty(self.out_features, k, dtype=self.lora_B.dtype, device=free.device)
        nn.init.normal_(fresh_a, mean=0.0, std=_INIT_STD)
        nn.init.normal_(fresh_b, mean=0.0, std=_INIT_STD)
        self.lora_A[free] = fresh_a
        self.lora_B[:, free] = fresh_b
        self.lora_E[free] = 0.0
        self.rank_mask[free] = True
        self.ranknum = float(new)

    def saved_mask(self) -> torch.Tensor:
        """The active ranks: what is saved (inactive ones contribute nothing whatever their
        values)."""
        return self.rank_mask.clone()

    def set_pattern(self, mask: torch.Tensor) -> None:
        """Sets the active ranks (a loaded adapter's pattern) and ``ranknum`` with them."""
        self.rank_mask.copy_(mask)
        self.ranknum = float(int(mask.sum()))


@VARIANTS.register("increlora")
class IncreLoRA(Variant):
    """IncreLoRA: SVD-form update P*diag(lambda)*Q whose ranks grow by importance to a target."""

    name = "increlora"
    description = (
        "IncreLoRA: SVD-form update P*diag(lambda)*Q starting at rank 1; the most important "
        "modules gain rank every few steps until the average reaches a target"
    )
    version = "1"
    config_class = IncreLoRAConfig
    layer_class = IncreLoRALayer
    init_equals_base = True
    display_name = "IncreLoRA"
    report_order = 6
    adaptive_rank = True
    loss_scaling_safe = False  # importance is recorded in backward hooks, on scaled gradients
    label_fields = frozenset({"init_r", "target_rank"})

    config: IncreLoRAConfig

    @classmethod
    def rank_label(cls, config: Mapping[str, Any], ranks: Mapping[str, float] | None = None) -> str:
        """``"r=1→2"``: the initial rank, then the target average rank (``"r=2"`` when equal);
        ``" (mean 1.8)"`` is added when the final per-matrix ranks are known and their mean
        misses the target (training stopped before the last round)."""
        init_r = config.get("init_r", IncreLoRAConfig.init_r)
        target = config.get("target_rank")
        return "" if target is None else scheduled_rank_label(init_r, target, ranks)

    def __init__(self, config: IncreLoRAConfig) -> None:
        super().__init__(config)
        # Per module: the smoothed sensitivity I_bar and uncertainty U_bar (0-dim tensors).
        # Running statistics of one training run, never saved (as the authors).
        self._ipt_avg: dict[str, torch.Tensor] = {}
        self._unc_avg: dict[str, torch.Tensor] = {}
        # Whether ranks are still to be added: sensitivities are recorded only then (the
        # authors remove their backward hooks once the target is reached).
        self.tracking = config.target_rank > config.init_r
        # The schedule in steps, fixed by on_train_begin (the config's, or sized to the run).
        self.warmup_steps, self.interval_steps = config.schedule(None, 0)

    # -- building ---------------------------------------------------------------------------------
    def prepare(self, targets: dict[str, nn.Module]) -> None:
        """Checks the cap ``r`` fits every layer (``target_rank <= r`` is the config's check)."""
        for name, module in targets.items():
            out_f, in_f = layer_shape(module)
            if self.config.r > min(out_f, in_f):
                raise ConfigError(
                    f"r={self.config.r} (the cap on a matrix's rank) is larger than layer "
                    f"{name!r} allows ({out_f}x{in_f}: at most {min(out_f, in_f)}); choose "
                    f"r <= {min(out_f, in_f)} or exclude that layer from target_modules"
                )

    # -- budget -----------------------------------------------------------------------------------
    @property
    def total_rank(self) -> int:
        """Active ranks over all adapted matrices."""
        return sum(layer.rank() for layer in self._layers())

    @property
    def target_total_rank(self) -> int:
        """``target_rank`` times the number of adapted matrices."""
        return int(self.config.target_rank) * len(self.layers)

    def on_train_begin(self, total_steps: int) -> None:
        super().on_train_begin(total_steps)
        missing = self.target_total_rank - self.total_rank
        n = len(self.layers)
        check_schedule(self.config, int(total_steps), missing, n)
        self.warmup_steps, self.interval_steps = self.config.schedule(int(total_steps), missing, n)
        self._ipt_avg.clear()
        self._unc_avg.clear()
        self.tracking = self.total_rank < self.target_total_rank

    def before_step(self, step: int) -> None:
        """Forgets sensitivities from backward passes outside the step (a FLOP probe, say)."""
        for layer in self._layers():
            layer._sensitivity = None

    def is_growth_step(self, step: int) -> bool:
        """Whether a round follows 0-based step ``step`` (the authors' test on ``global_step``,
        while ranks are missing)."""
        return self.tracking and step > self.warmup_steps and step % self.interval_steps == 0

    # -- importance and growth --------------------------------------------------------------------
    def after_step(self, step: int) -> None:
        """Updates the importance with this step's scores, then grows if the schedule says so."""
        if not self.tracking:
            return
        self._update_importance()
        if self.is_growth_step(step):
            self.grow(self.importance())

    @torch.no_grad()
    def _update_importance(self) -> None:
        b1, b2 = self.config.beta1, self.config.beta2
        for name, layer in self._layers_items():
            s = layer.take_sensitivity()
            avg = b1 * self._ipt_avg.get(name, torch.zeros_like(s)) + (1 - b1) * s
            unc = self._unc_avg.get(name, torch.zeros_like(s))
            self._ipt_avg[name] = avg
            self._unc_avg[name] = b2 * unc + (1 - b2) * (s - avg).abs()

    def importance(self) -> dict[str, float]:
        """Per module, ``I_bar * U_bar`` (0 before the first step)."""
        names = list(self.layers)
        if not names:
            return {}
        zero = torch.zeros(())
        values = torch.stack(
            [(self._ipt_avg.get(n, zero) * self._unc_avg.get(n, zero)).float().cpu() for n in names]
        )
        return dict(zip(names, values.tolist(), strict=True))

    def grow(self, scores: Mapping[str, float]) -> dict[str, int]:
        """One growth round: ``min(top_h * incre_rank_num, missing)`` ranks, ``incre_rank_num``
        to each module in order of ``scores`` (highest first, ties by module order), passing
        over modules at the cap (a second pass, only if the first leaves ranks over). Returns
        the ranks added per module."""
        missing = self.target_total_rank - self.total_rank
        left = min(self.config.ranks_per_round(len(self.layers)), missing)
        if left <= 0:
            self.tracking = False
            return {}
        per_module = self.config.ranks_per_module
        order = sorted(self.layers, key=lambda n: -float(scores.get(n, 0.0)))
        added: dict[str, int] = {}
        while left > 0:
            before = left
            for name in order:
                room = int(self.config.r) - self.layers[name].rank() - added.get(name, 0)
                give = min(per_module, room, left)
                if give > 0:
                    added[name] = added.get(name, 0) + give
                    left -= give
                if left == 0:
                    break
            if left == before:  # every module at the cap: cannot happen as target_rank <= r
                break
        for name, k in added.items():
            self._layer(name).add_ranks(k)
        if self.total_rank >= self.target_total_rank:
            self.tracking = False
            self._ipt_avg.clear()
            self._unc_avg.clear()
            for layer in self._layers():
                layer._sensitivity = None
        return added

    # -- regulariser ------------------------------------------------------------------------------
    def regularization_loss(self) -> torch.Tensor | None:
        """``orth_reg_weight * mean(||Q_a Q_a^T - I||_F, ||P_a^T P_a - I||_F over all layers)``,
        ``Q_a``/``P_a`` the active rows/columns (the inactive ones are zeroed, and so is their
        part of ``I``). None when the weight is 0."""
        weight = float(self.config.orth_reg_weight)
        if weight == 0.0 or not self.layers:
            return None
        total: torch.Tensor | float = 0.0
        count = 0
        for layer in self._layers():
            mask = layer.rank_mask.to(layer.lora_A.dtype)  # (r,)
            q = layer.lora_A * mask.view(-1, 1)  # (r, in)
            p = layer.lora_B * mask.view(1, -1)  # (out, r)
            eye = torch.diag(mask)
            for cov in (q @ q.T, p.T @ p):  # both (r, r)
                total = total + torch.linalg.matrix_norm(cov - eye, ord="fro")
                count += 1
        return weight * (total / count)  # type: ignore[return-value]

    # -- rank pattern -----------------------------------------------------------------------------
    def rank_pattern(self) -> dict[str, list[bool]]:
        """Per layer, which of the ``r`` pre-allocated ranks are active (and saved)."""
        return {name: layer.saved_mask().tolist() for name, layer in self._layers_items()}

    def extra_save_config(self) -> dict[str, Any]:
        return {"rank_pattern": self.rank_pattern()}

    def load_extra_config(self, data: dict[str, Any]) -> None:
        sizes = {name: layer.rank_mask.numel() for name, layer in self._layers_items()}
        pattern = saved_rank_pattern(data, sizes, rank_name="the cap r")
        if pattern is None:
            return
        for name, layer in self._layers_items():
            layer.set_pattern(torch.tensor(pattern[name], device=layer.rank_mask.device))
        self.tracking = self.total_rank < self.target_total_rank

    # -- search -----------------------------------------------------------------------------------
    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return {
            "target_rank": {"type": "categorical", "choices": [2, 4, 8]},
            "top_h": {"type": "categorical", "choices": [2, 4, 8, 12]},
            "alpha": {"type": "categorical", "choices": [16, 32]},
            "orth_reg_weight": {"type": "categorical", "choices": [0.1, 0.3]},
            "dropout": {"type": "categorical", "choices": [0.0, 0.1]},
            "train.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
        }

    # -- helpers ----------------------------------------------------------------------------------
    def _layer(self, name: str) -> IncreLoRALayer:
        return self.layers[name]  # type: ignore[return-value]

    def _layers(self) -> list[IncreLoRALayer]:
        return list(self.layers.values())  # type: ignore[arg-type]

    def _layers_items(self) -> list[tuple[str, IncreLoRALayer]]:
        return list(self.layers.items())  # type: ignore[arg-type]
