"""LoRA (Hu et al., 2021), with the rsLoRA scaling option (Kalajdzievski, 2023).

    y = W x + bias + s * B (A dropout(x)),   s = alpha / r   (rsLoRA: alpha / sqrt(r))

A (r, in) starts Kaiming-uniform with a = sqrt(5) (the nn.Linear default), B (out, r) starts at
zero, so the adapted model equals the base model at initialisation. Defaults follow PEFT
(r = 8, alpha = 8, dropout 0); the paper's GLUE runs used alpha = 16.
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
    Variant,
    VariantConfig,
    add_low_rank,
    check_bool,
    check_positive_float,
)
from lorabench.variants.registry import VARIANTS


@dataclass
class LoRAConfig(VariantConfig):
    """LoRA hyper-parameters. ``use_rslora`` switches the scale to ``alpha / sqrt(r)``."""

    alpha: float = 8.0
    use_rslora: bool = False

    def validate(self) -> None:
        super().validate()
        check_positive_float(self, "alpha")
        check_bool(self, "use_rslora")

    def scaling(self, r: int | None = None) -> float:
        """The factor ``s`` on ``B A`` at rank ``r`` (default: the config's ``r``): ``alpha / r``,
        or ``alpha / sqrt(r)`` with ``use_rslora``."""
        r = self.r if r is None else r
        return self.alpha / math.sqrt(r) if self.use_rslora else self.alpha / r


def rslora_name(name: str, config: Mapping[str, Any] | None) -> str:
    """``name`` prefixed with "rs" when ``config`` turns on rsLoRA scaling ("rsLoRA", "rsDoRA"),
    so that a report never shows the two scalings under one name."""
    return f"rs{name}" if config and config.get("use_rslora") is True else name


class LoRALayer(AdapterLayer):
    """A frozen base layer plus ``s * B A``."""

    trainable_names: ClassVar[tuple[str, ...]] = ("lora_A", "lora_B")

    def __init__(self, base_layer: nn.Module, config: LoRAConfig, variant: Variant) -> None:
        super().__init__(base_layer, config, variant)
        w = base_layer.weight
        r = config.r
        self.scaling = config.scaling()
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(
            torch.zeros(self.out_features, r, dtype=w.dtype, device=w.device)
        )
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def adapter_forward(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        # (..., in) -> (..., r) -> (..., out); two thin matmuls, never the full (out, in) product.
        # F.linear, not x @ A.T: its backward forms A's gradient as (r, tokens) @ (tokens, in),
        # the fast layout for a thin matrix (the same numbers).
        h = F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A)
        return add_low_rank(base_out, h, self.lora_B.T, self.scaling)

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling


@VARIANTS.register("lora")
class LoRA(Variant):
    """LoRA: a trainable low-rank update s*B@A on frozen weights (rsLoRA scaling optional)."""

    name = "lora"
    description = (
        "LoRA: trainable low-rank update s*B@A on frozen weights (rsLoRA scaling optional)"
    )
    version = "1"
    config_class = LoRAConfig
    layer_class = LoRALayer
    init_equals_base = True
    display_name = "LoRA"
    report_order = 0
    label_fields = frozenset({"r", "use_rslora"})

    @classmethod
    def report_name(cls, config: Mapping[str, Any] | None = None) -> str:
        """ "LoRA", or "rsLoRA" for a run with ``use_rslora`` (another scaling, another method
        in the rsLoRA paper's tables)."""
        return rslora_name(super().report_name(config), config)

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return {
            "r": {"type": "categorical", "choices": [1, 2, 4, 8, 16]},
            "alpha": {"type": "categorical", "choices": [8, 16, 32]},
            "dropout": {"type": "categorical", "choices": [0.0, 0.1]},
            "train.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
        }
