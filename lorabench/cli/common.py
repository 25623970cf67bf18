"""Arguments several subcommands share, defined once."""

from __future__ import annotations

import argparse
from pathlib import Path

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


def out_dir_error(out: str | Path | None, flag: str = "--out") -> str | None:
    """Why ``out`` cannot be the output folder (``None`` when it is a folder or does not exist
    yet: it is created): an existing file would end in a FileExistsError when written."""
    if out is None:
        return None
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        return (
            f"{flag} {str(out)!r} is an existing file, not a folder; give a folder "
            f"(created if missing), e.g. {flag} {path.with_name(path.name + '-out')}"
        )
    for parent in path.parents:  # "--out notes.txt/run": a file where a folder must be
        if parent.exists():
            if not parent.is_dir():
                return (
                    f"{flag} {str(out)!r}: {str(parent)!r} is an existing file, not a folder; "
                    "give a folder path whose parents are folders"
                )
            break
    return None
