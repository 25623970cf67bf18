"""Published numbers next to this run's: ``paper | this run | difference`` per task and row.

For every registered :class:`~lorabench.variants.published.PublishedResult` (the LoRA paper's
RoBERTa-base table, its full fine-tuning row, VeRA's), the finished runs of the same variant, on
the same task, from a model of the same name, scored in the same metric and at the same nominal
rank are one row of this run; their median over seeds (the LoRA paper reports the median of 5)
is set beside the paper's number, both x100 as the papers print them. The section appears only
when some row matches: a report of runs on another model has none.

The rules of matching (model name, metric, rank) live here; which variant a number is about is
the data's (a registry name), so this module never names a variant.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lorabench.reports.frame import ReportData, score_caption
from lorabench.reports.stats import Section
from lorabench.variants.published import PublishedResult, published_results

COLUMNS = [
    "task",
    "metric",
    "config",
    "paper",
    "this_run",
    "difference",
    "seeds",
    "citation",
    "setting",
]
TITLE = "Published results: paper | this run | difference"
CAPTION = (
    "Each row's median over its seeds (x100, as the papers print it) beside the number its "
    "paper published for the same variant, model, task, metric and rank; difference = this "
    "run - paper, in points. A paper's setting can differ from this run's (the LoRA paper "
    "starts MRPC, RTE and STS-B from its MNLI adapter; see docs/paper-presets.md), and "
    "a published median of 5 seeds moves by about a point from seed noise alone."
)


def model_matches(model: str, published: str) -> bool:
    """Whether a run's model (a Hub id or a local path) is the published model: its last path
    part equals the published name, case-insensitive ("FacebookAI/roberta-base" and
    "/models/roberta-base" match "roberta-base"; "xlm-roberta-base" does not)."""
    name = str(model or "").replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return name.lower() == published.lower()


def compare_published(
    data: ReportData, results: list[PublishedResult] | None = None
) -> pd.DataFrame:
    """One line per published number and matching row (:data:`COLUMNS`); empty when no
    finished run matches any (``results``: the numbers to compare with, default every
    registered one)."""
    runs = data.runs
    lines: list[dict[str, object]] = []
    if runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    metric = runs["metric"].astype(str).str.rsplit("/", n=1).str[-1]
    model_names = runs["model"].astype(str)
    for result in published_results() if results is None else results:
        mask = (
            (runs["variant"] == result.variant)
            & (runs["task"] == result.task)
            & (metric == result.metric)
            # Published numbers are x100; a metric printed as is (MSE) is not comparable.
            & runs["percent"].astype(bool)
            & model_names.map(lambda m, r=result: model_matches(m, r.model))
            & runs["score"].notna()
        )
        if result.rank is not None:
            mask &= runs["rank"].fillna(-1).astype(int) == result.rank
        for config, group in runs[mask].groupby("config", sort=True):
            this_run = float(np.median(group["display"].astype(float)))
            lines.append(
                {
                    "task": result.task,
                    "metric": result.metric,
                    "config": str(config),
                    "paper": float(result.value),
                    "this_run": this_run,
                    "difference": this_run - float(result.value),
                    "seeds": int(group["seed"].nunique()),
                    "citation": result.citation,
                    "setting": result.setting,
                }
            )
    return pd.DataFrame(lines, columns=COLUMNS)


def sections(table: pd.DataFrame, score: str = "final") -> list[Section]:
    """The comparison as one titled section (none when no row matched), for Markdown and
    HTML alike; ``score``: which evaluation the runs are scored by (the caption says)."""
    if table.empty:
        return []
    rows = [
        [
            row.task,
            row.metric,
            row.config,
            f"{row.paper:.1f}",
            f"{row.this_run:.1f}",
            f"{row.difference:+.1f}",
            str(row.seeds),
            f"{row.citation}; {row.setting}" if row.setting else row.citation,
        ]
        for row in table.itertuples(index=False)
    ]
    header = ["task", "metric", "row", "paper", "this run", "difference", "seeds", "paper source"]
    return [Section(TITLE, f"{CAPTION} ({score_caption(score)})", header, rows)]


def to_markdown(table: pd.DataFrame, score: str = "final") -> str:
    """The section in Markdown (empty text when no row matched)."""
    return "\n".join(s.to_markdown() for s in sections(table, score))


def write_published(
    table: pd.DataFrame, out_dir: Path, *, score: str = "final", append_to: Path | None = None
) -> dict[str, Path]:
    """Writes ``published.md`` and ``published.csv`` into ``out_dir`` and appends the section to
    ``append_to`` (the report's ``stats.md``, which ``lorabench report`` prints) when given;
    returns ``{"md": ..., "csv": ...}``, nothing when no row matched."""
    if table.empty:
        return {}
    text = to_markdown(table, score)
    md = out_dir / "published.md"
    md.write_text(text + "\n", encoding="utf-8")
    csv = out_dir / "published.csv"
    table.to_csv(csv, index=False)
    if append_to is not None:
        with append_to.open("a", encoding="utf-8") as stream:
            stream.write("\n" + text + "\n")
    return {"md": md, "csv": csv}


__all__ = [
    "CAPTION",
    "COLUMNS",
    "TITLE",
    "compare_published",
    "model_matches",
    "sections",
    "to_markdown",
    "write_published",
]
