"""``load_results`` gives one tidy, typed row per run (the report's label, final and best score,
the final ranks, flat settings, datetimes) and ``load_curves`` the learning curves in long form."""

from __future__ import annotations

import pandas as pd
import pytest

from lorabench.reports.frame import load_report_data
from lorabench.results import load_curves, load_results
from lorabench.results.records import CurvePoint, RunRecord
from lorabench.results.store import ResultStore


def record(variant: str, seed: int, **extra) -> RunRecord:
    fields = dict(
        run_id=f"{variant}-{seed}",
        status="finished",
        variant=variant,
        task="rte",
        model="tiny-bert",
        seed=seed,
        config={
            "variant_config": {"r": 8},
            "train": {"learning_rate": 5e-4, "batch_size": 16, "eval_every": 5},
            "device": "cpu",
            "adapted_modules": ["query", "value"],
            "adapted_module_count": 4,
        },
        metrics={"accuracy": 0.68, "f1": 0.6},
        primary_metric="accuracy",
        score=0.68,
        rank=8,
        budget={"kind": "steps", "limit": 15},
        spent={"steps": 15, "train_seconds": 2.5, "peak_memory_bytes": 2**20},
        trainable_params=120,
        adapter_params=100,
        total_params=10_000,
        adapter_bytes=400,
        curve=[
            CurvePoint(step=5, loss=0.9, reg_loss=0.1, seconds=1.0, metrics={"accuracy": 0.6}),
            CurvePoint(step=10, loss=0.7, reg_loss=0.05, seconds=2.0, metrics={"accuracy": 0.75}),
            CurvePoint(step=15, loss=0.6, reg_loss=0.0, seconds=2.5, metrics={"accuracy": 0.68}),
        ],
        ranks={"layer.0.query": 8, "layer.0.value": 8},
        environment={"git_commit": "abc123", "git_dirty": False, "packages": {"torch": "2.3"}},
        started_at=f"2026-01-01T00:00:0{seed}+00:00",
        finished_at=f"2026-01-01T00:01:0{seed}",  # no offset: an older record, read as UTC
    )
    fields.update(extra)
    return RunRecord(**fields)


ADALORA_CONFIG = {
    "variant_config": {"r": 12, "target_r": 4},
    "train": {"learning_rate": 1e-3, "batch_size": 16},
}


@pytest.fixture
def results_db(tmp_path):
    path = tmp_path / "results.db"
    with ResultStore(path) as store:
        for seed in (0, 1):
            store.add(record("lora", seed))
            # AdaLoRA starts at r=12 and prunes to a budget: its final ranks are 3 and 5.
            store.add(
                record(
                    "adalora",
                    seed,
                    config=ADALORA_CONFIG,
                    rank=12,
                    ranks={"layer.0.query": 3, "layer.0.value": 5},
                )
            )
        store.add(record("dylora", 0, config={"variant_config": {"r": 8, "seed": 3}}))
        store.add(
            record(
                "lora", 2, status="failed", score=None, metrics={}, curve=[], error="boom", ranks={}
            )
        )
    return path


def test_columns_are_flat_and_typed(results_db):
    frame = load_results(results_db)
    assert len(frame) == 5 and frame["run_id"].is_unique  # finished runs only, by default
    for column in (
        "run_id", "label", "variant", "task", "seed", "final_score", "best_score", "rank",
        "nominal_rank", "final_rank_mean", "final_rank_total", "trainable_params", "budget",
        "accuracy", "f1", "steps", "train_seconds", "r", "alpha", "target_r", "learning_rate",
        "batch_size", "eval_every", "adapted_modules", "git_commit", "torch_version",
        "started_at", "finished_at",
    ):  # fmt: skip
        assert column in frame.columns, column
    assert not [c for c in frame.columns if "." in c]  # no dotted names
    elementwise = getattr(frame, "map", None) or frame.applymap  # DataFrame.map: pandas >= 2.1
    cells = elementwise(lambda v: isinstance(v, dict | list | tuple | set))
    assert not cells.to_numpy().any()  # no dict or list inside a cell
    for column in ("started_at", "finished_at"):
        assert isinstance(frame[column].dtype, pd.DatetimeTZDtype), column
        assert str(frame[column].dt.tz) == "UTC"
    assert frame["finished_at"].notna().all()  # with and without an offset
    assert frame.loc[frame["run_id"] == "lora-1", "started_at"].item() == pd.Timestamp(
        "2026-01-01T00:00:01", tz="UTC"
    )
    for column in (
        "final_score", "best_score", "rank", "final_rank_mean", "accuracy", "train_seconds",
        "learning_rate", "budget_limit",
    ):  # fmt: skip
        assert frame[column].dtype == "float64", column
    for column in ("seed", "trainable_params", "steps", "evaluations"):
        assert pd.api.types.is_integer_dtype(frame[column].dtype), column
    assert frame["higher_is_better"].dtype == bool
    assert frame["adapted_modules"].eq("query,value").sum() == 2  # LoRA's list, as text
    assert frame["budget"].unique().tolist() == ["steps=15"]
    # DyLoRA's config field "seed" does not overwrite the run's seed.
    dylora = frame.set_index("run_id").loc["dylora-0"]
    assert dylora["seed"] == 0 and dylora["variant_seed"] == 3


