"""Run configuration: the compute budget, the training recipe, and one run's full config.

Defaults are set here once; the CLI, YAML suites, searches and baselines all build these objects.

A :class:`RunConfig` is first what a user asked for (a variant's overrides, a task name or YAML
path, a model name or folder). :meth:`lorabench.harness.prepared.RunCache.resolve` turns it into the
run that actually happens: the task's registered name and version, and fingerprints of the data
the run reads and of the model's files. The run's identity (:attr:`RunConfig.run_id`) is the hash
of that resolved run, with the variant's config after its defaults: restating a default keeps the
id, and anything that changes the computation changes it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from lorabench.results.labels import LATER_TRAIN_DEFAULTS
from lorabench.results.records import config_hash

if TYPE_CHECKING:
    from lorabench.variants.base import VariantConfig

BudgetKind = Literal["steps", "tokens", "seconds", "flops"]
BUDGET_KINDS: tuple[str, ...] = ("steps", "tokens", "seconds", "flops")
# The most optimiser steps one run may plan. Far beyond any benchmark (a CPU takes weeks for
# it); a budget that implies more is a typo (tokens=1e20), refused before anything loops.
MAX_PLANNED_STEPS = 10_000_000
_BUDGET_EXAMPLES = {"steps": "500", "tokens": "1e6", "seconds": "600", "flops": "2e15"}


# Numeric precisions of a run's forward pass (``train.precision``): float32, or autocast to
# bfloat16 / float16 with the adapter, head and optimiser state kept in float32.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")


class BenchmarkConfigError(ValueError):
    """A bad benchmark setting; the message names the key, the value and the fix."""


@dataclass(frozen=True)
class Budget:
    """A compute budget every run of a comparison shares.

    ``steps``: optimiser steps; ``tokens``: non-padding training tokens; ``seconds``: training
    wall-clock seconds (evaluation not included); ``flops``: training FLOPs as counted by torch's
    flop counter on a sample step and scaled by tokens.
    """

    kind: BudgetKind
    limit: float

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise BenchmarkConfigError(
                f"budget kind {self.kind!r} is unknown; "
                f"use one of {', '.join(BUDGET_KINDS)} (e.g. steps=500)"
            )
        limit = self.limit
        example = _BUDGET_EXAMPLES[self.kind]
        # bool is an int subclass, but "steps: true" is a mistake, not 1 step.
        if not isinstance(limit, int | float) or isinstance(limit, bool):
            raise BenchmarkConfigError(
                f"budget {self.kind}={limit!r} must be a number, e.g. {self.kind}={example}"
            )
        # Checked here, before any loop starts: an infinite or NaN limit would otherwise end in
        # an OverflowError (int(inf)) or a training loop that never stops.
        try:
            finite = math.isfinite(limit)
        except OverflowError:  # an int too large for a float: nothing downstream could use it
            finite = False
        if not finite or limit <= 0:
            raise BenchmarkConfigError(
                f"budget {self.kind}={limit!r} must be a finite number > 0, "
                f"e.g. {self.kind}={example}"
            )
        if self.kind == "steps":
            if not float(limit).is_integer():
                raise BenchmarkConfigError(
                    f"budget steps={limit!r} must be a whole number of optimiser steps; use "
                    + " or ".join(
                        f"steps={n}" for n in sorted({max(1, math.floor(limit)), math.ceil(limit)})
                    )
                )
            if limit > MAX_PLANNED_STEPS:
                raise BenchmarkConfigError(
                    f"budget steps={limit:g} is more optimiser steps than lorabench plans "
                    f"({MAX_PLANNED_STEPS:,}); use at most steps={MAX_PLANNED_STEPS}"
                )

    @classmethod
    def parse(cls, text: str | dict[str, Any] | Budget) -> Budget:
        """``"steps=500"``, ``"seconds=1800"``, ``"flops=2e15"`` or ``{"steps": 500}``."""
        if isinstance(text, Budget):
            return text
        if isinstance(text, dict):
            if len(text) != 1:
                raise BenchmarkConfigError(
                    f"budget {text!r} must have exactly one key, e.g. {{steps: 500}}"
                )
            ((kind, value),) = text.items()
            return cls(str(kind), _number(value, f"budget {kind}"))
        if not isinstance(text, str) or "=" not in text:
            raise BenchmarkConfigError(
                f"budget {text!r} must look like KIND=NUMBER, e.g. steps=500 or seconds=600"
            )
        kind, _, value = text.partition("=")
        return cls(kind.strip(), _number(value.strip(), f"budget {kind.strip()}"))

    def __str__(self) -> str:
        value = int(self.limit) if float(self.limit).is_integer() else self.limit
        return f"{self.kind}={value:g}" if isinstance(value, float) else f"{self.kind}={value}"

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., "limit": ...}``, as records store it (:meth:`RunConfig.from_dict` reads
        it back)."""
        return {"kind": self.kind, "limit": self.limit}


