"""Hyper-parameter (rank) search with Optuna under an equal compute budget per variant and task.

One Optuna study per variant x task. Trials run through the harness
(:func:`lorabench.harness.runner.execute_run`) and are stored as ordinary run records tagged with
their study and trial. The search stops when the study's *total* spend (every trial, pruned and
failed ones included) reaches the search budget, so a slower variant gets fewer trials, as on a
real GPU bill (see :mod:`lorabench.search.budget` for the accounting and its guarantee
with parallel workers). Afterwards the best configuration is re-run on fresh seeds (role
``confirm``); those runs are what reports compare. A summary per study (best rank, score vs rank
of every trial, parameter importances, Pareto front) goes to the results database
(:mod:`lorabench.search.summary`).

Typical use::

    prepared = [prepare_search(cfg) for cfg in configs]  # every check before any training
    for p in prepared:
        outcome = run_search(p, results="results.db")
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from lorabench.harness.config import BenchmarkConfigError, Budget, RunConfig, TrainConfig
from lorabench.results.records import RunRecord
from lorabench.search.budget import (
    PARTIAL_ATTR,
    RESERVED_ATTR,
    SPEND_ATTR,
    StudySpend,
    estimate_trial_spend,
    spend_from_record_spent,
    study_spend,
)
from lorabench.search.probe import estimate_trial
from lorabench.search.space import SearchSpace, build_search_space, split_params
from lorabench.search.storage import database_url, open_storage, redact
from lorabench.search.summary import (
    load_search_summaries,
    param_importances,
    save_search_summary,
    trial_rows,
)

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("hyperband", "sha", "median", "none")
STUDY_ATTR = "lorabench_search"  # study user attribute: the settings every worker must share
DEFAULT_STUDY_PREFIX = "lorabench"
# A search whose trials keep failing (a broken config, a crashing runner) stops instead of
# burning its budget on nothing; a search that only re-proposes finished configs has converged.
MAX_CONSECUTIVE_DUPLICATES = 25
# A measured (not exact) estimate of one trial refuses a budget only below this share of it:
# sampled ranks change a trial's FLOPs and seconds a little from the probed default config.
MEASURED_ESTIMATE_SLACK = 0.8
# Trial attributes a duplicate trial copies from its finished twin.
RESULT_ATTRS = ("score", "rank", "final_rank", "rank_scores", "trainable_params")

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "PreparedSearch",
    "SearchConfig",
    "SearchError",
    "SearchOutcome",
    "TrialSeededSampler",
    "confirm_best",
    "load_search_summaries",
    "prepare_search",
    "run_search",
    "summarize_study",
]


class SearchError(BenchmarkConfigError):
    """A search cannot start or cannot go on; the message says why and what to change."""


class TrialFailed(Exception):
    """A trial's run failed; the study records it as FAIL and the search goes on."""


class RecordStore(Protocol):
    """What a search needs from :class:`lorabench.results.store.ResultStore`."""

    def add(self, record: RunRecord) -> Any: ...

    def get(self, run_id: str) -> RunRecord | None: ...


ExecuteRun = Callable[..., RunRecord]
# The one place the default budget of one trial is written (the CLI's help and parsing use it).
DEFAULT_TRIAL_BUDGET = Budget("steps", 200)


