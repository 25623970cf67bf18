"""LoRA (and rsLoRA): parity with Hugging Face PEFT, the maths, and the errors users see.

The variant contract (merge/unmerge, save/load, detach, gradients) runs for LoRA in
test_contract.py; this file checks LoRA's own maths against PEFT and the bad-input messages.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from tiny_models import build_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorabench.variants import (
    AdapterShapeError,
    ConfigError,
    attach,
    list_variants,
    load_adapter,
)
from lorabench.variants.lora import LoRAConfig

IN, OUT = 24, 16


class OneLayer(nn.Module):
    """A single adaptable layer ``proj``: nn.Linear, or GPT-2's Conv1D (weight stored (in, out))."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.proj = nn.Linear(IN, OUT) if kind == "linear" else Conv1D(OUT, IN)
        if kind == "conv1d":  # Conv1D starts with zero bias and normal(0.02) weights
            nn.init.normal_(self.proj.bias)
            nn.init.normal_(self.proj.weight, std=0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(x))


def _ours_and_peft(kind: str, *, r: int, alpha: float, rslora: bool):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    # float64: parity checks the maths, not float32 summation order (our forward fuses the scaled
    # add into one GEMM, PEFT scales after the product; in float32 the two round differently).
    ours_model = OneLayer(kind).double()
    peft_base = copy.deepcopy(ours_model)
    adapter = attach(
        ours_model, "lora", r=r, alpha=alpha, use_rslora=rslora, target_modules=["proj"]
    )
    layer = adapter.layers["proj"]
    with torch.no_grad():  # B starts at zero; move it so gradients reach A too
        layer.lora_B.normal_(std=0.5)

    cfg = peft.LoraConfig(
        r=r,
        lora_alpha=alpha,
        use_rslora=rslora,
        target_modules=["proj"],
        lora_dropout=0.0,
        fan_in_fan_out=kind == "conv1d",
        init_lora_weights=True,
    )
    peft_model = peft.get_peft_model(peft_base, cfg)
    peft_layer = peft_model.base_model.model.proj
    with torch.no_grad():
        peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
        peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
    return ours_model, adapter, layer, peft_model, peft_layer


