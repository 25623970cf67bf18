"""The teacher: the base model plus the planted updates and the seeded head, ready to label."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lorabench.models import load_model_and_tokenizer
from lorabench.tasks.data import LoadRequest
from lorabench.tasks.planted.head import head_names, random_head
from lorabench.tasks.planted.plant import add_planted_updates, resolve_ranks
from lorabench.tasks.planted.recipe import PlantedRecipe
from lorabench.tasks.planted.texts import predict_logits, word_list
from lorabench.tasks.spec import TaskSpec


@dataclass
class Teacher:
    """The base model with the planted updates and the seeded head, ready to label inputs."""

    model: nn.Module
    tokenizer: Any
    true_ranks: dict[str, int]
    deltas: dict[str, torch.Tensor]
    head_state: dict[str, torch.Tensor]
    output_bias: str | None
    words: list[str] = field(repr=False)


def build_teacher(
    spec: TaskSpec, request: LoadRequest, *, base: tuple[nn.Module, Any] | None = None
) -> Teacher:
    """The teacher of ``spec`` for ``request.model`` and ``request.seed``.

    ``base`` (model, tokenizer) reuses an already loaded base model; it is copied, not changed.
    The head is seeded but not yet balanced (that needs the inputs; see
    :func:`lorabench.tasks.planted.source.generate_planted`).
    """
    recipe = PlantedRecipe.from_options(spec.options)
    if base is None:
        model, tokenizer = load_model_and_tokenizer(request.model, num_labels=spec.num_labels)
    else:
        model, tokenizer = copy.deepcopy(base[0]), base[1]
    model.eval()
    true_ranks = resolve_ranks(model, recipe.ranks)
    deltas = add_planted_updates(model, true_ranks, recipe.scale, request.seed)
    head_state, output_bias = random_head(model, spec.num_labels, request.seed)
    model.load_state_dict(head_state, strict=False)
    words = word_list(tokenizer)
    return Teacher(model, tokenizer, true_ranks, deltas, head_state, output_bias, words)


def center_head_without_bias(teacher: Teacher, base: nn.Module, texts: list[str]) -> None:
    """Balances a head that has no output bias (GPT-2, Llama ``score``), in place.

    Such a head cannot be shifted; instead the direction of the mean feature over ``texts`` is
    removed from its output weight, so every class's mean logit is zero. The new weight goes into
    ``teacher.head_state``, the teacher's model and ``base`` (which must see the same head).
    """
    name = head_names(teacher.model)[-1]
    feats: list[torch.Tensor] = []
    layer = teacher.model.get_submodule(name.rsplit(".", 1)[0])
    hook = layer.register_forward_hook(
        lambda _m, inp, _o: feats.append(inp[0].reshape(-1, inp[0].shape[-1]).float())
    )
    try:
        predict_logits(teacher.model, teacher.tokenizer, texts)
    finally:
        hook.remove()
    mu = torch.cat(feats).mean(0).double()
    w = teacher.head_state[name].double()
    w = w - torch.outer(w @ mu, mu) / (mu @ mu)
    teacher.head_state[name] = w.to(teacher.head_state[name].dtype)
    teacher.model.load_state_dict({name: teacher.head_state[name]}, strict=False)
    base.load_state_dict({name: teacher.head_state[name]}, strict=False)
