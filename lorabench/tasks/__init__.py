"""Tasks: specs as data, a registry, and loading from whichever source the user has.

Built-in task families register on import (GLUE in ``glue``, planted-rank in ``planted``).
"""

from __future__ import annotations

from lorabench.registry import Registry
from lorabench.tasks.data import SOURCES, LoadRequest, TaskData, register_source
from lorabench.tasks.spec import MetricSpec, TaskSpec

TASKS: Registry = Registry("task", entry_point_group="lorabench.tasks")


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The registered :class:`TaskSpec` called ``name`` (unknown names fail with "did you mean").

    A path to a custom task's YAML spec (``*.yaml``/``*.yml``) registers that task and returns it.
    """
    if isinstance(name, TaskSpec):
        return name
    if name.lower().endswith((".yaml", ".yml")):
        return register_custom_task(name)
    return TASKS.get(name)


def list_tasks(pattern: str | list[str] = "*") -> list[str]:
    """Sorted names of the registered tasks (plugins included) matching a shell-style wildcard,
    or any of several; case-insensitive."""
    return TASKS.list(pattern)


def load_task(task: str | TaskSpec, request: LoadRequest | None = None) -> TaskData:
    """Loads a task's splits from the source its spec names."""
    spec = get_task(task)
    request = request or LoadRequest()
    if spec.source not in SOURCES:
        raise KeyError(
            f"task {spec.name!r} has source {spec.source!r}, which no loader handles; "
            f"known: {sorted(SOURCES)}"
        )
    return SOURCES[spec.source](spec, request)


# Built-in task families and sources register on import; they need TASKS, defined above.
from lorabench.tasks import glue, planted  # noqa: E402, F401  (register tasks and their sources)
from lorabench.tasks.metrics import compute_metrics  # noqa: E402
from lorabench.tasks.sources.custom import register_custom_task  # noqa: E402  (source "custom")

__all__ = [
    "SOURCES",
    "TASKS",
    "LoadRequest",
    "MetricSpec",
    "TaskData",
    "TaskSpec",
    "compute_metrics",
    "get_task",
    "list_tasks",
    "load_task",
    "register_custom_task",
    "register_source",
]
