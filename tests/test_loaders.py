"""The on-disk loaders, read through ``tasks.create`` from tiny fake copies of each layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from PIL import Image

import tasks
from probebench.core.errors import ProbebenchError, UnknownNameError
from tasks.scenes import export_scenes

H, W = 8, 10
SALIENCY = ("duts", "ecssd", "dut-omron", "hku-is", "pascal-s")


def _rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(arr: np.ndarray, path: Path, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    im.save(path)
    return path


def _palette_png(labels: np.ndarray, path: Path) -> Path:
    """A VOC-style palette PNG: index k is drawn in a colour unrelated to k."""
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    palette = np.random.default_rng(1).integers(0, 256, 768, dtype=np.uint8)
    im.putpalette(palette.tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def _labels(seed: int, values: list[int]) -> np.ndarray:
    return np.random.default_rng(seed).choice(values, (H, W)).astype(np.uint8)


def _error(match_path: Path | str, fn, *args, **kwargs) -> str:
    with pytest.raises(ProbebenchError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert str(match_path) in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------- VOC


def _voc(root: Path, splits: dict[str, list[str]]) -> Path:
    base = root / "VOCdevkit" / "VOC2012"
    for split, ids in splits.items():
        (base / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for k, i in enumerate(ids):
            _save(_rgb(k), base / "JPEGImages" / f"{i}.jpg")
            _palette_png(_labels(k, [0, 5, 20, 255]), base / "SegmentationClass" / f"{i}.png")
    return base


def test_registered_names_and_layouts():
    for name in ("voc2012", "ade20k", "nyuv2", "folder", *SALIENCY):
        entry = tasks.TASKS.entry(name)
        assert entry.source.startswith("on disk: "), name
    with pytest.raises(ProbebenchError, match="needs root"):
        tasks.create("voc2012", split="train")


def test_voc_reads_palette_indices_in_split_order(tmp_path):
    base = _voc(tmp_path, {"train": ["2007_000033", "2007_000005", "2008_000001"], "val": ["2009_000001"]})
    ds = tasks.create("voc2012", split="train", root=tmp_path)
    assert len(ds) == 3 and [ds.image_id(i) for i in range(3)] == [
        "2007_000033",
        "2007_000005",
        "2008_000001",
    ]
    img = ds.load_image(1)
    assert img.shape == (H, W, 3) and img.dtype == np.float32 and img.min() >= 0 and img.max() <= 1
    lab = ds.load_target(1, "segmentation")
    assert lab.dtype == np.int64 and np.array_equal(lab, _labels(1, [0, 5, 20, 255]))
    spec = ds.target_spec("segmentation")
    assert spec.num_classes == 21 and spec.class_names[15] == "person" and spec.ignore_index == 255
    # ROOT may point at VOC2012 itself; moving the data keeps the fingerprint (no root path in it)
    moved = tmp_path / "elsewhere"
    shutil.copytree(base, moved)
    again = tasks.create("voc2012", split="train", root=moved)
    assert again.fingerprint() == ds.fingerprint()
    assert str(tmp_path) not in repr(ds.fingerprint())
    assert ds.fingerprint() != tasks.create("voc2012", split="val", root=tmp_path).fingerprint()


def test_voc_errors(tmp_path):
    base = _voc(tmp_path, {"train": ["a", "b", "c"], "val": []})
    _error(tmp_path / "nope", tasks.create, "voc2012", root=tmp_path / "nope")
    msg = _error(
        tmp_path / "x", tasks.create, "voc2012", root=_save(_rgb(0), tmp_path / "x" / "y.png").parent
    )
    assert "ImageSets/Segmentation" in msg
    _error(
        base / "ImageSets" / "Segmentation" / "val.txt", tasks.create, "voc2012", split="val", root=tmp_path
    )
    with pytest.raises(UnknownNameError, match="trainval"):
        tasks.create("voc2012", split="trainvall", root=tmp_path)
    with pytest.raises(UnknownNameError, match="option"):
        tasks.create("voc2012", split="train", root=tmp_path, resolution=3)
    ds = tasks.create("voc2012", split="train", root=tmp_path)
    # class id outside [0, 21) and not 255
    _palette_png(_labels(0, [0, 21, 40]), base / "SegmentationClass" / "a.png")
    msg = _error(base / "SegmentationClass" / "a.png", ds.load_target, 0, "segmentation")
    assert "21, 40" in msg
    # a label map converted to colour
    _save(_rgb(3), base / "SegmentationClass" / "a.png")
    _error(base / "SegmentationClass" / "a.png", ds.load_target, 0, "segmentation")
    # size mismatch names the file and both sizes
    _palette_png(np.zeros((H + 1, W), np.uint8), base / "SegmentationClass" / "b.png")
    msg = _error(base / "SegmentationClass" / "b.png", ds.load_target, 1, "segmentation")
    assert f"{H + 1}x{W}" in msg and f"{H}x{W}" in msg
    # a corrupt image
    (base / "JPEGImages" / "c.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    _error(base / "JPEGImages" / "c.jpg", ds.load_image, 2)
    # a listed file that is missing (checked at construction)
    (base / "JPEGImages" / "b.jpg").unlink()
    _error(base / "JPEGImages" / "b.jpg", tasks.create, "voc2012", split="train", root=base)


# ---------------------------------------------------------------------------------------------- ADE20K


def _ade(root: Path, n: int = 3) -> Path:
    base = root / "ADEChallengeData2016"
    for sub in ("training", "validation"):
        for k in range(n):
            _save(_rgb(k), base / "images" / sub / f"ADE_{sub}_{k:08d}.jpg")
            _save(_labels(k, [0, 1, 150]), base / "annotations" / sub / f"ADE_{sub}_{k:08d}.png")
    return base


def test_ade20k_reduce_zero_label_and_errors(tmp_path):
    base = _ade(tmp_path)
    ds = tasks.create("ade20k", split="val", root=tmp_path)
    assert len(ds) == 3 and ds.image_id(0) == "ADE_validation_00000000"
    raw = _labels(2, [0, 1, 150])
    lab = ds.load_target(2, "segmentation")
    assert np.array_equal(lab == 255, raw == 0) and np.array_equal(lab[raw > 0], raw[raw > 0].astype(int) - 1)
    spec = ds.target_spec("segmentation")
    assert (
        spec.num_classes == 150
        and len(spec.class_names) == 150
        and spec.class_names[:2] == ("wall", "building")
    )
    plain = tasks.create("ade20k", split="val", root=base, reduce_zero_label=False)
    assert np.array_equal(plain.load_target(2, "segmentation"), raw)
    # value 151 is outside the 150 classes after the shift
    bad = base / "annotations" / "validation" / "ADE_validation_00000001.png"
    _save(_labels(0, [0, 151]), bad)
    assert "151" in _error(bad, ds.load_target, 1, "segmentation")
    # an image without annotation names the stem
    _save(_rgb(9), base / "images" / "training" / "ADE_train_extra.jpg")
    _error("ADE_train_extra", tasks.create, "ade20k", split="train", root=tmp_path)
    (base / "images" / "training" / "ADE_train_extra.jpg").unlink()
    _save(_labels(0, [1]), base / "annotations" / "training" / "orphan.png")
    _error("orphan.png", tasks.create, "ade20k", split="train", root=tmp_path)


# ---------------------------------------------------------------------------------------------- NYUv2


def _nyu_mat(root: Path, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """A fake labelled .mat: arrays stored as MATLAB does (column-major → HDF5 axes reversed)."""
    rgb = np.stack([_rgb(k) for k in range(n)])  # (N, H, W, 3)
    yy, xx = np.mgrid[0:H, 0:W]
    depth = np.stack([1.0 + 0.1 * yy + 0.01 * xx + k for k in range(n)]).astype(np.float32)  # (N, H, W)
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"] = rgb.transpose(0, 3, 2, 1)  # (N, 3, W, H)
        f["depths"] = depth.transpose(0, 2, 1)  # (N, W, H)
    return rgb, depth


def test_nyuv2_mat_orientation_and_split(tmp_path):
    rgb, depth = _nyu_mat(tmp_path)
    _error("splits.mat", tasks.create, "nyuv2", split="train", root=tmp_path)
    with h5py.File(tmp_path / "splits.mat", "w") as f:
        f["trainNdxs"] = np.array([[1.0, 2.0, 4.0]])
        f["testNdxs"] = np.array([[3.0], [5.0]])
    ds = tasks.create("nyuv2", split="train", root=tmp_path)
    assert [ds.image_id(i) for i in range(len(ds))] == ["0001", "0002", "0004"]
    img, d = ds.load_image(2), ds.load_target(2, "depth")
    assert img.shape == (H, W, 3) and d.shape == (H, W) and d.dtype == np.float32
    np.testing.assert_allclose(img, rgb[3] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(d, depth[3])
    assert d[0, 1] > d[0, 0] and d[1, 0] > d[0, 1]  # x steps by 1 cm, y by 10 cm
    assert ds.eval_options["depth"]["eigen_crop"] is True
    spec = ds.target_spec("depth")
    assert (spec.min_depth, spec.max_depth) == (1e-3, 10.0)
    test = tasks.create("nyuv2", split="test", root=tmp_path / "nyu_depth_v2_labeled.mat")
    assert len(test) == 2 and test.fingerprint()["num_images"] == 2
    # NaN and negative depth name the file
    with h5py.File(tmp_path / "nyu_depth_v2_labeled.mat", "r+") as f:
        f["depths"][0, 3, 2] = np.nan
        f["depths"][1, 0, 0] = -1.0
    _error("nyu_depth_v2_labeled.mat", ds.load_target, 0, "depth")
    _error("nyu_depth_v2_labeled.mat", ds.load_target, 1, "depth")


def test_nyuv2_scipy_splits(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    _nyu_mat(tmp_path, n=3)
    scipy_io.savemat(
        tmp_path / "splits.mat", {"trainNdxs": np.array([[2], [3]]), "testNdxs": np.array([[1]])}
    )
    assert len(tasks.create("nyuv2", split="train", root=tmp_path)) == 2
    scipy_io.savemat(
        tmp_path / "splits.mat", {"trainNdxs": np.array([[2], [9]]), "testNdxs": np.array([[1]])}
    )
    _error(tmp_path / "splits.mat", tasks.create, "nyuv2", split="train", root=tmp_path)


def test_nyuv2_folder_form_depth_scale(tmp_path):
    units = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 7
    for split in ("train", "test"):
        for k in range(2):
            _save(_rgb(k), tmp_path / split / "rgb" / f"{k:05d}.png")
            _save(units, tmp_path / split / "depth" / f"{k:05d}.png")
    ds = tasks.create("nyuv2", split="test", root=tmp_path)
    np.testing.assert_allclose(ds.load_target(1, "depth"), units / 1000.0, rtol=1e-6)
    (tmp_path / "dataset.yaml").write_text("depth_scale: 256\n")
    ds = tasks.create("nyuv2", split="test", root=tmp_path)
    assert ds.target_spec("depth").depth_scale == 256
    np.testing.assert_allclose(ds.load_target(1, "depth"), units / 256.0, rtol=1e-6)
    (tmp_path / "dataset.yaml").write_text("depth_scal: 256\n")
    assert "depth_scale" in _error(
        tmp_path / "dataset.yaml", tasks.create, "nyuv2", split="test", root=tmp_path
    )


# ---------------------------------------------------------------------------------------------- saliency


SALIENCY_LAYOUTS = {  # name: (dataset folder under ROOT, image folder, mask folder, split)
    "duts": ("DUTS-TE", "DUTS-TE-Image", "DUTS-TE-Mask", "test"),
    "ecssd": ("ECSSD", "images", "ground_truth_mask", "test"),
    "dut-omron": (".", "DUT-OMRON-image", "pixelwiseGT-new-PNG", "test"),
    "hku-is": ("HKU-IS", "imgs", "gt", "test"),
    "pascal-s": ("PASCAL-S", "Imgs", "GT", "test"),
}


@pytest.mark.parametrize("name", SALIENCY)
def test_saliency_layouts(tmp_path, name):
    folder, images, masks, split = SALIENCY_LAYOUTS[name]
    base = tmp_path / folder
    mask = np.random.default_rng(0).choice(np.array([0, 128, 129, 255], np.uint8), (H, W))
    for stem in ("b_2", "a_1", "c_3"):
        _save(_rgb(len(stem)), base / images / f"{stem}.jpg")
        _save(mask, base / masks / f"{stem}.png")
    ds = tasks.create(name, split=split, root=tmp_path)
    assert [ds.image_id(i) for i in range(3)] == ["a_1", "b_2", "c_3"]
    sal = ds.load_target(0, "saliency")
    assert sal.dtype == bool and np.array_equal(sal, mask > 128)
    assert ds.load_image(2).shape == (H, W, 3)
    _save(mask, base / masks / "d_4.png")
    _error("d_4", tasks.create, name, split=split, root=tmp_path)


def test_saliency_conversions_and_errors(tmp_path):
    base = tmp_path / "DUTS-TR"
    _save(_rgb(0)[..., 0], base / "DUTS-TR-Image" / "gray.png")
    rgba = np.concatenate([_rgb(1), np.full((H, W, 1), 7, np.uint8)], axis=-1)
    _save(rgba, base / "DUTS-TR-Image" / "rgba.png")
    _save(np.full((H, W, 3), 200, np.uint8), base / "DUTS-TR-Mask" / "gray.png")  # RGB mask → L
    _save(np.zeros((W, H), np.uint8), base / "DUTS-TR-Mask" / "rgba.png")  # transposed size
    ds = tasks.create("duts", split="train", root=tmp_path)
    gray = ds.load_image(0)
    assert gray.shape == (H, W, 3) and np.array_equal(gray[..., 0], gray[..., 2])
    np.testing.assert_allclose(ds.load_image(1), _rgb(1) / 255.0, atol=1e-6)
    assert ds.load_target(0, "saliency").all()
    msg = _error(base / "DUTS-TR-Mask" / "rgba.png", ds.load_target, 1, "saliency")
    assert f"{W}x{H}" in msg and f"{H}x{W}" in msg
    with pytest.raises(UnknownNameError):
        tasks.create("ecssd", split="train", root=tmp_path)
    _error(tmp_path, tasks.create, "ecssd", split="test", root=tmp_path)  # no ECSSD folders here
    (base / "DUTS-TR-Image" / "gray.png").unlink()
    (base / "DUTS-TR-Image" / "rgba.png").unlink()
    (base / "DUTS-TR-Mask" / "gray.png").unlink()
    (base / "DUTS-TR-Mask" / "rgba.png").unlink()
    assert "empty" in _error(base, tasks.create, "duts", split="train", root=tmp_path)


# ---------------------------------------------------------------------------------------------- folder


def test_folder_round_trip_matches_scenes(tmp_path):
    export_scenes(tmp_path, {"train": 3, "val": 2}, resolution=16, progress=False)
    ref = tasks.create("scenes", split="train", resolution=16, num_images=3)
    ds = tasks.create("folder", split="train", root=tmp_path)
    assert len(ds) == 3 and [ds.image_id(i) for i in range(3)] == [ref.image_id(i) for i in range(3)]
    assert set(ds.targets) == set(ref.targets)
    assert ds.target_spec("segmentation") == ref.target_spec("segmentation")
    assert ds.target_spec("depth").max_depth == ref.target_spec("depth").max_depth
    for i in range(3):
        np.testing.assert_allclose(ds.load_image(i), ref.load_image(i), atol=1 / 255 + 1e-6)
        np.testing.assert_array_equal(ds.load_target(i, "segmentation"), ref.load_target(i, "segmentation"))
        np.testing.assert_array_equal(ds.load_target(i, "saliency"), ref.load_target(i, "saliency"))
        np.testing.assert_allclose(ds.load_target(i, "depth"), ref.load_target(i, "depth"), atol=5e-4 + 1e-6)
    assert len(tasks.create("folder", split="val", root=tmp_path)) == 2
    # the same export elsewhere has the same fingerprint
    shutil.copytree(tmp_path, tmp_path.parent / f"{tmp_path.name}_moved")
    moved = tasks.create("folder", split="train", root=tmp_path.parent / f"{tmp_path.name}_moved")
    assert moved.fingerprint() == ds.fingerprint()


def _folder(root: Path, meta: dict, labels: np.ndarray | None = None) -> Path:
    (root / "train" / "images").mkdir(parents=True, exist_ok=True)
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta))
    _save(_rgb(0), root / "train" / "images" / "x.png")
    _save(_labels(0, [0, 1]) if labels is None else labels, root / "train" / "masks" / "x.png")
    return root


def test_folder_errors(tmp_path):
    meta = {"name": "toy", "classes": ["a", "b"], "targets": ["segmentation"]}
    root = _folder(tmp_path, meta)
    assert tasks.create("folder", split="train", root=root).target_spec("segmentation").num_classes == 2
    assert tasks.create("folder", root=root).load_target(0, "segmentation").max() == 1
    _save(_labels(0, [0, 1, 255]), root / "train" / "masks" / "x.png")
    assert (tasks.create("folder", root=root).load_target(0, "segmentation") == 255).any()  # ignore is fine
    _save(_labels(0, [0, 2]), root / "train" / "masks" / "x.png")
    assert ": label values 2 " in _error(
        root / "train" / "masks" / "x.png", tasks.create("folder", root=root).load_target, 0, "segmentation"
    )
    (root / "dataset.yaml").write_text(yaml.safe_dump({**meta, "clases": ["a"]}))
    msg = _error(root / "dataset.yaml", tasks.create, "folder", root=root)
    assert "'clases'" in msg and "Did you mean: classes" in msg
    (root / "dataset.yaml").write_text(yaml.safe_dump({**meta, "targets": ["segmentaton"]}))
    assert "segmentation" in _error(root / "dataset.yaml", tasks.create, "folder", root=root)
    (root / "dataset.yaml").write_text(yaml.safe_dump({**meta, "targets": ["segmentation", "depth"]}))
    _error(root / "train" / "depth", tasks.create, "folder", root=root)
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(UnknownNameError, match="train"):
        tasks.create("folder", split="val", root=root)
    (root / "dataset.yaml").unlink()
    _error(root / "dataset.yaml", tasks.create, "folder", root=root)
