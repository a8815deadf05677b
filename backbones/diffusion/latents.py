"""Latents: images to model latents through the VAE, and FLUX's 2×2 latent packing.

Encoding is deterministic (the VAE posterior *mean*, never a sample) and uses the VAE's own config for the
(z − shift)·scale normalisation, so the adapter and the tiny model's training read latents the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from probebench.core.errors import ProbebenchError


def vae_factors(vae: nn.Module) -> tuple[float, float]:
    """(scaling_factor, shift_factor) from the VAE's own config (shift 0 when the config has none)."""
    cfg = vae.config
    scale = float(getattr(cfg, "scaling_factor", None) or 1.0)
    shift = getattr(cfg, "shift_factor", None)
    return scale, float(shift) if shift is not None else 0.0


def vae_downsample(vae: nn.Module | Mapping[str, Any]) -> int:
    """Spatial compression of a diffusers VAE (8 for AutoencoderKL with 4 levels, 32 for DC-AE f32), from the
    module or its config (e.g. a config dict read off a weights file before the module is built)."""
    cfg = vae.config if isinstance(vae, nn.Module) else vae
    # AutoencoderDC names its encoder's levels; both down-sample once per level but the last
    channels = cfg.get("encoder_block_out_channels") or cfg["block_out_channels"]
    return 2 ** (len(channels) - 1)


def encode_latents(vae: nn.Module, images01: torch.Tensor) -> torch.Tensor:
    """[0, 1] images → model latents: VAE posterior *mean* (no sampling), then (z − shift)·scale."""
    x = images01.to(dtype=next(vae.parameters()).dtype) * 2.0 - 1.0
    out = vae.encode(x)
    dist = getattr(out, "latent_dist", None)
    z = dist.mean if dist is not None else out.latent  # AutoencoderKL posterior mean; DC-AE is deterministic
    scale, shift = vae_factors(vae)
    return ((z.float() - shift) * scale).float()


def pack_latents_2x2(z: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) → (N, H/2·W/2, 4C): FLUX packing of 2×2 latent patches, row-major, channel-major per patch."""
    n, c, h, w = z.shape
    if h % 2 or w % 2:
        raise ProbebenchError(f"FLUX latents need even height and width, got {h}x{w}.")
    return z.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // 2) * (w // 2), c * 4)


def unpack_latents_2x2(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents_2x2` for a latent of height ``h`` and width ``w``."""
    n, _, c4 = tokens.shape
    c = c4 // 4
    return tokens.view(n, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


def latent_image_ids(h: int, w: int, device: Any = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """FLUX image position ids (h·w, 3): (0, row, column) for a grid of h×w packed tokens."""
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(h * w, 3).to(device=device, dtype=dtype)
