"""IncreLoRA against the paper and the authors' code (FeiyuZhang98/IncreLoRA; PEFT has none):
the growth schedule and its choice of modules, new ranks that start at zero contribution, the
target reached, the authors' importance score, saving at the final ranks, and the errors users
see.

The generic contract (init equals base, merge/unmerge, detach, save/load) runs for IncreLoRA in
test_contract.py once it is registered there; this file checks what is specific to IncreLoRA.
"""

from __future__ import annotations

import dataclasses
import math

import optuna
import pytest
import torch
from safetensors.torch import load_file
from tiny_models import FAMILIES, build_model, logits, make_batch

import lorabench.variants.increlora  # noqa: F401  (registers "increlora")
from lorabench.search.space import build_search_space
from lorabench.testing.contract import perturb
from lorabench.variants import ConfigError, attach, load_adapter, make_config
from lorabench.variants.adapter import WEIGHTS_FILE, Adapter
from lorabench.variants.increlora import IncreLoRA, IncreLoRAConfig, growth_steps

# 2 BERT layers x (query, value) = 4 adapted matrices; a schedule that fits a few steps.
SMALL = {"r": 4, "init_r": 1, "target_rank": 2, "top_h": 2, "init_warmup": 0, "incre_interval": 1}


def _attach(family: str = "bert", **cfg) -> tuple[torch.nn.Module, Adapter]:
    model = build_model(family)
    cfg = {**SMALL, **cfg}
    cfg.setdefault("target_modules", list(FAMILIES[family].target_modules))
    return model, attach(model, "increlora", **cfg)


def _train(model, adapter: Adapter, steps: int, *, lr: float = 1e-2, on_step=None) -> None:
    """The runner's loop: before_step, forward, loss + regulariser, backward, step, after_step."""
    params = adapter.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    adapter.on_train_begin(steps)
    for step in range(steps):
        adapter.before_step(step)
        loss = model(**make_batch(seed=step)).loss
        reg = adapter.regularization_loss()
        (loss if reg is None else loss + reg).backward()
        optimizer.step()
        adapter.after_step(step, learning_rate=lr)
        if on_step is not None:
            on_step(step)
        optimizer.zero_grad()
    model.eval()


# -- growth: which modules, how many ranks, when ---------------------------------------------------
def test_a_round_adds_rank_to_the_highest_importance_modules() -> None:
    _, adapter = _attach()
    variant: IncreLoRA = adapter.variant  # type: ignore[assignment]
    names = list(adapter.layers)
    scores = {names[0]: 0.1, names[1]: 0.9, names[2]: 0.05, names[3]: 0.5}  # set by hand
    added = variant.grow(scores)
    assert added == {names[1]: 1, names[3]: 1}  # top_h = 2, incre_rank_num 2 // 2 = 1
    assert adapter.ranks() == {names[0]: 1, names[1]: 2, names[2]: 1, names[3]: 2}
    # The next round: the other two now score highest.
    added = variant.grow({names[0]: 3.0, names[1]: 0.0, names[2]: 2.0, names[3]: 1.0})
    assert added == {names[0]: 1, names[2]: 1}
    assert set(adapter.ranks().values()) == {2}
    assert variant.grow(scores) == {}  # the target is reached: no more growth
    assert not variant.tracking


def test_ties_go_to_the_earlier_module_and_the_last_round_adds_only_what_is_missing() -> None:
    _, adapter = _attach(target_rank=2, top_h=3)  # 4 ranks missing: rounds of 3, then 1
    variant: IncreLoRA = adapter.variant  # type: ignore[assignment]
    names = list(adapter.layers)
    assert variant.grow(dict.fromkeys(names, 1.0)) == {n: 1 for n in names[:3]}
    assert variant.grow(dict.fromkeys(names, 1.0)) == {names[0]: 1}  # a tie again: the first
    assert variant.total_rank == variant.target_total_rank == 8


