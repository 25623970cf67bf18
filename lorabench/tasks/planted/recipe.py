"""What a planted task is made from: the recipe (a task's ``options``) and the seed's streams.

Everything generated is a pure function of (recipe, model, seed); :func:`derived_generator` gives
each purpose (a module's delta, the head, a split's inputs) its own stream, so changing one part
of the recipe leaves the others' draws alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch

from lorabench.variants.base import ConfigError


class PlantedRecipeError(ConfigError):
    """A planted-task recipe is invalid for this model; the message names the key and the fix."""


@dataclass(frozen=True)
class PlantedRecipe:
    """The teacher and input recipe of a planted task.

    Each key is described in the :mod:`lorabench.tasks.planted` docstring.
    """

    ranks: dict[str, int | list[int]]
    scale: float = 1.0
    num_train: int = 2000
    num_validation: int = 500
    min_words: int = 6
    max_words: int = 12
    drop_ambiguous: float = 0.1

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> PlantedRecipe:
        """Builds and validates a recipe from a task's ``options``, naming any unknown key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise PlantedRecipeError(
                f"planted recipe has unknown key(s) {unknown}; valid keys: {sorted(known)}"
            )
        if "ranks" not in options:
            raise PlantedRecipeError("planted recipe needs 'ranks', e.g. {'query': 4, 'value': 4}")
        recipe = cls(**options)
        recipe.validate()
        return recipe

    def validate(self) -> None:
        """Raises :class:`PlantedRecipeError` naming the first invalid key and a valid value."""
        if not isinstance(self.ranks, dict) or not self.ranks:
            raise PlantedRecipeError(
                f"ranks={self.ranks!r} must be a non-empty {{pattern: rank}} dict, "
                "e.g. {'query': 4}"
            )
        for pattern, rank in self.ranks.items():
            values = rank if isinstance(rank, list | tuple) else [rank]
            if not values or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values
            ):
                raise PlantedRecipeError(
                    f"ranks[{pattern!r}]={rank!r} must be an int >= 0 or a non-empty list of them"
                )
        if not (isinstance(self.scale, int | float) and self.scale > 0):
            raise PlantedRecipeError(f"scale={self.scale!r} must be a number > 0 (e.g. 1.0)")
        for name in ("num_train", "num_validation", "min_words"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PlantedRecipeError(f"{name}={value!r} must be an integer >= 1")
        if not isinstance(self.max_words, int) or self.max_words < self.min_words:
            raise PlantedRecipeError(
                f"max_words={self.max_words!r} must be an integer >= min_words={self.min_words}"
            )
        if not (0.0 <= self.drop_ambiguous < 1.0):
            raise PlantedRecipeError(f"drop_ambiguous={self.drop_ambiguous!r} must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain JSON-serialisable data (part of the cache key and the record)."""
        return dataclasses.asdict(self)


def derived_generator(seed: int, *purpose: str) -> torch.Generator:
    """An independent ``torch.Generator`` for one purpose ("delta", module name), fixed by
    ``seed``."""
    digest = hashlib.sha256(json.dumps([int(seed), *purpose]).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
