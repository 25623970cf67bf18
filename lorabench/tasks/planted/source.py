"""The ``planted`` task source: generate a task's splits once, then read them from a disk cache.

Generated tasks are kept under ``$LORABENCH_CACHE/planted`` (or ``~/.cache/lorabench/planted``),
one file per (task, version, generator version, recipe, labels, model, seed).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lorabench.models import load_model_and_tokenizer, model_fingerprint, resolve_model
from lorabench.tasks.data import LoadRequest, TaskData, cache_root, register_source
from lorabench.tasks.planted.head import balancing_bias, margins
from lorabench.tasks.planted.plant import weight_out_in
from lorabench.tasks.planted.recipe import PlantedRecipe, derived_generator
from lorabench.tasks.planted.teacher import build_teacher, center_head_without_bias
from lorabench.tasks.planted.texts import TEXT_COLUMN, generate_texts, predict_logits
from lorabench.tasks.sources.common import subset
from lorabench.tasks.spec import TaskSpec

# Bump when the generation procedure changes (what a given recipe and seed produce); it is part
# of the cache key, so stale caches are never read.
GENERATOR_VERSION = "1"


def cache_dir() -> Path:
    """Where generated tasks are kept: ``$LORABENCH_CACHE/planted`` or
    ``~/.cache/lorabench/planted``."""
    return cache_root() / "planted"


def cache_key(spec: TaskSpec, request: LoadRequest) -> str:
    """The cache entry of ``spec`` for ``request``'s model and seed (24 hex digits).

    The model enters by the content of its files (:func:`lorabench.models.model_fingerprint`),
    so a copied or moved model folder reuses the entry and a retrained one does not; a hub model
    that is not on disk here enters by its name.
    """
    payload = {
        "task": spec.name,
        "version": spec.version,
        "generator": GENERATOR_VERSION,
        "recipe": PlantedRecipe.from_options(spec.options).to_dict(),
        "labels": spec.num_labels,
        "model": model_fingerprint(request.model) or resolve_model(request.model),
        "seed": int(request.seed),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _write_atomic(payload: dict[str, Any], path: Path) -> None:
    """Writes to a temporary file in the same folder, then renames: readers never see half a
    file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate_planted(spec: TaskSpec, request: LoadRequest) -> dict[str, Any]:
    """Builds the teacher, generates and labels both splits; returns a cacheable payload
    (tensors, lists, strings and numbers only)."""
    recipe = PlantedRecipe.from_options(spec.options)
    base, tokenizer = load_model_and_tokenizer(request.model, num_labels=spec.num_labels)
    base.eval()
    teacher = build_teacher(spec, request, base=(base, tokenizer))
    base.load_state_dict(teacher.head_state, strict=False)

    # Draw extra inputs so that dropping the most ambiguous ones leaves the requested sizes.
    wanted = {
        spec.train_split: recipe.num_train,
        **dict.fromkeys(spec.eval_splits, recipe.num_validation),
    }
    drawn = {
        split: generate_texts(
            teacher.words,
            int(n / (1 - recipe.drop_ambiguous)) + 1,
            recipe.min_words,
            recipe.max_words,
            derived_generator(request.seed, "inputs", split),
        )
        for split, n in wanted.items()
    }
    all_texts = [t for texts in drawn.values() for t in texts]
    if teacher.output_bias is None:
        center_head_without_bias(teacher, base, all_texts)
    teacher_logits = predict_logits(teacher.model, tokenizer, all_texts)
    base_logits = predict_logits(base, tokenizer, all_texts)
    if teacher.output_bias is not None:
        # Balance the classes over all generated inputs; the student gets this bias too.
        offset = balancing_bias(teacher_logits)
        bias = teacher.head_state[teacher.output_bias]
        teacher.head_state[teacher.output_bias] = (bias.double() + offset).to(bias.dtype)
        teacher_logits = teacher_logits + offset.float()
        base_logits = base_logits + offset.float()

    rows: dict[str, dict[str, list]] = {}
    floor: dict[str, float] = {}
    start = 0
    for split, texts in drawn.items():
        t_logits = teacher_logits[start : start + len(texts)]
        b_logits = base_logits[start : start + len(texts)]
        start += len(texts)
        # Keep the wanted number of clearest inputs, in generation order.
        keep = margins(t_logits).argsort(descending=True)[: wanted[split]].sort().values
        labels = t_logits[keep].argmax(1)
        rows[split] = {TEXT_COLUMN: [texts[i] for i in keep.tolist()], "label": labels.tolist()}
        floor[split] = float((b_logits[keep].argmax(1) == labels).double().mean())

    # ||delta||_F / ||W||_F per touched matrix, for the record.
    relative_update_norm = {
        name: float(
            torch.linalg.matrix_norm(d.double())
            / torch.linalg.matrix_norm(weight_out_in(base.get_submodule(name)).detach().double())
        )
        for name, d in teacher.deltas.items()
    }
    summary = {
        "model": str(request.model or "all-minilm-l6-v2"),
        "seed": int(request.seed),
        "recipe": recipe.to_dict(),
        "planted_modules": sum(r > 0 for r in teacher.true_ranks.values()),
        "planted_rank_total": sum(teacher.true_ranks.values()),
        "relative_update_norm": relative_update_norm,
        "generator_version": GENERATOR_VERSION,
    }
    return {
        "rows": rows,
        "head_state": {k: v.detach().cpu().contiguous() for k, v in teacher.head_state.items()},
        "true_ranks": teacher.true_ranks,
        "floor": floor,
        "teacher": summary,
    }


# The rows are a pure function of the cache key: it is the data's identity before generating.
@register_source("planted", generated_key=lambda spec, request: cache_key(spec, request))
def load_planted(spec: TaskSpec, request: LoadRequest) -> TaskData:
    """Loads a planted task from the cache, generating (and caching) it on first use."""
    key = cache_key(spec, request)
    path = cache_dir() / f"{spec.name}-{key}.pt"
    payload = None
    if path.is_file():
        try:
            payload = torch.load(path, weights_only=True)
        except Exception:  # a corrupt or foreign file: regenerate and overwrite it
            payload = None
    if payload is None:
        payload = generate_planted(spec, request)
        _write_atomic(payload, path)

    splits: dict[str, pd.DataFrame] = {}
    for split, columns in payload["rows"].items():
        frame = pd.DataFrame(columns).astype({TEXT_COLUMN: "str", "label": "int64"})
        frame = frame.rename(
            columns={TEXT_COLUMN: spec.text_columns[0], "label": spec.label_column}
        )
        limit = (
            request.max_train_examples if split == spec.train_split else request.max_eval_examples
        )
        splits[split] = subset(frame, limit)
    extras = {
        "true_ranks": dict(payload["true_ranks"]),
        "head_state": dict(payload["head_state"]),
        "freeze_head": True,
        "floor": dict(payload["floor"]),
        "teacher": payload["teacher"],
        "cache_file": str(path),
    }
    source = f"planted:{spec.name}:seed={request.seed}"
    return TaskData(spec=spec, splits=splits, source=source, extras=extras)
