"""Dataset identity is content: feature caches follow what the files hold, never their path or a yaml name.

Repro 1 of issue 20 (stale features for edited data), as tests: an in-place edit gives a new cache, a corrupt
copy fails on its file, two folders with one ``name:`` do not share caches, a moved folder keeps its cache, a
Subset reads only its items, and a label edit changes the target identity alone.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from PIL import Image

import backbones
import tasks
from backbones.store import extract_to_cache
from probebench.core.errors import ProbebenchError
from tasks.base import Subset
from tasks.scenes import export_scenes

KEY = (0, None)


@pytest.fixture(autouse=True)
def hash_memo(tmp_path, monkeypatch):
    """Every test gets its own memo (never the real home) and an empty in-process memo."""
    monkeypatch.setenv("PROBEBENCH_HASH_CACHE", str(tmp_path / "memo" / "hashes.sqlite"))
    try:
        from tasks import content
    except ImportError:  # before tasks.content existed
        return tmp_path / "memo" / "hashes.sqlite"
    monkeypatch.setattr(content, "_memo_in_process", {})
    return tmp_path / "memo" / "hashes.sqlite"


@pytest.fixture(scope="module")
def adapter():
    return backbones.create("timm:efficientnet_lite0", weights="random", image_size=32)


def _export(root: Path, n: int = 4, seed: int = 0) -> Path:
    return export_scenes(root, {"train": n}, resolution=16, seed=seed, progress=False)


def _extract(adapter, ds, cache_root: Path):
    return extract_to_cache(
        adapter, ds, layers=[0], cache_root=cache_root, shard_size=4, batch_size=4, progress=False
    )


def _images(root: Path) -> list[Path]:
    return sorted((root / "train" / "images").glob("*.png"))


def _invert(path: Path, compress_level: int = 0) -> None:
    arr = np.asarray(Image.open(path))
    Image.fromarray(255 - arr).save(path, compress_level=compress_level)


def test_in_place_edit_gives_a_new_cache_even_with_size_and_mtime_kept(adapter, tmp_path, monkeypatch):
    from tasks import content

    monkeypatch.setattr(
        content, "RACY_SECONDS", 0.0
    )  # memoise at once: the edit must be seen through the memo
    root = _export(tmp_path / "data")
    for p in _images(root):  # uncompressed PNGs: the inverted file has exactly the same size
        Image.fromarray(np.asarray(Image.open(p))).save(p, compress_level=0)
    ds = tasks.create("folder", split="train", root=root)
    first = _extract(adapter, ds, tmp_path / "cache")
    before = {p: p.stat() for p in _images(root)}
    for p in before:
        _invert(p)
        os.utime(p, ns=(before[p].st_atime_ns, before[p].st_mtime_ns))  # and the old mtime put back
    after = {p: p.stat() for p in _images(root)}
    assert all(
        (after[p].st_size, after[p].st_mtime_ns) == (before[p].st_size, before[p].st_mtime_ns) for p in before
    )
    second = _extract(adapter, tasks.create("folder", split="train", root=root), tmp_path / "cache")
    assert second.path != first.path
    assert not np.array_equal(first.array(KEY)[:], second.array(KEY)[:])
    # the same dataset object sees the edit too (nothing is remembered on the object)
    assert _extract(adapter, ds, tmp_path / "cache").path == second.path


def test_a_copy_with_a_corrupt_png_fails_on_that_file(adapter, tmp_path):
    root = _export(tmp_path / "data")
    first = _extract(adapter, tasks.create("folder", split="train", root=root), tmp_path / "cache")
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    bad = _images(copy)[2]
    bad.write_bytes(bad.read_bytes()[:60])  # a truncated PNG
    with pytest.raises(ProbebenchError, match=re.escape(str(bad))):
        _extract(adapter, tasks.create("folder", split="train", root=copy), tmp_path / "cache")
    assert first.path.is_dir()  # the good copy's cache is untouched


def test_two_folders_with_one_name_do_not_share_caches(adapter, tmp_path):
    a, b = _export(tmp_path / "a", seed=0), _export(tmp_path / "b", seed=1)
    names = {yaml.safe_load((r / "dataset.yaml").read_text())["name"] for r in (a, b)}
    assert len(names) == 1  # same name:, same ids, same count
    da, db = (tasks.create("folder", split="train", root=r) for r in (a, b))
    assert [da.image_id(i) for i in range(len(da))] == [db.image_id(i) for i in range(len(db))]
    ca, cb = _extract(adapter, da, tmp_path / "cache"), _extract(adapter, db, tmp_path / "cache")
    assert ca.path != cb.path
    assert not np.array_equal(ca.array(KEY)[:], cb.array(KEY)[:])


def test_a_moved_folder_reuses_its_cache(adapter, tmp_path, monkeypatch):
    root = _export(tmp_path / "data")
    first = _extract(adapter, tasks.create("folder", split="train", root=root), tmp_path / "cache")
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    os.rename(root, moved)
    calls = []
    monkeypatch.setattr(adapter, "iter_extract", lambda *a, **k: calls.append(1))
    again = _extract(adapter, tasks.create("folder", split="train", root=moved), tmp_path / "cache")
    assert again.path == first.path and not calls
    assert str(tmp_path) not in repr(again.fingerprint)


def test_a_subset_is_identified_by_its_own_items_only(tmp_path, monkeypatch):
    root = _export(tmp_path / "data", n=6)
    images = _images(root)
    full = tasks.create("folder", split="train", root=root)
    sub = Subset(full, 2)
    fp, tfp = sub.fingerprint(), sub.target_fingerprint()
    assert fp["num_images"] == 2
    # an edit within the first n changes it; a corrupt file beyond n is not even read
    images[4].write_bytes(b"not a png")
    assert Subset(tasks.create("folder", split="train", root=root), 2).fingerprint() == fp
    _invert(images[1])
    edited = Subset(tasks.create("folder", split="train", root=root), 2)
    assert edited.fingerprint() != fp and edited.target_fingerprint() == tfp
    # only the n items' files are read
    from tasks import content

    read: list[str] = []
    real = content.hash_file
    monkeypatch.setattr(content, "_memo_in_process", {})
    monkeypatch.setattr(content, "hash_file", lambda p: read.append(os.path.basename(p)) or real(p))
    monkeypatch.setenv("PROBEBENCH_HASH_CACHE", "off")
    edited.fingerprint()
    assert sorted(read) == [images[0].name, images[1].name]
    read.clear()
    edited.target_fingerprint()
    assert len(read) == 2 * 3  # segmentation, saliency and depth files of 2 items
    # the first n items of a folder are the same data as a folder holding just those items
    small = tmp_path / "small"
    shutil.copytree(root, small)
    for p in _images(small)[2:]:
        for kind in ("images", "masks", "saliency", "depth"):
            (small / "train" / kind / p.name).unlink()
    assert tasks.create("folder", split="train", root=small).fingerprint() == edited.fingerprint()


def test_a_label_edit_changes_the_target_identity_only(tmp_path):
    root = _export(tmp_path / "data")
    ds = tasks.create("folder", split="train", root=root)
    fp, tfp = ds.fingerprint(), ds.target_fingerprint()
    mask = root / "train" / "masks" / "train_000001.png"
    labels = np.asarray(Image.open(mask)).copy()
    labels[0, 0] = (labels[0, 0] + 1) % 3
    Image.fromarray(labels).save(mask)
    fixed = tasks.create("folder", split="train", root=root)
    assert fixed.fingerprint() == fp and fixed.target_fingerprint() != tfp
    # target specs from dataset.yaml count too (here the depth scale), still not the features
    meta = yaml.safe_load((root / "dataset.yaml").read_text())
    (root / "dataset.yaml").write_text(yaml.safe_dump({**meta, "depth_scale": 500.0}))
    rescaled = tasks.create("folder", split="train", root=root)
    assert rescaled.fingerprint() == fp and rescaled.target_fingerprint() != fixed.target_fingerprint()
    # and an image edit is a feature change, not a target change
    _invert(_images(root)[0])
    inverted = tasks.create("folder", split="train", root=root)
    assert inverted.fingerprint() != fp and inverted.target_fingerprint() == rescaled.target_fingerprint()


def test_scenes_keep_their_parametric_identity():
    ds = tasks.create("scenes", split="val", resolution=16, num_images=6)
    assert ds.fingerprint() == {
        "dataset": "scenes",
        "version": "1",
        "split": "val",
        "num_images": 6,
        "resolution": 16,
        "seed": 0,
    }
    # the first n of a larger split are the smaller split: caches are shared
    assert (
        Subset(ds, 3).fingerprint()
        == tasks.create("scenes", split="val", resolution=16, num_images=3).fingerprint()
    )
    tfp = ds.target_fingerprint()
    assert tfp["data"] == ds.fingerprint() and tfp["targets"]["depth"]["max_depth"] == 20.0
    other = tasks.create("scenes", split="val", resolution=16, num_images=6, seed=1)
    assert other.target_fingerprint() != tfp


def _nyu(root: Path, n: int = 4) -> Path:
    rgb = np.stack([np.random.default_rng(k).integers(0, 256, (6, 5, 3), dtype=np.uint8) for k in range(n)])
    depth = np.stack([np.full((6, 5), 1.0 + k, np.float32) for k in range(n)])
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"] = rgb.transpose(0, 3, 2, 1)
        f["depths"] = depth.transpose(0, 2, 1)
    with h5py.File(root / "splits.mat", "w") as f:
        f["trainNdxs"] = np.array([[1.0, 2.0]])
        f["testNdxs"] = np.array([[3.0, 4.0]])
    return root


def test_nyuv2_mat_items_are_the_container_content_and_index(tmp_path):
    root = _nyu(tmp_path / "nyu")
    train = tasks.create("nyuv2", split="train", root=root)
    fp, tfp = train.fingerprint(), train.target_fingerprint()
    assert fp["form"] == "mat" and str(tmp_path) not in repr((fp, tfp))
    with h5py.File(root / "splits.mat", "r+") as f:  # the same ids' order swapped: another dataset
        f["trainNdxs"][...] = np.array([[2.0, 1.0]])
    assert tasks.create("nyuv2", split="train", root=root).fingerprint() != fp
    with h5py.File(root / "splits.mat", "r+") as f:
        f["trainNdxs"][...] = np.array([[1.0, 2.0]])
    assert tasks.create("nyuv2", split="train", root=root).fingerprint() == fp
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    assert tasks.create("nyuv2", split="train", root=moved).fingerprint() == fp
    with h5py.File(moved / "nyu_depth_v2_labeled.mat", "r+") as f:  # one pixel of another split's image
        f["images"][3, 0, 0, 0] = 255 - f["images"][3, 0, 0, 0]
    edited = tasks.create("nyuv2", split="train", root=moved)
    assert edited.fingerprint() != fp and edited.target_fingerprint() != tfp  # one container holds both


def test_split_order_is_part_of_the_identity(tmp_path):
    base = tmp_path / "VOC2012"
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    for k, i in enumerate(("a", "b")):
        (base / "JPEGImages").mkdir(exist_ok=True)
        (base / "SegmentationClass").mkdir(exist_ok=True)
        Image.fromarray(np.full((4, 4, 3), 40 * k, np.uint8)).save(base / "JPEGImages" / f"{i}.jpg")
        Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(base / "SegmentationClass" / f"{i}.png")
    listing = base / "ImageSets" / "Segmentation" / "train.txt"
    listing.write_text("a\nb\n")
    fp = tasks.create("voc2012", split="train", root=base).fingerprint()
    listing.write_text("b\na\n")
    assert tasks.create("voc2012", split="train", root=base).fingerprint() != fp


def test_label_options_are_part_of_the_target_identity(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for d in ("images/validation", "annotations/validation"):
        (base / d).mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(base / "images" / "validation" / "x.jpg")
    Image.fromarray(np.ones((4, 4), np.uint8), mode="L").save(base / "annotations" / "validation" / "x.png")
    shifted = tasks.create("ade20k", split="val", root=tmp_path, reduce_zero_label=True)
    plain = tasks.create("ade20k", split="val", root=tmp_path, reduce_zero_label=False)
    assert shifted.fingerprint() == plain.fingerprint()
    assert shifted.target_fingerprint() != plain.target_fingerprint()


# ---------------------------------------------------------------------------------------------- the memo


def _old_files(root: Path) -> list[Path]:
    """The image files of ``root``, dated an hour back (outside the racy window)."""
    files = _images(root)
    for p in files:
        t = p.stat().st_mtime_ns - 3600 * 10**9
        os.utime(p, ns=(t, t))
    return files


def test_memo_spares_a_warm_run_from_reading_files(tmp_path, monkeypatch, hash_memo):
    from tasks import content

    monkeypatch.setattr(content, "RACY_SECONDS", 0.0)  # utime itself sets ctime to now
    root = _export(tmp_path / "data", n=5)
    _old_files(root)
    read: list[str] = []
    real = content.hash_file
    monkeypatch.setattr(content, "hash_file", lambda p: read.append(p) or real(p))
    fp = tasks.create("folder", split="train", root=root).fingerprint()
    assert len(read) == 5 and hash_memo.is_file()
    read.clear()
    monkeypatch.setattr(content, "_memo_in_process", {})  # a new process: only the sqlite memo is left
    assert tasks.create("folder", split="train", root=root).fingerprint() == fp and read == []
    # an edited file is read again, and only that one
    _invert(_images(root)[3], compress_level=6)
    assert tasks.create("folder", split="train", root=root).fingerprint() != fp
    assert [os.path.basename(p) for p in read] == [_images(root)[3].name]


def test_files_changed_just_now_are_not_memoised(tmp_path, monkeypatch, hash_memo):
    import sqlite3

    from tasks import content

    root = _export(tmp_path / "data", n=3)
    tasks.create("folder", split="train", root=root).fingerprint()  # files written a moment ago: hashed only
    with sqlite3.connect(hash_memo) as conn:
        assert conn.execute("SELECT COUNT(*) FROM file_hash").fetchone()[0] == 0
    monkeypatch.setattr(content, "RACY_SECONDS", 0.0)
    tasks.create("folder", split="train", root=root).fingerprint()
    with sqlite3.connect(hash_memo) as conn:
        assert conn.execute("SELECT COUNT(*) FROM file_hash").fetchone()[0] == 3


@pytest.mark.parametrize("where", ["under_a_file", "garbage", "off"])
def test_an_unusable_memo_never_fails_the_run(tmp_path, monkeypatch, where):
    from tasks import content

    monkeypatch.setattr(content, "RACY_SECONDS", 0.0)
    root = _export(tmp_path / "data", n=3)
    expected = tasks.create("folder", split="train", root=root).fingerprint()
    monkeypatch.setattr(content, "_memo_in_process", {})
    if where == "under_a_file":  # like a read-only home: the folder cannot be created
        (tmp_path / "file").write_text("x")
        monkeypatch.setenv("PROBEBENCH_HASH_CACHE", str(tmp_path / "file" / "memo.sqlite"))
    elif where == "garbage":
        (tmp_path / "garbage.sqlite").write_bytes(b"this is not a database" * 100)
        monkeypatch.setenv("PROBEBENCH_HASH_CACHE", str(tmp_path / "garbage.sqlite"))
    else:
        monkeypatch.setenv("PROBEBENCH_HASH_CACHE", "off")
    assert tasks.create("folder", split="train", root=root).fingerprint() == expected
    assert content.hash_cache_path() is None if where == "off" else content.hash_cache_path() is not None


def test_many_files_to_hash_show_a_progress_bar(tmp_path, monkeypatch, capsys):
    from tasks import content

    root = _export(tmp_path / "data", n=3)
    tasks.create("folder", split="train", root=root).fingerprint()
    assert "hash folder/train" not in capsys.readouterr().err  # 3 files: quiet
    monkeypatch.setattr(content, "_memo_in_process", {})
    monkeypatch.setattr(content, "PROGRESS_MIN_FILES", 2)
    tasks.create("folder", split="train", root=root).fingerprint()
    assert "hash folder/train images (3 files)" in capsys.readouterr().err


def test_a_missing_file_is_named(tmp_path):
    from tasks.content import file_digests

    with pytest.raises(ProbebenchError, match=re.escape(str(tmp_path / "nope.png"))):
        file_digests([tmp_path / "nope.png"])


def test_concurrent_processes_share_the_memo(tmp_path, hash_memo):
    """Ranks under torchrun hash the same files at once: every process gets the same digests, none fails or
    falls back to hashing without the memo, and the memo ends up complete."""
    import sqlite3
    import subprocess
    import sys

    files = []
    for i in range(300):
        files.append(tmp_path / "files" / f"{i:04d}.bin")
        files[-1].parent.mkdir(exist_ok=True)
        files[-1].write_bytes(np.random.default_rng(i).bytes(256))
    code = (
        "import sys; from tasks import content; content.RACY_SECONDS = 0.0; "
        "print(content.digest_lines(content.file_digests(sys.argv[1:], progress=False)))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, *map(str, files)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    assert len({out for out, _ in outs}) == 1 and not any("File-hash memo" in err for _, err in outs)
    with sqlite3.connect(hash_memo) as conn:
        assert conn.execute("SELECT COUNT(*) FROM file_hash").fetchone()[0] == 300
