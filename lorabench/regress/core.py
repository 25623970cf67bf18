"""Regression checks: a suite's results against a stored baseline (``lorabench regress``).

A *baseline* is a JSON file holding a suite (its :class:`SuiteConfig` as data), the provenance
of the results (git commit and dirty state, date, package versions, seeds, machine and torch
threads) and, per variant x task, the primary score of every seed with its mean and std, the
metric's name and its direction. :func:`build_baseline` makes one from a suite's records,
:func:`compare` checks a later run of the same suite against it, and :class:`RegressionReport`
prints a table of what moved and writes JUnit XML and a Markdown summary for CI systems.

The rule, per variant x task (scores in the metric's own units; "drop" is oriented so that a
positive value is always worse, whatever the metric's direction):

* Paired, when the run and the baseline share at least two seeds (the usual case: the same suite
  re-run). Only the shared seeds count. ``d`` = mean over seeds of (baseline - current) and
  ``noise`` = std of those per-seed differences / sqrt(n), the standard error of ``d``. Pairing
  removes what the seed changes in both runs (the data order, the head and, for planted-rank
  tasks, the task itself), which is usually most of the between-seed spread.
* Unpaired otherwise: ``d`` = baseline mean - current mean and ``noise`` =
  sqrt(sb^2/nb + sc^2/nc) (Welch's standard error from the seed stds); a side with a single seed
  borrows the other side's std; with one seed on each side there is no noise estimate
  (``noise`` = 0) and the tolerance alone decides.
* A **regression** iff ``d > tolerance`` and ``d > k x noise``: the drop must matter (the
  tolerance, absolute, default 0.02 on a 0-1 score) and stand out of the seed noise (k, default
  2, about a one-sided 97.5% normal bound). An **improvement** iff ``-d`` passes the same two
  tests; it is reported, never failing. Anything else passes.
* A variant x task whose runs failed, that is missing from the run, or whose metric changed counts
  as a regression: a run that did not produce a comparable score is not a pass.

With two seeds the paired test reads: both seeds dropped, by more than the tolerance on average,
and the smaller drop is more than a third of the larger (for k = 2). With two or three seeds the
std of the differences is itself rough (it can be small by luck), so the tolerance is the guard
against flagging tiny changes: set it to the smallest drop you care about, above the run-to-run
noise of the machines involved (a re-run with the same seed, thread count and CPU reproduces
scores exactly; another CPU or thread count moves them a little). The tolerance and k are
stored in the baseline (an entry may carry its own tolerance) and can be overridden per check
(``--tolerance``, ``--noise-k``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import inspect
import json
import math
import os
import platform
import statistics
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lorabench.harness.config import RunConfig
from lorabench.harness.suite import SuiteConfig, SuiteConfigError, VariantEntry
from lorabench.results.provenance import git_output
from lorabench.results.records import RunRecord, config_hash

BASELINE_KIND = "lorabench-baseline"
BASELINE_SCHEMA_VERSION = 1
DEFAULT_TOLERANCE = 0.02
DEFAULT_NOISE_K = 2.0
JUNIT_FILE = "junit.xml"
SUMMARY_FILE = "summary.md"
STATE_FILE = "regress-state.json"
GIT_TIMEOUT_S = 10
# The columns of the comparison table after "status" (text and Markdown alike).
_ROW_COLUMNS = ("variant", "task", "metric", "baseline", "current", "change", "threshold", "seeds")
DIRTY_FILES_SHOWN = 20

Status = Literal["pass", "improved", "regressed", "failed", "missing", "incomparable", "new"]
# What fails the check: a worse score, and anything that kept a score from being compared.
FAILING: frozenset[str] = frozenset({"regressed", "failed", "missing", "incomparable"})
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
        return VariantEntry(self.variant, dict(self.variant_config)).label

    @property
    def key(self) -> Key:
        return (self.label, self.task)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores.values())

    @property
    def std(self) -> float | None:
        """Sample std over seeds (None with one seed)."""
        return statistics.stdev(self.scores.values()) if len(self.scores) >= 2 else None

    def to_dict(self) -> dict[str, Any]:
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
        return next((e for e in self.entries if e.key == (variant_label, task)), None)

    def to_dict(self) -> dict[str, Any]:
        suite = self.suite.to_dict()
        for local in (
            "out",
            "results",
        ):  # where one machine kept its outputs is not part of the suite
            suite.pop(local, None)
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
        try:
            suite = SuiteConfig.from_dict(data["suite"], where=f"{where}: suite")
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
def experiment_key(cfg: RunConfig) -> str:
    """The identity of a run config without its seed: runs of one variant x task x recipe share it.

    Like :attr:`RunConfig.run_id` (tag and data folder excluded), so records written by another
    command (``lorabench run``) with the same settings count too.
    """
    identity = cfg.to_dict()
    for key in ("seed", "tag", "data_dir"):
        identity.pop(key)
    return config_hash(identity)


def suite_keys(suite: SuiteConfig) -> dict[str, Key]:
    """``{experiment key: (variant label, task)}`` for every variant config x task of ``suite``."""
    out: dict[str, Key] = {}
    for entry in suite.variants:
        for task in suite.tasks:
            cfg = RunConfig(
                variant=entry.variant,
                task=task,
                seed=0,
                variant_config=dict(entry.config),
                model=suite.model,
                budget=suite.budget,
                train=dataclasses.replace(suite.train),
            )
            out[experiment_key(cfg)] = (entry.label, task)
    return out


def group_records(
    suite: SuiteConfig, records: Iterable[RunRecord]
) -> dict[Key, dict[int, RunRecord]]:
    """The records of ``suite``'s runs by (variant label, task) and seed; others are ignored.

    A finished record wins over a failed one of the same seed (as in the results store).
    """
    from lorabench.harness.runner import run_config_of

    keys = suite_keys(suite)
    groups: dict[Key, dict[int, RunRecord]] = {}
    for record in records:
        try:
            key = keys.get(experiment_key(run_config_of(record)))
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


# -- comparing -----------------------------------------------------------------------------------
@dataclass
class Comparison:
    """The verdict on one variant x task, with the numbers behind it."""

    variant: str  # label, with overrides
    task: str
    metric: str
    higher_is_better: bool
    status: Status
    detail: str = ""
    baseline_mean: float | None = None
    baseline_std: float | None = None
    current_mean: float | None = None
    current_std: float | None = None
    drop: float | None = None  # oriented: > 0 is worse
    noise: float | None = None  # standard error of the drop
    tolerance: float = DEFAULT_TOLERANCE
    noise_k: float = DEFAULT_NOISE_K
    paired: bool = False
    seeds: list[int] = field(default_factory=list)  # the seeds the comparison used
    per_seed: dict[int, tuple[float | None, float | None]] = field(
        default_factory=dict
    )  # (baseline, current)
    train_seconds: float | None = None

    @property
    def failing(self) -> bool:
        return self.status in FAILING

    @property
    def threshold(self) -> float | None:
        """The size a drop (or gain) must exceed: max(tolerance, k x noise)."""
        if self.noise is None:
            return None
        return max(self.tolerance, self.noise_k * self.noise)

    @property
    def change(self) -> float | None:
        """Current mean minus baseline mean, in the metric's units (sign as the metric's)."""
        if self.current_mean is None or self.baseline_mean is None:
            return None
        return self.current_mean - self.baseline_mean

    @property
    def moved(self) -> bool:
        return self.status != "pass"


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else "(no error message)"


def compare_entry(
    entry: BaselineEntry, runs: dict[int, RunRecord], *, tolerance: float, noise_k: float
) -> Comparison:
    """Applies the rule (module docstring) to one baseline entry and the run's records of it."""
    tol = entry.tolerance if entry.tolerance is not None else tolerance
    out = Comparison(
        variant=entry.label,
        task=entry.task,
        metric=entry.metric,
        higher_is_better=entry.higher_is_better,
        status="pass",
        baseline_mean=entry.mean,
        baseline_std=entry.std,
        tolerance=tol,
        noise_k=noise_k,
    )
    seconds = [
        r.spent.get("train_seconds")
        for r in runs.values()
        if (r.spent or {}).get("train_seconds") is not None
    ]
    out.train_seconds = sum(seconds) if seconds else None
    if not runs:
        out.status = "missing"
        out.detail = (
            f"no run of {entry.label} on {entry.task} (baseline seeds {sorted(entry.scores)})"
        )
        return out
    bad = {s: r for s, r in sorted(runs.items()) if r.status != "finished" or r.score is None}
    if bad:
        out.status = "failed"
        out.detail = "; ".join(
            f"seed {s} {r.status if r.status != 'finished' else 'finished without a score'}: "
            f"{_first_line(r.error)}"
            for s, r in bad.items()
        )
        return out
    metrics = {r.primary_metric for r in runs.values()}
    if metrics != {entry.metric}:
        out.status = "incomparable"
        out.detail = (
            f"the primary metric changed from {entry.metric!r} to {sorted(metrics)}; the scores "
            "cannot be compared, "
            "regenerate the baseline (lorabench regress --update-baseline)"
        )
        return out

    current = {s: float(r.score) for s, r in runs.items()}  # type: ignore[arg-type]
    sign = 1.0 if entry.higher_is_better else -1.0
    common = sorted(set(entry.scores) & set(current))
    out.current_mean = statistics.fmean(current.values())
    out.current_std = statistics.stdev(current.values()) if len(current) >= 2 else None
    notes: list[str] = []
    if len(common) >= 2:
        diffs = [sign * (entry.scores[s] - current[s]) for s in common]
        out.paired = True
        out.seeds = common
        out.drop = statistics.fmean(diffs)
        out.noise = statistics.stdev(diffs) / math.sqrt(len(diffs))
        out.baseline_mean = statistics.fmean(entry.scores[s] for s in common)
        out.current_mean = statistics.fmean(current[s] for s in common)
        out.baseline_std = statistics.stdev(entry.scores[s] for s in common)
        out.current_std = statistics.stdev(current[s] for s in common)
        unused = sorted(set(entry.scores) ^ set(current))
        if unused:
            notes.append(
                f"seeds {unused} are not in both runs and were left out of the paired comparison"
            )
    else:
        out.seeds = sorted(set(entry.scores) | set(current))
        out.drop = sign * (entry.mean - out.current_mean)
        sb, sc = entry.std, out.current_std
        sb = sb if sb is not None else sc
        sc = sc if sc is not None else sb
        if sb is None or sc is None:
            out.noise = 0.0
            notes.append("one seed on each side: no noise estimate, the tolerance alone decides")
        else:
            out.noise = math.sqrt(sb**2 / len(entry.scores) + sc**2 / len(current))
        notes.append(
            f"unpaired (baseline seeds {sorted(entry.scores)}, run seeds {sorted(current)})"
        )
    out.per_seed = {
        s: (entry.scores.get(s), current.get(s)) for s in sorted(set(entry.scores) | set(current))
    }

    threshold = out.threshold or 0.0
    if out.drop > tol and out.drop > noise_k * out.noise:
        out.status = "regressed"
        verb = "fell" if entry.higher_is_better else "rose"
        notes.insert(0, f"{entry.metric} {verb} by {out.drop:.4f} (> threshold {threshold:.4f})")
    elif -out.drop > tol and -out.drop > noise_k * out.noise:
        out.status = "improved"
        notes.insert(0, f"{entry.metric} improved by {-out.drop:.4f} (> threshold {threshold:.4f})")
    versions = {(r.variant_version, r.task_version) for r in runs.values()}
    for variant_version, task_version in versions:
        if entry.variant_version and variant_version and variant_version != entry.variant_version:
            notes.append(f"variant version {entry.variant_version} -> {variant_version}")
        if entry.task_version and task_version and task_version != entry.task_version:
            notes.append(f"task version {entry.task_version} -> {task_version}")
    out.detail = "; ".join(notes)
    return out


