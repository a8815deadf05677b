"""Dataset-level evaluation metrics for the dense probing tasks.

Three accumulators share one interface: ``update(pred, target)`` any number of times, then
``compute() -> dict[str, float]`` (plain Python floats) and ``reset()``.  Inputs may be numpy arrays
or torch tensors on any device (converted with ``.detach().cpu().numpy()``; torch is never imported
here), holding one image ``(H, W)`` or a batch ``(B, H, W)``.  Ratios are returned as fractions
(0.518, not 51.8); the only exception is depth ``silog``, which keeps its conventional x100 scale.

* :class:`SegmentationMetric` -- mIoU / pixel accuracy from one dataset-wide confusion matrix
  (mmsegmentation convention).
* :class:`SaliencyMetric` -- MAE, F-measure, S-measure and E-measure, numerically identical to
  PySODMetrics 1.6.2 (``py_sod_metrics``), which we do not depend on because it pins numpy.
* :class:`DepthMetric` -- the Eigen et al. (2014) depth errors as implemented by BTS / Monodepth2,
  averaged over images.

Invalid input raises ``ValueError`` with a message naming the problem; nothing is silently dropped.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["DepthMetric", "SaliencyMetric", "SegmentationMetric"]

# PySODMetrics' epsilon: MATLAB's ``eps`` (np.spacing(1) == 2.220446049250313e-16).
_EPS = float(np.spacing(1))
_MAX_LISTED = 10  # how many offending values an error message lists


# --------------------------------------------------------------------------------------------------
# input handling shared by the three metrics
# --------------------------------------------------------------------------------------------------
def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a numpy array; torch tensors are detached and moved to the CPU first."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch.Tensor, without importing torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)):
        raise ValueError(f"{name} must be a numeric array or tensor, got dtype {arr.dtype}")
    return arr


def _as_batches(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    """Convert both inputs to numpy, check they have the same shape and return them as (B, H, W)."""
    p = _to_numpy(pred, "pred")
    t = _to_numpy(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: pred {tuple(p.shape)} vs target {tuple(t.shape)}")
    if p.ndim == 2:
        return p[None], t[None]
    if p.ndim == 3:
        return p, t
    raise ValueError(f"expected one image (H, W) or a batch (B, H, W), got shape {tuple(p.shape)}")


def _list_values(values: np.ndarray) -> str:
    """Format the distinct values of ``values`` for an error message (at most ``_MAX_LISTED``)."""
    uniq = np.unique(values)
    shown = ", ".join(str(v) for v in uniq[:_MAX_LISTED].tolist())
    return f"[{shown}{', ...' if uniq.size > _MAX_LISTED else ''}]"


# --------------------------------------------------------------------------------------------------
# semantic segmentation
# --------------------------------------------------------------------------------------------------
class SegmentationMetric:
    """Mean IoU and pixel accuracy over a whole dataset (mmsegmentation's ``IoUMetric`` convention).

    One int64 confusion matrix (rows = target class, columns = predicted class, as in
    ``sklearn.metrics.confusion_matrix``) is accumulated over every pixel of every image; pixels
    whose *target* equals ``ignore_index`` are excluded.  IoU_c = TP / (TP + FP + FN); classes whose
    union is zero (absent from both predictions and targets) get IoU NaN and are left out of the
    mean.  If no class has a non-zero union (nothing was scored), ``mIoU`` and ``pixel_acc`` are NaN
    rather than an exception, mirroring mmseg's ``nanmean``.

    Predictions are checked on *all* pixels, ignored ones included: a prediction outside
    ``[0, num_classes)`` always indicates a bug upstream (e.g. logits instead of an argmax).
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if ignore_index is not None and (
            isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer))
        ):
            raise ValueError(f"ignore_index must be an integer or None, got {ignore_index!r}")
        self.num_classes = int(num_classes)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: Any, target: Any) -> None:
        """Add integer class maps ``pred`` and ``target`` of shape (H, W) or (B, H, W)."""
        p, t = _as_batches(pred, target)
        for name, arr in (("pred", p), ("target", t)):
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(
                    f"{name} must hold integer class indices, got dtype {arr.dtype}"
                    + (" (pass the argmax over classes, not scores)" if name == "pred" else "")
                )
        n = self.num_classes
        bad_pred = (p < 0) | (p >= n)
        if bad_pred.any():
            raise ValueError(
                f"pred contains labels outside [0, {n}): {_list_values(p[bad_pred])} (num_classes={n})"
            )
        valid = np.ones(t.shape, dtype=bool) if self.ignore_index is None else t != self.ignore_index
        t_valid = t[valid]
        bad_target = (t_valid < 0) | (t_valid >= n)
        if bad_target.any():
            raise ValueError(
                f"target contains labels outside [0, {n}) that are not ignore_index={self.ignore_index}: "
                f"{_list_values(t_valid[bad_target])}"
            )
        index = t_valid.astype(np.int64) * n + p[valid].astype(np.int64)
        self.confusion += np.bincount(index, minlength=n * n).reshape(n, n)

    def per_class_iou(self) -> np.ndarray:
        """IoU of every class (float64, length ``num_classes``); NaN where the union is zero."""
        cm = self.confusion.astype(np.float64)
        tp = np.diag(cm)
        union = cm.sum(axis=0) + cm.sum(axis=1) - tp
        iou = np.full(self.num_classes, np.nan)
        np.divide(tp, union, out=iou, where=union > 0)
        return iou

    def compute(self) -> dict[str, float]:
        """Return ``mIoU`` (mean over classes with a non-zero union) and ``pixel_acc``, as fractions."""
        iou = self.per_class_iou()
        present = ~np.isnan(iou)
        miou = float(iou[present].mean()) if present.any() else math.nan
        total = int(self.confusion.sum())
        pixel_acc = float(np.trace(self.confusion) / total) if total > 0 else math.nan
        return {"mIoU": miou, "pixel_acc": pixel_acc}


