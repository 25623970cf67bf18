"""Search spaces: what a variant lets a search tune, validated before any training starts.

A space is an ordered mapping from a parameter name to a distribution spec. A name is either a
field of the variant's config (``r``, ``alpha``, ``target_r``) or a training field prefixed
``train.`` (``train.learning_rate``). Specs (the format :meth:`Variant.search_space` returns)::

    {"type": "categorical", "choices": [2, 4, 8]}
    {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}        # optional "step"
    {"type": "int", "low": 1, "high": 16, "step": 1, "log": False}

Two extras make conditional spaces expressible:

* ``"when": {"other": value}`` (or ``{"other": [v1, v2]}``): the parameter is sampled only when an
  earlier parameter (or a fixed config value) has one of those values; otherwise the variant's
  default applies. Example: a rank-scaling option that only matters with rsLoRA.
* an ``int``/``float`` bound may name an earlier parameter: ``{"type": "int", "low": 1,
  "high": "r"}`` keeps AdaLoRA's target rank at or below its initial rank ``r``.

A YAML config overrides a variant's declared space per parameter: a spec replaces it, ``null``
removes it from the search (the default applies), a plain value fixes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from lorabench.harness.config import BenchmarkConfigError, TrainConfig

TRAIN_PREFIX = "train."
SPEC_TYPES = ("categorical", "float", "int")
_SPEC_KEYS = {
    "categorical": {"type", "choices", "when"},
    "float": {"type", "low", "high", "log", "step", "when"},
    "int": {"type", "low", "high", "log", "step", "when"},
}
# Largest grid a grid search enumerates from an int range before asking for explicit choices.
MAX_GRID_POINTS = 10_000


class SearchSpaceError(BenchmarkConfigError):
    """An empty or invalid search space; the message names the parameter and the fix."""


@dataclass(frozen=True)
class ParamSpec:
    """One searchable parameter."""

    name: str
    type: str
    choices: tuple[Any, ...] | None = None
    low: float | str | None = None  # a number, or the name of an earlier parameter
    high: float | str | None = None
    log: bool = False
    step: float | None = None
    when: Mapping[str, tuple[Any, ...]] | None = None

    @property
    def is_train(self) -> bool:
        """Whether the parameter is a training field (named ``train.<field>``)."""
        return self.name.startswith(TRAIN_PREFIX)

    @property
    def field(self) -> str:
        """The config (or training config) field this parameter sets."""
        return self.name[len(TRAIN_PREFIX) :] if self.is_train else self.name

    @property
    def is_conditional(self) -> bool:
        """Whether it depends on an earlier parameter: a ``when`` condition, or a bound that
        names one."""
        return bool(self.when) or isinstance(self.low, str) or isinstance(self.high, str)

    def to_dict(self) -> dict[str, Any]:
        """The spec in the format it is written in (see the module docstring), without ``name``."""
        out: dict[str, Any] = {"type": self.type}
        if self.type == "categorical":
            out["choices"] = list(self.choices or ())
        else:
            out.update(low=self.low, high=self.high, log=self.log)
            if self.step is not None:
                out["step"] = self.step
        if self.when:
            out["when"] = {k: list(v) for k, v in self.when.items()}
        return out


@dataclass(frozen=True)
class SearchSpace:
    """An ordered, validated search space for one variant (order = sampling order)."""

    variant: str
    params: tuple[ParamSpec, ...]
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # fixed by the YAML override

    def __post_init__(self) -> None:
        if not self.params:
            raise SearchSpaceError(
                f"the search space of variant {self.variant!r} is empty: declare one in the "
                "variant's "
                "search_space() or give one in the YAML config under space: {variant: {r: {type: "
                "categorical, choices: [2, 4, 8]}}}"
            )

    @property
    def names(self) -> list[str]:
        """The parameter names in sampling order."""
        return [p.name for p in self.params]

    @property
    def is_conditional(self) -> bool:
        """Whether any parameter is conditional (see :attr:`ParamSpec.is_conditional`)."""
        return any(p.is_conditional for p in self.params)

    def to_dict(self) -> dict[str, Any]:
        """``{"params": {name: spec}, "fixed": {name: value}}``: what ``--show-space`` prints and
        :meth:`fingerprint` hashes."""
        return {
            "params": {p.name: p.to_dict() for p in self.params},
            "fixed": dict(self.fixed),
        }

    def fingerprint(self) -> str:
        """A short hash that identifies this space (workers of one study must agree on it)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def suggest(
        self, trial: optuna.trial.BaseTrial, base: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Samples every applicable parameter through ``trial``; returns name -> value.

        ``base`` holds the values conditions and bound references fall back to when they name a
        parameter that is not searched (the run's fixed variant/training config).
        """
        known: dict[str, Any] = {**(base or {}), **self.fixed}
        sampled: dict[str, Any] = {}
        for p in self.params:
            if p.when and not all(known.get(ref) in allowed for ref, allowed in p.when.items()):
                continue  # condition not met: the config default applies
            if p.type == "categorical":
                value = trial.suggest_categorical(p.name, list(p.choices or ()))
            else:
                low, high = _resolve_bound(p, p.low, known), _resolve_bound(p, p.high, known)
                if p.type == "int":
                    low, high = int(low), int(high)
                    if low > high:
                        # e.g. target rank bounded by a smaller initial rank: nothing to choose
                        continue
                    value = trial.suggest_int(p.name, low, high, step=int(p.step or 1), log=p.log)
                else:
                    if low > high:
                        continue
                    value = trial.suggest_float(
                        p.name, float(low), float(high), step=p.step, log=p.log
                    )
            sampled[p.name] = value
            known[p.name] = value
        return {**self.fixed, **sampled}

    def grid(self) -> dict[str, list[Any]]:
        """The finite grid a grid search walks (every parameter must be discrete)."""
        if self.is_conditional:
            raise SearchSpaceError(
                f"the grid sampler needs an unconditional space, but {self.variant!r} has "
                "conditional parameters ('when' or a bound naming another parameter): use "
                "--sampler tpe or random, "
                "or override those parameters with plain choices"
            )
        grid: dict[str, list[Any]] = {}
        for p in self.params:
            if p.type == "categorical":
                grid[p.name] = list(p.choices or ())
            elif p.type == "int" and not p.log:
                values = list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))  # type: ignore[arg-type]
                if len(values) > MAX_GRID_POINTS:
                    raise SearchSpaceError(
                        f"{p.name}: {len(values)} grid points; give explicit choices"
                    )
                grid[p.name] = values
            elif p.type == "float" and p.step is not None and not p.log:
                n = round((float(p.high) - float(p.low)) / p.step)  # type: ignore[arg-type]
                grid[p.name] = [round(float(p.low) + i * p.step, 12) for i in range(n + 1)]  # type: ignore[arg-type]
            else:
                raise SearchSpaceError(
                    f"the grid sampler cannot enumerate {p.name} ({p.to_dict()}): give it "
                    "{type: categorical, choices: [...]} in the YAML space, or use --sampler tpe"
                )
        return grid


def build_search_space(
    variant: str,
    declared: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    *,
    config_fields: set[str],
) -> SearchSpace:
    """Merges a variant's declared space with a YAML override and validates every entry.

    ``config_fields`` are the variant config's field names (what a plain parameter may set).
    """
    if declared is None or not isinstance(declared, Mapping):
        raise SearchSpaceError(f"{variant}.search_space() must return a mapping, got {declared!r}")
    merged: dict[str, Any] = dict(declared)
    fixed: dict[str, Any] = {}
    for name, value in (overrides or {}).items():
        merged.pop(name, None)
        if value is None:
            continue  # removed from the search
        if isinstance(value, Mapping):
            merged[name] = value
        else:
            fixed[name] = value
    valid_names = sorted(config_fields) + [
        TRAIN_PREFIX + f.name for f in dataclasses.fields(TrainConfig)
    ]
    params: list[ParamSpec] = []
    for name, spec in merged.items():
        params.append(
            _parse_param(
                variant, name, spec, valid_names, earlier={p.name for p in params} | set(fixed)
            )
        )
    for name in fixed:
        _check_name(variant, name, valid_names)
    return SearchSpace(variant=variant, params=tuple(params), fixed=fixed)


def split_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(variant config overrides, training config overrides) from sampled parameter values."""
    variant: dict[str, Any] = {}
    train: dict[str, Any] = {}
    for name, value in params.items():
        if name.startswith(TRAIN_PREFIX):
            train[name[len(TRAIN_PREFIX) :]] = value
        else:
            variant[name] = value
    return variant, train


def _check_name(variant: str, name: str, valid: list[str]) -> None:
    if name not in valid:
        raise SearchSpaceError(
            f"search space of {variant!r}: {name!r} is neither a field of its config nor a "
            "training "
            f"field; valid names: {', '.join(valid)}"
        )


def _parse_param(
    variant: str, name: str, spec: Any, valid: list[str], earlier: set[str]
) -> ParamSpec:
    where = f"search space of {variant!r}, parameter {name!r}"
    _check_name(variant, name, valid)
    if not isinstance(spec, Mapping) or spec.get("type") not in SPEC_TYPES:
        raise SearchSpaceError(
            f"{where}: {spec!r} is not a distribution spec; use e.g. {{type: categorical, choices: "
            "[2, 4, 8]}, {type: float, low: 1e-4, high: 1e-3, log: true} or "
            "{type: int, low: 1, high: 16}"
        )
    kind = spec["type"]
    unknown = sorted(set(spec) - _SPEC_KEYS[kind])
    if unknown:
        raise SearchSpaceError(
            f"{where}: unknown key(s) {unknown} for type {kind}; "
            f"allowed: {sorted(_SPEC_KEYS[kind])}"
        )
    when = _parse_when(where, spec.get("when"), earlier, valid)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list | tuple) or not choices:
            raise SearchSpaceError(f"{where}: choices={choices!r} must be a non-empty list")
        for c in choices:
            if c is not None and not isinstance(c, bool | int | float | str):
                raise SearchSpaceError(
                    f"{where}: choice {c!r} must be a number, string, bool or null"
                )
        if len(set(map(repr, choices))) != len(choices):
            raise SearchSpaceError(f"{where}: choices={list(choices)!r} has duplicates")
        return ParamSpec(name, kind, choices=tuple(choices), when=when)

    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SearchSpaceError(f"{where}: log={log!r} must be true or false")
    step = spec.get("step")
    low = _parse_bound(where, "low", spec.get("low"), earlier, kind)
    high = _parse_bound(where, "high", spec.get("high"), earlier, kind)
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, int | float) or step <= 0:
            raise SearchSpaceError(f"{where}: step={step!r} must be a positive number")
        if kind == "int" and not isinstance(step, int):
            raise SearchSpaceError(
                f"{where}: step={step!r} must be an integer for an int parameter"
            )
        if log:
            raise SearchSpaceError(f"{where}: step and log cannot be combined (Optuna forbids it)")
    numeric = [b for b in (low, high) if not isinstance(b, str)]
    if len(numeric) == 2 and low > high:  # type: ignore[operator]
        raise SearchSpaceError(f"{where}: low={low!r} is above high={high!r}")
    if log and any(b <= 0 for b in numeric):  # type: ignore[operator]
        raise SearchSpaceError(f"{where}: a log-scale range needs low > 0 (got low={low!r})")
    return ParamSpec(name, kind, low=low, high=high, log=log, step=step, when=when)