@dataclass
class RegressionReport:
    """Every comparison of one check, and the outputs CI systems read."""

    comparisons: list[Comparison]
    tolerance: float
    noise_k: float
    suite_name: str = ""
    baseline_path: str = ""
    baseline_provenance: dict[str, Any] = field(default_factory=dict)
    current: dict[str, Any] = field(default_factory=dict)  # commit, dirty, date of the checked run

    @property
    def failures(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.failing]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        """0 when nothing regressed, 1 otherwise (2, usage errors, is the command's business)."""
        return 0 if self.passed else 1

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.comparisons:
            out[c.status] = out.get(c.status, 0) + 1
        return out

    def verdict(self) -> str:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(self.counts().items()))
        word = "PASS" if self.passed else "FAIL"
        return f"{word}: {len(self.comparisons)} variant x task compared ({counts})"

    # -- text ---------------------------------------------------------------------------------
    def rows(self, *, moved_only: bool = False) -> list[dict[str, str]]:
        chosen = [c for c in self.comparisons if c.moved or not moved_only]
        return [
            {
                "status": c.status.upper() if c.failing else c.status,
                "variant": c.variant,
                "task": c.task,
                "metric": c.metric + ("" if c.higher_is_better else " (lower is better)"),
                "baseline": _mean_std(c.baseline_mean, c.baseline_std),
                "current": _mean_std(c.current_mean, c.current_std),
                "change": "-" if c.change is None else f"{c.change:+.4f}",
                "threshold": "-" if c.threshold is None else f"{c.threshold:.4f}",
                "seeds": _seeds_label(c),
                "detail": c.detail,
            }
            for c in chosen
        ]

    def format_table(self, *, moved_only: bool = True) -> str:
        """A plain-text table of what moved (or of everything), then the verdict."""
        rows = self.rows(moved_only=moved_only)
        lines: list[str] = []
        if rows:
            columns = ["status", *_ROW_COLUMNS]
            widths = {col: max(len(col), *(len(r[col]) for r in rows)) for col in columns}
            lines.append("  ".join(col.ljust(widths[col]) for col in columns))
            for row in rows:
                lines.append("  ".join(row[col].ljust(widths[col]) for col in columns).rstrip())
                if row["detail"]:
                    lines.append(f"    {row['detail']}")
        else:
            lines.append(
                f"nothing moved: every variant x task is within max(tolerance {self.tolerance:g}, "
                f"{self.noise_k:g} x noise) of the baseline"
            )
        lines.append(self.verdict())
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """A Markdown summary (GitHub's job summary, a merge-request comment)."""
        head = "PASS" if self.passed else "FAIL"
        lines = [f"# lorabench regress: {head}", "", self.verdict().split(": ", 1)[1] + ".", ""]
        lines += _provenance_lines(self)
        lines += [
            "",
            "Rule: per variant x task, the drop `d` (baseline - current, oriented so that positive "
            "is worse) is the mean of the per-seed differences when at least two seeds match "
            "(paired), else the difference of the means; `noise` is its standard error. A "
            f"regression iff `d > tolerance` ({self.tolerance:g}) and `d > k x noise` "
            f"(k = {self.noise_k:g}); failed or missing runs count as regressions; improvements "
            "never fail.",
            "",
            "| status | variant | task | metric | baseline | current | change | threshold | seeds "
            "| detail |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in self.rows():
            status = f"**{row['status']}**" if row["status"].isupper() else row["status"]
            cells = [
                status,
                *(_md(row[c]) for c in (*_ROW_COLUMNS, "detail")),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_junit_xml(self) -> str:
        """JUnit XML: one testcase per variant x task; regressions, failed and missing runs are
        ``<failure>`` elements, entries not in the baseline are ``<skipped>``."""
        suite = ET.Element(
            "testsuite",
            name=f"lorabench regress{': ' + self.suite_name if self.suite_name else ''}",
            tests=str(len(self.comparisons)),
            failures=str(len(self.failures)),
            errors="0",
            skipped=str(sum(c.status == "new" for c in self.comparisons)),
            time=f"{sum(c.train_seconds or 0.0 for c in self.comparisons):.3f}",
        )
        properties = ET.SubElement(suite, "properties")
        for name, value in (
            ("tolerance", self.tolerance),
            ("noise_k", self.noise_k),
            ("baseline", self.baseline_path),
            ("baseline_commit", (self.baseline_provenance.get("git") or {}).get("commit")),
            ("current_commit", (self.current.get("git") or {}).get("commit")),
        ):
            ET.SubElement(
                properties, "property", name=name, value="" if value is None else str(value)
            )
        for c in self.comparisons:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"lorabench.regress.{c.task}",
                name=c.variant,
                time=f"{c.train_seconds or 0.0:.3f}",
            )
            summary = (
                f"{c.metric}: baseline {_mean_std(c.baseline_mean, c.baseline_std)}, "
                f"current {_mean_std(c.current_mean, c.current_std)}, seeds {_seeds_label(c)}"
            )
            if c.failing:
                failure = ET.SubElement(
                    case, "failure", type=c.status, message=f"{c.status}: {c.detail}"
                )
                failure.text = f"{summary}\n{c.detail}"
            elif c.status == "new":
                ET.SubElement(case, "skipped", message=c.detail)
            else:
                ET.SubElement(case, "system-out").text = f"{c.status}: {summary}" + (
                    f"\n{c.detail}" if c.detail else ""
                )
        root = ET.Element(
            "testsuites",
            name="lorabench regress",
            tests=suite.get("tests", "0"),
            failures=suite.get("failures", "0"),
        )
        root.append(suite)
        ET.indent(root)
        return (
            '<?xml version="1.0" encoding="utf-8"?>\n'
            + ET.tostring(root, encoding="unicode")
            + "\n"
        )

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Writes ``junit.xml`` and ``summary.md`` into ``out_dir``; returns their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"junit": out / JUNIT_FILE, "summary": out / SUMMARY_FILE}
        paths["junit"].write_text(self.to_junit_xml(), encoding="utf-8")
        paths["summary"].write_text(self.to_markdown(), encoding="utf-8")
        return paths


