"""The outputs of ``lorabench regress``: a plain-text table, JUnit XML and a Markdown summary.

Each function renders a :class:`~lorabench.regress.compare.RegressionReport` (the methods of the
report call them); :func:`write_outputs` puts the files CI systems read into the output folder.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lorabench.regress.compare import Comparison, RegressionReport

JUNIT_FILE = "junit.xml"
SUMMARY_FILE = "summary.md"
# The columns of the comparison table after "status" (text and Markdown alike).
_ROW_COLUMNS = ("variant", "task", "metric", "baseline", "current", "change", "threshold", "seeds")


def table_rows(report: RegressionReport, *, moved_only: bool = False) -> list[dict[str, str]]:
    """The table's rows as text cells, one per comparison (or per one that moved)."""
    chosen = [c for c in report.comparisons if c.moved or not moved_only]
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


def format_table(report: RegressionReport, *, moved_only: bool = True) -> str:
    """A plain-text table of what moved (or of everything), then the verdict."""
    rows = table_rows(report, moved_only=moved_only)
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
            f"nothing moved: every variant x task is within max(tolerance {report.tolerance:g}, "
            f"{report.noise_k:g} x noise) of the baseline"
        )
    lines.append(report.verdict())
    return "\n".join(lines)


def to_markdown(report: RegressionReport) -> str:
    """A Markdown summary (GitHub's job summary, a merge-request comment)."""
    head = "PASS" if report.passed else "FAIL"
    lines = [f"# lorabench regress: {head}", "", report.verdict().split(": ", 1)[1] + ".", ""]
    lines += _provenance_lines(report)
    lines += [
        "",
        "Rule: per variant x task, the drop `d` (baseline - current, oriented so that positive "
        "is worse) is the mean of the per-seed differences when at least two seeds match "
        "(paired), else the difference of the means; `noise` is its standard error. A "
        f"regression iff `d > tolerance` ({report.tolerance:g}) and `d > k x noise` "
        f"(k = {report.noise_k:g}); failed or missing runs count as regressions; improvements "
        "never fail.",
        "",
        "| status | variant | task | metric | baseline | current | change | threshold | seeds "
        "| detail |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table_rows(report):
        status = f"**{row['status']}**" if row["status"].isupper() else row["status"]
        cells = [
            status,
            *(_md(row[c]) for c in (*_ROW_COLUMNS, "detail")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_junit_xml(report: RegressionReport) -> str:
    """JUnit XML: one testcase per variant x task; regressions, failed and missing runs are
    ``<failure>`` elements, entries not in the baseline are ``<skipped>``."""
    suite = ET.Element(
        "testsuite",
        name=f"lorabench regress{': ' + report.suite_name if report.suite_name else ''}",
        tests=str(len(report.comparisons)),
        failures=str(len(report.failures)),
        errors="0",
        skipped=str(sum(c.status == "new" for c in report.comparisons)),
        time=f"{sum(c.train_seconds or 0.0 for c in report.comparisons):.3f}",
    )
    properties = ET.SubElement(suite, "properties")
    for name, value in (
        ("tolerance", report.tolerance),
        ("noise_k", report.noise_k),
        ("baseline", report.baseline_path),
        ("baseline_commit", (report.baseline_provenance.get("git") or {}).get("commit")),
        ("current_commit", (report.current.get("git") or {}).get("commit")),
    ):
        ET.SubElement(properties, "property", name=name, value="" if value is None else str(value))
    for c in report.comparisons:
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
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_outputs(report: RegressionReport, out_dir: str | Path) -> dict[str, Path]:
    """Writes ``junit.xml`` and ``summary.md`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"junit": out / JUNIT_FILE, "summary": out / SUMMARY_FILE}
    paths["junit"].write_text(to_junit_xml(report), encoding="utf-8")
    paths["summary"].write_text(to_markdown(report), encoding="utf-8")
    return paths


def _mean_std(mean: float | None, std: float | None) -> str:
    """``mean ± std`` with 4 decimals; ``-`` without a mean."""
    if mean is None:
        return "-"
    return f"{mean:.4f}" + ("" if std is None else f" ± {std:.4f}")


def _seeds_label(c: Comparison) -> str:
    """``paired 0,1,2`` or ``unpaired ...``: how and on which seeds ``c`` was compared."""
    if not c.seeds:
        return "-"
    return f"{'paired' if c.paired else 'unpaired'} {','.join(map(str, c.seeds))}"


def _md(text: str) -> str:
    """``text`` as one Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _provenance_lines(report: RegressionReport) -> list[str]:
    """Markdown bullets: where the baseline and this run came from (commit, date, torch)."""
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
            + (
                f", {cur['wall_seconds']:g} s wall"
                if isinstance(cur.get("wall_seconds"), int | float)
                else ""
            )
        )
    return lines