@pytest.mark.peft
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
@pytest.mark.parametrize(("r", "alpha"), [(4, 8.0), (8, 16.0), (3, 5.0)])
def test_outputs_and_gradients_match_peft(kind: str, rslora: bool, r: int, alpha: float) -> None:
    ours_model, _, layer, peft_model, peft_layer = _ours_and_peft(
        kind, r=r, alpha=alpha, rslora=rslora
    )
    assert layer.scaling == pytest.approx(peft_layer.scaling["default"])

    x = torch.randn(5, 7, IN, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x_ours, x_peft = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_ours, y_peft = ours_model(x_ours), peft_model(x_peft)
    torch.testing.assert_close(y_ours, y_peft, rtol=1e-5, atol=1e-5)

    target = torch.randn_like(y_ours)
    ((y_ours - target) ** 2).sum().backward()
    ((y_peft - target) ** 2).sum().backward()
    torch.testing.assert_close(
        layer.lora_A.grad, peft_layer.lora_A["default"].weight.grad, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        layer.lora_B.grad, peft_layer.lora_B["default"].weight.grad, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(x_ours.grad, x_peft.grad, rtol=1e-5, atol=1e-5)
    assert layer.base_layer.weight.grad is None


@pytest.mark.peft
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
def test_delta_and_merged_weight_match_peft(kind: str, rslora: bool) -> None:
    _, adapter, layer, peft_model, peft_layer = _ours_and_peft(kind, r=4, alpha=8.0, rslora=rslora)
    # PEFT's delta is in the base layer's storage layout: (in, out) for Conv1D.
    peft_delta = peft_layer.get_delta_weight("default").detach()
    ours_delta = layer.delta_weight().detach()
    torch.testing.assert_close(ours_delta.T if kind == "conv1d" else ours_delta, peft_delta)
    adapter.merge()
    merged = peft_model.merge_and_unload()
    torch.testing.assert_close(layer.base_layer.weight, merged.proj.weight, rtol=1e-6, atol=1e-6)


@pytest.mark.peft
def test_initialisation_follows_peft() -> None:
    _, _, _, _, peft_layer = _ours_and_peft("linear", r=4, alpha=8.0, rslora=False)
    torch.manual_seed(0)
    adapter = attach(OneLayer("linear"), "lora", r=64 // 4, target_modules=["proj"])
    layer = adapter.layers["proj"]
    assert torch.count_nonzero(layer.lora_B) == 0  # the adapted model starts as the base model
    # Kaiming-uniform with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in)), as nn.Linear and PEFT do.
    bound = 1 / math.sqrt(IN)
    assert layer.lora_A.abs().max() <= bound
    assert layer.lora_A.abs().max() > 0.9 * bound
    assert layer.lora_A.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15)
    assert peft_layer.lora_A["default"].weight.shape == (4, IN)


@pytest.mark.peft
def test_defaults_are_pefts() -> None:
    peft = pytest.importorskip("peft")
    theirs, ours = peft.LoraConfig(), LoRAConfig()
    assert (ours.r, ours.alpha, ours.dropout, ours.use_rslora) == (
        theirs.r,
        theirs.lora_alpha,
        theirs.lora_dropout,
        theirs.use_rslora,
    )


@pytest.mark.parametrize("rslora", [False, True])
def test_forward_is_the_papers_formula(rslora: bool) -> None:
    torch.manual_seed(0)
    model = OneLayer("linear").double()
    adapter = attach(model, "lora", r=4, alpha=6.0, use_rslora=rslora, target_modules=["proj"])
    layer = adapter.layers["proj"]
    with torch.no_grad():
        layer.lora_B.normal_()
    s = 6.0 / math.sqrt(4) if rslora else 6.0 / 4
    x = torch.randn(3, IN, dtype=torch.float64)
    w, b = layer.base_layer.weight, layer.base_layer.bias
    expected = torch.tanh(x @ w.T + b + s * (x @ layer.lora_A.T) @ layer.lora_B.T)
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(layer.delta_weight(), s * layer.lora_B @ layer.lora_A)


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [0, -2])
def test_rank_must_be_positive(r: int) -> None:
    with pytest.raises(ConfigError, match=rf"r={r} must be >= 1"):
        attach(build_model("bert"), "lora", r=r)


def test_rank_larger_than_the_layer_names_the_value_and_the_fix() -> None:
    with pytest.raises(ConfigError) as info:
        attach(build_model("bert"), "lora", r=40)  # query/value are 32x32
    message = str(info.value)
    assert "r=40" in message
    assert "choose r <= 32" in message
    assert "query" in message


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("alpha", 0, "alpha=0 must be a finite number > 0"),
        ("alpha", float("nan"), "alpha=nan must be a finite number > 0"),
        ("dropout", 1.0, r"dropout=1.0 must be in \[0, 1\)"),
        ("r", 2.5, "r=2.5 must be an integer"),
        ("dropout", "0.1", r"dropout='0.1' must be in \[0, 1\): use a number"),
        ("use_rslora", "false", "use_rslora='false' must be True or False"),  # a truthy string
        ("target_modules", [], "must be a non-empty list"),
        ("target_modules", 5, "target_modules=5 must be a non-empty list"),
    ],
)
def test_bad_values_name_the_field(field: str, value, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        attach(build_model("bert"), "lora", **{field: value})


def test_a_config_of_the_wrong_type_is_refused() -> None:
    others = [v for v in ("dora", "dylora", "vera", "adalora") if v in list_variants()]
    assert others, "needs a second registered variant"
    for variant in others:
        with pytest.raises(ConfigError, match=r"takes a \w+Config, got a LoRAConfig"):
            attach(build_model("bert"), variant, LoRAConfig(r=4))


def test_a_pattern_that_matches_nothing_lists_the_module_names() -> None:
    with pytest.raises(ConfigError) as info:
        attach(build_model("bert"), "lora", r=4, target_modules=["qurey"])
    message = str(info.value)
    assert "'qurey' matches no module" in message
    assert "Did you mean 'query'" in message
    for name in ("query", "key", "value", "dense"):
        assert f"'{name}'" in message


def test_a_pattern_on_a_non_linear_module_says_what_can_be_adapted() -> None:
    with pytest.raises(ConfigError, match=r"only nn\.Linear and GPT-2 Conv1D can be adapted"):
        attach(build_model("bert"), "lora", r=4, target_modules=["LayerNorm"])


def test_an_unknown_config_field_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        attach(build_model("bert"), "lora", rank=4)
    message = str(info.value)
    assert "no field(s) ['rank']" in message
    assert "'r'" in message and "'alpha'" in message


def test_sequential_root_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match="wrap it in a module"):
        attach(nn.Sequential(nn.Linear(4, 4)), "lora", r=2, target_modules=["0"])


def test_loading_into_another_model_shape_fails(tmp_path) -> None:
    adapter = attach(build_model("bert"), "lora", r=4)
    adapter.save(tmp_path / "a")

    torch.manual_seed(0)
    wider = build_model("bert")
    wider_cfg = wider.config.__class__(**{**wider.config.to_dict(), "hidden_size": 48})
    wider = type(wider)(wider_cfg).double()
    with pytest.raises(
        AdapterShapeError, match=r"saved for another model shape.*\(32, 32\) vs model \(48, 48\)"
    ):
        load_adapter(wider, tmp_path / "a")
    assert not any(
        type(m).__name__ == "LoRALayer" for m in wider.modules()
    )  # nothing half-attached


def test_loading_a_missing_directory_says_what_is_missing(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no adapter_config\.json"):
        load_adapter(build_model("bert"), tmp_path)
