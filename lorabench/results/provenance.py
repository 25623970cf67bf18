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
from importlib import metadata
from pathlib import Path
from typing import Any

# Distribution names whose versions decide results (training, tokenisation, metrics, data
# loading); absent ones are recorded as None.
PACKAGES = (
    "lorabench", "torch", "transformers", "tokenizers", "peft", "optuna", "numpy", "scikit-learn",
    "scipy", "pandas", "datasets",
)
GIT_TIMEOUT_S = 5


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
        "packages": {name: _version(name) for name in PACKAGES},
        "git_commit": git.get("commit"),
        "git_dirty": git.get("dirty"),
        "device": device,
        "torch_threads": device.pop("torch_threads", None),
        "hostname": socket.gethostname(),
    }


def _version(distribution: str) -> str | None:
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
        top = _git(source_root, "rev-parse", "--show-toplevel")
        if top is None or Path(top).resolve() != source_root.resolve():
            return None
        commit = _git(source_root, "rev-parse", "HEAD")
        if commit is None:
            return None
        # Tracked changes only: untracked outputs (runs/, reports/) do not change the code.
        status = _git(source_root, "status", "--porcelain", "--untracked-files=no")
        return {"commit": commit, "dirty": None if status is None else bool(status)}
    except Exception:
        return None


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


def _git(cwd: Path, *args: str) -> str | None:
    out = git_output(cwd, *args)
    return None if out is None else out.strip()


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
