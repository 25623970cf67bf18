"""The variant contract, checked for every registered variant on four tiny model families.

The matrix is generated from the registry at collection time, so a new built-in variant or an
installed third-party plugin is tested without touching this file. A variant whose defaults do
not fit hidden size 32 gets a small config from ``CONFIG_OVERRIDES``; anything else gets
``GENERIC_CONFIG``. Keys a variant's config does not have are dropped, so the table may name
fields of several spellings (AdaLoRA's initial rank as ``r`` or ``init_r``).
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import pytest
import torch
from tiny_models import FAMILIES, build_model, logits, make_batch

from lorabench.variants import (
    Adapter,
    AdapterLayer,
    AdapterShapeError,
    ConfigError,
    attach,
    get_variant,
    list_variants,
    load_adapter,
)
from lorabench.variants.adapter import CONFIG_FILE

GENERIC_CONFIG: dict[str, Any] = {"r": 4}
CONFIG_OVERRIDES: dict[str, dict[str, Any]] = {
    "lora": {"r": 4, "alpha": 8},
    "dora": {"r": 4, "alpha": 8},
    "vera": {"r": 4},
    "adalora": {"r": 4, "init_r": 4, "target_r": 2, "tinit": 0, "tfinal": 0, "deltaT": 1},
    "dylora": {"r": 4, "alpha": 8},
}
TRAIN_STEPS = 4

VARIANT_NAMES = list_variants()
FAMILY_NAMES = list(FAMILIES)
MATRIX = pytest.mark.parametrize(
    ("variant", "family"),
    [(v, f) for v in VARIANT_NAMES for f in FAMILY_NAMES],
)


def variant_config(variant: str, family: str) -> dict[str, Any]:
    """A small config for ``variant`` that fits the tiny layers of ``family``."""
    fields = get_variant(variant).config_class.field_names()
    wanted = {**CONFIG_OVERRIDES.get(variant, GENERIC_CONFIG)}
    cfg = {k: v for k, v in wanted.items() if k in fields}
    cfg["target_modules"] = list(FAMILIES[family].target_modules)
    return cfg


def attached(variant: str, family: str, *, seed: int = 0) -> tuple[torch.nn.Module, Adapter]:
    model = build_model(family, seed=seed)
    return model, attach(model, variant, variant_config(variant, family))


@torch.no_grad()
def perturb(adapter: Adapter, *, seed: int = 1, scale: float = 0.2) -> None:
    """Moves every trainable parameter away from its init (as training would)."""
    g = torch.Generator().manual_seed(seed)
    for p in adapter.trainable_parameters():
        p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_registry_has_the_builtin_variants() -> None:
    assert "lora" in VARIANT_NAMES
    assert VARIANT_NAMES, "no variant registered: the matrix below would be empty"


@MATRIX
def test_init_equals_base(variant: str, family: str) -> None:
    if not get_variant(variant).init_equals_base:
        pytest.skip(f"{variant} does not start equal to the base model")
    batch = make_batch()
    base = logits(build_model(family), batch)
    model, _ = attached(variant, family)
    torch.testing.assert_close(logits(model, batch), base, rtol=0, atol=1e-12)


@MATRIX
def test_perturbed_adapter_changes_output(variant: str, family: str) -> None:
    batch = make_batch()
    model, adapter = attached(variant, family)
    before = logits(model, batch)
    perturb(adapter)
    after = logits(model, batch)
    assert (after - before).abs().max() > 1e-6


@MATRIX
def test_only_declared_parameters_get_gradients(variant: str, family: str) -> None:
    model, adapter = attached(variant, family)
    perturb(adapter)
    declared = {id(p) for p in adapter.trainable_parameters()}
    assert declared, "the adapter declares no trainable parameters"
    assert all(p.requires_grad for p in adapter.trainable_parameters())
    requiring = {id(p) for p in model.parameters() if p.requires_grad}
    assert requiring == declared, "model parameters with requires_grad differ from the declared list"

    model.train()
    adapter.on_train_begin(TRAIN_STEPS)
    adapter.before_step(0)
    loss = model(**make_batch()).loss
    reg = adapter.regularization_loss()
    (loss if reg is None else loss + reg).backward()

    undeclared = sorted(n for n, p in model.named_parameters() if p.grad is not None and id(p) not in declared)
    assert not undeclared, f"base-model parameters received gradients: {undeclared[:5]}"
    # And the declaration is no wider than what the forward uses: every declared tensor is reached.
    unreached = sorted(n for n, p in adapter.named_trainable_parameters().items() if p.grad is None)
    assert not unreached, f"declared trainable parameters the forward never used: {unreached[:5]}"
    assert any(p.grad.abs().sum() > 0 for p in adapter.trainable_parameters())


@MATRIX
def test_merge_matches_unmerged_and_unmerge_restores_bits(variant: str, family: str) -> None:
    batch = make_batch()
    model, adapter = attached(variant, family)
    perturb(adapter)
    unmerged_out = logits(model, batch)
    weights_before = clone_state(model)

    adapter.merge()
    assert adapter.merged
    torch.testing.assert_close(logits(model, batch), unmerged_out, rtol=1e-7, atol=1e-9)
    adapter.merge()  # idempotent: a second merge must not add the delta twice
    torch.testing.assert_close(logits(model, batch), unmerged_out, rtol=1e-7, atol=1e-9)

    adapter.unmerge()
    assert not adapter.merged
    assert_state_equal(clone_state(model), weights_before)
    torch.testing.assert_close(logits(model, batch), unmerged_out, rtol=0, atol=0)


@MATRIX
def test_detach_returns_the_original_model(variant: str, family: str) -> None:
    batch = make_batch()
    model = build_model(family)
    # A mixed requires_grad pattern, which detach must restore (attach freezes everything).
    for p in model.get_input_embeddings().parameters():
        p.requires_grad_(False)
    state = clone_state(model)
    types = {n: type(m) for n, m in model.named_modules()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    base_out = logits(model, batch)

    adapter = attach(model, variant, variant_config(variant, family))
    perturb(adapter)
    adapter.merge()  # detach must unmerge first
    restored = adapter.detach()

    assert restored is model
    assert_state_equal(clone_state(restored), state)
    assert {n: type(m) for n, m in restored.named_modules()} == types
    assert {n: p.requires_grad for n, p in restored.named_parameters()} == grads
    torch.testing.assert_close(logits(restored, batch), base_out, rtol=0, atol=0)
    # Detached cleanly: a new adapter can be attached.
    attach(restored, variant, variant_config(variant, family)).detach()


@MATRIX
def test_save_load_roundtrip_in_a_fresh_model(variant: str, family: str, tmp_path) -> None:
    batch = make_batch()
    model, adapter = attached(variant, family)
    perturb(adapter)
    expected = logits(model, batch)
    adapter.save(tmp_path / "adapter")

    fresh = build_model(family)
    loaded = load_adapter(fresh, tmp_path / "adapter")
    assert loaded.name == variant
    assert loaded.ranks() == adapter.ranks()
    torch.testing.assert_close(logits(fresh, batch), expected, rtol=0, atol=1e-12)
    assert loaded.size_bytes() == adapter.size_bytes()


@MATRIX
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_attach_keeps_the_model_training_mode(variant: str, family: str, training: bool) -> None:
    model = build_model(family).train(training)
    attach(model, variant, variant_config(variant, family))
    modes = {n: m.training for n, m in model.named_modules()}
    assert all(mode == training for mode in modes.values()), [n for n, m in modes.items() if m != training]


@MATRIX
def test_attaching_twice_fails_naming_the_adapted_modules(variant: str, family: str) -> None:
    model, adapter = attached(variant, family)
    with pytest.raises(ConfigError, match=rf"already has a '{variant}' adapter attached") as info:
        attach(model, variant, variant_config(variant, family))
    assert repr(next(iter(adapter.layers))) in str(info.value)
    assert "adapter.detach()" in str(info.value)
    # Also through a submodule of the adapted model (the adapter's layers are inside it).
    with pytest.raises(ConfigError, match="already has an adapter attached"):
        attach(model.base_model, variant, variant_config(variant, family))


@MATRIX
def test_loading_into_a_model_of_another_shape_fails(variant: str, family: str, tmp_path) -> None:
    _, adapter = attached(variant, family)
    adapter.save(tmp_path / "adapter")
    wider = build_model(family, hidden=48)
    with pytest.raises(AdapterShapeError, match=r"saved for another model shape .*: saved \(\d+, 32\) vs model \(\d+, 48\)"):
        load_adapter(wider, tmp_path / "adapter")
    assert not any(isinstance(m, AdapterLayer) for m in wider.modules()), "left half-attached"


@MATRIX
def test_ranks_has_one_entry_per_adapted_module(variant: str, family: str) -> None:
    model, adapter = attached(variant, family)
    ranks = adapter.ranks()
    assert set(ranks) == set(adapter.layers)
    patterns = FAMILIES[family].target_modules
    n_targets = sum(1 for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in patterns)
    assert len(ranks) == n_targets > 0
    assert all(isinstance(r, int) and r >= 0 for r in ranks.values())
    assert adapter.eval_ranks(), "eval_ranks() must name at least the trained rank"


@MATRIX
def test_every_eval_rank_can_be_evaluated(variant: str, family: str) -> None:
    model, adapter = attached(variant, family)
    perturb(adapter)
    eval_ranks = adapter.eval_ranks()
    if len(eval_ranks) == 1:  # a single-rank variant: nothing to switch
        assert torch.isfinite(logits(model, make_batch())).all()
        return
    outputs = []
    for rank in eval_ranks:
        adapter.set_eval_rank(rank)
        assert set(adapter.ranks().values()) == {rank}
        outputs.append(logits(model, make_batch()))
        assert torch.isfinite(outputs[-1]).all()
    for low, high in itertools.pairwise(outputs):
        assert not torch.allclose(low, high), "two evaluation ranks gave the same output"
    adapter.set_eval_rank(None)
    assert set(adapter.ranks().values()) == {max(eval_ranks)}


@MATRIX
def test_training_hooks_run_in_a_mini_loop(variant: str, family: str) -> None:
    model, adapter = attached(variant, family)
    params = adapter.trainable_parameters()
    start = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    adapter.on_train_begin(TRAIN_STEPS)
    for step in range(TRAIN_STEPS):
        adapter.before_step(step)
        loss = model(**make_batch(seed=step)).loss
        reg = adapter.regularization_loss()
        total = loss if reg is None else loss + reg
        assert math.isfinite(total.item()), f"loss is {total.item()} at step {step}"
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        adapter.after_step(step)
        optimizer.zero_grad()
    assert any(not torch.equal(p.detach(), s) for p, s in zip(params, start)), "nothing trained"
    model.eval()
    assert torch.isfinite(logits(model, make_batch())).all()


# -- loading into the wrong model, or with another version ------------------------------------------
def test_loading_into_another_architecture_names_the_saved_layers(tmp_path) -> None:
    attach(build_model("gpt2"), "lora", r=4, target_modules=["c_attn"]).save(tmp_path / "gpt2")
    bert = build_model("bert")
    with pytest.raises(AdapterShapeError, match=r"saved for another model: its layers \['transformer\.h\.0\.attn\.c_attn'") as info:
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


# -- target-module patterns -------------------------------------------------------------------------
BERT_QV = [f"bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")]


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (["query", "value"], BERT_QV),  # suffixes of whole name components (PEFT's convention)
        (["self.query", "self.value"], BERT_QV),
        (["*.attention.*.value"], BERT_QV[1::2]),  # the README's glob
        (["bert.encoder.layer.?.attention.self.query"], BERT_QV[0::2]),
        ([r"re:.*layer\.[0-5]\..*dense"], [  # the README's regex: every dense of both layers
            f"bert.encoder.layer.{i}.{m}.dense" for i in (0, 1) for m in ("attention.output", "intermediate", "output")
        ]),
        ([r"re:.*layer\.0\..*(query|value)"], BERT_QV[:2]),
        ("value", BERT_QV[1::2]),  # a single string is one pattern
        (["query", "*.self.query"], BERT_QV[0::2]),  # overlapping patterns adapt a module once
    ],
)
def test_patterns_select_linear_modules_by_suffix_glob_or_regex(patterns, expected: list[str]) -> None:
    adapter = attach(build_model("bert"), "lora", r=2, target_modules=patterns)
    assert sorted(adapter.layers) == sorted(expected)


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (["c_attn"], ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]),
        (["transformer.h.1.*.c_*"], ["transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj",
                                     "transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"]),
        ([r"re:transformer\.h\.0\.mlp\.c_(fc|proj)"], ["transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]),
    ],
)
def test_patterns_select_gpt2_conv1d_modules(patterns, expected: list[str]) -> None:
    model = build_model("gpt2")
    adapter = attach(model, "lora", r=2, target_modules=patterns)
    assert sorted(adapter.layers) == sorted(expected)
    for name, layer in adapter.layers.items():
        assert type(layer.base_layer).__name__ == "Conv1D" and layer.fan_in_fan_out, name
        assert (layer.out_features, layer.in_features) == tuple(reversed(layer.base_layer.weight.shape))


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("uery", r"'uery' matches no module.*Did you mean 'query'"),  # a suffix is whole components
        ("*.attention.*.vlaue", r"matches no module.*Did you mean 'value'"),
        (r"re:.*qurey", r"matches no module.*'query'"),
        ("re:(query", r"'re:\(query' is not a valid regex"),
        ("re:.*LayerNorm", r"matches only modules of type \['LayerNorm'\].*only nn\.Linear and GPT-2 Conv1D"),
    ],
)
def test_bad_patterns_fail_with_the_module_names(pattern: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        attach(build_model("bert"), "lora", r=2, target_modules=[pattern])
