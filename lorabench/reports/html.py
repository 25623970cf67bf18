"""One self-contained HTML report: tables and figures embedded, opens from disk with no server.

Figures are embedded as base64 PNG ``data:`` URIs and styles are inline, so the file references
nothing outside itself and can be mailed or attached to a CI run as is.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from lorabench.reports.claims import ClaimCheck
from lorabench.reports.frame import MISSING_CELL, SCORE_CHOICES, ReportData, record_label
from lorabench.reports.plots import FigureFile
from lorabench.reports.stats import FriedmanResult, Section
from lorabench.reports.tables import ResultsTable, to_html

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;
     max-width:1200px;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.meta{color:#555;font-size:.9em}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
table.results{border-top:2px solid #222;border-bottom:2px solid #222}
table.results thead th{border-bottom:1px solid #222}
th,td{padding:.3em .7em;text-align:right;white-space:nowrap}
th[scope=row],td.left,th.left{text-align:left}
caption{caption-side:bottom;text-align:left;color:#555;font-size:.85em;padding-top:.5em;white-space:normal}
td.best{background:#eef6ee}
table.plain td,table.plain th{border-bottom:1px solid #eee;text-align:left;white-space:normal}
.notes li{margin:.2em 0} .missing{color:#8a4b00}
figure{margin:1.2em 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
.empty{font-size:1.1em;color:#8a4b00}
"""


def render_html(
    data: ReportData,
    table: ResultsTable,
    figures: list[FigureFile],
    skipped: Mapping[str, str],
    *,
    title: str = "lorabench report",
    recovery: pd.DataFrame | None = None,
    paired: pd.DataFrame | None = None,
    friedman: FriedmanResult | None = None,
    claims: list[ClaimCheck] | None = None,
    published: pd.DataFrame | None = None,
) -> str:
    """The whole report as one HTML string (``recovery``: the rank-recovery table of
    :mod:`lorabench.reports.recovery`; ``paired`` and ``friedman``: the statistics of
    :mod:`lorabench.reports.stats`; ``claims``: the papers' claims checked by
    :mod:`lorabench.reports.claims`; ``published``: paper | this run | difference from
    :mod:`lorabench.reports.published`; each shown when not empty)."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p class='meta'>Results: <code>{esc(data.source)}</code> · generated "
        f"{_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} · "
        f"filters: {esc(_filters_text(data.filters))}</p>",
        _overview(data),
    ]
    if data.notes:
        parts.append("<h2 id='missing'>What is missing</h2><ul class='notes'>")
        parts += [f"<li class='missing'>{esc(n)}</li>" for n in data.notes]
        parts.append("</ul>")
    parts.append("<h2 id='results'>Results</h2>")
    parts.append(
        to_html(table)
        if not table.empty
        else "<p class='empty'>No finished runs match: no table.</p>"
    )
    if recovery is not None and not recovery.empty:
        parts.append(_recovery_section(recovery))
    if paired is not None and friedman is not None:
        parts.append(_statistics_section(paired, friedman))
    if claims:
        parts.append(_claims_section(claims))
    if published is not None and not published.empty:
        parts.append(_published_section(published, data.score))
    if figures or skipped:
        parts.append("<h2 id='figures'>Figures</h2>")
    for fig in figures:
        encoded = base64.b64encode(fig.png.read_bytes()).decode("ascii")
        parts.append(
            f"<figure id='fig-{fig.name}'>"
            f"<img alt='{esc(fig.title)}' src='data:image/png;base64,{encoded}'>"
            f"<figcaption>{esc(fig.title)} (also <code>{esc(_beside(fig.svg))}</code> and "
            f"<code>{esc(_beside(fig.png))}</code> beside this report)</figcaption></figure>"
        )
    if skipped:
        parts.append("<p>Not drawn:</p><ul class='notes'>")
        parts += [
            f"<li>{esc(name.replace('_', ' '))}: {esc(why)}.</li>" for name, why in skipped.items()
        ]
        parts.append("</ul>")
    parts.append(_environment(data))
    parts.append("</body></html>\n")
    return "".join(parts)


def _statistics_section(paired: pd.DataFrame, friedman: FriedmanResult) -> str:
    """Paired differences per task and the ranks across tasks, each with its caption."""
    from lorabench.reports.stats import sections

    found = sections(paired, friedman)
    if not found:
        return ""
    return "<h2 id='statistics'>Statistics</h2>" + "".join(map(_section_html, found))


def _claims_section(checks: list[ClaimCheck]) -> str:
    """Each registered paper's claim with its verdict and the tests behind it."""
    from lorabench.reports.claims import sections

    # Verdicts are sentences: the plain style wraps them (the results style keeps cells on a line).
    return "<h2 id='claims'>The papers' claims</h2>" + "".join(
        _section_html(s, table_class="plain") for s in sections(checks)
    )


