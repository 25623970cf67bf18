"""Training logs while a suite runs (``--log csv|tensorboard|none``) and its output outside a
terminal: one plain line per run, no progress bars, no escape sequences."""

from __future__ import annotations

import csv
import io
import math
import re
import sys
from pathlib import Path
from typing import ClassVar

import pytest

from lorabench.harness.config import Budget, TrainConfig
from lorabench.harness.logs import (
    CsvLog,
    LogColumns,
    LogRow,
    LogSettingError,
    LogSettings,
    parse_log,
    progress_bars,
)
from lorabench.harness.runner import execute_run, run_suite
from lorabench.harness.suite import SuiteConfig, SuiteConfigError, VariantEntry
from lorabench.results.store import ResultStore
from lorabench.variants import VARIANTS
from lorabench.variants.lora import LoRA

pytestmark = pytest.mark.usefixtures("single_thread")

# Variants whose ranks change while training, with a schedule that prunes within 6 steps
# (tests may name variants; the code under test never does).
ADAPTIVE = {"adalora": {"init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 2, "deltaT": 1}}
STEPS, EVAL_EVERY = 6, 3
FIXED_COLUMNS = ["step", "seconds", "loss", "reg_loss", "learning_rate"]
RUN_LINE = re.compile(
    r"^\[(\d+)/(\d+)\] \S+ \S+ seed \d+: (accuracy [0-9.]+|failed) \([0-9.]+ s\)$"
)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], row)) for row in rows[1:]]


def run_argv(model_dir: Path, task: str, out: Path, variant: str, *more: str) -> list[str]:
    overrides = ADAPTIVE.get(variant, {"r": 2})
    argv = ["run", "--variants", variant, "--tasks", task, "--model", str(model_dir)]
    for key, value in overrides.items():
        argv += ["--variant-config", f"{variant}.{key}={value}"]
    return [
        *argv,
        *("--budget", f"steps={STEPS}", "--eval-every", str(EVAL_EVERY)),
        *("--max-eval-examples", "16", "--out", str(out), *more),
    ]


@pytest.mark.parametrize("variant", ["lora", *ADAPTIVE])
def test_csv_log_has_a_row_per_step_metrics_where_evaluated_and_live_ranks(
    variant, tiny_model_dir, toy_task, tmp_path, capsys, cli_main
):
    seeds = 2 if variant == "lora" else 1
    argv = run_argv(tiny_model_dir, toy_task, tmp_path, variant, "--seeds", str(seeds))
    assert cli_main(argv) == 0
    captured = capsys.readouterr()

    # Not a terminal (captured): no bars, no escape sequences, one plain line per run.
    for stream in (captured.out, captured.err):
        assert "\x1b" not in stream and "\r" not in stream
    run_lines = [line for line in captured.out.splitlines() if line.startswith("[")]
    assert len(run_lines) == seeds, captured.out
    assert all(RUN_LINE.match(line) for line in run_lines), run_lines
    assert [RUN_LINE.match(line).group(1) for line in run_lines] == [
        str(i) for i in range(1, seeds + 1)
    ]
    assert "training logs: " in captured.out and "<run_id>.csv" in captured.out

    records = ResultStore(tmp_path / "results.db").records(status=None)
    assert len(records) == seeds and all(r.status == "finished" for r in records)
    for record in records:
        header, rows = read_csv(tmp_path / "logs" / f"{record.run_id}.csv")
        assert header[: len(FIXED_COLUMNS)] == FIXED_COLUMNS
        assert "eval/accuracy" in header and {"rank/mean", "rank/total"} <= set(header)
        assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
        assert all(math.isfinite(float(r["loss"])) for r in rows)
        assert all(float(r["learning_rate"]) > 0 for r in rows)
        # The metrics of every evaluation, in the row of its step, as the record has them.
        evaluated = {int(r["step"]): float(r["eval/accuracy"]) for r in rows if r["eval/accuracy"]}
        curve = {p.step: p.metrics["accuracy"] for p in record.curve if p.metrics}
        assert evaluated == pytest.approx(curve) and sorted(evaluated) == [EVAL_EVERY, STEPS]
        assert float(rows[-1]["eval/accuracy"]) == pytest.approx(record.score)
        assert int(rows[-1]["rank/total"]) == sum(record.ranks.values())
        per_module = [c for c in header if c.startswith("rank/") and c.count("/") == 1]
        per_module = [c for c in per_module if c not in ("rank/mean", "rank/total")]
        if variant in ADAPTIVE:
            # Its ranks change while it trains: the log shows them, per module too, and the
            # regulariser (AdaLoRA's orthogonality loss) apart from the task loss.
            assert sorted(per_module) == sorted(f"rank/{m}" for m in record.ranks)
            assert int(rows[0]["rank/total"]) == ADAPTIVE[variant]["init_r"] * len(record.ranks)
            assert int(rows[-1]["rank/total"]) < int(rows[0]["rank/total"])
            assert all(int(rows[-1][f"rank/{m}"]) == r for m, r in record.ranks.items())
            assert any(float(r["reg_loss"]) > 0 for r in rows)
        else:
            assert per_module == []  # a fixed rank would only repeat itself
            assert {float(r["rank/mean"]) for r in rows} == {2.0}
            assert {float(r["reg_loss"]) for r in rows} == {0.0}


