"""Reports from the results database: tables, figures and one self-contained HTML file.

``generate_report(results, out)`` writes ``results.{md,tex,csv,html}``, every figure as PNG and
SVG under ``figures/``, and ``report.html`` with everything embedded. The CLI is
``lorabench report``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lorabench.reports.claims import ClaimCheck
from lorabench.reports.frame import ReportData, load_report_data
from lorabench.reports.stats import FriedmanResult
from lorabench.reports.tables import ResultsTable, build_results_table, write_tables
from lorabench.results.store import ResultStore


@dataclass
class Report:
    """What :func:`generate_report` wrote and what it found missing."""

    out_dir: Path
    html: Path
    tables: dict[str, Path]
    figures: dict[str, Path] = field(default_factory=dict)  # name -> PNG (an SVG sits beside it)
    skipped_figures: dict[str, str] = field(default_factory=dict)  # name -> why not drawn
    notes: list[str] = field(default_factory=list)
    runs: int = 0
    table: ResultsTable | None = None
    recovery: pd.DataFrame | None = None  # rank recovery on planted-rank tasks (recovery.py)
    paired: pd.DataFrame | None = None  # each row against its reference, per task (stats.py)
    friedman: FriedmanResult | None = None  # average ranks across tasks (stats.py)
    claims: list[ClaimCheck] | None = None  # the papers' claims checked (claims.py)
    # Published numbers beside this run's, paper | this run | difference (published.py).
    published: pd.DataFrame | None = None

    @property
    def empty(self) -> bool:
        return self.runs == 0


def generate_report(
    results: str | Path | ResultStore,
    out: str | Path,
    *,
    tasks: list[str] | None = None,
    variants: list[str] | None = None,
    seeds: list[int] | None = None,
    tag: str | None = None,
    title: str | None = None,
    reference: str | None = None,
    score: str = "final",
) -> Report:
    """Builds the full report for the runs matching the filters into folder ``out``.

    An empty or partial database still yields a report, whose notes say what is missing.
    ``reference``: the row label every row is compared with per task (default: LoRA at the
    same rank; see :func:`lorabench.reports.stats.paired_differences`). ``score``: which
    evaluation ranks the runs, ``"final"`` (default) or ``"best"``, the best evaluation on the
    dev split during training (what the LoRA and AdaLoRA papers report; optimistic, as the
    caption says). The table, figures and statistics all use it.
    """
    from lorabench.reports.claims import check_claims, write_claims
    from lorabench.reports.html import render_html
    from lorabench.reports.plots import write_figures
    from lorabench.reports.published import compare_published, write_published
    from lorabench.reports.recovery import rank_recovery, write_recovery
    from lorabench.reports.stats import friedman_ranks, paired_differences, write_stats

    data = load_report_data(
        results, tasks=tasks, variants=variants, seeds=seeds, tag=tag, score=score
    )
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = build_results_table(data.runs, score=data.score)
    tables = write_tables(table, out_dir)
    recovery = rank_recovery(data)
    tables.update({f"recovery_{k}": v for k, v in write_recovery(recovery, out_dir).items()})
    paired, friedman = paired_differences(data, reference), friedman_ranks(data)
    tables.update({f"stats_{k}": v for k, v in write_stats(paired, friedman, out_dir).items()})
    # The claims section goes into stats.md, the statistics `lorabench report` prints; a report
    # without any run has no statistics and nothing to check.
    claims = check_claims(data) if not data.runs.empty else []
    written = write_claims(claims, out_dir, append_to=tables.get("stats_md"))
    tables.update({f"claims_{k}": v for k, v in written.items()})
    # Shown only when a row matches a published number (a RoBERTa-base GLUE run, say).
    published = compare_published(data)
    written = write_published(
        published, out_dir, score=data.score, append_to=tables.get("stats_md")
    )
    tables.update({f"published_{k}": v for k, v in written.items()})
    figures, skipped = write_figures(data, out_dir / "figures")
    page = out_dir / "report.html"
    page.write_text(
        render_html(
            data,
            table,
            figures,
            skipped,
            title=title or f"lorabench report: {out_dir.name}",
            recovery=recovery,
            paired=paired,
            friedman=friedman,
            claims=claims,
            published=published,
        ),
        encoding="utf-8",
    )
    return Report(
        out_dir=out_dir,
        html=page,
        tables=tables,
        figures={f.name: f.png for f in figures},
        skipped_figures=skipped,
        notes=data.notes,
        runs=len(data.records),
        table=table,
        recovery=recovery,
        paired=paired,
        friedman=friedman,
        claims=claims,
        published=published,
    )


__all__ = [
    "Report",
    "ReportData",
    "ResultsTable",
    "build_results_table",
    "generate_report",
    "load_report_data",
]
