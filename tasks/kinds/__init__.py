"""Target kinds as objects: each kind of dense target (segmentation, saliency, depth, or one a plugin adds)
owns its soft targets, class weights, decoding, metric, λ criterion, trained-probe objective, error mask and
figure style (:class:`TargetKind`, the contract). ``spec.target_kind`` resolves a
:class:`~tasks.base.TargetSpec`'s kind; probes and analysis call it instead of branching on the name.

Adding a kind is one file: a :class:`TargetKind` subclass registered with ``@TARGET_KINDS.register(name)``
(a ``--plugin`` file, or an entry point of the group ``probebench.kinds``; a built-in one is listed in
``tasks/kinds/_registry.py``).
"""

from tasks.kinds._registry import TARGET_KINDS, find_kind, get_kind, kind_names
from tasks.kinds.base import (
    LambdaCriterion,
    MetricCriterion,
    Objective,
    Panels,
    TargetKind,
    class_palette,
    continuous_panels,
    inverse_frequency_weights,
)

__all__ = [
    "TARGET_KINDS",
    "LambdaCriterion",
    "MetricCriterion",
    "Objective",
    "Panels",
    "TargetKind",
    "class_palette",
    "continuous_panels",
    "find_kind",
    "get_kind",
    "inverse_frequency_weights",
    "kind_names",
]
