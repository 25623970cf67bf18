"""SoRA against the paper and the authors' code (PEFT has no SoRA): the gated forward, the
proximal step, the L1 term, the threshold schedule, live ranks, pruned-size saving, and the
errors users see.

The generic contract (init equals base, merge/unmerge, detach, save/load) runs for SoRA in
test_contract.py once the variant is registered there; this file checks what is specific to
SoRA. ``import lorabench.variants.sora`` registers it.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import optuna
import pytest
import torch
from tiny_models import FAMILIES, build_model, logits, make_batch

import lorabench.variants.sora  # noqa: F401  (registers "sora")
from lorabench.search.space import build_search_space
from lorabench.variants import (
    AdapterShapeError,
    ConfigError,
    attach,
    get_variant,
    load_adapter,
    make_config,
)
from lorabench.variants.adapter import CONFIG_FILE, WEIGHTS_FILE, Adapter
from lorabench.variants.sora import SoRA, SoRAConfig, SoRALayer, soft_threshold

TARGETS = ["query", "value"]  # 2 BERT layers x 2 = 4 adapted matrices


def _attach(family: str = "bert", *, seed: int = 0, **cfg) -> tuple[torch.nn.Module, Adapter]:
    model = build_model(family)
    cfg.setdefault("target_modules", list(FAMILIES[family].target_modules))
    torch.manual_seed(seed)  # A and the gates are drawn from the global generator (as LoRA's A)
    return model, attach(model, "sora", **cfg)


@torch.no_grad()
def _randomise(adapter: Adapter, *, seed: int = 0, scale: float = 0.3) -> None:
    """Non-zero B (zeros at init), so that every factor and gate moves the output."""
    g = torch.Generator().manual_seed(seed)
    for layer in adapter.layers.values():
        for name in SoRALayer.trainable_names:
            p = getattr(layer, name)
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def _train(model, adapter: Adapter, steps: int, *, lr: float = 1e-2) -> None:
    """The harness' order: before_step, loss + regulariser, backward, clip, step, after_step."""
    params = adapter.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    adapter.on_train_begin(steps)
    for step in range(steps):
        adapter.before_step(step)
        loss = model(**make_batch(batch=4, seed=step)).loss
        reg = adapter.regularization_loss()
        (loss if reg is None else loss + reg).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        adapter.after_step(step, learning_rate=lr)
        optimizer.zero_grad()
    model.eval()


def _by_hand_soft_threshold(values: list[float], t: float) -> list[float]:
    """The paper's operator, one scalar at a time: x - t above t, x + t below -t, else 0."""
    out = []
    for x in values:
        if x > t:
            out.append(x - t)
        elif x < -t:
            out.append(x + t)
        else:
            out.append(0.0)
    return out


# -- registration, defaults, init -----------------------------------------------------------------
def test_registered_with_its_contract_attributes() -> None:
    cls = get_variant("sora")
    assert cls is SoRA and cls.name == "sora" and cls.display_name == "SoRA"
    assert cls.init_equals_base and cls.adaptive_rank and not cls.multi_rank_eval
    assert cls.report_order == 5 and cls.version == "1"
    assert cls.config_class is SoRAConfig and cls.layer_class is SoRALayer
    assert {f.name for f in dataclasses.fields(SoRAConfig)} >= {
        "r",
        "alpha",
        "dropout",
        "sparse_lambda",
        "sparse_lambda_2",
        "threshold_times_lr",
        "lambda_schedule",
        "max_lambda",
        "lambda_num",
    }


def test_defaults_follow_the_authors_glue_scripts() -> None:
    """run_glue_sora_no_schedule.sh: lora_r 8, sparse_lambda 10, sparse_lambda_2 3e-4; alpha 16
    from config/lora_config.json; the schedule script's max_lambda 7e-4 and lambda_num 7."""
    cfg = SoRAConfig()
    assert (cfg.r, cfg.alpha, cfg.dropout) == (8, 16.0, 0.0)
    assert (cfg.sparse_lambda, cfg.sparse_lambda_2) == (10.0, 3e-4)
    assert cfg.threshold_times_lr is False  # the authors' SparseAdamW: a constant threshold
    assert (cfg.lambda_schedule, cfg.max_lambda, cfg.lambda_num) == (None, 7e-4, 7)
    assert cfg.nominal_rank == 8


