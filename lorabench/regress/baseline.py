"""The baseline file of ``lorabench regress``: its format, and building one from a suite's runs.

A *baseline* is a JSON file holding a suite (its :class:`SuiteConfig` as data), the provenance
of the results (git commit and dirty state, date, package versions, seeds, machine and torch
threads) and, per variant x task, the primary score of every seed with its mean and std, the
metric's name and its direction. :func:`build_baseline` makes one from a suite's records,
:meth:`Baseline.save` / :meth:`Baseline.load` write and read it (every problem with a file is a
:class:`BaselineError` naming the file, the key or value at fault, and the fix).

Which record belongs to which baseline entry is decided by :func:`match_key` alone.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import statistics
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorabench.harness.config import RunConfig
from lorabench.harness.suite import SuiteConfig, SuiteConfigError, VariantEntry
from lorabench.results.provenance import GitWorktree, collect_environment
from lorabench.results.records import RunRecord

BASELINE_KIND = "lorabench-baseline"
BASELINE_SCHEMA_VERSION = 1
DEFAULT_TOLERANCE = 0.02
DEFAULT_NOISE_K = 2.0

Key = tuple[str, str]  # (variant label, task)


class BaselineError(ValueError):
    """A baseline file that cannot be used; the message names the file, the problem and the fix."""


# -- the baseline --------------------------------------------------------------------------------
@dataclass
class BaselineEntry:
    """One variant config x task of a baseline: the primary score of every seed."""

    variant: str
    task: str
    metric: str
    higher_is_better: bool
    scores: dict[int, float]  # seed -> primary score
    variant_config: dict[str, Any] = field(default_factory=dict)
    run_ids: dict[int, str] = field(default_factory=dict)
    variant_version: str = ""
    task_version: str = ""
    train_seconds: float | None = None  # mean over seeds, for the record
    tolerance: float | None = None  # overrides the baseline's tolerance for this entry

    @property
    def label(self) -> str:
        """The variant with its config overrides, e.g. ``name(key=value)``."""
        return VariantEntry(self.variant, dict(self.variant_config)).label

    @property
    def key(self) -> Key:
        """(variant label, task): what the entry is found by (see :func:`group_records`)."""
        return (self.label, self.task)

    @property
    def mean(self) -> float:
        """Mean score over seeds."""
        return statistics.fmean(self.scores.values())

    @property
    def std(self) -> float | None:
        """Sample std over seeds (None with one seed)."""
        return statistics.stdev(self.scores.values()) if len(self.scores) >= 2 else None

    def to_dict(self) -> dict[str, Any]:
        """The entry as JSON-able data (with its label, mean and std, for readers of the file)."""
        out: dict[str, Any] = {
            "variant": self.variant,
            "variant_config": dict(self.variant_config),
            "label": self.label,
            "task": self.task,
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "scores": {str(s): v for s, v in sorted(self.scores.items())},
            "mean": self.mean,
            "std": self.std,
            "run_ids": {str(s): v for s, v in sorted(self.run_ids.items())},
            "variant_version": self.variant_version,
            "task_version": self.task_version,
            "train_seconds": self.train_seconds,
        }
        if self.tolerance is not None:
            out["tolerance"] = self.tolerance
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str) -> BaselineEntry:
        """Reads an entry; ``where`` (file and position) starts every :class:`BaselineError`."""
        if not isinstance(data, dict):
            raise BaselineError(f"{where}: an entry must be a mapping, got {type(data).__name__}")
        missing = [
            k for k in ("variant", "task", "metric", "higher_is_better", "scores") if k not in data
        ]
        if missing:
            raise BaselineError(f"{where}: entry lacks {missing}")
        scores = _seed_map(data["scores"], f"{where}.scores", float)
        if not scores:
            raise BaselineError(f"{where}: entry has no scores")
        tolerance = data.get("tolerance")
        if tolerance is not None:
            tolerance = _non_negative(tolerance, f"{where}.tolerance")
        return cls(
            variant=str(data["variant"]),
            task=str(data["task"]),
            metric=str(data["metric"]),
            higher_is_better=bool(data["higher_is_better"]),
            scores=scores,
            variant_config=dict(data.get("variant_config") or {}),
            run_ids=_seed_map(data.get("run_ids") or {}, f"{where}.run_ids", str),
            variant_version=str(data.get("variant_version") or ""),
            task_version=str(data.get("task_version") or ""),
            train_seconds=data.get("train_seconds"),
            tolerance=tolerance,
        )


@dataclass
class Baseline:
    """A suite, its results per variant x task, the thresholds of the rule and the provenance."""

    suite: SuiteConfig
    entries: list[BaselineEntry]
    provenance: dict[str, Any] = field(default_factory=dict)
    tolerance: float = DEFAULT_TOLERANCE
    noise_k: float = DEFAULT_NOISE_K
    schema_version: int = BASELINE_SCHEMA_VERSION

    def entry(self, variant_label: str, task: str) -> BaselineEntry | None:
        """The entry of ``variant_label`` on ``task``, or None."""
        return next((e for e in self.entries if e.key == (variant_label, task)), None)

    def to_dict(self) -> dict[str, Any]:
        """The baseline as the JSON-able data :meth:`save` writes."""
        suite = self.suite.to_dict()
        for local in (
            "out",
            "results",
        ):  # where one machine kept its outputs is not part of the suite
            suite.pop(local, None)
        # Always explicit: a baseline without the key predates paper recipes (see from_dict).
        suite["recipes"] = self.suite.recipes
        return {
            "kind": BASELINE_KIND,
            "schema_version": self.schema_version,
            "suite": suite,
            "rule": {"tolerance": self.tolerance, "noise_k": self.noise_k},
            "provenance": self.provenance,
            "entries": [e.to_dict() for e in self.entries],
        }

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "baseline") -> Baseline:
        """Validates and reads baseline data; every problem is a :class:`BaselineError`."""
        fix = "regenerate it with 'lorabench regress --update-baseline'"
        if not isinstance(data, dict):
            raise BaselineError(
                f"{where}: a baseline is a JSON object, got {type(data).__name__}; {fix}"
            )
        if data.get("kind") != BASELINE_KIND:
            raise BaselineError(
                f"{where}: not a lorabench baseline (kind={data.get('kind')!r}, "
                f"expected {BASELINE_KIND!r}); {fix}"
            )
        version = data.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise BaselineError(f"{where}: schema_version={version!r} must be an integer; {fix}")
        if version > BASELINE_SCHEMA_VERSION:
            raise BaselineError(
                f"{where}: baseline schema {version} is newer than this lorabench reads "
                f"({BASELINE_SCHEMA_VERSION}); "
                "upgrade lorabench (pip install -U lorabench)"
            )
        for key in ("suite", "entries"):
            if key not in data:
                raise BaselineError(f"{where}: missing {key!r}; {fix}")
        suite_data = data["suite"]
        if isinstance(suite_data, dict) and "recipes" not in suite_data:
            # Written before variants declared paper recipes: its runs trained the suite's
            # settings as written, and must be matched (and re-run) that way.
            suite_data = {**suite_data, "recipes": "none"}
        try:
            suite = SuiteConfig.from_dict(suite_data, where=f"{where}: suite")
        except SuiteConfigError as exc:
            raise BaselineError(str(exc)) from None
        if not isinstance(data["entries"], list) or not data["entries"]:
            raise BaselineError(f"{where}: 'entries' must be a non-empty list; {fix}")
        entries = [
            BaselineEntry.from_dict(e, f"{where}: entries[{i}]")
            for i, e in enumerate(data["entries"])
        ]
        rule = data.get("rule") or {}
        if not isinstance(rule, dict):
            raise BaselineError(
                f"{where}: 'rule' must be a mapping like {{tolerance: 0.02, noise_k: 2}}"
            )
        provenance = data.get("provenance") or {}
        if not isinstance(provenance, dict):
            raise BaselineError(f"{where}: 'provenance' must be a mapping")
        return cls(
            suite=suite,
            entries=entries,
            provenance=provenance,
            tolerance=_non_negative(
                rule.get("tolerance", DEFAULT_TOLERANCE), f"{where}: rule.tolerance"
            ),
            noise_k=_non_negative(rule.get("noise_k", DEFAULT_NOISE_K), f"{where}: rule.noise_k"),
            schema_version=version,
        )

    def save(self, path: str | Path) -> Path:
        """Writes the baseline as indented JSON, atomically (a crash never leaves half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2, default=str) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> Baseline:
        """Reads and validates a baseline file; every problem is a :class:`BaselineError`."""
        path = Path(path)
        if not path.is_file():
            raise BaselineError(
                f"baseline file {str(path)!r} does not exist; create it with "
                f"'lorabench regress --update-baseline --baseline {path} --preset ci' "
                "(or --config SUITE.yaml)"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise BaselineError(
                f"{path}: not a text file ({exc}); regenerate it with "
                "'lorabench regress --update-baseline'"
            ) from None
        except json.JSONDecodeError as exc:
            raise BaselineError(
                f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                "the file is corrupt or was cut short; restore it from git or regenerate it with "
                "'lorabench regress --update-baseline'"
            ) from None
        return cls.from_dict(data, where=str(path))


def _seed_map(value: Any, where: str, kind: type) -> dict[int, Any]:
    if not isinstance(value, dict):
        raise BaselineError(f'{where} must map seeds to values, e.g. {{"0": 0.81}}')
    out: dict[int, Any] = {}
    for seed, item in value.items():
        try:
            out[int(seed)] = kind(item)
        except (TypeError, ValueError):
            raise BaselineError(
                f"{where}: seed {seed!r} -> {item!r} is not a {kind.__name__}"
            ) from None
        if kind is float and not math.isfinite(out[int(seed)]):
            raise BaselineError(f"{where}: seed {seed} has a non-finite score {item!r}")
    return out


def _non_negative(value: Any, where: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise BaselineError(f"{where}={value!r} must be a number >= 0")
    return float(value)


# -- matching records to the suite ---------------------------------------------------------------
def match_key(cfg: RunConfig) -> str:
    """The key that matches runs to the suite's variant configs x tasks; the only place that
    decides which stored run counts for which baseline entry.

    It is :attr:`RunConfig.experiment_id`: the run's settings (the variant's config after its
    defaults, the task by name, the model, the budget and the training recipe) without the seed
    and without fingerprints, so the seeds of one variant x task share it, restating a default
    changes nothing, and records written by another command (``lorabench run``) or by an older
    release with the same settings count too. :func:`group_records` applies it to the suite's
    configs and to each record's config; a baseline entry is then found by the (variant label,
    task) of its suite cell (:attr:`BaselineEntry.key`).
    """
    return cfg.experiment_id


def _suite_keys(suite: SuiteConfig) -> dict[str, Key]:
    """``{match key: (variant label, task)}`` for every variant config x task of ``suite``."""
    out: dict[str, Key] = {}
    for entry in suite.variants:
        for task in suite.tasks:
            # Through the suite, so that a variant's paper recipe resolves as it does for the run.
            out[match_key(suite.run_config(entry, task, 0))] = (entry.label, task)
    return out


def group_records(
    suite: SuiteConfig, records: Iterable[RunRecord]
) -> dict[Key, dict[int, RunRecord]]:
    """The records of ``suite``'s runs by (variant label, task) and seed; others are ignored.

    A record belongs to a variant config x task when their :func:`match_key` is equal. A
    finished record wins over a failed one of the same seed (as in the results store).
    """
    from lorabench.harness.runner import run_config_of

    keys = _suite_keys(suite)
    groups: dict[Key, dict[int, RunRecord]] = {}
    for record in records:
        try:
            key = keys.get(match_key(run_config_of(record)))
        except Exception:  # a record from an older lorabench whose config no longer parses
            continue
        if key is None:
            continue
        seeds = groups.setdefault(key, {})
        if record.seed not in seeds or record.status == "finished":
            seeds[record.seed] = record
    return groups


# -- building a baseline -------------------------------------------------------------------------
def build_baseline(
    suite: SuiteConfig,
    records: Iterable[RunRecord],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    noise_k: float = DEFAULT_NOISE_K,
    provenance: dict[str, Any] | None = None,
) -> Baseline:
    """A baseline from the records of a complete run of ``suite``.

    Raises:
        BaselineError: a run failed or is missing (a baseline must hold every variant x task x
            seed of the suite, or later checks would compare against nothing).
    """
    groups = group_records(suite, records)
    entries: list[BaselineEntry] = []
    problems: list[str] = []
    for variant in suite.variants:
        for task in suite.tasks:
            key = (variant.label, task)
            runs = groups.get(key, {})
            for seed in suite.seeds:
                record = runs.get(seed)
                if record is None:
                    problems.append(f"{variant.label} on {task}, seed {seed}: no run")
                elif record.status != "finished" or record.score is None:
                    problems.append(
                        f"{variant.label} on {task}, seed {seed}: {record.status}: "
                        f"{_first_line(record.error)}"
                    )
            if problems:
                continue
            chosen = [runs[s] for s in suite.seeds]
            seconds = [
                r.spent.get("train_seconds")
                for r in chosen
                if (r.spent or {}).get("train_seconds") is not None
            ]
            entries.append(
                BaselineEntry(
                    variant=variant.variant,
                    variant_config=dict(variant.config),
                    task=task,
                    metric=chosen[0].primary_metric,
                    higher_is_better=chosen[0].higher_is_better,
                    scores={r.seed: float(r.score) for r in chosen},  # type: ignore[arg-type]
                    run_ids={r.seed: r.run_id for r in chosen},
                    variant_version=chosen[0].variant_version,
                    task_version=chosen[0].task_version,
                    train_seconds=statistics.fmean(seconds) if seconds else None,
                )
            )
    if problems:
        raise BaselineError(
            "cannot write a baseline from an incomplete run; fix these and re-run (finished runs "
            "are kept): " + "; ".join(problems)
        )
    return Baseline(
        suite=suite,
        entries=entries,
        provenance=dict(provenance or {}),
        tolerance=tolerance,
        noise_k=noise_k,
    )


def _first_line(text: str | None) -> str:
    """The first line of an error message (its traceback left out)."""
    return (text or "").strip().splitlines()[0] if (text or "").strip() else "(no error message)"


# -- provenance ----------------------------------------------------------------------------------
def collect_provenance(
    suite: SuiteConfig, tree: GitWorktree, *, allow_dirty: bool = False
) -> dict[str, Any]:
    """Where a baseline (or a checked run) came from: git, date, versions, seeds, machine."""
    import torch

    env = collect_environment()
    device = dict(env.get("device") or {})
    return {
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": {
            "commit": tree.commit,
            "branch": tree.branch,
            "dirty": tree.dirty if tree.is_repo else None,
            "dirty_files": list(tree.dirty_files),
            "allow_dirty": allow_dirty,
            "is_repo": tree.is_repo,
        },
        "lorabench_source": {"commit": env.get("git_commit"), "dirty": env.get("git_dirty")},
        "packages": env.get("packages") or {},
        "python": env["python"],
        "platform": env["platform"],
        "machine": {
            "cpu": device.get("cpu"),
            "cpu_count": device.get("cpu_count"),
            "device": device.get("kind"),
            "device_name": device.get("name"),
            # Now, not env["torch_threads"]: the environment is collected once per process, and
            # the command sets the thread count after that.
            "torch_threads": torch.get_num_threads(),
        },
        "seeds": list(suite.seeds),
    }
