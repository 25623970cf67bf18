"""The results table as the LoRA/AdaLoRA papers print it, in Markdown, LaTeX, CSV and HTML.

Rows are variant configs ("LoRA r=8"), columns the tasks (mean ± sample std over seeds, the mean
alone for one run; x100 for the metrics whose record says so, the best per task in bold), then
the average over tasks and the cost: adapter parameters (count and % of the model), training
time, peak memory during training (a column per kind of measurement) and adapter size.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lorabench.reports.frame import (
    MEMORY_KINDS,
    MISSING_CELL,
    aggregate,
    memory_kind,
    metric_label,
    ordered_configs,
    ordered_tasks,
    score_caption,
)

MISSING = MISSING_CELL


@dataclass
class ResultsTable:
    """A rendered-agnostic table: cell text, which cells are bold, and the numbers behind it.

    ``cells`` has one row per config (index) and one column per header; ``bold`` has the same
    shape. ``numbers`` is the long numeric table (config x task) that the CSV holds;
    ``row_variants`` maps each row to its variant's registry name (rules between variants).
    """

    cells: pd.DataFrame
    bold: pd.DataFrame
    numbers: pd.DataFrame
    caption: str
    task_columns: list[str] = field(default_factory=list)
    row_variants: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.cells.empty


def build_results_table(runs: pd.DataFrame, score: str = "final") -> ResultsTable:
    """The main table from :func:`lorabench.reports.frame.runs_frame` output; ``score`` names
    which evaluation the frame's scores are (``"final"`` or ``"best"``), for the caption."""
    phrase = score_caption(score)
    agg = aggregate(runs)
    if agg.empty:
        empty = pd.DataFrame()
        return ResultsTable(empty, empty, agg, "No finished runs.")
    tasks = ordered_tasks(agg["task"])
    configs = ordered_configs(runs)
    headers = {t: _task_header(t, agg[agg["task"] == t]) for t in tasks}
    cells = pd.DataFrame(MISSING, index=configs, columns=list(headers.values()), dtype=object)
    bold = pd.DataFrame(False, index=configs, columns=cells.columns)
    agg = agg.assign(best=False)
    for task, header in headers.items():
        mine = agg[agg["task"] == task]
        decimals = _decimals(mine)
        # The best is judged on the printed value, so ties in print are all bold (as in papers).
        printed = mine["mean"].round(decimals)
        higher = bool(mine["higher_is_better"].iloc[0])
        best = printed.max() if higher else printed.min()
        for idx, row in mine.iterrows():
            cells.loc[row["config"], header] = format_mean_std(
                row["mean"], row["std"], decimals, n=int(row["n"])
            )
            is_best = bool(printed.loc[idx] == best) and len(mine) > 1
            bold.loc[row["config"], header] = is_best
            agg.loc[idx, "best"] = is_best
    _add_average(cells, bold, agg, tasks)
    _add_costs(cells, runs, configs)
    bold = bold.reindex(columns=cells.columns, fill_value=False)
    caption = (
        _seeds_caption(runs, agg)
        + _scale_caption(agg)
        + f"{phrase}; best per task in bold. # Params: adapter parameters (task head "
        "excluded) and their share of the model."
    )
    for kind in _memory_kinds(runs):
        caption += " " + memory_kind(kind).caption
    caption += _mixed_data_caption(runs, tasks)
    numbers = agg.drop(columns=["seeds"]).assign(
        seeds=agg["seeds"].map(lambda s: " ".join(map(str, s)))
    )
    row_variants = dict(zip(runs["config"], runs["variant"], strict=True))
    return ResultsTable(cells, bold, numbers, caption, list(headers.values()), row_variants)


def _seeds_caption(runs: pd.DataFrame, agg: pd.DataFrame) -> str:
    """What a cell holds: the mean ± sample std over seeds, or the one seed's value."""
    seeds = sorted(set(runs["seed"]))
    listed = f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))})"
    if bool((agg["n"] < 2).all()):
        return f"One run per cell (no std); {listed} in all; "
    caption = f"Mean ± sample std over {listed}"
    if bool((agg["n"] < 2).any()):
        caption += ", a cell of one run without std"
    return caption + "; "


def _scale_caption(agg: pd.DataFrame) -> str:
    """Which metrics are printed x100 (as their metric records say; a correlation x100 is not a
    percentage), e.g. ``"accuracy and matthews x100; "``."""
    scaled = sorted({str(m).rsplit("/", 1)[-1] for m in agg.loc[agg["percent"], "metric"]})
    if not scaled:
        return ""
    names = scaled[0] if len(scaled) == 1 else f"{', '.join(scaled[:-1])} and {scaled[-1]}"
    return f"{names} x100; "


