"""The report's figures (matplotlib, Agg backend), each saved as PNG and SVG.

Every ``plot_*`` function takes :class:`~lorabench.reports.frame.ReportData` and returns a
matplotlib Figure, or a string saying why there is nothing to draw (so the report can say what is
missing instead of showing an empty axis).
"""

from __future__ import annotations

import textwrap
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lorabench.reports.frame import (
    MEMORY_KINDS,
    ReportData,
    aggregate,
    is_percent,
    memory_kind,
    metric_value,
    ordered_configs,
    ordered_tasks,
    short_matrix_labels,
    split_module_name,
    variant_class,
    variant_name,
    variant_position,
    variant_sort_key,
)
from lorabench.results.records import RunRecord

_PALETTE = plt.get_cmap("tab10").colors
_MARKERS = "osD^vP*Xh<>"
_LINESTYLES = ("-", "--", ":", "-.")
MAX_HEATMAPS = 6  # (task, config) panels in the rank-allocation figure


PLUGIN_STYLE_SLOTS = 5  # a variant without report_order takes one of the palette's last five


def variant_style(variant: str) -> dict[str, object]:
    """A fixed colour and marker per variant, the same in every figure: the variant's
    ``report_order`` picks them; others get one from a hash of the name (stable across runs)."""
    position = variant_position(variant)
    if position is None:
        position = len(_PALETTE) - PLUGIN_STYLE_SLOTS + zlib.crc32(variant.encode()) % 5
    return {
        "color": _PALETTE[position % len(_PALETTE)],
        "marker": _MARKERS[position % len(_MARKERS)],
    }


def variants_with(fact: str, present: set[str] | None = None) -> list[str]:
    """Display names of the variants (among ``present``, or all registered) whose class sets
    the boolean ``fact`` (``adaptive_rank``, ``multi_rank_eval``), in report order."""
    from lorabench.variants import VARIANTS

    names = sorted(VARIANTS.list() if present is None else present, key=variant_sort_key)
    return [
        variant_name(v)
        for v in names
        if (cls := variant_class(v)) is not None and bool(getattr(cls, fact, False))
    ]


def _score_label(metric: str, percent: bool) -> str:
    """``"accuracy (×100)"``: the metric's name, and the x100 its record asks for. Never "%": a
    correlation (Matthews, Pearson) x100 is not a percentage."""
    name = metric.rsplit("/", 1)[-1]
    return f"{name} (×100)" if percent else name


def _with_spread(
    ax: plt.Axes,
    x: object,
    y: object,
    std: object,
    n: object,
    *,
    label: str | None,
    linestyle: str = "none",
    **style: object,
) -> Line2D:
    """The points (and line) ``x, y`` and, at the points of more than one run only, a ±std bar:
    one seed has no spread to show, so its point has no bar (not a bar of 0)."""
    x, y, std, n = (np.asarray(v, dtype=float) for v in (x, y, std, n))
    (line,) = ax.plot(x, y, linestyle=linestyle, label=label, **style)
    spread = (n > 1) & np.isfinite(std)
    if spread.any():
        ax.errorbar(
            x[spread],
            y[spread],
            yerr=std[spread],
            fmt="none",
            ecolor=line.get_color(),
            capsize=3,
            linewidth=1,
        )
    return line


def _spread_note(counts: object) -> str:
    """``"; no bar: one run"`` for a title when some points are of a single run."""
    return "; no bar: one run" if (np.asarray(counts, dtype=float) < 2).any() else ""


def _short_model(model: str) -> str:
    return Path(str(model)).name or str(model)


def _grid(
    n: int, ncols_max: int = 3, size: tuple[float, float] = (4.6, 3.6)
) -> tuple[Figure, list[plt.Axes]]:
    ncols = min(n, ncols_max)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(size[0] * ncols, size[1] * nrows),
        squeeze=False,
        layout="constrained",
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _suptitle(fig: Figure, text: str) -> None:
    """A figure title wrapped to the figure's width: a one-panel figure is narrower than a long
    title, and the constrained layout makes room for every line."""
    chars = max(30, int(fig.get_figwidth() * 72 / (12 * 0.56)))  # 12 pt, ~0.56 em per character
    lines = textwrap.wrap(text, chars)
    fig.set_figheight(fig.get_figheight() + 0.22 * (len(lines) - 1))  # the panels keep their height
    fig.suptitle("\n".join(lines))


