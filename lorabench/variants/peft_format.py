"""Hugging Face PEFT adapter folders: export a lorabench adapter as one, read one into lorabench.

>>> export_peft(adapter, "out/peft")                    # an attached Adapter (+ its model's head)
>>> export_peft("runs/adapters/<run_id>", "out/peft")   # a saved lorabench adapter folder
>>> peft.PeftModel.from_pretrained(base, "out/peft")     # the same logits as lorabench's
>>> load_adapter(model, "some/peft-adapter")            # and back (lorabench.variants)

PEFT is not imported: the folder is written and read from PEFT's documented layout (checked
against peft 0.21.2 in tests/test_peft_interop.py):

* ``adapter_config.json``: the PEFT config's fields, ``"peft_type"`` among them;
* ``adapter_model.safetensors``: per adapted module ``base_model.model.<module>.<tensor>``, the
  adapter name left out. LoRA: ``lora_A.weight`` (r, in), ``lora_B.weight`` (out, r); DoRA adds
  ``lora_magnitude_vector`` (out,); AdaLoRA: ``lora_A`` (r, in), ``lora_B`` (out, r), ``lora_E``
  (r, 1), only the triplets its ``rank_pattern`` keeps (keys ``<module>.lora_E``); VeRA:
  ``vera_lambda_d`` (r,), ``vera_lambda_b`` (out,) and the shared ``base_model.vera_A``
  (r, in_max), ``base_model.vera_B`` (out_max, r);
* the trained task head as PEFT's ``modules_to_save``: ``base_model.model.<module>.<param>``.

Which lorabench variant maps onto which PEFT type is one :class:`PeftConverter` per variant, in
a registry keyed by variant name: a plugin variant with a PEFT counterpart registers its own with
:func:`register_peft_converter`. Built in: ``lora`` (PEFT LoRA, ``use_rslora`` for rsLoRA),
``dora`` (LoRA with ``use_dora``), ``vera`` (VeRA, projections saved), ``adalora`` (AdaLoRA, the
pruned rank pattern) and ``dylora`` (a plain PEFT LoRA at one rank; export only). SoRA and
IncreLoRA have no PEFT type and are refused.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lorabench.variants.adalora import schedule_steps_of
from lorabench.variants.adapter import (
    LEGACY_CONFIG_FILE,
    Adapter,
    SavedAdapter,
    read_saved_adapter,
)
from lorabench.variants.base import ConfigError, is_conv1d
from lorabench.variants.targets import resolve_targets

PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PICKLE_WEIGHTS_FILE = "adapter_model.bin"  # what PEFT writes with safe_serialization=False
MODEL_PREFIX = "base_model.model."  # before every module's tensors
SHARED_PREFIX = "base_model."  # before tensors shared by all modules (VeRA's projections)
# GPT-2's Conv1D modules: used to set fan_in_fan_out when exporting from files alone (PEFT
# corrects the flag itself, with a warning, when it is wrong).
_CONV1D_LEAVES = frozenset({"c_attn", "c_proj", "c_fc", "q_attn"})
# Any tensor key naming one of these is an adapter tensor, never part of the task head.
_ADAPTER_KEY = re.compile(r"(^|\.)(lora_|vera_|ia3_|hada_|lokr_|oft_|boft_)")


class PeftFormatError(ValueError):
    """An adapter cannot be converted to or from PEFT's format; the message says why and what
    is supported."""


class PeftConverter:
    """How one lorabench variant maps onto one PEFT adapter type, both ways.

    Subclass, set the class attributes, override what differs, and register an instance with
    :func:`register_peft_converter`. Export works on a :class:`SavedAdapter` (the adapter as
    files hold it); import returns the parts of one.

    Attributes:
        variant: the lorabench variant name it exports (and imports into).
        peft_type: PEFT's ``peft_type`` it writes and reads ("LORA", "ADALORA", "VERA").
        layer_keys: the PEFT tensor names of one adapted module (after ``<module>.``).
        summary: one line for the list of supported variants in messages.
        takes_rank: the variant can be exported at a chosen rank (DyLoRA).
        importable: PEFT adapters are read into this variant (DyLoRA: no, a PEFT LoRA is read
            as a lorabench LoRA).
    """

    variant: ClassVar[str] = ""
    peft_type: ClassVar[str] = ""
    layer_keys: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = ""
    takes_rank: ClassVar[bool] = False
    importable: ClassVar[bool] = True

    # -- export ---------------------------------------------------------------------------------
    def export_config(self, saved: SavedAdapter, rank: int | None) -> dict[str, Any]:
        """The type's PEFT config fields (the common ones, target_modules, modules_to_save,
        fan_in_fan_out, are added by :func:`export_peft`)."""
        raise NotImplementedError

    def export_layer(
        self, saved: SavedAdapter, name: str, state: dict[str, torch.Tensor], rank: int | None
    ) -> dict[str, torch.Tensor]:
        """PEFT's tensors of module ``name`` (keys from :attr:`layer_keys`) from lorabench's
        saved ``state`` of it."""
        raise NotImplementedError

    def export_shared(self, saved: SavedAdapter) -> dict[str, torch.Tensor]:
        """Tensors shared by every module, keyed as PEFT names them after ``base_model.``."""
        return {}

    # -- import ---------------------------------------------------------------------------------
    def claims(self, peft_config: Mapping[str, Any]) -> bool:
        """Whether a PEFT adapter with this config is read by this converter."""
        return self.importable and str(peft_config.get("peft_type", "")).upper() == self.peft_type

    def check_import(self, peft_config: Mapping[str, Any]) -> None:
        """Raises :class:`PeftFormatError` for PEFT features the variant cannot express."""

    def import_config(self, peft_config: Mapping[str, Any]) -> dict[str, Any]:
        """The lorabench config fields (``target_modules`` is set by the reader)."""
        raise NotImplementedError

    def import_layer(
        self, name: str, tensors: dict[str, torch.Tensor], peft_config: Mapping[str, Any]
    ) -> dict[str, torch.Tensor]:
        """lorabench's saved state of module ``name`` from its PEFT ``tensors``."""
        raise NotImplementedError

    def import_shared(
        self, shared: dict[str, torch.Tensor], peft_config: Mapping[str, Any]
    ) -> dict[str, torch.Tensor]:
        """lorabench's shared tensors (without ``_shared.``) from PEFT's (without
        ``base_model.``)."""
        return {}

    def import_extra(self, peft_config: Mapping[str, Any], layers: list[str]) -> dict[str, Any]:
        """lorabench's :meth:`Variant.extra_save_config` from the PEFT config."""
        return {}

    def layer_shape(self, tensors: dict[str, torch.Tensor]) -> tuple[int, int] | None:
        """(out, in) of a module from its PEFT tensors, or None when they do not tell."""
        return None


