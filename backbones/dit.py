"""DiT-XL/2 (Peebles & Xie 2023) through diffusers' ``DiTTransformer2DModel`` + ``AutoencoderKL``.

Class-conditional ImageNet DiT: by default the *null* class (id 1000, the classifier-free-guidance label) so
features are not biased towards a class; ``class_id=<0..999>`` selects one. Timesteps are DDPM t ∈ [0, 999]
with linear betas 1e-4..0.02 (diffusers' DiT conversion: ``DDPMScheduler(beta_schedule="linear")``). The VAE is
``stabilityai/sd-vae-ft-ema`` (4 latent channels, scaling 0.18215, no shift), stored in the repos' ``vae/``.
Layers 0..27 are the 28 ``transformer_blocks`` (width 1152, patch 2: a 256-px image gives a 16×16 map).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from backbones.diffusion import (
    LINEAR_BETAS,
    SD_VAE_CONFIG,
    DiffusionAdapter,
    DiffusionModules,
    DiffusionSpec,
    register_diffusion,
    tiny_vae_config,
)
from probebench.core.errors import ProbebenchError

NULL_CLASS = 1000


def _dit_config(sample_size: int) -> dict[str, Any]:
    return {
        "num_attention_heads": 16,
        "attention_head_dim": 72,
        "in_channels": 4,
        "out_channels": 8,
        "num_layers": 28,
        "sample_size": sample_size,
        "patch_size": 2,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": 1000,
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
    }


TINY_DIT = {
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": 4,
    "out_channels": 8,
    "num_layers": 3,
    "sample_size": 8,
    "patch_size": 2,
    "num_embeds_ada_norm": 1000,
}


class DiTAdapter(DiffusionAdapter):
    """DiT: ``transformer(latents, timestep=t, class_labels=class_id)``; blocks return (N, tokens, C)."""

    def __init__(self, *args: Any, class_id: int = NULL_CLASS, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.class_id = int(class_id)

    @staticmethod
    def block_list(transformer: nn.Module) -> list[nn.Module]:
        return list(transformer.transformer_blocks)

    @classmethod
    def prepare(
        cls,
        spec: DiffusionSpec,
        modules: DiffusionModules,
        *,
        weights: str,
        config: str,
        root: Path | None,
        random_seed: int,
        class_id: int | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        super().prepare(
            spec, modules, weights=weights, config=config, root=root, random_seed=random_seed, **kwargs
        )
        n_classes = int(modules.transformer.config.num_embeds_ada_norm)
        cid = NULL_CLASS if class_id is None else class_id
        if not isinstance(cid, int) or isinstance(cid, bool) or not 0 <= cid <= n_classes:
            raise ProbebenchError(
                f"class_id must be an ImageNet class in 0..{n_classes - 1}, or {n_classes} for the null class; "
                f"got {class_id!r}."
            )
        return {"class_id": cid}

    def run_transformer(self, latents: torch.Tensor, timesteps: torch.Tensor) -> Any:
        labels = torch.full((latents.shape[0],), self.class_id, dtype=torch.long, device=latents.device)
        return self.transformer(latents, timestep=timesteps, class_labels=labels, return_dict=False)

    def conditioning_fingerprint(self) -> dict[str, Any]:
        return {"class_id": self.class_id, "null_class": self.class_id == NULL_CLASS}


def _spec(size: int) -> DiffusionSpec:
    return DiffusionSpec(
        name=f"dit-xl-2-{size}",
        family="dit",
        hf_id=f"facebook/DiT-XL-2-{size}",
        transformer_cls="DiTTransformer2DModel",
        vae_cls="AutoencoderKL",
        pipeline_cls="DiTPipeline",
        transformer_config=_dit_config(size // 8),
        vae_config={**SD_VAE_CONFIG, "sample_size": size},
        tiny_transformer_config=TINY_DIT,
        tiny_vae_config=tiny_vae_config(SD_VAE_CONFIG),
        image_size=size,
        tiny_image_size=64,
        num_layers=28,
        width=1152,
        patch_size=2,
        convention="ddpm",
        license="cc-by-nc-4.0",
        citation="Peebles & Xie, Scalable Diffusion Models with Transformers, ICCV 2023",
        notes=f"DiT-XL/2 {size}px, class-conditional (null class 1000 by default), DDPM t in [0, 999], "
        "VAE sd-vae-ft-ema (scale 0.18215)",
        scheduler_cls="DDIMScheduler",
        scheduler_config={
            **LINEAR_BETAS,
            "clip_sample": False,
        },
        extra={"class_conditioning": "null class 1000 by default; class_id=<0..999>"},
    )


SPECS = {s.name: s for s in (_spec(256), _spec(512))}
for _s in SPECS.values():
    register_diffusion(_s, DiTAdapter, kind="diffusion (DiT)")
