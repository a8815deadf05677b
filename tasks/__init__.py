"""Datasets, dense targets and metrics. ``tasks.create(name, split=...)`` returns a :class:`Dataset`; the kinds of
target (segmentation, saliency, depth, ...) are objects in :mod:`tasks.kinds` (registry ``TARGET_KINDS``)."""

from __future__ import annotations

from typing import Any

from tasks._registry import TASKS
from tasks.base import KINDS, Dataset, Subset, TargetSpec
from tasks.kinds import TARGET_KINDS, TargetKind

__all__ = ["KINDS", "TARGET_KINDS", "TASKS", "Dataset", "Subset", "TargetKind", "TargetSpec", "create"]


def create(name: str, split: str = "train", **options: Any) -> Dataset:
    """Build the split ``split`` of the dataset registered as ``name`` with dataset-specific ``options``."""
    return TASKS.get(name)(split=split, **options)
