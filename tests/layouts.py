"""Tiny copies of the public datasets' on-disk layouts, filled with rendered scenes (real labels, any size).

For tests of configs written for ADE20K, PASCAL VOC 2012, NYUv2 and the saliency benchmarks (DUTS-TR/TE, ECSSD,
DUT-OMRON, HKU-IS, PASCAL-S): each builder writes the folder structure, file formats and label conventions
the loader in ``tasks/loaders.py`` reads (ADE20K: 0 = other, k + 1 = class k; VOC: palette PNGs; NYUv2: 16-bit
millimetre PNGs; saliency: 0/255 masks), from ``scenes`` images and targets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

import tasks

SALIENCY_FOLDERS = {  # registered name: (folder, image subfolder, mask subfolder)
    "duts-train": ("DUTS-TR", "DUTS-TR-Image", "DUTS-TR-Mask"),
    "duts": ("DUTS-TE", "DUTS-TE-Image", "DUTS-TE-Mask"),
    "ecssd": ("ECSSD", "images", "ground_truth_mask"),
    "dut-omron": ("DUT-OMRON", "DUT-OMRON-image", "pixelwiseGT-new-PNG"),
    "hku-is": ("HKU-IS", "imgs", "gt"),
    "pascal-s": ("PASCAL-S", "Imgs", "GT"),
}


def _scenes(n: int, size: int, seed: int):
    ds = tasks.create("scenes", split="train", resolution=size, seed=seed)
    for i in range(n):
        rgb = (np.clip(ds.load_image(i), 0, 1) * 255).round().astype(np.uint8)
        yield rgb, {k: ds.load_target(i, k) for k in ("segmentation", "saliency", "depth")}


def _save(arr: np.ndarray, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)


def ade20k(root: Path, n_train: int = 8, n_val: int = 4, size: int = 32) -> Path:
    base = root / "ADEChallengeData2016"
    for sub, n, seed in (("training", n_train, 0), ("validation", n_val, 1)):
        for k, (rgb, t) in enumerate(_scenes(n, size, seed)):
            stem = f"ADE_{sub}_{k + 1:08d}"
            _save(rgb, base / "images" / sub / f"{stem}.jpg", quality=95)
            _save((t["segmentation"] + 1).astype(np.uint8), base / "annotations" / sub / f"{stem}.png")
    return root


def voc2012(root: Path, n_train: int = 8, n_val: int = 4, size: int = 32) -> Path:
    base = root / "VOCdevkit" / "VOC2012"
    palette = np.random.default_rng(0).integers(0, 256, 768, dtype=np.uint8).tolist()
    (base / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("val", n_val, 1)):
        ids = [f"2007_{seed}{k:05d}" for k in range(n)]
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for i, (rgb, t) in zip(ids, _scenes(n, size, seed)):
            _save(rgb, base / "JPEGImages" / f"{i}.jpg", quality=95)
            seg = Image.fromarray(t["segmentation"].astype(np.uint8), mode="P")
            seg.putpalette(palette)
            (base / "SegmentationClass").mkdir(parents=True, exist_ok=True)
            seg.save(base / "SegmentationClass" / f"{i}.png")
    return root


def nyuv2(root: Path, n_train: int = 8, n_test: int = 4, size: int = 32) -> Path:
    """The folder form: ``{train,test}/rgb/<id>.png`` + ``{train,test}/depth/<id>.png`` (16-bit millimetres)."""
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        for k, (rgb, t) in enumerate(_scenes(n, size, seed)):
            _save(rgb, root / split / "rgb" / f"{k:05d}.png")
            mm = np.clip(np.nan_to_num(t["depth"]) * 1000, 0, 65535).round().astype(np.uint16)
            _save(mm, root / split / "depth" / f"{k:05d}.png")
    return root


def saliency(root: Path, n: int = 6, size: int = 32) -> Path:
    """Every saliency benchmark under one root (DUTS-TR, DUTS-TE, ECSSD, DUT-OMRON, HKU-IS, PASCAL-S)."""
    for j, (folder, images, masks) in enumerate(SALIENCY_FOLDERS.values()):
        for k, (rgb, t) in enumerate(_scenes(n, size, seed=j)):
            _save(rgb, root / folder / images / f"img_{k:04d}.jpg", quality=95)
            _save(
                np.where(t["saliency"], 255, 0).astype(np.uint8), root / folder / masks / f"img_{k:04d}.png"
            )
    return root
