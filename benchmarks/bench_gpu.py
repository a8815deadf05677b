"""GPU extraction benchmark: real-size random-weight diffusion transformers in bf16, through the real adapter.

For each model (default DiT-XL/2 256 and 512 px and FLUX.1-dev at 1024 px = 64×64 tokens; random weights at
full size, ``backbones.create(name, weights="random", dtype="bfloat16", device="cuda")``) one compute batch of
random images is extracted with ``adapter.extract(images, layers, timesteps)``, and the script prints:

- images/s: batch ÷ the median seconds of one extraction (after warm-up; the device synchronised around each)
- TFLOP/s: the FLOPs of one extraction (``torch.utils.flop_counter.FlopCounterMode``: matmuls, convolutions and
  attention, VAE encoding included) ÷ that median time
- MFU: TFLOP/s ÷ the card's peak dense bf16 TFLOP/s (:data:`PEAK_BF16_TFLOPS` by device name, or --peak-tflops)
- peak VRAM: ``torch.cuda.max_memory_allocated`` during the timed extractions (weights included)
- extraction ÷ bare forward: the median, over alternating pairs, of ``adapter.extract`` ÷ ``adapter.bare_forward``
  (VAE + ONE full transformer forward over every (image, timestep), no hooks, nothing copied back)

No speed target here: the numbers depend on the card. The default layers are four blocks evenly spread up to the
last one (so extraction runs the whole transformer, as the bare forward does) and the family's default timesteps
(4). On the CPU, attention FLOPs are not counted (PyTorch's counter knows only the GPU attention kernels).

Usage: python benchmarks/bench_gpu.py [--models dit-xl-2-256,dit-xl-2-512,flux.1-dev] [--batch 8]
           [--image-size PX] [--layers 0,13,27] [--timesteps 250,500] [--repeat 5] [--markdown] [--json FILE]
       python benchmarks/bench_gpu.py --tiny --device cpu --peak-tflops 1    # smoke run: seconds on a CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import backbones  # noqa: E402
from probebench.core.errors import ProbebenchError  # noqa: E402

DEFAULT_MODELS = ("dit-xl-2-256", "dit-xl-2-512", "flux.1-dev")
# peak dense (no sparsity) bf16 tensor-core TFLOP/s from the vendors' data sheets, matched in order against
# torch.cuda.get_device_name() (e.g. "NVIDIA H100 80GB HBM3" is the SXM card)
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
)
MARKDOWN_COLUMNS = (
    "card",
    "model",
    "px",
    "batch",
    "images/s",
    "TFLOP/s",
    "MFU",
    "peak VRAM",
    "extraction ÷ bare",
)


def card_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"


def peak_tflops(card: str, override: float | None) -> float | None:
    """The card's peak dense bf16 TFLOP/s: ``override`` when given, else the table's first match, else None."""
    if override is not None:
        return override
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key.lower() in card.lower()), None)


def spread_layers(num_layers: int, count: int = 4) -> list[int]:
    """``count`` block indices evenly spread over the model, the last block included."""
    count = min(count, num_layers)
    return sorted({round((i + 1) * num_layers / count) - 1 for i in range(count)})


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, the GPU attention kernels), as PyTorch counts them."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def free_device_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bench_model(name: str, args: argparse.Namespace, device: torch.device, card: str) -> dict[str, Any]:
    """Build one model with random weights, measure it and free its memory; returns one result row."""
    kwargs: dict[str, Any] = {"compute_batch": args.batch}
    if args.tiny:
        kwargs["config"] = "tiny"
    if args.image_size:
        kwargs["image_size"] = args.image_size
    synchronize(device)
    t0 = time.perf_counter()
    adapter = backbones.create(name, weights="random", device=device, dtype=args.dtype, **kwargs)
    synchronize(device)
    build_s = time.perf_counter() - t0
    try:
        return measure(adapter, args, device, card) | {"build_s": build_s}
    finally:
        del adapter
        free_device_memory()


def measure(adapter: Any, args: argparse.Namespace, device: torch.device, card: str) -> dict[str, Any]:
    """Time, count and compare one adapter's extraction (see the module docstring): one result row."""
    name = adapter.name
    if not hasattr(adapter, "bare_forward"):
        raise ProbebenchError(
            f"{name} has no bare_forward: bench_gpu measures diffusion backbones (extraction ÷ bare forward)."
        )
    layers = adapter.resolve_layers(args.layers) if args.layers else spread_layers(adapter.num_layers)
    timesteps = adapter.resolve_timesteps(args.timesteps)
    px = adapter.image_size
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.rand(args.batch, 3, px, px, generator=gen)  # on the CPU, as the feature store passes them

    def extract() -> None:
        adapter.extract(images, layers=layers, timesteps=timesteps)

    def bare() -> None:
        adapter.bare_forward(images, timesteps)

    for _ in range(args.warmup):
        extract()
        bare()
    flops = count_flops(extract)
    pairs = []  # (extract s, bare s), alternating so drifts of the card's clock hit both alike
    peak_vram = None
    for _ in range(args.repeat):
        b = timed(bare, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        pairs.append((timed(extract, device), b))
        if device.type == "cuda":  # the extraction's peak (the bare forward keeps no features)
            peak_vram = max(peak_vram or 0.0, torch.cuda.max_memory_allocated(device) / 2**30)
    extract_s = statistics.median(e for e, _ in pairs)
    ratios = sorted(e / b for e, b in pairs)
    tflops = flops / extract_s / 1e12
    peak = peak_tflops(card, args.peak_tflops)
    return {
        "card": card,
        "model": name,
        "config": "tiny" if args.tiny else "full",
        "weights": "random",
        "dtype": str(adapter.dtype).removeprefix("torch."),
        "params_M": sum(p.numel() for p in adapter.transformer.parameters()) / 1e6,
        "px": px,
        "tokens": "x".join(map(str, adapter.token_grid((px // adapter.vae_factor,) * 2))),
        "batch": args.batch,
        "layers": layers,
        "timesteps": timesteps,
        "extract_s": extract_s,
        "bare_s": statistics.median(b for _, b in pairs),
        "images_per_s": args.batch / extract_s,
        "flops_per_batch": flops,
        "tflops": tflops,
        "peak_tflops": peak,
        "mfu": tflops / peak if peak else None,
        "peak_vram_gib": peak_vram,
        "extract_over_bare": statistics.median(ratios),
        "extract_over_bare_range": [ratios[0], ratios[-1]],
    }


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:{spec}}{suffix}"


def markdown_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The README table (header, rule, one line per row)."""
    lines = ["| " + " | ".join(MARKDOWN_COLUMNS) + " |", "|" + "---|" * len(MARKDOWN_COLUMNS)]
    for r in rows:
        mfu = None if r["mfu"] is None else 100 * r["mfu"]
        cells = (
            r["card"],
            r["model"] + (" (tiny)" if r["config"] == "tiny" else ""),
            str(r["px"]),
            str(r["batch"]),
            _fmt(r["images_per_s"], ".3g"),
            _fmt(r["tflops"], ".3g"),
            _fmt(mfu, ".1f", " %"),
            _fmt(r["peak_vram_gib"], ".1f", " GiB"),
            _fmt(r["extract_over_bare"], ".3f"),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated backbone names")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch", type=int, default=8, help="images per extraction (the adapter's compute_batch)")
    p.add_argument("--image-size", type=int, default=None, help="pixels (default: each model's own)")
    p.add_argument("--layers", default=None, help="as adapter.extract takes them (default: 4 spread blocks)")
    p.add_argument("--timesteps", default=None, help="comma list in native units (default: the family's)")
    p.add_argument("--warmup", type=int, default=1, help="untimed (extraction, bare forward) pairs first")
    p.add_argument("--repeat", type=int, default=5, help="timed (bare forward, extraction) pairs; medians")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak-tflops", type=float, default=None, help="the card's peak dense bf16 TFLOP/s")
    p.add_argument("--tiny", action="store_true", help="test-sized configs (config='tiny'): a smoke run")
    p.add_argument("--markdown", action="store_true", help="print the README table rows")
    p.add_argument(
        "--json", type=Path, default=None, help="also write the rows to this file (after each model)"
    )
    args = p.parse_args(argv)
    for opt in ("batch", "repeat"):
        if getattr(args, opt) < 1:
            p.error(f"--{opt} must be at least 1, got {getattr(args, opt)}")
    if args.warmup < 0:
        p.error(f"--warmup must be at least 0, got {args.warmup}")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; print the rows as JSON (and the README table with --markdown); return the rows."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ProbebenchError(
            "No CUDA device: bench_gpu measures a GPU (for a smoke run on the CPU: --tiny --device cpu)."
        )
    card = card_name(device)
    if device.type == "cuda" and peak_tflops(card, args.peak_tflops) is None:
        print(
            f"note: no peak bf16 TFLOP/s known for {card!r}; pass --peak-tflops for the MFU", file=sys.stderr
        )
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        rows.append(bench_model(name, args, device, card))
        print(json.dumps(rows[-1]), flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    if args.markdown:
        print("\n".join(markdown_rows(rows)))
    return rows


if __name__ == "__main__":
    main()
