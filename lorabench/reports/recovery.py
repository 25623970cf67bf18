"""Did a method put its ranks where the task needs them? Rank recovery on planted-rank tasks.

A planted-rank task records the rank it planted in every adapted matrix (``true_ranks``); an
adaptive-rank run records the rank it ended with in each (``ranks``). Per run, the Spearman
correlation between the two over the matrices both name says whether the allocation follows the
planted one (1: same order; 0: unrelated; negative: the opposite). A method that gives every
matrix the same rank (LoRA, DyLoRA at any evaluation rank) has no order: its correlation is
undefined and the table says so instead of printing a number.

Per report row and task: the correlation of each seed, their mean and standard deviation, and
the mean final rank beside the planted mean, from :func:`scipy.stats.spearmanr`.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from lorabench.reports.frame import ReportData

COLUMNS = [
    "task",
    "config",
    "seeds",
    "spearman_mean",
    "spearman_std",
    "spearman_per_seed",
    "mean_final_rank",
    "mean_planted_rank",
    "matrices",
]


def run_spearman(ranks: dict[str, int], true_ranks: dict[str, int]) -> float:
    """Spearman's rho between a run's final and the planted ranks over the matrices both name;
    NaN when either side is constant (no order to compare) or fewer than 3 matrices match."""
    from scipy.stats import spearmanr

    names = sorted(set(ranks) & set(true_ranks))
    if len(names) < 3:
        return math.nan
    found = [float(ranks[n]) for n in names]
    planted = [float(true_ranks[n]) for n in names]
    if len(set(found)) < 2 or len(set(planted)) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(found, planted).statistic)


def rank_recovery(data: ReportData) -> pd.DataFrame:
    """One row per report row (config) and planted-rank task, over its finished runs (see the
    module docstring); empty when no run has planted ranks."""
    groups: dict[tuple[str, str], list] = {}
    for record in data.records:
        if record.true_ranks and record.ranks:
            groups.setdefault((record.task, data.config_of(record)), []).append(record)
    rows = []
    for (task, config), records in groups.items():
        records = sorted(records, key=lambda r: r.seed)
        rhos = [run_spearman(r.ranks, r.true_ranks) for r in records]
        defined = [x for x in rhos if math.isfinite(x)]
        common = [sorted(set(r.ranks) & set(r.true_ranks)) for r in records]
        rows.append(
            {
                "task": task,
                "config": config,
                "seeds": [r.seed for r in records],
                "spearman_mean": float(np.mean(defined)) if defined else math.nan,
                "spearman_std": float(np.std(defined, ddof=1)) if len(defined) > 1 else math.nan,
                "spearman_per_seed": rhos,
                "mean_final_rank": _mean_rank([r.ranks for r in records], common),
                "mean_planted_rank": _mean_rank([r.true_ranks for r in records], common),
                "matrices": len(common[0]) if common else 0,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


CAPTION = (
    "Rank recovery on planted-rank tasks: Spearman's rho between each run's final rank per "
    "adapted matrix and the rank planted there (1: the allocation follows the planted "
    "order; n/a: every matrix ended with the same rank, so there is no order), per seed, "
    "with the mean and standard deviation over seeds."
)
HEADER = [
    "task",
    "method",
    "Spearman rho, mean ± sd",
    "per seed",
    "mean final rank",
    "mean planted rank",
]


def table_rows(frame: pd.DataFrame) -> list[list[str]]:
    """The recovery table's cells, one list per row (for Markdown and HTML alike)."""
    rows = []
    for row in frame.itertuples(index=False):
        per_seed = ", ".join(
            f"{s}: {_rho(x)}" for s, x in zip(row.seeds, row.spearman_per_seed, strict=True)
        )
        if math.isfinite(row.spearman_mean):
            summary = f"{row.spearman_mean:+.2f}"
            if math.isfinite(row.spearman_std):
                summary += f" ± {row.spearman_std:.2f}"
        else:
            summary = "n/a (same rank everywhere)"
        rows.append(
            [
                row.task,
                row.config,
                summary,
                per_seed,
                f"{row.mean_final_rank:.2f}",
                f"{row.mean_planted_rank:.2f}",
            ]
        )
    return rows


def to_markdown(frame: pd.DataFrame) -> str:
    """The recovery table in Markdown, with a caption saying what the numbers are."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(frame)]
    return CAPTION + "\n\n" + "\n".join(lines) + "\n"


def write_recovery(frame: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    """Writes ``rank_recovery.md`` and ``rank_recovery.csv`` into ``out_dir`` (nothing when the
    frame is empty); returns them by format."""
    if frame.empty:
        return {}
    md = out_dir / "rank_recovery.md"
    md.write_text(to_markdown(frame), encoding="utf-8")
    csv = out_dir / "rank_recovery.csv"
    frame.to_csv(csv, index=False)
    return {"md": md, "csv": csv}


def _mean_rank(allocations: list[dict[str, int]], names: list[list[str]]) -> float:
    """The mean over runs of each run's mean rank over its matched matrices."""
    means = [np.mean([ranks[n] for n in common]) for ranks, common in zip(allocations, names)]
    return float(np.mean(means)) if means else math.nan


def _rho(value: float) -> str:
    return f"{value:+.2f}" if math.isfinite(value) else "n/a"
