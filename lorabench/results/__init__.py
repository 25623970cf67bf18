"""Run records and the results database.

``load_results(path)`` gives one tidy row per run and ``load_curves(path)`` the learning curves
in long form (pandas DataFrames); ``ResultStore(path)`` reads and writes the records themselves.
The names below are imported on first use, so that importing a record does not import
SQLAlchemy or pandas.
"""

from __future__ import annotations

from typing import Any

# name -> the module that defines it
_EXPORTS = {
    "CurvePoint": "lorabench.results.records",
    "RunRecord": "lorabench.results.records",
    "ResultStore": "lorabench.results.store",
    "ResultStoreError": "lorabench.results.store",
    "load_curves": "lorabench.results.store",
    "load_results": "lorabench.results.store",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """``lorabench.results.load_results`` and the other exports, imported when first used."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lorabench.results' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
