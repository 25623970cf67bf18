"""Reports from synthetic run records: table values against hand-computed means/stds, bold best,
LaTeX/Markdown/CSV/HTML output, every figure, a self-contained HTML page, filters, and reports on
empty or partial databases. A headless-Chromium screenshot runs when Chromium is installed."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from lorabench.cli import report_cmd
from lorabench.reports import generate_report
from lorabench.reports.frame import (
    load_report_data,
    runs_frame,
    short_matrix_labels,
    split_module_name,
)
from lorabench.reports.plots import pareto_front
from lorabench.reports.tables import MISSING, build_results_table, to_latex, to_markdown
from lorabench.results.records import CurvePoint, RunRecord
from lorabench.results.store import ResultStore

CHROMIUM = Path("/usr/bin/chromium")
SEEDS = (0, 1, 2)
# (variant, rank) -> base accuracy; a seed adds seed * 0.01 (RTE) or seed * 0.02 (MRPC).
BASE = {
    ("lora", 4): 0.60,
    ("lora", 8): 0.66,
    ("dora", 8): 0.64,
    ("vera", 256): 0.58,
    ("adalora", 8): 0.65,
    ("dylora", 8): 0.62,
}
PARAMS = {
    ("lora", 4): 36_864,
    ("lora", 8): 73_728,
    ("dora", 8): 76_032,
    ("vera", 256): 9_984,
    ("adalora", 8): 110_592,
    ("dylora", 8): 73_728,
}
TOTAL = 22_713_216
TASK_STEP = {"rte": 0.01, "mrpc": 0.02}
BERT = "bert.encoder.layer.{}.{}"
MATRICES = (
    "attention.self.query",
    "attention.self.value",
    "attention.output.dense",
    "output.dense",
)


def score_of(variant: str, rank: int, task: str, seed: int) -> float:
    return BASE[(variant, rank)] + TASK_STEP[task] * seed + (0.05 if task == "mrpc" else 0.0)


def make(variant: str, rank: int, task: str, seed: int, **extra) -> RunRecord:
    score = extra.pop("score", score_of(variant, rank, task, seed) if task in TASK_STEP else 0.7)
    fields = dict(
        run_id=f"{variant}-{rank}-{task}-{seed}",
        status="finished",
        variant=variant,
        task=task,
        model="all-MiniLM-L6-v2",
        seed=seed,
        config={"variant_config": {"r": rank}},
        metrics={} if score is None else {"accuracy": score, "f1": score - 0.01},
        primary_metric="accuracy",
        score=score,
        rank=rank,
        budget={"kind": "steps", "limit": 40},
        spent={
            "steps": 40,
            "train_seconds": 10.0 + rank + seed,
            "peak_memory_bytes": (300 + rank) * 2**20,
            "memory_kind": "cpu_rss_peak_above_baseline",
        },
        trainable_params=PARAMS[(variant, rank)] + 770,
        adapter_params=PARAMS[(variant, rank)],
        total_params=TOTAL,
        adapter_bytes=PARAMS[(variant, rank)] * 4,
        curve=[
            CurvePoint(
                step=s,
                loss=1.0 / s,
                metrics={"accuracy": score - 0.1 / s} if s % 20 == 0 and score else None,
            )
            for s in (10, 20, 30, 40)
        ],
        environment={
            "git_commit": "abc123def456",
            "git_dirty": False,
            "device": {"name": "cpu"},
            "packages": {"torch": "2.13.0"},
            "python": "3.11",
        },
        started_at=f"2026-01-01T00:00:{seed:02d}",
        finished_at=f"2026-01-01T00:01:{seed:02d}",
    )
    fields.update(extra)
    return RunRecord(**fields)


def cli_main(argv: list[str]) -> int:
    """``lorabench report ARGS`` through the command module (the other commands may not exist
    yet)."""
    parser = argparse.ArgumentParser(prog="lorabench report")
    report_cmd.add_arguments(parser)
    assert argv[0] == "report"
    return report_cmd.run(parser.parse_args(argv[1:]))


def fill_store(path: Path) -> ResultStore:
    store = ResultStore(path)
    for task in ("rte", "mrpc"):
        for variant, rank in (("lora", 4), ("lora", 8), ("dora", 8), ("vera", 256)):
            for seed in SEEDS:
                store.add(make(variant, rank, task, seed))
        for seed in SEEDS:
            store.add(
                make(
                    "dylora",
                    8,
                    task,
                    seed,
                    rank_scores={
                        r: {"accuracy": 0.5 + 0.015 * r + 0.01 * seed, "f1": 0.5}
                        for r in range(1, 9)
                    },
                )
            )
    # AdaLoRA on a planted-rank task: found ranks beside the planted ones.
    for seed in SEEDS:
        ranks = {
            BERT.format(layer, m): (layer + i + seed) % 9
            for layer in range(2)
            for i, m in enumerate(MATRICES)
        }
        true = {
            BERT.format(layer, m): 4 if i < 2 else 2
            for layer in range(2)
            for i, m in enumerate(MATRICES)
        }
        store.add(
            make(
                "adalora",
                8,
                "planted-r4",
                seed,
                ranks=ranks,
                true_ranks=true,
                score=0.7 + 0.01 * seed,
            )
        )
    # A failed run, and a search study with trials (one pruned) and a confirmation run.
    store.add(
        make(
            "dora",
            8,
            "planted-r4",
            0,
            status="failed",
            score=None,
            error="RuntimeError: out of memory\nmore",
        )
    )
    for trial in range(5):
        status = "pruned" if trial == 2 else "finished"
        store.add(
            make(
                "lora",
                8,
                "rte",
                100 + trial,
                run_id=f"trial-{trial}",
                status=status,
                score=0.55 + 0.02 * trial,
                search={"study": "lora-rte", "trial": trial, "role": "trial"},
            )
        )
    return store


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reports") / "results.db"
    fill_store(path).close()
    return path


@pytest.fixture(scope="module")
def report(db, tmp_path_factory):
    return generate_report(db, tmp_path_factory.mktemp("out") / "full")


def hand_mean_std(variant: str, rank: int, task: str) -> tuple[float, float]:
    values = [100 * score_of(variant, rank, task, s) for s in SEEDS]
    return statistics.mean(values), statistics.stdev(values)  # sample std, as the table promises


def test_table_values_are_mean_and_std_over_seeds(db):
    data = load_report_data(db)
    assert len(data.records) == 5 * 2 * 3 + 3  # trials and the failed run stay out of the table
    table = build_results_table(data.runs)
    cells = table.cells
    assert list(cells.index[:3]) == [
        "LoRA r=4",
        "LoRA r=8",
        "DoRA r=8",
    ]  # papers' order, rank ascending
    for variant, rank, label in (("lora", 8, "LoRA r=8"), ("vera", 256, "VeRA r=256")):
        mean, std = hand_mean_std(variant, rank, "rte")
        assert cells.loc[label, "RTE (Acc)"] == f"{mean:.1f} ± {std:.1f}"
        mean, std = hand_mean_std(variant, rank, "mrpc")
        assert cells.loc[label, "MRPC (Acc)"] == f"{mean:.1f} ± {std:.1f}"
    # Best per task in bold: LoRA r=8 on both GLUE tasks, AdaLoRA alone on the planted task is
    # not "best of one".
    assert table.bold.loc["LoRA r=8", "RTE (Acc)"] and table.bold.loc["LoRA r=8", "MRPC (Acc)"]
    assert table.bold["RTE (Acc)"].sum() == 1
    # No config ran every task (AdaLoRA only the planted one): no average column, missing cells
    # dashed.
    assert "Avg." not in cells.columns
    assert cells.loc["LoRA r=8", "PLANTED-R4 (Acc)"] == MISSING
    glue_only = build_results_table(data.runs[data.runs["task"] != "planted-r4"]).cells
    means = [statistics.mean([hand_mean_std("lora", 8, t)[0] for t in ("rte", "mrpc")])]
    assert glue_only.loc["LoRA r=8", "Avg."] == f"{means[0]:.1f}"
    # # Params: count and share of the model.
    assert cells.loc["LoRA r=8", "# Params"] == f"73.7K ({100 * 73_728 / TOTAL:.2f}%)"
    assert cells.loc["LoRA r=8", "Time (s)"] == "19.0"  # mean of 10 + 8 + seed over seeds 0..2
    assert cells.loc["LoRA r=8", "Train mem (MiB)"] == "308"
    numbers = table.numbers.set_index(["config", "task"])
    assert numbers.loc[("LoRA r=8", "rte"), "n"] == 3
    assert numbers.loc[("LoRA r=8", "rte"), "std"] == pytest.approx(
        hand_mean_std("lora", 8, "rte")[1]
    )


def test_markdown_latex_csv_html_files(report):
    md = report.tables["md"].read_text()
    mean, std = hand_mean_std("lora", 8, "rte")
    assert f"**{mean:.1f} ± {std:.1f}**" in md
    assert md.splitlines()[0].startswith("| Method | MRPC (Acc) | RTE (Acc) |")  # GLUE column order
    tex = report.tables["tex"].read_text()
    for needle in (
        r"\toprule",
        r"\midrule",
        r"\bottomrule",
        r"\textbf{" + f"{mean:.1f}" + "}",
        r"\# Params",
        r"\%",
    ):
        assert needle in tex
    assert "±" not in tex  # LaTeX gets $_{\pm s}$, not a raw unicode sign
    csv = pd.read_csv(report.tables["csv"])
    row = csv[(csv["config"] == "LoRA r=8") & (csv["task"] == "rte")].iloc[0]
    assert row["mean"] == pytest.approx(mean) and bool(row["best"])
    assert "<b>" in report.tables["html"].read_text()


def test_every_figure_is_drawn(report):
    expected = {
        "score_vs_params",
        "score_vs_rank",
        "rank_allocation",
        "learning_curves",
        "costs",
        "search_history",
    }
    assert set(report.figures) == expected
    # The fixture's rows do not all run every task, so there is no test across tasks to draw
    # (tests/test_stats.py draws one); the report says why instead.
    assert list(report.skipped_figures) == ["critical_difference"]
    assert "cannot decide" in report.skipped_figures["critical_difference"]
    for png in report.figures.values():
        svg = png.with_suffix(".svg")
        assert png.stat().st_size > 5_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert svg.stat().st_size > 5_000 and "<svg" in svg.read_text()[:2000]
    svg = (report.out_dir / "figures" / "rank_allocation.svg").read_text()
    assert "planted ranks" in svg and "layer" in svg
    assert (
        "one run, every eval rank" in (report.out_dir / "figures" / "score_vs_rank.svg").read_text()
    )


def test_html_is_self_contained(report):
    page = report.html.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("data:image/png;base64,") == len(report.figures)
    references = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)""", page)
    assert references and all(ref.startswith("data:") for ref in references)
    assert "<link" not in page and "<script" not in page and "url(" not in page
    assert "out of memory" in page  # the failed run is listed, not silently dropped
    assert "<code>figures/costs.svg</code>" in page  # where the files are, relative to the page
    assert "What is missing" in page


