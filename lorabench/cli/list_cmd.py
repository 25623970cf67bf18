"""``lorabench list variants|tasks``."""

from __future__ import annotations

import argparse

from lorabench.cli.common import LIST_FORMS, CommaList, comma_list

HELP = "list registered variants or tasks (with wildcards)"
DESCRIPTION = """List what lorabench knows: variants (built-in and installed plugins) or tasks.

examples:
  lorabench list variants
  lorabench list variants '*lora*'
  lorabench list variants 'lora,*dora*'      # several patterns: comma-separated, as elsewhere
  lorabench list tasks"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the arguments of ``lorabench list`` to ``parser``."""
    parser.add_argument("what", choices=["variants", "tasks"], help="what to list")
    parser.add_argument(
        "pattern",
        nargs="*",
        action=CommaList,
        default=["*"],
        metavar="PATTERN",
        help=f"shell-style wildcards, names matching any are listed ({LIST_FORMS}; default: *)",
    )


def run(args: argparse.Namespace) -> int:
    """Runs ``lorabench list``; returns the exit code (0 listed, 1 when nothing matches the
    patterns)."""
    if args.what == "variants":
        from lorabench.variants import VARIANTS as registry
    else:
        from lorabench.tasks import TASKS as registry
    # A Namespace built by hand (tests, scripts) may hold the pattern as one string.
    patterns = comma_list(args.pattern) if isinstance(args.pattern, str) else args.pattern
    patterns = patterns or ["*"]
    matches = {name for pattern in patterns for name in registry.list(pattern)}
    names = [name for name in registry.list() if name in matches]  # the registry's order
    if not names:
        shown = ",".join(patterns)
        print(f"no {args.what} match {shown!r}; all: {', '.join(registry.list())}")
        return 1
    if args.what == "tasks":
        print_task_table(names)
        return 0
    print_variant_lines(names)
    return 0


def variant_recipe(name: str) -> str:
    """``"[paper recipe: lr x10]"``: what a suite's ``recipes: paper`` changes for the variant,
    relative to LoRA's recipe; "" when nothing (LoRA's own)."""
    from lorabench.variants import VARIANTS
    from lorabench.variants.recipe import Recipe

    recipe = getattr(VARIANTS.get(name), "recipe", None)
    if not isinstance(recipe, Recipe) or recipe.is_identity:
        return ""
    return f"[paper recipe: {recipe.summary()}]"


def print_variant_lines(names: list[str]) -> None:
    """One line per variant: its name, its one-line description and, when it has one, its
    paper recipe (see :func:`variant_recipe`) after it."""
    from lorabench.variants import VARIANTS

    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {VARIANTS.describe(name)}  {variant_recipe(name)}".rstrip())


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
