"""The papers' claims, checked on synthetic records with a known answer: each built-in claim on
records built to satisfy it and to violate it, undecided with too few seeds or too much noise,
missing runs named with the command that adds them, VeRA's parameter-ratio condition, AdaLoRA
paired by parameter budget, DyLoRA by evaluated rank, and a plugin's claim in the report."""

from __future__ import annotations

import numpy as np
import pytest

from lorabench.reports import generate_report
from lorabench.reports.claims import (
    FAILS,
    HOLDS,
    MISSING,
    UNDECIDED,
    ClaimCheck,
    check_claim,
    check_claims,
    to_markdown,
)
from lorabench.reports.frame import ReportData, load_report_data
from lorabench.reports.stats import CANNOT_DECIDE, MIN_SEEDS
from lorabench.results.records import CurvePoint, RunRecord
from lorabench.results.store import ResultStore
from lorabench.variants.claims import BUILT_IN_CLAIMS, CLAIMS, Claim, list_claims, register_claim

LORA, DORA, VERA, ADALORA, DYLORA = "lora", "dora", "vera", "adalora", "dylora"
SEEDS = tuple(range(5))
BASE = 0.60 + 0.01 * np.arange(len(SEEDS))  # seeds differ a lot; the pairs do not
NOISE = np.random.default_rng(0).normal(0.0, 0.002, size=len(SEEDS))  # 0.2 points
PARAMS_PER_RANK = 1000


def make(
    variant: str,
    rank: int | None,
    seed: int,
    score: float,
    *,
    task: str = "rte",
    params: int | None = None,
    config: dict | None = None,
    ranks: dict[str, int] | None = None,
    rank_scores: dict[int, dict[str, float]] | None = None,
    metric: str = "accuracy",
    higher_is_better: bool = True,
) -> RunRecord:
    params = PARAMS_PER_RANK * (rank or 1) if params is None else params
    return RunRecord(
        run_id=f"{variant}-{rank}-{task}-{metric}-{seed}",
        status="finished",
        variant=variant,
        task=task,
        model="all-MiniLM-L6-v2",
        seed=seed,
        config={"variant_config": {"r": rank} if config is None else config},
        metrics={metric: score},
        primary_metric=metric,
        score=score,
        higher_is_better=higher_is_better,
        rank=rank,
        budget={"kind": "steps", "limit": 40},
        spent={"steps": 40, "train_seconds": 1.0},
        trainable_params=params + 100,
        adapter_params=params,
        total_params=10**6,
        ranks=ranks or {},
        rank_scores=rank_scores,
        started_at=f"2026-01-01T00:00:{seed:02d}",
        finished_at=f"2026-01-01T00:01:{seed:02d}",
    )


def series(variant: str, rank: int, offset: float, seeds=SEEDS, **kwargs) -> list[RunRecord]:
    """One row: ``offset`` (raw score units) above the shared per-seed baseline, plus noise."""
    return [make(variant, rank, s, BASE[s] + offset + NOISE[s], **kwargs) for s in seeds]


def lora(rank: int = 8, seeds=SEEDS, **kwargs) -> list[RunRecord]:
    return [make(LORA, rank, s, BASE[s], **kwargs) for s in seeds]


def load(tmp_path, records: list[RunRecord]) -> ReportData:
    store = ResultStore(tmp_path / "r.db")
    for record in records:
        store.add(record)
    store.close()
    return load_report_data(tmp_path / "r.db")


def check(tmp_path, records: list[RunRecord], claim_id: str) -> ClaimCheck:
    return check_claim(load(tmp_path, records), CLAIMS.get(claim_id))


# -- the table -----------------------------------------------------------------------------------
def test_the_five_built_in_claims_are_registered_first():
    ids = [claim.id for claim in list_claims()]
    assert ids[:5] == [c.id for c in BUILT_IN_CLAIMS]
    assert {c.subject for c in BUILT_IN_CLAIMS} == {LORA, DORA, VERA, ADALORA, DYLORA}
    assert CLAIMS.describe("dora-vs-lora") == CLAIMS.get("dora-vs-lora").text


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"relation": "about"}, "unknown relation"),
        ({"pairing": "by-name"}, "unknown pairing"),
        ({"margin": -1.0}, "margin"),
        ({"min_param_ratio": 0.0}, "min_param_ratio"),
        ({"param_tolerance": 1.5}, "param_tolerance"),
    ],
)
def test_a_malformed_claim_is_refused(bad, message):
    fields = {"id": "x", "text": "x", "citation": "x", "subject": DORA, "reference": LORA}
    with pytest.raises(ValueError, match=message):
        Claim(**{"relation": "at_least", **fields, **bad})


