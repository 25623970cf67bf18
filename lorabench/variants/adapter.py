"""Attaching a variant to a model, and everything done with the attached adapter.

>>> adapter = attach(model, "lora", r=8)  # target_modules="auto": query/value by model type
>>> adapter.target_names                 # the adapted modules' names, in model order
>>> optimizer = torch.optim.AdamW(adapter.trainable_parameters(), lr=4e-4)
>>> adapter.save("out/adapter")          # safetensors + adapter_config.json
>>> model = adapter.detach()             # the original model back, bit for bit
"""

from __future__ import annotations

import json
import os
import warnings
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

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# The trained task head, saved beside the adapter (by the runner) and restored by Adapter.load.
HEAD_FILE = "head.safetensors"
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
        raise ConfigError(
            f"this model already has {kind} attached, on modules {_name_sample(adapted)}; "
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
    resolved = resolve_targets(model, cfg.target_modules)
    targets = {name: model.get_submodule(name) for name in resolved.names}
    variant_module = cls(cfg)
    variant_module.prepare(targets)

    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)

    ref = next(iter(targets.values())).weight
    for name, base in targets.items():
        layer = variant_module.create_layer(name, base)
        layer.to(device=ref.device)
        # A new module starts in training mode; inherit the mode of the layer it wraps so that
        # attaching to a model in eval() does not silently switch dropout/rank sampling on.
        layer.train(base.training)
        _replace_module(model, name, layer)
    variant_module.to(device=ref.device)
    variant_module.train(model.training)
    model.add_module(_ROOT_ATTR, variant_module)
    return Adapter(model, variant_module, requires_grad, resolved)


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
        merging twice does nothing more."""
        for layer in self.layers.values():
            layer.merge()

    def unmerge(self) -> None:
        """Restores every merged layer's base weight bit for bit; unmerged layers are left as
        they are."""
        for layer in self.layers.values():
            layer.unmerge()

    @property
    def merged(self) -> bool:
        """Whether every adapted layer is merged."""
        return all(layer.merged for layer in self.layers.values())

    def detach(self) -> nn.Module:
        """Removes the adapter; returns the original model, bit for bit (unmerging first)."""
        self.unmerge()
        for name, layer in self.layers.items():
            _replace_module(self.model, name, layer.base_layer)
        delattr(self.model, _ROOT_ATTR)
        for name, p in self.model.named_parameters():
            p.requires_grad_(self._original_requires_grad.get(name, p.requires_grad))
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

    def save(self, path: str | os.PathLike) -> Path:
        """Writes ``adapter_model.safetensors`` and ``adapter_config.json`` into directory
        ``path``."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {
            k: v.detach().to("cpu").contiguous().clone() for k, v in self.state_dict().items()
        }
        save_file(tensors, str(out / WEIGHTS_FILE))
        meta = {
            "variant": self.variant.name,
            "variant_version": self.variant.version,
            "config": self.config.to_dict(),
            "extra": self.variant.extra_save_config(),
            "layers": {
                n: [layer.out_features, layer.in_features] for n, layer in self.layers.items()
            },
            "target_patterns": list(self.target_patterns),
        }
        (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return out

    def size_bytes(self) -> int:
        """Bytes the saved adapter's tensors take (what ``save`` writes, without the header)."""
        return sum(v.numel() * v.element_size() for v in self.state_dict().values())

    @classmethod
    def load(cls, model: nn.Module, path: str | os.PathLike) -> Adapter:
        """Attaches a saved adapter to ``model`` (the same architecture it was trained on).

        A trained task head saved beside it (``head.safetensors``, written by the runner) is
        loaded into ``model`` too, so the pair computes what was trained.
        """
        src = Path(path)
        cfg_path = src / CONFIG_FILE
        if not cfg_path.is_file():
            raise FileNotFoundError(
                f"no {CONFIG_FILE} in {src}: is this a lorabench adapter directory?"
            )
        meta = json.loads(cfg_path.read_text())
        variant_cls = resolve_variant(meta["variant"])
        saved_version = meta.get("variant_version")
        if saved_version is not None and str(saved_version) != str(variant_cls.version):
            # The maths may have changed between versions: the same tensors could give other
            # outputs.
            warnings.warn(
                f"{src} was saved by {meta['variant']!r} version {saved_version}, this is version "
                f"{variant_cls.version}; outputs may differ from the ones it was saved with. "
                "Re-train or re-save the adapter with this version to silence this warning",
                stacklevel=2,
            )
        config = variant_cls.config_class.from_dict(meta["config"])
        saved_layers = {k: tuple(v) for k, v in meta.get("layers", {}).items()}
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
        adapter = attach(model, variant_cls, config)
        adapter.variant.load_extra_config(meta.get("extra", {}))
        tensors = load_file(str(src / WEIGHTS_FILE))
        shared = {k[len("_shared.") :]: v for k, v in tensors.items() if k.startswith("_shared.")}
        adapter.variant.load_shared_state(shared)
        for layer_name, layer in adapter.layers.items():
            prefix = f"{layer_name}."
            state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            layer.load_adapter_state(state, prefix=prefix)
        if (src / HEAD_FILE).is_file():
            load_head(model, src / HEAD_FILE)
        return adapter


def load_head(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Loads a saved task head (``head.safetensors``: parameter name -> tensor) into ``model``
    and returns the names loaded; fails naming the tensors that do not fit."""
    tensors = load_file(str(path))
    params = dict(model.named_parameters())
    unknown = sorted(n for n in tensors if n not in params)
    wrong = sorted(
        f"{n}: saved {tuple(t.shape)} vs model {tuple(params[n].shape)}"
        for n, t in tensors.items()
        if n in params and tuple(t.shape) != tuple(params[n].shape)
    )
    if unknown or wrong:
        raise AdapterShapeError(
            f"the task head in {path} does not fit this model: "
            + "; ".join([*(f"{n} is not a parameter here" for n in unknown[:5]), *wrong[:5]])
            + ". Load it into the model (and number of labels) it was trained with."
        )
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor.to(params[name]))
    return sorted(tensors)


def load_adapter(model: nn.Module, path: str | os.PathLike) -> Adapter:
    """Attaches the adapter saved at ``path`` to ``model``."""
    return Adapter.load(model, path)
