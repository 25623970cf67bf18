"""The training loop: determinism, hook order, budgets, failures, batching, optimiser groups."""

from __future__ import annotations

import itertools
import math
import time
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import torch

from lorabench.harness.batches import BatchPlan, TokenizedSplit, epoch_batches
from lorabench.harness.config import Budget, RunConfig, TrainConfig
from lorabench.harness.runner import RunCache, execute_run, run_config_of
from lorabench.harness.trainer import RunPruned, build_optimizer, linear_schedule
from lorabench.variants import VARIANTS
from lorabench.variants.adapter import WEIGHTS_FILE
from lorabench.variants.lora import LoRA

pytestmark = pytest.mark.usefixtures("single_thread")

EVENTS: list[tuple] = []


class Recording(LoRA):
    """LoRA that records every hook call and checks what the loop has done at that point."""

    name = "recording"
    fail_at: ClassVar[dict[str, int]] = {}  # hook -> step at which to misbehave (set by tests)

    def on_train_begin(self, total_steps: int) -> None:
        super().on_train_begin(total_steps)
        EVENTS.append(("on_train_begin", total_steps))
        self._step = -1

    def before_step(self, step: int) -> None:
        params = [p for layer in self.layers.values() for p in layer.trainable_parameters()]
        # zero_grad ran after the previous step: no gradients are left over.
        EVENTS.append(("before_step", step, all(p.grad is None for p in params)))
        self._snapshot = [p.detach().clone() for p in params]
        self._step = step
        if self.fail_at.get("keyboard") == step:
            raise KeyboardInterrupt
        if self.fail_at.get("error") == step:
            raise RuntimeError("variant exploded on purpose")

    def regularization_loss(self):
        EVENTS.append(("regularization_loss", self._step))
        if self.fail_at.get("nan") == self._step:
            return torch.tensor(float("nan"))
        return None

    def after_step(self, step: int) -> None:
        params = [p for layer in self.layers.values() for p in layer.trainable_parameters()]
        has_grad = all(p.grad is not None for p in params)
        changed = any(not torch.equal(p, s) for p, s in zip(params, self._snapshot))
        EVENTS.append(("after_step", step, has_grad, changed))


@pytest.fixture
def recording():
    VARIANTS.add(Recording, name="recording", overwrite=True)
    EVENTS.clear()
    Recording.fail_at = {}
    yield "recording"
    VARIANTS.unregister("recording")
    Recording.fail_at = {}


def run_cfg(model_dir, task, *, variant="lora", budget="steps=12", seed=0, **train) -> RunConfig:
    train = {"batch_size": 16, "learning_rate": 5e-3, "eval_every": 6, **train}
    return RunConfig(
        variant,
        task,
        seed=seed,
        variant_config={"r": 4},
        model=str(model_dir),
        budget=Budget.parse(budget),
        train=TrainConfig(**train),
    )


@pytest.fixture(scope="module")
def cache():
    return RunCache()


def test_same_seed_same_numbers_and_other_seed_differs(tiny_model_dir, toy_task, cache):
    first = execute_run(run_cfg(tiny_model_dir, toy_task), progress=False, cache=cache)
    second = execute_run(run_cfg(tiny_model_dir, toy_task), progress=False)  # fresh cache too
    other = execute_run(run_cfg(tiny_model_dir, toy_task, seed=1), progress=False, cache=cache)
    assert first.status == second.status == other.status == "finished", first.error
    losses = [p.loss for p in first.curve if p.loss is not None]
    assert len(losses) >= 6 and all(math.isfinite(v) for v in losses)
    assert losses == [p.loss for p in second.curve if p.loss is not None]
    assert first.metrics == second.metrics and first.score == second.score
    assert losses != [p.loss for p in other.curve if p.loss is not None]
    # Eval points at the eval_every steps and at the end; the score is the primary metric.
    assert [p.step for p in first.curve if p.metrics] == [6, 12]
    assert first.score == first.metrics["accuracy"]


