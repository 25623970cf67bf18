"""Regression checks: a suite's results against a stored baseline (``lorabench regress``).

* :mod:`~lorabench.regress.baseline`: the baseline file (read, validate, write), building one
  from a suite's records, and :func:`match_key`, which matches records to baseline entries.
* :mod:`~lorabench.regress.compare`: the rule (paired or unpaired drop against tolerance and
  noise) and the verdict per variant x task, collected in a :class:`RegressionReport`.
* :mod:`~lorabench.regress.output`: the text table, JUnit XML and Markdown summary.
* :mod:`~lorabench.regress.guard`: the dirty-tree refusal of ``--update-baseline`` and the
  store that re-runs results produced by other code.

Git and environment facts come from :mod:`lorabench.results.provenance`.
"""

from lorabench.regress.baseline import (
    DEFAULT_NOISE_K,
    DEFAULT_TOLERANCE,
    Baseline,
    BaselineEntry,
    BaselineError,
    build_baseline,
    collect_provenance,
    group_records,
    match_key,
)
from lorabench.regress.compare import Comparison, RegressionReport, compare, compare_entry
from lorabench.regress.guard import (
    STATE_FILE,
    GuardedStore,
    code_fingerprint,
    describe_dirty,
    dirty_tree_problem,
)
from lorabench.regress.output import JUNIT_FILE, SUMMARY_FILE
from lorabench.results.provenance import GitWorktree, git_worktree

__all__ = [
    "DEFAULT_NOISE_K",
    "DEFAULT_TOLERANCE",
    "JUNIT_FILE",
    "STATE_FILE",
    "SUMMARY_FILE",
    "Baseline",
    "BaselineEntry",
    "BaselineError",
    "Comparison",
    "GitWorktree",
    "GuardedStore",
    "RegressionReport",
    "build_baseline",
    "code_fingerprint",
    "collect_provenance",
    "compare",
    "compare_entry",
    "describe_dirty",
    "dirty_tree_problem",
    "git_worktree",
    "group_records",
    "match_key",
]