def test_filters(db, tmp_path):
    rep = generate_report(
        db, tmp_path / "f", tasks=["rte"], variants=["lora", "dora"], seeds=[0, 1]
    )
    cells = rep.table.cells
    assert list(cells.index) == ["LoRA r=4", "LoRA r=8", "DoRA r=8"]
    assert list(rep.table.task_columns) == ["RTE (Acc)"]
    values = [100 * score_of("lora", 8, "rte", s) for s in (0, 1)]
    assert (
        cells.loc["LoRA r=8", "RTE (Acc)"]
        == f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"
    )
    assert "Avg." not in cells.columns  # one task: no average
    assert "rank_allocation" in rep.skipped_figures  # no AdaLoRA among the filtered runs


def test_empty_database_says_what_is_missing(tmp_path, capsys):
    ResultStore(tmp_path / "empty.db").close()
    rc = cli_main(["report", "--results", str(tmp_path / "empty.db"), "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert rc == 0 and "holds no runs yet" in out
    page = (tmp_path / "r" / "report.html").read_text()
    assert "holds no runs yet" in page and "No finished runs match" in page
    assert (tmp_path / "r" / "results.md").exists()

    rc = cli_main(
        ["report", "--results", str(tmp_path / "missing.db"), "--out", str(tmp_path / "r2")]
    )
    assert rc == 2 and "no results database at" in capsys.readouterr().err


def test_partial_database_and_unknown_filters(db, tmp_path):
    store = ResultStore(tmp_path / "partial.db")
    for seed in SEEDS:
        store.add(make("lora", 8, "rte", seed))
        store.add(make("lora", 8, "mrpc", seed))
    store.add(make("dora", 8, "rte", 0))
    rep = generate_report(store, tmp_path / "p")
    notes = "\n".join(rep.notes)
    assert "DoRA r=8: no finished run on mrpc" in notes
    assert "DoRA r=8 on rte: 1 of 3 seeds (missing seed 1, 2)" in notes
    assert rep.table.cells.loc["DoRA r=8", "MRPC (Acc)"] == MISSING
    assert (
        rep.table.cells.loc["DoRA r=8", "RTE (Acc)"] == f"{100 * score_of('dora', 8, 'rte', 0):.1f}"
    )  # one seed: no ±
    assert "search_history" in rep.skipped_figures

    rep = generate_report(db, tmp_path / "u", tasks=["cola"], tag="nope")
    notes = "\n".join(rep.notes)
    assert "No runs at all for tasks cola" in notes and "No runs have tag 'nope'" in notes
    assert rep.empty and rep.html.exists()


def test_module_name_parsing_and_pareto():
    assert split_module_name("bert.encoder.layer.3.attention.self.query") == (
        3,
        "attention.self.query",
    )
    assert split_module_name("model.layers.11.self_attn.q_proj") == (11, "self_attn.q_proj")
    assert split_module_name("transformer.h.0.attn.c_attn") == (0, "attn.c_attn")
    assert split_module_name("classifier") is None
    labels = short_matrix_labels(["attention.self.query", "attention.output.dense", "output.dense"])
    assert labels == {
        "attention.self.query": "query",
        "attention.output.dense": "attention.output.dense",
        "output.dense": "output.dense",
    }
    front = pareto_front(np.array([10, 20, 30, 40]), np.array([0.5, 0.4, 0.7, 0.6]))
    assert sorted(front.tolist()) == [0, 2]


def test_a_missing_cell_is_an_en_dash():
    assert MISSING == "\u2013"  # as papers mark it; the tables below compare against MISSING


def test_empty_table_renders_a_message():
    empty = build_results_table(runs_frame([]))
    assert "No finished runs" in to_markdown(empty) and to_latex(empty).startswith("%")


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="headless Chromium not installed (apt-get install chromium)"
)
def test_html_renders_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "report.png"
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        report.html.resolve().as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.exists() and shot.stat().st_size > 20_000
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[0] == 2000 and pixels.shape[1] == 1280
    assert pixels[..., :3].std() > 0.05  # not a blank page: text, table and figures drawn
    if os.environ.get("LORABENCH_KEEP_SCREENSHOT"):  # for a human to look at
        shutil.copy(shot, os.environ["LORABENCH_KEEP_SCREENSHOT"])


def test_runs_of_different_recipes_are_separate_rows(tmp_path):
    """A search's confirmation run (other lr and alpha) beside a plain run of the same variant and
    rank is another experiment: its own row, never averaged in as if it were one more seed."""

    def config(lr: float, alpha: int, eval_batch_size: int) -> dict:
        return {
            "variant_config": {"r": 8},
            "resolved_variant_config": {"r": 8, "alpha": alpha, "dropout": 0.0},
            "train": {"learning_rate": lr, "batch_size": 16, "eval_batch_size": eval_batch_size},
        }

    store = ResultStore(tmp_path / "r.db")
    for seed in (0, 1):
        store.add(make("lora", 8, "rte", seed, config=config(1e-3, 16, 128)))
        store.add(make("dora", 8, "rte", seed, config=config(1e-3, 16, 128)))
    store.add(make("lora", 8, "rte", 1, run_id="confirm-1", score=0.9, config=config(4e-4, 32, 64)))
    table = build_results_table(load_report_data(store).runs)
    plain, confirm = "LoRA r=8 (lr=0.001, alpha=16)", "LoRA r=8 (lr=0.0004, alpha=32)"
    assert list(table.cells.index) == [
        confirm,
        plain,
        "DoRA r=8",
    ]  # eval batch size does not split rows
    values = [100 * score_of("lora", 8, "rte", s) for s in (0, 1)]
    assert (
        table.cells.loc[plain, "RTE (Acc)"]
        == f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"
    )
    assert table.cells.loc[confirm, "RTE (Acc)"] == "90.0" and table.bold.loc[confirm, "RTE (Acc)"]
    numbers = table.numbers.set_index("config")
    assert numbers.loc[plain, "n"] == 2 and numbers.loc[confirm, "n"] == 1


def test_rank_allocation_shows_adaptive_variants_beside_the_planted_ranks(tmp_path):
    from lorabench.reports.plots import plot_rank_allocation

    store = ResultStore(tmp_path / "r.db")
    true = {BERT.format(layer, m): 2 for layer in range(3) for m in MATRICES[:2]}
    for seed in (0, 1):
        found = {name: 1 + (seed + i) % 4 for i, name in enumerate(true)}
        store.add(make("adalora", 8, "planted-r4", seed, ranks=found, true_ranks=true))
        # A fixed-rank variant's allocation is its rank everywhere: nothing to show.
        store.add(
            make("lora", 8, "planted-r4", seed, ranks=dict.fromkeys(true, 8), true_ranks=true)
        )
    fig = plot_rank_allocation(load_report_data(store))
    try:
        panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_images()]
        titles = [ax.get_title().replace("\n", " ") for ax in panels]
        # AdaLoRA's label is its own: initial rank (= target here), and the final mean rank over
        # the row's runs because it misses the target ((13 + 15) / 12 = 2.3).
        assert titles == [
            "PLANTED-R4: planted (true) ranks",
            "PLANTED-R4: AdaLoRA r=8 (mean 2.3), found (mean of 2 seed(s))",
        ]
        planted, adalora = (ax.get_images()[0].get_array() for ax in panels)
        assert planted.shape == adalora.shape == (3, 2) and float(planted.max()) == 2.0
        assert [t.get_text() for t in panels[0].get_xticklabels()] == ["query", "value"]
        assert panels[0].get_xlabel() == "adapted matrix" and panels[0].get_ylabel() == "layer"
    finally:
        plt.close(fig)

    lora_only = ResultStore(tmp_path / "lora.db")
    lora_only.add(make("lora", 8, "planted-r4", 0, ranks=dict.fromkeys(true, 8), true_ranks=true))
    assert "adaptive-rank" in plot_rank_allocation(load_report_data(lora_only))


