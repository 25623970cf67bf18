"""AdaLoRA: parity with Hugging Face PEFT (layer maths, regulariser, rank allocator), the budget
schedule, pruned-size saving, and the errors users see.

The generic contract (init equals base, merge/unmerge, detach, save/load) runs for AdaLoRA in
test_contract.py; this file checks what is specific to AdaLoRA. Our ``after_step(s)`` (0-based
step) is PEFT's ``update_and_allocate(s + 1)`` (steps completed); see the module docstring.
"""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch
from tiny_models import FAMILIES, build_model, logits, make_batch

from lorabench.search.space import build_search_space
from lorabench.variants import ConfigError, attach, get_variant, load_adapter, make_config
from lorabench.variants.adalora import AdaLoRA, AdaLoRAConfig
from lorabench.variants.adapter import WEIGHTS_FILE, Adapter

TARGETS = ["query", "value"]  # 2 BERT layers x 2 = 4 adapted matrices


def _attach(family: str = "bert", **cfg) -> tuple[torch.nn.Module, Adapter]:
    model = build_model(family)
    cfg.setdefault("target_modules", list(FAMILIES[family].target_modules))
    return model, attach(model, "adalora", **cfg)


def _peft(family: str, *, total_step: int, r: int, target_r: int, alpha: float, **extra):
    peft = pytest.importorskip("peft")
    cfg = peft.AdaLoraConfig(  # PEFT names our initial rank r ``init_r``
        init_r=r,
        target_r=target_r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=list(FAMILIES[family].target_modules),
        total_step=total_step,
        **extra,
    )
    return peft.get_peft_model(build_model(family), cfg)


def _peft_layer(peft_model, name: str):
    return peft_model.base_model.model.get_submodule(name)


@torch.no_grad()
def _randomise_both(adapter: Adapter, peft_model, *, seed: int = 0) -> None:
    """The same random non-zero A, B, E in both (E starts at zero in both otherwise)."""
    g = torch.Generator().manual_seed(seed)
    for name, layer in adapter.layers.items():
        theirs = _peft_layer(peft_model, name)
        for pname in ("lora_A", "lora_B", "lora_E"):
            ours = getattr(layer, pname)
            value = torch.randn(ours.shape, generator=g, dtype=ours.dtype) * 0.3
            ours.copy_(value)
            getattr(theirs, pname)["default"].copy_(value)


def _pair(
    family: str = "bert",
    *,
    total_step: int = 30,
    r: int = 4,
    target_r: int = 2,
    alpha: float = 8.0,
    tinit: int = 0,
    tfinal: int = 0,
    deltaT: int = 1,
    orth_reg_weight: float = 0.5,
):
    model, adapter = _attach(
        family,
        r=r,
        target_r=target_r,
        alpha=alpha,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=deltaT,
        orth_reg_weight=orth_reg_weight,
    )
    peft_model = _peft(
        family,
        total_step=total_step,
        r=r,
        target_r=target_r,
        alpha=alpha,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=deltaT,
        orth_reg_weight=orth_reg_weight,
    )
    _randomise_both(adapter, peft_model)
    adapter.on_train_begin(total_step)
    return model, adapter, peft_model


# -- layer maths and the regulariser against PEFT -------------------------------------------------
@pytest.mark.peft
@pytest.mark.parametrize("family", ["bert", "gpt2"])  # gpt2: Conv1D, weight stored (in, out)
def test_forward_loss_and_gradients_match_peft(family: str) -> None:
    model, adapter, peft_model = _pair(family)
    batch = make_batch(seed=3)
    torch.testing.assert_close(logits(model, batch), logits(peft_model, batch), rtol=0, atol=1e-10)

    model.train()
    peft_model.train()
    ours_loss = model(**batch).loss + adapter.regularization_loss()
    # AdaLoraModel.forward adds orth_reg_weight * regulariser to .loss (PeftModel.forward without
    # a task type would skip it and call the wrapped model directly).
    peft_loss = peft_model.base_model(**batch).loss
    torch.testing.assert_close(ours_loss, peft_loss, rtol=0, atol=1e-10)
    ours_loss.backward()
    peft_loss.backward()
    for name, layer in adapter.layers.items():
        for pname in ("lora_A", "lora_B", "lora_E"):
            theirs = getattr(_peft_layer(peft_model, name), pname)["default"].grad
            torch.testing.assert_close(
                getattr(layer, pname).grad, theirs, rtol=0, atol=1e-10, msg=f"{name}.{pname}"
            )


