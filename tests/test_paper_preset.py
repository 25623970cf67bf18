"""The ``paper-roberta-base`` preset, per-task suite settings and the published-results section.

The preset needs roberta-base from the Hub and a GPU; here its structure is checked (each task's
resolved run has the LoRA paper's learning rate, batch, epochs as steps, r 8, alpha 16, max
length 512) and a dry run builds its runs on a tiny random RoBERTa over the GLUE fixtures. Task
entries of a suite (``{mrpc: {train: ..., budget: ...}}``) resolve suite < task < recipe < entry,
and a plain suite keeps its layout and run ids. The report's ``paper | this run | difference``
section is checked on synthetic records (nothing trains).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from lorabench.cli.main import main as cli_main
from lorabench.harness.config import Budget, RunConfig
from lorabench.harness.suite import SuiteConfig, SuiteConfigError, list_presets
from lorabench.reports import generate_report
from lorabench.reports.frame import load_report_data
from lorabench.reports.published import (
    COLUMNS,
    TITLE,
    compare_published,
    model_matches,
    to_markdown,
)
from lorabench.results.records import RunRecord
from lorabench.results.store import ResultStore
from lorabench.testing.models import save_tiny_model
from lorabench.variants import VARIANTS
from lorabench.variants.published import (
    BUILT_IN_PUBLISHED,
    PublishedResult,
    published_results,
    register_published_result,
    unregister_published_result,
)

PRESET = "paper-roberta-base"
GLUE_FIXTURES = Path(__file__).parent / "fixtures" / "glue"
# The LoRA paper's roberta_base_*.sh (anchors.md "Published recipes"): task -> (learning rate,
# epochs, batch, GLUE train examples). Written out here, independently of the preset's YAML.
PAPER_RECIPE = {
    "mnli": (5e-4, 30, 16, 392_702),
    "sst2": (5e-4, 60, 16, 67_349),
    "mrpc": (4e-4, 30, 16, 3_668),
    "cola": (4e-4, 80, 32, 8_551),
    "qnli": (4e-4, 25, 32, 104_743),
    "qqp": (5e-4, 25, 16, 363_846),
    "rte": (5e-4, 80, 32, 2_490),
    "stsb": (4e-4, 40, 16, 5_749),
}


def runs_of(suite: SuiteConfig, variant: str) -> dict[str, RunConfig]:
    """Seed 0's run of ``variant`` per task."""
    return {c.task: c for c in suite.run_configs() if c.variant == variant and c.seed == 0}


# -- the preset ---------------------------------------------------------------------------------
def test_the_preset_loads_and_validates():
    assert PRESET in list_presets()
    suite = SuiteConfig.preset(PRESET)
    assert suite.model == "roberta-base"
    assert suite.seeds == [0, 1, 2, 3, 4]  # the LoRA paper's median of 5
    assert sorted(suite.tasks) == sorted(PAPER_RECIPE)
    assert [e.variant for e in suite.variants] == ["lora", "vera"]
    assert len(suite.run_configs()) == 2 * len(PAPER_RECIPE) * 5
    assert len({c.run_id for c in suite.run_configs()}) == 80


@pytest.mark.parametrize("task", sorted(PAPER_RECIPE))
def test_each_task_runs_the_papers_lora_recipe(task):
    lr, epochs, batch, examples = PAPER_RECIPE[task]
    cfg = runs_of(SuiteConfig.preset(PRESET), "lora")[task]
    per_epoch = math.ceil(examples / batch)
    assert cfg.train.learning_rate == pytest.approx(lr)
    assert cfg.train.batch_size == batch
    assert cfg.budget == Budget("steps", epochs * per_epoch)
    assert cfg.train.eval_every == per_epoch  # the scripts evaluate every epoch
    assert cfg.train.max_length == 512
    assert cfg.train.warmup_ratio == pytest.approx(0.06)
    assert cfg.train.weight_decay == pytest.approx(0.1)
    assert cfg.variant_config["r"] == 8
    assert cfg.variant_config["alpha"] == 16
    assert cfg.variant_config["target_modules"] == ["query", "value"]


def test_veras_rate_is_its_paper_recipe_over_each_tasks_rate():
    """VeRA's recipe is relative to LoRA's rate, so it scales each task's own rate."""
    suite = SuiteConfig.preset(PRESET)
    recipe = VARIANTS.get("vera").recipe
    assert recipe.learning_rate_scale != 1.0  # otherwise this test proves nothing
    vera, lora = runs_of(suite, "vera"), runs_of(suite, "lora")
    for task, (lr, _, batch, _) in PAPER_RECIPE.items():
        assert vera[task].train.learning_rate == pytest.approx(recipe.scaled_learning_rate(lr))
        assert vera[task].train.batch_size == batch
        assert vera[task].budget == lora[task].budget  # one budget per task for every variant
        assert vera[task].variant_config["r"] == 1024  # VeRA's 0.043M on RoBERTa-base


