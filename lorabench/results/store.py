"""The results database: one row per run, the whole :class:`RunRecord` as JSON beside the columns
reports filter on.

A plain path is a SQLite file (WAL mode and a busy timeout, so several local processes can write
at once); any SQLAlchemy URL works too (``postgresql://user@host/db`` for several machines). The
database may also hold other lorabench tables (search summaries, Optuna studies); this module owns
``runs`` and ``lorabench_meta``.

Writes are idempotent on ``run_id``: adding a record again replaces it, except that a finished
record is never replaced by a failed or pruned one, so a crashed re-run cannot lose a result.
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from lorabench.results.claims import Claim, ClaimOwner
from lorabench.results.records import RunRecord
from lorabench.results.urls import DatabaseURLError, database_url, redact

STORE_SCHEMA_VERSION = 1
APP_NAME = "lorabench"
BUSY_TIMEOUT_S = 60
_CREATE_RETRIES = 5

_metadata = sa.MetaData()
RUNS = sa.Table(
    "runs",
    _metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("variant", sa.String(128), nullable=False, index=True),
    sa.Column("task", sa.String(128), nullable=False, index=True),
    sa.Column("model", sa.String(512), nullable=False, index=True),
    sa.Column("seed", sa.Integer, nullable=False, index=True),
    sa.Column("tag", sa.String(256), nullable=False, index=True),
    sa.Column("score", sa.Float, nullable=True, index=True),
    sa.Column("started_at", sa.String(40), nullable=False, index=True),
    sa.Column("finished_at", sa.String(40), nullable=False, index=True),
    sa.Column("record", sa.Text, nullable=False),  # RunRecord.to_json()
)
META = sa.Table(
    "lorabench_meta",
    _metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
# Who is training which run (``lorabench run`` drivers sharing one database): a row per run in
# progress, held until ``expires_at`` (Unix seconds) unless its owner renews it; see
# lorabench.results.claims. Created beside ``runs`` on open; ``runs`` is never touched for it.
CLAIMS = sa.Table(
    "claims",
    _metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(256), nullable=False),
    sa.Column("host", sa.String(256), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)
_KEY_COLUMNS = (
    "run_id",
    "status",
    "variant",
    "task",
    "model",
    "seed",
    "tag",
    "score",
    "started_at",
    "finished_at",
)


class ResultStoreError(RuntimeError):
    """The results database cannot be used; the message names the database and the fix."""


RESULTS_FILE = "results.db"  # a suite's database inside its output folder (OUT/results.db)


def results_database_url(url_or_path: str | Path) -> str:
    """A SQLAlchemy URL for the results database (see
    :func:`lorabench.results.urls.database_url`). A suite's output folder stands for the
    database inside it (``runs`` -> ``runs/results.db``), as ``lorabench run --out`` wrote it."""
    if "://" not in str(url_or_path) and Path(url_or_path).expanduser().is_dir():
        url_or_path = Path(url_or_path).expanduser() / RESULTS_FILE
    try:
        return database_url(url_or_path, what="results database")
    except DatabaseURLError as exc:
        raise ResultStoreError(str(exc)) from None


class ResultStore:
    """Run records in a SQL database (SQLite file by default).

    Args:
        url_or_path: a file path (parent folders are created) or a SQLAlchemy URL.
        create: create the tables when missing. With ``create=False`` (readers such as reports)
            a missing SQLite file is an error and a database without runs reads as empty.
    """

    def __init__(self, url_or_path: str | Path, *, create: bool = True) -> None:
        self.url = results_database_url(url_or_path)
        parsed = make_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.path: Path | None = None
        if self.is_sqlite and parsed.database and parsed.database != ":memory:":
            self.path = Path(parsed.database)
        self.name = str(self.path) if self.path is not None else redact(self.url)
        if self.path is not None:
            if not create and not self.path.exists():
                raise ResultStoreError(
                    f"no results database at {self.path}; "
                    "run 'lorabench run' (or pass the right --results) first"
                )
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = self._make_engine(parsed)
        self._has_runs = self._check_and_create(create)

    # -- opening -------------------------------------------------------------------------------
    def _make_engine(self, parsed: URL) -> Engine:
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_S}
        elif parsed.get_backend_name() in ("postgresql", "mysql"):
            kwargs["connect_args"] = {"connect_timeout": 5}
            kwargs["pool_pre_ping"] = True
        try:
            engine = sa.create_engine(self.url, **kwargs)
        except ModuleNotFoundError as exc:
            raise ResultStoreError(
                f"results database {self.name}: its driver is not installed ({exc.name}); "
                "for PostgreSQL: pip install 'lorabench[postgres]'"
            ) from None
        if self.is_sqlite:

            @sa.event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
                # WAL: readers never block the writer; busy_timeout: writers queue instead of
                # failing.
                cursor = dbapi_conn.cursor()
                cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.close()

        return engine

    def _check_and_create(self, create: bool) -> bool:
        """Checks that the database is a lorabench one (creating tables if asked); True if runs
        exist."""
        for attempt in range(_CREATE_RETRIES):
            try:
                tables = set(sa.inspect(self.engine).get_table_names())
                if META.name in tables:
                    self._check_meta()
                elif RUNS.name in tables:
                    if create and attempt < _CREATE_RETRIES - 1:
                        # Another process creating this new database at the same instant may
                        # have made 'runs' and not yet the meta table: look again shortly.
                        time.sleep(0.1 + random.random() * 0.3)
                        continue
                    raise ResultStoreError(
                        f"{self.name} has a 'runs' table that lorabench did not create "
                        f"(no {META.name} table); "
                        "give lorabench its own results file, e.g. --results runs/results.db"
                    )
                if not create:
                    return RUNS.name in tables
                _metadata.create_all(self.engine, checkfirst=True)
                with self.engine.begin() as conn:
                    present = {k for (k,) in conn.execute(sa.select(META.c.key))}
                    missing = [
                        {"key": k, "value": v}
                        for k, v in (
                            ("app", APP_NAME),
                            ("schema_version", str(STORE_SCHEMA_VERSION)),
                        )
                        if k not in present
                    ]
                    if missing:
                        conn.execute(sa.insert(META), missing)
                self._check_runs_columns()
                return True
            except ResultStoreError:
                self.engine.dispose()
                raise
            except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError) as exc:
                # Workers starting together race to create the tables; the loser retries.
                if attempt < _CREATE_RETRIES - 1 and _is_race(exc):
                    time.sleep(0.1 + random.random() * 0.3)
                    continue
                self.engine.dispose()
                raise self._open_error(exc) from None
            except sa.exc.DBAPIError as exc:
                self.engine.dispose()
                raise self._open_error(exc) from None
        raise AssertionError("unreachable")

    def _check_meta(self) -> None:
        with self.engine.connect() as conn:
            meta = dict(conn.execute(sa.select(META.c.key, META.c.value)).all())
        if meta.get("app", APP_NAME) != APP_NAME:
            raise ResultStoreError(
                f"{self.name} belongs to {meta['app']!r}, not lorabench; use another results file"
            )
        version = int(meta.get("schema_version", STORE_SCHEMA_VERSION))
        if version > STORE_SCHEMA_VERSION:
            raise ResultStoreError(
                f"{self.name} has results schema {version}, newer than this lorabench understands "
                f"({STORE_SCHEMA_VERSION}); upgrade lorabench (pip install -U lorabench)"
            )

    def _check_runs_columns(self) -> None:
        columns = {c["name"] for c in sa.inspect(self.engine).get_columns(RUNS.name)}
        missing = sorted({*_KEY_COLUMNS, "record"} - columns)
        if missing:
            raise ResultStoreError(
                f"{self.name}: table 'runs' lacks column(s) {missing}; "
                "it was not written by this lorabench. Use a fresh results file"
            )

    def _open_error(self, exc: Exception) -> ResultStoreError:
        detail = (
            str(getattr(exc, "orig", exc)).strip().splitlines()[0]
            if str(exc).strip()
            else type(exc).__name__
        )
        if self.is_sqlite:
            return ResultStoreError(
                f"cannot open results database {self.name}: {detail}. "
                "The file is not a lorabench SQLite "
                "database or it is corrupt; move it away (or pass another --results) and re-run; "
                "finished runs are then re-trained"
            )
        return ResultStoreError(
            f"cannot use results database {self.name}: {detail}. "
            "Check that the server is running and the host, port, user and database are right"
        )

    # -- writing -------------------------------------------------------------------------------
    def add(self, record: RunRecord) -> bool:
        """Inserts or replaces ``record`` (by run_id) in one transaction.

        Returns False (and keeps the stored row) when a finished record would be replaced by a
        failed or pruned one.
        """
        row = _row(record)
        dialect = self.engine.dialect.name
        # A finished record replaces anything; anything else only replaces a non-finished one.
        keep_finished = sa.true() if row["status"] == "finished" else RUNS.c.status != "finished"
        stmt = _upsert(dialect, RUNS, row, where=keep_finished)
        if stmt is not None:
            # One atomic statement, so two processes adding the same run cannot interleave.
            with self.engine.begin() as conn:
                return conn.execute(stmt).rowcount > 0
        return self._add_portable(row, keep_finished)

    def _add_portable(self, row: dict[str, Any], keep_finished: Any) -> bool:
        for attempt in range(_CREATE_RETRIES):
            try:
                with self.engine.begin() as conn:
                    exists = conn.execute(
                        sa.select(RUNS.c.run_id)
                        .where(RUNS.c.run_id == row["run_id"])
                        .with_for_update()
                    ).first()
                    if exists is None:
                        conn.execute(sa.insert(RUNS).values(**row))
                        return True
                    values = {k: v for k, v in row.items() if k != "run_id"}
                    stmt = (
                        sa.update(RUNS)
                        .where(RUNS.c.run_id == row["run_id"], keep_finished)
                        .values(**values)
                    )
                    return conn.execute(stmt).rowcount > 0
            except sa.exc.IntegrityError:
                if attempt == _CREATE_RETRIES - 1:
                    raise
        return False

    # -- claims (drivers sharing this database) ------------------------------------------------
    def claim(self, run_id: str, owner: ClaimOwner, *, lease_s: float, now: float) -> Claim | None:
        """Claims ``run_id`` for ``owner`` until ``now + lease_s``, atomically: a new claim, a
        takeover of an expired one, or a renewal of ``owner``'s own. Returns None when claimed;
        else the live claim of another driver (who holds it, until when)."""
        row = {**owner.row(), "run_id": run_id, "expires_at": now + lease_s}
        dialect = self.engine.dialect.name
        takeable = sa.or_(CLAIMS.c.expires_at <= now, CLAIMS.c.owner == owner.owner)
        stmt = _upsert(dialect, CLAIMS, row, where=takeable)
        if stmt is not None:
            with self.engine.begin() as conn:
                if conn.execute(stmt).rowcount > 0:
                    return None
        else:
            try:
                with self.engine.begin() as conn:
                    held = conn.execute(
                        sa.select(CLAIMS.c.run_id)
                        .where(CLAIMS.c.run_id == run_id)
                        .with_for_update()
                    ).first()
                    if held is None:
                        conn.execute(sa.insert(CLAIMS).values(**row))
                        return None
                    values = {k: v for k, v in row.items() if k != "run_id"}
                    stmt = sa.update(CLAIMS).where(CLAIMS.c.run_id == run_id, takeable)
                    if conn.execute(stmt.values(**values)).rowcount > 0:
                        return None
            except sa.exc.IntegrityError:
                pass  # another driver inserted it first: theirs, read below
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(CLAIMS).where(CLAIMS.c.run_id == run_id)).first()
        if found is None:  # released between the two statements: free again
            return self.claim(run_id, owner, lease_s=lease_s, now=now)
        return Claim(found.run_id, ClaimOwner(found.owner, found.host, found.pid), found.expires_at)

    def renew_claims(
        self, run_ids: Iterable[str], owner: ClaimOwner, *, lease_s: float, now: float
    ) -> set[str]:
        """Extends ``owner``'s claims on ``run_ids`` to ``now + lease_s``; returns the run_ids
        still held (a claim that expired and was taken over is not renewed)."""
        wanted = list(run_ids)
        if not wanted:
            return set()
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(CLAIMS)
                .where(CLAIMS.c.run_id.in_(wanted), CLAIMS.c.owner == owner.owner)
                .values(expires_at=now + lease_s)
            )
            return set(
                conn.execute(
                    sa.select(CLAIMS.c.run_id).where(
                        CLAIMS.c.run_id.in_(wanted), CLAIMS.c.owner == owner.owner
                    )
                ).scalars()
            )

    def release_claims(self, run_ids: Iterable[str], owner: ClaimOwner) -> None:
        """Drops ``owner``'s claims on ``run_ids`` (a run finished, failed or was stopped)."""
        wanted = list(run_ids)
        if wanted:
            with self.engine.begin() as conn:
                conn.execute(
                    sa.delete(CLAIMS).where(
                        CLAIMS.c.run_id.in_(wanted), CLAIMS.c.owner == owner.owner
                    )
                )

    def claims(self) -> list[Claim]:
        """Every claim in the database, live or expired (for tests and diagnostics)."""
        if CLAIMS.name not in set(sa.inspect(self.engine).get_table_names()):
            return []
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(CLAIMS).order_by(CLAIMS.c.run_id)).all()
        return [Claim(r.run_id, ClaimOwner(r.owner, r.host, r.pid), r.expires_at) for r in rows]

    # -- reading -------------------------------------------------------------------------------
    def get(self, run_id: str) -> RunRecord | None:
        """The stored record of ``run_id``, or None."""
        if not self._has_runs:
            return None
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(RUNS.c.run_id, RUNS.c.record).where(RUNS.c.run_id == run_id)
            ).first()
        return None if found is None else _parse(found.run_id, found.record)

    def finished_ids(self) -> set[str]:
        """run_ids of every finished run (what a resumed suite skips)."""
        if not self._has_runs:
            return set()
        with self.engine.connect() as conn:
            return set(
                conn.execute(sa.select(RUNS.c.run_id).where(RUNS.c.status == "finished")).scalars()
            )

    def records(
        self,
        *,
        tasks: Iterable[str] | str | None = None,
        variants: Iterable[str] | str | None = None,
        seeds: Iterable[int] | int | None = None,
        models: Iterable[str] | str | None = None,
        tag: str | None = None,
        status: Iterable[str] | str | None = "finished",
    ) -> list[RunRecord]:
        """Records matching every given filter (``status=None``: any status), in a stable order.

        A row whose JSON cannot be read is skipped with a warning naming its run_id.
        """
        if not self._has_runs:
            return []
        query = sa.select(RUNS.c.run_id, RUNS.c.record).order_by(
            RUNS.c.task, RUNS.c.variant, RUNS.c.seed, RUNS.c.started_at, RUNS.c.run_id
        )
        query = _filtered(
            query,
            tasks=tasks,
            variants=variants,
            seeds=seeds,
            models=models,
            tag=tag,
            status=status,
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        parsed = (_parse(row.run_id, row.record) for row in rows)
        return [record for record in parsed if record is not None]

    def count(
        self,
        *,
        tasks: Iterable[str] | str | None = None,
        variants: Iterable[str] | str | None = None,
        seeds: Iterable[int] | int | None = None,
        models: Iterable[str] | str | None = None,
        tag: str | None = None,
        status: Iterable[str] | str | None = "finished",
    ) -> int:
        """How many runs match the filters of :meth:`records`, without reading their records
        (what a command checks before it reports on them)."""
        if not self._has_runs:
            return 0
        query = _filtered(
            sa.select(sa.func.count()).select_from(RUNS),
            tasks=tasks,
            variants=variants,
            seeds=seeds,
            models=models,
            tag=tag,
            status=status,
        )
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def summary(self) -> dict[str, Any]:
        """Counts of stored runs by status, and the distinct tasks, variants, seeds and tags."""
        if not self._has_runs:
            return {"runs": 0, "status": {}, "task": [], "variant": [], "seed": [], "tag": []}
        with self.engine.connect() as conn:
            status = dict(
                conn.execute(
                    sa.select(RUNS.c.status, sa.func.count()).group_by(RUNS.c.status)
                ).all()
            )
            out: dict[str, Any] = {"runs": sum(status.values()), "status": status}
            for name in ("task", "variant", "seed", "tag"):
                column = RUNS.c[name]
                out[name] = sorted(conn.execute(sa.select(column).distinct()).scalars())
        return out

    def to_dataframe(self, **filters: Any) -> Any:
        """The matching records as a raw pandas DataFrame with the nested fields kept as Python
        objects (see :func:`records_to_dataframe`); :func:`load_results` gives the tidy one."""
        return records_to_dataframe(self.records(**filters))

    def close(self) -> None:
        """Closes the pooled database connections (a ``with ResultStore(...)`` block does it on
        exit)."""
        self.engine.dispose()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultStore({self.name!r})"


# Top-level record fields kept as plain columns; nested ones are flattened or kept as objects.
_SCALAR_FIELDS = (
    "run_id", "status", "variant", "task", "model", "seed", "tag", "rank", "score",
    "primary_metric", "higher_is_better", "trainable_params", "adapter_params", "total_params",
    "adapter_bytes", "variant_version", "task_version", "error", "started_at", "finished_at",
    "schema_version",
)  # fmt: skip
_NESTED_FIELDS = ("config", "ranks", "rank_scores", "true_ranks", "search", "environment")


def records_to_dataframe(records: Iterable[RunRecord]) -> Any:
    """One row per record, raw: key columns, ``metric.<name>``, ``spent.<name>``,
    ``budget.<key>``, ``search.<key>`` (scalars), and the nested fields (config, ranks,
    rank_scores, true_ranks, search, environment, curve) as JSON-able Python objects. For
    analysis use :func:`load_results` (flat, typed columns) and :func:`load_curves`."""
    import pandas as pd

    rows = []
    for record in records:
        data = record.to_dict()
        row: dict[str, Any] = {name: data[name] for name in _SCALAR_FIELDS}
        for prefix in ("metrics", "spent", "budget"):
            label = "metric" if prefix == "metrics" else prefix
            row.update({f"{label}.{k}": v for k, v in (data.get(prefix) or {}).items()})
        for key, value in (data.get("search") or {}).items():
            if not isinstance(value, dict | list):
                row[f"search.{key}"] = value
        row.update({name: data[name] for name in _NESTED_FIELDS})
        row["curve"] = data["curve"]
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=[*_SCALAR_FIELDS, *_NESTED_FIELDS, "curve"])
    return pd.DataFrame(rows)