def test_init_is_the_authors_init() -> None:
    """A Kaiming-uniform, B zeros, gate standard normal of shape (r,): the model starts as the
    base model whatever the gates are."""
    _, adapter = _attach(r=8)
    for layer in adapter.layers.values():
        assert layer.gate.shape == (8,) and layer.lora_A.shape == (8, 32)
        assert torch.count_nonzero(layer.lora_B) == 0
        bound = 1 / math.sqrt(layer.in_features)  # kaiming_uniform_(a=sqrt(5))
        assert layer.lora_A.abs().max() <= bound
        assert torch.count_nonzero(layer.gate) == 8
        assert layer.scaling == 16.0 / 8
    gates = torch.cat([layer.gate.detach() for layer in adapter.layers.values()])
    assert 0.4 < gates.std() < 1.6  # standard normal, not ones (32 draws)
    assert adapter.ranks() == dict.fromkeys(adapter.layers, 8)


# -- the maths ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_forward_and_delta_weight_are_b_diag_g_a_scaled(family: str) -> None:
    _, adapter = _attach(family, r=4, alpha=8.0)
    _randomise(adapter)
    for layer in adapter.layers.values():
        x = torch.randn(3, 5, layer.in_features, dtype=torch.float64)
        a, b, g = layer.lora_A.detach(), layer.lora_B.detach(), layer.gate.detach()
        expected = layer.base_layer(x) + 2.0 * ((x @ a.T) * g) @ b.T  # s = 8 / 4
        torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            layer.delta_weight(), 2.0 * b @ torch.diag(g) @ a, rtol=1e-12, atol=1e-12
        )
        torch.testing.assert_close(
            layer(x), x @ layer.merged_weight().T + layer.base_layer(x) - x @ layer.base_weight().T
        )
    if family == "gpt2":  # Conv1D: weights stored (in, out), handled by the base class
        assert all(layer.fan_in_fan_out for layer in adapter.layers.values())


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_a_zero_gate_removes_its_rank_exactly(family: str) -> None:
    """Gate i = 0: row i of A and column i of B no longer matter, bit for bit, and the layer
    equals the rank r - 1 update without them."""
    model, adapter = _attach(family, r=4)
    _randomise(adapter)
    batch = make_batch(seed=3)
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer.gate[1] = 0.0
    before = logits(model, batch)
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer.lora_A[1].normal_(0.0, 10.0)
            layer.lora_B[:, 1].normal_(0.0, 10.0)
    assert torch.equal(logits(model, batch), before)
    keep = torch.tensor([True, False, True, True])
    for layer in adapter.layers.values():
        a, b, g = layer.lora_A[keep], layer.lora_B[:, keep], layer.gate[keep]
        expected = b @ (a * g.view(-1, 1)) * layer.scaling  # scale stays alpha / r_max
        torch.testing.assert_close(layer.delta_weight(), expected, rtol=1e-12, atol=1e-15)
    assert set(adapter.ranks().values()) == {3}


