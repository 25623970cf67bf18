"""Which modules of a model to adapt: pattern matching on dotted module names, and the defaults.

``target_modules`` is a list of patterns (a suffix, a glob or a ``re:`` regex; see
:func:`pattern_matches`) or one of three presets that work on any model:

* ``"auto"`` (the default): the attention query and value projections, as the LoRA paper adapts
  them, looked up by the model config's ``model_type`` in :data:`DEFAULT_TARGETS`;
* ``"attention"``: every adaptable layer inside an attention block (query, key, value and output
  projections, fused or not; self- and cross-attention);
* ``"all-linear"``: every adaptable layer except the task head.

:func:`resolve_targets` turns a config value into the patterns and module names it selects; the
attached adapter keeps both (``Adapter.target_names``, ``Adapter.target_patterns``).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections import Counter
from dataclasses import dataclass

from torch import nn

from lorabench.models import head_parameter_names
from lorabench.variants.base import ConfigError, is_adaptable

_GLOB_CHARS = set("*?[")

AUTO = "auto"
ATTENTION = "attention"
ALL_LINEAR = "all-linear"
PRESETS = (AUTO, ATTENTION, ALL_LINEAR)

# (model types, the attention query and value projections - fused QKV layers where a model has no
# separate ones): what the LoRA paper adapts. Checked against transformers' module names and
# PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING in tests/test_targets.py.
_TABLE: tuple[tuple[str, tuple[str, ...]], ...] = (
    # BERT-like encoders
    ("bert roberta xlm-roberta xlm-roberta-xl camembert electra albert megatron-bert "
     "roberta-prelayernorm ernie layoutlm mobilebert data2vec-text nystromformer big_bird "
     "canine longformer xmod", ("query", "value")),
    ("distilbert xlm flaubert", ("q_lin", "v_lin")),
    ("deberta", ("in_proj",)),  # DeBERTa v1 fuses query, key and value
    ("deberta-v2", ("query_proj", "value_proj")),
    ("mpnet", ("q", "v")),
    ("modernbert", ("Wqkv",)),
    # decoders
    ("gpt2 gpt_bigcode", ("c_attn",)),  # fused QKV (a Conv1D on GPT-2)
    ("gpt_neox bloom falcon", ("query_key_value",)),
    ("gptj gpt_neo opt llama mistral mixtral qwen2 qwen2_moe qwen3 gemma gemma2 gemma3_text phi "
     "stablelm starcoder2 olmo olmo2", ("q_proj", "v_proj")),
    ("phi3", ("qkv_proj",)),
    # encoder-decoders: self- and cross-attention, in the encoder and the decoder
    ("bart mbart plbart mvp", ("q_proj", "v_proj")),
    ("t5 mt5 umt5", ("q", "v")),
)  # fmt: skip
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    kind: patterns for kinds, patterns in _TABLE for kind in kinds.split()
}

# A module is inside an attention block when a component of its dotted name says so
# ("attention", "self_attn", "attn", "SelfAttention", "EncDecAttention", "self_attention", ...).
_ATTENTION_COMPONENT = re.compile(r"(?i).*(attn|attention).*")


def pattern_matches(pattern: str, name: str) -> bool:
    """Does ``pattern`` select the module called ``name``?

    * ``re:<regex>``: the regular expression must match the whole dotted name;
    * a glob (contains ``*``, ``?`` or ``[``): matched against the whole dotted name;
    * otherwise a suffix of whole components: ``"query"`` and ``"self.query"`` both match
      ``encoder.layer.0.attention.self.query`` (PEFT's convention), ``"uery"`` does not.
    """
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    if _GLOB_CHARS & set(pattern):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.endswith("." + pattern)


@dataclass(frozen=True)
class ResolvedTargets:
    """What a ``target_modules`` value selects on one model.

    Attributes:
        patterns: the patterns actually matched (a preset replaced by what it stands for:
            ``"auto"`` by the table's patterns, ``"attention"``/``"all-linear"`` by the full
            module names they select).
        names: the selected module names, in model order.
    """

    patterns: tuple[str, ...]
    names: tuple[str, ...]


def model_type(model: nn.Module) -> str | None:
    """The ``model_type`` of a transformers model's config (``None`` for a plain module)."""
    value = getattr(getattr(model, "config", None), "model_type", None)
    return value if isinstance(value, str) and value else None


def default_target_patterns(model: nn.Module) -> tuple[str, ...] | None:
    """The ``"auto"`` patterns for ``model`` by its ``model_type``; ``None`` when not in the
    table."""
    kind = model_type(model)
    return DEFAULT_TARGETS.get(kind) if kind is not None else None


def head_module_names_of(model: nn.Module) -> set[str]:
    """Modules every parameter of which belongs to the task head
    (:func:`lorabench.models.head_parameter_names`): never adapted by a preset."""
    head = set(head_parameter_names(model))
    out: set[str] = set()
    for name, module in model.named_modules():
        params = [f"{name}.{p}" if name else p for p, _ in module.named_parameters()]
        if params and all(p in head for p in params):
            out.add(name)
    return out


def linear_layer_names(model: nn.Module) -> list[str]:
    """The adaptable layers (``nn.Linear``, GPT-2 ``Conv1D``) of ``model`` outside the task head,
    in model order."""
    head = head_module_names_of(model)
    return [n for n, m in model.named_modules() if n and is_adaptable(m) and n not in head]


def attention_layer_names(model: nn.Module) -> list[str]:
    """The adaptable layers inside attention blocks (a component of the dotted name contains
    ``attn`` or ``attention``), outside the task head, in model order."""
    return [
        n
        for n in linear_layer_names(model)
        if any(_ATTENTION_COMPONENT.fullmatch(part) for part in n.split(".")[:-1])
        or _ATTENTION_COMPONENT.fullmatch(n.split(".")[-1])
    ]


def is_preset(value: object) -> bool:
    """Whether ``value`` (a ``target_modules`` value) is a preset name."""
    return isinstance(value, str) and value in PRESETS


def resolve_targets(model: nn.Module, target_modules: list[str] | str) -> ResolvedTargets:
    """The patterns and module names ``target_modules`` selects on ``model``.

    A preset is expanded (see the module docstring); anything else is matched as patterns
    exactly as :func:`find_targets` does. Fails with :class:`ConfigError` naming the fix: a
    pattern that matches nothing, a preset that selects nothing, ``"auto"`` on a model type
    not in :data:`DEFAULT_TARGETS`.
    """
    if target_modules == AUTO:
        patterns = default_target_patterns(model)
        if patterns is None:
            raise ConfigError(_unknown_type_message(model))
        targets = find_targets(model, list(patterns))
        return ResolvedTargets(tuple(patterns), tuple(targets))
    if target_modules in (ATTENTION, ALL_LINEAR):
        names = (
            attention_layer_names(model)
            if target_modules == ATTENTION
            else linear_layer_names(model)
        )
        if not names:
            raise ConfigError(
                f"target_modules={target_modules!r} selects no layer of this model "
                f"({type(model).__name__}); {_flag_hint(model)}"
            )
        return ResolvedTargets(tuple(names), tuple(names))
    patterns = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    targets = find_targets(model, patterns)
    return ResolvedTargets(tuple(patterns), tuple(targets))


def select_targets(model: nn.Module, target_modules: list[str] | str) -> dict[str, nn.Module]:
    """The modules ``target_modules`` (patterns or a preset) selects, by name in model order."""
    names = resolve_targets(model, target_modules).names
    return {n: model.get_submodule(n) for n in names}


def find_targets(model: nn.Module, patterns: list[str] | str) -> dict[str, nn.Module]:
    """The adaptable modules (``nn.Linear``, GPT-2 ``Conv1D``) selected by ``patterns``.

    Fails when a pattern matches nothing, listing the module names it could have meant, and
    when a pattern selects a module type that cannot be adapted.
    """
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    named = dict(model.named_modules())
    adaptable = [n for n, m in named.items() if n and is_adaptable(m)]
    targets: dict[str, nn.Module] = {}
    for pattern in patterns:
        try:
            hits = [n for n in named if n and pattern_matches(pattern, n)]
        except re.error as exc:
            raise ConfigError(
                f"target_modules pattern {pattern!r} is not a valid regex: {exc}"
            ) from exc
        if not hits:
            raise ConfigError(_no_match_message(pattern, adaptable))
        wrong_type = [n for n in hits if not is_adaptable(named[n])]
        for n in hits:
            if is_adaptable(named[n]):
                targets[n] = named[n]
        if wrong_type and not any(is_adaptable(named[n]) for n in hits):
            kinds = sorted({type(named[n]).__name__ for n in wrong_type})
            raise ConfigError(
                f"target_modules pattern {pattern!r} matches only modules of type {kinds} "
                f"(e.g. {wrong_type[0]!r}); only nn.Linear and GPT-2 Conv1D can be adapted. "
                f"Adaptable modules include: {_sample(adaptable)}"
            )
    return dict(sorted(targets.items(), key=lambda kv: list(named).index(kv[0])))


def _short_names(names: list[str]) -> list[str]:
    return sorted({n.rsplit(".", 1)[-1] for n in names})


def _sample(names: list[str], k: int = 6) -> str:
    shown = ", ".join(repr(n) for n in names[:k])
    return shown + (f", ... ({len(names)} in all)" if len(names) > k else "")


def _no_match_message(pattern: str, adaptable: list[str]) -> str:
    leaves = _short_names(adaptable)
    close = difflib.get_close_matches(pattern.split(".")[-1].strip("*"), leaves, n=3, cutoff=0.4)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"target_modules pattern {pattern!r} matches no module of this model.{hint} "
        f"Adaptable module names (last component): {leaves}; "
        f"full names look like {_sample(adaptable, 3)}."
    )


def _suggested_patterns(model: nn.Module) -> list[str]:
    """Two leaf names to put in the suggested flag: a query/value pair the table knows when the
    model has one, else the first attention layers' names, else the first linear layers'."""
    linear = linear_layer_names(model)
    leaves = set(_short_names(linear))
    for patterns in dict.fromkeys(DEFAULT_TARGETS.values()):
        if set(patterns) <= leaves:
            return list(patterns)
    pool = attention_layer_names(model) or linear
    seen: list[str] = []
    for name in pool:
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in seen:
            seen.append(leaf)
    return seen[:2] or ["<module name>"]


def _flag_hint(model: nn.Module) -> str:
    linear = linear_layer_names(model)
    counts = Counter(n.rsplit(".", 1)[-1] for n in linear)
    listed = ", ".join(f"{leaf} (x{k})" for leaf, k in sorted(counts.items())) or "none"
    flag = f"--variant-config '*.target_modules=[{','.join(_suggested_patterns(model))}]'"
    return (
        f"its linear layers outside the task head (last component): {listed}; "
        f"full names look like {_sample(linear, 3)}. Choose the modules to adapt with e.g. "
        f"{flag} (in Python: target_modules=[...]), or use a preset for any model: "
        f"target_modules='attention' (every attention projection) or 'all-linear' "
        "(every linear layer but the task head)"
    )


def _unknown_type_message(model: nn.Module) -> str:
    kind = model_type(model)
    what = f"model_type {kind!r}" if kind else f"a {type(model).__name__} without a model_type"
    return (
        f"target_modules='auto' has no default for {what} ({len(DEFAULT_TARGETS)} model types "
        "have one: lorabench.variants.targets.DEFAULT_TARGETS); " + _flag_hint(model)
    )