def test_incre_rank_num_ranks_per_module_and_a_module_at_the_cap_is_passed_over() -> None:
    # 4 matrices, 1 -> 3 on average: 8 ranks missing; 2 per module, 1 module per round.
    _, adapter = _attach(r=4, target_rank=3, top_h=1, incre_rank_num=2)
    variant: IncreLoRA = adapter.variant  # type: ignore[assignment]
    names = list(adapter.layers)
    favourite = {names[0]: 5.0, names[1]: 1.0, names[2]: 0.5, names[3]: 0.1}
    assert variant.grow(favourite) == {names[0]: 2}  # 1 -> 3
    assert variant.grow(favourite) == {names[0]: 1, names[1]: 1}  # cap 4: 1 left, next takes 1
    assert adapter.ranks()[names[0]] == 4
    assert variant.grow(favourite) == {names[1]: 2}
    assert variant.grow(favourite) == {names[2]: 2}
    assert variant.total_rank == 12 == variant.target_total_rank


def test_default_ranks_per_module_follow_the_authors_table() -> None:
    # RankAllocator: rank_dic = {2: 1, 4: 2, 6: 3, 8: 4} when incre_rank_num is not given.
    for target, per_module in {2: 1, 4: 2, 6: 3, 8: 4}.items():
        cfg = make_config("increlora", target_rank=target, r=16)
        assert cfg.ranks_per_module == per_module
    assert make_config("increlora", target_rank=8, incre_rank_num=1).ranks_per_module == 1


def test_rounds_happen_after_the_authors_global_steps() -> None:
    # Their test: global_step > init_warmup and global_step % incre_interval == 0, global_step
    # being the 0-based index of the step whose gradients were just computed.
    cfg = make_config("increlora", init_warmup=500, incre_interval=500, top_h=12)
    assert growth_steps(cfg, 24) == [1000, 1500]
    cfg = make_config("increlora", init_warmup=0, incre_interval=1, top_h=2)
    assert growth_steps(cfg, 4) == [1, 2]
    assert growth_steps(cfg, 0) == []

    grown: dict[int, dict[str, int]] = {}
    model, adapter = _attach(init_warmup=2, incre_interval=2, top_h=1)
    variant: IncreLoRA = adapter.variant  # type: ignore[assignment]
    names = list(adapter.layers)
    variant.importance = lambda: {n: float(i) for i, n in enumerate(names)}  # type: ignore[method-assign]
    before = dict(adapter.ranks())

    def record(step: int) -> None:
        nonlocal before
        now = adapter.ranks()
        diff = {n: now[n] - before[n] for n in now if now[n] != before[n]}
        if diff:
            grown[step] = diff
        before = dict(now)

    _train(model, adapter, 12, on_step=record)
    # 4 ranks missing, 1 per round, after steps 4, 6, 8, 10; the highest score is the last name,
    # until it reaches the cap r = 4, then the next one's.
    assert grown == {
        4: {names[3]: 1},
        6: {names[3]: 1},
        8: {names[3]: 1},
        10: {names[2]: 1},
    }


# -- what a growth does to the model ---------------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_new_ranks_start_with_zero_contribution(family: str) -> None:
    model, adapter = _attach(family, top_h=4)
    perturb(adapter)  # active and inactive ranks all moved away from their init
    variant: IncreLoRA = adapter.variant  # type: ignore[assignment]
    batch = make_batch()
    before = logits(model, batch).detach()
    deltas = {n: layer.delta_weight().detach() for n, layer in adapter.layers.items()}
    variant.grow(dict.fromkeys(adapter.layers, 1.0))
    torch.testing.assert_close(logits(model, batch), before, rtol=0, atol=1e-12)
    for name, layer in adapter.layers.items():
        assert layer.rank() == 2
        torch.testing.assert_close(layer.delta_weight(), deltas[name], rtol=1e-12, atol=1e-15)
        assert layer.lora_E[1].item() == 0.0  # the new singular value
        # fresh normal(0, 0.02) vectors, not the perturbed (or decayed) values left there
        assert layer.lora_A[1].abs().max() < 0.2 and layer.lora_A[1].abs().max() > 0


def test_the_output_does_not_jump_across_growth_steps_in_training() -> None:
    model, adapter = _attach()
    jumps: list[float] = []
    batch = make_batch(seed=99)
    state: dict[str, torch.Tensor] = {}
    variant: IncreLoRA = adapter.variant  # type: ignore[assignment]
    original_grow = variant.grow

    def grow_and_measure(scores):
        model.eval()
        with torch.no_grad():
            state["before"] = logits(model, batch)
        added = original_grow(scores)
        with torch.no_grad():
            jumps.append(float((logits(model, batch) - state["before"]).abs().max()))
        model.train()
        return added

    variant.grow = grow_and_measure  # type: ignore[method-assign]
    _train(model, adapter, 4)
    assert len(jumps) == 2  # 4 ranks missing, 2 per round, after steps 1 and 2
    assert max(jumps) < 1e-12


