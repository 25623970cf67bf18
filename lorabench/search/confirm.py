"""After a search: the best trial, its confirmation on fresh seeds, and the study's summary."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from lorabench.harness.config import RunConfig
from lorabench.results.records import RunRecord
from lorabench.search.storage import redact
from lorabench.search.study import (
    ExecuteRun,
    PreparedSearch,
    RecordStore,
    _say,
    _unresolved,
)
from lorabench.search.summary import (
    param_importances,
    trial_rows,
)

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


def summarize_study(
    prepared: PreparedSearch, confirm_records: list[RunRecord] | None = None
) -> dict[str, Any]:
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
            "runs": [
                {"seed": r.seed, "run_id": r.run_id, "status": r.status, "score": r.score}
                for r in confirm_records
            ],
            "mean": statistics.fmean(scores) if scores else None,
            "std": statistics.stdev(scores) if len(scores) > 1 else None,
        }
    return summary