def test_record_is_complete(tiny_model_dir, toy_task, cache, tmp_path):
    cfg = cache.resolve(run_cfg(tiny_model_dir, toy_task))  # the run as it happens: its identity
    record = execute_run(
        run_cfg(tiny_model_dir, toy_task), progress=False, cache=cache, adapter_root=tmp_path
    )
    assert record.run_id == cfg.run_id and record.status == "finished"
    assert record.data_fingerprint == cfg.data_fingerprint and len(record.data_fingerprint) == 16
    assert record.model_fingerprint == cfg.model_fingerprint and len(record.model_fingerprint) == 16
    assert record.config["resolved_variant_config"]["r"] == 4
    assert record.config["resolved_variant_config"]["target_modules"] == "auto"
    assert run_config_of(record).run_id == record.run_id
    assert record.variant_version and record.task_version == "1" and record.rank == 4
    assert record.adapter_params == 4 * 4 * (32 + 32)  # 2 layers x (query, value), A and B
    assert record.trainable_params == record.adapter_params + 32 * 2 + 2  # + classifier head
    assert record.total_params > record.trainable_params
    assert set(record.ranks.values()) == {4} and len(record.ranks) == 4
    saved = tmp_path / cfg.run_id / WEIGHTS_FILE
    assert record.adapter_bytes == saved.stat().st_size > 0
    assert (tmp_path / cfg.run_id / "head.safetensors").is_file()
    spent = record.spent
    for key in (
        "steps",
        "tokens",
        "padded_tokens",
        "train_seconds",
        "eval_seconds",
        "flops",
        "flops_per_step",
        "peak_memory_bytes",
        "memory_kind",
    ):
        assert key in spent, key
    assert spent["padded_tokens"] >= spent["tokens"] > 0 and spent["flops"] > 0
    # The peak during training above what the process held when it began (not the whole
    # process, which grows with every run one process did before).
    assert spent["memory_kind"] == "cpu_rss_peak_above_baseline"
    assert spent["peak_memory_bytes"] >= 0 and spent["memory_baseline_bytes"] > 0
    assert spent["peak_memory_bytes"] < spent["memory_baseline_bytes"]
    assert record.environment.get("packages", {}).get("torch")
    assert record.started_at <= record.finished_at


def test_hooks_called_in_documented_order(tiny_model_dir, toy_task, cache, recording):
    record = execute_run(
        run_cfg(tiny_model_dir, toy_task, variant=recording, budget="steps=3"),
        progress=False,
        cache=cache,
    )
    assert record.status == "finished", record.error
    assert EVENTS[0] == ("on_train_begin", 3)
    steps = EVENTS[1:]
    assert [e[:2] for e in steps] == [
        (name, step)
        for step in range(3)
        for name in ("before_step", "regularization_loss", "after_step")
    ]
    for event in steps:
        if event[0] == "before_step":
            assert event[2], (
                "gradients left over at before_step: zero_grad did not run after the step"
            )
        if event[0] == "after_step":
            assert event[2], "after_step ran without gradients (must run before zero_grad)"
            assert event[3], "after_step ran before optimizer.step()"


def test_steps_budget_is_exact_and_runs_several_epochs(tiny_model_dir, toy_task, cache):
    # 200 examples / batch 16 = 13 steps per epoch: 30 steps is more than two passes.
    record = execute_run(
        run_cfg(tiny_model_dir, toy_task, budget="steps=30", eval_every=None),
        progress=False,
        cache=cache,
    )
    assert record.spent["steps"] == record.spent["planned_steps"] == 30
    assert record.spent["stop_reason"] == "steps"
    assert record.spent["tokens"] > 2 * sum(
        len(s.split()) + 2 for s in __import__("conftest").toy_rows(200, 1).sentence
    )


def test_tokens_budget_never_exceeded_and_within_one_batch(tiny_model_dir, toy_task, cache):
    limit = 2500
    record = execute_run(
        run_cfg(tiny_model_dir, toy_task, budget=f"tokens={limit}"), progress=False, cache=cache
    )
    spent = record.spent
    assert record.status == "finished" and spent["stop_reason"] == "tokens"
    assert spent["tokens"] <= limit
    # The next batch would have gone over: at most one batch (16 x 14 tokens) is left unspent.
    assert limit - spent["tokens"] < 16 * 14
    assert spent["steps"] == spent["planned_steps"]


def test_flops_budget(tiny_model_dir, toy_task, cache):
    limit = 1e8
    record = execute_run(
        run_cfg(tiny_model_dir, toy_task, budget=f"flops={limit:g}"), progress=False, cache=cache
    )
    spent = record.spent
    assert record.status == "finished" and spent["stop_reason"] == "flops"
    assert 0 < spent["flops"] <= limit
    assert limit - spent["flops"] < 2 * spent["flops_per_step"]
    assert spent["flops_per_step"] == pytest.approx(spent["flops"] / spent["steps"])


