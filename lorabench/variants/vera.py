"""VeRA (Kopiczko et al., 2024): vector-based random matrix adaptation.

One pair of frozen random matrices is shared by every adapted layer: ``A`` (r, in_max) and
``B`` (out_max, r), sized for the largest adapted layer. A layer of shape (out, in) uses the
slices ``A_s = A[:, :in]`` and ``B_s = B[:out, :]`` and trains only two vectors:

    y = W x + bias + b * (B_s (d * (A_s dropout(x)))),     d: (r,),  b: (out,)

``d`` starts at ``d_initial`` (0.1) and ``b`` at zero, so the adapted model equals the base model
at initialisation. There is no alpha scaling. Trainable parameters per layer: r + out.

The matrices are drawn exactly as PEFT 0.21 draws them, so the same ``projection_prng_key`` gives
the same matrices as ``peft.VeraConfig``: a CPU ``torch.Generator`` seeded with the key, ``A``
first then ``B``, each float32 Kaiming-uniform over its second dimension
(``U(-sqrt(6 / fan), sqrt(6 / fan))`` with fan = in_max for ``A`` and r for ``B``), then cast to
the adapted layers' dtype and device.

Saving: with ``save_projection=True`` (PEFT's default) the matrices are stored with the adapter;
with ``False`` only the seed is stored (in the config) and the matrices are regenerated on load,
which needs the same model shapes (checked by the adapter loader) and the same torch PRNG.

Defaults follow PEFT's ``VeraConfig``: r = 256, d_initial = 0.1, projection_prng_key = 0,
save_projection = True, dropout 0. The paper trains VeRA at about ten times LoRA's learning rate:
its :attr:`VeRA.recipe` scales a suite's learning rate by 10 (``recipes: none`` turns it off).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from lorabench.variants.base import (
    AdapterLayer,
    AdapterShapeError,
    ConfigError,
    Variant,
    VariantConfig,
    check_bool,
    check_non_negative_int,
    layer_shape,
)
from lorabench.variants.recipe import Recipe
from lorabench.variants.registry import VARIANTS


@dataclass
class VeRAConfig(VariantConfig):
    """VeRA hyper-parameters.

    Attributes:
        r: the rank of the shared random matrices (default 256, as PEFT and the paper).
        d_initial: the initial value of every entry of ``d`` (b starts at zero).
        projection_prng_key: the seed of the generator that draws ``A`` and ``B``.
        save_projection: store ``A`` and ``B`` with the adapter (else only the seed).
    """

    r: int = 256
    d_initial: float = 0.1
    projection_prng_key: int = 0
    save_projection: bool = True

    def validate(self) -> None:
        super().validate()
        value = self.d_initial
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value == 0
        ):
            # d = 0 together with b = 0 gives both vectors a zero gradient: nothing would train.
            raise ConfigError(
                f"d_initial={value!r} must be a finite non-zero number (d = 0 and b = 0 leave both "
                "vectors without gradient); the paper and PEFT use d_initial=0.1"
            )
        check_non_negative_int(self, "projection_prng_key")
        check_bool(self, "save_projection")


def kaiming_uniform_projection(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """A float32 CPU matrix drawn as PEFT's VeRA draws it: U(-b, b) with
    b = sqrt(3) * sqrt(2) / sqrt(fan_in)."""
    fan_in = shape[1]
    bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class VeRALayer(AdapterLayer):
    """A frozen base layer plus ``b * (B_s (d * (A_s x)))`` with shared frozen ``A``, ``B``."""

    trainable_names: ClassVar[tuple[str, ...]] = ("vera_lambda_d", "vera_lambda_b")

    def __init__(self, base_layer: nn.Module, config: VeRAConfig, variant: VeRA) -> None:
        super().__init__(base_layer, config, variant)
        w = base_layer.weight
        self.vera_lambda_d = nn.Parameter(
            torch.full((config.r,), float(config.d_initial), dtype=w.dtype, device=w.device)
        )
        self.vera_lambda_b = nn.Parameter(
            torch.zeros(self.out_features, dtype=w.dtype, device=w.device)
        )

    def projections(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's slices of the shared matrices: A_s (r, in) and B_s (out, r)."""
        variant = self.variant
        return variant.vera_A[:, : self.in_features], variant.vera_B[: self.out_features, :]

    def adapter_forward(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        a_s, b_s = self.projections()  # (r, in), (out, r); frozen
        h = self.dropout(x).to(a_s.dtype) @ a_s.T  # (..., r)
        u = (h * self.vera_lambda_d) @ b_s.T  # (..., out)
        # y = base_out + b * u in one op; b (out,) broadcasts over the leading dimensions.
        return torch.addcmul(base_out, self.vera_lambda_b, u.to(base_out.dtype))

    def delta_weight(self) -> torch.Tensor:
        a_s, b_s = self.projections()
        # (out, r) @ (r, in): diag(b) B_s diag(d) A_s
        return (self.vera_lambda_b[:, None] * b_s) @ (self.vera_lambda_d[:, None] * a_s)


@VARIANTS.register("vera")
class VeRA(Variant):
    """VeRA: frozen shared random projections, trainable per-layer scaling vectors d and b."""

    name = "vera"
    description = (
        "VeRA: shared frozen random matrices A, B; trains per-layer vectors d (r) and b (out)"
    )
    version = "1"
    config_class = VeRAConfig
    layer_class = VeRALayer
    init_equals_base = True
    display_name = "VeRA"
    report_order = 4
    recipe = Recipe(
        learning_rate_scale=10.0,
        source=(
            "the VeRA paper (Kopiczko et al., ICLR 2024), appendix table of GLUE "
            "hyper-parameters, RoBERTa-base: VeRA's learning rate 4e-3 to 1e-2 per task (its "
            "head's in the same range) where the LoRA paper's roberta_base_*.sh scripts use "
            "4e-4 to 5e-4 on the same tasks, 8x to 25x; declared as 10x, the round factor at "
            "the low end of that range (a suite can raise it: train: {learning_rate: ...})"
        ),
    )

    vera_A: torch.Tensor
    vera_B: torch.Tensor

    def max_rank(self, out_features: int, in_features: int) -> int | None:
        # The shared matrices are random and the rank is only their inner size: any r works.
        return None

    def prepare(self, targets: dict[str, nn.Module]) -> None:
        super().prepare(targets)
        shapes = [layer_shape(m) for m in targets.values()]
        out_max = max(out_f for out_f, _ in shapes)
        in_max = max(in_f for _, in_f in shapes)
        a, b = self.generate_projections(out_max, in_max)
        ref = next(iter(targets.values())).weight
        # Non-persistent when not saved, as PEFT does: the model's state_dict then has no copy.
        persistent = bool(self.config.save_projection)
        self.register_buffer(
            "vera_A", a.to(device=ref.device, dtype=ref.dtype), persistent=persistent
        )
        self.register_buffer(
            "vera_B", b.to(device=ref.device, dtype=ref.dtype), persistent=persistent
        )

    def generate_projections(self, out_max: int, in_max: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A (r, in_max) then B (out_max, r) from a CPU generator seeded with the config's key."""
        generator = torch.Generator(device="cpu").manual_seed(self.config.projection_prng_key)
        a = kaiming_uniform_projection((self.config.r, in_max), generator)
        b = kaiming_uniform_projection((out_max, self.config.r), generator)
        return a, b

    def shared_state(self) -> dict[str, torch.Tensor]:
        if not self.config.save_projection:
            return {}  # regenerated from projection_prng_key on load
        return {"vera_A": self.vera_A.detach(), "vera_B": self.vera_B.detach()}

    def load_shared_state(self, state: dict[str, torch.Tensor]) -> None:
        if not self.config.save_projection:
            if state:
                raise AdapterShapeError(
                    f"the saved adapter holds {sorted(state)} but its config says "
                    "save_projection=False; the file and config do not belong together"
                )
            return  # prepare() already regenerated the matrices from the seed
        for name in ("vera_A", "vera_B"):
            if name not in state:
                raise AdapterShapeError(
                    f"saved adapter has no shared matrix _shared.{name} although its config says "
                    "save_projection=True; re-save it, or set save_projection=False in "
                    "lorabench_adapter.json to regenerate the matrices from projection_prng_key"
                )
            current = getattr(self, name)
            value = state[name]
            if tuple(value.shape) != tuple(current.shape):
                raise AdapterShapeError(
                    f"_shared.{name}: saved shape {tuple(value.shape)} does not fit this model's "
                    f"{tuple(current.shape)}; load the adapter into the model it was trained on"
                )
            with torch.no_grad():
                current.copy_(value)

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return {
            "r": {"type": "categorical", "choices": [64, 128, 256, 512]},
            "d_initial": {"type": "categorical", "choices": [0.01, 0.1, 1.0]},
            "dropout": {"type": "categorical", "choices": [0.0, 0.1]},
            "train.learning_rate": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
        }