def test_the_log_setting_is_not_part_of_a_run_identity(
    tiny_model_dir, toy_task, tmp_path, capsys, cli_main
):
    argv = run_argv(tiny_model_dir, toy_task, tmp_path, "lora")
    assert cli_main([*argv, "--log", "none"]) == 0
    assert not (tmp_path / "logs").exists() and not (tmp_path / "tensorboard").exists()
    capsys.readouterr()
    # The same run with logs on is the same run: found finished, not trained again.
    assert cli_main([*argv, "--log", "csv"]) == 0
    assert "1 already finished, skipped" in capsys.readouterr().out
    assert not (tmp_path / "logs").exists()

    def run_ids(log: str | None) -> list[str]:
        suite = SuiteConfig(
            variants=[VariantEntry("lora")], tasks=[toy_task], model=str(tiny_model_dir), log=log
        )
        return [cfg.run_id for cfg in suite.run_configs()]

    assert run_ids(None) == run_ids(("csv", "tensorboard")) == run_ids(())


@pytest.mark.parametrize(
    ("value", "kinds"),
    [
        (None, ("csv",)),
        ("csv", ("csv",)),
        ("none", ()),
        ("tensorboard,csv", ("csv", "tensorboard")),
        (["tensorboard", "csv", "csv"], ("csv", "tensorboard")),
        ("csv,", ("csv",)),
    ],
)
def test_log_settings_parse(value, kinds):
    assert parse_log(value) == kinds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("csvv", "Did you mean 'csv'?"),
        ("none,csv", "'none' cannot go with another kind"),
        (",", "names no log kind"),
        (3, "must be a string or a list"),
    ],
)
def test_a_bad_log_setting_is_refused_naming_it(value, message, tmp_path):
    with pytest.raises(LogSettingError, match=re.escape(message)):
        parse_log(value)
    with pytest.raises(SuiteConfigError, match=re.escape(message)):
        SuiteConfig.from_dict({"variants": ["lora"], "tasks": ["rte"], "log": value})


def test_a_bad_log_flag_exits_2_before_anything(tmp_path, capsys, cli_main):
    out = tmp_path / "out"
    base = ["run", "--variants", "lora", "--tasks", "rte", "--out", str(out)]
    assert cli_main([*base, "--log", "tensorbord"]) == 2
    assert "Did you mean 'tensorboard'?" in capsys.readouterr().err
    assert not out.exists()


