"""The plugin registry: decorator registration, wildcards, did-you-mean, entry points, the CLI
list, and the contract suite of lorabench.testing run on an installed plugin."""

from __future__ import annotations

import importlib
import sys
import textwrap
from typing import Any, ClassVar

import pytest
import torch
from tiny_models import build_model, logits, make_batch

from lorabench.registry import Registry, UnknownNameError
from lorabench.testing import VariantContractTests, check_variant_contract
from lorabench.variants import (
    VARIANTS,
    ConfigError,
    Variant,
    attach,
    get_variant,
    list_variants,
    load_adapter,
)
from lorabench.variants.lora import LoRA


def test_decorator_registers_under_the_given_name_and_returns_the_class() -> None:
    reg: Registry = Registry("widget")

    @reg.register("Fancy-Widget")
    class Fancy:
        """A fancy widget.

        More text that is not the description."""

    @reg.register(description="explicit words")
    class Plain:
        name = "plain"

    assert reg.get("fancy-widget") is Fancy  # names are case-insensitive
    assert reg.get("FANCY-WIDGET") is Fancy
    assert reg.describe("fancy-widget") == "A fancy widget."
    assert reg.get("plain") is Plain and reg.describe("plain") == "explicit words"
    assert reg.list() == ["fancy-widget", "plain"]
    assert "plain" in reg and "other" not in reg and len(reg) == 2


def test_duplicate_names_fail_unless_overwritten() -> None:
    reg: Registry = Registry("widget")
    reg.add(object(), name="a")
    with pytest.raises(ValueError, match="a widget named 'a' is already registered"):
        reg.add(object(), name="a")
    replacement = object()
    reg.add(replacement, name="a", overwrite=True)
    assert reg.get("a") is replacement


def test_a_plugin_needs_a_name() -> None:
    reg: Registry = Registry("widget")
    with pytest.raises(ValueError, match="give a name"):
        reg.add(object())


def test_variant_decorator_registers_into_the_variant_registry() -> None:
    @VARIANTS.register("test-dummy")
    class Dummy(LoRA):
        name = "test-dummy"
        description = "a LoRA under another name, for this test"

    try:
        assert get_variant("test-dummy") is Dummy
        assert "test-dummy" in list_variants()
        assert VARIANTS.describe("test-dummy") == "a LoRA under another name, for this test"
    finally:
        VARIANTS.unregister("test-dummy")
    assert "test-dummy" not in list_variants()


def test_a_variant_without_its_own_name_takes_the_registered_one(tmp_path) -> None:
    """As in the README's example: a subclass registered without setting ``name`` must not save
    adapters under its parent's name ("lora"), which would reload as plain LoRA."""

    @VARIANTS.register("test-unnamed")
    class Unnamed(LoRA):
        description = "LoRA under a name only the decorator gives"

    try:
        assert Unnamed.name == "test-unnamed" and LoRA.name == "lora"
        model = build_model("bert")
        adapter = attach(model, "test-unnamed", r=2)
        assert adapter.name == "test-unnamed"
        adapter.save(tmp_path / "a")
        loaded = load_adapter(build_model("bert"), tmp_path / "a")
        assert type(loaded.variant) is Unnamed
    finally:
        VARIANTS.unregister("test-unnamed")


def test_a_variant_whose_name_differs_from_its_registration_is_refused() -> None:
    class Named(LoRA):
        name = "one-name"

    with pytest.raises(ValueError, match=r"has name='one-name' but is registered as 'other-name'"):
        VARIANTS.register("other-name")(Named)
    assert "other-name" not in VARIANTS


def test_a_registered_non_variant_fails_at_attach_with_the_fix() -> None:
    VARIANTS.add(object, name="test-not-a-variant")
    try:
        with pytest.raises(
            ConfigError,
            match=r"'test-not-a-variant' is <class 'object'>, not a lorabench Variant subclass",
        ):
            attach(build_model("bert"), "test-not-a-variant")
    finally:
        VARIANTS.unregister("test-not-a-variant")


def test_list_takes_wildcards() -> None:
    lora_like = list_variants("*lora*")
    assert {"lora", "dylora"} <= set(lora_like)
    assert all("lora" in name for name in lora_like)
    assert "vera" not in lora_like
    assert list_variants("lora") == ["lora"]
    assert list_variants("LORA") == ["lora"]
    assert list_variants(["lora", "dy*"]) == ["dylora", "lora"]
    assert list_variants("nothing-like-this*") == []
    assert list_variants() == sorted(list_variants())


def test_unknown_name_says_did_you_mean_and_lists_the_known_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        get_variant("lorra")
    message = str(info.value)
    assert "unknown variant 'lorra'" in message
    assert "Did you mean 'lora'" in message
    for name in list_variants():
        assert name in message
    assert isinstance(info.value, KeyError)  # callers catching KeyError keep working


def test_unknown_name_without_a_close_match_has_no_guess() -> None:
    with pytest.raises(UnknownNameError) as info:
        get_variant("xyzzy")
    assert "Did you mean" not in str(info.value)
    assert "Known variants:" in str(info.value)


