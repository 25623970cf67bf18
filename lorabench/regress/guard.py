"""The guards of ``lorabench regress``: a baseline records clean code, a check uses fresh runs.

* :func:`dirty_tree_problem`: ``--update-baseline`` refuses to write a baseline from a working
  tree with uncommitted changes (or from outside a checkout), so that the commit it records is
  the code that produced the numbers.
* :class:`GuardedStore` and :func:`code_fingerprint`: a check resumed in the same output folder
  reuses only the stored runs produced by the current code; the others are run again, so a
  stale result can never pass the check.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorabench.results.provenance import GitWorktree, package_version

if TYPE_CHECKING:
    from lorabench.harness.runner import RecordStore
    from lorabench.harness.suite import SuiteConfig
    from lorabench.results.records import RunRecord

STATE_FILE = "regress-state.json"
DIRTY_FILES_SHOWN = 20
# The packages whose versions, besides the source files, decide a suite's scores.
FINGERPRINT_PACKAGES = ("torch", "transformers", "numpy")


# -- writing a baseline from committed code ------------------------------------------------------
def describe_dirty(tree: GitWorktree) -> str:
    """The changed files of ``tree``, comma-separated (the first 20, then how many more)."""
    shown = tree.dirty_files[:DIRTY_FILES_SHOWN]
    more = len(tree.dirty_files) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def dirty_tree_problem(tree: GitWorktree, cwd: str | Path) -> str | None:
    """Why a baseline must not be written from ``tree`` (without ``--allow-dirty``), or None.

    ``cwd`` is the folder the command runs in (named when it is not inside a git checkout).
    """
    if not tree.is_repo:
        return (
            f"{cwd} is not inside a git checkout, so the baseline could not record "
            "which code produced it; "
            "run from the project's checkout, or pass --allow-dirty to write it anyway"
        )
    if tree.dirty:
        return (
            f"the working tree at {tree.root} has uncommitted changes "
            f"({describe_dirty(tree)}); a baseline must record the commit that produced it. "
            "Commit or stash them, or pass --allow-dirty (recorded in the baseline)"
        )
    return None


# -- resuming safely -----------------------------------------------------------------------------
def code_fingerprint(suite: SuiteConfig) -> str:
    """A hash of the code that decides the suite's scores: lorabench's own source files, the
    source files of the suite's variant classes (plugins included) and the torch, transformers
    and numpy versions. A stored result is only reused when this has not changed."""
    import lorabench
    from lorabench.variants import VARIANTS

    digest = hashlib.sha256()
    package = Path(lorabench.__file__).resolve().parent
    files = sorted(p for p in package.rglob("*") if p.suffix in (".py", ".yaml") and p.is_file())
    for name in sorted({e.variant for e in suite.variants}):
        try:
            cls = VARIANTS.get(name)
            digest.update(f"variant {name}: {cls.__module__}.{cls.__qualname__}".encode())
            source = inspect.getsourcefile(cls)
        except Exception:  # unknown name or no source file: the run itself will say so
            source = None
        if source:
            files.append(Path(source).resolve())
    for path in files:
        digest.update(str(path.relative_to(package) if package in path.parents else path).encode())
        with contextlib.suppress(OSError):  # a file removed meanwhile: hash the rest
            digest.update(path.read_bytes())
    for dist in FINGERPRINT_PACKAGES:
        version = package_version(dist)
        if version is not None:  # an absent package adds nothing
            digest.update(f"{dist}={version}".encode())
    return digest.hexdigest()[:16]


class GuardedStore:
    """A results store that only counts a run as finished if this code produced it.

    ``run_suite`` skips finished run_ids, which makes a re-run with the same ``--out`` resume. A
    run_id does not change when the code does, so reusing every stored result would let a stale
    result from before a code change pass the check. This wrapper remembers, in ``state_path``,
    the :func:`code_fingerprint` each run was produced with, and reports only the runs with the
    current fingerprint as finished; the others are run again (and replace the stored record).
    """

    def __init__(self, store: RecordStore, state_path: str | Path, fingerprint: str) -> None:
        """Wraps ``store``; ``state_path`` keeps the fingerprint of every run added here."""
        self.store = store
        self.state_path = Path(state_path)
        self.fingerprint = fingerprint
        self._runs: dict[str, str] = {}
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
            self._runs = {str(k): str(v) for k, v in (data.get("runs") or {}).items()}
        except (OSError, ValueError, AttributeError):
            self._runs = {}  # no state (or an unreadable one): nothing stored is trusted
        self.stale: set[str] = set()

    def add(self, record: RunRecord) -> Any:
        """Stores ``record`` and remembers that the current code produced it."""
        stored = self.store.add(record)
        self._runs[record.run_id] = self.fingerprint
        self._save()
        return stored

    def get(self, run_id: str) -> RunRecord | None:
        """The stored record of ``run_id``, or None."""
        return self.store.get(run_id)

    def finished_ids(self) -> set[str]:
        """The finished runs produced by the current code; the others are left in ``stale``."""
        finished = self.store.finished_ids()
        fresh = {run_id for run_id in finished if self._runs.get(run_id) == self.fingerprint}
        self.stale = finished - fresh
        return fresh

    def _save(self) -> None:
        """Writes the fingerprints per run_id, atomically."""
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {"fingerprints_of": "lorabench code per run_id", "runs": self._runs}, indent=1
            ),
            encoding="utf-8",
        )
        os.replace(tmp, self.state_path)
