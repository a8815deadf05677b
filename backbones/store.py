"""The on-disk feature store: one directory per extraction, named by a hash of everything that changes numbers.

Layout of a cache directory ``<root>/<slug>-<hash>/``::

    fingerprint.json               what was asked for (written first; a differing one refuses the directory)
    shards/<key>/<shard>.npy       fp16, channels-last (n, h, w, C), one file per (layer, timestep) and shard
    shards/_done/<shard>.json      written after all keys of a shard are on disk (the resume marker, with sizes)
    manifest.json                  written last, atomically: the cache is complete only when it exists

A shard is a fixed block of ``shard_size`` consecutive images, so its content does not depend on the batch
size or on how many ranks share the work; rank ``r`` of ``W`` computes shards ``r, r+W, ...``. Every file is
written to a temporary name and renamed into place, so a crash or ``kill -9`` leaves either a whole file or
none, and a resumed run recomputes only the shards without a valid marker. Feature files are not fsynced
(markers and the manifest are): the marker and the manifest record every file's size, so a file cut short by
an OS crash sends its shard back to be recomputed on resume, and is an error on read, never silent zeros.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from backbones.base import Adapter, FeatureKey, all_finite
from probebench.core.errors import ProbebenchError
from probebench.core.io import atomic_save_npy, atomic_write_json, package_versions, stable_hash
from tasks.base import Dataset

FORMAT_VERSION = 1
FP16_MAX = float(np.finfo(np.float16).max)


def key_stem(key: FeatureKey) -> str:
    """File-system name of a (layer, timestep) key: ``L003_Tnone``, ``L010_T500``, ``L002_T0.25``."""
    layer, t = key
    return f"L{layer:03d}_T{'none' if t is None else format(t, 'g')}"


# -- reading --------------------------------------------------------------------------------------------------
class ShardedArray:
    """One (layer, timestep) array seen as a single (N, h, w, C) fp16 array over memory-mapped shards."""

    def __init__(self, files: Sequence[Path]):
        self._maps = [np.load(f, mmap_mode="r", allow_pickle=False) for f in files]
        if not self._maps:
            raise ProbebenchError("A cached feature array has no shards.")
        self._starts = np.cumsum([0] + [len(m) for m in self._maps])
        first = self._maps[0]
        self.shape = (int(self._starts[-1]), *first.shape[1:])
        self.dtype = first.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: int | slice) -> np.ndarray:
        if isinstance(idx, (int, np.integer)):
            idx = int(idx) % len(self)
            s = int(np.searchsorted(self._starts, idx, side="right") - 1)
            return np.asarray(self._maps[s][idx - self._starts[s]])
        start, stop, step = idx.indices(len(self))
        if step != 1:
            return np.stack([self[i] for i in range(start, stop, step)])
        parts = []
        for s, m in enumerate(self._maps):
            lo, hi = max(start, self._starts[s]), min(stop, self._starts[s + 1])
            if lo < hi:
                parts.append(np.asarray(m[lo - self._starts[s] : hi - self._starts[s]]))
        return np.concatenate(parts) if parts else np.empty((0, *self.shape[1:]), self.dtype)

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Consecutive (b, h, w, C) batches, never the whole array at once.

        Sequential reads go through plain buffered ``readinto`` calls rather than page faults on the memory map
        (about the speed of ``cat``); each yielded batch is a fresh array the caller may keep.
        """
        if batch_size < 1:
            raise ProbebenchError(f"batch_size must be >= 1, got {batch_size}.")
        row = int(np.prod(self.shape[1:]))
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
            flat = out.reshape(stop - start, row)
            filled = 0
            for s, m in enumerate(self._maps):
                lo, hi = max(start, self._starts[s]), min(stop, self._starts[s + 1])
                if lo >= hi:
                    continue
                with open(m.filename, "rb") as f:
                    f.seek(m.offset + (lo - self._starts[s]) * row * self.dtype.itemsize)
                    f.readinto(memoryview(flat[filled : filled + hi - lo]).cast("B"))
                filled += hi - lo
            yield out


@dataclass(frozen=True)
class FeatureInfo:
    layer: int
    timestep: Any
    log_snr: float | None
    stem: str
    shape: tuple[int, ...]
    nbytes: tuple[int, ...] | None = (
        None  # size of each shard file (None: written before sizes were recorded)
    )

    @property
    def key(self) -> FeatureKey:
        return (self.layer, self.timestep)


