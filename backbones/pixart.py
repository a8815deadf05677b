"""PixArt-Σ and PixArt-α through diffusers' ``PixArtTransformer2DModel`` (28 blocks, width 1152, patch 2).

DDPM-style discrete timesteps t ∈ [0, 999], linear betas 1e-4..0.02 (the repos' DPM-Solver scheduler config;
read from ``scheduler/scheduler_config.json`` when real weights are on disk). Text conditioning: T5-XXL
embeddings (width 4096) with an attention mask — 300 tokens for Σ, 120 for α; the empty prompt by default.
VAEs: Σ uses the SDXL VAE (scaling 0.13025), α ``sd-vae-ft-ema`` (0.18215); 4 latent channels, no shift.

Micro-conditions: PixArt-α 1024 (``sample_size`` 128) was trained with resolution and aspect-ratio embeddings;
the transformer then needs ``added_cond_kwargs`` — we pass the (square) input size in pixels and aspect ratio
1.0, as diffusers' PixArt-α pipeline does. PixArt-Σ and α-512 have none (``use_additional_conditions`` false).
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
    SDXL_VAE_CONFIG,
    DiffusionSpec,
    TextConditionedAdapter,
    TextConditioning,
    TextSpec,
    load_text_pipeline,
    register_diffusion,
    tiny_vae_config,
)
from probebench.core.errors import ProbebenchError


class PixArtAdapter(TextConditionedAdapter):
    """PixArt: ``transformer(latents, encoder_hidden_states, timestep, added_cond_kwargs, encoder_attention_mask)``."""

    text_subfolders = ("text_encoder", "tokenizer")
    pipeline_cls = "PixArtSigmaPipeline"

    @staticmethod
    def block_list(transformer: nn.Module) -> list[nn.Module]:
        return list(transformer.transformer_blocks)

    @classmethod
    def text_dims(cls, transformer: nn.Module) -> tuple[int, int]:
        return int(transformer.config.caption_channels), 0

    @classmethod
    def encode_prompt(
        cls, folder: Path, prompt: str, text: TextSpec, *, device: torch.device, dtype: torch.dtype
    ) -> TextConditioning:
        pipe = load_text_pipeline(cls.pipeline_cls, folder, device, dtype)
        with torch.inference_mode():
            embeds, mask, _, _ = pipe.encode_prompt(
                prompt,
                do_classifier_free_guidance=False,
                device=device,
                clean_caption=False,
                max_sequence_length=text.seq_len,
            )
        del pipe
        return TextConditioning(embeds.float().cpu(), None, mask.cpu(), source="pixart:encode_prompt")

    def added_conditions(self, n: int) -> dict[str, torch.Tensor | None]:
        if not getattr(self.transformer, "use_additional_conditions", False):
            return {"resolution": None, "aspect_ratio": None}
        res = torch.tensor([[self.image_size, self.image_size]], dtype=torch.float32, device=self.device)
        ratio = torch.ones(1, 1, dtype=torch.float32, device=self.device)
        dtype = self.transformer.dtype
        return {"resolution": res.expand(n, -1).to(dtype), "aspect_ratio": ratio.expand(n, -1).to(dtype)}

    def run_transformer(self, latents: torch.Tensor, timesteps: torch.Tensor) -> Any:
        n = latents.shape[0]
        ctx, _, mask = self.text_inputs(n)
        return self.transformer(
            latents,
            encoder_hidden_states=ctx,
            timestep=timesteps,
            added_cond_kwargs=self.added_conditions(n),
            encoder_attention_mask=mask,
            return_dict=False,
        )

    def conditioning_fingerprint(self) -> dict[str, Any]:
        micro = bool(getattr(self.transformer, "use_additional_conditions", False))
        return {
            **super().conditioning_fingerprint(),
            "micro_conditions": {"resolution": self.image_size, "aspect_ratio": 1.0} if micro else None,
        }

    # -- sampling: PixArtSigmaPipeline / PixArtAlphaPipeline ---------------------------------------------------
    def sampling_pipeline(self) -> Any:
        """The family's pipeline with DPM-Solver++ on the adapter's betas taking the planned DDPM timesteps as
        given (``timesteps=``; :func:`~backbones.diffusion.sampling.ddpm_scheduler`)."""
        import diffusers

        from backbones.diffusion.sampling import ddpm_scheduler

        cfg = self.transformer.config
        micro = bool(getattr(self.transformer, "use_additional_conditions", False))
        if self.pipeline_cls == "PixArtAlphaPipeline" and micro != (cfg.sample_size == 128):
            raise ProbebenchError(
                f"{self.name}: PixArtAlphaPipeline gives the transformer resolution/aspect-ratio micro-conditions "
                f"exactly when its sample_size is 128; this transformer has sample_size {cfg.sample_size} and "
                f"use_additional_conditions {micro}, so the pipeline would not condition it as extraction does."
            )
        pipe = getattr(diffusers, self.pipeline_cls)(
            tokenizer=None,
            text_encoder=None,
            transformer=self.transformer,
            vae=self.model.vae,
            scheduler=ddpm_scheduler(self),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def sampling_arguments(
        self,
        conditioning: Sequence[TextConditioning] | None,
        guidance: float,
        negative: TextConditioning | None,
        n: int,
    ) -> dict[str, Any]:
        """Classifier-free guidance (``guidance_scale``, batch [negative; conditional]); no resolution binning,
        so the pipeline samples at the adapter's image size."""
        args = self.sampling_prompt_arguments(conditioning, guidance, negative, n, mask=True)
        # negative_prompt: the pipeline's default "" may not come with negative_prompt_embeds
        return {**args, "negative_prompt": None, "guidance_scale": guidance, "use_resolution_binning": False}


