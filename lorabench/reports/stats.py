"""Is a difference real? Paired tests per task and average ranks across tasks.

Per task, every report row (config) is compared with a reference row over the seeds both ran: a
seed fixes the task head's initialisation and the data order, so the differences of one seed are
paired. By default the reference of a row is the reference variant (the registered variant with
the lowest ``report_order``: LoRA) at the same nominal rank, else at the nearest rank, on the same
data, model and budget. The paired t-test, its two-sided p-value and the 95% confidence interval
of the mean difference come from :func:`scipy.stats.ttest_rel`.

Across tasks, the rows that ran every task are ranked per task (1 = best, ties averaged) and
compared by their average rank with the Friedman test (:func:`scipy.stats.friedmanchisquare`)
and the Nemenyi post-hoc test (:func:`scikit_posthocs.posthoc_nemenyi_friedman`), drawn as
Demšar's (2006) critical-difference diagram (:func:`scikit_posthocs.critical_difference_diagram`).
The critical difference is Demšar's ``q_alpha * sqrt(k (k + 1) / (6 N))`` with ``q_alpha`` from
:data:`scipy.stats.studentized_range`, the distribution the Nemenyi p-values come from, so a bar
joins two rows exactly when their ranks differ by less than it.

With too few shared seeds or too few rows and tasks for a test, the tables say so in words
("cannot decide: ...") instead of printing a number.
"""

from __future__ import annotations

