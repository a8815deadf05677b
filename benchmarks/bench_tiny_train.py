"""Benchmark one training step of the shipped tiny MM-DiT shape with each CPU attention kernel.

``recipes.tiny_mmdit.train.flow_loss`` runs the transformer under ``sdpa_kernel(SDPBackend.MATH)``. At the shipped
shape (64 image + 8 caption tokens, 3 heads of 64, batch 32, bf16 autocast) the fused CPU flash-attention
backward dominated a step; this script times full optimisation steps (forward, backward, clip, AdamW, EMA) with
the math kernel (the training default) and with the flash kernel forced, alternating the two in ``--rounds``
rounds, and prints steps/s and their ratio. Random latents stand in for the encoded pool (time does not
depend on the values).

    python benchmarks/bench_tiny_train.py            # about 95 s on two cores
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import recipes.tiny_mmdit.train as train_mod  # noqa: E402
from recipes.tiny_mmdit.train import Trainer, shipped_config  # noqa: E402

DEFAULT = train_mod.CPU_TRAIN_ATTENTION


def steps_per_s(trainer: Trainer, steps: int, warmup: int, kernel: SDPBackend) -> float:
    train_mod.CPU_TRAIN_ATTENTION = kernel  # read by flow_loss at each step
    try:
        for _ in range(warmup):
            trainer.step()
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        return steps / (time.perf_counter() - t0)
    finally:
        train_mod.CPU_TRAIN_ATTENTION = DEFAULT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    for name in ("steps", "rounds", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    # the shipped run's training config (shape, batch, bf16), its autoencoder found beside the shipped weights
    cfg = dataclasses.replace(shipped_config(), steps=10**6)
    mc = cfg.model_config()
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 1000, mc["in_channels"], mc["sample_size"], mc["sample_size"], generator=g)
    ids = torch.randint(1, 9, (1000, 8), generator=g)
    empty = torch.zeros(0, 3, 64, 64, dtype=torch.uint8)
    rates: dict[str, list[float]] = {"math (default)": [], "flash": []}
    for _ in range(args.rounds):
        for name, kernel in (("math (default)", SDPBackend.MATH), ("flash", SDPBackend.FLASH_ATTENTION)):
            rates[name].append(
                steps_per_s(Trainer(cfg, empty, ids, latents), args.steps, args.warmup, kernel)
            )
    for name, r in rates.items():
        print(f"{name:>15}: " + ", ".join(f"{x:.2f}" for x in r) + " steps/s")
    m, f = (sum(r) / len(r) for r in rates.values())
    print(
        f"math / flash: {m / f:.2f}x (batch {cfg.batch_size}, {args.threads} threads, mean of {args.rounds} rounds)"
    )


if __name__ == "__main__":
    main()