def _published_section(published: pd.DataFrame, score: str) -> str:
    """The papers' published numbers beside this run's medians."""
    from lorabench.reports.published import sections

    return "<h2 id='published'>Published results</h2>" + "".join(
        _section_html(s, table_class="plain") for s in sections(published, score)
    )


def _section_html(section: Section, *, table_class: str = "results") -> str:
    """One statistics section: its title, caption and table (when it has one)."""
    out = [f"<h3>{html.escape(section.title)}</h3><p>{html.escape(section.caption)}</p>"]
    if section.header:
        cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in section.header)
        out.append(f"<table class='{table_class}'><thead><tr>{cells}</tr></thead><tbody>")
        for row in section.rows:
            out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
        out.append("</tbody></table>")
    return "".join(out)


def _recovery_section(recovery: pd.DataFrame) -> str:
    """The rank-recovery table with its caption."""
    from lorabench.reports.recovery import CAPTION, HEADER, table_rows

    cells = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    out = [
        "<h2 id='rank-recovery'>Rank recovery</h2>",
        f"<p>{html.escape(CAPTION)}</p>",
        f"<table class='results'><thead><tr>{cells}</tr></thead><tbody>",
    ]
    for row in table_rows(recovery):
        out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _beside(path: Path) -> str:
    """``figures/costs.svg``: where the file lies relative to report.html (figures are one
    folder down)."""
    return f"{path.parent.name}/{path.name}"


def _filters_text(filters: Mapping[str, object]) -> str:
    used = [
        f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in filters.items()
        if v not in (None, [])
    ]
    return "; ".join(used) if used else "none"


def _overview(data: ReportData) -> str:
    runs = data.runs
    if runs.empty:
        return (
            "<p class='empty'>This report has no finished runs to show"
            f"{' (' + str(len(data.trials)) + ' search trials only)' if data.trials else ''}; "
            "see “What is missing”.</p>"
        )
    items = {
        "finished runs": str(len(runs)),
        "score": SCORE_CHOICES[data.score],
        "tasks": ", ".join(sorted(set(runs["task"]))),
        "variant configs": str(runs["config"].nunique()),
        "seeds": ", ".join(map(str, sorted(set(runs["seed"])))),
        "models": ", ".join(sorted(set(runs["model"]))),
        "budgets": ", ".join(sorted(b for b in set(runs["budget"]) if b)) or MISSING_CELL,
        "failed / pruned runs": str(len(data.unfinished)),
        "search trials": str(len(data.trials)),
    }
    rows = "".join(
        f"<tr><th class='left'>{html.escape(k)}</th><td class='left'>{html.escape(v)}</td></tr>"
        for k, v in items.items()
    )
    return f"<table class='plain'>{rows}</table>"


def _first_line(text: str | None, limit: int) -> str:
    """The first line of an error message, at most ``limit`` characters ("" for none)."""
    return text.strip().splitlines()[0][:limit] if text and text.strip() else ""


def _environment(data: ReportData) -> str:
    """Where the runs ran: commits, devices and package versions, counted over records."""
    if not data.records:
        return ""
    counters: dict[str, Counter[str]] = {
        k: Counter() for k in ("git commit", "device", "torch", "transformers", "python")
    }
    for r in data.records:
        env = r.environment or {}
        commit = env.get("git_commit")
        counters["git commit"][
            f"{commit[:10]}{' (dirty)' if env.get('git_dirty') else ''}" if commit else "unknown"
        ] += 1
        device = env.get("device") or {}
        counters["device"][
            str(device.get("name") or "unknown") if isinstance(device, dict) else str(device)
        ] += 1
        packages = env.get("packages") or {}
        counters["torch"][str(packages.get("torch") or "unknown")] += 1
        counters["transformers"][str(packages.get("transformers") or "unknown")] += 1
        counters["python"][str(env.get("python") or "unknown")] += 1
    rows = "".join(
        f"<tr><th class='left'>{html.escape(k)}</th><td class='left'>"
        + html.escape(", ".join(f"{v} ({n} runs)" for v, n in c.most_common()))
        + "</td></tr>"
        for k, c in counters.items()
    )
    failed = ""
    if data.unfinished:
        body = "".join(
            f"<tr><td>{html.escape(record_label(r))}</td><td>{html.escape(r.task)}</td>"
            f"<td>{r.seed}</td><td>{html.escape(r.status)}</td>"
            f"<td>{html.escape(_first_line(r.error, 300))}</td></tr>"
            for r in data.unfinished
        )
        failed = (
            "<h2 id='unfinished'>Failed and pruned runs</h2><table class='plain'><thead><tr>"
            "<th>config</th><th>task</th><th>seed</th><th>status</th><th>error</th></tr></thead>"
            f"<tbody>{body}</tbody></table>"
        )
    return f"{failed}<h2 id='environment'>Environment</h2><table class='plain'>{rows}</table>"