def compare(
    baseline: Baseline,
    records: Iterable[RunRecord],
    *,
    tolerance: float | None = None,
    noise_k: float | None = None,
    baseline_path: str | Path = "",
    current: dict[str, Any] | None = None,
) -> RegressionReport:
    """Checks ``records`` (a run of the baseline's suite) against ``baseline``.

    ``tolerance``/``noise_k`` override the baseline's values (an entry's own tolerance still
    wins over the baseline's, but not over an explicit ``tolerance``).
    """
    tol = baseline.tolerance if tolerance is None else tolerance
    k = baseline.noise_k if noise_k is None else noise_k
    groups = group_records(baseline.suite, records)
    comparisons: list[Comparison] = []
    for entry in baseline.entries:
        if tolerance is not None:
            entry = dataclasses.replace(entry, tolerance=None)
        comparisons.append(
            compare_entry(entry, groups.get(entry.key, {}), tolerance=tol, noise_k=k)
        )
    known = {e.key for e in baseline.entries}
    for key, runs in groups.items():
        if key not in known:
            first = next(iter(runs.values()))
            comparisons.append(
                Comparison(
                    variant=key[0],
                    task=key[1],
                    metric=first.primary_metric,
                    higher_is_better=first.higher_is_better,
                    status="new",
                    detail="not in the baseline (add it with --update-baseline)",
                    tolerance=tol,
                    noise_k=k,
                    seeds=sorted(runs),
                )
            )
    return RegressionReport(
        comparisons=comparisons,
        tolerance=tol,
        noise_k=k,
        suite_name=baseline.suite.name,
        baseline_path=str(baseline_path),
        baseline_provenance=baseline.provenance,
        current=dict(current or {}),
    )


