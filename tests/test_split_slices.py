"""Held-out parts of a split (``val_split: train[-1000:]``): the same items, an identity that sees every change
within them, and train/val/test that may not overlap — for datasets that ship only train and val (ADE20K, VOC,
DUTS, NYUv2), where cells are chosen on a part of train and reported on the official evaluation split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tasks
from probebench.core.errors import ProbebenchError
from tasks.base import Slice, Subset, check_disjoint, parse_split
from tasks.scenes import export_scenes


def _folder(root: Path, n: int = 6) -> Path:
    return export_scenes(root, {"train": n}, resolution=16, seed=0, progress=False)


def _invert(path: Path) -> None:
    arr = np.asarray(Image.open(path))
    Image.fromarray(255 - arr).save(path, compress_level=0)


def test_parse_split():
    assert parse_split("train") == ("train", None)
    assert parse_split("train[-2:]") == ("train", slice(-2, None))
    assert parse_split("train[:-2]") == ("train", slice(None, -2))
    assert parse_split(" val[1:3] ") == ("val", slice(1, 3))
    for bad in ("train[1]", "train[a:b]", "train[::2]", "train[1:2"):
        with pytest.raises(ProbebenchError, match=r"expected <split>\[start:stop\]"):
            parse_split(bad)


def test_a_slice_holds_the_base_items_in_order(tmp_path):
    base = tasks.create("folder", split="train", root=_folder(tmp_path))
    tail = Slice(base, slice(-2, None))
    assert len(tail) == 2 and tail.split == "train[4:6]" and tail.name == base.name
    assert [tail.image_id(i) for i in range(2)] == [base.image_id(4), base.image_id(5)]
    assert np.array_equal(tail.load_image(1), base.load_image(5))
    assert np.array_equal(tail.load_target(0, "segmentation"), base.load_target(4, "segmentation"))
    with pytest.raises(IndexError):
        tail.image_id(2)
    with pytest.raises(ProbebenchError, match="is empty or not contiguous"):
        Slice(base, slice(4, 2))


def test_a_slice_identity_sees_its_items_and_its_bounds(tmp_path):
    root = _folder(tmp_path)
    make = lambda b: Slice(tasks.create("folder", split="train", root=root), b)  # noqa: E731
    head, tail = make(slice(None, -2)), make(slice(-2, None))
    fp_head, fp_tail, tfp_tail = head.fingerprint(), tail.fingerprint(), tail.target_fingerprint()
    assert fp_head != fp_tail and fp_tail["slice"] == [4, 6]
    # the first 4 items as a slice are the same items as a subset, but not the same identity claim
    assert (
        fp_head["images_sha256"]
        == Subset(tasks.create("folder", split="train", root=root), 4).fingerprint()["images_sha256"]
    )
    _invert(sorted((root / "train" / "images").glob("*.png"))[5])
    assert make(slice(-2, None)).fingerprint() != fp_tail
    assert make(slice(-2, None)).target_fingerprint() == tfp_tail
    assert make(slice(None, -2)).fingerprint() == fp_head  # an item after the slice is not part of it
    sub = Subset(make(slice(-2, None)), 1)
    assert sub.fingerprint()["slice"] == [4, 5]


def test_train_val_test_of_one_split_must_be_disjoint(tmp_path):
    base = tasks.create("folder", split="train", root=_folder(tmp_path))
    check_disjoint({"train": Slice(base, slice(None, -2)), "val": Slice(base, slice(-2, None))})
    check_disjoint({"train": Subset(Slice(base, slice(None, -2)), 3), "val": Slice(base, slice(3, 4))})
    with pytest.raises(ProbebenchError, match=r"The train and val splits overlap: .*items 3\.\.3"):
        check_disjoint({"train": Slice(base, slice(None, 4)), "val": Slice(base, slice(3, None))})
    with pytest.raises(ProbebenchError, match="The train and test splits overlap"):
        check_disjoint({"train": base, "test": Subset(base, 2)})
    # other splits, or other datasets, are not compared
    scenes = {w: tasks.create("scenes", split=w, resolution=16) for w in ("train", "val")}
    check_disjoint({"train": base, "val": scenes["val"], "test": scenes["train"]})
    # the same split name of another folder on disk (a generated dataset tested against) is another dataset
    other = _folder(tmp_path / "other")
    check_disjoint({"train": base, "test": tasks.create("folder", split="train", root=other)})
