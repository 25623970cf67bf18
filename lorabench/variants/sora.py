"""SoRA (Ding et al., EMNLP 2023): LoRA with a gate vector between its factors, sparsified by a
proximal step, so that each matrix keeps only the ranks it needs.

    y = W x + bias + s * B (g ⊙ (A dropout(x))),   s = alpha / r

with ``A = lora_A`` (r, in), ``B = lora_B`` (out, r) and the gate ``g = gate`` (r,). Init as in
the authors' ``LowRankLinear`` (``src/lora.py``): A Kaiming-uniform (a = sqrt(5)), B zeros, g
standard normal; B = 0 makes the adapted model equal to the base model at initialisation. ``r``
is the maximum rank; ``s`` stays ``alpha / r`` when gates die (dead ranks are removed without
rescaling the live ones). A rank whose gate is zero contributes nothing, exactly: ``A * g``
zeroes its row, so the row of A and the column of B are not used.

Training, as the authors' GLUE code does it (``run_glue.py``, ``src/trainer.py``,
``src/sparse_optimizer.py``):

* an L1 term on the gates is added to the task loss (the authors' ``compute_loss``):
  ``sparse_lambda * sum_i |g_i| / n``, n the number of gates of the whole adapter, returned by
  :meth:`SoRA.regularization_loss`;
* after the optimiser's step (the gates' AdamW update), every gate is soft-thresholded by
  :meth:`SoRA.after_step`: ``g <- sign(g) * max(|g| - t, 0)``. The authors' ``SparseAdamW`` (the
  optimiser ``run_glue.py`` imports) uses ``t = sparse_lambda_2``, a constant per step; the
  paper's update, and the authors' unused ``src/sparse_optimizer_multiply_lr.py``, use
  ``t = sparse_lambda_2 * lr`` with the learning rate of that step: ``threshold_times_lr=True``.
  A gate pruned to zero may come back when its gradient pushes it out again (as theirs).
* the optional sparsifying schedule (the paper's Algorithm 1; ``lambda_schedule``) moves the
  threshold ``sparse_lambda_2`` through ``lambda_num`` values from ``sparse_lambda_2`` to
  ``max_lambda`` (``linear``, ``log_linear`` or ``exp_linear`` spacing, the authors' three).

:meth:`SoRA.ranks` counts the live ranks (nonzero gates) of every matrix. Saving keeps only the
live ranks (rows of A, columns of B, entries of g) plus the pattern of live ranks in
``lorabench_adapter.json``; loading puts them back in place with zeros elsewhere, giving identical
outputs. The layer keeps computing at the maximum rank (dead ranks are multiplied by zero); a
merged adapter costs nothing at inference either way.

Departures from the authors' code, on purpose (docs/variants/sora.md has the details):

* the gates train in the harness' single AdamW (no weight decay on a 1-D vector, the same
  learning rate and schedule as the factors). The authors give them a second ``SparseAdamW``
  with ``lr = learning_rate``, the same warm-up and linear decay and no weight decay, i.e. the
  same update but for Adam's ``eps`` (1e-6 in transformers' AdamW, 1e-8 here);
* the threshold is the soft-threshold of the paper. The authors' three masked assignments run
  one after another on the updated tensor, so a gate with ``t < |g| < 2t`` is first shrunk below
  ``t`` and then zeroed (``|g| - t`` in the paper), and ``|g| == t`` exactly is left as it is;
* the gate is a vector (r,), not (1, r): the harness decays only matrices, and the authors' gate
  optimiser has no weight decay either;
* with ``threshold_times_lr=True`` and no learning rate given to ``after_step`` (a loop that
  does not pass it), no proximal step is taken and a warning says so once; the constant
  threshold needs no learning rate and always applies;
* the schedule runs within one training run: its ``lambda_num`` values each hold for an equal
  share of the optimiser steps. The authors first train the whole run at the first value, then
  train ``lambda_num - 1`` further stages of 15 epochs each with the same, already decayed
  optimiser and scheduler (so only the threshold still moves the gates there);
* ``target_modules`` defaults to ``"auto"`` (query and value), like every lorabench variant, so
  that comparisons adapt the same matrices. The authors' ``LoraModel`` adapts q, k, v, the
  attention output and both feed-forward layers: ``target_modules="all-linear"``.
"""

from __future__ import annotations

import math
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
    check_bool,
    check_non_negative_float,
    check_positive_float,
    check_positive_int,
    saved_rank_pattern,
    scheduled_rank_label,
)
from lorabench.variants.registry import VARIANTS

LAMBDA_SCHEDULES = ("linear", "log_linear", "exp_linear")


