"""Monocular depth: (H, W) float32 metres, 0 or non-finite marking invalid pixels; ``spec.min_depth`` to
``spec.max_depth`` is the valid range.

Closed-form probes regress the mean log-depth of each feature cell's valid pixels; trained probes minimise the
scale-invariant log loss on either the expectation over log-spaced depth bins the head classifies into
(DINOv2/v3; ``depth_loss="bins"``, ``depth_bins`` of them) or a directly regressed log-depth
(``depth_loss="silog"``). Scored by the nine standard metrics (:class:`tasks.metrics.DepthMetric`).

On disk: a single-channel (16-bit) PNG of ``depth_scale`` units per metre, 0 = invalid; the ``folder`` dataset
keeps them in ``depth/`` with ``depth_scale``, ``min_depth`` and ``max_depth`` in ``dataset.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from probebench.core.errors import ProbebenchError
from tasks.kinds.base import (
    Objective,
    Panels,
    TargetKind,
    area_mean,
    meta_number,
    open_image,
    save_png,
    with_bad,
)
from tasks.metrics import DepthMetric

if TYPE_CHECKING:
    import torch

    from tasks.base import TargetSpec

DEPTH_LOSSES = ("bins", "silog")
INVALID_DEPTH_COLOR = (0.0, 0.75, 0.75)  # invalid depth: cyan, far from every colour of magma
DEPTH_CMAP = "magma_r"  # near = light, far = dark
DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I", "L", "F")  # PIL modes of single-channel depth images


def read_depth(path: Path, depth_scale: float) -> np.ndarray:
    """(H, W) float32 metres from a single-channel (16-bit) PNG holding ``depth_scale`` units per metre."""
    im = open_image(path)
    if im.mode not in DEPTH_MODES:
        raise ProbebenchError(
            f"{path}: a depth map must be a single-channel (16-bit) PNG, got mode {im.mode!r}."
        )
    return (np.asarray(im).astype(np.float64) / float(depth_scale)).astype(np.float32)


def check_depth(depth: np.ndarray, where: Path | str) -> None:
    """No NaN, infinite or negative depth (0 marks an invalid pixel)."""
    bad = ~np.isfinite(depth) | (depth < 0)
    if bad.any():
        raise ProbebenchError(f"{where}: {int(bad.sum())} depth values are NaN, infinite or negative.")


class DepthObjective(Objective):
    """``depth_loss="bins"``: ``depth_bins`` logits over log-spaced depths, prepared into the expected depth
    (metres); ``"silog"``: one log-depth. Both trained with the scale-invariant log loss (λ = 0.85)."""

    def __init__(
        self,
        spec: TargetSpec,
        class_weights: np.ndarray | None = None,
        options: Mapping[str, Any] | None = None,
    ):
        import torch

        super().__init__(spec, class_weights, options)
        self.depth_loss = str(self.options.get("depth_loss", "bins"))
        self.depth_bins = int(self.options.get("depth_bins", 256))
        if self.depth_loss not in DEPTH_LOSSES:
            raise ProbebenchError(
                f"depth_loss must be one of {', '.join(DEPTH_LOSSES)}, got {self.depth_loss!r}."
            )
        lo, hi = math.log(spec.min_depth), math.log(spec.max_depth)
        self.centers = torch.linspace(lo, hi, self.depth_bins).exp()  # log-spaced bin centres (metres)

    @property
    def channels(self) -> int:
        return self.depth_bins if self.depth_loss == "bins" else 1

    def valid(self, target: torch.Tensor) -> torch.Tensor:
        import torch

        s = self.spec
        return torch.isfinite(target) & (target >= s.min_depth) & (target <= s.max_depth)

    def loss(self, up: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import torch

        valid = self.valid(target)
        if not valid.any():
            return up.sum() * 0.0
        logd = torch.log(torch.where(valid, target, torch.ones_like(target)).float())
        log_pred = up[:, 0] if self.depth_loss == "silog" else torch.log(up[:, 0])
        d = (log_pred - logd)[valid]
        return torch.sqrt((d**2).mean() - 0.85 * d.mean() ** 2 + 1e-8)  # scale-invariant log loss (λ = 0.85)

    def prepare(self, out: torch.Tensor) -> torch.Tensor:
        """Depth bins become the expected depth (B, 1, h, w) before upsampling (DINOv2/v3: classify over bins,
        predict the expectation, upsample the depth), which also keeps 256-channel maps away from label
        resolution."""
        import torch
        import torch.nn.functional as F

        if self.depth_loss == "bins":
            probs = F.softmax(out, dim=1)
            return torch.einsum("bkhw,k->bhw", probs, self.centers.to(out.device)).unsqueeze(1)
        return out

    def decode(self, up: torch.Tensor) -> torch.Tensor:
        if self.depth_loss == "silog":
            return up[:, 0].clamp(max=math.log(self.spec.max_depth) + 1.0).exp()
        return up[:, 0]


class DepthKind(TargetKind):
    name = "depth"
    objective_class = DepthObjective
    metrics = {  # noqa: RUF012
        "abs_rel": False,
        "sq_rel": False,
        "rmse": False,
        "rmse_log": False,
        "log10": False,
        "silog": False,
        "delta1": True,
        "delta2": True,
        "delta3": True,
    }
    main_metric = "rmse"
    default_head = "dpt"
    heads = ("linear", "dpt")
    error_criterion = "fails δ<1.25"
    meta_keys = ("depth_scale", "min_depth", "max_depth")

    def num_outputs(self, spec: TargetSpec) -> int:
        return 1

    def soft_targets(
        self, targets: np.ndarray, spec: TargetSpec, hw: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean log-depth over valid pixels; weight = valid fraction."""
        import torch

        d = torch.from_numpy(np.asarray(targets)).double()
        valid = torch.isfinite(d) & (d >= spec.min_depth) & (d <= spec.max_depth)
        logd = torch.where(valid, torch.log(torch.where(valid, d, 1.0)), 0.0)
        w = area_mean(valid[:, None].double(), hw)
        y = area_mean(logd[:, None], hw) / w.clamp_min(1e-12)
        return y.permute(0, 2, 3, 1).numpy(), w[:, 0].numpy()

    def decode(self, pred_up: torch.Tensor, spec: TargetSpec) -> torch.Tensor:
        """Regressed log-depth → metres (clamped to e × ``max_depth``)."""
        import torch

        return torch.exp(pred_up[:, 0].clamp(max=float(np.log(spec.max_depth)) + 1.0))

    def make_metric(self, spec: TargetSpec, **options: Any) -> DepthMetric:
        return DepthMetric(min_depth=spec.min_depth, max_depth=spec.max_depth, **options)

    def error_mask(
        self, pred: np.ndarray, target: np.ndarray, *, depth_ratio: float = 1.25, **options: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """max(pred/gt, gt/pred) ≥ ``depth_ratio``; valid where both the target and the prediction are
        positive and finite."""
        pred, target = np.asarray(pred), np.asarray(target)
        valid = np.isfinite(target) & (target > 0) & np.isfinite(pred) & (pred > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.maximum(pred / target, target / pred)
        return (ratio >= depth_ratio) & valid, valid

    def panels(self, target: np.ndarray, pred: np.ndarray, meta: Mapping[str, Any]) -> Panels:
        """Depth in metres on one scale (the valid targets' minimum to their 98th percentile) with a colour
        bar; invalid target pixels (0 or NaN: not scored) in cyan with a legend entry."""
        from matplotlib.patches import Patch

        t, p = np.asarray(target, dtype=np.float64), np.asarray(pred, dtype=np.float64)
        invalid = ~np.isfinite(t) | (t <= 0)
        valid = t[~invalid]
        lo = float(valid.min()) if valid.size else 0.0
        hi = float(np.percentile(valid, 98)) if valid.size else 1.0
        legend = []
        if invalid.any():
            legend.append(Patch(facecolor=INVALID_DEPTH_COLOR, label="invalid depth (0 / NaN; not scored)"))
        return Panels(
            np.ma.masked_array(t, invalid),
            np.ma.masked_invalid(p),
            {"cmap": with_bad(DEPTH_CMAP, INVALID_DEPTH_COLOR), "vmin": lo, "vmax": max(hi, lo + 1e-6)},
            legend,
            colorbar="depth (m)",
            colorbar_extend="both",
        )

    def read_target(self, path: Path, spec: TargetSpec) -> np.ndarray:
        """(H, W) float32 metres (:func:`read_depth` with the spec's ``depth_scale``)."""
        return read_depth(path, spec.depth_scale)

    def write_target(self, path: Path, target: np.ndarray, spec: TargetSpec) -> None:
        """A 16-bit PNG of ``depth_scale`` units per metre (0 = invalid: NaN, infinite or ≤ 0 depth)."""
        d = np.asarray(target)
        d = d if np.issubdtype(d.dtype, np.floating) else d.astype(np.float32)
        with np.errstate(invalid="ignore"):  # in the target's own precision, as the exports always rounded
            units = np.where(np.isfinite(d) & (d > 0), np.round(d * spec.depth_scale), 0)
        if units.max(initial=0) > 65535:
            raise ProbebenchError(
                f"{path}: depth {np.nanmax(d):.1f} m does not fit a 16-bit PNG at depth_scale {spec.depth_scale}."
            )
        save_png(units.astype(np.uint16), path)

    def meta_from_spec(self, spec: TargetSpec) -> dict[str, Any]:
        return {"depth_scale": spec.depth_scale, "min_depth": spec.min_depth, "max_depth": spec.max_depth}

    def check_target(
        self,
        target: np.ndarray,
        spec: TargetSpec,
        where: Path | str,
        *,
        stored: np.ndarray | None = None,
        note: str = "",
    ) -> None:
        """No NaN, infinite or negative depth (:func:`check_depth`)."""
        check_depth(target, where)

    def spec_from_meta(self, meta: Mapping[str, Any], where: Path | str) -> TargetSpec:
        """``depth_scale`` (units per metre, default 1000), ``min_depth`` and ``max_depth`` (metres, default
        1e-3 and 10): need ``depth_scale > 0`` and ``0 <= min_depth < max_depth``."""
        from tasks.base import TargetSpec

        scale = meta_number(meta, "depth_scale", 1000.0, where)
        lo, hi = meta_number(meta, "min_depth", 1e-3, where), meta_number(meta, "max_depth", 10.0, where)
        if scale <= 0 or not 0 <= lo < hi:
            raise ProbebenchError(
                f"{where}: need depth_scale > 0 and 0 <= min_depth < max_depth, got {scale}, {lo}, {hi}."
            )
        return TargetSpec("depth", min_depth=lo, max_depth=hi, depth_scale=scale)