def _mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f}" + ("" if std is None else f" ± {std:.4f}")


def _seeds_label(c: Comparison) -> str:
    if not c.seeds:
        return "-"
    return f"{'paired' if c.paired else 'unpaired'} {','.join(map(str, c.seeds))}"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _provenance_lines(report: RegressionReport) -> list[str]:
    prov = report.baseline_provenance
    git = prov.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12]
    dirty = " (uncommitted changes)" if git.get("dirty") else ""
    lines = [
        f"- Baseline: `{report.baseline_path or '?'}`, suite `{report.suite_name or '(unnamed)'}`, "
        f"commit `{commit}`{dirty}, created {prov.get('created_at', '?')}, "
        f"torch {(prov.get('packages') or {}).get('torch', '?')}, "
        f"{(prov.get('machine') or {}).get('torch_threads', '?')} torch thread(s)"
    ]
    cur = report.current
    if cur:
        cgit = cur.get("git") or {}
        cdirty = " (uncommitted changes)" if cgit.get("dirty") else ""
        lines.append(
            f"- This run: commit `{(cgit.get('commit') or 'unknown')[:12]}`{cdirty}, "
            f"{cur.get('date', '?')}, torch {(cur.get('packages') or {}).get('torch', '?')}, "
            f"{(cur.get('machine') or {}).get('torch_threads', '?')} torch thread(s)"
            + (f", {cur['wall_seconds']:g} s wall" if isinstance(cur.get("wall_seconds"), int | float) else "")
        )
    return lines