# --------------------------------------------------------------------------------------------------
# salient object detection (PySODMetrics 1.6.2)
# --------------------------------------------------------------------------------------------------
def _saliency_pred_uint8(p: np.ndarray) -> np.ndarray:
    """Map a prediction batch to uint8 0-255, the format PySODMetrics expects (a saved grey PNG)."""
    if np.issubdtype(p.dtype, np.bool_):
        return p.astype(np.uint8) * 255
    if np.issubdtype(p.dtype, np.integer):
        if p.size and (p.min() < 0 or p.max() > 255):
            raise ValueError(f"integer saliency pred must lie in [0, 255], got range [{p.min()}, {p.max()}]")
        return p.astype(np.uint8)
    p = p.astype(np.float64)
    if not np.isfinite(p).all():
        raise ValueError("float saliency pred contains NaN or inf")
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise ValueError(
            f"float saliency pred must lie in [0, 1] (probabilities), got range [{p.min()}, {p.max()}]; "
            "pass uint8 for 0-255 maps"
        )
    return np.round(p * 255.0).astype(np.uint8)


def _saliency_target_bool(t: np.ndarray) -> np.ndarray:
    """Map a ground-truth batch to a boolean foreground mask (uint8 > 128, as PySODMetrics)."""
    if np.issubdtype(t.dtype, np.bool_):
        return t
    if np.issubdtype(t.dtype, np.integer):
        if t.size and (t.min() < 0 or t.max() > 255):
            raise ValueError(
                f"integer saliency target must lie in [0, 255], got range [{t.min()}, {t.max()}]"
            )
        if t.size and t.max() == 1:
            raise ValueError(
                "integer saliency target looks like a 0/1 mask (max value 1), which the 0-255 "
                "convention (foreground = value > 128) would read as all background; pass a bool "
                "mask or multiply by 255"
            )
        return t > 128
    t = t.astype(np.float64)
    if not np.isfinite(t).all():
        raise ValueError("float saliency target contains NaN or inf")
    if t.size and (t.min() < 0.0 or t.max() > 1.0):
        raise ValueError(
            f"float saliency target must lie in [0, 1], got range [{t.min()}, {t.max()}]; "
            "pass uint8 for 0-255 masks"
        )
    return np.round(t * 255.0).astype(np.uint8) > 128