@dataclass
class SoRAConfig(VariantConfig):
    """SoRA hyper-parameters (defaults: the authors' ``scripts/run_glue_sora_no_schedule.sh``).

    Attributes:
        r: the maximum rank ``r_max`` of every adapted matrix (the stored size; the nominal rank).
        alpha: the scale numerator; the update is scaled by ``alpha / r`` (the authors'
            ``config/lora_config.json``: ``lora_alpha`` 16).
        sparse_lambda: weight of the L1 term ``sparse_lambda * mean_i |g_i|`` over all gates,
            added to the task loss (the authors' ``--sparse_lambda``; 0 disables it).
        sparse_lambda_2: the proximal threshold ``xi``: after every optimiser step each gate is
            soft-thresholded by ``xi`` (or ``xi * lr`` with ``threshold_times_lr``). The authors'
            ``--sparse_lambda_2``; 0 disables the proximal step. With a schedule, its first value.
        threshold_times_lr: threshold by ``sparse_lambda_2 * lr`` (the paper's update, the lr of
            the step just taken) instead of the constant ``sparse_lambda_2`` (the authors' code).
        lambda_schedule: None (a constant threshold), or how the threshold moves from
            ``sparse_lambda_2`` to ``max_lambda`` over the run: ``"linear"``, ``"log_linear"``
            (linear in ``exp``) or ``"exp_linear"`` (geometric).
        max_lambda: the threshold's last value under a schedule (authors' script: 7e-4).
        lambda_num: how many values the schedule takes; each holds for an equal share of the
            optimiser steps (authors' script: 7).
    """

    alpha: float = 16.0
    sparse_lambda: float = 10.0
    sparse_lambda_2: float = 3e-4
    threshold_times_lr: bool = False
    lambda_schedule: str | None = None
    max_lambda: float = 7e-4
    lambda_num: int = 7

    def validate(self) -> None:
        super().validate()
        check_positive_float(self, "alpha")
        check_non_negative_float(
            self, "sparse_lambda", default="the authors' GLUE default 10; 0 disables the L1 term"
        )
        check_non_negative_float(
            self,
            "sparse_lambda_2",
            default="the authors' GLUE default 3e-4; 0 disables the proximal step",
        )
        check_bool(self, "threshold_times_lr")
        schedule = self.lambda_schedule
        if schedule is not None and schedule not in LAMBDA_SCHEDULES:
            raise ConfigError(
                f"lambda_schedule={schedule!r} is not a schedule: use one of "
                f"{', '.join(repr(s) for s in LAMBDA_SCHEDULES)}, or None for a constant threshold"
            )
        check_non_negative_float(
            self, "max_lambda", default="the authors' script: 7e-4 with lambda_schedule='linear'"
        )
        check_positive_int(self, "lambda_num")
        if schedule == "exp_linear" and (self.sparse_lambda_2 <= 0 or self.max_lambda <= 0):
            raise ConfigError(
                f"lambda_schedule='exp_linear' spaces the threshold geometrically, so both ends "
                f"must be > 0, but sparse_lambda_2={self.sparse_lambda_2!r} and "
                f"max_lambda={self.max_lambda!r}; raise them above 0 or use 'linear'"
            )

    def threshold_values(self) -> list[float]:
        """The thresholds ``xi`` the run steps through: ``[sparse_lambda_2]`` without a schedule,
        else ``lambda_num`` values from ``sparse_lambda_2`` to ``max_lambda`` (the authors'
        ``SparseAdamW._build_lambda_list``)."""
        start, end, n = float(self.sparse_lambda_2), float(self.max_lambda), int(self.lambda_num)
        if self.lambda_schedule is None:
            return [start]
        if self.lambda_schedule == "linear":
            return _linspace(start, end, n)
        if self.lambda_schedule == "log_linear":
            return [math.log(v) for v in _linspace(math.exp(start), math.exp(end), n)]
        return [math.exp(v) for v in _linspace(math.log(start), math.log(end), n)]


def _linspace(start: float, end: float, n: int) -> list[float]:
    """``n`` evenly spaced values from ``start`` to ``end``, both included (numpy's
    ``linspace``)."""
    if n == 1:
        return [start]
    step = (end - start) / (n - 1)
    return [start + i * step for i in range(n - 1)] + [end]


def soft_threshold(g: torch.Tensor, t: float) -> torch.Tensor:
    """The proximal operator of ``t * |g|_1``: ``sign(g) * max(|g| - t, 0)`` (a new tensor)."""
    return torch.sign(g) * torch.clamp(g.abs() - t, min=0.0)


