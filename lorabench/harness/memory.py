"""Will a run fit in memory? An estimate from shapes, made before anything trains.

A config such as VeRA with ``r=1000000`` attaches (every layer can hold it) but a training step
then needs tens of GiB: the process grows until the machine swaps or kills it, with nothing said.
:func:`estimate_training_memory` adds up, from the adapted model's shapes (on the ``meta``
device: no memory used), what one training step must hold at least:

* **weights**: every parameter and buffer of the adapted model (base, adapter, shared state);
* **training state**: for each trainable element a gradient and AdamW's two moments;
* **activations**, a lower bound: for each adapted layer, the rank-wide intermediate its
  low-rank path keeps for the backward pass (``tokens x r``, with ``r`` the config's nominal
  rank: every built-in variant computes one), and per transformer layer eight hidden-wide
  tensors (attention and feed-forward inputs, layer norms), where real models keep more.

``tokens`` is the largest training batch: batch size x the longest training example (at most
``max_length``), since a batch is padded to its longest example. The estimate errs low on
purpose: a run it refuses cannot fit; one it allows may still be tight.

:func:`memory_limit` is what there is: ``LORABENCH_MEMORY_LIMIT`` when set (``"12GiB"``,
``"512MiB"``, ``"2e9"`` bytes: for a machine shared with other work), else the CUDA device's
memory, else the machine's physical memory.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import torch
from torch import nn

from lorabench.variants.adapter import Adapter

LIMIT_ENV = "LORABENCH_MEMORY_LIMIT"
# Hidden-wide tensors one transformer layer keeps for its backward pass, at the least.
ACTIVATIONS_PER_LAYER = 8
_ADAMW_STATE = 2  # exp_avg and exp_avg_sq per trainable element
_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_UNITS |= {"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


class MemoryLimitError(ValueError):
    """``LORABENCH_MEMORY_LIMIT`` is not a size."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training step needs at least (see the module docstring)."""

    weights: int
    training_state: int
    activations: int
    batch_tokens: int

    @property
    def total(self) -> int:
        """All three parts together."""
        return self.weights + self.training_state + self.activations

    def describe(self) -> str:
        """``"41.2 GiB (weights 0.1 GiB, gradients and AdamW state 3.0 GiB, activations 38.1
        GiB for 4,096 tokens a batch)"``."""
        return (
            f"{format_bytes(self.total)} (weights {format_bytes(self.weights)}, gradients and "
            f"AdamW state {format_bytes(self.training_state)}, activations at least "
            f"{format_bytes(self.activations)} for {self.batch_tokens:,} tokens a batch)"
        )


def estimate_training_memory(
    model: nn.Module, adapter: Adapter, *, batch_tokens: int, train_head: bool = True
) -> MemoryEstimate:
    """The memory one training step of ``adapter`` (attached to ``model``, which may be on the
    meta device) needs at least, for batches of ``batch_tokens`` tokens."""
    from lorabench.models import head_parameters

    weights = sum(_nbytes(t) for t in (*model.parameters(), *model.buffers()))
    trainable = {id(p): p for p in adapter.trainable_parameters()}
    if train_head:
        trainable.update({id(p): p for p in head_parameters(model)})
    training_state = sum(_nbytes(p) * (1 + _ADAMW_STATE) for p in trainable.values())
    element = _element_size(model)
    rank = int(adapter.config.nominal_rank or 0)  # None: a reference method has no rank
    adapter_activations = len(adapter.layers) * batch_tokens * rank * element
    config = getattr(model, "config", None)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    model_activations = layers * ACTIVATIONS_PER_LAYER * batch_tokens * hidden * element
    if not adapter.trainable_parameters():
        # Only the head trains (a linear probe): no gradient flows into the backbone, so autograd
        # keeps none of its activations for a backward pass. A lower bound must not count them.
        model_activations = 0
    return MemoryEstimate(
        weights=weights,
        training_state=training_state,
        activations=adapter_activations + model_activations,
        batch_tokens=batch_tokens,
    )


def memory_limit(device: torch.device | str | None = None) -> tuple[int, str]:
    """(bytes available to a run, where the figure comes from) for ``device``."""
    text = os.environ.get(LIMIT_ENV, "").strip()
    if text:
        return parse_size(text), f"{LIMIT_ENV}={text}"
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        return int(props.total_memory), f"the memory of {device} ({props.name})"
    import psutil

    return int(psutil.virtual_memory().total), "this machine's physical memory"


def parse_size(text: str) -> int:
    """``"12GiB"``, ``"512 MiB"``, ``"2e9"`` -> bytes; fails naming the value and the form."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    value = float(match.group(1)) if match and _is_number(match.group(1)) else math.nan
    unit = match.group(2) if match else ""
    if not match or unit not in _UNITS or not math.isfinite(value) or value <= 0:
        raise MemoryLimitError(
            f"{LIMIT_ENV}={text!r} is not a size: use bytes or a unit, e.g. 12GiB, 512MiB, 2e9"
        )
    return int(value * _UNITS[unit])


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``; GiB at most."""
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _element_size(model: nn.Module) -> int:
    for p in model.parameters():
        if p.is_floating_point():
            return p.element_size()
    return 4
