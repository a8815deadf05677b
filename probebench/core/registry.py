"""A small generic registry (in the manner of lm-eval's and timm's).

Entries are registered with a decorator, or lazily as ``"module:attr"`` strings that are imported only when
the entry is used, or by outside packages through an entry-point group. A *prefix* entry (``"timm:"``) serves
a whole family of names (``timm:<any timm model>``). Unknown names raise :class:`UnknownNameError` with the
closest valid names and the list of available ones.

One name may be registered several times as long as every registration means the same object: the README's
recipe decorates a factory *and* lists it as an entry point, so importing the module (``--plugin``, a user's own
import, or resolving the entry point) registers it a second time. Same object, or the same ``module:qualname``
(a lazy reference to it, or the module imported again): fine, the decorator's metadata wins. Two different
objects under one name: :class:`DuplicateRegistrationError` naming both. A lazy reference whose object is not
known yet is checked when the name is first used.

Before every lookup the registry imports the plugins listed in ``$PROBEBENCH_PLUGINS``
(:mod:`probebench.core.plugins`), so their decorators have run whichever registry is asked first.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from probebench.core.errors import ProbebenchError, UnknownNameError
from probebench.core.plugins import describe_import_error, load_env_plugins


class DuplicateRegistrationError(ProbebenchError, ValueError):
    """Two different objects registered under one name."""


def reference(obj: Any) -> str | None:
    """``"module:qualname"`` of a registered object (the string itself for a lazy reference); ``None`` when the
    object has no stable module-level name (lambdas, closures), which then only equals itself."""
    if isinstance(obj, str):
        return obj
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    return f"{module}:{qualname}"


def same_target(a: Any, b: Any) -> bool:
    """Whether two registrations mean the same object: identical, or the same ``module:qualname`` (a lazy
    reference to the object, or the same module-level definition imported again, e.g. ``importlib.reload``)."""
    if a is b:
        return True
    ra, rb = reference(a), reference(b)
    return ra is not None and ra == rb


def resolve_reference(ref: str) -> Any:
    """Import ``"module:attr.sub"``; a failure is ONE :class:`ProbebenchError` naming the file and line."""
    module_name, _, attr = ref.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:
        raise ProbebenchError(describe_import_error(e)) from e
    for part in attr.split(".") if attr else []:
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            where = getattr(obj, "__file__", None) or getattr(obj, "__name__", repr(obj))
            raise ProbebenchError(f"{where} has no attribute {part!r}.") from e
    return obj


def _describe(obj: Any) -> str:
    ref = reference(obj)
    if ref is None:
        return repr(obj)
    if isinstance(obj, str):
        return f"{ref!r} (lazy)"
    return ref


@dataclass
class Entry:
    """One registered name: the object (or a lazy ``"module:attr"`` reference) and its listing metadata."""

    name: str
    target: Any  # the object, or "module:attr"
    kind: str = ""
    source: str = ""  # where the weights / data come from
    notes: str = ""
    prefix: bool = False  # serves every name starting with ``name``
    extra: dict[str, Any] = field(default_factory=dict)
    origin: str = ""  # how it was registered, for error messages ("entry point of my-package 1.0", ...)
    # other lazy references registered under this name: each must resolve to ``target`` (checked on first use)
    claims: list[str] = field(default_factory=list)

    def load(self) -> Any:
        if isinstance(self.target, str):
            ref = self.target
            try:
                self.target = resolve_reference(ref)
            except ProbebenchError as e:
                origin = f", {self.origin}" if self.origin else ""
                raise ProbebenchError(f"Could not load {self.name!r} from {ref!r}{origin}: {e}") from e
        return self.target


class Registry:
    """Name → factory mapping with lazy entries, prefix families and entry-point plugins."""

    def __init__(self, kind: str, group: str | None = None, lazy_modules: tuple[str, ...] = ()):
        self.kind = kind
        self.group = group
        self._entries: dict[str, Entry] = {}
        self._lazy_modules = list(lazy_modules)  # modules whose import registers entries
        self._plugins_loaded = False

    # -- registration ------------------------------------------------------------------------------------
    def register(
        self,
        name: str,
        target: Any = None,
        *,
        kind: str = "",
        source: str = "",
        notes: str = "",
        prefix: bool = False,
        override: bool = False,
        **extra: Any,
    ) -> Callable[[Any], Any] | Any:
        """Register ``target`` (an object, or a lazy ``"module:attr"``) under ``name``; without ``target``
        returns a decorator. Registering the same object again is allowed (see the module docstring);
        ``override=True`` replaces a different one."""

        def add(obj: Any) -> Any:
            self._add(Entry(name, obj, kind, source, notes, prefix, dict(extra)), override=override)
            return obj

        return add if target is None else add(target)

    def _add(self, new: Entry, override: bool = False) -> None:
        old = self._entries.get(new.name)
        if old is None or override:
            self._entries[new.name] = new
            return
        new_lazy, old_lazy = isinstance(new.target, str), isinstance(old.target, str)
        if not old_lazy and not new_lazy and not same_target(old.target, new.target):
            raise self._conflict(new.name, old.target, new.target)
        if new_lazy:
            # a lazy reference adds nothing to a known registration; remember it if it may differ
            if not same_target(old.target, new.target) and new.target not in old.claims:
                old.claims.append(new.target)
            return
        # the object itself (a decorator) replaces a lazy placeholder or an earlier registration of it;
        # its metadata wins, and a lazy reference that may name another object is checked on first use
        new.claims = list(old.claims)
        if old_lazy and not same_target(old.target, new.target) and old.target not in new.claims:
            new.claims.append(old.target)
        self._entries[new.name] = new

    def _conflict(self, name: str, first: Any, second: Any) -> DuplicateRegistrationError:
        msg = (
            f"{self.kind} {name!r} is already registered to {_describe(first)}; cannot also register "
            f"{_describe(second)} under that name. Pick another name, or pass override=True to replace it."
        )
        qa, qb = getattr(first, "__qualname__", None), getattr(second, "__qualname__", None)
        if qa and qa == qb and not isinstance(first, str) and not isinstance(second, str):
            msg += (
                " (Same definition in two modules: is one file imported under two names, e.g. as a --plugin "
                "file and as an installed module?)"
            )
        return DuplicateRegistrationError(msg)

    # -- lookup ---------------------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        while self._lazy_modules:
            importlib.import_module(self._lazy_modules.pop(0))
        load_env_plugins()
        if not self._plugins_loaded and self.group:
            self._plugins_loaded = True
            for ep in entry_points(group=self.group):
                dist = getattr(ep, "dist", None)
                origin = f"entry point {ep.name!r} of {getattr(dist, 'name', 'a distribution')}"
                if dist is not None and getattr(dist, "version", None):
                    origin += f" {dist.version}"
                self._add(Entry(ep.name, ep.value, kind="plugin", source=ep.value, origin=origin))

    def entry(self, name: str) -> Entry:
        """The entry serving ``name`` (exact, else the longest matching prefix family)."""
        self._ensure_loaded()
        if name in self._entries and not self._entries[name].prefix:
            return self._entries[name]
        prefixes = [e for e in self._entries.values() if e.prefix and name.startswith(e.name)]
        if prefixes and len(name) > len(max(prefixes, key=lambda e: len(e.name)).name):
            return max(prefixes, key=lambda e: len(e.name))
        raise UnknownNameError(self.kind, name, self.names())

    def get(self, name: str) -> Any:
        """The registered object for ``name`` (imported if lazy)."""
        entry = self.entry(name)
        entry.load()
        # importing a lazy entry's module may have registered the name again (its decorator): use that entry
        entry = self._entries.get(entry.name, entry)
        obj = entry.load()
        while entry.claims:
            ref = entry.claims[0]
            try:
                other = resolve_reference(ref)
            except ProbebenchError as e:
                raise ProbebenchError(f"Could not load {entry.name!r} from {ref!r}: {e}") from e
            if not same_target(obj, other):
                raise self._conflict(entry.name, obj, other)
            entry.claims.pop(0)
        return obj

    def names(self) -> list[str]:
        """All registered names; prefix families are shown as ``prefix<name>``."""
        self._ensure_loaded()
        return sorted(e.name + "<name>" if e.prefix else e.name for e in self._entries.values())

    def __contains__(self, name: str) -> bool:
        try:
            self.entry(name)
        except UnknownNameError:
            return False
        return True

    def __iter__(self) -> Iterator[Entry]:
        self._ensure_loaded()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def table(self) -> list[dict[str, str]]:
        """Rows for ``probebench list``: name, kind, source, notes."""
        return [
            {
                "name": e.name + ("<name>" if e.prefix else ""),
                "kind": e.kind,
                "source": e.source,
                "notes": e.notes,
            }
            for e in self
        ]
