"""The command line's conventions: ``--version``, one comma form for every list option of every
subcommand, a report filter that matches nothing is an error, and Optuna studies name their
objectives."""

from __future__ import annotations

import argparse
import importlib.util
import re
import warnings
from importlib.metadata import version

import optuna
import pytest

from lorabench.cli import list_cmd, report_cmd, run_cmd, search_cmd
from lorabench.cli import main as cli
from lorabench.cli.common import CommaList, comma_list
from lorabench.harness.config import Budget, TrainConfig
from lorabench.results.records import CurvePoint, RunRecord
from lorabench.results.store import ResultStore
from lorabench.search.study import SearchConfig, name_objectives, prepare_search


@pytest.fixture(autouse=True)
def present_commands(monkeypatch):
    """Only the subcommands whose module exists (others may be written in parallel)."""
    present = {
        name: mod for name, mod in cli.COMMANDS.items() if importlib.util.find_spec(mod) is not None
    }
    monkeypatch.setattr(cli, "COMMANDS", present)


# ------------------------------------------------------------------------------------------------
# --version


def test_version_flag_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"lorabench {version('lorabench')}"


# ------------------------------------------------------------------------------------------------
# list options: one form everywhere


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_list_option_of_every_subcommand_takes_the_comma_form():
    """An option taking several values is a CommaList (run's --seeds aside: one number there is a
    count, so it keeps its text, and takes the same forms); a new ``nargs="+"`` option fails here
    until it takes the comma form too."""
    lists: dict[str, set[str]] = {}
    for name, parser in subparsers().items():
        for action in parser._actions:
            if isinstance(action, CommaList):
                lists.setdefault(name, set()).add(action.dest)
            elif action.nargs in ("+", "*") and (name, action.dest) != ("run", "seeds"):
                pytest.fail(f"lorabench {name} {action.option_strings}: not a CommaList")
    assert {"variants", "tasks"} <= lists["run"]
    assert {"variants", "tasks"} <= lists["search"]
    assert {"variants", "tasks", "seeds"} <= lists["report"]
    assert lists["list"] == {"pattern"}


@pytest.mark.parametrize("command", ["run", "search", "report"])
def test_the_three_forms_give_the_same_list(command):
    parser = subparsers()[command]
    # Values of plain names or integers (an option validating its values differently is left
    # to its own tests).
    flags = [a for a in parser._actions if isinstance(a, CommaList) and a.item in (str, int)]
    assert {"variants", "tasks"} <= {a.dest for a in flags}
    for action in flags:
        flag = action.option_strings[0]
        a, b = ("0", "1") if action.item is int else ("aa", "bb")
        expected = [action.item(a), action.item(b)]
        base = ["--out", "x"] if command == "report" else []
        for argv in ([flag, f"{a},{b}"], [flag, a, b], [flag, a, flag, b], [flag, f"{a},{b},{a}"]):
            assert getattr(parser.parse_args([*base, *argv]), action.dest) == expected, argv


def test_run_list_options_build_the_suite():
    parser = argparse.ArgumentParser()
    run_cmd.add_arguments(parser)
    for argv in (
        ["--variants", "lora,dora", "--tasks", "rte,mrpc", "--seeds", "0,5"],
        ["--variants", "lora", "dora", "--tasks", "rte", "mrpc", "--seeds", "0", "5"],
        [
            *("--variants", "lora", "--variants", "dora"),
            *("--tasks", "rte", "--tasks", "mrpc"),
            *("--seeds", "0", "--seeds", "5"),
        ],
    ):
        suite = run_cmd.build_suite(parser.parse_args(argv))
        assert [e.variant for e in suite.variants] == ["lora", "dora"], argv
        assert suite.tasks == ["rte", "mrpc"] and suite.seeds == [0, 5], argv
    # One number is still a count, and "7," still only seed 7.
    for seeds, expected in (("3", [0, 1, 2]), ("7,", [7])):
        args = parser.parse_args(["--preset", "quick", "--seeds", seeds])
        assert run_cmd.build_suite(args).seeds == expected


def test_search_list_options_reach_the_settings():
    parser = argparse.ArgumentParser()
    search_cmd.add_arguments(parser)
    for variants in (["lora,dora"], ["lora", "dora"]):
        argv = ["--variants", *variants, "--tasks", "rte,mrpc", "--budget", "steps=100"]
        settings = search_cmd._settings(parser.parse_args(argv))
        assert settings["variants"] == ["lora", "dora"] and settings["tasks"] == ["rte", "mrpc"]


def test_a_bad_list_value_is_a_usage_error_naming_it(capsys):
    parser = argparse.ArgumentParser(prog="lorabench report")
    report_cmd.add_arguments(parser)
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--out", "x", "--seeds", "0,one"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--seeds" in err and "'one'" in err and "0,1,2" in err
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "x", "--variants", ","])
    assert "names no value" in capsys.readouterr().err
    assert comma_list(" lora, dora ,") == ["lora", "dora"]


def test_list_takes_comma_separated_patterns(capsys):
    parser = subparsers()["list"]
    args = parser.parse_args(["variants", "lora,*dora*"])
    assert args.pattern == ["lora", "*dora*"]
    assert list_cmd.run(args) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["dora", "lora"]  # the registry's order, each once
    assert parser.parse_args(["variants"]).pattern == ["*"]
    assert list_cmd.run(parser.parse_args(["variants", "zzz,yyy*"])) == 1
    assert "no variants match 'zzz,yyy*'" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# report: comma lists end to end, and filters that match nothing


