"""What every dataset provides: images in [0, 1], dense targets, and a declaration of its target kinds.

A dataset may carry several *target kinds* (the scene dataset has segmentation, saliency and depth); a probe
run is a (dataset, kind) pair. Each kind is declared by a :class:`TargetSpec`: classes, ignore index, depth range
and scale, and the main metric with its direction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from probebench.errors import ProbebenchError

KINDS = ("segmentation", "saliency", "depth")
MAIN_METRIC: dict[str, tuple[str, bool]] = {  # kind -> (metric, higher is better)
    "segmentation": ("mIoU", True),
    "saliency": ("maxF", True),
    "depth": ("rmse", False),
}
HIGHER_IS_BETTER = {
    "mIoU": True,
    "pixel_acc": True,
    "MAE": False,
    "maxF": True,
    "meanF": True,
    "adpF": True,
    "S": True,
    "maxE": True,
    "meanE": True,
    "adpE": True,
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


@dataclass(frozen=True)
class TargetSpec:
    """One dense target kind of a dataset."""

    kind: str
    num_classes: int | None = None
    class_names: tuple[str, ...] = ()
    ignore_index: int = 255
    min_depth: float = 1e-3
    max_depth: float = 10.0
    depth_scale: float = 1000.0  # PNG units per metre when stored as 16-bit PNG

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ProbebenchError(f"Unknown target kind {self.kind!r}. Valid: {', '.join(KINDS)}.")
        if self.kind == "segmentation" and not self.num_classes:
            raise ProbebenchError("A segmentation target needs num_classes.")

    @property
    def main_metric(self) -> str:
        return MAIN_METRIC[self.kind][0]

    @property
    def higher_is_better(self) -> bool:
        return MAIN_METRIC[self.kind][1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Dataset(ABC):
    """A split of a dataset. Items are addressed by index; ``image_id`` is stable across runs and machines."""

    name: str = ""
    version: str = "1"
    eval_options: dict[str, dict[str, Any]] = {}  # noqa: RUF012  per kind, passed to the metric (e.g. eigen_crop)

    def __init__(self, split: str):
        self.split = split

    @property
    @abstractmethod
    def targets(self) -> dict[str, TargetSpec]:
        """The target kinds this dataset provides."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def image_id(self, index: int) -> str: ...

    @abstractmethod
    def load_image(self, index: int) -> np.ndarray:
        """(H, W, 3) float32 RGB in [0, 1]."""

    @abstractmethod
    def load_target(self, index: int, kind: str) -> np.ndarray:
        """segmentation: (H, W) int64 class ids (ignore_index = ignored); saliency: (H, W) bool;
        depth: (H, W) float32 metres with 0 (or non-finite) marking invalid pixels."""

    def fingerprint(self) -> dict[str, Any]:
        """Everything about this split that changes extracted features (hashed into cache names)."""
        return {"dataset": self.name, "version": self.version, "split": self.split, "num_images": len(self)}

    def target_spec(self, kind: str) -> TargetSpec:
        if kind not in self.targets:
            raise ProbebenchError(
                f"Dataset {self.name!r} has no {kind!r} target. It provides: {', '.join(self.targets)}."
            )
        return self.targets[kind]

    def check_index(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}/{self.split}: index {index} out of range (size {len(self)}).")
        return index


class Subset(Dataset):
    """The first ``n`` items of a dataset (``--max-images``)."""

    def __init__(self, base: Dataset, n: int):
        super().__init__(base.split)
        self.base, self.n = base, min(int(n), len(base))
        self.name, self.version, self.eval_options = base.name, base.version, base.eval_options

    @property
    def targets(self) -> dict[str, TargetSpec]:
        return self.base.targets

    def __len__(self) -> int:
        return self.n

    def image_id(self, index: int) -> str:
        return self.base.image_id(self.check_index(index))

    def load_image(self, index: int) -> np.ndarray:
        return self.base.load_image(self.check_index(index))

    def load_target(self, index: int, kind: str) -> np.ndarray:
        return self.base.load_target(self.check_index(index), kind)

    def fingerprint(self) -> dict[str, Any]:
        return {**self.base.fingerprint(), "num_images": self.n}
