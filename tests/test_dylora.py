"""DyLoRA against the paper (Valipour et al., 2023) and the authors' code.

The general variant contract (merge, save/load, detach, gradients only on declared parameters) is
checked in test_contract.py; this file checks what is DyLoRA's own.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from scipy.stats import chisquare
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorabench.variants import ConfigError, attach, get_variant, list_variants, load_adapter
from lorabench.variants.dylora import DyLoRA, DyLoRAConfig, DyLoRALayer

R_MAX = 4
IN, OUT = 10, 6


class Tiny(nn.Module):
    """One adaptable layer called ``proj`` (nn.Linear, or GPT-2's Conv1D storing (in, out))."""

    def __init__(self, kind: str = "linear") -> None:
        super().__init__()
        self.proj = nn.Linear(IN, OUT) if kind == "linear" else Conv1D(OUT, IN)
        if kind == "conv1d":
            nn.init.normal_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def make(kind: str = "linear", **cfg):
    torch.manual_seed(0)
    model = Tiny(kind).double().eval()
    adapter = attach(model, "dylora", {"r": R_MAX, "alpha": 8.0, "target_modules": ["proj"], **cfg})
    layer = adapter.layers["proj"]
    with torch.no_grad():  # B starts at zero; give it values so every rank contributes
        layer.lora_B.normal_()
    return model, adapter, layer


def w_out_in(layer: DyLoRALayer) -> torch.Tensor:
    return layer.base_weight().detach()


def x_batch(n: int = 5) -> torch.Tensor:
    return torch.randn(n, IN, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def test_registered_and_found_by_wildcard() -> None:
    assert get_variant("dylora") is DyLoRA
    assert "dylora" in list_variants("*lora*")


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("b", range(1, R_MAX + 1))
def test_rank_b_equals_a_lora_of_rank_b_from_the_first_factors(kind: str, b: int) -> None:
    model, adapter, layer = make(kind)
    x = x_batch()
    adapter.set_eval_rank(b)
    got = model(x)

    # The same base layer adapted by plain LoRA of rank b, scale alpha / b, holding A[:b], B[:, :b].
    torch.manual_seed(0)
    lora_model = Tiny(kind).double().eval()
    lora = attach(lora_model, "lora", {"r": b, "alpha": 8.0, "target_modules": ["proj"]})
    with torch.no_grad():
        lora.layers["proj"].lora_A.copy_(layer.lora_A[:b])
        lora.layers["proj"].lora_B.copy_(layer.lora_B[:, :b])
    assert lora.layers["proj"].scaling == 8.0 / b
    torch.testing.assert_close(got, lora_model(x), rtol=1e-12, atol=1e-12)

    # The training path at sampled rank b computes the same function (detaching changes grads only).
    model.train()
    adapter.variant.train_rank = b
    torch.testing.assert_close(model(x), got, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("b", range(1, R_MAX + 1))
def test_scale_is_alpha_over_b_as_in_the_authors_code(b: int) -> None:
    _, adapter, layer = make()
    adapter.set_eval_rank(b)
    a, bm = layer.lora_A.detach(), layer.lora_B.detach()
    ours = layer.delta_weight().detach()
    torch.testing.assert_close(ours, (8.0 / b) * bm[:, :b] @ a[:b])
    # Authors' code: LoRA's alpha / r_max, both truncated factors times sqrt(r_max / b).
    k = math.sqrt(R_MAX / b)
    authors = (8.0 / R_MAX) * (bm[:, :b] * k) @ (a[:b] * k)
    torch.testing.assert_close(ours, authors, rtol=1e-12, atol=1e-12)
    # Doubling alpha doubles the update.
    _, adapter2, layer2 = make(alpha=16.0)
    adapter2.set_eval_rank(b)
    with torch.no_grad():
        layer2.lora_A.copy_(a)
        layer2.lora_B.copy_(bm)
    torch.testing.assert_close(layer2.delta_weight().detach(), 2 * ours)


def _grads_at_rank(b: int, *, frozen: bool) -> tuple[torch.Tensor, torch.Tensor]:
    model, adapter, layer = make(frozen=frozen)
    model.train()
    adapter.variant.train_rank = b
    model(x_batch()).pow(2).sum().backward()
    return layer.lora_A.grad, layer.lora_B.grad


@pytest.mark.parametrize("b", range(1, R_MAX + 1))
def test_frozen_mode_trains_only_the_bth_row_and_column(b: int) -> None:
    grad_a, grad_b = _grads_at_rank(b, frozen=True)
    row_nonzero = grad_a.abs().sum(dim=1) > 0  # per row of A (r_max, in)
    col_nonzero = grad_b.abs().sum(dim=0) > 0  # per column of B (out, r_max)
    expected = torch.zeros(R_MAX, dtype=torch.bool)
    expected[b - 1] = True
    assert row_nonzero.tolist() == expected.tolist()
    assert col_nonzero.tolist() == expected.tolist()


@pytest.mark.parametrize("b", range(1, R_MAX + 1))
def test_non_frozen_mode_trains_all_first_b(b: int) -> None:
    grad_a, grad_b = _grads_at_rank(b, frozen=False)
    expected = [i < b for i in range(R_MAX)]
    assert (grad_a.abs().sum(dim=1) > 0).tolist() == expected
    assert (grad_b.abs().sum(dim=0) > 0).tolist() == expected


def test_frozen_and_non_frozen_share_the_bth_gradient() -> None:
    # Detaching the lower rows must not change the gradient of the row that trains.
    fa, fb = _grads_at_rank(3, frozen=True)
    na, nb = _grads_at_rank(3, frozen=False)
    torch.testing.assert_close(fa[2], na[2])
    torch.testing.assert_close(fb[:, 2], nb[:, 2])


def test_one_adapter_gives_nested_outputs_at_every_rank() -> None:
    model, adapter, layer = make()
    x = x_batch()
    base = x @ w_out_in(layer).T + layer.base_layer.bias.detach()
    assert adapter.eval_ranks() == list(range(1, R_MAX + 1))
    deltas = {}
    with torch.no_grad():
        for b in adapter.eval_ranks():
            adapter.set_eval_rank(b)
            assert adapter.ranks() == {"proj": b}
            deltas[b] = model(x) - base
        a, bm = layer.lora_A, layer.lora_B
        # Unscaled rank-b update = unscaled rank-(b-1) update + the b-th rank-one component.
        previous = torch.zeros_like(base)
        for b in range(1, R_MAX + 1):
            unscaled = deltas[b] * b / 8.0
            component = (x @ a[b - 1]).unsqueeze(1) * bm[:, b - 1]
            torch.testing.assert_close(unscaled, previous + component, rtol=1e-10, atol=1e-12)
            previous = unscaled
    adapter.set_eval_rank(None)
    assert adapter.ranks() == {"proj": R_MAX}


def test_eval_mode_uses_the_eval_rank_not_the_sampled_one() -> None:
    model, adapter, _ = make()
    x = x_batch()
    full = model(x)
    adapter.variant.train_rank = 1  # as if before_step had drawn rank 1
    torch.testing.assert_close(model(x), full, rtol=0, atol=0)
    model.train()
    assert not torch.allclose(model(x), full)


def test_sampling_is_uniform_and_reproducible_from_the_seed() -> None:
    _, adapter, _ = make(seed=7)
    adapter.on_train_begin(4000)
    draws = []
    for step in range(4000):
        adapter.before_step(step)
        draws.append(adapter.variant.train_rank)
    counts = Counter(draws)
    assert set(counts) == set(range(1, R_MAX + 1))
    assert chisquare([counts[b] for b in range(1, R_MAX + 1)]).pvalue > 1e-3

    _, same_seed, _ = make(seed=7)
    same_seed.on_train_begin(50)
    again = []
    for step in range(50):
        same_seed.before_step(step)
        again.append(same_seed.variant.train_rank)
    assert again == draws[:50]
    # on_train_begin restarts the sequence.
    adapter.on_train_begin(50)
    adapter.before_step(0)
    assert adapter.variant.train_rank == draws[0]

    _, other_seed, _ = make(seed=8)
    other_seed.on_train_begin(50)
    other = []
    for step in range(50):
        other_seed.before_step(step)
        other.append(other_seed.variant.train_rank)
    assert other != draws[:50]


def test_r_min_bounds_the_sampled_ranks() -> None:
    _, adapter, _ = make(r_min=3)
    adapter.on_train_begin(200)
    seen = set()
    for step in range(200):
        adapter.before_step(step)
        seen.add(adapter.variant.train_rank)
    assert seen == {3, 4}
    assert adapter.eval_ranks() == [3, 4]


def test_before_step_changes_the_rank_and_the_training_forward() -> None:
    model, adapter, _ = make()
    model.train()
    x = x_batch()
    adapter.on_train_begin(20)
    ranks, outputs = [], {}
    for step in range(20):
        adapter.before_step(step)
        b = adapter.variant.train_rank
        ranks.append(b)
        outputs[b] = model(x).detach()
    assert len(set(ranks)) > 1, f"20 steps drew only {set(ranks)}"
    first, *rest = sorted(outputs)
    assert all(not torch.allclose(outputs[first], outputs[b]) for b in rest)
    assert adapter.ranks() == {"proj": R_MAX}  # reported rank is the evaluation rank


@pytest.mark.parametrize("bad", [0, R_MAX + 1, -1, 2.0, True, "2"])
def test_set_eval_rank_rejects_ranks_outside_1_to_r_max(bad) -> None:
    _, adapter, _ = make()
    with pytest.raises(ConfigError, match=rf"outside 1\.\.{R_MAX}"):
        adapter.set_eval_rank(bad)


def test_merge_uses_the_eval_rank_and_blocks_rank_changes() -> None:
    model, adapter, _ = make()
    x = x_batch()
    adapter.set_eval_rank(2)
    expected = model(x)
    adapter.merge()
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError, match="unmerge"):
        adapter.set_eval_rank(3)
    adapter.set_eval_rank(2)  # unchanged rank is fine while merged
    adapter.unmerge()
    adapter.set_eval_rank(3)


def test_saved_adapter_keeps_its_eval_rank(tmp_path) -> None:
    model, adapter, _ = make()
    x = x_batch()
    adapter.set_eval_rank(2)
    expected = model(x)
    adapter.save(tmp_path / "a")
    torch.manual_seed(0)
    fresh = Tiny().double().eval()
    loaded = load_adapter(fresh, tmp_path / "a")
    assert loaded.ranks() == {"proj": 2}
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)
    loaded.set_eval_rank(None)
    assert loaded.layers["proj"].lora_A.shape == (R_MAX, IN)  # stored at r_max: all ranks remain


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"r_min": 5}, "r_min=5 is larger than the maximum rank r=4"),
        ({"r_min": 0}, "r_min=0 must be >= 1"),
        ({"frozen": "yes"}, "frozen='yes' must be True or False"),
        ({"alpha": 0}, "alpha=0 must be a finite number > 0"),
        ({"seed": -1}, "seed=-1 must be >= 0"),
    ],
)
def test_config_errors_name_the_value(cfg: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DyLoRAConfig.from_dict({"r": 4, **cfg})


def test_defaults_follow_the_paper() -> None:
    cfg = DyLoRAConfig()
    assert cfg.frozen is True and cfg.r_min == 1
    assert cfg.nominal_rank == cfg.r


def test_search_space_declares_rank_alpha_and_learning_rate() -> None:
    space = DyLoRA.search_space()
    assert {"r", "alpha", "train.learning_rate"} <= set(space)
    for r in space["r"]["choices"]:
        DyLoRAConfig.from_dict({"r": r})
    lr = space["train.learning_rate"]
    assert lr["type"] == "float" and 0 < lr["low"] < lr["high"] and lr["log"]


def test_one_training_run_learns_a_nested_low_rank_target() -> None:
    """After one frozen-mode training run every rank approximates the target: rank 1 finds the
    strongest direction (near the Eckart-Young optimum) and the full rank does better still.

    Higher ranks stay short of the optimum: the alpha / b scale changes the weight of the lower,
    detached components with b, which the one trainable component can only partly correct. That
    is the method's behaviour, not a defect: the test asserts what DyLoRA promises, no more."""
    torch.manual_seed(0)
    d = 8
    u, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    sigma = torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    target = (u[:, :4] * sigma) @ v[:, :4].T  # the update to learn, rank 4

    model = Tiny().double()
    model.proj = nn.Linear(d, d, bias=False).double()
    base_w = model.proj.weight.detach().clone()
    adapter = attach(model, "dylora", {"r": 4, "alpha": 4.0, "target_modules": ["proj"]})
    opt = torch.optim.Adam(adapter.trainable_parameters(), lr=2e-2)
    x = torch.randn(256, d, dtype=torch.float64)
    y = x @ (base_w + target).T
    model.train()
    steps = 1500
    adapter.on_train_begin(steps)
    for step in range(steps):
        adapter.before_step(step)
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        adapter.after_step(step)
        opt.zero_grad()

    model.eval()
    errors = []
    with torch.no_grad():
        for b in adapter.eval_ranks():
            adapter.set_eval_rank(b)
            errors.append((adapter.layers["proj"].delta_weight() - target).norm().item())
    best_rank1 = sigma[1:].norm().item()  # Eckart-Young: the best any rank-1 update can do
    assert errors[0] < 1.05 * best_rank1, (errors, best_rank1)
    assert errors[-1] < 0.75 * errors[0], errors
    assert max(errors) < 0.6 * target.norm().item(), errors  # every rank beats the base model
