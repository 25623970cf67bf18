"""The variant contract: a config, a layer that wraps a frozen base layer, and a variant object.

Every variant provides three things:

* a :class:`VariantConfig` subclass (typed, with the papers'/PEFT's defaults and ``validate``);
* an :class:`AdapterLayer` subclass: wraps one frozen ``nn.Linear`` or GPT-2 ``Conv1D``, computes
  ``y = W x + bias + delta(x)`` in ``forward``, gives its ``delta_weight`` (out, in) for merging,
  and declares its trainable parameters by attribute name;
* a :class:`Variant` subclass registered with ``@VARIANTS.register("name")``: ties the two
  together and holds state shared by all layers of one attached adapter (VeRA's frozen random
  matrices, DyLoRA's sampled rank, AdaLoRA's allocator). It is an ``nn.Module`` attached to the
  model being adapted, so ``model.to(device)`` moves the shared state too.

The training loop drives rank schedules through the per-step hooks on
:class:`lorabench.variants.adapter.Adapter`; users never call them by hand.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from lorabench.variants.recipe import Recipe


class ConfigError(ValueError):
    """A config value is invalid; the message names the field, the value and the fix."""


class AdapterShapeError(ValueError):
    """An adapter cannot be applied to a layer or loaded into a model of this shape."""


@dataclass
class VariantConfig:
    """Fields shared by every variant.

    Attributes:
        r: the adapter rank (for AdaLoRA the initial rank, for DyLoRA the maximum rank).
        target_modules: which modules to adapt. ``"auto"`` (the default) picks the attention
            query and value projections by the model's ``model_type``
            (:data:`lorabench.variants.targets.DEFAULT_TARGETS`: ``query``/``value`` on BERT,
            ``c_attn`` on GPT-2, ``q_proj``/``v_proj`` on Llama, ...); ``"attention"`` adapts
            every attention projection and ``"all-linear"`` every linear layer but the task
            head, on any model. Otherwise a list of patterns, each either a module-name suffix
            (``"query"`` matches ``encoder.layer.0.attention.self.query``), a glob
            (``"*.attention.self.*"``), or a regular expression prefixed with ``re:``
            (``"re:.*layer\\.[0-5]\\..*(query|value)"``), matched against the full dotted name.
            A single string other than a preset is one pattern.
        dropout: dropout on the adapter's input (0 disables it).
    """

    r: int = 8
    # "auto": chosen per architecture when attached; kept as the string (not the resolved list) so
    # that the config, and a run's identity, do not depend on the model it is attached to.
    target_modules: list[str] | str = "auto"
    dropout: float = 0.0

    # Input-only names kept for configs written before a field was renamed: legacy name -> field.
    # ``from_dict`` (and so ``make_config``, presets, YAML and stored records) accepts them;
    # ``to_dict`` writes only the field. AdaLoRA: ``{"init_r": "r"}``.
    legacy_aliases: ClassVar[dict[str, str]] = {}

    def validate(self) -> None:
        """Raises :class:`ConfigError` on a bad value. Subclasses extend this."""
        _check_int(self, "r", minimum=1)
        dropout = self.dropout
        # A string such as "0.1" from a hand-written config must fail here, naming the field, not
        # later inside float() or nn.Dropout with a message about neither.
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, int | float)
            or not 0.0 <= dropout < 1.0
        ):
            raise ConfigError(
                f"dropout={dropout!r} must be in [0, 1): use a number such as dropout=0.1"
            )
        patterns = (
            [self.target_modules] if isinstance(self.target_modules, str) else self.target_modules
        )
        if (
            not isinstance(patterns, list | tuple)
            or not patterns
            or not all(isinstance(p, str) and p for p in patterns)
        ):
            raise ConfigError(
                f"target_modules={self.target_modules!r} must be a non-empty list of module-name "
                "patterns, e.g. ['query', 'value'], or a preset: 'auto', 'attention' or "
                "'all-linear'"
            )

    @property
    def nominal_rank(self) -> int:
        """The rank a report puts on this config's axis."""
        return int(self.r)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (field names only, never a legacy alias)."""
        out = dataclasses.asdict(self)
        if isinstance(out.get("target_modules"), tuple):
            out["target_modules"] = list(out["target_modules"])
        return out

    @classmethod
    def field_names(cls) -> set[str]:
        """The config's fields: what overrides, YAML and search spaces set (see
        :meth:`input_names` for the legacy aliases also accepted on input)."""
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def input_names(cls) -> set[str]:
        """Every key :meth:`from_dict` accepts: the fields plus their legacy aliases."""
        return cls.field_names() | set(cls.legacy_aliases)

    @classmethod
    def canonical_dict(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """``data`` with each legacy alias replaced by the field it stands for.

        An alias given beside its field with another value is an error naming both (which of the
        two was meant cannot be guessed); with the same value it is simply dropped.
        """
        out = dict(data)
        for alias, name in cls.legacy_aliases.items():
            if alias not in out:
                continue
            value = out.pop(alias)
            if name in out and out[name] != value:
                raise ConfigError(
                    f"{name}={out[name]!r} and {alias}={value!r} disagree: {alias} is the legacy "
                    f"name of {name}; give only {name}"
                )
            out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VariantConfig:
        """Builds a validated config from a plain dict (legacy aliases mapped to their fields),
        naming any key the variant does not have."""
        unknown = sorted(set(data) - cls.input_names())
        if unknown:
            raise ConfigError(
                f"{cls.__name__} has no field(s) {unknown}; "
                f"valid fields: {sorted(cls.field_names())}"
            )
        cfg = cls(**cls.canonical_dict(data))
        cfg.validate()
        return cfg

    @classmethod
    def resolve_stored(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """A stored config as this version resolves it: legacy aliases mapped, defaults filled in.

        For reading records: a run's resolved config (or, in records that kept only the
        overrides, those overrides) becomes the full dict :meth:`to_dict` would write. Never
        raises: a stored config that no longer validates is kept as stored, over the defaults,
        so an old record still gets a label.
        """
        try:
            canonical = cls.canonical_dict(data)
        except ConfigError:
            canonical = dict(data)
        try:
            return cls.from_dict(canonical).to_dict()
        except Exception:  # any failure of a plugin's config: fall back rather than lose the row
            try:
                defaults = cls().to_dict()
            except Exception:
                defaults = {}
            return {**defaults, **canonical}


def _check_int(cfg: Any, name: str, *, minimum: int | None = None) -> int:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}={value!r} must be an integer")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value!r} must be >= {minimum}")
    return value


def check_positive_int(cfg: Any, name: str) -> int:
    """Validation helper for variant configs: an int field that must be >= 1."""
    return _check_int(cfg, name, minimum=1)


def check_non_negative_int(cfg: Any, name: str) -> int:
    """Validation helper for variant configs: an int field that must be >= 0."""
    return _check_int(cfg, name, minimum=0)


def check_bool(cfg: Any, name: str) -> bool:
    """Validation helper for variant configs: a switch that must be a real bool (a string such as
    "false" from a hand-written config would otherwise count as True)."""
    value = getattr(cfg, name)
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} must be True or False")
    return value


def check_positive_float(cfg: Any, name: str) -> float:
    """Validation helper for variant configs: a finite number that must be > 0 (an int is
    accepted, a bool is not); returns it as a float."""
    value = getattr(cfg, name)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{name}={value!r} must be a finite number > 0")
    return float(value)


def scheduled_rank_label(
    start: Any, target: Any = None, ranks: Mapping[str, float] | None = None
) -> str:
    """The rank label of a variant whose ranks move from ``start`` towards ``target`` (None:
    no target, the ranks can only fall below ``start``): ``"r=12→8"``, or ``"r=8"`` when the two
    are equal; ``" (mean 7.9)"`` is added when the final per-matrix ``ranks`` are known and
    their mean misses the target (or ``start``) by 0.05 or more."""
    if start is None:
        return ""
    goal = start if target is None else target
    label = f"r={start}" if goal == start else f"r={start}→{goal}"
    if ranks:
        mean = sum(float(v) for v in ranks.values()) / len(ranks)
        if abs(mean - float(goal)) >= 0.05:
            label += f" (mean {mean:.1f})"
    return label


def saved_rank_pattern(
    data: Mapping[str, Any], sizes: Mapping[str, int], *, rank_name: str
) -> dict[str, list[bool]] | None:
    """The ``rank_pattern`` an adaptive-rank variant saved in ``extra_save_config`` (layer name
    -> which of its ranks are kept), checked against the layers being loaded (``sizes``: layer
    name -> ranks allocated, called ``rank_name`` in messages); None when the save has none."""
    pattern = data.get("rank_pattern")
    if pattern is None:
        return None
    missing = sorted(set(sizes) - set(pattern))
    extra = sorted(set(pattern) - set(sizes))
    if missing or extra:
        raise AdapterShapeError(
            f"the saved rank pattern does not match the adapted layers (missing {missing[:3]}, "
            f"unexpected {extra[:3]}); load the adapter into the model it was trained on"
        )
    for name, size in sizes.items():
        if len(pattern[name]) != size:
            raise AdapterShapeError(
                f"rank pattern of {name} has {len(pattern[name])} entries but {rank_name} is "
                f"{size}; the lorabench_adapter.json is inconsistent"
            )
    return {name: [bool(v) for v in pattern[name]] for name in sizes}


def check_fraction(cfg: Any, name: str, *, default: str) -> float:
    """Validation helper for variant configs: a number strictly between 0 and 1 (an EMA
    factor); ``default`` is named in the message."""
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise ConfigError(f"{name}={value!r} must be in (0, 1) ({default})")
    return float(value)


def check_non_negative_float(cfg: Any, name: str, *, default: str) -> float:
    """Validation helper for variant configs: a finite number >= 0 (a weight that 0 switches
    off); ``default`` is named in the message."""
    value = getattr(cfg, name)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigError(f"{name}={value!r} must be a finite number >= 0 ({default})")
    return float(value)


def is_conv1d(module: nn.Module) -> bool:
    """transformers' GPT-2 ``Conv1D``: a linear layer whose weight is stored as (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def layer_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of an adaptable layer."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if is_conv1d(module):
        in_f, out_f = module.weight.shape
        return out_f, in_f
    raise TypeError(f"cannot adapt {type(module).__name__}: only nn.Linear and GPT-2 Conv1D")


