"""Adapter variants behind one interface, and the registry that names them.

Built-in variants register on import of their module; third-party variants through the
``lorabench.variants`` entry-point group (see :mod:`lorabench.registry`).
"""

from lorabench.variants import (
    adalora,  # noqa: F401  (registers "adalora")
    dora,  # noqa: F401  (registers "dora")
    dylora,  # noqa: F401  (registers "dylora")
    increlora,  # noqa: F401  (registers "increlora")
    lora,  # noqa: F401  (registers "lora")
    sora,  # noqa: F401  (registers "sora")
    vera,  # noqa: F401  (registers "vera")
)
from lorabench.variants.adapter import Adapter, attach, load_adapter, make_config
from lorabench.variants.base import (
    AdapterLayer,
    AdapterShapeError,
    ConfigError,
    Variant,
    VariantConfig,
)
from lorabench.variants.registry import VARIANTS, get_variant, list_variants, register_variant

__all__ = [
    "VARIANTS",
    "Adapter",
    "AdapterLayer",
    "AdapterShapeError",
    "ConfigError",
    "Variant",
    "VariantConfig",
    "attach",
    "get_variant",
    "list_variants",
    "load_adapter",
    "make_config",
    "register_variant",
]
