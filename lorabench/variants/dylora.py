"""DyLoRA (Valipour et al., 2023): one LoRA adapter trained to work at every rank 1..r_max.

A LoRA layer of maximum rank ``r_max`` (the config's ``r``). Before each optimiser step one rank
``b`` is drawn uniformly from {r_min, ..., r_max} - the same ``b`` for every adapted layer - and
the forward pass uses only the first ``b`` rows of A and the first ``b`` columns of B:

    y = W x + bias + (alpha / b) * B[:, :b] (A[:b, :] dropout(x))

* Frozen mode (``frozen=True``, the paper's default): rows/columns ``0..b-2`` are detached, so only
  the b-th row of A and the b-th column of B receive gradient; the lower ranks, already trained
  when they were sampled, are used but not disturbed. Non-frozen mode: all ``b`` train.
* Evaluation (layer in ``eval()`` mode): the adapter runs at the evaluation rank, ``r_max`` unless
  :meth:`DyLoRA.set_eval_rank` chose another. One trained adapter is evaluated at every rank of
  :meth:`DyLoRA.eval_ranks` to get the score-vs-rank curve from a single training run.
  ``delta_weight``/``merge`` also use the evaluation rank.

Reference: the authors' code (huawei-noah/Efficient-NLP, ``DyLoRA/loralib``) keeps LoRA's
``alpha / r_max`` scale and multiplies both truncated factors by ``sqrt(r_max / b)``; the product
is ``alpha / b``, which we apply directly (equal up to float rounding). Init is LoRA's: A
Kaiming-uniform (a = sqrt(5)), B zeros, so the adapted model starts equal to the base model.

Departures from the authors' code, on purpose:

* the rank is drawn from a ``torch.Generator`` seeded by the config's ``seed`` (re-seeded in
  ``on_train_begin``), not from Python's global ``random``, so a run's rank sequence is
  reproducible and independent of other code that draws random numbers;
* ``r_min`` (default 1) is the paper's lower end of the sampling range; the authors' scripts
  always sample from 1..r_max, which is the default here;
* before the first ``before_step`` (a forward in training mode outside the harness' loop) the
  training rank is ``r_max``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lorabench.variants.base import (
    AdapterLayer,
    ConfigError,
    Variant,
    VariantConfig,
    add_low_rank,
    check_bool,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
)
from lorabench.variants.recipe import Recipe
from lorabench.variants.registry import VARIANTS


@dataclass
class DyLoRAConfig(VariantConfig):
    """DyLoRA hyper-parameters.

    Attributes:
        r: the maximum rank ``r_max`` (the adapter's stored size).
        r_min: the smallest rank sampled during training (paper: ``r_min``; authors' code: 1).
        alpha: the scale numerator; rank ``b`` is scaled by ``alpha / b`` (as LoRA at rank ``b``).
            Default 8 matches lorabench's LoRA default; the authors' GLUE scripts used 16 at
            r_max 8, as the LoRA scripts do for LoRA (so the paper recipe keeps LoRA's alpha).
        frozen: train only the sampled b-th row/column (the paper's default) instead of all b.
        seed: seeds the generator that draws the per-step rank.
    """

    r_min: int = 1
    alpha: float = 8.0
    frozen: bool = True
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        check_positive_int(self, "r_min")
        if self.r_min > self.r:
            raise ConfigError(
                f"r_min={self.r_min} is larger than the maximum rank r={self.r}; "
                f"choose r_min <= {self.r} (default 1)"
            )
        check_positive_float(self, "alpha")
        check_bool(self, "frozen")
        check_non_negative_int(self, "seed")


class DyLoRALayer(AdapterLayer):
    """A frozen base layer plus ``(alpha / b) * B[:, :b] @ A[:b]`` at the variant's current rank."""

    trainable_names: ClassVar[tuple[str, ...]] = ("lora_A", "lora_B")

    def __init__(self, base_layer: nn.Module, config: DyLoRAConfig, variant: DyLoRA) -> None:
        super().__init__(base_layer, config, variant)
        w = base_layer.weight
        r_max = config.r
        self.lora_A = nn.Parameter(
            torch.empty(r_max, self.in_features, dtype=w.dtype, device=w.device)
        )
        self.lora_B = nn.Parameter(
            torch.zeros(self.out_features, r_max, dtype=w.dtype, device=w.device)
        )
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def truncated_factors(self, b: int, *, freeze_lower: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """A[:b] (b, in) and B[:, :b] (out, b); with ``freeze_lower`` only row/column b-1 keeps
        its gradient (the paper's frozen mode)."""
        a, b_mat = self.lora_A[:b], self.lora_B[:, :b]
        if freeze_lower and b > 1:
            a = torch.cat([a[: b - 1].detach(), a[b - 1 :]], dim=0)
            b_mat = torch.cat([b_mat[:, : b - 1].detach(), b_mat[:, b - 1 :]], dim=1)
        return a, b_mat

    def adapter_forward(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        cfg: DyLoRAConfig = self.config  # type: ignore[assignment]
        b = self.variant.train_rank if self.training else self.variant.eval_rank
        a, b_mat = self.truncated_factors(b, freeze_lower=self.training and cfg.frozen)
        # (..., in) -> (..., b) -> (..., out)
        h = F.linear(self.dropout(x).to(a.dtype), a)  # see LoRALayer.adapter_forward
        return add_low_rank(base_out, h, b_mat.T, cfg.alpha / b)

    def delta_weight(self) -> torch.Tensor:
        b = self.variant.eval_rank
        return (self.lora_B[:, :b] @ self.lora_A[:b]) * (self.config.alpha / b)

    def rank(self) -> int:
        return int(self.variant.eval_rank)


@VARIANTS.register("dylora")
class DyLoRA(Variant):
    """DyLoRA: LoRA trained at a random rank b per step, usable at every rank 1..r_max."""

    name = "dylora"
    description = "DyLoRA: LoRA trained at a random rank per step, evaluable at every rank 1..r_max"
    version = "1"
    config_class = DyLoRAConfig
    layer_class = DyLoRALayer
    init_equals_base = True
    display_name = "DyLoRA"
    report_order = 3
    multi_rank_eval = True
    label_fields = frozenset({"r", "r_min"})
    # Declared, and the identity: the authors' GLUE scripts (huawei-noah/Efficient-NLP,
    # DyLoRA/examples/NLU/roberta_base_mrpc.sh and _stsb.sh: --lora_r 8 --lora_alpha 16, lr 4e-4,
    # warm-up 0.06, weight decay 0.1) train DyLoRA exactly as the LoRA scripts train LoRA, and the
    # paper compares DyLoRA at rank b with LoRA at rank b under the same alpha. Scaling DyLoRA's
    # alpha alone would make that comparison (a claim lorabench checks) one of scales.
    recipe = Recipe(
        source=(
            "the authors' GLUE scripts (Efficient-NLP/DyLoRA roberta_base_*.sh): LoRA's recipe, "
            "alpha included (16 at r 8 in both), so nothing changes relative to LoRA"
        ),
    )

    @classmethod
    def rank_label(cls, config: Mapping[str, Any], ranks: Mapping[str, float] | None = None) -> str:
        """``"r≤8"``: trained for every rank up to r_max (``"r=2..8"`` when r_min is not 1).

        A record's ``ranks`` are its evaluation rank and say nothing new, so they are ignored.
        """
        r, r_min = config.get("r"), config.get("r_min", 1)
        if r is None:
            return ""
        return f"r≤{r}" if r_min in (None, 1) else f"r={r_min}..{r}"

    def __init__(self, config: DyLoRAConfig) -> None:
        super().__init__(config)
        self._generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self.train_rank: int = config.r  # until the first before_step draws one
        self.eval_rank: int = config.r
        self.sampled_ranks: list[int] = []  # what before_step drew, in order (for diagnostics)

    def on_train_begin(self, total_steps: int) -> None:
        super().on_train_begin(total_steps)
        # Re-seed so the rank sequence of a training run depends only on the config's seed.
        self._generator.manual_seed(self.config.seed)
        self.sampled_ranks = []

    def before_step(self, step: int) -> None:
        """Draws this step's rank b ~ U{r_min..r_max}, shared by every layer."""
        cfg: DyLoRAConfig = self.config  # type: ignore[assignment]
        self.train_rank = int(torch.randint(cfg.r_min, cfg.r + 1, (1,), generator=self._generator))
        self.sampled_ranks.append(self.train_rank)

    def set_eval_rank(self, rank: int | None) -> None:
        """Evaluate (and merge) at ``rank`` in 1..r_max; None goes back to r_max."""
        r_max = self.config.r
        if rank is None:
            rank = r_max
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= r_max:
            raise ConfigError(
                f"evaluation rank {rank!r} is outside 1..{r_max} (this adapter's r_max); "
                f"choose an int in 1..{r_max}, or None for r_max"
            )
        if rank != self.eval_rank and any(layer.merged for layer in self.layers.values()):
            # The merged weight holds the delta at the old rank; changing the rank now would make
            # unmerge and the merged forward disagree with the rank reported.
            raise ConfigError(
                "cannot change the evaluation rank while the adapter is merged; call "
                "adapter.unmerge() first"
            )
        self.eval_rank = rank

    def extra_save_config(self) -> dict[str, Any]:
        # The chosen evaluation rank travels with the saved adapter (which stays r_max-sized).
        return {"eval_rank": self.eval_rank}

    def load_extra_config(self, data: dict[str, Any]) -> None:
        self.set_eval_rank(data.get("eval_rank"))

    def eval_ranks(self) -> list[int]:
        """The ranks training covered: r_min..r_max (1..r_max by default)."""
        cfg: DyLoRAConfig = self.config  # type: ignore[assignment]
        return list(range(cfg.r_min, cfg.r + 1))

    def ranks(self) -> dict[str, int]:
        """The evaluation rank, per adapted matrix (the same for all)."""
        return {name: self.eval_rank for name in self.layers}

    def step_ranks(self) -> dict[str, int]:
        """The rank drawn for the step just taken, per adapted matrix (the same for all)."""
        return {name: self.train_rank for name in self.layers}

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return {
            "r": {"type": "categorical", "choices": [4, 8, 16]},
            "alpha": {"type": "categorical", "choices": [8, 16, 32]},
            "dropout": {"type": "categorical", "choices": [0.0, 0.1]},
            "train.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
        }