def _legend_below(
    fig: Figure, axes: list[plt.Axes], ncols_max: int = 3, order: list[str] | None = None
) -> None:
    """One legend for the whole figure, under the panels: long config labels ("LoRA r=2 (lr=...,
    alpha=32)") would cover the data inside a panel. Entries of every panel, each label once."""
    handles: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if order:  # the table's row order, whichever panel a config first appeared in
        rank = {label: i for i, label in enumerate(order)}
        handles = dict(sorted(handles.items(), key=lambda kv: rank.get(kv[0], len(rank))))
    if handles:
        longest = max(len(label) for label in handles)
        per_row = max(
            1,
            min(ncols_max, len(handles), int(fig.get_figwidth() * 72 / (8 * 0.6) / (longest + 6))),
        )
        rows = -(-len(handles) // per_row)
        fig.set_figheight(
            fig.get_figheight() + 0.2 * rows + 0.15
        )  # room for the legend, not taken from panels
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="outside lower center",
            ncols=per_row,
            fontsize=8,
        )


def _spread_labels(fig: Figure, ax: plt.Axes, texts: list[plt.Text]) -> None:
    """Moves point labels apart vertically until none overlaps another (points of similar
    parameter count and score, e.g. LoRA r=8 and DoRA r=8, would print "r=8" on top of each
    other)."""
    if len(texts) < 2:
        return
    renderer = fig.canvas.get_renderer()
    placed: list[object] = []
    # Top label first; a label that overlaps one above it moves down (offsets are in points).
    for text in sorted(texts, key=lambda t: -t.get_window_extent(renderer).y0):
        for _ in range(len(texts) + 1):
            box = text.get_window_extent(renderer).expanded(1.0, 1.1)
            if not any(box.overlaps(other) for other in placed):
                break
            x, y = text.get_position()
            text.set_position((x, y - box.height * 72 / fig.dpi))
        placed.append(text.get_window_extent(renderer))


def pareto_front(
    params: np.ndarray, scores: np.ndarray, higher_is_better: bool = True
) -> np.ndarray:
    """Indices of the points no other point beats on both fewer parameters and a better score."""
    sign = 1.0 if higher_is_better else -1.0
    order = np.lexsort((-sign * scores, params))  # by params, then best score first
    front, best = [], -np.inf
    for i in order:
        if sign * scores[i] > best:
            front.append(i)
            best = sign * scores[i]
    return np.array(front, dtype=int)


