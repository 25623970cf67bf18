"""The Hugging Face Hub copy of GLUE (``nyu-mll/glue``) through ``datasets``, when reachable.

Without network this must fail in seconds, not hang in retries: before calling ``datasets`` the
Hub's host is probed with a short TCP connect (``LORABENCH_HUB_TIMEOUT`` seconds, default 5). In
offline mode (``HF_HUB_OFFLINE=1`` or ``HF_DATASETS_OFFLINE=1``) the probe is skipped and
``datasets`` answers from its local cache or fails at once. Every failure becomes a
:class:`~lorabench.tasks.sources.common.DataNotFoundError` telling the user to pass ``--data-dir``.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

import pandas as pd

from lorabench.tasks.sources.common import DataNotFoundError
from lorabench.tasks.sources.hf_local import check_label_names
from lorabench.tasks.spec import TaskSpec

DEFAULT_TIMEOUT_S = 5.0
_TRUE = {"1", "true", "yes", "on"}


def offline_mode() -> bool:
    """True when the user told Hugging Face libraries to stay offline."""
    return any(
        os.environ.get(v, "").strip().lower() in _TRUE
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def hub_endpoint() -> str:
    """The Hub's base URL: ``HF_ENDPOINT`` (a mirror) when set, else https://huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def probe_hub(timeout_s: float | None = None) -> str | None:
    """``None`` if the Hub's host accepts a TCP connection within the timeout, else the reason."""
    if timeout_s is None:
        timeout_s = float(os.environ.get("LORABENCH_HUB_TIMEOUT", DEFAULT_TIMEOUT_S))
    url = urlparse(hub_endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                outcome.append(None)
        except OSError as exc:
            outcome.append(f"{type(exc).__name__}: {exc}")

    # The connect timeout does not cover the DNS lookup, which can stall far longer on a machine
    # with no network: run both in a daemon thread and stop waiting at the timeout.
    thread = threading.Thread(target=connect, daemon=True, name="lorabench-hub-probe")
    thread.start()
    thread.join(timeout_s)
    if outcome and outcome[0] is None:
        return None
    detail = outcome[0] if outcome else "no answer"
    return f"{host}:{port} unreachable within {timeout_s:g}s ({detail})"


def _no_hub_error(spec: TaskSpec, reason: str) -> DataNotFoundError:
    hub = spec.options["hub"]
    folder = spec.options["folders"][0]
    return DataNotFoundError(
        f"task {spec.name!r}: no --data-dir given and the Hugging Face Hub copy "
        f"{hub['path']}/{hub['name']} cannot be loaded: {reason}.\n"
        f"Pass --data-dir DIR with either the original GLUE TSV layout (DIR/{folder}/train.tsv and "
        f"dev*.tsv, as download_glue_data.py writes it) or a local Hugging Face copy "
        f"(DIR/{hub['name']}/ saved with save_to_disk, or its parquet files)."
    )


def read_hub(spec: TaskSpec) -> tuple[dict[str, pd.DataFrame], str]:
    """The spec's splits from the Hub (or the ``datasets`` cache in offline mode)."""
    hub = spec.options["hub"]
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise _no_hub_error(
            spec, "the datasets package is not installed (pip install 'lorabench[hub]')"
        ) from exc
    if not offline_mode():
        reason = probe_hub()
        if reason is not None:
            raise _no_hub_error(
                spec,
                f"{reason}; if nyu-mll/glue is in your Hugging Face cache, set HF_HUB_OFFLINE=1",
            )
    try:
        loaded = load_dataset(hub["path"], hub["name"])
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
        mode = "offline mode, not in the local cache" if offline_mode() else "download failed"
        first_line = next(iter(str(exc).splitlines()), "")
        raise _no_hub_error(spec, f"{mode} ({type(exc).__name__}: {first_line})") from exc
    splits: dict[str, pd.DataFrame] = {}
    for split in (spec.train_split, *spec.eval_splits):
        if split not in loaded:
            raise DataNotFoundError(
                f"{hub['path']}/{hub['name']} has no split {split!r}; it has {sorted(loaded)}"
            )
        feature = loaded[split].features.get(spec.label_column)
        check_label_names(spec, getattr(feature, "names", None), f"{hub['path']}/{hub['name']}")
        splits[split] = loaded[split].to_pandas()
    return splits, f"hub:{hub['path']}/{hub['name']}"
