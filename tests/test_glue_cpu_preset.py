"""The ``glue-cpu`` preset: its structure, and that its learning rates are the ones its committed
search (``benchmarks/glue_cpu_search.yaml``) could have chosen, under the settings it searched.

The preset's full run (120 runs, ~1.5 h on two cores) is a benchmark, reported in
docs/results.md; here a dry run resolves every run on the GLUE fixtures and trains nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lorabench.cli.main import main as cli_main
from lorabench.harness.config import Budget
from lorabench.harness.suite import SuiteConfig, list_presets
from lorabench.variants import VARIANTS

PRESET = "glue-cpu"
REPO = Path(__file__).resolve().parents[1]
SEARCH = REPO / "benchmarks" / "glue_cpu_search.yaml"
GLUE_FIXTURES = Path(__file__).parent / "fixtures" / "glue"
TASKS = ["sst2", "mrpc", "stsb", "cola"]
ADAPTERS = ["lora", "dora", "adalora", "vera", "dylora", "sora", "increlora"]
REFERENCES = ["full", "bitfit", "head"]


@pytest.fixture(scope="module")
def suite() -> SuiteConfig:
    return SuiteConfig.preset(PRESET)


@pytest.fixture(scope="module")
def search() -> dict:
    return yaml.safe_load(SEARCH.read_text())


def seed0(suite: SuiteConfig, variant: str, task: str):
    (cfg,) = [
        c for c in suite.run_configs() if c.variant == variant and c.task == task and c.seed == 0
    ]
    return cfg


def test_every_built_in_adapter_and_reference_method_on_four_tasks_three_seeds(suite):
    assert PRESET in list_presets()
    assert suite.model is None  # the packaged all-MiniLM-L6-v2: no download
    assert suite.tasks == TASKS
    assert [e.variant for e in suite.variants] == ADAPTERS + REFERENCES
    # Every adapter variant built in, so a new one is not silently left out of the preset.
    built_in = {n for n in VARIANTS.list() if VARIANTS.get(n).__module__.startswith("lorabench.")}
    assert built_in == set(ADAPTERS + REFERENCES)
    assert suite.seeds == [0, 1, 2]
    configs = suite.run_configs()
    assert len(configs) == 10 * 4 * 3
    assert len({c.run_id for c in configs}) == 120


def test_each_methods_rate_is_a_point_of_its_search_grid(suite, search):
    """The preset's rates came from the committed grid: each is one of its method's points."""
    for variant in ADAPTERS + REFERENCES:
        space = search["space"][variant]
        field = "train.head_learning_rate" if variant == "head" else "train.learning_rate"
        choices = space[field]["choices"]
        cfg = seed0(suite, variant, "sst2")
        rate = cfg.train.head_learning_rate if variant == "head" else cfg.train.learning_rate
        assert rate in choices, (variant, rate, choices)
        if variant != "head":
            # The searched rate is used as given: no paper factor on top of it.
            assert all(seed0(suite, variant, t).train.learning_rate == rate for t in TASKS)
            assert cfg.train.head_learning_rate == search["train"]["head_learning_rate"]


def test_the_search_trained_sst2_as_the_preset_does(suite, search):
    """A grid point of the search is the preset's SST-2 run on another seed: same budget, same
    training settings (so the rate it chose is the rate for these runs)."""
    assert Budget.parse(search["trial_budget"]) == seed0(suite, "lora", "sst2").budget
    assert search["tasks"] == ["sst2"]
    assert search["seed"] not in suite.seeds  # chosen on a seed the preset does not report
    preset_train = seed0(suite, "lora", "sst2").train.to_dict()
    for key, value in search["train"].items():
        assert preset_train[key] == value, key
    for variant, config in search.get("variant_config", {}).items():
        for key, value in config.items():
            assert seed0(suite, variant, "sst2").variant_config[key] == value


def test_claims_can_be_decided_on_its_runs(suite):
    """VeRA trains at least 10x fewer parameters than LoRA r 8 (its claim's condition) and
    AdaLoRA's final budget is LoRA's rank (its claim pairs equal parameter budgets)."""
    assert seed0(suite, "lora", "sst2").variant_config.get("r", 8) == 8
    vera_r = seed0(suite, "vera", "sst2").variant_config["r"]
    hidden, matrices = 384, 12  # all-MiniLM-L6-v2: query and value of 6 layers
    assert (8 * 2 * hidden * matrices) / ((vera_r + hidden) * matrices) >= 10
    adalora = seed0(suite, "adalora", "sst2").variant_config
    assert adalora.get("target_r", 8) == 8


def test_a_dry_run_resolves_all_120_runs_on_the_glue_fixtures(tmp_path, capsys):
    argv = [
        "run", "--preset", PRESET, "--data-dir", str(GLUE_FIXTURES),
        "--out", str(tmp_path / "runs"), "--dry-run",
    ]  # fmt: skip
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert f"suite {PRESET}: 120 runs" in out
    assert len([line for line in out.splitlines() if "[to run]" in line]) == 120
