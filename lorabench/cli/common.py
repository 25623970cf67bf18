"""Arguments several subcommands share, defined once."""

from __future__ import annotations

import argparse

THREADS_HELP = (
    "CPU threads for torch (default: torch's choice; on a shared machine fewer threads than "
    "cores avoids oversubscription)"
)


def add_threads_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--threads N``: torch's CPU threads for the command."""
    parser.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)


def threads_error(threads: int | None) -> str | None:
    """Why ``--threads`` is unusable (``None`` when it is fine or not given)."""
    if threads is not None and threads < 1:
        return f"--threads {threads} must be >= 1 (e.g. --threads 1)"
    return None


def set_threads(threads: int | None) -> None:
    """Applies ``--threads`` (nothing when it was not given)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
