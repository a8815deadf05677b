"""What one registered diffusion backbone is: :class:`DiffusionSpec`, its VAE configs and text shape.

A family module (``dit.py``, ``mmdit.py``, ...) declares each checkpoint as a spec — the HF ``config.json``
values of its transformer and VAE, a test-sized copy of both, image size, timestep convention, text
conditioning shape and metadata — and registers it with :func:`backbones.diffusion.register_diffusion`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from backbones.base import BackboneMeta


@dataclass(frozen=True)
class TextSpec:
    """Shape of a family's text conditioning: sequence length, embedding width, pooled width (0 = none)."""

    seq_len: int
    dim: int
    pooled_dim: int = 0


# VAE configs (the ``vae/config.json`` of the HF repos, AutoencoderKL). SD3 and FLUX encode (z - shift)·scale.
_KL_VAE_BASE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "act_fn": "silu",
    "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512),
    "norm_num_groups": 32,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}
SD_VAE_CONFIG = {
    **_KL_VAE_BASE,
    "latent_channels": 4,
    "scaling_factor": 0.18215,
}  # sd-vae-ft-ema (DiT, PixArt-α)
SDXL_VAE_CONFIG = {
    **_KL_VAE_BASE,
    "latent_channels": 4,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}  # PixArt-Σ
SD3_VAE_CONFIG = {
    **_KL_VAE_BASE,
    "latent_channels": 16,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
FLUX_VAE_CONFIG = {
    **_KL_VAE_BASE,
    "latent_channels": 16,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}


# the DDPM noise schedule of DiT and PixArt (their schedulers' config values)
LINEAR_BETAS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
}


def tiny_vae_config(full: dict[str, Any]) -> dict[str, Any]:
    """A test-sized copy of a VAE config: same class, latent channels, scaling/shift factors and downsampling
    (8× for AutoencoderKL), with 8 channels per level and one layer per block."""
    cfg = dict(full)
    cfg.update(
        layers_per_block=1,
        block_out_channels=(8,) * len(full["block_out_channels"]),
        norm_num_groups=4,
        sample_size=64,
    )
    return cfg


class DiffusionModules(nn.Module):
    """The frozen modules of a diffusion backbone (exposed as ``adapter.model``): ``.transformer`` and ``.vae``."""

    def __init__(self, transformer: nn.Module, vae: nn.Module):
        super().__init__()
        self.transformer = transformer
        self.vae = vae


@dataclass(frozen=True)
class DiffusionSpec:
    """Everything that defines one registered diffusion backbone (configs are the HF ``config.json`` values)."""

    name: str
    family: str
    hf_id: str
    transformer_cls: str  # diffusers class name
    vae_cls: str
    pipeline_cls: str  # the diffusers pipeline class of the HF repo (its model_index.json ``_class_name``)
    transformer_config: dict[str, Any]
    vae_config: dict[str, Any]
    tiny_transformer_config: dict[str, Any]
    tiny_vae_config: dict[str, Any]
    image_size: int
    tiny_image_size: int
    num_layers: int
    width: int
    patch_size: int
    convention: str  # "ddpm" | "flow"
    text: TextSpec | None = None
    tiny_text: TextSpec | None = None
    revision: str | None = None  # no verified commit hash pinned: None means the repo's main branch
    license: str = ""
    citation: str = ""
    notes: str = ""
    ddpm: dict[str, Any] = field(default_factory=lambda: dict(LINEAR_BETAS))
    flow_timestep_scale: float = 1000.0
    transformer_subfolder: str = "transformer"
    vae_subfolder: str = "vae"
    # the repo's sampler (scheduler/scheduler_config.json): what maps a pipeline's steps to noise levels
    scheduler_cls: str = ""
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def meta(self) -> BackboneMeta:
        return BackboneMeta(
            name=self.name,
            family=self.family,
            source=self.hf_id,
            num_layers=self.num_layers,
            width=self.width,
            patch_size=self.patch_size,
            image_size=self.image_size,
            revision=self.revision,
            timestep_convention=self.convention,
            license=self.license,
            citation=self.citation,
            notes=self.notes,
            extra={
                "vae_scaling_factor": self.vae_config.get("scaling_factor"),
                "vae_shift_factor": self.vae_config.get("shift_factor"),
                "latent_channels": self.vae_config.get("latent_channels"),
                **self.extra,
            },
        )
