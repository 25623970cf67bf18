"""Per-variant paper recipes: declared relative to LoRA, applied by suites under what the user
sets, recorded with every run; AdaLoRA's schedule as fractions of the run; and the warning a
variant gives when its per-step hooks are not driven.
"""

from __future__ import annotations

import argparse
import io
import math
import warnings

import pytest
import torch
from tiny_models import FAMILIES, build_model, make_batch

from lorabench.cli import run_cmd
from lorabench.harness.config import Budget, RunConfig, TrainConfig
from lorabench.harness.suite import SuiteConfig, SuiteConfigError, VariantEntry
from lorabench.variants import VARIANTS, ConfigError, Proportional, Recipe, attach, make_config
from lorabench.variants.adalora import AdaLoRAConfig
from lorabench.variants.base import Variant
from lorabench.variants.lora import LoRAConfig

LR = 5e-4
HOOK_WARNING = "training without its per-step hooks"


def suite_of(*variants, recipes: str | None = None, **train) -> SuiteConfig:
    data = {"variants": list(variants), "tasks": ["rte"], "train": {"learning_rate": LR, **train}}
    if recipes is not None:
        data["recipes"] = recipes
    return SuiteConfig.from_dict(data)


def run_of(suite: SuiteConfig, index: int = 0) -> RunConfig:
    return suite.run_configs()[index]


def cli_suite(*argv: str) -> SuiteConfig:
    parser = argparse.ArgumentParser()
    run_cmd.add_arguments(parser)
    return run_cmd.build_suite(parser.parse_args(list(argv)))


# -- the declared recipes -------------------------------------------------------------------------
def test_every_built_in_variant_declares_a_recipe_with_a_source_unless_it_is_loras() -> None:
    for name in VARIANTS.list():
        recipe = VARIANTS.get(name).recipe
        assert isinstance(recipe, Recipe)
        assert set(recipe.config) <= VARIANTS.get(name).config_class.field_names(), name
        assert recipe.is_identity or recipe.source, f"{name}: a recipe needs its source"
    assert Variant.recipe == Recipe() and Variant.recipe.is_identity
    for name in ("lora", "dora", "sora", "increlora"):
        assert VARIANTS.get(name).recipe.is_identity, name
    assert VARIANTS.get("vera").recipe.learning_rate_scale == 10.0


def test_a_recipe_is_read_only_and_refuses_a_bad_scale_or_field() -> None:
    recipe = Recipe(config={"alpha": 16.0})
    with pytest.raises(TypeError):
        recipe.config["alpha"] = 1.0  # type: ignore[index]
    for bad in (0, -1.0, math.inf, math.nan, True):
        with pytest.raises(ValueError, match="learning_rate_scale"):
            Recipe(learning_rate_scale=bad)
    with pytest.raises(ConfigError, match=r"sets \['nope'\].*recipes: none"):
        Recipe(config={"nope": 1}).config_overrides(LoRAConfig, {})
    assert Recipe(learning_rate_scale=10.0).summary() == "lr x10"
    assert Recipe(config={"alpha": Proportional("r", 2.0)}).summary() == "alpha=2*r"
    assert Recipe().summary() == "-"


# -- applied to the runs a suite builds -----------------------------------------------------------
def test_vera_trains_at_ten_times_the_suites_learning_rate_and_records_it() -> None:
    cfg = run_of(suite_of("vera"))
    assert cfg.train.learning_rate == 0.005  # 10 x 5e-4, without float noise
    assert cfg.to_dict()["train"]["learning_rate"] == 0.005
    assert cfg.train.head_learning_rate is None  # an unset head rate follows the scaled rate
    # A head rate the suite sets is the suite's choice for the head and stays as set.
    assert run_of(suite_of("vera", head_learning_rate=5e-3)).train.head_learning_rate == 5e-3


def test_adalora_gets_the_scripts_regulariser_weight_and_schedule_fractions() -> None:
    cfg = run_of(suite_of("adalora"))
    assert cfg.variant_config == {"orth_reg_weight": 0.1, "tinit": 0.1, "tfinal": 0.5}
    assert cfg.train.learning_rate == LR
    config = cfg.variant_config_object()
    assert (config.orth_reg_weight, config.tinit, config.tfinal) == (0.1, 0.1, 0.5)
    assert cfg.resolved_variant_config()["orth_reg_weight"] == 0.1  # what the run id hashes

    # Resolved to steps when training begins, for whatever the budget allows.
    model = build_model("bert")
    adapter = attach(model, "adalora", cfg.variant_config_object())
    adapter.on_train_begin(200)
    assert (adapter.variant.tinit_steps, adapter.variant.tfinal_steps) == (20, 100)
    adapter.on_train_begin(37)  # 3.7 and 18.5 round to the nearest step
    assert (adapter.variant.tinit_steps, adapter.variant.tfinal_steps) == (4, 18)


