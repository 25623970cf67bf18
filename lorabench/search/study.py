"""A search study's settings and its preparation: everything checked before any training.

:class:`SearchConfig` is one study (a variant x task under a total budget); :func:`prepare_search`
validates it, builds the search space, opens or joins the Optuna study (refusing a study made
with other settings) and checks the budget fits at least one trial. The sampler and pruner are
built here too. :mod:`lorabench.search.loop` runs the trials; :mod:`lorabench.search.confirm`
re-runs the best on fresh seeds and summarises the study.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from lorabench.harness.config import BenchmarkConfigError, Budget, RunConfig, TrainConfig
from lorabench.harness.suite import RECIPE_CHOICES, VariantEntry
from lorabench.results.records import RunRecord
from lorabench.search.budget import (
    StudySpend,
    estimate_trial_spend,
    study_spend,
)
from lorabench.search.probe import estimate_trial
from lorabench.search.space import SearchSpace, build_search_space, split_params
from lorabench.search.storage import open_storage

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
# The second objective of a multi-objective study (what the loop returns beside the score).
PARAMS_OBJECTIVE = "trainable_params"


class SearchError(BenchmarkConfigError):
    """A search cannot start or cannot go on; the message says why and what to change."""


class TrialFailed(Exception):
    """A trial's run failed; the study records it as FAIL and the search goes on."""


