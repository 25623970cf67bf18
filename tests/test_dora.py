"""DoRA against the paper (Liu et al., 2024) and Hugging Face PEFT's ``LoraConfig(use_dora=True)``.

The general variant contract (merge/unmerge bits, save/load, detach, gradients only on declared
parameters) runs for DoRA in test_contract.py; this file checks DoRA's own maths: the weight
decomposition with a detached norm, the unscaled bias, the dropout path, and parity with PEFT in
outputs, every adapter gradient and the merged weight, on single layers and tiny transformers.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import build_model, make_batch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorabench.variants import attach, get_variant, list_variants, load_adapter
from lorabench.variants.dora import DoRA, DoRAConfig, DoRALayer
from lorabench.variants.lora import LoRAConfig

IN, OUT = 24, 16
TOL = {"rtol": 1e-5, "atol": 1e-5}


class OneLayer(nn.Module):
    """One adaptable layer ``proj`` (nn.Linear, or GPT-2's Conv1D storing (in, out)), then
    dropout-free tanh."""

    def __init__(self, kind: str, *, bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(IN, OUT, bias=bias) if kind == "linear" else Conv1D(OUT, IN)
        if kind == "conv1d":  # Conv1D starts with zero bias and tiny weights: make both matter
            nn.init.normal_(self.proj.bias)
            nn.init.normal_(self.proj.weight, std=0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(x))


@torch.no_grad()
def randomise(layer: DoRALayer, seed: int = 0) -> None:
    """Moves B and m away from their init so every term of DoRA's forward is non-trivial."""
    g = torch.Generator().manual_seed(seed)
    layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g, dtype=layer.lora_B.dtype) * 0.5)
    layer.magnitude.mul_(
        1 + 0.3 * torch.randn(layer.magnitude.shape, generator=g, dtype=layer.magnitude.dtype)
    )


def peft_dora(
    model: nn.Module,
    *,
    targets: list[str],
    r: int,
    alpha: float,
    rslora: bool = False,
    dropout: float = 0.0,
    fan_in_fan_out: bool = False,
) -> nn.Module:
    peft = pytest.importorskip("peft")
    cfg = peft.LoraConfig(
        r=r,
        lora_alpha=alpha,
        use_rslora=rslora,
        use_dora=True,
        target_modules=targets,
        lora_dropout=dropout,
        fan_in_fan_out=fan_in_fan_out,
        init_lora_weights=True,
    )
    return peft.get_peft_model(model, cfg)


@torch.no_grad()
def copy_into_peft(adapter, peft_model: nn.Module) -> None:
    """Gives PEFT's layers our (randomised) A, B and m."""
    root = peft_model.base_model.model
    for name, layer in adapter.layers.items():
        theirs = root.get_submodule(name)
        theirs.lora_A["default"].weight.copy_(layer.lora_A)
        theirs.lora_B["default"].weight.copy_(layer.lora_B)
        theirs.lora_magnitude_vector["default"].weight.copy_(layer.magnitude)


def assert_adapter_grads_match(adapter, peft_model: nn.Module, **tol) -> None:
    root = peft_model.base_model.model
    for name, layer in adapter.layers.items():
        theirs = root.get_submodule(name)
        pairs = {
            "lora_A": theirs.lora_A["default"].weight,
            "lora_B": theirs.lora_B["default"].weight,
            "magnitude": theirs.lora_magnitude_vector["default"].weight,
        }
        for attr, peft_param in pairs.items():
            ours = getattr(layer, attr).grad
            assert ours is not None and ours.abs().sum() > 0, f"{name}.{attr} got no gradient"
            torch.testing.assert_close(
                ours, peft_param.grad, **tol, msg=f"{name}.{attr} gradient differs"
            )