class SoRALayer(AdapterLayer):
    """A frozen base layer plus ``s * B diag(g) A``."""

    trainable_names: ClassVar[tuple[str, ...]] = ("lora_A", "lora_B", "gate")

    def __init__(self, base_layer: nn.Module, config: SoRAConfig, variant: Variant) -> None:
        super().__init__(base_layer, config, variant)
        w = base_layer.weight
        r = int(config.r)
        kw = {"dtype": w.dtype, "device": w.device}
        self.scaling = float(config.alpha) / r  # over r_max, also after gates die
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **kw))
        self.gate = nn.Parameter(torch.empty(r, **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.normal_(self.gate, mean=0.0, std=1.0)  # the authors' torch.randn(1, r)
        # The live-rank pattern of an adapter being loaded (set by SoRA.load_extra_config, read
        # once by load_adapter_state); None otherwise: the gates themselves are the pattern.
        self.pattern_to_load: torch.Tensor | None = None

    def adapter_forward(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        # (..., in) -> (..., r) -> (..., out). (A * g) scales row i of A by g_i, an (r, in)
        # product, far smaller than gating the (..., r) activations; the scale and the addition
        # ride along with the second product (one fused addmm, see add_low_rank).
        h = F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A * self.gate.view(-1, 1))
        return add_low_rank(base_out, h, self.lora_B.T, self.scaling)

    def delta_weight(self) -> torch.Tensor:
        # (out, r) @ (r, in) -> (out, in)
        return self.lora_B @ (self.lora_A * self.gate.view(-1, 1)) * self.scaling

    def live_mask(self) -> torch.Tensor:
        """(r,) bool: the ranks whose gate is nonzero."""
        return self.gate.detach() != 0

    def rank(self) -> int:
        """The live ranks: nonzero gates (``r`` on the meta device, where nothing is known)."""
        if self.gate.is_meta:
            return int(self.config.r)
        return int(torch.count_nonzero(self.gate.detach()))

    # -- saving at the live ranks -----------------------------------------------------------------
    def adapter_state(self) -> dict[str, torch.Tensor]:
        keep = self.live_mask() if self.pattern_to_load is None else self.pattern_to_load
        return {
            "lora_A": self.lora_A.detach()[keep],  # (live, in)
            "lora_B": self.lora_B.detach()[:, keep],  # (out, live)
            "gate": self.gate.detach()[keep],  # (live,)
        }

    def load_adapter_state(self, state: dict[str, torch.Tensor], *, prefix: str = "") -> None:
        """Puts the saved ranks back at the positions of the saved pattern (set beforehand by
        :meth:`SoRA.load_extra_config`; without one, every rank is expected); the other ranks
        get zeros, gate included, so they stay dead."""
        if self.pattern_to_load is None:
            self.pattern_to_load = torch.ones_like(self.live_mask())
        keep = self.pattern_to_load
        try:
            expected = {k: tuple(v.shape) for k, v in self.adapter_state().items()}
            for name, shape in expected.items():
                if name not in state:
                    raise AdapterShapeError(f"saved adapter has no tensor {prefix}{name}")
                if tuple(state[name].shape) != shape:
                    raise AdapterShapeError(
                        f"{prefix}{name}: saved shape {tuple(state[name].shape)} does not fit "
                        f"this layer's saved pattern ({int(keep.sum())} of {keep.numel()} ranks "
                        f"live: {shape}); load the adapter with the lorabench_adapter.json it was "
                        "saved with"
                    )
            with torch.no_grad():
                for name in self.trainable_names:
                    getattr(self, name).zero_()
                self.lora_A[keep] = state["lora_A"].to(self.lora_A)
                self.lora_B[:, keep] = state["lora_B"].to(self.lora_B)
                self.gate[keep] = state["gate"].to(self.gate)
        finally:
            self.pattern_to_load = None


@VARIANTS.register("sora")
class SoRA(Variant):
    """SoRA: LoRA with a gate between B and A, sparsified by a proximal step; dead ranks pruned."""

    name = "sora"
    description = (
        "SoRA: gated low-rank update s*B*diag(g)*A, gates soft-thresholded after every step; "
        "ranks with a zero gate are pruned"
    )
    version = "1"
    config_class = SoRAConfig
    layer_class = SoRALayer
    init_equals_base = True
    display_name = "SoRA"
    report_order = 5
    adaptive_rank = True
    label_fields = frozenset({"r"})

    config: SoRAConfig

    @classmethod
    def rank_label(cls, config: Mapping[str, Any], ranks: Mapping[str, float] | None = None) -> str:
        """``"r=8"``: the maximum rank; ``" (mean 3.4)"`` is added when the final per-matrix live
        ranks are known and their mean is below it (gates died)."""
        return scheduled_rank_label(config.get("r"), None, ranks)

    def __init__(self, config: SoRAConfig) -> None:
        super().__init__(config)
        self.threshold: float | None = None  # the proximal threshold t of the last step taken
        self._warned_no_lr = False

    # -- the threshold schedule -------------------------------------------------------------------
    def on_train_begin(self, total_steps: int) -> None:
        super().on_train_begin(total_steps)
        c = self.config
        if c.lambda_schedule is not None and c.lambda_num > self.total_steps:
            raise ConfigError(
                f"lambda_num={c.lambda_num} is more than the {self.total_steps} optimiser steps of "
                f"this run: each of the schedule's thresholds needs at least one step; lower "
                f"lambda_num to at most {self.total_steps}, train for more steps, or set "
                "lambda_schedule=None"
            )
        self.threshold = None
        self._warned_no_lr = False

    def threshold_lambda(self, step: int) -> float:
        """``xi`` at 0-based optimiser step ``step``: ``sparse_lambda_2``, or under a schedule the
        value of the stage ``step`` falls in (``lambda_num`` equal stages over the run)."""
        values = self.config.threshold_values()
        if len(values) == 1:
            return values[0]
        if self.total_steps is None:
            raise ConfigError(
                "SoRA's lambda_schedule needs the total number of optimiser steps: call "
                "adapter.on_train_begin(total_steps) before training (the lorabench runner does), "
                "or set lambda_schedule=None"
            )
        stage = min(max(step, 0) * len(values) // self.total_steps, len(values) - 1)
        return values[stage]

    # -- the proximal step ------------------------------------------------------------------------
    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Soft-thresholds every gate by ``t = xi`` (or ``xi * lr``) after optimiser step
        ``step``, the update the authors' ``SparseAdamW`` makes after its Adam step."""
        xi = self.threshold_lambda(step)
        if self.config.threshold_times_lr:
            if self.learning_rate is None:
                if not self._warned_no_lr:
                    warnings.warn(
                        "SoRA's threshold_times_lr needs the learning rate of each step, but "
                        "after_step got none: no proximal step is taken; pass "
                        "adapter.after_step(step, learning_rate=lr) (the lorabench runner does)",
                        stacklevel=3,
                    )
                    self._warned_no_lr = True
                self.threshold = None
                return
            t = xi * float(self.learning_rate)
        else:
            t = xi
        self.threshold = t
        if t <= 0.0:
            return
        for layer in self._layers():
            layer.gate.copy_(soft_threshold(layer.gate, t))

    # -- the L1 term ------------------------------------------------------------------------------
    def regularization_loss(self) -> torch.Tensor | None:
        """``sparse_lambda * sum |g| / n`` over all n gates of the adapter (the authors'
        ``compute_loss``); None when ``sparse_lambda`` is 0."""
        weight = float(self.config.sparse_lambda)
        layers = self._layers()
        if weight == 0.0 or not layers:
            return None
        total = sum(layer.gate.abs().sum() for layer in layers)
        count = sum(layer.gate.numel() for layer in layers)
        return weight * total / count  # type: ignore[return-value]

    # -- the live-rank pattern --------------------------------------------------------------------
    def rank_pattern(self) -> dict[str, list[bool]]:
        """Per layer, which of the ``r`` ranks are live (nonzero gate): what is saved."""
        return {name: layer.live_mask().tolist() for name, layer in self._layers_items()}

    def extra_save_config(self) -> dict[str, Any]:
        return {"rank_pattern": self.rank_pattern()}

    def load_extra_config(self, data: dict[str, Any]) -> None:
        sizes = {name: layer.gate.numel() for name, layer in self._layers_items()}
        pattern = saved_rank_pattern(data, sizes, rank_name="the maximum rank r")
        if pattern is None:
            return
        for name, layer in self._layers_items():
            layer.pattern_to_load = torch.tensor(pattern[name], device=layer.gate.device)

    # -- search -----------------------------------------------------------------------------------
    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return {
            "r": {"type": "categorical", "choices": [4, 8, 16]},
            "alpha": {"type": "categorical", "choices": [8, 16, 32]},
            "sparse_lambda": {"type": "float", "low": 1e-3, "high": 10.0, "log": True},
            "sparse_lambda_2": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
            "dropout": {"type": "categorical", "choices": [0.0, 0.1]},
            "train.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
        }

    # -- helpers ----------------------------------------------------------------------------------
    def _layers(self) -> list[SoRALayer]:
        return list(self.layers.values())  # type: ignore[arg-type]

    def _layers_items(self) -> list[tuple[str, SoRALayer]]:
        return list(self.layers.items())  # type: ignore[arg-type]
