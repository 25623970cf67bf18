"""Training a lorabench adapter with ``transformers.Trainer``.

A plain ``Trainer`` knows nothing of lorabench's per-step hooks: AdaLoRA would never prune and
never add its orthogonality loss, DyLoRA would never draw a rank, SoRA would never threshold its
gates, and ``save_model`` would write the whole model with wrapped keys. This module closes the
gap::

    >>> adapter = attach(model, "adalora", r=12, target_r=8)
    >>> trainer = lorabench_trainer(model, adapter, TrainingArguments(...), train_dataset=train)
    >>> trainer.train()
    >>> trainer.save_model("out/adapter")     # the adapter and the task head only
    >>> load_adapter(fresh_model, "out/adapter")  # the same logits

* :class:`LorabenchCallback` drives the adapter's hooks in the order lorabench's own trainer
  does (docs/ARCHITECTURE.md): ``on_train_begin(state.max_steps)`` once, ``before_step(step)``
  before each optimiser step's first forward (``on_step_begin``), and
  ``after_step(step, learning_rate=...)`` right after ``optimizer.step()`` with the gradients
  still present (``on_optimizer_step``; ``on_step_end`` comes after ``zero_grad``, too late for
  AdaLoRA's importance scores). The learning rate passed is the one that step used.
* :class:`LorabenchTrainer` adds ``adapter.regularization_loss()`` to the training loss once per
  optimiser step (whatever the gradient accumulation), logs it as ``reg_loss``, trains the task
  head, installs the callback, and saves the adapter and the head instead of the whole model.
* :func:`lorabench_trainer` builds one in a call.

The callback alone on a plain ``Trainer`` drives the hooks but cannot add the regulariser: it
warns at the start of training when the adapter has one.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import TrainOutput

from lorabench.models import head_parameter_names
from lorabench.variants import adapter as adapter_files
from lorabench.variants.adapter import Adapter
from lorabench.variants.base import Variant

# What LorabenchTrainer.log reports the regulariser's mean under (Trainer's "loss" is the sum).
REG_LOSS_KEY = "reg_loss"


def uses_training_hooks(adapter: Adapter) -> bool:
    """Whether ``adapter``'s variant does anything in ``before_step`` or ``after_step`` (rank
    schedules, rank sampling, proximal steps): training it without the hooks silently trains
    something else. Read from the class, so no variant is named here."""
    cls = type(adapter.variant)
    return cls.before_step is not Variant.before_step or cls.after_step is not Variant.after_step


def head_names(adapter: Adapter) -> list[str]:
    """The task head's parameter names on the adapted model (``head_parameter_names``), less any
    inside an adapted layer: those are the adapter's (its frozen base weight, its factors), and a
    fresh base model has no parameter of that name to load them into."""
    inside = tuple(f"{name}." for name in adapter.layers)
    return [n for n in head_parameter_names(adapter.model) if not n.startswith(inside)]


def save_adapter_and_head(adapter: Adapter, directory: str | os.PathLike) -> Path:
    """Writes the adapter (:meth:`Adapter.save`) and the task head beside it, as the runner does,
    so that ``load_adapter(fresh_base_model, directory)`` computes what was trained.

    The head is saved whether or not it trained: a base model loaded afresh for classification
    draws a new random head, so only the saved one gives the same logits. Returns the folder.
    """
    out = adapter.save(directory)
    wanted = set(head_names(adapter))
    head = {
        name: p.detach().to("cpu").contiguous().clone()
        for name, p in adapter.model.named_parameters()
        if name in wanted
    }
    if head:
        save_file(head, str(out / adapter_files.HEAD_FILE))
    return out


class LorabenchCallback(TrainerCallback):
    """Drives a lorabench :class:`Adapter`'s training hooks from ``transformers.Trainer``.

    ``on_train_begin`` -> ``adapter.on_train_begin(state.max_steps)``; ``on_step_begin`` ->
    ``adapter.before_step(step)``; ``on_optimizer_step`` (after ``optimizer.step()``, before the
    scheduler's step and ``zero_grad``) -> ``adapter.after_step(step, learning_rate=lr)``, ``lr``
    being the rate that step used for the adapter's parameters. ``step`` is 0-based: the number
    of optimiser steps completed before it (``state.global_step``).

    Added by :class:`LorabenchTrainer` itself; add it to a plain ``Trainer`` only for an adapter
    without a regulariser (it warns otherwise: the loss needs :class:`LorabenchTrainer`).
    """

    def __init__(self, adapter: Adapter) -> None:
        if not isinstance(adapter, Adapter):
            raise TypeError(
                f"LorabenchCallback takes the Adapter that lorabench.variants.attach returned, "
                f"got a {type(adapter).__name__}"
            )
        self.adapter = adapter
        # Set by LorabenchTrainer, whose compute_loss adds adapter.regularization_loss().
        self.loss_includes_regularizer = False
        self._param_ids = {id(p) for p in adapter.trainable_parameters()}

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Checks the adapter belongs to the model in training and starts its schedules over
        ``state.max_steps`` optimiser steps."""
        model = kwargs.get("model")
        if model is not None and not any(m is self.adapter.model for m in model.modules()):
            raise ValueError(
                f"the Trainer trains a {type(model).__name__} that does not hold this adapter's "
                f"model ({type(self.adapter.model).__name__}); pass the model that "
                "lorabench.variants.attach adapted, or attach the adapter to the Trainer's model"
            )
        if state.global_step > 0 and uses_training_hooks(self.adapter):
            warnings.warn(
                f"training resumes at step {state.global_step}, but the {self.adapter.name!r} "
                "adapter's schedule state (importance averages, rank generator, ...) is not in "
                "Trainer checkpoints and starts empty at this step; train from the start for the "
                "schedule the variant defines",
                stacklevel=2,
            )
        self.adapter.on_train_begin(state.max_steps)
        if not self.loss_includes_regularizer and self.adapter.regularization_loss() is not None:
            warnings.warn(
                f"the {self.adapter.name!r} adapter adds a regularisation term to the training "
                "loss (adapter.regularization_loss()), which a plain transformers.Trainer leaves "
                "out: this run trains without it. Use "
                "lorabench.integrations.hf_trainer.LorabenchTrainer (or lorabench_trainer(...)) "
                "instead of Trainer",
                stacklevel=2,
            )

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Before the first forward of optimiser step ``state.global_step``."""
        self.adapter.before_step(state.global_step)

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """After ``optimizer.step()``, gradients still present (``zero_grad`` comes later)."""
        lr = self._learning_rate(kwargs.get("optimizer"), kwargs.get("lr_scheduler"))
        self.adapter.after_step(state.global_step, learning_rate=lr)

    def _learning_rate(self, optimizer: Any, lr_scheduler: Any) -> float | None:
        """The adapter's learning rate in the step just taken. The scheduler has not stepped yet
        at ``on_optimizer_step``, so the optimiser's group still holds that step's rate."""
        for group in getattr(optimizer, "param_groups", None) or ():
            if any(id(p) in self._param_ids for p in group["params"]):
                lr = group["lr"]
                return float(lr.item() if torch.is_tensor(lr) else lr)
        if lr_scheduler is not None:  # an optimiser that hides its groups: the first group's rate
            return float(lr_scheduler.get_last_lr()[0])
        return None


class LorabenchTrainer(Trainer):
    """A ``transformers.Trainer`` for a model adapted by lorabench.

    On top of ``Trainer``: the adapter's hooks run (:class:`LorabenchCallback`), the training loss
    is the task loss plus ``adapter.regularization_loss()`` (added once per optimiser step; the
    evaluation loss stays the task loss, as lorabench's own evaluation), the mean regulariser is
    logged as ``reg_loss``, the task head trains (``train_head=True``, as in lorabench runs), and
    ``save_model`` (and every checkpoint) writes the adapter and the head only, which
    ``lorabench.variants.load_adapter(fresh_base_model, folder)`` reloads.

    Args:
        model: the model :func:`lorabench.variants.attach` adapted (default: ``adapter.model``).
        args: the ``TrainingArguments``.
        adapter: the :class:`Adapter` ``attach`` returned.
        train_head: make the task head's parameters trainable (``attach`` froze them).
        **kwargs: everything else ``Trainer`` takes (``train_dataset``, ``eval_dataset``,
            ``data_collator``, ``compute_metrics``, ``callbacks``, ...); not ``model_init``.

    Resuming from a checkpoint and ``load_best_model_at_end`` are refused: checkpoints hold the
    adapter, not the variants' schedule state, so the run would not be the one asked for.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        *,
        adapter: Adapter,
        train_head: bool = True,
        **kwargs: Any,
    ) -> None:
        if not isinstance(adapter, Adapter):
            raise TypeError(
                f"adapter must be the Adapter that lorabench.variants.attach returned, got a "
                f"{type(adapter).__name__}"
            )
        if model is None:
            model = adapter.model
        elif model is not adapter.model:
            raise ValueError(
                f"model (a {type(model).__name__}) is not the model this adapter is attached to; "
                "pass the model given to lorabench.variants.attach, or leave model out"
            )
        if kwargs.get("model_init") is not None:
            raise ValueError(
                "model_init is not supported: a model built per trial would not carry the "
                "adapter; attach the adapter to a model and pass that model"
            )
        if args is not None and args.load_best_model_at_end:
            raise ValueError(
                "load_best_model_at_end=True is not supported: a lorabench checkpoint holds the "
                "adapter, which Trainer cannot load back; set it to False and keep the best "
                "checkpoint folder (load_adapter(fresh_model, folder))"
            )
        self.adapter = adapter
        if train_head:
            wanted = set(head_names(adapter))
            for name, p in model.named_parameters():
                if name in wanted:
                    p.requires_grad_(True)
        super().__init__(model=model, args=args, **kwargs)
        self.lorabench_callback = self._install_callback(adapter)
        self._reg_values: list[float] = []  # the regulariser per training forward since the log

    def _install_callback(self, adapter: Adapter) -> LorabenchCallback:
        """One callback for this adapter: the user's if given, else a new one (two would run
        every hook twice: AdaLoRA's scores updated twice a step, DyLoRA drawing twice)."""
        mine = [c for c in self.callback_handler.callbacks if isinstance(c, LorabenchCallback)]
        foreign = [c for c in mine if c.adapter is not adapter]
        if foreign:
            raise ValueError(
                "callbacks hold a LorabenchCallback for another adapter "
                f"({foreign[0].adapter.name!r}); LorabenchTrainer adds the one for its own "
                "adapter, so leave LorabenchCallback out of callbacks"
            )
        if mine:
            callback = mine[0]
            for extra in mine[1:]:
                self.callback_handler.remove_callback(extra)
        else:
            callback = LorabenchCallback(adapter)
            self.add_callback(callback)
        callback.loss_includes_regularizer = True
        return callback

    def train(
        self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any
    ) -> TrainOutput:
        """``Trainer.train``; resuming from a checkpoint is refused (see the class)."""
        if resume_from_checkpoint:
            raise ValueError(
                f"resume_from_checkpoint={resume_from_checkpoint!r} is not supported: the "
                "checkpoint holds the adapter but not the variant's schedule state, and Trainer "
                "cannot load a lorabench adapter into the model; train from the start"
            )
        return super().train(None, *args, **kwargs)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The task loss (``Trainer.compute_loss``) plus, in training, the adapter's
        regulariser."""
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if not model.training:
            return result
        reg = self.adapter.regularization_loss()
        if reg is None:
            return result
        loss, outputs = result if return_outputs else (result, None)
        self._reg_values.append(float(reg.detach()))
        # Counted once per optimiser step: Trainer divides a per-batch loss by the accumulation
        # steps itself, but not a loss the model already normalised over the accumulated batch.
        if self._loss_scaled_for_accumulation(num_items_in_batch):
            reg = reg / self.current_gradient_accumulation_steps
        loss = loss + reg.to(loss.device)
        return (loss, outputs) if return_outputs else loss

    def _loss_scaled_for_accumulation(self, num_items_in_batch: Any) -> bool:
        """``Trainer.training_step``'s own test of whether it will divide the loss by the
        gradient accumulation steps (it does when this is False)."""
        declared = getattr(self, "loss_is_scaled_for_ga", None)
        if declared is not None:
            return bool(declared)
        return bool(
            (self.model_accepts_loss_kwargs and num_items_in_batch is not None)
            or self.compute_loss_func is not None
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds ``reg_loss``, the mean regulariser since the previous training log, to training
        logs (Trainer's ``loss`` is the task loss plus the regulariser)."""
        if "loss" in logs and self._reg_values:
            logs = {**logs, REG_LOSS_KEY: sum(self._reg_values) / len(self._reg_values)}
            self._reg_values = []
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Writes the adapter and the task head (not the whole model), the tokenizer if any,
        and the training arguments. ``state_dict`` (sharded setups) is not used: the adapter's
        own tensors are saved."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        save_adapter_and_head(self.adapter, output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))


def lorabench_trainer(
    model: nn.Module,
    adapter: Adapter,
    args: TrainingArguments,
    *,
    train_head: bool = True,
    **trainer_kwargs: Any,
) -> LorabenchTrainer:
    """A :class:`LorabenchTrainer` for ``model`` adapted by ``adapter``, in one call.

    ``trainer_kwargs`` go to ``transformers.Trainer`` (``train_dataset``, ``eval_dataset``,
    ``data_collator``, ``compute_metrics``, ``callbacks``, ...).
    """
    return LorabenchTrainer(
        model=model, args=args, adapter=adapter, train_head=train_head, **trainer_kwargs
    )
