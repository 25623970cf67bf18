"""DoRA (Liu et al., 2024): weight-decomposed low-rank adaptation.

The adapted weight is split into a trainable magnitude ``m`` (one value per output unit) and a
direction given by the frozen weight plus a LoRA update:

    W' = m * (W + s B A) / ||W + s B A||_row,     s = alpha / r   (rsLoRA: alpha / sqrt(r))

``||.||_row`` is the L2 norm over the input dimension (one value per output unit). ``m`` starts at
``||W||_row`` and ``B`` at zero, so the adapted model equals the base model at initialisation.
As in section 4.3 of the paper (and PEFT), the norm is treated as a constant in the backward
pass: it is computed without building a graph, which is what makes DoRA affordable.

Forward, with ``g = m / ||W + s B A||_row`` (detached norm) and ``h = A x``:

    y = W x + bias + (g - 1) * (W x) + g * s * B h          (PEFT's form)
      = g * (W x + bias + s * B h) + (1 - g) * bias          (the form computed here)

The second form is the same function, rearranged so that the base layer's output (bias
included) is reused as is: one fused ``addmm`` adds ``s * B h`` into it and one ``addcmul`` applies
``g`` and the bias correction ``(1 - g) * bias``, an (out,)-sized vector. Only one activation of
shape (..., out) is kept for backward (the gradient of ``m`` needs it), where PEFT's form keeps
two. At initialisation ``g == 1`` and ``B == 0`` exactly, so the output is the base output bit
for bit. With dropout on (and in training mode), PEFT's rule is followed: the DoRA term uses
``W dropout(x)``, recomputed without bias, while the base output uses the undropped ``x``.

Merging writes ``W' = g * (W + s B A)`` into the base weight (the bias is left alone); unmerging
restores the saved original weight exactly.

Defaults follow PEFT's ``LoraConfig(use_dora=True)``: r = 8, alpha = 8, dropout 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lorabench.variants.base import AdapterLayer, Variant
from lorabench.variants.lora import LoRAConfig, rslora_name
from lorabench.variants.registry import VARIANTS


@dataclass
class DoRAConfig(LoRAConfig):
    """DoRA hyper-parameters: LoRA's (r, alpha, dropout, use_rslora); ``m`` needs none."""


class DoRALayer(AdapterLayer):
    """A frozen base layer re-weighted as ``m * (W + s B A) / ||W + s B A||_row``."""

    trainable_names: ClassVar[tuple[str, ...]] = ("lora_A", "lora_B", "magnitude")

    def __init__(self, base_layer: nn.Module, config: DoRAConfig, variant: Variant) -> None:
        super().__init__(base_layer, config, variant)
        w = base_layer.weight
        r = config.r
        self.scaling = config.scaling()
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, dtype=w.dtype, device=w.device))
        # B is (out, r) but stored (r, out) row-major, so that B.T in forward is contiguous: then
        # autograd computes B's gradient as h^T @ grad_z, a (r, N) @ (N, out) product, instead of
        # grad_z^T @ h, (out, N) @ (N, r), which BLAS runs several times slower (measured 1.6 ms
        # vs 0.3 ms per layer at N = 2048, out = 384, r = 8 on CPU). Values and shape are as PEFT's.
        self.lora_B = nn.Parameter(
            torch.zeros(r, self.out_features, dtype=w.dtype, device=w.device).T
        )
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        # m = ||W + s B A||_row with B = 0, computed by the same code as in forward so that
        # g = m / norm is exactly 1 at initialisation.
        self.magnitude = nn.Parameter(self.weight_norm())

    @torch.no_grad()
    def weight_norm(self) -> torch.Tensor:
        """``||W + s B A||_row``, shape (out,), outside the autograd graph (paper sec. 4.3).

        One (out, in) temporary: ``addmm`` writes ``W + s * (B @ A)`` in a single pass.
        """
        w = self.base_weight()  # (out, in); a transposed view for Conv1D
        a, b = self.lora_A.to(w.dtype), self.lora_B.to(w.dtype)
        direction = torch.addmm(w, b, a, alpha=self.scaling)  # (out, in)
        return torch.linalg.vector_norm(direction, dim=1)  # (out,)

    def adapter_forward(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        # x: (..., in); base_out = W x + bias: (..., out)
        bias = self.base_layer.bias
        g = self.magnitude / self.weight_norm().to(self.magnitude.dtype)  # (out,), grad to m only
        use_dropout = self.training and not isinstance(self.dropout, nn.Identity)
        xd = self.dropout(x) if use_dropout else x
        h = F.linear(xd.to(self.lora_A.dtype).reshape(-1, self.in_features), self.lora_A)  # (N, r)
        lead = base_out.shape[:-1]
        if not use_dropout:
            # z = W x + bias + s * B h in one gemm-accumulate into the base output: (N, out)
            z = torch.addmm(
                base_out.reshape(-1, self.out_features), h, self.lora_B.T, alpha=self.scaling
            )
            if bias is None:
                return (g * z).reshape(*lead, self.out_features).to(base_out.dtype)
            # y = g * z + (1 - g) * bias = W x + bias + (g - 1) W x + g s B h
            y = torch.addcmul(bias - g * bias, g, z)
            return y.reshape(*lead, self.out_features).to(base_out.dtype)
        # Dropout on: the DoRA term sees W dropout(x) (no bias), as PEFT computes it.
        wx = self._linear_no_bias(xd).reshape(-1, self.out_features)  # (N, out)
        u = torch.addmm(wx, h, self.lora_B.T, alpha=self.scaling)  # W xd + s B h: (N, out)
        # y = base_out + (g - 1) * W xd + g * s * B h = (base_out - W xd) + g * u
        y = torch.addcmul(base_out.reshape(-1, self.out_features) - wx, g, u)
        return y.reshape(*lead, self.out_features).to(base_out.dtype)

    def _linear_no_bias(self, x: torch.Tensor) -> torch.Tensor:
        """``W x`` without the bias, in the base layer's storage layout."""
        w = self.base_layer.weight
        return x @ w if self.fan_in_fan_out else torch.nn.functional.linear(x, w)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """``W' = g * (W + s B A)`` in (out, in) layout; the bias is not rescaled."""
        w = self.base_weight()
        direction = torch.addmm(
            w, self.lora_B.to(w.dtype), self.lora_A.to(w.dtype), alpha=self.scaling
        )
        g = self.magnitude.to(w.dtype) / torch.linalg.vector_norm(direction, dim=1)
        return g[:, None] * direction

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """``W' - W``: unlike LoRA's, DoRA's update also rescales the frozen rows."""
        return self.merged_weight() - self.base_weight()


@VARIANTS.register("dora")
class DoRA(Variant):
    """DoRA: LoRA direction update plus a trainable per-output magnitude (norm detached)."""

    name = "dora"
    description = "DoRA: LoRA update on the direction of W plus a trainable per-output magnitude"
    version = "1"
    config_class = DoRAConfig
    layer_class = DoRALayer
    init_equals_base = True
    display_name = "DoRA"
    report_order = 1
    label_fields = frozenset({"r", "use_rslora"})

    @classmethod
    def report_name(cls, config: Mapping[str, Any] | None = None) -> str:
        """ "DoRA", or "rsDoRA" for a run with ``use_rslora``."""
        return rslora_name(super().report_name(config), config)

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return {
            "r": {"type": "categorical", "choices": [1, 2, 4, 8, 16]},
            "alpha": {"type": "categorical", "choices": [8, 16, 32]},
            "dropout": {"type": "categorical", "choices": [0.0, 0.1]},
            "train.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
        }
