"""Loaded task data and the pluggable sources that produce it."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
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
    # where the rows came from, for the record ("glue-tsv:/data/glue/RTE", "hub:nyu-mll/glue")
    source: str
    extras: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> pd.DataFrame:
        """The rows of split ``name``; a KeyError listing the task's splits when it has none of
        that name."""
        if name not in self.splits:
            raise KeyError(
                f"task {self.spec.name!r} has no split {name!r}; it has {sorted(self.splits)}"
            )
        return self.splits[name]


SourceLoader = Callable[[TaskSpec, LoadRequest], TaskData]
# What a source reads for a request, without reading it: the files (so a fingerprint computed
# once can be reused while they are unchanged), or for generated data, a key that determines it.
SourceFiles = Callable[[TaskSpec, LoadRequest], "list[Path] | None"]
GeneratedKey = Callable[[TaskSpec, LoadRequest], "str | None"]
SOURCES: dict[str, SourceLoader] = {}
SOURCE_FILES: dict[str, SourceFiles] = {}
GENERATED_KEYS: dict[str, GeneratedKey] = {}


def register_source(
    name: str,
    *,
    files: SourceFiles | None = None,
    generated_key: GeneratedKey | None = None,
) -> Callable[[SourceLoader], SourceLoader]:
    """Decorator: ``@register_source("planted")`` makes ``load_task`` use it for that source.

    ``files(spec, request)`` lists the files a load reads (``None``: not known without loading);
    ``generated_key(spec, request)`` is, for generated data, a string that determines the rows
    exactly. Either lets a run's data fingerprint be known without loading the data again
    (:mod:`lorabench.tasks.fingerprint`).
    """

    def decorator(fn: SourceLoader) -> SourceLoader:
        SOURCES[name] = fn
        if files is not None:
            SOURCE_FILES[name] = files
        if generated_key is not None:
            GENERATED_KEYS[name] = generated_key
        return fn

    return decorator


def cache_root() -> Path:
    """Where lorabench keeps what it can recompute: ``$LORABENCH_CACHE`` or
    ``~/.cache/lorabench``."""
    return Path(os.environ.get("LORABENCH_CACHE") or Path.home() / ".cache" / "lorabench")