def _parse_bound(where: str, key: str, value: Any, earlier: set[str], kind: str) -> float | str:
    if isinstance(value, str):
        if value not in earlier:
            raise SearchSpaceError(
                f"{where}: {key}={value!r} names no earlier parameter; a bound is a number or the "
                f"name of a parameter listed before it (earlier: {sorted(earlier) or 'none'})"
            )
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SearchSpaceError(
            f"{where}: {key}={value!r} must be a number (a {kind} range needs low and high)"
        )
    if kind == "int" and not float(value).is_integer():
        raise SearchSpaceError(f"{where}: {key}={value!r} must be an integer for an int parameter")
    return int(value) if kind == "int" else float(value)


def _parse_when(
    where: str, when: Any, earlier: set[str], valid: list[str]
) -> dict[str, tuple[Any, ...]] | None:
    if when is None:
        return None
    if not isinstance(when, Mapping) or not when:
        raise SearchSpaceError(
            f"{where}: when={when!r} must map a parameter to its value(s), "
            "e.g. when: {use_rslora: true}"
        )
    out: dict[str, tuple[Any, ...]] = {}
    for ref, allowed in when.items():
        if ref not in earlier and ref not in valid:
            raise SearchSpaceError(
                f"{where}: when names {ref!r}, which is not a parameter or config field"
            )
        out[ref] = tuple(allowed) if isinstance(allowed, list | tuple) else (allowed,)
    return out


def _resolve_bound(p: ParamSpec, bound: float | str | None, known: Mapping[str, Any]) -> float:
    if isinstance(bound, str):
        if bound not in known:
            raise SearchSpaceError(
                f"{p.name}: its bound names {bound!r}, which has no value in this trial"
            )
        return float(known[bound])
    return float(bound)  # type: ignore[arg-type]