def test_tensorboard_missing_fails_before_any_work_with_the_pip_command(
    tiny_model_dir, toy_task, tmp_path, capsys, cli_main, monkeypatch
):
    # None in sys.modules makes the import fail, as on a machine without tensorboard.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    argv = run_argv(tiny_model_dir, toy_task, tmp_path, "lora", "--log", "csv,tensorboard")
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "pip install tensorboard" in err
    assert not (tmp_path / "results.db").exists() and not (tmp_path / "logs").exists()


def tiny_suite(model_dir: Path, task: str, out: Path, **settings) -> SuiteConfig:
    suite = SuiteConfig(
        variants=[VariantEntry("lora", {"r": 2})],
        tasks=[task],
        budget=Budget.parse("steps=3"),
        train=TrainConfig(batch_size=16, max_eval_examples=16),
        model=str(model_dir),
        out=str(out),
        **settings,
    )
    suite.validate()
    return suite


def test_tensorboard_log_writes_the_scalars_and_a_retrained_run_replaces_them(
    tiny_model_dir, toy_task, tmp_path
):
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"tensorboard is not installed ({exc}); pip install tensorboard")
    suite = tiny_suite(tiny_model_dir, toy_task, tmp_path, log=("csv", "tensorboard"))
    (record,) = run_suite(suite, ResultStore(tmp_path / "results.db"), progress=False)
    folder = tmp_path / "tensorboard" / record.run_id
    events = list(folder.glob("events.out.tfevents.*"))
    assert len(events) == 1
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/reg_loss", "train/learning_rate", "eval/accuracy"} <= tags
    assert {"rank/mean", "rank/total"} <= tags
    assert [e.step for e in accumulator.Scalars("train/loss")] == [1, 2, 3]
    assert [e.step for e in accumulator.Scalars("eval/accuracy")] == [3]
    assert (tmp_path / "logs" / f"{record.run_id}.csv").is_file()  # both logs at once

    # The same run trained again (as a failed run is on resume) replaces its events.
    cfg = suite.run_configs()[0]
    execute_run(cfg, progress=False, log=LogSettings(("tensorboard",), tmp_path))
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1


class Interrupting(LoRA):
    """LoRA whose training is stopped (Ctrl-C) at step ``STOP_AT``."""

    name = "interrupting-lora"
    STOP_AT: ClassVar[int] = 3

    def before_step(self, step: int) -> None:
        if step == self.STOP_AT:
            raise KeyboardInterrupt


def test_an_interrupted_run_keeps_its_rows_and_a_rerun_replaces_them(
    tiny_model_dir, toy_task, tmp_path
):
    VARIANTS.add(Interrupting, name="interrupting-lora", overwrite=True)
    try:
        suite = tiny_suite(tiny_model_dir, toy_task, tmp_path)
        suite.variants = [VariantEntry("interrupting-lora", {"r": 2})]
        suite.budget = Budget.parse("steps=5")
        with pytest.raises(KeyboardInterrupt):
            run_suite(suite, ResultStore(tmp_path / "results.db"), progress=False)
        (path,) = (tmp_path / "logs").glob("*.csv")
        _, rows = read_csv(path)
        assert [int(r["step"]) for r in rows] == [1, 2, 3]
        assert not any(r["eval/accuracy"] for r in rows)

        Interrupting.STOP_AT = -1  # never: the resumed run trains to the end
        run_suite(suite, ResultStore(tmp_path / "results.db"), progress=False)
        _, rows = read_csv(path)
        assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]  # its own rows only
    finally:
        Interrupting.STOP_AT = 3
        VARIANTS.unregister("interrupting-lora")


