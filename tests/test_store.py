"""The feature store: hashing, completeness, resume, refusal of foreign caches, streaming reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import backbones
import tasks
from backbones.store import FeatureCache, ShardedArray, extract_to_cache
from probebench.core.errors import ProbebenchError


@pytest.fixture(scope="module")
def adapter():
    return backbones.create("timm:efficientnet_lite0", image_size=32)


@pytest.fixture
def data():
    return tasks.create("scenes", split="val", resolution=16, num_images=10)


def extract(adapter, data, root, **kw):
    kw.setdefault("layers", [0, 2])
    kw.setdefault("shard_size", 4)
    kw.setdefault("batch_size", 3)
    return extract_to_cache(adapter, data, cache_root=root, progress=False, **kw)


def read_all(cache: FeatureCache) -> dict:
    return {k: cache.array(k)[:] for k in cache.keys}


def test_cache_layout_dtype_and_reuse(adapter, data, tmp_path, monkeypatch):
    cache = extract(adapter, data, tmp_path)
    assert cache.keys == [(0, None), (2, None)]
    arr = cache.array((0, None))
    assert arr.shape == (10, 16, 16, 16) and arr.dtype == np.float16  # (N, h, w, C) channels-last fp16
    assert cache.image_ids == [data.image_id(i) for i in range(10)]
    direct = adapter.extract(
        torch.stack([torch.from_numpy(data.load_image(i)).permute(2, 0, 1) for i in range(10)]), [0]
    )[(0, None)]
    np.testing.assert_array_equal(arr[:], direct.permute(0, 2, 3, 1).numpy().astype(np.float16))
    calls = []
    monkeypatch.setattr(adapter, "iter_extract", lambda *a, **k: calls.append(1))
    again = extract(adapter, data, tmp_path)
    assert again.path == cache.path and not calls  # a complete cache is reused, nothing recomputed


def test_numbers_do_not_depend_on_batch_or_shard_size(adapter, data, tmp_path):
    a = read_all(extract(adapter, data, tmp_path / "a", batch_size=1, shard_size=3))
    b = read_all(extract(adapter, data, tmp_path / "b", batch_size=7, shard_size=64))
    for k in a:
        assert np.array_equal(a[k], b[k])


def test_hash_changes_with_what_changes_numbers(adapter, data, tmp_path):
    base = extract(adapter, data, tmp_path).path
    assert extract(adapter, data, tmp_path, batch_size=5).path == base  # batch size is not in the hash
    assert extract(adapter, data, tmp_path, layers=[0]).path != base
    assert extract(adapter, data, tmp_path, seed=1).path != base
    other = tasks.create("scenes", split="val", resolution=16, num_images=10, seed=3)
    assert extract(adapter, other, tmp_path).path != base


def test_incomplete_cache_is_never_read(adapter, data, tmp_path):
    cache = extract(adapter, data, tmp_path)
    (cache.path / "manifest.json").unlink()
    with pytest.raises(ProbebenchError, match="incomplete"):
        FeatureCache(cache.path)
    with pytest.raises(ProbebenchError, match="missing"):
        FeatureCache(tmp_path / "nope")


def test_foreign_cache_is_refused_with_both_hashes(adapter, data, tmp_path):
    cache = extract(adapter, data, tmp_path)
    with pytest.raises(ProbebenchError, match=rf"hash is {cache.hash}, expected 0000"):
        FeatureCache(cache.path, expect_hash="0000")
    # a directory whose fingerprint belongs to another config is not reused for extraction either
    (cache.path / "manifest.json").unlink()
    fp = json.loads((cache.path / "fingerprint.json").read_text())
    fp["hash"] = "deadbeef"
    (cache.path / "fingerprint.json").write_text(json.dumps(fp))
    with pytest.raises(ProbebenchError, match="deadbeef"):
        extract(adapter, data, tmp_path)


def test_resume_recomputes_only_unfinished_shards(adapter, data, tmp_path, monkeypatch):
    ref = read_all(extract(adapter, data, tmp_path / "ref"))
    cache = extract(adapter, data, tmp_path / "run")
    (cache.path / "manifest.json").unlink()
    (cache.path / "shards" / "_done" / "00001.json").unlink()  # as if killed while writing shard 1
    seen = []
    real = adapter.iter_extract
    monkeypatch.setattr(adapter, "iter_extract", lambda x, *a, **k: seen.append(len(x)) or real(x, *a, **k))
    resumed = extract(adapter, data, tmp_path / "run")
    assert sum(seen) == 4  # only shard 1 (images 4..7) was recomputed
    for k, v in read_all(resumed).items():
        assert np.array_equal(v, ref[k])


def test_fp16_overflow_is_an_error(adapter, data, tmp_path, monkeypatch):
    real = adapter.iter_extract

    def scaled(*a, **k):
        for off, feats in real(*a, **k):
            yield off, {key: v * 1e6 for key, v in feats.items()}

    monkeypatch.setattr(adapter, "iter_extract", scaled)
    with pytest.raises(ProbebenchError, match="beyond float16"):
        extract(adapter, data, tmp_path)


def test_sharded_array_reads_like_one_array(tmp_path):
    parts = [np.arange(i * 12, (i + 1) * 12, dtype=np.float16).reshape(3, 1, 2, 2) for i in range(3)]
    files = []
    for i, p in enumerate(parts):
        files.append(tmp_path / f"{i}.npy")
        np.save(files[-1], p)
    arr = ShardedArray(files)
    full = np.concatenate(parts)
    assert arr.shape == full.shape and len(arr) == 9
    np.testing.assert_array_equal(arr[2:7], full[2:7])
    np.testing.assert_array_equal(arr[5], full[5])
    np.testing.assert_array_equal(arr[::2], full[::2])
    np.testing.assert_array_equal(np.concatenate(list(arr.iter_batches(4))), full)


def test_pooling_to_a_target_grid(adapter, data, tmp_path):
    cache = extract(adapter, data, tmp_path, pool_to=4)
    assert cache.array((0, None)).shape == (10, 4, 4, 16)
    assert cache.array((2, None)).shape == (10, 4, 4, 40)


KILL_SCRIPT = """
import sys, time, backbones, tasks
from backbones.store import extract_to_cache
adapter = backbones.create("timm:efficientnet_lite0", image_size=32)
real = adapter.extract
def slow(*a, **k):
    time.sleep(0.25)
    return real(*a, **k)