def test_dylora_keeps_loras_alpha_so_the_rank_b_comparison_is_like_for_like() -> None:
    # The authors' scripts use LoRA's own alpha: the recipe is declared, and the identity.
    assert VARIANTS.get("dylora").recipe.is_identity
    assert run_of(suite_of("dylora")).variant_config == {}


def test_a_proportional_recipe_value_resolves_against_the_runs_own_config() -> None:
    from lorabench.variants.dylora import DyLoRAConfig

    recipe = Recipe(config={"alpha": Proportional("r", 2.0)})
    assert recipe.config_overrides(DyLoRAConfig, {}) == {"alpha": 16.0}  # r 8, the default
    assert recipe.config_overrides(DyLoRAConfig, {"r": 3}) == {"alpha": 6.0}
    assert recipe.config_overrides(DyLoRAConfig, {"r": 3, "alpha": 1.0}) == {}  # explicit wins


def test_explicit_settings_win_over_the_recipe() -> None:
    entries = suite_of(
        {"vera": {"train": {"learning_rate": 1e-2}}},
        {"adalora": {"orth_reg_weight": 0.3, "init_r": 6, "target_r": 4, "tinit": 5}},
        {"dylora": {"alpha": 4}},
    ).run_configs()
    vera, adalora, dylora = entries
    assert vera.train.learning_rate == 1e-2  # the entry's own rate, not scaled
    assert adalora.variant_config_object().orth_reg_weight == 0.3
    assert adalora.variant_config_object().tinit == 5  # steps, as given
    assert adalora.variant_config_object().tfinal == 0.5  # the field the entry left: the recipe's
    assert adalora.variant_config_object().r == 6  # init_r, the legacy alias, counts as r
    assert dylora.variant_config_object().alpha == 4


def test_the_command_line_train_override_wins_and_recipes_none_turns_them_off() -> None:
    suite = cli_suite("--variants", "lora,vera", "--tasks", "rte", "--lr", "5e-4")
    assert [c.train.learning_rate for c in suite.run_configs()] == [LR, 0.005]
    suite = cli_suite(
        "--variants", "vera", "--tasks", "rte", "--lr", "5e-4", "--train", "vera.learning_rate=2e-3"
    )
    assert run_of(suite).train.learning_rate == 2e-3
    suite = cli_suite("--variants", "lora,vera,adalora", "--tasks", "rte", "--recipes", "none")
    assert suite.recipes == "none"
    assert [c.train.learning_rate for c in suite.run_configs()] == [LR] * 3
    assert [c.variant_config for c in suite.run_configs()] == [{}, {}, {}]


def test_recipes_none_leaves_the_suite_values_and_survives_a_round_trip() -> None:
    suite = suite_of("vera", "adalora", "dylora", recipes="none")
    assert [(c.train.learning_rate, c.variant_config) for c in suite.run_configs()] == [
        (LR, {}),
        (LR, {}),
        (LR, {}),
    ]
    assert SuiteConfig.from_dict(suite.to_dict()).recipes == "none"
    assert "recipes" not in suite_of("vera").to_dict()  # the default keeps the old layout
    with pytest.raises(SuiteConfigError, match=r"recipes='papers' must be one of paper, none"):
        suite_of("vera", recipes="papers")


def test_the_run_id_changes_with_the_recipe_for_vera_and_not_for_lora() -> None:
    paper, none = suite_of("lora", "vera"), suite_of("lora", "vera", recipes="none")
    lora_paper, vera_paper = paper.run_configs()
    lora_none, vera_none = none.run_configs()
    assert lora_paper.run_id == lora_none.run_id
    assert vera_paper.run_id != vera_none.run_id
    # The recipe is visible only through the values: vera at 5e-3 with recipes none is the
    # same run as vera with its paper recipe.
    restated = suite_of({"vera": {"train": {"learning_rate": 0.005}}}, recipes="none")
    assert run_of(restated).run_id == vera_paper.run_id


def test_a_recipe_that_breaks_an_entry_is_reported_with_the_fix() -> None:
    # tinit 0.1 from the recipe is fine, but an entry's tfinal=0.95 leaves no reduction phase.
    with pytest.raises(SuiteConfigError, match=r"paper recipe .*tinit=0.1 \+ tfinal=0.95"):
        suite_of({"adalora": {"tfinal": 0.95}})
    suite_of({"adalora": {"tfinal": 0.95}}, recipes="none")  # without the recipe it is valid


