"""lorabench adapters under a real ``transformers.Trainer``: the hooks run in the harness' order,
the regulariser is in the loss, every built-in variant trains and reloads from ``save_model``."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.utils import SAFE_WEIGHTS_NAME, WEIGHTS_NAME

from lorabench.integrations.hf_trainer import (
    REG_LOSS_KEY,
    LorabenchCallback,
    LorabenchTrainer,
    lorabench_trainer,
    uses_training_hooks,
)
from lorabench.models import head_parameter_names
from lorabench.variants import VARIANTS, attach, load_adapter
from lorabench.variants.adapter import HEAD_FILE
from tests.tiny_models import build_model, logits, make_batch

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 8
BATCH = 4
LR = 1e-2
# Small schedules that finish within STEPS optimiser steps.
CONFIGS: dict[str, dict[str, Any]] = {
    "lora": {"r": 4},
    "dora": {"r": 4},
    "vera": {"r": 8},
    "adalora": {"r": 4, "target_r": 2, "tinit": 1, "tfinal": 2},
    "dylora": {"r": 4},
    "sora": {"r": 4},
    "increlora": {"r": 4, "init_r": 1, "target_rank": 2},
    # Reference methods: base weights (or none) train instead of wrapped layers.
    "full": {},
    "bitfit": {},
    "head": {},
}


def built_in_variants() -> list[str]:
    return sorted(
        n for n in VARIANTS.list() if VARIANTS.get(n).__module__.startswith("lorabench.variants.")
    )


def test_every_built_in_variant_has_a_config_here():
    assert sorted(CONFIGS) == built_in_variants()


def dataset(n: int = 16, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    batch = make_batch(batch=n, seed=seed)
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def training_args(tmp_path: Path, **overrides: Any) -> TrainingArguments:
    settings: dict[str, Any] = {
        "output_dir": str(tmp_path / "trainer"),
        "use_cpu": True,
        "report_to": [],
        "max_steps": STEPS,
        "per_device_train_batch_size": BATCH,
        "learning_rate": LR,
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "dataloader_pin_memory": False,
        "seed": 0,
    }
    return TrainingArguments(**{**settings, **overrides})


def adapted(variant: str, dtype: torch.dtype = torch.float32, **config: Any):
    model = build_model("bert", seed=0, dtype=dtype)
    return model, attach(model, variant, **{**CONFIGS[variant], **config})


def train_logs(trainer: Trainer) -> list[dict[str, float]]:
    return [log for log in trainer.state.log_history if "loss" in log]


@pytest.mark.parametrize("variant", sorted(CONFIGS))
def test_variant_trains_prunes_and_reloads_under_trainer(variant, tmp_path):
    model, adapter = adapted(variant)
    ranks_before = adapter.ranks()
    head_before = {n: p.detach().clone() for n, p in model.named_parameters() if "classifier" in n}
    has_reg = adapter.regularization_loss() is not None
    trainer = lorabench_trainer(model, adapter, training_args(tmp_path), train_dataset=dataset())

    out = trainer.train()

    assert trainer.state.global_step == STEPS
    assert adapter.variant.total_steps == STEPS  # on_train_begin got state.max_steps
    logs = train_logs(trainer)
    assert len(logs) == STEPS
    assert math.isfinite(out.training_loss)
    assert all(math.isfinite(log["loss"]) for log in logs)
    # after_step got the step's learning rate (the linear schedule's last one).
    assert adapter.variant.learning_rate == pytest.approx(LR / STEPS)
    # The regulariser is logged (and so was added) exactly when the variant has one.
    assert all((REG_LOSS_KEY in log) == has_reg for log in logs)
    if has_reg:
        assert all(log[REG_LOSS_KEY] > 0 for log in logs)
    # The head trained.
    assert any(
        not torch.equal(p, head_before[n]) for n, p in model.named_parameters() if n in head_before
    )

    if variant == "adalora":
        assert set(ranks_before.values()) == {4}
        assert sum(adapter.ranks().values()) == adapter.variant.target_budget  # pruned to target
    if variant == "increlora":
        assert sum(adapter.ranks().values()) == adapter.variant.target_total_rank  # grown
    if variant == "dylora":
        sampled = adapter.variant.sampled_ranks
        assert len(sampled) == STEPS and len(set(sampled)) > 1
    if variant == "sora":
        assert adapter.variant.threshold is not None  # the proximal step had its learning rate

    # save_model writes the adapter and the head, nothing of the whole model.
    folder = tmp_path / "saved"
    trainer.save_model(str(folder))
    reference = adapter.save(tmp_path / "reference")
    files = {p.name for p in folder.iterdir()}
    assert files == {p.name for p in reference.iterdir()} | {HEAD_FILE, TRAINING_ARGS_NAME}
    assert SAFE_WEIGHTS_NAME not in files and WEIGHTS_NAME not in files

    batch = make_batch(batch=6, seed=7)
    model.eval()
    fresh = build_model("bert", seed=0, dtype=torch.float32)
    loaded = load_adapter(fresh, folder)
    assert loaded.ranks() == adapter.ranks()
    with torch.no_grad():
        torch.testing.assert_close(logits(fresh, batch), logits(model, batch), rtol=0, atol=1e-6)


class HookSpy:
    """Records what the Trainer has done when each adapter hook runs."""

    def __init__(self, adapter) -> None:
        self.adapter = adapter
        self.events: list[tuple] = []
        self.params = adapter.trainable_parameters()
        self._hooks = (adapter.on_train_begin, adapter.before_step, adapter.after_step)

    def on_train_begin(self, total_steps: int) -> None:
        self.events.append(("on_train_begin", total_steps))
        self._hooks[0](total_steps)

    def before_step(self, step: int) -> None:
        self.events.append(("before_step", step, all(p.grad is None for p in self.params)))
        self._snapshot = [p.detach().clone() for p in self.params]
        self._hooks[1](step)

    def after_step(self, step: int, learning_rate: float | None = None) -> None:
        has_grad = all(p.grad is not None for p in self.params)
        changed = any(not torch.equal(p, s) for p, s in zip(self.params, self._snapshot))
        self.events.append(("after_step", step, has_grad, changed, learning_rate))
        self._hooks[2](step, learning_rate=learning_rate)


def test_hooks_run_in_the_harness_order(tmp_path, monkeypatch):
    """before_step before the forward (gradients cleared); after_step after optimizer.step() with
    the gradients still there and the rate that step used (linear decay, no warm-up)."""
    model, adapter = adapted("lora")
    spy = HookSpy(adapter)
    for name in ("on_train_begin", "before_step", "after_step"):
        monkeypatch.setattr(adapter, name, getattr(spy, name))
    trainer = lorabench_trainer(model, adapter, training_args(tmp_path), train_dataset=dataset())
    trainer.train()

    expected: list[tuple] = [("on_train_begin", STEPS)]
    for step in range(STEPS):
        expected.append(("before_step", step, True))
        expected.append(
            ("after_step", step, True, True, pytest.approx(LR * (STEPS - step) / STEPS))
        )
    assert spy.events == expected


def test_regularizer_is_added_to_the_training_loss_once_per_step(tmp_path):
    model, adapter = adapted("adalora")
    trainer = lorabench_trainer(model, adapter, training_args(tmp_path), train_dataset=dataset())
    batch = make_batch(batch=BATCH, seed=3)
    model.train()
    with torch.no_grad():
        task = model(**batch).loss
        reg = adapter.regularization_loss()
        assert reg is not None and float(reg) > 0
        trainer.loss_is_scaled_for_ga = False  # Trainer divides by the accumulation steps itself
        torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), task + reg)
        # A loss already normalised over the accumulated batch gets its share of the regulariser.
        trainer.loss_is_scaled_for_ga = True
        trainer.current_gradient_accumulation_steps = 2
        torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), task + reg / 2)
        # Evaluation reports the task loss alone.
        model.eval()
        torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), task)
        # A plain Trainer leaves the regulariser out.
        model.train()
        plain = Trainer(model=model, args=training_args(tmp_path))
        torch.testing.assert_close(plain.compute_loss(model, dict(batch)), task)


def test_gradient_accumulation_counts_the_regularizer_once(tmp_path):
    """One SGD step over 4 examples equals two accumulated micro-batches of 2 (float64; the
    task loss a per-batch mean, which Trainer divides by the accumulation steps)."""

    def one_step(accumulate: int) -> dict[str, torch.Tensor]:
        # target_r == r: nothing is pruned, the regulariser is there.
        model, adapter = adapted("adalora", dtype=torch.float64, target_r=4, tinit=0, tfinal=0)
        args = training_args(
            tmp_path,
            max_steps=1,
            per_device_train_batch_size=4 // accumulate,
            gradient_accumulation_steps=accumulate,
            optim="sgd",
            learning_rate=0.1,
            max_grad_norm=0,
        )
        trainer = lorabench_trainer(model, adapter, args, train_dataset=dataset(n=4))
        trainer.loss_is_scaled_for_ga = False
        trainer.train()
        return {n: p.detach().clone() for n, p in adapter.named_trainable_parameters().items()}

    whole, accumulated = one_step(1), one_step(2)
    for name, value in whole.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-9, atol=1e-12)


def test_plain_trainer_with_the_callback_warns_about_the_regularizer(tmp_path):
    model, adapter = adapted("adalora")
    assert uses_training_hooks(adapter)
    trainer = Trainer(
        model=model,
        args=training_args(tmp_path),
        train_dataset=dataset(),
        callbacks=[LorabenchCallback(adapter)],
    )
    with pytest.warns(UserWarning, match="LorabenchTrainer"):
        trainer.train()
    # The hooks still ran: the allocator pruned to the target.
    assert sum(adapter.ranks().values()) == adapter.variant.target_budget


def test_plain_trainer_with_the_callback_is_enough_without_a_regularizer(tmp_path):
    assert not uses_training_hooks(adapted("lora")[1])
    model, adapter = adapted("dylora")
    assert uses_training_hooks(adapter)
    trainer = Trainer(
        model=model,
        args=training_args(tmp_path),
        train_dataset=dataset(),
        callbacks=[LorabenchCallback(adapter)],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert not [w for w in caught if "lorabench" in str(w.message).lower()]
    assert len(adapter.variant.sampled_ranks) == STEPS


def test_a_callback_given_twice_drives_the_hooks_once(tmp_path):
    _, adapter = adapted("dylora")
    trainer = LorabenchTrainer(
        adapter=adapter,
        args=training_args(tmp_path),
        train_dataset=dataset(),
        callbacks=[LorabenchCallback(adapter), LorabenchCallback(adapter)],
    )
    assert sum(isinstance(c, LorabenchCallback) for c in trainer.callback_handler.callbacks) == 1
    trainer.train()
    assert len(adapter.variant.sampled_ranks) == STEPS


def test_train_head_false_leaves_the_head_frozen(tmp_path):
    model, adapter = adapted("lora")
    LorabenchTrainer(model=model, adapter=adapter, args=training_args(tmp_path), train_head=False)
    heads = set(head_parameter_names(model))
    assert heads and not any(p.requires_grad for n, p in model.named_parameters() if n in heads)
    other_model, other = adapted("lora")
    LorabenchTrainer(model=other_model, adapter=other, args=training_args(tmp_path))
    assert all(p.requires_grad for n, p in other_model.named_parameters() if n in heads)


def test_unsupported_uses_fail_naming_the_fix(tmp_path):
    model, adapter = adapted("lora")
    with pytest.raises(ValueError, match="not the model this adapter is attached to"):
        LorabenchTrainer(model=build_model("bert"), adapter=adapter, args=training_args(tmp_path))
    with pytest.raises(TypeError, match=r"Adapter that lorabench\.variants\.attach returned"):
        LorabenchTrainer(model=model, adapter=model, args=training_args(tmp_path))
    best = training_args(
        tmp_path, eval_strategy="steps", save_strategy="steps", load_best_model_at_end=True
    )
    with pytest.raises(ValueError, match="load_best_model_at_end"):
        LorabenchTrainer(model=model, adapter=adapter, args=best)
    trainer = LorabenchTrainer(model=model, adapter=adapter, args=training_args(tmp_path))
    with pytest.raises(ValueError, match="resume_from_checkpoint"):
        trainer.train(resume_from_checkpoint=True)
    _, other = adapted("lora")
    with pytest.raises(ValueError, match="another adapter"):
        LorabenchTrainer(
            model=model,
            adapter=adapter,
            args=training_args(tmp_path),
            callbacks=[LorabenchCallback(other)],
        )