def test_seconds_budget_stops_on_time(tiny_model_dir, toy_task, cache):
    limit = 1.5
    record = execute_run(
        run_cfg(tiny_model_dir, toy_task, budget=f"seconds={limit}", eval_every=None),
        progress=False,
        cache=cache,
    )
    spent = record.spent
    assert record.status == "finished"
    assert spent["steps"] >= 1 and spent["planned_steps"] >= 1
    assert spent["stop_reason"] in ("seconds", "planned_steps")
    assert spent["steps"] <= spent["planned_steps"]
    # The clock is checked before every step: the budget is overshot by less than one step.
    assert spent["train_seconds"] < limit + spent["max_step_seconds"]
    if spent["stop_reason"] == "seconds":
        assert spent["train_seconds"] >= limit


def test_nan_loss_gives_failed_record_with_spend(tiny_model_dir, toy_task, cache, recording):
    Recording.fail_at = {"nan": 2}
    record = execute_run(
        run_cfg(tiny_model_dir, toy_task, variant=recording), progress=False, cache=cache
    )
    assert record.status == "failed"
    assert "NonFiniteLoss" in record.error and "step 2" in record.error
    assert record.spent["steps"] == 2 and record.score is None


def test_exception_in_variant_gives_failed_record_with_traceback(
    tiny_model_dir, toy_task, cache, recording
):
    Recording.fail_at = {"error": 1}
    record = execute_run(
        run_cfg(tiny_model_dir, toy_task, variant=recording), progress=False, cache=cache
    )
    assert record.status == "failed"
    assert "variant exploded on purpose" in record.error and "Traceback" in record.error
    assert "before_step" in record.error  # the tail says where


def test_bad_config_gives_failed_record(tiny_model_dir, toy_task):
    cfg = run_cfg(tiny_model_dir, toy_task)
    cfg.variant_config = {"r": -3}
    record = execute_run(cfg, progress=False)
    assert record.status == "failed" and "r=-3" in record.error


def test_keyboard_interrupt_propagates(tiny_model_dir, toy_task, cache, recording):
    Recording.fail_at = {"keyboard": 1}
    with pytest.raises(KeyboardInterrupt):
        execute_run(
            run_cfg(tiny_model_dir, toy_task, variant=recording), progress=False, cache=cache
        )


def test_pruned_by_on_eval_keeps_spend(tiny_model_dir, toy_task, cache):
    seen = []

    def on_eval(step, metrics, score):
        seen.append((step, score))
        raise RunPruned("not promising")

    record = execute_run(
        run_cfg(tiny_model_dir, toy_task), on_eval=on_eval, progress=False, cache=cache
    )
    assert record.status == "pruned"
    assert seen == [(6, record.score)] and record.spent["steps"] == 6
    assert record.metrics == {"accuracy": record.score}
    assert record.adapter_bytes > 0


def test_dylora_scores_every_rank(tiny_model_dir, toy_task, cache):
    record = execute_run(
        run_cfg(tiny_model_dir, toy_task, variant="dylora"), progress=False, cache=cache
    )
    assert record.status == "finished", record.error
    assert sorted(record.rank_scores) == [1, 2, 3, 4]
    assert all("accuracy" in m for m in record.rank_scores.values())
    assert record.rank_scores[4]["accuracy"] == record.score  # r_max is the default evaluation rank


def test_task_head_state_is_loaded_and_frozen(tiny_model_dir, cache, tmp_path):
    from lorabench.tasks import TASKS, TaskData, TaskSpec, register_source
    from lorabench.tasks.data import SOURCES

    head = {
        "classifier.weight": torch.full((2, 32), 0.01),
        "classifier.bias": torch.tensor([0.5, -0.5]),
    }
    frame = pd.DataFrame(
        {"sentence": ["good day", "the cat", "nice dog", "a tree"] * 8, "label": [1, 0, 1, 0] * 8}
    )

    def load(spec, request):
        return TaskData(
            spec,
            {"train": frame, "validation": frame},
            source="head-test",
            extras={"head_state": head, "freeze_head": True, "true_ranks": {"x": 2}},
        )

    register_source("head-test")(load)
    TASKS.add(
        TaskSpec(
            name="head-test",
            version="1",
            source="head-test",
            text_columns=("sentence",),
            label_names=("n", "p"),
        ),
        overwrite=True,
    )
    try:
        record = execute_run(
            run_cfg(tiny_model_dir, "head-test", budget="steps=4"),
            progress=False,
            cache=cache,
            adapter_root=tmp_path,
        )
    finally:
        TASKS.unregister("head-test")
        SOURCES.pop("head-test", None)
    assert record.status == "finished", record.error
    assert record.trainable_params == record.adapter_params
    assert record.true_ranks == {"x": 2}
    # The frozen head still goes with the adapter (a fresh base model would draw another one),
    # unchanged: the task's head state, bit for bit.
    from safetensors.torch import load_file

    from lorabench.variants.adapter import HEAD_FILE

    saved = load_file(str(tmp_path / record.run_id / HEAD_FILE))
    assert set(saved) == set(head)
    assert all(torch.equal(saved[name], head[name]) for name in head)