def record(variant: str, task: str, seed: int, score: float) -> RunRecord:
    return RunRecord(
        run_id=f"{variant}-{task}-{seed}",
        status="finished",
        variant=variant,
        task=task,
        model="tiny-bert",
        seed=seed,
        config={"variant_config": {"r": 8}, "train": {"learning_rate": 5e-4}},
        metrics={"accuracy": score},
        primary_metric="accuracy",
        score=score,
        rank=8,
        budget={"kind": "steps", "limit": 10},
        spent={"steps": 10, "train_seconds": 1.0},
        trainable_params=100,
        adapter_params=90,
        total_params=10_000,
        curve=[CurvePoint(step=10, loss=0.5, metrics={"accuracy": score})],
        ranks={"layer.0.query": 8},
        started_at="2026-01-01T00:00:00+00:00",
        finished_at="2026-01-01T00:01:00+00:00",
    )


@pytest.fixture
def results_db(tmp_path):
    path = tmp_path / "results.db"
    with ResultStore(path) as store:
        for variant, score in (("lora", 0.6), ("dora", 0.7), ("vera", 0.5)):
            for seed in (0, 1):
                store.add(record(variant, "rte", seed, score + seed / 100))
    return path


def report(results_db, out, *flags: str) -> int:
    return cli.main(["report", "--results", str(results_db), "--out", str(out), *flags])


def test_report_takes_comma_lists_end_to_end(results_db, tmp_path, capsys):
    assert report(results_db, tmp_path / "r", "--variants", "lora,dora", "--seeds", "0,1") == 0
    table = (tmp_path / "r" / "results.md").read_text()
    assert "LoRA r=8" in table and "DoRA r=8" in table and "VeRA" not in table
    assert "4 finished run(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--variants", "nosuch"], "--variants nosuch matches no run.*it has dora, lora, vera"),
        (["--tasks", "cola,sst2"], "--tasks cola,sst2 matches no run.*it has rte"),
        (["--seeds", "7"], "--seeds 7 matches no run.*it has 0, 1"),
        (["--tag", "ci"], "--tag ci matches no run.*it has ''"),
        (
            ["--variants", "lora", "--tasks", "rte", "--tag", "ci,x"],
            "--tag ci,x matches no run",
        ),
    ],
)
def test_a_filter_matching_nothing_stops_with_exit_2(results_db, tmp_path, capsys, flags, expected):
    out = tmp_path / "r"
    assert report(results_db, out, *flags) == 2
    assert re.search(expected, capsys.readouterr().err)
    assert not out.exists()  # nothing written


def test_filters_matching_nothing_together_stop_too(tmp_path, capsys):
    path = tmp_path / "results.db"
    with ResultStore(path) as store:
        store.add(record("lora", "rte", 0, 0.6))
        store.add(record("dora", "mrpc", 0, 0.6))
    assert report(path, tmp_path / "r", "--variants", "lora", "--tasks", "mrpc") == 2
    err = capsys.readouterr().err
    assert "no run in" in err and "together" in err
    assert "--variants: dora, lora" in err and "--tasks: mrpc, rte" in err
    # A filter matching in part is fine: the report notes what is missing.
    assert report(path, tmp_path / "ok", "--variants", "lora,vera") == 0


# ------------------------------------------------------------------------------------------------
# Optuna studies name their objectives


def test_name_objectives_sets_names_once():
    study = optuna.create_study(directions=["maximize", "minimize"])  # in-memory storage
    assert study.metric_names is None
    name_objectives(study, ["accuracy", "trainable_params"])
    assert study.metric_names == ["accuracy", "trainable_params"]
    name_objectives(study, ["f1", "x"])  # already named: kept
    assert study.metric_names == ["accuracy", "trainable_params"]


def search_config(tmp_path, **overrides) -> SearchConfig:
    values = dict(
        variant="lora",
        task="rte",
        budget=Budget("steps", 1000),
        trial_budget=Budget("steps", 100),
        train=TrainConfig(eval_every=25),
        storage=str(tmp_path / "search.db"),
        study="t",
        heartbeat_interval=None,
    )
    values.update(overrides)
    return SearchConfig(**values)


def test_prepared_studies_are_named_by_the_task_metric(tmp_path):
    prepared = prepare_search(search_config(tmp_path), probe=False)
    assert prepared.study.metric_names == ["accuracy"]  # what optuna-dashboard shows
    multi = prepare_search(
        search_config(tmp_path, study="m", multi_objective=True, pruner="none"), probe=False
    )
    assert multi.study.metric_names == ["accuracy", "trainable_params"]


def test_a_study_made_before_names_resumes_and_gets_them(tmp_path):
    cfg = search_config(tmp_path)
    prepare_search(cfg, probe=False)
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    study = optuna.load_study(study_name=cfg.study_name, storage=storage)
    # What an older lorabench left: the same study, its objective unnamed.
    study._storage.set_study_system_attr(study._study_id, "study:metric_names", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert optuna.load_study(study_name=cfg.study_name, storage=storage).metric_names is None
    resumed = prepare_search(search_config(tmp_path), probe=False)  # settings unchanged: joins
    assert resumed.study.metric_names == ["accuracy"]
    assert resumed.study.study_name == cfg.study_name
