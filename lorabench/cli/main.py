"""``lorabench`` entry point.

Each subcommand lives in its own module exposing ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int`` (the exit code). Modules keep heavy imports (torch, transformers, optuna)
inside ``run`` so that ``lorabench --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

# name -> module; order is the order --help lists them in.
COMMANDS: dict[str, str] = {
    "list": "lorabench.cli.list_cmd",
    "run": "lorabench.cli.run_cmd",
    "search": "lorabench.cli.search_cmd",
    "report": "lorabench.cli.report_cmd",
    "regress": "lorabench.cli.regress_cmd",
    "export": "lorabench.cli.export_cmd",
}


def version() -> str:
    """The installed lorabench's version (``"0.1.0"``), from its package metadata; ``"unknown"``
    when lorabench runs from a source tree that was never installed (``pip install -e .``
    records it)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("lorabench")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The ``lorabench`` parser with one subcommand per entry of :data:`COMMANDS`; imports each
    command's module (not its heavy dependencies)."""
    parser = argparse.ArgumentParser(
        prog="lorabench",
        description=(
            "Benchmark adaptive-rank LoRA variants (LoRA, AdaLoRA, DoRA, VeRA, DyLoRA) on "
            "GLUE-style tasks under equal compute budgets."
        ),
        epilog="Run 'lorabench COMMAND --help' for a command's options.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {version()}",
        help="print lorabench's version and exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code: the
    command's, 2 with no command (after printing help), 130 when interrupted by Ctrl-C, 143
    when stopped by SIGTERM. An interruption prints one message, not a
    traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from lorabench.interrupts import signal_name, stop_signals_raise

    try:
        # SIGTERM (a scheduler, `timeout`, `kill`) stops any command as Ctrl-C does: model loading
        # and checks before a suite, a search's trials, a report being written.
        with stop_signals_raise():
            return int(args._module.run(args) or 0)
    except KeyboardInterrupt as exc:
        # A suite says how many runs it finished (SuiteInterrupted.message); others say this.
        signum = int(getattr(exc, "signum", signal.SIGINT))
        message = getattr(exc, "message", "") or (
            f"interrupted ({signal_name(signum)}): finished runs are saved; re-run the same "
            "command to resume."
        )
        print(f"\n{message}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))


if __name__ == "__main__":
    sys.exit(main())
