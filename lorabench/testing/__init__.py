"""Test helpers for variant authors: the variant contract suite and tiny random models.

A third-party variant package checks its variant against the same contract as the built-ins,
in its own tests and without lorabench's ``tests/`` folder::

    from lorabench.testing import VariantContractTests

    class TestMyVariant(VariantContractTests):
        variant = "my-variant"          # the registered name
        config = {"r": 4}               # optional: a small config for the tiny models

or, outside pytest, ``check_variant_contract("my-variant")``, which raises
:class:`ContractError` listing every failed check. The models (BERT, RoBERTa, GPT-2, Llama,
hidden size 32, 2 layers) are built from transformers' config classes; nothing is downloaded.
"""

from lorabench.testing.contract import (
    CHECKS,
    GENERIC_CONFIG,
    ContractError,
    ContractSkip,
    VariantContractTests,
    check_variant_contract,
    contract_config,
)
from lorabench.testing.models import FAMILIES, TinyFamily, build_model, logits, make_batch

__all__ = [
    "CHECKS",
    "FAMILIES",
    "GENERIC_CONFIG",
    "ContractError",
    "ContractSkip",
    "TinyFamily",
    "VariantContractTests",
    "build_model",
    "check_variant_contract",
    "contract_config",
    "logits",
    "make_batch",
]
