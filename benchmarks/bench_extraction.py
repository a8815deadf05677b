"""Extraction benchmarks (printed as ratios measured in one run; targets from the backbones issue):

1. extraction (hooks + noise + fp16 cache writes) ÷ bare forward of the model on the same batches — ≤ 1.10
2. extracting block L of K ÷ the full forward — ≤ (L+1)/K + 0.10 (early exit)
3. peak RSS of an extraction of 512 images ÷ one of 64 images — ≤ 1.10 (streaming, nothing accumulates)
4. streaming read of a cache (FeatureCache.iter_batches) ÷ `cat` of the same files, in MB/s — ≥ 0.5

Usage: python benchmarks/bench_extraction.py [--backbone NAME] [--weights random] [--image-size 224]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import backbones  # noqa: E402
from backbones.store import FeatureCache, extract_to_cache  # noqa: E402
from tasks.base import Dataset, TargetSpec  # noqa: E402


class RandomImages(Dataset):
    """Random images made on demand from (seed, index): cheap to load, and nothing held in memory (so the
    peak-RSS comparison measures the extraction, not the dataset)."""

    name = "random-images"

    def __init__(self, n: int, size: int, seed: int = 0):
        super().__init__("bench")
        self.n, self.size, self.seed = n, size, seed

    @property
    def targets(self) -> dict[str, TargetSpec]:
        return {}

    def __len__(self) -> int:
        return self.n

    def image_id(self, index: int) -> str:
        return f"img{index:06d}"

    def load_image(self, index: int) -> np.ndarray:
        return np.random.default_rng([self.seed, index]).random((self.size, self.size, 3), dtype=np.float32)

    def load_target(self, index: int, kind: str) -> np.ndarray:
        raise KeyError(kind)


def timed(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bare_forward(adapter, ds: Dataset, timesteps=None) -> None:
    """The model's own forward on the same batches, images loaded the same way (for diffusion adapters:
    ``adapter.bare_forward``), so the ratio isolates hooks + noise + fp16 writes."""
    from backbones.store import _load_batch

    with torch.inference_mode():
        for s in range(0, len(ds), adapter.compute_batch):
            xs = _load_batch(ds, range(s, min(len(ds), s + adapter.compute_batch)), adapter.image_size)
            if hasattr(adapter, "bare_forward"):
                adapter.bare_forward(xs, timesteps)
            else:
                xs = adapter.preprocess(xs)
                with adapter.autocast():
                    adapter.model((xs - adapter.mean) / adapter.std)


def rss_child(args: argparse.Namespace, n: int) -> float:
    code = f"""
import resource, sys, tempfile
sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / "benchmarks")!r})
import backbones
from bench_extraction import RandomImages
from backbones.store import extract_to_cache
a = backbones.create({args.backbone!r}, weights={args.weights!r}, image_size={args.image_size})
ds = RandomImages({n}, {args.image_size})
with tempfile.TemporaryDirectory() as d:
    extract_to_cache(a, ds, layers={args.layers!r}, timesteps={args.timesteps!r}, cache_root=d, progress=False,
                     batch_size=16, shard_size=64)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1]) / 1024  # MiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="timm:vit_small_patch16_dinov3")
    p.add_argument("--weights", default="random")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--layers", default="all")
    p.add_argument("--timesteps", default=None, type=lambda s: [float(t) for t in s.split(",")])
    p.add_argument("--shallow", type=int, default=2, help="L for the early-exit ratio")
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--repeat", type=int, default=7, help="alternating bare/extraction pairs")
    args = p.parse_args()
    torch.manual_seed(0)
    adapter = backbones.create(args.backbone, weights=args.weights, image_size=args.image_size)
    k = adapter.num_layers
    ds = RandomImages(args.images, args.image_size)
    x = (
        torch.from_numpy(np.stack([ds.load_image(i) for i in range(len(ds))]))
        .permute(0, 3, 1, 2)
        .contiguous()
    )
    results = {
        "backbone": args.backbone,
        "images": args.images,
        "image_size": args.image_size,
        "threads": torch.get_num_threads(),
    }

    with tempfile.TemporaryDirectory() as tmp:

        def extract_all():
            d = tempfile.mkdtemp(dir=tmp)
            extract_to_cache(
                adapter,
                ds,
                layers=args.layers,
                timesteps=args.timesteps,
                cache_root=d,
                progress=False,
                batch_size=16,
                shard_size=64,
            )

        # The two arms alternate (bare, extract, bare, extract, ...) so that drifts of the machine's speed hit
        # both alike; the ratio is the median over the pairs.
        bare = lambda: bare_forward(adapter, ds, args.timesteps)  # noqa: E731
        extract_all(), bare()  # warm-up
        pairs = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            bare()
            t1 = time.perf_counter()
            extract_all()
            pairs.append((time.perf_counter() - t1, t1 - t0))
        ratios = sorted(e / b for e, b in pairs)
        results["extract_s"] = float(np.median([e for e, _ in pairs]))
        results["bare_forward_s"] = float(np.median([b for _, b in pairs]))
        results["extract_over_bare"] = float(np.median(ratios))
        results["extract_over_bare_range"] = [ratios[0], ratios[-1]]

        ts = args.timesteps
        t_shallow = timed(lambda: adapter.extract(x, [args.shallow], ts))
        t_full = timed(lambda: adapter.extract(x, [k - 1], ts))
        results["early_exit_ratio"] = t_shallow / t_full
        results["early_exit_target"] = (args.shallow + 1) / k + 0.10

        cache_dir = Path(tempfile.mkdtemp(dir=tmp))
        cache = extract_to_cache(
            adapter,
            RandomImages(max(args.images, 64), args.image_size),
            layers=args.layers,
            timesteps=ts,
            cache_root=cache_dir,
            progress=False,
        )
        assert isinstance(cache, FeatureCache)
        files = [str(f) for f in cache.path.rglob("*.npy")]
        nbytes = sum(Path(f).stat().st_size for f in files)

        def read_all():
            for key in cache.keys:
                for _batch in cache.array(key).iter_batches(64):
                    pass  # every byte is read into a fresh array

        def cat_all():
            subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)

        t_read, t_cat = timed(read_all), timed(cat_all)
        results["read_MBps"], results["cat_MBps"] = nbytes / t_read / 1e6, nbytes / t_cat / 1e6
        results["read_over_cat"] = results["read_MBps"] / results["cat_MBps"]

    if not args.skip_rss:
        small, large = rss_child(args, 64), rss_child(args, 512)
        results["peak_rss_64_MiB"], results["peak_rss_512_MiB"] = small, large
        results["rss_512_over_64"] = large / small
    results["self_peak_rss_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(results, indent=1))
    lo, hi = results["extract_over_bare_range"]
    print(
        f"extraction / bare forward      : {results['extract_over_bare']:.3f}  (target <= 1.10; median of "
        f"{args.repeat} alternating pairs, range {lo:.3f}-{hi:.3f})"
    )
    print(
        f"block {args.shallow} of {k} / full forward    : {results['early_exit_ratio']:.3f}  "
        f"(target <= {results['early_exit_target']:.3f})"
    )
    if "rss_512_over_64" in results:
        print(f"peak RSS 512 / 64 images        : {results['rss_512_over_64']:.3f}  (target <= 1.10)")
    print(f"streaming read / cat (MB/s)     : {results['read_over_cat']:.3f}  (target >= 0.5)")


if __name__ == "__main__":
    main()