def one_layer_pair(
    kind: str,
    *,
    r: int = 4,
    alpha: float = 8.0,
    rslora: bool = False,
    dropout: float = 0.0,
    bias: bool = True,
    dtype=torch.float64,
):
    torch.manual_seed(0)
    ours = OneLayer(kind, bias=bias).to(dtype)
    theirs = peft_dora(
        copy.deepcopy(ours),
        targets=["proj"],
        r=r,
        alpha=alpha,
        rslora=rslora,
        dropout=dropout,
        fan_in_fan_out=kind == "conv1d",
    )
    adapter = attach(
        ours, "dora", r=r, alpha=alpha, use_rslora=rslora, dropout=dropout, target_modules=["proj"]
    )
    layer = adapter.layers["proj"]
    randomise(layer)
    copy_into_peft(adapter, theirs)
    return ours, adapter, layer, theirs


def x_batch(dtype=torch.float64, shape=(5, 7)) -> torch.Tensor:
    return torch.randn(*shape, IN, generator=torch.Generator().manual_seed(1), dtype=dtype)


def test_registered_with_a_config_extending_lora() -> None:
    assert get_variant("dora") is DoRA
    assert "dora" in list_variants("*ora")
    cfg = DoRAConfig()
    assert isinstance(cfg, LoRAConfig)
    assert (cfg.r, cfg.alpha, cfg.dropout, cfg.use_rslora) == (
        8,
        8.0,
        0.0,
        False,
    )  # PEFT's defaults


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_magnitude_starts_at_the_row_norms_and_output_equals_base_exactly(kind: str) -> None:
    torch.manual_seed(0)
    model = OneLayer(kind).double()
    x = x_batch()
    base = model(x)
    adapter = attach(model, "dora", r=4, target_modules=["proj"])
    layer = adapter.layers["proj"]
    w = layer.base_weight().detach()  # (out, in)
    torch.testing.assert_close(layer.magnitude.detach(), w.norm(dim=1), rtol=1e-12, atol=0)
    assert torch.count_nonzero(layer.lora_B) == 0
    assert torch.equal(model(x), base)  # bit for bit: g == 1 exactly and B == 0


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
def test_forward_is_the_papers_decomposed_weight_and_bias_is_not_rescaled(
    bias: bool, rslora: bool
) -> None:
    torch.manual_seed(0)
    model = OneLayer("linear", bias=bias).double()
    adapter = attach(model, "dora", r=4, alpha=6.0, use_rslora=rslora, target_modules=["proj"])
    layer = adapter.layers["proj"]
    randomise(layer)
    s = 6.0 / (2.0 if rslora else 4.0)
    w, b = layer.base_layer.weight, layer.base_layer.bias
    m, lora_a, lora_b = layer.magnitude, layer.lora_A, layer.lora_B
    direction = w + s * lora_b @ lora_a  # (out, in)
    w_prime = m[:, None] * direction / direction.norm(dim=1, keepdim=True)
    x = x_batch()
    pre = x @ w_prime.T + (
        b if bias else 0.0
    )  # W' x + bias: the bias is added, never multiplied by g
    torch.testing.assert_close(layer(x), pre, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.merged_weight(), w_prime.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.delta_weight(), (w_prime - w).detach(), rtol=1e-12, atol=1e-12)


def test_the_norm_is_a_constant_in_the_backward_pass() -> None:
    """Section 4.3: ||W + s B A|| receives no gradient; the gradients equal those of the formula
    with the norm detached, and differ from those of the fully differentiated formula."""
    torch.manual_seed(0)
    model = OneLayer("linear").double()
    adapter = attach(model, "dora", r=4, alpha=8.0, target_modules=["proj"])
    layer = adapter.layers["proj"]
    randomise(layer)
    x = x_batch()
    target = torch.randn(5, 7, OUT, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def grads(output: torch.Tensor) -> list[torch.Tensor]:
        params = [layer.lora_A, layer.lora_B, layer.magnitude]
        return list(torch.autograd.grad(((output - target) ** 2).sum(), params))

    w, b, s = layer.base_layer.weight, layer.base_layer.bias, layer.scaling

    def reference(detach_norm: bool) -> torch.Tensor:
        direction = w + s * layer.lora_B @ layer.lora_A
        norm = direction.norm(dim=1, keepdim=True)
        w_prime = layer.magnitude[:, None] * direction / (norm.detach() if detach_norm else norm)
        return x @ w_prime.T + b

    ours = grads(layer(x))
    for g_ours, g_ref in zip(ours, grads(reference(detach_norm=True))):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-10)
    full = grads(reference(detach_norm=False))
    assert not torch.allclose(ours[0], full[0])  # the detach is real, not a no-op


