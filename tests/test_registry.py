"""The plugin registry: decorator registration, wildcards, did-you-mean, entry points, the CLI list."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch
from tiny_models import build_model, logits, make_batch

from lorabench.registry import Registry, UnknownNameError
from lorabench.variants import VARIANTS, Variant, attach, get_variant, list_variants
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


def _install_plugin(root, monkeypatch, *, dist: str, module: str, entry_points: str, source: str) -> None:
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
        """,
        source=PLUGIN_SOURCE,
    )
    VARIANTS.load_entry_points(force=True)
    yield
    VARIANTS.unregister("lb-test-plugin")
    VARIANTS._entry_point_errors.pop("lb-test-broken", None)
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
    assert not torch.allclose(logits(model, batch), base)  # its own init took effect
    adapter.save(tmp_path / "saved")
    restored = adapter.detach()
    torch.testing.assert_close(logits(restored, batch), base, rtol=0, atol=0)


def test_a_broken_plugin_is_reported_by_name_without_hiding_the_others(plugin_installed) -> None:
    assert "lora" in list_variants()
    with pytest.raises(UnknownNameError, match="failed to load: ModuleNotFoundError"):
        get_variant("lb-test-broken")


def test_cli_lists_every_variant_with_a_one_line_description(capsys) -> None:
    from lorabench.cli.main import main

    assert main(["list", "variants"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    names = list_variants()
    assert len(lines) == len(names)
    for name, line in zip(names, lines):
        listed, _, description = line.partition(" ")
        assert listed == name
        assert description.strip() == VARIANTS.describe(name) != ""


def test_cli_list_with_a_pattern_that_matches_nothing_fails(capsys) -> None:
    from lorabench.cli.main import main

    assert main(["list", "variants", "zzz*"]) == 1
    assert "no variants match 'zzz*'" in capsys.readouterr().out