def _s_object(x: np.ndarray) -> float:
    """Object-aware similarity of one region (PySODMetrics ``Smeasure.s_object``)."""
    mean = np.mean(x)
    std = np.std(x, ddof=1) if x.size > 1 else 0.0
    return 2 * mean / (np.power(mean, 2) + 1 + std + _EPS)


def _ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """SSIM-like score of one quadrant (PySODMetrics ``Smeasure.ssim``).

    Deviation: an *empty* quadrant scores 0 instead of NaN.  PySODMetrics 1.6.2 (and the original
    MATLAB code) returns NaN for the whole image when the GT centroid rounds onto the last row or
    column, because ``mean`` of an empty quadrant is NaN and ``NaN * 0`` stays NaN, although that
    quadrant's area weight is 0.  Wherever 1.6.2 is finite the result is identical.
    """
    h, w = pred.shape
    n = h * w
    if n == 0:
        return 0.0
    x = np.mean(pred)
    y = np.mean(gt)
    sigma_x = np.sum((pred - x) ** 2) / (n - 1 + _EPS)
    sigma_y = np.sum((gt - y) ** 2) / (n - 1 + _EPS)
    sigma_xy = np.sum((pred - x) * (gt - y)) / (n - 1 + _EPS)
    alpha = 4 * x * y * sigma_xy
    beta = (x**2 + y**2) * (sigma_x + sigma_y)
    if alpha != 0:
        return alpha / (beta + _EPS)
    if beta == 0:
        return 1.0
    return 0.0


def _s_region(pred: np.ndarray, gt: np.ndarray) -> float:
    """Region-aware score: SSIM of the four quadrants around the GT centroid, area-weighted."""
    h, w = gt.shape
    area = h * w
    if np.count_nonzero(gt) == 0:
        cy, cx = np.round(h / 2), np.round(w / 2)
    else:
        cy, cx = np.argwhere(gt).mean(axis=0).round()
    cy, cx = int(cy) + 1, int(cx) + 1  # MATLAB's 1:X is inclusive
    w_lt = cx * cy / area
    w_rt = cy * (w - cx) / area
    w_lb = (h - cy) * cx / area
    w_rb = 1 - w_lt - w_rt - w_lb
    return (
        _ssim(pred[0:cy, 0:cx], gt[0:cy, 0:cx]) * w_lt
        + _ssim(pred[0:cy, cx:w], gt[0:cy, cx:w]) * w_rt
        + _ssim(pred[cy:h, 0:cx], gt[cy:h, 0:cx]) * w_lb
        + _ssim(pred[cy:h, cx:w], gt[cy:h, cx:w]) * w_rb
    )


def _s_measure(pred: np.ndarray, gt: np.ndarray, alpha: float = 0.5) -> float:
    """Structure measure (Fan et al., ICCV 2017), PySODMetrics ``Smeasure.cal_sm``."""
    y = np.mean(gt)
    if y == 0:
        return 1 - np.mean(pred)
    if y == 1:
        return np.mean(pred)
    gt_mean = y
    object_score = (_s_object(pred[gt]) * gt_mean + _s_object((1 - pred)[~gt]) * (1 - gt_mean)) * alpha
    region_score = _s_region(pred, gt) * (1 - alpha)
    return np.maximum(0, object_score + region_score)


def _enhanced_sum(fg_fg, fg_bg, pred_fg, pred_bg, gt_fg: int, size: int):
    """Sum of the enhanced-alignment matrix from pixel counts (PySODMetrics ``Emeasure``).

    Works elementwise, so the count arguments may be scalars (one threshold) or arrays (all 256).
    """
    if gt_fg == 0:
        return pred_bg
    if gt_fg == size:
        return pred_fg
    bg_fg = gt_fg - fg_fg
    bg_bg = pred_bg - bg_fg
    mean_pred = pred_fg / size
    mean_gt = gt_fg / size
    parts = (fg_fg, fg_bg, bg_fg, bg_bg)
    combos = (
        (1 - mean_pred, 1 - mean_gt),
        (1 - mean_pred, 0 - mean_gt),
        (0 - mean_pred, 1 - mean_gt),
        (0 - mean_pred, 0 - mean_gt),
    )
    total = 0
    for numel, (a, b) in zip(parts, combos):
        align = 2 * (a * b) / (a**2 + b**2 + _EPS)
        total = total + (align + 1) ** 2 / 4 * numel
    return total