class PixArtAlphaAdapter(PixArtAdapter):
    pipeline_cls = "PixArtAlphaPipeline"


def _pixart_config(sample_size: int, interpolation_scale: float, micro: bool) -> dict[str, Any]:
    return {
        "num_attention_heads": 16,
        "attention_head_dim": 72,
        "in_channels": 4,
        "out_channels": 8,
        "num_layers": 28,
        "cross_attention_dim": 1152,
        "sample_size": sample_size,
        "patch_size": 2,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": 1000,
        "norm_type": "ada_norm_single",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
        "caption_channels": 4096,
        "interpolation_scale": interpolation_scale,
        "use_additional_conditions": micro,
    }


def _tiny(micro: bool) -> dict[str, Any]:
    # width 48: the resolution/aspect micro-condition embeddings split the width in thirds (1152 = 3 x 384)
    return {
        "num_attention_heads": 2,
        "attention_head_dim": 24,
        "in_channels": 4,
        "out_channels": 8,
        "num_layers": 3,
        "cross_attention_dim": 48,
        "sample_size": 8,
        "patch_size": 2,
        "caption_channels": 24,
        "interpolation_scale": 1,
        "use_additional_conditions": micro,
    }


def _spec(name: str, hf_id: str, size: int, sigma: bool, micro: bool) -> DiffusionSpec:
    seq = 300 if sigma else 120
    vae = SDXL_VAE_CONFIG if sigma else SD_VAE_CONFIG
    return DiffusionSpec(
        name=name,
        family="pixart",
        hf_id=hf_id,
        transformer_cls="PixArtTransformer2DModel",
        vae_cls="AutoencoderKL",
        pipeline_cls="PixArtSigmaPipeline" if sigma else "PixArtAlphaPipeline",
        transformer_config=_pixart_config(size // 8, max(size / 512, 0.5), micro),
        vae_config={**vae, "sample_size": size},
        tiny_transformer_config=_tiny(micro),
        tiny_vae_config=tiny_vae_config(vae),
        image_size=size,
        tiny_image_size=64,
        num_layers=28,
        width=1152,
        patch_size=2,
        convention="ddpm",
        scheduler_cls="DPMSolverMultistepScheduler",
        scheduler_config={
            **LINEAR_BETAS,
            "algorithm_type": "dpmsolver++",
            "solver_order": 2,
            "prediction_type": "epsilon",
        },
        text=TextSpec(seq_len=seq, dim=4096),
        tiny_text=TextSpec(seq_len=5, dim=24),
        license="openrail++",
        citation=(
            "Chen et al., PixArt-Σ: Weak-to-Strong Training of Diffusion Transformer for 4K Text-to-Image "
            "Generation, ECCV 2024"
        )
        if sigma
        else (
            "Chen et al., PixArt-α: Fast Training of Diffusion Transformer for Photorealistic Text-to-Image "
            "Synthesis, ICLR 2024"
        ),
        notes=f"PixArt-{'Sigma' if sigma else 'alpha'} {size}px, 28 blocks, DDPM t in [0, 999], T5 {seq} tokens "
        f"(empty prompt), VAE {'SDXL 0.13025' if sigma else 'sd-vae-ft-ema 0.18215'}"
        + (", resolution/aspect micro-conditions" if micro else ""),
        extra={"text_encoder": f"T5-XXL ({seq} tokens x 4096, masked)", "micro_conditions": micro},
    )


SPECS = {
    "pixart-sigma-1024": _spec(
        "pixart-sigma-1024", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", 1024, True, False
    ),
    "pixart-alpha-512": _spec("pixart-alpha-512", "PixArt-alpha/PixArt-XL-2-512x512", 512, False, False),
    "pixart-alpha-1024": _spec("pixart-alpha-1024", "PixArt-alpha/PixArt-XL-2-1024-MS", 1024, False, True),
}
register_diffusion(SPECS["pixart-sigma-1024"], PixArtAdapter, kind="diffusion (PixArt)")
register_diffusion(SPECS["pixart-alpha-512"], PixArtAlphaAdapter, kind="diffusion (PixArt)")
register_diffusion(SPECS["pixart-alpha-1024"], PixArtAlphaAdapter, kind="diffusion (PixArt)")