_CONVERTERS: dict[str, PeftConverter] = {}


def register_peft_converter(converter: PeftConverter, *, replace: bool = False) -> PeftConverter:
    """Makes ``converter.variant`` exportable to (and importable from) PEFT's format."""
    if not converter.variant or not converter.peft_type:
        raise ValueError("a PeftConverter needs a variant name and a peft_type")
    if converter.variant in _CONVERTERS and not replace:
        raise ValueError(
            f"variant {converter.variant!r} already has a PEFT converter; pass replace=True to "
            "replace it"
        )
    _CONVERTERS[converter.variant] = converter
    return converter


def peft_converters() -> dict[str, PeftConverter]:
    """The registered converters by variant name (a copy)."""
    return dict(_CONVERTERS)


def supported_variants_text() -> str:
    """ "adalora (PEFT AdaLoRA ...), dora (...), ..." for messages."""
    return ", ".join(f"{name} ({c.summary})" for name, c in sorted(_CONVERTERS.items()))


def converter_for(variant: str) -> PeftConverter:
    """The converter of ``variant``; fails naming the supported variants."""
    try:
        return _CONVERTERS[variant]
    except KeyError:
        raise PeftFormatError(
            f"variant {variant!r} has no PEFT counterpart, so it cannot be exported in PEFT's "
            f"format. Supported: {supported_variants_text()}. Use the lorabench adapter folder "
            "with lorabench.variants.load_adapter instead."
        ) from None


