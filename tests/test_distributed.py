"""Extraction under torchrun: ranks take disjoint shards; the cache equals a single-process one bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from backbones.store import FeatureCache

ARGS = [
    "extract",
    "--backbone",
    "timm:efficientnet_lite0",
    "--dataset",
    "scenes",
    "--split",
    "val",
    "--resolution",
    "16",
    "--image-size",
    "32",
    "--max-images",
    "10",
    "--layers",
    "0,3",
    "--shard-size",
    "3",
    "--batch-size",
    "2",
    "--no-progress",
]


def test_torchrun_two_ranks_equal_one_process(tmp_path):
    """Both runs use one CPU thread per process (torchrun's default): oneDNN kernels round differently with
    other thread counts, which the manifest records."""
    env_py = [sys.executable, "-m"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    multi = subprocess.run(
        [
            *env_py,
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29533",
            "-m",
            "probebench.cli",
            *ARGS,
            "--cache",
            str(tmp_path / "multi"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert multi.returncode == 0, multi.stderr[-3000:]
    single = subprocess.run(
        [*env_py, "probebench.cli", *ARGS, "--cache", str(tmp_path / "single")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    (a,) = (tmp_path / "multi").iterdir()
    (b,) = (tmp_path / "single").iterdir()
    assert a.name == b.name  # world size is not part of the cache identity
    ca, cb = FeatureCache(a), FeatureCache(b)
    assert ca.image_ids == cb.image_ids and ca.keys == cb.keys == [(0, None), (3, None)]
    for key in ca.keys:
        assert np.array_equal(ca.array(key)[:], cb.array(key)[:])
    # both ranks wrote shards: 4 shards of ≤3 images, rank r takes shards r, r+2
    done = sorted(p.name for p in (a / "shards" / "_done").iterdir())
    assert done == [f"{s:05d}.json" for s in range(4)]
    assert ca.manifest["world_size"] == 2 and cb.manifest["world_size"] == 1
    assert ca.manifest["cpu_threads"] == cb.manifest["cpu_threads"] == 1