@pytest.mark.peft
def test_orthogonality_regulariser_equals_peft() -> None:
    _, adapter, peft_model = _pair(orth_reg_weight=0.3)
    batch = make_batch()
    with torch.no_grad():
        with_reg = peft_model.base_model(**batch).loss
        peft_model.peft_config["default"].orth_reg_weight = 0.0
        without_reg = peft_model.base_model(**batch).loss
    ours = adapter.regularization_loss()
    assert ours is not None and ours.item() > 0
    torch.testing.assert_close(ours, with_reg - without_reg, rtol=1e-12, atol=1e-12)

    # By hand for one layer: ||Q Q^T - I||_F, ||P^T P - I||_F, averaged over all 2n matrices.
    norms = []
    for layer in adapter.layers.values():
        eye = torch.eye(layer.lora_A.shape[0], dtype=torch.float64)
        norms += [
            torch.linalg.norm(layer.lora_A @ layer.lora_A.T - eye),
            torch.linalg.norm(layer.lora_B.T @ layer.lora_B - eye),
        ]
    torch.testing.assert_close(ours, 0.3 * torch.stack(norms).mean())


def test_regulariser_is_off_at_weight_zero() -> None:
    _, adapter = _attach(orth_reg_weight=0.0)
    assert adapter.regularization_loss() is None


def test_init_is_papers_init() -> None:
    _, adapter = _attach(r=12)
    layer = next(iter(adapter.layers.values()))
    assert torch.count_nonzero(layer.lora_E) == 0
    both = torch.cat([layer.lora_A.flatten(), layer.lora_B.flatten()])
    assert abs(both.std().item() - 0.02) < 0.003 and abs(both.mean().item()) < 0.003
    assert layer.ranknum == 12 and layer.scaling == 8.0


# -- the rank allocator against PEFT --------------------------------------------------------------
@pytest.mark.peft
@pytest.mark.parametrize(
    ("total_step", "tinit", "tfinal", "delta_t"),
    [(30, 3, 6, 1), (30, 2, 5, 3), (20, 0, 0, 1), (24, 4, 0, 4)],
)
def test_allocator_matches_peft_step_by_step(
    total_step: int, tinit: int, tfinal: int, delta_t: int
) -> None:
    model, adapter, peft_model = _pair(
        total_step=total_step, r=6, target_r=2, tinit=tinit, tfinal=tfinal, deltaT=delta_t
    )
    peft_config = peft_model.peft_config["default"]
    g = torch.Generator().manual_seed(1)
    params = {  # (ours, PEFT's) per trainable tensor
        f"{name}.{p}": (getattr(layer, p), getattr(_peft_layer(peft_model, name), p)["default"])
        for name, layer in adapter.layers.items()
        for p in ("lora_A", "lora_B", "lora_E")
    }
    pruned_once = False
    for step in range(total_step + 3):  # a few steps past T: the frozen pattern keeps being applied
        with torch.no_grad():
            for ours, theirs in params.values():  # the same "optimiser step" and gradient in both
                update = torch.randn(ours.shape, generator=g, dtype=ours.dtype) * 0.05
                grad = torch.randn(ours.shape, generator=g, dtype=ours.dtype)
                ours.add_(update)
                theirs.add_(update)
                ours.grad, theirs.grad = grad.clone(), grad.clone()
        adapter.after_step(step)
        peft_model.base_model.update_and_allocate(step + 1)

        for key, (ours, theirs) in params.items():
            assert torch.equal(ours, theirs), f"step {step}: {key} differs from PEFT"
        pattern = peft_config.rank_pattern
        for name, layer in adapter.layers.items():
            expected = pattern[f"{name}.lora_E.default"] if pattern else [True] * 6
            assert layer.rank_mask.tolist() == expected, f"step {step}: rank pattern of {name}"
        pruned_once |= sum(adapter.ranks().values()) < adapter.variant.init_budget

    assert pruned_once
    assert adapter.variant.pattern_frozen
    assert sum(adapter.ranks().values()) == adapter.variant.target_budget == 8
    for layer in adapter.layers.values():  # pruned singular values stay at zero
        assert torch.count_nonzero(layer.lora_E[~layer.rank_mask]) == 0
        assert torch.count_nonzero(layer.lora_E[layer.rank_mask]) == layer.rank()
    # The pruned adapters compute the same function: both still divide by the initial rank.
    batch = make_batch(seed=5)
    torch.testing.assert_close(logits(model, batch), logits(peft_model, batch), rtol=0, atol=1e-10)


