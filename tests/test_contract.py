"""The variant contract, checked for every registered variant on four tiny model families.

The matrix is generated from the registry at collection time, so a new built-in variant or an
installed third-party plugin is tested without touching this file. A variant whose defaults do
not fit hidden size 32 gets a small config from ``CONFIG_OVERRIDES``; anything else gets
``GENERIC_CONFIG``. Keys a variant's config does not have are dropped, so the table may name
fields of several spellings (AdaLoRA's initial rank as ``r`` or ``init_r``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import pytest
import torch
from tiny_models import FAMILIES, build_model, logits, make_batch

from lorabench.variants import (
    Adapter,
    ConfigError,
    attach,
    get_variant,
    list_variants,
    load_adapter,
)

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
    fields = {f.name for f in dataclasses.fields(get_variant(variant).config_class)}
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

    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    undeclared = sorted(n for n, p in model.named_parameters() if p.grad is not None and id(p) not in declared)
    assert not undeclared, f"base-model parameters received gradients: {undeclared[:5]}"
    assert with_grad, "no parameter received a gradient"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.trainable_parameters())


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
def test_attaching_twice_fails(variant: str, family: str) -> None:
    model, _ = attached(variant, family)
    with pytest.raises(ConfigError, match="already has an adapter"):
        attach(model, variant, variant_config(variant, family))


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