# -- provenance ----------------------------------------------------------------------------------
@dataclass
class GitWorktree:
    """The state of the git checkout a baseline is written from."""

    root: str | None  # None: not inside a git checkout
    commit: str | None
    branch: str | None = None
    dirty_files: list[str] = field(default_factory=list)

    @property
    def is_repo(self) -> bool:
        return self.root is not None

    @property
    def dirty(self) -> bool:
        return bool(self.dirty_files)


def _git(cwd: Path, *args: str) -> str | None:
    return git_output(cwd, *args, timeout=GIT_TIMEOUT_S)


def git_worktree(path: str | Path = ".", *, ignore: Sequence[str | Path] = ()) -> GitWorktree:
    """Commit, branch and changed files (``git status --porcelain``, untracked files included)
    of the checkout containing ``path``.

    Paths in ``ignore`` (and anything under them) are not counted as changes: they are what the
    command itself writes (its output folder, the baseline file it replaces).
    """
    cwd = Path(path).resolve()
    top = _git(cwd, "rev-parse", "--show-toplevel")
    if top is None:
        return GitWorktree(root=None, commit=None)
    root = Path(top.strip()).resolve()
    commit = (_git(root, "rev-parse", "--verify", "--quiet", "HEAD") or "").strip() or None
    branch = (_git(root, "rev-parse", "--abbrev-ref", "HEAD") or "").strip() or None
    status = _git(root, "status", "--porcelain=v1", "-z", "--untracked-files=all") or ""
    ignored = [Path(p).resolve() for p in ignore]
    dirty: list[str] = []
    items = status.split("\0")
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
    return GitWorktree(root=str(root), commit=commit, branch=branch, dirty_files=sorted(dirty))


