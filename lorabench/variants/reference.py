"""Reference methods: full fine-tuning, BitFit and the task head alone, as registered variants.

They answer "did the adapter learn anything, and how close is it to training everything?". Run by
the same harness under the same budgets, they report as rows beside the adapter variants:

* ``full``: every weight of the base model trains (the task head too, trained by the harness as
  for every variant);
* ``bitfit`` (Ben Zaken et al., ACL 2022): every bias of the base model trains, LayerNorm biases
  included, as in the authors' scripts (``benzakenelad/BitFit``: every parameter whose name
  holds "bias");
* ``head``: nothing of the base model trains, only the task head: a linear probe of the frozen
  features.

They wrap no layer (``wraps_layers = False``): :meth:`ReferenceMethod.bind_model` picks the base
parameters that train and :meth:`~ReferenceMethod.shared_parameters` declares them, so the
optimiser, the parameter counts, the memory estimate and ``Adapter.save``/``load_adapter`` (the
trained values, by parameter name) work as for any variant. What does not apply is said plainly:

* no rank: the config takes no field, ``ranks()`` and ``eval_ranks()`` are empty, a report row
  has no ``r=`` label and the record's ``rank`` is None;
* no merge: ``Adapter.merge``/``unmerge`` raise ``NotMergeableError`` (the model already is the
  trained model);
* ``detach`` keeps the trained values (it restores ``requires_grad`` and removes the variant):
  holding a copy of the original weights would cost full fine-tuning a second model;
* no PEFT format (``export_peft`` refuses them by name).

The task head is never among a reference method's declared parameters: the harness trains it
(``train.train_head``) exactly as for the adapter variants, so it is counted once. ``head`` with
``train_head: false`` (or on a task whose head is frozen) would train nothing and is refused
before the suite starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from lorabench.models import head_parameter_names
from lorabench.variants.base import AdapterShapeError, ConfigError, Variant, VariantConfig
from lorabench.variants.recipe import Recipe
from lorabench.variants.registry import VARIANTS

# The LoRA paper's RoBERTa-base GLUE learning rates (roberta_base_*.sh, Hu et al. 2021, table
# 9): 4e-4 to 5e-4. The reference recipes below are set against it.
_LORA_GLUE_LR = "4e-4 to 5e-4 (the LoRA paper's roberta_base_*.sh)"


class ReferenceMethodNotApplicable(ConfigError):
    """A reference method does not apply to this model (BitFit on a model without biases): the
    message names the model and what to use instead."""


@dataclass
class ReferenceConfig(VariantConfig):
    """A reference method's config: it has no setting at all (no rank, no target modules, no
    dropout). The fields inherited from :class:`VariantConfig` are cleared and never read; a
    value given for any of them is refused, naming the variant."""

    r: Any = None
    target_modules: Any = ()
    dropout: float = 0.0

    def validate(self) -> None:
        """Nothing to check: the config has no field a user can set."""

    @property
    def nominal_rank(self) -> int | None:  # type: ignore[override]
        """None: a reference method has no rank (records store ``rank`` None)."""
        return None

    def to_dict(self) -> dict[str, Any]:
        """``{}``: no settings, so no rank or module list appears in a run's config or label."""
        return {}

    @classmethod
    def field_names(cls) -> set[str]:
        """None: overrides, YAML and search spaces can set nothing here."""
        return set()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VariantConfig:
        """The (empty) config; any key is refused, naming it and why."""
        if data:
            raise ConfigError(
                f"{cls.__name__} has no field(s) {sorted(data)}: a reference method (full, "
                "bitfit, head) has no rank, target modules or dropout. Set such values per "
                "adapter variant (e.g. lora.r=16 rather than *.r=16), or remove them for this "
                "variant"
            )
        return cls()


