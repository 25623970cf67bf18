"""The variant contract as a reusable test suite, for built-in and third-party variants alike.

Every check attaches a registered variant to tiny random transformers
(:mod:`lorabench.testing.models`: BERT, RoBERTa, GPT-2 with its transposed ``Conv1D``, Llama)
and asserts one promise of the contract in :mod:`lorabench.variants.base`: identity at
initialisation where the variant claims it, gradients only in the declared parameters, exact
merge/unmerge and detach, a save/load round trip into a fresh model, clear errors on a second
attach or a model of another shape, ranks per adapted module, every evaluation rank usable, and
the training hooks in a mini loop.

Two ways to run it, neither needing lorabench's own ``tests/`` folder or fixtures:

* in pytest, subclass :class:`VariantContractTests` and name the variant; each check becomes a
  test per model family::

      from lorabench.testing import VariantContractTests

      class TestMyVariant(VariantContractTests):
          variant = "my-variant"            # its registered name
          config = {"r": 4, "beta": 0.5}    # optional: a small config (keys it lacks are dropped)

* anywhere else, :func:`check_variant_contract` runs every check and raises one
  :class:`ContractError` listing every failure::

      from lorabench.testing import check_variant_contract

      check_variant_contract("my-variant", config={"r": 4})

The variant must be registered (decorator or entry point) in the process that runs the checks:
a saved adapter is loaded back through the registry by name.
"""

from __future__ import annotations

import itertools
import math
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch

from lorabench.testing.models import FAMILIES, build_model, logits, make_batch
from lorabench.variants import (
    Adapter,
    AdapterLayer,
    AdapterShapeError,
    ConfigError,
    NotMergeableError,
    ReferenceMethodNotApplicable,
    Variant,
    attach,
    load_adapter,
    make_config,
)
from lorabench.variants.adapter import resolve_variant

# A rank that fits the tiny models' 32-wide layers and keeps every check fast.
GENERIC_CONFIG: dict[str, Any] = {"r": 4}
TRAIN_STEPS = 4


class ContractError(AssertionError):
    """One or more contract checks failed; the message lists each as ``check[family]: why``."""


class ContractSkip(Exception):
    """A check that does not apply to this variant (one it does not claim, e.g. identity at
    initialisation for a variant with ``init_equals_base = False``)."""


