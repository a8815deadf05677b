"""Benchmark the procedural scene renderer: images/s at one or more resolutions (single process)."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path


def _render_scene():
    """Import ``tasks.scenes_render.render_scene`` so the script also runs from any directory."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("tasks.scenes_render").render_scene


def bench(resolution: int, n: int, seed: int = 0, warmup: int = 3) -> float:
    """Render ``n`` distinct scenes at ``resolution`` after ``warmup`` renders; return images/s."""
    render_scene = _render_scene()
    for i in range(warmup):
        render_scene(seed + 1, i, resolution)
    start = time.perf_counter()
    for i in range(n):
        render_scene(seed, i, resolution)
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--resolution", type=int, nargs="+", default=[64, 128], help="image sizes (default: 64 128)"
    )
    parser.add_argument("--n", type=int, default=200, help="scenes per resolution (default: 200)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be >= 1")
    for res in args.resolution:
        ips = bench(res, args.n, args.seed)
        print(f"resolution={res:4d}  n={args.n}  {ips:8.1f} images/s  ({1000.0 / ips:6.2f} ms/image)")


if __name__ == "__main__":
    main()
