"""Semantic segmentation: (H, W) int64 class ids, ``spec.ignore_index`` marking unlabelled pixels.

Closed-form probes regress the class fractions of each feature cell (over its non-ignored pixels) and take
the argmax; trained probes use cross-entropy with the ignore index (inverse-frequency class weights when
``class_balanced``). Scored by mIoU and pixel accuracy (:class:`tasks.metrics.SegmentationMetric`).

On disk: a single-channel PNG of class ids (palette indices or grey values, not colours); the ``folder``
dataset keeps them in ``masks/`` with the label space in ``dataset.yaml`` (``classes``, ``ignore_index``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from probebench.core.errors import ProbebenchError
from tasks.kinds.base import (
    Objective,
    Panels,
    TargetKind,
    area_mean,
    class_palette,
    open_image,
    save_png,
    with_bad,
)
from tasks.metrics import SegmentationMetric

if TYPE_CHECKING:
    import torch

    from tasks.base import TargetSpec

IGNORED_COLOR = (0.0, 0.0, 0.0)  # ignored pixels: black, in no class palette
MAX_LEGEND_CLASSES = 30  # beyond this the key lists the classes with the most pixels and counts the rest
LABEL_EXTS = (".png",)
INDEX_MODES = ("P", "L", "1", "I;16", "I;16B", "I;16L", "I")  # PIL modes of single-channel index images


def read_label(path: Path) -> np.ndarray:
    """(H, W) int64 class indices of a palette/grayscale PNG (palette indices, not colours)."""
    im = open_image(path)
    if im.mode not in INDEX_MODES:
        raise ProbebenchError(
            f"{path}: a label map must be a single-channel PNG of class indices (palette or grayscale), "
            f"got mode {im.mode!r} (was it converted to colour?)."
        )
    return np.asarray(im).astype(np.int64)


def check_labels(
    labels: np.ndarray, raw: np.ndarray, spec: TargetSpec, path: Path | str, note: str = ""
) -> None:
    """Every class id is in ``[0, num_classes)`` or the ignore index; the message lists the file's values."""
    n = int(spec.num_classes or 0)
    bad = ~(((labels >= 0) & (labels < n)) | (labels == spec.ignore_index))
    if bad.any():
        values = np.unique(raw[bad])
        listed = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        raise ProbebenchError(
            f"{path}: label values {listed} are outside [0, {n}) and are not the ignore index "
            f"{spec.ignore_index}{note} ({int(bad.sum())} pixels)."
        )