# -- score vs parameters ---------------------------------------------------------------------------
def plot_score_vs_params(data: ReportData) -> Figure | str:
    """One panel per model and task: each config's score (mean ± std over seeds, display units;
    no bar for one run) against its trainable adapter parameters on a log axis, with rank labels
    and the panel's own Pareto front circled (runs of different models are never one front).
    Nothing to draw when no finished run records its adapter parameter count."""
    agg = aggregate(data.runs)
    agg = agg[np.isfinite(agg["adapter_params"].astype(float))] if not agg.empty else agg
    if agg.empty:
        return "no finished run records its adapter parameter count"
    models = sorted(set(agg["model"]))
    panels = [
        (model, task)
        for model in models
        for task in ordered_tasks(agg.loc[agg["model"] == model, "task"])
    ]
    fig, axes = _grid(len(panels))
    point_labels: list[tuple[plt.Axes, list[plt.Text]]] = []
    for ax, (model, task) in zip(axes, panels, strict=True):
        mine = agg[(agg["task"] == task) & (agg["model"] == model)].reset_index(drop=True)
        labels: list[plt.Text] = []
        point_labels.append((ax, labels))
        for variant in _variants_in_order(mine["variant"]):
            rows = mine[mine["variant"] == variant]
            style = variant_style(variant)
            _with_spread(
                ax,
                rows["adapter_params"],
                rows["mean"],
                rows["std"],
                rows["n"],
                label=variant_name(variant),
                markersize=7,
                **style,
            )
            for _, row in rows.iterrows():
                if row["rank_label"]:  # in the variant's colour, so "r=8" says whose r=8 it is
                    point = (row["adapter_params"], row["mean"])
                    labels.append(
                        ax.annotate(
                            row["rank_label"],
                            point,
                            fontsize=7,
                            xytext=(5, 3),
                            textcoords="offset points",
                            color=style["color"],
                        )
                    )
        front = pareto_front(
            mine["adapter_params"].to_numpy(float),
            mine["mean"].to_numpy(float),
            bool(mine["higher_is_better"].iloc[0]),
        )
        points = mine.iloc[front]
        ax.step(
            points["adapter_params"],
            points["mean"],
            where="post",
            color="0.4",
            linestyle="--",
            linewidth=1,
            label="Pareto front",
            zorder=0,
        )
        ax.scatter(
            points["adapter_params"],
            points["mean"],
            s=160,
            facecolors="none",
            edgecolors="0.3",
            zorder=0,
        )
        ax.set_xscale("log")
        ax.set_xlabel("trainable adapter parameters (count, log scale)")
        ax.set_ylabel(_score_label(mine["metric"].iloc[0], bool(mine["percent"].iloc[0])))
        ax.set_title(task.upper() if len(models) == 1 else f"{task.upper()}: {_short_model(model)}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    per_model = "; one panel and Pareto front per model" if len(models) > 1 else ""
    _suptitle(
        fig,
        "Score vs trainable adapter parameters (mean ± std over seeds"
        f"{_spread_note(agg['n'])}; circled: Pareto front{per_model})",
    )
    fig.draw_without_rendering()  # lay the panels out first: overlaps are judged where they print
    for ax, labels in point_labels:
        _spread_labels(fig, ax, labels)
    return fig


def _variants_in_order(variants: pd.Series) -> list[str]:
    """By ``report_order``, then the others by name: the same legend order in every figure."""
    return sorted(set(variants), key=variant_sort_key)


# -- score vs rank ---------------------------------------------------------------------------------
def plot_score_vs_rank(data: ReportData) -> Figure | str:
    """One panel per task: score (mean ± std over seeds; no bar for one run) against rank on a
    log2 axis, a line per variant and recipe trained at each rank, and the one-run curve (with
    its seed band) of every config that evaluated one training at several ranks
    (``rank_scores``, e.g. DyLoRA); such a config is drawn only as its curve. An adaptive-rank
    config (AdaLoRA) sits at its final mean rank (``axis_rank``), never at its initial rank; one
    that recorded no final ranks is left out and the title says so. Nothing to draw when no run
    records a rank."""
    curves = _one_run_curves(data)
    # A config with a one-run curve is drawn as that curve, not again as a single point.
    with_curves = {r.run_id for r in data.records if r.rank_scores}
    runs = data.runs[~data.runs["run_id"].isin(with_curves)]
    agg = aggregate(runs)
    unplaced: list[str] = []
    if not agg.empty:
        lost = agg["axis_rank"].isna() & agg["adaptive_rank"].astype(bool)
        unplaced = sorted(set(agg.loc[lost, "config"]))
        agg = agg[agg["axis_rank"].notna()]
    if agg.empty and not curves:
        return "no finished run records its rank"
    tasks = ordered_tasks(list(agg["task"]) + [task for task, _, _ in curves])
    fig, axes = _grid(len(tasks))
    for ax, task in zip(axes, tasks, strict=False):
        mine = agg[agg["task"] == task]
        percent, metric = False, "score"
        seen: dict[str, int] = defaultdict(int)

        def series_order(series: str, mine: pd.DataFrame = mine) -> tuple:
            # Within a variant, the series with most ranks first: it gets the solid line.
            rows = mine[mine["series"] == series]
            return (variant_sort_key(str(rows["variant"].iloc[0])), -len(rows), series)

        for series in sorted(set(mine["series"]), key=series_order):
            rows = mine[mine["series"] == series].sort_values("axis_rank")
            variant = str(rows["variant"].iloc[0])
            percent, metric = bool(rows["percent"].iloc[0]), str(rows["metric"].iloc[0])
            # One line per variant and recipe: a variant's other recipes keep its colour, another
            # dash.
            dash = _LINESTYLES[seen[variant] % len(_LINESTYLES)]
            seen[variant] += 1
            where = ", at the final mean rank" if bool(rows["adaptive_rank"].any()) else ""
            _with_spread(
                ax,
                rows["axis_rank"],
                rows["mean"],
                rows["std"],
                rows["n"],
                linestyle=dash,
                label=f"{series} (trained at each rank{where})",
                **variant_style(variant),
            )
        for (curve_task, label, variant), points in curves.items():
            if curve_task != task:
                continue
            ranks = sorted(points)
            means = np.array([np.mean(points[r][0]) for r in ranks])
            stds = np.array(
                [np.std(points[r][0], ddof=1) if len(points[r][0]) > 1 else 0.0 for r in ranks]
            )
            percent, metric = points[ranks[0]][1], points[ranks[0]][2]
            style = variant_style(variant)
            ax.plot(
                ranks,
                means,
                linestyle="--",
                label=label,
                color=style["color"],
                marker=".",
                markersize=5,
            )
            if stds.any():  # the seed spread as a band, as the error bars of the separate runs
                # no band above 100 %
                upper = np.minimum(means + stds, 100.0) if percent else means + stds
                ax.fill_between(
                    ranks, means - stds, upper, color=style["color"], alpha=0.12, linewidth=0
                )
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _pos: f"{x:g}"))
        ax.set_xlabel("rank r (log2 scale)")
        ax.set_ylabel(_score_label(metric, percent))
        ax.set_title(task.upper())
        ax.grid(alpha=0.3)
    _legend_below(fig, axes)
    multi = variants_with("multi_rank_eval", {variant for _, _, variant in curves})
    title = f"Score vs rank (mean ± std over seeds{_spread_note(agg['n'])}): separate runs per rank"
    if bool(agg["adaptive_rank"].astype(bool).any()):
        title += " (adaptive-rank variants at their final mean rank)"
    if curves:
        who = ", ".join(multi) or "multi-rank runs"
        title += f", and the one-run curve of {who} over its eval ranks"
    if unplaced:
        title += f"; not drawn (no final ranks recorded): {', '.join(unplaced)}"
    _suptitle(fig, title)
    return fig