# -- DoRA >= LoRA at equal rank (at_least, margin 0) --------------------------------------------
def test_dora_better_at_equal_rank_holds(tmp_path):
    result = check(tmp_path, lora(8) + series(DORA, 8, +0.02), "dora-vs-lora")
    assert result.status == HOLDS and result.verdict.startswith(HOLDS)
    (row,) = result.tests.itertuples(index=False)
    assert (row.subject, row.reference, row.task, row.n) == ("DoRA r=8", "LoRA r=8", "rte", 5)
    assert row.mean_difference == pytest.approx(2.0 + 100 * NOISE.mean())  # in points
    assert 0 < row.ci_low < 2.0 < row.ci_high and row.p_value < 0.001
    assert result.runs_used == ["DoRA r=8 vs LoRA r=8 on rte"]


def test_dora_worse_at_equal_rank_does_not_hold(tmp_path):
    result = check(tmp_path, lora(8) + series(DORA, 8, -0.02), "dora-vs-lora")
    assert result.status == FAILS
    assert "DoRA r=8 vs LoRA r=8 on rte" in result.verdict


def test_a_lower_is_better_metric_counts_lower_as_better(tmp_path):
    lower = {"metric": "mse", "higher_is_better": False}
    records = lora(8, **lower) + series(DORA, 8, -0.02, **lower)  # DoRA's error is lower
    assert check(tmp_path, records, "dora-vs-lora").status == HOLDS


def test_a_noisy_difference_is_undecided_with_the_seed_count(tmp_path):
    noisy = np.array([0.03, -0.03, 0.02, -0.025, 0.01])  # mean +0.2 points, spread 2.5
    records = lora(8) + [make(DORA, 8, s, BASE[s] + noisy[s]) for s in SEEDS]
    result = check(tmp_path, records, "dora-vs-lora")
    assert result.status == UNDECIDED
    assert result.verdict == f"{UNDECIDED} (CI too wide: {len(SEEDS)} seeds)"


@pytest.mark.parametrize("shared", [1, MIN_SEEDS - 1])
def test_too_few_seeds_say_so(tmp_path, shared):
    seeds = SEEDS[:shared]
    result = check(tmp_path, lora(8, seeds) + series(DORA, 8, +0.02, seeds), "dora-vs-lora")
    assert result.status == UNDECIDED
    assert f"{CANNOT_DECIDE}: {shared} shared seed(s)" in result.verdict
    assert f"{CANNOT_DECIDE}: {shared} shared seed(s)" in to_markdown([result])


def test_a_rank_without_partner_is_named_while_the_others_decide(tmp_path):
    records = lora(8) + series(DORA, 8, +0.02) + series(DORA, 4, +0.02)
    result = check(tmp_path, records, "dora-vs-lora")
    assert result.status == HOLDS  # decided at r=8
    assert result.not_compared == [
        "DoRA r=4 on rte: no LoRA with r=4 on the same data, model and budget"
    ]


def test_one_failing_task_fails_the_claim(tmp_path):
    records = lora(8) + series(DORA, 8, +0.02)
    records += lora(8, task="mrpc") + series(DORA, 8, -0.02, task="mrpc")
    result = check(tmp_path, records, "dora-vs-lora")
    assert result.status == FAILS
    assert set(result.tests["task"]) == {"rte", "mrpc"}
    assert "on mrpc" in result.verdict and "on rte" not in result.verdict


# -- LoRA ~ full fine-tuning: no full runs yet ---------------------------------------------------
def test_missing_full_runs_name_what_to_run(tmp_path):
    result = check(tmp_path, lora(8) + lora(8, task="mrpc"), "lora-vs-full")
    assert result.status == MISSING and result.tests.empty
    assert result.verdict.startswith(f"{MISSING}: Full fine-tuning on mrpc, rte")
    assert "`lorabench run --variants full --tasks mrpc,rte --seeds 5" in result.verdict
    assert "--budget steps=40" in result.verdict