def test_csv_rows_are_on_disk_as_soon_as_written(tmp_path):
    path = tmp_path / "logs" / "run.csv"
    log = CsvLog(path)
    log.start(LogColumns(metric_names=("accuracy",), rank_modules=("layer.0.query",)))
    log.log(
        LogRow(
            step=1,
            seconds=0.5,
            loss=0.7,
            reg_loss=0.0,
            learning_rate=1e-3,
            ranks={"layer.0.query": 4},
        )
    )
    header, rows = read_csv(path)  # before close: flushed
    assert header == [
        *FIXED_COLUMNS,
        "eval/accuracy",
        "rank/mean",
        "rank/total",
        "rank/layer.0.query",
    ]
    assert rows == [
        {
            "step": "1",
            "seconds": "0.5",
            "loss": "0.7",
            "reg_loss": "0",
            "learning_rate": "0.001",
            "eval/accuracy": "",
            "rank/mean": "4",
            "rank/total": "4",
            "rank/layer.0.query": "4",
        }
    ]
    log.log(LogRow(step=1, metrics={"accuracy": 0.75}))
    assert read_csv(path)[1][-1]["eval/accuracy"] == "0.75"
    log.close()
    log.start(LogColumns())  # started again: the file starts over
    assert read_csv(path)[1] == []
    log.close()


class FakeStream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_bars_only_on_a_terminal(tiny_model_dir, toy_task, tmp_path, monkeypatch):
    assert progress_bars(FakeStream(True)) and not progress_bars(FakeStream(False))
    closed = io.StringIO()
    closed.close()  # isatty raises ValueError
    assert not progress_bars(closed)
    assert not progress_bars(object())  # no isatty at all
    # On a terminal the suite draws its bars (on stderr) and prints no plain run lines.
    terminal = FakeStream(True)
    monkeypatch.setattr(sys, "stderr", terminal)
    out = io.StringIO()
    suite = tiny_suite(tiny_model_dir, toy_task, tmp_path, log=())
    run_suite(suite, ResultStore(tmp_path / "results.db"), progress=True, stream=out)
    assert "runs" in terminal.getvalue() and "\r" in terminal.getvalue()
    assert not [line for line in out.getvalue().splitlines() if RUN_LINE.match(line)]


def test_regress_takes_the_log_flag_over_the_baseline_suite(tmp_path, capsys, cli_main):
    import argparse

    from lorabench.cli import regress_cmd

    baseline = ["regress", "--baseline", str(tmp_path / "baseline.json")]
    assert cli_main([*baseline, "--out", str(tmp_path / "out"), "--log", "csvv"]) == 2
    assert "--log: log 'csvv' is not a log kind. Did you mean 'csv'?" in capsys.readouterr().err

    suite = SuiteConfig.from_dict({"variants": ["lora"], "tasks": ["rte"], "log": "tensorboard"})
    args = argparse.Namespace(out=str(tmp_path), data_dir=None, log=None)
    assert regress_cmd._prepare_suite(suite, args).log_kinds == ("tensorboard",)
    args.log = ["none"]
    assert regress_cmd._prepare_suite(suite, args).log_kinds == ()
    # A suite written with a log setting reads back with it; one without keeps its layout.
    assert SuiteConfig.from_dict(suite.to_dict()).log == ("tensorboard",)
    plain = SuiteConfig.from_dict({"variants": ["lora"], "tasks": ["rte"]})
    assert "log" not in plain.to_dict() and plain.log_kinds == ("csv",)


def test_dylora_logs_the_rank_drawn_for_each_step(tiny_model_dir, toy_task, tmp_path, cli_main):
    argv = run_argv(tiny_model_dir, toy_task, tmp_path, "dylora", "--variant-config", "dylora.r=4")
    assert cli_main(argv) == 0
    (record,) = ResultStore(tmp_path / "results.db").records(status=None)
    _, rows = read_csv(tmp_path / "logs" / f"{record.run_id}.csv")
    drawn = [float(r["rank/mean"]) for r in rows]
    # The live rank is the one each step trained at (1..4), not the evaluation rank r_max.
    assert all(1 <= b <= 4 for b in drawn) and len(set(drawn)) > 1
