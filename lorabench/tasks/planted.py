"""Planted-rank teacher-student tasks: generated data whose true adapter ranks are known.

The recipe (a task's ``options``) names matrices of the model under test and a rank for each.
From the base model we build a *teacher* by adding a known low-rank update to those matrices,

    W_teacher = W + U diag(s) V^T,   U (out, r), V (in, r) with orthonormal columns,
    s_i = scale * ||W||_2  (all r planted directions equally strong, so the rank is sharp),

label generated inputs with the teacher, and record the planted ranks with the task
(``TaskData.extras["true_ranks"]``), so a report can check whether AdaLoRA's allocation or
DyLoRA's score-vs-rank curve finds them. An adapter of rank >= the planted rank on the same
matrices can represent the teacher exactly, so the task is realisable.

Inputs are random sequences of whole words from the model's own vocabulary (no special tokens,
no ``##`` word pieces, letters only), so the ordinary tokenisation pipeline reads them and each
word is about one token. Labels are the teacher's argmax through a classification head drawn at
random from the seed. The student gets the *same* head, frozen (``extras["head_state"]``, keyed
as in the model's ``state_dict``, and ``extras["freeze_head"] = True``): the head alone cannot
fit the labels, only the adapter can. The head's output bias is set so the classes split evenly
over the generated inputs, and the fraction ``drop_ambiguous`` of inputs closest to the teacher's
decision boundary is dropped, so no label hangs on float rounding.

``extras["floor"]`` records, per split, the accuracy of the base model (no update) with the same
head on the teacher's labels: what an adapter that learnt nothing scores. The teacher scores 100%
by construction.

Everything is a pure function of (recipe, model, seed): the deltas, the head and each split's
inputs come from their own ``torch.Generator`` streams (derived from the seed by hashing), so the
same seed gives identical rows, labels and ranks, another seed gives others, and changing the
split sizes changes neither the planted deltas, the head's weights nor the other split's inputs
(only the balancing bias, fitted on all drawn inputs, moves a little). Generated tasks are cached on disk (``LORABENCH_CACHE``
or ``~/.cache/lorabench``, sub-folder ``planted``), keyed by task, version, recipe, model and seed.

Recipe keys (``TaskSpec.options``):

``ranks``
    ``{module pattern: rank}``; patterns as in ``target_modules`` (``"query"``, a glob, or
    ``"re:..."``). A rank is an int for every matched module, or a list of ints stretched over
    the matched modules in model order (module ``i`` of ``n`` takes entry ``i * len // n``), so
    one list fits models of any depth. Rank 0 leaves a matrix untouched but records it.
``scale``
    strength of each planted direction relative to the matrix's spectral norm.
``num_train``, ``num_validation``
    examples per split (after dropping ambiguous ones).
``min_words``, ``max_words``
    length range of the generated inputs, in words.
``drop_ambiguous``
    fraction of generated inputs nearest the teacher's decision boundary that are discarded.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from lorabench.tasks import TASKS
from lorabench.tasks.data import LoadRequest, TaskData, register_source
from lorabench.tasks.sources.common import subset
from lorabench.tasks.spec import MetricSpec, TaskSpec
from lorabench.variants.base import ConfigError, is_conv1d, layer_shape
from lorabench.variants.targets import find_targets

# Bump when the generation procedure changes (what a given recipe and seed produce); it is part
# of the cache key, so stale caches are never read.
GENERATOR_VERSION = "1"
TEXT_COLUMN = "sentence"
LABEL_BATCH = 128  # inputs per labelling forward pass


class PlantedRecipeError(ConfigError):
    """A planted-task recipe is invalid for this model; the message names the key and the fix."""


@dataclass(frozen=True)
class PlantedRecipe:
    """The teacher and input recipe of a planted task (see the module docstring for each key)."""

    ranks: dict[str, int | list[int]]
    scale: float = 1.0
    num_train: int = 2000
    num_validation: int = 500
    min_words: int = 6
    max_words: int = 12
    drop_ambiguous: float = 0.1

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> PlantedRecipe:
        """Builds and validates a recipe from a task's ``options``, naming any unknown key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise PlantedRecipeError(f"planted recipe has unknown key(s) {unknown}; valid keys: {sorted(known)}")
        if "ranks" not in options:
            raise PlantedRecipeError("planted recipe needs 'ranks', e.g. {'query': 4, 'value': 4}")
        recipe = cls(**options)
        recipe.validate()
        return recipe

    def validate(self) -> None:
        if not isinstance(self.ranks, dict) or not self.ranks:
            raise PlantedRecipeError(f"ranks={self.ranks!r} must be a non-empty {{pattern: rank}} dict, e.g. {{'query': 4}}")
        for pattern, rank in self.ranks.items():
            values = rank if isinstance(rank, list | tuple) else [rank]
            if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
                raise PlantedRecipeError(
                    f"ranks[{pattern!r}]={rank!r} must be an int >= 0 or a non-empty list of them"
                )
        if not (isinstance(self.scale, int | float) and self.scale > 0):
            raise PlantedRecipeError(f"scale={self.scale!r} must be a number > 0 (e.g. 1.0)")
        for name in ("num_train", "num_validation", "min_words"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PlantedRecipeError(f"{name}={value!r} must be an integer >= 1")
        if not isinstance(self.max_words, int) or self.max_words < self.min_words:
            raise PlantedRecipeError(f"max_words={self.max_words!r} must be an integer >= min_words={self.min_words}")
        if not (0.0 <= self.drop_ambiguous < 1.0):
            raise PlantedRecipeError(f"drop_ambiguous={self.drop_ambiguous!r} must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- seeded randomness ----------------------------------------------------------------------------
def derived_generator(seed: int, *purpose: str) -> torch.Generator:
    """An independent ``torch.Generator`` for one purpose ("delta", module name), fixed by ``seed``."""
    digest = hashlib.sha256(json.dumps([int(seed), *purpose]).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


# -- the planted update ---------------------------------------------------------------------------
def resolve_ranks(model: nn.Module, ranks: dict[str, int | list[int]]) -> dict[str, int]:
    """``{module name: planted rank}`` for every module the recipe's patterns select.

    Fails on a pattern that matches nothing (with "did you mean"), on a module selected by two
    patterns, and on a rank above what the matrix can hold.
    """
    out: dict[str, int] = {}
    owner: dict[str, str] = {}
    for pattern, rank in ranks.items():
        names = list(find_targets(model, [pattern]))
        if isinstance(rank, list | tuple):
            # Stretch the list over the matched modules so one recipe fits any depth.
            per_module = [int(rank[i * len(rank) // len(names)]) for i in range(len(names))]
        else:
            per_module = [int(rank)] * len(names)
        for name, r in zip(names, per_module):
            if name in out:
                raise PlantedRecipeError(
                    f"module {name!r} is selected by both {owner[name]!r} and {pattern!r}; give each "
                    "module one rank (use narrower patterns, e.g. 're:.*layer\\.0\\..*query')"
                )
            out_f, in_f = layer_shape(model.get_submodule(name))
            if r > min(out_f, in_f):
                raise PlantedRecipeError(
                    f"rank {r} for {name!r} (pattern {pattern!r}) exceeds the matrix's maximum rank "
                    f"min{(out_f, in_f)} = {min(out_f, in_f)}; lower it"
                )
            out[name] = r
            owner[name] = pattern
    return out


def planted_delta(weight: torch.Tensor, rank: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """``U diag(s) V^T`` of exactly ``rank``, in ``weight``'s (out, in) layout, dtype and device.

    U and V are orthonormal bases of random subspaces (QR of Gaussian matrices); every singular
    value is ``scale * ||weight||_2``, so the update is as strong as the matrix's top direction
    times ``scale`` and its rank is unambiguous.
    """
    out_f, in_f = weight.shape
    if rank == 0:
        return torch.zeros_like(weight)
    u = torch.linalg.qr(torch.randn(out_f, rank, generator=generator, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(in_f, rank, generator=generator, dtype=torch.float64))[0]
    sigma = scale * torch.linalg.matrix_norm(weight.detach().double().cpu(), ord=2)
    return (sigma * u @ v.T).to(dtype=weight.dtype, device=weight.device)


def _weight_out_in(module: nn.Module) -> torch.Tensor:
    return module.weight.T if is_conv1d(module) else module.weight


def add_planted_updates(model: nn.Module, true_ranks: dict[str, int], scale: float, seed: int) -> dict[str, torch.Tensor]:
    """Adds each module's planted delta to its weight in place; returns the deltas (out, in)."""
    deltas: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, rank in true_ranks.items():
            module = model.get_submodule(name)
            # One generator per module: a module's delta does not depend on the rest of the recipe.
            delta = planted_delta(_weight_out_in(module), rank, scale, derived_generator(seed, "delta", name))
            module.weight.add_(delta.T if is_conv1d(module) else delta)
            deltas[name] = delta
    return deltas


# -- the classification head ----------------------------------------------------------------------
def _head_parameter_names(model: nn.Module) -> list[str]:
    """The classification head's tensors (:func:`lorabench.models.head_parameter_names`)."""
    from lorabench.models import head_parameter_names

    names = head_parameter_names(model)
    if not names:
        raise PlantedRecipeError(f"cannot find the classification head of {type(model).__name__}")
    return names


def random_head(model: nn.Module, num_labels: int, seed: int) -> tuple[dict[str, torch.Tensor], str | None]:
    """Seeded head tensors ``{name: tensor}`` (weights N(0, 1/fan_in), biases 0) and the name of
    the output bias (``None`` if the head has none)."""
    g = derived_generator(seed, "head")
    params = dict(model.named_parameters())
    state: dict[str, torch.Tensor] = {}
    output_bias = None
    for name in _head_parameter_names(model):
        p = params[name]
        if p.dim() >= 2:
            fan_in = p.shape[-1]
            state[name] = (torch.randn(p.shape, generator=g, dtype=torch.float64) / fan_in**0.5).to(p.dtype)
        else:
            state[name] = torch.zeros_like(p, device="cpu")
            if name.endswith("bias") and p.shape == (num_labels,):
                output_bias = name  # the last (num_labels,) bias is the output layer's
    return state, output_bias


def balancing_bias(logits: torch.Tensor, iterations: int = 200) -> torch.Tensor:
    """An offset per class such that ``argmax(logits + offset)`` splits the rows evenly.

    Two classes: exactly the median margin. More: iterative proportional updates (the offset of a
    class is lowered while it wins too often), which converge to near-equal shares.
    """
    logits = logits.double()
    k = logits.shape[1]
    if k == 2:
        m = torch.median(logits[:, 1] - logits[:, 0])
        return torch.stack([m / 2, -m / 2])
    offset = torch.zeros(k, dtype=torch.float64)
    for _ in range(iterations):
        share = torch.bincount((logits + offset).argmax(1), minlength=k).double() / len(logits)
        offset -= 0.5 * torch.log((share + 1e-3) * k)
    return offset - offset.mean()


def margins(logits: torch.Tensor) -> torch.Tensor:
    """Distance of each row from the decision boundary: top logit minus the runner-up."""
    top2 = logits.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


# -- inputs and labelling -------------------------------------------------------------------------
def word_list(tokenizer: Any) -> list[str]:
    """Whole words of the tokenizer's vocabulary: letters only, no specials, no word pieces.

    Each token id is decoded (so BPE's leading-space marker becomes a space) and kept if what
    remains is alphabetic; the list is sorted so it does not depend on dict order.
    """
    special = set(tokenizer.all_special_ids)
    words = set()
    for token, idx in tokenizer.get_vocab().items():
        if idx in special or token.startswith("##"):
            continue
        text = tokenizer.decode([idx]).strip()
        if len(text) >= 2 and text.isalpha():
            words.add(text)
    if len(words) < 10:
        raise PlantedRecipeError(f"the tokenizer's vocabulary has only {len(words)} whole words; planted tasks need >= 10")
    return sorted(words)


def generate_texts(words: list[str], n: int, min_words: int, max_words: int, generator: torch.Generator) -> list[str]:
    """``n`` space-joined random word sequences with uniformly random lengths."""
    lengths = torch.randint(min_words, max_words + 1, (n,), generator=generator).tolist()
    picks = torch.randint(len(words), (sum(lengths),), generator=generator).tolist()
    texts, start = [], 0
    for length in lengths:
        texts.append(" ".join(words[i] for i in picks[start:start + length]))
        start += length
    return texts


def predict_logits(model: nn.Module, tokenizer: Any, texts: list[str], batch_size: int = LABEL_BATCH) -> torch.Tensor:
    """Logits for ``texts`` in input order (eval mode, no grad; batches of similar length)."""
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # little padding per batch
    out = torch.empty(len(texts), model.config.num_labels, dtype=torch.float32)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, return_tensors="pt")
            logits = model(**{k: v.to(device) for k, v in enc.items()}).logits
            out[idx] = logits.float().cpu()
    return out


# -- the teacher ----------------------------------------------------------------------------------
@dataclass
class Teacher:
    """The base model with the planted updates and the seeded head, ready to label inputs."""

    model: nn.Module
    tokenizer: Any
    true_ranks: dict[str, int]
    deltas: dict[str, torch.Tensor]
    head_state: dict[str, torch.Tensor]
    output_bias: str | None
    words: list[str] = field(repr=False)


def build_teacher(spec: TaskSpec, request: LoadRequest, *, base: tuple[nn.Module, Any] | None = None) -> Teacher:
    """The teacher of ``spec`` for ``request.model`` and ``request.seed``.

    ``base`` (model, tokenizer) reuses an already loaded base model; it is copied, not changed.
    The head is seeded but not yet balanced (that needs the inputs; see :func:`load_planted`).
    """
    from lorabench.models import load_model_and_tokenizer

    recipe = PlantedRecipe.from_options(spec.options)
    if base is None:
        model, tokenizer = load_model_and_tokenizer(request.model, num_labels=spec.num_labels)
    else:
        model, tokenizer = copy.deepcopy(base[0]), base[1]
    model.eval()
    true_ranks = resolve_ranks(model, recipe.ranks)
    deltas = add_planted_updates(model, true_ranks, recipe.scale, request.seed)
    head_state, output_bias = random_head(model, spec.num_labels, request.seed)
    model.load_state_dict(head_state, strict=False)
    return Teacher(model, tokenizer, true_ranks, deltas, head_state, output_bias, word_list(tokenizer))


def _center_head_without_bias(teacher: Teacher, base: nn.Module, texts: list[str]) -> None:
    """Heads without an output bias (GPT-2, Llama ``score``) cannot be shifted; instead remove the
    direction of the mean feature from the output weight so every class's mean logit is zero."""
    name = _head_parameter_names(teacher.model)[-1]
    feats: list[torch.Tensor] = []
    layer = teacher.model.get_submodule(name.rsplit(".", 1)[0])
    hook = layer.register_forward_hook(lambda _m, inp, _o: feats.append(inp[0].reshape(-1, inp[0].shape[-1]).float()))
    try:
        predict_logits(teacher.model, teacher.tokenizer, texts)
    finally:
        hook.remove()
    mu = torch.cat(feats).mean(0).double()
    w = teacher.head_state[name].double()
    w = w - torch.outer(w @ mu, mu) / (mu @ mu)
    teacher.head_state[name] = w.to(teacher.head_state[name].dtype)
    teacher.model.load_state_dict({name: teacher.head_state[name]}, strict=False)
    base.load_state_dict({name: teacher.head_state[name]}, strict=False)


# -- the source -----------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where generated tasks are kept: ``$LORABENCH_CACHE/planted`` or ``~/.cache/lorabench/planted``."""
    root = os.environ.get("LORABENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lorabench")
    return Path(root) / "planted"


def _model_fingerprint(model: str | None) -> str:
    """The model's resolved name plus its folder's file sizes and times: a changed model is a
    different teacher, so a different cache entry."""
    from lorabench.models import resolve_model

    path = resolve_model(model)
    parts = [path]
    if os.path.isdir(path):
        for p in sorted(Path(path).iterdir()):
            if p.is_file():
                st = p.stat()
                parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def cache_key(spec: TaskSpec, request: LoadRequest) -> str:
    payload = {
        "task": spec.name,
        "version": spec.version,
        "generator": GENERATOR_VERSION,
        "recipe": PlantedRecipe.from_options(spec.options).to_dict(),
        "labels": spec.num_labels,
        "model": _model_fingerprint(request.model),
        "seed": int(request.seed),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _write_atomic(payload: dict[str, Any], path: Path) -> None:
    """Writes to a temporary file in the same folder, then renames: readers never see half a file."""
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
    from lorabench.models import load_model_and_tokenizer

    recipe = PlantedRecipe.from_options(spec.options)
    base, tokenizer = load_model_and_tokenizer(request.model, num_labels=spec.num_labels)
    base.eval()
    teacher = build_teacher(spec, request, base=(base, tokenizer))
    base.load_state_dict(teacher.head_state, strict=False)

    # Draw extra inputs so that dropping the most ambiguous ones leaves the requested sizes.
    wanted = {spec.train_split: recipe.num_train, **dict.fromkeys(spec.eval_splits, recipe.num_validation)}
    drawn = {
        split: generate_texts(
            teacher.words, int(n / (1 - recipe.drop_ambiguous)) + 1, recipe.min_words, recipe.max_words,
            derived_generator(request.seed, "inputs", split),
        )
        for split, n in wanted.items()
    }
    all_texts = [t for texts in drawn.values() for t in texts]
    if teacher.output_bias is None:
        _center_head_without_bias(teacher, base, all_texts)
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
        t_logits = teacher_logits[start:start + len(texts)]
        b_logits = base_logits[start:start + len(texts)]
        start += len(texts)
        # Keep the wanted number of clearest inputs, in generation order.
        keep = margins(t_logits).argsort(descending=True)[: wanted[split]].sort().values
        labels = t_logits[keep].argmax(1)
        rows[split] = {TEXT_COLUMN: [texts[i] for i in keep.tolist()], "label": labels.tolist()}
        floor[split] = float((b_logits[keep].argmax(1) == labels).double().mean())

    summary = {
        "model": str(request.model or "all-minilm-l6-v2"),
        "seed": int(request.seed),
        "recipe": recipe.to_dict(),
        "planted_modules": sum(r > 0 for r in teacher.true_ranks.values()),
        "planted_rank_total": sum(teacher.true_ranks.values()),
        "relative_update_norm": {  # ||delta||_F / ||W||_F per touched matrix, for the record
            name: float(torch.linalg.matrix_norm(d.double()) / torch.linalg.matrix_norm(
                _weight_out_in(base.get_submodule(name)).detach().double()))
            for name, d in teacher.deltas.items()
        },
        "generator_version": GENERATOR_VERSION,
    }
    return {
        "rows": rows,
        "head_state": {k: v.detach().cpu().contiguous() for k, v in teacher.head_state.items()},
        "true_ranks": teacher.true_ranks,
        "floor": floor,
        "teacher": summary,
    }


@register_source("planted")
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
        frame = frame.rename(columns={TEXT_COLUMN: spec.text_columns[0], "label": spec.label_column})
        limit = request.max_train_examples if split == spec.train_split else request.max_eval_examples
        splits[split] = subset(frame, limit)
    extras = {
        "true_ranks": dict(payload["true_ranks"]),
        "head_state": dict(payload["head_state"]),
        "freeze_head": True,
        "floor": dict(payload["floor"]),
        "teacher": payload["teacher"],
        "cache_file": str(path),
    }
    return TaskData(spec=spec, splits=splits, source=f"planted:{spec.name}:seed={request.seed}", extras=extras)


# -- the built-in planted tasks -------------------------------------------------------------------
def planted_spec(name: str, description: str = "", *, version: str = "1", **recipe: Any) -> TaskSpec:
    """A binary planted-rank :class:`TaskSpec` from recipe keys (validated now, not at load time).

    Register your own with ``TASKS.add(planted_spec("planted-q8", ranks={"query": 8}))``.
    """
    PlantedRecipe.from_options(recipe)
    return TaskSpec(
        name=name,
        version=version,
        source="planted",
        text_columns=(TEXT_COLUMN,),
        label_column="label",
        label_names=("class_0", "class_1"),
        metrics=(MetricSpec("accuracy"),),
        primary_metric="accuracy",
        options=recipe,
        description=description,
    )


PLANTED_TASKS: tuple[TaskSpec, ...] = (
    planted_spec(
        "planted-tiny",
        "planted rank 2 on query/value of every layer; short inputs, 1.5k examples (tests, quick preset)",
        ranks={"query": 2, "value": 2}, scale=1.0, num_train=1024, num_validation=512,
        min_words=4, max_words=10,
    ),
    planted_spec(
        "planted-ci",
        "planted rank 2 on query/value, twice planted-tiny's strength (the base model is near chance); "
        "768 short examples (the CI regression suite)",
        ranks={"query": 2, "value": 2}, scale=2.0, num_train=512, num_validation=256,
        min_words=4, max_words=10,
    ),
    planted_spec(
        "planted-uniform",
        "planted rank 4 on query/value of every layer (does a method find one rank everywhere?)",
        ranks={"query": 4, "value": 4}, scale=1.0, num_train=2000, num_validation=500,
    ),
    planted_spec(
        "planted-mixed",
        "planted ranks 8,4,2,1,0,0 (query) and 0,0,1,2,4,8 (value) over the layers: does allocation follow?",
        ranks={"query": [8, 4, 2, 1, 0, 0], "value": [0, 0, 1, 2, 4, 8]}, scale=1.0,
        num_train=2000, num_validation=500,
    ),
)

for _spec in PLANTED_TASKS:
    TASKS.add(_spec, overwrite=True)  # overwrite: re-importing (importlib.reload) is harmless