def test_label_is_the_report_label(results_db):
    frame = load_results(results_db).set_index("run_id")
    report = load_report_data(results_db).runs.set_index("run_id")
    assert frame.loc[report.index, "label"].tolist() == report["config"].tolist()
    assert frame.loc["lora-0", "label"] == "LoRA r=8"
    # AdaLoRA's label names its schedule: the initial rank and the target.
    assert frame.loc["adalora-0", "label"].startswith("AdaLoRA r=12→4")


def test_final_rank_of_an_adaptive_run_is_its_final_pattern(results_db):
    frame = load_results(results_db).set_index("run_id")
    adalora = frame.loc["adalora-0"]
    assert adalora["r"] == 12 and adalora["nominal_rank"] == 12  # where it started
    assert adalora["final_rank_mean"] == 4.0 and adalora["final_rank_total"] == 8.0
    assert adalora["final_rank_min"] == 3 and adalora["final_rank_max"] == 5
    assert adalora["rank"] == 4.0 and bool(adalora["adaptive_rank"])  # compared at its final rank
    lora = frame.loc["lora-0"]
    assert lora["rank"] == 8.0 and lora["final_rank_total"] == 16.0 and not lora["adaptive_rank"]


def test_final_and_best_score(results_db):
    frame = load_results(results_db).set_index("run_id")
    assert frame.loc["lora-0", "final_score"] == pytest.approx(0.68)
    assert frame.loc["lora-0", "best_score"] == pytest.approx(0.75)  # the step-10 evaluation
    assert frame.loc["lora-0", "evaluations"] == 3


def test_filters_and_failed_runs(results_db):
    assert load_results(results_db, variants="adalora")["variant"].unique().tolist() == ["adalora"]
    everything = load_results(results_db, status=None).set_index("run_id")
    failed = everything.loc["lora-2"]
    assert failed["status"] == "failed" and failed["error"] == "boom"
    assert pd.isna(failed["final_score"]) and pd.isna(failed["best_score"])
    assert failed["label"] == "LoRA r=8"
    empty = load_results(results_db, tasks="nope")
    assert empty.empty and {"run_id", "label", "final_score"} <= set(empty.columns)
    assert isinstance(empty["started_at"].dtype, pd.DatetimeTZDtype)


def test_curves_are_long_form(results_db):
    curves = load_curves(results_db)
    assert len(curves) == 5 * 3  # five finished runs, three points each
    assert not curves.duplicated(["run_id", "step"]).any()
    assert list(curves.columns[:6]) == ["run_id", "label", "variant", "task", "seed", "step"]
    assert {"loss", "reg_loss", "seconds", "accuracy"} <= set(curves.columns)
    for column in ("loss", "reg_loss", "seconds", "accuracy"):
        assert curves[column].dtype == "float64", column
    assert pd.api.types.is_integer_dtype(curves["step"].dtype)
    run = curves[curves["run_id"] == "lora-0"]
    assert run["step"].tolist() == [5, 10, 15]
    assert run["accuracy"].tolist() == [0.6, 0.75, 0.68]
    assert run["reg_loss"].tolist() == [0.1, 0.05, 0.0]
    labels = load_results(results_db).set_index("run_id")["label"]
    assert (curves["label"] == curves["run_id"].map(labels)).all()  # joins on run_id
    assert load_curves(results_db, tasks="nope").empty
