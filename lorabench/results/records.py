"""The typed record of one run: everything a report, a search or a regression check needs.

One :class:`RunRecord` per (variant config, task, model, training config, budget, seed). Its
``run_id`` is a hash of that full configuration, so a resumed suite recognises finished runs and
never duplicates them. Records are plain data (JSON-serialisable) so they survive any database.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

RunStatus = Literal["finished", "failed", "pruned"]  # pruned: stopped early by a search pruner

# 1: release 0.1 (no data or model fingerprint; a custom task named by its YAML path as typed).
# 2: ``data_fingerprint`` and ``model_fingerprint``; ``task`` is always the task's name.
RECORD_SCHEMA_VERSION = 2


def config_hash(config: dict[str, Any]) -> str:
    """A stable short hash of a JSON-serialisable config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class CurvePoint:
    """One point of a learning curve: training loss at ``step``, eval metrics when evaluated.

    ``loss`` is the task loss and ``reg_loss`` the adapter's regulariser (0.0 without one), each
    averaged over the steps since the previous point. Records written before ``reg_loss`` have
    None there, and their ``loss`` includes the regulariser.
    """

    step: int
    loss: float | None = None
    metrics: dict[str, float] | None = None
    seconds: float | None = None  # training seconds spent up to this step
    reg_loss: float | None = None  # the regulariser, apart from ``loss`` (None: not recorded)


@dataclass
class RunRecord:
    """One finished (or failed) run.

    Key fields are top-level so a DataFrame of records is directly useful; nested dicts hold the
    rest. ``metrics`` holds the final evaluation (for multi-split tasks, keys are prefixed with the
    split, e.g. ``"validation_matched/accuracy"``; ``score`` is always the primary metric on the
    primary split).
    """

    run_id: str
    status: RunStatus
    variant: str
    task: str
    model: str
    seed: int
    config: dict[str, Any]  # full run config: variant config, training config, budget, data
    variant_version: str = ""
    task_version: str = ""
    # What the run read: a hash of the loaded splits (after --max-*-examples) and of the model's
    # config and weight files. "" in records written before schema 2 (unknown).
    data_fingerprint: str = ""
    model_fingerprint: str = ""
    tag: str = ""  # free label for filtering ("quick", "search:lora:rte", "ci")
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    primary_metric: str = ""
    score: float | None = None  # primary metric on the primary eval split
    higher_is_better: bool = True
    rank: int | None = (
        None  # the variant config's nominal rank (r: AdaLoRA's initial, DyLoRA's maximum)
    )
    budget: dict[str, Any] = field(default_factory=dict)  # {"kind": "steps", "limit": 500}
    # steps, tokens, train_seconds, eval_seconds, flops, flops_per_step, peak_memory_bytes,
    # memory_kind ("cuda_peak_allocated" | "cpu_rss_peak")
    spent: dict[str, Any] = field(default_factory=dict)
    trainable_params: int = 0  # adapter + task head
    adapter_params: int = 0  # adapter only
    total_params: int = 0
    adapter_bytes: int = 0  # size of the saved adapter file
    curve: list[CurvePoint] = field(default_factory=list)
    ranks: dict[str, int] = field(default_factory=dict)  # final rank of every adapted matrix
    rank_scores: dict[int, dict[str, float]] | None = None  # DyLoRA: metrics at every eval rank
    true_ranks: dict[str, int] | None = None  # planted-rank tasks: the planted rank per matrix
    search: dict[str, Any] | None = None  # {"study": ..., "trial": ..., "role": "trial"|"confirm"}
    environment: dict[str, Any] = field(default_factory=dict)  # versions, git commit, device
    started_at: str = ""
    finished_at: str = ""
    schema_version: int = RECORD_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready plain data (curve points as dicts, ``rank_scores`` keyed by
        rank strings)."""
        out = dataclasses.asdict(self)
        if self.rank_scores is not None:  # JSON object keys are strings
            out["rank_scores"] = {str(k): v for k, v in self.rank_scores.items()}
        return out

    def to_json(self) -> str:
        """The record as JSON, keys sorted; values JSON cannot hold are written as strings."""
        return json.dumps(self.to_dict(), sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """Reads :meth:`to_dict`'s output back; fields this version does not know (from a newer
        release) are dropped, optional fields an older record lacks take their defaults."""
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            # Newer records may carry fields this version does not know; keep them readable.
            data = {k: v for k, v in data.items() if k in known}
        data["curve"] = [
            p if isinstance(p, CurvePoint) else CurvePoint(**p) for p in data.get("curve") or []
        ]
        if data.get("rank_scores") is not None:
            data["rank_scores"] = {int(k): v for k, v in data["rank_scores"].items()}
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> RunRecord:
        """Reads :meth:`to_json`'s output back (see :meth:`from_dict`)."""
        return cls.from_dict(json.loads(text))
