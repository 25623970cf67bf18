"""Bad inputs end in one clear message and an exit code, never a traceback or a hang.

Budgets are checked before any loop starts (a fraction of a step, inf/NaN, a budget below one
batch or implying absurdly many steps); unreadable suite files, an output folder that is a file,
a search storage that is not a database, unreadable custom-task CSVs; Ctrl-C in a search and
SIGTERM during ``lorabench run`` stop with one message, keeping what finished.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lorabench.harness.batches import BatchPlan, TokenizedSplit
from lorabench.harness.config import MAX_PLANNED_STEPS, BenchmarkConfigError, Budget
from lorabench.harness.meter import BudgetBelowOneBatch, plan_steps
from lorabench.results.store import ResultStore

REPO = Path(__file__).resolve().parents[1]


def run_argv(tmp_path: Path, model: Path, task: str, *extra: str) -> list[str]:
    """``lorabench run`` of one LoRA run on ``task`` with the tiny model, into ``tmp_path/out``."""
    return [
        "run",
        "--variants",
        "lora",
        "--variant-config",
        "lora.r=2",
        "--tasks",
        task,
        "--model",
        str(model),
        "--out",
        str(tmp_path / "out"),
        "--quiet",
        "--no-adapters",
        "--max-eval-examples",
        "16",
        *extra,
    ]


def stored_rows(db: Path) -> int:
    """Rows in a results database (0 when it does not exist or has no runs table)."""
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            return int(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def assert_clean(err: str, *needles: str) -> None:
    """One message naming every needle, and no Python traceback."""
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


# -- budgets ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("steps=2.5", "must be a whole number of optimiser steps; use steps=2 or steps=3"),
        ("steps=0.5", "use steps=1"),
        ("steps=inf", "steps=inf must be a finite number > 0, e.g. steps=500"),
        ("steps=nan", "steps=nan must be a finite number > 0"),
        ("tokens=-5", "tokens=-5 must be a finite number > 0, e.g. tokens=1e6"),
        ("flops=1e999", "flops=inf must be a finite number > 0"),
        ("seconds=0", "seconds=0 must be a finite number > 0"),
        ("steps=1e8", f"use at most steps={MAX_PLANNED_STEPS}"),
    ],
)
def test_budget_refuses_fractions_non_finite_and_absurd_limits(text, message):
    with pytest.raises(BenchmarkConfigError) as info:
        Budget.parse(text)
    assert message in str(info.value)
    with pytest.raises(BenchmarkConfigError):
        Budget.parse({text.split("=")[0]: True})  # a YAML boolean is not a number


def test_bad_budget_on_the_command_line_exits_2_before_anything(tmp_path, capsys, cli_main):
    argv = run_argv(tmp_path, tmp_path / "no-model-needed", "rte", "--budget", "steps=inf")
    assert cli_main(argv) == 2
    assert_clean(capsys.readouterr().err, "lorabench run:", "steps=inf", "e.g. steps=500")
    assert not (tmp_path / "out").exists()


def _plan(n: int = 300, batch_size: int = 16, seed: int = 0) -> BatchPlan:
    lengths = np.random.default_rng(7).integers(3, 60, size=n)
    split = TokenizedSplit([np.zeros(k) for k in lengths], None, np.zeros(n), lengths)
    return BatchPlan(split, batch_size, seed=seed)


def test_planning_matches_the_batch_plan_and_refuses_early():
    for seed in (0, 3):
        for limit in (2_000, 12_345, 777_777):
            expected = _plan(seed=seed).steps_within(limit)
            got = plan_steps(Budget("tokens", limit), _plan(seed=seed), flops_per_padded_token=0)
            assert got == expected
            expected = _plan(seed=seed).steps_within(limit * 10, "padded", per_padded_token=10.0)
            got = plan_steps(
                Budget("flops", limit * 10), _plan(seed=seed), flops_per_padded_token=10.0
            )
            assert got == expected
    plan = _plan()
    first = plan.tokens(0)
    with pytest.raises(BudgetBelowOneBatch, match=rf"use at least tokens={first}\b") as info:
        plan_steps(Budget("tokens", 5), plan, flops_per_padded_token=0)
    assert info.value.smallest == first and "tokens=5 is smaller than one training batch" in str(
        info.value
    )
    assert plan_steps(Budget("tokens", first), plan, flops_per_padded_token=0) == 1
    with pytest.raises(BudgetBelowOneBatch, match=r"flops=10 is smaller.*use at least flops="):
        plan_steps(Budget("flops", 10), plan, flops_per_padded_token=1e5)
    started = time.monotonic()
    for budget in (Budget.parse("tokens=1e20"), Budget.parse("flops=1e99")):
        with pytest.raises(BenchmarkConfigError, match=r"implies about .* use at most"):
            plan_steps(budget, plan, flops_per_padded_token=1e5)
    with pytest.raises(BenchmarkConfigError, match=r"seconds=1e\+20 implies about"):
        plan_steps(
            Budget.parse("seconds=1e20"), plan, flops_per_padded_token=0, seconds_per_step=0.01
        )
    # Refusing does not loop over the steps it refuses (generous bound on a shared CPU).
    assert time.monotonic() - started < 5
    # The largest tokens budget allowed is planned without a Python loop over its steps.
    started = time.monotonic()
    largest = MAX_PLANNED_STEPS * float(plan.split.lengths.sum()) / plan.steps_per_epoch
    assert plan_steps(Budget("tokens", int(largest * 0.99)), plan, flops_per_padded_token=0) > 9e6
    assert time.monotonic() - started < 5


def test_tokens_budget_below_one_batch_or_absurd_stops_the_suite_before_training(
    tmp_path, capsys, cli_main, tiny_model_dir, toy_task, single_thread
):
    db = tmp_path / "out" / "results.db"
    argv = run_argv(tmp_path, tiny_model_dir, toy_task, "--seeds", "3", "--budget", "tokens=5")
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert_clean(err, "tokens=5 is smaller than one training batch", "use at least tokens=")
    # The least valid value is the largest first batch over the suite's seeds: it passes.
    least = int(err.split("use at least tokens=")[1].split(",")[0])
    assert stored_rows(db) == 0
    started = time.monotonic()
    argv = run_argv(tmp_path, tiny_model_dir, toy_task, "--budget", "tokens=1e20")
    assert cli_main(argv) == 2
    assert_clean(capsys.readouterr().err, "tokens=1e+20 implies about", "use at most tokens=")
    assert time.monotonic() - started < 20 and stored_rows(db) == 0
    argv = run_argv(tmp_path, tiny_model_dir, toy_task, "--seeds", "3", "--budget")
    assert cli_main([*argv, f"tokens={least}"]) == 0
    records = ResultStore(db).records(status=None)
    assert len(records) == 3 and all(r.status == "finished" for r in records)


def test_flops_budget_below_one_batch_or_absurd_stops_the_suite_before_training(
    tmp_path, capsys, cli_main, tiny_model_dir, toy_task, single_thread
):
    """A flops budget is converted with the FLOPs a probe pass measures (nothing trains), so
    it is refused like a tokens budget: exit 2, nothing stored; the least value shown passes."""
    db = tmp_path / "out" / "results.db"
    argv = run_argv(tmp_path, tiny_model_dir, toy_task, "--budget", "flops=1e99")
    assert cli_main(argv) == 2
    assert_clean(capsys.readouterr().err, "flops=1e+99 implies about", "use at most flops=")
    assert stored_rows(db) == 0
    argv = run_argv(tmp_path, tiny_model_dir, toy_task, "--seeds", "2", "--budget", "flops=10")
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert_clean(err, "flops=10 is smaller than one training batch", "use at least flops=")
    assert stored_rows(db) == 0
    least = err.split("use at least flops=")[1].split(",")[0]
    argv = run_argv(tmp_path, tiny_model_dir, toy_task, "--seeds", "2", "--budget")
    assert cli_main([*argv, f"flops={least}"]) == 0
    records = ResultStore(db).records(status=None)
    assert len(records) == 2 and all(r.status == "finished" for r in records)


# -- files -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (bytes(range(256)) * 4, "is binary, not a YAML text file"),
        (b"name: caf\xe9\ntasks: [rte]\n", "is not UTF-8 text (byte 0xe9"),
        (b"tasks: [rte\nvariants: {", "not valid YAML"),
    ],
    ids=["binary", "latin-1", "broken-yaml"],
)
def test_unreadable_suite_file_is_one_line_naming_it(tmp_path, capsys, cli_main, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert cli_main(["run", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert_clean(err, str(path), message)
    assert len(err.strip().splitlines()) == 1
    if "UTF-8" in message:
        assert "save it as UTF-8" in err
    assert not (tmp_path / "out").exists()


def test_search_config_that_is_not_utf8_is_named(tmp_path, capsys, cli_main):
    path = tmp_path / "search.yaml"
    path.write_bytes(b"budget: steps=10\x00\xff")
    assert cli_main(["search", "--config", str(path)]) == 2
    assert_clean(capsys.readouterr().err, str(path), "binary")


def test_out_that_is_a_file_is_refused(tmp_path, capsys, cli_main):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me\n")
    argv = ["run", "--variants", "lora", "--tasks", "rte", "--budget", "steps=1"]
    assert cli_main([*argv, "--out", str(existing)]) == 2
    assert_clean(capsys.readouterr().err, str(existing), "is an existing file, not a folder")
    assert cli_main([*argv, "--out", str(existing / "sub")]) == 2
    assert_clean(capsys.readouterr().err, "is an existing file, not a folder")
    assert cli_main(["report", "--results", str(tmp_path / "r.db"), "--out", str(existing)]) == 2
    assert_clean(capsys.readouterr().err, str(existing), "not a folder")
    baseline = str(tmp_path / "baseline.json")
    assert cli_main(["regress", "--baseline", baseline, "--out", str(existing)]) == 2
    assert_clean(capsys.readouterr().err, str(existing), "not a folder")
    assert existing.read_text() == "keep me\n"


def _search_argv(tmp_path: Path, storage: str) -> list[str]:
    return [
        "search",
        "--variants",
        "lora",
        "--tasks",
        "rte",
        "--budget",
        "steps=10",
        "--trial-budget",
        "steps=5",
        "--storage",
        storage,
        "--results",
        str(tmp_path / "results.db"),
    ]


def test_search_storage_that_is_not_a_database_or_unknown(tmp_path, capsys, cli_main):
    text_file = tmp_path / "notes.db"
    text_file.write_text("these are notes, not a database\n")
    assert cli_main(_search_argv(tmp_path, str(text_file))) == 2
    err = capsys.readouterr().err
    assert_clean(err, str(text_file), "is not an SQLite database", "give a new file name")
    assert len(err.strip().splitlines()) == 1
    assert cli_main(_search_argv(tmp_path, "bogus://x")) == 2
    assert_clean(
        capsys.readouterr().err,
        "'bogus://x'",
        "sqlite:///",
        "postgresql://",
        "journal:PATH",
        "file path",
    )
    # Without --results, a URL storage is also the results database: still one message.
    argv = _search_argv(tmp_path, "bogus://x")[:-2]
    assert cli_main(argv) == 2
    assert_clean(capsys.readouterr().err, "'bogus://x'", "journal:PATH")
    assert not (tmp_path / "results.db").exists()
    assert text_file.read_text() == "these are notes, not a database\n"


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (b"", "is empty; it needs a header row"),
        (b"\n\n", "has no data"),
        (b"text,label\n", "has no examples"),
        (b"text,label\ncaf\xe9 good,1\nbad,0\n", "is not UTF-8 text (byte 0xe9 on line 2)"),
    ],
    ids=["empty", "blank-lines", "header-only", "latin-1"],
)
def test_bad_custom_task_csv_names_the_file(tmp_path, capsys, cli_main, train, message):
    (tmp_path / "train.csv").write_bytes(train)
    (tmp_path / "dev.csv").write_text("text,label\ngood,1\nbad,0\n")
    spec = tmp_path / "task.yaml"
    spec.write_text(
        "name: bad-csv\ntrain: train.csv\nvalidation: dev.csv\n"
        "text_columns: [text]\nlabel_column: label\n"
    )
    argv = ["run", "--variants", "lora", "--tasks", str(spec), "--out", str(tmp_path / "out")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert_clean(err, str(tmp_path / "train.csv"), message)
    if b"\xe9" in train:
        assert "save it as UTF-8" in err
    assert not (tmp_path / "out").exists()


# -- interruptions -------------------------------------------------------------------------
def test_ctrl_c_in_run_says_how_many_runs_finished(
    tmp_path, capsys, cli_main, tiny_model_dir, toy_task, single_thread, monkeypatch
):
    from lorabench.harness import runner

    real = runner.execute_run
    calls = []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "execute_run", interrupt_second)
    argv = run_argv(tmp_path, tiny_model_dir, toy_task, "--seeds", "3", "--budget", "steps=2")
    assert cli_main(argv) == 130
    err = capsys.readouterr().err
    assert_clean(err, "interrupted (Ctrl-C): finished runs are saved (1 of 3 runs", "re-run")
    assert stored_rows(tmp_path / "out" / "results.db") == 1


def test_ctrl_c_in_search_prints_one_message_not_optunas_traceback(
    tmp_path, capfd, cli_main, tiny_model_dir, toy_task, monkeypatch
):
    from lorabench.harness import runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "execute_run", interrupted)
    argv = [
        "search",
        "--variants",
        "lora",
        "--tasks",
        toy_task,
        "--model",
        str(tiny_model_dir),
        "--budget",
        "steps=20",
        "--trial-budget",
        "steps=4",
        "--pruner",
        "none",
        "--confirm-seeds",
        "0",
        "--storage",
        str(tmp_path / "search.db"),
        "--results",
        str(tmp_path / "results.db"),
        "--quiet",
    ]
    assert cli_main(argv) == 130
    err = capfd.readouterr().err
    assert_clean(err, "interrupted", "re-run the same command")
    assert "KeyboardInterrupt" not in err and len(err.strip().splitlines()) == 1
    assert stored_rows(tmp_path / "results.db") == 0
    # Optuna's logging is left as it was: the filter is only on while the study runs.
    import logging

    assert not logging.getLogger("optuna.study._optimize").filters


def sigterm_self(*args, **kwargs):
    """Stands in for a step of a command: this process receives SIGTERM, as from ``kill``."""
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler raises before this ends
    raise AssertionError("SIGTERM did not stop the command")


@pytest.fixture
def sigterm_default():
    """SIGTERM at its default, as in a fresh ``lorabench`` process (a test runner may set its own
    handler, which the command line then leaves alone)."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM is POSIX")
