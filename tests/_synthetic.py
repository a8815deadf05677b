"""Synthetic feature caches for probe tests: real ``FeatureCache`` directories whose arrays we choose, e.g. one
key that carries the targets and others that are pure noise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

import tasks
from backbones.store import FORMAT_VERSION, FeatureCache, key_stem
from probes.base import Split
from probes.targets import targets_at

GRID = (8, 8)


def write_cache(
    path: Path,
    image_ids: list[str],
    features: dict[tuple[int, Any], np.ndarray],
    log_snr: dict[tuple[int, Any], float | None] | None = None,
    backbone: str = "synthetic",
    seed: int = 0,
) -> FeatureCache:
    """A complete cache directory holding ``features`` ((N, h, w, C) per key) for ``image_ids``."""
    path.mkdir(parents=True, exist_ok=True)
    entries = []
    for key, arr in features.items():
        stem = key_stem(key)
        (path / "shards" / stem).mkdir(parents=True, exist_ok=True)
        np.save(path / "shards" / stem / "00000.npy", arr.astype(np.float16))
        snr = (log_snr or {}).get(key)
        entries.append(
            {"layer": key[0], "timestep": key[1], "log_snr": snr, "stem": stem, "shape": list(arr.shape)}
        )
    fp = {"adapter": {"backbone": backbone}, "seed": seed}
    manifest = {
        "format": FORMAT_VERSION,
        "hash": f"synthetic-{backbone}-{seed}-{path.name}",
        "fingerprint": fp,
        "image_ids": list(image_ids),
        "num_shards": 1,
        "shard_size": len(image_ids),
        "features": entries,
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    return FeatureCache(path)


def signal_features(
    ds: tasks.Dataset, grid: tuple[int, int] = GRID, noise: float = 0.05, seed: int = 0
) -> np.ndarray:
    """(N, h, w, 10) features that encode every target at ``grid``: 8 class fractions, the salient fraction and
    the (standardised) mean log-depth."""
    specs = ds.targets
    parts = []
    for kind in ("segmentation", "saliency", "depth"):
        t = np.stack([ds.load_target(i, kind) for i in range(len(ds))])
        y, _ = targets_at(t, specs[kind], grid)
        if kind == "depth":
            y = (y - 1.0) / 0.7
        parts.append(y)
    x = np.concatenate(parts, -1) * 2.0
    return x + noise * np.random.default_rng(seed).normal(size=x.shape)


def noise_features(n: int, dim: int = 10, grid: tuple[int, int] = GRID, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *grid, dim))


def synthetic_splits(
    root: Path,
    keys: list[tuple[int, Any]],
    signal: tuple[int, Any] | None,
    sizes: dict[str, int] | None = None,
    backbone: str = "synthetic",
    seed: int = 0,
    grid: tuple[int, int] = GRID,
    nan_key: tuple[int, Any] | None = None,
) -> dict[str, Split]:
    """Splits of scenes (16 px) with a synthetic cache per split: ``signal`` carries the targets, the other keys
    are noise (a different draw per key, split and ``seed``); ``nan_key`` is filled with NaN in train."""
    sizes = sizes or {"train": 24, "val": 12, "test": 8}
    out = {}
    for r, (role, n) in enumerate(sizes.items()):
        ds = tasks.create("scenes", split=role, resolution=16, num_images=n)
        feats = {}
        for j, key in enumerate(keys):
            if key == signal:
                feats[key] = signal_features(ds, grid, seed=100 * seed + r)
            else:
                feats[key] = noise_features(n, grid=grid, seed=1000 * seed + 10 * j + r + 1)
            if key == nan_key and role == "train":
                feats[key][:] = np.nan
        snr = {k: float(1.0 - k[1] / 250) if isinstance(k[1], (int, float)) else None for k in keys}
        cache = write_cache(
            root / f"{backbone}-{seed}-{role}",
            [ds.image_id(i) for i in range(n)],
            feats,
            snr,
            backbone=backbone,
            seed=seed,
        )
        out[role] = Split(cache, ds)
    return out
