"""A small generic registry (in the manner of lm-eval's and timm's).

Entries are registered with a decorator, or lazily as ``"module:attr"`` strings that are imported only when
the entry is used, or by outside packages through an entry-point group. A *prefix* entry (``"timm:"``) serves
a whole family of names (``timm:<any timm model>``). Unknown names raise :class:`UnknownNameError` with the
closest valid names and the list of available ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from probebench.errors import ProbebenchError, UnknownNameError


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

    def load(self) -> Any:
        if isinstance(self.target, str):
            module, _, attr = self.target.partition(":")
            try:
                obj = importlib.import_module(module)
                for part in attr.split(".") if attr else []:
                    obj = getattr(obj, part)
            except (ImportError, AttributeError) as e:
                raise ProbebenchError(f"Could not load {self.name!r} from {self.target!r}: {e}") from e
            self.target = obj
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
        """Register ``target`` under ``name``; without ``target`` returns a decorator."""

        def add(obj: Any) -> Any:
            if name in self._entries and not override and self._entries[name].target is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = Entry(name, obj, kind, source, notes, prefix, dict(extra))
            return obj

        return add if target is None else add(target)

    # -- lookup ---------------------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        while self._lazy_modules:
            importlib.import_module(self._lazy_modules.pop(0))
        if not self._plugins_loaded and self.group:
            self._plugins_loaded = True
            for ep in entry_points(group=self.group):
                if ep.name not in self._entries:
                    self._entries[ep.name] = Entry(ep.name, ep.value, kind="plugin", source=ep.value)

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
        return self.entry(name).load()

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
