"""Attaching a variant to a model, and everything done with the attached adapter.

>>> adapter = attach(model, "lora", r=8)  # target_modules="auto": query/value by model type
>>> adapter.target_names                 # the adapted modules' names, in model order
>>> optimizer = torch.optim.AdamW(adapter.trainable_parameters(), lr=4e-4)
>>> adapter.save("out/adapter")          # lorabench_adapter.safetensors + lorabench_adapter.json
>>> model = adapter.detach()             # the original model back, bit for bit

``load_adapter`` also reads a Hugging Face PEFT adapter folder (see
:mod:`lorabench.variants.peft_format`, which also exports to one), and a folder saved by lorabench
0.1, which used PEFT's file names (``adapter_config.json`` + ``adapter_model.safetensors``) with
its own contents.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lorabench.variants.base import (
    AdapterLayer,
    AdapterShapeError,
    ConfigError,
    Variant,
    VariantConfig,
    layer_shape,
)
from lorabench.variants.registry import VARIANTS
from lorabench.variants.targets import ResolvedTargets, resolve_targets


class NotMergeableError(RuntimeError):
    """``merge``/``unmerge`` on an adapter whose variant declares ``mergeable = False`` (the
    reference methods train the model's own weights: there is no separate update to fold in)."""


# lorabench's own layout: names of its own, so that a folder is never mistaken for a PEFT adapter
# (whose adapter_config.json / adapter_model.safetensors hold other contents).
CONFIG_FILE = "lorabench_adapter.json"
WEIGHTS_FILE = "lorabench_adapter.safetensors"
# The trained task head, saved beside the adapter (by the runner) and restored by Adapter.load.
HEAD_FILE = "head.safetensors"
# The layout of lorabench 0.1: PEFT's file names with lorabench's contents (a config with a
# "variant" key). Still read by Adapter.load, never written.
LEGACY_CONFIG_FILE = "adapter_config.json"
LEGACY_WEIGHTS_FILE = "adapter_model.safetensors"
_ROOT_ATTR = "lorabench_variant"  # where the variant module hangs on the adapted model


def make_config(
    variant: str | type[Variant], config: VariantConfig | dict | None = None, **overrides: Any
) -> VariantConfig:
    """The validated config for ``variant`` from a config object, a dict and/or keyword overrides.

    Legacy field names (AdaLoRA's ``init_r`` for ``r``) are accepted in the dict and the
    overrides; an override replaces the field whichever name either side uses.
    """
    cls = resolve_variant(variant)
    expected = cls.config_class
    if config is None:
        config = expected.from_dict(dict(overrides))
    elif isinstance(config, dict):
        config = expected.from_dict(_merged(expected, config, overrides))
    elif type(config) is not expected:
        raise ConfigError(
            f"variant {cls.name!r} takes a {expected.__name__}, got a {type(config).__name__}; "
            f"build it with lorabench.variants.make_config({cls.name!r}, ...) or pass a dict"
        )
    elif overrides:
        config = expected.from_dict(_merged(expected, config.to_dict(), overrides))
    config.validate()
    return config


def _merged(
    config_class: type[VariantConfig], base: dict[str, Any], overrides: dict[str, Any]
) -> dict[str, Any]:
    """``base`` updated with ``overrides``, both in field names first, so that ``init_r=16``
    over a config holding ``r=12`` replaces it instead of disagreeing with it."""
    return {**config_class.canonical_dict(base), **config_class.canonical_dict(overrides)}


def resolve_variant(variant: str | type[Variant]) -> type[Variant]:
    """The variant class for a registered name, or the class itself; anything else fails here
    (a plugin registering a non-``Variant`` would otherwise fail deep inside ``attach``)."""
    cls = VARIANTS.get(variant) if isinstance(variant, str) else variant
    if not (isinstance(cls, type) and issubclass(cls, Variant)):
        raise ConfigError(
            f"variant {variant!r} is {cls!r}, not a lorabench Variant subclass; register a class "
            "deriving from lorabench.variants.Variant (see lorabench/variants/lora.py)"
        )
    return cls


def attach(
    model: nn.Module,
    variant: str | type[Variant],
    config: VariantConfig | dict | None = None,
    **overrides: Any,
) -> Adapter:
    """Adapts ``model`` in place with a registered variant and returns the :class:`Adapter`.

    The base model is frozen (every existing parameter gets ``requires_grad=False``); only the
    adapter's declared parameters train. Attaching to an already adapted model fails.
    """
    adapted = [name for name, m in model.named_modules() if isinstance(m, AdapterLayer)]
    if getattr(model, _ROOT_ATTR, None) is not None or adapted:
        existing = getattr(model, _ROOT_ATTR, None)
        kind = f"a {existing.name!r} adapter" if isinstance(existing, Variant) else "an adapter"
        # A reference method (full fine-tuning, BitFit) wraps no module: there are none to name.
        where = f", on modules {_name_sample(adapted)}" if adapted else " (its own weights)"
        raise ConfigError(
            f"this model already has {kind} attached{where}; "
            "call adapter.detach() first, or attach to a fresh copy of the model"
        )
    if isinstance(model, nn.Sequential):
        # The variant module hangs on the model root, and nn.Sequential would call it as a layer.
        raise ConfigError(
            "cannot attach to an nn.Sequential at the root: wrap it in a module "
            "(e.g. class Net(nn.Module) holding the Sequential as an attribute) and attach to that"
        )
    cls = resolve_variant(variant)
    cfg = make_config(cls, config, **overrides)
    if cls.wraps_layers:
        resolved = resolve_targets(model, cfg.target_modules)
    else:  # a reference method trains the model's own parameters: no module is wrapped
        resolved = ResolvedTargets(patterns=(), names=())
    targets = {name: model.get_submodule(name) for name in resolved.names}
    variant_module = cls(cfg)
    variant_module.prepare(targets)

    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        variant_module.bind_model(model)
    except Exception:
        _restore_requires_grad(model, requires_grad)  # a refused attach leaves the model as it was
        raise

    device = _model_device(model, targets)
    for name, base in targets.items():
        layer = variant_module.create_layer(name, base)
        layer.to(device=device)
        # A new module starts in training mode; inherit the mode of the layer it wraps so that
        # attaching to a model in eval() does not silently switch dropout/rank sampling on.
        layer.train(base.training)
        _replace_module(model, name, layer)
    variant_module.to(device=device)
    variant_module.train(model.training)
    model.add_module(_ROOT_ATTR, variant_module)
    return Adapter(model, variant_module, requires_grad, resolved)


def _model_device(model: nn.Module, targets: dict[str, nn.Module]) -> torch.device:
    """Where new adapter tensors go: beside the first adapted layer's weight, else (a variant
    that wraps no layer) beside the model's first parameter; the CPU for a model without any."""
    if targets:
        return next(iter(targets.values())).weight.device
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _restore_requires_grad(model: nn.Module, requires_grad: dict[str, bool]) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(requires_grad.get(name, p.requires_grad))


def _name_sample(names: list[str], k: int = 4) -> str:
    shown = ", ".join(repr(n) for n in names[:k])
    return f"[{shown}{f', ... ({len(names)} in all)' if len(names) > k else ''}]"


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


class Adapter:
    """An attached adapter: the handle users and the training loop work with.

    Nothing happens implicitly in ``train()``/``eval()``; merging is explicit.
    """

    def __init__(
        self,
        model: nn.Module,
        variant: Variant,
        requires_grad: dict[str, bool],
        targets: ResolvedTargets | None = None,
    ) -> None:
        self.model = model
        self.variant = variant
        self._original_requires_grad = requires_grad
        self._step = 0
        names = tuple(variant.layers) if targets is None else targets.names
        self._targets = targets or ResolvedTargets(names, names)

    @property
    def target_names(self) -> tuple[str, ...]:
        """The adapted modules' names, in model order, as chosen at attach time (what
        ``target_modules`` resolved to on this model; kept after :meth:`detach`)."""
        return self._targets.names

    @property
    def target_patterns(self) -> tuple[str, ...]:
        """The patterns that chose :attr:`target_names`: ``target_modules`` as given, or for a
        preset what it stood for on this model (``"auto"`` -> e.g. ``("query", "value")``)."""
        return self._targets.patterns

    # -- introspection --------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The variant's registered name."""
        return self.variant.name

    @property
    def config(self) -> VariantConfig:
        """The validated config the adapter was attached with."""
        return self.variant.config

    @property
    def layers(self) -> dict[str, AdapterLayer]:
        """The adapted layers by module name (empty after :meth:`detach`)."""
        return self.variant.layers

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The declared trainable parameters (shared first, then each layer's, in model order)."""
        params: list[nn.Parameter] = list(self.variant.shared_parameters())
        for layer in self.layers.values():
            params.extend(layer.trainable_parameters())
        seen: set[int] = set()
        return [p for p in params if not (id(p) in seen or seen.add(id(p)))]

    def named_trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Each layer's declared parameters as ``<module name>.<attribute>``; shared parameters
        (:meth:`Variant.shared_parameters`) are not included."""
        out: dict[str, nn.Parameter] = {}
        for layer_name, layer in self.layers.items():
            for n in layer.trainable_names:
                out[f"{layer_name}.{n}"] = getattr(layer, n)
        return out

    def num_trainable_parameters(self) -> int:
        """The number of trainable scalars: elements of :meth:`trainable_parameters`, each tensor
        counted once."""
        return sum(p.numel() for p in self.trainable_parameters())

    def ranks(self) -> dict[str, int]:
        """Current rank of every adapted matrix, keyed by module name."""
        return self.variant.ranks()

    def step_ranks(self) -> dict[str, int]:
        """The rank every matrix trained at in the step just taken (DyLoRA: the drawn one)."""
        return self.variant.step_ranks()

    def set_eval_rank(self, rank: int | None) -> None:
        """DyLoRA: evaluate at ``rank`` (None: back to r_max)."""
        self.variant.set_eval_rank(rank)

    def eval_ranks(self) -> list[int]:
        """The ranks one training can be evaluated at (a single rank except for DyLoRA-like
        variants)."""
        return self.variant.eval_ranks()

    # -- training hooks -------------------------------------------------------------------------
    def on_train_begin(self, total_steps: int) -> None:
        """Starts training of ``total_steps`` optimiser steps (at least 1, else
        :class:`ConfigError`); rank schedules size themselves from it."""
        if total_steps < 1:
            raise ConfigError(f"total_steps={total_steps} must be >= 1")
        self.variant.on_train_begin(total_steps)

    def before_step(self, step: int) -> None:
        """Called before the forward pass of optimiser step ``step`` (0-based)."""
        self._step = step
        self.variant.before_step(step)

    def after_step(self, step: int, learning_rate: float | None = None) -> None:
        """Called after ``optimizer.step()`` and before ``zero_grad()``, gradients still present.

        ``learning_rate``: the adapter parameters' learning rate in that step (after warm-up and
        decay); variants with a proximal update read it as ``variant.learning_rate``.
        """
        self.variant.learning_rate = learning_rate
        self.variant.after_step(step)

    def regularization_loss(self) -> torch.Tensor | None:
        """The variant's term to add to the task loss, or None (only AdaLoRA has one built in)."""
        return self.variant.regularization_loss()

    # -- merge / detach -------------------------------------------------------------------------
    def merge(self) -> None:
        """Folds every layer's update into its base weight (see :meth:`AdapterLayer.merge`);
        merging twice does nothing more. A variant with ``mergeable = False`` (the reference
        methods) raises :class:`NotMergeableError`."""
        self._check_mergeable("merge")
        for layer in self.layers.values():
            layer.merge()

    def unmerge(self) -> None:
        """Restores every merged layer's base weight bit for bit; unmerged layers are left as
        they are. Raises :class:`NotMergeableError` as :meth:`merge` does."""
        self._check_mergeable("unmerge")
        for layer in self.layers.values():
            layer.unmerge()

    def _check_mergeable(self, action: str) -> None:
        if self.variant.mergeable:
            return
        label = f"{self.variant.report_name()} ({self.name!r})"
        if not self.variant.wraps_layers:
            raise NotMergeableError(
                f"cannot {action} {label}: it trains the model's own parameters in place, so "
                "there is no separate update to fold in or take out; adapter.model already "
                "computes the trained function. Use the model as it is, and keep what trained "
                "with adapter.save(...)"
            )
        raise NotMergeableError(
            f"cannot {action} {label}: the variant declares mergeable = False (its update "
            "cannot be folded into the base weights); run the model with the adapter attached"
        )

    @property
    def merged(self) -> bool:
        """Whether every adapted layer is merged (False for an adapter without layers)."""
        return bool(self.layers) and all(layer.merged for layer in self.layers.values())

    def detach(self) -> nn.Module:
        """Removes the adapter and returns the model (unmerging first), with ``requires_grad``
        as before attach.

        An adapter variant gives back the original model, bit for bit. A variant that wraps no
        layer (``wraps_layers = False``: full fine-tuning, BitFit) trained the model's own
        parameters and keeps their trained values: no copy of the original weights is held
        (for full fine-tuning that would be a second model); reload the base model for them.
        """
        if self.variant.mergeable:
            self.unmerge()
        for name, layer in self.layers.items():
            _replace_module(self.model, name, layer.base_layer)
        delattr(self.model, _ROOT_ATTR)
        _restore_requires_grad(self.model, self._original_requires_grad)
        self.variant.layers = {}
        return self.model

    # -- save / load ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors :meth:`save` writes: shared ones as ``_shared.<name>``, each layer's
        :meth:`AdapterLayer.adapter_state` as ``<module name>.<name>``."""
        state: dict[str, torch.Tensor] = {
            f"_shared.{k}": v for k, v in self.variant.shared_state().items()
        }
        for layer_name, layer in self.layers.items():
            for k, v in layer.adapter_state().items():
                state[f"{layer_name}.{k}"] = v
        return state

    def to_saved(self, head: dict[str, torch.Tensor] | None = None) -> SavedAdapter:
        """The adapter as :meth:`save` writes it (tensors on the CPU), with ``head`` (parameter
        name -> tensor) as its task head; what :mod:`~lorabench.variants.peft_format` converts."""
        return SavedAdapter(
            variant=self.variant.name,
            variant_version=str(self.variant.version),
            config=self.config.to_dict(),
            extra=self.variant.extra_save_config(),
            layers={n: (layer.out_features, layer.in_features) for n, layer in self.layers.items()},
            target_patterns=list(self.target_patterns),
            tensors={
                k: v.detach().to("cpu").contiguous().clone() for k, v in self.state_dict().items()
            },
            head={k: v.detach().to("cpu").contiguous().clone() for k, v in (head or {}).items()},
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Writes ``lorabench_adapter.safetensors`` and ``lorabench_adapter.json`` into directory
        ``path`` (names of lorabench's own: the folder is not a PEFT adapter; export one with
        :func:`lorabench.variants.export_peft`)."""
        return self.to_saved().write(path)

    def size_bytes(self) -> int:
        """Bytes the saved adapter's tensors take (what ``save`` writes, without the header)."""
        return sum(v.numel() * v.element_size() for v in self.state_dict().values())

    @classmethod
    def load(cls, model: nn.Module, path: str | os.PathLike) -> Adapter:
        """Attaches a saved adapter to ``model`` (the same architecture it was trained on).

        ``path`` is a folder written by :meth:`save` (or by lorabench 0.1, with PEFT's file
        names), or a Hugging Face PEFT adapter folder of a type lorabench has (LoRA, rsLoRA,
        DoRA, AdaLoRA, VeRA; see :mod:`lorabench.variants.peft_format`). A trained task head
        saved beside it (``head.safetensors``, written by the runner; PEFT's
        ``modules_to_save``) is loaded into ``model`` too, so the pair computes what was trained.
        """
        return cls.from_saved(model, read_saved_adapter(path, model))

    @classmethod
    def from_saved(cls, model: nn.Module, saved: SavedAdapter) -> Adapter:
        """Attaches ``saved`` to ``model`` and loads its tensors and task head."""
        variant_cls = resolve_variant(saved.variant)
        saved_version = saved.variant_version
        if saved_version is not None and str(saved_version) != str(variant_cls.version):
            # The maths may have changed between versions: the same tensors could give other
            # outputs.
            warnings.warn(
                f"{saved.source} was saved by {saved.variant!r} version {saved_version}, this is "
                f"version {variant_cls.version}; outputs may differ from the ones it was saved "
                "with. Re-train or re-save the adapter with this version to silence this warning",
                stacklevel=3,
            )
        config = variant_cls.config_class.from_dict(saved.config)
        saved_layers = {k: tuple(v) for k, v in saved.layers.items()}
        if not variant_cls.wraps_layers:
            # No module to find: the variant's load_shared_state checks the saved parameters'
            # names and shapes against this model before copying any.
            return cls._attach_saved(model, saved, variant_cls, config)
        try:
            targets = {
                n: model.get_submodule(n)
                for n in resolve_targets(model, config.target_modules).names
            }
        except ConfigError as exc:  # another architecture: its module names are not in this model
            raise AdapterShapeError(
                "this adapter was saved for another model: its layers "
                f"{_name_sample(sorted(saved_layers))} do not exist here ({exc}). "
                "Load it into the model it was trained on."
            ) from exc
        found = {n: layer_shape(m) for n, m in targets.items()}
        if saved_layers and saved_layers != found:
            diff = sorted(
                f"{n}: saved {saved_layers.get(n)} vs model {found.get(n)}"
                for n in set(saved_layers) | set(found)
                if saved_layers.get(n) != found.get(n)
            )
            raise AdapterShapeError(
                "this adapter was saved for another model shape (layer: (out, in)): "
                + "; ".join(diff[:5])
                + ("; ..." if len(diff) > 5 else "")
                + ". Load it into the model it was trained on."
            )
        return cls._attach_saved(model, saved, variant_cls, config)

    @classmethod
    def _attach_saved(
        cls,
        model: nn.Module,
        saved: SavedAdapter,
        variant_cls: type[Variant],
        config: VariantConfig,
    ) -> Adapter:
        """Attaches ``variant_cls`` with ``config`` and loads ``saved``'s state and head into it;
        on any failure nothing stays attached."""
        if saved.head:
            # Checked before anything is attached, so a head that does not fit leaves the model
            # as it was.
            _check_head(model, saved.head, saved.source)
        adapter = attach(model, variant_cls, config)
        try:
            adapter.variant.load_extra_config(saved.extra)
            adapter.variant.load_shared_state(saved.shared_state())
            for layer_name, layer in adapter.layers.items():
                layer.load_adapter_state(saved.layer_state(layer_name), prefix=f"{layer_name}.")
        except Exception:
            adapter.detach()  # nothing half-attached
            raise
        if saved.head:
            _copy_head(model, saved.head)
        return adapter


@dataclass
class SavedAdapter:
    """An adapter as its files hold it, apart from any model: what :meth:`Adapter.save` writes,
    :meth:`Adapter.load` reads and :mod:`~lorabench.variants.peft_format` converts.

    Attributes:
        variant: the registered variant name.
        config: the variant config as plain data (:meth:`VariantConfig.to_dict`).
        tensors: ``_shared.<name>`` (:meth:`Variant.shared_state`) and ``<module>.<name>``
            (:meth:`AdapterLayer.adapter_state`), on the CPU.
        extra: :meth:`Variant.extra_save_config` (AdaLoRA's rank pattern, DyLoRA's rank).
        layers: (out_features, in_features) per adapted module; empty when not known.
        target_patterns: what chose the adapted modules (see :attr:`Adapter.target_patterns`).
        variant_version: the variant's version that saved it (None: not recorded).
        head: the trained task head, parameter name -> tensor (empty: none saved).
        source: where it was read from, for messages.
    """

    variant: str
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    extra: dict[str, Any] = field(default_factory=dict)
    layers: dict[str, tuple[int, int]] = field(default_factory=dict)
    target_patterns: list[str] = field(default_factory=list)
    variant_version: str | None = None
    head: dict[str, torch.Tensor] = field(default_factory=dict)
    source: str = "the adapter"

    def layer_names(self) -> list[str]:
        """The adapted modules' names: :attr:`layers`' keys, else those the tensors name."""
        if self.layers:
            return list(self.layers)
        names = {k.rpartition(".")[0] for k in self.tensors if not k.startswith("_shared.")}
        return sorted(names)

    def shared_state(self) -> dict[str, torch.Tensor]:
        """The shared tensors, without their ``_shared.`` prefix."""
        return {
            k[len("_shared.") :]: v for k, v in self.tensors.items() if k.startswith("_shared.")
        }

    def layer_state(self, layer_name: str) -> dict[str, torch.Tensor]:
        """The tensors of module ``layer_name``, without its name as prefix."""
        prefix = f"{layer_name}."
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def meta(self) -> dict[str, Any]:
        """The JSON :meth:`write` puts in ``lorabench_adapter.json``."""
        return {
            "variant": self.variant,
            "variant_version": self.variant_version,
            "config": self.config,
            "extra": self.extra,
            "layers": {n: list(shape) for n, shape in self.layers.items()},
            "target_patterns": list(self.target_patterns),
        }

    def write(self, path: str | os.PathLike) -> Path:
        """Writes ``lorabench_adapter.safetensors`` and ``lorabench_adapter.json`` (and
        ``head.safetensors`` when there is a head) into directory ``path``."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(out / WEIGHTS_FILE))
        if self.head:
            save_file({k: v.contiguous() for k, v in self.head.items()}, str(out / HEAD_FILE))
        (out / CONFIG_FILE).write_text(json.dumps(self.meta(), indent=2, sort_keys=True))
        return out


def read_saved_adapter(path: str | os.PathLike, model: nn.Module | None = None) -> SavedAdapter:
    """Reads the adapter folder ``path`` without attaching it: lorabench's layout
    (``lorabench_adapter.json``), lorabench 0.1's (``adapter_config.json`` with a ``"variant"``)
    or a PEFT adapter (``adapter_config.json`` with a ``"peft_type"``; ``model``, when given,
    lets its ``target_modules`` be kept as patterns). A ``head.safetensors`` beside it is read
    as the task head."""
    src = Path(path)
    if (src / CONFIG_FILE).is_file():
        saved = _read_lorabench(src, src / CONFIG_FILE, src / WEIGHTS_FILE)
    elif (src / LEGACY_CONFIG_FILE).is_file():
        meta = _read_json(src / LEGACY_CONFIG_FILE)
        if "peft_type" in meta:
            from lorabench.variants.peft_format import read_peft_adapter

            return read_peft_adapter(src, model)
        if "variant" not in meta:
            raise ValueError(
                f"{src / LEGACY_CONFIG_FILE} has neither a 'peft_type' (a PEFT adapter) nor a "
                "'variant' (a lorabench 0.1 adapter); is this an adapter directory?"
            )
        saved = _read_lorabench(src, src / LEGACY_CONFIG_FILE, src / LEGACY_WEIGHTS_FILE, meta)
    else:
        where = f"in {src}" if src.is_dir() else f"at {src} (no such directory)"
        raise FileNotFoundError(
            f"no {CONFIG_FILE}, no {LEGACY_CONFIG_FILE} {where}: is this a lorabench adapter "
            "directory (written by adapter.save or a suite's --out OUT/adapters/<run_id>) or a "
            "PEFT adapter directory?"
        )
    if (src / HEAD_FILE).is_file():
        saved.head = load_file(str(src / HEAD_FILE))
    return saved


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data


def _read_lorabench(
    src: Path, config_path: Path, weights_path: Path, meta: dict[str, Any] | None = None
) -> SavedAdapter:
    meta = _read_json(config_path) if meta is None else meta
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"{src} has {config_path.name} but no {weights_path.name}: the adapter's tensors "
            "are missing"
        )
    version = meta.get("variant_version")
    return SavedAdapter(
        variant=meta["variant"],
        variant_version=None if version is None else str(version),
        config=dict(meta["config"]),
        extra=dict(meta.get("extra") or {}),
        layers={k: (int(v[0]), int(v[1])) for k, v in (meta.get("layers") or {}).items()},
        target_patterns=list(meta.get("target_patterns") or []),
        tensors=load_file(str(weights_path)),
        source=str(src),
    )


def _check_head(model: nn.Module, tensors: dict[str, torch.Tensor], where: Any) -> None:
    """Fails naming the head tensors that do not fit ``model``."""
    params = dict(model.named_parameters())
    unknown = sorted(n for n in tensors if n not in params)
    wrong = sorted(
        f"{n}: saved {tuple(t.shape)} vs model {tuple(params[n].shape)}"
        for n, t in tensors.items()
        if n in params and tuple(t.shape) != tuple(params[n].shape)
    )
    if unknown or wrong:
        raise AdapterShapeError(
            f"the task head in {where} does not fit this model: "
            + "; ".join([*(f"{n} is not a parameter here" for n in unknown[:5]), *wrong[:5]])
            + ". Load it into the model (and number of labels) it was trained with."
        )


def _copy_head(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor.to(params[name]))


def load_head(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Loads a saved task head (``head.safetensors``: parameter name -> tensor) into ``model``
    and returns the names loaded; fails naming the tensors that do not fit."""
    tensors = load_file(str(path))
    _check_head(model, tensors, path)
    _copy_head(model, tensors)
    return sorted(tensors)


def load_adapter(model: nn.Module, path: str | os.PathLike) -> Adapter:
    """Attaches the adapter saved at ``path`` to ``model``: a lorabench adapter folder (this
    release's layout or 0.1's) or a PEFT adapter folder (LoRA, rsLoRA, DoRA, AdaLoRA, VeRA)."""
    return Adapter.load(model, path)
