"""Checks of a whole suite against the models' shapes, before anything trains.

Each variant config is attached to its model built on the ``meta`` device (shapes, no memory,
no weights read), so a rank larger than a layer, target modules the model does not have, an
AdaLoRA schedule longer than a steps budget, or a config whose training step cannot fit in memory
(:mod:`lorabench.harness.memory`) is found for every run at once, not one failed record per run
after the suite has started.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lorabench.harness.config import RunConfig


def _meta_model(model: str | None, num_labels: int, cache: dict[tuple, Any]) -> Any:
    """The model's architecture on the meta device (read from its config.json only)."""
    key = (model, num_labels)
    if key not in cache:
        import torch
        import transformers

        from lorabench.models import resolve_model

        config = transformers.AutoConfig.from_pretrained(
            resolve_model(model), num_labels=num_labels
        )
        with torch.device("meta"):
            cache[key] = transformers.AutoModelForSequenceClassification.from_config(config)
    return cache[key]


def shape_problems(
    configs: list[RunConfig],
    *,
    batch_tokens: Callable[[RunConfig], int | None] | None = None,
    device: Any = None,
) -> list[str]:
    """One line per distinct problem of attaching ``configs``' variants to their models (and,
    for a steps budget, starting the variant's schedule); ``[]`` when every run can start.

    With ``batch_tokens`` (a run's largest training batch in tokens, None when unknown), each
    config's training memory is estimated too and refused above the limit of ``device``
    (:func:`lorabench.harness.memory.memory_limit`).
    """
    import copy

    from lorabench.harness.memory import (
        LIMIT_ENV,
        MemoryLimitError,
        estimate_training_memory,
        format_bytes,
        memory_limit,
    )
    from lorabench.tasks import get_task
    from lorabench.variants.adapter import attach

    limit: tuple[int, str] | None = None
    if batch_tokens is not None:
        try:
            limit = memory_limit(device)
        except MemoryLimitError as exc:
            return [str(exc)]
    models: dict[tuple, Any] = {}
    checked: set[str] = set()
    problems: list[str] = []
    for cfg in configs:
        try:
            spec = get_task(cfg.task)
            tokens = batch_tokens(cfg) if batch_tokens is not None else None
            key = repr(
                (cfg.model, spec.num_labels, cfg.variant, sorted(cfg.variant_config.items()))
            )
            if cfg.budget.kind == "steps":
                key += f"|{cfg.budget}"
            if tokens is not None:
                key += f"|{tokens}|{cfg.train.train_head}"
            if key in checked:
                continue
            checked.add(key)
            model = copy.deepcopy(_meta_model(cfg.model, spec.num_labels, models))
            adapter = attach(model, cfg.variant, cfg.variant_config_object())
            if cfg.budget.kind == "steps":
                adapter.on_train_begin(int(cfg.budget.limit))
            if tokens is not None and limit is not None:
                estimate = estimate_training_memory(
                    model, adapter, batch_tokens=tokens, train_head=bool(cfg.train.train_head)
                )
                if estimate.total > limit[0]:
                    problems.append(
                        f"{cfg.variant}/{cfg.task}: a training step needs at least "
                        f"{estimate.describe()}, more than {format_bytes(limit[0])} "
                        f"({limit[1]}); lower r (now {adapter.config.nominal_rank}), "
                        f"train.batch_size (now {cfg.train.batch_size}) or train.max_length "
                        f"(now {cfg.train.max_length})"
                        + ("" if LIMIT_ENV in limit[1] else f", or set {LIMIT_ENV} if more is free")
                    )
        except Exception as exc:  # the message names the field and the fix
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            problems.append(f"{cfg.variant}/{cfg.task}: {message}")
    return problems
