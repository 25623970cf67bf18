"""A variant's paper recipe: how its paper and its authors' scripts trained it, relative to LoRA.

lorabench's suite recipe (``train:``) is calibrated for LoRA, and each variant's config defaults
follow PEFT (for parity tests). Some methods were published with a different recipe: VeRA trains
its vectors at about ten times LoRA's learning rate, AdaLoRA's scripts weight the orthogonality
regulariser 0.1 and prune over a schedule set relative to the run, DyLoRA's scripts use alpha 16
at r 8. A variant declares that difference as its :attr:`~lorabench.variants.base.Variant.recipe`;
a suite applies it (``recipes: paper``, the default) under anything the user set explicitly, and
every run records the values it used.

The recipe is written relative to LoRA's so that it carries over to any budget and base learning
rate: a learning-rate factor rather than a number, config values that may be proportional to
another field (:class:`Proportional`) or, for AdaLoRA's schedule, fractions of the run's steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lorabench.variants.base import VariantConfig


@dataclass(frozen=True)
class Proportional:
    """A recipe value proportional to another field of the same config: ``Proportional("r", 2)``
    is ``2 * r``, with ``r`` as the run sets it (DyLoRA's alpha of 16 at r 8 becomes 8 at r 4)."""

    field: str
    factor: float

    def resolve(self, config: VariantConfig) -> int | float:
        """The value for ``config`` (the field read from it, times the factor); a whole number
        as an int, as a user would write it (``alpha=16``, not ``alpha=16.0``, in run labels)."""
        value = float(getattr(config, self.field)) * self.factor
        return int(value) if value.is_integer() else value

    def __str__(self) -> str:
        return f"{self.factor:g}*{self.field}"


@dataclass(frozen=True)
class Recipe:
    """How a variant's paper trained it, relative to LoRA; LoRA's own recipe, ``Recipe()``, changes
    nothing.

    Attributes:
        learning_rate_scale: multiplies the suite's ``learning_rate`` (calibrated for LoRA). A
            ``head_learning_rate`` left unset follows the scaled rate (as a separate head rate
            would, in the papers that give one); one the suite sets stays as set.
        config: variant config values the paper's recipe uses where they differ from the
            library defaults (which follow PEFT). A value may be a :class:`Proportional`.
        source: where the numbers come from (paper table, the authors' scripts) and how the
            relative values were derived from them.
        scales_head: the factor also scales a ``head_learning_rate`` the suite sets (a method
            whose only trained part is the head, which trains at that rate).
    """

    learning_rate_scale: float = 1.0
    config: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    scales_head: bool = False

    def __post_init__(self) -> None:
        scale = self.learning_rate_scale
        if (
            isinstance(scale, bool)
            or not isinstance(scale, int | float)
            or not math.isfinite(scale)
            or scale <= 0
        ):
            raise ValueError(
                f"Recipe learning_rate_scale={scale!r} must be a finite number > 0 (1.0: LoRA's)"
            )
        # Read-only, so a class attribute shared by every run cannot be changed by one of them.
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))

    @property
    def is_identity(self) -> bool:
        """Whether the recipe changes nothing (LoRA's)."""
        return self.learning_rate_scale == 1.0 and not self.config

    def config_overrides(
        self, config_class: type[VariantConfig], given: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The recipe's config values for the fields ``given`` (a run's overrides) does not set,
        :class:`Proportional` values resolved against the config ``given`` describes.

        Raises ``ConfigError`` naming the field when the recipe names one the config lacks (a
        plugin's recipe out of step with its config).
        """
        from lorabench.variants.base import ConfigError

        unknown = sorted(set(self.config) - config_class.field_names())
        if unknown:
            raise ConfigError(
                f"the paper recipe of {config_class.__name__} sets {unknown}, which are not "
                f"fields of it (fields: {sorted(config_class.field_names())}); fix the "
                "variant's recipe, or run with recipes: none"
            )
        # Legacy aliases (AdaLoRA's init_r) count as the field they stand for.
        explicit = config_class.canonical_dict(given)
        wanted = {k: v for k, v in self.config.items() if k not in explicit}
        if any(isinstance(v, Proportional) for v in wanted.values()):
            # Unvalidated: a bad override is reported by the config's own validation later.
            current = config_class(**explicit)
            wanted = {
                k: v.resolve(current) if isinstance(v, Proportional) else v
                for k, v in wanted.items()
            }
        return wanted

    def scaled_learning_rate(self, learning_rate: float) -> float:
        """``learning_rate`` times the scale, rid of float noise (5e-4 x 10 is 0.005, not
        0.005000000000000001), so a record and a report show the number a user would write."""
        return float(f"{learning_rate * self.learning_rate_scale:.12g}")

    def summary(self) -> str:
        """One short line: ``"lr x10"``, ``"alpha=2*r"``, ``"orth_reg_weight=0.1, tinit=0.1"``;
        ``"-"`` for the identity."""
        parts = []
        if self.learning_rate_scale != 1.0:
            parts.append(f"lr x{self.learning_rate_scale:g}")
        parts += [f"{k}={v}" for k, v in self.config.items()]
        return ", ".join(parts) or "-"
