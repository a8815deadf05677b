"""The tiny MM-DiT's autoencoder: a small diffusers ``AutoencoderKL`` trained here on ``scenes``.

    python -m recipes.tiny_mmdit.autoencoder --max-minutes 14        # train, write backbones/tiny/weights/vae.*

Why: a pixel-space DiT spends its capacity on pixel detail and draws blotchy patch mosaics; an autoencoder
hands the detail to a convolutional decoder, so the DiT models a smooth 16×16×4 latent of a 64×64 image (as
SD3/FLUX model 8×-downsampled VAE latents). Factor 4 (64 px → 16×16), 4 latent channels, three encoder/decoder
levels of 32/64/64 channels (0.92 M parameters), one ResNet block per level, GroupNorm of 8 groups, and no
mid-block attention (``mid_block_add_attention=False``), so the autoencoder is fully convolutional.

Training on random 32×32 crops (offsets on the 4-pixel latent grid) instead of whole 64×64 images: a fully
convolutional autoencoder learns the same local code from a quarter of the pixels, and a step costs a quarter as
much. Measured here (2 threads, 4 000 renders, same seed and 2 000 steps): 10.4 steps/s and val L1 0.083 in
3.3 min, against 2.3 steps/s and val L1 0.082 in 14.6 min for whole images with mid-block attention — so the
same minutes buy ~4.5× the steps. A 4× wider model (64/128/128) on crops reached only val L1 0.097 in the same
3.5 min (3.8 steps/s).

Loss: L1 reconstruction of x ∈ [-1, 1] from a posterior *sample* (so the decoder tolerates latent noise) plus
1e-6 · KL (SD's weight: it keeps the latent scale bounded without blurring). AdamW, warmup + cosine, bf16
autocast, one seeded ``torch.Generator`` for batches, flips and posterior samples. After training, the latent
``shift_factor`` and ``scaling_factor`` (SD3/FLUX convention: z = (mean − shift) · scaling has zero mean and unit
variance over the pool) are written into the model config, so diffusers-style code encodes with them.

``--se-weight`` adds the scale-equivariance loss of Skorokhodov et al. 2025 (the 2×-pooled latent must decode to
the 2×-pooled image): a latent with less high-frequency energy (measured: 22 % vs 35 % of it at ≥ ¼ cycle/cell),
worse reconstructions and, for the shipped DiT recipe, worse samples — off by default (``recipes/tiny_mmdit/README.md``).

Outputs in ``--out``: ``vae.safetensors`` (fp16 parameters, fp32 buffers; the diffusers config and the training
settings in the metadata), ``vae_loss.csv`` and ``vae_recon.png`` (val images over their reconstructions).
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from backbones.diffusion import vae_downsample
from backbones.tiny.model import VAE_NAME, WEIGHTS_DIR, build_vae, save_vae, vae_config
from recipes.tiny_mmdit.train import image_grid, render_pool, save_png, to_model_space, warmup_cosine


@dataclass
class VAEConfig:
    """Every setting that changes the trained autoencoder."""

    seed: int = 0
    resolution: int = 64
    channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    mid_attention: bool = False
    crop: int = 32  # train on random crops of this size (on the latent grid); = resolution: whole images
    pool_size: int = 20000
    data_seed: int = 0
    val_images: int = 64
    batch_size: int = 32
    steps: int = 8000
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.05
    kl_weight: float = 1e-6
    # scale-equivariance regulariser (Skorokhodov et al. 2025, "Improving the Diffusability of Autoencoders"):
    # weight of L1(decode(avgpool₂(z)), avgpool₂(x)); 0 = off
    se_weight: float = 0.0
    bf16: bool = True


@torch.no_grad()
def latent_factors(vae: nn.Module, images_u8: torch.Tensor, batch: int = 256) -> tuple[float, float]:
    """(shift, scaling) with (mean − shift) · scaling of zero mean and unit std over ``images_u8`` (posterior
    means, float32, as the DiT's training pool and the adapter encode)."""
    z = torch.cat(
        [
            vae.encode(to_model_space(images_u8[i : i + batch])).latent_dist.mean
            for i in range(0, len(images_u8), batch)
        ]
    )
    return float(z.mean()), float(1.0 / z.std())


def crop_offsets(gen: torch.Generator, resolution: int, crop: int, factor: int) -> tuple[int, int]:
    """(row, column) of a random crop×crop window in a resolution² image, both multiples of ``factor`` (so
    the crop's latent cells are the image's)."""
    oy, ox = (torch.randint(0, (resolution - crop) // factor + 1, (2,), generator=gen) * factor).tolist()
    return oy, ox


def train_vae(
    cfg: VAEConfig, out: Path, max_minutes: float, threads: int = 2, stop_at_step: int | None = None
) -> nn.Module:
    """Train, measure the latent factors and write ``out``/vae.*; stops at ``cfg.steps``, at the wall budget or
    at ``stop_at_step`` (to replay a run that the clock stopped: the schedule still spans ``cfg.steps``)."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    deadline = t0 + max_minutes * 60.0
    arch = vae_config(cfg.resolution, cfg.channels, cfg.latent_channels, cfg.mid_attention)
    factor = vae_downsample(arch)
    if cfg.crop % factor or not factor <= cfg.crop <= cfg.resolution:
        raise ValueError(
            f"crop {cfg.crop} must be a multiple of the downsampling factor {factor} from {factor} to the resolution {cfg.resolution}"
        )
    out.mkdir(parents=True, exist_ok=True)
    images, _ = render_pool("train", cfg.pool_size, cfg.resolution, cfg.data_seed, log=True)
    val, _ = render_pool("val", cfg.val_images, cfg.resolution, cfg.data_seed)
    vae = build_vae(arch, seed=cfg.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    rows, window, step = [], [], 0
    t_train = time.perf_counter()
    vae.train()
    last = cfg.steps if stop_at_step is None else min(cfg.steps, stop_at_step)
    while step < last and time.perf_counter() < deadline:
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr_ratio)
        idx = torch.randint(images.shape[0], (cfg.batch_size,), generator=gen)
        x = to_model_space(images[idx])
        flip = torch.rand(cfg.batch_size, generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if cfg.crop < cfg.resolution:  # one crop window per batch, on the latent grid
            oy, ox = crop_offsets(gen, cfg.resolution, cfg.crop, factor)
            x = x[:, :, oy : oy + cfg.crop, ox : ox + cfg.crop]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
            rec = vae.decode(z).sample
            if cfg.se_weight > 0:  # the half-resolution latent must decode to the half-resolution image
                rec_half = vae.decode(nn.functional.avg_pool2d(z, 2)).sample
        l1 = (rec.float() - x).abs().mean()
        kl = post.kl().float().mean()
        loss = l1 + cfg.kl_weight * kl
        if cfg.se_weight > 0:
            loss = loss + cfg.se_weight * (rec_half.float() - nn.functional.avg_pool2d(x, 2)).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        window.append(float(l1.detach()))
        if step % 25 == 0:
            rows.append(
                {
                    "step": step,
                    "wall_s": f"{time.perf_counter() - t_train:.1f}",
                    "l1": f"{sum(window) / len(window):.5f}",
                }
            )
            window.clear()
            print(
                f"vae step {step} l1 {rows[-1]['l1']} ({step / (time.perf_counter() - t_train):.2f} steps/s)",
                flush=True,
            )
    wall = time.perf_counter() - t_train
    vae.eval()
    for p in vae.parameters():  # the factors are measured on the weights as shipped (fp16-rounded)
        p.data = p.data.half().float()
    shift, scaling = latent_factors(vae, images[:2048])
    vae.register_to_config(shift_factor=shift, scaling_factor=scaling)
    xv = to_model_space(val)
    with torch.no_grad():
        rec = vae.decode(vae.encode(xv).latent_dist.mean).sample.float()
    val_l1 = float((rec - xv).abs().mean())
    extra = {"training": asdict(cfg), "steps_done": step, "wall_time_s": round(wall, 1), "val_l1": val_l1}
    save_vae(out / VAE_NAME, vae, extra)
    with open(out / "vae_loss.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "wall_s", "l1"])
        w.writeheader()
        w.writerows(rows)
    pair = torch.cat([val[:16].float() / 255.0, ((rec[:16] + 1) / 2).clamp(0, 1)])
    save_png(out / "vae_recon.png", image_grid(pair, nrow=16, scale=2))
    print(
        f"vae: {step} steps in {wall / 60:.1f} min, val L1 {val_l1:.4f} (on [-1, 1]), shift {shift:.4f}, scaling {scaling:.4f}",
        flush=True,
    )
    return vae


def channel_list(text: str) -> tuple[int, ...]:
    """``--channels`` value: comma-separated integers, e.g. ``32,64,64``."""
    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 32,64,64, got {text!r}"
        ) from None


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output directory (default: %(default)s)")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=14.0,
        help="wall budget of this invocation, rendering included (default: %(default)s)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument(
        "--steps", type=int, default=VAEConfig.steps, help="optimisation steps (default: %(default)s)"
    )
    p.add_argument(
        "--pool-size",
        type=int,
        default=VAEConfig.pool_size,
        help="train renders in memory (default: %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=VAEConfig.seed, help="seed of init and batches (default: %(default)s)"
    )
    p.add_argument(
        "--crop",
        type=int,
        default=VAEConfig.crop,
        help="train on random crops of this size; 64 = whole images (default: %(default)s)",
    )
    p.add_argument(
        "--channels",
        type=channel_list,
        default=VAEConfig.channels,
        help="channels per level, comma-separated; downsampling 2^(levels − 1) (default: 32,64,64)",
    )
    p.add_argument(
        "--latent-channels",
        type=int,
        default=VAEConfig.latent_channels,
        help="latent channels (default: %(default)s)",
    )
    p.add_argument(
        "--se-weight",
        type=float,
        default=VAEConfig.se_weight,
        help="weight of the scale-equivariance loss (decode the 2x-pooled latent to the 2x-pooled image); "
        "0 = off (default: %(default)s)",
    )
    p.add_argument(
        "--stop-at-step",
        type=int,
        help="stop here, the cosine schedule still spanning --steps (replays a run stopped by the clock)",
    )
    a = p.parse_args(argv)
    if a.se_weight < 0:
        p.error(f"--se-weight must be ≥ 0, got {a.se_weight}")
    if min(a.channels) < 1 or len(a.channels) < 2:
        p.error(f"--channels must be ≥ 2 positive counts (one level per entry), got {a.channels}")
    for name in ("steps", "pool_size", "threads", "stop_at_step", "latent_channels"):  # None = not given
        value = getattr(a, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    try:
        cfg = VAEConfig(
            seed=a.seed,
            steps=a.steps,
            pool_size=a.pool_size,
            crop=a.crop,
            se_weight=a.se_weight,
            channels=a.channels,
            latent_channels=a.latent_channels,
        )
        train_vae(cfg, a.out, a.max_minutes, a.threads, a.stop_at_step)
    except ValueError as e:
        p.error(str(e))


if __name__ == "__main__":
    main()
