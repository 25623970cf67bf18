"""Database locations: a plain path or any SQLAlchemy URL, handled the same way everywhere.

The results store and the search's Optuna storage both take "a path or a URL"; this module is
the one place that turns either into a SQLAlchemy URL and hides passwords in messages.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from sqlalchemy.engine import URL, make_url


class DatabaseURLError(ValueError):
    """A database location that is empty or not a URL; the message names it and the fix."""


def database_url(url_or_path: str | Path, *, what: str = "database") -> str:
    """A SQLAlchemy URL: a plain path becomes ``sqlite:///ABSPATH``; a URL is checked.

    A bare ``postgresql://`` gets whichever PostgreSQL driver is installed (psycopg or psycopg2):
    SQLAlchemy 2.1 maps it to psycopg 3, 2.0 to psycopg2, and users may have either.
    """
    text = str(url_or_path).strip()
    if not text:
        raise DatabaseURLError(
            f"the {what} is empty: give a path (runs/results.db) or a database URL"
        )
    if "://" not in text:
        return "sqlite:///" + str(Path(text).expanduser().resolve())
    try:
        parsed = make_url(text)
    except Exception as exc:
        raise DatabaseURLError(
            f"{what} URL {redact(text)!r} is malformed ({exc}); e.g. "
            "postgresql://user@host:5432/db or a file path"
        ) from None
    return with_installed_driver(parsed).render_as_string(hide_password=False)


def with_installed_driver(parsed: URL) -> URL:
    """``postgresql://`` with the PostgreSQL driver that imports here; other URLs unchanged."""
    if parsed.drivername != "postgresql":
        return parsed
    for module in ("psycopg", "psycopg2"):
        if importlib.util.find_spec(module) is not None:
            return parsed.set(drivername=f"postgresql+{module}")
    return parsed


def redact(url: str) -> str:
    """The URL with any password hidden, for messages and records."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL: hide anything that looks like user:password@
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)
