"""The papers' published GLUE numbers as data: what a run of the ``paper-roberta-base`` preset
(or any run on RoBERTa-base) is compared with, as ``paper | this run | difference``.

A :class:`PublishedResult` is one number of one paper's table: a variant (its registry name), the
model it was fine-tuned from, the task, the metric the number is in and the value as the paper
prints it (x100 for accuracy, Matthews and Pearson alike), with the citation and the setting it
was obtained under. ``lorabench report`` shows the section when a finished row matches one
(:mod:`lorabench.reports.published`); that module never names a variant, so the built-in numbers
live here beside the variants they are about (as :mod:`lorabench.variants.claims` does).

Sources (../shared/guide/anchors.md, copied from the papers): the LoRA paper's table 2
(RoBERTa-base, r 8 on query and value, median of 5 seeds) and its full fine-tuning row (from
Liu et al. 2019); the VeRA paper's table 2 (RoBERTa-base, 0.043M trainable: r 1024 on query and
value over 12 layers, 12 x 2 x (1024 + 768) = 43,008 parameters).

A plugin adds its own numbers with :func:`register_published_result`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# How the published numbers are matched with runs: the model's name (its last path part, so a
# Hub id "FacebookAI/roberta-base" and a local folder ".../roberta-base" both match).
ROBERTA_BASE = "roberta-base"


@dataclass(frozen=True)
class PublishedResult:
    """One published number: ``variant`` fine-tuned from ``model`` on ``task`` scored ``value``.

    Attributes:
        variant: the registry name of the variant ("full": full fine-tuning).
        model: the model's name as the paper gives it ("roberta-base"); a run matches when the
            last part of its model name or path equals it (case-insensitive).
        task: the lorabench task name ("sst2", "stsb").
        metric: the metric the number is in: the task's primary metric ("accuracy", "matthews",
            "pearson"); a run scored in another metric is not compared with it.
        value: the number as the paper prints it (x100: 63.4 Matthews correlation is 0.634).
        citation: the paper and table.
        setting: how the number was obtained, in a few words.
        rank: the nominal rank the number was obtained at (a run at another rank is a
            different configuration and is not compared); None: any (full fine-tuning).
    """

    variant: str
    model: str
    task: str
    metric: str
    value: float
    citation: str
    setting: str = ""
    rank: int | None = None

    def __post_init__(self) -> None:
        where = f"published result {self.variant}/{self.model}/{self.task}"
        if not (self.variant and self.model and self.task and self.metric):
            raise ValueError(f"{where}: variant, model, task and metric must be non-empty")
        if not (isinstance(self.value, int | float) and math.isfinite(self.value)):
            raise ValueError(f"{where}: value={self.value!r} must be a finite number (x100)")
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"{where}: rank={self.rank!r} must be >= 1 or None (any rank)")

    @property
    def key(self) -> tuple[str, str, str]:
        """(variant, model, task): at most one number per key is registered."""
        return (self.variant, self.model.lower(), self.task)


_LORA = "Hu et al. 2022, LoRA, ICLR, table 2 (RoBERTa-base)"
_LORA_SETTING = "r 8, alpha 16, query and value, median of 5 seeds; MRPC/RTE/STS-B from MNLI"
_FULL = "Hu et al. 2022, LoRA, ICLR, table 2, FT row (RoBERTa-base, from Liu et al. 2019)"
_VERA = "Kopiczko et al. 2024, VeRA, ICLR, table 2 (RoBERTa-base)"
_VERA_SETTING = "r 1024 on query and value (0.043M trainable)"
# The tasks' primary metrics (lorabench.tasks.glue): Matthews for CoLA, Pearson for STS-B,
# accuracy elsewhere (MRPC and QQP included, as these papers print them).
_METRIC = {"cola": "matthews", "stsb": "pearson"}


def _rows(
    variant: str, values: dict[str, float], citation: str, setting: str, rank: int | None
) -> tuple[PublishedResult, ...]:
    return tuple(
        PublishedResult(
            variant=variant,
            model=ROBERTA_BASE,
            task=task,
            metric=_METRIC.get(task, "accuracy"),
            value=value,
            citation=citation,
            setting=setting,
            rank=rank,
        )
        for task, value in values.items()
    )


BUILT_IN_PUBLISHED: tuple[PublishedResult, ...] = (
    *_rows(
        "lora",
        {
            "mnli": 87.5,
            "sst2": 95.1,
            "mrpc": 89.7,
            "cola": 63.4,
            "qnli": 93.3,
            "qqp": 90.8,
            "rte": 86.6,
            "stsb": 91.5,
        },
        _LORA,
        _LORA_SETTING,
        8,
    ),
    *_rows(
        "full",
        {
            "mnli": 87.6,
            "sst2": 94.8,
            "mrpc": 90.2,
            "cola": 63.6,
            "qnli": 92.8,
            "qqp": 91.9,
            "rte": 78.7,
            "stsb": 91.2,
        },
        _FULL,
        "full fine-tuning (125M trainable)",
        None,
    ),
    *_rows(
        "vera",
        {"sst2": 94.6, "mrpc": 89.5, "cola": 65.6, "qnli": 91.8, "rte": 78.7, "stsb": 90.7},
        _VERA,
        _VERA_SETTING,
        1024,
    ),
)

_REGISTERED: dict[tuple[str, str, str], PublishedResult] = {}


def register_published_result(
    result: PublishedResult, *, overwrite: bool = False
) -> PublishedResult:
    """Registers ``result`` (a plugin's paper, a test's number); returns it.

    Raises:
        ValueError: a number for the same variant, model and task is registered already
            (pass ``overwrite=True`` to replace it).
    """
    if result.key in _REGISTERED and not overwrite:
        raise ValueError(
            f"a published result for {'/'.join(result.key)} is registered already "
            f"({_REGISTERED[result.key].value} from {_REGISTERED[result.key].citation}); "
            "pass overwrite=True to replace it"
        )
    _REGISTERED[result.key] = result
    return result


def unregister_published_result(result: PublishedResult) -> None:
    """Removes ``result``'s number (a test's, after the test); absent is not an error."""
    _REGISTERED.pop(result.key, None)


def published_results() -> list[PublishedResult]:
    """Every registered published number, built-ins first in the order declared."""
    return list(_REGISTERED.values())


for _result in BUILT_IN_PUBLISHED:
    register_published_result(_result)