@pytest.mark.parametrize("tasks", [None, ["rte"]])
def test_figure_text_stays_on_the_canvas_and_point_labels_do_not_overlap(db, tasks):
    """Titles, labels and legends inside the saved image (a one-panel figure is narrower than a
    long title), and the "r=N" labels of nearby points apart."""
    from lorabench.reports.plots import FIGURES

    data = load_report_data(db, tasks=tasks)
    for name, (_, draw) in FIGURES.items():
        fig = draw(data)
        if isinstance(fig, str):
            continue
        try:
            if fig.get_layout_engine() is None:  # as write_figures saves it
                fig.tight_layout()
            fig.canvas.draw()
            renderer = fig.canvas.get_renderer()
            canvas = fig.bbox.expanded(1.01, 1.01)
            for text in fig.findobj(plt.Text):
                if (
                    text.get_visible()
                    and text.get_text().strip()
                    and id(text) not in _unshown_tick_labels(fig)
                ):
                    box = text.get_window_extent(renderer)
                    assert canvas.contains(box.x0, box.y0) and canvas.contains(box.x1, box.y1), (
                        name,
                        text.get_text(),
                    )
            if name == "score_vs_params":
                assert sum(len(ax.texts) for ax in fig.axes) >= 5
                for ax in fig.axes:
                    boxes = [t.get_window_extent(renderer) for t in ax.texts]
                    for i, a in enumerate(boxes):
                        assert not any(a.overlaps(b) for b in boxes[i + 1 :]), (
                            name,
                            ax.get_title(),
                        )
        finally:
            plt.close(fig)


def _unshown_tick_labels(fig) -> set[int]:
    """Tick labels matplotlib keeps for ticks outside the axis limits (never drawn)."""
    hidden = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not low - 1e-9 <= tick.get_loc() <= high + 1e-9:
                    hidden |= {id(tick.label1), id(tick.label2)}
    return hidden


def test_search_history_spend_is_in_the_unit_of_the_study_budget(db, tmp_path):
    from lorabench.reports.plots import plot_search_history
    from lorabench.search.summary import save_search_summary

    copy = tmp_path / "results.db"
    shutil.copy(db, copy)
    save_search_summary(
        copy,
        {
            "study": "lora-rte",
            "variant": "lora",
            "task": "rte",
            "budget": {"kind": "seconds", "limit": 600},
        },
    )
    data = load_report_data(copy)
    assert data.search_budgets == {"lora-rte": "seconds"}
    fig = plot_search_history(data)
    try:
        assert [ax.get_xlabel() for ax in fig.axes] == [
            "trial number",
            "cumulative training time (s)",
        ]
        # Trial seconds are 10 + 8 + seed for seeds 100..104: the axis sums them.
        (points, *_) = [c for c in fig.axes[1].collections if len(c.get_offsets())]
        assert points.get_offsets()[0][0] == pytest.approx(118.0)
    finally:
        plt.close(fig)
    fig = plot_search_history(load_report_data(db))  # no summary: the trials' steps
    try:
        assert fig.axes[1].get_xlabel() == "cumulative training steps"
    finally:
        plt.close(fig)


