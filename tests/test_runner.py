"""Suites: resume without duplicates, failed runs do not stop a suite, Ctrl-C keeps what
finished."""

from __future__ import annotations

import functools
import io
from typing import Any, ClassVar

import pytest
import torch
from conftest import toy_suite

import lorabench.harness.runner as runner
from lorabench.harness.runner import format_summary, run_suite, summary_table
from lorabench.harness.suite import VariantEntry
from lorabench.results.store import ResultStore
from lorabench.variants import VARIANTS
from lorabench.variants.adapter import HEAD_FILE, WEIGHTS_FILE
from lorabench.variants.lora import LoRA

pytestmark = pytest.mark.usefixtures("single_thread")


class Saboteur(LoRA):
    """LoRA that misbehaves in the run whose rank ``plan["r"]`` names: an infinite loss or
    Ctrl-C."""

    name = "saboteur"
    plan: ClassVar[
        dict[str, Any]
    ] = {}  # {"mode": "nan" | "interrupt", "r": rank of the run to hit}

    def before_step(self, step: int) -> None:
        if (
            step == 1
            and self.plan.get("mode") == "interrupt"
            and self.config.r == self.plan.get("r")
        ):
            raise KeyboardInterrupt

    def regularization_loss(self):
        if self.plan.get("mode") == "nan" and self.config.r == self.plan.get("r"):
            return torch.tensor(float("inf"))
        return None


@pytest.fixture
def saboteur():
    VARIANTS.add(Saboteur, name="saboteur", overwrite=True)
    yield Saboteur
    Saboteur.plan = {}
    VARIANTS.unregister("saboteur")


make_suite = functools.partial(toy_suite, steps=4)


def test_resume_skips_finished_runs_and_never_duplicates(
    tiny_model_dir, toy_task, tmp_path, monkeypatch
):
    suite = make_suite(
        tiny_model_dir,
        toy_task,
        tmp_path,
        [VariantEntry("lora", {"r": 2}), VariantEntry("dylora", {"r": 2})],
    )
    store = ResultStore(tmp_path / "results.db")
    out = io.StringIO()
    records = run_suite(suite, store, progress=False, stream=out)
    assert [r.status for r in records] == ["finished"] * 4
    assert len(store.records(status=None)) == 4
    assert (tmp_path / "adapters" / records[0].run_id / WEIGHTS_FILE).is_file()
    text = out.getvalue()
    assert "lora(r=2)" in text and "dylora(r=2)" in text and "±" in text
    # The head goes with the adapter, trained or not: the pair is what the run computed.
    assert (tmp_path / "adapters" / records[0].run_id / HEAD_FILE).is_file()

    calls = []
    monkeypatch.setattr(
        runner,
        "execute_run",
        lambda cfg, **kw: calls.append(cfg) or pytest.fail("re-ran a finished run"),
    )
    again = run_suite(
        suite, ResultStore(tmp_path / "results.db"), progress=False, stream=io.StringIO()
    )
    assert calls == []
    assert [r.run_id for r in again] == [r.run_id for r in records]
    assert len(ResultStore(tmp_path / "results.db").records(status=None)) == 4


def test_failed_run_is_stored_and_suite_goes_on(tiny_model_dir, toy_task, tmp_path, saboteur):
    saboteur.plan = {"mode": "nan", "r": 3}
    suite = make_suite(
        tiny_model_dir,
        toy_task,
        tmp_path,
        [VariantEntry("saboteur", {"r": 3}), VariantEntry("lora", {"r": 2})],
        seeds=[0],
    )
    store = ResultStore(tmp_path / "results.db")
    out = io.StringIO()
    records = run_suite(suite, store, progress=False, stream=out)
    assert [r.status for r in records] == ["failed", "finished"]
    assert "NonFiniteLoss" in store.get(records[0].run_id).error
    assert store.finished_ids() == {records[1].run_id}
    assert "failed" in out.getvalue()
    # The failed run is retried on resume (it is not finished); the finished one is not.
    saboteur.plan = {}
    again = run_suite(suite, store, progress=False, stream=io.StringIO())
    assert [r.status for r in again] == ["finished", "finished"]
    assert len(store.records(status=None)) == 2


