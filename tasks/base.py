"""What every dataset provides: images in [0, 1], dense targets, and a declaration of its target kinds.

A dataset may carry several *target kinds* (the scene dataset has segmentation, saliency and depth); a probe
run is a (dataset, kind) pair. Each kind is declared by a :class:`TargetSpec`: classes, ignore index, depth range
and scale; the kind itself (:mod:`tasks.kinds`) owns the main metric with its direction and everything probes and
analysis do with targets of that kind.

A split has two identities, used differently:

- :meth:`Dataset.fingerprint` — everything that changes the images given to a model (name, version, split, item
  ids in order, and for files on disk their *content*). It is hashed into feature-cache names.
- :meth:`Dataset.target_fingerprint` — everything else that changes probe results: the targets (for files on
  disk their content) and the target specs (classes, ignore index, depth scale and range) and evaluation
  options. A result identity hashes both, so fixing a label re-fits probes without re-extracting features.

Neither contains a path: the same data moved elsewhere keeps its caches. ``*_of_first(n)`` give the identities
of the first ``n`` items (:class:`Subset`), reading only those items' files.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probebench.core.errors import ProbebenchError
from tasks.kinds._registry import BUILTIN, KindTable, get_kind, main_metrics, metric_directions
from tasks.kinds.base import TargetKind

KINDS = tuple(BUILTIN)  # the built-in target kinds; TARGET_KINDS also holds those that plugins add
MAIN_METRIC: Mapping[str, tuple[str, bool]] = KindTable(main_metrics)  # kind -> (metric, higher is better)
HIGHER_IS_BETTER: Mapping[str, bool] = KindTable(metric_directions)  # metric -> higher is better


@dataclass(frozen=True)
class TargetSpec:
    """One dense target of a dataset: its kind's name (``kind``, what results and configs record) and the label
    space, ignore index and depth range the kind's methods read. ``target_kind`` is the kind object."""

    kind: str
    num_classes: int | None = None
    class_names: tuple[str, ...] = ()
    ignore_index: int = 255
    min_depth: float = 1e-3
    max_depth: float = 10.0
    depth_scale: float = 1000.0  # PNG units per metre when stored as 16-bit PNG

    def __post_init__(self) -> None:
        self.target_kind.check(self)  # an unknown kind: UnknownNameError with the closest names

    @property
    def target_kind(self) -> TargetKind:
        """The registered :class:`~tasks.kinds.TargetKind` named ``kind``."""
        return get_kind(self.kind)

    @property
    def main_metric(self) -> str:
        return self.target_kind.main_metric

    @property
    def higher_is_better(self) -> bool:
        return self.target_kind.higher_is_better

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
        """Everything about this split that changes extracted features (hashed into cache names).

        The default suits generated datasets, whose images are a function of their parameters: override it to add
        them (as ``scenes`` adds resolution and seed). Datasets read from files hash their content instead.
        """
        return self._header(len(self))

    def fingerprint_of_first(self, n: int) -> dict[str, Any]:
        """:meth:`fingerprint` of the first ``n`` items alone (what :class:`Subset` reports).

        Default: :meth:`fingerprint` with ``num_images = n``, right when item ``i`` does not depend on the split's
        size (generated datasets). Datasets read from files override it to hash only those ``n`` items.
        """
        return {**self.fingerprint(), "num_images": self._clip(n)}

    def target_fingerprint(self) -> dict[str, Any]:
        """Everything about this split's targets that changes probe results beyond the features: the target
        specs, the evaluation options and (default) :meth:`fingerprint`, which for a generated dataset fixes its
        targets too. Datasets read from files replace the latter by their target files' content. Hashed into a
        result's identity together with :meth:`fingerprint`."""
        return self.target_fingerprint_of_first(len(self))

    def target_fingerprint_of_first(self, n: int) -> dict[str, Any]:
        """:meth:`target_fingerprint` of the first ``n`` items alone (what :class:`Subset` reports)."""
        return {"data": self.fingerprint_of_first(n), **self._target_specs()}

    def _header(self, n: int) -> dict[str, Any]:
        return {
            "dataset": self.name,
            "version": self.version,
            "split": self.split,
            "num_images": self._clip(n),
        }

    def _target_specs(self) -> dict[str, Any]:
        return {
            "targets": {kind: spec.to_dict() for kind, spec in sorted(self.targets.items())},
            "eval_options": self.eval_options,
        }

    def _clip(self, n: int) -> int:
        return max(0, min(int(n), len(self)))

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
    """The first ``n`` items of a dataset (``--max-images``, ``data.max_train``...); its identities are those of
    the first ``n`` items of ``base`` (only their files are read)."""

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
        return self.base.fingerprint_of_first(self.n)

    def fingerprint_of_first(self, n: int) -> dict[str, Any]:
        return self.base.fingerprint_of_first(self._clip(n))

    def target_fingerprint(self) -> dict[str, Any]:
        return self.base.target_fingerprint_of_first(self.n)

    def target_fingerprint_of_first(self, n: int) -> dict[str, Any]:
        return self.base.target_fingerprint_of_first(self._clip(n))


