"""VeRA against the paper (Kopiczko et al., 2024) and Hugging Face PEFT's ``VeraConfig``.

The general variant contract runs for VeRA in test_contract.py; this file checks VeRA's own
parts: the shared frozen matrices (drawn exactly as PEFT draws them, held once, sliced per
layer, moved with the model), the forward formula, parity with PEFT in outputs and gradients,
the parameter count, and both ways of saving (matrices stored, or only the seed).
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import build_model, make_batch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorabench.variants import ConfigError, attach, get_variant, load_adapter
from lorabench.variants.adapter import CONFIG_FILE, WEIGHTS_FILE
from lorabench.variants.vera import VeRA, VeRAConfig, VeRALayer

TOL = {"rtol": 1e-5, "atol": 1e-5}
R = 8


class TwoLayers(nn.Module):
    """Two adaptable layers of different shapes (so the shared matrices are sliced):
    ``up`` 12 -> 20 and ``down`` 20 -> 6, as nn.Linear or GPT-2 Conv1D (weight stored (in, out))."""

    def __init__(self, kind: str = "linear") -> None:
        super().__init__()
        make = (lambda i, o: nn.Linear(i, o)) if kind == "linear" else (lambda i, o: Conv1D(o, i))
        self.up = make(12, 20)
        self.down = make(20, 6)
        if kind == "conv1d":  # Conv1D starts with zero bias and tiny weights
            for layer in (self.up, self.down):
                nn.init.normal_(layer.bias)
                nn.init.normal_(layer.weight, std=0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.tanh(self.up(x)))


@torch.no_grad()
def randomise(adapter, seed: int = 0) -> None:
    """b starts at zero (and d at 0.1): give both values so every gradient is non-trivial."""
    g = torch.Generator().manual_seed(seed)
    for layer in adapter.layers.values():
        for p in (layer.vera_lambda_b, layer.vera_lambda_d):
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))


def peft_vera(
    model: nn.Module, *, targets: list[str], r: int, fan_in_fan_out: bool = False, **kw
) -> nn.Module:
    peft = pytest.importorskip("peft")
    cfg = peft.VeraConfig(r=r, target_modules=targets, fan_in_fan_out=fan_in_fan_out, **kw)
    return peft.get_peft_model(model, cfg)


@torch.no_grad()
def copy_into_peft(adapter, peft_model: nn.Module) -> None:
    root = peft_model.base_model.model
    for name, layer in adapter.layers.items():
        theirs = root.get_submodule(name)
        theirs.vera_lambda_b["default"].copy_(layer.vera_lambda_b)
        theirs.vera_lambda_d["default"].copy_(layer.vera_lambda_d)


def assert_adapter_grads_match(adapter, peft_model: nn.Module) -> None:
    root = peft_model.base_model.model
    for name, layer in adapter.layers.items():
        theirs = root.get_submodule(name)
        for attr in VeRALayer.trainable_names:
            ours = getattr(layer, attr).grad
            assert ours is not None and ours.abs().sum() > 0, f"{name}.{attr} got no gradient"
            torch.testing.assert_close(
                ours, getattr(theirs, attr)["default"].grad, **TOL, msg=f"{name}.{attr}"
            )


def pair(kind: str = "linear", *, r: int = R, dtype=torch.float64, **cfg):
    torch.manual_seed(0)
    ours = TwoLayers(kind).to(dtype)
    theirs = peft_vera(
        copy.deepcopy(ours),
        targets=["up", "down"],
        r=r,
        fan_in_fan_out=kind == "conv1d",
        **{"vera_dropout" if k == "dropout" else k: v for k, v in cfg.items()},
    )
    adapter = attach(ours, "vera", r=r, target_modules=["up", "down"], **cfg)
    randomise(adapter)
    copy_into_peft(adapter, theirs)
    return ours, adapter, theirs


def x_batch(dtype=torch.float64) -> torch.Tensor:
    return torch.randn(4, 5, 12, generator=torch.Generator().manual_seed(1), dtype=dtype)


def test_registered_with_pefts_defaults() -> None:
    assert get_variant("vera") is VeRA
    cfg = VeRAConfig()
    assert (cfg.r, cfg.d_initial, cfg.projection_prng_key, cfg.save_projection, cfg.dropout) == (
        256,
        0.1,
        0,
        True,
        0.0,
    )
    assert VeRA(cfg).max_rank(32, 32) is None  # r is only the inner size of random matrices


def test_shared_matrices_are_held_once_sliced_per_layer_and_frozen() -> None:
    model = TwoLayers().double()
    adapter = attach(model, "vera", r=R, target_modules=["up", "down"])
    variant = adapter.variant
    assert variant.vera_A.shape == (R, 20) and variant.vera_B.shape == (
        20,
        R,
    )  # (r, in_max), (out_max, r)
    assert not variant.vera_A.requires_grad and not variant.vera_B.requires_grad
    up, down = adapter.layers["up"], adapter.layers["down"]
    a_up, b_up = up.projections()
    a_down, b_down = down.projections()
    assert a_up.shape == (R, 12) and b_up.shape == (20, R)
    assert a_down.shape == (R, 20) and b_down.shape == (6, R)
    # Slices, not copies: one pair of matrices for the whole model.
    assert a_up.data_ptr() == a_down.data_ptr() == variant.vera_A.data_ptr()
    assert b_up.data_ptr() == b_down.data_ptr() == variant.vera_B.data_ptr()
    buffers = [n for n, _ in model.named_buffers() if "vera" in n]
    assert buffers == ["lorabench_variant.vera_A", "lorabench_variant.vera_B"]


def test_matrices_follow_the_model_across_dtype_changes() -> None:
    model = TwoLayers().double()
    adapter = attach(model, "vera", r=R, target_modules=["up", "down"])
    randomise(adapter)
    x = x_batch()
    expected = model(x)
    model.float()
    assert adapter.variant.vera_A.dtype == torch.float32
    torch.testing.assert_close(model(x.float()), expected.float(), **TOL)


def test_projections_are_kaiming_uniform_from_the_seed() -> None:
    model = TwoLayers()
    variant = attach(
        model, "vera", r=64, target_modules=["up", "down"], projection_prng_key=3
    ).variant
    for matrix, fan_in in ((variant.vera_A, 20), (variant.vera_B, 64)):
        bound = math.sqrt(6 / fan_in)
        assert matrix.abs().max() <= bound
        assert matrix.abs().max() > 0.9 * bound
    again = attach(
        TwoLayers(), "vera", r=64, target_modules=["up", "down"], projection_prng_key=3
    ).variant
    other = attach(
        TwoLayers(), "vera", r=64, target_modules=["up", "down"], projection_prng_key=4
    ).variant
    assert torch.equal(again.vera_A, variant.vera_A) and torch.equal(again.vera_B, variant.vera_B)
    assert not torch.equal(other.vera_A, variant.vera_A)


@pytest.mark.peft
@pytest.mark.parametrize("key", [0, 1234])
def test_shared_matrices_are_identical_to_pefts_from_the_same_seed(key: int) -> None:
    _, adapter, theirs = pair(projection_prng_key=key, dtype=torch.float32)
    assert torch.equal(adapter.variant.vera_A, theirs.base_model.vera_A["default"])
    assert torch.equal(adapter.variant.vera_B, theirs.base_model.vera_B["default"])


def test_forward_is_the_papers_formula() -> None:
    torch.manual_seed(0)
    model = TwoLayers().double()
    adapter = attach(model, "vera", r=R, target_modules=["up", "down"])
    randomise(adapter)
    layer = adapter.layers["up"]
    a, b_mat = adapter.variant.vera_A[:, :12], adapter.variant.vera_B[:20, :]
    d, b = layer.vera_lambda_d, layer.vera_lambda_b
    x = x_batch()
    w, bias = layer.base_layer.weight, layer.base_layer.bias
    expected = x @ w.T + bias + b * (((x @ a.T) * d) @ b_mat.T)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    delta = torch.diag(b) @ b_mat @ torch.diag(d) @ a
    torch.testing.assert_close(layer.delta_weight(), delta, rtol=1e-12, atol=1e-12)


def test_starts_equal_to_the_base_model_bit_for_bit() -> None:
    torch.manual_seed(0)
    model = TwoLayers().double()
    x = x_batch()
    base = model(x)
    adapter = attach(model, "vera", r=R, target_modules=["up", "down"])
    for layer in adapter.layers.values():
        assert (
            torch.all(layer.vera_lambda_d == 0.1) and torch.count_nonzero(layer.vera_lambda_b) == 0
        )
    assert torch.equal(model(x), base)


def test_trainable_parameters_are_r_plus_out_per_layer() -> None:
    adapter = attach(TwoLayers(), "vera", r=R, target_modules=["up", "down"])
    assert adapter.num_trainable_parameters() == (R + 20) + (R + 6)
    bert = attach(build_model("bert"), "vera", r=256)  # r larger than the 32-wide layers is fine
    assert bert.num_trainable_parameters() == 4 * (256 + 32)


@pytest.mark.peft
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_outputs_and_gradients_match_peft(kind: str, dtype: torch.dtype) -> None:
    ours, adapter, theirs = pair(kind, dtype=dtype)
    x = x_batch(dtype)
    x_ours, x_peft = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_ours, y_peft = ours(x_ours), theirs(x_peft)
    torch.testing.assert_close(y_ours, y_peft, **TOL)
    target = torch.randn_like(y_ours)
    ((y_ours - target) ** 2).sum().backward()
    ((y_peft - target) ** 2).sum().backward()
    assert_adapter_grads_match(adapter, theirs)
    torch.testing.assert_close(x_ours.grad, x_peft.grad, **TOL)


@pytest.mark.peft
def test_dropout_path_matches_peft_with_the_same_mask() -> None:
    ours, adapter, theirs = pair(dropout=0.3)
    ours.train()
    theirs.train()
    x = x_batch()
    torch.manual_seed(5)
    y_ours = ours(x)
    torch.manual_seed(5)
    y_peft = theirs(x)
    torch.testing.assert_close(y_ours, y_peft, **TOL)
    y_ours.sum().backward()
    y_peft.sum().backward()
    assert_adapter_grads_match(adapter, theirs)


@pytest.mark.peft
@pytest.mark.parametrize(
    ("family", "targets"), [("bert", ["query", "value"]), ("gpt2", ["c_attn"])]
)
def test_tiny_transformer_matches_peft(family: str, targets: list[str]) -> None:
    ours = build_model(family)
    theirs = peft_vera(build_model(family), targets=targets, r=16, fan_in_fan_out=family == "gpt2")
    adapter = attach(ours, "vera", r=16, target_modules=targets)
    assert torch.equal(adapter.variant.vera_A, theirs.base_model.vera_A["default"])
    randomise(adapter)
    copy_into_peft(adapter, theirs)
    batch = make_batch(batch=3)
    out_ours, out_peft = ours(**batch), theirs(**batch)
    torch.testing.assert_close(out_ours.logits, out_peft.logits, **TOL)
    out_ours.loss.backward()
    out_peft.loss.backward()
    assert_adapter_grads_match(adapter, theirs)


@pytest.mark.peft
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_merged_weights_match_peft(kind: str) -> None:
    ours, adapter, theirs = pair(kind)
    x = x_batch()
    y = ours(x)
    adapter.merge()
    merged = theirs.merge_and_unload()
    for name in ("up", "down"):
        torch.testing.assert_close(
            getattr(ours, name).base_layer.weight,
            getattr(merged, name).weight,
            rtol=1e-10,
            atol=1e-10,
        )
    torch.testing.assert_close(ours(x), y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("save_projection", [True, False], ids=["matrices", "seed-only"])
def test_save_and_load_reproduce_the_outputs(tmp_path, save_projection: bool) -> None:
    torch.manual_seed(0)
    model = TwoLayers("conv1d").double()
    adapter = attach(
        model,
        "vera",
        r=R,
        target_modules=["up", "down"],
        projection_prng_key=11,
        save_projection=save_projection,
    )
    randomise(adapter)
    x = x_batch()
    expected = model(x)
    adapter.save(tmp_path / "vera")

    saved = load_file(str(tmp_path / "vera" / WEIGHTS_FILE))
    config = json.loads((tmp_path / "vera" / CONFIG_FILE).read_text())["config"]
    assert config["projection_prng_key"] == 11 and config["save_projection"] is save_projection
    shared = {"_shared.vera_A", "_shared.vera_B"}
    assert shared <= set(saved) if save_projection else not shared & set(saved)
    assert adapter.size_bytes() == sum(v.numel() * v.element_size() for v in saved.values())

    torch.manual_seed(0)
    fresh = TwoLayers("conv1d").double()
    loaded = load_adapter(fresh, tmp_path / "vera")
    assert torch.equal(fresh(x), expected)
    assert torch.equal(loaded.variant.vera_A, adapter.variant.vera_A)


def test_stored_matrices_are_used_on_load_not_regenerated(tmp_path) -> None:
    model = TwoLayers().double()
    adapter = attach(model, "vera", r=R, target_modules=["up", "down"])
    randomise(adapter)
    with torch.no_grad():  # matrices no seed can produce: the file must be what is read back
        adapter.variant.vera_A.mul_(-2.0)
    x = x_batch()
    expected = model(x)
    adapter.save(tmp_path / "vera")
    fresh = copy.deepcopy(adapter.detach())
    loaded = load_adapter(fresh, tmp_path / "vera")
    assert torch.equal(loaded.variant.vera_A, adapter.variant.vera_A)
    assert torch.equal(fresh(x), expected)


def test_a_file_without_its_matrices_names_the_fix(tmp_path) -> None:
    adapter = attach(TwoLayers(), "vera", r=R, target_modules=["up", "down"], save_projection=False)
    adapter.save(tmp_path / "vera")
    meta_path = tmp_path / "vera" / CONFIG_FILE
    meta = json.loads(meta_path.read_text())
    meta["config"]["save_projection"] = True
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(Exception, match=r"no shared matrix _shared\.vera_A.*save_projection=False"):
        load_adapter(TwoLayers(), tmp_path / "vera")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("d_initial", 0.0, "d_initial=0.0 must be a finite non-zero number"),
        ("d_initial", float("inf"), "d_initial=inf must be a finite non-zero number"),
        ("projection_prng_key", -1, "projection_prng_key=-1 must be >= 0"),
        ("save_projection", "yes", "save_projection='yes' must be True or False"),
        ("r", 0, "r=0 must be >= 1"),
    ],
)
def test_bad_values_name_the_field(field: str, value, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        attach(TwoLayers(), "vera", target_modules=["up"], **{field: value})