# -- the built-in converters --------------------------------------------------------------------
def _cfg(config: Mapping[str, Any], name: str, default: Any = None) -> Any:
    value = config.get(name, default)
    return default if value is None else value


class LoRAConverter(PeftConverter):
    """lorabench ``lora`` <-> PEFT ``LoraConfig`` (``use_rslora`` for rsLoRA)."""

    variant = "lora"
    peft_type = "LORA"
    layer_keys = ("lora_A.weight", "lora_B.weight")
    summary = "PEFT LoRA, also rsLoRA (use_rslora)"
    use_dora: ClassVar[bool] = False

    def export_config(self, saved: SavedAdapter, rank: int | None) -> dict[str, Any]:
        c = saved.config
        return self._lora_fields(
            int(c["r"]), float(c["alpha"]), float(c.get("dropout", 0.0)), bool(c["use_rslora"])
        )

    def _lora_fields(self, r: int, alpha: float, dropout: float, rslora: bool) -> dict[str, Any]:
        return {
            "r": r,
            "lora_alpha": _number(alpha),
            "lora_dropout": dropout,
            "use_rslora": rslora,
            "use_dora": self.use_dora,
            "init_lora_weights": True,
            "lora_bias": False,
            "rank_pattern": {},
            "alpha_pattern": {},
        }

    def export_layer(self, saved, name, state, rank):
        return {"lora_A.weight": state["lora_A"], "lora_B.weight": state["lora_B"]}

    def claims(self, peft_config: Mapping[str, Any]) -> bool:
        return super().claims(peft_config) and bool(peft_config.get("use_dora")) == self.use_dora

    def check_import(self, peft_config: Mapping[str, Any]) -> None:
        _check_plain_lora(peft_config)

    def import_config(self, peft_config: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "r": int(peft_config["r"]),
            "alpha": float(_cfg(peft_config, "lora_alpha", 8)),
            "dropout": float(_cfg(peft_config, "lora_dropout", 0.0)),
            "use_rslora": bool(peft_config.get("use_rslora", False)),
        }

    def import_layer(self, name, tensors, peft_config):
        return {"lora_A": tensors["lora_A.weight"], "lora_B": tensors["lora_B.weight"]}

    def layer_shape(self, tensors):
        return int(tensors["lora_B.weight"].shape[0]), int(tensors["lora_A.weight"].shape[1])


class DoRAConverter(LoRAConverter):
    """lorabench ``dora`` <-> PEFT ``LoraConfig(use_dora=True)``: m is
    ``lora_magnitude_vector``."""

    variant = "dora"
    layer_keys = ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector")
    summary = "PEFT LoRA with use_dora"
    use_dora = True

    def export_layer(self, saved, name, state, rank):
        out = super().export_layer(saved, name, state, rank)
        out["lora_magnitude_vector"] = state["magnitude"]
        return out

    def import_layer(self, name, tensors, peft_config):
        out = super().import_layer(name, tensors, peft_config)
        out["magnitude"] = tensors["lora_magnitude_vector"]
        return out


class DyLoRAConverter(LoRAConverter):
    """lorabench ``dylora`` -> a plain PEFT LoRA at one rank b: the first b rows of A and columns
    of B, scale alpha / b (what DyLoRA computes at rank b). Export only: a PEFT LoRA reads back
    as a lorabench LoRA."""

    variant = "dylora"
    summary = "a plain PEFT LoRA at one rank"
    takes_rank = True
    importable = False

    def rank(self, saved: SavedAdapter, rank: int | None) -> int:
        r_max = int(saved.config["r"])
        chosen = rank if rank is not None else saved.extra.get("eval_rank") or r_max
        if isinstance(chosen, bool) or not isinstance(chosen, int) or not 1 <= chosen <= r_max:
            raise ConfigError(
                f"rank {chosen!r} is outside 1..{r_max} (this DyLoRA adapter's r_max); choose "
                f"a rank in 1..{r_max}"
            )
        return chosen

    def export_config(self, saved: SavedAdapter, rank: int | None) -> dict[str, Any]:
        c = saved.config
        return self._lora_fields(
            self.rank(saved, rank), float(c["alpha"]), float(c.get("dropout", 0.0)), False
        )

    def export_layer(self, saved, name, state, rank):
        b = self.rank(saved, rank)
        return {"lora_A.weight": state["lora_A"][:b], "lora_B.weight": state["lora_B"][:, :b]}


