"""Dataset identity benchmark: seconds to fingerprint a ``folder`` split of N small PNGs (content hashes).

Prints: listing the folder (construction), fingerprint() cold (empty memo: every file read and hashed),
warm from the SQLite memo (a new process: one stat + one batched lookup per file), warm in-process, and
target_fingerprint() cold. Files are in the page cache (just written): cold numbers exclude disk reads.

Usage: python benchmarks/bench_dataset_identity.py [--n 2000] [--size 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["PROBEBENCH_HASH_CACHE"] = str(tmp / "memo.sqlite")
        import tasks
        from tasks import content

        root = tmp / "data"
        for d in ("images", "masks"):
            (root / "train" / d).mkdir(parents=True)
        (root / "dataset.yaml").write_text(yaml.safe_dump({"name": "bench", "classes": ["a", "b"]}))
        rng = np.random.default_rng(0)
        old = time.time_ns() - 3600 * 10**9  # an hour back: outside the memo's racy window
        for i in range(args.n):
            for d, arr in (
                ("images", rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)),
                ("masks", rng.integers(0, 2, (args.size, args.size), dtype=np.uint8)),
            ):
                p = root / "train" / d / f"{i:06d}.png"
                Image.fromarray(arr).save(p)
                os.utime(p, ns=(old, old))
        mb = sum(p.stat().st_size for p in (root / "train" / "images").iterdir()) / 1e6
        content.RACY_SECONDS = 0.0  # utime set ctime to now

        def timed(fn):
            t = time.perf_counter()
            out = fn()
            return time.perf_counter() - t, out

        t_list, ds = timed(lambda: tasks.create("folder", split="train", root=root))
        t_cold, fp = timed(lambda: ds.fingerprint())
        content._memo_in_process.clear()
        t_warm, fp2 = timed(lambda: ds.fingerprint())
        t_proc, fp3 = timed(lambda: ds.fingerprint())
        assert fp == fp2 == fp3
        t_tcold, _ = timed(lambda: ds.target_fingerprint())
        print(f"{args.n} PNGs of {args.size}x{args.size} ({mb:.1f} MB of images), page cache warm")
        print(f"  list folder (construction)     {t_list:7.3f} s")
        print(f"  fingerprint, cold (no memo)    {t_cold:7.3f} s  ({mb / t_cold:.0f} MB/s)")
        print(f"  fingerprint, warm (sqlite)     {t_warm:7.3f} s  (cold / warm = {t_cold / t_warm:.1f}x)")
        print(f"  fingerprint, warm (in-process) {t_proc:7.3f} s")
        print(f"  target_fingerprint, cold       {t_tcold:7.3f} s")


if __name__ == "__main__":
    main()
