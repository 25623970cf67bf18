"""Planting known low-rank updates in a model: ``W <- W + U diag(s) V^T`` on chosen matrices."""

from __future__ import annotations

import torch
from torch import nn

from lorabench.tasks.planted.recipe import PlantedRecipeError, derived_generator
from lorabench.variants.base import is_conv1d, layer_shape
from lorabench.variants.targets import find_targets


def resolve_ranks(model: nn.Module, ranks: dict[str, int | list[int]]) -> dict[str, int]:
    """``{module name: planted rank}`` for every module the recipe's patterns select.

    Fails on a pattern that matches nothing (with "did you mean"), on a module selected by two
    patterns, and on a rank above what the matrix can hold.
    """
    out: dict[str, int] = {}
    owner: dict[str, str] = {}
    for pattern, rank in ranks.items():
        names = list(find_targets(model, [pattern]))
        if isinstance(rank, list | tuple):
            # Stretch the list over the matched modules so one recipe fits any depth.
            per_module = [int(rank[i * len(rank) // len(names)]) for i in range(len(names))]
        else:
            per_module = [int(rank)] * len(names)
        for name, r in zip(names, per_module, strict=True):
            if name in out:
                raise PlantedRecipeError(
                    f"module {name!r} is selected by both {owner[name]!r} and {pattern!r}; "
                    "give each module one rank (use narrower patterns, e.g. "
                    "'re:.*layer\\.0\\..*query')"
                )
            out_f, in_f = layer_shape(model.get_submodule(name))
            if r > min(out_f, in_f):
                raise PlantedRecipeError(
                    f"rank {r} for {name!r} (pattern {pattern!r}) exceeds the matrix's maximum "
                    f"rank min{(out_f, in_f)} = {min(out_f, in_f)}; lower it"
                )
            out[name] = r
            owner[name] = pattern
    return out


def planted_delta(
    weight: torch.Tensor, rank: int, scale: float, generator: torch.Generator
) -> torch.Tensor:
    """``U diag(s) V^T`` of exactly ``rank``, in ``weight``'s (out, in) layout, dtype and device.

    U and V are orthonormal bases of random subspaces (QR of Gaussian matrices); every singular
    value is ``scale * ||weight||_2``, so the update is as strong as the matrix's top direction
    times ``scale`` and its rank is unambiguous.
    """
    out_f, in_f = weight.shape
    if rank == 0:
        return torch.zeros_like(weight)
    u = torch.linalg.qr(torch.randn(out_f, rank, generator=generator, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(in_f, rank, generator=generator, dtype=torch.float64))[0]
    sigma = scale * torch.linalg.matrix_norm(weight.detach().double().cpu(), ord=2)
    return (sigma * u @ v.T).to(dtype=weight.dtype, device=weight.device)


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The module's weight in (out, in) layout (GPT-2's ``Conv1D`` stores it transposed)."""
    return module.weight.T if is_conv1d(module) else module.weight


def add_planted_updates(
    model: nn.Module, true_ranks: dict[str, int], scale: float, seed: int
) -> dict[str, torch.Tensor]:
    """Adds each module's planted delta to its weight in place; returns the deltas (out, in)."""
    deltas: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, rank in true_ranks.items():
            module = model.get_submodule(name)
            # One generator per module: a module's delta does not depend on the rest of the
            # recipe.
            generator = derived_generator(seed, "delta", name)
            delta = planted_delta(weight_out_in(module), rank, scale, generator)
            module.weight.add_(delta.T if is_conv1d(module) else delta)
            deltas[name] = delta
    return deltas
