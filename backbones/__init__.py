"""Frozen backbones → features. ``backbones.create(name, weights=...)`` returns an :class:`Adapter`."""

from __future__ import annotations

from typing import Any

from backbones._registry import BACKBONES
from backbones.base import Adapter, BackboneMeta, FeatureKey, resolve_layers

__all__ = ["BACKBONES", "Adapter", "BackboneMeta", "FeatureKey", "create", "list_backbones", "resolve_layers"]


def create(
    name: str, weights: str = "default", device: Any = None, dtype: Any = None, **kwargs: Any
) -> Adapter:
    """Build the frozen adapter registered as ``name``.

    ``weights``: ``"default"`` (the registered pretrained weights, from disk/cache; offline-safe), ``"random"``
    (the real architecture with seeded random weights; never touches the network) or a path to a local file.
    """
    if not isinstance(weights, str) or not weights:
        raise ValueError(f"weights must be 'default', 'random' or a path, got {weights!r}")
    factory = BACKBONES.get(name)
    return factory(name, weights=weights, device=device, dtype=dtype, **kwargs)


def list_backbones() -> list[str]:
    return BACKBONES.names()
