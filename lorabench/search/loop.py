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

import contextlib
import dataclasses
import functools
import logging
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lorabench.harness.config import RunConfig
from lorabench.results.records import RunRecord
from lorabench.search.budget import (
    PARTIAL_ATTR,
    RESERVED_ATTR,
    SPEND_ATTR,
    estimate_trial_spend,
    spend_from_record_spent,
)
from lorabench.search.confirm import best_trial, confirm_best, summarize_study
from lorabench.search.storage import database_url, redact
from lorabench.search.study import (
    DEFAULT_TRIAL_BUDGET,
    MAX_CONSECUTIVE_DUPLICATES,
    PRUNERS,
    RESULT_ATTRS,
    SAMPLERS,
    STUDY_ATTR,
    ExecuteRun,
    PreparedSearch,
    RecordStore,
    SearchConfig,
    SearchError,
    SearchOutcome,
    TrialFailed,
    TrialSeededSampler,
    _run_config,
    _say,
    _unresolved,
    prepare_search,
    variant_search_space,
)
from lorabench.search.summary import (
    load_search_summaries,
    save_search_summary,
)

__all__ = [
    "DEFAULT_TRIAL_BUDGET",
    "PRUNERS",
    "SAMPLERS",
    "STUDY_ATTR",
    "WORKER_ATTR",
    "WORKER_PID_ATTR",
    "PreparedSearch",
    "SearchConfig",
    "SearchError",
    "SearchHarness",
    "SearchOutcome",
    "TrialSeededSampler",
    "best_trial",
    "confirm_best",
    "fail_stale_trials",
    "finish_search",
    "load_search_summaries",
    "prepare_search",
    "run_search",
    "run_trials",
    "search_harness",
    "summarize_study",
    "trial_line",
    "variant_search_space",
]


# Trial user attributes naming the worker of `lorabench search --workers` that ran the trial.
WORKER_ATTR = "worker"
WORKER_PID_ATTR = "worker_pid"

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
    device: str | None = None,
) -> SearchOutcome:
    """Runs trials until the study's budget is spent, confirms the best, saves the summary.

    Re-running continues the study (finished trials and their spend stay). ``results`` is the
    results database (path or URL) for run records and the summary; ``store`` and ``execute``
    default to :class:`~lorabench.results.store.ResultStore` on ``results`` and
    :func:`~lorabench.harness.runner.execute_run` on ``device`` (tests inject fakes). Several
    processes on one study: :func:`lorabench.search.parallel.run_search_workers`; on a Ray
    cluster: :func:`lorabench.search.ray_search.run_search_ray`.
    """
    harness = search_harness(prepared, results=results, store=store, execute=execute, device=device)
    run_trials(prepared, harness, progress=progress)
    return finish_search(prepared, harness, results=results, progress=progress, confirm=confirm)


@dataclasses.dataclass
class SearchHarness:
    """Where a search's runs train and go: the record store, the run function, and how a trial's
    config is resolved (its task data loaded once per process, through the run cache)."""

    store: RecordStore
    execute: ExecuteRun
    resolve: Callable[[RunConfig], RunConfig] = _unresolved


def search_harness(
    prepared: PreparedSearch,
    *,
    results: str | None = None,
    store: RecordStore | None = None,
    execute: ExecuteRun | None = None,
    device: str | None = None,
) -> SearchHarness:
    """The store and run function of :func:`run_search` (its defaults: a
    :class:`~lorabench.results.store.ResultStore` on ``results``, and
    :func:`~lorabench.harness.runner.execute_run` on ``device``, None: the harness's choice)."""
    if store is None:
        from lorabench.results.store import ResultStore

        if results is None:
            raise SearchError("run_search needs results= (a path or URL) or a store")
        store = ResultStore(database_url(results))
    if execute is not None:
        return SearchHarness(store, execute)
    from lorabench.harness.runner import RunCache, execute_run

    # One cache for every trial and confirmation run: the task is loaded and tokenised and
    # the model read from disk once per process, not once per trial.
    if prepared.cache is None:
        prepared.cache = RunCache()
    # The device only when given: without one, the call is what it always was.
    on = {} if device is None else {"device": device}
    run = functools.partial(execute_run, cache=prepared.cache, **on)
    return SearchHarness(store, run, prepared.cache.resolve)