def test_missing_subject_at_the_claimed_rank_is_named_too(tmp_path):
    result = check(tmp_path, lora(4), "lora-vs-full")
    assert result.status == MISSING
    assert "LoRA r=8 and Full fine-tuning on rte" in result.verdict
    assert "--variants lora,full" in result.verdict
    assert "--variant-config lora.r=8" in result.verdict


def test_lora_equivalent_to_a_full_row_holds_and_a_distant_one_does_not(tmp_path):
    claim = CLAIMS.get("lora-vs-full")

    # Runs under the reference method's name, without a rank: only their scores matter here.
    def full(offset: float) -> list[RunRecord]:
        return [
            make(claim.reference, None, s, BASE[s] + offset + NOISE[s] / 4, params=10**6, config={})
            for s in SEEDS
        ]

    near, far = lora(8) + full(0.0), lora(8) + full(0.03)
    assert check_claim(load(tmp_path / "near", near), claim).status == HOLDS
    assert check_claim(load(tmp_path / "far", far), claim).status == FAILS


# -- VeRA within one point of LoRA r=8 with >= 10x fewer parameters --------------------------------
VERA_PARAMS = 640  # LoRA r=8: 8000, 12.5x


def test_vera_within_one_point_with_few_parameters_holds(tmp_path):
    records = lora(8) + lora(4) + series(VERA, 256, -0.005, params=VERA_PARAMS)
    result = check(tmp_path, records, "vera-vs-lora")
    assert result.status == HOLDS
    (row,) = result.tests.itertuples(index=False)
    assert row.reference == "LoRA r=8"  # the claim's reference rank; LoRA r=4 is not used
    assert row.param_ratio == pytest.approx(8000 / VERA_PARAMS)


def test_vera_well_above_lora_still_holds_the_claim_is_one_sided(tmp_path):
    records = lora(8) + series(VERA, 256, +0.05, params=VERA_PARAMS)  # five points above
    assert check(tmp_path, records, "vera-vs-lora").status == HOLDS


def test_vera_two_points_below_does_not_hold(tmp_path):
    records = lora(8) + series(VERA, 256, -0.02, params=VERA_PARAMS)
    assert check(tmp_path, records, "vera-vs-lora").status == FAILS


def test_vera_with_too_many_parameters_does_not_hold_whatever_its_score(tmp_path):
    records = lora(8) + series(VERA, 256, +0.01, params=4000)  # better, but only 2x fewer
    result = check(tmp_path, records, "vera-vs-lora")
    assert result.status == FAILS
    (row,) = result.tests.itertuples(index=False)
    assert row.param_ratio == pytest.approx(2.0)
    assert "2.0x the adapter parameters" in row.verdict and "at least 10x" in row.verdict


# -- AdaLoRA >= LoRA at an equal parameter budget ------------------------------------------------
def adalora(offset: float) -> list[RunRecord]:
    """AdaLoRA from r=12 to a final mean rank of 8: 12,000 parameters trained, 8,000 kept."""
    return series(
        ADALORA,
        12,
        offset,
        config={"r": 12, "target_r": 8},
        ranks={"layer.0.query": 7, "layer.0.value": 9},
    )


def test_adalora_is_paired_with_lora_of_its_final_budget(tmp_path):
    # Better than LoRA r=8 (its budget), worse than LoRA r=12 (its initial rank).
    records = lora(8) + [make(LORA, 12, s, BASE[s] + 0.05) for s in SEEDS] + adalora(+0.01)
    result = check(tmp_path, records, "adalora-vs-lora")
    assert result.status == HOLDS
    (row,) = result.tests.itertuples(index=False)
    assert row.reference == "LoRA r=8"
    assert row.param_ratio == pytest.approx(1.0)


def test_adalora_below_lora_of_its_budget_does_not_hold(tmp_path):
    assert check(tmp_path, lora(8) + adalora(-0.02), "adalora-vs-lora").status == FAILS


def test_adalora_without_lora_of_its_budget_names_the_rank(tmp_path):
    result = check(tmp_path, lora(2) + adalora(+0.01), "adalora-vs-lora")
    assert result.status == MISSING
    assert "8,000 adapter parameters (±5%), i.e. r=8" in result.verdict
    assert "--variant-config lora.r=8" in result.verdict