def test_a_dry_run_builds_every_run_on_a_tiny_random_roberta(tmp_path, capsys, monkeypatch):
    """``--model`` replaces roberta-base (never loaded here); the GLUE fixtures stand in for
    the data; a dry run resolves every run against the model and trains nothing."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model = save_tiny_model("roberta", tmp_path / "tiny-roberta", ["good", "bad", "the"])
    argv = [
        "run", "--preset", PRESET, "--model", str(model), "--data-dir", str(GLUE_FIXTURES),
        "--out", str(tmp_path / "runs"), "--dry-run",
    ]  # fmt: skip
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert f"suite {PRESET}: 80 runs" in out
    lines = [line for line in out.splitlines() if "[to run]" in line]
    assert len(lines) == 80
    for task in PAPER_RECIPE:
        assert sum(f"  {task}  " in line for line in lines) == 10  # 2 variants x 5 seeds
    assert not (tmp_path / "runs" / "adapters").exists()  # nothing trained
    # The same runs, through the Python API: the model replaced, the rest of the recipe kept.
    data = SuiteConfig.preset(PRESET).to_dict()
    suite = SuiteConfig.from_dict({**data, "model": str(model)})
    cfg = runs_of(suite, "lora")["rte"]
    assert cfg.model == str(model)
    assert (cfg.train.learning_rate, cfg.train.batch_size, cfg.budget.limit) == (5e-4, 32, 6240)


# -- per-task settings --------------------------------------------------------------------------
SUITE = """
    tasks:
      - mrpc
      - rte: {train: {learning_rate: 2e-3, batch_size: 4}, budget: steps=7}
    variants:
      - lora
      - lora: {r: 16, train: {learning_rate: 3e-3}}
      - vera
    budget: steps=20
    train: {learning_rate: 1e-3, batch_size: 8, max_length: 32}