Curves = dict[tuple[str, str, str], dict[int, tuple[list[float], bool, str]]]


def _one_run_curves(data: ReportData) -> Curves:
    """(task, label, variant) -> eval rank -> (display scores over seeds, percent, metric), from
    the records that evaluated one training at several ranks (``rank_scores``: the variants with
    ``multi_rank_eval``, DyLoRA)."""
    curves: Curves = defaultdict(dict)
    for r in data.records:
        if not r.rank_scores:
            continue
        label = f"{data.config_of(r)} (one run, every eval rank)"
        percent = is_percent(r.primary_metric)
        for rank, metrics in r.rank_scores.items():
            value = metric_value(metrics, r.primary_metric)
            if value is None:
                continue
            entry = curves[(r.task, label, r.variant)].setdefault(
                int(rank), ([], percent, r.primary_metric)
            )
            entry[0].append(value * 100 if percent else value)
    return dict(curves)


# -- rank allocation heatmaps ----------------------------------------------------------------------
def is_adaptive(records: list[RunRecord]) -> bool:
    """Whether a config's runs chose their own ranks: a variant with ``adaptive_rank``
    (AdaLoRA), or any run whose final ranks are not all its nominal rank (a plugin this process
    does not know, say). A fixed-rank variant's allocation is the same number everywhere."""

    def adaptive(r: RunRecord) -> bool:
        cls = variant_class(r.variant)
        return (cls is not None and cls.adaptive_rank) or any(
            int(v) != r.rank for v in r.ranks.values()
        )

    return any(adaptive(r) for r in records if r.ranks)