class RecordStore(Protocol):
    """What a search needs from :class:`lorabench.results.store.ResultStore`."""

    def add(self, record: RunRecord) -> Any:
        """Stores ``record`` (replacing one with its run_id, unless that one finished)."""
        ...

    def get(self, run_id: str) -> RunRecord | None:
        """The stored record of ``run_id``, or None."""
        ...


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
    # "paper": each trial applies the variant's paper recipe under the sampled and fixed values,
    # as a suite's runs do; "none": the settings as written.
    recipes: str = "paper"

    @property
    def study_name(self) -> str:
        """``{study}/{variant}/{task}``, the study prefix defaulting to ``lorabench``."""
        return f"{self.study or DEFAULT_STUDY_PREFIX}/{self.variant}/{self.task}"

    def validate(self) -> None:
        """Parses the budgets (``"steps=200"`` becomes a :class:`Budget`) and checks every
        setting; the error (a :class:`BenchmarkConfigError`) names the setting and what it must
        be."""
        self.budget = Budget.parse(self.budget)
        self.trial_budget = Budget.parse(self.trial_budget)
        self.train.validate()
        if self.recipes not in RECIPE_CHOICES:
            raise SearchError(
                f"recipes={self.recipes!r} must be one of {', '.join(RECIPE_CHOICES)} (paper: "
                "each variant's paper recipe under the values set or sampled; none: as written)"
            )
        if self.sampler not in SAMPLERS:
            raise SearchError(
                f"sampler {self.sampler!r} is unknown; use one of {', '.join(SAMPLERS)}"
            )
        if self.pruner not in PRUNERS:
            raise SearchError(f"pruner {self.pruner!r} is unknown; use one of {', '.join(PRUNERS)}")
        for name in ("confirm_seeds", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SearchError(f"{name}={value!r} must be an integer >= 0")
        if not isinstance(self.max_consecutive_failures, int) or self.max_consecutive_failures < 1:
            raise SearchError(
                f"max_consecutive_failures={self.max_consecutive_failures!r} must be >= 1"
            )
        if self.heartbeat_interval is not None and self.heartbeat_interval < 1:
            raise SearchError(
                f"heartbeat_interval={self.heartbeat_interval!r} must be >= 1 second (or None)"
            )

    @property
    def pruning(self) -> bool:
        """Whether trials may be pruned: a pruner is set and the study has one objective."""
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
        """The search budget's unit: ``steps``, ``tokens``, ``seconds`` or ``flops``."""
        return self.config.budget.kind

    def spend(self) -> StudySpend:
        """The study's spend so far, read from the storage (every worker's trials); a running
        trial that reserved nothing counts as one estimated trial (0 before any estimate)."""
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
    config_class = variant_cls.config_class
    space = variant_search_space(cfg.variant, cfg.space)
    unknown = sorted(set(cfg.variant_config) - config_class.input_names())
    if unknown:
        raise SearchError(
            f"variant_config of {cfg.variant!r} has unknown field(s) {unknown}; "
            f"valid: {sorted(config_class.field_names())}"
        )
    # Legacy names (AdaLoRA's init_r) become the field they stand for, so a fixed value and a
    # sampled one cannot disagree under two names.
    try:
        cfg.variant_config = config_class.canonical_dict(cfg.variant_config)
    except ValueError as exc:
        raise SearchError(f"variant_config of {cfg.variant!r}: {exc}") from None
    defaults = variant_cls.config_class().to_dict()
    base_values = {**defaults, **cfg.variant_config}
    base_values.update({f"train.{k}": v for k, v in cfg.train.to_dict().items()})
    if cfg.sampler == "grid":
        space.grid()  # raises when the space is not enumerable
    if cfg.pruning and cfg.train.eval_every is None:
        if cfg.trial_budget.kind != "steps":
            raise SearchError(
                f"pruner {cfg.pruner!r} needs intermediate evaluations, "
                "but train.eval_every is unset "
                f"and the trial budget {cfg.trial_budget} is not in steps: "
                "set train.eval_every in the YAML config or use --pruner none"
            )
        # Four evaluations per trial give successive halving its rungs.
        cfg.train = dataclasses.replace(
            cfg.train, eval_every=max(1, int(cfg.trial_budget.limit) // 4)
        )
    task = get_task(cfg.task)
    higher_is_better = task.higher_is_better
    metric_names = [task.primary_metric, PARAMS_OBJECTIVE][: 2 if cfg.multi_objective else 1]
    _check_budget_fits_a_trial(cfg, [])  # before the storage is touched

    storage = open_storage(
        cfg.storage, heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.grace_period
    )
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
        _claim_study_settings(
            study, settings
        )  # joining: a different budget is the first thing to say
    trials = study.get_trials(deepcopy=False)
    _check_budget_fits_a_trial(cfg, trials)  # with observed trials
    # A tokens or FLOPs trial budget is planned too, even when its spend is known: below one
    # batch or implying absurdly many steps, every trial would fail the same way.
    known = estimate_trial_spend(cfg.trial_budget, cfg.budget.kind, trials) is not None
    if probe and (not known or cfg.trial_budget.kind in ("tokens", "flops")):
        if cache is None:
            from lorabench.harness.prepared import RunCache

            cache = RunCache()
        _check_budget_fits_an_estimated_trial(cfg, _run_config(cfg, dict(space.fixed)), cache)
    # Claimed only now, so that a refused budget leaves no settings behind to contradict the fix.
    _claim_study_settings(study, settings)
    name_objectives(study, metric_names)
    return PreparedSearch(cfg, space, study, higher_is_better, base_values, cache)


def variant_search_space(variant: str, overrides: Mapping[str, Any] | None = None) -> SearchSpace:
    """``variant``'s declared search space merged with ``overrides`` (its YAML ``space:`` entry),
    validated against the variant's config fields: what a search of it samples."""
    from lorabench.variants import VARIANTS

    variant_cls = VARIANTS.get(variant)
    return build_search_space(
        variant,
        variant_cls.search_space(),
        overrides,
        config_fields=variant_cls.config_class.field_names(),
    )


def _unresolved(cfg: RunConfig) -> RunConfig:
    """Resolution for an injected harness (tests' fakes read no data): the config as it is."""
    return cfg


def _run_config(cfg: SearchConfig, params: Mapping[str, Any]) -> RunConfig:
    """The harness run of one trial with sampled (or fixed) parameter values."""
    variant_over, train_over = split_params(params)
    # The trial as a suite entry: the paper recipe goes under what is fixed or sampled (a
    # sampled learning rate is used as sampled; the search's fixed rate, LoRA's, is scaled).
    from lorabench.variants import VARIANTS

    entry = VariantEntry(cfg.variant, {**cfg.variant_config, **variant_over}, dict(train_over))
    recipe = VARIANTS.get(cfg.variant).recipe if cfg.recipes == "paper" else None
    return RunConfig(
        variant=cfg.variant,
        task=cfg.task,
        seed=cfg.seed,
        variant_config=entry.variant_config(recipe),
        model=cfg.model,
        budget=cfg.trial_budget,
        train=entry.train_config(cfg.train, recipe),
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
        # Only when not the default, so studies made before recipes existed still match.
        **({"recipes": cfg.recipes} if cfg.recipes != "paper" else {}),
    }


def _claim_study_settings(study: optuna.Study, settings: dict[str, Any]) -> None:
    """Saves the settings in a new study, or checks them against the study's.

    Two workers creating one study at the same instant may both write; each re-reads after its
    write, so the one whose settings lost sees the difference and stops.
    """
    stored = study.user_attrs.get(STUDY_ATTR)
    if stored is None:
        study.set_user_attr(STUDY_ATTR, settings)
        stored = optuna.load_study(study_name=study.study_name, storage=study._storage).user_attrs[
            STUDY_ATTR
        ]
    normalized = _roundtrip(settings)
    if stored == normalized:
        return
    if stored.get("budget") != normalized["budget"]:
        raise SearchError(
            f"study {study.study_name!r} was created with search budget {stored.get('budget')}, "
            f"but this worker has {normalized['budget']}: "
            "every worker of one study must share one budget; "
            "give the same --budget, or a new --study name for a new search"
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


def name_objectives(study: optuna.Study, names: list[str]) -> None:
    """Names the study's objectives (``["accuracy"]``, ``["accuracy", "trainable_params"]``), so
    that optuna-dashboard shows "accuracy", not "Objective 0" (and ``study.trials_dataframe()``
    has ``value_accuracy``). A study that already has names keeps them: a study created by an older
    lorabench (no names) gets them when it is resumed, and workers never fight over them.
    The names are not part of the settings workers must share, so they never block a resume."""
    if study.metric_names is not None:
        return
    with warnings.catch_warnings():
        # set_metric_names is marked experimental (since Optuna 3.2) but stable in use.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(names))


def _roundtrip(value: Any) -> Any:
    """The value as storage returns it (JSON: tuples become lists)."""
    import json

    return json.loads(json.dumps(value, default=str))


def _check_budget_fits_an_estimated_trial(
    cfg: SearchConfig, run_cfg: RunConfig, cache: Any
) -> None:
    from lorabench.harness.config import BenchmarkConfigError

    try:
        estimate = estimate_trial(run_cfg, cfg.budget.kind, cache)
    except BenchmarkConfigError as exc:  # the trial budget itself (below one batch, too many steps)
        raise SearchError(f"study {cfg.study_name!r}: --trial-budget: {exc}") from exc
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
            f"{estimate.describe()}; trial budget {cfg.trial_budget}): "
            "raise --budget or lower --trial-budget"
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
        """Delegates to the trial's own inner sampler."""
        return self._for(trial.number).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict) -> dict:
        """Delegates to the trial's own inner sampler."""
        return self._for(trial.number).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        """Delegates to the trial's own inner sampler."""
        return self._for(trial.number).sample_independent(
            study, trial, param_name, param_distribution
        )

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Delegates to the trial's own inner sampler."""
        self._for(trial.number).before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any
    ) -> None:
        """Delegates to the trial's inner sampler (a fresh one if this process has none), then
        drops it: the trial is over."""
        inner = self._inner.pop(trial.number, None) or self._factory(self._seed + trial.number)
        inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:  # seeds are derived from trial numbers; nothing to reseed
        """Does nothing: each trial's seed is ``seed + trial.number``."""
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
            return optuna.samplers.TPESampler(
                seed=seed, multivariate=True, group=True, constant_liar=True
            )

    return TrialSeededSampler(tpe, cfg.seed)


def _make_pruner(cfg: SearchConfig) -> optuna.pruners.BasePruner:
    if not cfg.pruning:
        return optuna.pruners.NopPruner()
    first_eval = cfg.train.eval_every or 1
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=first_eval)
    if cfg.pruner == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first_eval, reduction_factor=3)
    max_resource: int | str = (
        int(cfg.trial_budget.limit) if cfg.trial_budget.kind == "steps" else "auto"
    )
    return optuna.pruners.HyperbandPruner(
        min_resource=first_eval, max_resource=max_resource, reduction_factor=3
    )


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, file=sys.stderr, flush=True)