"""


def load(text: str, **extra) -> SuiteConfig:
    import yaml

    return SuiteConfig.from_dict({**yaml.safe_load(textwrap.dedent(text)), **extra})


def test_train_settings_resolve_suite_then_task_then_recipe_then_entry():
    suite = load(SUITE)
    lora, lora16, vera = suite.variants
    scale = VARIANTS.get("vera").recipe.learning_rate_scale
    got = {
        (e.label, task): suite.run_config(e, task) for e in suite.variants for task in suite.tasks
    }
    # The suite's settings for a plain task; the task's over them for rte.
    assert got[lora.label, "mrpc"].train.learning_rate == pytest.approx(1e-3)
    assert got[lora.label, "mrpc"].train.batch_size == 8
    assert got[lora.label, "mrpc"].budget == Budget("steps", 20)
    assert got[lora.label, "rte"].train.learning_rate == pytest.approx(2e-3)
    assert got[lora.label, "rte"].train.batch_size == 4
    assert got[lora.label, "rte"].train.max_length == 32  # the suite's, not overridden
    assert got[lora.label, "rte"].budget == Budget("steps", 7)
    # The variant's recipe scales the task's rate (relative to LoRA's rate on that task).
    assert got[vera.label, "mrpc"].train.learning_rate == pytest.approx(1e-3 * scale)
    assert got[vera.label, "rte"].train.learning_rate == pytest.approx(2e-3 * scale)
    # An entry's own rate wins over the task's, unscaled; the task's other settings stay.
    assert got[lora16.label, "rte"].train.learning_rate == pytest.approx(3e-3)
    assert got[lora16.label, "rte"].train.batch_size == 4
    # Without recipes the task's rate is used as given by every variant.
    plain = load(SUITE, recipes="none")
    assert plain.run_config(plain.variants[2], "rte").train.learning_rate == pytest.approx(2e-3)


def test_task_settings_round_trip_through_the_yaml_layout():
    suite = load(SUITE)
    data = suite.to_dict()
    assert data["tasks"] == [
        "mrpc",
        {"rte": {"train": {"learning_rate": 2e-3, "batch_size": 4}, "budget": "steps=7"}},
    ]
    again = SuiteConfig.from_dict(data)
    assert [c.run_id for c in again.run_configs()] == [c.run_id for c in suite.run_configs()]


@pytest.mark.parametrize("preset", ["quick", "ci"])
def test_a_plain_suite_keeps_its_layout_and_run_ids(preset):
    """A plain task list resolves exactly as before task settings existed: the ids equal those
    of the pre-feature resolution (the suite's budget, the entry's settings over the suite's),
    and a task written as a mapping with nothing in it is the same task."""
    suite = SuiteConfig.preset(preset)
    assert suite.task_settings == {}
    assert all(isinstance(t, str) for t in suite.to_dict()["tasks"])
    before = [
        RunConfig(
            variant=e.variant,
            task=task,
            seed=seed,
            variant_config=e.variant_config(suite.recipe_of(e)),
            model=suite.model,
            budget=suite.budget,
            train=e.train_config(suite.train, suite.recipe_of(e)),
            data_dir=suite.data_dir,
            tag=suite.tag,
        ).run_id
        for e in suite.variants
        for task in suite.tasks
        for seed in suite.seeds
    ]
    assert [c.run_id for c in suite.run_configs()] == before
    data = suite.to_dict()
    assert [c.run_id for c in SuiteConfig.from_dict(data).run_configs()] == before
    as_mappings = {**data, "tasks": [{t: None} for t in data["tasks"]]}
    empty = SuiteConfig.from_dict(as_mappings)
    assert [c.run_id for c in empty.run_configs()] == before
    assert empty.to_dict()["tasks"] == data["tasks"]


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([{"rte": {"epochs": 3}}], "unknown key 'epochs'; a task sets only train, budget"),
        ([{"rte": {"train": {"learning_rat": 1e-3}}}], "Did you mean 'learning_rate'"),
        ([{"rte": {"train": {"batch_size": 0}}}], "tasks[0] (rte): train.batch_size=0"),
        ([{"rte": {"budget": "steps=0"}}], "tasks[0] (rte)"),
        (["rte", {"rte": {"budget": "steps=5"}}], "'rte' is listed twice"),
        ([{"rte": 3}], "must map a task name to its settings"),
        ([{"rte": {}, "mrpc": {}}], "must be a name (rte) or one name with its settings"),
    ],
)
def test_bad_task_settings_are_named(tasks, message):
    with pytest.raises(SuiteConfigError) as info:
        SuiteConfig.from_dict({"variants": ["lora"], "tasks": tasks})
    assert message in str(info.value)


def test_task_settings_key_is_not_a_yaml_key():
    with pytest.raises(SuiteConfigError, match="unknown key 'task_settings'"):
        SuiteConfig.from_dict({"variants": ["lora"], "tasks": ["rte"], "task_settings": {}})


# -- the published-results section --------------------------------------------------------------
def record(
    variant: str,
    rank: int | None,
    seed: int,
    score: float,
    *,
    task: str = "rte",
    metric: str = "accuracy",
    model: str = "FacebookAI/roberta-base",
) -> RunRecord:
    return RunRecord(
        run_id=f"{variant}-{rank}-{task}-{model}-{seed}",
        status="finished",
        variant=variant,
        task=task,
        model=model,
        seed=seed,
        config={"variant_config": {"r": rank} if rank else {}},
        metrics={metric: score},
        primary_metric=metric,
        score=score,
        higher_is_better=True,
        rank=rank,
        budget={"kind": "steps", "limit": 40},
        spent={"steps": 40, "train_seconds": 1.0},
        trainable_params=1000,
        adapter_params=900,
        total_params=10**6,
        started_at=f"2026-01-01T00:00:{seed:02d}",
        finished_at=f"2026-01-01T00:01:{seed:02d}",
    )


def store_of(tmp_path: Path, records: list[RunRecord]) -> Path:
    path = tmp_path / "r.db"
    store = ResultStore(path)
    for r in records:
        store.add(r)
    store.close()
    return path


RTE_SCORES = [0.80, 0.82, 0.84, 0.86, 0.88]  # median 0.84: 84.0 against the paper's 86.6
COLA_SCORES = [0.60, 0.62, 0.64, 0.66, 0.68]  # Matthews; median 64.0 against 63.4


def matching_and_not() -> list[RunRecord]:
    return [
        *(record("lora", 8, s, v) for s, v in enumerate(RTE_SCORES)),
        *(
            record("lora", 8, s, v, task="cola", metric="matthews")
            for s, v in enumerate(COLA_SCORES)
        ),
        # Not comparable: another model, another rank, a task the paper has no number for.
        *(record("lora", 8, s, 0.9, model="xlm-roberta-base") for s in range(2)),
        *(record("lora", 16, s, 0.9) for s in range(2)),
        *(record("lora", 8, s, 0.9, task="wnli") for s in range(2)),
    ]  # fmt: skip


def test_compare_published_matches_model_task_metric_and_rank(tmp_path):
    data = load_report_data(store_of(tmp_path, matching_and_not()))
    table = compare_published(data)
    assert list(table.columns) == COLUMNS
    assert sorted(table["task"]) == ["cola", "rte"]
    rte = table[table["task"] == "rte"].iloc[0]
    assert (rte["paper"], rte["this_run"], rte["seeds"]) == (86.6, pytest.approx(84.0), 5)
    assert rte["difference"] == pytest.approx(84.0 - 86.6)
    cola = table[table["task"] == "cola"].iloc[0]
    assert (cola["metric"], cola["paper"]) == ("matthews", 63.4)
    assert cola["difference"] == pytest.approx(64.0 - 63.4)
    assert "Hu et al. 2022" in rte["citation"]


def test_the_report_shows_paper_this_run_difference(tmp_path):
    report = generate_report(store_of(tmp_path, matching_and_not()), tmp_path / "out")
    md = report.tables["published_md"].read_text(encoding="utf-8")
    assert TITLE in md
    assert "| task | metric | row | paper | this run | difference | seeds | paper source |" in md
    assert "| rte | accuracy |" in md and "| 86.6 | 84.0 | -2.6 | 5 |" in md
    assert "| 63.4 | 64.0 | +0.6 | 5 |" in md
    # `lorabench report` prints stats.md: the section is there too; and in the HTML page.
    assert TITLE in report.tables["stats_md"].read_text(encoding="utf-8")
    page = report.html.read_text(encoding="utf-8")
    assert "<h2 id='published'>" in page and "<td>86.6</td><td>84.0</td><td>-2.6</td>" in page
    assert report.published is not None and len(report.published) == 2


def test_no_section_without_a_published_match(tmp_path):
    records = [record("lora", 8, s, v, model="all-MiniLM-L6-v2") for s, v in enumerate(RTE_SCORES)]
    report = generate_report(store_of(tmp_path, records), tmp_path / "out")
    assert "published_md" not in report.tables
    assert TITLE not in report.tables["stats_md"].read_text(encoding="utf-8")
    assert "id='published'" not in report.html.read_text(encoding="utf-8")
    assert to_markdown(report.published) == ""


@pytest.mark.parametrize(
    ("model", "matches"),
    [
        ("roberta-base", True),
        ("FacebookAI/roberta-base", True),
        ("/models/RoBERTa-base/", True),
        ("xlm-roberta-base", False),
        ("roberta-large", False),
        ("roberta-base-squad", False),
    ],
)
def test_model_matches_by_the_last_part_of_the_name(model, matches):
    assert model_matches(model, "roberta-base") is matches


def test_the_reference_data_has_the_papers_numbers_with_citations():
    by_key = {(r.variant, r.task): r for r in published_results()}
    assert by_key["lora", "stsb"].value == 91.5 and by_key["lora", "stsb"].metric == "pearson"
    assert by_key["lora", "cola"].metric == "matthews" and by_key["lora", "cola"].rank == 8
    assert by_key["full", "rte"].value == 78.7 and by_key["full", "rte"].rank is None
    assert by_key["vera", "sst2"].value == 94.6 and by_key["vera", "sst2"].rank == 1024
    assert ("vera", "mnli") not in by_key  # VeRA published no MNLI/QQP number
    assert len(BUILT_IN_PUBLISHED) == 8 + 8 + 6
    assert all(r.citation and r.model == "roberta-base" for r in BUILT_IN_PUBLISHED)


def test_a_plugin_number_is_compared_and_duplicates_are_refused(tmp_path):
    mine = PublishedResult(
        "lora", "roberta-base", "wnli", "accuracy", 56.3, "A plugin's paper", rank=8
    )
    register_published_result(mine)
    try:
        with pytest.raises(ValueError, match="registered already"):
            register_published_result(mine)
        table = compare_published(load_report_data(store_of(tmp_path, matching_and_not())))
        assert "wnli" in set(table["task"])
    finally:
        unregister_published_result(mine)
    with pytest.raises(ValueError, match="value=nan must be a finite number"):
        PublishedResult("lora", "roberta-base", "rte", "accuracy", float("nan"), "x")


# -- command-line flags over per-task settings ----------------------------------------------------
def _cli_runs(argv: list[str]) -> dict[str, RunConfig]:
    from lorabench.cli.main import build_parser
    from lorabench.cli.run_cmd import build_suite

    suite = build_suite(build_parser().parse_args(["run", "--preset", PRESET, *argv]))
    return {task: suite.run_config(suite.variants[0], task, 0) for task in suite.tasks}


def test_tasks_flag_keeps_the_presets_per_task_settings():
    runs = _cli_runs(["--tasks", "rte"])
    assert list(runs) == ["rte"]
    cfg = runs["rte"]
    assert (cfg.train.learning_rate, cfg.train.batch_size, cfg.budget.limit) == (5e-4, 32, 6240)


def test_budget_and_train_flags_win_over_each_tasks_own_settings():
    runs = _cli_runs(["--budget", "steps=100", "--batch-size", "8", "--lr", "1e-5"])
    assert len(runs) == 8
    for cfg in runs.values():
        assert (cfg.budget.limit, cfg.train.batch_size, cfg.train.learning_rate) == (100, 8, 1e-5)
    # What no flag names stays per task.
    assert runs["rte"].train.eval_every != runs["sst2"].train.eval_every