@pytest.mark.peft
def test_budget_schedule_matches_peft_at_every_step() -> None:
    _, adapter, peft_model = _pair(total_step=50, r=12, target_r=8, tinit=5, tfinal=10, deltaT=2)
    allocator = peft_model.base_model.rankallocator
    for step in range(0, 56):
        assert adapter.variant.budget_schedule(step) == allocator.budget_schedule(step), step


def test_budget_schedule_hand_computed() -> None:
    # 4 matrices: budget 48 -> 32; T = 100, warm-up 10, final 20, so 70 steps of cubic decay.
    _, adapter = _attach(r=12, target_r=8, tinit=10, tfinal=20, deltaT=1)
    adapter.on_train_begin(100)
    schedule = adapter.variant.budget_schedule
    assert (adapter.variant.init_budget, adapter.variant.target_budget) == (48, 32)
    assert schedule(0) == (48, False)
    assert schedule(10) == (48, False)  # t <= tinit: no pruning
    assert schedule(11) == (47, True)  # int(16 * (69/70)^3 + 32) = int(47.32)
    assert schedule(45) == (34, True)  # half way: 16 * 0.5^3 + 32
    assert schedule(80) == (32, True)  # T - tfinal: the target
    assert schedule(81) == (32, True)  # final phase
    assert schedule(100) == (32, True)


def test_budget_schedule_prunes_every_delta_t_steps() -> None:
    _, adapter = _attach(init_r=12, target_r=8, deltaT=5)  # the legacy name still works
    adapter.on_train_begin(100)
    prune_steps = [t for t in range(1, 100) if adapter.variant.budget_schedule(t)[1]]
    assert prune_steps == list(range(5, 100, 5))


def test_total_steps_come_from_on_train_begin() -> None:
    _, adapter = _attach(tinit=2, tfinal=3)
    assert adapter.variant.schedule_steps is None
    adapter.on_train_begin(40)
    assert adapter.variant.schedule_steps == 40


def test_after_step_without_total_steps_names_the_fix() -> None:
    _, adapter = _attach()
    with pytest.raises(ConfigError, match=r"on_train_begin\(total_steps\)"):
        adapter.after_step(0)


def test_schedule_without_reduction_phase_is_rejected() -> None:
    _, adapter = _attach(tinit=6, tfinal=4)
    with pytest.raises(ConfigError, match=r"tinit=6 \+ tfinal=4 must be < total steps 10"):
        adapter.on_train_begin(10)
    with pytest.raises(ConfigError, match="tinit=6"):
        make_config("adalora", tinit=6, tfinal=4, total_step=10)