def plot_rank_allocation(data: ReportData) -> Figure | str:
    """Heatmaps (layer x adapted matrix) of the final ranks of adaptive configs (see
    :func:`is_adaptive`), mean over seeds, each task's planted ranks beside them where the runs
    record them; the first :data:`MAX_HEATMAPS` configs in table order. Nothing to draw when no
    adaptive run recorded its allocation or no module name carries a layer index."""
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for r in data.records:
        if r.ranks:
            groups[(r.task, data.config_of(r))].append(r)
    groups = {key: records for key, records in groups.items() if is_adaptive(records)}
    if not groups:
        known = ", ".join(variants_with("adaptive_rank"))
        return (
            f"no adaptive-rank run{f' ({known})' if known else ''} recorded its final rank "
            "allocation"
        )
    task_order = ordered_tasks(t for t, _ in groups)
    config_order = {c: i for i, c in enumerate(ordered_configs(data.runs))}
    keys = sorted(
        groups,
        key=lambda k: (task_order.index(k[0]), config_order.get(k[1], len(config_order)), k[1]),
    )
    keys = keys[:MAX_HEATMAPS]
    # Per task: the planted (true) ranks once, then each adaptive config's found ranks beside them.
    panels: list[tuple[str, pd.DataFrame]] = []
    for task in ordered_tasks(t for t, _ in keys):
        found = [(label, groups[(t, label)]) for t, label in keys if t == task]
        matrices = [
            (label, records, _rank_matrix([r.ranks for r in records])) for label, records in found
        ]
        matrices = [(label, records, m) for label, records, m in matrices if not m.empty]
        truths = [r.true_ranks for _, records in found for r in records if r.true_ranks]
        if truths and matrices:
            union = matrices[0][2]
            for _, _, m in matrices[1:]:
                union = union.combine_first(m)
            panels.append(
                (f"{task.upper()}: planted (true) ranks", _rank_matrix(truths).reindex_like(union))
            )
        for label, records, matrix in matrices:
            panels.append(
                (f"{task.upper()}: {label}, found (mean of {len(records)} seed(s))", matrix)
            )
    panels = [(title, m) for title, m in panels if not m.empty]
    if not panels:
        return "the recorded rank allocations name no layer index (.layer.N. / .layers.N. / .h.N.)"
    vmax = max(float(np.nanmax(m.to_numpy(float))) for _, m in panels) or 1.0
    rows = max(m.shape[0] for _, m in panels)
    fig, axes = _grid(len(panels), ncols_max=3, size=(4.2, 1.6 + 0.32 * rows))
    image = None
    for ax, (title, matrix) in zip(axes, panels, strict=True):
        values = matrix.to_numpy(float)
        image = ax.imshow(values, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        ax.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(matrix.shape[0]), [str(i) for i in matrix.index], fontsize=8)
        ax.set_xlabel("adapted matrix")
        ax.set_ylabel("layer")
        ax.set_title(textwrap.fill(title, 44), fontsize=9)
        if matrix.size <= 120:
            for (i, j), value in np.ndenumerate(values):
                if np.isfinite(value):
                    ax.text(
                        j,
                        i,
                        f"{value:.3g}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if value < 0.6 * vmax else "black",
                    )
    fig.colorbar(image, ax=axes, label="rank", shrink=0.9)
    shown = variants_with(
        "adaptive_rank", {r.variant for records in groups.values() for r in records}
    )
    which = f" ({', '.join(shown)})" if shown else ""
    _suptitle(
        fig,
        f"Final rank allocation per layer and adapted matrix{which}, beside the planted ranks "
        "where known",
    )
    return fig


def _rank_matrix(allocations: list[dict[str, int]]) -> pd.DataFrame:
    """layers x matrices, the mean rank over the given allocations."""
    cells: dict[tuple[int, str], list[float]] = defaultdict(list)
    for ranks in allocations:
        for name, rank in ranks.items():
            split = split_module_name(name)
            if split is not None:
                cells[split].append(float(rank))
    if not cells:
        return pd.DataFrame()
    labels = short_matrix_labels(m for _, m in cells)
    frame = pd.Series({(layer, labels[m]): np.mean(v) for (layer, m), v in cells.items()}).unstack()
    return frame.sort_index()


def _may_regularise(variant: str) -> bool:
    """Whether the variant's class adds a regulariser to the loss (overrides
    ``regularization_loss``); True for a variant this process does not know."""
    from lorabench.variants import Variant

    cls = variant_class(variant)
    return cls is None or cls.regularization_loss is not Variant.regularization_loss