@pytest.mark.peft
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
@pytest.mark.parametrize(("r", "alpha"), [(4, 8.0), (3, 5.0)])
def test_layer_outputs_and_gradients_match_peft(
    kind: str, rslora: bool, r: int, alpha: float
) -> None:
    ours, adapter, layer, theirs = one_layer_pair(kind, r=r, alpha=alpha, rslora=rslora)
    peft_layer = theirs.base_model.model.proj
    assert layer.scaling == pytest.approx(peft_layer.scaling["default"])
    x = x_batch()
    x_ours, x_peft = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_ours, y_peft = ours(x_ours), theirs(x_peft)
    torch.testing.assert_close(y_ours, y_peft, **TOL)
    target = torch.randn_like(y_ours)
    ((y_ours - target) ** 2).sum().backward()
    ((y_peft - target) ** 2).sum().backward()
    assert_adapter_grads_match(adapter, theirs, **TOL)
    torch.testing.assert_close(x_ours.grad, x_peft.grad, **TOL)
    assert layer.base_layer.weight.grad is None


@pytest.mark.peft
def test_no_bias_layer_matches_peft_in_float32() -> None:
    ours, adapter, _, theirs = one_layer_pair("linear", bias=False, dtype=torch.float32)
    x = x_batch(torch.float32)
    y_ours, y_peft = ours(x), theirs(x)
    torch.testing.assert_close(y_ours, y_peft, **TOL)
    y_ours.sum().backward()
    y_peft.sum().backward()
    assert_adapter_grads_match(adapter, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.peft
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_dropout_path_matches_peft_with_the_same_mask(kind: str) -> None:
    """With dropout on, PEFT recomputes W dropout(x) for the DoRA term; the same RNG state gives
    the same mask in both, so outputs and gradients must agree; in eval the base output is
    reused."""
    ours, adapter, _, theirs = one_layer_pair(kind, dropout=0.3)
    ours.train()
    theirs.train()
    x = x_batch()
    torch.manual_seed(7)
    y_ours = ours(x)
    torch.manual_seed(7)
    y_peft = theirs(x)
    torch.testing.assert_close(y_ours, y_peft, **TOL)
    torch.manual_seed(8)
    assert not torch.allclose(ours(x), y_ours)  # dropout is really on
    y_ours.sum().backward()
    y_peft.sum().backward()
    assert_adapter_grads_match(adapter, theirs, **TOL)
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x), **TOL)


@pytest.mark.peft
@pytest.mark.parametrize(
    ("family", "targets"), [("bert", ["query", "value"]), ("gpt2", ["c_attn"])]
)
def test_tiny_transformer_logits_and_every_adapter_gradient_match_peft(
    family: str, targets: list[str]
) -> None:
    ours = build_model(family)  # float64, eval mode
    theirs = peft_dora(
        build_model(family), targets=targets, r=4, alpha=8.0, fan_in_fan_out=family == "gpt2"
    )
    adapter = attach(ours, "dora", r=4, alpha=8.0, target_modules=targets)
    assert len(adapter.layers) == len(targets) * 2
    for i, layer in enumerate(adapter.layers.values()):
        randomise(layer, seed=i)
    copy_into_peft(adapter, theirs)
    batch = make_batch(batch=3)
    out_ours, out_peft = ours(**batch), theirs(**batch)
    torch.testing.assert_close(out_ours.logits, out_peft.logits, **TOL)
    out_ours.loss.backward()
    out_peft.loss.backward()
    assert_adapter_grads_match(adapter, theirs, **TOL)


