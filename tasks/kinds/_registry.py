"""The target-kind registry, and the kind tables derived from it (main metric, metric directions).

Built-in kinds are lazy ``"module:class"`` entries (imported on first use); outside packages add kinds through
the entry-point group ``probebench.kinds``, and a plugin file by decorating its class with
``@TARGET_KINDS.register(name)``. One instance per registered class serves every dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from probebench.core.errors import ProbebenchError
from probebench.core.registry import Registry
from tasks.kinds.base import TargetKind

BUILTIN = {  # name → class, in the order tables and figures list the kinds (other kinds follow, by name)
    "segmentation": "tasks.kinds.segmentation:SegmentationKind",
    "saliency": "tasks.kinds.saliency:SaliencyKind",
    "depth": "tasks.kinds.depth:DepthKind",
}

TARGET_KINDS = Registry("target kind", group="probebench.kinds")
for _name, _ref in BUILTIN.items():
    TARGET_KINDS.register(_name, _ref, kind="built-in", source=_ref)

_INSTANCES: dict[Any, TargetKind] = {}  # registered class (or instance) → the instance that serves it


def get_kind(name: str) -> TargetKind:
    """The kind object registered as ``name`` (:class:`~probebench.core.errors.UnknownNameError` with the
    closest names otherwise)."""
    obj = TARGET_KINDS.get(name)
    kind = _INSTANCES.get(obj)
    if kind is None:
        kind = obj() if isinstance(obj, type) else obj
        if not isinstance(kind, TargetKind):
            raise ProbebenchError(
                f"Target kind {name!r} is registered to {obj!r}, which is not a TargetKind."
            )
        if not kind.name:
            kind.name = name  # type: ignore[misc]  # a class that leaves its name to the registration
        _INSTANCES[obj] = kind
    if kind.name != name:
        raise ProbebenchError(
            f"Target kind {name!r} is registered to {type(kind).__name__}, whose name is {kind.name!r}; "
            "register a kind under its own name."
        )
    return kind


def kind_names() -> list[str]:
    """Every registered kind: the built-ins in their order, then the others by name."""
    names = TARGET_KINDS.names()
    builtin = list(BUILTIN)
    return [n for n in builtin if n in names] + sorted(n for n in names if n not in BUILTIN)


def find_kind(name: str) -> TargetKind | None:
    """The kind registered as ``name``, or ``None`` (saved results of a kind no longer registered)."""
    return get_kind(name) if name in TARGET_KINDS else None


def main_metrics() -> dict[str, tuple[str, bool]]:
    """kind → (main metric, higher is better), in :func:`kind_names` order."""
    return {n: (k.main_metric, k.higher_is_better) for n in kind_names() for k in (get_kind(n),)}


def metric_directions() -> dict[str, bool]:
    """metric → higher is better, over every kind's metrics (kinds in order, each kind's metrics in its
    order); two kinds that give one metric name opposite directions are an error."""
    out: dict[str, bool] = {}
    owner: dict[str, str] = {}
    for n in kind_names():
        for metric, higher in get_kind(n).metrics.items():
            if metric in out and out[metric] != higher:
                raise ProbebenchError(
                    f"Metric {metric!r} is higher-is-better={out[metric]} for the {owner[metric]} kind but "
                    f"{higher} for {n}: give one of them another name."
                )
            out.setdefault(metric, higher)
            owner.setdefault(metric, n)
    return out


class KindTable(Mapping):
    """A read-only mapping rebuilt from the registry on every use, so kinds registered later (plugins) are in
    it: ``tasks.base.MAIN_METRIC`` and ``HIGHER_IS_BETTER``."""

    def __init__(self, build: Callable[[], dict[str, Any]]):
        self._build = build

    def __getitem__(self, key: str) -> Any:
        return self._build()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._build())

    def __len__(self) -> int:
        return len(self._build())

    def __repr__(self) -> str:
        return repr(self._build())
