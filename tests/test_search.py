"""Search under a spend budget: space parsing, budget accounting, study sharing, bad input.

Most tests drive :func:`run_search` with a fake ``execute_run`` whose spend and score are known
exactly, so the budget arithmetic can be checked to the step. ``test_search_end_to_end_tiny``
runs the real harness on a tiny random BERT.
"""

from __future__ import annotations

import math
import time

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from lorabench.harness import runner
from lorabench.harness.config import Budget, RunConfig, TrainConfig
from lorabench.results.records import RunRecord
from lorabench.search.budget import estimate_trial_spend, study_spend
from lorabench.search.loop import (
    SearchConfig,
    SearchError,
    TrialSeededSampler,
    load_search_summaries,
    prepare_search,
    run_search,
    variant_search_space,
)
from lorabench.search.space import SearchSpaceError, build_search_space
from lorabench.search.storage import StorageError, open_storage
from lorabench.variants import get_variant, list_variants

optuna.logging.set_verbosity(optuna.logging.WARNING)

LORA_FIELDS = {"r", "alpha", "dropout", "target_modules", "use_rslora"}


# ------------------------------------------------------------------------------------------------
# a fake harness: exact spend, a score that depends on the sampled rank and learning rate


class FakeStore:
    def __init__(self) -> None:
        self.records: dict[str, RunRecord] = {}
        self.added: list[RunRecord] = []

    def add(self, record: RunRecord) -> None:
        self.added.append(record)
        old = self.records.get(record.run_id)
        if old is None or old.status != "finished":
            self.records[record.run_id] = record

    def get(self, run_id: str) -> RunRecord | None:
        return self.records.get(run_id)


