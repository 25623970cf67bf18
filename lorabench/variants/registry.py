"""The variant registry: ``@VARIANTS.register("name")`` and the ``lorabench.variants`` entry
points."""

from __future__ import annotations

from typing import Any

from lorabench.registry import Registry
from lorabench.variants.base import Variant


class VariantRegistry(Registry):
    """A :class:`Registry` that keeps a variant class's ``name`` equal to its registered name.

    A saved adapter records ``variant.name`` and loading looks that name up again, so the two must
    agree: a class that does not set its own ``name`` (it inherits LoRA's ``"lora"``, or the base
    class's ``""``) gets the registered one; a class whose own ``name`` differs is refused, since
    its adapters would reload as another variant or not at all.
    """

    def add(
        self,
        obj: Any,
        *,
        name: str | None = None,
        description: str | None = None,
        overwrite: bool = False,
    ) -> Any:
        if isinstance(obj, type) and issubclass(obj, Variant):
            own = vars(obj).get("name")
            key = (name or own or getattr(obj, "name", "") or "").lower()
            if own and own.lower() != key:
                raise ValueError(
                    f"variant class {obj.__name__} has name={own!r} but is registered as {key!r}; "
                    f"use the same name in both places (e.g. name = {key!r} on the class)"
                )
            added = super().add(obj, name=name, description=description, overwrite=overwrite)
            if not own and key:
                obj.name = key  # saved adapters record it; loading looks it up again
            return added
        return super().add(obj, name=name, description=description, overwrite=overwrite)


VARIANTS: Registry = VariantRegistry("variant", entry_point_group="lorabench.variants")


def register_variant(name: str | None = None, *, description: str | None = None):
    """Decorator registering a :class:`~lorabench.variants.base.Variant` subclass."""
    return VARIANTS.register(name, description=description)


def get_variant(name: str):
    """The variant class registered as ``name`` (unknown names fail with "did you mean")."""
    return VARIANTS.get(name)


def list_variants(pattern: str | list[str] = "*") -> list[str]:
    """Registered variant names matching a shell-style wildcard, e.g.
    ``list_variants("*lora*")``."""
    return VARIANTS.list(pattern)
