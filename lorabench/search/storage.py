"""Where a search keeps its studies: SQLite, a journal file, or any database Optuna supports.

* ``sqlite:///path.db`` or a plain path: one file, one machine (the default); several processes
  on it (``lorabench search --workers``) take turns to write, each waiting for the lock;
* ``journal:PATH``: Optuna's journal file, for several processes on one machine (no heartbeat:
  a killed worker's trial stays running and keeps its reservation counted, unless the parent of
  ``--workers`` fails it);
* ``postgresql://user@host:port/db`` (or ``mysql://...``): several machines share one study.

Database storages run Optuna's heartbeat, so the trial of a killed worker is marked failed after
``grace_period`` seconds without a beat and its reported spend stays counted.
"""

from __future__ import annotations

import random
import sqlite3
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

from lorabench.harness.config import BenchmarkConfigError
from lorabench.results.urls import DatabaseURLError, with_installed_driver
from lorabench.results.urls import database_url as results_url
from lorabench.results.urls import redact as redact_url

JOURNAL_PREFIX = "journal:"
CONNECT_TIMEOUT_S = 5
TABLE_RACE_RETRIES = 5


# What --storage accepts, for messages that refuse something else.
STORAGE_FORMS = (
    "a file path (search.db), sqlite:///path/search.db, postgresql://user@host:5432/db "
    "(or mysql://...), or journal:PATH"
)


class StorageError(BenchmarkConfigError):
    """The search storage is unreachable or its URL is malformed."""


def normalize_storage_url(url_or_path: str) -> str:
    """A SQLAlchemy URL for a database; ``journal:ABSPATH`` for a journal; paths become SQLite."""
    text = str(url_or_path).strip()
    if not text:
        raise StorageError(
            "the storage is empty: give a path (results.db), journal:PATH or a database URL"
        )
    if text.startswith(JOURNAL_PREFIX):
        path = text[len(JOURNAL_PREFIX) :]
        if not path:
            raise StorageError("journal storage needs a file: journal:/path/to/search.journal")
        return JOURNAL_PREFIX + str(Path(path).expanduser().resolve())
    try:
        url = results_url(text, what="search storage")
    except DatabaseURLError as exc:
        raise StorageError(f"{exc}; the storage may be {STORAGE_FORMS}") from None
    try:
        # Loads SQLAlchemy's dialect class only (no driver, no connection): 'bogus://x' fails
        # here with the accepted forms instead of a NoSuchModuleError traceback later.
        make_url(url).get_dialect()
    except Exception:
        raise StorageError(
            f"search storage {redact(url)!r} is not a kind of storage lorabench knows; "
            f"give {STORAGE_FORMS}"
        ) from None
    return url


def check_storage(url_or_path: str) -> str:
    """Checks what can be checked without connecting and returns the normalised URL: the form
    (see :data:`STORAGE_FORMS`), and that an existing SQLite file is a database (an existing
    text file, say, is refused with its name instead of Optuna's ``DatabaseError``)."""
    url = normalize_storage_url(url_or_path)
    if url.startswith(JOURNAL_PREFIX):
        path = Path(url[len(JOURNAL_PREFIX) :])
        if path.is_dir():
            raise StorageError(
                f"journal storage {path} is a folder; give a file, "
                f"e.g. journal:{path / 'search.journal'}"
            )
        return url
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and database and database != ":memory:":
        _check_sqlite_file(Path(database))
    return url


def _check_sqlite_file(path: Path) -> None:
    """Refuses a path that exists but is not an SQLite database (a folder, a text file).

    The file is read through SQLite, never opened and closed directly: closing any descriptor of
    a file drops every POSIX lock this process holds on it, so a plain ``open()`` of a database
    this process already uses (the default storage is the results database) would silently
    release its connections' locks, and another process sharing the file (``--workers``) could
    then reset the write-ahead log under them ("disk I/O error"). SQLite keeps such descriptors
    open until its own locks are released.
    """
    if path.is_dir():
        raise StorageError(
            f"search storage {path} is a folder; give a database file, e.g. {path / 'search.db'}"
        )
    if not path.is_file():
        return  # created by Optuna
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1)
    except sqlite3.Error as exc:
        raise StorageError(f"search storage {path} cannot be read ({exc})") from None
    try:
        conn.execute("PRAGMA schema_version").fetchone()
    except sqlite3.DatabaseError as exc:
        if "not a database" not in str(exc):
            return  # locked by a writer, say: Optuna waits for it, or says what is wrong
        raise StorageError(
            f"search storage {path} is not an SQLite database (the file exists and holds "
            "something else); give a new file name (it is created), an existing search or "
            "results database, or another form: " + STORAGE_FORMS
        ) from None
    finally:
        conn.close()