# -- learning curves -------------------------------------------------------------------------------
def plot_learning_curves(data: ReportData) -> Figure | str:
    """One column per task: the training task loss against optimiser step; below it, when any
    run's regulariser is not zero, the regulariser on its own axis (AdaLoRA's orthogonality
    term would otherwise dwarf every task loss); and when any run evaluated during training,
    the eval score (display units). One line per config, the mean over its seeds. Records
    written before the regulariser was recorded apart (``reg_loss`` None) have it inside their
    loss; the title names their configs (of variants with a regulariser). Nothing to draw when
    no run recorded a curve."""
    rows = []
    combined: set[str] = set()  # configs whose recorded loss may include the regulariser
    for r in data.records:
        config = data.config_of(r)
        percent = is_percent(r.primary_metric)
        for p in r.curve:
            value = metric_value(p.metrics, r.primary_metric)
            reg = getattr(p, "reg_loss", None)
            if p.loss is not None and reg is None and _may_regularise(r.variant):
                combined.add(config)
            rows.append(
                {
                    "task": r.task,
                    "config": config,
                    "variant": r.variant,
                    "seed": r.seed,
                    "step": p.step,
                    "loss": p.loss,
                    "reg": reg,
                    "eval": None if value is None else (value * 100 if percent else value),
                    "metric": _score_label(r.primary_metric, percent),
                }
            )
    if not rows:
        return "no finished run recorded a learning curve"
    frame = pd.DataFrame(rows)
    frame[["loss", "reg", "eval"]] = frame[["loss", "reg", "eval"]].astype(float)
    tasks = ordered_tasks(frame["task"])
    # Configs with a regulariser: drawn in its own row (a config without one has 0 everywhere).
    regularised = set(frame.loc[frame["reg"].fillna(0.0) != 0.0, "config"])
    kinds = (
        ["loss"]
        + (["reg"] if regularised else [])
        + (["eval"] if frame["eval"].notna().any() else [])
    )
    fig, axes = plt.subplots(
        len(kinds),
        len(tasks),
        figsize=(max(6.0, 4.6 * len(tasks)), 3.2 * len(kinds) + 0.6),
        squeeze=False,
        layout="constrained",
        sharex="col",
    )
    panel = {kind: axes[i] for i, kind in enumerate(kinds)}
    order = {c: i for i, c in enumerate(ordered_configs(data.runs))}
    for col, task in enumerate(tasks):
        mine = frame[frame["task"] == task]
        seen: dict[str, int] = defaultdict(int)
        for config, curve in sorted(
            mine.groupby("config"), key=lambda kv: order.get(kv[0], len(order))
        ):
            variant = curve["variant"].iloc[0]
            style = variant_style(variant)
            # Configs of one variant share its colour; the line style tells their ranks apart.
            dash = _LINESTYLES[seen[variant] % len(_LINESTYLES)]
            seen[variant] += 1
            line = {"label": config, "color": style["color"], "linestyle": dash, "linewidth": 1.4}
            loss = curve.dropna(subset=["loss"]).groupby("step")["loss"].mean()
            panel["loss"][col].plot(loss.index, loss.values, **line)
            if "reg" in panel and config in regularised:
                reg = curve.dropna(subset=["reg"]).groupby("step")["reg"].mean()
                panel["reg"][col].plot(reg.index, reg.values, **line)
            if "eval" in panel:
                ev = curve.dropna(subset=["eval"]).groupby("step")["eval"].mean()
                panel["eval"][col].plot(
                    ev.index, ev.values, marker=style["marker"], markersize=4, **line
                )
        axes[0][col].set_title(task.upper())
        panel["loss"][col].set_ylabel("training task loss")
        if "reg" in panel:
            panel["reg"][col].set_ylabel("regulariser")
        if "eval" in panel:
            panel["eval"][col].set_ylabel(f"eval {mine['metric'].iloc[0]}")
        axes[-1][col].set_xlabel("optimiser step")
        for row in range(len(kinds)):
            axes[row][col].grid(alpha=0.3)
    _legend_below(fig, [ax for row in axes for ax in row], order=list(order))
    title = "Learning curves (mean over seeds): training task loss"
    if regularised:
        title += ", the variant's regulariser apart"
    if "eval" in panel:
        title += ", and the eval score at each evaluation"
    if combined:
        ordered = sorted(combined, key=lambda c: order.get(c, len(order)))
        title += (
            f"; recorded before the regulariser was logged apart, the loss of "
            f"{', '.join(ordered)} may include it"
        )
    _suptitle(fig, title)
    return fig