class FakeHarness:
    """Trains nothing; spends ``seconds_per_step`` (x rank factor) per step and reports evals."""

    def __init__(
        self,
        seconds_per_step: float = 1.0,
        rank_cost: float = 0.0,
        interrupt_on_call: int | None = None,
    ):
        self.seconds_per_step = seconds_per_step
        self.rank_cost = rank_cost
        self.interrupt_on_call = interrupt_on_call
        self.calls: list[RunConfig] = []

    def score(self, cfg: RunConfig, step: int, total: int) -> float:
        r = cfg.variant_config.get("r", 8)
        lr = cfg.train.learning_rate
        quality = 0.6 + 0.04 * math.log2(r) - 0.1 * abs(math.log10(lr) + 3) + 0.01 * cfg.seed
        return quality * (0.5 + 0.5 * step / total)

    def __call__(self, cfg: RunConfig, *, on_eval=None, progress=True) -> RunRecord:
        self.calls.append(cfg)
        if self.interrupt_on_call is not None and len(self.calls) == self.interrupt_on_call:
            raise KeyboardInterrupt
        total = int(cfg.budget.limit)
        every = cfg.train.eval_every or total
        per_step = self.seconds_per_step * (1 + self.rank_cost * cfg.variant_config.get("r", 8))
        status, step = "finished", total
        for s in range(every, total + 1, every):
            if on_eval is None:
                continue
            try:
                on_eval(s, {"accuracy": self.score(cfg, s, total)}, self.score(cfg, s, total))
            except runner.RunPruned:
                status, step = "pruned", s
                break
        r = cfg.variant_config.get("r", 8)
        return RunRecord(
            run_id=cfg.run_id,
            status=status,
            variant=cfg.variant,
            task=cfg.task,
            model="fake",
            seed=cfg.seed,
            config=cfg.to_dict(),
            score=self.score(cfg, step, total),
            rank=r,
            ranks={
                "layer.0.query": r,
                "layer.0.value": max(1, r // 2),
            },  # as if a matrix was pruned
            rank_scores={r: {"accuracy": self.score(cfg, step, total)}, 32: {"accuracy": 0.5}},
            primary_metric="accuracy",
            trainable_params=1000 * r,
            budget=cfg.budget.to_dict(),
            spent={
                "steps": step,
                "tokens": 64 * step,
                "train_seconds": per_step * step,
                "eval_seconds": 0.0,
                "flops": 1e6 * step,
            },
        )


def search_config(tmp_path, **overrides) -> SearchConfig:
    values = dict(
        variant="lora",
        task="rte",
        budget=Budget("steps", 1000),
        trial_budget=Budget("steps", 100),
        train=TrainConfig(eval_every=25),
        storage=str(tmp_path / "search.db"),
        study="t",
        confirm_seeds=2,
        heartbeat_interval=None,
    )
    values.update(overrides)
    return SearchConfig(**values)


def total_steps(study: optuna.Study) -> float:
    return sum(
        t.user_attrs.get("spend", t.user_attrs.get("partial_spend", {})).get("steps", 0)
        for t in study.trials
    )


# ------------------------------------------------------------------------------------------------
# search spaces


def test_space_merges_overrides_fixes_and_removes():
    declared = {
        "r": {"type": "categorical", "choices": [2, 4, 8]},
        "alpha": {"type": "categorical", "choices": [8, 16]},
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True},
    }
    space = build_search_space(
        "lora",
        declared,
        {
            "alpha": 16,
            "dropout": {"type": "float", "low": 0.0, "high": 0.2},
            "train.learning_rate": None,
        },
        config_fields=LORA_FIELDS,
    )
    assert space.names == ["r", "dropout"]
    assert dict(space.fixed) == {"alpha": 16}
    params = space.suggest(optuna.trial.FixedTrial({"r": 4, "dropout": 0.1}))
    assert params == {"alpha": 16, "r": 4, "dropout": 0.1}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rank": {"type": "categorical", "choices": [1]}}, "'rank' is neither a field"),
        ({"r": {"type": "categorical", "choices": []}}, "non-empty list"),
        ({"r": {"type": "int", "low": 8, "high": 2}}, "above high"),
        ({"r": {"type": "gaussian"}}, "not a distribution spec"),
        (
            {"train.learning_rate": {"type": "float", "low": 0.0, "high": 1e-3, "log": True}},
            "needs low > 0",
        ),
        ({"r": {"type": "int", "low": 1, "high": "alpha"}}, "names no earlier parameter"),
        ({"r": {"type": "int", "low": 1, "high": 8, "stepp": 2}}, "unknown key"),
        ({"r": None, "train.learning_rate": None}, "is empty"),
    ],
)
def test_invalid_spaces_fail_with_the_parameter_named(overrides, message):
    declared = {
        "r": {"type": "categorical", "choices": [2, 4]},
        "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3},
    }
    with pytest.raises(SearchSpaceError, match=message):
        build_search_space("lora", declared, overrides, config_fields=LORA_FIELDS)


# Each built-in declares what issue 4 lists for it (rank, learning rate, dropout; alpha where the
# variant has one; AdaLoRA both ranks (r, the initial one, and target_r), VeRA d_initial).
BUILT_IN_SPACES = {
    "lora": {"r", "alpha", "dropout", "train.learning_rate"},
    "dora": {"r", "alpha", "dropout", "train.learning_rate"},
    "adalora": {"r", "target_r", "alpha", "dropout", "train.learning_rate"},
    "vera": {"r", "d_initial", "dropout", "train.learning_rate"},
    "dylora": {"r", "alpha", "dropout", "train.learning_rate"},
    "sora": {"r", "alpha", "sparse_lambda", "sparse_lambda_2", "dropout", "train.learning_rate"},
    "increlora": {"target_rank", "top_h", "alpha", "orth_reg_weight", "train.learning_rate"},
    # The reference methods have no setting but the learning rate (issue 11).
    "full": {"train.learning_rate"},
    "bitfit": {"train.learning_rate"},
    "head": {"train.learning_rate"},
}


@pytest.mark.parametrize("name", list_variants())
def test_every_registered_variant_declares_a_valid_space(name: str) -> None:
    variant = get_variant(name)
    space = variant_search_space(name)
    assert space.names, f"{name} declares an empty search space"
    assert set(space.names) >= BUILT_IN_SPACES.get(name, set())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):  # every sampled point is a valid config of the variant
        params = space.suggest(study.ask())
        variant.config_class.from_dict(
            {k: v for k, v in params.items() if not k.startswith("train.")}
        )