# The one place the default budget is written (suites, the CLI's help and RunConfig use it).
DEFAULT_BUDGET = Budget("steps", 100)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but "learning_rate: true" is a mistake, not 1.0.
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and value == value
    )  # not NaN


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise BenchmarkConfigError(f"{what}={value!r} is not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float: as infinite as 1e999
        return math.inf
    except (TypeError, ValueError):
        raise BenchmarkConfigError(f"{what}={value!r} is not a number") from None
    # inf and NaN stay floats (is_integer() is False for both); Budget refuses them by name.
    return int(number) if number.is_integer() else number


@dataclass
class TrainConfig:
    """The training recipe shared by every run of a comparison.

    Defaults follow the LoRA paper's GLUE recipe (AdamW, 6% linear warm-up then linear decay,
    weight decay 0.1) scaled to CPU-sized runs (shorter sequences, frequent evaluation).
    """

    learning_rate: float = 5e-4
    head_learning_rate: float | None = None  # None: same as learning_rate
    batch_size: int = 32
    eval_batch_size: int = 64
    weight_decay: float = 0.1
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    max_length: int = 128
    eval_every: int | None = None  # optimiser steps between evaluations; None: only at the end
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    train_head: bool = (
        True  # the classification head trains alongside the adapter (as PEFT's modules_to_save)
    )
    # "fp32", or "bf16"/"fp16": the forward pass runs under torch.autocast while the adapter,
    # the head and AdamW's state stay float32 (fp16 adds a gradient scaler). Part of identity.
    precision: str = "fp32"
    # Micro-batches of batch_size per optimiser step (budgets count optimiser steps and every
    # micro-batch's tokens). Part of identity: the effective batch is batch_size x grad_accum.
    grad_accum: int = 1

    def validate(self) -> None:
        """Checks every setting; the error names the setting, its value and what it must be."""
        for name in ("batch_size", "eval_batch_size", "max_length", "grad_accum"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise BenchmarkConfigError(f"train.{name}={value!r} must be a positive integer")
        for name in ("eval_every", "max_train_examples", "max_eval_examples"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise BenchmarkConfigError(
                    f"train.{name}={value!r} must be a positive integer or null"
                )
        if not _is_number(self.learning_rate) or self.learning_rate <= 0:
            raise BenchmarkConfigError(
                f"train.learning_rate={self.learning_rate!r} must be a number > 0, e.g. 5e-4"
            )
        if self.head_learning_rate is not None and (
            not _is_number(self.head_learning_rate) or self.head_learning_rate <= 0
        ):
            raise BenchmarkConfigError(
                f"train.head_learning_rate={self.head_learning_rate!r} must be a number > 0 "
                "or null (null: learning_rate)"
            )
        if not _is_number(self.warmup_ratio) or not 0 <= self.warmup_ratio < 1:
            raise BenchmarkConfigError(
                f"train.warmup_ratio={self.warmup_ratio!r} must be a number in [0, 1), e.g. 0.06"
            )
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise BenchmarkConfigError(
                f"train.weight_decay={self.weight_decay!r} must be a number >= 0, e.g. 0.1"
            )
        if not _is_number(self.max_grad_norm) or self.max_grad_norm <= 0:
            raise BenchmarkConfigError(
                f"train.max_grad_norm={self.max_grad_norm!r} must be a number > 0, e.g. 1.0"
            )
        if self.precision not in PRECISIONS:
            raise BenchmarkConfigError(
                f"train.precision={self.precision!r} is unknown; use one of "
                f"{', '.join(PRECISIONS)} (e.g. precision: bf16)"
            )
        if not isinstance(self.train_head, bool):
            raise BenchmarkConfigError(
                f"train.train_head={self.train_head!r} must be true or false"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A validated recipe from plain data; missing keys take the defaults, an unknown key is
        an error listing the valid ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BenchmarkConfigError(
                f"unknown training setting(s) {unknown}; valid: {sorted(known)}"
            )
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Every setting as plain data, defaults included."""
        return dataclasses.asdict(self)

    def identity_dict(self) -> dict[str, Any]:
        """The settings as a run's identity hashes them: :meth:`to_dict` without the settings
        added later (``precision``, ``grad_accum``) while they hold the value every earlier run
        had, so that the id of every run stored before them is unchanged."""
        return {
            k: v
            for k, v in self.to_dict().items()
            if not (k in LATER_TRAIN_DEFAULTS and v == LATER_TRAIN_DEFAULTS[k])
        }


@dataclass
class RunConfig:
    """Everything that determines one run. Its :attr:`run_id` is the run's identity in the store.

    ``model`` and ``data_dir`` say where to read from; they are not identity themselves: the
    model's name and fingerprint and the data's fingerprint are. The last three fields are
    filled by resolution (``RunCache.resolve``); empty, the run is not resolved yet.
    """

    variant: str
    task: str
    seed: int = 0
    variant_config: dict[str, Any] = field(
        default_factory=dict
    )  # overrides of the variant's defaults
    model: str | None = None  # None: the packaged all-MiniLM-L6-v2
    budget: Budget = DEFAULT_BUDGET
    train: TrainConfig = field(default_factory=TrainConfig)
    data_dir: str | None = None
    tag: str = ""
    task_version: str = ""
    data_fingerprint: str = ""  # lorabench.tasks.fingerprint.data_fingerprint of the loaded splits
    model_fingerprint: str = ""  # lorabench.models.model_fingerprint of the model folder

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain data (budget and recipe as dicts): the core of a record's
        ``config``; :meth:`from_dict` reads it back."""
        return {
            "variant": self.variant,
            "task": self.task,
            "seed": self.seed,
            "variant_config": dict(self.variant_config),
            "model": self.model,
            "budget": self.budget.to_dict(),
            "train": self.train.to_dict(),
            "data_dir": self.data_dir,
            "tag": self.tag,
            "task_version": self.task_version,
            "data_fingerprint": self.data_fingerprint,
            "model_fingerprint": self.model_fingerprint,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Reads :meth:`to_dict`'s output; the budget may also be ``{kind: limit}`` or
        ``"steps=500"``, and a missing recipe or budget takes the defaults. The recipe is
        validated."""
        data = dict(data)
        budget = data.get("budget", DEFAULT_BUDGET)
        if isinstance(budget, dict) and "kind" in budget:
            budget = {budget["kind"]: budget["limit"]}
        data["budget"] = Budget.parse(budget)
        data["train"] = TrainConfig.from_dict(data.get("train") or {})
        return cls(**data)

    @property
    def resolved(self) -> bool:
        """Whether the data this run reads is known (see ``RunCache.resolve``)."""
        return bool(self.data_fingerprint)

    def variant_config_object(self) -> VariantConfig:
        """The variant's config: its defaults with this run's overrides (see
        :func:`build_variant_config`)."""
        return build_variant_config(self.variant, self.variant_config)

    def resolved_variant_config(self) -> dict[str, Any]:
        """The variant's full config as plain data; for a record of a plugin that is not
        installed here, the overrides as stored (all that is known of it)."""
        from lorabench.registry import UnknownNameError

        try:
            return self.variant_config_object().to_dict()
        except UnknownNameError:
            return dict(self.variant_config)

    def settings(self) -> dict[str, Any]:
        """What the run computes, apart from the data it reads: the identity without the data's
        fingerprint (two runs with equal settings and other data are "the same run on new data")."""
        from lorabench.models import model_name

        return _canonical(
            {
                "variant": self.variant,
                "variant_config": self.resolved_variant_config(),
                "task": self.task,
                "task_version": self.task_version,
                "model": model_name(self.model),
                "model_fingerprint": self.model_fingerprint,
                "budget": self.budget.to_dict(),
                "train": self.train.identity_dict(),
                "seed": self.seed,
            }
        )

    @property
    def run_id(self) -> str:
        """Identity of the run: the hash of its settings and the data it reads (not the free-form
        tag, not where the files are)."""
        return config_hash({**self.settings(), "data": self.data_fingerprint})

    @property
    def experiment_id(self) -> str:
        """What the seeds of one comparison cell share: the settings without the seed and without
        the fingerprints of what was read, the task by its registered name. A regression
        baseline matches stored runs to its variant x task cells by it, so runs written by an
        older release (no fingerprints, a custom task named by its path) still match."""
        settings = self.settings()
        for key in ("seed", "model_fingerprint", "task_version"):
            settings.pop(key)
        settings["task"] = _task_name(self.task)
        return config_hash(settings)

    @property
    def settings_id(self) -> str:
        """The hash of :meth:`settings`: equal for the same run on other data."""
        return config_hash(self.settings())


def build_variant_config(variant: str, overrides: dict[str, Any] | None = None) -> VariantConfig:
    """The one place a variant's overrides become its config: the registered variant's
    defaults, the overrides applied, every field validated. Suites, runs, the search and the
    runner all call this, so an override is checked (and defaulted) the same way everywhere.

    Raises the registry's UnknownNameError for an unknown variant and the variant's
    ConfigError (a ValueError) naming the field for a bad value.
    """
    from lorabench.variants import VARIANTS
    from lorabench.variants.adapter import make_config

    return make_config(VARIANTS.get(variant), dict(overrides or {}))


def _task_name(task: str) -> str:
    """A task's registered name (a custom task's YAML ``name`` for its path); the text as given
    when it cannot be read here."""
    from lorabench.tasks import get_task

    try:
        return get_task(task).name
    except Exception:
        return task


def _canonical(value: Any) -> Any:
    """JSON-ready identity values: ``8`` and ``8.0`` (YAML reads either) hash the same."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