PLUGIN_SOURCE = '''
"""A third-party variant: LoRA whose B starts at a constant, installed through an entry point."""
from dataclasses import dataclass

import torch

from lorabench.variants import Variant
from lorabench.variants.lora import LoRAConfig, LoRALayer


@dataclass
class PluginConfig(LoRAConfig):
    b_init: float = 0.01


class PluginLayer(LoRALayer):
    def __init__(self, base_layer, config, variant):
        super().__init__(base_layer, config, variant)
        with torch.no_grad():
            self.lora_B.fill_(config.b_init)


class PluginVariant(Variant):
    name = "lb-test-plugin"
    description = "test plugin: LoRA with a constant B init"
    config_class = PluginConfig
    layer_class = PluginLayer
    init_equals_base = False
'''


def _install_plugin(
    root, monkeypatch, *, dist: str, module: str, entry_points: str, source: str
) -> None:
    """Writes an importable package and its .dist-info (what pip would install) under ``root``."""
    (root / module).mkdir()
    (root / module / "__init__.py").write_text(textwrap.dedent(source))
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()


@pytest.fixture
def plugin_installed(tmp_path, monkeypatch):
    _install_plugin(
        tmp_path,
        monkeypatch,
        dist="lb_test_plugin",
        module="lb_test_plugin",
        entry_points="""
            [lorabench.variants]
            lb-test-plugin = lb_test_plugin:PluginVariant
            lb-test-broken = lb_test_missing_module:Nothing
            lb-test-misnamed = lb_test_plugin:PluginVariant
        """,
        source=PLUGIN_SOURCE,
    )
    VARIANTS.load_entry_points(force=True)
    yield
    VARIANTS.unregister("lb-test-plugin")
    for broken in ("lb-test-broken", "lb-test-misnamed"):
        VARIANTS._entry_point_errors.pop(broken, None)
    sys.modules.pop("lb_test_plugin", None)


def test_third_party_variant_arrives_through_an_entry_point(plugin_installed, tmp_path) -> None:
    assert "lb-test-plugin" in list_variants()
    cls = get_variant("lb-test-plugin")
    assert issubclass(cls, Variant) and cls.__module__ == "lb_test_plugin"

    model = build_model("bert")
    batch = make_batch()
    base = logits(model, batch)
    adapter = attach(model, "lb-test-plugin", r=2, b_init=0.05)
    assert adapter.ranks() and all(r == 2 for r in adapter.ranks().values())
    adapted = logits(model, batch)
    assert not torch.allclose(adapted, base)  # its own init took effect
    adapter.save(tmp_path / "saved")
    restored = adapter.detach()
    torch.testing.assert_close(logits(restored, batch), base, rtol=0, atol=0)
    # The saved adapter names the plugin; loading finds it through the registry again.
    loaded = load_adapter(build_model("bert"), tmp_path / "saved")
    assert type(loaded.variant) is cls
    torch.testing.assert_close(logits(loaded.model, batch), adapted, rtol=0, atol=0)


@pytest.mark.usefixtures("plugin_installed")
class TestThePluginKeepsTheContract(VariantContractTests):
    """What a plugin author writes in their own tests: lorabench's contract suite, subclassed
    with the plugin's registered name (its identity check is skipped: the plugin declares
    ``init_equals_base = False``)."""

    variant = "lb-test-plugin"
    config: ClassVar[dict[str, Any]] = {"r": 2, "b_init": 0.05}


def test_the_contract_runs_on_the_plugin_outside_pytest_classes(plugin_installed) -> None:
    ran = check_variant_contract("lb-test-plugin", families=["gpt2"])
    assert "save_load_roundtrip_in_a_fresh_model[gpt2]" in ran
    assert not any(case.startswith("init_equals_base") for case in ran)  # not claimed: skipped


def test_a_plugin_that_sets_no_report_facts_gets_the_defaults(plugin_installed) -> None:
    cls = get_variant("lb-test-plugin")
    assert cls.report_name() == "lb-test-plugin" and cls.report_position() is None
    assert not cls.adaptive_rank and not cls.multi_rank_eval and cls.label_fields == {"r"}
    assert cls.report_label({"r": 2, "b_init": 0.05}) == "lb-test-plugin r=2"


def test_a_broken_plugin_is_reported_by_name_without_hiding_the_others(plugin_installed) -> None:
    assert "lora" in list_variants()
    with pytest.raises(UnknownNameError, match="failed to load: ModuleNotFoundError"):
        get_variant("lb-test-broken")
    # A class declared under a name other than its own: refused, and reported by name.
    with pytest.raises(
        UnknownNameError, match="has name='lb-test-plugin' but is registered as 'lb-test-misnamed'"
    ):
        get_variant("lb-test-misnamed")


def test_cli_lists_every_variant_with_a_one_line_description(capsys) -> None:
    from lorabench.cli.main import main

    assert main(["list", "variants"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    names = list_variants()
    assert len(lines) == len(names)
    for name, line in zip(names, lines, strict=True):
        listed, _, description = line.partition(" ")
        assert listed == name
        # The description, then the variant's paper recipe when it has one ("[paper recipe: ...]").
        described, _, recipe = description.strip().partition("  [paper recipe: ")
        assert described == VARIANTS.describe(name) != ""
        own = VARIANTS.get(name).recipe
        assert recipe == ("" if own.is_identity else f"{own.summary()}]")


def test_cli_list_with_a_pattern_that_matches_nothing_fails(capsys) -> None:
    from lorabench.cli.main import main

    assert main(["list", "variants", "zzz*"]) == 1
    assert "no variants match 'zzz*'" in capsys.readouterr().out