def load_results(url_or_path: str | Path, **filters: Any) -> Any:
    """The finished runs of a results database as a tidy pandas DataFrame, in one call: one row
    per run, one scalar per cell, numeric and datetime dtypes.

    Columns (documented in :func:`lorabench.results.tidy.runs_table`): ``run_id``, ``label``
    (the report's row label, "AdaLoRA r=12→8"), ``variant``, ``task``, ``model``, ``seed``,
    ``tag``, ``status``, ``primary_metric``, ``higher_is_better``, ``final_score``,
    ``best_score``, ``evaluations``, ``rank`` (the rank the run is compared at: for an
    adaptive-rank variant its final mean rank), ``nominal_rank``, ``final_rank_mean``,
    ``final_rank_total``, ``final_rank_min``, ``final_rank_max``, ``adapted_matrices``,
    ``adaptive_rank``, ``trainable_params``, ``adapter_params``, ``total_params``,
    ``adapter_bytes``, ``budget``, ``budget_kind``, ``budget_limit``; then the final metrics
    (``accuracy``, ``f1``...), the spend (``steps``, ``train_seconds``, ``peak_memory_bytes``...),
    the variant's resolved config (``r``, ``alpha``, ``target_modules``...) and the training
    recipe (``learning_rate``, ``batch_size``...); then provenance (``variant_version``,
    ``task_version``, ``data_fingerprint``, ``model_fingerprint``, ``device``,
    ``adapted_modules``, ``search_study``, ``search_trial``, ``search_role``, ``git_commit``,
    package versions, ``error``...) and ``started_at``/``finished_at`` (UTC datetimes).

    Filters are those of :meth:`ResultStore.records` (tasks, variants, seeds, models, tag, status).
    The learning curves are in :func:`load_curves`; the whole records in
    :meth:`ResultStore.records`.
    """
    from lorabench.results.tidy import runs_table

    with ResultStore(url_or_path, create=False) as store:
        return runs_table(store.records(**filters))