class ReferenceMethod(Variant):
    """A variant that trains parameters the base model already has (or none: ``head``).

    Subclasses say which through :meth:`trains`. The chosen parameters (never the task head's:
    the harness trains the head) are unfrozen by :meth:`bind_model`, declared by
    :meth:`shared_parameters` and saved by name through :meth:`shared_state`.
    """

    config_class = ReferenceConfig
    wraps_layers = False
    mergeable = False
    init_equals_base = True  # nothing changes until training does
    label_fields: ClassVar[frozenset[str]] = frozenset()
    # The search space's learning-rate range (log scale); each method sets its own.
    learning_rate_range: ClassVar[tuple[float, float]] = (1e-4, 1e-2)

    def __init__(self, config: VariantConfig) -> None:
        super().__init__(config)
        # Base parameter name -> the model's own Parameter. A plain dict: registered on this
        # module they would be a second copy of the model's parameters in its state_dict.
        self.trained: dict[str, nn.Parameter] = {}

    # -- which parameters train ---------------------------------------------------------------
    def trains(self, name: str, parameter: nn.Parameter) -> bool:
        """Whether base parameter ``name`` (outside the task head) trains."""
        raise NotImplementedError(f"{type(self).__name__} must implement trains()")

    def bind_model(self, model: nn.Module) -> None:
        """Picks and unfreezes the parameters :meth:`trains` names, the task head excluded."""
        head = set(head_parameter_names(model))
        chosen = {
            name: p
            for name, p in model.named_parameters()
            if name not in head and self.trains(name, p)
        }
        if not chosen and not self.trains_head_only:
            raise ReferenceMethodNotApplicable(self.nothing_to_train(model))
        for p in chosen.values():
            p.requires_grad_(True)
        self.trained = chosen

    def nothing_to_train(self, model: nn.Module) -> str:
        """The message when :meth:`trains` picks nothing on ``model``."""
        return (
            f"{self.report_name()} ({self.name!r}) found no parameter to train in "
            f"{type(model).__name__}; use another reference method"
        )

    def shared_parameters(self) -> list[nn.Parameter]:
        """The base parameters that train, in model order."""
        return list(self.trained.values())

    # -- save / load: the trained values by parameter name ------------------------------------
    def shared_state(self) -> dict[str, torch.Tensor]:
        """The trained parameters' values, keyed by their name in the model."""
        return {name: p.detach() for name, p in self.trained.items()}

    def load_shared_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copies saved values in; checks every name and shape first, so a save of another
        model changes nothing (the error names the first mismatches)."""
        missing = sorted(set(self.trained) - set(state))
        unexpected = sorted(set(state) - set(self.trained))
        wrong = [
            f"{name}: saved {tuple(state[name].shape)} vs model {tuple(p.shape)}"
            for name, p in self.trained.items()
            if name in state and tuple(state[name].shape) != tuple(p.shape)
        ]
        if wrong:
            raise AdapterShapeError(
                "this adapter was saved for another model shape (parameter: shape): "
                + "; ".join(wrong[:5])
                + ("; ..." if len(wrong) > 5 else "")
                + ". Load it into the model it was trained on."
            )
        if missing or unexpected:
            raise AdapterShapeError(
                f"this {self.name!r} adapter was saved for another model: parameters "
                f"missing from the save {missing[:3]}, saved but not in this model "
                f"{unexpected[:3]}. Load it into the model it was trained on."
            )
        with torch.no_grad():
            for name, p in self.trained.items():
                p.copy_(state[name].to(p))

    # -- no rank -------------------------------------------------------------------------------
    def ranks(self) -> dict[str, int]:
        """Empty: no adapted matrix, no rank."""
        return {}

    def eval_ranks(self) -> list[int]:
        """Empty: nothing to evaluate at several ranks."""
        return []

    def set_eval_rank(self, rank: int | None) -> None:
        """Refused: a reference method has no rank."""
        raise NotImplementedError(
            f"{self.name!r} is a reference method and has no rank to evaluate at; only "
            "nested-rank variants (dylora) can be evaluated at several ranks"
        )

    @classmethod
    def rank_label(cls, config: Mapping[str, Any], ranks: Mapping[str, float] | None = None) -> str:
        """``""``: no rank in a reference method's row label."""
        return ""

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        """The learning rate alone (no other setting exists), over ``learning_rate_range``."""
        low, high = cls.learning_rate_range
        return {"train.learning_rate": {"type": "float", "low": low, "high": high, "log": True}}


@VARIANTS.register("full")
class FullFineTuning(ReferenceMethod):
    """Full fine-tuning: every weight of the base model trains (a reference row)."""

    name = "full"
    description = "reference method: full fine-tuning, every weight of the base model trains"
    display_name = "Full fine-tuning"
    report_order = 100
    learning_rate_range = (5e-6, 1e-4)
    recipe = Recipe(
        learning_rate_scale=0.04,
        source=(
            "RoBERTa's GLUE fine-tuning (Liu et al. 2019, table 10: learning rate 1e-5 to 3e-5) "
            "and the LoRA paper's full fine-tuning baseline on RoBERTa-base; against LoRA's "
            f"{_LORA_GLUE_LR}, 2e-5 / 5e-4 = 0.04x"
        ),
    )

    def trains(self, name: str, parameter: nn.Parameter) -> bool:
        """Every parameter."""
        return True


@VARIANTS.register("bitfit")
class BitFit(ReferenceMethod):
    """BitFit (Ben Zaken et al. 2022): every bias of the base model trains (a reference row)."""

    name = "bitfit"
    description = (
        "reference method: BitFit (Ben Zaken et al. 2022), every bias of the base model trains"
    )
    display_name = "BitFit"
    report_order = 101
    learning_rate_range = (1e-4, 1e-2)
    recipe = Recipe(
        learning_rate_scale=2.0,
        source=(
            "the BitFit authors' run_glue.py (benzakenelad/BitFit): AdamW at learning rate 1e-3 "
            f"by default, batch 8; against LoRA's {_LORA_GLUE_LR}, 2x to 2.5x, declared as 2x"
        ),
    )

    def trains(self, name: str, parameter: nn.Parameter) -> bool:
        """A parameter held as a module's ``bias`` (linear, Conv1D and LayerNorm biases alike)."""
        return name.rsplit(".", 1)[-1] == "bias"

    def nothing_to_train(self, model: nn.Module) -> str:
        """Names the model that has no biases (Llama-style models have none)."""
        return (
            f"BitFit ('bitfit') trains biases, and {type(model).__name__} has no bias outside "
            "its task head (Llama-style models use none), so it would train nothing; run it "
            "on a model with biases (BERT, RoBERTa, GPT-2), or use 'full' or 'head' here"
        )


@VARIANTS.register("head")
class HeadOnly(ReferenceMethod):
    """The task head alone: a linear probe of the frozen base model (a reference row)."""

    name = "head"
    description = (
        "reference method: the task head alone (a linear probe); nothing of the base model trains"
    )
    display_name = "Head only"
    report_order = 102
    trains_head_only = True
    learning_rate_range = (1e-3, 1e-1)
    recipe = Recipe(
        learning_rate_scale=10.0,
        scales_head=True,  # the head is all that trains: a suite's head rate is its rate
        source=(
            "no paper sets a linear probe's rate against LoRA's: a freshly drawn head on frozen "
            "features takes a larger step, and on this project's packaged model a head rate of "
            "5e-3 is what made STS-B learn (issue 11); 10x LoRA's 5e-4 gives that 5e-3, inside "
            "the 1e-3 to 1e-2 usual for AdamW probes"
        ),
    )

    def trains(self, name: str, parameter: nn.Parameter) -> bool:
        """Nothing of the base model (the harness trains the head)."""
        return False