def test_proximal_step_equals_soft_thresholding_by_hand() -> None:
    """After the optimiser's step every gate becomes sign(g) * max(|g| - t, 0) with t =
    sparse_lambda_2: above t shrinks by t (also in (t, 2t), which the authors' masked assignments
    zero), within [-t, t] becomes 0, below -t grows by t."""
    t = 0.25
    _, adapter = _attach(r=8, sparse_lambda_2=t)
    values = [1.0, 0.3, 0.26, 0.25, 0.1, 0.0, -0.2, -0.45]
    hand = _by_hand_soft_threshold(values, t)
    with torch.no_grad():
        for i, layer in enumerate(adapter.layers.values()):
            layer.gate.copy_(torch.tensor(values, dtype=torch.float64) * (i + 1))
    hands = [_by_hand_soft_threshold([v * (i + 1) for v in values], t) for i in range(4)]
    adapter.on_train_begin(3)
    adapter.after_step(0, learning_rate=1e-3)  # the constant threshold ignores the rate
    assert adapter.variant.threshold == t
    for layer, expected in zip(adapter.layers.values(), hands, strict=True):
        torch.testing.assert_close(
            layer.gate.detach(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15
        )
    assert [round(v, 12) for v in hand] == [0.75, 0.05, 0.01, 0.0, 0.0, 0.0, 0.0, -0.2]
    assert next(iter(adapter.ranks().values())) == 4  # 1.0, 0.3, 0.26, -0.45
    torch.testing.assert_close(
        soft_threshold(torch.tensor(values), t), torch.tensor(hand), rtol=0, atol=1e-7
    )


def test_threshold_times_lr_uses_the_rate_of_the_step() -> None:
    """The paper's update: t = sparse_lambda_2 * lr, lr the rate that step used."""
    _, adapter = _attach(r=8, sparse_lambda_2=0.5, threshold_times_lr=True)
    values = [1.0, 0.3, 0.2, -0.1, -0.21, 0.0, 0.05, -2.0]
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer.gate.copy_(torch.tensor(values, dtype=torch.float64))
    adapter.on_train_begin(3)
    adapter.after_step(0, learning_rate=0.4)  # t = 0.2
    assert adapter.variant.threshold == pytest.approx(0.2)
    expected = torch.tensor(_by_hand_soft_threshold(values, 0.5 * 0.4), dtype=torch.float64)
    for layer in adapter.layers.values():
        torch.testing.assert_close(layer.gate.detach(), expected, rtol=0, atol=1e-15)


def test_without_a_learning_rate_the_lr_scaled_step_is_skipped_with_a_warning() -> None:
    _, adapter = _attach(r=4, sparse_lambda_2=0.5, threshold_times_lr=True)
    before = [layer.gate.detach().clone() for layer in adapter.layers.values()]
    adapter.on_train_begin(3)
    with pytest.warns(UserWarning, match="no proximal step is taken"):
        adapter.after_step(0)
    adapter.after_step(1)  # warned once
    assert adapter.variant.threshold is None
    for layer, old in zip(adapter.layers.values(), before, strict=True):
        assert torch.equal(layer.gate.detach(), old)
    # The constant threshold (the authors' code) needs no learning rate: it applies.
    _, constant = _attach(r=4, sparse_lambda_2=0.5)
    constant.on_train_begin(3)
    gate = next(iter(constant.layers.values())).gate
    expected = soft_threshold(gate.detach().clone(), 0.5)
    constant.after_step(0)
    assert torch.equal(gate.detach(), expected)


def test_zero_threshold_leaves_the_gates_alone() -> None:
    _, adapter = _attach(r=4, sparse_lambda_2=0.0)
    before = [layer.gate.detach().clone() for layer in adapter.layers.values()]
    adapter.on_train_begin(2)
    adapter.after_step(0, learning_rate=1e-2)
    assert all(
        torch.equal(layer.gate.detach(), old)
        for layer, old in zip(adapter.layers.values(), before, strict=True)
    )


def test_in_a_training_loop_each_step_is_adam_then_the_threshold() -> None:
    """The harness' order: the gate after after_step is the soft-threshold of the gate the
    optimiser's step left, at every step."""
    model, adapter = _attach(r=4, sparse_lambda_2=0.05)
    params = adapter.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    adapter.on_train_begin(4)
    model.train()
    for step in range(4):
        adapter.before_step(step)
        loss = model(**make_batch(seed=step)).loss + adapter.regularization_loss()
        loss.backward()
        optimizer.step()
        stepped = [layer.gate.detach().clone() for layer in adapter.layers.values()]
        adapter.after_step(step, learning_rate=1e-2)
        for layer, g in zip(adapter.layers.values(), stepped, strict=True):
            torch.testing.assert_close(layer.gate.detach(), soft_threshold(g, 0.05), rtol=0, atol=0)
        optimizer.zero_grad()


def test_l1_term_is_sparse_lambda_times_the_mean_absolute_gate() -> None:
    """The authors' compute_loss: sparse_lambda * sum |g| / (number of gates), over all layers;
    its gradient is sparse_lambda * sign(g) / n."""
    _, adapter = _attach(r=4, sparse_lambda=10.0)
    gates = [layer.gate for layer in adapter.layers.values()]
    n = sum(g.numel() for g in gates)
    reg = adapter.regularization_loss()
    expected = 10.0 * sum(float(v) for g in gates for v in g.detach().abs()) / n
    assert reg is not None and float(reg.detach()) == pytest.approx(expected, rel=1e-12)
    reg.backward()
    for g in gates:
        torch.testing.assert_close(g.grad, 10.0 * torch.sign(g.detach()) / n)
    assert attach(build_model("bert"), "sora", r=4, sparse_lambda=0).regularization_loss() is None


# -- live ranks and pruning -----------------------------------------------------------------------
def test_ranks_count_the_nonzero_gates() -> None:
    _, adapter = _attach(r=6)
    names = list(adapter.layers)
    with torch.no_grad():
        for k, layer in enumerate(adapter.layers.values()):
            layer.gate[:k] = 0.0  # layer k keeps 6 - k live ranks
    assert adapter.ranks() == {name: 6 - k for k, name in enumerate(names)}
    assert all(isinstance(r, int) for r in adapter.ranks().values())
    assert adapter.variant.rank_pattern()[names[2]] == [False, False, True, True, True, True]
    assert adapter.eval_ranks() == [6]  # one trained adapter, one rank set


def test_training_prunes_gates_and_ranks_follow() -> None:
    model, adapter = _attach(r=8, sparse_lambda_2=0.1, seed=1)
    _train(model, adapter, 10)
    ranks = adapter.ranks()
    live = sum(ranks.values())
    assert 0 < live < 8 * len(ranks)  # some gates died, not all
    for name, layer in adapter.layers.items():
        assert ranks[name] == int((layer.gate != 0).sum())


def test_pruned_adapter_saves_only_live_ranks_and_reloads_identically(tmp_path) -> None:
    """Pruning after training: the saved file holds the live ranks and their pattern; loaded into
    a fresh model it gives the same outputs, ranks and pattern; merge and unmerge stay exact."""
    model, adapter = _attach(r=8, sparse_lambda_2=0.1, seed=1)
    full_bytes = adapter.size_bytes()
    _train(model, adapter, 10)
    batch = make_batch(seed=7)
    expected = logits(model, batch)
    saved = adapter.save(tmp_path / "adapter")

    live = sum(adapter.ranks().values())
    assert live < 8 * len(adapter.layers)
    per_rank_bytes = (32 + 32 + 1) * 8  # a row of A, a column of B and a gate, float64
    assert adapter.size_bytes() == live * per_rank_bytes < full_bytes
    meta = json.loads((saved / CONFIG_FILE).read_text())
    assert meta["extra"]["rank_pattern"] == adapter.variant.rank_pattern()
    assert (saved / WEIGHTS_FILE).stat().st_size < full_bytes

    fresh = build_model("bert")
    loaded = load_adapter(fresh, saved)
    torch.testing.assert_close(logits(fresh, batch), expected, rtol=0, atol=0)
    assert loaded.ranks() == adapter.ranks()
    assert loaded.variant.rank_pattern() == adapter.variant.rank_pattern()
    for name, layer in loaded.layers.items():
        dead = ~layer.live_mask()
        assert torch.count_nonzero(layer.lora_A[dead]) == 0
        assert torch.count_nonzero(layer.lora_B[:, dead]) == 0
        torch.testing.assert_close(layer.delta_weight(), adapter.layers[name].delta_weight())

    weights = {k: v.clone() for k, v in fresh.state_dict().items()}
    loaded.merge()
    torch.testing.assert_close(logits(fresh, batch), expected, rtol=0, atol=1e-12)
    loaded.unmerge()
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in weights.items())