SLICE_SYNTAX = (
    "<split>[start:stop] (Python slice bounds, negatives from the end: train[:-1000], train[-1000:])"
)
_SLICE = re.compile(r"^(?P<split>[^\[\]]+)\[(?P<start>-?\d*):(?P<stop>-?\d*)\]$")


def parse_split(text: str) -> tuple[str, slice | None]:
    """``"train"`` → ("train", None); ``"train[-1000:]"`` → ("train", slice(-1000, None)) — a held-out part of
    a split (e.g. a validation set carved from a dataset that ships only train and val)."""
    m = _SLICE.match(text.strip())
    if m is None:
        if "[" in text or "]" in text:
            raise ProbebenchError(f"Split {text!r} is not a valid slice; expected {SLICE_SYNTAX}.")
        return text, None
    bounds = [int(v) if v else None for v in (m["start"], m["stop"])]
    return m["split"], slice(*bounds)


class Slice(Dataset):
    """Items ``start..stop`` of a split (``data.val_split: train[-1000:]``), in order.

    Its identity is the base split's identity of its first ``stop`` items plus the bounds: that covers every item
    of the slice (and, conservatively, those before it), so a changed file is never missed; slices of one split
    can then be checked disjoint by their bounds (:meth:`overlaps`).
    """

    def __init__(self, base: Dataset, bounds: slice):
        start, stop, step = bounds.indices(len(base))
        if step != 1 or stop <= start:
            raise ProbebenchError(
                f"{base.name}/{base.split}[{bounds.start or ''}:{bounds.stop or ''}] is empty or not contiguous "
                f"(the split has {len(base)} images); expected {SLICE_SYNTAX}."
            )
        super().__init__(f"{base.split}[{start}:{stop}]")
        self.base, self.start, self.stop = base, start, stop
        self.name, self.version, self.eval_options = base.name, base.version, base.eval_options

    @property
    def targets(self) -> dict[str, TargetSpec]:
        return self.base.targets

    def __len__(self) -> int:
        return self.stop - self.start

    def image_id(self, index: int) -> str:
        return self.base.image_id(self.start + self.check_index(index))

    def load_image(self, index: int) -> np.ndarray:
        return self.base.load_image(self.start + self.check_index(index))

    def load_target(self, index: int, kind: str) -> np.ndarray:
        return self.base.load_target(self.start + self.check_index(index), kind)

    def fingerprint(self) -> dict[str, Any]:
        return self.fingerprint_of_first(len(self))

    def fingerprint_of_first(self, n: int) -> dict[str, Any]:
        stop = self.start + self._clip(n)
        return {**self.base.fingerprint_of_first(stop), "slice": [self.start, stop]}

    def target_fingerprint(self) -> dict[str, Any]:
        return self.target_fingerprint_of_first(len(self))

    def target_fingerprint_of_first(self, n: int) -> dict[str, Any]:
        stop = self.start + self._clip(n)
        return {**self.base.target_fingerprint_of_first(stop), "slice": [self.start, stop]}


def span(ds: Dataset) -> tuple[int, int]:
    """The item range ``ds`` covers in its underlying split (a slice's bounds; a subset's first ``n``)."""
    if isinstance(ds, Slice):
        return ds.start, ds.stop
    if isinstance(ds, Subset):
        lo, _ = span(ds.base)
        return lo, lo + len(ds)
    return 0, len(ds)


def other_split(ds: Dataset) -> str:
    """The name of the split ``ds`` is part of (through slices and subsets)."""
    while isinstance(ds, (Slice, Subset)):
        ds = ds.base
    return ds.split


def root_of(ds: Dataset) -> str:
    """Where the split ``ds`` is part of lies on disk (``""`` for datasets made in memory, e.g. scenes)."""
    while isinstance(ds, (Slice, Subset)):
        ds = ds.base
    root = getattr(ds, "root", None)
    return str(Path(root).resolve()) if root is not None else ""


def check_disjoint(splits: Mapping[str, Dataset]) -> None:
    """Train, val and test drawn from one split of one dataset must not share items (e.g. ``train[:-1000]`` and
    ``train[-1000:]``); an overlap would let cells be chosen on, or scores reported on, training images."""
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            da, db = splits[a], splits[b]
            if da.name != db.name or other_split(da) != other_split(db) or root_of(da) != root_of(db):
                continue  # another dataset, split, or folder on disk (e.g. a generated folder tested against)
            (lo_a, hi_a), (lo_b, hi_b) = span(da), span(db)
            if lo_a < hi_b and lo_b < hi_a:
                raise ProbebenchError(
                    f"The {a} and {b} splits overlap: both are {da.name}/{other_split(da)} items "
                    f"{max(lo_a, lo_b)}..{min(hi_a, hi_b) - 1}. Carve disjoint parts, e.g. train_split: "
                    f"'train[:-1000]' and val_split: 'train[-1000:]'."
                )