class VeRAConverter(PeftConverter):
    """lorabench ``vera`` <-> PEFT ``VeraConfig``; the shared projections are always written
    (``save_projection=True``), so the folder does not depend on a random generator."""

    variant = "vera"
    peft_type = "VERA"
    layer_keys = ("vera_lambda_b", "vera_lambda_d")
    summary = "PEFT VeRA"

    def export_config(self, saved: SavedAdapter, rank: int | None) -> dict[str, Any]:
        c = saved.config
        return {
            "r": int(c["r"]),
            "d_initial": float(c["d_initial"]),
            "projection_prng_key": int(c["projection_prng_key"]),
            "save_projection": True,
            "vera_dropout": float(c.get("dropout", 0.0)),
            "init_weights": True,
        }

    def export_layer(self, saved, name, state, rank):
        return {"vera_lambda_b": state["vera_lambda_b"], "vera_lambda_d": state["vera_lambda_d"]}

    def export_shared(self, saved: SavedAdapter) -> dict[str, torch.Tensor]:
        shared = saved.shared_state()
        if "vera_A" in shared and "vera_B" in shared:
            return {"vera_A": shared["vera_A"], "vera_B": shared["vera_B"]}
        # Saved with save_projection=False: regenerate the matrices as loading would.
        from lorabench.variants.vera import VeRA, VeRAConfig

        if not saved.layers:
            raise PeftFormatError(
                f"{saved.source} keeps VeRA's projections as a seed only and does not record its "
                "layers' shapes, so they cannot be regenerated; export the attached adapter "
                "instead (export_peft(adapter, ...))"
            )
        config = VeRAConfig.from_dict(saved.config)
        out_max = max(o for o, _ in saved.layers.values())
        in_max = max(i for _, i in saved.layers.values())
        a, b = VeRA(config).generate_projections(out_max, in_max)
        dtype = next(iter(saved.layer_state(saved.layer_names()[0]).values())).dtype
        return {"vera_A": a.to(dtype), "vera_B": b.to(dtype)}

    def check_import(self, peft_config: Mapping[str, Any]) -> None:
        _check_no_bias(peft_config)

    def import_config(self, peft_config: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "r": int(peft_config["r"]),
            "d_initial": float(_cfg(peft_config, "d_initial", 0.1)),
            "projection_prng_key": int(_cfg(peft_config, "projection_prng_key", 0)),
            "save_projection": bool(peft_config.get("save_projection", True)),
            "dropout": float(_cfg(peft_config, "vera_dropout", 0.0)),
        }

    def import_layer(self, name, tensors, peft_config):
        return {
            "vera_lambda_b": tensors["vera_lambda_b"],
            "vera_lambda_d": tensors["vera_lambda_d"],
        }

    def import_shared(self, shared, peft_config):
        found = {k: v for k, v in shared.items() if k in ("vera_A", "vera_B")}
        if peft_config.get("save_projection", True) and len(found) != 2:
            raise PeftFormatError(
                "the PEFT VeRA config says save_projection=true but the weights file has no "
                "base_model.vera_A / base_model.vera_B; the folder is incomplete"
            )
        return found if peft_config.get("save_projection", True) else {}


# The schedule length written for an AdaLoRA whose tinit/tfinal are fractions and whose trained
# step count is unknown (only further training in PEFT reads it).
_NOMINAL_ADALORA_STEPS = 1000