def test_ctrl_c_keeps_finished_records(tiny_model_dir, toy_task, tmp_path, saboteur):
    saboteur.plan = {"mode": "interrupt", "r": 3}
    suite = make_suite(
        tiny_model_dir,
        toy_task,
        tmp_path,
        [VariantEntry("lora", {"r": 2}), VariantEntry("saboteur", {"r": 3})],
        seeds=[0],
    )
    store = ResultStore(tmp_path / "results.db")
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, store, progress=False, stream=io.StringIO())
    stored = store.records(status=None)
    assert [(r.variant, r.status) for r in stored] == [("lora", "finished")]


def test_cli_ctrl_c_exits_cleanly_with_130(
    tiny_model_dir, toy_task, tmp_path, saboteur, capsys, cli_main
):
    saboteur.plan = {"mode": "interrupt", "r": 3}
    code = cli_main(
        [
            "run",
            "--variants",
            "lora,saboteur",
            "--variant-config",
            "saboteur.r=3",
            "--tasks",
            toy_task,
            "--model",
            str(tiny_model_dir),
            "--budget",
            "steps=3",
            "--out",
            str(tmp_path),
            "--quiet",
            "--max-eval-examples",
            "16",
        ]
    )
    assert code == 130
    assert "finished runs are saved" in capsys.readouterr().err
    assert [r.variant for r in ResultStore(tmp_path / "results.db").records()] == ["lora"]


def test_summary_table_mean_and_std_over_seeds():
    from lorabench.results.records import RunRecord

    def rec(seed, score, status="finished"):
        return RunRecord(
            run_id=f"id{seed}{status}",
            status=status,
            variant="lora",
            task="rte",
            model="m",
            seed=seed,
            config={"variant_config": {}},
            score=score,
            primary_metric="accuracy",
            trainable_params=100,
            spent={"train_seconds": 2.0},
        )

    table = summary_table([rec(0, 0.5), rec(1, 0.7), rec(2, None, "failed")])
    row = table.iloc[0]
    assert row.seeds == 2 and row.failed == 1
    assert row.score_mean == pytest.approx(0.6) and row.score_std == pytest.approx(0.1414, abs=1e-3)
    text = format_summary([rec(0, 0.5), rec(1, 0.7)])
    assert "0.6000 ± 0.1414" in text and "lora" in text


def test_failed_run_line_shows_the_whole_message_not_the_traceback(
    tiny_model_dir, toy_task, tmp_path, saboteur
):
    class TwoLineError(RuntimeError):
        pass

    def explode(self, step):
        raise TwoLineError("first line\n    the fix: pip install something")

    saboteur.before_step = explode
    try:
        suite = make_suite(
            tiny_model_dir, toy_task, tmp_path, [VariantEntry("saboteur", {"r": 3})], seeds=[0]
        )
        out = io.StringIO()
        run_suite(suite, ResultStore(tmp_path / "results.db"), progress=False, stream=out)
    finally:
        del saboteur.before_step
    printed = out.getvalue()
    assert "failed: TwoLineError: first line\n    the fix: pip install something" in printed
    assert "Traceback" not in printed


def test_error_message_strips_the_traceback_even_when_cut():
    from lorabench.harness.trainer import TRACEBACK_TAIL, error_text

    # Two functions calling each other: Python does not fold alternating frames, so the
    # traceback is far longer than the tail an error record keeps.
    def ping(n):
        if n == 0:
            raise ValueError("bad value 7\nuse 8")
        pong(n - 1)

    def pong(n):
        ping(n)

    try:
        ping(100)
    except ValueError as exc:
        text = error_text(exc)
    assert len(text) < TRACEBACK_TAIL + 200 and "earlier frames cut" in text
    assert runner.error_message(text) == "ValueError: bad value 7\nuse 8"
    assert runner.error_message(None) == ""
