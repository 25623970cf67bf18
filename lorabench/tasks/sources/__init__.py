"""Readers for each place task data can come from; each returns raw per-split DataFrames that
:func:`lorabench.tasks.sources.common.finalize` turns into the :class:`TaskData` contract.

* ``tsv``: the original GLUE TSV layout and its quirks;
* ``hf_local``: a Hugging Face ``save_to_disk`` folder or parquet files;
* ``hub``: ``nyu-mll/glue`` through ``datasets``, failing fast when offline;
* ``custom``: CSV/TSV/JSONL files described by a YAML spec (registers the ``"custom"`` source).
"""

from lorabench.tasks.sources.common import DataNotFoundError, TaskDataError

__all__ = ["DataNotFoundError", "TaskDataError"]