class AdaLoRAConverter(PeftConverter):
    """lorabench ``adalora`` <-> PEFT ``AdaLoraConfig``: the kept triplets and the rank pattern
    (``rank_pattern``: ``<module>.lora_E`` -> r booleans), as PEFT saves a pruned adapter.

    ``total_step`` only matters to PEFT for further training: the config's value when set, else
    the smallest schedule PEFT accepts (``tinit + tfinal + 1``). Read back, it is left unset (the
    lorabench harness sizes the schedule from the budget).
    """

    variant = "adalora"
    peft_type = "ADALORA"
    layer_keys = ("lora_A", "lora_B", "lora_E")
    summary = "PEFT AdaLoRA with its rank pattern"

    def export_config(self, saved: SavedAdapter, rank: int | None) -> dict[str, Any]:
        c = saved.config
        # tinit/tfinal may be fractions of the run (the paper recipe); PEFT wants steps: resolve
        # them against the steps the adapter trained (saved with it), else a nominal 1,000.
        fractions = isinstance(c["tinit"], float) or isinstance(c["tfinal"], float)
        trained = c.get("total_step") or saved.extra.get("total_steps")
        steps = int(trained) if trained else (_NOMINAL_ADALORA_STEPS if fractions else 0)
        tinit, tfinal = schedule_steps_of(c["tinit"], steps), schedule_steps_of(c["tfinal"], steps)
        total = trained or (steps if fractions else tinit + tfinal + 1)
        pattern = saved.extra.get("rank_pattern")
        return {
            "init_r": int(c["r"]),
            "target_r": int(c["target_r"]),
            "lora_alpha": _number(float(c["alpha"])),
            "lora_dropout": float(c.get("dropout", 0.0)),
            "tinit": tinit,
            "tfinal": tfinal,
            "deltaT": int(c["deltaT"]),
            "beta1": float(c["beta1"]),
            "beta2": float(c["beta2"]),
            "orth_reg_weight": float(c["orth_reg_weight"]),
            "total_step": int(total),
            "rank_pattern": None
            if pattern is None
            else {f"{name}.lora_E": [bool(v) for v in keep] for name, keep in pattern.items()},
            "init_lora_weights": True,
            "use_dora": False,
            "use_rslora": False,
        }

    def export_layer(self, saved, name, state, rank):
        return {"lora_A": state["lora_A"], "lora_B": state["lora_B"], "lora_E": state["lora_E"]}

    def check_import(self, peft_config: Mapping[str, Any]) -> None:
        _check_no_bias(peft_config)
        if peft_config.get("alpha_pattern"):
            raise PeftFormatError(
                "this PEFT AdaLoRA adapter has per-module alphas (alpha_pattern); lorabench's "
                "AdaLoRA has one alpha"
            )

    def import_config(self, peft_config: Mapping[str, Any]) -> dict[str, Any]:
        init_r = int(_cfg(peft_config, "init_r", 12))
        return {
            "r": init_r,
            "target_r": min(int(_cfg(peft_config, "target_r", 8)), init_r),
            "alpha": float(_cfg(peft_config, "lora_alpha", 8)),
            "dropout": float(_cfg(peft_config, "lora_dropout", 0.0)),
            "tinit": int(_cfg(peft_config, "tinit", 0)),
            "tfinal": int(_cfg(peft_config, "tfinal", 0)),
            "deltaT": int(_cfg(peft_config, "deltaT", 1)),
            "beta1": float(_cfg(peft_config, "beta1", 0.85)),
            "beta2": float(_cfg(peft_config, "beta2", 0.85)),
            "orth_reg_weight": float(_cfg(peft_config, "orth_reg_weight", 0.5)),
        }

    def import_layer(self, name, tensors, peft_config):
        return {k: tensors[k] for k in ("lora_A", "lora_B", "lora_E")}

    def import_extra(self, peft_config: Mapping[str, Any], layers: list[str]) -> dict[str, Any]:
        pattern = peft_config.get("rank_pattern")
        if not pattern:
            return {}
        by_layer: dict[str, list[bool]] = {}
        for key, keep in pattern.items():
            # "<module>.lora_E", or with the adapter name still in it: "<module>.lora_E.<name>"
            module = key.rsplit(".lora_E", 1)[0] if ".lora_E" in key else key
            by_layer[module] = [bool(v) for v in keep]
        # A module the pattern leaves out was never resized by PEFT: all its triplets are kept.
        init_r = int(_cfg(peft_config, "init_r", 12))
        for name in layers:
            by_layer.setdefault(name, [True] * init_r)
        return {"rank_pattern": by_layer}

    def layer_shape(self, tensors):
        return int(tensors["lora_B"].shape[0]), int(tensors["lora_A"].shape[1])