class SegmentationObjective(Objective):
    """Class logits; cross-entropy over non-ignored pixels; argmax."""

    @property
    def channels(self) -> int:
        return int(self.spec.num_classes)

    def loss(self, up: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        s = self.spec
        target = target.long()
        valid = target != s.ignore_index
        if not valid.any():
            return up.sum() * 0.0
        w = None if self.class_weights is None else self.class_weights.to(up.device)
        return F.cross_entropy(up, target, weight=w, ignore_index=s.ignore_index)

    def decode(self, up: torch.Tensor) -> torch.Tensor:
        return up.argmax(1)


class SegmentationKind(TargetKind):
    name = "segmentation"
    objective_class = SegmentationObjective
    metrics = {"mIoU": True, "pixel_acc": True}  # noqa: RUF012
    main_metric = "mIoU"
    default_head = "deeplab"
    heads = ("linear", "deeplab")
    error_criterion = "wrong class"
    folder = "masks"
    extensions = LABEL_EXTS
    meta_keys = ("classes", "ignore_index")

    def check(self, spec: TargetSpec) -> None:
        if not spec.num_classes:
            raise ProbebenchError("A segmentation target needs num_classes.")

    def num_outputs(self, spec: TargetSpec) -> int:
        return int(spec.num_classes)

    def soft_targets(
        self, targets: np.ndarray, spec: TargetSpec, hw: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Class fractions over non-ignored pixels; weight = non-ignored fraction."""
        import torch
        import torch.nn.functional as F

        t = torch.from_numpy(np.asarray(targets))
        valid = t != spec.ignore_index
        onehot = F.one_hot(torch.where(valid, t, 0).long(), spec.num_classes).permute(0, 3, 1, 2).double()
        onehot = onehot * valid[:, None]
        w = area_mean(valid[:, None].double(), hw)
        y = area_mean(onehot, hw) / w.clamp_min(1e-12)
        return y.permute(0, 2, 3, 1).numpy(), w[:, 0].numpy()

    def class_frequencies(self, targets: Iterable[np.ndarray], spec: TargetSpec) -> np.ndarray:
        k = spec.num_classes
        counts = np.zeros(k, dtype=np.float64)
        for t in targets:
            t = np.asarray(t)
            t = t[t != spec.ignore_index]
            counts += np.bincount(t.ravel().astype(np.int64), minlength=k)[:k]
        return counts

    def decode(self, pred_up: torch.Tensor, spec: TargetSpec) -> torch.Tensor:
        return pred_up.argmax(1)

    def from_concepts(
        self, probs: np.ndarray, words: Sequence[str], background: Sequence[str], spec: TargetSpec
    ) -> np.ndarray:
        """Each class's score is the summed probability of the concept words that name it (case and ``_`` / space
        ignored); a background word that names no class counts for the class named ``background``. The argmax
        over classes is then the argmax over concepts, as ConceptAttention segments."""
        norm = {name.lower().replace("_", " "): k for k, name in enumerate(spec.class_names)}
        out = np.zeros((*probs.shape[:-1], int(spec.num_classes)), dtype=np.float32)
        unmatched = []
        for c, word in enumerate(words):
            k = norm.get(word.lower().replace("_", " "))
            if k is None and word in background:
                k = norm.get("background")
            if k is None:
                unmatched.append(word)
                continue
            out[..., k] += probs[..., c]
        if unmatched:
            raise ProbebenchError(
                f"Concept words {unmatched} name no class of the segmentation label space {list(spec.class_names)}"
                + (
                    ", which has no 'background' class for background words"
                    if any(w in background for w in unmatched)
                    else " and are not background words"
                )
                + ": use class names as concept words, or list the word under the concept probe's `background:`."
            )
        return out

    def make_metric(self, spec: TargetSpec, **options: Any) -> SegmentationMetric:
        return SegmentationMetric(spec.num_classes, ignore_index=spec.ignore_index)

    def error_mask(
        self, pred: np.ndarray, target: np.ndarray, *, ignore_index: int = 255, **options: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """Wrong class; ignored pixels are not valid."""
        pred, target = np.asarray(pred), np.asarray(target)
        valid = np.isfinite(target) & (target != ignore_index)
        return (pred != target) & valid, valid

    def panels(self, target: np.ndarray, pred: np.ndarray, meta: Mapping[str, Any]) -> Panels:
        """Class maps: one colour per class of the label space (:func:`class_palette`); ignored pixels black;
        a legend of the classes present in the shown targets and predictions."""
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch

        names = [str(c) for c in meta.get("class_names") or []]
        ignore = int(meta.get("ignore_index", 255))
        t, p = np.asarray(target, dtype=np.float64), np.asarray(pred, dtype=np.float64)
        ignored = ~np.isfinite(t) | (t == ignore)
        ids = np.concatenate([t[~ignored].ravel(), p[np.isfinite(p) & (p != ignore)].ravel()])
        top = int(ids.max()) + 1 if ids.size else 0
        n = max(len(names), top, 1)
        names += [f"class {k}" for k in range(len(names), n)]
        colors = class_palette(n)
        cmap = with_bad(ListedColormap(colors, name="classes"), IGNORED_COLOR)
        values, counts = np.unique(ids[ids >= 0].astype(np.int64), return_counts=True)
        present = [int(k) for k in values]
        keyed = sorted(present, key=lambda k: -counts[present.index(k)])[:MAX_LEGEND_CLASSES]
        legend = [Patch(facecolor=colors[k], edgecolor="0.4", lw=0.3, label=names[k]) for k in sorted(keyed)]
        if len(present) > len(keyed):
            rest = len(present) - len(keyed)
            legend.append(Patch(facecolor="none", edgecolor="none", label=f"+ {rest} more (fewest pixels)"))
        if ignored.any():
            legend.append(Patch(facecolor=IGNORED_COLOR, label=f"ignored (label {ignore}; not scored)"))
        return Panels(
            np.ma.masked_array(t, ignored),
            np.ma.masked_invalid(p),
            {"cmap": cmap, "vmin": -0.5, "vmax": n - 0.5, "interpolation": "nearest"},
            legend,
            f"classes present ({len(present)} of {n})",
        )

    def read_target(self, path: Path, spec: TargetSpec) -> np.ndarray:
        """(H, W) int64 class ids (:func:`read_label`)."""
        return read_label(path)

    def write_target(self, path: Path, target: np.ndarray, spec: TargetSpec) -> None:
        """Class ids (and the ignore index) as an 8-bit grayscale PNG (:func:`read_label` reads it back)."""
        t = np.asarray(target)
        if t.size and (t.min() < 0 or t.max() > 255):
            raise ProbebenchError(f"{path}: class ids {t.min()}..{t.max()} do not fit an 8-bit label PNG.")
        save_png(t.astype(np.uint8), path)

    def meta_from_spec(self, spec: TargetSpec) -> dict[str, Any]:
        return {"classes": list(spec.class_names), "ignore_index": spec.ignore_index}

    def check_target(
        self,
        target: np.ndarray,
        spec: TargetSpec,
        where: Path | str,
        *,
        stored: np.ndarray | None = None,
        note: str = "",
    ) -> None:
        """Class ids in ``[0, num_classes)`` or the ignore index (:func:`check_labels`)."""
        check_labels(target, target if stored is None else stored, spec, where, note)

    def spec_from_meta(self, meta: Mapping[str, Any], where: Path | str) -> TargetSpec:
        """``classes`` (a non-empty list of names) and ``ignore_index`` (default 255, outside the class ids)."""
        from tasks.base import TargetSpec

        classes = meta.get("classes")
        if not isinstance(classes, list) or not classes:
            raise ProbebenchError(f"{where}: a segmentation target needs classes: a non-empty list of names.")
        ignore = meta.get("ignore_index", 255)
        if isinstance(ignore, bool) or not isinstance(ignore, int) or 0 <= ignore < len(classes):
            raise ProbebenchError(
                f"{where}: ignore_index must be an integer outside [0, {len(classes)}), got {ignore!r}."
            )
        return TargetSpec("segmentation", len(classes), tuple(str(c) for c in classes), ignore)