def test_config_total_step_takes_precedence_with_a_warning() -> None:
    _, adapter = _attach(total_step=20)
    with pytest.warns(UserWarning, match="total_step=20"):
        adapter.on_train_begin(50)
    assert adapter.variant.schedule_steps == 20


def test_missing_gradient_is_an_error_naming_the_order() -> None:
    _, adapter = _attach()
    adapter.on_train_begin(10)
    with pytest.raises(RuntimeError, match=r"before optimizer\.zero_grad"):
        adapter.after_step(0)


# -- training, saving at the pruned size ----------------------------------------------------------
def _train(model, adapter: Adapter, steps: int, *, stop_after: int | None = None) -> None:
    """A real training loop in the harness' order; ``stop_after`` ends it early (mid-schedule)."""
    optimizer = torch.optim.AdamW(adapter.trainable_parameters(), lr=2e-2)
    model.train()
    adapter.on_train_begin(steps)
    for step in range(steps if stop_after is None else stop_after):
        adapter.before_step(step)
        loss = model(**make_batch(batch=4, seed=step)).loss + adapter.regularization_loss()
        loss.backward()
        optimizer.step()
        adapter.after_step(step)
        optimizer.zero_grad()
    model.eval()


def test_training_prunes_to_the_target_budget() -> None:
    model, adapter = _attach(r=6, target_r=3, tinit=2, tfinal=3)
    assert adapter.ranks() == dict.fromkeys(adapter.layers, 6)
    _train(model, adapter, 12)
    ranks = adapter.ranks()
    assert set(ranks) == set(adapter.layers)
    assert sum(ranks.values()) == 3 * len(ranks)
    assert all(0 <= r <= 6 for r in ranks.values())


@pytest.mark.parametrize("stop_after", [None, 5], ids=["end", "mid-schedule"])
def test_save_is_pruned_size_and_reloads_identically(tmp_path, stop_after: int | None) -> None:
    # deltaT = 2: between allocations a pruned lambda may grow back; a mid-schedule save keeps it.
    model, adapter = _attach(r=6, target_r=2, tinit=1, tfinal=2, deltaT=2)
    unpruned_bytes = adapter.size_bytes()
    _train(model, adapter, 10, stop_after=stop_after)
    batch = make_batch(seed=7)
    expected = logits(model, batch)
    saved = adapter.save(tmp_path / "adapter")

    assert sum(adapter.ranks().values()) < adapter.variant.init_budget  # the allocator pruned
    kept = sum(adapter.variant.rank_pattern()[n].count(True) for n in adapter.layers)
    layer = next(iter(adapter.layers.values()))
    per_triplet_bytes = (layer.in_features + layer.out_features + 1) * 8  # float64
    assert adapter.size_bytes() == kept * per_triplet_bytes
    if stop_after is None:  # the end: exactly the final pattern is saved, and the file shrinks
        assert kept == adapter.variant.target_budget
        assert (saved / WEIGHTS_FILE).stat().st_size < unpruned_bytes
    else:  # step 5 is no allocation step: pruned lambdas moved again (AdamW) and are kept
        assert kept > sum(adapter.ranks().values())

    fresh = build_model("bert")
    loaded = load_adapter(fresh, saved)
    torch.testing.assert_close(logits(fresh, batch), expected, rtol=0, atol=0)
    assert loaded.variant.rank_pattern() == adapter.variant.rank_pattern()
    if stop_after is None:
        assert loaded.ranks() == adapter.ranks()


def test_merge_unmerge_exact_after_pruning() -> None:
    model, adapter = _attach(r=6, target_r=2, tfinal=2)
    _train(model, adapter, 8)
    batch = make_batch(seed=2)
    before = logits(model, batch)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    adapter.merge()
    torch.testing.assert_close(logits(model, batch), before, rtol=0, atol=1e-12)
    adapter.unmerge()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    torch.testing.assert_close(logits(model, batch), before, rtol=0, atol=0)


