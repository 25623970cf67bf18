"""A short, stable fingerprint of the data a run actually reads.

The fingerprint hashes every loaded split (after ``--max-train-examples`` /
``--max-eval-examples``): split names, column names, dtypes and every cell, through pandas'
vectorised row hashing, so changed rows, flipped labels or a truncated file all give a new
fingerprint while the same files read from another folder give the same one. Generated tasks
also hash what they plant beside the rows (the true ranks).
"""

from __future__ import annotations

import hashlib
import json

import pandas as pd

from lorabench.tasks.data import TaskData

FINGERPRINT_CHARS = 16


def data_fingerprint(data: TaskData) -> str:
    """The fingerprint of ``data``'s splits (and planted ranks); 16 hex characters."""
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
        digest.update(json.dumps({str(k): int(v) for k, v in true_ranks.items()}, sort_keys=True).encode())
    return digest.hexdigest()[:FINGERPRINT_CHARS]
