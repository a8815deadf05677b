"""Probes fitted on features of a frozen backbone: the ridge screen (cached or streamed), the trained linear,
fusion, light-head and combination probes. :mod:`probes.base` is the contract every probe follows."""

from probes._registry import PROBES, probe_class

__all__ = ["PROBES", "probe_class"]
