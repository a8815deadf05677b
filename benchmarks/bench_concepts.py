"""Concept-map cost (issue 24): extracting concept maps for C concepts ÷ plain extraction of the same blocks —
target ≤ 1 + 0.05·C — measured in one run on the embedded tiny-mmdit (CPU).

Both arms call ``extract`` on the same images, layers, timesteps, seed and noise draws: the plain adapter (image
features of every requested layer) and ``concept_maps(adapter, words[:C])`` (the same forward with the concept
stream attached, maps of every requested layer). Interleaved repetitions (plain, concepts, plain, ...) after a
warm-up; the median ratio per C and its range are printed, with the settings.

Usage: python benchmarks/bench_concepts.py [--images 16] [--threads 1] [--repeat 7] [--timesteps 0.3 0.6]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import backbones  # noqa: E402
from backbones.diffusion.concepts import concept_maps  # noqa: E402

WORDS = ["sphere", "box", "cylinder", "cone", "torus", "floor", "wall", "background"]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--timesteps", type=float, nargs="+", default=[0.3, 0.6])
    p.add_argument("--concepts", type=int, nargs="+", default=[1, 2, 4, 8])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = backbones.create("tiny-mmdit", dtype="float32")
    images = torch.rand(
        args.images, 3, base.image_size, base.image_size, generator=torch.Generator().manual_seed(0)
    )
    layers = list(range(base.meta.num_layers))

    def plain() -> None:
        base.extract(images, layers, args.timesteps, seed=0)

    out = {
        "settings": {
            **vars(args),
            "torch": torch.__version__,
            "cpus": __import__("os").cpu_count(),
            "machine": platform.machine(),
            "layers": layers,
        },
        "ratios": {},
    }
    for c in args.concepts:
        cm = concept_maps(base, WORDS[:c])

        def maps(cm=cm) -> None:
            cm.extract(images, layers, args.timesteps, seed=0)

        plain(), maps()  # warm-up
        ratios = []
        for _ in range(args.repeat):
            a, b = timed(plain), timed(maps)
            ratios.append(b / a)
        med = float(np.median(ratios))
        out["ratios"][c] = {
            "median": med,
            "min": float(min(ratios)),
            "max": float(max(ratios)),
            "bound": 1 + 0.05 * c,
        }
        print(
            f"C={c}: concept maps / plain extraction {med:.3f} (range {min(ratios):.3f}-{max(ratios):.3f}; "
            f"bound 1 + 0.05·C = {1 + 0.05 * c:.2f}) {'ok' if med <= 1 + 0.05 * c else 'ABOVE the bound'}"
        )
    print(json.dumps(out, indent=1))
    print(
        f"settings: tiny-mmdit float32, {args.images} images, all {len(layers)} layers, timesteps {args.timesteps}, "
        f"threads {args.threads}, torch {torch.__version__}"
    )
    return out


if __name__ == "__main__":
    main()
