"""The variant contract, checked for every registered variant on four tiny model families.

The checks themselves live in :mod:`lorabench.testing` (``VariantContractTests``), the same
suite a third-party variant package runs in its own tests; here it runs on every variant
registered at collection time, so a new built-in variant or an installed third-party plugin is
tested without touching this file (test_registry.py runs it on the tiny test plugin). A variant
whose defaults do not fit hidden size 32 gets a small config from ``CONFIG_OVERRIDES``; anything
else gets ``GENERIC_CONFIG``. Keys a variant's config does not take are dropped.

Below the suite: loading into the wrong model or with another version, and target-module
patterns, which are the attach machinery's, checked once with LoRA.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from lorabench.testing import (
    GENERIC_CONFIG,
    VariantContractTests,
    build_model,
    contract_config,
    logits,
    make_batch,
)
from lorabench.testing.contract import perturb
from lorabench.variants import AdapterShapeError, ConfigError, attach, list_variants, load_adapter
from lorabench.variants.adapter import CONFIG_FILE

CONFIG_OVERRIDES: dict[str, dict[str, Any]] = {
    "lora": {"r": 4, "alpha": 8},
    "dora": {"r": 4, "alpha": 8},
    "vera": {"r": 4},
    "adalora": {"r": 4, "target_r": 2, "tinit": 0, "tfinal": 0, "deltaT": 1},
    "dylora": {"r": 4, "alpha": 8},
    "sora": {"r": 4, "alpha": 8},
    "increlora": {
        "r": 4,
        "init_r": 1,
        "target_rank": 2,
        "top_h": 2,
        "init_warmup": 0,
        "incre_interval": 1,
    },
    # The reference methods take no setting. What of the contract does not apply to them is read
    # from what they declare (mergeable = False: merge must be refused; wraps_layers = False: no
    # rank, detach keeps the trained weights; trains_head_only: head declares nothing to move),
    # and BitFit skips Llama, which has no bias to train.
    "full": {},
    "bitfit": {},
    "head": {},
}

VARIANT_NAMES = list_variants()


def test_registry_has_the_builtin_variants() -> None:
    assert "lora" in VARIANT_NAMES
    assert VARIANT_NAMES, "no variant registered: the matrix below would be empty"


class TestEveryRegisteredVariant(VariantContractTests):
    """The contract suite of lorabench.testing, for each registered variant x model family."""

    def contract_variants(self) -> list[str]:
        return VARIANT_NAMES

    def contract_config(self, variant: str, family: str) -> dict[str, Any]:
        return contract_config(variant, family, CONFIG_OVERRIDES.get(variant, GENERIC_CONFIG))


def attached(variant: str, family: str, *, seed: int = 0):
    model = build_model(family, seed=seed)
    return model, attach(
        model, variant, contract_config(variant, family, CONFIG_OVERRIDES.get(variant))
    )


# -- loading into the wrong model, or with another version ----------------------------------------
def test_loading_into_another_architecture_names_the_saved_layers(tmp_path) -> None:
    attach(build_model("gpt2"), "lora", r=4, target_modules=["c_attn"]).save(tmp_path / "gpt2")
    bert = build_model("bert")
    with pytest.raises(
        AdapterShapeError,
        match=r"saved for another model: its layers \['transformer\.h\.0\.attn\.c_attn'",
    ) as info:
        load_adapter(bert, tmp_path / "gpt2")
    assert "'c_attn' matches no module" in str(info.value)
    assert "Load it into the model it was trained on" in str(info.value)


def test_loading_an_adapter_of_another_variant_version_warns(tmp_path) -> None:
    model, adapter = attached("lora", "bert")
    perturb(adapter)
    expected = logits(model, make_batch())
    adapter.save(tmp_path / "a")
    meta_path = tmp_path / "a" / CONFIG_FILE
    meta = json.loads(meta_path.read_text())
    meta["variant_version"] = "0-old"
    meta_path.write_text(json.dumps(meta))
    fresh = build_model("bert")
    with pytest.warns(UserWarning, match=r"saved by 'lora' version 0-old, this is version 1"):
        load_adapter(fresh, tmp_path / "a")
    torch.testing.assert_close(logits(fresh, make_batch()), expected, rtol=0, atol=0)


# -- target-module patterns -----------------------------------------------------------------------
BERT_QV = [f"bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")]


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (["query", "value"], BERT_QV),  # suffixes of whole name components (PEFT's convention)
        (["self.query", "self.value"], BERT_QV),
        (["*.attention.*.value"], BERT_QV[1::2]),  # the README's glob
        (["bert.encoder.layer.?.attention.self.query"], BERT_QV[0::2]),
        (
            [r"re:.*layer\.[0-5]\..*dense"],
            [  # the README's regex: every dense of both layers
                f"bert.encoder.layer.{i}.{m}.dense"
                for i in (0, 1)
                for m in ("attention.output", "intermediate", "output")
            ],
        ),
        ([r"re:.*layer\.0\..*(query|value)"], BERT_QV[:2]),
        ("value", BERT_QV[1::2]),  # a single string is one pattern
        (["query", "*.self.query"], BERT_QV[0::2]),  # overlapping patterns adapt a module once
    ],
)
def test_patterns_select_linear_modules_by_suffix_glob_or_regex(
    patterns, expected: list[str]
) -> None:
    adapter = attach(build_model("bert"), "lora", r=2, target_modules=patterns)
    assert sorted(adapter.layers) == sorted(expected)


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (["c_attn"], ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]),
        (
            ["transformer.h.1.*.c_*"],
            [
                "transformer.h.1.attn.c_attn",
                "transformer.h.1.attn.c_proj",
                "transformer.h.1.mlp.c_fc",
                "transformer.h.1.mlp.c_proj",
            ],
        ),
        (
            [r"re:transformer\.h\.0\.mlp\.c_(fc|proj)"],
            ["transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"],
        ),
    ],
)
def test_patterns_select_gpt2_conv1d_modules(patterns, expected: list[str]) -> None:
    model = build_model("gpt2")
    adapter = attach(model, "lora", r=2, target_modules=patterns)
    assert sorted(adapter.layers) == sorted(expected)
    for name, layer in adapter.layers.items():
        assert type(layer.base_layer).__name__ == "Conv1D" and layer.fan_in_fan_out, name
        assert (layer.out_features, layer.in_features) == tuple(
            reversed(layer.base_layer.weight.shape)
        )


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("uery", r"'uery' matches no module.*Did you mean 'query'"),  # a suffix is whole components
        ("*.attention.*.vlaue", r"matches no module.*Did you mean 'value'"),
        (r"re:.*qurey", r"matches no module.*'query'"),
        ("re:(query", r"'re:\(query' is not a valid regex"),
        (
            "re:.*LayerNorm",
            r"matches only modules of type \['LayerNorm'\].*only nn\.Linear and GPT-2 Conv1D",
        ),
    ],
)
def test_bad_patterns_fail_with_the_module_names(pattern: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        attach(build_model("bert"), "lora", r=2, target_modules=[pattern])


# -- the reference methods: what is checked, and what is skipped ----------------------------------
def test_the_reference_methods_skip_only_what_they_declare_does_not_apply() -> None:
    from lorabench.testing import check_variant_contract
    from lorabench.testing.contract import CHECKS

    def skipped(ran: list[str]) -> set[str]:
        return set(CHECKS) - {case.partition("[")[0] for case in ran}

    # Full fine-tuning: every check runs (merge as a refusal, detach keeping the weights).
    assert skipped(check_variant_contract("full", families=["bert", "gpt2"])) == set()
    # The head alone: nothing of its own to move, save into another shape or train in a loop.
    assert skipped(check_variant_contract("head", families=["bert"])) == {
        "perturbed_adapter_changes_output",
        "only_declared_parameters_get_gradients",
        "loading_into_a_model_of_another_shape_fails",
        "training_hooks_run_in_a_mini_loop",
    }
    # BitFit on a model without biases: not applicable, so nothing runs (and nothing fails).
    assert check_variant_contract("bitfit", families=["llama"]) == []
    assert skipped(check_variant_contract("bitfit", families=["roberta"])) == set()


# -- the suite catches a broken variant -----------------------------------------------------------
def test_the_contract_names_the_checks_a_broken_variant_fails() -> None:
    """``check_variant_contract`` (the suite outside pytest) runs every check and reports each
    failure by check and family: a merge that adds another delta than the forward uses, and a
    declared parameter the forward never reaches, are both caught."""
    from torch import nn

    from lorabench.testing import ContractError, check_variant_contract
    from lorabench.variants import VARIANTS
    from lorabench.variants.lora import LoRA, LoRALayer

    class WrongLayer(LoRALayer):
        trainable_names = ("lora_A", "lora_B", "unused")

        def __init__(self, base_layer, config, variant) -> None:
            super().__init__(base_layer, config, variant)
            self.unused = nn.Parameter(torch.zeros(1, dtype=base_layer.weight.dtype))

        def delta_weight(self) -> torch.Tensor:
            return 2 * super().delta_weight()  # not what forward adds

    @VARIANTS.register("test-broken-contract")
    class Broken(LoRA):
        layer_class = WrongLayer

    try:
        with pytest.raises(ContractError) as info:
            check_variant_contract("test-broken-contract", config={"r": 2}, families=["bert"])
        message = str(info.value)
        assert "variant 'test-broken-contract' breaks the contract" in message
        assert "merge_matches_unmerged_and_unmerge_restores_bits[bert]" in message
        assert "only_declared_parameters_get_gradients[bert]" in message
        assert "declared trainable parameters the forward never used" in message
        assert "save_load_roundtrip_in_a_fresh_model[bert]" not in message  # that one holds
        # And a working variant passes, reporting what it ran.
        ran = check_variant_contract("lora", config={"r": 2}, families=["bert"])
        assert "merge_matches_unmerged_and_unmerge_restores_bits[bert]" in ran
    finally:
        VARIANTS.unregister("test-broken-contract")