def describe_dirty(tree: GitWorktree) -> str:
    shown = tree.dirty_files[:DIRTY_FILES_SHOWN]
    more = len(tree.dirty_files) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def collect_provenance(
    suite: SuiteConfig, tree: GitWorktree, *, allow_dirty: bool = False
) -> dict[str, Any]:
    """Where a baseline (or a checked run) came from: git, date, versions, seeds, machine."""
    import torch

    from lorabench.results.provenance import collect_environment

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
        "python": env.get("python") or platform.python_version(),
        "platform": env.get("platform") or platform.platform(),
        "machine": {
            "cpu": device.get("cpu"),
            "cpu_count": device.get("cpu_count"),
            "device": device.get("kind"),
            "device_name": device.get("name"),
            "torch_threads": torch.get_num_threads(),
        },
        "seeds": list(suite.seeds),
    }


# -- resuming safely -----------------------------------------------------------------------------
def code_fingerprint(suite: SuiteConfig) -> str:
    """A hash of the code that decides the suite's scores: lorabench's own source files, the
    source files of the suite's variant classes (plugins included) and the torch, transformers
    and numpy versions. A stored result is only reused when this has not changed."""
    from importlib import metadata

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
    for dist in ("torch", "transformers", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            digest.update(f"{dist}={metadata.version(dist)}".encode())
    return digest.hexdigest()[:16]


class GuardedStore:
    """A results store that only counts a run as finished if this code produced it.

    ``run_suite`` skips finished run_ids, which makes a re-run with the same ``--out`` resume. A
    run_id does not change when the code does, so reusing every stored result would let a stale
    result from before a code change pass the check. This wrapper remembers, in ``state_path``,
    the :func:`code_fingerprint` each run was produced with, and reports only the runs with the
    current fingerprint as finished; the others are run again (and replace the stored record).
    """

    def __init__(self, store: Any, state_path: str | Path, fingerprint: str) -> None:
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
        stored = self.store.add(record)
        self._runs[record.run_id] = self.fingerprint
        self._save()
        return stored

    def get(self, run_id: str) -> RunRecord | None:
        return self.store.get(run_id)

    def finished_ids(self) -> set[str]:
        finished = self.store.finished_ids()
        fresh = {run_id for run_id in finished if self._runs.get(run_id) == self.fingerprint}
        self.stale = finished - fresh
        return fresh

    def _save(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {"fingerprints_of": "lorabench code per run_id", "runs": self._runs}, indent=1
            ),
            encoding="utf-8",
        )
        os.replace(tmp, self.state_path)