def test_a_layer_with_every_gate_dead_saves_nothing_but_its_pattern(tmp_path) -> None:
    model, adapter = _attach(r=4)
    _randomise(adapter)
    with torch.no_grad():
        first = next(iter(adapter.layers.values()))
        first.gate.zero_()
    expected = logits(model, make_batch())
    adapter.save(tmp_path / "a")
    loaded = load_adapter(build_model("bert"), tmp_path / "a")
    assert list(loaded.ranks().values()) == [0, 4, 4, 4]
    torch.testing.assert_close(logits(loaded.model, make_batch()), expected, rtol=0, atol=0)


def test_loading_with_a_pattern_that_does_not_fit_the_tensors_fails(tmp_path) -> None:
    _, adapter = _attach(r=4)
    _randomise(adapter)
    with torch.no_grad():
        next(iter(adapter.layers.values())).gate[0] = 0.0
    adapter.save(tmp_path / "a")
    meta_path = tmp_path / "a" / CONFIG_FILE
    meta = json.loads(meta_path.read_text())
    first = next(iter(meta["extra"]["rank_pattern"]))
    meta["extra"]["rank_pattern"][first] = [True] * 4  # claims 4 live ranks, 3 were saved
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(AdapterShapeError, match=r"does not fit this layer's saved pattern"):
        load_adapter(build_model("bert"), tmp_path / "a")
    meta["extra"]["rank_pattern"][first] = [True] * 5
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(AdapterShapeError, match="has 5 entries but the maximum rank r is 4"):
        load_adapter(build_model("bert"), tmp_path / "a")


