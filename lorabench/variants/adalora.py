"""AdaLoRA (Zhang et al., 2023): an SVD-shaped low-rank update whose ranks are pruned by importance.

    y = W x + bias + (dropout(x) Q^T * lambda) P^T * alpha / (ranknum + 1e-5)

with right singular vectors ``Q = lora_A`` (r, in), left singular vectors ``P = lora_B``
(out, r) and singular values ``lambda = lora_E`` (r, 1). ``P`` and ``Q`` start normal(0, 0.02)
and ``lambda`` at zero, so the adapted model starts equal to the base model. ``ranknum`` is the
initial rank and stays fixed after pruning (as in PEFT: the authors found that rescaling by the
pruned rank hurt results).

Training adds two things, both driven by the harness through the :class:`Variant` hooks:

* the orthogonality regulariser ``orth_reg_weight * mean_M ||M M^T - I||_F`` over every
  ``Q`` (``Q Q^T``) and every ``P`` (``P^T P``), returned by :meth:`AdaLoRA.regularization_loss`;
* the rank allocator, run by :meth:`AdaLoRA.after_step` after every optimiser step (gradients
  still present). Per entry: sensitivity ``I = |p * grad p|``, smoothed
  ``I_bar = b1 I_bar + (1 - b1) I``, uncertainty ``U_bar = b2 U_bar + (1 - b2) |I - I_bar|``,
  score ``s = I_bar * U_bar``. Triplet ``i`` of a matrix scores
  ``S_i = s(lambda_i) + mean_j s(Q_ij) + mean_k s(P_ki)``. The total budget falls from
  ``r * n`` to ``target_r * n`` (n adapted matrices, ``r`` the initial rank) on the cubic
  schedule of :meth:`AdaLoRA.budget_schedule`; when the schedule says so, every ``lambda_i``
  whose score is at or below the k-th smallest (k = initial budget - budget) is zeroed in
  place. At step ``T - tfinal`` the pattern is frozen and re-applied after every later step.

The allocator reproduces PEFT 0.21's ``RankAllocator`` and ``AdaLoraModel.update_and_allocate``
operation for operation (tested bit for bit against PEFT). Differences, on purpose:

* step numbering: PEFT leaves the step count to the caller (its examples pass the 0-based step
  index, so with ``tfinal = 0`` the target budget is never reached). :meth:`after_step` of
  0-based step ``s`` calls :meth:`update_and_allocate` with ``s + 1``, the number of optimiser
  steps completed, so ``tinit`` steps pass before any pruning, the last ``tfinal`` steps run on
  the frozen pattern, and the last step of a budget of ``T`` steps lands exactly on the target.
* ``total_step`` comes from the harness (:meth:`on_train_begin`), not from the user; ``tinit``
  and ``tfinal`` may be fractions of it (floats in [0, 1), resolved to whole steps when training
  begins), so the authors' schedule, set relative to each run in their scripts, suits any budget.
  Ints are steps, as in PEFT.
* ``target_r == r`` (nothing to prune) is allowed and never masks; PEFT fails there
  (``kthvalue`` with k = 0).
* the initial rank is the contract's rank field ``r``; PEFT's name ``init_r`` is accepted on
  input as a legacy alias (presets, stored configs and lorabench 0.1 databases use it).
* ``ranknum`` is a Python constant. In PEFT 0.21.2 it is a tensor that ``get_peft_model`` leaves
  with ``requires_grad=True`` (``print_trainable_parameters`` counts it), so an optimiser over all
  trainable parameters moves it; the paper and PEFT's own comments intend it fixed.

Saving stores only the kept triplets (the rows of ``Q``/``lambda`` and columns of ``P`` of the
rank pattern) plus the pattern itself, so a pruned adapter's file shrinks; loading puts them
back in place, giving identical outputs. The allocator's running averages are not saved (as in
PEFT): a loaded adapter is for evaluation or for training with a fresh schedule.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lorabench.variants.base import (
    AdapterLayer,
    AdapterShapeError,
    ConfigError,
    Variant,
    VariantConfig,
    add_low_rank,
    check_fraction,
    check_non_negative_float,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
    saved_rank_pattern,
    scheduled_rank_label,
)
from lorabench.variants.recipe import Recipe
from lorabench.variants.registry import VARIANTS

# PEFT adds this to the rank before dividing (guards r = 0, which PEFT allows and we do not).
_RANKNUM_EPS = 1e-5


@dataclass
class AdaLoRAConfig(VariantConfig):
    """AdaLoRA hyper-parameters (defaults: PEFT 0.21's ``AdaLoraConfig``).

    Attributes:
        r: the initial rank of every adapted matrix (the stored size; the nominal rank). PEFT
            and lorabench 0.1 call it ``init_r``: that name is accepted on input (presets,
            YAML, stored configs) and mapped to ``r``; giving both with different values is an
            error.
        target_r: the final average rank over all adapted matrices (the budget is
            ``target_r * n_matrices``); at most ``r``.
        alpha: the scale numerator (PEFT's ``lora_alpha``); the update is scaled by
            ``alpha / (r + 1e-5)``.
        tinit: warm-up before any pruning: an int is optimiser steps; a float in [0, 1) is a
            fraction of the run's steps, resolved when training begins (``0.1`` of 500 steps is
            50), so one setting suits every budget (the paper recipe uses it).
        tfinal: the end of training that runs on the frozen final rank pattern: optimiser steps
            (int) or a fraction of the run's steps (float in [0, 1)), as ``tinit``.
        deltaT: prune every ``deltaT`` steps during the budget-reduction phase.
        beta1: EMA factor of the sensitivity.
        beta2: EMA factor of the uncertainty.
        orth_reg_weight: weight of the orthogonality regulariser (PEFT's 0.5; the paper's
            scripts 0.1, the paper recipe's value).
        total_step: total optimiser steps of the schedule. Leave it unset: the harness supplies
            the budget's step count through ``on_train_begin``. When set, it takes precedence.
    """

    r: int = 12  # PEFT's init_r
    target_r: int = 8
    alpha: float = 8.0
    tinit: int | float = 0  # int: steps; float in [0, 1): a fraction of the run's steps
    tfinal: int | float = 0
    deltaT: int = 1  # PEFT's and the paper's name
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5
    total_step: int | None = None

    legacy_aliases: ClassVar[dict[str, str]] = {"init_r": "r"}

    def validate(self) -> None:
        super().validate()
        r = check_positive_int(self, "r")
        target_r = check_positive_int(self, "target_r")
        if target_r > r:
            raise ConfigError(
                f"target_r={target_r} is larger than the initial rank r={r}: the budget only "
                f"shrinks; choose target_r <= {r} (PEFT default 8 with r 12)"
            )
        check_positive_float(self, "alpha")
        check_steps_or_fraction(self, "tinit", example=100)
        check_steps_or_fraction(self, "tfinal", example=200)
        # Two fractions are checked now; a fraction beside steps once the run's length is known.
        fractions = isinstance(self.tinit, float) and isinstance(self.tfinal, float)
        if fractions and self.tinit + self.tfinal >= 1.0:
            raise ConfigError(
                f"tinit={self.tinit!r} + tfinal={self.tfinal!r} cover the whole run (fractions "
                "must sum to less than 1), leaving no budget-reduction phase; the paper recipe "
                "uses tinit=0.1, tfinal=0.5"
            )
        check_positive_int(self, "deltaT")
        for name in ("beta1", "beta2"):
            check_fraction(self, name, default="PEFT default 0.85")
        check_non_negative_float(self, "orth_reg_weight", default="PEFT default 0.5; 0 disables it")
        if self.total_step is not None:
            check_positive_int(self, "total_step")
            check_schedule(self, self.total_step)


def check_steps_or_fraction(cfg: Any, name: str, *, example: int) -> int | float:
    """Validation helper: a schedule length given as whole optimiser steps (an int >= 0) or as a
    fraction of the run's steps (a float in [0, 1))."""
    value = getattr(cfg, name)
    if isinstance(value, float):
        if not 0.0 <= value < 1.0:  # also refuses NaN and infinities
            raise ConfigError(
                f"{name}={value!r} must be whole optimiser steps (an int, e.g. {name}={example}) "
                f"or a fraction of the run's steps in [0, 1) (e.g. {name}=0.1); a float "
                f"{'>= 1' if value >= 1.0 else 'outside [0, 1)'} is neither"
            )
        return value
    return check_non_negative_int(cfg, name)


def schedule_steps_of(value: int | float, total_steps: int) -> int:
    """``tinit``/``tfinal`` in optimiser steps for a run of ``total_steps``: an int as given, a
    fraction rounded to the nearest step (0.58 x 100 is 58, not the 57 truncation gives)."""
    if isinstance(value, float):
        return round(value * total_steps)
    return int(value)


def check_schedule(config: AdaLoRAConfig, total_steps: int) -> None:
    """The schedule needs a budget-reduction phase: ``tinit < total_steps - tfinal`` (in steps,
    fractions resolved against ``total_steps``)."""
    tinit = schedule_steps_of(config.tinit, total_steps)
    tfinal = schedule_steps_of(config.tfinal, total_steps)
    if tinit >= total_steps - tfinal:
        shown = {
            name: f"{name}={value}" + (f" ({steps} steps)" if isinstance(value, float) else "")
            for name, value, steps in (
                ("tinit", config.tinit, tinit),
                ("tfinal", config.tfinal, tfinal),
            )
        }
        raise ConfigError(
            f"AdaLoRA's schedule has no budget-reduction phase: {shown['tinit']} + "
            f"{shown['tfinal']} must be < total steps {total_steps}; lower tinit/tfinal "
            f"(e.g. tinit={total_steps // 10}, tfinal={total_steps // 5}, or fractions such as "
            "tinit=0.1, tfinal=0.5) or train for more steps"
        )


class AdaLoRALayer(AdapterLayer):
    """A frozen base layer plus ``P diag(lambda) Q * alpha / (ranknum + 1e-5)``."""

    trainable_names: ClassVar[tuple[str, ...]] = ("lora_A", "lora_B", "lora_E")

    def __init__(self, base_layer: nn.Module, config: AdaLoRAConfig, variant: Variant) -> None:
        super().__init__(base_layer, config, variant)
        w = base_layer.weight
        r = int(config.r)
        self.scaling = float(config.alpha)
        self.ranknum = float(r)  # fixed at the initial rank, also after pruning (as PEFT)
        kw = {"dtype": w.dtype, "device": w.device}
        self.lora_A = nn.Parameter(
            torch.empty(r, self.in_features, **kw)
        )  # Q: right singular vectors
        self.lora_B = nn.Parameter(
            torch.empty(self.out_features, r, **kw)
        )  # P: left singular vectors
        self.lora_E = nn.Parameter(torch.zeros(r, 1, **kw))  # lambda: singular values
        nn.init.normal_(self.lora_A, mean=0.0, std=0.02)
        nn.init.normal_(self.lora_B, mean=0.0, std=0.02)
        # Which triplets the allocator kept (all until its first allocation). Not persistent:
        # it is saved as the rank pattern, beside the tensors.
        self.register_buffer(
            "rank_mask", torch.ones(r, dtype=torch.bool, device=w.device), persistent=False
        )

    def adapter_forward(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        # (..., in) -> (..., r) -> (..., out); (A * E) scales row i of Q by lambda_i, an (r, in)
        # product, far smaller than scaling the (..., r) activations. The scale and the addition
        # ride along with the second product (one fused addmm, see add_low_rank): PEFT's
        # ``result + (x @ (A*E).T @ B.T) * scale / ranknum`` makes two more (..., out) passes.
        h = F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A * self.lora_E)
        return add_low_rank(
            base_out, h, self.lora_B.T, self.scaling / (self.ranknum + _RANKNUM_EPS)
        )

    def delta_weight(self) -> torch.Tensor:
        # (out, r) @ (r, in) -> (out, in)
        return (
            self.lora_B @ (self.lora_A * self.lora_E) * self.scaling / (self.ranknum + _RANKNUM_EPS)
        )

    def rank(self) -> int:
        """Triplets kept by the allocator's latest allocation (``r`` before the first)."""
        return int(self.rank_mask.sum())

    # -- saving at the pruned size ----------------------------------------------------------------
    def saved_mask(self) -> torch.Tensor:
        """Triplets to save: the kept ones, plus any pruned one whose ``lambda`` has grown back
        since the last allocation (possible between allocations when ``deltaT > 1``), so that a
        save at any point reloads to identical outputs. At the end of training this is the
        rank pattern."""
        return self.rank_mask | (self.lora_E.detach().view(-1) != 0)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        keep = self.saved_mask()
        return {
            "lora_A": self.lora_A.detach()[keep],  # (kept, in)
            "lora_B": self.lora_B.detach()[:, keep],  # (out, kept)
            "lora_E": self.lora_E.detach()[keep],  # (kept, 1)
        }

    def load_adapter_state(self, state: dict[str, torch.Tensor], *, prefix: str = "") -> None:
        """Puts the saved triplets back at the positions of the rank pattern (set beforehand by
        :meth:`AdaLoRA.load_extra_config`); pruned triplets get zeros."""
        keep = self.rank_mask.clone()
        expected = {k: tuple(v.shape) for k, v in self.adapter_state().items()}
        for name, shape in expected.items():
            if name not in state:
                raise AdapterShapeError(f"saved adapter has no tensor {prefix}{name}")
            if tuple(state[name].shape) != shape:
                raise AdapterShapeError(
                    f"{prefix}{name}: saved shape {tuple(state[name].shape)} does not fit this "
                    f"layer's rank pattern ({int(keep.sum())} of {keep.numel()} triplets kept: "
                    f"{shape}); "
                    "load the adapter with the lorabench_adapter.json it was saved with"
                )
        with torch.no_grad():
            for name in ("lora_A", "lora_B", "lora_E"):
                getattr(self, name).zero_()
            self.lora_A[keep] = state["lora_A"].to(self.lora_A)
            self.lora_B[:, keep] = state["lora_B"].to(self.lora_B)
            self.lora_E[keep] = state["lora_E"].to(self.lora_E)


@VARIANTS.register("adalora")
class AdaLoRA(Variant):
    """AdaLoRA: SVD-form low-rank update, ranks pruned by importance to a budget during training."""

    name = "adalora"
    description = (
        "AdaLoRA: SVD-form update P*diag(lambda)*Q with importance-based rank pruning to a budget"
    )
    version = "1"
    config_class = AdaLoRAConfig
    layer_class = AdaLoRALayer
    init_equals_base = True
    display_name = "AdaLoRA"
    report_order = 2
    adaptive_rank = True
    label_fields = frozenset({"r", "target_r"})
    recipe = Recipe(
        config={"orth_reg_weight": 0.1, "tinit": 0.1, "tfinal": 0.5},
        source=(
            "the authors' GLUE scripts (QingruZhang/AdaLoRA, NLU/scripts/run_debertav3_*.sh): "
            "--reg_orth_coef 0.1 (PEFT's default 0.5); --init_warmup/--final_warmup 6000/22000 "
            "steps of ~50.5k (SST-2: 24 epochs at batch 32), 800/3500 of ~6.7k (CoLA), "
            "8000/50000 of ~86k (MNLI): tinit 9-12% and tfinal 44-58% of the run, declared as "
            "the fractions 0.1 and 0.5. Their learning rates (5e-4 to 1e-3, DeBERTaV3) were not "
            "set against LoRA on one setup, so LoRA's rate stays; deltaT stays PEFT's 1"
        ),
    )

    config: AdaLoRAConfig

    @classmethod
    def rank_label(cls, config: Mapping[str, Any], ranks: Mapping[str, float] | None = None) -> str:
        """``"r=12→8"``: the initial rank, then the target mean rank (just ``"r=8"`` when the
        two are equal); ``" (mean 7.9)"`` is added when the final per-matrix ranks are known and
        their mean misses the target (ties pruned at the threshold, or training stopped before
        the schedule's end)."""
        # A raw 0.1 config may still say init_r.
        r = config.get("r", config.get("init_r"))
        return scheduled_rank_label(r, config.get("target_r"), ranks)

    def __init__(self, config: AdaLoRAConfig) -> None:
        super().__init__(config)
        # Allocator state, keyed "<layer>.<lora_A|lora_B|lora_E>". Plain dicts (not buffers):
        # running statistics of one training run, never part of a saved adapter.
        self._ipt_avg: dict[str, torch.Tensor] = {}  # I_bar, smoothed sensitivity
        self._unc_avg: dict[str, torch.Tensor] = {}  # U_bar, smoothed uncertainty
        self.pattern_frozen = False  # set at step T - tfinal; afterwards the pattern is re-applied

    # -- budget -----------------------------------------------------------------------------------
    @property
    def init_budget(self) -> int:
        """Total triplets at the start: the initial rank ``r`` times the number of matrices."""
        return sum(layer.lora_E.shape[0] for layer in self._layers())

    @property
    def target_budget(self) -> int:
        """Total triplets kept at the end of the schedule: ``target_r`` times the number of
        adapted matrices."""
        return int(self.config.target_r) * len(self.layers)

    @property
    def schedule_steps(self) -> int | None:
        """``T`` of the schedule: the config's ``total_step`` if set, else the harness' count."""
        return self.config.total_step if self.config.total_step is not None else self.total_steps

    @property
    def tinit_steps(self) -> int:
        """``tinit`` in optimiser steps (a fraction resolved against ``T``)."""
        return schedule_steps_of(self.config.tinit, self._require_total())

    @property
    def tfinal_steps(self) -> int:
        """``tfinal`` in optimiser steps (a fraction resolved against ``T``)."""
        return schedule_steps_of(self.config.tfinal, self._require_total())

    def on_train_begin(self, total_steps: int) -> None:
        super().on_train_begin(total_steps)
        if self.config.total_step is not None and self.config.total_step != self.total_steps:
            warnings.warn(
                f"AdaLoRA schedules over total_step={self.config.total_step} from its config, but "
                f"training runs {self.total_steps} steps; remove total_step to follow the budget",
                stacklevel=2,
            )
        check_schedule(self.config, self._require_total())
        self._ipt_avg.clear()
        self._unc_avg.clear()
        self.pattern_frozen = False

    def budget_schedule(self, global_step: int) -> tuple[int, bool]:
        """(total budget, whether to prune) after ``global_step`` completed steps (PEFT's rule).

        Warm-up (``t <= tinit``): the initial budget, no pruning. Final phase
        (``t > T - tfinal``): the target, pruning. In between, every ``deltaT`` steps:
        ``b(t) = int((b0 - bT) * (1 - (t - tinit) / (T - tfinal - tinit))^3 + bT)``.
        """
        c = self.config
        total = self._require_total()
        tinit, tfinal = self.tinit_steps, self.tfinal_steps
        if global_step <= tinit:
            return self.init_budget, False
        if global_step > total - tfinal:
            return self.target_budget, True
        mul_coeff = 1 - (global_step - tinit) / (total - tfinal - tinit)
        budget = int((self.init_budget - self.target_budget) * (mul_coeff**3) + self.target_budget)
        return budget, global_step % c.deltaT == 0

    # -- the allocator ----------------------------------------------------------------------------
    def after_step(self, step: int) -> None:
        """Runs the allocator after 0-based optimiser step ``step`` (``step + 1`` completed)."""
        self.update_and_allocate(step + 1)

    @torch.no_grad()
    def update_and_allocate(self, global_step: int) -> None:
        """PEFT's ``AdaLoraModel.update_and_allocate(global_step)``: update the importance scores,
        then prune to the scheduled budget; freeze the pattern at ``T - tfinal`` and re-apply it
        after every later step."""
        total = self._require_total()
        final_start = total - self.tfinal_steps
        if global_step < final_start:
            self._update_importance()
            budget, prune = self.budget_schedule(global_step)
            if prune:
                self._mask_to_budget(budget)
        elif global_step == final_start:
            # Scores are not updated on this step (PEFT): the final pattern uses the running
            # averages up to the previous step, at the target budget.
            self._mask_to_budget(self.target_budget)
            self.pattern_frozen = True
            self._ipt_avg.clear()
            self._unc_avg.clear()
        else:
            for layer in self._layers():
                layer.lora_E.masked_fill_(~layer.rank_mask.view(-1, 1), 0.0)

    def _update_importance(self) -> None:
        b1, b2 = self.config.beta1, self.config.beta2
        for name, layer in self.layers.items():
            for pname in AdaLoRALayer.trainable_names:
                p = getattr(layer, pname)
                if p.grad is None:
                    raise RuntimeError(
                        f"AdaLoRA needs the gradient of {name}.{pname} to score importance, but "
                        "it is None: call adapter.after_step(step) after backward() and "
                        "optimizer.step() and before optimizer.zero_grad(), and make sure the "
                        "layer is used in forward"
                    )
                key = f"{name}.{pname}"
                if key not in self._ipt_avg:
                    self._ipt_avg[key] = torch.zeros_like(p)
                    self._unc_avg[key] = torch.zeros_like(p)
                ipt = (p * p.grad).abs()  # I: sensitivity of each entry
                self._ipt_avg[key] = b1 * self._ipt_avg[key] + (1 - b1) * ipt
                self._unc_avg[key] = (
                    b2 * self._unc_avg[key] + (1 - b2) * (ipt - self._ipt_avg[key]).abs()
                )

    def _score(self, key: str) -> torch.Tensor:
        return self._ipt_avg[key] * self._unc_avg[key]

    def triplet_scores(self) -> dict[str, torch.Tensor]:
        """Per layer, the (r,) importance of each triplet:
        ``s(E_i) + mean_j s(A_ij) + mean_k s(B_ki)``."""
        out: dict[str, torch.Tensor] = {}
        for name in self.layers:
            if f"{name}.lora_E" not in self._ipt_avg:
                raise RuntimeError(
                    "no importance scores yet: they need at least one step before pruning"
                )
            score_a = torch.mean(self._score(f"{name}.lora_A"), dim=1)  # (r, in) -> (r,)
            score_b = torch.mean(self._score(f"{name}.lora_B"), dim=0)  # (out, r) -> (r,)
            score_e = self._score(f"{name}.lora_E").view(-1)  # (r, 1) -> (r,)
            out[name] = score_e + (score_a + score_b)  # PEFT's order of additions
        return out

    def _mask_to_budget(self, budget: int) -> None:
        k = self.init_budget - budget
        if k <= 0:
            return  # nothing to prune (target_r == r); PEFT's kthvalue would fail here
        scores = self.triplet_scores()
        threshold = torch.kthvalue(torch.cat(list(scores.values())), k=k)[0].item()
        for name, layer in self._layers_items():
            pruned = scores[name] <= threshold  # ties at the threshold are pruned too (PEFT)
            layer.lora_E.masked_fill_(pruned.view(-1, 1), 0.0)
            layer.rank_mask.copy_(~pruned)

    def _require_total(self) -> int:
        total = self.schedule_steps
        if total is None:
            raise ConfigError(
                "AdaLoRA's budget schedule needs the total number of optimiser steps: call "
                "adapter.on_train_begin(total_steps) before training (the lorabench runner does), "
                "or set total_step in the AdaLoRA config"
            )
        return int(total)

    # -- regulariser ------------------------------------------------------------------------------
    def regularization_loss(self) -> torch.Tensor | None:
        """``orth_reg_weight * mean(||Q Q^T - I||_F, ||P^T P - I||_F over all layers)`` (PEFT's
        formula; all ``r`` initial triplets count, pruned or not). None when the weight is 0."""
        weight = float(self.config.orth_reg_weight)
        if weight == 0.0 or not self.layers:
            return None
        total: torch.Tensor | float = 0.0
        count = 0
        for layer in self._layers():
            for cov in (
                layer.lora_A @ layer.lora_A.T,
                layer.lora_B.T @ layer.lora_B,
            ):  # both (r, r)
                eye = torch.eye(*cov.shape, dtype=cov.dtype, device=cov.device)
                total = total + torch.linalg.matrix_norm(
                    cov - eye, ord="fro"
                )  # summed in PEFT's order
                count += 1
        return weight * (total / count)  # type: ignore[return-value]

    # -- rank pattern -----------------------------------------------------------------------------
    def rank_pattern(self) -> dict[str, list[bool]]:
        """Per layer, which of the ``r`` initial triplets are saved (see
        ``AdaLoRALayer.saved_mask``)."""
        return {name: layer.saved_mask().tolist() for name, layer in self._layers_items()}

    def extra_save_config(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"rank_pattern": self.rank_pattern()}
        if self.total_steps is not None:  # what a fractional tinit/tfinal was resolved against
            extra["total_steps"] = int(self.total_steps)
        return extra

    def load_extra_config(self, data: dict[str, Any]) -> None:
        sizes = {name: layer.rank_mask.numel() for name, layer in self._layers_items()}
        pattern = saved_rank_pattern(data, sizes, rank_name="the initial rank r")
        if pattern is None:
            return
        for name, layer in self._layers_items():
            layer.rank_mask.copy_(torch.tensor(pattern[name], device=layer.rank_mask.device))

    # -- search -----------------------------------------------------------------------------------
    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return {
            "r": {"type": "categorical", "choices": [4, 8, 12, 16]},
            "target_r": {"type": "int", "low": 1, "high": "r"},  # at most the initial rank
            "alpha": {"type": "categorical", "choices": [8, 16, 32]},
            "dropout": {"type": "categorical", "choices": [0.0, 0.1]},
            "train.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
        }

    # -- helpers ----------------------------------------------------------------------------------
    def _layers(self) -> list[AdaLoRALayer]:
        return list(self.layers.values())  # type: ignore[arg-type]

    def _layers_items(self) -> list[tuple[str, AdaLoRALayer]]:
        return list(self.layers.items())  # type: ignore[arg-type]