def test_inactive_ranks_contribute_nothing_and_get_no_gradient() -> None:
    model, adapter = _attach()
    perturb(adapter)  # inactive singular values are non-zero now; they must still not count
    batch = make_batch()
    out = logits(model, batch)
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer.lora_E[1:] = 0.0
            layer.lora_A[1:] = 0.0
            layer.lora_B[:, 1:] = 0.0
    torch.testing.assert_close(logits(model, batch), out, rtol=0, atol=0)
    perturb(adapter, seed=3)
    model.train()
    loss = model(**make_batch()).loss + adapter.regularization_loss()
    loss.backward()
    for layer in adapter.layers.values():
        assert layer.lora_E.grad[1:].abs().max() == 0
        assert layer.lora_A.grad[1:].abs().max() == 0
        assert layer.lora_B.grad[:, 1:].abs().max() == 0
        assert layer.lora_A.grad[0].abs().max() > 0


def test_merge_and_unmerge_after_growth() -> None:
    model, adapter = _attach()
    _train(model, adapter, 4)
    batch = make_batch()
    out = logits(model, batch)
    weights = {n: layer.base_layer.weight.detach().clone() for n, layer in adapter.layers.items()}
    adapter.merge()
    torch.testing.assert_close(logits(model, batch), out, rtol=1e-7, atol=1e-9)
    adapter.unmerge()
    for name, layer in adapter.layers.items():
        assert torch.equal(layer.base_layer.weight, weights[name])


# -- the target, ranks(), saving -------------------------------------------------------------------
@pytest.mark.parametrize(("target_rank", "top_h", "steps"), [(2, 2, 4), (3, 3, 5), (4, 1, 14)])
def test_the_average_rank_reaches_target_rank_at_the_end_of_the_schedule(
    target_rank: int, top_h: int, steps: int
) -> None:
    model, adapter = _attach(r=4, target_rank=target_rank, top_h=top_h, incre_rank_num=1)
    totals: list[int] = []
    _train(model, adapter, steps, on_step=lambda s: totals.append(sum(adapter.ranks().values())))
    ranks = adapter.ranks()
    assert sum(ranks.values()) / len(ranks) == target_rank
    # every round added min(top_h, missing) ranks, and the live ranks are what ranks() says
    steps_grown = [b - a for a, b in zip([4, *totals], totals, strict=False) if b != a]
    missing = 4 * (target_rank - 1)
    assert steps_grown == [min(top_h, missing - top_h * k) for k in range(len(steps_grown))]
    for name, layer in adapter.layers.items():
        assert ranks[name] == int(layer.rank_mask.sum())
        assert torch.equal(layer.rank_mask[: ranks[name]], torch.ones(ranks[name], dtype=bool))


def test_ranks_reports_the_live_ranks() -> None:
    _, adapter = _attach()
    names = list(adapter.layers)
    assert adapter.ranks() == dict.fromkeys(names, 1)
    adapter.variant.grow({names[2]: 1.0, names[0]: 0.5})
    assert adapter.ranks() == {names[0]: 2, names[1]: 1, names[2]: 2, names[3]: 1}


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_save_and_load_at_the_final_ranks_gives_identical_outputs(family: str, tmp_path) -> None:
    model, adapter = _attach(family)
    _train(model, adapter, 4)
    perturb(adapter, scale=0.05)  # inactive values differ from a fresh model's: not saved
    batch = make_batch()
    expected = logits(model, batch)
    adapter.save(tmp_path / "a")
    tensors = load_file(str(tmp_path / "a" / WEIGHTS_FILE))
    for name, rank in adapter.ranks().items():
        layer = adapter.layers[name]
        assert tensors[f"{name}.lora_A"].shape == (rank, layer.in_features)
        assert tensors[f"{name}.lora_B"].shape == (layer.out_features, rank)
        assert tensors[f"{name}.lora_E"].shape == (rank, 1)
    fresh = build_model(family)
    loaded = load_adapter(fresh, tmp_path / "a")
    assert loaded.ranks() == adapter.ranks()
    torch.testing.assert_close(logits(fresh, batch), expected, rtol=0, atol=1e-12)
    assert not loaded.variant.tracking  # the target was reached: nothing more to grow