# -- the threshold schedule -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("schedule", "start", "end", "numpy_values"),
    [  # the authors' SparseAdamW._build_lambda_list, in numpy
        ("linear", 0.0, 7e-4, lambda a, b, n: np.linspace(a, b, n)),
        ("log_linear", 1e-4, 7e-4, lambda a, b, n: np.log(np.linspace(np.exp(a), np.exp(b), n))),
        ("exp_linear", 1e-4, 7e-4, lambda a, b, n: np.exp(np.linspace(np.log(a), np.log(b), n))),
    ],
)
def test_schedule_values_are_the_authors(schedule, start, end, numpy_values) -> None:
    cfg = make_config(
        "sora", lambda_schedule=schedule, sparse_lambda_2=start, max_lambda=end, lambda_num=7
    )
    np.testing.assert_allclose(cfg.threshold_values(), numpy_values(start, end, 7), rtol=1e-12)
    # log_linear goes through exp and log, which round: the ends are exact to 1e-9 only.
    assert cfg.threshold_values()[0] == pytest.approx(start, rel=1e-9, abs=1e-18)
    assert cfg.threshold_values()[-1] == pytest.approx(end, rel=1e-9)


def test_schedule_holds_each_value_for_an_equal_share_of_the_steps() -> None:
    _, adapter = _attach(r=4, lambda_schedule="linear", sparse_lambda_2=0.0, max_lambda=0.2,
                         lambda_num=3)  # fmt: skip
    variant = adapter.variant
    adapter.on_train_begin(9)
    assert [variant.threshold_lambda(s) for s in range(9)] == pytest.approx(
        [0.0] * 3 + [0.1] * 3 + [0.2] * 3
    )
    adapter.on_train_begin(10)  # 4 + 3 + 3 steps
    assert [variant.threshold_lambda(s) for s in range(10)] == pytest.approx(
        [0.0] * 4 + [0.1] * 3 + [0.2] * 3
    )
    # after_step thresholds by the value of the step's stage.
    gate = next(iter(adapter.layers.values())).gate
    with torch.no_grad():
        gate.copy_(torch.tensor([1.0, 0.5, -0.5, 0.05], dtype=torch.float64))
    adapter.after_step(0, learning_rate=1e-2)  # stage 0: t = 0, nothing moves
    assert gate.tolist() == [1.0, 0.5, -0.5, 0.05]
    adapter.after_step(5, learning_rate=1e-2)  # stage 1: t = 0.1
    assert variant.threshold == pytest.approx(0.1)
    torch.testing.assert_close(
        gate.detach(), torch.tensor([0.9, 0.4, -0.4, 0.0], dtype=torch.float64)
    )