def redact(url: str) -> str:
    """The URL with any password hidden, for messages and records (a journal path as is)."""
    return url if url.startswith(JOURNAL_PREFIX) else redact_url(url)


def open_storage(
    url_or_path: str, *, heartbeat_interval: int | None = 60, grace_period: int | None = None
) -> optuna.storages.BaseStorage:
    """Opens (and checks) the storage, failing with a clear message when it cannot be reached.

    For a database the connection is tried once with a short timeout before Optuna touches it, so
    an unreachable server fails in seconds, before any training starts.
    """
    url = check_storage(url_or_path)
    if url.startswith(JOURNAL_PREFIX):
        path = Path(url[len(JOURNAL_PREFIX) :])
        if not path.parent.is_dir():
            raise StorageError(
                f"journal storage {path}: folder {path.parent} does not exist; create it first"
            )
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))

    try:
        parsed = make_url(url)
    except Exception as exc:
        raise StorageError(
            f"storage URL {redact(url)!r} is malformed ({exc}); e.g. postgresql://user@host:5432/db"
        ) from None
    parsed = with_installed_driver(parsed)
    url = parsed.render_as_string(hide_password=False)
    engine_kwargs: dict = {}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not Path(database).parent.is_dir():
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # Several local workers may write one SQLite file: wait for the lock instead of failing.
        engine_kwargs["connect_args"] = {"timeout": 60}
    elif parsed.get_backend_name() in ("postgresql", "mysql"):
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
        engine_kwargs["pool_pre_ping"] = True
    check_reachable(url, engine_kwargs)
    if heartbeat_interval is not None and grace_period is None:
        grace_period = 3 * heartbeat_interval
    # Workers started together on an empty database race to create Optuna's tables; the loser
    # sees a duplicate-table error and simply retries against the tables the winner made.
    for attempt in range(TABLE_RACE_RETRIES):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                )
        except (
            sqlalchemy.exc.IntegrityError,
            sqlalchemy.exc.ProgrammingError,
            sqlalchemy.exc.OperationalError,
        ):
            if attempt == TABLE_RACE_RETRIES - 1:
                raise
            time.sleep(0.2 + random.random())
    raise AssertionError("unreachable")


def database_url(url_or_path: str) -> str:
    """A SQLAlchemy URL for a path or URL, with an installed PostgreSQL driver (results DB)."""
    if str(url_or_path).strip().startswith(JOURNAL_PREFIX):
        raise StorageError(
            f"{url_or_path!r}: a journal file holds studies only; give the results a path or "
            "database URL"
        )
    try:
        return results_url(url_or_path, what="results database")
    except DatabaseURLError as exc:
        raise StorageError(str(exc)) from None


def check_reachable(url: str, engine_kwargs: dict | None = None) -> None:
    """Connects once; raises :class:`StorageError` naming the URL (password hidden) and the fix."""
    try:
        engine = sqlalchemy.create_engine(url, **(engine_kwargs or {}))
    except ModuleNotFoundError as exc:
        raise StorageError(
            f"storage {redact(url)}: the database driver is not installed ({exc.name}); for "
            "PostgreSQL: pip install 'lorabench[postgres]' (psycopg2-binary)"
        ) from None
    except Exception as exc:
        raise StorageError(f"storage URL {redact(url)!r} is not usable: {exc}") from None
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except Exception as exc:
        first_line = (
            str(getattr(exc, "orig", exc)).strip().splitlines()[0]
            if str(exc).strip()
            else type(exc).__name__
        )
        raise StorageError(
            f"cannot reach search storage {redact(url)}: {first_line}. Check that the server is "
            "running and the host, port, user and database are right (or use a local file: "
            "--storage search.db)"
        ) from None
    finally:
        engine.dispose()
