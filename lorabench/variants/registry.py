"""The variant registry: ``@VARIANTS.register("name")`` and the ``lorabench.variants`` entry points."""

from __future__ import annotations

from lorabench.registry import Registry

VARIANTS: Registry = Registry("variant", entry_point_group="lorabench.variants")


def register_variant(name: str | None = None, *, description: str | None = None):
    """Decorator registering a :class:`~lorabench.variants.base.Variant` subclass."""
    return VARIANTS.register(name, description=description)


def get_variant(name: str):
    """The variant class registered as ``name`` (unknown names fail with "did you mean")."""
    return VARIANTS.get(name)


def list_variants(pattern: str | list[str] = "*") -> list[str]:
    """Registered variant names matching a shell-style wildcard, e.g. ``list_variants("*lora*")``."""
    return VARIANTS.list(pattern)