def test_runs_record_the_recipe_they_trained_with(tiny_model_dir, toy_task, tmp_path) -> None:
    from lorabench.harness.runner import run_suite
    from lorabench.results.store import ResultStore

    suite = SuiteConfig(
        variants=[VariantEntry("vera", {"r": 8}), VariantEntry("adalora", {"r": 4, "target_r": 2})],
        tasks=[toy_task],
        budget=Budget.parse("steps=10"),
        train=TrainConfig(batch_size=16, learning_rate=LR, max_eval_examples=32),
        model=str(tiny_model_dir),
        out=str(tmp_path),
    )
    suite.validate()
    torch.set_num_threads(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = run_suite(
            suite, ResultStore(tmp_path / "r.db"), progress=False, stream=io.StringIO()
        )
    # The harness drives the hooks; its FLOP probe before on_train_begin updates nothing.
    assert not [w for w in caught if HOOK_WARNING in str(w.message)]
    vera, adalora = records
    assert [r.status for r in records] == ["finished", "finished"]
    assert vera.config["train"]["learning_rate"] == 0.005
    assert adalora.config["variant_config"]["tinit"] == 0.1
    assert adalora.config["variant_config"]["orth_reg_weight"] == 0.1
    # tinit 1 and tfinal 5 of 10 steps: the schedule reached its target budget of 2 per matrix.
    assert sum(adalora.ranks.values()) == 2 * len(adalora.ranks)


# -- AdaLoRA's schedule as fractions of the run ----------------------------------------------------
def _train(model: torch.nn.Module, adapter, steps: int) -> list[bool]:
    """Trains ``steps`` steps as the harness does; per step, whether the pattern was frozen."""
    optimizer = torch.optim.AdamW(adapter.trainable_parameters(), lr=1e-2)
    model.train()
    adapter.on_train_begin(steps)
    frozen = []
    for step in range(steps):
        adapter.before_step(step)
        loss = model(**make_batch(batch=4, seed=step)).loss + adapter.regularization_loss()
        loss.backward()
        optimizer.step()
        adapter.after_step(step)
        optimizer.zero_grad()
        frozen.append(adapter.variant.pattern_frozen)
    return frozen


def test_fractional_tinit_and_tfinal_are_the_steps_the_allocator_uses() -> None:
    model = build_model("bert")
    adapter = attach(
        model,
        "adalora",
        r=6,
        target_r=2,
        tinit=0.1,
        tfinal=0.5,
        target_modules=list(FAMILIES["bert"].target_modules),
    )
    variant = adapter.variant
    ranks_before = sum(adapter.ranks().values())
    frozen = _train(model, adapter, 10)
    assert (variant.tinit_steps, variant.tfinal_steps) == (1, 5)
    # Pruning starts after step tinit (1 step completed: none yet), the pattern freezes at
    # T - tfinal = 5 completed steps (0-based step 4), and the run ends on the target budget.
    assert variant.budget_schedule(1) == (ranks_before, False)
    assert variant.budget_schedule(2)[0] < ranks_before
    assert frozen.index(True) == 4
    assert sum(adapter.ranks().values()) == variant.target_budget
    # The saved config keeps the fractions, and the report label reads as before.
    saved = adapter.variant.config.to_dict()
    assert (saved["tinit"], saved["tfinal"]) == (0.1, 0.5)
    assert AdaLoRAConfig.from_dict(saved).tinit == 0.1
    assert VARIANTS.get("adalora").rank_label(saved) == "r=6→2"


def test_integer_tinit_and_tfinal_keep_meaning_steps() -> None:
    config = make_config(VARIANTS.get("adalora"), {"tinit": 3, "tfinal": 4})
    adapter = attach(build_model("bert"), "adalora", config)
    adapter.on_train_begin(1000)
    assert (adapter.variant.tinit_steps, adapter.variant.tfinal_steps) == (3, 4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tinit": 1.5}, r"tinit=1.5 must be whole optimiser steps .* or a fraction .* \[0, 1\)"),
        ({"tfinal": 1.0}, r"tfinal=1.0 must be whole optimiser steps \(an int, e.g. tfinal=200\)"),
        ({"tinit": -0.1}, r"tinit=-0.1 must be .*outside \[0, 1\)"),
        ({"tinit": math.nan}, r"tinit=nan must be"),
        ({"tinit": "0.1"}, r"tinit='0.1' must be an integer"),
        ({"tinit": 0.6, "tfinal": 0.5}, r"tinit=0.6 \+ tfinal=0.5 cover the whole run"),
    ],
)
def test_bad_fractions_are_refused_naming_the_value_and_the_fix(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config(VARIANTS.get("adalora"), overrides)


def test_a_fraction_mixed_with_steps_is_checked_when_the_run_length_is_known() -> None:
    adapter = attach(build_model("bert"), "adalora", tinit=5, tfinal=0.5)
    with pytest.raises(
        ConfigError, match=r"tinit=5 \+ tfinal=0.5 \(5 steps\) must be < total steps 10"
    ):
        adapter.on_train_begin(10)
    adapter.on_train_begin(20)  # 5 + 10 < 20
    assert (adapter.variant.tinit_steps, adapter.variant.tfinal_steps) == (5, 10)


# -- the warning when nobody drives the hooks -----------------------------------------------------
def _plain_loop(model: torch.nn.Module, adapter, steps: int = 3) -> list[str]:
    """A user's loop that never calls the hooks: forward, backward, step. The hook warnings."""
    optimizer = torch.optim.AdamW(adapter.trainable_parameters(), lr=1e-2)
    model.train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(steps):
            model(**make_batch(batch=2, seed=i)).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return [str(w.message) for w in caught if HOOK_WARNING in str(w.message)]


def _forwards(model: torch.nn.Module, n: int = 3) -> list[str]:
    """Training-mode forwards and backwards without an update (a FLOP count, a gradient check)."""
    model.train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(n):
            model(**make_batch(batch=2, seed=i)).loss.backward()
    return [str(w.message) for w in caught if HOOK_WARNING in str(w.message)]


@pytest.mark.parametrize("variant", ["adalora", "dylora", "sora", "increlora"])
def test_a_hook_driven_variant_warns_once_when_trained_without_on_train_begin(variant) -> None:
    model = build_model("bert")
    adapter = attach(model, variant)
    messages = _plain_loop(model, adapter, steps=4)
    assert len(messages) == 1  # once per variant instance, however many steps
    assert messages[0].startswith(f"{variant} is training without its per-step hooks")
    assert "adapter.on_train_begin" in messages[0] and "LorabenchTrainer" in messages[0]
    # Another adapter warns for itself.
    other = build_model("bert")
    assert len(_plain_loop(other, attach(other, variant))) == 1


def test_forwards_without_an_update_do_not_warn_but_the_first_update_does() -> None:
    model = build_model("bert")
    adapter = attach(model, "adalora")
    assert _forwards(model) == []  # what the harness' FLOP probe does before on_train_begin
    assert len(_plain_loop(model, adapter, steps=2)) == 1


def test_no_warning_after_on_train_begin_in_eval_mode_or_while_probing() -> None:
    model = build_model("bert")
    adapter = attach(model, "adalora")
    adapter.on_train_begin(100)
    assert _plain_loop(model, adapter) == []

    model = build_model("bert")
    adapter = attach(model, "dylora")
    optimizer = torch.optim.AdamW(adapter.trainable_parameters(), lr=1e-2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(3):  # eval mode: not training, whatever changes the weights
            model.eval()
            model(**make_batch(batch=2, seed=i)).loss.backward()
            optimizer.step()
    assert not [w for w in caught if HOOK_WARNING in str(w.message)]

    model = build_model("bert")
    adapter = attach(model, "dylora")
    with adapter.variant.probing():  # a timing probe: steps, then weights restored
        assert _plain_loop(model, adapter) == []
    assert len(_plain_loop(model, adapter)) == 1  # probing did not use up the warning


@pytest.mark.parametrize("variant", ["lora", "dora", "vera"])
def test_variants_without_step_hooks_never_warn(variant) -> None:
    model = build_model("bert")
    assert _plain_loop(model, attach(model, variant, r=4)) == []


# -- search trials resolve the recipe as suite runs do ---------------------------------------------
def test_search_trials_apply_the_paper_recipe_under_sampled_values():
    from lorabench.harness.config import Budget
    from lorabench.search.study import SearchConfig, _run_config

    def trial(variant: str, params: dict, recipes: str = "paper"):
        cfg = SearchConfig(variant=variant, task="rte", budget=Budget.parse("steps=100"))
        cfg.recipes = recipes
        cfg.validate()
        return _run_config(cfg, params)

    vera = trial("vera", {"r": 64})
    assert vera.train.learning_rate == pytest.approx(10 * TrainConfig().learning_rate)
    # A sampled learning rate is the trial's: never scaled.
    assert trial("vera", {"train.learning_rate": 3e-3}).train.learning_rate == 3e-3
    adalora = trial("adalora", {"r": 8, "target_r": 4})
    assert adalora.variant_config["orth_reg_weight"] == 0.1
    assert trial("adalora", {"orth_reg_weight": 0.3}).variant_config["orth_reg_weight"] == 0.3
    assert trial("vera", {}, "none").train.learning_rate == TrainConfig().learning_rate
    with pytest.raises(Exception, match="recipes="):
        trial("vera", {}, "sometimes")