# -- cost per variant ------------------------------------------------------------------------------
def plot_costs(data: ReportData) -> Figure | str:
    """Horizontal bars per config, mean ± std over all its runs (no bar for one run), one panel
    per cost any run recorded: training time (s), peak memory during training (MiB, a panel per
    kind of measurement: what lorabench records now is the peak above what the process held
    before training; older records' whole-process figures are another quantity), saved adapter
    size (KiB). Nothing to draw when no run recorded any of them."""
    runs = data.runs
    if runs.empty:
        return "no finished run recorded its training time, memory or adapter size"
    panels: list[tuple[str, str, pd.Series]] = [
        ("train_seconds", "training time (s)", pd.Series(True, index=runs.index))
    ]
    kinds = {str(k) for k in runs.loc[runs["peak_memory_mb"].notna(), "memory_kind"]}
    known = list(MEMORY_KINDS)
    for kind in sorted(kinds, key=lambda k: (known.index(k) if k in known else len(known), k)):
        panels.append(("peak_memory_mb", memory_kind(kind).axis, runs["memory_kind"] == kind))
    panels.append(("adapter_kb", "saved adapter size (KiB)", pd.Series(True, index=runs.index)))
    panels = [(c, label, m) for c, label, m in panels if runs.loc[m, c].notna().any()]
    if not panels:
        return "no finished run recorded its training time, memory or adapter size"
    configs = ordered_configs(runs)
    # One shared config axis: the labels print once, left of the first panel.
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(max(6.0, 3.6 * len(panels) + 2.0), 0.4 * len(configs) + 1.8),
        squeeze=False,
        layout="constrained",
        sharey=True,
    )
    axes[0][0].set_yticks(range(len(configs)), configs, fontsize=8)
    axes[0][0].invert_yaxis()  # shared: once for all panels
    colors = [
        variant_style(runs.loc[runs["config"] == c, "variant"].iloc[0])["color"] for c in configs
    ]
    counts_seen: list[float] = []
    for ax, (column, label, mask) in zip(axes[0], panels, strict=True):
        grouped = runs[mask].dropna(subset=[column]).groupby("config")[column]
        means = grouped.mean().reindex(configs)
        stds = grouped.std().reindex(configs)
        counts = grouped.size().reindex(configs).fillna(0)
        counts_seen += list(counts[means.notna()])
        ax.barh(range(len(configs)), means.fillna(0), color=colors)
        spread = (counts > 1).to_numpy() & np.isfinite(stds.to_numpy(float))
        if spread.any():  # one run has no spread: its bar has no error bar
            ax.errorbar(
                means.to_numpy(float)[spread],
                np.arange(len(configs))[spread],
                xerr=stds.to_numpy(float)[spread],
                fmt="none",
                ecolor="black",
                capsize=3,
                linewidth=1,
            )
        ax.set_xlabel(textwrap.fill(label, 34))
        ax.grid(axis="x", alpha=0.3)
    _suptitle(
        fig, f"Cost per variant config, mean ± std over all its runs{_spread_note(counts_seen)}"
    )
    return fig


# -- search history --------------------------------------------------------------------------------
def plot_search_history(data: ReportData) -> Figure | str:
    """Per study, trial scores and the best so far against trial number and against cumulative
    spend in the unit of the study's budget (see :data:`SPEND_AXES`). Trials that did not finish
    (pruned, failed) show as crosses at their last reported value (:func:`last_reported`), not
    at the axis; they do not count towards the best so far. One that never reported a value is
    not drawn, and its legend entry says how many. Nothing to draw without trials."""
    studies: dict[str, list[RunRecord]] = defaultdict(list)
    for r in data.trials:
        studies[str((r.search or {}).get("study", "?"))].append(r)
    if not studies:
        return "no search trials match (run 'lorabench search' to get a search history)"
    names = sorted(studies)
    fig, axes = plt.subplots(
        len(names), 2, figsize=(10, 3.4 * len(names) + 0.6), squeeze=False, layout="constrained"
    )
    for row, study in enumerate(names):
        trials = sorted(studies[study], key=lambda r: int((r.search or {}).get("trial", 0)))
        higher = trials[0].higher_is_better
        percent = is_percent(trials[0].primary_metric)
        scale = 100.0 if percent else 1.0
        number = np.array([int((r.search or {}).get("trial", i)) for i, r in enumerate(trials)])
        # Spend in the unit of the study's own budget (steps, tokens, seconds or FLOPs).
        key, spend_label = SPEND_AXES.get(
            data.search_budgets.get(study, "steps"), SPEND_AXES["steps"]
        )
        spend = np.cumsum([float(r.spent.get(key) or 0) for r in trials])
        score = np.array(
            [
                np.nan if r.score is None or r.status != "finished" else r.score * scale
                for r in trials
            ]
        )
        finished = np.isfinite(score)
        best = _best_so_far(score, higher)
        last = np.array([np.nan if (v := last_reported(r)) is None else v * scale for r in trials])
        for ax, x, xlabel in (
            (axes[row][0], number, "trial number"),
            (axes[row][1], spend, spend_label),
        ):
            ax.scatter(x[finished], score[finished], s=22, color="tab:blue", label="finished trial")
            for status in sorted({r.status for r in trials} - {"finished"}):
                mask = np.array([r.status == status for r in trials])
                shown = mask & np.isfinite(last)
                label = f"{status} (last reported value)"
                if (mask & ~shown).any():
                    label += f"; {int((mask & ~shown).sum())} without one, not drawn"
                ax.scatter(x[shown], last[shown], marker="x", color="0.5", label=label)
            ax.step(x, best, where="post", color="tab:red", label="best so far")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(_score_label(trials[0].primary_metric, percent))
            ax.grid(alpha=0.3)
        axes[row][0].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axes[row][0].set_title(f"study {study}: {len(trials)} trials", fontsize=9)
        axes[row][1].set_title("the same against spend", fontsize=9)
        axes[row][0].legend(fontsize=7)
    _suptitle(fig, "Search history: trial scores and best-so-far")
    return fig


