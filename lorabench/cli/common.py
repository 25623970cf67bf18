"""Arguments several subcommands share, defined once."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


# -- list options -------------------------------------------------------------------------------
LIST_FORMS = "comma-separated; spaces or a repeated flag work too"


def comma_list(text: str, item: Callable[[str], Any] = str, *, flag: str = "") -> list[Any]:
    """The values of one comma-separated token, ``"lora, dora,"`` -> ``["lora", "dora"]``,
    each converted by ``item`` (``int`` for seeds). Empty pieces are skipped, so a trailing
    comma is harmless. Raises :class:`argparse.ArgumentTypeError` naming the bad value."""
    values = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece:
            continue
        try:
            values.append(item(piece))
        except (TypeError, ValueError):
            kind = getattr(item, "__name__", "value")
            raise argparse.ArgumentTypeError(
                f"{piece!r} in {text!r} is not a valid {kind}"
                + (f", e.g. {flag} 0,1,2" if flag and item is int else "")
            ) from None
    return values


class CommaList(argparse.Action):
    """A list option in the one form every subcommand takes (see :func:`add_list_argument`):
    ``--variants lora,dora``, ``--variants lora dora`` and ``--variants lora --variants dora``
    all give ``["lora", "dora"]``; repeated values are kept once, in the order first given.

    ``item`` converts each value (``int`` for seeds); a bad value stops the parser with exit
    code 2 and a message naming it."""

    def __init__(
        self, option_strings: Sequence[str], dest: str, item: Callable[[str], Any] = str, **kwargs
    ) -> None:
        kwargs.setdefault("nargs", "+")
        super().__init__(option_strings, dest, **kwargs)
        self.item = item

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        tokens = [values] if isinstance(values, str) else list(values or [])
        flag = option_string or self.dest
        given: list[Any] = []
        for token in tokens:
            try:
                given += comma_list(str(token), self.item, flag=flag)
            except argparse.ArgumentTypeError as exc:
                raise argparse.ArgumentError(self, str(exc)) from None
        if tokens and not given:
            raise argparse.ArgumentError(self, f"{' '.join(map(str, tokens))!r} names no value")
        # A repeated flag adds to the values before it (the default is not a value given).
        before = getattr(namespace, self.dest, None)
        earlier = list(before) if isinstance(before, list) and before is not self.default else []
        setattr(namespace, self.dest, list(dict.fromkeys([*earlier, *given])))


def add_list_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *flags: str,
    item: Callable[[str], Any] = str,
    help: str,
    **kwargs: Any,
) -> argparse.Action:
    """Adds a list option (``--variants``, ``--tasks``, ``--seeds``...) that takes the comma form
    of every subcommand (:class:`CommaList`); ``help`` gets the accepted forms appended."""
    kwargs.setdefault("metavar", "LIST")
    return parser.add_argument(
        *flags, action=CommaList, item=item, help=f"{help} ({LIST_FORMS})", **kwargs
    )