class SaliencyMetric:
    """Salient-object-detection metrics, numerically identical to PySODMetrics 1.6.2.

    Returned keys: ``MAE``; ``maxF`` / ``meanF`` (max and mean over the 256 thresholds of the
    dataset-mean F-measure curve, beta^2 = 0.3) and ``adpF`` (threshold min(2 mean(pred), 1));
    ``S`` (S-measure, alpha = 0.5); ``maxE`` / ``meanE`` / ``adpE`` (E-measure, same thresholding).
    Every score is computed per image and then averaged over images, as PySODMetrics does.

    Input handling (checked per batch, ``ValueError`` otherwise):

    * ``pred``: uint8 (or any integer dtype) in [0, 255], bool (-> 0/255), or float in [0, 1]
      which is first converted to ``round(255 * p)`` as uint8 (what saving a PNG would do).
    * ``target``: bool mask, or integer 0-255 with foreground = value > 128 (PySODMetrics), or
      float in [0, 1] converted like ``pred``.  An integer mask whose max is 1 is rejected because
      the 0-255 convention would read it as empty.
    * ``pred`` and ``target`` must have the same shape (no resizing is done).

    Then, per image, PySODMetrics' ``prepare_data``: pred / 255, min-max normalised to [0, 1]
    unless the map is constant (then left as pred / 255); gt = gt > 128.

    Only deviation from 1.6.2: its S-measure is NaN when the GT centroid rounds onto the last row or
    column (empty zero-weight quadrant); here that quadrant contributes 0 (see ``_ssim``).
    """

    NUM_THRESHOLDS = 256
    BETA2 = 0.3
    ALPHA = 0.5

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.num_images = 0
        self._mae_sum = 0.0
        self._adp_f_sum = 0.0
        self._s_sum = 0.0
        self._adp_e_sum = 0.0
        self._f_curve_sum = np.zeros(self.NUM_THRESHOLDS, dtype=np.float64)
        self._e_curve_sum = np.zeros(self.NUM_THRESHOLDS, dtype=np.float64)

    def update(self, pred: Any, target: Any) -> None:
        """Add saliency maps ``pred`` and ground-truth masks ``target``, (H, W) or (B, H, W)."""
        p, t = _as_batches(pred, target)
        if p.shape[0] and p.shape[1] * p.shape[2] == 0:
            raise ValueError(f"saliency images must have at least one pixel, got shape {tuple(p.shape)}")
        p8 = _saliency_pred_uint8(p)
        gt = _saliency_target_bool(t)
        for i in range(p8.shape[0]):
            self._add_image(p8[i], np.ascontiguousarray(gt[i]))

    def _add_image(self, pred_u8: np.ndarray, gt: np.ndarray) -> None:
        # prepare_data: im2double + mapminmax, exactly as py_sod_metrics.utils.prepare_data
        pred = pred_u8 / 255
        if pred.max() != pred.min():
            pred = (pred - pred.min()) / (pred.max() - pred.min())
        size = gt.shape[0] * gt.shape[1]
        gt_fg = int(np.count_nonzero(gt))
        adaptive_threshold = min(2 * pred.mean(), 1)

        # MAE (Perazzi et al., CVPR 2012)
        self._mae_sum += float(np.mean(np.abs(pred - gt)))

        # counts of pixels >= each of the 256 thresholds (PySOD's flipped cumulative histogram)
        q = (pred * 255).astype(np.uint8)
        fg_hist = np.bincount(q[gt], minlength=256)
        bg_hist = np.bincount(q[~gt], minlength=256)
        tps = np.cumsum(np.flip(fg_hist), axis=0)
        fps = np.cumsum(np.flip(bg_hist), axis=0)

        # F-measure (Achanta et al., CVPR 2009): curve and adaptive, PySOD ``Fmeasure``
        ps = tps + fps
        ps[ps == 0] = 1
        precisions = tps / ps
        recalls = tps / max(gt_fg, 1)
        numerator = (1 + self.BETA2) * precisions * recalls
        denominator = np.where(numerator == 0, 1, self.BETA2 * precisions + recalls)
        self._f_curve_sum += numerator / denominator

        binary = pred >= adaptive_threshold
        intersection = binary[gt].sum()
        if intersection == 0:
            adaptive_f = 0.0
        else:
            pre = intersection / np.count_nonzero(binary)
            rec = intersection / gt_fg
            adaptive_f = (1 + self.BETA2) * pre * rec / (self.BETA2 * pre + rec)
        self._adp_f_sum += float(adaptive_f)

        # S-measure (Fan et al., ICCV 2017)
        self._s_sum += float(_s_measure(pred, gt, self.ALPHA))

        # E-measure (Fan et al., IJCAI 2018): curve and adaptive, PySOD ``Emeasure``
        pred_fg = tps + fps
        em_curve = _enhanced_sum(tps, fps, pred_fg, size - pred_fg, gt_fg, size) / (size - 1 + _EPS)
        self._e_curve_sum += em_curve

        fg_fg = np.count_nonzero(binary & gt)
        fg_bg = np.count_nonzero(binary & ~gt)
        pred_fg_adp = fg_fg + fg_bg
        adaptive_e = _enhanced_sum(fg_fg, fg_bg, pred_fg_adp, size - pred_fg_adp, gt_fg, size) / (
            size - 1 + _EPS
        )
        self._adp_e_sum += float(adaptive_e)

        self.num_images += 1

    def compute(self) -> dict[str, float]:
        """Return the eight dataset-level scores as fractions; ``ValueError`` if nothing was added."""
        n = self.num_images
        if n == 0:
            raise ValueError("SaliencyMetric.compute() called before any image was added")
        f_curve = self._f_curve_sum / n
        e_curve = self._e_curve_sum / n
        return {
            "MAE": self._mae_sum / n,
            "maxF": float(f_curve.max()),
            "meanF": float(f_curve.mean()),
            "adpF": self._adp_f_sum / n,
            "S": self._s_sum / n,
            "maxE": float(e_curve.max()),
            "meanE": float(e_curve.mean()),
            "adpE": self._adp_e_sum / n,
        }


