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
    parser.add_argument("what", choices=["variants", "tasks"], help="what to list")
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard (default: *)")


def run(args: argparse.Namespace) -> int:
    if args.what == "variants":
        from lorabench.variants import VARIANTS as registry
    else:
        from lorabench.tasks import TASKS as registry
    names = registry.list(args.pattern)
    if not names:
        print(f"no {args.what} match {args.pattern!r}; all: {', '.join(registry.list())}")
        return 1
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {registry.describe(name)}")
    return 0
