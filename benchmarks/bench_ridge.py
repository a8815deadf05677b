"""Benchmark the one-pass ridge screen against separate scikit-learn fits.

G cells = keys × λ. The screen streams each (layer, timestep) array once, accumulates the weighted XᵀX / XᵀY in
float64 and solves every λ from one eigendecomposition; the baseline fits ``sklearn.linear_model.Ridge`` once per
cell on the same rows with the same per-row weights (class-balanced segmentation targets at feature resolution,
as the screen builds them) and the same absolute λ. Both sides read the features from the same on-disk cache and
build the same targets; the script checks that their predictions agree, then prints the measured ratio.

    python benchmarks/bench_ridge.py            # 12 keys × 6 λ, about a minute on two cores
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import tasks  # noqa: E402
from backbones.store import FORMAT_VERSION, FeatureCache, key_stem  # noqa: E402
from probes.ridge import RidgeAccumulator  # noqa: E402
from probes.screen import DEFAULT_LAMBDAS, Split  # noqa: E402
from probes.targets import (  # noqa: E402
    balance_weights,
    class_frequencies,
    inverse_frequency_weights,
    targets_at,
)


def make_cache(
    root: Path, ds: tasks.Dataset, num_keys: int, dim: int, grid: int, seed: int = 0
) -> FeatureCache:
    """A cache of ``num_keys`` (layer, timestep) arrays: a noisy linear image of the class map plus noise."""
    rng = np.random.default_rng(seed)
    spec = ds.targets["segmentation"]
    t = np.stack([ds.load_target(i, "segmentation") for i in range(len(ds))])
    y, _ = targets_at(t, spec, (grid, grid))  # (N, h, w, K)
    entries = []
    for j in range(num_keys):
        key = (j // 4, 250 * (j % 4))
        x = y @ rng.normal(size=(y.shape[-1], dim)) * (0.2 + 0.1 * j) + rng.normal(size=(*y.shape[:3], dim))
        stem = key_stem(key)
        (root / "shards" / stem).mkdir(parents=True, exist_ok=True)
        np.save(root / "shards" / stem / "00000.npy", x.astype(np.float16))
        entries.append(
            {"layer": key[0], "timestep": key[1], "log_snr": None, "stem": stem, "shape": list(x.shape)}
        )
    manifest = {
        "format": FORMAT_VERSION,
        "hash": "bench",
        "fingerprint": {"adapter": {"backbone": "bench"}},
        "image_ids": [ds.image_id(i) for i in range(len(ds))],
        "num_shards": 1,
        "shard_size": len(ds),
        "features": entries,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return FeatureCache(root)


def rows(split: Split, key, class_w: np.ndarray, batch_size: int):
    """(x, y, w) batches of one key at feature resolution, exactly as the ridge screen builds them."""
    spec = split.dataset.target_spec("segmentation")
    arr = split.cache.array(key)
    _, h, w, dim = arr.shape
    for start in range(0, len(arr), batch_size):
        x = arr[start : start + batch_size].astype(np.float64).reshape(-1, dim)
        y, wt = targets_at(split.targets(start, start + len(x) // (h * w), "segmentation"), spec, (h, w))
        yield x, y.reshape(len(x), -1), balance_weights(y, wt, class_w, spec).reshape(-1)


def screen(split: Split, class_w: np.ndarray, lambdas, batch_size: int) -> dict:
    """One pass per key, every λ from one eigendecomposition: {key: (coefs, intercepts, absolute λ)}."""
    out = {}
    for key in split.cache.keys:
        dim = split.cache.info(key).shape[-1]
        acc = RidgeAccumulator(dim, split.dataset.target_spec("segmentation").num_classes)
        for x, y, w in rows(split, key, class_w, batch_size):
            acc.add(x, y, w)
        out[key] = acc.solve(lambdas)
    return out


def sklearn_fits(split: Split, class_w: np.ndarray, abs_lambdas: dict, batch_size: int) -> dict:
    """One scikit-learn Ridge fit per (key, λ) on the same rows and weights: {key: [fitted models]}."""
    from sklearn.linear_model import Ridge

    out = {}
    for key in split.cache.keys:
        parts = list(rows(split, key, class_w, batch_size))
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        w = np.concatenate([p[2] for p in parts])
        keep = w > 0  # the screen drops zero-weight rows too
        out[key] = [Ridge(alpha=lam).fit(x[keep], y[keep], sample_weight=w[keep]) for lam in abs_lambdas[key]]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=12, help="(layer, timestep) arrays (default: 12)")
    parser.add_argument("--images", type=int, default=48, help="training images (default: 48)")
    parser.add_argument("--dim", type=int, default=192, help="feature channels (default: 192)")
    parser.add_argument("--grid", type=int, default=16, help="feature grid side (default: 16)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats of the screen, best kept")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS/torch threads for both sides (default: 1; fair on a shared box)",
    )
    args = parser.parse_args(argv)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        run(args)


def run(args: argparse.Namespace) -> None:
    lambdas = list(DEFAULT_LAMBDAS)
    ds = tasks.create("scenes", split="train", resolution=4 * args.grid, num_images=args.images)
    with tempfile.TemporaryDirectory() as tmp:
        split = Split(make_cache(Path(tmp), ds, args.keys, args.dim, args.grid), ds)
        spec = ds.target_spec("segmentation")
        counts = class_frequencies([ds.load_target(i, "segmentation") for i in range(len(ds))], spec)
        class_w = inverse_frequency_weights(counts)
        g = args.keys * len(lambdas)
        n_rows = args.images * args.grid**2
        print(
            f"G = {args.keys} keys × {len(lambdas)} λ = {g} cells; {n_rows} rows × {args.dim} features, 8 classes, "
            f"{args.threads} thread(s)"
        )

        t_screen = float("inf")
        for _ in range(max(1, args.repeats)):
            start = time.perf_counter()
            sol = screen(split, class_w, lambdas, batch_size=32)
            t_screen = min(t_screen, time.perf_counter() - start)
        start = time.perf_counter()
        ref = sklearn_fits(split, class_w, {k: v[2] for k, v in sol.items()}, batch_size=32)
        t_sklearn = time.perf_counter() - start

        key = split.cache.keys[-1]
        x = split.cache.array(key)[:2].astype(np.float64).reshape(-1, args.dim)
        diff = max(
            float(np.abs(x @ sol[key][0][i] + sol[key][1][i] - ref[key][i].predict(x)).max())
            for i in range(len(lambdas))
        )
        print(
            f"ridge screen (one pass per key, all λ):  {t_screen:7.2f} s  ({1000 * t_screen / g:6.1f} ms/cell)"
        )
        print(
            f"scikit-learn Ridge, one fit per cell:     {t_sklearn:7.2f} s  ({1000 * t_sklearn / g:6.1f} ms/cell)"
        )
        print(f"max |prediction difference| = {diff:.2e}")
        print(f"speed-up: {t_sklearn / t_screen:.1f}x  (target >= 10x)")


if __name__ == "__main__":
    main()