def test_conditional_parameters_and_bounds_naming_earlier_parameters():
    declared = {
        "r": {"type": "categorical", "choices": [4, 8]},
        "use_rslora": {"type": "categorical", "choices": [False, True]},
        "alpha": {"type": "categorical", "choices": [8, 16], "when": {"use_rslora": True}},
        "dropout": {"type": "int", "low": 1, "high": "r"},  # any int field would do; bound = r
    }
    space = build_search_space("lora", declared, config_fields=LORA_FIELDS)
    assert space.is_conditional
    off = space.suggest(optuna.trial.FixedTrial({"r": 4, "use_rslora": False, "dropout": 3}))
    assert "alpha" not in off
    on = space.suggest(
        optuna.trial.FixedTrial({"r": 4, "use_rslora": True, "alpha": 16, "dropout": 3})
    )
    assert on["alpha"] == 16
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        params = space.suggest(study.ask())
        assert 1 <= params["dropout"] <= params["r"]
    with pytest.raises(SearchSpaceError, match="grid sampler needs an unconditional space"):
        space.grid()


def test_grid_enumerates_discrete_space_and_rejects_continuous():
    space = build_search_space(
        "lora",
        {
            "r": {"type": "int", "low": 2, "high": 8, "step": 2},
            "dropout": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
        },
        config_fields=LORA_FIELDS,
    )
    assert space.grid() == {"r": [2, 4, 6, 8], "dropout": [0.0, 0.1, 0.2]}
    lr = build_search_space(
        "lora",
        {"train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}},
        config_fields=LORA_FIELDS,
    )
    with pytest.raises(SearchSpaceError, match="cannot enumerate"):
        lr.grid()


# ------------------------------------------------------------------------------------------------
# budget accounting on synthetic trials


def _trial(number, state, attrs, value=None):
    t = create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        params={"r": 4},
        distributions={"r": CategoricalDistribution([4, 8])},
        user_attrs=attrs,
        intermediate_values={} if state != TrialState.PRUNED else {50: 0.5},
    )
    t.number = number
    return t


def test_study_spend_counts_pruned_failed_and_running_trials():
    full = {"steps": 100.0, "tokens": 6400.0, "seconds": 50.0, "flops": 1e8}
    trials = [
        _trial(0, TrialState.COMPLETE, {"spend": full}, value=0.7),
        _trial(
            1,
            TrialState.PRUNED,
            {"spend": {"steps": 25.0, "tokens": 1600.0, "seconds": 12.5, "flops": 2.5e7}},
        ),
        _trial(
            2, TrialState.FAIL, {"partial_spend": {"steps": 50.0, "seconds": 30.0}}
        ),  # a killed worker
        _trial(3, TrialState.RUNNING, {"reserved": 100.0, "partial_spend": {"steps": 75.0}}),
        _trial(4, TrialState.RUNNING, {}),  # asked, reservation not yet written: the default counts
    ]
    steps = study_spend(trials, "steps", default_reservation=100.0)
    assert steps.ended == 100 + 25 + 50
    assert steps.in_flight == 100 + 100
    assert steps.states["FAIL"] == 1 and steps.states["RUNNING"] == 2
    # tokens of the killed trial: its 50 steps at the observed 64 tokens per step
    tokens = study_spend(trials, "tokens", default_reservation=0.0)
    assert tokens.per_trial[2] == pytest.approx(50 * 64)
    seconds = study_spend(trials, "seconds", default_reservation=0.0)
    assert seconds.per_trial[2] == 30.0
    assert estimate_trial_spend(Budget("steps", 100), "seconds", trials) == 50.0
    assert estimate_trial_spend(Budget("steps", 100), "steps", trials[1:3]) == 100.0
    assert estimate_trial_spend(Budget("steps", 100), "seconds", trials[1:3]) is None


# ------------------------------------------------------------------------------------------------
# the search loop with a fake harness