def _number(value: float) -> float | int:
    """An integral float as an int (PEFT writes ``"lora_alpha": 16``)."""
    return int(value) if float(value).is_integer() else value


def _check_no_bias(peft_config: Mapping[str, Any]) -> None:
    bias = peft_config.get("bias", "none")
    if bias not in (None, "none"):
        raise PeftFormatError(
            f"this PEFT adapter trains biases (bias={bias!r}); lorabench adapters keep the "
            "base model's biases frozen, so it cannot be read"
        )


def _check_plain_lora(peft_config: Mapping[str, Any]) -> None:
    _check_no_bias(peft_config)
    unsupported = [
        (key, peft_config.get(key))
        for key in ("rank_pattern", "alpha_pattern", "lora_bias", "layer_replication")
        if peft_config.get(key)
    ]
    if peft_config.get("target_parameters"):
        unsupported.append(("target_parameters", peft_config["target_parameters"]))
    if unsupported:
        named = ", ".join(f"{k}={v!r}"[:80] for k, v in unsupported)
        raise PeftFormatError(
            f"this PEFT LoRA adapter uses {named}, which lorabench's LoRA cannot express (one "
            "rank and one alpha for every module, no bias on the update)"
        )


for _converter in (
    LoRAConverter(),
    DoRAConverter(),
    DyLoRAConverter(),
    VeRAConverter(),
    AdaLoRAConverter(),
):
    register_peft_converter(_converter)


# -- export -------------------------------------------------------------------------------------
def export_peft(
    adapter_or_dir: Adapter | str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: nn.Module | None = None,
    rank: int | None = None,
    head: bool | Mapping[str, torch.Tensor] | None = None,
    base_model_name_or_path: str | None = None,
    task_type: str | None = None,
) -> Path:
    """Writes ``adapter_or_dir`` as a PEFT adapter folder ``out`` that
    ``peft.PeftModel.from_pretrained(base_model, out)`` loads, giving the same outputs.

    Args:
        adapter_or_dir: an attached :class:`Adapter`, or a lorabench adapter folder (this
            release's layout or 0.1's; ``head.safetensors`` beside it is the task head).
        out: the folder to write ``adapter_config.json`` and ``adapter_model.safetensors`` into.
        model: the model the adapter belongs to, when exporting a folder: it fills in
            ``fan_in_fan_out`` (GPT-2's Conv1D) and ``base_model_name_or_path`` exactly.
        rank: DyLoRA only: the rank to export at (default: its saved evaluation rank).
        head: the task head, as PEFT's ``modules_to_save``. None: the folder's
            ``head.safetensors``, or for an :class:`Adapter` its model's head parameters
            (:func:`lorabench.models.head_parameter_names`); False: none; or a mapping of
            parameter name -> tensor.
        base_model_name_or_path: written into the config (default: the model's
            ``name_or_path`` when known) for ``AutoPeftModel*`` classes.
        task_type: PEFT's task type (e.g. "SEQ_CLS"); default None, which any base model loads.

    Returns the folder. Raises :class:`PeftFormatError` for a variant without a PEFT type
    (SoRA, IncreLoRA), naming the supported ones.
    """
    if isinstance(adapter_or_dir, Adapter):
        adapter = adapter_or_dir
        model = adapter.model
        head_tensors: Mapping[str, torch.Tensor] = {}
        if head is None or head is True:
            from lorabench.models import head_parameter_names

            wanted = set(head_parameter_names(model))
            head_tensors = {n: p for n, p in model.named_parameters() if n in wanted}
        elif head is not False:
            head_tensors = head
        saved = adapter.to_saved(dict(head_tensors))
        conv1d = {n: layer.fan_in_fan_out for n, layer in adapter.layers.items()}
    else:
        saved = read_saved_adapter(adapter_or_dir)
        if head is False:
            saved.head = {}
        elif head is not None and head is not True:
            saved.head = {k: v.detach().cpu() for k, v in head.items()}
        conv1d = _conv1d_layers(saved.layer_names(), model)
    if base_model_name_or_path is None and model is not None:
        name = getattr(model, "name_or_path", None) or getattr(
            getattr(model, "config", None), "_name_or_path", None
        )
        base_model_name_or_path = str(name) if name else None
    converter = converter_for(saved.variant)
    if rank is not None and not converter.takes_rank:
        raise ConfigError(
            f"a rank to export at applies only to nested-rank variants (dylora); "
            f"{saved.variant!r} has its own ranks, leave the rank out"
        )
    return _write_peft(
        saved, converter, Path(out), rank, conv1d, base_model_name_or_path, task_type
    )