@pytest.mark.peft
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_merged_weight_matches_peft_and_unmerge_restores_the_bits(kind: str) -> None:
    ours, adapter, layer, theirs = one_layer_pair(kind)
    original = layer.base_layer.weight.detach().clone()
    original_bias = layer.base_layer.bias.detach().clone()
    x = x_batch()
    y = ours(x)
    adapter.merge()
    merged = theirs.merge_and_unload()
    torch.testing.assert_close(layer.base_layer.weight, merged.proj.weight, rtol=1e-10, atol=1e-10)
    assert torch.equal(layer.base_layer.bias, original_bias)  # merge leaves the bias alone
    torch.testing.assert_close(ours(x), y, rtol=1e-10, atol=1e-10)
    adapter.unmerge()
    assert torch.equal(layer.base_layer.weight, original)
    assert torch.equal(ours(x), y)


def _saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for backward while ``fn`` runs (duplicates counted
    once)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.peft
def test_keeps_no_more_for_backward_than_peft() -> None:
    """DoRA's cost is activations kept for backward: ours must keep no more than PEFT's form
    (ours keeps one (N, out) tensor for the magnitude's gradient where PEFT keeps two)."""
    ours, _, _, theirs = one_layer_pair("linear", dtype=torch.float32)
    x = torch.randn(64, 32, IN, requires_grad=True)
    ours_bytes, peft_bytes = _saved_bytes(lambda: ours(x)), _saved_bytes(lambda: theirs(x))
    activation = 64 * 32 * OUT * 4
    assert ours_bytes <= peft_bytes - activation // 2, (ours_bytes, peft_bytes)


def test_save_and_load_restore_magnitude_and_outputs(tmp_path) -> None:
    torch.manual_seed(0)
    model = OneLayer("conv1d").double()
    adapter = attach(model, "dora", r=4, target_modules=["proj"])
    randomise(adapter.layers["proj"])
    x = x_batch()
    expected = model(x)
    adapter.save(tmp_path / "dora")
    torch.manual_seed(0)
    fresh = OneLayer("conv1d").double()
    loaded = load_adapter(fresh, tmp_path / "dora")
    assert set(loaded.state_dict()) == {"proj.lora_A", "proj.lora_B", "proj.magnitude"}
    assert torch.equal(fresh(x), expected)


def test_trainable_parameters_are_a_b_and_m() -> None:
    model = build_model("bert")
    adapter = attach(model, "dora", r=4)
    per_layer = 4 * 32 + 32 * 4 + 32
    assert adapter.num_trainable_parameters() == 4 * per_layer  # 2 layers x (query, value)


def test_b_is_stored_so_its_gradient_takes_the_fast_product() -> None:
    """lora_B has PEFT's (out, r) shape but (r, out) storage, so B.T is contiguous in forward and
    its gradient is h^T @ grad (fast) rather than grad^T @ h; the layout must survive what
    models go through (dtype change, copy) and the gradient and optimiser state must follow it."""
    torch.manual_seed(0)
    model = OneLayer("linear")
    layer = attach(model, "dora", r=4, target_modules=["proj"]).layers["proj"]
    assert layer.lora_B.shape == (OUT, 4)
    assert layer.lora_B.T.is_contiguous()
    model.double()
    copied = copy.deepcopy(model)
    assert layer.lora_B.T.is_contiguous() and copied.proj.lora_B.T.is_contiguous()
    randomise(layer)
    model(x_batch()).sum().backward()
    assert layer.lora_B.grad.stride() == layer.lora_B.stride()
    optimizer = torch.optim.AdamW([layer.lora_B], lr=1e-3)
    optimizer.step()
    assert optimizer.state[layer.lora_B]["exp_avg"].stride() == layer.lora_B.stride()