def load_curves(url_or_path: str | Path, **filters: Any) -> Any:
    """The learning curves of the matching runs as one long pandas DataFrame: a row per run and
    curve point, columns ``run_id``, ``label``, ``variant``, ``task``, ``seed``, ``step``,
    ``loss``, ``seconds``, ``reg_loss`` (and any value newer records store per point), then one
    float column per evaluated metric (missing between evaluations). See
    :func:`lorabench.results.tidy.curves_table`; join with :func:`load_results` on ``run_id``.

    Filters are those of :meth:`ResultStore.records`.
    """
    from lorabench.results.tidy import curves_table

    with ResultStore(url_or_path, create=False) as store:
        return curves_table(store.records(**filters))


def _upsert(dialect: str, table: sa.Table, row: dict[str, Any], *, where: Any) -> Any:
    """``INSERT ... ON CONFLICT (run_id) DO UPDATE ... WHERE where`` for SQLite and PostgreSQL
    (one atomic statement); None for other databases, which take a locked read-then-write."""
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        return None
    stmt = insert(table).values(**row)
    return stmt.on_conflict_do_update(
        index_elements=[table.c.run_id],
        set_={k: stmt.excluded[k] for k in row if k != "run_id"},
        where=where,
    )


def _row(record: RunRecord) -> dict[str, Any]:
    if not record.run_id:
        raise ResultStoreError(
            f"record of {record.variant} on {record.task} has no run_id; "
            "build it from RunConfig.run_id"
        )
    return {
        "run_id": record.run_id,
        "status": record.status,
        "variant": record.variant,
        "task": record.task,
        "model": record.model or "",
        "seed": int(record.seed),
        "tag": record.tag or "",
        "score": None if record.score is None else float(record.score),
        "started_at": record.started_at or "",
        "finished_at": record.finished_at or "",
        "record": record.to_json(),
    }


def _parse(run_id: str, text: str) -> RunRecord | None:
    try:
        return RunRecord.from_json(text)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        warnings.warn(
            f"results: run {run_id} has an unreadable record "
            f"({type(exc).__name__}: {exc}); skipped",
            stacklevel=3,
        )
        return None


def _filtered(
    query: sa.Select,
    *,
    tasks: Any,
    variants: Any,
    seeds: Any,
    models: Any,
    tag: str | None,
    status: Any,
) -> sa.Select:
    """``query`` restricted to the runs every given filter admits (see
    :meth:`ResultStore.records`)."""
    for column, wanted in (
        (RUNS.c.task, tasks),
        (RUNS.c.variant, variants),
        (RUNS.c.seed, seeds),
        (RUNS.c.model, models),
        (RUNS.c.status, status),
    ):
        values = _as_list(wanted)
        if values is not None:
            query = query.where(column.in_(values))
    if tag is not None:
        query = query.where(RUNS.c.tag == tag)
    return query


def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, str | int):
        return [value]
    return list(value)


def _is_race(exc: Exception) -> bool:
    text = str(getattr(exc, "orig", exc)).lower()
    return any(s in text for s in ("already exists", "unique", "duplicate", "locked"))