def is_adaptable(module: nn.Module) -> bool:
    """Whether a variant can wrap ``module``: an ``nn.Linear`` or GPT-2's ``Conv1D``."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def add_low_rank(
    base_out: torch.Tensor, h: torch.Tensor, b_t: torch.Tensor, scale: float
) -> torch.Tensor:
    """``base_out + scale * (h @ b_t)`` for ``h`` (..., r) and ``b_t`` (r, out).

    One fused GEMM (``addmm``: the scale and the add ride along with the matrix product) instead of
    a product, a scaling and an addition, each a full (tokens, out) pass in forward and backward:
    that is most of the time a rank-8 adapter adds to a step.
    """
    if h.dtype != base_out.dtype:
        h = h.to(base_out.dtype)
        b_t = b_t.to(base_out.dtype)
    out = torch.addmm(
        base_out.reshape(-1, base_out.shape[-1]), h.reshape(-1, h.shape[-1]), b_t, alpha=scale
    )
    return out.view(base_out.shape)


class AdapterLayer(nn.Module):
    """Wraps a frozen base layer; subclasses add the low-rank path.

    Subclasses set ``trainable_names`` (the attribute names of their trainable parameters, the
    declared collection the optimiser receives) and implement :meth:`adapter_forward` and
    :meth:`delta_weight`. Weights are handled in (out, in) layout; GPT-2's Conv1D stores (in, out)
    and is transposed at the boundary (:meth:`base_weight`, :meth:`_add_to_base`).
    """

    trainable_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, base_layer: nn.Module, config: VariantConfig, variant: Variant) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.out_features, self.in_features = layer_shape(base_layer)
        self.fan_in_fan_out = is_conv1d(base_layer)
        self.config = config
        # The variant module is registered once on the model root; keep a plain reference here so
        # it is neither a submodule of every layer nor saved once per layer.
        object.__setattr__(self, "_variant", variant)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.merged = False
        self._weight_before_merge: torch.Tensor | None = None

    @property
    def variant(self) -> Variant:
        """The variant object this layer belongs to (shared by every layer of the adapter)."""
        return self._variant

    # -- the maths ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base layer's output, adapted by :meth:`adapter_forward`; merged, the base output
        alone (the merged weight already holds the update)."""
        base_out = self.base_layer(x)
        if self.merged:
            return base_out
        if self.training and self._variant._hooks_unstarted:  # one bool once hooks started
            self._variant.check_hooks_driven()
        return self.adapter_forward(x, base_out)

    def adapter_forward(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        """``base_out`` is ``W x + bias``; return the adapted output."""
        raise NotImplementedError(f"{type(self).__name__} must implement adapter_forward")

    def delta_weight(self) -> torch.Tensor:
        """The update in (out, in) layout such that merged ``W' = W + delta``."""
        raise NotImplementedError(f"{type(self).__name__} must implement delta_weight")

    def merged_weight(self) -> torch.Tensor:
        """The full weight after merging, (out, in). DoRA overrides (it rescales rows)."""
        return self.base_weight() + self.delta_weight().to(self.base_weight().dtype)

    def rank(self) -> int:
        """The current rank of this adapted matrix (AdaLoRA: after pruning)."""
        return int(self.config.r)

    # -- parameters -----------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters named by ``trainable_names``, in that order."""
        return [getattr(self, n) for n in self.trainable_names]

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Tensors saved with the adapter (default: the trainable parameters)."""
        return {n: getattr(self, n).detach() for n in self.trainable_names}

    def load_adapter_state(self, state: dict[str, torch.Tensor], *, prefix: str = "") -> None:
        """Copies saved tensors in, failing with the shapes when they do not fit."""
        for name, expected in self.adapter_state().items():
            if name not in state:
                raise AdapterShapeError(f"saved adapter has no tensor {prefix}{name}")
            value = state[name]
            if tuple(value.shape) != tuple(expected.shape):
                raise AdapterShapeError(
                    f"{prefix}{name}: saved shape {tuple(value.shape)} does not fit this model's "
                    f"{tuple(expected.shape)} (layer {self.out_features}x{self.in_features}); "
                    "load the adapter into the model it was trained on"
                )
            with torch.no_grad():
                getattr(self, name).copy_(value)

    # -- base weight access ---------------------------------------------------------------------
    def base_weight(self) -> torch.Tensor:
        """The frozen weight in (out, in) layout (a view for Conv1D)."""
        w = self.base_layer.weight
        return w.T if self.fan_in_fan_out else w

    def _set_base(self, new_weight_out_in: torch.Tensor) -> None:
        with torch.no_grad():
            target = self.base_layer.weight
            target.copy_(new_weight_out_in.T if self.fan_in_fan_out else new_weight_out_in)

    # -- merge / unmerge ------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self) -> None:
        """Folds the adapter into the base weight. The original weight is kept so that
        :meth:`unmerge` restores it bit for bit (a subtraction would not)."""
        if self.merged:
            return
        self._weight_before_merge = self.base_layer.weight.detach().clone()
        self._set_base(self.merged_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Puts back the weight :meth:`merge` kept, bit for bit; does nothing when not merged."""
        if not self.merged:
            return
        assert self._weight_before_merge is not None
        self.base_layer.weight.copy_(self._weight_before_merge)
        self._weight_before_merge = None
        self.merged = False

    def extra_repr(self) -> str:
        """Shape, current rank and merge state, shown in the module's ``repr``."""
        return (
            f"in={self.in_features}, out={self.out_features}, r={self.rank()}, merged={self.merged}"
        )


class Variant(nn.Module):
    """A registered adapter method.

    Class attributes a subclass sets: ``name``, ``description`` (one line for
    ``lorabench list variants``), ``version`` (bump when the maths changes: recorded with
    results), ``config_class``, ``layer_class``, and ``init_equals_base`` (the adapted model
    equals the base model at initialisation, as the paper says; DoRA, LoRA and DyLoRA do).

    Facts that reports read, all optional (a plugin that sets none still reports as its
    registered name with ``r=<r>``):

    * ``display_name``: the name as papers print it ("LoRA"); default: the registered name.
      Read from the class that sets it only, so a subclass registered under its own name does
      not print as its parent.
    * ``report_order``: the position of the variant's rows, legends and colour (lower first);
      default None: after the variants that set one, alphabetically. Not inherited either.
    * ``adaptive_rank``: its ranks change during training (AdaLoRA): reports draw its final
      per-matrix allocation.
    * ``multi_rank_eval``: one training is evaluated at several ranks (DyLoRA): reports draw
      its score-vs-rank curve from that one run.
    * ``label_fields``: the config fields :meth:`rank_label` (and :meth:`report_name`) show, so
      a report does not repeat them among a row's other settings.
    * :meth:`report_name` and :meth:`rank_label`: a report row's label, computed from a run's
      resolved config (and its final ranks), e.g. ``"LoRA" + "r=8"``.

    ``recipe``: how the variant's paper trained it relative to LoRA (a learning-rate factor,
    config values; :class:`~lorabench.variants.recipe.Recipe`), applied by suites under what the
    user sets (``recipes: paper``). Default ``Recipe()``: LoRA's recipe, nothing changes.

    An instance is created per attached adapter and holds state shared by its layers. The hooks
    are called by :class:`~lorabench.variants.adapter.Adapter`, which the training loop drives.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    config_class: ClassVar[type[VariantConfig]] = VariantConfig
    layer_class: ClassVar[type[AdapterLayer]] = AdapterLayer
    init_equals_base: ClassVar[bool] = True

    # -- facts for reports (defaults suit a plugin that sets none of them) ----------------------
    display_name: ClassVar[str] = ""
    report_order: ClassVar[int | None] = None
    adaptive_rank: ClassVar[bool] = False
    # False for a variant that reads gradients inside backward (tensor hooks), before fp16's
    # gradient scaler unscales them: its statistics would carry the loss scale and overflow.
    loss_scaling_safe: ClassVar[bool] = True
    multi_rank_eval: ClassVar[bool] = False
    label_fields: ClassVar[frozenset[str]] = frozenset({"r"})
    recipe: ClassVar[Recipe] = Recipe()

    # -- what the variant trains (every adapter method wraps layers; the reference methods of
    # lorabench.variants.reference do not) ----------------------------------------------------
    # False: no module is wrapped and target_modules is not read; the variant trains parameters
    # the base model already has, chosen in bind_model and declared by shared_parameters(). It
    # has no rank (ranks() is empty) and detach keeps the trained values (there is no separate
    # update to take away).
    wraps_layers: ClassVar[bool] = True
    # False: Adapter.merge/unmerge refuse with a message saying why (no separate update exists).
    mergeable: ClassVar[bool] = True
    # True: the variant declares no parameter of its own; only the task head, which the harness
    # trains (train.train_head), learns. A run that freezes the head is refused before it starts.
    trains_head_only: ClassVar[bool] = False

    @classmethod
    def report_name(cls, config: Mapping[str, Any] | None = None) -> str:
        """The variant's name in a report row for a run of resolved ``config`` ("LoRA";
        LoRA overrides it to read "rsLoRA" when ``use_rslora`` is on)."""
        # vars(cls), not cls.display_name: a LoRA subclass registered as "my-lora" is another
        # variant and must not print as "LoRA".
        return vars(cls).get("display_name") or cls.name

    @classmethod
    def report_position(cls) -> int | None:
        """``report_order`` as set on this class itself (None: after the ordered variants)."""
        return vars(cls).get("report_order")

    @classmethod
    def rank_label(cls, config: Mapping[str, Any], ranks: Mapping[str, float] | None = None) -> str:
        """How a report labels the rank of a run with resolved ``config``: ``"r=8"``.

        ``ranks`` are the final per-matrix ranks of the runs of one report row (averaged over
        them), when known; variants whose rank moves during training use them (AdaLoRA prints
        its final mean rank when it misses the target). Computed from the config, never parsed
        from a label. An empty string when the config names no rank.
        """
        r = config.get("r")
        return "" if r is None else f"r={r}"

    @classmethod
    def report_label(
        cls, config: Mapping[str, Any], ranks: Mapping[str, float] | None = None
    ) -> str:
        """:meth:`report_name` and :meth:`rank_label` together: ``"LoRA r=8"``."""
        parts = (cls.report_name(config), cls.rank_label(config, ranks))
        return " ".join(p for p in parts if p)

    def __init__(self, config: VariantConfig) -> None:
        super().__init__()
        self.config = config
        self.layers: dict[str, AdapterLayer] = {}  # plain dict: the layers live in the model
        self.total_steps: int | None = None
        # The adapter parameters' learning rate in the optimiser step just taken (after warm-up
        # and decay), set before each after_step by whoever drives the loop; None outside a loop
        # that sets it. A proximal update (SoRA's soft-threshold by lambda x lr) needs it.
        self.learning_rate: float | None = None
        # True until on_train_begin for a variant whose per-step hooks do the method's work
        # (pruning, growing, rank sampling): training forwards are then watched, and warn once
        # when parameters were updated without the hooks. The layers read this one bool per
        # forward; after on_train_begin (or the warning) that is all the guard costs.
        self._hooks_unstarted = self.uses_step_hooks()
        self._probing = 0  # depth of probing() blocks
        self._watched: tuple[torch.Tensor, int] | None = None  # a parameter, its version

    @classmethod
    def uses_step_hooks(cls) -> bool:
        """Whether the variant does anything in :meth:`before_step` or :meth:`after_step` (rank
        schedules, rank sampling, proximal steps): trained without them it silently trains
        another method. Read from the class, so a plugin needs to declare nothing."""
        return (
            cls.before_step is not Variant.before_step or cls.after_step is not Variant.after_step
        )

    def check_hooks_driven(self) -> None:
        """Called by the layers on a training-mode forward before :meth:`on_train_begin`: warns,
        once per variant instance, when the adapter's parameters were updated since the first
        such forward, i.e. a loop is training it without driving the per-step hooks.

        Not at the first forward: a forward (and backward) without an update is a measurement
        (the harness counts FLOPs that way before ``on_train_begin``, as a gradient check
        would), and it trains nothing. Updates are seen through the in-place version counter
        torch keeps on every tensor (an optimiser step bumps it), so the check reads two
        integers. Forwards that do update but are not training (a timing probe that restores
        the weights after) go inside :meth:`probing`.
        """
        if not self._hooks_unstarted or self._probing:
            return
        if self._watched is None:
            layer = next(iter(self.layers.values()), None)
            params = layer.trainable_parameters() if layer is not None else []
            params = params or self.shared_parameters()
            if params:
                self._watched = (params[0], params[0]._version)
            return
        param, version = self._watched
        if param._version == version:
            return
        self._hooks_unstarted = False  # once per instance
        warnings.warn(
            f"{self.name or type(self).__name__} is training without its per-step hooks: its "
            "parameters were updated but adapter.on_train_begin(total_steps) was never called, "
            "so before_step/after_step (rank pruning, growth or sampling) are not running and "
            "this trains another method. Call adapter.on_train_begin(total_steps) once, then "
            "adapter.before_step(step) before each forward and adapter.after_step(step, "
            "learning_rate) after optimizer.step() and before zero_grad(); or train with "
            "lorabench.integrations.hf_trainer.LorabenchTrainer (or a transformers Trainer "
            "with LorabenchCallback(adapter)).",
            UserWarning,
            stacklevel=2,
        )

    @contextlib.contextmanager
    def probing(self) -> Iterator[None]:
        """Steps inside are measurements, not training (a timing probe before
        ``on_train_begin`` that updates the weights and restores them): the missing-hooks check
        ignores them and what they did to the weights."""
        self._probing += 1
        try:
            yield
        finally:
            self._probing -= 1
            self._watched = None  # start watching afresh from the restored weights

    # -- building ---------------------------------------------------------------------------------
    def max_rank(self, out_features: int, in_features: int) -> int | None:
        """The largest rank this variant allows on a layer (None: no limit)."""
        return min(out_features, in_features)

    def prepare(self, targets: dict[str, nn.Module]) -> None:
        """Called once with every matched base layer before any layer is built (VeRA sizes its
        shared matrices here). Also checks the rank fits every layer."""
        for name, module in targets.items():
            out_f, in_f = layer_shape(module)
            limit = self.max_rank(out_f, in_f)
            if limit is not None and self.config.nominal_rank > limit:
                raise ConfigError(
                    f"r={self.config.nominal_rank} is larger than layer {name!r} allows "
                    f"({out_f}x{in_f}: at most {limit}); choose r <= {limit} or exclude that layer "
                    "from target_modules"
                )

    def bind_model(self, model: nn.Module) -> None:
        """Called once by ``attach`` with the whole model, after every base parameter is frozen
        and before any layer is built. A variant with ``wraps_layers = False`` picks the base
        parameters it trains here, unfreezes them and returns them from
        :meth:`shared_parameters` (and saves them through :meth:`shared_state`). Default:
        nothing."""

    def create_layer(self, name: str, base_layer: nn.Module) -> AdapterLayer:
        """Wraps ``base_layer`` in a ``layer_class`` layer and records it in :attr:`layers`
        under its module name ``name``; called once per matched layer, after :meth:`prepare`."""
        layer = self.layer_class(base_layer, self.config, self)
        self.layers[name] = layer
        return layer

    def shared_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters shared by all layers (none for the built-in variants)."""
        return []

    def shared_state(self) -> dict[str, torch.Tensor]:
        """Shared tensors saved with the adapter (VeRA's projections when it saves them)."""
        return {}

    def load_shared_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restores what :meth:`shared_state` saved."""

    def extra_save_config(self) -> dict[str, Any]:
        """JSON-serialisable data saved beside the config (AdaLoRA's rank pattern)."""
        return {}

    def load_extra_config(self, data: dict[str, Any]) -> None:
        """Restores :meth:`extra_save_config`; called before the tensors are loaded."""

    # -- training hooks (the harness calls these through Adapter) --------------------------------
    def on_train_begin(self, total_steps: int) -> None:
        """Called once before training with the number of optimiser steps the budget allows.
        Subclasses call it first (it also tells the layers the hooks are being driven)."""
        self.total_steps = int(total_steps)
        self._hooks_unstarted = False

    def before_step(self, step: int) -> None:
        """Called before the forward pass of optimiser step ``step`` (0-based)."""

    def after_step(self, step: int) -> None:
        """Called after ``optimizer.step()`` and before ``zero_grad()``: gradients are still
        there (AdaLoRA's sensitivity needs them), and :attr:`learning_rate` is the learning rate
        that step used (SoRA's proximal step needs it)."""

    def regularization_loss(self) -> torch.Tensor | None:
        """A term added to the task loss (AdaLoRA's orthogonality regulariser)."""
        return None

    # -- ranks ----------------------------------------------------------------------------------
    def ranks(self) -> dict[str, int]:
        """The current rank of every adapted layer, by module name (see
        :meth:`AdapterLayer.rank`)."""
        return {name: layer.rank() for name, layer in self.layers.items()}

    def step_ranks(self) -> dict[str, int]:
        """The rank each matrix trained at in the step just taken (what a training log shows):
        :meth:`ranks`, unless the variant draws a rank per step."""
        return self.ranks()

    def set_eval_rank(self, rank: int | None) -> None:
        """Evaluate at a given rank (DyLoRA). Other variants have one rank."""
        raise NotImplementedError(
            f"variant {self.name!r} has no evaluation rank to set; only nested-rank variants "
            "(dylora) can be evaluated at several ranks"
        )

    def eval_ranks(self) -> list[int]:
        """The ranks this adapter can be evaluated at from one training (DyLoRA: 1..r_max)."""
        return [self.config.nominal_rank]

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        """The hyper-parameter search space this variant declares (see lorabench.search.loop).

        A mapping from config field (or training field prefixed ``train.``) to a distribution spec
        such as ``{"type": "categorical", "choices": [2, 4, 8, 16]}`` or
        ``{"type": "float", "low": 1e-4, "high": 1e-3, "log": True}``.
        """
        return {}
