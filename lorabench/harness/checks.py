"""Checks of a whole suite against the models' shapes, before anything trains.

Each variant config is attached to its model built on the ``meta`` device (shapes, no memory,
no weights read), so a rank larger than a layer, target modules the model does not have, or an
AdaLoRA schedule longer than a steps budget is found for every run at once, not one failed record
per run after the suite has started.
"""

from __future__ import annotations

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


def shape_problems(configs: list[RunConfig]) -> list[str]:
    """One line per distinct problem of attaching ``configs``' variants to their models (and,
    for a steps budget, starting the variant's schedule); ``[]`` when every run can start."""
    import copy

    from lorabench.tasks import get_task
    from lorabench.variants.adapter import attach

    models: dict[tuple, Any] = {}
    checked: set[str] = set()
    problems: list[str] = []
    for cfg in configs:
        try:
            spec = get_task(cfg.task)
            key = repr(
                (cfg.model, spec.num_labels, cfg.variant, sorted(cfg.variant_config.items()))
            )
            if cfg.budget.kind == "steps":
                key += f"|{cfg.budget}"
            if key in checked:
                continue
            checked.add(key)
            model = copy.deepcopy(_meta_model(cfg.model, spec.num_labels, models))
            adapter = attach(model, cfg.variant, cfg.variant_config_object())
            if cfg.budget.kind == "steps":
                adapter.on_train_begin(int(cfg.budget.limit))
        except Exception as exc:  # the message names the field and the fix
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            problems.append(f"{cfg.variant}/{cfg.task}: {message}")
    return problems