def test_sigterm_while_a_suite_starts_up_stops_with_a_message_and_stores_nothing(
    tmp_path, capsys, cli_main, tiny_model_dir, toy_task, monkeypatch, sigterm_default
):
    """SIGTERM while the suite is resolved (models and data loading, checks): exit 143, one
    message, no traceback, no results database."""
    from lorabench.harness.prepared import RunCache

    monkeypatch.setattr(RunCache, "resolve", sigterm_self)
    assert cli_main(run_argv(tmp_path, tiny_model_dir, toy_task)) == 143
    err = capsys.readouterr().err
    assert_clean(err, "interrupted (SIGTERM)", "re-run the same command")
    assert not (tmp_path / "out" / "results.db").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler was put back


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM is POSIX")
def test_sigterm_in_search_prints_one_message_not_optunas_traceback(
    tmp_path, capfd, cli_main, tiny_model_dir, toy_task, monkeypatch, sigterm_default
):
    from lorabench.harness import runner

    monkeypatch.setattr(runner, "execute_run", sigterm_self)
    argv = [
        "search", "--variants", "lora", "--tasks", toy_task, "--model", str(tiny_model_dir),
        "--budget", "steps=20", "--trial-budget", "steps=4", "--pruner", "none",
        "--confirm-seeds", "0", "--storage", str(tmp_path / "search.db"),
        "--results", str(tmp_path / "results.db"), "--quiet",
    ]  # fmt: skip
    assert cli_main(argv) == 143
    err = capfd.readouterr().err
    assert_clean(err, "interrupted (SIGTERM)", "re-run the same command")
    assert "KeyboardInterrupt" not in err and "Interrupted" not in err
    assert len(err.strip().splitlines()) == 1
    assert stored_rows(tmp_path / "results.db") == 0


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM is POSIX")
def test_sigterm_during_run_keeps_finished_runs_and_says_how_to_resume(tmp_path, tiny_model_dir):
    from conftest import toy_rows

    data = tmp_path / "data"
    data.mkdir()
    toy_rows(200, 1).to_csv(data / "train.csv", index=False)
    toy_rows(16, 2).to_csv(data / "dev.csv", index=False)
    spec = data / "toy.yaml"
    spec.write_text(
        "name: toy-csv\ntrain: train.csv\nvalidation: dev.csv\n"
        "text_columns: [sentence]\nlabel_column: label\n"
    )
    out = tmp_path / "out"
    db = out / "results.db"
    argv = run_argv(tmp_path, tiny_model_dir, str(spec), "--seeds", "6", "--budget", "steps=200")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "LORABENCH_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "lorabench.cli.main", *argv, "--threads", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and stored_rows(db) < 1:
            time.sleep(0.1)
        assert proc.poll() is None, f"the suite ended before SIGTERM: {proc.communicate()}"
        assert stored_rows(db) >= 1, "no run was stored within 120 s"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, stderr
    assert_clean(stderr, "interrupted (SIGTERM):", "re-run the same command to resume")
    records = ResultStore(db).records(status=None)
    assert 1 <= len(records) < 6 and all(r.status == "finished" for r in records)
    assert f"finished runs are saved ({len(records)} of 6 runs of this suite, in {db})" in stderr


