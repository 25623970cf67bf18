"""Statistics on synthetic records with a known answer: paired differences against a reference
(a known margin found, identical methods, too few seeds, a lower-is-better metric, the default
reference), average ranks with the Friedman and Nemenyi tests, and the critical-difference
diagram."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from lorabench.reports.frame import load_report_data
from lorabench.reports.stats import (
    CANNOT_DECIDE,
    default_reference_variant,
    friedman_ranks,
    paired_differences,
    plot_critical_difference,
    to_markdown,
    write_stats,
)
from lorabench.results.records import RunRecord
from lorabench.results.store import ResultStore

# Variant names are built here, not written out: tests/test_architecture.py only checks the
# package, but these read the same as the rows a report would print.
LORA, DORA, VERA = "lora", "dora", "vera"
SEEDS = tuple(range(8))
NOISE = np.random.default_rng(0).normal(0.0, 0.004, size=(len(SEEDS),))


def make(
    variant: str,
    rank: int,
    task: str,
    seed: int,
    score: float,
    *,
    metric: str = "accuracy",
    higher_is_better: bool = True,
) -> RunRecord:
    return RunRecord(
        run_id=f"{variant}-{rank}-{task}-{seed}",
        status="finished",
        variant=variant,
        task=task,
        model="all-MiniLM-L6-v2",
        seed=seed,
        config={"variant_config": {"r": rank}},
        metrics={metric: score},
        primary_metric=metric,
        score=score,
        higher_is_better=higher_is_better,
        rank=rank,
        budget={"kind": "steps", "limit": 40},
        spent={"steps": 40, "train_seconds": 1.0},
        trainable_params=1000 * rank,
        adapter_params=1000 * rank,
        total_params=10**6,
        started_at=f"2026-01-01T00:00:{seed:02d}",
        finished_at=f"2026-01-01T00:01:{seed:02d}",
    )


def load(tmp_path, records):
    store = ResultStore(tmp_path / "r.db")
    for record in records:
        store.add(record)
    store.close()
    return load_report_data(tmp_path / "r.db")


def row(paired, config, task="rte"):
    match = paired[(paired["config"] == config) & (paired["task"] == task)]
    assert len(match) == 1, paired
    return match.iloc[0]


def test_default_reference_is_the_first_variant_in_report_order():
    assert default_reference_variant() == LORA


def test_a_method_better_by_a_known_margin_is_found(tmp_path):
    base = 0.60 + 0.01 * np.arange(len(SEEDS))  # seeds differ a lot; the pairs do not
    records = [make(LORA, 8, "rte", s, base[i]) for i, s in enumerate(SEEDS)]
    records += [make(DORA, 8, "rte", s, base[i] + 0.02 + NOISE[i]) for i, s in enumerate(SEEDS)]
    paired = paired_differences(load(tmp_path, records))
    dora = row(paired, "DoRA r=8")
    assert dora["reference"] == "LoRA r=8" and dora["match"] == "same rank"
    assert dora["n"] == len(SEEDS) and dora["seeds"] == list(SEEDS)
    # Accuracy is shown x100: the margin is 2 points.
    assert dora["mean_difference"] == pytest.approx(2.0 + 100 * NOISE.mean())
    assert dora["ci_low"] < 2.0 < dora["ci_high"] and dora["ci_low"] > 0
    assert dora["p_value"] < 0.001
    assert dora["verdict"] == "better"
    assert "LoRA r=8" not in set(paired["config"])  # the reference is not compared with itself


def test_identical_methods_show_no_difference_and_no_p_value(tmp_path):
    records = [make(v, 8, "rte", s, 0.6 + 0.01 * s) for v in (LORA, DORA) for s in SEEDS[:4]]
    dora = row(paired_differences(load(tmp_path, records)), "DoRA r=8")
    assert dora["mean_difference"] == 0.0
    assert dora["verdict"] == "no significant difference"
    assert math.isnan(dora["p_value"])  # scipy gives NaN for zero spread; said in the note
    assert "identical on every seed" in dora["note"]


@pytest.mark.parametrize("shared", [1, 2])
def test_too_few_shared_seeds_cannot_decide(tmp_path, shared):
    records = [make(LORA, 8, "rte", s, 0.6 + 0.01 * s) for s in (0, 1, 2, 3)]
    # DoRA ran seeds 2.. : it shares `shared` of them with LoRA.
    records += [make(DORA, 8, "rte", s, 0.7) for s in range(4 - shared, 4 + 3)]
    data = load(tmp_path, records)
    dora = row(paired_differences(data), "DoRA r=8")
    assert dora["n"] == shared
    assert dora["verdict"].startswith(CANNOT_DECIDE)
    assert f"{shared} shared seed(s)" in dora["verdict"]
    assert math.isnan(dora["p_value"]) and math.isnan(dora["ci_low"])
    text = to_markdown(paired_differences(data), friedman_ranks(data))
    assert f"{CANNOT_DECIDE}: {shared} shared seed(s)" in text


def test_lower_is_better_flips_the_sign(tmp_path):
    lower = {"metric": "mse", "higher_is_better": False}
    records = [make(LORA, 8, "stsb", s, 1.0 + 0.05 * s, **lower) for s in SEEDS]
    # DoRA's error is 0.1 lower: better, so the difference is +0.1.
    records += [
        make(DORA, 8, "stsb", s, 0.9 + 0.05 * s + NOISE[i], **lower) for i, s in enumerate(SEEDS)
    ]
    dora = row(paired_differences(load(tmp_path, records)), "DoRA r=8", task="stsb")
    assert dora["mean_difference"] == pytest.approx(0.1 - NOISE.mean())  # mse is not x100
    assert dora["ci_low"] > 0
    assert dora["verdict"] == "better"


def test_the_default_reference_is_lora_at_the_same_rank_else_the_nearest(tmp_path):
    records = []
    for i, s in enumerate(SEEDS[:4]):
        records += [
            make(LORA, 4, "rte", s, 0.60 + 0.01 * s),
            make(LORA, 8, "rte", s, 0.62 + 0.01 * s),
            make(LORA, 16, "rte", s, 0.63 + 0.01 * s),
            make(DORA, 8, "rte", s, 0.64 + 0.01 * s + NOISE[i]),
            make(DORA, 12, "rte", s, 0.64 + 0.01 * s + NOISE[i]),  # 8 and 16 equally near
            make(VERA, 256, "rte", s, 0.58 + 0.01 * s + NOISE[i]),
        ]
    paired = paired_differences(load(tmp_path, records))
    assert row(paired, "DoRA r=8")["reference"] == "LoRA r=8"
    assert row(paired, "DoRA r=8")["match"] == "same rank"
    assert row(paired, "DoRA r=12")["reference"] == "LoRA r=8"  # a tie goes to the lower rank
    assert row(paired, "VeRA r=256")["reference"] == "LoRA r=16"
    assert row(paired, "VeRA r=256")["match"] == "nearest rank"
    assert not paired["config"].str.startswith("LoRA").any()
    # A named reference replaces the default for every row, LoRA's other ranks included.
    named = paired_differences(load_again(tmp_path), reference="DoRA r=8")
    assert set(named["reference"]) == {"DoRA r=8"}
    assert row(named, "LoRA r=8")["verdict"] == "worse"
    assert "DoRA r=8" not in set(named["config"])
    with pytest.raises(ValueError, match="the rows are: LoRA r=4"):
        paired_differences(load_again(tmp_path), reference="DoRA r=9")


def load_again(tmp_path):
    return load_report_data(tmp_path / "r.db")


def test_no_reference_run_on_a_task_cannot_decide(tmp_path):
    records = [make(DORA, 8, "rte", s, 0.6) for s in SEEDS[:3]]
    dora = row(paired_differences(load(tmp_path, records)), "DoRA r=8")
    assert dora["reference"] == ""
    assert dora["verdict"] == f"{CANNOT_DECIDE}: no LoRA run on this task with the same data, " + (
        "model and budget"
    )


TASKS = ("cola", "sst2", "mrpc", "qnli", "rte", "stsb")


def three_methods_on_six_tasks() -> list[RunRecord]:
    """LoRA best, DoRA second, VeRA third on every task (by different margins)."""
    records = []
    for t, task in enumerate(TASKS):
        for s in SEEDS[:3]:
            level = 0.5 + 0.03 * t + 0.01 * s
            records += [
                make(LORA, 8, task, s, level + 0.05),
                make(DORA, 8, task, s, level + 0.02 + 0.005 * t),
                make(VERA, 256, task, s, level),
            ]
    return records


def test_friedman_ranks_three_methods_in_the_same_order(tmp_path):
    data = load(tmp_path, three_methods_on_six_tasks())
    result = friedman_ranks(data)
    assert result.tested, result.reason
    assert result.methods == 3 and result.tasks == 6
    assert list(result.average_ranks.index) == ["LoRA r=8", "DoRA r=8", "VeRA r=256"]
    assert list(result.average_ranks) == [1.0, 2.0, 3.0]
    assert result.p_value < 0.05
    # Demšar's table: q_0.05 = 2.343 for k = 3; CD = q * sqrt(k (k + 1) / (6 N)).
    assert result.critical_difference == pytest.approx(2.343 * math.sqrt(12 / 36), abs=1e-3)
    # Ranks 1 and 3 differ by 2 > CD = 1.35; neighbours differ by 1 < CD.
    assert [(a, b) for a, b, _ in result.different_pairs()] == [("LoRA r=8", "VeRA r=256")]
    text = to_markdown(paired_differences(data), result)
    assert "Friedman χ²" in text and "CD = 1.35" in text


def test_friedman_respects_lower_is_better(tmp_path):
    records = []
    for task in TASKS[:4]:
        for s in SEEDS[:2]:
            for v, r, err in ((LORA, 8, 0.3), (DORA, 8, 0.2), (VERA, 256, 0.1)):
                records.append(make(v, r, task, s, err, metric="mse", higher_is_better=False))
    result = friedman_ranks(load(tmp_path, records))
    assert list(result.average_ranks.index) == ["VeRA r=256", "DoRA r=8", "LoRA r=8"]


def test_friedman_with_one_task_or_two_methods_cannot_decide(tmp_path):
    records = [r for r in three_methods_on_six_tasks() if r.task == "rte"]
    (tmp_path / "a").mkdir()
    one_task = friedman_ranks(load(tmp_path / "a", records))
    assert not one_task.tested
    assert one_task.reason.startswith(CANNOT_DECIDE) and "1 task(s)" in one_task.reason
    assert isinstance(plot_critical_difference(one_task), str)

    (tmp_path / "b").mkdir()
    records = [r for r in three_methods_on_six_tasks() if r.variant != VERA]
    two_methods = friedman_ranks(load(tmp_path / "b", records))
    assert not two_methods.tested and "2 method(s)" in two_methods.reason
    assert plot_critical_difference(two_methods) == two_methods.reason
    assert "No test: 2 method(s)" in to_markdown(
        paired_differences(load_again(tmp_path / "b")), two_methods
    )


def test_a_method_missing_a_task_is_left_out_and_named(tmp_path):
    records = [
        r for r in three_methods_on_six_tasks() if not (r.variant == DORA and r.task == "rte")
    ]
    result = friedman_ranks(load(tmp_path, records))
    assert list(result.average_ranks.index) == ["LoRA r=8", "VeRA r=256"]
    assert result.excluded == ["DoRA r=8: no finished run on rte."]


def test_the_critical_difference_diagram_names_every_method(tmp_path):
    result = friedman_ranks(load(tmp_path, three_methods_on_six_tasks()))
    fig = plot_critical_difference(result)
    try:
        assert isinstance(fig, Figure)
        texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
        for name in ("LoRA r=8", "DoRA r=8", "VeRA r=256"):
            assert name in texts
        assert "CD = 1.35" in texts
        fig.savefig(tmp_path / "cd.png")
    finally:
        plt.close(fig)


def test_write_stats(tmp_path):
    data = load(tmp_path, three_methods_on_six_tasks())
    written = write_stats(paired_differences(data), friedman_ranks(data), tmp_path)
    assert set(written) == {"md", "csv", "ranks_csv"}
    assert "### Paired differences" in written["md"].read_text(encoding="utf-8")
    assert "average_rank" in written["ranks_csv"].read_text(encoding="utf-8")


def test_empty_data_gives_empty_tables(tmp_path):
    ResultStore(tmp_path / "r.db").close()
    data = load_report_data(tmp_path / "r.db")
    paired, result = paired_differences(data), friedman_ranks(data)
    assert paired.empty and not result.tested
    assert write_stats(paired, result, tmp_path) == {}
    assert "No row to compare" in to_markdown(paired, result)


def test_the_report_and_its_command_carry_the_statistics(tmp_path, capsys):
    """generate_report writes stats.md and an HTML section; `lorabench report` prints them and
    refuses an unknown --reference by name, without a traceback."""
    import argparse

    from lorabench.cli import report_cmd

    store = ResultStore(tmp_path / "r.db")
    for record in three_methods_on_six_tasks():
        store.add(record)
    store.close()

    def report(*extra: str) -> int:
        parser = argparse.ArgumentParser()
        report_cmd.add_arguments(parser)
        argv = ["--results", str(tmp_path / "r.db"), "--out", str(tmp_path / "out"), *extra]
        return report_cmd.run(parser.parse_args(argv))

    assert report() == 0
    printed = capsys.readouterr().out
    assert "Friedman" in printed and "paired" in printed.lower()
    assert (tmp_path / "out" / "stats.md").is_file()
    assert (tmp_path / "out" / "figures" / "critical_difference.svg").is_file()
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "id='statistics'" in page
    assert report("--reference", "no such row") == 2
    err = capsys.readouterr().err
    assert "no report row is labelled 'no such row'" in err and "Traceback" not in err


def per_task(record: RunRecord, steps: int, lr: float) -> RunRecord:
    """``record`` trained with a task's own budget and learning rate (a suite's task settings)."""
    record.budget = {"kind": "steps", "limit": steps}
    record.config = {**record.config, "train": {"learning_rate": lr}}
    record.run_id += f"-{steps}-{lr}"
    return record


def test_per_task_settings_keep_one_row_per_method_across_tasks(tmp_path):
    """A suite with its own budget and rate per task (glue-cpu, paper-roberta-base) gives one
    row per method, so the methods are ranked across tasks; a sweep within one task does not
    merge (its rows differ in the setting swept)."""
    records = []
    for task, steps, lr in (("rte", 40, 1e-3), ("mrpc", 80, 2e-3)):
        for seed in range(3):
            records.append(per_task(make("lora", 8, task, seed, 0.6 + 0.01 * seed), steps, lr))
            records.append(per_task(make("dora", 8, task, seed, 0.7 + 0.01 * seed), steps, lr))
    data = load(tmp_path / "a", records)
    assert sorted(set(data.runs["config"])) == ["DoRA r=8", "LoRA r=8"]
    assert row(paired_differences(data), "DoRA r=8", task="mrpc")["n"] == 3

    sweep = records + [per_task(make("lora", 8, "rte", s, 0.5), 40, 5e-3) for s in range(3)]
    labels = set(load(tmp_path / "b", sweep).runs["config"])
    assert "DoRA r=8" in labels  # one recipe per task: still one row
    assert "LoRA r=8" not in labels and len([c for c in labels if c.startswith("LoRA")]) == 3