def _memory_kinds(runs: pd.DataFrame) -> list[str]:
    """The memory kinds the runs recorded, current kinds first (each gets its own column)."""
    kinds = set(runs.loc[runs["peak_memory_mb"].notna(), "memory_kind"].astype(str))
    known = list(MEMORY_KINDS)
    return sorted(kinds, key=lambda k: (known.index(k) if k in known else len(known), k))


def _mixed_data_caption(runs: pd.DataFrame, tasks: list[str]) -> str:
    """A caption sentence naming the tasks whose runs read different data (fingerprints)."""
    if "data_fingerprint" not in runs:
        return ""
    mixed = [t for t in tasks if runs.loc[runs["task"] == t, "data_fingerprint"].nunique() > 1]
    if not mixed:
        return ""
    names = ", ".join(t.upper() for t in mixed)
    return (
        f" Runs on {names} read different data (their data fingerprints differ): rows tagged"
        " [data …] are kept apart; see the notes."
    )


def _task_header(task: str, rows: pd.DataFrame) -> str:
    metric = str(rows["metric"].iloc[0]).rsplit("/", 1)[-1]
    return f"{task.upper()} ({metric_label(metric)})"


def _decimals(rows: pd.DataFrame) -> int:
    """One decimal for x100 metrics (papers' convention); 3 significant digits otherwise."""
    if bool(rows["percent"].all()):
        return 1
    scale = np.nanmax(np.abs(rows["mean"].to_numpy(dtype=float))) if len(rows) else 1.0
    if not np.isfinite(scale) or scale == 0:
        return 3
    return max(0, 2 - math.floor(math.log10(scale)))


def format_mean_std(mean: float, std: float, decimals: int, n: int | None = None) -> str:
    """``"85.2 ± 0.4"``; just the mean when there is one run (``n`` < 2) or no std: one seed
    has no spread to show, not a spread of 0."""
    if std is None or not np.isfinite(std) or (n is not None and n < 2):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _add_average(
    cells: pd.DataFrame, bold: pd.DataFrame, agg: pd.DataFrame, tasks: list[str]
) -> None:
    """Average over tasks, only when it means something: every task x100 and higher-is-better."""
    if len(tasks) < 2 or not bool(agg["percent"].all()) or not bool(agg["higher_is_better"].all()):
        return
    means = agg.pivot_table(index="config", columns="task", values="mean", aggfunc="first")
    complete = means.dropna()  # a row missing a task has no comparable average
    if complete.empty:  # no config ran every task: a column of dashes says nothing
        return
    avg = complete.mean(axis=1).round(1)
    cells["Avg."] = MISSING
    bold["Avg."] = False
    for config, value in avg.items():
        cells.loc[config, "Avg."] = f"{value:.1f}"
        bold.loc[config, "Avg."] = len(avg) > 1 and value == avg.max()


def _add_costs(cells: pd.DataFrame, runs: pd.DataFrame, configs: list[str]) -> None:
    per_config = runs.groupby("config")
    params = per_config["adapter_params"].median()
    total = per_config["total_params"].median()
    seconds = per_config["train_seconds"].mean()
    size = per_config["adapter_kb"].mean()
    # One column per memory kind: an older record's whole-process figure is another quantity.
    columns: dict[str, pd.Series] = {}
    for kind in _memory_kinds(runs):
        mine = runs[runs["memory_kind"] == kind]
        header = memory_kind(kind).column
        means = mine.groupby("config")["peak_memory_mb"].mean()
        columns[header] = means if header not in columns else columns[header].combine_first(means)
    for config in configs:
        p, t = params.get(config, np.nan), total.get(config, np.nan)
        share = f" ({100 * p / t:.2f}%)" if np.isfinite(p) and np.isfinite(t) and t > 0 else ""
        cells.loc[config, "# Params"] = (format_count(p) + share) if np.isfinite(p) else MISSING
        cells.loc[config, "Time (s)"] = _num(seconds.get(config, np.nan), 1)
        for header, memory in columns.items():
            cells.loc[config, header] = _num(memory.get(config, np.nan), 0)
        cells.loc[config, "Adapter (KiB)"] = _num(size.get(config, np.nan), 1)


def format_count(n: float) -> str:
    """``294912 -> "294.9K"``, ``1.2e6 -> "1.20M"`` (papers print parameters in K/M)."""
    if not np.isfinite(n):
        return MISSING
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return f"{n:.0f}"


