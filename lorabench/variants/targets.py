"""Which modules of a model to adapt: pattern matching on dotted module names."""

from __future__ import annotations

import difflib
import fnmatch
import re

from torch import nn

from lorabench.variants.base import ConfigError, is_adaptable

_GLOB_CHARS = set("*?[")


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
