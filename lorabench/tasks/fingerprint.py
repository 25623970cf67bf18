"""A short, stable fingerprint of the data a run actually reads.

The fingerprint hashes every loaded split (after ``--max-train-examples`` /
``--max-eval-examples``): split names, column names, dtypes and every cell, through pandas'
vectorised row hashing, so changed rows, flipped labels or a truncated file all give a new
fingerprint while the same files read from another folder give the same one. Generated tasks
also hash what they plant beside the rows (the true ranks).

:func:`known_fingerprint` finds a fingerprint without loading. Generated data (planted-rank
tasks) is a pure function of its generator's key (recipe, model fingerprint, seed), so its
fingerprint *is* the hash of that key and the limits, whether or not the rows were generated yet.
The seed is left out of it: a generated task draws a new instance for every run seed by design,
and the seed is recorded with the run already, so the seeds of one suite row read "the same data"
(the same generator, recipe and model) and stay one row of a report, one cell of a comparison.
For files, it comes from a small memo (``fingerprints.json`` in the cache folder) of
fingerprints computed before, keyed by each file's path, size and modification time. A suite
that runs again therefore neither reads nor hashes its data to skip its finished runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from lorabench.tasks.data import GENERATED_KEYS, SOURCE_FILES, LoadRequest, TaskData, cache_root
from lorabench.tasks.spec import TaskSpec

MEMO_FILE = "fingerprints.json"
MEMO_LIMIT = 5000  # entries kept; the oldest go first

FINGERPRINT_CHARS = 16


def data_fingerprint(data: TaskData) -> str:
    """The fingerprint of ``data``'s loaded splits (and planted ranks); 16 hex characters.

    For generated data use :func:`known_fingerprint`, which defines their fingerprint.
    """
    digest = hashlib.sha256()
    for name in sorted(data.splits):
        frame = data.splits[name]
        header = {"split": name, "columns": [str(c) for c in frame.columns], "rows": len(frame)}
        header["dtypes"] = [str(t) for t in frame.dtypes]
        digest.update(json.dumps(header, sort_keys=True).encode())
        # index=False: a split's row labels are an artefact of loading, not data.
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    true_ranks = data.extras.get("true_ranks")
    if true_ranks is not None:
        digest.update(
            json.dumps({str(k): int(v) for k, v in true_ranks.items()}, sort_keys=True).encode()
        )
    return digest.hexdigest()[:FINGERPRINT_CHARS]


def _limits(request: LoadRequest) -> dict[str, Any]:
    return {"train": request.max_train_examples, "eval": request.max_eval_examples}


def _generated_fingerprint(spec: TaskSpec, request: LoadRequest) -> str | None:
    # Seed 0 stands for every seed (see the module docstring): the key without the run's seed.
    key = GENERATED_KEYS[spec.source](spec, dataclasses.replace(request, seed=0))
    if key is None:
        return None
    blob = json.dumps(
        {"task": spec.name, "version": spec.version, "limits": _limits(request), "generated": key},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:FINGERPRINT_CHARS]


def _memo_key(spec: TaskSpec, request: LoadRequest) -> str | None:
    """The key of this load's fingerprint in the memo: the task, the limits and the state of
    every file the source reads; ``None`` when the source cannot list them."""
    if spec.source not in SOURCE_FILES:
        return None
    try:
        files = SOURCE_FILES[spec.source](spec, request)
        if not files:
            return None
        stats = sorted(
            (str(Path(f).resolve()), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files
        )
    except OSError:
        return None  # a missing file or folder: loading will say so
    blob = json.dumps(
        {"task": spec.name, "version": spec.version, "limits": _limits(request), "files": stats},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _memo_path() -> Path:
    return cache_root() / MEMO_FILE


def _read_memo() -> dict[str, str]:
    try:
        data = json.loads(_memo_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def known_fingerprint(spec: TaskSpec, request: LoadRequest) -> str | None:
    """The fingerprint of what loading ``spec`` for ``request`` would read, when it is known
    without loading (generated data; unchanged files fingerprinted before); else ``None``."""
    if spec.source in GENERATED_KEYS:
        return _generated_fingerprint(spec, request)
    key = _memo_key(spec, request)
    return None if key is None else _read_memo().get(key)


def remember_fingerprint(spec: TaskSpec, request: LoadRequest, fingerprint: str) -> None:
    """Keeps ``fingerprint`` for the next :func:`known_fingerprint` of the same unchanged files.

    Best effort: a read-only cache folder only means the next run hashes again.
    """
    key = _memo_key(spec, request)
    if key is None:
        return
    memo = _read_memo()
    memo.pop(key, None)
    memo[key] = fingerprint
    while len(memo) > MEMO_LIMIT:
        memo.pop(next(iter(memo)))
    path = _memo_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=MEMO_FILE, suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as handle:
            json.dump(memo, handle)
        os.replace(tmp, path)  # readers never see half a file
    except OSError:
        pass