def test_every_problem_of_a_suite_is_reported_together_before_anything_is_stored(
    tiny_model_dir, toy_task, tmp_path, cli_main, capsys
):
    """A rank larger than a layer and an AdaLoRA schedule longer than the budget: both named,
    exit 2, no results database created, nothing trained."""
    out = tmp_path / "runs"
    argv = [
        "run",
        "--variants",
        "lora,adalora",
        "--tasks",
        toy_task,
        "--model",
        str(tiny_model_dir),
    ]
    argv += ["--budget", "steps=20", "--out", str(out), "--quiet"]
    argv += ["--variant-config", "lora.r=1000", "--variant-config", "adalora.r=8"]
    argv += ["--variant-config", "adalora.tinit=15", "--variant-config", "adalora.tfinal=10"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "2 problems, nothing trained" in err and "Traceback" not in err
    assert "r=1000 is larger than layer" in err and "choose r <= 32" in err
    assert "tinit=15 + tfinal=10 must be < total steps 20" in err
    assert not (out / "results.db").exists()


def test_a_config_whose_training_step_cannot_fit_in_memory_is_refused_before_anything_trains(
    tiny_model_dir, toy_task, tmp_path, cli_main, capsys, monkeypatch, single_thread
):
    """VeRA at r=100000 attaches (no layer limits its rank) but its rank-wide activations alone
    exceed the limit: exit 2 with the estimate and the limit; nothing created. The same suite
    at a sensible rank passes under the same limit."""
    monkeypatch.setenv("LORABENCH_MEMORY_LIMIT", "64MiB")
    out = tmp_path / "runs"
    argv = ["run", "--variants", "vera", "--tasks", toy_task, "--model", str(tiny_model_dir)]
    argv += ["--budget", "steps=2", "--out", str(out), "--quiet", "--no-adapters"]
    assert cli_main([*argv, "--variant-config", "vera.r=100000"]) == 2
    err = capsys.readouterr().err
    assert_clean(err, "a training step needs at least", "activations at least", "than 64.0 MiB")
    assert "(LORABENCH_MEMORY_LIMIT=64MiB); lower r (now 100000), train.batch_size" in err
    assert not (out / "results.db").exists()
    assert cli_main([*argv, "--variant-config", "vera.r=16"]) == 0
    monkeypatch.setenv("LORABENCH_MEMORY_LIMIT", "lots")
    assert cli_main([*argv, "--variant-config", "vera.r=16", "--seeds", "1"]) == 2
    assert_clean(capsys.readouterr().err, "LORABENCH_MEMORY_LIMIT='lots' is not a size")


def test_memory_estimate_counts_weights_optimiser_state_and_rank_wide_activations():
    from lorabench.harness.memory import estimate_training_memory, format_bytes, parse_size
    from lorabench.testing import build_model
    from lorabench.variants import attach

    model = build_model("bert")
    adapter = attach(model, "lora", r=4)
    est = estimate_training_memory(model, adapter, batch_tokens=100, train_head=False)
    tensors = [*model.parameters(), *model.buffers()]
    assert est.weights == sum(t.numel() * t.element_size() for t in tensors)
    size = next(model.parameters()).element_size()  # the contract's tiny models are float64
    assert est.training_state == 3 * size * adapter.num_trainable_parameters()
    layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    assert est.activations == size * 100 * (len(adapter.layers) * 4 + layers * 8 * hidden)
    assert parse_size("512MiB") == 512 * 2**20 and parse_size("2e9") == 2 * 10**9
    assert parse_size("1.5 GiB") == int(1.5 * 2**30) and format_bytes(1536) == "1.5 KiB"


@pytest.mark.parametrize("unit", ["tokens", "flops"])
def test_a_search_trial_budget_below_one_batch_stops_before_any_trial(
    tiny_model_dir, toy_task, tmp_path, cli_main, capsys, unit
):
    argv = ["search", "--variants", "lora", "--tasks", toy_task, "--model", str(tiny_model_dir)]
    argv += ["--budget", f"{unit}=1e12", "--trial-budget", f"{unit}=5", "--pruner", "none"]
    argv += ["--results", str(tmp_path / "results.db"), "--quiet"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert f"--trial-budget: budget {unit}=5 is smaller than one training batch" in err
    assert f"use at least {unit}=" in err and "Traceback" not in err
    assert stored_rows(tmp_path / "results.db") == 0


@pytest.mark.parametrize("case", ["offline", "no-such-repo", "unreachable"])
def test_an_unknown_hub_model_stops_the_suite_at_once_with_the_fix(
    case, tmp_path, capsys, cli_main, toy_task, monkeypatch
):
    """A model that is neither a folder nor in the Hugging Face cache: refused before anything
    loads (no minute of network retries), naming the model and what to give instead."""
    from unittest import mock

    import huggingface_hub
    from huggingface_hub.utils import RepositoryNotFoundError

    def no_such_repo(*args, **kwargs):
        # The Hub's 404 (its constructor wants the HTTP response; any stand-in does).
        raise RepositoryNotFoundError("404 Repository Not Found", response=mock.MagicMock())

    def unreachable(*args, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    if case == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        fake = no_such_repo if case == "no-such-repo" else unreachable
        monkeypatch.setattr(huggingface_hub, "model_info", fake)
    out = tmp_path / "out"
    argv = ["run", "--variants", "lora", "--tasks", toy_task, "--model", "org/no-such-model"]
    assert cli_main([*argv, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    expected = {
        "offline": "HF_HUB_OFFLINE is set",
        "no-such-repo": "the Hugging Face Hub has no model of that name",
        "unreachable": "the Hub cannot be reached ([Errno -2] Name or service not known)",
    }[case]
    assert_clean(err, "model 'org/no-such-model'", expected, "give a model folder")
    assert not out.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"{not json", "config.json' is not valid JSON"), (None, "has no config.json")],
    ids=["broken-config", "no-config"],
)
def test_a_model_folder_without_a_readable_config_is_refused_naming_the_file(
    content, message, tmp_path, capsys, cli_main, toy_task
):
    folder = tmp_path / "model"
    folder.mkdir()
    if content is not None:
        (folder / "config.json").write_bytes(content)
    out = tmp_path / "out"
    argv = ["run", "--variants", "lora", "--tasks", toy_task, "--model", str(folder)]
    assert cli_main([*argv, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert_clean(err, str(folder), message)
    assert "save_pretrained" in err and not out.exists()
