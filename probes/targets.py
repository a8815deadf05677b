"""Dense targets brought to feature resolution, and the decoding of probe outputs: each a call of the target's
kind (``spec.target_kind``, :mod:`tasks.kinds`), under the names probe code has always imported.

Probes fit at feature resolution (one row per feature cell) and are scored at label resolution, by bilinear
upsampling (:func:`upsample`) of the regressed outputs, which the kind then decodes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tasks.base import TargetSpec
from tasks.kinds import inverse_frequency_weights

__all__ = [
    "balance_weights",
    "class_frequencies",
    "decode",
    "inverse_frequency_weights",
    "make_metric",
    "num_outputs",
    "targets_at",
    "upsample",
]


def num_outputs(spec: TargetSpec) -> int:
    return spec.target_kind.num_outputs(spec)


def targets_at(targets: np.ndarray, spec: TargetSpec, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Targets (B, H, W) → soft targets (B, h, w, K) and cell weights (B, h, w) at feature resolution."""
    return spec.target_kind.soft_targets(targets, spec, hw)


def balance_weights(
    y: np.ndarray, w: np.ndarray, class_weights: np.ndarray | None, spec: TargetSpec
) -> np.ndarray:
    """Per-cell weights times class-balancing weights (soft: Σ_c y_c · w_c), as ``spec``'s kind balances them."""
    return spec.target_kind.balance_weights(y, w, class_weights)


def class_frequencies(targets: Iterable[np.ndarray], spec: TargetSpec) -> np.ndarray | None:
    """Pixel frequency of each class of ``spec``'s kind (``None`` for a kind without classes)."""
    return spec.target_kind.class_frequencies(targets, spec)


def upsample(pred: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w, K) predictions → (B, K, H, W) by bilinear interpolation."""
    p = torch.as_tensor(pred).permute(0, 3, 1, 2).float()
    if tuple(p.shape[-2:]) == tuple(size):
        return p
    return F.interpolate(p, size=size, mode="bilinear", align_corners=False)


def decode(pred_up: torch.Tensor, spec: TargetSpec) -> torch.Tensor:
    """Upsampled raw outputs (B, K, H, W) → what the metric scores (class ids, [0, 1] scores, metres...)."""
    return spec.target_kind.decode(pred_up, spec)


def make_metric(spec: TargetSpec, **options: Any):
    """The kind's accumulator (``tasks.metrics``) for a target spec."""
    return spec.target_kind.make_metric(spec, **options)
