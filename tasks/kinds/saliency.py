"""Salient object detection: (H, W) bool masks.

Closed-form probes regress the foreground fraction of each feature cell (clamped to [0, 1] when scored);
trained probes use BCE with logits (a positive weight from the inverse class frequencies when
``class_balanced``). Scored by the eight PySODMetrics scores (:class:`tasks.metrics.SaliencyMetric`); the ridge
screen picks λ by the mean absolute error instead, which costs about 1 % of the full set.

On disk: a greyscale (or colour) image, foreground where the grey value is > 128; the ``folder`` dataset keeps
them in ``saliency/``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from probebench.core.errors import ProbebenchError
from tasks.kinds.base import Objective, Panels, TargetKind, area_mean, open_image, save_png
from tasks.metrics import SaliencyMetric

if TYPE_CHECKING:
    import torch

    from tasks.base import TargetSpec

MASK_EXTS = (".png", ".bmp", ".jpg", ".jpeg")


def read_mask(path: Path) -> np.ndarray:
    """(H, W) bool saliency mask: foreground where the grayscale value is > 128."""
    return np.asarray(open_image(path).convert("L")) > 128


class MeanAbsoluteError:
    """The λ criterion of saliency: mean |score − mask| over every pixel (lower is better)."""

    higher_is_better = False

    def __init__(self) -> None:
        self.err, self.count = np.float64(0.0), 0

    def update(self, pred: Any, target: Any) -> None:
        target = np.asarray(target).astype(np.float32)
        self.err += np.abs(np.asarray(pred) - target).sum()  # float32 sums into a float64 total
        self.count += target.size

    def compute(self) -> float:
        return self.err / max(self.count, 1)


class SaliencyObjective(Objective):
    """One logit; BCE with logits; sigmoid."""

    @property
    def channels(self) -> int:
        return 1

    def loss(self, up: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        y = target.float()
        pos = None
        if self.class_weights is not None and self.class_weights[0] > 0:
            pos = (self.class_weights[1] / self.class_weights[0]).to(up.device)
        return F.binary_cross_entropy_with_logits(up[:, 0], y, pos_weight=pos)

    def decode(self, up: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.sigmoid(up[:, 0])


class SaliencyKind(TargetKind):
    name = "saliency"
    objective_class = SaliencyObjective
    metrics = {  # noqa: RUF012
        "MAE": False,
        "maxF": True,
        "meanF": True,
        "adpF": True,
        "S": True,
        "maxE": True,
        "meanE": True,
        "adpE": True,
    }
    main_metric = "maxF"
    default_head = "deeplab"
    heads = ("linear", "deeplab")
    error_criterion = "thresholded at 0.5"
    extensions = MASK_EXTS

    def num_outputs(self, spec: TargetSpec) -> int:
        return 1

    def soft_targets(
        self, targets: np.ndarray, spec: TargetSpec, hw: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Foreground fraction; every cell weighs 1."""
        import torch

        t = torch.from_numpy(np.asarray(targets))
        y = area_mean(t[:, None].double(), hw)
        w = torch.ones_like(y)
        return y.permute(0, 2, 3, 1).numpy(), w[:, 0].numpy()

    def class_frequencies(self, targets: Iterable[np.ndarray], spec: TargetSpec) -> np.ndarray:
        """Background and foreground pixel counts."""
        counts = np.zeros(2, dtype=np.float64)
        for t in targets:
            t = np.asarray(t).astype(np.int64)
            counts += np.bincount(t.ravel().astype(np.int64), minlength=2)[:2]
        return counts

    def balance_weights(self, y: np.ndarray, w: np.ndarray, class_weights: np.ndarray | None) -> np.ndarray:
        """Foreground fraction × foreground weight + background fraction × background weight."""
        if class_weights is None:
            return w
        cw = y[..., 0] * class_weights[1] + (1 - y[..., 0]) * class_weights[0]
        return w * cw

    def decode(self, pred_up: torch.Tensor, spec: TargetSpec) -> torch.Tensor:
        return pred_up[:, 0].clamp(0, 1)

    def from_concepts(
        self, probs: np.ndarray, words: Sequence[str], background: Sequence[str], spec: TargetSpec
    ) -> np.ndarray:
        """Object vs background: the saliency score is the summed probability of the words that are not
        background words."""
        obj = [c for c, w in enumerate(words) if w not in background]
        if not obj or len(obj) == len(words):
            raise ProbebenchError(
                f"Zero-shot saliency from concept maps needs both object and background words; got words "
                f"{list(words)} with background {list(background)} (set the concept probe's `background:`)."
            )
        return probs[..., obj].sum(-1, keepdims=True).astype(np.float32)

    def make_metric(self, spec: TargetSpec, **options: Any) -> SaliencyMetric:
        return SaliencyMetric()

    def lambda_criterion(self, spec: TargetSpec, **options: Any) -> MeanAbsoluteError:
        return MeanAbsoluteError()

    def error_mask(
        self, pred: np.ndarray, target: np.ndarray, *, saliency_threshold: float = 0.5, **options: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """The score thresholded at ``saliency_threshold`` disagrees with the mask."""
        pred, target = np.asarray(pred), np.asarray(target)
        valid = np.isfinite(target)
        return ((pred >= saliency_threshold) != (target >= 0.5)) & valid, valid

    def panels(self, target: np.ndarray, pred: np.ndarray, meta: Mapping[str, Any]) -> Panels:
        """Masks and scores on a fixed 0-1 grey scale with its colour bar."""
        return Panels(
            np.ma.masked_invalid(np.asarray(target, dtype=np.float64)),
            np.ma.masked_invalid(np.asarray(pred, dtype=np.float64)),
            {"cmap": "gray", "vmin": 0.0, "vmax": 1.0},
            [],
            colorbar="saliency (0 = background, 1 = salient)",
        )

    def read_target(self, path: Path, spec: TargetSpec) -> np.ndarray:
        """(H, W) bool mask (:func:`read_mask`)."""
        return read_mask(path)

    def as_target(self, pred: np.ndarray, spec: TargetSpec) -> np.ndarray:
        """The saliency score thresholded at 0.5: a binary mask, as saliency datasets (DUTS, ECSSD...) hold."""
        return np.asarray(pred) >= 0.5

    def write_target(self, path: Path, target: np.ndarray, spec: TargetSpec) -> None:
        """A 0/255 PNG (foreground 255; :func:`read_mask` thresholds at 128) of a binary mask; scores in between
        are refused (:meth:`as_target` makes a mask of them)."""
        t = np.asarray(target)
        if t.dtype != bool and not np.isin(t, (0, 1)).all():
            raise ProbebenchError(
                f"{path}: a saliency target file holds a binary mask; got values in [{t.min():.3g}, {t.max():.3g}] "
                "(threshold scores first)."
            )
        save_png(t.astype(bool).astype(np.uint8) * 255, path)