def test_ranknum_stays_the_initial_rank_after_pruning() -> None:
    """The update keeps dividing by the initial rank r (+1e-5) after the allocator pruned (PEFT;
    the authors found rescaling by the pruned rank hurt), so pruning removes terms without
    rescaling the rest."""
    model, adapter = _attach(r=6, target_r=2, tfinal=2)
    _train(model, adapter, 8)
    assert sum(adapter.ranks().values()) == 2 * len(adapter.layers) < 6 * len(adapter.layers)
    for layer in adapter.layers.values():
        assert layer.ranknum == 6.0
        kept = layer.rank_mask
        a, e, b = layer.lora_A[kept], layer.lora_E[kept], layer.lora_B[:, kept]
        expected = (
            b @ (a * e) * 8.0 / (6 + 1e-5)
        )  # only the kept triplets, still over the initial r
        torch.testing.assert_close(layer.delta_weight(), expected, rtol=1e-12, atol=1e-15)


def test_delta_weight_is_p_diag_lambda_q_scaled() -> None:
    _, adapter = _attach(r=4, target_r=2, alpha=16.0)
    layer = next(iter(adapter.layers.values()))
    with torch.no_grad():
        layer.lora_E.normal_()
    expected = layer.lora_B @ torch.diag(layer.lora_E.view(-1)) @ layer.lora_A * 16.0 / (4 + 1e-5)
    torch.testing.assert_close(layer.delta_weight(), expected)


# -- config and search space ----------------------------------------------------------------------
@pytest.mark.peft
def test_defaults_are_pefts() -> None:
    peft = pytest.importorskip("peft")
    theirs, ours = peft.AdaLoraConfig(total_step=10), AdaLoRAConfig()
    fields = ("target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight")
    assert {f: getattr(ours, f) for f in fields} == {f: getattr(theirs, f) for f in fields}
    assert ours.r == theirs.init_r == 12  # PEFT's name for the initial rank
    assert (ours.alpha, ours.dropout) == (theirs.lora_alpha, theirs.lora_dropout)
    assert ours.total_step is None  # from the harness, not the user


def test_r_is_the_rank_field_and_init_r_a_legacy_input_name() -> None:
    """``r`` is AdaLoRA's one rank field (its initial rank). ``init_r``, the name presets, the
    CI baseline and 0.1 databases use, is still accepted on input and mapped to ``r``; a
    config never writes it back."""
    assert AdaLoRAConfig().r == AdaLoRAConfig().nominal_rank == 12  # PEFT's default
    assert "init_r" not in AdaLoRAConfig.field_names()
    assert AdaLoRAConfig.input_names() == AdaLoRAConfig.field_names() | {"init_r"}
    assert AdaLoRAConfig.from_dict({"init_r": 6, "target_r": 2}).r == 6
    assert AdaLoRAConfig.from_dict({"r": 6, "init_r": 6, "target_r": 2}).r == 6  # equal: fine
    with pytest.raises(
        ConfigError, match="r=4 and init_r=6 disagree: init_r is the legacy name of r"
    ):
        AdaLoRAConfig.from_dict({"r": 4, "init_r": 6})
    with pytest.raises(ConfigError, match="r=4 and init_r=6 disagree"):
        make_config("adalora", init_r=6, r=4, target_r=2)
    cfg = make_config("adalora", init_r=6, target_r=2)
    assert cfg.r == 6 and cfg.to_dict()["r"] == 6 and "init_r" not in cfg.to_dict()
    # An override replaces the field whichever name it uses; it never fights the stored r.
    assert make_config("adalora", cfg, init_r=8).r == 8
    assert make_config("adalora", {"init_r": 6, "target_r": 2}, r=4).r == 4
    assert make_config("adalora", cfg.to_dict(), init_r=4).r == 4
    assert AdaLoRAConfig.from_dict(cfg.to_dict()) == cfg
    # A stored 0.1 config resolves with defaults filled in, in today's field names.
    resolved = AdaLoRAConfig.resolve_stored({"init_r": 6, "target_r": 4, "tinit": 1})
    assert resolved["r"] == 6 and resolved["alpha"] == 8.0 and "init_r" not in resolved


