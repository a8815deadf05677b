"""``scenes``: the procedurally rendered dataset with exact labels, and its export to plain folder form.

Images are a pure function of (seed, split, index, resolution) (see :mod:`tasks.scenes_render`), so every
machine renders the same pixels and nothing is downloaded. Splits draw from disjoint index ranges. So the identity
of a split (:meth:`Scenes.fingerprint`, hashed into feature-cache names) is its parameters, not pixel content, and
its first ``n`` images are the split of size ``n`` (a ``Subset`` shares that split's caches). An export is a
``folder`` dataset, identified by its files' content like any other.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from probebench.core.errors import ProbebenchError
from tasks._registry import TASKS
from tasks.base import Dataset, TargetSpec
from tasks.scenes_render import CLASS_NAMES, Scene, render_scene

SPLIT_OFFSETS = {"train": 0, "val": 1_000_000, "test": 2_000_000}
DEFAULT_SIZES = {"train": 512, "val": 128, "test": 128}
MAX_DEPTH = 20.0  # metres; scenes are a few metres deep


@lru_cache(maxsize=512)
def _render(seed: int, index: int, resolution: int) -> Scene:
    return render_scene(seed, index, resolution)


@TASKS.register(
    "scenes",
    kind="segmentation, saliency, depth",
    source="rendered on the fly (no download)",
    notes=f"procedural 3D scenes, {len(CLASS_NAMES)} classes, exact labels",
)
class Scenes(Dataset):
    """Procedural scenes: RGB, class map, metric depth and saliency mask for every image."""

    name = "scenes"
    version = "1"

    def __init__(
        self,
        split: str = "train",
        resolution: int = 64,
        num_images: int | None = None,
        seed: int = 0,
        root: str | None = None,
    ):
        if split not in SPLIT_OFFSETS:
            raise ProbebenchError(f"Unknown split {split!r} for scenes. Valid: {', '.join(SPLIT_OFFSETS)}.")
        if root is not None:
            raise ProbebenchError(
                "scenes is rendered on the fly and takes no root (use the 'folder' task for an export)."
            )
        if int(resolution) < 8:
            raise ProbebenchError(f"scenes resolution must be >= 8, got {resolution}.")
        super().__init__(split)
        self.resolution, self.seed = int(resolution), int(seed)
        self.num_images = int(DEFAULT_SIZES[split] if num_images is None else num_images)
        if self.num_images < 1:
            raise ProbebenchError(
                f"scenes split {split!r} must have at least 1 image, got num_images={num_images}."
            )

    @property
    def targets(self) -> dict[str, TargetSpec]:
        return {
            "segmentation": TargetSpec(
                "segmentation", len(CLASS_NAMES), tuple(CLASS_NAMES), ignore_index=255
            ),
            "saliency": TargetSpec("saliency"),
            "depth": TargetSpec("depth", min_depth=1e-3, max_depth=MAX_DEPTH, depth_scale=1000.0),
        }

    def __len__(self) -> int:
        return self.num_images

    def scene(self, index: int) -> Scene:
        return _render(self.seed, SPLIT_OFFSETS[self.split] + self.check_index(index), self.resolution)

    def image_id(self, index: int) -> str:
        return f"{self.split}_{self.check_index(index):06d}"

    def load_image(self, index: int) -> np.ndarray:
        return self.scene(index).rgb

    def load_target(self, index: int, kind: str) -> np.ndarray:
        self.target_spec(kind)
        s = self.scene(index)
        if kind == "segmentation":
            return s.classes.astype(np.int64)
        if kind == "saliency":
            return s.saliency.astype(bool)
        return s.depth.astype(np.float32)

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "resolution": self.resolution, "seed": self.seed}


def export_scenes(
    out_dir: str | Path,
    splits: dict[str, int] | None = None,
    resolution: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write scenes in plain folder form, readable by the ``folder`` task.

    Layout: ``dataset.yaml`` and ``<split>/{images,masks,depth,saliency}/<id>.png`` — RGB PNG, class-id PNG (uint8),
    depth as 16-bit PNG in millimetres (0 = no surface), saliency as 0/255 PNG.
    """
    from tasks.folder_io import write_meta, write_sample

    out = Path(out_dir)
    splits = dict(splits or DEFAULT_SIZES)
    out.mkdir(parents=True, exist_ok=True)
    specs = None
    for split, n in splits.items():
        ds = Scenes(split, resolution=resolution, num_images=n, seed=seed)
        specs = ds.targets
        for i in tqdm(range(len(ds)), desc=f"export {split}", disable=not progress):
            s = ds.scene(i)
            targets = {"segmentation": s.classes, "saliency": s.saliency, "depth": s.depth}
            write_sample(out, split, ds.image_id(i), s.rgb, targets, specs)
    source = {"dataset": "scenes", "resolution": resolution, "seed": seed, "splits": splits}
    write_meta(
        out, "scenes-export", specs or Scenes("train", resolution=resolution, seed=seed).targets, source
    )
    return out