def last_reported(record: RunRecord) -> float | None:
    """A trial's last reported value of its primary metric (metric units): its score (a pruned
    run's score is the value it was pruned at), else the last evaluation in its curve; None
    when it reported none."""
    if record.score is not None and np.isfinite(record.score):
        return float(record.score)
    for point in reversed(record.curve or []):
        value = metric_value(point.metrics, record.primary_metric)
        if value is not None and np.isfinite(value):
            return value
    return None


# study budget kind -> (the record's spent key, axis label)
SPEND_AXES = {
    "steps": ("steps", "cumulative training steps"),
    "tokens": ("tokens", "cumulative training tokens"),
    "seconds": ("train_seconds", "cumulative training time (s)"),
    "flops": ("flops", "cumulative training FLOPs"),
}


def _best_so_far(score: np.ndarray, higher: bool) -> np.ndarray:
    filled = np.where(np.isfinite(score), score, -np.inf if higher else np.inf)
    best = np.maximum.accumulate(filled) if higher else np.minimum.accumulate(filled)
    return np.where(np.isfinite(best), best, np.nan)


@dataclass
class FigureFile:
    """A drawn figure: its name, title, and the PNG/SVG files."""

    name: str
    title: str
    png: Path
    svg: Path


# name -> (title, drawing function); the HTML report shows them in this order.
def critical_difference_figure(data: ReportData) -> Figure | str:
    """Demšar's diagram of the rows' average ranks across tasks (see
    :func:`lorabench.reports.stats.plot_critical_difference`), or why it is not drawn."""
    from lorabench.reports.stats import critical_difference_figure as draw

    return draw(data)


FIGURES: dict[str, tuple[str, Callable[[ReportData], Figure | str]]] = {
    "score_vs_params": ("Score vs trainable parameters", plot_score_vs_params),
    "score_vs_rank": ("Score vs rank", plot_score_vs_rank),
    "rank_allocation": ("Rank allocation", plot_rank_allocation),
    "learning_curves": ("Learning curves", plot_learning_curves),
    "costs": ("Time and memory per variant", plot_costs),
    "search_history": ("Search history", plot_search_history),
    "critical_difference": (
        "Critical difference diagram (average ranks across tasks)",
        critical_difference_figure,
    ),
}


def write_figures(data: ReportData, out_dir: Path) -> tuple[list[FigureFile], dict[str, str]]:
    """Draws every figure that has data into ``out_dir`` (PNG at 150 dpi and SVG).

    Returns the files written and, for each figure not drawn, why.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[FigureFile] = []
    skipped: dict[str, str] = {}
    for name, (title, draw) in FIGURES.items():
        result = draw(data)
        if isinstance(result, str):
            skipped[name] = result
            continue
        try:
            if result.get_layout_engine() is None:  # the figures above use the constrained layout
                result.tight_layout()
            png, svg = out_dir / f"{name}.png", out_dir / f"{name}.svg"
            result.savefig(png, dpi=150)
            result.savefig(svg)
        finally:
            plt.close(result)
        written.append(FigureFile(name, title, png, svg))
    return written, skipped