def test_several_eval_splits_prefix_metrics_and_score_the_first(tiny_model_dir, cache):
    from conftest import toy_rows

    from lorabench.tasks import TASKS, TaskData, TaskSpec, register_source
    from lorabench.tasks.data import SOURCES

    def load(spec, request):
        return TaskData(
            spec,
            {"train": toy_rows(64, 1), "matched": toy_rows(20, 2), "mismatched": toy_rows(30, 3)},
            source="two-splits",
        )

    register_source("two-splits")(load)
    spec = TaskSpec(
        name="two-splits",
        version="1",
        source="two-splits",
        text_columns=("sentence",),
        label_names=("n", "p"),
        eval_splits=("matched", "mismatched"),
    )
    TASKS.add(spec, overwrite=True)
    try:
        record = execute_run(
            run_cfg(tiny_model_dir, "two-splits", budget="steps=2"), progress=False, cache=cache
        )
    finally:
        TASKS.unregister("two-splits")
        SOURCES.pop("two-splits", None)
    assert record.status == "finished", record.error
    assert set(record.metrics) == {"matched/accuracy", "mismatched/accuracy"}
    assert record.score == record.metrics["matched/accuracy"]


# -- pieces ---------------------------------------------------------------------------------------
def test_epoch_batches_cover_every_example_once_and_bucket_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=1000)
    batches = epoch_batches(lengths, 16, seed=3, epoch=0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    again = epoch_batches(lengths, 16, seed=3, epoch=0)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    next_epoch = epoch_batches(lengths, 16, seed=3, epoch=1)
    assert any(not np.array_equal(a, b) for a, b in zip(batches, next_epoch))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    unbucketed = np.random.default_rng(1).permutation(1000)
    padded_random = sum(16 * lengths[unbucketed[i : i + 16]].max() for i in range(0, 1000, 16))
    assert padded < 0.8 * padded_random


def test_batch_plan_steps_within_and_epochs():
    lengths = np.array([5, 7, 9, 11] * 10)
    split = TokenizedSplit(
        [np.arange(n) for n in lengths], None, np.zeros(40, dtype=np.int64), lengths
    )
    plan = BatchPlan(split, 8, seed=0)
    assert plan.steps_per_epoch == 5
    assert plan.epoch(4) == 0 and plan.epoch(5) == 1
    total = sum(plan.tokens(s) for s in range(7))
    assert plan.steps_within(total) == 7
    assert plan.steps_within(total - 1) == 6
    batch = plan.batch(0, pad_id=0)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert int(batch["attention_mask"].sum()) == plan.tokens(0)


def test_linear_schedule_warms_up_then_decays_to_zero():
    factor = linear_schedule(warmup_steps=4, total_steps=20)
    values = [factor(s) for s in range(21)]
    assert values[0] < values[1] < values[3] < values[4] == 1.0
    assert values[20] == 0.0 and all(a >= b for a, b in itertools.pairwise(values[4:]))


def test_optimizer_groups_decay_matrices_only_and_head_lr():
    matrix, vector = torch.nn.Parameter(torch.zeros(3, 3)), torch.nn.Parameter(torch.zeros(3))
    head_w, head_b = torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer(
        [matrix, vector],
        [head_w, head_b],
        TrainConfig(learning_rate=1e-3, head_learning_rate=1e-2, weight_decay=0.1),
    )
    groups = {
        (g["lr"], g["weight_decay"]): [tuple(p.shape) for p in g["params"]]
        for g in opt.param_groups
    }
    assert groups == {
        (1e-3, 0.1): [(3, 3)],
        (1e-3, 0.0): [(3,)],
        (1e-2, 0.1): [(2, 3)],
        (1e-2, 0.0): [(2,)],
    }


def test_head_state_for_another_model_fails_clearly(tiny_model_dir):
    from lorabench.harness.prepared import _load_head_state
    from lorabench.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(str(tiny_model_dir), num_labels=2)
    _load_head_state(model, {"classifier.bias": torch.tensor([0.25, -0.25])}, "t")
    assert model.classifier.bias.tolist() == [0.25, -0.25]
    with pytest.raises(KeyError, match=r"score\.weight.*generate the task for this model"):
        _load_head_state(model, {"score.weight": torch.zeros(2, 32)}, "t")


def test_regression_task_trains_and_scores_pearson(tiny_model_dir, cache):
    from pathlib import Path

    spec_path = Path(__file__).parent / "fixtures" / "custom" / "similarity.yaml"
    record = execute_run(
        run_cfg(tiny_model_dir, str(spec_path), budget="steps=3"), progress=False, cache=cache
    )
    assert record.status == "finished", record.error
    assert record.primary_metric == "pearson" and record.score == record.metrics["pearson"]
    assert record.trainable_params == record.adapter_params + 32 + 1  # a one-output head


def test_adalora_records_the_final_rank_of_every_matrix(tiny_model_dir, toy_task, cache):
    cfg = run_cfg(tiny_model_dir, toy_task, budget="steps=10")
    cfg.variant, cfg.variant_config = (
        "adalora",
        {"init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 2, "deltaT": 1},
    )
    record = execute_run(cfg, progress=False, cache=cache)
    assert record.status == "finished", record.error
    # 2 layers x (query, value); the allocator pruned from 4 each down to the budget 2 x 4 = 8.
    assert len(record.ranks) == 4 and all(0 <= r <= 4 for r in record.ranks.values())
    assert sum(record.ranks.values()) == 2 * 4
    assert record.rank == 4 and record.rank_scores is None


class ConstantRegulariser(LoRA):
    """LoRA plus a constant regulariser: the sum changes, the gradients do not."""

    name = "constant-regulariser"
    VALUE: ClassVar[float] = 1.85

    def regularization_loss(self):
        return torch.tensor(self.VALUE)


def test_curve_holds_the_task_loss_and_the_regulariser_apart(tiny_model_dir, toy_task, cache):
    """The curve's ``loss`` is the task loss and ``reg_loss`` the regulariser, averaged over the
    same steps: a variant whose regulariser is a constant 1.85 (no gradient: it trains exactly as
    LoRA) records LoRA's losses and 1.85 apart, not their sum; LoRA records a regulariser of 0."""
    VARIANTS.add(ConstantRegulariser, name="constant-regulariser", overwrite=True)
    try:
        plain = execute_run(run_cfg(tiny_model_dir, toy_task), progress=False, cache=cache)
        regular = execute_run(
            run_cfg(tiny_model_dir, toy_task, variant="constant-regulariser"),
            progress=False,
            cache=cache,
        )
    finally:
        VARIANTS.unregister("constant-regulariser")
    assert plain.status == regular.status == "finished", regular.error
    trained = [p for p in regular.curve if p.loss is not None]
    assert len(trained) >= 6
    assert [p.loss for p in trained] == pytest.approx(
        [p.loss for p in plain.curve if p.loss is not None]
    )
    assert all(p.loss < 1.85 for p in trained)  # the task loss of a 2-class task, not the sum
    assert [p.reg_loss for p in trained] == pytest.approx([1.85] * len(trained))
    assert all(p.reg_loss == 0.0 for p in plain.curve if p.loss is not None)


def test_peak_memory_is_the_peak_above_the_baseline_and_does_not_climb_run_after_run():
    """What one process held before a run (here 64 MiB kept alive) is not the run's; the same
    work measured three times reads the same, not more each time."""
    from lorabench.harness.meter import CPU_MEMORY_KIND, PeakMemory

    mib = 2**20
    held = np.ones(64 * mib // 8)  # the process's earlier state, touched
    peaks = []
    for _ in range(3):
        with PeakMemory(torch.device("cpu"), interval=0.005) as memory:
            work = np.ones(32 * mib // 8)  # 32 MiB during "training"
            time.sleep(0.1)
            del work
        peaks.append(memory.peak)
        assert memory.kind == CPU_MEMORY_KIND and memory.baseline > 64 * mib
        assert memory.absolute_peak == memory.baseline + memory.peak
    assert all(28 * mib <= p <= 48 * mib for p in peaks), [p / mib for p in peaks]
    assert max(peaks) - min(peaks) < 8 * mib
    del held
