"""Dense targets brought to feature resolution, and the task-specific decoding of probe outputs.

Probes fit at feature resolution (one row per feature cell) and are scored at label resolution, by
bilinear upsampling of logits (segmentation), scores (saliency) or log-depth (depth).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tasks.base import TargetSpec
from tasks.metrics import DepthMetric, SaliencyMetric, SegmentationMetric


def num_outputs(spec: TargetSpec) -> int:
    return int(spec.num_classes) if spec.kind == "segmentation" else 1


def _pool(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Area average of (B, C, H, W) to (B, C, h, w)."""
    return F.adaptive_avg_pool2d(x, hw)


def targets_at(targets: np.ndarray, spec: TargetSpec, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Targets (B, H, W) → soft targets (B, h, w, K) and cell weights (B, h, w) at feature resolution.

    segmentation: class fractions over non-ignored pixels, weight = non-ignored fraction; saliency: foreground
    fraction; depth: mean log-depth over valid pixels, weight = valid fraction.
    """
    t = torch.from_numpy(np.asarray(targets))
    if spec.kind == "segmentation":
        valid = t != spec.ignore_index
        onehot = F.one_hot(torch.where(valid, t, 0).long(), spec.num_classes).permute(0, 3, 1, 2).double()
        onehot = onehot * valid[:, None]
        w = _pool(valid[:, None].double(), hw)
        y = _pool(onehot, hw) / w.clamp_min(1e-12)
    elif spec.kind == "saliency":
        y = _pool(t[:, None].double(), hw)
        w = torch.ones_like(y)
    else:
        d = t.double()
        valid = torch.isfinite(d) & (d >= spec.min_depth) & (d <= spec.max_depth)
        logd = torch.where(valid, torch.log(torch.where(valid, d, 1.0)), 0.0)
        w = _pool(valid[:, None].double(), hw)
        y = _pool(logd[:, None], hw) / w.clamp_min(1e-12)
    return y.permute(0, 2, 3, 1).numpy(), w[:, 0].numpy()


def balance_weights(y: np.ndarray, w: np.ndarray, class_weights: np.ndarray | None) -> np.ndarray:
    """Per-cell weights times class-balancing weights (soft: Σ_c y_c · w_c)."""
    if class_weights is None:
        return w
    if y.shape[-1] == 1:  # saliency: foreground/background weights
        cw = y[..., 0] * class_weights[1] + (1 - y[..., 0]) * class_weights[0]
    else:
        cw = y @ class_weights
    return w * cw


def class_frequencies(targets: list[np.ndarray], spec: TargetSpec) -> np.ndarray:
    """Pixel frequency of each class (segmentation) or of background/foreground (saliency)."""
    k = spec.num_classes if spec.kind == "segmentation" else 2
    counts = np.zeros(k, dtype=np.float64)
    for t in targets:
        t = np.asarray(t)
        t = t[t != spec.ignore_index] if spec.kind == "segmentation" else t.astype(np.int64)
        counts += np.bincount(t.ravel().astype(np.int64), minlength=k)[:k]
    return counts


def inverse_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """w_c = N / (K_present · N_c) for present classes (mean weight 1 over pixels), 0 for absent ones."""
    present = counts > 0
    w = np.zeros_like(counts)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


def upsample(pred: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w, K) predictions → (B, K, H, W) by bilinear interpolation."""
    p = torch.as_tensor(pred).permute(0, 3, 1, 2).float()
    if tuple(p.shape[-2:]) == tuple(size):
        return p
    return F.interpolate(p, size=size, mode="bilinear", align_corners=False)


def decode(pred_up: torch.Tensor, spec: TargetSpec) -> torch.Tensor:
    """Upsampled raw outputs (B, K, H, W) → what the metric scores: class ids, [0, 1] scores, metres."""
    if spec.kind == "segmentation":
        return pred_up.argmax(1)
    if spec.kind == "saliency":
        return pred_up[:, 0].clamp(0, 1)
    return torch.exp(pred_up[:, 0].clamp(max=float(np.log(spec.max_depth)) + 1.0))


def make_metric(spec: TargetSpec, **options: Any):
    """The task's accumulator (``tasks.metrics``) for a target spec."""
    if spec.kind == "segmentation":
        return SegmentationMetric(spec.num_classes, ignore_index=spec.ignore_index)
    if spec.kind == "saliency":
        return SaliencyMetric()
    return DepthMetric(min_depth=spec.min_depth, max_depth=spec.max_depth, **options)
