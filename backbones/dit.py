"""DiT-XL/2 (Peebles & Xie 2023) through diffusers' ``DiTTransformer2DModel`` + ``AutoencoderKL``.

Class-conditional ImageNet DiT: by default the *null* class (id 1000, the classifier-free-guidance label) so
features are not biased towards a class; ``class_id=<0..999>`` selects one. Timesteps are DDPM t ∈ [0, 999]
with linear betas 1e-4..0.02 (diffusers' DiT conversion: ``DDPMScheduler(beta_schedule="linear")``). The VAE is
``stabilityai/sd-vae-ft-ema`` (4 latent channels, scaling 0.18215, no shift), stored in the repos' ``vae/``.
Layers 0..27 are the 28 ``transformer_blocks`` (width 1152, patch 2: a 256-px image gives a 16×16 map).
"""

from __future__ import annotations

from collections.abc import Sequence
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

    def sample_condition(self, prompt: str) -> int:
        """``probebench generate``'s prompt for DiT: an ImageNet class id (``"207"``); the empty prompt is the
        adapter's own class (the null class by default)."""
        if not prompt.strip():
            return self.class_id
        n_classes = int(self.transformer.config.num_embeds_ada_norm)
        try:
            cid = int(prompt)
        except ValueError:
            cid = -1
        if not 0 <= cid < n_classes:
            raise ProbebenchError(
                f"{self.name} is class-conditional: a prompt must be an ImageNet class id in 0..{n_classes - 1}, "
                f"got {prompt!r}."
            )
        return cid

    def run_transformer(self, latents: torch.Tensor, timesteps: torch.Tensor) -> Any:
        labels = torch.full((latents.shape[0],), self.class_id, dtype=torch.long, device=latents.device)
        return self.transformer(latents, timestep=timesteps, class_labels=labels, return_dict=False)

    def conditioning_fingerprint(self) -> dict[str, Any]:
        return {"class_id": self.class_id, "null_class": self.class_id == NULL_CLASS}

    # -- sampling: DiTPipeline's loop with a schedule and initial noise ------------------------------------------
    def sampling_pipeline(self) -> Any:
        """:class:`DiTPipelineWithSchedule` around diffusers' ``DiTPipeline`` (its transformer, VAE and a
        DPM-Solver++ scheduler on the adapter's betas, :func:`~backbones.diffusion.sampling.ddpm_scheduler`)."""
        from diffusers import DiTPipeline

        from backbones.diffusion.sampling import ddpm_scheduler

        pipe = DiTPipeline(transformer=self.transformer, vae=self.model.vae, scheduler=ddpm_scheduler(self))
        pipe.set_progress_bar_config(disable=True)
        return DiTPipelineWithSchedule(pipe)

    def sampling_arguments(
        self, conditioning: Sequence[int] | None, guidance: float, negative: Any | None, n: int
    ) -> dict[str, Any]:
        """Per-sample ImageNet class ids (default: the adapter's ``class_id``); classifier-free guidance is
        against the null class, as in DiTPipeline, so there is no other negative."""
        if negative is not None:
            raise ProbebenchError(
                f"{self.name} guides against the null class {NULL_CLASS} (as DiTPipeline does); it takes no "
                "negative conditioning."
            )
        labels = [self.class_id] * n if conditioning is None else list(conditioning)
        if len(labels) != n:
            raise ProbebenchError(f"{len(labels)} class ids for {n} samples.")
        n_classes = int(self.transformer.config.num_embeds_ada_norm)
        for c in labels:
            if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c <= n_classes:
                raise ProbebenchError(
                    f"{self.name} is conditioned per sample on ImageNet class ids in 0..{n_classes} "
                    f"({n_classes}: the null class), got {c!r}."
                )
        return {"class_labels": labels, "guidance_scale": guidance}

    def sampling_rows(self, call: int, rows: int, n: int) -> slice | None:
        """DiTPipeline's guided batch is [conditional; null class]."""
        return slice(0, n) if call == 0 else None


