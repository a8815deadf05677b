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
    ``concepts``: concept words (or a mapping, :class:`backbones.diffusion.concepts.ConceptSpec`) — the adapter's
    features are then the model's concept-attention maps (MM-DiTs only; any other backbone is an error naming
    the ones that support them).
    """
    if not isinstance(weights, str) or not weights:
        raise ValueError(f"weights must be 'default', 'random' or a path, got {weights!r}")
    concepts = kwargs.pop("concepts", None)
    factory = BACKBONES.get(name)
    adapter = factory(name, weights=weights, device=device, dtype=dtype, **kwargs)
    if concepts is None:
        return adapter
    from backbones.diffusion.concepts import concept_maps

    return concept_maps(adapter, concepts)


def list_backbones() -> list[str]:
    return BACKBONES.names()