def fail_stale_trials(prepared: PreparedSearch) -> None:
    """Marks the running trials of killed workers failed (heartbeat storages; their reported
    spend stays counted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(prepared.study)


def run_trials(
    prepared: PreparedSearch,
    harness: SearchHarness,
    *,
    progress: bool = True,
    worker: int | None = None,
) -> str | None:
    """Runs trials until the study's budget is spent (or the sampler has nothing new to try);
    returns why the loop stopped (None: nothing to run, the budget was spent already).

    ``worker``: this process's number among the workers of ``lorabench search --workers``;
    each trial records it (with the process id) and its progress line shows it. Raises
    :class:`SearchError` when trials keep failing.
    """
    cfg, study = prepared.config, prepared.study
    loop = _SearchLoop(prepared, harness, progress, worker)
    fail_stale_trials(prepared)
    spend = prepared.spend()
    if spend.exhausted(cfg.budget):
        _say(
            progress,
            f"[{cfg.study_name}] {loop.who}budget {cfg.budget} already spent "
            f"({spend.committed:g}); no new trials",
        )
    else:
        with _quiet_interrupt_logs():
            study.optimize(
                loop.objective,
                callbacks=[loop.after_trial],
                catch=(TrialFailed,),
                gc_after_trial=True,
            )
    if loop.stop_reason:
        _say(progress, f"[{cfg.study_name}] {loop.who}stopped: {loop.stop_reason}")
    if loop.fatal:
        raise SearchError(loop.fatal)
    return loop.stop_reason


def finish_search(
    prepared: PreparedSearch,
    harness: SearchHarness,
    *,
    results: str | None = None,
    progress: bool = True,
    confirm: bool = True,
) -> SearchOutcome:
    """After the trials: confirms the best configuration on fresh seeds (unless ``confirm`` is
    off or ``confirm_seeds`` is 0), summarises the study and saves the summary in ``results``."""
    cfg = prepared.config
    confirm_records = (
        confirm_best(
            prepared, harness.store, harness.execute, progress=progress, resolve=harness.resolve
        )
        if confirm
        else []
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


class _InterruptLogFilter(logging.Filter):
    """Drops Optuna's log of a trial failed by Ctrl-C (a warning carrying the whole traceback,
    ~125 lines, then "failed with value None"): the interrupted trial is still stored as failed
    with its spend, and the command prints one line saying so."""

    def __init__(self) -> None:
        super().__init__()
        self._interrupted: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        trial = message.split(" failed with ", 1)[0]
        if isinstance(exc, KeyboardInterrupt):
            self._interrupted.add(trial)
            return False
        return not (trial in self._interrupted and " failed with value " in message)


@contextlib.contextmanager
def _quiet_interrupt_logs() -> Iterator[None]:
    """Within the block, Optuna's logs of Ctrl-C'd trials are dropped (its other logs stay)."""
    logger = logging.getLogger("optuna.study._optimize")
    log_filter = _InterruptLogFilter()
    logger.addFilter(log_filter)
    try:
        yield
    finally:
        logger.removeFilter(log_filter)


def trial_line(cfg: SearchConfig, trial: FrozenTrial, spend: Any, who: str = "") -> str:
    """The progress line of an ended trial: its state, score, parameters and the study's spend
    so far (``who``: ``"worker N: "`` when several workers share one terminal)."""
    score = trial.user_attrs.get("score")
    shown = f"score={score:.4f}" if isinstance(score, float) else ""
    if "duplicate_of" in trial.user_attrs:
        shown += f" (same config as trial {trial.user_attrs['duplicate_of']})"
    return (
        f"[{cfg.study_name}] {who}trial {trial.number} {trial.state.name.lower()} {shown} "
        f"params={dict(trial.params)} "
        f"spent {spend.committed:g}/{cfg.budget.limit:g} {cfg.budget.kind}"
    )


class _SearchLoop:
    """The objective and the after-trial callback of one worker's ``study.optimize``."""

    def __init__(
        self,
        prepared: PreparedSearch,
        harness: SearchHarness,
        progress: bool,
        worker: int | None = None,
    ) -> None:
        self.p = prepared
        self.resolve = harness.resolve
        self.store = harness.store
        self.execute = harness.execute
        self.progress = progress
        self.worker = worker
        # Progress lines of one of several workers say which (they share one terminal).
        self.who = "" if worker is None else f"worker {worker}: "
        self.consecutive_failures = 0
        self.consecutive_duplicates = 0
        self.last_error: str | None = None
        self.stop_reason: str | None = None
        self.fatal: str | None = None

    # -- the objective ------------------------------------------------------------------------
    def objective(self, trial: optuna.Trial) -> float | tuple[float, float]:

        p, cfg = self.p, self.p.config
        started = time.monotonic()
        if self.worker is not None:
            # First: the parent of `search --workers` fails the running trials of a worker that
            # died by these, as a heartbeat would (a journal storage has none).
            trial.set_user_attr(WORKER_ATTR, self.worker)
            trial.set_user_attr(WORKER_PID_ATTR, os.getpid())
        # Claim this trial's expected spend first, so other workers see the budget as taken.
        estimate = estimate_trial_spend(
            cfg.trial_budget, p.unit, p.study.get_trials(deepcopy=False)
        )
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
            trial.set_user_attr(
                PARTIAL_ATTR, {"steps": float(step), "seconds": time.monotonic() - started}
            )
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
            trial.set_user_attr(
                "error", (record.error or f"no score (status {record.status})")[:2000]
            )
            raise TrialFailed(
                record.error or f"run {record.run_id} ended {record.status} without a score"
            )
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
        self.consecutive_duplicates = (
            self.consecutive_duplicates + 1 if "duplicate_of" in trial.user_attrs else 0
        )
        _say(self.progress, trial_line(cfg, trial, spend, self.who))
        if spend.exhausted(cfg.budget):
            self.stop_reason = (
                f"budget {cfg.budget} spent "
                f"({spend.committed:g} over {sum(spend.states.values())} trials)"
            )
            study.stop()
        elif self.consecutive_failures >= cfg.max_consecutive_failures:
            self.fatal = (
                f"{self.consecutive_failures} trials in a row failed in study {cfg.study_name!r}; "
                f"last error: {self.last_error}. "
                "Fix the cause and re-run the same command to resume."
            )
            study.stop()
        elif self.consecutive_duplicates >= MAX_CONSECUTIVE_DUPLICATES:
            self.stop_reason = (
                f"the sampler proposed {self.consecutive_duplicates} finished configs in a row "
                "(space exhausted)"
            )
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
            str(rank): metrics.get(record.primary_metric)
            for rank, metrics in sorted(record.rank_scores.items(), key=lambda item: int(item[0]))
        }
    return out