def test_search_stops_at_budget_counting_pruned_trials_and_confirms(tmp_path):
    harness, store = FakeHarness(), FakeStore()
    prepared = prepare_search(
        search_config(tmp_path, pruner="hyperband", budget=Budget("steps", 600))
    )
    outcome = run_search(
        prepared, store=store, execute=harness, results=str(tmp_path / "results.db"), progress=False
    )
    study = prepared.study
    spent = total_steps(study)
    assert 600 <= spent < 600 + 100  # stops on the trial that reaches the budget
    assert outcome.spend.committed == pytest.approx(spent)
    states = {t.state for t in study.trials}
    assert TrialState.PRUNED in states  # pruned trials ran and their steps are in the total
    trial_records = [r for r in store.added if r.search["role"] == "trial"]
    assert len(trial_records) == len(harness.calls) - 2
    assert {r.search["trial"] for r in trial_records} <= {t.number for t in study.trials}
    confirm = [r for r in store.added if r.search["role"] == "confirm"]
    assert [r.seed for r in confirm] == [1, 2]  # fresh seeds, never the search seed 0
    assert {r.search["trial"] for r in confirm} == {outcome.best_trial}
    assert (
        confirm[0].config["variant_config"]
        == study.trials[outcome.best_trial].user_attrs["run_config"]["variant_config"]
    )

    (summary,) = load_search_summaries(tmp_path / "results.db")
    assert summary["study"] == "t/lora/rte" and summary["best"]["trial"] == outcome.best_trial
    assert summary["best_rank"] == summary["best"]["params"].get("r", 8)
    assert len(summary["score_vs_rank"]) == len(study.trials)
    assert {row["state"] for row in summary["score_vs_rank"]} >= {"COMPLETE", "PRUNED"}
    for row in summary["score_vs_rank"]:  # the final (pruned) ranks and DyLoRA-style rank scores
        r = row["rank"]
        assert row["final_rank"] == pytest.approx((r + max(1, r // 2)) / 2)
        assert set(row["rank_scores"]) == {str(r), "32"} and row["rank_scores"]["32"] == 0.5
    assert set(summary["importances"]["values"]) <= set(prepared.space.names)
    assert summary["confirm"]["mean"] == pytest.approx(sum(r.score for r in confirm) / 2)


def test_rerun_resumes_and_spends_nothing_more(tmp_path):
    store = FakeStore()
    first = FakeHarness()
    run_search(prepare_search(search_config(tmp_path)), store=store, execute=first, progress=False)
    again = FakeHarness()
    prepared = prepare_search(search_config(tmp_path))
    n_before = len(prepared.study.trials)
    run_search(prepared, store=store, execute=again, progress=False)
    assert len(prepared.study.trials) == n_before
    assert again.calls == []  # budget spent, confirmation runs found finished in the store


def test_seconds_budget_gives_a_slower_variant_fewer_trials(tmp_path):
    counts = {}
    for name, per_step in (("fast", 0.1), ("slow", 0.4)):
        cfg = search_config(
            tmp_path, budget=Budget("seconds", 100), study=name, pruner="none", confirm_seeds=0
        )
        prepared = prepare_search(cfg, probe=False)  # the fake harness has no model to probe
        run_search(
            prepared,
            store=FakeStore(),
            execute=FakeHarness(seconds_per_step=per_step),
            progress=False,
        )
        counts[name] = len(prepared.study.trials)
        assert 100 <= prepared.spend().committed < 100 + 100 * per_step + 1e-9
    assert counts == {"fast": 10, "slow": 3}  # 10 s and 40 s trials under one 100 s budget


def test_interrupted_trial_counts_its_spend_and_the_search_resumes(tmp_path):
    store = FakeStore()
    cfg = search_config(tmp_path, pruner="none", confirm_seeds=0)
    with pytest.raises(KeyboardInterrupt):
        run_search(
            prepare_search(cfg),
            store=store,
            execute=FakeHarness(interrupt_on_call=3),
            progress=False,
        )
    prepared = prepare_search(search_config(tmp_path, pruner="none", confirm_seeds=0))
    states = [t.state for t in prepared.study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    assert "partial_spend" in prepared.study.trials[2].user_attrs
    run_search(prepared, store=store, execute=FakeHarness(), progress=False)
    assert 1000 <= prepared.spend().committed < 1100


def test_killed_worker_trial_is_failed_by_heartbeat_and_keeps_its_spend(tmp_path):
    cfg = search_config(tmp_path, heartbeat_interval=1, grace_period=1, pruner="none")
    prepared = prepare_search(cfg)
    storage = prepared.study._storage
    orphan = prepared.study.ask()  # a worker that started a trial, reported once, then died
    orphan.set_user_attr("reserved", 100.0)
    orphan.set_user_attr("partial_spend", {"steps": 50.0, "seconds": 3.0})
    storage.record_heartbeat(orphan._trial_id)
    assert prepared.spend().committed == 100.0  # running: its reservation counts
    time.sleep(2.5)
    run_search(prepared, store=FakeStore(), execute=FakeHarness(), progress=False)
    frozen = prepared.study.trials[orphan.number]
    assert frozen.state == TrialState.FAIL
    assert prepared.spend().per_trial[orphan.number] == 50.0
    assert 1000 <= prepared.spend().committed < 1100


def test_multi_objective_reports_a_pareto_front_without_pruning(tmp_path):
    cfg = search_config(
        tmp_path, multi_objective=True, pruner="hyperband", budget=Budget("steps", 800)
    )
    prepared = prepare_search(cfg)
    outcome = run_search(prepared, store=FakeStore(), execute=FakeHarness(), progress=False)
    assert all(t.state == TrialState.COMPLETE for t in prepared.study.trials)
    front = outcome.summary["pareto_front"]
    assert front and [row["trainable_params"] for row in front] == sorted(
        row["trainable_params"] for row in front
    )
    # Pareto: no front member is beaten on both objectives by any trial
    for row in front:
        for t in prepared.study.trials:
            assert not (t.values[0] > row["score"] and t.values[1] < row["trainable_params"])


def test_seeded_sampler_is_reproducible_and_differs_per_trial():
    def params(seed):
        study = optuna.create_study(
            sampler=TrialSeededSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
        )
        out = []
        for _ in range(4):
            trial = study.ask()
            out.append(trial.suggest_float("x", 0, 1))
            study.tell(trial, out[-1])
        return out

    assert params(3) == params(3)
    assert params(3) != params(4)
    assert len(set(params(3))) == 4


def test_tpe_is_the_default_sampler_and_is_seeded():
    from lorabench.search.study import _make_sampler

    space = build_search_space(
        "lora",
        {
            "r": {"type": "categorical", "choices": [1, 2, 4, 8, 16]},
            "train.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
        },
        config_fields=LORA_FIELDS,
    )

    def proposals(seed):
        cfg = SearchConfig(variant="lora", task="rte", budget=Budget("steps", 1000), seed=seed)
        sampler = _make_sampler(cfg, space)
        assert isinstance(sampler._for(0), optuna.samplers.TPESampler)
        study = optuna.create_study(sampler=sampler, direction="maximize")
        out = []
        for _ in range(13):  # past TPE's 10 random start-up trials, so the model proposes too
            trial = study.ask()
            params = space.suggest(trial)
            study.tell(
                trial, 0.01 * params["r"] - abs(math.log10(params["train.learning_rate"]) + 3)
            )
            out.append(params)
        return out

    assert SearchConfig(variant="lora", task="rte", budget=Budget("steps", 1)).sampler == "tpe"
    assert proposals(0) == proposals(0)
    assert proposals(0) != proposals(1)


# ------------------------------------------------------------------------------------------------
# bad input: clear errors before any training


def test_worker_with_a_different_budget_is_refused(tmp_path):
    prepare_search(search_config(tmp_path))
    with pytest.raises(
        SearchError, match=r"created with search budget steps=1000, but this worker has steps=2000"
    ):
        prepare_search(search_config(tmp_path, budget=Budget("steps", 2000)))
    with pytest.raises(SearchError, match="trial_budget"):
        prepare_search(search_config(tmp_path, trial_budget=Budget("steps", 50)))


def test_budget_smaller_than_one_trial_is_refused(tmp_path):
    with pytest.raises(SearchError, match="smaller than one trial"):
        prepare_search(search_config(tmp_path, budget=Budget("steps", 50)))


def _tiny_search(tmp_path, model_dir, budget, **overrides) -> SearchConfig:
    from pathlib import Path

    values = dict(
        variant="lora",
        task="rte",
        budget=Budget.parse(budget),
        trial_budget=Budget("steps", 4),
        train=TrainConfig(batch_size=2, eval_batch_size=4, max_length=32, eval_every=2),
        model=str(model_dir),
        data_dir=str(Path(__file__).parent / "fixtures" / "glue"),
        storage=str(tmp_path / "search.db"),
        study="probe",
        confirm_seeds=0,
        heartbeat_interval=None,
    )
    values.update(overrides)
    return SearchConfig(**values)


def test_budget_below_one_trial_in_another_unit_is_refused_before_training(tmp_path, tiny_bert_dir):
    # steps=4 trials under tokens/FLOPs/seconds budgets: the units differ, so one trial's spend
    # is estimated from the task's batches and one forward-backward pass, before any training.
    from lorabench.search.loop import STUDY_ATTR

    for budget in ("tokens=10", "flops=1000", "seconds=0.000001"):
        kind = budget.split("=")[0]
        with pytest.raises(
            SearchError,
            match=(
                rf"search budget {kind}=\S+ is smaller than one trial "
                rf"\(estimated before training: {kind}[=~]"
            ),
        ):
            prepare_search(_tiny_search(tmp_path, tiny_bert_dir, budget))
    # Refusals leave no settings in the study, so the fix (a larger budget) is accepted.
    study = optuna.load_study(
        study_name="probe/lora/rte", storage=f"sqlite:///{tmp_path / 'search.db'}"
    )
    assert study.trials == [] and STUDY_ATTR not in study.user_attrs
    prepared = prepare_search(_tiny_search(tmp_path, tiny_bert_dir, "tokens=100000"))
    assert (
        prepared.study.trials == [] and prepared.cache is not None
    )  # loaded once, for the trials too
    with pytest.raises(SearchError, match="cannot load what a trial needs"):
        prepare_search(
            _tiny_search(
                tmp_path,
                tiny_bert_dir,
                "seconds=60",
                data_dir=str(tmp_path / "no-glue"),
                study="nodata",
            )
        )


@pytest.mark.skipif(
    not hasattr(runner, "execute_run"), reason="lorabench.harness.runner is not available"
)
def test_trial_estimate_matches_what_the_harness_spends(tiny_bert_dir):
    from pathlib import Path

    from lorabench.search.probe import estimate_trial

    run_cfg = RunConfig(
        variant="lora",
        task="rte",
        seed=0,
        model=str(tiny_bert_dir),
        budget=Budget("tokens", 300),
        train=TrainConfig(batch_size=2, eval_batch_size=4, max_length=32),
        data_dir=str(Path(__file__).parent / "fixtures" / "glue"),
    )
    cache = runner.RunCache()
    steps, tokens, flops = (
        estimate_trial(run_cfg, unit, cache) for unit in ("steps", "tokens", "flops")
    )
    record = runner.execute_run(run_cfg, progress=False, cache=cache)
    assert record.status == "finished", record.error
    assert steps.exact and steps.amount == record.spent["steps"]
    assert tokens.exact and tokens.amount == record.spent["tokens"]
    assert not flops.exact and flops.amount == pytest.approx(record.spent["flops"], rel=0.1)
    assert (
        estimate_trial(
            RunConfig(**{**run_cfg.__dict__, "budget": Budget("seconds", 5)}), "steps", cache
        )
        is None
    )


def test_unreachable_storage_fails_fast_with_the_url():
    started = time.monotonic()
    with pytest.raises(
        StorageError,
        match=r"cannot reach search storage postgresql(\+\w+)?://nobody:\*\*\*@127.0.0.1:1/x",
    ):
        open_storage("postgresql://nobody:secret@127.0.0.1:1/x")
    assert time.monotonic() - started < 10


def test_empty_space_and_bad_sampler_are_refused(tmp_path):
    with pytest.raises(SearchSpaceError, match="empty"):
        prepare_search(
            search_config(
                tmp_path,
                space={"r": None, "alpha": None, "dropout": None, "train.learning_rate": None},
            )
        )
    with pytest.raises(SearchError, match="sampler 'bayes' is unknown"):
        prepare_search(search_config(tmp_path, sampler="bayes"))
    with pytest.raises(SearchSpaceError, match="cannot enumerate"):
        prepare_search(search_config(tmp_path, sampler="grid"))


def test_grid_search_walks_the_grid_once(tmp_path):
    space = {
        "r": {"type": "categorical", "choices": [2, 4, 8]},
        "alpha": None,
        "dropout": None,
        "train.learning_rate": None,
    }
    cfg = search_config(
        tmp_path,
        sampler="grid",
        space=space,
        pruner="none",
        confirm_seeds=0,
        budget=Budget("steps", 10_000),
    )
    prepared = prepare_search(cfg)
    harness = FakeHarness()
    run_search(prepared, store=FakeStore(), execute=harness, progress=False)
    assert sorted(c.variant_config["r"] for c in harness.calls) == [2, 4, 8]


# ------------------------------------------------------------------------------------------------
# the command line: bad input ends with exit code 2 and a message, before any training


def _cli(argv, capsys):
    import argparse

    from lorabench.cli import search_cmd

    parser = argparse.ArgumentParser(prog="lorabench search")
    search_cmd.add_arguments(parser)
    code = search_cmd.run(parser.parse_args(argv))
    return code, capsys.readouterr().err


def test_cli_rejects_bad_input_before_training(tmp_path, capsys):
    base = ["--variants", "lora", "--tasks", "rte", "--results", str(tmp_path / "r.db")]
    code, err = _cli([*base, "--budget", "steps=50", "--trial-budget", "steps=100"], capsys)
    assert code == 2 and "smaller than one trial" in err
    code, err = _cli(
        [*base, "--budget", "steps=500", "--storage", "postgresql://u:pw@127.0.0.1:1/db"], capsys
    )
    assert code == 2 and "cannot reach search storage" in err and "pw" not in err
    results_down = [
        "--variants",
        "lora",
        "--tasks",
        "rte",
        "--storage",
        str(tmp_path / "s.db"),
        "--budget",
        "steps=500",
    ]
    code, err = _cli([*results_down, "--results", "postgresql://u:pw@127.0.0.1:1/db"], capsys)
    assert code == 2 and "cannot use results database" in err and "pw" not in err
    code, err = _cli([*base, "--budget", "hours=3"], capsys)
    assert code == 2 and "budget kind 'hours' is unknown" in err
    config = tmp_path / "search.yaml"
    config.write_text(
        "budget: steps=500\nspace:\n  lora:\n    rank: {type: categorical, choices: [2, 4]}\n"
    )
    code, err = _cli([*base, "--config", str(config)], capsys)
    assert code == 2 and "'rank' is neither a field" in err
    config.write_text("budget: steps=500\nspaces: {}\n")
    code, err = _cli([*base, "--config", str(config)], capsys)
    assert code == 2 and "unknown key(s) ['spaces']" in err
    code, err = _cli(["--tasks", "rte", "--budget", "steps=500"], capsys)
    assert code == 2 and "no variants given" in err
    if (tmp_path / "r.db").exists():  # no study was created by any of the refused commands
        assert optuna.get_all_study_names(f"sqlite:///{tmp_path / 'r.db'}") == []


def test_cli_show_space_prints_the_merged_spaces_without_a_budget(tmp_path, capsys):
    import yaml

    config = tmp_path / "search.yaml"
    config.write_text(
        "space:\n  lora: {dropout: null, alpha: 16, r: {type: categorical, choices: [2, 4]}}\n"
    )
    import argparse

    from lorabench.cli import search_cmd

    parser = argparse.ArgumentParser(prog="lorabench search")
    search_cmd.add_arguments(parser)
    code = search_cmd.run(
        parser.parse_args(["--variants", "lora,adalora", "--config", str(config), "--show-space"])
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    shown = yaml.safe_load(captured.out)
    assert shown["lora"]["params"]["r"] == {"type": "categorical", "choices": [2, 4]}
    assert "dropout" not in shown["lora"]["params"] and shown["lora"]["fixed"] == {"alpha": 16}
    assert (
        shown["adalora"]["params"]["target_r"]["high"] == "r"
    )  # conditional bound, declared by AdaLoRA


def test_cli_variants_may_pick_some_of_a_configs_variants(tmp_path):
    """A config's spaces may name every variant the config lists; --variants runs a subset.
    A space for a variant listed nowhere is still refused, naming it."""
    import argparse

    from lorabench.cli import search_cmd
    from lorabench.harness.config import BenchmarkConfigError

    config = tmp_path / "search.yaml"
    config.write_text(
        "variants: [lora, dora]\nbudget: steps=400\n"
        "space:\n  lora: {r: {type: categorical, choices: [2, 4]}}\n  dora: {r: null}\n"
    )
    parser = argparse.ArgumentParser(prog="lorabench search")
    search_cmd.add_arguments(parser)
    argv = ["--config", str(config), "--tasks", "rte", "--variants", "lora"]
    (cfg,) = search_cmd._search_configs(search_cmd._settings(parser.parse_args(argv)))
    assert cfg.variant == "lora" and cfg.space == {"r": {"type": "categorical", "choices": [2, 4]}}

    config.write_text("budget: steps=400\nspace:\n  vera: {r: null}\n")
    with pytest.raises(BenchmarkConfigError, match=r"names variant\(s\) \['vera'\] not in"):
        search_cmd._search_configs(search_cmd._settings(parser.parse_args(argv)))


def test_journal_storage_runs_and_resumes(tmp_path):
    cfg = search_config(
        tmp_path,
        storage=f"journal:{tmp_path / 'search.journal'}",
        pruner="none",
        confirm_seeds=0,
        budget=Budget("steps", 300),
    )
    prepared = prepare_search(cfg)
    run_search(prepared, store=FakeStore(), execute=FakeHarness(), progress=False)
    assert len(prepared.study.trials) == 3
    again = prepare_search(
        search_config(
            tmp_path,
            storage=f"journal:{tmp_path / 'search.journal'}",
            pruner="none",
            confirm_seeds=0,
            budget=Budget("steps", 300),
        )
    )
    assert len(again.study.trials) == 3 and again.spend().exhausted(Budget("steps", 300))


# ------------------------------------------------------------------------------------------------
# end to end: the real harness on a tiny random BERT and the tiny RTE fixture


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    import transformers

    from lorabench.models import packaged_model_path

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(packaged_model_path()))
    tokenizer.save_pretrained(folder)
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.mark.skipif(
    not hasattr(runner, "execute_run"), reason="lorabench.harness.runner is not available"
)
def test_search_end_to_end_tiny(tmp_path, tiny_bert_dir):
    from pathlib import Path

    store_mod = pytest.importorskip("lorabench.results.store")
    cfg = SearchConfig(
        variant="lora",
        task="rte",
        budget=Budget("steps", 12),
        trial_budget=Budget("steps", 4),
        train=TrainConfig(batch_size=2, eval_batch_size=4, max_length=32, eval_every=2),
        model=str(tiny_bert_dir),
        data_dir=str(Path(__file__).parent / "fixtures" / "glue"),
        space={"r": {"type": "categorical", "choices": [1, 2, 4]}, "alpha": None, "dropout": None},
        storage=str(tmp_path / "search.db"),
        study="e2e",
        confirm_seeds=2,
    )
    results = str(tmp_path / "results.db")
    outcome = run_search(prepare_search(cfg), results=results, progress=False)
    records = store_mod.ResultStore(results).records()
    trials = [r for r in records if (r.search or {}).get("role") == "trial"]
    confirm = [r for r in records if (r.search or {}).get("role") == "confirm"]
    assert trials and all(r.search["study"] == "e2e/lora/rte" for r in trials)
    assert sorted(r.seed for r in confirm) == [1, 2]
    assert 12 <= outcome.spend.committed < 12 + 4
    (summary,) = load_search_summaries(results)
    assert summary["best_rank"] in (1, 2, 4)
    assert {row["rank"] for row in summary["score_vs_rank"] if row["state"] == "COMPLETE"} <= {
        1,
        2,
        4,
    }