import math
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lorabench.reports.frame import (
    ReportData,
    ordered_configs,
    ordered_tasks,
    variant_class,
    variant_name,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ALPHA = 0.05  # significance level of every test here; the intervals are 1 - ALPHA
MIN_SEEDS = 3  # shared seeds a paired test needs (2 leave one degree of freedom: no test)
MIN_METHODS = 3  # rows the Friedman test needs (scipy's minimum; 2 rows: a paired test)
MIN_TASKS = 2  # tasks the Friedman test needs
CANNOT_DECIDE = "cannot decide"
# Two rows are paired on a task only when all of these agree.
_SAME = ("task", "metric", "data_fingerprint", "model", "model_fingerprint", "budget")
SAME_SETUP = _SAME  # public: the claims check pairs rows on the same columns

PAIRED_COLUMNS = [
    "task",
    "metric",
    "config",
    "reference",
    "match",
    "n",
    "seeds",
    "mean_difference",
    "ci_low",
    "ci_high",
    "p_value",
    "verdict",
    "note",
    "percent",
]


# -- the reference -------------------------------------------------------------------------------
def default_reference_variant() -> str | None:
    """The registered variant with the lowest ``report_order`` (LoRA among the built-ins): the
    variant every other one is compared with; None when no registered variant sets an order."""
    from lorabench.variants import VARIANTS

    ordered = []
    for name in VARIANTS.list():
        cls = variant_class(name)
        position = cls.report_position() if cls is not None else None
        if position is not None:
            ordered.append((position, name))
    return min(ordered)[1] if ordered else None


def _row_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (config, task): what decides comparability, the rank and the row order."""
    firsts = runs.drop_duplicates(["config", "task"])
    order = {config: i for i, config in enumerate(ordered_configs(runs))}
    out = firsts[["config", "variant", "rank", "percent", "higher_is_better", *_SAME]]
    out = out.assign(order=[order[c] for c in firsts["config"]])
    return out.sort_values(["order", "task"]).reset_index(drop=True)


def _choose_reference(
    row: pd.Series, rows: pd.DataFrame, reference: str | None, reference_variant: str | None
) -> tuple[str | None, str, str]:
    """(reference config, how it was matched, why there is none) for one (config, task) row."""
    comparable = rows
    for key in _SAME:
        comparable = comparable[comparable[key] == row[key]]
    if reference is not None:
        if not (rows["config"] == reference).any():
            return None, "", f"{reference} has no finished run on this task"
        if not (comparable["config"] == reference).any():
            return None, "", f"{reference} ran this task on other data, model, budget or metric"
        return reference, "named", ""
    if reference_variant is None:
        return None, "", "no variant sets a report order, so there is no default reference"
    name = variant_name(reference_variant)
    candidates = comparable[comparable["variant"] == reference_variant]
    if candidates.empty:
        return None, "", f"no {name} run on this task with the same data, model and budget"
    if pd.isna(row["rank"]):
        return str(candidates["config"].iloc[0]), "rank unknown", ""
    same = candidates[candidates["rank"] == row["rank"]]
    if not same.empty:
        return str(same["config"].iloc[0]), "same rank", ""
    ranked = candidates[candidates["rank"].notna()]
    if ranked.empty:
        return str(candidates["config"].iloc[0]), "rank unknown", ""
    # The nearest rank; on a tie the lower (cheaper) one. Row order breaks the remaining ties.
    distance = (ranked["rank"].astype(float) - float(row["rank"])).abs()
    key = pd.DataFrame({"d": distance, "r": ranked["rank"].astype(float), "o": ranked["order"]})
    best = key.sort_values(["d", "r", "o"]).index[0]
    return str(ranked.loc[best, "config"]), "nearest rank", ""


# -- paired differences per task -----------------------------------------------------------------
def paired_differences(
    data: ReportData,
    reference: str | None = None,
    *,
    reference_variant: str | None = None,
    alpha: float = ALPHA,
) -> pd.DataFrame:
    """Per task, every report row against its reference over the seeds both ran.

    Args:
        data: the report data (:func:`~lorabench.reports.frame.load_report_data`).
        reference: a row label ("LoRA r=8") to compare every row with; default: per row, the
            ``reference_variant``'s row at the same nominal rank (else the nearest rank) that
            ran the task on the same data, model and budget. A label that names no row fails
            with :class:`ValueError`, listing the rows.
        reference_variant: the registry name of the default reference's variant; default
            :func:`default_reference_variant` (LoRA).
        alpha: the significance level; the interval is ``1 - alpha``.

    Returns:
        One row per (task, config) other than its reference, columns :data:`PAIRED_COLUMNS`:
        ``mean_difference`` (method minus reference, in the table's units, signed so that
        positive is better also for lower-is-better metrics), ``ci_low``/``ci_high`` (the
        t interval of the mean paired difference), ``p_value`` (two-sided paired t-test; NaN
        when there is no test), ``verdict`` ("better", "worse", "no significant difference" or
        "cannot decide: ..."), ``note`` (why a p-value is missing although a verdict is given).
    """
    runs = data.runs
    if runs.empty:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    if reference is not None and reference not in set(runs["config"]):
        known = ", ".join(ordered_configs(runs))
        raise ValueError(f"no report row is labelled {reference!r}; the rows are: {known}")
    if reference is None and reference_variant is None:
        reference_variant = default_reference_variant()
    # Per (config, task, seed) one score: a seed run twice in one row (settings that do not
    # change the score, e.g. how often it evaluated) counts once, at its mean.
    scores = runs.groupby(["config", "task", "seed"])["display"].mean()
    rows = _row_table(runs)
    out = []
    for task in ordered_tasks(rows["task"]):
        on_task = rows[rows["task"] == task]
        for _, row in on_task.iterrows():
            if reference is not None and row["config"] == reference:
                continue
            chosen, match, missing = _choose_reference(row, on_task, reference, reference_variant)
            if chosen == row["config"]:
                continue  # the reference itself
            entry = {
                "task": task,
                "metric": row["metric"],
                "config": row["config"],
                "reference": chosen or "",
                "match": match,
                "percent": bool(row["percent"]),
            }
            if chosen is None:
                entry.update(_undecided(f"{CANNOT_DECIDE}: {missing}", 0, []))
            else:
                method = scores.loc[(row["config"], task)]
                base = scores.loc[(chosen, task)]
                seeds = sorted(set(method.index) & set(base.index))
                sign = 1.0 if row["higher_is_better"] else -1.0
                entry.update(
                    _paired_test(
                        sign * method.loc[seeds].to_numpy(float),
                        sign * base.loc[seeds].to_numpy(float),
                        [int(s) for s in seeds],
                        alpha,
                    )
                )
            out.append(entry)
    return pd.DataFrame(out, columns=PAIRED_COLUMNS)


def _undecided(verdict: str, n: int, seeds: list[int]) -> dict[str, object]:
    return {
        "n": n,
        "seeds": seeds,
        "mean_difference": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "p_value": math.nan,
        "verdict": verdict,
        "note": "",
    }


def paired_test(
    method: np.ndarray | list[float],
    base: np.ndarray | list[float],
    seeds: list[int],
    *,
    alpha: float = ALPHA,
) -> dict[str, object]:
    """The paired t-test of ``method - base`` over ``seeds`` (the two arrays aligned by seed and
    already signed so that higher is better), exactly as :func:`paired_differences` runs it:
    keys ``n``, ``seeds``, ``mean_difference``, ``ci_low``, ``ci_high``, ``p_value``,
    ``verdict`` and ``note`` of :data:`PAIRED_COLUMNS`. Fewer than :data:`MIN_SEEDS` pairs give
    the "cannot decide" verdict and no interval; differences without spread give the interval
    ``[mean, mean]`` and no p-value (the note says so)."""
    return _paired_test(
        np.asarray(method, dtype=float), np.asarray(base, dtype=float), list(seeds), alpha
    )


def _paired_test(
    method: np.ndarray, base: np.ndarray, seeds: list[int], alpha: float
) -> dict[str, object]:
    """The paired t-test of ``method - base`` (both already signed so that higher is better)."""
    from scipy.stats import ttest_rel

    n = len(seeds)
    if n < MIN_SEEDS:
        out = _undecided(
            f"{CANNOT_DECIDE}: {n} shared seed(s), a paired test needs at least {MIN_SEEDS}",
            n,
            seeds,
        )
        if n:
            out["mean_difference"] = float(np.mean(method - base))
        return out
    differences = method - base
    mean = float(np.mean(differences))
    # Equal up to rounding (0.62 - 0.60 and 0.63 - 0.61 differ in the last bit): no spread.
    scale = max(1.0, float(np.max(np.abs(np.concatenate([method, base])))))
    if np.ptp(differences) <= 1e-9 * scale:
        # No spread: scipy's t is 0/0 (NaN) or c/0 (infinite, p = 0). Neither is a test result;
        # the differences themselves are the answer.
        if abs(mean) <= 1e-9 * scale:
            verdict, what, mean = "no significant difference", "identical on every seed", 0.0
        else:
            verdict = "better" if mean > 0 else "worse"
            what = "the same difference on every seed"
        return {
            **_undecided(verdict, n, seeds),
            "mean_difference": mean,
            "ci_low": mean,
            "ci_high": mean,
            "note": f"{what}; no spread, so no t-test and no p-value",
        }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # precision loss on near-constant input
        result = ttest_rel(method, base)
        interval = result.confidence_interval(confidence_level=1 - alpha)
    p = float(result.pvalue)
    verdict = ("better" if mean > 0 else "worse") if p < alpha else "no significant difference"
    return {
        "n": n,
        "seeds": seeds,
        "mean_difference": mean,
        "ci_low": float(interval.low),
        "ci_high": float(interval.high),
        "p_value": p,
        "verdict": verdict,
        "note": "",
    }


# -- average ranks across tasks ------------------------------------------------------------------
@dataclass
class FriedmanResult:
    """Average ranks across tasks, the Friedman test and the Nemenyi post-hoc test.

    Attributes:
        scores: mean score over seeds (table units), one row per method (row label) and one
            column per task; only methods that ran every task kept here.
        ranks: the per-task rank of each method (1 = best for that task's metric, ties averaged).
        average_ranks: the mean of :attr:`ranks` over tasks, best first.
        statistic: Friedman's chi-square (NaN when not tested).
        p_value: its p-value from the chi-square approximation (NaN when not tested).
        pairwise: Nemenyi p-values, methods x methods (None when not tested).
        critical_difference: Demšar's CD at :attr:`alpha` (NaN when not tested).
        alpha: the significance level.
        reason: why there is no test ("cannot decide: ..."); "" when tested.
        excluded: sentences naming the methods and tasks left out and why.
    """

    scores: pd.DataFrame
    ranks: pd.DataFrame
    average_ranks: pd.Series
    statistic: float = math.nan
    p_value: float = math.nan
    pairwise: pd.DataFrame | None = None
    critical_difference: float = math.nan
    alpha: float = ALPHA
    reason: str = ""
    excluded: list[str] = field(default_factory=list)

    @property
    def tested(self) -> bool:
        """Whether the Friedman test (and the post-hoc test) ran."""
        return not self.reason

    @property
    def methods(self) -> int:
        """k: the number of methods ranked."""
        return len(self.scores.index)

    @property
    def tasks(self) -> int:
        """N: the number of tasks they were ranked on."""
        return len(self.scores.columns)

    def different_pairs(self) -> list[tuple[str, str, float]]:
        """(better, worse, Nemenyi p) for each pair that differs at :attr:`alpha`, best first."""
        if self.pairwise is None:
            return []
        names = list(self.average_ranks.index)
        return [
            (a, b, float(self.pairwise.loc[a, b]))
            for i, a in enumerate(names)
            for b in names[i + 1 :]
            if self.pairwise.loc[a, b] < self.alpha
        ]


def friedman_ranks(data: ReportData, *, alpha: float = ALPHA) -> FriedmanResult:
    """Ranks the report rows on every task they all ran and tests whether they differ.

    A row that lacks a task is left out (named in :attr:`FriedmanResult.excluded`), as is a
    task whose rows report different metrics. Needs at least :data:`MIN_METHODS` rows and
    :data:`MIN_TASKS` tasks; otherwise :attr:`FriedmanResult.reason` says why there is no test.
    """
    from scipy.stats import friedmanchisquare, rankdata, studentized_range

    runs = data.runs
    empty = pd.DataFrame()
    if runs.empty:
        return FriedmanResult(empty, empty, pd.Series(dtype=float), reason=_few(0, 0))
    excluded: list[str] = []
    tasks = ordered_tasks(runs["task"])
    mixed = [t for t in tasks if runs.loc[runs["task"] == t, "metric"].nunique() > 1]
    if mixed:
        excluded.append(f"Tasks whose rows report different metrics: {', '.join(mixed)}.")
        tasks = [t for t in tasks if t not in mixed]
    runs = runs[runs["task"].isin(tasks)]
    means = runs.groupby(["config", "task"])["display"].mean().unstack("task")
    configs = [c for c in ordered_configs(runs) if c in means.index]
    means = means.reindex(index=configs, columns=tasks)
    complete = [c for c in configs if means.loc[c].notna().all()]
    for config in configs:
        if config not in complete:
            lacking = [t for t in tasks if pd.isna(means.loc[config, t])]
            excluded.append(f"{config}: no finished run on {', '.join(lacking)}.")
    scores = means.loc[complete]
    # Signed so that higher is better on every task, then ranked: 1 = best.
    higher = runs.groupby("task")["higher_is_better"].first().reindex(tasks)
    signed = scores * np.where(higher.to_numpy(bool), 1.0, -1.0)
    ranks = pd.DataFrame(
        rankdata(-signed.to_numpy(float), axis=0, method="average") if len(complete) else [],
        index=scores.index,
        columns=scores.columns,
    )
    average = ranks.mean(axis=1).sort_values(kind="stable")
    result = FriedmanResult(scores, ranks, average, alpha=alpha, excluded=excluded)
    k, n = result.methods, result.tasks
    if k < MIN_METHODS or n < MIN_TASKS:
        result.reason = _few(k, n)
        return result
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 when every task ties every row
        test = friedmanchisquare(*signed.to_numpy(float))
    if not math.isfinite(float(test.statistic)):
        result.reason = f"{CANNOT_DECIDE}: every task gives all {k} methods the same score"
        return result
    result.statistic, result.p_value = float(test.statistic), float(test.pvalue)
    from scikit_posthocs import posthoc_nemenyi_friedman  # imports statsmodels: only when needed

    # Nemenyi on the blocks-by-groups matrix: tasks are blocks, methods are groups.
    result.pairwise = posthoc_nemenyi_friedman(signed.T).loc[average.index, average.index]
    q_alpha = float(studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    result.critical_difference = q_alpha * math.sqrt(k * (k + 1) / (6 * n))
    return result


def _few(methods: int, tasks: int) -> str:
    return (
        f"{CANNOT_DECIDE}: {methods} method(s) ran all of {tasks} task(s); the Friedman test "
        f"needs at least {MIN_METHODS} methods on at least {MIN_TASKS} tasks"
    )


# -- the critical-difference diagram -------------------------------------------------------------
def plot_critical_difference(result: FriedmanResult) -> Figure | str:
    """Demšar's critical-difference diagram: each method at its average rank (1 = best, on the
    left), bars joining methods the Nemenyi test does not tell apart, the CD above the axis;
    a string saying why when there was no test."""
    if not result.tested or result.pairwise is None:
        return result.reason or f"{CANNOT_DECIDE}: no test"
    import matplotlib

    matplotlib.use("Agg")  # files only, as the other figures
    import matplotlib.pyplot as plt
    from matplotlib.transforms import offset_copy
    from scikit_posthocs import critical_difference_diagram

    k, n = result.methods, result.tasks
    fig, ax = plt.subplots(figsize=(8.0, 2.0 + 0.32 * k), layout="constrained")
    critical_difference_diagram(
        result.average_ranks,
        result.pairwise,
        alpha=result.alpha,
        ax=ax,
        label_fmt_left="{label} ({rank:.2f})",
        label_fmt_right="({rank:.2f}) {label}",
    )
    # The whole rank axis, as Demšar draws it; a little room for the end markers.
    ax.set_xlim(1 - 0.03 * k, k + 0.03 * k)
    ax.set_xticks(range(1, k + 1))
    ax.spines["top"].set_bounds(1, k)
    # The CD bar from rank 1, above the tick labels (the library draws it over them).
    above = offset_copy(ax.transData, fig=fig, y=26, units="points")
    cd = result.critical_difference
    ax.plot([1, 1 + cd], [0, 0], color="k", linewidth=2, transform=above, clip_on=False)
    ax.plot([1, 1], [-0.15, 0.15], color="k", linewidth=1, transform=above, clip_on=False)
    ax.text(1 + cd / 2, 0, f"CD = {cd:.2f}", ha="center", va="bottom", transform=above)
    verdict = "differ" if result.p_value < result.alpha else "do not differ"
    title = (
        f"Average rank over {n} tasks (1 = best). Friedman: the {k} methods {verdict} "
        f"(p = {_p(result.p_value)}); bars join methods the Nemenyi test does not tell apart "
        f"(α = {result.alpha:g})."
    )
    # pad (points): room for the CD bar above the tick labels.
    ax.set_title("\n".join(textwrap.wrap(title, 100)), fontsize=9, pad=44)
    return fig


def critical_difference_figure(data: ReportData) -> Figure | str:
    """:func:`plot_critical_difference` of :func:`friedman_ranks` (the report's figure hook)."""
    return plot_critical_difference(friedman_ranks(data))


# -- Markdown ------------------------------------------------------------------------------------
@dataclass
class Section:
    """One titled table (or just a caption) of the statistics, for Markdown and HTML alike."""

    title: str
    caption: str
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)

    def to_markdown(self) -> str:
        """``### title``, the caption, then the table when there is one."""
        out = [f"### {self.title}", "", self.caption]
        if self.header:
            out += ["", "| " + " | ".join(self.header) + " |"]
            out.append("|" + "---|" * len(self.header))
            out += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(out) + "\n"


def sections(paired: pd.DataFrame, friedman: FriedmanResult) -> list[Section]:
    """The statistics as titled sections: paired differences, average ranks, post-hoc pairs."""
    out = [_paired_section(paired), _ranks_section(friedman)]
    if friedman.tested:
        out.append(_posthoc_section(friedman))
    return out


def to_markdown(paired: pd.DataFrame, friedman: FriedmanResult) -> str:
    """The statistics in Markdown, each table with a caption saying what its numbers are."""
    return "\n".join(s.to_markdown() for s in sections(paired, friedman))


def _paired_section(paired: pd.DataFrame) -> Section:
    caption = (
        "Paired differences per task: each method minus its reference over the seeds both ran "
        "(a seed fixes the head initialisation and the data order, so the two runs of a seed "
        "are a pair), in the table's units (x100 for accuracy-like metrics). The sign is "
        "turned so that a positive difference means the method is better, also for "
        "lower-is-better metrics (there: reference minus method). The reference is the named "
        "row, else the first variant in report order at the same rank (or the nearest rank) on "
        "the same data, model and budget. 95% CI: Student's t interval of the mean difference; "
        "p: two-sided paired t-test (scipy.stats.ttest_rel); verdict at α = 0.05, not corrected "
        f"for the number of comparisons. With fewer than {MIN_SEEDS} shared seeds there is no "
        "test, and the table says so."
    )
    if paired.empty:
        return Section("Paired differences", caption + "\n\nNo row to compare: no table.")
    header = ["task", "method", "reference", "seeds", "difference", "95% CI", "p", "verdict"]
    rows = []
    for row in paired.itertuples(index=False):
        fmt = _fmt_percent if row.percent else _fmt_plain
        reference = row.reference + (f" ({row.match})" if row.match else "")
        verdict = row.verdict + (f"; {row.note}" if row.note else "")
        defined = math.isfinite(row.ci_low)
        rows.append(
            [
                f"{row.task} ({row.metric})",
                row.config,
                reference or "–",
                str(row.n),
                fmt(row.mean_difference) if math.isfinite(row.mean_difference) else "–",
                f"[{fmt(row.ci_low)}, {fmt(row.ci_high)}]" if defined else "–",
                _p(row.p_value) if math.isfinite(row.p_value) else "–",
                verdict,
            ]
        )
    return Section("Paired differences", caption, header, rows)


def _ranks_section(result: FriedmanResult) -> Section:
    caption = (
        "Average ranks across tasks (Demšar 2006): per task, the methods that ran every task "
        "are ranked by their mean score over seeds (1 = best, as the task's metric counts "
        "better; ties share the mean rank), then the ranks are averaged. The Friedman test "
        "(scipy.stats.friedmanchisquare, chi-square approximation: rough with few tasks) asks "
        "whether any method ranks differently from the others."
    )
    if result.tested:
        verdict = "the methods differ" if result.p_value < result.alpha else "no difference found"
        caption += (
            f" Friedman χ² = {result.statistic:.2f} on {result.methods - 1} degrees of freedom "
            f"(k = {result.methods} methods, N = {result.tasks} tasks), p = "
            f"{_p(result.p_value)}: {verdict} at α = {result.alpha:g}."
        )
    else:
        caption += f" No test: {result.reason.removeprefix(CANNOT_DECIDE + ': ')}."
    if result.excluded:
        caption += " Left out: " + " ".join(result.excluded)
    if result.ranks.empty:
        return Section("Average ranks", caption)
    tasks = list(result.ranks.columns)
    header = ["method", "average rank", *[f"rank on {t}" for t in tasks]]
    rows = [
        [name, f"{rank:.2f}", *[f"{result.ranks.loc[name, t]:g}" for t in tasks]]
        for name, rank in result.average_ranks.items()
    ]
    return Section("Average ranks", caption, header, rows)


def _posthoc_section(result: FriedmanResult) -> Section:
    caption = (
        "Post-hoc comparison of every pair (Nemenyi, scikit_posthocs.posthoc_nemenyi_friedman, "
        "adjusted for all pairs): two methods differ when their average ranks differ by more "
        f"than the critical difference CD = {result.critical_difference:.2f} (Demšar 2006, "
        f"α = {result.alpha:g}, k = {result.methods}, N = {result.tasks}); the "
        "critical-difference diagram draws the same."
    )
    if result.p_value >= result.alpha:
        caption += (
            " The Friedman test found no difference, so the pairs below are not read as findings."
        )
    pairs = result.different_pairs()
    if not pairs:
        return Section("Post-hoc pairs", caption + " No pair differs.")
    rows = [
        [a, b, f"{result.average_ranks[b] - result.average_ranks[a]:.2f}", _p(p)]
        for a, b, p in pairs
    ]
    return Section(
        "Post-hoc pairs", caption, ["better", "worse", "rank difference", "Nemenyi p"], rows
    )


def _fmt_percent(value: float) -> str:
    return f"{value:+.2f}"


def _fmt_plain(value: float) -> str:
    return f"{value:+.3g}"


def _p(value: float) -> str:
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def write_stats(paired: pd.DataFrame, friedman: FriedmanResult, out_dir: Path) -> dict[str, Path]:
    """Writes ``stats.md``, ``paired_differences.csv`` and ``average_ranks.csv`` into
    ``out_dir`` (nothing when there is no row at all); returns them by format."""
    if paired.empty and friedman.ranks.empty:
        return {}
    md = out_dir / "stats.md"
    md.write_text(to_markdown(paired, friedman), encoding="utf-8")
    csv = out_dir / "paired_differences.csv"
    paired.to_csv(csv, index=False)
    ranks = out_dir / "average_ranks.csv"
    table = friedman.ranks.assign(average_rank=friedman.average_ranks)
    table.sort_values("average_rank").to_csv(ranks, index_label="config")
    return {"md": md, "csv": csv, "ranks_csv": ranks}
