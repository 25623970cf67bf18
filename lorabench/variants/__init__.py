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
    reference,  # noqa: F401  (registers the reference methods "full", "bitfit", "head")
    sora,  # noqa: F401  (registers "sora")
    vera,  # noqa: F401  (registers "vera")
)
from lorabench.variants.adapter import (
    Adapter,
    NotMergeableError,
    attach,
    load_adapter,
    make_config,
)
from lorabench.variants.base import (
    AdapterLayer,
    AdapterShapeError,
    ConfigError,
    Variant,
    VariantConfig,
)
from lorabench.variants.peft_format import (
    PeftConverter,
    PeftFormatError,
    export_peft,
    register_peft_converter,
)
from lorabench.variants.recipe import Proportional, Recipe
from lorabench.variants.reference import ReferenceMethod, ReferenceMethodNotApplicable
from lorabench.variants.registry import VARIANTS, get_variant, list_variants, register_variant

__all__ = [
    "VARIANTS",
    "Adapter",
    "AdapterLayer",
    "AdapterShapeError",
    "ConfigError",
    "NotMergeableError",
    "PeftConverter",
    "PeftFormatError",
    "Proportional",
    "Recipe",
    "ReferenceMethod",
    "ReferenceMethodNotApplicable",
    "Variant",
    "VariantConfig",
    "attach",
    "export_peft",
    "get_variant",
    "list_variants",
    "load_adapter",
    "make_config",
    "register_peft_converter",
    "register_variant",
]