@dataclass
class SearchConfig:
    """One study: a variant on a task under a search budget.

    ``budget`` is the total spend of all trials; ``trial_budget`` is the training budget of each
    trial (and of each confirmation run). ``space`` overrides the variant's declared search space
    (see :mod:`lorabench.search.space`). ``study`` is a prefix: the study is named
    ``{study}/{variant}/{task}`` so one command can run several studies.
    """

    variant: str
    task: str
    budget: Budget
    trial_budget: Budget = DEFAULT_TRIAL_BUDGET
    train: TrainConfig = field(default_factory=TrainConfig)
    model: str | None = None
    data_dir: str | None = None
    variant_config: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] = field(default_factory=dict)
    sampler: str = "tpe"
    pruner: str = "hyperband"
    multi_objective: bool = False
    seed: int = 0
    confirm_seeds: int = 3
    storage: str = "runs/results.db"
    study: str | None = None
    heartbeat_interval: int | None = 60
    grace_period: int | None = None
    max_consecutive_failures: int = 5

    @property
    def study_name(self) -> str:
        return f"{self.study or DEFAULT_STUDY_PREFIX}/{self.variant}/{self.task}"

    def validate(self) -> None:
        self.budget = Budget.parse(self.budget)
        self.trial_budget = Budget.parse(self.trial_budget)
        self.train.validate()
        if self.sampler not in SAMPLERS:
            raise SearchError(f"sampler {self.sampler!r} is unknown; use one of {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise SearchError(f"pruner {self.pruner!r} is unknown; use one of {', '.join(PRUNERS)}")
        for name in ("confirm_seeds", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SearchError(f"{name}={value!r} must be an integer >= 0")
        if not isinstance(self.max_consecutive_failures, int) or self.max_consecutive_failures < 1:
            raise SearchError(f"max_consecutive_failures={self.max_consecutive_failures!r} must be >= 1")
        if self.heartbeat_interval is not None and self.heartbeat_interval < 1:
            raise SearchError(f"heartbeat_interval={self.heartbeat_interval!r} must be >= 1 second (or None)")

    @property
    def pruning(self) -> bool:
        return self.pruner != "none" and not self.multi_objective


@dataclass
class PreparedSearch:
    """A checked search, its space and its (created or joined) study; nothing trained yet."""

    config: SearchConfig
    space: SearchSpace
    study: optuna.Study
    higher_is_better: bool
    base_values: dict[str, Any]  # fixed values conditions and bounds may refer to
    cache: Any = None  # a runner RunCache: task data and base model, loaded once for all trials

    @property
    def unit(self) -> str:
        return self.config.budget.kind

    def spend(self) -> StudySpend:
        trials = self.study.get_trials(deepcopy=False)
        default = estimate_trial_spend(self.config.trial_budget, self.unit, trials) or 0.0
        return study_spend(trials, self.unit, default)


@dataclass
class SearchOutcome:
    """What one study's search produced."""

    study: str
    spend: StudySpend
    best_trial: int | None
    best_params: dict[str, Any]
    best_score: float | None
    confirm_records: list[RunRecord]
    summary: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# preparation: every check that can fail runs here, before any training


def prepare_search(cfg: SearchConfig, *, cache: Any = None, probe: bool = True) -> PreparedSearch:
    """Validates ``cfg``, builds its space, opens the storage and creates or joins the study.

    Raises :class:`SearchError` (or another :class:`BenchmarkConfigError`) for an empty or invalid
    space, a budget smaller than one trial, an unreachable storage, or a study created with other
    settings (a different budget, say) than this worker's.

    When the search and trial budgets are in different units and no trial has finished yet,
    ``probe`` estimates one trial's spend from the task's batches and a forward-backward pass
    (:mod:`lorabench.search.probe`, no training), loading the task and the model into
    ``cache`` (a :class:`~lorabench.harness.prepared.RunCache`, shared with the trials).
    """
    from lorabench.tasks import get_task
    from lorabench.variants import VARIANTS

    cfg.validate()
    variant_cls = VARIANTS.get(cfg.variant)
    config_fields = variant_cls.config_class.field_names()
    space = variant_search_space(cfg.variant, cfg.space)
    unknown = sorted(set(cfg.variant_config) - config_fields)
    if unknown:
        raise SearchError(f"variant_config of {cfg.variant!r} has unknown field(s) {unknown}; valid: {sorted(config_fields)}")
    defaults = variant_cls.config_class().to_dict()
    base_values = {**defaults, **cfg.variant_config}
    base_values.update({f"train.{k}": v for k, v in cfg.train.to_dict().items()})
    if cfg.sampler == "grid":
        space.grid()  # raises when the space is not enumerable
    if cfg.pruning and cfg.train.eval_every is None:
        if cfg.trial_budget.kind != "steps":
            raise SearchError(
                f"pruner {cfg.pruner!r} needs intermediate evaluations, but train.eval_every is unset "
                f"and the trial budget {cfg.trial_budget} is not in steps: set train.eval_every in the "
                "YAML config or use --pruner none"
            )
        # Four evaluations per trial give successive halving its rungs.
        cfg.train = dataclasses.replace(cfg.train, eval_every=max(1, int(cfg.trial_budget.limit) // 4))
    task = get_task(cfg.task)
    higher_is_better = task.higher_is_better
    _check_budget_fits_a_trial(cfg, [])  # before the storage is touched

    storage = open_storage(cfg.storage, heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.grace_period)
    score_direction = "maximize" if higher_is_better else "minimize"
    directions = [score_direction, "minimize"] if cfg.multi_objective else [score_direction]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(
            storage=storage,
            study_name=cfg.study_name,
            sampler=_make_sampler(cfg, space),
            pruner=_make_pruner(cfg),
            directions=directions,
            load_if_exists=True,
        )
    settings = _study_settings(cfg, space, directions)
    if STUDY_ATTR in study.user_attrs:
        _claim_study_settings(study, settings)  # joining: a different budget is the first thing to say
    trials = study.get_trials(deepcopy=False)
    _check_budget_fits_a_trial(cfg, trials)  # with observed trials
    if probe and estimate_trial_spend(cfg.trial_budget, cfg.budget.kind, trials) is None:
        if cache is None:
            from lorabench.harness.prepared import RunCache

            cache = RunCache()
        _check_budget_fits_an_estimated_trial(cfg, _run_config(cfg, dict(space.fixed)), cache)
    # Claimed only now, so that a refused budget leaves no settings behind to contradict the fix.
    _claim_study_settings(study, settings)
    return PreparedSearch(cfg, space, study, higher_is_better, base_values, cache)


def variant_search_space(variant: str, overrides: Mapping[str, Any] | None = None) -> SearchSpace:
    """``variant``'s declared search space merged with ``overrides`` (its YAML ``space:`` entry),
    validated against the variant's config fields: what a search of it samples."""
    from lorabench.variants import VARIANTS

    variant_cls = VARIANTS.get(variant)
    return build_search_space(
        variant, variant_cls.search_space(), overrides, config_fields=variant_cls.config_class.field_names()
    )


def _unresolved(cfg: RunConfig) -> RunConfig:
    """Resolution for an injected harness (tests' fakes read no data): the config as it is."""
    return cfg


def _run_config(cfg: SearchConfig, params: Mapping[str, Any]) -> RunConfig:
    """The harness run of one trial with sampled (or fixed) parameter values."""
    variant_over, train_over = split_params(params)
    return RunConfig(
        variant=cfg.variant,
        task=cfg.task,
        seed=cfg.seed,
        variant_config={**cfg.variant_config, **variant_over},
        model=cfg.model,
        budget=cfg.trial_budget,
        train=TrainConfig.from_dict({**cfg.train.to_dict(), **train_over}),
        data_dir=cfg.data_dir,
        tag=f"search:{cfg.study_name}",
    )


def _study_settings(cfg: SearchConfig, space: SearchSpace, directions: list[str]) -> dict[str, Any]:
    """What every worker of one study must agree on (saved in the study at creation)."""
    return {
        "variant": cfg.variant,
        "task": cfg.task,
        "model": cfg.model,
        "budget": str(cfg.budget),
        "trial_budget": str(cfg.trial_budget),
        "mode": "pareto" if cfg.multi_objective else "score",
        "directions": directions,
        "seed": cfg.seed,
        "space": space.to_dict(),
        "variant_config": cfg.variant_config,
        "train": cfg.train.to_dict(),
    }


def _claim_study_settings(study: optuna.Study, settings: dict[str, Any]) -> None:
    """Saves the settings in a new study, or checks them against the study's.

    Two workers creating one study at the same instant may both write; each re-reads after its
    write, so the one whose settings lost sees the difference and stops.
    """
    stored = study.user_attrs.get(STUDY_ATTR)
    if stored is None:
        study.set_user_attr(STUDY_ATTR, settings)
        stored = optuna.load_study(study_name=study.study_name, storage=study._storage).user_attrs[STUDY_ATTR]
    normalized = _roundtrip(settings)
    if stored == normalized:
        return
    if stored.get("budget") != normalized["budget"]:
        raise SearchError(
            f"study {study.study_name!r} was created with search budget {stored.get('budget')}, but this "
            f"worker has {normalized['budget']}: every worker of one study must share one budget; give "
            "the same --budget, or a new --study name for a new search"
        )
    diffs = [
        f"{key}: study has {stored.get(key)!r}, this worker {normalized.get(key)!r}"
        for key in sorted(set(stored) | set(normalized))
        if stored.get(key) != normalized.get(key)
    ]
    raise SearchError(
        f"study {study.study_name!r} was created with other settings than this worker's ("
        + "; ".join(diffs)
        + "): re-run with the study's settings to resume or join it, or give a new --study name"
    )


def _roundtrip(value: Any) -> Any:
    """The value as storage returns it (JSON: tuples become lists)."""
    import json

    return json.loads(json.dumps(value, default=str))


def _check_budget_fits_an_estimated_trial(cfg: SearchConfig, run_cfg: RunConfig, cache: Any) -> None:
    try:
        estimate = estimate_trial(run_cfg, cfg.budget.kind, cache)
    except Exception as exc:  # loading the task or model: every trial would fail the same way
        raise SearchError(
            f"study {cfg.study_name!r}: cannot load what a trial needs ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}); check --tasks, "
            "--data-dir and --model"
        ) from exc
    if estimate is None:
        return
    threshold = estimate.amount if estimate.exact else estimate.amount * MEASURED_ESTIMATE_SLACK
    if cfg.budget.limit < threshold:
        raise SearchError(
            f"search budget {cfg.budget} is smaller than one trial (estimated before training: "
            f"{estimate.describe()}; trial budget {cfg.trial_budget}): raise --budget or lower --trial-budget"
        )


def _check_budget_fits_a_trial(cfg: SearchConfig, trials: list[FrozenTrial]) -> None:
    estimate = estimate_trial_spend(cfg.trial_budget, cfg.budget.kind, trials)
    if estimate is not None and cfg.budget.limit < estimate:
        raise SearchError(
            f"search budget {cfg.budget} is smaller than one trial ({cfg.budget.kind}={estimate:g} "
            f"with trial budget {cfg.trial_budget}): raise --budget or lower --trial-budget"
        )


# ---------------------------------------------------------------------------------------------
# samplers and pruners


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Delegates each trial to a fresh inner sampler seeded with ``seed + trial.number``.

    Why: workers of one study are started with the same ``--seed``; one seeded sampler per worker
    would make them propose identical configurations. Seeding by trial number keeps a
    single-worker search reproducible and parallel workers distinct. Samplers keep their history
    in the storage, so a fresh instance per trial loses nothing.
    """

    def __init__(self, factory: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._factory = factory
        self._seed = seed
        self._inner: dict[int, optuna.samplers.BaseSampler] = {}

    def _for(self, number: int) -> optuna.samplers.BaseSampler:
        if number not in self._inner:
            self._inner[number] = self._factory(self._seed + number)
        return self._inner[number]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict:
        return self._for(trial.number).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict) -> dict:
        return self._for(trial.number).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any) -> Any:
        return self._for(trial.number).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial.number).before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        inner = self._inner.pop(trial.number, None) or self._factory(self._seed + trial.number)
        inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:  # seeds are derived from trial numbers; nothing to reseed
        pass


def _make_sampler(cfg: SearchConfig, space: SearchSpace) -> optuna.samplers.BaseSampler:
    if cfg.sampler == "grid":
        # Not per-trial seeded: the seed fixes the grid's order, which every worker must share;
        # the grid ids already in the storage keep workers off each other's points.
        return optuna.samplers.GridSampler(space.grid(), seed=cfg.seed)
    if cfg.sampler == "random":
        return TrialSeededSampler(lambda seed: optuna.samplers.RandomSampler(seed=seed), cfg.seed)

    def tpe(seed: int) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # multivariate+group model conditional spaces jointly; constant_liar keeps parallel
            # workers from sampling next to each other's running trials.
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)

    return TrialSeededSampler(tpe, cfg.seed)


def _make_pruner(cfg: SearchConfig) -> optuna.pruners.BasePruner:
    if not cfg.pruning:
        return optuna.pruners.NopPruner()
    first_eval = cfg.train.eval_every or 1
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=first_eval)
    if cfg.pruner == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first_eval, reduction_factor=3)
    max_resource: int | str = int(cfg.trial_budget.limit) if cfg.trial_budget.kind == "steps" else "auto"
    return optuna.pruners.HyperbandPruner(min_resource=first_eval, max_resource=max_resource, reduction_factor=3)


# ---------------------------------------------------------------------------------------------
# the search loop


def run_search(
    prepared: PreparedSearch,
    *,
    results: str | None = None,
    store: RecordStore | None = None,
    execute: ExecuteRun | None = None,
    progress: bool = True,
    confirm: bool = True,
) -> SearchOutcome:
    """Runs trials until the study's budget is spent, confirms the best, saves the summary.

    Re-running continues the study (finished trials and their spend stay). ``results`` is the
    results database (path or URL) for run records and the summary; ``store`` and ``execute``
    default to :class:`~lorabench.results.store.ResultStore` on ``results`` and
    :func:`~lorabench.harness.runner.execute_run` (tests inject fakes).
    """
    if store is None:
        from lorabench.results.store import ResultStore

        if results is None:
            raise SearchError("run_search needs results= (a path or URL) or a store")
        store = ResultStore(database_url(results))
    resolve: Callable[[RunConfig], RunConfig] = _unresolved
    if execute is None:
        from lorabench.harness.runner import RunCache, execute_run

        # One cache for every trial and confirmation run: the task is loaded and tokenised and
        # the model read from disk once per process, not once per trial.
        if prepared.cache is None:
            prepared.cache = RunCache()
        execute = functools.partial(execute_run, cache=prepared.cache)
        resolve = prepared.cache.resolve
    cfg, study = prepared.config, prepared.study
    loop = _SearchLoop(prepared, store, execute, progress, resolve)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # trials of killed workers: failed, spend kept
    spend = prepared.spend()
    if spend.exhausted(cfg.budget):
        _say(progress, f"[{cfg.study_name}] budget {cfg.budget} already spent ({spend.committed:g}); no new trials")
    else:
        study.optimize(loop.objective, callbacks=[loop.after_trial], catch=(TrialFailed,), gc_after_trial=True)
    if loop.stop_reason:
        _say(progress, f"[{cfg.study_name}] stopped: {loop.stop_reason}")
    if loop.fatal:
        raise SearchError(loop.fatal)

    confirm_records = (
        confirm_best(prepared, store, execute, progress=progress, resolve=resolve) if confirm else []
    )
    summary = summarize_study(prepared, confirm_records)
    if results is not None:
        save_search_summary(results, summary)
    best = summary["best"] or {}
    return SearchOutcome(
        study=cfg.study_name,
        spend=prepared.spend(),
        best_trial=best.get("trial"),
        best_params=best.get("params", {}),
        best_score=best.get("score"),
        confirm_records=confirm_records,
        summary=summary,
    )


class _SearchLoop:
    """The objective and the after-trial callback of one worker's ``study.optimize``."""

    def __init__(
        self,
        prepared: PreparedSearch,
        store: RecordStore,
        execute: ExecuteRun,
        progress: bool,
        resolve: Callable[[RunConfig], RunConfig],
    ) -> None:
        self.p = prepared
        self.resolve = resolve
        self.store = store
        self.execute = execute
        self.progress = progress
        self.consecutive_failures = 0
        self.consecutive_duplicates = 0
        self.last_error: str | None = None
        self.stop_reason: str | None = None
        self.fatal: str | None = None

    # -- the objective ------------------------------------------------------------------------
    def objective(self, trial: optuna.Trial) -> float | tuple[float, float]:

        p, cfg = self.p, self.p.config
        started = time.monotonic()
        # Claim this trial's expected spend first, so other workers see the budget as taken.
        estimate = estimate_trial_spend(cfg.trial_budget, p.unit, p.study.get_trials(deepcopy=False))
        trial.set_user_attr(RESERVED_ATTR, float(estimate or 0.0))
        trial.set_user_attr("seed", cfg.seed)
        params = p.space.suggest(trial, p.base_values)
        run_cfg = _run_config(cfg, params)
        try:
            run_cfg.variant_config_object()
        except ValueError as exc:  # e.g. a target rank above the initial rank
            self._end_without_run(trial, f"invalid config: {exc}")
            raise TrialFailed(f"invalid config {run_cfg.variant_config}: {exc}") from None
        run_cfg = self.resolve(run_cfg)  # the task data is loaded once per process (cached)
        trial.set_user_attr("run_id", run_cfg.run_id)
        trial.set_user_attr("run_config", run_cfg.to_dict())

        duplicate = self._finished_twin(trial, run_cfg.run_id)
        if duplicate is not None:
            # Same config, same seed: the result is known. Re-running would bill the budget for
            # nothing; tell the sampler the known value instead.
            self._end_without_run(trial, None)
            trial.set_user_attr("duplicate_of", duplicate.number)
            for key in RESULT_ATTRS:
                trial.set_user_attr(key, duplicate.user_attrs.get(key))
            return duplicate.values[0] if len(duplicate.values) == 1 else tuple(duplicate.values)  # type: ignore[return-value]

        def on_eval(step: int, metrics: Mapping[str, float], score: float | None) -> None:
            trial.set_user_attr(PARTIAL_ATTR, {"steps": float(step), "seconds": time.monotonic() - started})
            if not cfg.pruning or score is None or not math.isfinite(score):
                return
            trial.report(float(score), step)
            if trial.should_prune():
                from lorabench.harness.runner import RunPruned

                raise RunPruned(f"pruned by {cfg.pruner} at step {step} (score {score:.4g})")

        try:
            record = self.execute(run_cfg, on_eval=on_eval, progress=False)
        except BaseException as exc:  # KeyboardInterrupt too: count what was spent, then re-raise
            partial = dict(trial.user_attrs.get(PARTIAL_ATTR) or {"steps": 0.0})
            partial["seconds"] = time.monotonic() - started
            trial.set_user_attr(PARTIAL_ATTR, partial)
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
            if isinstance(exc, Exception):
                raise TrialFailed(f"run raised {type(exc).__name__}: {exc}") from exc
            raise

        record.search = {
            "study": cfg.study_name,
            "trial": trial.number,
            "role": "trial",
            "seed": cfg.seed,
            "params": params,
            "storage": redact(str(cfg.storage)),
        }
        self.store.add(record)
        trial.set_user_attr(SPEND_ATTR, spend_from_record_spent(record.spent))
        trial.set_user_attr("status", record.status)
        trial.set_user_attr("rank", record.rank)
        trial.set_user_attr("trainable_params", record.trainable_params)
        for key, value in _rank_results(record).items():
            trial.set_user_attr(key, value)
        if record.status == "pruned":
            raise optuna.TrialPruned(f"pruned at step {record.spent.get('steps')}")
        if record.status != "finished" or record.score is None or not math.isfinite(record.score):
            trial.set_user_attr("error", (record.error or f"no score (status {record.status})")[:2000])
            raise TrialFailed(record.error or f"run {record.run_id} ended {record.status} without a score")
        trial.set_user_attr("score", float(record.score))
        if cfg.multi_objective:
            return float(record.score), float(record.trainable_params)
        return float(record.score)

    def _end_without_run(self, trial: optuna.Trial, error: str | None) -> None:
        trial.set_user_attr(SPEND_ATTR, {"steps": 0.0, "tokens": 0.0, "seconds": 0.0, "flops": 0.0})
        if error:
            trial.set_user_attr("error", error[:2000])

    def _finished_twin(self, trial: optuna.Trial, run_id: str) -> FrozenTrial | None:
        for other in self.p.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if other.number != trial.number and other.user_attrs.get("run_id") == run_id:
                return other
        return None

    # -- after each trial ---------------------------------------------------------------------
    def after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        cfg = self.p.config
        spend = self.p.spend()
        if trial.state == TrialState.FAIL:
            self.consecutive_failures += 1
            self.last_error = trial.user_attrs.get("error")
        else:
            self.consecutive_failures = 0
        self.consecutive_duplicates = self.consecutive_duplicates + 1 if "duplicate_of" in trial.user_attrs else 0
        score = trial.user_attrs.get("score")
        shown = f"score={score:.4f}" if isinstance(score, float) else ""
        if "duplicate_of" in trial.user_attrs:
            shown += f" (same config as trial {trial.user_attrs['duplicate_of']})"
        _say(
            self.progress,
            f"[{cfg.study_name}] trial {trial.number} {trial.state.name.lower()} {shown} "
            f"params={dict(trial.params)} spent {spend.committed:g}/{cfg.budget.limit:g} {cfg.budget.kind}",
        )
        if spend.exhausted(cfg.budget):
            self.stop_reason = f"budget {cfg.budget} spent ({spend.committed:g} over {sum(spend.states.values())} trials)"
            study.stop()
        elif self.consecutive_failures >= cfg.max_consecutive_failures:
            self.fatal = (
                f"{self.consecutive_failures} trials in a row failed in study {cfg.study_name!r}; last "
                f"error: {self.last_error}. Fix the cause and re-run the same command to resume."
            )
            study.stop()
        elif self.consecutive_duplicates >= MAX_CONSECUTIVE_DUPLICATES:
            self.stop_reason = f"the sampler proposed {self.consecutive_duplicates} finished configs in a row (space exhausted)"
            study.stop()


def _rank_results(record: RunRecord) -> dict[str, Any]:
    """What a trial adds to the score-vs-rank data beyond its nominal rank and score.

    ``final_rank``: the mean final rank over the adapted matrices (AdaLoRA prunes below its
    initial rank). ``rank_scores``: the primary metric at every rank one training evaluated
    (DyLoRA), keyed by rank as a string (the storage keeps JSON).
    """
    out: dict[str, Any] = {}
    if record.ranks:
        out["final_rank"] = statistics.fmean(float(r) for r in record.ranks.values())
    if record.rank_scores and record.primary_metric:
        out["rank_scores"] = {
            str(rank): metrics.get(record.primary_metric) for rank, metrics in sorted(record.rank_scores.items(), key=lambda item: int(item[0]))
        }
    return out


# ---------------------------------------------------------------------------------------------
# after the search: confirmation runs and the summary


def best_trial(prepared: PreparedSearch) -> FrozenTrial | None:
    """The best finished trial (multi-objective: the Pareto-optimal trial with the best score)."""
    study = prepared.study
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    if prepared.config.multi_objective:
        front = study.best_trials
        sign = 1.0 if prepared.higher_is_better else -1.0
        return max(front, key=lambda t: (sign * t.values[0], -t.values[1], -t.number))
    return study.best_trial


def confirm_best(
    prepared: PreparedSearch,
    store: RecordStore,
    execute: ExecuteRun,
    *,
    progress: bool = True,
    resolve: Callable[[RunConfig], RunConfig] | None = None,
) -> list[RunRecord]:
    """Re-runs the best configuration on ``confirm_seeds`` fresh seeds (never the search seed).

    Seeds are ``seed + 1 ... seed + N``. Runs already finished in the store are reused, so a
    re-run or a second worker does not train them again.
    """
    resolve = resolve or _unresolved
    cfg = prepared.config
    best = best_trial(prepared)
    if best is None or cfg.confirm_seeds == 0:
        return []
    base = RunConfig.from_dict(best.user_attrs["run_config"])
    records: list[RunRecord] = []
    for seed in range(cfg.seed + 1, cfg.seed + 1 + cfg.confirm_seeds):
        # Resolved again: a generated task's data depends on the seed.
        run_cfg = resolve(
            dataclasses.replace(
                base, seed=seed, tag=f"search:{cfg.study_name}:confirm", data_fingerprint=""
            )
        )
        existing = store.get(run_cfg.run_id)
        if existing is not None and existing.status == "finished":
            records.append(existing)
            continue
        _say(progress, f"[{cfg.study_name}] confirming trial {best.number} on seed {seed}")
        record = execute(run_cfg, progress=False)
        record.search = {
            "study": cfg.study_name,
            "trial": best.number,
            "role": "confirm",
            "seed": seed,
            "params": dict(best.params),
            "storage": redact(str(cfg.storage)),
        }
        store.add(record)
        records.append(record)
    return records


def summarize_study(prepared: PreparedSearch, confirm_records: list[RunRecord] | None = None) -> dict[str, Any]:
    """The JSON summary of one study that report generators read (see search_summary)."""
    cfg, study = prepared.config, prepared.study
    trials = study.get_trials(deepcopy=True)
    spend = prepared.spend()
    best = best_trial(prepared)
    target = (lambda t: t.values[0]) if cfg.multi_objective else None
    summary: dict[str, Any] = {
        "study": cfg.study_name,
        "variant": cfg.variant,
        "task": cfg.task,
        "model": cfg.model,
        "mode": "pareto" if cfg.multi_objective else "score",
        "higher_is_better": prepared.higher_is_better,
        "sampler": cfg.sampler,
        "pruner": cfg.pruner if cfg.pruning else "none",
        "budget": cfg.budget.to_dict(),
        "trial_budget": cfg.trial_budget.to_dict(),
        "spent": spend.committed,
        "states": dict(spend.states),
        "n_trials": len(trials),
        "space": prepared.space.to_dict(),
        "best": None,
        "best_rank": None,
        "score_vs_rank": trial_rows(trials),
        "importances": param_importances(study, target=target),
        "pareto_front": None,
        "confirm": None,
    }
    if best is not None:
        summary["best"] = {
            "trial": best.number,
            "params": dict(best.params),
            "score": best.user_attrs.get("score", best.values[0]),
            "rank": best.user_attrs.get("rank"),
            "trainable_params": best.user_attrs.get("trainable_params"),
            "run_id": best.user_attrs.get("run_id"),
            "run_config": best.user_attrs.get("run_config"),
        }
        summary["best_rank"] = best.user_attrs.get("rank")
    if cfg.multi_objective:
        summary["pareto_front"] = sorted(
            (
                {
                    "trial": t.number,
                    "score": t.values[0],
                    "trainable_params": int(t.values[1]),
                    "rank": t.user_attrs.get("rank"),
                    "params": dict(t.params),
                }
                for t in study.best_trials
            ),
            key=lambda row: row["trainable_params"],
        )
    if confirm_records:
        scores = [r.score for r in confirm_records if r.score is not None]
        summary["confirm"] = {
            "trial": best.number if best else None,
            "runs": [{"seed": r.seed, "run_id": r.run_id, "status": r.status, "score": r.score} for r in confirm_records],
            "mean": statistics.fmean(scores) if scores else None,
            "std": statistics.stdev(scores) if len(scores) > 1 else None,
        }
    return summary


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, file=sys.stderr, flush=True)