class DiTPipelineWithSchedule:
    """The denoising loop of diffusers' ``DiTPipeline.__call__``, line for line, with the two inputs it does not
    take: the initial noise (``latents=``; DiTPipeline draws its own from a generator, so a sample's noise could
    not be the project's per-sample ``draw_noise``) and the schedule (``timesteps=``; DiTPipeline calls
    ``scheduler.set_timesteps(num_inference_steps)`` only, so the head timesteps could not be inserted). It has no
    callback either, which the feature hooks do not need. The transformer, VAE and scheduler are the wrapped
    pipeline's; DiT's registered scheduler, DDIM, steps by a fixed ``1000 // steps`` and so cannot take an
    uneven schedule: the scheduler is DPM-Solver++ on the same betas (DiTPipeline's own usage example swaps it in
    the same way). Given DiTPipeline's own noise, scheduler and timesteps, the two give the same images bit for
    bit, guided or not (``tests/test_sampling.py``)."""

    def __init__(self, pipe: Any):
        self.pipe = pipe
        self.scheduler = pipe.scheduler
        self.transformer = pipe.transformer
        self.vae = pipe.vae

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Sequence[int],
        guidance_scale: float = 4.0,
        *,
        latents: torch.Tensor,
        timesteps: Sequence[int],
        height: int | None = None,
        width: int | None = None,
        output_type: str = "latent",
    ) -> Any:
        """Sample from ``latents`` (B, C, h, w) on ``timesteps``; ``output_type="latent"``: the final latents as
        ``.images``, else DiTPipeline's decoded [0, 1] images (B, 3, H, W)."""
        from diffusers import ImagePipelineOutput

        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        size = latents.shape[-1] * factor
        if (height or size) != size or (width or size) != size:
            raise ProbebenchError(
                f"DiT latents of side {latents.shape[-1]} give {size}px images, not {height}x{width}."
            )
        device = self.pipe._execution_device
        batch_size = len(class_labels)
        latent_channels = self.transformer.config.in_channels
        latents = latents.to(device=device, dtype=self.transformer.dtype)
        latent_model_input = torch.cat([latents] * 2) if guidance_scale > 1 else latents
        labels = torch.tensor(class_labels, device=device).reshape(-1)
        class_null = torch.tensor([NULL_CLASS] * batch_size, device=device)
        class_labels_input = torch.cat([labels, class_null], 0) if guidance_scale > 1 else labels
        self.scheduler.set_timesteps(timesteps=list(timesteps))
        for t in self.pipe.progress_bar(self.scheduler.timesteps):
            if guidance_scale > 1:
                half = latent_model_input[: len(latent_model_input) // 2]
                latent_model_input = torch.cat([half, half], dim=0)
            latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
            step_t = t[None].to(latent_model_input.device) if t.ndim == 0 else t
            step_t = step_t.expand(latent_model_input.shape[0])
            noise_pred = self.transformer(
                latent_model_input, timestep=step_t, class_labels=class_labels_input
            ).sample
            if guidance_scale > 1:
                eps, rest = noise_pred[:, :latent_channels], noise_pred[:, latent_channels:]
                cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
                half_eps = uncond_eps + guidance_scale * (cond_eps - uncond_eps)
                eps = torch.cat([half_eps, half_eps], dim=0)
                noise_pred = torch.cat([eps, rest], dim=1)
            if self.transformer.config.out_channels // 2 == latent_channels:  # learned sigma
                model_output, _ = torch.split(noise_pred, latent_channels, dim=1)
            else:
                model_output = noise_pred
            latent_model_input = self.scheduler.step(model_output, t, latent_model_input).prev_sample
        latents = latent_model_input.chunk(2, dim=0)[0] if guidance_scale > 1 else latent_model_input
        if output_type == "latent":
            return ImagePipelineOutput(images=latents)
        samples = self.vae.decode(1 / self.vae.config.scaling_factor * latents).sample
        return ImagePipelineOutput(images=(samples / 2 + 0.5).clamp(0, 1))


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
