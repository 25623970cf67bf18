"""The statistics of ``lorabench regress``: a run's scores against a baseline's, per entry.

:func:`compare` checks the records of a later run of a baseline's suite against it and returns
a :class:`RegressionReport` (one :class:`Comparison` per variant x task, a verdict and an exit
code; :mod:`lorabench.regress.output` renders it). Records are matched to baseline entries by
:func:`lorabench.regress.baseline.match_key`.

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

import dataclasses
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lorabench.regress import output
from lorabench.regress.baseline import (
    DEFAULT_NOISE_K,
    DEFAULT_TOLERANCE,
    Baseline,
    BaselineEntry,
    _first_line,
    group_records,
)
from lorabench.results.records import RunRecord

Status = Literal["pass", "improved", "regressed", "failed", "missing", "incomparable", "new"]
# What fails the check: a worse score, and anything that kept a score from being compared.
FAILING: frozenset[str] = frozenset({"regressed", "failed", "missing", "incomparable"})


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
    # seed -> (baseline score, current score)
    per_seed: dict[int, tuple[float | None, float | None]] = field(default_factory=dict)
    train_seconds: float | None = None

    @property
    def failing(self) -> bool:
        """Whether this verdict fails the check (see :data:`FAILING`)."""
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
        """Whether the verdict is anything but a pass (the table lists only these by default)."""
        return self.status != "pass"


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
        """The comparisons that fail the check."""
        return [c for c in self.comparisons if c.failing]

    @property
    def passed(self) -> bool:
        """Whether nothing failed."""
        return not self.failures

    @property
    def exit_code(self) -> int:
        """0 when nothing regressed, 1 otherwise (2, usage errors, is the command's business)."""
        return 0 if self.passed else 1

    def counts(self) -> dict[str, int]:
        """How many comparisons have each status."""
        out: dict[str, int] = {}
        for c in self.comparisons:
            out[c.status] = out.get(c.status, 0) + 1
        return out

    def verdict(self) -> str:
        """One line: PASS or FAIL, and how many variant x task had each status."""
        counts = ", ".join(f"{n} {status}" for status, n in sorted(self.counts().items()))
        word = "PASS" if self.passed else "FAIL"
        return f"{word}: {len(self.comparisons)} variant x task compared ({counts})"

    # -- outputs (rendered by lorabench.regress.output) -----------------------------------------
    def rows(self, *, moved_only: bool = False) -> list[dict[str, str]]:
        """The table's rows as text cells, one per comparison (or per one that moved)."""
        return output.table_rows(self, moved_only=moved_only)

    def format_table(self, *, moved_only: bool = True) -> str:
        """A plain-text table of what moved (or of everything), then the verdict."""
        return output.format_table(self, moved_only=moved_only)

    def to_markdown(self) -> str:
        """A Markdown summary (GitHub's job summary, a merge-request comment)."""
        return output.to_markdown(self)

    def to_junit_xml(self) -> str:
        """JUnit XML: one testcase per variant x task; failing ones hold a ``<failure>``."""
        return output.to_junit_xml(self)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Writes ``junit.xml`` and ``summary.md`` into ``out_dir``; returns their paths."""
        return output.write_outputs(self, out_dir)


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
