"""A local copy of a Hugging Face dataset: a ``DatasetDict.save_to_disk`` folder, or parquet files.

Parquet files may be named ``<split>.parquet``, ``<split>-00000-of-00001.parquet`` (the layout of
a ``snapshot_download`` of ``nyu-mll/glue``: ``<config>/<split>-*.parquet``) or sit in a
``<split>/`` folder (the Hub's parquet conversion: ``<config>/<split>/0000.parquet``). Split names
are the Hugging Face ones (``train``, ``validation``, ``validation_matched``...); ``dev`` is
accepted for ``validation``.

When the copy carries its ClassLabel names (save_to_disk features, or the ``huggingface`` schema
metadata ``datasets`` writes into parquet), they must equal the spec's label names, so a copy with
another label order fails loudly instead of training on swapped labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from lorabench.tasks.sources.common import DataNotFoundError, TaskDataError
from lorabench.tasks.spec import TaskSpec


def is_save_to_disk(folder: Path) -> bool:
    """A ``DatasetDict.save_to_disk`` folder has ``dataset_dict.json`` at its root."""
    return (folder / "dataset_dict.json").is_file()


def has_parquet(folder: Path) -> bool:
    """Whether ``folder`` or a folder directly inside it holds ``*.parquet`` files."""
    return any(folder.glob("*.parquet")) or any(folder.glob("*/*.parquet"))


def _split_aliases(split: str) -> list[str]:
    return [split, split.replace("validation", "dev")] if "validation" in split else [split]


def _parquet_files(folder: Path, split: str) -> list[Path]:
    for name in _split_aliases(split):
        files = sorted(
            {
                *folder.glob(f"{name}.parquet"),
                *folder.glob(f"{name}-*.parquet"),
                *folder.glob(f"{name}/*.parquet"),
            }
        )
        if files:
            return files
    return []


def check_label_names(spec: TaskSpec, names: list[str] | None, where: str) -> None:
    """Raises :class:`TaskDataError` (naming ``where``) when a copy's ClassLabel names differ,
    in content or order, from the spec's label names; passes for regression tasks and for a
    copy that carries no names (``None``)."""
    if spec.task_type != "classification" or names is None:
        return
    if tuple(names) != tuple(spec.label_names or ()):
        raise TaskDataError(
            f"{where}: the copy's label names {list(names)} differ from task {spec.name!r}'s "
            f"{list(spec.label_names or ())} (the nyu-mll/glue order); "
            "re-export it from nyu-mll/glue"
        )


def _parquet_label_names(path: Path, label_column: str) -> list[str] | None:
    """ClassLabel names from the schema metadata ``datasets`` writes, if present."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    raw = metadata.get(b"huggingface")
    if not raw:
        return None
    features = json.loads(raw).get("info", {}).get("features", {})
    label = features.get(label_column, {})
    return label.get("names") if label.get("_type") == "ClassLabel" else None


def read_parquet_folder(spec: TaskSpec, folder: Path) -> dict[str, pd.DataFrame]:
    """The spec's splits from parquet files in ``folder`` (shards of one split are concatenated)."""
    splits: dict[str, pd.DataFrame] = {}
    for split in (spec.train_split, *spec.eval_splits):
        files = _parquet_files(folder, split)
        if not files:
            present = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.parquet"))
            raise DataNotFoundError(
                f"task {spec.name!r}: no parquet file for split {split!r} in {folder} (looked for "
                f"{split}.parquet, {split}-*.parquet, {split}/*.parquet); "
                f"parquet files there: {present}"
            )
        check_label_names(spec, _parquet_label_names(files[0], spec.label_column), str(files[0]))
        splits[split] = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return splits


def read_save_to_disk(spec: TaskSpec, folder: Path) -> dict[str, pd.DataFrame]:
    """The spec's splits from a ``DatasetDict.save_to_disk`` folder (needs ``datasets``)."""
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError as exc:
        raise ImportError(
            f"{folder} is a Hugging Face save_to_disk folder; reading it needs the datasets "
            "package: pip install 'lorabench[hub]'"
        ) from exc
    loaded = load_from_disk(str(folder))
    if not isinstance(loaded, DatasetDict):
        raise TaskDataError(
            f"{folder} holds a single Dataset; task {spec.name!r} needs a DatasetDict with splits "
            f"{[spec.train_split, *spec.eval_splits]} "
            "(save the whole DatasetDict with save_to_disk)"
        )
    splits: dict[str, pd.DataFrame] = {}
    for split in (spec.train_split, *spec.eval_splits):
        name = next((a for a in _split_aliases(split) if a in loaded), None)
        if name is None:
            raise DataNotFoundError(
                f"task {spec.name!r}: {folder} has no split {split!r}; it has {sorted(loaded)}"
            )
        dataset = loaded[name]
        feature = dataset.features.get(spec.label_column)
        check_label_names(spec, getattr(feature, "names", None), f"{folder} (split {name!r})")
        splits[split] = dataset.to_pandas()
    return splits


def read_hf_local(spec: TaskSpec, folder: Path) -> tuple[dict[str, pd.DataFrame], str]:
    """Whichever local Hugging Face form ``folder`` holds; also a source label for the record."""
    if is_save_to_disk(folder):
        return read_save_to_disk(spec, folder), f"hf-disk:{folder}"
    if has_parquet(folder):
        return read_parquet_folder(spec, folder), f"hf-parquet:{folder}"
    raise DataNotFoundError(f"{folder} is neither a save_to_disk folder nor holds parquet files")