class FeatureCache:
    """A complete cache directory (its manifest exists and matches the expected hash)."""

    def __init__(self, path: str | Path, expect_hash: str | None = None):
        self.path = Path(path)
        mpath = self.path / "manifest.json"
        if not mpath.is_file():
            state = "incomplete (no manifest: extraction did not finish)" if self.path.exists() else "missing"
            raise ProbebenchError(
                f"Feature cache {self.path} is {state}; run `probebench extract` to (re)build it."
            )
        self.manifest = json.loads(mpath.read_text())
        if self.manifest.get("format") != FORMAT_VERSION:
            raise ProbebenchError(
                f"Feature cache {self.path} has format {self.manifest.get('format')}, "
                f"this probebench reads format {FORMAT_VERSION}."
            )
        if expect_hash is not None and self.manifest["hash"] != expect_hash:
            raise ProbebenchError(
                f"Feature cache {self.path} was made for another config: its hash is {self.manifest['hash']}, "
                f"expected {expect_hash}."
            )
        self.features = [
            FeatureInfo(
                f["layer"],
                f["timestep"],
                f["log_snr"],
                f["stem"],
                tuple(f["shape"]),
                tuple(f["bytes"]) if "bytes" in f else None,
            )
            for f in self.manifest["features"]
        ]

    @property
    def hash(self) -> str:
        return self.manifest["hash"]

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.manifest["fingerprint"]

    @property
    def image_ids(self) -> list[str]:
        return self.manifest["image_ids"]

    @property
    def keys(self) -> list[FeatureKey]:
        return [f.key for f in self.features]

    def info(self, key: FeatureKey) -> FeatureInfo:
        for f in self.features:
            if f.key == tuple(key):
                return f
        raise ProbebenchError(f"Feature {key} is not in cache {self.path}. It has: {self.keys}.")

    def array(self, key: FeatureKey) -> ShardedArray:
        info = self.info(key)
        files = [
            self.path / "shards" / info.stem / f"{s:05d}.npy" for s in range(self.manifest["num_shards"])
        ]
        for f, size in zip(files, info.nbytes or ()):  # caches written before sizes were recorded: unchecked
            have = f.stat().st_size if f.is_file() else None
            if have != size:
                raise ProbebenchError(
                    f"Feature cache {self.path} is damaged: {f.relative_to(self.path)} has "
                    f"{'no file' if have is None else f'{have} bytes'}, the manifest says {size} bytes "
                    "(e.g. after an OS crash). Delete the directory and extract again."
                )
        return ShardedArray(files)


# -- writing --------------------------------------------------------------------------------------------------
def extraction_fingerprint(
    adapter: Adapter,
    dataset: Dataset,
    layers: list[int],
    timesteps: list[Any],
    *,
    seed: int,
    noise_draws: int,
    pool_to: int | None,
) -> dict[str, Any]:
    """Everything that changes the numbers of an extraction (and nothing that does not, e.g. batch size)."""
    return {
        "format": FORMAT_VERSION,
        "adapter": adapter.fingerprint(),
        "dataset": dataset.fingerprint(),
        "layers": list(layers),
        "timesteps": list(timesteps),
        "seed": int(seed),
        "noise_draws": int(noise_draws) if adapter.meta.is_diffusion else 1,
        "pool_to": pool_to,
        "storage": "float16 NHWC",
    }


def cache_dir_for(root: str | Path, fingerprint: dict[str, Any]) -> Path:
    fp = fingerprint
    slug = "-".join(
        str(s).replace("/", "_").replace(":", "_")
        for s in (fp["adapter"]["backbone"], fp["dataset"]["dataset"], fp["dataset"]["split"])
    )
    return Path(root).expanduser() / f"{slug}-{stable_hash(fp)}"