def test_schedule_needs_the_total_steps_and_at_least_one_step_per_value() -> None:
    _, adapter = _attach(r=4, lambda_schedule="linear", lambda_num=7)
    with pytest.raises(ConfigError, match=r"needs the total number of optimiser steps"):
        adapter.after_step(0, learning_rate=1e-3)
    with pytest.raises(ConfigError, match=r"lambda_num=7 is more than the 5 optimiser steps"):
        adapter.on_train_begin(5)
    adapter.on_train_begin(7)  # one step per value is enough


def test_schedule_checks_run_on_the_meta_device() -> None:
    """The suite's pre-run checks attach on the meta device and call on_train_begin."""
    with torch.device("meta"):
        model = build_model("bert")
    adapter = attach(model, "sora", r=4, target_modules=TARGETS, lambda_schedule="linear")
    adapter.on_train_begin(100)
    assert adapter.ranks() == dict.fromkeys(adapter.layers, 4)
    with pytest.raises(ConfigError, match="lambda_num=7"):
        adapter.on_train_begin(3)


# -- config, reports and search space -------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"r": 0}, "r=0 must be >= 1"),
        ({"alpha": 0}, "alpha=0 must be a finite number > 0"),
        ({"sparse_lambda": -1.0}, r"sparse_lambda=-1.0 must be a finite number >= 0"),
        ({"sparse_lambda": "10"}, r"sparse_lambda='10' must be a finite number >= 0"),
        ({"sparse_lambda_2": math.inf}, r"sparse_lambda_2=inf must be a finite number >= 0"),
        ({"sparse_lambda_2": True}, r"sparse_lambda_2=True must be a finite number"),
        ({"threshold_times_lr": "yes"}, r"threshold_times_lr='yes' must be True or False"),
        ({"lambda_schedule": "cosine"}, r"lambda_schedule='cosine' is not a schedule"),
        ({"max_lambda": -1e-4}, r"max_lambda=-0.0001 must be a finite number >= 0"),
        ({"lambda_num": 0}, "lambda_num=0 must be >= 1"),
        (
            {"lambda_schedule": "exp_linear", "sparse_lambda_2": 0.0},
            r"exp_linear.*sparse_lambda_2=0.0",
        ),
        ({"dropout": 1.0}, r"dropout=1.0 must be in \[0, 1\)"),
    ],
)
def test_bad_config_values_are_named(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config("sora", **fields)


def test_rank_too_large_for_a_layer_names_the_limit() -> None:
    with pytest.raises(ConfigError, match=r"r=64 is larger than layer .* at most 32"):
        attach(build_model("bert"), "sora", r=64, target_modules=TARGETS)


def test_reports_label_the_maximum_and_the_final_mean_rank() -> None:
    assert SoRA.report_label({"r": 8}) == "SoRA r=8"
    assert SoRA.rank_label({"r": 8}, {"a": 8, "b": 8}) == "r=8"  # nothing pruned
    assert SoRA.rank_label({"r": 8}, {"a": 3, "b": 4}) == "r=8 (mean 3.5)"
    assert SoRA.rank_label({}) == ""
    assert SoRA.label_fields == {"r"}


def test_search_space_samples_valid_configs() -> None:
    fields = {f.name for f in dataclasses.fields(SoRAConfig)}
    space = build_search_space("sora", SoRA.search_space(), config_fields=fields)
    assert set(space.names) == {
        "r",
        "alpha",
        "sparse_lambda",
        "sparse_lambda_2",
        "dropout",
        "train.learning_rate",
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        values = space.suggest(trial)
        make_config("sora", **{k: v for k, v in values.items() if not k.startswith("train.")})
        study.tell(trial, 0.0)