# -- the authors' importance score and regulariser -------------------------------------------------
def test_sensitivity_is_the_authors_score_of_the_whole_update() -> None:
    """``sum |dW * dL/d(dW)| / sqrt(out * in)``; dL/d(dW) equals the gradient of the base
    weight (y = (W + dW) x), taken here by unfreezing it."""
    model, adapter = _attach()
    perturb(adapter)
    name, layer = next(iter(adapter.layers.items()))
    layer.base_layer.weight.requires_grad_(True)
    model.train()
    model(**make_batch()).loss.backward()
    grad_w = layer.base_layer.weight.grad
    delta = layer.delta_weight().detach()
    expected = (delta * grad_w).abs().sum() / math.sqrt(delta.numel())
    torch.testing.assert_close(layer._sensitivity.double(), expected, rtol=1e-5, atol=0)
    # after_step smooths it: I_bar = (1 - b1) s, U_bar = (1 - b2) |s - I_bar| from zero
    adapter.variant.after_step(0)
    s = expected.item()
    i_bar = 0.15 * s
    u_bar = 0.15 * abs(s - i_bar)
    assert adapter.variant.importance()[name] == pytest.approx(i_bar * u_bar, rel=1e-5)
    assert layer._sensitivity is None  # consumed
    layer._sensitivity = torch.tensor(1.0)  # from a backward pass outside a step (a probe)
    adapter.before_step(1)
    assert layer._sensitivity is None


def test_importance_ema_over_steps() -> None:
    _, adapter = _attach(beta1=0.5, beta2=0.8)
    variant: IncreLoRA = adapter.variant  # type: ignore[assignment]
    name, layer = next(iter(adapter.layers.items()))
    i_bar = u_bar = 0.0
    for s in (2.0, 4.0, 1.0):
        layer._sensitivity = torch.tensor(s)
        variant._update_importance()
        i_bar = 0.5 * i_bar + 0.5 * s
        u_bar = 0.8 * u_bar + 0.2 * abs(s - i_bar)
    assert variant.importance()[name] == pytest.approx(i_bar * u_bar)


def test_regulariser_covers_the_active_ranks_only() -> None:
    _, adapter = _attach(orth_reg_weight=0.3)
    perturb(adapter)
    names = list(adapter.layers)
    adapter.variant.grow({names[0]: 1.0, names[1]: 0.5})
    total = 0.0
    for layer in adapter.layers.values():
        k = layer.rank()
        q, p = layer.lora_A[:k], layer.lora_B[:, :k]
        eye = torch.eye(k, dtype=q.dtype)
        total += torch.linalg.matrix_norm(q @ q.T - eye) + torch.linalg.matrix_norm(p.T @ p - eye)
    expected = 0.3 * total / (2 * len(names))
    torch.testing.assert_close(adapter.regularization_loss(), expected)
    _, off = _attach(orth_reg_weight=0.0)
    assert off.regularization_loss() is None


