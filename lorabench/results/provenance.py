"""Where a run ran: versions, git commit of the lorabench source, device, host.

Stamped on every :class:`~lorabench.results.records.RunRecord` so a result can be traced to the
code and hardware that produced it. Collected once per process (it cannot change mid-run) and
never raises: a missing package or a non-git install yields ``None`` for that entry.
"""

from __future__ import annotations

import copy
import functools
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

# Distribution names whose versions decide results (training, tokenisation, metrics, data
# loading); absent ones are recorded as None.
PACKAGES = (
    "lorabench",
    "torch",
    "transformers",
    "tokenizers",
    "peft",
    "optuna",
    "numpy",
    "scikit-learn",
    "scipy",
    "pandas",
    "datasets",
)
GIT_TIMEOUT_S = 5
# ``git status`` of a whole checkout, untracked files included, can take longer.
WORKTREE_GIT_TIMEOUT_S = 10


def collect_environment() -> dict[str, Any]:
    """A JSON-able description of this process's software and hardware (cached; a fresh copy)."""
    return copy.deepcopy(_collect())


@functools.lru_cache(maxsize=1)
def _collect() -> dict[str, Any]:
    git = git_state(Path(__file__).resolve().parents[2]) or {}
    device = _device()
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "git_commit": git.get("commit"),
        "git_dirty": git.get("dirty"),
        "device": device,
        "torch_threads": device.pop("torch_threads", None),
        "hostname": socket.gethostname(),
    }


def package_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (e.g. ``"torch"``), or None if it is absent."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def git_state(source_root: Path) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the checkout at ``source_root``; None when it is not one.

    Only a checkout whose top level *is* ``source_root`` counts: an installed copy of lorabench
    inside someone else's repository must not report that repository's commit.
    """
    try:
        # Tracked changes only: untracked outputs (runs/, reports/) do not change the code.
        tree = git_worktree(source_root, untracked=False, timeout=GIT_TIMEOUT_S)
        if tree.root is None or Path(tree.root) != source_root.resolve() or tree.commit is None:
            return None
        return {"commit": tree.commit, "dirty": tree.dirty if tree.status_known else None}
    except Exception:
        return None


@dataclass
class GitWorktree:
    """The state of a git checkout: its top folder, commit, branch and changed files."""

    root: str | None  # None: not inside a git checkout
    commit: str | None
    branch: str | None = None
    dirty_files: list[str] = field(default_factory=list)
    status_known: bool = True  # False: ``git status`` failed, so dirty_files is not known

    @property
    def is_repo(self) -> bool:
        """Whether the path is inside a git checkout."""
        return self.root is not None

    @property
    def dirty(self) -> bool:
        """Whether ``git status`` showed changes (other than the ignored paths)."""
        return bool(self.dirty_files)


def git_worktree(
    path: str | Path = ".",
    *,
    ignore: Sequence[str | Path] = (),
    untracked: bool = True,
    timeout: float = WORKTREE_GIT_TIMEOUT_S,
) -> GitWorktree:
    """Commit, branch and changed files (``git status --porcelain``, untracked files included
    unless ``untracked`` is False) of the checkout containing ``path``.

    Paths in ``ignore`` (and anything under them) are not counted as changes: they are what the
    command itself writes (its output folder, the baseline file it replaces).
    """
    cwd = Path(path).resolve()
    top = git_output(cwd, "rev-parse", "--show-toplevel", timeout=timeout)
    if top is None:
        return GitWorktree(root=None, commit=None)
    root = Path(top.strip()).resolve()
    head = git_output(root, "rev-parse", "--verify", "--quiet", "HEAD", timeout=timeout)
    commit = (head or "").strip() or None
    abbrev = git_output(root, "rev-parse", "--abbrev-ref", "HEAD", timeout=timeout)
    branch = (abbrev or "").strip() or None
    status = git_output(
        root,
        "status",
        "--porcelain=v1",
        "-z",
        f"--untracked-files={'all' if untracked else 'no'}",
        timeout=timeout,
    )
    ignored = [Path(p).resolve() for p in ignore]
    dirty: list[str] = []
    items = (status or "").split("\0")
    i = 0
    while i < len(items):
        item = items[i]
        i += 1
        if len(item) < 4:
            continue
        code, name = item[:2], item[3:]
        if "R" in code or "C" in code:
            i += 1  # -z puts a rename's source path in the next field
        full = (root / name).resolve()
        if any(full == p or p in full.parents for p in ignored):
            continue
        dirty.append(name)
    return GitWorktree(
        root=str(root),
        commit=commit,
        branch=branch,
        dirty_files=sorted(dirty),
        status_known=status is not None,
    )


def git_output(cwd: Path, *args: str, timeout: float = GIT_TIMEOUT_S) -> str | None:
    """``git -C cwd ARGS``'s stdout, unstripped (porcelain output starts with spaces), or None
    when git is missing, fails or times out."""
    try:
        done = subprocess.run(
            ["git", "-C", str(cwd), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _device() -> dict[str, Any]:
    """``kind`` ("cuda" or "cpu") and ``name`` of the device runs train on, plus CPU details."""
    cpu = _cpu_model()
    device: dict[str, Any] = {"kind": "cpu", "name": cpu, "cpu": cpu, "cpu_count": os.cpu_count()}
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch
        except Exception:
            return device
    device["torch_threads"] = torch.get_num_threads()
    try:
        if torch.cuda.is_available():
            device.update(
                kind="cuda",
                name=torch.cuda.get_device_name(0),
                cuda_count=torch.cuda.device_count(),
                cuda_version=torch.version.cuda,
            )
    except Exception:  # a broken driver must not stop a run from being recorded
        device["cuda_error"] = True
    return device


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
