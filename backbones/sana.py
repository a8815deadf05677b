"""Sana (Xie et al. 2025) through diffusers' ``SanaTransformer2DModel`` + the DC-AE ``AutoencoderDC``.

Sana is a *flow-matching* model (its diffusers scheduler is DPM-Solver with ``use_flow_sigmas`` and
``prediction_type="flow_prediction"``), so its native timesteps are noise levels σ ∈ [0, 1] with
x_σ = (1−σ)·x0 + σ·ε and the transformer takes ``σ·1000·timestep_scale`` — not DDPM integers. The DC-AE
(f32c32) compresses 32× into 32 channels, is deterministic (no posterior), and latents are scaled by 0.41407
(no shift). Patch size 1: a 1024-px image gives a 32×32 map. Text: Gemma-2-2B-it embeddings (width 2304,
300 tokens, masked) of the plain prompt (empty by default; no "complex human instruction" prefix).
Layers 0..19 are the 20 linear-attention blocks of Sana-1600M (width 2240).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backbones.diffusion import (
    DiffusionSpec,
    TextConditionedAdapter,
    TextConditioning,
    TextSpec,
    load_text_pipeline,
    register_diffusion,
)

DCAE_F32C32_SANA: dict[str, Any] = {  # mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers (AutoencoderDC)
    "in_channels": 3,
    "latent_channels": 32,
    "attention_head_dim": 32,
    "encoder_block_types": ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    "decoder_block_types": ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    "encoder_block_out_channels": (128, 256, 512, 512, 1024, 1024),
    "decoder_block_out_channels": (128, 256, 512, 512, 1024, 1024),
    "encoder_layers_per_block": (2, 2, 2, 3, 3, 3),
    "decoder_layers_per_block": (3, 3, 3, 3, 3, 3),
    "encoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
    "decoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
    "downsample_block_type": "conv",
    "upsample_block_type": "interpolate",
    "decoder_norm_types": "rms_norm",
    "decoder_act_fns": "silu",
    "scaling_factor": 0.41407,
}

# the encoder's output shortcut averages groups of block_out[-1] / (2 x latent_channels) channels: keep 64 last
TINY_DCAE = {
    **DCAE_F32C32_SANA,
    "attention_head_dim": 8,
    "encoder_block_out_channels": (8, 8, 8, 16, 16, 64),
    "decoder_block_out_channels": (8, 8, 8, 16, 16, 64),
    "encoder_layers_per_block": (1,) * 6,
    "decoder_layers_per_block": (1,) * 6,
}


class SanaAdapter(TextConditionedAdapter):
    """Sana: ``transformer(latents, encoder_hidden_states, encoder_attention_mask, timestep=σ·1000)``."""

    text_subfolders = ("text_encoder", "tokenizer")

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
        pipe = load_text_pipeline("SanaPipeline", folder, device, dtype)
        with torch.inference_mode():
            embeds, mask, _, _ = pipe.encode_prompt(
                prompt,
                do_classifier_free_guidance=False,
                device=device,
                clean_caption=False,
                max_sequence_length=text.seq_len,
                complex_human_instruction=None,
            )
        del pipe
        return TextConditioning(embeds.float().cpu(), None, mask.cpu(), source="sana:encode_prompt")

    def run_transformer(self, latents: torch.Tensor, timesteps: torch.Tensor) -> Any:
        ctx, _, mask = self.text_inputs(latents.shape[0])
        return self.transformer(
            latents,
            encoder_hidden_states=ctx,
            encoder_attention_mask=mask,
            timestep=timesteps,
            return_dict=False,
        )

    # -- sampling: SanaPipeline ------------------------------------------------------------------------------
    def sampling_pipeline(self) -> Any:
        """``SanaPipeline`` with a shift-free flow-matching Euler scheduler. Sana's own scheduler,
        ``DPMSolverMultistepScheduler`` with flow sigmas, cannot be driven through chosen noise levels: its
        ``set_timesteps`` takes no ``sigmas=``, its flow-sigma branch cannot use custom ``timesteps=`` (it builds the σ
        from ``num_inference_steps``), and it casts timesteps to int64, so the transformer would see ⌊σ·1000⌋ rather
        than σ·1000. The planned σ are Sana's own flow_shift-3 levels (:meth:`sampling_sigmas`) with the head
        levels inserted; the solver between them is first-order Euler instead of DPM-Solver++."""
        from diffusers import SanaPipeline

        from backbones.diffusion.sampling import flow_scheduler

        pipe = SanaPipeline(
            tokenizer=None,
            text_encoder=None,
            transformer=self.transformer,
            vae=self.model.vae,
            scheduler=flow_scheduler(),
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
        """Classifier-free guidance (``guidance_scale``, batch [negative; conditional]); no resolution binning."""
        args = self.sampling_prompt_arguments(conditioning, guidance, negative, n, mask=True)
        # negative_prompt: the pipeline's default "" may not come with negative_prompt_embeds
        return {**args, "negative_prompt": None, "guidance_scale": guidance, "use_resolution_binning": False}


SANA_1600M_1024 = DiffusionSpec(
    name="sana-1600m-1024",
    family="sana",
    hf_id="Efficient-Large-Model/Sana_1600M_1024px_diffusers",
    transformer_cls="SanaTransformer2DModel",
    vae_cls="AutoencoderDC",
    pipeline_cls="SanaPipeline",
    transformer_config={
        "in_channels": 32,
        "out_channels": 32,
        "num_attention_heads": 70,
        "attention_head_dim": 32,
        "num_layers": 20,
        "num_cross_attention_heads": 20,
        "cross_attention_head_dim": 112,
        "cross_attention_dim": 2240,
        "caption_channels": 2304,
        "mlp_ratio": 2.5,
        "sample_size": 32,
        "patch_size": 1,
    },
    vae_config=DCAE_F32C32_SANA,
    tiny_transformer_config={
        "in_channels": 32,
        "out_channels": 32,
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "num_layers": 3,
        "num_cross_attention_heads": 2,
        "cross_attention_head_dim": 16,
        "cross_attention_dim": 32,
        "caption_channels": 24,
        "sample_size": 4,
        "patch_size": 1,
    },
    tiny_vae_config=TINY_DCAE,
    image_size=1024,
    tiny_image_size=128,
    num_layers=20,
    width=2240,
    patch_size=1,
    convention="flow",
    scheduler_cls="DPMSolverMultistepScheduler",
    scheduler_config={"flow_shift": 3.0, "use_flow_sigmas": True, "prediction_type": "flow_prediction"},
    text=TextSpec(seq_len=300, dim=2304),
    tiny_text=TextSpec(seq_len=5, dim=24),
    license="other (NVIDIA Sana license, non-commercial; see the model card)",
    citation="Xie et al., SANA: Efficient High-Resolution Image Synthesis with Linear Diffusion Transformers, "
    "ICLR 2025",
    notes="Sana-1600M 1024px, 20 linear-attention blocks, flow sigma in [0, 1] (model timestep sigma*1000), "
    "DC-AE f32c32 (scale 0.41407), Gemma-2 300 tokens (empty prompt)",
    extra={"text_encoder": "Gemma-2-2B-it (300 tokens x 2304, masked)"},
)

SPECS = {SANA_1600M_1024.name: SANA_1600M_1024}
register_diffusion(SANA_1600M_1024, SanaAdapter, kind="diffusion (Sana)")