def _conv1d_layers(names: list[str], model: nn.Module | None) -> dict[str, bool]:
    if model is None:
        return {n: n.rpartition(".")[2] in _CONV1D_LEAVES for n in names}
    out = {}
    for name in names:
        module = model.get_submodule(name)
        module = getattr(module, "base_layer", module)  # an attached adapter's layer
        out[name] = is_conv1d(module)
    return out


def _write_peft(
    saved: SavedAdapter,
    converter: PeftConverter,
    out: Path,
    rank: int | None,
    conv1d: Mapping[str, bool],
    base_model_name_or_path: str | None,
    task_type: str | None,
) -> Path:
    existing = out / PEFT_CONFIG_FILE
    if existing.is_file():
        try:
            meta = json.loads(existing.read_text())
        except (OSError, ValueError):
            meta = {}
        if not isinstance(meta, dict) or "peft_type" not in meta:
            raise PeftFormatError(
                f"{existing} exists and is not a PEFT adapter config (a lorabench 0.1 adapter?); "
                "writing the PEFT adapter there would overwrite it. Choose another folder"
            )
    layers = saved.layer_names()
    tensors: dict[str, torch.Tensor] = {}
    for name in layers:
        state = saved.layer_state(name)
        for key, tensor in converter.export_layer(saved, name, state, rank).items():
            tensors[f"{MODEL_PREFIX}{name}.{key}"] = tensor
    for key, tensor in converter.export_shared(saved).items():
        tensors[f"{SHARED_PREFIX}{key}"] = tensor
    for key, tensor in saved.head.items():
        tensors[f"{MODEL_PREFIX}{key}"] = tensor
    head_modules = sorted({key.rpartition(".")[0] for key in saved.head})
    config: dict[str, Any] = {
        "peft_type": converter.peft_type,
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        # The adapted modules by full name: PEFT matches a name as a suffix, so exactly these.
        "target_modules": layers,
        "modules_to_save": head_modules or None,
        "bias": "none",
        "fan_in_fan_out": bool(layers) and all(conv1d.get(n, False) for n in layers),
        "layers_to_transform": None,
        "layers_pattern": None,
        **converter.export_config(saved, rank),
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
        str(out / PEFT_WEIGHTS_FILE),
        metadata={"format": "pt"},
    )
    (out / PEFT_CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


# -- import -------------------------------------------------------------------------------------
def is_peft_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a PEFT adapter (an ``adapter_config.json`` with a
    ``peft_type``)."""
    config = Path(path) / PEFT_CONFIG_FILE
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "peft_type" in data


def read_peft_adapter(path: str | os.PathLike, model: nn.Module | None = None) -> SavedAdapter:
    """Reads PEFT adapter folder ``path`` as a lorabench :class:`SavedAdapter` (what
    ``load_adapter`` then attaches). With ``model``, PEFT's ``target_modules`` are kept as the
    patterns when they choose exactly the modules the weights name; otherwise (and without a
    model) the modules are listed by full name."""
    src = Path(path)
    peft_config = json.loads((src / LEGACY_CONFIG_FILE).read_text())
    converter = _import_converter(peft_config, src)
    converter.check_import(peft_config)
    raw = _read_peft_weights(src)

    suffixes = sorted(converter.layer_keys, key=len, reverse=True)
    per_layer: dict[str, dict[str, torch.Tensor]] = {}
    shared: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in raw.items():
        if key.startswith(MODEL_PREFIX):
            rest = _legacy_key(key[len(MODEL_PREFIX) :])
            suffix = next((s for s in suffixes if rest.endswith(f".{s}")), None)
            if suffix is not None:
                per_layer.setdefault(rest[: -len(suffix) - 1], {})[suffix] = tensor
            elif _ADAPTER_KEY.search(rest):
                unknown.append(key)
            else:
                head[rest] = tensor  # modules_to_save: a parameter of the model itself
        elif key.startswith(SHARED_PREFIX):
            shared[key[len(SHARED_PREFIX) :]] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise PeftFormatError(
            f"{src / PEFT_WEIGHTS_FILE} holds tensors lorabench's {converter.variant!r} does not "
            f"have: {unknown[:4]}{' ...' if len(unknown) > 4 else ''} (an embedding or "
            "convolution adapter, a trained bias, another PEFT feature?)"
        )
    if not per_layer:
        raise PeftFormatError(f"{src} holds no {converter.peft_type} adapter tensors")
    for name, found in per_layer.items():
        missing = [k for k in converter.layer_keys if k not in found]
        if missing:
            raise PeftFormatError(f"{src}: module {name!r} has no tensor(s) {missing}")

    layers = list(per_layer)
    tensors: dict[str, torch.Tensor] = {}
    for name, found in per_layer.items():
        for key, tensor in converter.import_layer(name, found, peft_config).items():
            tensors[f"{name}.{key}"] = tensor
    for key, tensor in converter.import_shared(shared, peft_config).items():
        tensors[f"_shared.{key}"] = tensor
    shapes = {name: converter.layer_shape(found) for name, found in per_layer.items()}
    config = converter.import_config(peft_config)
    config["target_modules"] = _target_modules(peft_config, layers, model)
    patterns = config["target_modules"]
    return SavedAdapter(
        variant=converter.variant,
        config=config,
        tensors=tensors,
        extra=converter.import_extra(peft_config, layers),
        layers={}
        if any(s is None for s in shapes.values())
        else {n: s for n, s in shapes.items() if s is not None},
        target_patterns=[patterns] if isinstance(patterns, str) else list(patterns),
        variant_version=None,
        head=head,
        source=f"the PEFT adapter {src}",
    )


def _import_converter(peft_config: Mapping[str, Any], src: Path) -> PeftConverter:
    for converter in _CONVERTERS.values():
        if converter.claims(peft_config):
            return converter
    readable = [c for _, c in sorted(_CONVERTERS.items()) if c.importable]
    types = ", ".join(sorted({c.peft_type for c in readable}))
    raise PeftFormatError(
        f"{src} is a PEFT {peft_config.get('peft_type')!r} adapter, which lorabench has no "
        f"variant for; load_adapter reads PEFT types {types}: "
        + "; ".join(f"{c.summary} -> {c.variant!r}" for c in readable)
    )


def _read_peft_weights(src: Path) -> dict[str, torch.Tensor]:
    if (src / PEFT_WEIGHTS_FILE).is_file():
        return load_file(str(src / PEFT_WEIGHTS_FILE))
    if (src / PEFT_PICKLE_WEIGHTS_FILE).is_file():
        return torch.load(src / PEFT_PICKLE_WEIGHTS_FILE, map_location="cpu", weights_only=True)
    raise FileNotFoundError(
        f"{src} has a PEFT {PEFT_CONFIG_FILE} but neither {PEFT_WEIGHTS_FILE} nor "
        f"{PEFT_PICKLE_WEIGHTS_FILE}"
    )


def _legacy_key(key: str) -> str:
    """Keys of older PEFT releases, in today's form: ``lora_magnitude_vector.weight`` ->
    ``lora_magnitude_vector``; a module to save's ``modules_to_save.<adapter>.`` dropped."""
    if key.endswith(".lora_magnitude_vector.weight"):
        key = key[: -len(".weight")]
    return re.sub(r"\.modules_to_save\.[^.]+\.", ".", key)


def _target_modules(
    peft_config: Mapping[str, Any], layers: list[str], model: nn.Module | None
) -> list[str]:
    given = peft_config.get("target_modules")
    if model is not None and isinstance(given, list | tuple) and given:
        try:
            chosen = resolve_targets(model, list(given)).names
        except Exception:  # a pattern PEFT reads otherwise; fall back to the names
            chosen = ()
        if set(chosen) == set(layers):
            return sorted(given)  # PEFT keeps them as a set: their order means nothing
    if model is not None:
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        return sorted(layers, key=lambda n: order.get(n, len(order)))
    return sorted(layers)
