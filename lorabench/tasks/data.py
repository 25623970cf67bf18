"""Loaded task data and the pluggable sources that produce it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from lorabench.tasks.spec import TaskSpec


@dataclass
class LoadRequest:
    """What the caller has: a data folder, the model (planted tasks build their teacher from it)."""

    data_dir: str | None = None
    model: str | None = None  # a name or path accepted by lorabench.models.resolve_model
    seed: int = 0  # generated tasks only; real data never depends on the seed
    max_train_examples: int | None = None  # deterministic head of the (shuffled-once) train split
    max_eval_examples: int | None = None


@dataclass
class TaskData:
    """A task's examples, ready for tokenisation.

    ``splits`` maps split name to a DataFrame whose columns are the spec's ``text_columns`` and
    ``label_column`` (an int class id, or a float for regression). ``extras`` carries what a
    generated task knows beyond the rows: planted-rank tasks put ``true_ranks`` (module name ->
    rank), ``head_state`` (classifier tensors the student starts from) and ``freeze_head`` here.
    """

    spec: TaskSpec
    splits: dict[str, pd.DataFrame]
    source: str  # where the rows came from, for the record ("glue-tsv:/data/glue/RTE", "hub:nyu-mll/glue")
    extras: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> pd.DataFrame:
        if name not in self.splits:
            raise KeyError(f"task {self.spec.name!r} has no split {name!r}; it has {sorted(self.splits)}")
        return self.splits[name]


SourceLoader = Callable[[TaskSpec, LoadRequest], TaskData]
SOURCES: dict[str, SourceLoader] = {}


def register_source(name: str) -> Callable[[SourceLoader], SourceLoader]:
    """Decorator: ``@register_source("planted")`` makes ``load_task`` use it for that source."""

    def decorator(fn: SourceLoader) -> SourceLoader:
        SOURCES[name] = fn
        return fn

    return decorator