@pytest.mark.parametrize(
    "content", [b"not a database at all\n", b"SQLite format 3\x00" + b"\x00" * 200]
)
def test_corrupt_results_file_is_a_clear_error(tmp_path, capsys, content):
    path = tmp_path / "results.db"
    path.write_bytes(content)
    assert cli_main(["report", "--results", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "corrupt" in err and "--results" in err
    assert not (tmp_path / "r").exists()


def test_labels_of_coinciding_points_are_moved_apart(tmp_path):
    from lorabench.reports.plots import plot_score_vs_params

    store = ResultStore(tmp_path / "r.db")
    for variant in ("lora", "dora", "dylora"):  # the same score and (almost) the same size
        store.add(make(variant, 8, "rte", 0, score=0.7, adapter_params=73_728))
    fig = plot_score_vs_params(load_report_data(store))
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        (ax,) = [ax for ax in fig.axes if ax.get_visible()]
        boxes = [t.get_window_extent(renderer) for t in ax.texts]
        # Each variant labels its rank: DyLoRA's adapter serves every rank up to 8.
        assert len(boxes) == 3 and [t.get_text() for t in ax.texts] == ["r=8", "r=8", "r≤8"]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
        # Each in its variant's colour, so the reader can tell whose r=8 is whose.
        assert len({t.get_color() for t in ax.texts}) == 3
    finally:
        plt.close(fig)


# -- labels and row identity come from the variants and the records ------------------------------
def test_each_variant_labels_its_own_rows(tmp_path):
    """Names and rank labels are the variants' facts, computed from each record's resolved
    config: rsLoRA reads apart from LoRA, AdaLoRA shows its target (and its final mean rank
    when that misses the target), DyLoRA its nested ranks; a 0.1 record's ``init_r`` and a
    record that kept only its overrides resolve like a new one."""
    store = ResultStore(tmp_path / "r.db")
    ada = {
        f"bert.encoder.layer.{i}.attention.self.{m}": 8 - (i == 0)
        for i in range(4)
        for m in ("query", "value")
    }
    store.add(
        make("lora", 8, "rte", 0, config={"resolved_variant_config": {"r": 8, "use_rslora": True}})
    )
    store.add(make("lora", 8, "rte", 1, config={"variant_config": {"r": 8, "use_rslora": True}}))
    store.add(make("lora", 8, "mrpc", 0))
    store.add(
        replace(
            make("adalora", 8, "rte", 0, ranks=ada),
            rank=12,
            config={"resolved_variant_config": {"r": 12, "target_r": 8}},
        )
    )
    store.add(
        replace(
            make("adalora", 8, "mrpc", 0),
            rank=6,
            config={"resolved_variant_config": {"init_r": 6, "target_r": 4}},
        )
    )
    store.add(make("dylora", 8, "rte", 0))
    data = load_report_data(store)
    labels = dict(zip(data.runs["run_id"], data.runs["config"], strict=True))
    assert labels["lora-8-rte-0"] == labels["lora-8-rte-1"] == "rsLoRA r=8"  # one row, two seeds
    assert labels["lora-8-mrpc-0"] == "LoRA r=8"
    # Layer 0's two matrices kept 7, the other six 8: the mean (7.75) misses the target.
    assert labels["adalora-8-rte-0"] == "AdaLoRA r=12→8 (mean 7.8)"
    assert labels["adalora-8-mrpc-0"] == "AdaLoRA r=6→4"  # written by 0.1 with init_r
    assert labels["dylora-8-rte-0"] == "DyLoRA r≤8"
    table = build_results_table(data.runs)
    assert list(table.cells.index) == [
        "LoRA r=8",
        "rsLoRA r=8",
        "AdaLoRA r=6→4",
        "AdaLoRA r=12→8 (mean 7.8)",
        "DyLoRA r≤8",
    ]
    assert r"AdaLoRA r=12$\rightarrow$8" in to_latex(table) and r"r$\leq$8" in to_latex(table)


def test_a_record_of_a_variant_not_registered_here_keeps_its_name(tmp_path):
    store = ResultStore(tmp_path / "r.db")
    for seed in (0, 1):
        store.add(make("lora", 8, "rte", seed))
        store.add(
            replace(
                make("lora", 8, "rte", seed),
                run_id=f"gone-{seed}",
                variant="gone-plugin",
                rank=5,
                config={"resolved_variant_config": {"r": 5, "wobble": 0.5}},
            )
        )
    store.add(
        replace(
            make("lora", 8, "rte", 0, status="failed", score=None, error="ValueError: boom"),
            run_id="gone-failed",
            variant="gone-plugin",
            rank=5,
        )
    )
    rep = generate_report(store, tmp_path / "out")
    assert list(rep.table.cells.index) == ["LoRA r=8", "gone-plugin r=5"]  # after the ordered ones
    assert rep.table.numbers.set_index("config").loc["gone-plugin r=5", "n"] == 2
    assert any(
        n.startswith("gone-plugin r=5 on rte, seed 0: failed (ValueError: boom)") for n in rep.notes
    )
    assert "gone-plugin r=5" in rep.html.read_text()


def test_a_plugin_variant_reports_with_the_defaults_of_every_fact(tmp_path):
    """A plugin that sets none of the facts reads as its registered name and ``r=<r>``, sorts
    after the built-ins; a LoRA subclass does not print as "LoRA" nor take LoRA's place."""
    from lorabench.variants import VARIANTS
    from lorabench.variants.lora import LoRA

    @VARIANTS.register("test-report-plugin")
    class Plugin(LoRA):
        description = "a LoRA under another name, for the report tests"

    try:
        assert (Plugin.report_name(), Plugin.report_position()) == ("test-report-plugin", None)
        assert not Plugin.adaptive_rank and not Plugin.multi_rank_eval
        store = ResultStore(tmp_path / "r.db")
        store.add(make("vera", 256, "rte", 0))
        store.add(replace(make("lora", 8, "rte", 0), run_id="p", variant="test-report-plugin"))
        store.add(make("lora", 8, "rte", 0))
        table = build_results_table(load_report_data(store).runs)
        assert list(table.cells.index) == ["LoRA r=8", "VeRA r=256", "test-report-plugin r=8"]
    finally:
        VARIANTS.unregister("test-report-plugin")


def test_runs_on_other_data_or_model_files_are_never_seeds_of_one_row(tmp_path):
    """Records trained on different data (per task) or model files are other rows: the
    fingerprint most runs read stays untagged, the others are tagged, legacy records (no
    fingerprint) read "not recorded", and the notes and caption say so."""
    new, other, model = "a1b2c3d4e5f60718", "ffee0011ddcc2233", "0123456789abcdef"
    store = ResultStore(tmp_path / "r.db")
    for seed in SEEDS:
        store.add(make("lora", 8, "rte", seed, data_fingerprint=new, model_fingerprint=model))
        store.add(make("lora", 8, "mrpc", seed, data_fingerprint=other, model_fingerprint=model))
        store.add(make("dora", 8, "rte", seed, data_fingerprint=new, model_fingerprint=model))
    # Seed 3 of LoRA on RTE from the previous release: no fingerprint at all.
    store.add(make("lora", 8, "rte", 3, run_id="legacy", score=0.99))
    data = load_report_data(store)
    table = build_results_table(data.runs)
    legacy = "LoRA r=8 [model not recorded, data not recorded]"
    assert list(table.cells.index) == ["LoRA r=8", legacy, "DoRA r=8"]
    mean, std = hand_mean_std("lora", 8, "rte")
    assert table.cells.loc["LoRA r=8", "RTE (Acc)"] == f"{mean:.1f} ± {std:.1f}"  # not averaged in
    assert table.cells.loc[legacy, "RTE (Acc)"] == "99.0"
    numbers = table.numbers.set_index(["config", "task"])
    assert numbers.loc[("LoRA r=8", "rte"), "n"] == 3 and numbers.loc[(legacy, "rte"), "n"] == 1
    notes = "\n".join(data.notes)
    assert (
        "rte: the runs read 2 different data (fingerprints a1b2c3d4 (6 run(s), untagged rows)"
        in notes
    )
    assert "not recorded (1 run(s), rows tagged [data not recorded]; written before" in notes
    assert "all-MiniLM-L6-v2: the runs read 2 different model files" in notes
    assert not any(n.startswith("mrpc:") for n in data.notes)  # one data set there: nothing to say
    assert "Runs on RTE read different data" in table.caption


def test_the_reports_name_no_variant():
    """Facts about a variant live on the variant: the report modules read them from the registry."""
    import lorabench.reports

    folder = Path(lorabench.reports.__file__).parent
    names = re.compile(r"""["'](lora|dora|adalora|vera|dylora)["']""")  # registry names
    for path in [*folder.glob("*.py"), folder.parent / "cli" / "report_cmd.py"]:
        assert not names.search(path.read_text(encoding="utf-8")), path


def test_rank_recovery_is_spearman_per_seed_against_the_planted_ranks(tmp_path, capsys):
    """A method that ranks the matrices in the planted order scores +1 whatever the scale of its
    ranks; the reverse order -1; uniform ranks have no order and say so; the report writes the
    table and the command prints it."""
    from scipy.stats import spearmanr

    from lorabench.reports.recovery import rank_recovery, run_spearman

    names = [BERT.format(layer, m) for layer in range(3) for m in MATRICES[:2]]
    true = dict(zip(names, [8, 0, 4, 1, 2, 2], strict=True))
    store = ResultStore(tmp_path / "r.db")
    for seed in (0, 1, 2):
        follows = {n: 2 * v + 1 for n, v in true.items()}  # same order, other scale
        reverse = {n: 10 - v for n, v in true.items()}
        noisy = dict(follows)
        noisy[names[seed]] = 0  # one matrix misplaced per seed
        store.add(make("adalora", 8, "planted-r4", seed, ranks=follows, true_ranks=true))
        store.add(make("dylora", 8, "planted-r4", seed, ranks=reverse, true_ranks=true))
        store.add(make("lora", 8, "planted-r4", seed, ranks=noisy, true_ranks=true))
        store.add(
            make("vera", 256, "planted-r4", seed, ranks=dict.fromkeys(true, 3), true_ranks=true)
        )
    data = load_report_data(store)
    frame = rank_recovery(data).set_index("config")
    adalora = frame.loc[next(c for c in frame.index if c.startswith("AdaLoRA"))]
    assert adalora.spearman_mean == pytest.approx(1.0) and adalora.seeds == [0, 1, 2]
    assert adalora.mean_final_rank == pytest.approx(2 * np.mean(list(true.values())) + 1)
    dylora = frame.loc[next(c for c in frame.index if c.startswith("DyLoRA"))]
    assert dylora.spearman_mean == pytest.approx(-1.0)
    lora = frame.loc[next(c for c in frame.index if c.startswith("LoRA"))]
    by_hand = []
    for seed in (0, 1, 2):
        noisy = {n: 2 * v + 1 for n, v in true.items()}
        noisy[names[seed]] = 0
        by_hand.append(spearmanr([noisy[n] for n in names], [true[n] for n in names]).statistic)
    assert lora.spearman_per_seed == pytest.approx(by_hand)
    assert lora.spearman_mean == pytest.approx(np.mean(by_hand))
    assert lora.spearman_std == pytest.approx(np.std(by_hand, ddof=1))
    vera = frame.loc[next(c for c in frame.index if c.startswith("VeRA"))]
    assert np.isnan(vera.spearman_mean)
    assert np.isnan(run_spearman(dict.fromkeys(true, 3), true))

    out = tmp_path / "report"
    assert cli_main(["report", "--results", str(tmp_path / "r.db"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Rank recovery on planted-rank tasks" in printed
    assert "n/a (same rank everywhere)" in printed and "+1.00 ± 0.00" in printed
    assert (out / "rank_recovery.csv").is_file()
    assert "id='rank-recovery'" in (out / "report.html").read_text(encoding="utf-8")


# -- honest figures and tables --------------------------------------------------------------------
def _lines(ax, label: str):
    return [line for line in ax.lines if line.get_label() == label]


def _error_bars(ax) -> list[np.ndarray]:
    """Per error-bar container of ``ax``: the (x, y_low, y_high) of each vertical bar drawn."""
    from matplotlib.container import ErrorbarContainer

    out = []
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            for collection in container.lines[2]:
                out.append(
                    np.array([[s[0][0], s[0][1], s[1][1]] for s in collection.get_segments()])
                )
    return out


def test_memory_is_the_training_peak_and_older_whole_process_figures_stay_apart(tmp_path):
    """New records hold the peak above the pre-training baseline; older ones a whole-process
    figure that grew with every earlier run. Each kind gets its own table column and costs panel,
    labelled with what it measured, and the two are never averaged together."""
    from lorabench.reports.plots import plot_costs

    store = ResultStore(tmp_path / "r.db")
    for i, (variant, rank) in enumerate((("lora", 4), ("lora", 8), ("dora", 8))):
        # An older process: 801, 809, 817 MiB in run order, whatever the run.
        store.add(
            make(
                variant,
                rank,
                "rte",
                0,
                spent={
                    "train_seconds": 10.0,
                    "peak_memory_bytes": (801 + 8 * i) * 2**20,
                    "memory_kind": "cpu_rss_peak",
                },
            )
        )
        for seed in (1, 2):
            spent = {
                "train_seconds": 10.0,
                "peak_memory_bytes": (20 + rank + seed) * 2**20,
                "memory_kind": "cpu_rss_peak_above_baseline",
                "memory_baseline_bytes": 700 * 2**20,
            }
            store.add(make(variant, rank, "rte", seed, spent=spent))
    data = load_report_data(store)
    table = build_results_table(data.runs)
    assert table.cells.loc["LoRA r=8", "Train mem (MiB)"] == "30"  # (29 + 30) / 2 MiB, rounded
    assert table.cells.loc["LoRA r=8", "Process mem (MiB)"] == "809"
    assert "above what the process held when training began" in table.caption
    assert "whole-process peak RSS" in table.caption
    numbers = table.numbers.set_index(["config", "task"])
    assert np.isnan(numbers.loc[("LoRA r=8", "rte"), "peak_memory_mb"])  # mixed kinds: no mean
    fig = plot_costs(data)
    try:
        labels = [ax.get_xlabel().replace("\n", " ") for ax in fig.axes]
        assert labels == [
            "training time (s)",
            "peak memory above the pre-training baseline (MiB)",
            "whole-process peak RSS, older records (MiB)",
            "saved adapter size (KiB)",
        ]
        widths = {
            label: [bar.get_width() for bar in ax.patches]
            for label, ax in zip(labels, fig.axes, strict=True)
        }
        # Rows: LoRA r=4, LoRA r=8, DoRA r=8.
        assert widths[labels[1]] == pytest.approx([25.5, 29.5, 29.5])
        assert widths[labels[2]] == pytest.approx([801, 809, 817])
    finally:
        plt.close(fig)


def test_adaptive_rank_runs_sit_at_their_final_mean_rank(tmp_path):
    """AdaLoRA r=8→2 is drawn at its final mean rank (2, or 2.25 when it kept a few more), never
    at its initial r=8; one that recorded no final ranks is left out and the title says so."""
    from lorabench.reports.plots import plot_score_vs_rank

    store = ResultStore(tmp_path / "r.db")
    names = [BERT.format(layer, m) for layer in range(2) for m in MATRICES[:2]]
    for seed in (0, 1):
        store.add(make("lora", 4, "rte", seed))
        store.add(make("lora", 8, "rte", seed))
        final = dict.fromkeys(names, 2)
        if seed == 1:
            final[names[0]] = 4  # mean 2.5: the row sits at (2 + 2.5) / 2
        store.add(
            replace(
                make("adalora", 8, "rte", seed, ranks=final),
                config={"resolved_variant_config": {"r": 8, "target_r": 2}},
            )
        )
    store.add(
        replace(
            make("adalora", 8, "rte", 0, run_id="no-ranks", ranks={}),
            config={"resolved_variant_config": {"r": 12, "target_r": 4}},
        )
    )
    data = load_report_data(store)
    fig = plot_score_vs_rank(data)
    try:
        (ax,) = [ax for ax in fig.axes if ax.get_visible()]
        # One line per variant and recipe; AdaLoRA r=12→4 has no place on it.
        (ada,) = [line for line in ax.lines if line.get_label().startswith("AdaLoRA")]
        assert ada.get_xdata().tolist() == [pytest.approx(2.25)]
        assert ada.get_label() == "AdaLoRA (trained at each rank, at the final mean rank)"
        (lora,) = [line for line in ax.lines if line.get_label().startswith("LoRA")]
        assert lora.get_xdata().tolist() == [4.0, 8.0]
        title = fig.get_suptitle().replace("\n", " ")
        assert "no final ranks recorded): AdaLoRA r=12→4" in title
    finally:
        plt.close(fig)


def test_one_run_has_no_error_bar_and_no_plus_minus(tmp_path):
    """A point of one seed is drawn without a bar (not a bar of 0); a point of several seeds
    keeps its ±std bar; the table prints no "± 0" for one run."""
    from lorabench.reports.plots import plot_costs, plot_score_vs_params, plot_score_vs_rank
    from lorabench.reports.tables import format_mean_std

    store = ResultStore(tmp_path / "r.db")
    for seed in SEEDS:
        store.add(make("lora", 8, "rte", seed))
    store.add(make("lora", 4, "rte", 0))
    store.add(make("dora", 8, "rte", 0))
    data = load_report_data(store)
    fig = plot_score_vs_params(data)
    try:
        (ax,) = [ax for ax in fig.axes if ax.get_visible()]
        (bars,) = _error_bars(ax)  # one bar: LoRA r=8's three seeds
        mean, std = hand_mean_std("lora", 8, "rte")
        assert bars.tolist() == [pytest.approx([73_728, mean - std, mean + std])]
        (dora,) = _lines(ax, "DoRA")
        assert dora.get_xdata().tolist() == [76_032]  # the point itself is drawn
        assert "no bar: one run" in fig.get_suptitle().replace("\n", " ")
    finally:
        plt.close(fig)
    fig = plot_score_vs_rank(data)
    try:
        (ax,) = [ax for ax in fig.axes if ax.get_visible()]
        (bars,) = _error_bars(ax)
        assert bars[:, 0].tolist() == [8.0]  # LoRA r=4 (one seed) has none
        (lora,) = [line for line in ax.lines if line.get_label().startswith("LoRA")]
        assert lora.get_xdata().tolist() == [4.0, 8.0]
    finally:
        plt.close(fig)
    fig = plot_costs(data)
    try:
        for ax in fig.axes:
            from matplotlib.container import ErrorbarContainer

            (container,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
            segments = container.lines[2][0].get_segments()
            assert [s[0][1] for s in segments] == [1]  # row 1: LoRA r=8, the only one of 3 runs
    finally:
        plt.close(fig)

    one = ResultStore(tmp_path / "one.db")
    one.add(make("lora", 8, "rte", 0))
    one.add(make("dora", 8, "rte", 0))
    data = load_report_data(one)
    for draw in (plot_score_vs_params, plot_score_vs_rank, plot_costs):
        fig = draw(data)
        try:
            assert not any(_error_bars(ax) for ax in fig.axes), draw.__name__
            assert not any(ax.containers for ax in fig.axes if draw is not plot_costs)
        finally:
            plt.close(fig)
    table = build_results_table(data.runs)
    assert "±" not in to_markdown(table) and r"\pm" not in to_latex(table)
    assert table.caption.startswith("One run per cell (no std)")
    assert format_mean_std(0.5, 0.0, 4, n=1) == "0.5000"
    assert format_mean_std(0.5, 0.01, 4, n=2) == "0.5000 ± 0.0100"


def test_correlations_are_never_printed_as_percentages(tmp_path):
    """Matthews and Pearson are scaled as their metric records say (x100 like papers, or not),
    and never labelled "%": a correlation x100 is not a percentage."""
    from lorabench.reports.plots import (
        plot_learning_curves,
        plot_score_vs_params,
        plot_score_vs_rank,
        plot_search_history,
    )
    from lorabench.tasks.metrics import get_metric

    store = ResultStore(tmp_path / "r.db")
    scores = {"cola": ("matthews", 0.42), "stsb": ("pearson", 0.81)}
    for task, (metric, score) in scores.items():
        for seed in (0, 1):
            fields = {
                "primary_metric": metric,
                "metrics": {metric: score},
                "curve": [CurvePoint(step=10, loss=0.5, metrics={metric: score}, reg_loss=0.0)],
            }
            store.add(make("lora", 8, task, seed, score=score, **fields))
        store.add(
            make(
                "lora",
                8,
                task,
                7,
                score=score,
                run_id=f"trial-{task}",
                search={"study": f"s-{task}", "trial": 0, "role": "trial"},
                primary_metric=metric,
            )
        )
    data = load_report_data(store)
    figures = [
        draw(data)
        for draw in (
            plot_score_vs_params,
            plot_score_vs_rank,
            plot_learning_curves,
            plot_search_history,
        )
    ]
    try:
        for fig in figures:
            for ax in fig.axes:
                assert "%" not in ax.get_ylabel(), ax.get_ylabel()
        axes = [ax for ax in figures[0].axes if ax.get_visible()]
        for ax, task in zip(axes, ("cola", "stsb"), strict=True):
            metric, score = scores[task]
            scale = 100 if get_metric(metric).percent else 1
            assert ax.get_ylabel() == (f"{metric} (×100)" if scale == 100 else metric)
            (line,) = _lines(ax, "LoRA")
            assert line.get_ydata().tolist() == [pytest.approx(score * scale)]
    finally:
        for fig in figures:
            plt.close(fig)
    table = build_results_table(data.runs)
    assert "%" not in table.cells.loc["LoRA r=8", "COLA (Mcc)"]
    assert "%" not in table.caption and "matthews and pearson x100" in table.caption


def test_score_vs_params_draws_a_panel_and_a_pareto_front_per_model(tmp_path):
    """Runs of two models are two panels, each with the Pareto front of its own points: a small
    model's cheap point never sits on the big model's front."""
    from lorabench.reports.plots import plot_score_vs_params

    store = ResultStore(tmp_path / "r.db")
    for seed in (0, 1):
        store.add(make("lora", 4, "rte", seed))
        store.add(make("lora", 8, "rte", seed))
        for variant, rank in (("lora", 8), ("vera", 256)):
            store.add(
                replace(
                    make(variant, rank, "rte", seed),
                    run_id=f"big-{variant}-{seed}",
                    model="models/bert-base-uncased",
                    score=0.8,
                )
            )
    fig = plot_score_vs_params(load_report_data(store))
    try:
        panels = [ax for ax in fig.axes if ax.get_visible()]
        assert [ax.get_title() for ax in panels] == [
            "RTE: all-MiniLM-L6-v2",
            "RTE: bert-base-uncased",
        ]
        fronts = [_lines(ax, "Pareto front")[0].get_xdata().tolist() for ax in panels]
        assert fronts[0] == [36_864, 73_728]  # LoRA r=4 and r=8 of the small model
        assert fronts[1] == [9_984]  # VeRA alone: LoRA r=8 is no better and larger
        assert [len(ax.texts) for ax in panels] == [2, 2]
        assert "one panel and Pareto front per model" in fig.get_suptitle().replace("\n", " ")
    finally:
        plt.close(fig)


def test_learning_curves_draw_the_task_loss_and_the_regulariser_apart(tmp_path):
    """AdaLoRA's regulariser (1.85) goes to its own panel: the loss panel holds the task losses
    only, so LoRA's curve is not squashed; an older record (no ``reg_loss``) is named as one
    whose loss may include it."""
    from lorabench.reports.plots import plot_learning_curves

    def curve(loss: float, reg: float | None) -> list[CurvePoint]:
        return [CurvePoint(step=s, loss=loss / s, reg_loss=reg) for s in (10, 20, 30, 40)]

    store = ResultStore(tmp_path / "r.db")
    store.add(make("lora", 8, "rte", 0, curve=curve(0.7, 0.0)))
    store.add(make("adalora", 8, "rte", 0, curve=curve(0.6, 1.85)))
    fig = plot_learning_curves(load_report_data(store))
    try:
        loss_ax, reg_ax = fig.axes[:2]
        assert [loss_ax.get_ylabel(), reg_ax.get_ylabel()] == ["training task loss", "regulariser"]
        (ada,) = [line for line in loss_ax.lines if line.get_label().startswith("AdaLoRA")]
        assert ada.get_ydata().tolist() == pytest.approx([0.06, 0.03, 0.02, 0.015])
        assert max(max(line.get_ydata()) for line in loss_ax.lines) < 0.1
        assert [line.get_label() for line in reg_ax.lines] == ["AdaLoRA r=8"]  # LoRA has none
        assert reg_ax.lines[0].get_ydata().tolist() == pytest.approx([1.85] * 4)
        assert "regulariser apart" in fig.get_suptitle().replace("\n", " ")
    finally:
        plt.close(fig)

    # Older records: no reg_loss recorded. DoRA has no regulariser: nothing to say about it.
    store.add(make("dora", 8, "rte", 0))
    store.add(make("adalora", 8, "rte", 1, run_id="old-adalora"))
    fig = plot_learning_curves(load_report_data(store))
    try:
        title = fig.get_suptitle().replace("\n", " ")
        assert title.endswith("the loss of AdaLoRA r=8 may include it")
    finally:
        plt.close(fig)


def test_pruned_trials_sit_at_their_last_reported_value(db, tmp_path):
    """A pruned trial is drawn at the value it last reported (its score, else its curve's last
    evaluation), not on the axis; one that reported nothing is not drawn and the legend says so;
    none of them counts towards the best so far."""
    from lorabench.reports.plots import plot_search_history

    fig = plot_search_history(load_report_data(db))
    try:
        ax = fig.axes[0]
        (pruned,) = [c for c in ax.collections if c.get_label().startswith("pruned")]
        assert pruned.get_offsets().tolist() == [[2, pytest.approx(59.0)]]  # 0.55 + 0.02 * 2
        assert pruned.get_label() == "pruned (last reported value)"
        (best,) = _lines(ax, "best so far")
        assert best.get_ydata().tolist() == pytest.approx([55, 57, 57, 61, 63])
    finally:
        plt.close(fig)

    store = ResultStore(tmp_path / "r.db")

    def trial(n: int, status: str, score, curve) -> RunRecord:
        return make(
            "lora",
            8,
            "rte",
            100 + n,
            run_id=f"t{n}",
            status=status,
            score=score,
            curve=curve,
            search={"study": "s", "trial": n, "role": "trial"},
        )

    store.add(trial(0, "finished", 0.7, []))
    store.add(trial(1, "pruned", None, [CurvePoint(step=6, metrics={"accuracy": 0.52})]))
    store.add(trial(2, "pruned", None, []))
    fig = plot_search_history(load_report_data(store))
    try:
        (pruned,) = [c for c in fig.axes[0].collections if c.get_label().startswith("pruned")]
        assert pruned.get_offsets().tolist() == [[1, pytest.approx(52.0)]]
        assert pruned.get_label() == "pruned (last reported value); 1 without one, not drawn"
    finally:
        plt.close(fig)


def test_latex_has_booktabs_rules_only_at_the_top_under_the_header_and_at_the_bottom(db):
    table = build_results_table(load_report_data(db).runs)
    lines = to_latex(table).splitlines()
    rules = [(i, line) for i, line in enumerate(lines) if re.search(r"\\(hline|\w*rule)", line)]
    assert [line for _, line in rules] == [r"\toprule", r"\midrule", r"\bottomrule"]
    (top, _), (mid, _), (bottom, _) = rules
    assert mid == top + 2 and lines[top + 1].startswith("Method &")  # the header between
    rows = lines[mid + 1 : bottom]
    assert len(rows) == len(table.cells) and all(row.endswith(r"\\") for row in rows)


# -- which evaluation is the score (--score final | best) ------------------------------------------
BEST_CAPTION = (
    "score: best evaluation on the dev split during training (optimistic: the same split picks "
    "and scores)"
)


def evaluated(values: list[float], key: str = "accuracy", **extra) -> dict:
    """``make`` fields for a run evaluated at steps 10, 20, ... with ``values`` (the last is the
    final evaluation, and the run's score)."""
    curve = [
        CurvePoint(step=10 * (i + 1), loss=0.5, metrics={key: v}) for i, v in enumerate(values)
    ]
    return {"score": values[-1], "metrics": {key: values[-1]}, "curve": curve, **extra}


def test_best_score_is_the_peak_dev_evaluation_and_final_the_last(tmp_path):
    store = ResultStore(tmp_path / "r.db")
    store.add(make("lora", 8, "rte", 0, **evaluated([0.60, 0.75, 0.70, 0.68])))  # peaks midway
    store.add(make("dora", 8, "rte", 0, **evaluated([0.72])))  # evaluated only at the end
    final = generate_report(store, tmp_path / "final")
    best = generate_report(store, tmp_path / "best", score="best")

    assert final.table.cells.loc["LoRA r=8", "RTE (Acc)"] == "68.0"
    assert final.table.cells.loc["DoRA r=8", "RTE (Acc)"] == "72.0"
    assert bool(final.table.bold.loc["DoRA r=8", "RTE (Acc)"])
    assert best.table.cells.loc["LoRA r=8", "RTE (Acc)"] == "75.0"  # the peak
    assert best.table.cells.loc["DoRA r=8", "RTE (Acc)"] == "72.0"  # no intermediate eval
    assert bool(best.table.bold.loc["LoRA r=8", "RTE (Acc)"])  # the ranking follows the score
    assert load_report_data(store, score="best").runs.set_index("variant")["score"].to_dict() == {
        "lora": 0.75,
        "dora": 0.72,
    }
    # Every evaluation stays recorded: the database still holds the final score.
    assert {r.variant: r.score for r in store.records()} == {"lora": 0.68, "dora": 0.72}

    # The caption (every format) and the HTML overview say which score is shown.
    assert "score: final evaluation; best per task in bold" in final.table.caption
    assert BEST_CAPTION + "; best per task in bold" in best.table.caption
    assert "score: final evaluation" in final.tables["md"].read_text()
    assert BEST_CAPTION in best.tables["md"].read_text()
    assert "optimistic: the same split picks and scores" in best.tables["tex"].read_text()
    page = best.html.read_text()
    overview = page.split("<h2", 1)[0]
    assert "<th class='left'>score</th>" in overview and "best evaluation on the dev split" in (
        overview
    )
    assert "<td class='left'>final evaluation</td>" in final.html.read_text()
    assert "1 of 2 run(s) were not evaluated during training" in "\n".join(best.notes)
    assert not any("evaluated during training" in n for n in final.notes)


def test_best_score_of_a_lower_is_better_metric_is_the_minimum():
    record = make(
        "lora",
        8,
        "rte",
        0,
        primary_metric="mse",
        higher_is_better=False,
        **evaluated([0.50, 0.20, 0.30, 0.35], key="mse"),
    )
    assert runs_frame([record], score="final")["score"].tolist() == [0.35]
    assert runs_frame([record], score="best")["score"].tolist() == [0.20]
    assert runs_frame([record])["score"].tolist() == [0.35]  # final is the default


def test_best_score_of_a_task_with_several_eval_splits_reads_the_primary_split():
    """The score is the primary metric on the first split, keyed ``"<split>/<metric>"``; the
    other split's peak must not leak into it."""
    curve = [
        CurvePoint(
            step=s,
            metrics={"validation_matched/accuracy": m, "validation_mismatched/accuracy": mm},
        )
        for s, m, mm in ((10, 0.70, 0.95), (20, 0.85, 0.80), (30, 0.80, 0.81))
    ]
    final = {"validation_matched/accuracy": 0.80, "validation_mismatched/accuracy": 0.81}
    record = make("lora", 8, "mnli", 0, score=0.80, metrics=final, curve=curve)
    assert runs_frame([record], score="best")["score"].tolist() == [0.85]
    # The record names no splits: the key is the one holding the final score, whichever order.
    mismatched_first = make(
        "lora",
        8,
        "mnli",
        0,
        score=0.80,
        metrics=dict(reversed(list(final.items()))),
        curve=curve,
    )
    assert runs_frame([mismatched_first], score="best")["score"].tolist() == [0.85]


def test_best_equals_final_when_no_run_evaluated_during_training(tmp_path):
    store = ResultStore(tmp_path / "r.db")
    store.add(make("lora", 8, "rte", 0, **evaluated([0.66])))
    store.add(make("lora", 8, "rte", 1, **{**evaluated([0.64]), "curve": []}))  # no curve
    data = load_report_data(store, score="best")
    assert sorted(data.runs["score"]) == [0.64, 0.66]
    assert "best = final: no run evaluated during training (set --eval-every)." in data.notes
    assert not any("--eval-every" in n for n in load_report_data(store).notes)
    with pytest.raises(ValueError, match="unknown score 'peak'"):
        load_report_data(store, score="peak")


def test_the_score_flag_of_the_command(tmp_path, capsys):
    store = ResultStore(tmp_path / "r.db")
    store.add(make("lora", 8, "rte", 0, **evaluated([0.60, 0.75, 0.68])))
    store.close()
    args = ["report", "--results", str(tmp_path / "r.db")]
    assert cli_main([*args, "--out", str(tmp_path / "f")]) == 0
    out = capsys.readouterr().out
    assert "| 68.0 |" in out and "score: final evaluation" in out
    assert cli_main([*args, "--out", str(tmp_path / "b"), "--score", "best"]) == 0
    out = capsys.readouterr().out
    assert "| 75.0 |" in out and BEST_CAPTION in out
    with pytest.raises(SystemExit):
        cli_main([*args, "--out", str(tmp_path / "x"), "--score", "peak"])
    capsys.readouterr()

    parser = argparse.ArgumentParser(prog="lorabench report")
    report_cmd.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--score {final,best}" in text
    assert "best evaluation on the dev split over training" in text
    assert "LoRA and AdaLoRA papers" in text and "optimistic" in text
    assert "the same split chooses and scores" in text


def test_the_report_says_when_rows_trained_with_different_recipes(tmp_path):
    store = ResultStore(tmp_path / "r.db")
    for seed in SEEDS:
        store.add(make("lora", 8, "rte", seed, config={"variant_config": {"r": 8}, "train": {
            "learning_rate": 5e-4, "batch_size": 16}}))  # fmt: skip
        store.add(make("vera", 256, "rte", seed, config={"variant_config": {"r": 256}, "train": {
            "learning_rate": 1e-2, "batch_size": 16}}))  # fmt: skip
    notes = load_report_data(store).notes
    (note,) = [n for n in notes if "different recipes" in n]
    assert "LoRA r=8: learning_rate=0.0005" in note and "VeRA r=256: learning_rate=0.01" in note
    assert "batch_size" not in note  # shared by every row

    alike = ResultStore(tmp_path / "alike.db")
    for seed in SEEDS:
        for variant, rank in (("lora", 8), ("vera", 256)):
            alike.add(make(variant, rank, "rte", seed, config={
                "variant_config": {"r": rank}, "train": {"learning_rate": 5e-4}}))  # fmt: skip
    assert not [n for n in load_report_data(alike).notes if "different recipes" in n]