# -- config, schedule check, reports, search -------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"init_r": 0}, "init_r"),
        ({"init_r": 3, "target_rank": 2}, "init_r"),
        ({"target_rank": 9, "r": 8}, "r"),
        ({"target_rank": "2"}, "target_rank"),
        ({"top_h": 0}, "top_h"),
        ({"incre_interval": 0}, "incre_interval"),
        ({"init_warmup": -1}, "init_warmup"),
        ({"incre_rank_num": 0}, "incre_rank_num"),
        ({"beta1": 1.0}, "beta1"),
        ({"beta2": 0}, "beta2"),
        ({"orth_reg_weight": -0.1}, "orth_reg_weight"),
        ({"alpha": 0}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_config_errors_name_the_field(override: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"\b{field}="):
        make_config("increlora", **override)


def test_a_cap_above_the_layer_size_is_refused_naming_r() -> None:
    with pytest.raises(ConfigError, match=r"r=40 \(the cap"):
        _attach(r=40)


def test_schedule_check_refuses_too_few_steps() -> None:
    _, adapter = _attach(init_warmup=500, incre_interval=500, top_h=2)
    with pytest.raises(ConfigError, match=r"init_warmup=500 and incre_interval=500") as info:
        adapter.on_train_begin(1000)  # 2 rounds: after steps 1001 and 1501
    assert "e.g. init_warmup=332, incre_interval=332" in str(info.value)
    adapter.on_train_begin(1502)  # the last round's ranks train one step: fits
    with pytest.raises(ConfigError, match="does not fit in 1501 steps"):
        adapter.on_train_begin(1501)  # the last round after the last step: its ranks never train
    _, small = _attach()
    small.on_train_begin(4)  # rounds after 0-based steps 1 and 2, then one more step
    with pytest.raises(ConfigError, match="top_h=2"):
        small.on_train_begin(3)


def test_schedule_check_runs_on_the_meta_device() -> None:
    with torch.device("meta"):
        model = build_model("bert")
    authors = {"init_warmup": 500, "incre_interval": 500, "top_h": 12}
    adapter = attach(model, "increlora", target_modules=["query", "value"], **authors)
    with pytest.raises(ConfigError, match="init_warmup=500"):
        adapter.on_train_begin(100)  # the authors' schedule in the default 100-step budget
    adapter.on_train_begin(1002)  # 4 ranks missing, top_h 12: one round after step 1001, trained


@pytest.mark.parametrize("total", [8, 20, 100, 1000, 16000])
def test_the_default_schedule_is_sized_to_any_run_longer_than_its_rounds(total: int) -> None:
    """Left None, the warm-up is a tenth of the steps and the rounds end by half of them."""
    with torch.device("meta"):
        model = build_model("bert")
    adapter = attach(model, "increlora", r=8, init_r=1, target_rank=4, top_h=1)
    missing = adapter.variant.target_total_rank - adapter.variant.total_rank  # 4 x 3 = 12
    adapter.on_train_begin(total)  # no ConfigError: it fits
    steps = growth_steps(adapter.config, missing, total)
    assert len(steps) == math.ceil(missing / adapter.config.ranks_per_round(4))
    assert adapter.variant.warmup_steps == total // 10
    if total >= 100:
        assert steps[0] > total // 10 and steps[-1] <= total // 2
    assert steps[-1] < total - 1  # the last round's ranks train at least one step


def test_defaults_are_the_authors_qnli_script() -> None:
    cfg = IncreLoRAConfig()
    assert (cfg.init_r, cfg.target_rank) == (1, 2)
    # top_h: the authors' proportion, 12 of their 72 matrices; 12 when the count is unknown.
    assert cfg.top_h is None and cfg.modules_per_round(72) == 12 == cfg.modules_per_round()
    assert cfg.modules_per_round(12) == 2 and cfg.modules_per_round(4) == 1
    # The schedule is sized to the run (None); the authors' 500/500 in a run of unknown length.
    assert (cfg.init_warmup, cfg.incre_interval) == (None, None)
    assert cfg.schedule(None, 4) == (500, 500)
    assert (cfg.beta1, cfg.beta2, cfg.orth_reg_weight, cfg.alpha) == (0.85, 0.85, 0.1, 32.0)
    assert cfg.dropout == 0.0
    assert cfg.nominal_rank == 2
    assert cfg.r == 8


def test_report_facts_and_rank_label() -> None:
    assert IncreLoRA.display_name == "IncreLoRA"
    assert IncreLoRA.adaptive_rank and IncreLoRA.init_equals_base
    assert IncreLoRA.report_position() == 6
    assert IncreLoRA.report_label({"init_r": 1, "target_rank": 2}) == "IncreLoRA r=1→2"
    assert IncreLoRA.rank_label({"init_r": 2, "target_rank": 2}) == "r=2"
    assert IncreLoRA.rank_label({"init_r": 1, "target_rank": 2}, {"a": 2, "b": 2}) == "r=1→2"
    assert IncreLoRA.rank_label({"init_r": 1, "target_rank": 2}, {"a": 1, "b": 2}) == (
        "r=1→2 (mean 1.5)"
    )
    assert IncreLoRA.rank_label({}) == ""


def test_search_space_samples_valid_configs() -> None:
    fields = {f.name for f in dataclasses.fields(IncreLoRAConfig)}
    space = build_search_space("increlora", IncreLoRA.search_space(), config_fields=fields)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        values = space.suggest(trial)
        variant_fields = {k: v for k, v in values.items() if not k.startswith("train.")}
        make_config("increlora", **variant_fields)  # every sample is a valid config
        study.tell(trial, 0.0)
