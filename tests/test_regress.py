"""``lorabench regress``: the rule on synthetic records, the baseline file and its provenance, the
command's exit codes and CI outputs, the dirty-tree refusal, resuming, and a deliberately broken
variant caught end to end on a tiny model."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from conftest import NEUTRAL, POSITIVE

from lorabench.cli import regress_cmd
from lorabench.cli.main import main
from lorabench.harness.config import Budget, TrainConfig
from lorabench.harness.suite import SuiteConfig, VariantEntry
from lorabench.regress import (
    DEFAULT_NOISE_K,
    DEFAULT_TOLERANCE,
    Baseline,
    BaselineError,
    build_baseline,
    collect_provenance,
    compare,
    git_worktree,
)
from lorabench.results.records import RunRecord
from lorabench.variants import VARIANTS
from lorabench.variants.lora import LoRA, LoRALayer

# -- synthetic records -----------------------------------------------------------------------------


def make_suite(variants=("lora", "dora"), seeds=(0, 1, 2), task: str = "rte") -> SuiteConfig:
    return SuiteConfig(
        variants=[VariantEntry(v) if isinstance(v, str) else v for v in variants],
        tasks=[task],
        seeds=list(seeds),
        budget=Budget.parse("steps=10"),
        train=TrainConfig(),
        name="synthetic",
    )


def record(
    suite: SuiteConfig,
    variant: str,
    seed: int,
    score: float | None,
    *,
    status: str = "finished",
    metric: str = "accuracy",
    higher_is_better: bool = True,
    error: str | None = None,
) -> RunRecord:
    entry = next(e for e in suite.variants if e.variant == variant)
    cfg = suite.run_config(entry, suite.tasks[0], seed)  # as the suite runs it: recipe applied
    return RunRecord(
        run_id=cfg.run_id,
        status=status,
        variant=variant,
        task=cfg.task,
        model="m",
        seed=seed,  # type: ignore[arg-type]
        config={**cfg.to_dict(), "device": "cpu"},
        score=score,
        primary_metric=metric,
        higher_is_better=higher_is_better,
        error=error,
        spent={"train_seconds": 1.5},
    )


def records(
    suite: SuiteConfig, scores: dict[str, list[float]], seeds: list[int] | None = None, **kw: Any
) -> list[RunRecord]:
    seeds = suite.seeds if seeds is None else seeds
    return [
        record(suite, v, s, x, **kw)
        for v, xs in scores.items()
        for s, x in zip(seeds, xs, strict=False)
    ]


def baseline_of(suite: SuiteConfig, scores: dict[str, list[float]], **kw: Any) -> Baseline:
    return build_baseline(suite, records(suite, scores, **kw))


def verdicts(report) -> dict[str, str]:
    return {c.variant: c.status for c in report.comparisons}


# -- the rule --------------------------------------------------------------------------------------


def test_within_noise_passes_and_a_real_drop_fails():
    suite = make_suite()
    base = baseline_of(suite, {"lora": [0.80, 0.82, 0.78], "dora": [0.80, 0.82, 0.78]})
    report = compare(
        base, records(suite, {"lora": [0.79, 0.825, 0.785], "dora": [0.70, 0.72, 0.69]})
    )
    assert verdicts(report) == {"lora": "pass", "dora": "regressed"}
    dora = next(c for c in report.comparisons if c.variant == "dora")
    assert dora.paired and dora.seeds == [0, 1, 2]
    assert dora.drop == pytest.approx((0.10 + 0.10 + 0.09) / 3)
    assert "fell by" in dora.detail
    assert report.exit_code == 1 and not report.passed


def test_drop_smaller_than_the_tolerance_passes_even_when_every_seed_agrees():
    suite = make_suite(variants=("lora",))
    base = baseline_of(suite, {"lora": [0.80, 0.82, 0.78]})
    report = compare(base, records(suite, {"lora": [0.79, 0.81, 0.77]}))  # -0.01 on every seed
    (c,) = report.comparisons
    assert c.noise == pytest.approx(0.0, abs=1e-12) and c.drop == pytest.approx(0.01)
    assert c.status == "pass" and report.exit_code == 0
    # The same drop with a smaller tolerance (flag) is a regression.
    assert (
        compare(base, records(suite, {"lora": [0.79, 0.81, 0.77]}), tolerance=0.005).exit_code == 1
    )


def test_drop_beyond_tolerance_but_inside_the_paired_noise_passes():
    suite = make_suite(variants=("lora",), seeds=(0, 1))
    base = baseline_of(suite, {"lora": [0.80, 0.80]})
    (c,) = compare(
        base, records(suite, {"lora": [0.68, 0.82]})
    ).comparisons  # per-seed drops 0.12, -0.02
    assert c.drop == pytest.approx(0.05)
    assert c.noise == pytest.approx(0.07)  # std(0.12, -0.02) / sqrt(2)
    assert c.threshold == pytest.approx(DEFAULT_NOISE_K * 0.07)
    assert c.status == "pass"


def test_paired_comparison_removes_seed_variance_that_an_unpaired_one_cannot():
    # Seeds differ a lot (for planted tasks a seed is another task); every seed drops by 0.05.
    suite = make_suite(variants=("lora",))
    base = baseline_of(suite, {"lora": [0.60, 0.80, 0.90]})
    paired = compare(base, records(suite, {"lora": [0.55, 0.75, 0.85]}))
    assert paired.comparisons[0].paired and paired.comparisons[0].status == "regressed"
    # The same scores on other seeds: only the seed std can judge them, and it is large.
    unpaired = compare(base, records(suite, {"lora": [0.55, 0.75, 0.85]}, seeds=[5, 6, 7]))
    (c,) = unpaired.comparisons
    assert not c.paired and c.status == "pass" and "unpaired" in c.detail
    s = 0.152752523  # sample std of both sides
    assert c.noise == pytest.approx((s**2 / 3 + s**2 / 3) ** 0.5, rel=1e-6)
    # A drop bigger than that noise fails unpaired as well.
    assert compare(base, records(suite, {"lora": [0.2, 0.3, 0.4]}, seeds=[5, 6, 7])).exit_code == 1


def test_one_seed_each_side_means_the_tolerance_alone_decides():
    suite = make_suite(variants=("lora",), seeds=(0,))
    base = baseline_of(suite, {"lora": [0.80]})
    (c,) = compare(base, records(suite, {"lora": [0.77]})).comparisons
    assert not c.paired and c.noise == 0.0 and c.status == "regressed"
    assert "tolerance alone decides" in c.detail


def test_failed_and_missing_runs_count_as_regressions():
    suite = make_suite()
    base = baseline_of(suite, {"lora": [0.8, 0.8, 0.8], "dora": [0.8, 0.8, 0.8]})
    current = records(suite, {"lora": [0.8, 0.8]}, seeds=[0, 1])
    current.append(
        record(
            suite, "lora", 2, None, status="failed", error="NonFiniteLoss: loss is nan\ntraceback"
        )
    )
    report = compare(base, current)  # dora: no run at all
    assert verdicts(report) == {"lora": "failed", "dora": "missing"}
    lora = report.comparisons[0]
    assert (
        "seed 2 failed: NonFiniteLoss: loss is nan" in lora.detail
        and "traceback" not in lora.detail
    )
    assert len(report.failures) == 2 and report.exit_code == 1


def test_improvement_is_reported_and_does_not_fail():
    suite = make_suite(variants=("lora",))
    base = baseline_of(suite, {"lora": [0.70, 0.72, 0.71]})
    report = compare(base, records(suite, {"lora": [0.80, 0.83, 0.80]}))
    assert verdicts(report) == {"lora": "improved"} and report.exit_code == 0
    assert "improved" in report.format_table()


def test_lower_is_better_metrics_are_oriented():
    suite = make_suite(variants=("lora",))
    base = baseline_of(suite, {"lora": [0.30, 0.32, 0.31]}, metric="loss", higher_is_better=False)
    worse = compare(
        base, records(suite, {"lora": [0.40, 0.42, 0.41]}, metric="loss", higher_is_better=False)
    )
    assert verdicts(worse) == {"lora": "regressed"} and "rose by" in worse.comparisons[0].detail
    better = compare(
        base, records(suite, {"lora": [0.20, 0.22, 0.21]}, metric="loss", higher_is_better=False)
    )
    assert verdicts(better) == {"lora": "improved"}


def test_changed_metric_and_entry_tolerance_and_new_entries():
    suite = make_suite()
    base = baseline_of(suite, {"lora": [0.8, 0.8, 0.8], "dora": [0.8, 0.8, 0.8]})
    changed = records(suite, {"lora": [0.8, 0.8, 0.8]}, metric="f1") + records(
        suite, {"dora": [0.75, 0.75, 0.75]}
    )
    base.entries[1].tolerance = 0.1  # this entry tolerates a drop of 0.05
    report = compare(base, changed)
    assert verdicts(report) == {"lora": "incomparable", "dora": "pass"}
    assert "regenerate the baseline" in report.comparisons[0].detail
    # --tolerance overrides an entry's own tolerance.
    assert verdicts(compare(base, changed, tolerance=0.02))["dora"] == "regressed"
    # A variant the baseline lacks is reported as new, not failing.
    only_lora = Baseline(suite=suite, entries=[base.entries[0]])
    report = compare(only_lora, records(suite, {"lora": [0.8, 0.8, 0.8], "dora": [0.1, 0.1, 0.1]}))
    assert verdicts(report) == {"lora": "pass", "dora": "new"} and report.exit_code == 0


def test_records_of_other_settings_are_not_compared():
    suite = make_suite(variants=("lora",))
    base = baseline_of(suite, {"lora": [0.8, 0.8, 0.8]})
    other = dataclasses.replace(suite, budget=Budget.parse("steps=20"))  # another experiment
    report = compare(base, records(other, {"lora": [0.1, 0.1, 0.1]}))
    assert verdicts(report) == {"lora": "missing"}


# -- the baseline file -----------------------------------------------------------------------------


def test_baseline_round_trip_with_provenance(tmp_path):
    suite = make_suite(variants=("lora", VariantEntry("adalora", {"init_r": 4, "target_r": 2})))
    tree = git_worktree(tmp_path)  # not a checkout: recorded as such
    prov = collect_provenance(suite, tree)
    base = build_baseline(
        suite,
        records(suite, {"lora": [0.8, 0.82, 0.81], "adalora": [0.7, 0.72, 0.71]}),
        tolerance=0.03,
        noise_k=3.0,
        provenance=prov,
    )
    path = base.save(tmp_path / "b" / "baseline.json")
    again = Baseline.load(path)
    assert again.to_dict() == json.loads(path.read_text())
    assert again.suite.to_dict() == {**suite.to_dict(), "out": "runs", "results": None}
    assert [c.run_id for c in again.suite.run_configs()] == [c.run_id for c in suite.run_configs()]
    assert (again.tolerance, again.noise_k) == (0.03, 3.0)
    lora, adalora = again.entries
    assert lora.scores == {0: 0.8, 1: 0.82, 2: 0.81} and lora.mean == pytest.approx(0.81)
    assert lora.std == pytest.approx(0.01) and lora.metric == "accuracy" and lora.higher_is_better
    assert adalora.label == "adalora(init_r=4,target_r=2)"
    assert set(lora.run_ids) == {0, 1, 2}
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1 and data["entries"][0]["std"] == pytest.approx(0.01)
    p = data["provenance"]
    assert p["git"]["is_repo"] is False and p["git"]["commit"] is None
    assert p["seeds"] == [0, 1, 2] and p["packages"]["torch"] and p["machine"]["torch_threads"] >= 1
    assert p["created_at"] and p["python"] and p["platform"]


def test_baseline_refuses_failed_or_missing_runs():
    suite = make_suite(variants=("lora",), seeds=(0, 1))
    rs = [
        record(suite, "lora", 0, 0.8),
        record(suite, "lora", 1, None, status="failed", error="boom"),
    ]
    with pytest.raises(BaselineError, match=r"lora on rte, seed 1: failed: boom"):
        build_baseline(suite, rs)
    with pytest.raises(BaselineError, match=r"seed 1: no run"):
        build_baseline(suite, rs[:1])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist; create it with 'lorabench regress --update-baseline"),
        ('{"kind": "lorabench-baseline", "schema_versi', "not valid JSON (line 1"),
        ("[1, 2]", "a baseline is a JSON object"),
        ('{"kind": "something-else"}', "not a lorabench baseline"),
        ('{"kind": "lorabench-baseline", "schema_version": 99}', "upgrade lorabench"),
        ('{"kind": "lorabench-baseline", "schema_version": 1, "entries": []}', "missing 'suite'"),
    ],
)
def test_missing_or_corrupt_baseline_is_a_usage_error(tmp_path, capsys, content, message):
    path = tmp_path / "ci.json"
    if content is not None:
        path.write_text(content)
    assert main(["regress", "--baseline", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err
    assert not (tmp_path / "out").exists()  # nothing ran


def test_baseline_with_an_unknown_variant_names_it(tmp_path, capsys):
    suite = make_suite(variants=("lora",))
    data = baseline_of(suite, {"lora": [0.8, 0.8, 0.8]}).to_dict()
    data["suite"]["variants"] = ["lorra"]
    path = tmp_path / "b.json"
    path.write_text(json.dumps(data))
    assert main(["regress", "--baseline", str(path)]) == 2
    assert "unknown variant 'lorra'. Did you mean 'lora'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "ci"], "--preset only goes with --update-baseline"),
        (["--allow-dirty"], "--allow-dirty only goes with --update-baseline"),
        (["--tolerance", "-1"], "--tolerance -1.0 must be a number >= 0"),
        (["--noise-k", "nan"], "--noise-k nan must be a number >= 0"),
        (["--threads", "0"], "--threads 0 must be >= 1"),
        (["--workers", "0"], "--workers 0 must be >= 1 (e.g. --workers 2)"),
        (
            ["--update-baseline", "--results", "x.db"],
            "--results cannot be used with --update-baseline",
        ),
        (
            ["--update-baseline", "--preset", "ci", "--config", "x.yaml"],
            "give --preset or --config, not both",
        ),
        (["--update-baseline", "--preset", "cii"], "unknown preset 'cii'. Did you mean 'ci'?"),
        (["--update-baseline"], "does not exist yet: say which suite to run"),
    ],
)
def test_bad_flags_are_usage_errors(tmp_path, capsys, argv, message):
    assert main(["regress", "--baseline", str(tmp_path / "none.json"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_results_database_that_does_not_exist_is_a_usage_error(tmp_path, capsys):
    path = baseline_of(make_suite(variants=("lora",)), {"lora": [0.8, 0.8, 0.8]}).save(
        tmp_path / "b.json"
    )
    assert (
        main(
            [
                "regress",
                "--baseline",
                str(path),
                "--results",
                str(tmp_path / "none.db"),
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "no results database" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"not a database\n", b"SQLite format 3\x00" + b"\x00" * 200])
def test_corrupt_results_database_is_a_usage_error(tmp_path, capsys, content):
    path = baseline_of(make_suite(variants=("lora",)), {"lora": [0.8, 0.8, 0.8]}).save(
        tmp_path / "b.json"
    )
    results = tmp_path / "results.db"
    results.write_bytes(content)
    argv = [
        "regress",
        "--baseline",
        str(path),
        "--results",
        str(results),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(results) in err and "corrupt" in err
    assert not (tmp_path / "o" / "junit.xml").exists()  # no verdict from a database it cannot read


def test_summary_states_how_long_the_check_took():
    suite = make_suite(variants=("lora",))
    base = baseline_of(suite, {"lora": [0.8, 0.8, 0.8]})
    current = {"git": {"commit": "abc"}, "date": "2026-01-01", "wall_seconds": 123.4}
    report = compare(base, records(suite, {"lora": [0.8, 0.8, 0.8]}), current=current)
    assert "123.4 s wall" in report.to_markdown()


def test_help_states_the_rule_and_its_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["regress", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert (
        f"tolerance default {DEFAULT_TOLERANCE:g}" in text
        and f"k default {DEFAULT_NOISE_K:g}" in text
    )
    assert "d > tolerance and d > k x noise" in text and "is a regression" in text
    assert "exit codes: 0 no regression, 1 a regression" in text
    assert regress_cmd.HELP and "examples:" in regress_cmd.DESCRIPTION


def test_ci_preset_is_valid_offline_and_runs_every_registered_variant():
    suite = SuiteConfig.preset("ci")
    assert suite.model is None and suite.data_dir is None
    # Every adapter variant; the reference methods (no wrapped layers) are not regression targets,
    # and `head` cannot learn a planted task (its head is frozen).
    adapters = [n for n in VARIANTS.list() if VARIANTS.get(n).wraps_layers]
    assert sorted(e.variant for e in suite.variants) == sorted(adapters)
    assert len(suite.seeds) >= 2 and suite.budget.kind == "steps"
    from lorabench.tasks import get_task

    assert all(get_task(t).source == "planted" for t in suite.tasks)


# -- end to end on a tiny model ----------------------------------------------------------------

TINY_TASK = "regress-planted-tiny"
# The tiny vocabulary conftest builds its toy task and tiny BERT from.
WORDS = POSITIVE + NEUTRAL


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-initialised 2-layer BERT (hidden 32) with a word-level tokenizer of 55 words."""
    import torch
    import transformers

    folder = tmp_path_factory.mktemp("regress-bert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    transformers.BertTokenizerFast(vocab=str(vocab)).save_pretrained(folder)
    config = transformers.BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_suite(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread
) -> Path:
    """A planted-rank task for the tiny model (the head is frozen: only the adapter can learn it)
    and a suite file running LoRA and DoRA on it, two seeds, 100 steps; returns the suite file.

    Seeds 0 and 4 have floors (untrained accuracy) of 0.48 and 0.47; LoRA reaches 0.77 and 0.75.
    """
    from lorabench.tasks import TASKS
    from lorabench.tasks.planted import planted_spec

    monkeypatch.setenv("LORABENCH_CACHE", str(tmp_path / "cache"))
    TASKS.add(
        planted_spec(
            TINY_TASK,
            ranks={"query": 2, "value": 2},
            scale=2.0,
            num_train=256,
            num_validation=128,
            min_words=3,
            max_words=8,
        ),
        overwrite=True,
    )
    path = tmp_path / "suite.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        name: tiny-ci
        model: {tiny_bert}
        tasks: [{TINY_TASK}]
        variants: [lora, dora]
        seeds: [0, 4]
        budget: steps=100
        train: {{learning_rate: 3.0e-2, batch_size: 16, max_length: 16}}
    """)
    )
    yield path
    TASKS.unregister(TINY_TASK)


class WrongScalingLoRALayer(LoRALayer):
    """The bug to catch: the scale alpha / r is lost (0), so the update never reaches the output
    and A, B get no gradient: the model stays the base model however long it trains."""

    def __init__(self, base_layer, config, variant) -> None:
        super().__init__(base_layer, config, variant)
        self.scaling = 0.0


class WrongScalingLoRA(LoRA):
    layer_class = WrongScalingLoRALayer


def update_argv(baseline: Path, suite: Path, out: Path) -> list[str]:
    """``lorabench regress --update-baseline`` for ``suite`` into ``baseline``, outside a
    checkout."""
    return [
        "regress", "--update-baseline", "--baseline", str(baseline), "--config", str(suite),
        "--out", str(out), "--allow-dirty", "--quiet",
    ]  # fmt: skip


def junit_failures(path: Path) -> tuple[int, list[str]]:
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    assert suite is not None
    failed = [
        case.get("name", "") for case in suite.iter("testcase") if case.find("failure") is not None
    ]
    assert int(suite.get("failures", "-1")) == len(failed)
    assert int(suite.get("tests", "-1")) == len(suite.findall("testcase"))
    return len(failed), failed


def test_broken_variant_is_caught_end_to_end(tiny_suite, tmp_path, capsys):
    base = tmp_path / "baselines" / "ci.json"
    out = tmp_path / "ci-regress"
    update = update_argv(base, tiny_suite, tmp_path / "base-out")
    assert main(update) == 0
    baseline = Baseline.load(base)
    # The check can only catch a LoRA that stops learning if LoRA learns: well above the floor
    # (the untrained model's accuracy) on both seeds. DoRA, which learns little on this tiny
    # model, is the bystander that must not be blamed.
    floors = _floors(baseline)
    lora = baseline.entry("lora", TINY_TASK)
    assert lora is not None
    for seed, score in lora.scores.items():
        assert score > floors[seed] + 0.15, (seed, score, floors[seed])
    capsys.readouterr()

    # The same code passes: each seed's run is reproduced exactly.
    assert main(["regress", "--baseline", str(base), "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "nothing moved" in text and "PASS" in text
    assert junit_failures(out / "junit.xml") == (0, [])

    # A LoRA whose scale is lost: same --out, but the stored runs came from other code and re-run.
    VARIANTS.add(WrongScalingLoRA, name="lora", overwrite=True)
    try:
        assert main(["regress", "--baseline", str(base), "--out", str(out), "--quiet"]) == 1
    finally:
        VARIANTS.add(LoRA, name="lora", overwrite=True)
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.startswith("REGRESSED")]
    assert len(lines) == 1 and " lora " in lines[0] and TINY_TASK in lines[0]
    assert "dora" not in "".join(lines) and "FAIL" in text
    assert junit_failures(out / "junit.xml") == (1, ["lora"])
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# lorabench regress: FAIL") and "| **REGRESSED** | lora |" in summary
    with_broken = Baseline.load(base)  # the baseline file is never touched by a check
    assert with_broken.to_dict() == baseline.to_dict()


def _floors(baseline: Baseline) -> dict[int, float]:
    from lorabench.tasks import LoadRequest, load_task

    return {
        seed: load_task(TINY_TASK, LoadRequest(model=baseline.suite.model, seed=seed)).extras[
            "floor"
        ]["validation"]
        for seed in baseline.suite.seeds
    }


def test_same_out_resumes_without_rerunning(tiny_suite, tmp_path, monkeypatch, capsys):
    import lorabench.harness.runner as runner

    base = tmp_path / "b.json"
    out = tmp_path / "out"
    update = update_argv(base, tiny_suite, out)
    assert main(update) == 0
    monkeypatch.setattr(
        runner,
        "execute_run",
        lambda cfg, **kw: pytest.fail(f"re-ran {cfg.variant} seed {cfg.seed}"),
    )
    # Same code, same --out: the check reads the finished runs (the baseline's own) and passes.
    assert main(["regress", "--baseline", str(base), "--out", str(out)]) == 0
    assert "resuming: 4 run(s)" in capsys.readouterr().out
    # Other code (here: a changed fingerprint) must not reuse them.
    import lorabench.regress.guard as regress

    monkeypatch.setattr(regress, "code_fingerprint", lambda suite: "other-code")
    with pytest.raises(pytest.fail.Exception, match="re-ran"):
        main(["regress", "--baseline", str(base), "--out", str(out)])


def test_results_database_is_compared_without_training(tiny_suite, tmp_path, monkeypatch, capsys):
    import lorabench.harness.runner as runner

    base = tmp_path / "b.json"
    assert main(update_argv(base, tiny_suite, tmp_path / "run")) == 0
    monkeypatch.setattr(runner, "execute_run", lambda cfg, **kw: pytest.fail("trained"))
    out = tmp_path / "check"
    code = main(
        [
            "regress",
            "--baseline",
            str(base),
            "--results",
            str(tmp_path / "run" / "results.db"),
            "--out",
            str(out),
        ]
    )
    assert code == 0 and junit_failures(out / "junit.xml") == (0, [])
    # A database without the suite's runs: every variant x task is missing.
    from lorabench.results.store import ResultStore

    ResultStore(tmp_path / "empty.db").close()
    code = main(
        [
            "regress",
            "--baseline",
            str(base),
            "--results",
            str(tmp_path / "empty.db"),
            "--out",
            str(out),
        ]
    )
    assert code == 1 and junit_failures(out / "junit.xml") == (2, ["lora", "dora"])
    assert "MISSING" in capsys.readouterr().out


# -- writing a baseline from a git checkout --------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        [
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "commit.gpgsign=false",
            *args,
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_update_baseline_refuses_a_dirty_tree_and_records_provenance(
    tiny_suite, tmp_path, monkeypatch, capsys
):
    repo = tmp_path / "project"
    repo.mkdir()
    original = tiny_suite.read_text()
    (repo / "suite.yaml").write_text(original)
    _git(repo, "init", "-q")
    _git(repo, "add", "suite.yaml")
    _git(repo, "commit", "-q", "-m", "suite")
    head = _git(repo, "rev-parse", "HEAD")
    monkeypatch.chdir(repo)
    update = [
        "regress",
        "--update-baseline",
        "--baseline",
        "baselines/ci.json",
        "--config",
        "suite.yaml",
        "--out",
        "regress-out",
        "--quiet",
    ]

    (repo / "suite.yaml").write_text((repo / "suite.yaml").read_text() + "\n# edited\n")
    (repo / "notes.txt").write_text("untracked")
    assert main(update) == 2
    err = capsys.readouterr().err
    assert "uncommitted changes (notes.txt, suite.yaml)" in err and "--allow-dirty" in err
    assert not (repo / "baselines").exists()

    assert main([*update, "--allow-dirty"]) == 0
    git = json.loads((repo / "baselines" / "ci.json").read_text())["provenance"]["git"]
    assert git == {
        "commit": head,
        "branch": git["branch"],
        "dirty": True,
        "dirty_files": ["notes.txt", "suite.yaml"],
        "allow_dirty": True,
        "is_repo": True,
    }

    # Clean again (the output folder and the baseline file itself do not count): no flag needed.
    (repo / "suite.yaml").write_text(original)
    (repo / "notes.txt").unlink()
    assert main(update) == 0
    prov = json.loads((repo / "baselines" / "ci.json").read_text())["provenance"]
    assert (
        prov["git"]["commit"] == head
        and prov["git"]["dirty"] is False
        and prov["git"]["allow_dirty"] is False
    )
    assert prov["suite_source"] == "suite.yaml" and prov["seeds"] == [0, 4]
    # Without --config the suite comes from the baseline being replaced.
    assert (
        main(
            [
                "regress",
                "--update-baseline",
                "--baseline",
                "baselines/ci.json",
                "--out",
                "regress-out",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        "the previous baselines/ci.json"
        in json.loads((repo / "baselines" / "ci.json").read_text())["provenance"]["suite_source"]
    )


def test_update_baseline_outside_a_checkout_needs_allow_dirty(
    tiny_suite, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    if git_worktree(tmp_path).is_repo:
        pytest.skip("the temporary folder is inside a git checkout")
    assert (
        main(["regress", "--update-baseline", "--baseline", "b.json", "--config", str(tiny_suite)])
        == 2
    )
    assert "is not inside a git checkout" in capsys.readouterr().err


def test_missing_data_folder_stops_before_any_run(tmp_path, capsys):
    path = baseline_of(make_suite(variants=("lora",)), {"lora": [0.8, 0.8, 0.8]}).save(
        tmp_path / "b.json"
    )
    missing = tmp_path / "no-such-glue"
    argv = [
        "regress",
        "--baseline",
        str(path),
        "--data-dir",
        str(missing),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    assert f"data_dir={str(missing)!r} is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.db").exists()  # nothing ran, nothing was stored


# -- parallel workers ------------------------------------------------------------------------------


def test_workers_2_gives_the_verdict_and_scores_of_one_worker(
    tiny_bert, tmp_path, monkeypatch, capsys, single_thread
):
    """A suite every spawned worker can load (a built-in task on the GLUE fixtures; a task
    registered in code here would not reach them): checked with one worker and with two, each
    run trains with the baseline's one thread, so the scores and the verdict are the same."""
    from lorabench.results.store import ResultStore

    monkeypatch.setenv("LORABENCH_CACHE", str(tmp_path / "cache"))
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        textwrap.dedent(f"""\
        name: tiny-workers
        model: {tiny_bert}
        tasks: [rte]
        data_dir: {Path(__file__).parent / "fixtures" / "glue"}
        variants: [lora]
        seeds: [0, 1]
        budget: steps=4
        train: {{learning_rate: 3.0e-2, batch_size: 8, max_length: 16, max_eval_examples: 32}}
    """)
    )
    base = tmp_path / "b.json"
    assert main(update_argv(base, suite, tmp_path / "base-out")) == 0
    assert Baseline.load(base).provenance["machine"]["torch_threads"] == 1
    capsys.readouterr()

    outs = {n: tmp_path / f"check-{n}" for n in (1, 2)}
    codes = {
        n: main(["regress", "--baseline", str(base), "--out", str(out), "--workers", str(n)])
        for n, out in outs.items()
    }
    text = capsys.readouterr().out
    assert codes == {1: 0, 2: 0}
    assert "torch threads: 1 in each of 2 workers" in text
    assert text.count("nothing moved") == 2
    scores = {
        n: {r.run_id: r.score for r in ResultStore(out / "results.db").records()}
        for n, out in outs.items()
    }
    assert len(scores[1]) == 2 and scores[2] == scores[1]
    assert junit_failures(outs[2] / "junit.xml") == junit_failures(outs[1] / "junit.xml") == (0, [])
    # The guard saw every record the workers' runs produced (a re-run resumes them all).
    state = json.loads((outs[2] / "regress-state.json").read_text())
    assert set(state["runs"]) == set(scores[2])
