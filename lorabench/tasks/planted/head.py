"""The teacher's classification head: drawn from the seed, balanced over the generated inputs.

The student gets the same head, frozen, so only the adapter can fit the labels. Which tensors form
the head is decided once for the whole project, by :func:`lorabench.models.head_parameter_names`.
"""

from __future__ import annotations

import torch
from torch import nn

from lorabench.models import head_parameter_names
from lorabench.tasks.planted.recipe import PlantedRecipeError, derived_generator


def head_names(model: nn.Module) -> list[str]:
    """The classification head's parameter names (:func:`lorabench.models.head_parameter_names`);
    a model without a head cannot label anything, so that is an error here."""
    names = head_parameter_names(model)
    if not names:
        raise PlantedRecipeError(f"cannot find the classification head of {type(model).__name__}")
    return names


def random_head(
    model: nn.Module, num_labels: int, seed: int
) -> tuple[dict[str, torch.Tensor], str | None]:
    """Seeded head tensors ``{name: tensor}`` and the name of the output bias (``None`` if the
    head has none).

    The head is every tensor :func:`head_names` lists (what the task adds to the model: the
    modules outside the backbone and whatever the checkpoint did not provide, e.g. DeBERTa-v2's
    pooler): matrices N(0, 1/fan_in), biases 0, other vectors (a LayerNorm's weight) 1.
    """
    g = derived_generator(seed, "head")
    params = dict(model.named_parameters())
    state: dict[str, torch.Tensor] = {}
    output_bias = None
    for name in head_names(model):
        p = params[name]
        if p.dim() >= 2:
            fan_in = p.shape[-1]
            weight = torch.randn(p.shape, generator=g, dtype=torch.float64) / fan_in**0.5
            state[name] = weight.to(p.dtype)
        else:
            is_bias = name.rsplit(".", 1)[-1] == "bias"
            # A vector that is not a bias scales (a LayerNorm's weight): one keeps it neutral.
            state[name] = (torch.zeros_like if is_bias else torch.ones_like)(p, device="cpu")
            if is_bias and p.shape == (num_labels,):
                output_bias = name  # the last (num_labels,) bias is the output layer's
    return state, output_bias


def balancing_bias(logits: torch.Tensor, iterations: int = 200) -> torch.Tensor:
    """An offset per class such that ``argmax(logits + offset)`` splits the rows evenly.

    Two classes: exactly the median margin. More: iterative proportional updates (the offset of a
    class is lowered while it wins too often), which converge to near-equal shares.
    """
    logits = logits.double()
    k = logits.shape[1]
    if k == 2:
        m = torch.median(logits[:, 1] - logits[:, 0])
        return torch.stack([m / 2, -m / 2])
    offset = torch.zeros(k, dtype=torch.float64)
    for _ in range(iterations):
        share = torch.bincount((logits + offset).argmax(1), minlength=k).double() / len(logits)
        offset -= 0.5 * torch.log((share + 1e-3) * k)
    return offset - offset.mean()


def margins(logits: torch.Tensor) -> torch.Tensor:
    """Distance of each row from the decision boundary: top logit minus the runner-up."""
    top2 = logits.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]
