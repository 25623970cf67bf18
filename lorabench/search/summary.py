"""What a finished search leaves for the report generators, in the results database.

One row per study in a ``search_summaries`` table (created on first use beside the run records):
the best configuration and its rank, the score-vs-rank data of every trial (pruned and failed
ones included, flagged by state), parameter importances, the Pareto front of a multi-objective
study, the spend, and the confirmation runs. Read it back with :func:`load_search_summaries`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState

from lorabench.search.storage import database_url

TABLE_NAME = "search_summaries"
_metadata = sa.MetaData()
SUMMARIES = sa.Table(
    TABLE_NAME,
    _metadata,
    sa.Column("study", sa.String(512), primary_key=True),
    sa.Column("variant", sa.String(128), nullable=False, index=True),
    sa.Column("task", sa.String(128), nullable=False, index=True),
    sa.Column("summary", sa.Text, nullable=False),  # JSON
    sa.Column("updated_at", sa.String(40), nullable=False),
)


def results_url(url_or_path: str | Path) -> str:
    """A SQLAlchemy URL for the results database (a plain path means a SQLite file)."""
    return database_url(str(url_or_path))


def save_search_summary(url_or_path: str | Path, summary: dict[str, Any]) -> None:
    """Inserts or replaces the summary of ``summary["study"]``."""
    engine = _engine(url_or_path)
    try:
        _metadata.create_all(engine, tables=[SUMMARIES])
        row = {
            "study": summary["study"],
            "variant": summary["variant"],
            "task": summary["task"],
            "summary": json.dumps(_jsonable(summary), sort_keys=True),
            "updated_at": summary.get("updated_at") or _now(),
        }
        with engine.begin() as conn:
            conn.execute(sa.delete(SUMMARIES).where(SUMMARIES.c.study == row["study"]))
            conn.execute(sa.insert(SUMMARIES).values(**row))
    finally:
        engine.dispose()


def load_search_summaries(
    url_or_path: str | Path, *, variant: str | None = None, task: str | None = None
) -> list[dict[str, Any]]:
    """Every stored search summary (optionally of one variant/task), ordered by study name."""
    engine = _engine(url_or_path)
    try:
        if not sa.inspect(engine).has_table(TABLE_NAME):
            return []
        query = sa.select(SUMMARIES.c.summary).order_by(SUMMARIES.c.study)
        if variant is not None:
            query = query.where(SUMMARIES.c.variant == variant)
        if task is not None:
            query = query.where(SUMMARIES.c.task == task)
        with engine.connect() as conn:
            return [json.loads(text) for (text,) in conn.execute(query)]
    finally:
        engine.dispose()


def trial_rows(trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    """Score-vs-rank data: one row per trial with its state, rank, score and spend.

    A pruned trial's score is its last reported intermediate value (``final`` is False).
    ``final_rank`` is the mean final rank over adapted matrices (below ``rank`` when AdaLoRA
    pruned); ``rank_scores`` the score at every rank one training evaluated (DyLoRA).
    """
    rows = []
    for t in trials:
        attrs = t.user_attrs
        score = attrs.get("score")
        final = t.state == TrialState.COMPLETE
        if score is None and t.intermediate_values:
            score = t.intermediate_values[max(t.intermediate_values)]
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "final": final,
                "rank": attrs.get("rank"),
                "final_rank": attrs.get("final_rank"),
                "score": score,
                "rank_scores": attrs.get("rank_scores"),
                "trainable_params": attrs.get("trainable_params"),
                "params": dict(t.params),
                "spend": attrs.get("spend") or attrs.get("partial_spend"),
                "run_id": attrs.get("run_id"),
                "duplicate_of": attrs.get("duplicate_of"),
                "error": attrs.get("error"),
            }
        )
    return rows


def param_importances(
    study: optuna.Study, target: Callable[[FrozenTrial], float] | None = None
) -> dict[str, Any]:
    """Optuna's parameter importances, or the reason they cannot be computed yet."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if len(complete) < 2:
        return {"values": {}, "error": f"needs at least 2 completed trials, has {len(complete)}"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = optuna.importance.get_param_importances(study, target=target)
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        return {"values": {}, "error": str(exc)}
    return {"values": {k: float(v) for k, v in values.items()}, "error": None}


def _engine(url_or_path: str | Path) -> sa.Engine:
    url = results_url(url_or_path)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return sa.create_engine(url)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
