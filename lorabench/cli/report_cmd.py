"""``lorabench report``: tables, figures and a self-contained HTML report from a results
database."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from lorabench.cli.common import add_list_argument

if TYPE_CHECKING:
    from lorabench.results.store import ResultStore

HELP = "write tables (Markdown, LaTeX, CSV, HTML), figures and an HTML report from results"
DESCRIPTION = """Summarise a results database the way papers do: a task x variant table (mean ± std
over seeds, best in bold, # Params, time, memory, adapter size), figures (score vs parameters
with the Pareto front, score vs rank with the one-run curve of multi-rank variants such as
DyLoRA, the final rank allocation of adaptive-rank variants such as AdaLoRA, learning curves,
cost per variant, search history) and one self-contained report.html.

Statistics: per task, each row against a reference row (default LoRA at the same rank) as a paired
difference over the seeds both have, with a 95% confidence interval and a p-value; across tasks,
average ranks with a Friedman test, the Nemenyi post-hoc test and a critical-difference diagram.
Too few seeds or tasks for a test is said in words. On planted-rank tasks, rank recovery: the
Spearman correlation of each run's final ranks with the planted ones.

Each variant labels its own rows ("LoRA r=8", "AdaLoRA r=12→8", "DyLoRA r≤8"). Runs are seeds of
one row only when their settings, model and data agree; runs of other data or model files get
their own rows, tagged "[data 1a2b3c4d]" or "[data not recorded]" (databases of release 0.1).
A partial database still gives a report; it lists what is missing.

Which evaluation is the score (--score): every evaluation stays recorded. "final" (default) ranks
runs by their final evaluation; "best" by their best evaluation on the dev split over training,
what the LoRA and AdaLoRA papers report, optimistic because the same split chooses and scores
(the caption says so). Runs never evaluated during training (no --eval-every) keep their final
score. Regression checks (lorabench regress) always use the final score.

Filters (--tasks, --variants, --seeds, --tag) that match no run of the database stop the command
with exit code 2 and the values the database has, instead of writing an empty report.

examples:
  lorabench report --results runs/results.db --out reports/glue
  lorabench report --results runs/results.db --out reports/rte --tasks rte --variants lora,adalora
  lorabench report --results postgresql://me@db/lorabench --out reports/ci --tag ci --seeds 0,1,2
  lorabench report --results runs/results.db --out reports/glue-best --score best"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the flags of ``lorabench report`` to ``parser``."""
    parser.add_argument(
        "--results",
        default="runs/results.db",
        help="results database: a SQLite path or a SQLAlchemy URL (default: runs/results.db)",
    )
    parser.add_argument(
        "--out", required=True, help="folder to write the report into, e.g. reports/glue"
    )
    add_list_argument(parser, "--tasks", help="only these tasks, e.g. rte,mrpc")
    add_list_argument(
        parser, "--variants", help="only these variants (registry names), e.g. lora,dora"
    )
    add_list_argument(parser, "--seeds", item=int, help="only these seeds, e.g. 0,1,2")
    parser.add_argument("--tag", help="only runs with this tag")
    parser.add_argument(
        "--title", help="report title (default: 'lorabench report: OUT folder name')"
    )
    parser.add_argument(
        "--reference",
        metavar="LABEL",
        help="the row every other row is compared with, per task, in the statistics (a row "
        "label as the table prints it, e.g. 'LoRA r=8'; default: LoRA at the same rank)",
    )
    parser.add_argument(
        "--score",
        choices=("final", "best"),
        default="final",
        help="which evaluation is each run's score: 'final', the final evaluation (default), or "
        "'best', the best evaluation on the dev split over training (what the LoRA and AdaLoRA "
        "papers report; optimistic, because the same split chooses and scores; runs without "
        "evaluations during training keep their final score)",
    )


def run(args: argparse.Namespace) -> int:
    """Runs ``lorabench report``: writes the report and prints its notes, the Markdown table and
    what was drawn; returns the exit code (0 written, 2 when the database cannot be read or a
    filter matches no run in it)."""
    from lorabench.cli.common import out_dir_error
    from lorabench.reports import generate_report
    from lorabench.results.store import ResultStore, ResultStoreError

    problem = out_dir_error(args.out)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        with ResultStore(args.results, create=False) as store:
            problem = filter_problem(store, args)
    except ResultStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        report = generate_report(
            args.results,
            args.out,
            tasks=args.tasks,
            variants=args.variants,
            seeds=args.seeds,
            tag=args.tag,
            title=args.title,
            reference=args.reference,
            score=args.score,
        )
    except (ResultStoreError, ValueError) as exc:  # ValueError: an unknown --reference row
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in report.notes:
        print(f"note: {note}")
    if report.table is not None and not report.table.empty:
        print(report.tables["md"].read_text(encoding="utf-8"))
    if "recovery_md" in report.tables:
        print(report.tables["recovery_md"].read_text(encoding="utf-8"))
    if "stats_md" in report.tables:
        print(report.tables["stats_md"].read_text(encoding="utf-8"))
    drawn = ", ".join(report.figures) or "none"
    print(f"{report.runs} finished run(s); figures: {drawn}")
    for name, why in report.skipped_figures.items():
        print(f"  not drawn: {name} ({why})")
    print(f"report: {report.html}")
    return 0


# flag -> (the namespace attribute, the column of ResultStore.summary() listing what is present)
_FILTERS = {
    "--tasks": ("tasks", "task"),
    "--variants": ("variants", "variant"),
    "--seeds": ("seeds", "seed"),
}


def filter_problem(store: ResultStore, args: argparse.Namespace) -> str | None:
    """Why the filters select nothing (``None`` when some run matches, or when none is given).

    A filter none of whose values the database holds names the values it does hold; filters
    that each match but select no run together say so with every filter's present values. A
    database without any run is not a filter problem: the report says it holds no runs yet.
    A filter that matches only partly (``--variants lora,dora`` with no DoRA run) is fine: the
    report notes what is missing."""
    summary = store.summary()
    if not summary["runs"]:
        return None
    given = {flag: getattr(args, attr) for flag, (attr, _) in _FILTERS.items()}
    present = {flag: summary[column] for flag, (_, column) in _FILTERS.items()}
    if args.tag is not None:
        given["--tag"], present["--tag"] = [args.tag], summary["tag"]
    given = {flag: values for flag, values in given.items() if values}
    if not given:
        return None
    for flag, values in given.items():
        if not set(values) & set(present[flag]):
            return (
                f"{flag} {_joined(values)} matches no run in {store.name}; it has "
                f"{_present(present[flag])}. Give one of those (or leave {flag} out)"
            )
    if store.count(**_store_filters(args)):
        return None
    asked = " ".join(f"{flag} {_joined(values)}" for flag, values in given.items())
    have = "; ".join(f"{flag}: {_present(present[flag])}" for flag in given)
    return (
        f"{asked}: no run in {store.name} matches these filters together (it has {have}); "
        "widen one of them"
    )


def _store_filters(args: argparse.Namespace) -> dict[str, object]:
    """The filters as :meth:`ResultStore.records` takes them (any status: a failed run is
    something to report)."""
    return {
        "tasks": args.tasks,
        "variants": args.variants,
        "seeds": args.seeds,
        "tag": args.tag,
        "status": None,
    }


def _joined(values: list[object]) -> str:
    return ",".join(map(str, values))


def _present(values: list[object]) -> str:
    return ", ".join(repr(v) if v == "" else str(v) for v in values) or "none"
