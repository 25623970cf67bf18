"""A small named-plugin registry shared by variants and tasks.

Modelled on timm's model registry: one decorator line registers a plugin, its name is the public
API, ``list("*lora*")`` takes shell-style wildcards, and an unknown name fails with the known names
and a "did you mean". Third-party plugins arrive through a Python entry-point group, loaded lazily
the first time the registry is asked anything, so importing lorabench stays cheap.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name the registry does not know; the message lists the known names."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain sentence.
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to plugins (classes or data objects) of one kind.

    Args:
        kind: what the plugins are, used in messages ("variant", "task").
        entry_point_group: the ``importlib.metadata`` group third-party packages register in.
            Each entry point must load to a plugin object, or to a callable that registers
            plugins when called with no arguments (a module import that runs decorators counts).
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}
        self._entry_points_loaded = entry_point_group is None
        self._entry_point_errors: dict[str, str] = {}

    # -- registration -------------------------------------------------------------------------
    def register(
        self, name: str | None = None, *, description: str | None = None, overwrite: bool = False
    ) -> Callable[[T], T]:
        """Decorator: ``@VARIANTS.register("lora")`` above a class registers it under that name.

        ``name`` defaults to the object's ``name`` attribute; ``description`` to its
        ``description`` attribute, else the first line of its docstring.
        """

        def decorator(obj: T) -> T:
            self.add(obj, name=name, description=description, overwrite=overwrite)
            return obj

        return decorator

    def add(
        self,
        obj: T,
        *,
        name: str | None = None,
        description: str | None = None,
        overwrite: bool = False,
    ) -> T:
        """Registers ``obj`` directly (the non-decorator form)."""
        key = name or getattr(obj, "name", None)
        if not key or not isinstance(key, str):
            raise ValueError(
                f"cannot register {obj!r} as a {self.kind}: give a name, e.g. "
                f"@register('my-{self.kind}'), or set a `name` attribute"
            )
        key = key.lower()
        if key in self._items and not overwrite and self._items[key] is not obj:
            raise ValueError(
                f"a {self.kind} named {key!r} is already registered "
                f"({self._items[key]!r}); pick another name or pass overwrite=True"
            )
        self._items[key] = obj
        doc = description or getattr(obj, "description", None) or (obj.__doc__ or "")
        self._descriptions[key] = doc.strip().splitlines()[0] if doc.strip() else ""
        return obj

    def unregister(self, name: str) -> None:
        """Removes a plugin (tests use this to clean up what they registered)."""
        self._items.pop(name.lower(), None)
        self._descriptions.pop(name.lower(), None)

    # -- entry points -------------------------------------------------------------------------
    def load_entry_points(self, *, force: bool = False) -> None:
        """Imports third-party plugins declared under ``entry_point_group``.

        A plugin that fails to import or to register does not break the registry: the error is
        kept and shown when that name is asked for.
        """
        if self._entry_points_loaded and not force:
            return
        self._entry_points_loaded = True
        if self.entry_point_group is None:
            return
        for ep in entry_points(group=self.entry_point_group):
            if ep.name.lower() in self._items and not force:
                continue
            # A broken plugin (failing import, hook or registration) must not hide the working ones.
            try:
                self._load_entry_point(ep, force=force)
            except Exception as exc:
                self._entry_point_errors[ep.name.lower()] = f"{type(exc).__name__}: {exc}"

    def _load_entry_point(self, ep: EntryPoint, *, force: bool) -> None:
        loaded = ep.load()
        if ep.name.lower() in self._items:
            return
        if isinstance(loaded, type) or not callable(loaded):
            self.add(loaded, name=ep.name, overwrite=force)
        else:
            # A function: a registration hook, or a factory returning the plugin.
            result = loaded()
            if result is not None and ep.name.lower() not in self._items:
                self.add(result, name=ep.name, overwrite=force)

    # -- lookup -------------------------------------------------------------------------------
    def get(self, name: str) -> T:
        """Returns the plugin registered as ``name`` (case-insensitive)."""
        self.load_entry_points()
        key = name.lower() if isinstance(name, str) else name
        if key in self._items:
            return self._items[key]
        if key in self._entry_point_errors:
            raise UnknownNameError(
                f"{self.kind} {name!r} is declared by an installed plugin that failed to load: "
                f"{self._entry_point_errors[key]}"
            )
        known = sorted(self._items)
        close = difflib.get_close_matches(str(key), known, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}.{hint} "
            f"Known {self.kind}s: {', '.join(known) or '(none)'}."
        )

    def list(self, pattern: str | list[str] = "*") -> list[str]:
        """Sorted names matching a shell-style wildcard (or any of several)."""
        self.load_entry_points()
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        return sorted(
            n for n in self._items if any(fnmatch.fnmatch(n, p.lower()) for p in patterns)
        )

    def describe(self, name: str) -> str:
        """The one-line description of a registered plugin."""
        self.get(name)
        return self._descriptions[name.lower()]

    def __contains__(self, name: object) -> bool:
        self.load_entry_points()
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self.list())
