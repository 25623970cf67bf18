"""``lorabench regress``: check a suite against a stored baseline; ``--update-baseline`` writes
one. The rule is stated in ``DESCRIPTION`` (``--help``) and in :mod:`lorabench.regress.compare`."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lorabench.harness.suite import SuiteConfig
    from lorabench.regress import Baseline
    from lorabench.results.provenance import GitWorktree
    from lorabench.results.records import RunRecord

HELP = "check a benchmark suite against a stored baseline (exit 1 on a regression)"
DESCRIPTION = """Run the suite stored in a baseline file (or read its results from a database) and
compare every variant x task with the baseline. Prints a table of what moved and writes
OUT/junit.xml (one testcase per variant x task) and OUT/summary.md for CI systems.

the rule, per variant x task (d: the drop, baseline - current, oriented so that positive is
worse whatever the metric's direction):
  paired (the run and the baseline share >= 2 seeds; only shared seeds count):
      d = mean of the per-seed differences, noise = their std / sqrt(n)
  unpaired otherwise:
      d = baseline mean - current mean, noise = sqrt(sb^2/nb + sc^2/nc) (Welch's standard
      error; one seed on a side borrows the other side's std; one seed on both: noise 0)
  regression  iff d > tolerance and d > k x noise   (tolerance default 0.02, k default 2)
  improvement iff -d passes the same test (reported, never failing)
  a failed run, a variant x task missing from the run or a changed metric is a regression.
The tolerance and k are stored in the baseline; --tolerance and --noise-k override them.

The check uses as many torch threads as the baseline was made with (at most this machine's
cores): with the same thread count and CPU, an unchanged variant reproduces its scores exactly.
--workers N trains N runs at once, each in its own process; each run still gets the baseline's
thread count unless --threads says otherwise (then the total, divided between the workers).

Re-running with the same --out resumes: finished runs are kept, unless the code that produced
them changed (lorabench's source, the variants' source, torch/transformers/numpy versions), in
which case they are run again, so a stale result can never pass the check.

--update-baseline runs the suite (--preset, --config, or the suite already in --baseline) and
writes the baseline with its provenance: git commit, date, package versions, seeds, machine and
torch threads. It refuses when 'git status --porcelain' of the current directory's checkout
shows changes (other than --out and the baseline file itself), so that the commit it records
is the code that produced the numbers; --allow-dirty overrides this and is recorded.

examples:
  lorabench regress --baseline baselines/ci.json --out ci-regress
  lorabench regress --baseline baselines/ci.json --results runs/results.db   # no training
  lorabench regress --update-baseline --baseline baselines/ci.json --preset ci
  lorabench regress --update-baseline --baseline baselines/glue.json --config glue.yaml \\
      --tolerance 0.01

exit codes: 0 no regression, 1 a regression (or failed runs), 2 usage error (bad flags; a
missing, corrupt or unusable baseline; a dirty tree for --update-baseline)."""

DEFAULT_OUT = "regress-out"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the flags of ``lorabench regress`` to ``parser``."""
    from lorabench.cli.common import add_list_argument

    parser.add_argument(
        "--baseline",
        required=True,
        metavar="PATH",
        help="the baseline JSON file (read; written with --update-baseline)",
    )
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"folder for the run's results.db, junit.xml and summary.md (default {DEFAULT_OUT}); "
        "re-use it to resume",
    )
    parser.add_argument(
        "--results",
        metavar="URL|PATH",
        help="compare the runs stored in this results database instead of running the suite",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="task data folder on this machine (overrides the baseline suite's data_dir)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        metavar="X",
        help="smallest drop that counts, in the metric's units (default: the baseline's, "
        "0.02 if new)",
    )
    parser.add_argument(
        "--noise-k",
        type=float,
        metavar="K",
        help="a drop must also exceed K x its standard error (default: the baseline's, 2 if new)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for torch (default: as many as the baseline was made with, at most "
        "this machine's cores; "
        "with --update-baseline: torch's choice); with --workers: the total, divided between them",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="train N runs at once, each in its own process (default 1); each worker trains "
        "with the baseline's thread count, or --threads divided between the workers",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars; print only the comparison"
    )
    add_list_argument(
        parser,
        "--log",
        metavar="KINDS",
        help="training logs of the runs, a row per step: csv (the default; "
        "OUT/logs/<run_id>.csv), tensorboard (OUT/tensorboard/<run_id>/), none, or "
        "csv,tensorboard",
    )
    update = parser.add_argument_group("writing a baseline")
    update.add_argument(
        "--update-baseline",
        action="store_true",
        help="run the suite and write --baseline from its results",
    )
    update.add_argument(
        "--preset",
        metavar="NAME",
        help="with --update-baseline: the suite is this preset (e.g. ci)",
    )
    update.add_argument(
        "--config", metavar="YAML", help="with --update-baseline: the suite is this file"
    )
    update.add_argument(
        "--allow-dirty",
        action="store_true",
        help="with --update-baseline: write even from uncommitted changes (recorded in the "
        "baseline)",
    )


def _usage(message: str) -> int:
    print(f"lorabench regress: {message}", file=sys.stderr)
    return 2


def _check_flags(args: argparse.Namespace) -> str | None:
    """A usage problem with the flags, or None."""
    for flag, value in (("--tolerance", args.tolerance), ("--noise-k", args.noise_k)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            example = "0.02" if flag == "--tolerance" else "2"
            return f"{flag} {value} must be a number >= 0 (e.g. {flag} {example})"
    if args.threads is not None and args.threads < 1:
        return f"--threads {args.threads} must be >= 1 (e.g. --threads 1)"
    workers = getattr(args, "workers", None)  # a Namespace built by hand may not have it
    if workers is not None and workers < 1:
        return f"--workers {workers} must be >= 1 (e.g. --workers 2)"
    if args.log is not None:
        from lorabench.harness.logs import LogSettingError, parse_log

        try:
            parse_log(args.log)
        except LogSettingError as exc:
            return f"--log: {exc}"
    if not args.update_baseline:
        for flag, value in (
            ("--preset", args.preset),
            ("--config", args.config),
            ("--allow-dirty", args.allow_dirty),
        ):
            if value:
                return (
                    f"{flag} only goes with --update-baseline; a check always runs the suite "
                    "stored in the baseline"
                )
    else:
        if args.preset and args.config:
            return "give --preset or --config, not both"
        if args.results:
            return (
                "--results cannot be used with --update-baseline: a baseline records the code "
                "that produced its "
                "numbers, so it is always written from a fresh run"
            )
    return None


def run(args: argparse.Namespace) -> int:
    """Runs ``lorabench regress``; returns the exit code (0 pass, 1 regression, 2 usage error)."""
    from lorabench.cli.common import out_dir_error

    problem = _check_flags(args) or out_dir_error(args.out)
    if problem:
        return _usage(problem)
    from lorabench.regress import Baseline, BaselineError

    baseline_path = Path(args.baseline)
    workers = _workers(args)
    if args.update_baseline:
        # First: the provenance records the thread count, with --workers each worker's (of
        # --threads, or of this machine's cores, divided as run_suite divides them).
        total = args.threads
        if total is None and workers > 1:
            import os

            total = os.cpu_count() or 1
        _set_threads(_per_worker(total, workers))
        return _update(args, baseline_path, args.threads)
    try:
        baseline = Baseline.load(baseline_path)
    except BaselineError as exc:
        return _usage(str(exc))
    if args.threads is not None:
        threads = args.threads  # with --workers: the total, divided between them
        _set_threads(_per_worker(threads, workers))
        return _check(args, baseline, baseline_path, threads)
    each = _baseline_threads(baseline)
    _set_threads(each)
    # Every worker trains with the baseline's thread count: the same float reductions are what
    # reproduce its scores exactly, so the workers' total may exceed this machine's cores.
    threads = None if each is None else each * workers
    if each is not None and not args.quiet:
        per = f" in each of {workers} workers" if workers > 1 else ""
        print(f"torch threads: {each}{per} (as the baseline was made with; --threads to change)")
    return _check(args, baseline, baseline_path, threads)


def _workers(args: argparse.Namespace) -> int:
    """``--workers`` (1 when not given)."""
    return getattr(args, "workers", None) or 1


def _per_worker(threads: int | None, workers: int) -> int | None:
    """What each of ``workers`` workers trains with out of ``threads`` in total (as
    ``run_suite`` divides them: at least one each); this process's own count with one worker."""
    if threads is None:
        return None
    return max(1, threads // workers)


def _baseline_threads(baseline: Baseline) -> int | None:
    """The baseline's torch thread count, capped at this machine's cores: the same thread count
    gives the same float reductions, so on the same CPU an unchanged variant reproduces its
    baseline scores exactly; more threads than cores would only make them spin."""
    import os

    recorded = (baseline.provenance.get("machine") or {}).get("torch_threads")
    if not isinstance(recorded, int) or isinstance(recorded, bool) or recorded < 1:
        return None
    return min(recorded, os.cpu_count() or recorded)


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


# -- shared ------------------------------------------------------------------------------------
def _prepare_suite(suite: SuiteConfig, args: argparse.Namespace) -> SuiteConfig:
    """The suite as this machine runs it: results in OUT/results.db, data from --data-dir, the
    training logs of --log (else the suite's) under OUT."""
    import dataclasses

    from lorabench.harness.logs import parse_log

    return dataclasses.replace(
        suite,
        out=args.out,
        results=None,
        data_dir=args.data_dir if args.data_dir else suite.data_dir,
        log=parse_log(args.log) if args.log is not None else suite.log,
    )


def _run(suite: SuiteConfig, args: argparse.Namespace, threads: int | None) -> list[RunRecord]:
    """Runs (or resumes) ``suite`` into OUT; returns its records. With ``--workers N``, N runs
    train at once in their own processes, with ``threads`` in total divided between them (None:
    this machine's cores); this process stores every record, through the guard."""
    # Imported here, from its own module: code_fingerprint is looked up at call time (the tests
    # replace it in lorabench.regress.guard).
    from lorabench.harness.runner import run_suite
    from lorabench.regress.guard import STATE_FILE, GuardedStore, code_fingerprint
    from lorabench.results.store import ResultStore

    store = GuardedStore(
        ResultStore(suite.results_location), Path(args.out) / STATE_FILE, code_fingerprint(suite)
    )
    stream = None if args.quiet else sys.stdout
    finished = store.finished_ids()
    if store.stale and not args.quiet:
        print(
            f"{len(store.stale)} stored run(s) in {args.out} were produced by other code "
            "(lorabench or variant source, "
            "or torch/transformers/numpy versions changed); running them again"
        )
    if finished and not args.quiet:
        print(f"resuming: {len(finished)} run(s) in {args.out} already finished with this code")
    # Through the guard, which has no claims: run_suite claims nothing (docs/scale.md); with
    # workers, this process still stores every record, so the guard sees each one.
    return run_suite(
        suite,
        store,
        progress=not args.quiet,
        keep_adapters=False,
        stream=stream,
        workers=_workers(args),
        threads=threads,
    )


def _current_state(
    suite: SuiteConfig, args: argparse.Namespace, *, allow_dirty: bool = False
) -> tuple[dict[str, Any], GitWorktree]:
    """The provenance of this run (git, versions, machine) and the state of the git checkout."""
    from lorabench.regress import collect_provenance, git_worktree

    tree = git_worktree(Path.cwd(), ignore=[args.out, args.baseline])
    return collect_provenance(suite, tree, allow_dirty=allow_dirty), tree


# -- checking ----------------------------------------------------------------------------------
def _check(
    args: argparse.Namespace, baseline: Baseline, baseline_path: Path, threads: int | None = None
) -> int:
    """Runs (or reads) the baseline's suite and compares it; returns the exit code. ``threads``:
    the torch threads of all workers together (see :func:`_run`)."""
    from lorabench.harness.suite import SuiteConfigError
    from lorabench.regress import compare
    from lorabench.results.store import ResultStore, ResultStoreError

    suite = _prepare_suite(baseline.suite, args)
    try:
        suite.validate(where=f"{baseline_path}: suite")
        if not args.results:
            suite.check_inputs()  # a missing model or data folder: stop now, with the fix
    except SuiteConfigError as exc:
        return _usage(str(exc))
    started = time.perf_counter()
    if args.results:
        try:
            with ResultStore(args.results, create=False) as store:
                records = store.records(
                    tasks=suite.tasks,
                    variants=sorted({e.variant for e in suite.variants}),
                    status=None,
                )
        except ResultStoreError as exc:
            return _usage(str(exc))
    else:
        from lorabench.harness.runner import SuiteInputError

        try:
            records = _run(suite, args, threads)
        except (ResultStoreError, SuiteInputError) as exc:
            return _usage(str(exc))
    current, _ = _current_state(suite, args)
    current["date"] = current.pop("created_at")
    current["wall_seconds"] = round(time.perf_counter() - started, 1)
    report = compare(
        baseline,
        records,
        tolerance=args.tolerance,
        noise_k=args.noise_k,
        baseline_path=baseline_path,
        current=current,
    )
    paths = report.write(args.out)
    print()
    print(f"regression check against {baseline_path} (suite {baseline.suite.name or '(unnamed)'}):")
    print(report.format_table(moved_only=True))
    print(f"junit: {paths['junit']}  summary: {paths['summary']}")
    # How long the check takes (a CI budget question): running or reading the suite, comparing.
    print(f"wall: {time.perf_counter() - started:.1f} s")
    return report.exit_code


# -- writing a baseline ------------------------------------------------------------------------
def _update(args: argparse.Namespace, baseline_path: Path, threads: int | None = None) -> int:
    """Runs the suite and writes the baseline; returns the exit code. ``threads``: the torch
    threads of all workers together (``--threads``; see :func:`_run`)."""
    from lorabench.harness.suite import SuiteConfig, SuiteConfigError
    from lorabench.regress import (
        DEFAULT_NOISE_K,
        DEFAULT_TOLERANCE,
        Baseline,
        BaselineError,
        build_baseline,
        describe_dirty,
        dirty_tree_problem,
    )
    from lorabench.results.store import ResultStoreError

    previous = None
    try:
        if args.preset:
            suite = SuiteConfig.preset(args.preset)
        elif args.config:
            suite = SuiteConfig.from_yaml(args.config)
        else:
            if not baseline_path.is_file():
                return _usage(
                    f"{baseline_path} does not exist yet: say which suite to run, e.g. --preset ci "
                    "or --config suite.yaml"
                )
            previous = Baseline.load(baseline_path)
            suite = previous.suite
        suite = _prepare_suite(suite, args)
        suite.validate(where="suite")
        suite.check_inputs()
    except (SuiteConfigError, BaselineError) as exc:
        return _usage(
            str(exc)
            + ("" if args.preset or args.config else "; or give the suite with --preset/--config")
        )

    provenance, tree = _current_state(suite, args, allow_dirty=args.allow_dirty)
    if not args.allow_dirty:
        problem = dirty_tree_problem(tree, Path.cwd())
        if problem:
            return _usage(problem)
    tolerance = (
        args.tolerance
        if args.tolerance is not None
        else (previous.tolerance if previous else DEFAULT_TOLERANCE)
    )
    noise_k = (
        args.noise_k
        if args.noise_k is not None
        else (previous.noise_k if previous else DEFAULT_NOISE_K)
    )

    from lorabench.harness.runner import SuiteInputError

    started = time.perf_counter()
    try:
        records = _run(suite, args, threads)
    except (ResultStoreError, SuiteInputError) as exc:
        return _usage(str(exc))
    provenance["wall_seconds"] = round(time.perf_counter() - started, 1)
    provenance["suite_source"] = (
        f"preset {args.preset}"
        if args.preset
        else (args.config if args.config else f"the previous {baseline_path}")
    )
    try:
        baseline = build_baseline(
            suite, records, tolerance=tolerance, noise_k=noise_k, provenance=provenance
        )
    except BaselineError as exc:
        print(f"lorabench regress: {exc}", file=sys.stderr)
        return 1
    baseline.save(baseline_path)
    dirty = f" with uncommitted changes ({describe_dirty(tree)})" if tree.dirty else ""
    commit = (tree.commit or "no commit")[:12]
    print()
    print(
        f"baseline written: {baseline_path} ({len(baseline.entries)} variant x task, "
        f"seeds {suite.seeds}, "
        f"commit {commit}{dirty}, tolerance {tolerance:g}, k {noise_k:g})"
    )
    for entry in baseline.entries:
        std = "" if entry.std is None else f" ± {entry.std:.4f}"
        print(f"  {entry.label:<40} {entry.task:<16} {entry.metric} {entry.mean:.4f}{std}")
    return 0