# -- DyLoRA at rank b ~ LoRA trained at rank b -----------------------------------------------------
def dylora(offsets: dict[int, float], final_offset: float = 0.0) -> list[RunRecord]:
    """One DyLoRA r<=4 training per seed, evaluated at ranks 1..4 (``offsets`` per rank)."""
    return [
        make(
            DYLORA,
            4,
            s,
            BASE[s] + final_offset,
            rank_scores={
                b: {"accuracy": BASE[s] + off + NOISE[s] / 4} for b, off in offsets.items()
            },
        )
        for s in SEEDS
    ]


def test_dylora_matching_lora_at_each_rank_holds(tmp_path):
    records = lora(2) + lora(4) + dylora({1: -0.05, 2: 0.0, 3: -0.01, 4: 0.0})
    result = check(tmp_path, records, "dylora-vs-lora")
    assert result.status == HOLDS
    assert list(result.tests["subject"]) == ["DyLoRA r≤4 at r=2", "DyLoRA r≤4 at r=4"]
    assert list(result.tests["reference"]) == ["LoRA r=2", "LoRA r=4"]
    assert result.not_compared == [
        "DyLoRA r≤4 on rte: no LoRA with r=1, r=3 on the same data, model and budget"
    ]


@pytest.mark.parametrize("offset", [-0.03, +0.03])
def test_dylora_three_points_off_at_one_rank_does_not_hold_either_way(tmp_path, offset):
    records = lora(2) + lora(4) + dylora({2: offset, 4: 0.0})
    result = check(tmp_path, records, "dylora-vs-lora")
    assert result.status == FAILS
    assert "DyLoRA r≤4 at r=2 vs LoRA r=2" in result.verdict


def test_dylora_compares_final_evaluations_also_when_the_report_scores_the_best(tmp_path):
    # Per-rank scores are final evaluations. Each LoRA run evaluated 5 points higher mid-training
    # than at its end: compared with that best score, DyLoRA would fail.
    records = lora(4) + dylora({4: 0.0})
    for record in records:
        if record.variant == LORA:
            record.curve = [
                CurvePoint(step=20, loss=0.5, metrics={"accuracy": record.score + 0.05}),
                CurvePoint(step=40, loss=0.4, metrics={"accuracy": record.score}),
            ]
    load(tmp_path, records)
    best = load_report_data(tmp_path / "r.db", score="best")
    lora_best = best.runs.loc[best.runs["variant"] == LORA, "score"].to_numpy()
    assert lora_best == pytest.approx(BASE + 0.05)  # the report itself scores the best
    assert check_claim(best, CLAIMS.get("dylora-vs-lora")).status == HOLDS


# -- a plugin's claim, and the report ------------------------------------------------------------
@pytest.fixture
def plugin_claim():
    claim = register_claim(
        Claim(
            id="test-vera-vs-dora",
            text="A plugin's claim: VeRA matches DoRA within two points",
            citation="Someone et al. 2026",
            subject=VERA,
            reference=DORA,
            relation="equivalent",
            margin=2.0,
            pairing="each",
        )
    )
    yield claim
    CLAIMS.unregister(claim.id)


def test_a_plugin_claim_is_checked_and_reported(tmp_path, plugin_claim):
    records = lora(8) + series(DORA, 8, 0.0) + series(VERA, 256, -0.005, params=VERA_PARAMS)
    checks = check_claims(load(tmp_path, records))
    by_id = {c.claim.id: c for c in checks}
    assert by_id[plugin_claim.id].status == HOLDS
    assert [c.claim.id for c in checks][-1] == plugin_claim.id  # after the built-ins

    report = generate_report(tmp_path / "r.db", tmp_path / "out")
    assert report.claims is not None and plugin_claim.id in {c.claim.id for c in report.claims}
    stats_md = report.tables["stats_md"].read_text(encoding="utf-8")
    assert "### The papers' claims" in stats_md and plugin_claim.text in stats_md
    # LoRA ~ full fine-tuning cannot be decided yet
    assert "missing runs: Full fine-tuning" in stats_md
    assert "holds when the CI's lower bound is ≥ −m" in stats_md  # the decision rule, stated
    csv = report.tables["claims_csv"].read_text(encoding="utf-8")
    assert plugin_claim.id in csv and "lora-vs-full" in csv
    page = report.html.read_text(encoding="utf-8")
    assert "id='claims'" in page and "Someone et al. 2026" in page
