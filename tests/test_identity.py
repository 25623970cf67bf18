"""A run is identified by what it computes: its resolved settings and the data and model it reads.

Restating a variant's default keeps the run id; any change to the computation changes it. A
custom task is its YAML ``name`` whichever path led to it. Changed data gives a new id and one
line of explanation, and the stored runs on the old data are kept apart.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pandas as pd
import pytest

from lorabench.harness.config import Budget, RunConfig, TrainConfig
from lorabench.harness.runner import RunCache, run_config_of
from lorabench.results.store import ResultStore
from lorabench.variants import VARIANTS
from lorabench.variants.adapter import make_config

FIXTURES = Path(__file__).parent / "fixtures"
BUILT_IN = ["lora", "dora", "adalora", "vera", "dylora"]


def defaults_of(variant: str) -> dict:
    return make_config(VARIANTS.get(variant), {}).to_dict()


@pytest.mark.parametrize("variant", BUILT_IN)
def test_restating_every_default_keeps_the_run_id(variant):
    plain = RunConfig(variant=variant, task="rte")
    restated = RunConfig(variant=variant, task="rte", variant_config=defaults_of(variant))
    assert restated.run_id == plain.run_id
    # One default at a time, and an integral float read from YAML as an int (alpha: 8 vs 8.0).
    for name, value in defaults_of(variant).items():
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        one = RunConfig(variant=variant, task="rte", variant_config={name: value})
        assert one.run_id == plain.run_id, name


@pytest.mark.parametrize("variant", BUILT_IN)
def test_anything_that_changes_the_computation_changes_the_run_id(variant):
    base = RunConfig(variant=variant, task="rte", data_fingerprint="a" * 16, model_fingerprint="m")
    rank = defaults_of(variant)["r"]
    changed = [
        dataclasses.replace(base, variant_config={"r": rank + 1}),
        dataclasses.replace(base, variant_config={"dropout": 0.25}),
        dataclasses.replace(base, seed=1),
        dataclasses.replace(base, budget=Budget("steps", 101)),
        dataclasses.replace(base, train=TrainConfig(learning_rate=1e-3)),
        dataclasses.replace(base, task="mrpc"),
        dataclasses.replace(base, data_fingerprint="b" * 16),
        dataclasses.replace(base, model_fingerprint="n"),
        dataclasses.replace(base, model="org/other-model"),
        dataclasses.replace(base, task_version="2"),
    ]
    ids = {cfg.run_id for cfg in changed}
    assert base.run_id not in ids and len(ids) == len(changed)
    # Where files are and the free-form tag are not what a run computes.
    assert dataclasses.replace(base, data_dir="/elsewhere", tag="x").run_id == base.run_id


def test_restated_defaults_on_the_command_line_give_the_same_runs(capsys, cli_main, tmp_path):
    """The issue's example: the second command only restates LoRA's and AdaLoRA's defaults."""
    argv = [
        "run",
        "--variants",
        "lora,adalora",
        "--tasks",
        "rte",
        "--dry-run",
        "--out",
        str(tmp_path),
    ]
    argv += ["--data-dir", str(FIXTURES / "glue")]
    assert cli_main(argv) == 0
    plain = capsys.readouterr().out
    restated = [*argv, "--variant-config", "lora.r=8", "--variant-config", "adalora.init_r=12"]
    assert cli_main(restated) == 0
    again = capsys.readouterr().out
    ids = [line.split()[0] for line in plain.splitlines() if line.startswith("  ")]
    assert len(ids) == 2 and ids == [
        line.split()[0] for line in again.splitlines() if line.startswith("  ")
    ]