def _num(value: float, decimals: int) -> str:
    return f"{value:,.{decimals}f}" if value is not None and np.isfinite(value) else MISSING


# -- renderers ---------------------------------------------------------------------------------
def to_markdown(table: ResultsTable) -> str:
    """A GitHub-flavoured Markdown table, best cells in ``**bold**``, caption below."""
    if table.empty:
        return f"_{table.caption}_\n"
    header = ["Method", *table.cells.columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for config, row in table.cells.iterrows():
        values = [f"**{v}**" if table.bold.loc[config, c] else str(v) for c, v in row.items()]
        lines.append("| " + " | ".join([_md_escape(str(config)), *values]) + " |")
    return "\n".join(lines) + f"\n\n{table.caption}\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


# Characters of labels and captions that plain pdflatex cannot print as they are.
_LATEX_SPECIALS = {
    "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
    "±": r"$\pm$", MISSING_CELL: "--", "\u2014": "---", "→": r"$\rightarrow$", "≤": r"$\leq$",
    "≥": r"$\geq$", "…": r"\ldots{}", "\u00d7": r"$\times$",
}  # fmt: skip


def latex_escape(text: str) -> str:
    """``text`` with the characters plain pdflatex cannot print as they are (``&``, ``%``,
    ``_``, ``±``, ``→``, ...) replaced by their LaTeX forms; the missing-cell mark becomes
    ``--``."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)


def _latex_cell(text: str, bold: bool) -> str:
    if text == MISSING:
        return "--"
    if " ± " in text:
        mean, std = text.split(" ± ")
        body = rf"{mean}$_{{\pm {std}}}$"
        return rf"\textbf{{{mean}}}$_{{\pm {std}}}$" if bold else body
    body = latex_escape(text)
    return rf"\textbf{{{body}}}" if bold else body


def to_latex(table: ResultsTable, label: str = "tab:lorabench-results") -> str:
    """A booktabs ``table`` environment (needs ``\\usepackage{booktabs}``)."""
    if table.empty:
        return f"% {table.caption}\n"
    columns = list(table.cells.columns)
    spec = "l" + "r" * len(columns)
    n_tasks = len(table.task_columns)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(["Method", *(latex_escape(c) for c in columns)]) + r" \\",
        r"\midrule",
    ]
    # booktabs: rules at the top, under the header and at the bottom only; none between rows.
    for config, row in table.cells.iterrows():
        values = [_latex_cell(str(v), bool(table.bold.loc[config, c])) for c, v in row.items()]
        lines.append(" & ".join([latex_escape(str(config)), *values]) + r" \\")
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        rf"\caption{{{latex_escape(table.caption)}}}",
        rf"\label{{{label}}}",
        r"\end{table}",
    ]
    if n_tasks:
        lines.insert(0, f"% {n_tasks} task column(s); generated by lorabench report")
    return "\n".join(lines) + "\n"


def to_html(table: ResultsTable, table_id: str = "results") -> str:
    """An HTML ``<table>`` (escaped; best cells in ``<b>``) with the caption."""
    if table.empty:
        return f"<p class='empty'>{html.escape(table.caption)}</p>"
    parts = [
        f"<table id='{table_id}' class='results'>",
        f"<caption>{html.escape(table.caption)}</caption>",
        "<thead><tr>",
    ]
    parts += ["<th>Method</th>"] + [f"<th>{html.escape(str(c))}</th>" for c in table.cells.columns]
    parts.append("</tr></thead><tbody>")
    for config, row in table.cells.iterrows():
        parts.append(f"<tr><th scope='row'>{html.escape(str(config))}</th>")
        for column, value in row.items():
            text = html.escape(str(value))
            parts.append(
                f"<td class='best'><b>{text}</b></td>"
                if table.bold.loc[config, column]
                else f"<td>{text}</td>"
            )
        parts.append("</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


def write_tables(table: ResultsTable, out_dir: Path, stem: str = "results") -> dict[str, Path]:
    """Writes ``STEM.md``, ``STEM.tex``, ``STEM.csv`` (long numeric form) and ``STEM.html``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: out_dir / f"{stem}.{kind}" for kind in ("md", "tex", "csv", "html")}
    paths["md"].write_text(to_markdown(table), encoding="utf-8")
    paths["tex"].write_text(to_latex(table), encoding="utf-8")
    table.numbers.to_csv(paths["csv"], index=False)
    paths["html"].write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>lorabench results</title>"
        "</head><body>" + to_html(table) + "</body></html>\n",
        encoding="utf-8",
    )
    return paths