def test_an_adapter_saved_with_init_r_still_loads(tmp_path) -> None:
    """adapter_config.json written by 0.1 holds ``init_r``: loading maps it to ``r``."""
    import json

    from lorabench.variants.adapter import CONFIG_FILE

    model, adapter = _attach(r=4, target_r=2)
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer.lora_E.normal_()
    expected = logits(model, make_batch())
    adapter.save(tmp_path / "a")
    meta = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    assert meta["config"]["r"] == 4 and "init_r" not in meta["config"]
    meta["config"]["init_r"] = meta["config"].pop("r")  # as release 0.1 wrote it
    (tmp_path / "a" / CONFIG_FILE).write_text(json.dumps(meta))
    loaded = load_adapter(build_model("bert"), tmp_path / "a")
    assert loaded.config.r == 4
    torch.testing.assert_close(logits(loaded.model, make_batch()), expected, rtol=0, atol=0)


def test_reports_label_the_target_and_the_final_mean_rank() -> None:
    assert AdaLoRA.adaptive_rank and not AdaLoRA.multi_rank_eval
    assert AdaLoRA.report_label({"r": 12, "target_r": 8}) == "AdaLoRA r=12→8"
    assert AdaLoRA.rank_label({"r": 8, "target_r": 8}) == "r=8"  # nothing pruned
    assert AdaLoRA.rank_label({"init_r": 6, "target_r": 4}) == "r=6→4"  # a raw 0.1 config
    on_target = {"a": 7, "b": 9}
    assert AdaLoRA.rank_label({"r": 12, "target_r": 8}, on_target) == "r=12→8"
    assert AdaLoRA.rank_label({"r": 12, "target_r": 8}, {"a": 7, "b": 8.5}) == "r=12→8 (mean 7.8)"
    assert AdaLoRA.label_fields == {"r", "target_r"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"r": 4, "target_r": 6}, "target_r=6 is larger than the initial rank r=4"),
        ({"init_r": 4, "target_r": 6}, "target_r=6 is larger than the initial rank r=4"),
        ({"deltaT": 0}, "deltaT=0"),
        ({"beta1": 1.0}, r"beta1=1.0 must be in \(0, 1\)"),
        ({"orth_reg_weight": -0.1}, "orth_reg_weight=-0.1"),
        ({"tinit": -1}, "tinit=-1"),
        ({"alpha": 0}, "alpha=0"),
    ],
)
def test_bad_config_values_are_named(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config("adalora", **fields)


def test_target_equal_to_init_never_prunes() -> None:
    model, adapter = _attach(r=4, target_r=4)
    _train(model, adapter, 4)
    assert adapter.ranks() == dict.fromkeys(adapter.layers, 4)


def test_registered_with_its_contract_attributes() -> None:
    cls = get_variant("adalora")
    assert cls is AdaLoRA and cls.init_equals_base
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    assert "init_r" not in fields  # one rank field: r
    assert fields >= {
        "r",
        "target_r",
        "alpha",
        "dropout",
        "tinit",
        "tfinal",
        "deltaT",
        "beta1",
        "beta2",
        "orth_reg_weight",
        "total_step",
    }


def test_search_space_keeps_target_at_or_below_init() -> None:
    fields = {f.name for f in dataclasses.fields(AdaLoRAConfig)}
    space = build_search_space("adalora", AdaLoRA.search_space(), config_fields=fields)
    assert set(space.names) == {"r", "target_r", "alpha", "dropout", "train.learning_rate"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        values = space.suggest(trial)
        assert 1 <= values["target_r"] <= values["r"]
        variant_fields = {k: v for k, v in values.items() if not k.startswith("train.")}
        make_config("adalora", **variant_fields)  # every sample is a valid config
        study.tell(trial, 0.0)
