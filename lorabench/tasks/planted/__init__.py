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
(only the balancing bias, fitted on all drawn inputs, moves a little). Generated tasks are cached
on disk (``LORABENCH_CACHE`` or ``~/.cache/lorabench``, sub-folder ``planted``), keyed by task,
version, recipe, model and seed.

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

One job per module:

``recipe``   the recipe (:class:`PlantedRecipe`, from a task's ``options``) and the seed's streams
``plant``    which matrices get which rank, and adding ``U diag(s) V^T`` to them
``head``     the seeded classification head and its class balancing
``texts``    the generated inputs and a model's logits on them
``teacher``  the base model with the planted updates and the head (:class:`Teacher`)
``source``   the ``planted`` source: generation, the disk cache and loading
"""

from __future__ import annotations

from typing import Any

from lorabench.tasks import TASKS
from lorabench.tasks.planted.head import balancing_bias, head_names, margins, random_head
from lorabench.tasks.planted.plant import (
    add_planted_updates,
    planted_delta,
    resolve_ranks,
    weight_out_in,
)
from lorabench.tasks.planted.recipe import PlantedRecipe, PlantedRecipeError, derived_generator
from lorabench.tasks.planted.source import (
    GENERATOR_VERSION,
    cache_dir,
    cache_key,
    generate_planted,
    load_planted,
)
from lorabench.tasks.planted.teacher import Teacher, build_teacher, center_head_without_bias
from lorabench.tasks.planted.texts import (
    LABEL_BATCH,
    TEXT_COLUMN,
    generate_texts,
    predict_logits,
    word_list,
)
from lorabench.tasks.spec import MetricSpec, TaskSpec


def planted_spec(
    name: str, description: str = "", *, version: str = "1", **recipe: Any
) -> TaskSpec:
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
        "planted rank 2 on query/value of every layer; short inputs, 1.5k examples "
        "(tests, quick preset)",
        ranks={"query": 2, "value": 2}, scale=1.0, num_train=1024, num_validation=512,
        min_words=4, max_words=10,
    ),
    planted_spec(
        "planted-ci",
        "planted rank 2 on query/value, twice planted-tiny's strength (the base model is near "
        "chance); 768 short examples (the CI regression suite)",
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
        "planted ranks 8,4,2,1,0,0 (query) and 0,0,1,2,4,8 (value) over the layers: does "
        "allocation follow?",
        ranks={"query": [8, 4, 2, 1, 0, 0], "value": [0, 0, 1, 2, 4, 8]}, scale=1.0,
        num_train=2000, num_validation=500,
    ),
)  # fmt: skip

for _spec in PLANTED_TASKS:
    TASKS.add(_spec, overwrite=True)  # overwrite: re-importing (importlib.reload) is harmless

__all__ = [
    "GENERATOR_VERSION",
    "LABEL_BATCH",
    "PLANTED_TASKS",
    "TEXT_COLUMN",
    "PlantedRecipe",
    "PlantedRecipeError",
    "Teacher",
    "add_planted_updates",
    "balancing_bias",
    "build_teacher",
    "cache_dir",
    "cache_key",
    "center_head_without_bias",
    "derived_generator",
    "generate_planted",
    "generate_texts",
    "head_names",
    "load_planted",
    "margins",
    "planted_delta",
    "planted_spec",
    "predict_logits",
    "random_head",
    "resolve_ranks",
    "weight_out_in",
    "word_list",
]