# -- configs and helpers --------------------------------------------------------------------------
def contract_config(
    variant: str, family: str, config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The config a check attaches ``variant`` with on ``family``'s tiny model.

    ``config`` (keys the variant's config does not take are dropped, so one table may serve
    several variants) plus the family's ``target_modules``. Without ``config``:
    :data:`GENERIC_CONFIG` (r = 4), or the variant's own defaults when r = 4 does not validate
    for it (a second rank field that must stay below r, say). A variant that wraps no layer (a
    reference method) gets no ``target_modules``: it has no module to target.
    """
    cls = resolve_variant(variant)
    accepted = cls.config_class.input_names()
    wanted = dict(GENERIC_CONFIG if config is None else config)
    cfg = {k: v for k, v in wanted.items() if k in accepted}
    if not cls.wraps_layers:
        return cfg
    targets = {"target_modules": list(FAMILIES[family].target_modules)}
    if config is None:
        try:
            make_config(cls, {**cfg, **targets})
        except ConfigError:
            cfg = {}
    return {**cfg, **targets}


def _attach(model: torch.nn.Module, variant: str, config: Mapping[str, Any]) -> Adapter:
    """``attach``, with a reference method that does not apply to this family (BitFit on a model
    without biases) turned into a skip carrying its message."""
    try:
        return attach(model, variant, dict(config))
    except ReferenceMethodNotApplicable as exc:
        raise ContractSkip(str(exc)) from exc


def _attached(
    variant: str, family: str, config: Mapping[str, Any] | None, *, seed: int = 0
) -> tuple[torch.nn.Module, Adapter]:
    model = build_model(family, seed=seed)
    return model, _attach(model, variant, contract_config(variant, family, config))


def _skip_head_only(variant: str) -> None:
    """A variant that trains only the task head declares no parameter a check could move."""
    if resolve_variant(variant).trains_head_only:
        raise ContractSkip(
            f"{variant} declares no trainable parameter of its own: only the task head learns, "
            "trained by the harness (train.train_head), not by the adapter"
        )


@torch.no_grad()
def perturb(adapter: Adapter, *, seed: int = 1, scale: float = 0.2) -> None:
    """Moves every trainable parameter away from its init (as training would)."""
    g = torch.Generator().manual_seed(seed)
    for p in adapter.trainable_parameters():
        p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``model``'s state dict (parameters and buffers), to compare later."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Asserts two state dicts have the same keys and bit-identical tensors; the message names
    the first key that differs."""
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


class _Raised:
    value: BaseException


@contextmanager
def _raises(kind: type[BaseException], match: str) -> Iterator[_Raised]:
    """``pytest.raises(kind, match=...)`` without needing pytest (a plain script may run these)."""
    raised = _Raised()
    try:
        yield raised
    except kind as exc:
        if not re.search(match, str(exc)):
            raise AssertionError(
                f"{type(exc).__name__} raised, but its message does not match {match!r}: {exc}"
            ) from exc
        raised.value = exc
    else:
        raise AssertionError(f"expected {kind.__name__} matching {match!r}; nothing was raised")


@contextmanager
def _directory(tmp_path: Path | None) -> Iterator[Path]:
    if tmp_path is not None:
        yield Path(tmp_path)
        return
    with tempfile.TemporaryDirectory(prefix="lorabench-contract-") as folder:
        yield Path(folder)


# -- the checks -----------------------------------------------------------------------------------
# Each takes the registered name, a family of lorabench.testing.models.FAMILIES and the config
# table of contract_config; it raises AssertionError (or ContractSkip) and returns nothing.
def check_init_equals_base(variant: str, family: str, config: Mapping | None = None) -> None:
    """A variant that claims ``init_equals_base`` leaves the model's outputs unchanged."""
    if not resolve_variant(variant).init_equals_base:
        raise ContractSkip(f"{variant} does not start equal to the base model")
    batch = make_batch()
    base = logits(build_model(family), batch)
    model, _ = _attached(variant, family, config)
    torch.testing.assert_close(logits(model, batch), base, rtol=0, atol=1e-12)


def check_perturbed_adapter_changes_output(
    variant: str, family: str, config: Mapping | None = None
) -> None:
    """Moving the trainable parameters moves the output: the adapter is on the forward path."""
    _skip_head_only(variant)
    batch = make_batch()
    model, adapter = _attached(variant, family, config)
    before = logits(model, batch)
    perturb(adapter)
    after = logits(model, batch)
    assert (after - before).abs().max() > 1e-6


def check_only_declared_parameters_get_gradients(
    variant: str, family: str, config: Mapping | None = None
) -> None:
    """Exactly the declared parameters require and receive gradients; the base stays frozen
    (but for the base parameters a reference method declares)."""
    _skip_head_only(variant)
    model, adapter = _attached(variant, family, config)
    perturb(adapter)
    declared = {id(p) for p in adapter.trainable_parameters()}
    assert declared, "the adapter declares no trainable parameters"
    assert all(p.requires_grad for p in adapter.trainable_parameters())
    requiring = {id(p) for p in model.parameters() if p.requires_grad}
    assert requiring == declared, (
        "model parameters with requires_grad differ from the declared list"
    )

    model.train()
    adapter.on_train_begin(TRAIN_STEPS)
    adapter.before_step(0)
    loss = model(**make_batch()).loss
    reg = adapter.regularization_loss()
    (loss if reg is None else loss + reg).backward()

    undeclared = sorted(
        n for n, p in model.named_parameters() if p.grad is not None and id(p) not in declared
    )
    assert not undeclared, f"base-model parameters received gradients: {undeclared[:5]}"
    # And the declaration is no wider than what the forward uses: every declared tensor is
    # reached.
    # Shared parameters by their name in the model: a reference method's are base parameters.
    named = dict(adapter.named_trainable_parameters())
    shared = {id(p) for p in adapter.variant.shared_parameters()}
    named.update({n: p for n, p in model.named_parameters() if id(p) in shared})
    unreached = sorted(n for n, p in named.items() if p.grad is None)
    assert not unreached, f"declared trainable parameters the forward never used: {unreached[:5]}"
    assert any(p.grad.abs().sum() > 0 for p in adapter.trainable_parameters())


def check_merge_matches_unmerged_and_unmerge_restores_bits(
    variant: str, family: str, config: Mapping | None = None
) -> None:
    """Merging gives the unmerged outputs (twice too); unmerging restores the weights bit for
    bit. A variant that declares ``mergeable = False`` must refuse both, naming itself, and
    leave the weights as they were."""
    batch = make_batch()
    model, adapter = _attached(variant, family, config)
    perturb(adapter)
    unmerged_out = logits(model, batch)
    weights_before = clone_state(model)
    if not adapter.variant.mergeable:
        for action in (adapter.merge, adapter.unmerge):
            with _raises(NotMergeableError, rf"cannot {action.__name__} .*'{re.escape(variant)}'"):
                action()
        assert not adapter.merged
        assert_state_equal(clone_state(model), weights_before)
        return

    adapter.merge()
    assert adapter.merged
    torch.testing.assert_close(logits(model, batch), unmerged_out, rtol=1e-7, atol=1e-9)
    adapter.merge()  # idempotent: a second merge must not add the delta twice
    torch.testing.assert_close(logits(model, batch), unmerged_out, rtol=1e-7, atol=1e-9)

    adapter.unmerge()
    assert not adapter.merged
    assert_state_equal(clone_state(model), weights_before)
    torch.testing.assert_close(logits(model, batch), unmerged_out, rtol=0, atol=0)


def check_detach_returns_the_original_model(
    variant: str, family: str, config: Mapping | None = None
) -> None:
    """``detach`` (merged or not) gives back the very model: weights, module types and
    ``requires_grad`` as before, and a new adapter can be attached. A variant that wraps no
    layer (a reference method) trained the model's own weights: detach keeps their trained
    values, and restores the rest as above."""
    batch = make_batch()
    model = build_model(family)
    # A mixed requires_grad pattern, which detach must restore (attach freezes everything).
    for p in model.get_input_embeddings().parameters():
        p.requires_grad_(False)
    state = clone_state(model)
    types = {n: type(m) for n, m in model.named_modules()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    base_out = logits(model, batch)

    adapter = _attach(model, variant, contract_config(variant, family, config))
    perturb(adapter)
    if not adapter.variant.wraps_layers:
        trained = clone_state(model)
        trained_out = logits(model, batch)
        restored = adapter.detach()
        assert restored is model
        assert not any(isinstance(m, Variant) for m in restored.modules()), "variant left on"
        assert_state_equal(clone_state(restored), trained)
        assert {n: type(m) for n, m in restored.named_modules()} == types
        assert {n: p.requires_grad for n, p in restored.named_parameters()} == grads
        torch.testing.assert_close(logits(restored, batch), trained_out, rtol=0, atol=0)
        _attach(restored, variant, contract_config(variant, family, config)).detach()
        return
    adapter.merge()  # detach must unmerge first
    restored = adapter.detach()

    assert restored is model
    assert_state_equal(clone_state(restored), state)
    assert {n: type(m) for n, m in restored.named_modules()} == types
    assert {n: p.requires_grad for n, p in restored.named_parameters()} == grads
    torch.testing.assert_close(logits(restored, batch), base_out, rtol=0, atol=0)
    # Detached cleanly: a new adapter can be attached.
    _attach(restored, variant, contract_config(variant, family, config)).detach()


def check_save_load_roundtrip_in_a_fresh_model(
    variant: str, family: str, config: Mapping | None = None, *, tmp_path: Path | None = None
) -> None:
    """A saved adapter loads into a fresh copy of the model with identical outputs, ranks and
    size."""
    batch = make_batch()
    model, adapter = _attached(variant, family, config)
    perturb(adapter)
    expected = logits(model, batch)
    with _directory(tmp_path) as folder:
        adapter.save(folder / "adapter")
        fresh = build_model(family)
        loaded = load_adapter(fresh, folder / "adapter")
    assert loaded.name == variant
    assert loaded.ranks() == adapter.ranks()
    torch.testing.assert_close(logits(fresh, batch), expected, rtol=0, atol=1e-12)
    assert loaded.size_bytes() == adapter.size_bytes()


def check_attach_keeps_the_model_training_mode(
    variant: str, family: str, config: Mapping | None = None, *, training: bool | None = None
) -> None:
    """Attaching to a model in ``eval()`` (``train()``) leaves every module in that mode
    (both modes when ``training`` is None)."""
    for mode in (False, True) if training is None else (training,):
        model = build_model(family).train(mode)
        _attach(model, variant, contract_config(variant, family, config))
        modes = {n: m.training for n, m in model.named_modules()}
        assert all(m == mode for m in modes.values()), [n for n, m in modes.items() if m != mode]


def check_attaching_twice_fails_naming_the_adapted_modules(
    variant: str, family: str, config: Mapping | None = None
) -> None:
    """A second attach (to the model or a submodule) fails, naming the adapted modules and the
    fix."""
    model, adapter = _attached(variant, family, config)
    cfg = contract_config(variant, family, config)
    with _raises(ConfigError, rf"already has a '{re.escape(variant)}' adapter attached") as info:
        attach(model, variant, cfg)
    assert "adapter.detach()" in str(info.value)
    if not adapter.layers:
        # A reference method changes no module, so a submodule carries no trace of it: only
        # the model it was attached to can tell.
        return
    assert repr(next(iter(adapter.layers))) in str(info.value)
    # Also through a submodule of the adapted model (the adapter's layers are inside it).
    with _raises(ConfigError, "already has an adapter attached"):
        attach(model.base_model, variant, cfg)


def check_loading_into_a_model_of_another_shape_fails(
    variant: str, family: str, config: Mapping | None = None, *, tmp_path: Path | None = None
) -> None:
    """Loading into a wider model fails with the shapes (of the layers, or of the parameters a
    reference method trained) and leaves nothing attached."""
    _skip_head_only(variant)
    _, adapter = _attached(variant, family, config)
    wider = build_model(family, hidden=48)
    before = clone_state(wider)
    with _directory(tmp_path) as folder:
        adapter.save(folder / "adapter")
        with _raises(
            AdapterShapeError,
            # (out, in) of a layer; a trained bias (32,) or matrix (n, 32) of a reference method
            r"saved for another model shape .*: saved \((\d+, )?32,?\) vs model \((\d+, )?48,?\)",
        ):
            load_adapter(wider, folder / "adapter")
    assert not any(isinstance(m, AdapterLayer | Variant) for m in wider.modules()), (
        "left half-attached"
    )
    assert_state_equal(clone_state(wider), before)


def check_ranks_has_one_entry_per_adapted_module(
    variant: str, family: str, config: Mapping | None = None
) -> None:
    """``ranks()`` names every adapted module once, with a non-negative int; ``eval_ranks()`` is
    not empty. A variant that wraps no layer has no rank: both are empty."""
    model, adapter = _attached(variant, family, config)
    ranks = adapter.ranks()
    if not adapter.variant.wraps_layers:
        assert ranks == {} and not adapter.layers, ranks
        assert adapter.eval_ranks() == [], adapter.eval_ranks()
        return
    assert set(ranks) == set(adapter.layers)
    patterns = FAMILIES[family].target_modules
    n_targets = sum(1 for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in patterns)
    assert len(ranks) == n_targets > 0
    assert all(isinstance(r, int) and r >= 0 for r in ranks.values())
    assert adapter.eval_ranks(), "eval_ranks() must name at least the trained rank"


def check_every_eval_rank_can_be_evaluated(
    variant: str, family: str, config: Mapping | None = None
) -> None:
    """Each of ``eval_ranks()`` can be set and evaluated, giving distinct finite outputs;
    ``set_eval_rank(None)`` goes back to the largest."""
    model, adapter = _attached(variant, family, config)
    perturb(adapter)
    eval_ranks = adapter.eval_ranks()
    if len(eval_ranks) <= 1:  # a single-rank variant (or one without a rank): nothing to switch
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


def check_training_hooks_run_in_a_mini_loop(
    variant: str, family: str, config: Mapping | None = None
) -> None:
    """A few optimiser steps through the hooks, as the runner drives them: finite losses, the
    parameters move, the model still evaluates."""
    _skip_head_only(variant)
    model, adapter = _attached(variant, family, config)
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
        adapter.after_step(step, learning_rate=1e-2)
        optimizer.zero_grad()
    moved = any(not torch.equal(p.detach(), s) for p, s in zip(params, start, strict=True))
    assert moved, "nothing trained"
    model.eval()
    assert torch.isfinite(logits(model, make_batch())).all()


Check = Callable[..., None]
# name -> check, in the order they run; the names are VariantContractTests' test names.
CHECKS: dict[str, Check] = {
    "init_equals_base": check_init_equals_base,
    "perturbed_adapter_changes_output": check_perturbed_adapter_changes_output,
    "only_declared_parameters_get_gradients": check_only_declared_parameters_get_gradients,
    "merge_matches_unmerged_and_unmerge_restores_bits": (
        check_merge_matches_unmerged_and_unmerge_restores_bits
    ),
    "detach_returns_the_original_model": check_detach_returns_the_original_model,
    "save_load_roundtrip_in_a_fresh_model": check_save_load_roundtrip_in_a_fresh_model,
    "attach_keeps_the_model_training_mode": check_attach_keeps_the_model_training_mode,
    "attaching_twice_fails_naming_the_adapted_modules": (
        check_attaching_twice_fails_naming_the_adapted_modules
    ),
    "loading_into_a_model_of_another_shape_fails": (
        check_loading_into_a_model_of_another_shape_fails
    ),
    "ranks_has_one_entry_per_adapted_module": check_ranks_has_one_entry_per_adapted_module,
    "every_eval_rank_can_be_evaluated": check_every_eval_rank_can_be_evaluated,
    "training_hooks_run_in_a_mini_loop": check_training_hooks_run_in_a_mini_loop,
}


def check_variant_contract(
    variant: str,
    *,
    config: Mapping[str, Any] | None = None,
    families: Sequence[str] | None = None,
    checks: Sequence[str] | None = None,
) -> list[str]:
    """Runs the contract checks on a registered variant; returns what ran, as
    ``"check[family]"``.

    Args:
        variant: the registered name.
        config: a small config for the tiny models (see :func:`contract_config`).
        families: model families to check on (default: all of
            :data:`lorabench.testing.models.FAMILIES`).
        checks: names of :data:`CHECKS` to run (default: all).

    Raises:
        ContractError: listing every failed ``check[family]`` with its message; all checks run
            before it is raised. A check the variant does not claim (see :class:`ContractSkip`)
            is left out of the returned list, not failed.
    """
    resolve_variant(variant)  # an unknown name fails here, with "did you mean"
    unknown = sorted(set(checks or ()) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown contract check(s) {unknown}; known: {list(CHECKS)}")
    ran: list[str] = []
    failures: list[str] = []
    for name in checks or list(CHECKS):
        for family in families or list(FAMILIES):
            case = f"{name}[{family}]"
            try:
                CHECKS[name](variant, family, config)
            except ContractSkip:
                continue
            except Exception as exc:  # every failure is collected, then reported together
                failures.append(f"{case}: {type(exc).__name__}: {exc}".strip())
                continue
            ran.append(case)
    if failures:
        raise ContractError(
            f"variant {variant!r} breaks the contract in {len(failures)} check(s):\n"
            + "\n".join(f"  {line}" for line in failures)
        )
    return ran


class VariantContractTests:
    """The contract suite as a pytest class: subclass it and set ``variant``.

    Each check of :data:`CHECKS` is a test method, parametrised over ``families`` (and, for the
    training-mode check, both modes) by the class's own ``pytest_generate_tests``, so no
    conftest or fixture is needed beyond pytest's ``tmp_path``.

    Class attributes:
        variant: the registered name of the variant to check.
        config: a small config for the tiny models (see :func:`contract_config`); None picks
            r = 4 or the variant's defaults.
        families: the model families of :data:`lorabench.testing.models.FAMILIES` to check on.

    Override :meth:`contract_variants` to check several variants in one class (lorabench's
    own suite checks every registered one) and :meth:`contract_config` to pick a config per
    variant.
    """

    variant: ClassVar[str] = ""
    config: ClassVar[Mapping[str, Any] | None] = None
    families: ClassVar[Sequence[str]] = tuple(FAMILIES)

    def contract_variants(self) -> list[str]:
        """The registered names to check (default: ``[variant]``)."""
        if not self.variant:
            raise TypeError(
                f"{type(self).__name__} must name the variant to check: variant = 'my-variant'"
            )
        return [self.variant]

    def contract_config(self, variant: str, family: str) -> dict[str, Any]:
        """The config ``variant`` is attached with on ``family``."""
        return contract_config(variant, family, self.config)

    def pytest_generate_tests(self, metafunc: Any) -> None:
        """Parametrises the test methods: (variant, family) pairs, and both training modes."""
        names = metafunc.fixturenames
        if "variant" in names and "family" in names:
            cases = [(v, f) for v in self.contract_variants() for f in self.families]
            metafunc.parametrize(("variant", "family"), cases, ids=[f"{v}-{f}" for v, f in cases])
        if "training" in names:
            metafunc.parametrize("training", [False, True], ids=["eval", "train"])

    def _check(self, name: str, variant: str, family: str, **kwargs: Any) -> None:
        try:
            CHECKS[name](variant, family, self.contract_config(variant, family), **kwargs)
        except ContractSkip as skip:
            import pytest  # only here: the module itself must import without pytest

            pytest.skip(str(skip))

    def test_init_equals_base(self, variant: str, family: str) -> None:
        """Outputs unchanged at initialisation (:func:`check_init_equals_base`); skipped for a
        variant that does not claim it."""
        self._check("init_equals_base", variant, family)

    def test_perturbed_adapter_changes_output(self, variant: str, family: str) -> None:
        """The adapter is on the forward path (:func:`check_perturbed_adapter_changes_output`)."""
        self._check("perturbed_adapter_changes_output", variant, family)

    def test_only_declared_parameters_get_gradients(self, variant: str, family: str) -> None:
        """Gradients reach exactly the declared parameters (see
        :func:`check_only_declared_parameters_get_gradients`)."""
        self._check("only_declared_parameters_get_gradients", variant, family)

    def test_merge_matches_unmerged_and_unmerge_restores_bits(
        self, variant: str, family: str
    ) -> None:
        """Merge keeps the outputs, unmerge restores the weights (see
        :func:`check_merge_matches_unmerged_and_unmerge_restores_bits`)."""
        self._check("merge_matches_unmerged_and_unmerge_restores_bits", variant, family)

    def test_detach_returns_the_original_model(self, variant: str, family: str) -> None:
        """``detach`` gives back the model as it was (see
        :func:`check_detach_returns_the_original_model`)."""
        self._check("detach_returns_the_original_model", variant, family)

    def test_save_load_roundtrip_in_a_fresh_model(
        self, variant: str, family: str, tmp_path: Path
    ) -> None:
        """A saved adapter reloads with identical outputs (see
        :func:`check_save_load_roundtrip_in_a_fresh_model`), saved under ``tmp_path``."""
        self._check("save_load_roundtrip_in_a_fresh_model", variant, family, tmp_path=tmp_path)

    def test_attach_keeps_the_model_training_mode(
        self, variant: str, family: str, training: bool
    ) -> None:
        """Attach keeps ``train()``/``eval()`` mode, once per mode (see
        :func:`check_attach_keeps_the_model_training_mode`)."""
        self._check("attach_keeps_the_model_training_mode", variant, family, training=training)

    def test_attaching_twice_fails_naming_the_adapted_modules(
        self, variant: str, family: str
    ) -> None:
        """A second attach fails with a clear message (see
        :func:`check_attaching_twice_fails_naming_the_adapted_modules`)."""
        self._check("attaching_twice_fails_naming_the_adapted_modules", variant, family)

    def test_loading_into_a_model_of_another_shape_fails(
        self, variant: str, family: str, tmp_path: Path
    ) -> None:
        """Loading into a wider model fails cleanly (see
        :func:`check_loading_into_a_model_of_another_shape_fails`), saved under ``tmp_path``."""
        self._check(
            "loading_into_a_model_of_another_shape_fails", variant, family, tmp_path=tmp_path
        )

    def test_ranks_has_one_entry_per_adapted_module(self, variant: str, family: str) -> None:
        """``ranks()`` covers every adapted module (see
        :func:`check_ranks_has_one_entry_per_adapted_module`)."""
        self._check("ranks_has_one_entry_per_adapted_module", variant, family)

    def test_every_eval_rank_can_be_evaluated(self, variant: str, family: str) -> None:
        """Every evaluation rank gives its own finite output (see
        :func:`check_every_eval_rank_can_be_evaluated`)."""
        self._check("every_eval_rank_can_be_evaluated", variant, family)

    def test_training_hooks_run_in_a_mini_loop(self, variant: str, family: str) -> None:
        """A few optimiser steps driven through the hooks train the adapter (see
        :func:`check_training_hooks_run_in_a_mini_loop`)."""
        self._check("training_hooks_run_in_a_mini_loop", variant, family)
