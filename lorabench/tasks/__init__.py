"""Tasks: specs as data, a registry, and loading from whichever source the user has.

Built-in task families register on import (GLUE in ``glue``, planted-rank in ``planted``).
"""

from __future__ import annotations

from lorabench.registry import Registry
from lorabench.tasks.data import SOURCES, LoadRequest, TaskData, register_source
from lorabench.tasks.spec import MetricSpec, TaskSpec

TASKS: Registry = Registry("task", entry_point_group="lorabench.tasks")


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The registered :class:`TaskSpec` called ``name`` (unknown names fail with "did you mean")."""
    return name if isinstance(name, TaskSpec) else TASKS.get(name)


def list_tasks(pattern: str | list[str] = "*") -> list[str]:
    return TASKS.list(pattern)


def load_task(task: str | TaskSpec, request: LoadRequest | None = None) -> TaskData:
    """Loads a task's splits from the source its spec names."""
    spec = get_task(task)
    request = request or LoadRequest()
    if spec.source not in SOURCES:
        raise KeyError(f"task {spec.name!r} has source {spec.source!r}, which no loader handles; known: {sorted(SOURCES)}")
    return SOURCES[spec.source](spec, request)


__all__ = [
    "SOURCES",
    "TASKS",
    "LoadRequest",
    "MetricSpec",
    "TaskData",
    "TaskSpec",
    "get_task",
    "list_tasks",
    "load_task",
    "register_source",
]
