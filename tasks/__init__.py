"""Datasets, dense targets and metrics. ``tasks.create(name, split=...)`` returns a :class:`Dataset`."""

from __future__ import annotations

from typing import Any

from tasks._registry import TASKS
from tasks.base import KINDS, Dataset, Subset, TargetSpec

__all__ = ["KINDS", "TASKS", "Dataset", "Subset", "TargetSpec", "create"]


def create(name: str, split: str = "train", **options: Any) -> Dataset:
    """Build the split ``split`` of the dataset registered as ``name`` with dataset-specific ``options``."""
    return TASKS.get(name)(split=split, **options)