# --------------------------------------------------------------------------------------------------
# monocular depth
# --------------------------------------------------------------------------------------------------
# Eigen crop used by BTS / AdaBins for NYU-Depth-v2 at 480 x 640: rows 45:471, cols 41:601.
_EIGEN_CROP_NYU = (45 / 480, 471 / 480, 41 / 640, 601 / 640)


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def eigen_crop_mask(height: int, width: int) -> np.ndarray:
    """Boolean mask of the NYU Eigen crop, scaled proportionally to ``height`` x ``width``.

    At 480 x 640 this is exactly ``[45:471, 41:601]``; for other sizes every bound is multiplied by
    H/480 or W/640 and rounded to the nearest integer (halves up).
    """
    r0, r1, c0, c1 = _EIGEN_CROP_NYU
    mask = np.zeros((height, width), dtype=bool)
    mask[
        _round_half_up(r0 * height) : _round_half_up(r1 * height),
        _round_half_up(c0 * width) : _round_half_up(c1 * width),
    ] = True
    return mask


class DepthMetric:
    """Standard monocular-depth errors (Eigen et al., NIPS 2014), as in BTS / Monodepth2 ``compute_errors``.

    Depths are in metres.  Per image, the valid pixels are those whose target is finite and inside
    the closed range ``[min_depth, max_depth]`` (BTS / Monodepth2 use strict inequalities; the two differ only
    for targets exactly on a bound) and, with
    ``eigen_crop=True``, inside :func:`eigen_crop_mask`.  Invalid pixels should be marked 0 or
    NaN/inf; a negative target is an error.  On the valid pixels the prediction is optionally
    median-scaled (``pred *= median(gt) / median(pred)``, Monodepth2; the ratios are kept in
    ``scale_ratios``), then clamped to ``[min_depth, max_depth]``, then scored:

    ``abs_rel`` mean |p-g|/g, ``sq_rel`` mean (p-g)^2/g, ``rmse``, ``rmse_log`` (natural log),
    ``log10`` mean |log10 p - log10 g|, ``silog`` = 100 * sqrt(mean(d^2) - mean(d)^2) with
    d = ln p - ln g (the KITTI / BTS scale, *not* a fraction; the radicand is clipped at 0 against
    rounding), ``delta1..3`` fraction of pixels with max(p/g, g/p) < 1.25^n.

    Each metric is computed per image and averaged over images.  Skip policy: an image with no
    valid pixel is not scored and is counted in ``num_skipped``; ``num_images`` counts scored images.
    """

    KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "delta1", "delta2", "delta3")

    def __init__(
        self,
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        eigen_crop: bool = False,
        median_scaling: bool = False,
    ) -> None:
        if not (math.isfinite(min_depth) and math.isfinite(max_depth) and 0 < min_depth < max_depth):
            raise ValueError(
                f"need 0 < min_depth < max_depth (finite), got min_depth={min_depth}, max_depth={max_depth}"
            )
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.eigen_crop = bool(eigen_crop)
        self.median_scaling = bool(median_scaling)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.num_images = 0
        self.num_skipped = 0
        self.scale_ratios: list[float] = []
        self._sums = dict.fromkeys(self.KEYS, 0.0)

    def update(self, pred: Any, target: Any) -> None:
        """Add predicted and ground-truth depth maps in metres, (H, W) or (B, H, W)."""
        p, t = _as_batches(pred, target)
        for name, arr in (("pred", p), ("target", t)):
            if np.issubdtype(arr.dtype, np.bool_) or np.issubdtype(arr.dtype, np.complexfloating):
                raise ValueError(f"{name} depth must be real-valued, got dtype {arr.dtype}")
        p = p.astype(np.float64)
        t = t.astype(np.float64)
        if not np.isfinite(p).all():
            raise ValueError("pred depth contains NaN or inf")
        negative = t < 0  # NaN compares False: NaN targets are simply invalid pixels
        if negative.any():
            raise ValueError(
                f"target depth contains negative values (e.g. {_list_values(t[negative])}); depth cannot be "
                "negative, mark invalid pixels with 0 or NaN/inf"
            )
        valid_all = np.isfinite(t) & (t >= self.min_depth) & (t <= self.max_depth)
        if self.eigen_crop:
            valid_all &= eigen_crop_mask(t.shape[1], t.shape[2])[None]
        for i in range(p.shape[0]):
            valid = valid_all[i]
            if not valid.any():
                self.num_skipped += 1
                continue
            self._add_image(p[i][valid], t[i][valid])

    def _add_image(self, p: np.ndarray, g: np.ndarray) -> None:
        if self.median_scaling:
            median_pred = float(np.median(p))
            if median_pred <= 0:
                raise ValueError(
                    f"cannot median-scale: median prediction over valid pixels is {median_pred} (must be > 0)"
                )
            ratio = float(np.median(g)) / median_pred
            self.scale_ratios.append(ratio)
            p = p * ratio
        p = np.clip(p, self.min_depth, self.max_depth)

        thresh = np.maximum(g / p, p / g)
        diff = g - p
        log_diff = np.log(p) - np.log(g)
        silog_sq = max(float(np.mean(log_diff**2) - np.mean(log_diff) ** 2), 0.0)
        values = {
            "abs_rel": np.mean(np.abs(diff) / g),
            "sq_rel": np.mean(diff**2 / g),
            "rmse": np.sqrt(np.mean(diff**2)),
            "rmse_log": np.sqrt(np.mean(log_diff**2)),
            "log10": np.mean(np.abs(np.log10(p) - np.log10(g))),
            "silog": 100.0 * math.sqrt(silog_sq),
            "delta1": np.mean(thresh < 1.25),
            "delta2": np.mean(thresh < 1.25**2),
            "delta3": np.mean(thresh < 1.25**3),
        }
        for key, value in values.items():
            self._sums[key] += float(value)
        self.num_images += 1

    def compute(self) -> dict[str, float]:
        """Return the nine metrics averaged over scored images; ``ValueError`` if none was scored."""
        if self.num_images == 0:
            raise ValueError(
                f"no valid pixels: no image could be scored ({self.num_skipped} skipped because no target "
                f"was finite and inside ({self.min_depth}, {self.max_depth})"
                + (" within the Eigen crop" if self.eigen_crop else "")
                + ")"
            )
        return {key: self._sums[key] / self.num_images for key in self.KEYS}