def copy_custom_task(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("reviews.yaml", "reviews_train.csv", "reviews_dev.jsonl"):
        shutil.copy(FIXTURES / "custom" / name, folder / name)
    return folder / "reviews.yaml"


def test_one_custom_task_by_three_path_spellings_is_one_task(tmp_path, monkeypatch, tiny_model_dir):
    spec_file = copy_custom_task(tmp_path / "task")
    monkeypatch.chdir(tmp_path / "task")
    cache = RunCache()
    spellings = ["reviews.yaml", "./reviews.yaml", str(spec_file.resolve())]
    resolved = [
        cache.resolve(RunConfig("lora", task, model=str(tiny_model_dir))) for task in spellings
    ]
    assert {cfg.task for cfg in resolved} == {"fixture-reviews"}
    assert len({cfg.run_id for cfg in resolved}) == 1

    from lorabench.harness.suite import SuiteConfig

    suite = SuiteConfig.from_dict({"variants": ["lora"], "tasks": spellings})
    assert len(suite.tasks) == 1 and len(suite.run_configs()) == 1


def test_custom_task_is_stored_shown_and_filtered_by_its_name(
    tmp_path, monkeypatch, tiny_model_dir, cli_main, capsys, single_thread
):
    copy_custom_task(tmp_path / "task")
    monkeypatch.chdir(tmp_path / "task")
    out = tmp_path / "runs"
    argv = [
        "run",
        "--variants",
        "lora",
        "--tasks",
        "./reviews.yaml",
        "--model",
        str(tiny_model_dir),
    ]
    argv += ["--budget", "steps=2", "--out", str(out), "--quiet", "--no-adapters"]
    assert cli_main(argv) == 0
    assert "fixture-reviews" in capsys.readouterr().out
    records = ResultStore(out / "results.db").records()
    assert [r.task for r in records] == ["fixture-reviews"]
    # Another spelling of the same file is the same, finished run.
    assert (
        cli_main([*argv[:4], str((tmp_path / "task" / "reviews.yaml").resolve()), *argv[5:]]) == 0
    )
    assert "1 already finished, skipped" in capsys.readouterr().out

    from lorabench.reports import generate_report

    report = generate_report(out / "results.db", tmp_path / "report", tasks=["fixture-reviews"])
    assert report.runs == 1
    table = (tmp_path / "report" / "results.md").read_text()
    assert "FIXTURE-REVIEWS" in table.upper() and "YAML" not in table.upper()


def test_changed_data_is_a_new_run_with_one_line_and_kept_apart(
    tmp_path, monkeypatch, tiny_model_dir, cli_main, capsys, single_thread
):
    spec_file = copy_custom_task(tmp_path / "task")
    out = tmp_path / "runs"
    argv = ["run", "--variants", "lora", "--tasks", str(spec_file), "--model", str(tiny_model_dir)]
    argv += ["--budget", "steps=2", "--seeds", "2", "--out", str(out), "--quiet", "--no-adapters"]
    assert cli_main(argv) == 0
    first = capsys.readouterr().out
    assert "the data differs" not in first

    # Flip every training label: same file names, same settings, other data.
    train = tmp_path / "task" / "reviews_train.csv"
    frame = pd.read_csv(train)
    labels = sorted(frame["sentiment"].unique())
    frame["sentiment"] = frame["sentiment"].map({labels[0]: labels[1], labels[1]: labels[0]})
    frame.to_csv(train, index=False)

    assert cli_main(argv) == 0
    second = capsys.readouterr().out
    changed = [line for line in second.splitlines() if "the data differs" in line]
    assert (
        len(changed) == 1 and "fixture-reviews" in changed[0] and "2 finished run(s)" in changed[0]
    )
    assert "already finished" not in second

    records = ResultStore(out / "results.db").records()
    assert len(records) == 4 and len({r.run_id for r in records}) == 4
    assert len({r.data_fingerprint for r in records}) == 2
    # Each record still names the run that produced it.
    assert all(run_config_of(r).run_id == r.run_id for r in records)
    # The report keeps the two data versions in two rows, two seeds each, never one of four.
    from lorabench.reports import load_report_data
    from lorabench.reports.tables import build_results_table

    table = build_results_table(load_report_data(out / "results.db").runs)
    assert len(table.cells) == 2, table.cells
    assert any("[data " in str(label) for label in table.cells.index)
    assert "read different data" in table.caption

    # A GLUE folder with fewer rows is other data too.
    glue = tmp_path / "glue"
    shutil.copytree(FIXTURES / "glue", glue)
    cache = RunCache()
    full = cache.resolve(RunConfig("lora", "rte", model=str(tiny_model_dir), data_dir=str(glue)))
    rows = (glue / "RTE" / "train.tsv").read_text().splitlines()
    (glue / "RTE" / "train.tsv").write_text("\n".join(rows[:-1]) + "\n")
    fewer = RunCache().resolve(
        RunConfig("lora", "rte", model=str(tiny_model_dir), data_dir=str(glue))
    )
    assert fewer.data_fingerprint != full.data_fingerprint and fewer.run_id != full.run_id
    assert fewer.settings_id == full.settings_id


def test_same_data_in_another_folder_is_the_same_run(tmp_path, tiny_model_dir):
    other = tmp_path / "elsewhere"
    shutil.copytree(FIXTURES / "glue", other)
    here = RunCache().resolve(
        RunConfig("lora", "rte", model=str(tiny_model_dir), data_dir=str(FIXTURES / "glue"))
    )
    there = RunCache().resolve(
        RunConfig("lora", "rte", model=str(tiny_model_dir), data_dir=str(other))
    )
    assert here.run_id == there.run_id


def test_model_identity_is_its_name_and_files(tmp_path, tiny_model_dir):
    from lorabench.models import model_fingerprint, model_name

    copy = tmp_path / "copy" / tiny_model_dir.name
    shutil.copytree(tiny_model_dir, copy)
    assert model_name(str(copy)) == model_name(str(tiny_model_dir)) == tiny_model_dir.name
    assert model_fingerprint(str(copy)) == model_fingerprint(str(tiny_model_dir))
    config = copy / "config.json"
    config.write_text(config.read_text().replace('"hidden_act": "gelu"', '"hidden_act": "relu"'))
    assert model_fingerprint(str(copy)) != model_fingerprint(str(tiny_model_dir))


def test_a_rerun_knows_the_data_fingerprint_without_loading(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("LORABENCH_CACHE", str(tmp_path / "cache"))
    glue = tmp_path / "glue"
    shutil.copytree(FIXTURES / "glue", glue)
    cfg = RunConfig("lora", "rte", model=str(tiny_model_dir), data_dir=str(glue))
    first = RunCache().resolve(cfg)

    import lorabench.tasks

    def no_loading(*args, **kwargs):
        raise AssertionError("the data was loaded again")

    with monkeypatch.context() as patch:
        patch.setattr(lorabench.tasks, "load_task", no_loading)
        assert RunCache().resolve(cfg).run_id == first.run_id  # from the memo, nothing read

    # Changed files are read and hashed again: the memo keys on their size and time.
    dev = glue / "RTE" / "dev.tsv"
    dev.write_text(dev.read_text().replace("\tentailment", "\tnot_entailment", 1))
    assert RunCache().resolve(cfg).data_fingerprint != first.data_fingerprint


def test_a_generated_task_is_identified_before_it_is_generated(tmp_path, monkeypatch):
    monkeypatch.setenv("LORABENCH_CACHE", str(tmp_path / "cache"))
    import lorabench.tasks

    def no_loading(*args, **kwargs):
        raise AssertionError("the task was generated to resolve a run")

    monkeypatch.setattr(lorabench.tasks, "load_task", no_loading)
    cache = RunCache()
    seed0 = cache.resolve(RunConfig("lora", "planted-tiny", seed=0))
    seed1 = cache.resolve(RunConfig("lora", "planted-tiny", seed=1))
    # Each seed draws another task instance, but the seeds of one suite row read the same task
    # (generator, recipe, model): one fingerprint, so they stay one report row and one cell of a
    # comparison; the seed itself still tells the runs apart.
    assert seed0.data_fingerprint == seed1.data_fingerprint and seed0.run_id != seed1.run_id
    other = cache.resolve(RunConfig("lora", "planted-mixed", seed=0))
    assert other.data_fingerprint != seed0.data_fingerprint  # another recipe: other data
    assert RunCache().resolve(RunConfig("lora", "planted-tiny", seed=0)).run_id == seed0.run_id


def test_the_adapted_modules_are_recorded_and_reported(
    tiny_model_dir, toy_task, tmp_path, cli_main, capsys, single_thread
):
    argv = ["run", "--variants", "lora", "--tasks", toy_task, "--model", str(tiny_model_dir)]
    argv += ["--budget", "steps=2", "--out", str(tmp_path), "--quiet", "--no-adapters"]
    assert cli_main(argv) == 0
    (record,) = ResultStore(tmp_path / "results.db").records()
    assert record.config["resolved_variant_config"]["target_modules"] == "auto"
    assert record.config["adapted_modules"] == ["query", "value"]
    assert record.config["adapted_module_count"] == 4  # 2 layers x (query, value)
    assert run_config_of(record).run_id == record.run_id

    from lorabench.reports import generate_report

    report = generate_report(tmp_path / "results.db", tmp_path / "report")
    assert any("Adapted modules" in n and "query, value (4 matrices)" in n for n in report.notes)
