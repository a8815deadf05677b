"""Probes fitted on cached features: the ridge screen (more to come: linear, fusion, light heads)."""

from probes._registry import PROBES

__all__ = ["PROBES"]