adapter.extract = slow
ds = tasks.create("scenes", split="train", resolution=16, num_images=40)
print(extract_to_cache(adapter, ds, layers=[0, 3], cache_root=sys.argv[1], shard_size=4, batch_size=2,
                       progress=False).path, flush=True)
"""


def test_sigkill_mid_extraction_then_resume_is_byte_identical(tmp_path):
    """A real extraction process is killed with SIGKILL mid-way; the resumed cache equals a clean one."""
    script = tmp_path / "extract.py"
    script.write_text(KILL_SCRIPT)
    root = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(root)], stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    done_dir = None
    while time.time() < deadline:
        dirs = list(root.glob("*/shards/_done"))
        if dirs and len(list(dirs[0].glob("*.json"))) >= 3:
            done_dir = dirs[0]
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done_dir is not None, "extraction did not start"
    finished = len(list(done_dir.glob("*.json")))
    assert 3 <= finished < 10 and not (done_dir.parent.parent / "manifest.json").exists()
    with pytest.raises(ProbebenchError, match="incomplete"):
        FeatureCache(done_dir.parent.parent)
    out = subprocess.run(
        [sys.executable, str(script), str(root)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    clean = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "clean")], capture_output=True, text=True, timeout=300
    )
    a, b = Path(out.stdout.strip()), Path(clean.stdout.strip())
    files_a = sorted(p.relative_to(a) for p in (a / "shards").rglob("*.npy"))
    files_b = sorted(p.relative_to(b) for p in (b / "shards").rglob("*.npy"))
    assert files_a == files_b and len(files_a) == 20
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert not list(a.rglob("*.tmp"))  # no temporary files left behind by the resumed run


def test_a_short_or_missing_feature_file_is_recomputed_on_resume_and_refused_on_read(
    adapter, data, tmp_path, monkeypatch
):
    ref = read_all(extract(adapter, data, tmp_path / "ref"))
    cache = extract(adapter, data, tmp_path / "run")
    stem = cache.features[0].stem
    victim = cache.path / "shards" / stem / "00001.npy"
    size = victim.stat().st_size
    with open(victim, "r+b") as f:  # as an OS crash can leave it: renamed into place, data not all on disk
        f.truncate(size // 2)
    with pytest.raises(ProbebenchError, match=rf"damaged: shards/{stem}/00001.npy has {size // 2} bytes"):
        cache.array(cache.keys[0])
    (cache.path / "manifest.json").unlink()
    (cache.path / "shards" / cache.features[1].stem / "00000.npy").unlink()
    seen = []
    real = adapter.iter_extract
    monkeypatch.setattr(adapter, "iter_extract", lambda x, *a, **k: seen.append(len(x)) or real(x, *a, **k))
    resumed = extract(adapter, data, tmp_path / "run")
    assert sum(seen) == 8  # shards 0 and 1 (4 images each) again, the others kept
    for k, v in read_all(resumed).items():
        assert np.array_equal(v, ref[k])


def test_all_finite_catches_nan_and_inf_and_survives_sum_overflow():
    from backbones.base import all_finite

    x = torch.zeros(2, 3, 4, 4)
    assert all_finite(x) and all_finite(x.half())
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[1, 2, 3, 0] = bad
        assert not all_finite(y) and not all_finite(y.half())
    huge = torch.full((4,), 3e38)  # finite, but the float32 sum overflows: the exact check decides
    assert all_finite(huge)
