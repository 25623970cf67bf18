"""``lorabench list variants|tasks``."""

from __future__ import annotations

import argparse

HELP = "list registered variants or tasks (with wildcards)"
DESCRIPTION = """List what lorabench knows: variants (built-in and installed plugins) or tasks.

examples:
  lorabench list variants
  lorabench list variants '*lora*'
  lorabench list tasks"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the arguments of ``lorabench list`` to ``parser``."""
    parser.add_argument("what", choices=["variants", "tasks"], help="what to list")
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard (default: *)")


def run(args: argparse.Namespace) -> int:
    """Runs ``lorabench list``; returns the exit code (0 listed, 1 when nothing matches the
    pattern)."""
    if args.what == "variants":
        from lorabench.variants import VARIANTS as registry
    else:
        from lorabench.tasks import TASKS as registry
    names = registry.list(args.pattern)
    if not names:
        print(f"no {args.what} match {args.pattern!r}; all: {', '.join(registry.list())}")
        return 1
    if args.what == "tasks":
        print_task_table(names)
        return 0
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {registry.describe(name)}")
    return 0


def task_row(name: str) -> list[str]:
    """name, source, type (classes), metrics (primary starred, direction when lower is better),
    description: what a user needs to pick a task and read its scores."""
    from lorabench.tasks import get_task

    spec = get_task(name)
    kind = "regression" if spec.task_type == "regression" else f"{spec.num_labels}-class"
    metrics = ", ".join(
        m.name
        + ("*" if m.name == spec.primary_metric else "")
        + ("" if m.higher_is_better else " (lower)")
        for m in spec.metrics
    )
    return [name, spec.source, kind, metrics, spec.description]


def print_task_table(names: list[str]) -> None:
    """Prints one aligned row per task (see :func:`task_row`) under a header, then the key to
    the metric marks."""
    rows = [["task", "source", "type", "metrics", "description"], *(task_row(n) for n in names)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[4]
        )
    print(
        "\n* primary metric (what comparisons rank by); metrics are higher-is-better unless marked"
    )