def _load_batch(dataset: Dataset, indices: Sequence[int], size: int) -> torch.Tensor:
    """Images of one batch as (B, 3, size, size); differently sized images are resized one by one."""
    ims = []
    for i in indices:
        im = torch.from_numpy(np.ascontiguousarray(dataset.load_image(i), dtype=np.float32)).permute(2, 0, 1)
        if im.shape[-2:] != (size, size):
            im = F.interpolate(
                im[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )[0].clamp_(0, 1)
        ims.append(im)
    return torch.stack(ims)


def pool_features(feat: torch.Tensor, pool_to: int | None) -> torch.Tensor:
    """Average-pool (B, C, h, w) maps so the longer side is at most ``pool_to`` (aspect kept); else unchanged."""
    if pool_to is None or max(feat.shape[-2:]) <= pool_to:
        return feat
    h, w = feat.shape[-2:]
    s = pool_to / max(h, w)
    return F.adaptive_avg_pool2d(feat, (max(1, round(h * s)), max(1, round(w * s))))


def _to_storage(feat: torch.Tensor, pool_to: int | None, key: FeatureKey, what: str) -> torch.Tensor:
    """(B, C, h, w) features (any strides) → contiguous fp16 channels-last (B, h, w, C) in one pass, checked:
    NaN/inf in the features and values beyond fp16's range (which become inf in the cast) are errors; one pass
    over the fp16 copy checks both."""
    feat = pool_features(feat, pool_to)
    half = feat.permute(0, 2, 3, 1).to(torch.float16, memory_format=torch.contiguous_format)
    if not all_finite(half):  # fp16 sums cannot overflow float32: NaN/inf in the features, or fp16 overflow
        if not all_finite(feat):
            raise ProbebenchError(f"Features at (layer, timestep) {key} of {what} contain NaN or inf.")
        peak = float(feat.abs().max())
        raise ProbebenchError(
            f"Features at (layer, timestep) {key} of {what} reach {peak:.3g}, beyond float16's {FP16_MAX:.0f}; "
            "they cannot be stored as fp16 without overflow."
        )
    return half


def _write_shard(path: Path, shard: int, arrays: dict[FeatureKey, np.ndarray], ids: list[str]) -> None:
    """Write one finished shard: every key's file, then its done marker (the resume point), which records each
    file's size. Feature files are renamed into place but not fsynced (a per-file fsync cost ~5 % of a ViT-S
    forward); only the small marker is. A killed process cannot leave a short file; after an OS crash a file may be
    short or missing, and the sizes in the marker (and in the manifest) catch that on resume and on read."""
    sizes = {}
    for key, arr in arrays.items():
        f = path / "shards" / key_stem(key) / f"{shard:05d}.npy"
        atomic_save_npy(f, arr, fsync=False)
        sizes[key_stem(key)] = f.stat().st_size
    atomic_write_json(path / "shards" / "_done" / f"{shard:05d}.json", {"images": ids, "bytes": sizes})


def _shard_done(path: Path, shard: int, stems: Sequence[str]) -> dict[str, int] | None:
    """The file sizes of a finished shard, or ``None`` when it must be (re)computed: no marker, an unreadable
    marker, or a feature file missing or of another size than the marker recorded."""
    marker = path / "shards" / "_done" / f"{shard:05d}.json"
    try:
        sizes = json.loads(marker.read_text())["bytes"]
        for stem in stems:
            if (path / "shards" / stem / f"{shard:05d}.npy").stat().st_size != sizes[stem]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {stem: int(sizes[stem]) for stem in stems}


def dist_info() -> tuple[int, int]:
    """(rank, world size) from an initialised process group, else from torchrun's environment, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def extract_to_cache(
    adapter: Adapter,
    dataset: Dataset,
    *,
    layers: Any = None,
    timesteps: Any = None,
    cache_root: str | Path = "cache",
    seed: int = 0,
    noise_draws: int = 1,
    batch_size: int = 16,
    shard_size: int = 64,
    pool_to: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
) -> FeatureCache | Path:
    """Extract features for ``dataset`` into the cache, resuming whatever a previous run finished.

    Returns the complete :class:`FeatureCache`; a rank other than 0 in a multi-process run returns the cache
    path once its own shards are written (rank 0 writes the manifest after a barrier).
    """
    if batch_size < 1 or shard_size < 1:
        raise ProbebenchError(f"batch_size and shard_size must be >= 1, got {batch_size} and {shard_size}.")
    layer_idx = adapter.resolve_layers(layers)
    ts = adapter.resolve_timesteps(timesteps)
    fp = extraction_fingerprint(
        adapter, dataset, layer_idx, ts, seed=seed, noise_draws=noise_draws, pool_to=pool_to
    )
    fhash = stable_hash(fp)
    path = cache_dir_for(cache_root, fp)
    r0, w0 = dist_info()
    rank = r0 if rank is None else rank
    world_size = w0 if world_size is None else world_size
    if (path / "manifest.json").is_file():
        return FeatureCache(path, expect_hash=fhash)
    fp_file = path / "fingerprint.json"
    if fp_file.is_file():
        old = json.loads(fp_file.read_text())
        if old.get("hash") != fhash:
            raise ProbebenchError(
                f"Cache directory {path} belongs to another config (hash {old.get('hash')}, "
                f"this config {fhash}); refusing to reuse it."
            )
    elif rank == 0:
        atomic_write_json(fp_file, {"hash": fhash, "fingerprint": fp})

    n = len(dataset)
    if n == 0:
        raise ProbebenchError(f"Dataset {dataset.name}/{dataset.split} is empty; nothing to extract.")
    num_shards = math.ceil(n / shard_size)
    mine = [s for s in range(num_shards) if s % world_size == rank]
    stems = [key_stem((layer, t)) for layer in layer_idx for t in ts]
    todo = [s for s in mine if _shard_done(path, s, stems) is None]
    what = f"{adapter.name} on {dataset.name}/{dataset.split}"
    bar = tqdm(
        total=sum(min(shard_size, n - s * shard_size) for s in todo),
        unit="img",
        desc=f"extract {what}" + (f" [rank {rank}/{world_size}]" if world_size > 1 else ""),
        disable=not progress,
    )
    # Shard s+1 is computed while a writer thread saves shard s (file writes and fsyncs release the GIL), so
    # disk I/O hides behind the forward passes; at most one shard waits, which bounds memory.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="probebench-writer") as writer:
        pending: Future | None = None
        for s in todo:
            idx = list(range(s * shard_size, min(n, (s + 1) * shard_size)))
            arrays: dict[FeatureKey, np.ndarray] = {}
            for b in range(0, len(idx), batch_size):
                bidx = idx[b : b + batch_size]
                images = _load_batch(dataset, bidx, adapter.image_size)
                chunks = adapter.iter_extract(
                    images,
                    layer_idx,
                    None if ts == [None] else ts,
                    image_ids=[dataset.image_id(i) for i in bidx],
                    seed=seed,
                    noise_draws=noise_draws,
                )
                for off, feats in chunks:  # one compute batch at a time, written in place: no concatenation
                    for key, f in feats.items():
                        half = _to_storage(f, pool_to, key, what)
                        if key not in arrays:
                            arrays[key] = np.empty((len(idx), *half.shape[1:]), dtype=np.float16)
                        arrays[key][b + off : b + off + half.shape[0]] = half.numpy()
                bar.update(len(bidx))
            if pending is not None:
                pending.result()  # re-raises a write error; also keeps at most one shard in flight
            pending = writer.submit(_write_shard, path, s, arrays, [dataset.image_id(i) for i in idx])
            del arrays
        if pending is not None:
            pending.result()
    bar.close()

    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    if rank != 0:
        return path
    done = [_shard_done(path, s, stems) for s in range(num_shards)]
    missing = [s for s, d in enumerate(done) if d is None]
    if missing:
        raise ProbebenchError(
            f"Cache {path}: shards {missing[:5]} are not done; another rank may have failed."
        )
    features = []
    for key in [(layer, t) for layer in layer_idx for t in ts]:
        first = np.load(path / "shards" / key_stem(key) / "00000.npy", mmap_mode="r")
        features.append(
            {
                "layer": key[0],
                "timestep": key[1],
                "log_snr": adapter.log_snr(key[1]),
                "stem": key_stem(key),
                "shape": [n, *first.shape[1:]],
                "bytes": [d[key_stem(key)] for d in done if d is not None],  # per shard file: checked on read
            }
        )
    manifest = {
        "format": FORMAT_VERSION,
        "hash": fhash,
        "fingerprint": fp,
        "backbone": adapter.describe(),
        "num_images": n,
        "image_ids": [dataset.image_id(i) for i in range(n)],
        "num_shards": num_shards,
        "shard_size": shard_size,
        "world_size": world_size,
        "cpu_threads": torch.get_num_threads(),  # CPU kernels round differently with other thread counts
        "features": features,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": package_versions(),
    }
    for stale in path.rglob(
        ".*.tmp"
    ):  # left by a process killed mid-write; every rank is past its writes now
        stale.unlink(missing_ok=True)
    atomic_write_json(path / "manifest.json", manifest)
    return FeatureCache(path, expect_hash=fhash)
