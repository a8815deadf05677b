"""MM-DiT backbones: Stable Diffusion 3 (``SD3Transformer2DModel``) and FLUX.1 (``FluxTransformer2DModel``).

Both are rectified-flow models: timesteps are noise levels σ ∈ [0, 1], x_σ = (1−σ)·x0 + σ·ε, log-SNR
2·log((1−σ)/σ). SD3's transformer takes ``timestep = σ·1000`` (the scheduler's timesteps); FLUX's takes σ and
multiplies by 1000 itself (the FLUX pipeline passes ``t / 1000``). Both VAEs have 16 latent channels and are
encoded as (z − shift)·scale: SD3 1.5305 / 0.0609, FLUX 0.3611 / 0.1159 (``vae/config.json``).

Text conditioning is the empty prompt by default (see :class:`backbones.diffusion.TextConditionedAdapter`):
SD3 joint embeddings are CLIP-L/G (77 tokens, zero-padded to 4096) + T5-XXL (256 tokens) = 333 tokens of width
4096, pooled 2048; FLUX takes T5-XXL (512 tokens for dev, 256 for schnell) of width 4096 and a CLIP-L pooled
vector of 768.

Layers: SD3 — the 24 joint blocks, each returning ``(text, image)`` (the last ``(None, image)``). FLUX — the 19
double-stream blocks followed by the 38 single-stream blocks, one sequence of 57 layers; single-stream blocks
see ``[text, image]`` and only the image tokens are kept. FLUX latents are packed 2×2 into 64-channel tokens
with position ids (0, row, column); FLUX.1-dev embeds a guidance scale (3.5 by default, ``guidance_scale=``),
schnell has none.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backbones.diffusion import (
    FLUX_VAE_CONFIG,
    SD3_VAE_CONFIG,
    DiffusionModules,
    DiffusionSpec,
    TextConditionedAdapter,
    TextConditioning,
    TextSpec,
    latent_image_ids,
    load_text_pipeline,
    pack_latents_2x2,
    register_diffusion,
    tiny_vae_config,
    unpack_latents_2x2,
)
from probebench.core.errors import ProbebenchError

# ------------------------------------------------------------------------------------------------ SD3


class SD3Adapter(TextConditionedAdapter):
    """SD3 MM-DiT: ``transformer(latents, encoder_hidden_states, pooled_projections, timestep=σ·1000)``."""

    text_subfolders = (
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
        "tokenizer",
        "tokenizer_2",
        "tokenizer_3",
    )
    # the row of a one-word prompt's embeddings that stands for the word (concept tokens,
    # backbones.diffusion.concepts): CLIP's first sub-word after BOS
    concept_row = 1
    concept_tokenizer = "tokenizer"  # CLIP-L's, whose sub-words the concept row follows

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        cfg = self.transformer.config
        max_tokens = int(cfg.pos_embed_max_size or 0)
        side = self.image_size // self.vae_factor // int(cfg.patch_size)
        if max_tokens and side > max_tokens:
            raise ProbebenchError(
                f"{self.name}: image_size {self.image_size} gives {side}x{side} tokens, more than the "
                f"{max_tokens}x{max_tokens} positional embeddings (max image_size "
                f"{max_tokens * self.vae_factor * int(cfg.patch_size)})."
            )

    @staticmethod
    def block_list(transformer: nn.Module) -> list[nn.Module]:
        return list(transformer.transformer_blocks)

    @classmethod
    def text_dims(cls, transformer: nn.Module) -> tuple[int, int]:
        return int(transformer.config.joint_attention_dim), int(transformer.config.pooled_projection_dim)

    @classmethod
    def encode_prompt(
        cls, folder: Path, prompt: str, text: TextSpec, *, device: torch.device, dtype: torch.dtype
    ) -> TextConditioning:
        pipe = load_text_pipeline("StableDiffusion3Pipeline", folder, device, dtype)
        with torch.inference_mode():
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompt=prompt,
                prompt_2=prompt,
                prompt_3=prompt,
                device=device,
                do_classifier_free_guidance=False,
                max_sequence_length=text.seq_len - 77,
            )
        del pipe
        return TextConditioning(embeds.float().cpu(), pooled.float().cpu(), None, source="sd3:encode_prompt")

    def sampling_pipeline(self) -> Any:
        from diffusers import StableDiffusion3Pipeline

        from backbones.diffusion.sampling import flow_scheduler

        none = dict.fromkeys(
            ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")
        )
        pipe = StableDiffusion3Pipeline(
            transformer=self.transformer, vae=self.model.vae, scheduler=flow_scheduler(), **none
        )  # sigmas come planned
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def sampling_arguments(
        self,
        conditioning: Sequence[TextConditioning] | None,
        guidance: float,
        negative: TextConditioning | None,
        n: int,
    ) -> dict[str, Any]:
        args = self.sampling_prompt_arguments(conditioning, guidance, negative, n, pooled=True)
        return {**args, "guidance_scale": guidance}  # classifier-free guidance, batch [negative; conditional]

    def run_transformer(self, latents: torch.Tensor, timesteps: torch.Tensor) -> Any:
        ctx, pooled, _ = self.text_inputs(latents.shape[0])
        return self.transformer(
            hidden_states=latents,
            encoder_hidden_states=ctx,
            pooled_projections=pooled,
            timestep=timesteps,
            return_dict=False,
        )


SD3_MEDIUM = DiffusionSpec(
    name="sd3-medium",
    family="sd3",
    hf_id="stabilityai/stable-diffusion-3-medium-diffusers",
    transformer_cls="SD3Transformer2DModel",
    vae_cls="AutoencoderKL",
    pipeline_cls="StableDiffusion3Pipeline",
    transformer_config={
        "sample_size": 128,
        "patch_size": 2,
        "in_channels": 16,
        "num_layers": 24,
        "attention_head_dim": 64,
        "num_attention_heads": 24,
        "joint_attention_dim": 4096,
        "caption_projection_dim": 1536,
        "pooled_projection_dim": 2048,
        "out_channels": 16,
        "pos_embed_max_size": 192,
    },
    vae_config={**SD3_VAE_CONFIG, "sample_size": 1024},
    tiny_transformer_config={
        "sample_size": 8,
        "patch_size": 2,
        "in_channels": 16,
        "num_layers": 3,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 24,
        "caption_projection_dim": 32,
        "pooled_projection_dim": 16,
        "out_channels": 16,
        "pos_embed_max_size": 16,
    },
    tiny_vae_config=tiny_vae_config(SD3_VAE_CONFIG),
    image_size=1024,
    tiny_image_size=64,
    num_layers=24,
    width=1536,
    patch_size=2,
    convention="flow",
    scheduler_cls="FlowMatchEulerDiscreteScheduler",
    scheduler_config={"num_train_timesteps": 1000, "shift": 3.0},
    text=TextSpec(seq_len=333, dim=4096, pooled_dim=2048),
    tiny_text=TextSpec(seq_len=7, dim=24, pooled_dim=16),
    license="stabilityai-ai-community",
    citation="Esser et al., Scaling Rectified Flow Transformers for High-Resolution Image Synthesis, ICML 2024",
    notes="SD3-medium MM-DiT, 24 joint blocks, flow sigma in [0, 1] (model timestep sigma*1000), empty prompt "
    "by default, VAE 16ch (z-0.0609)*1.5305",
    extra={"text_encoders": "CLIP-L + CLIP-G + T5-XXL (333 tokens x 4096, pooled 2048)"},
)

# ------------------------------------------------------------------------------------------------ FLUX


class FluxAdapter(TextConditionedAdapter):
    """FLUX.1: packed 2×2 latents, position ids, 19 double + 38 single-stream blocks as one list of layers."""

    text_subfolders = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
    concept_row = 0  # concept tokens (backbones.diffusion.concepts): T5's first sub-word (T5 has no BOS)
    concept_tokenizer = "tokenizer_2"  # T5's

    def __init__(self, *args: Any, guidance_scale: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.guidance_scale = guidance_scale

    @property
    def token_patch(self) -> int:
        return 2  # 2×2 packing of the latent (the transformer's own patch size is 1)

    @staticmethod
    def block_list(transformer: nn.Module) -> list[nn.Module]:
        return list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)

    @classmethod
    def text_dims(cls, transformer: nn.Module) -> tuple[int, int]:
        return int(transformer.config.joint_attention_dim), int(transformer.config.pooled_projection_dim)

    @classmethod
    def prepare_family(
        cls,
        spec: DiffusionSpec,
        modules: DiffusionModules,
        guidance_scale: float | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        super().prepare_family(spec, modules, **kwargs)
        if modules.transformer.config.guidance_embeds:
            g = float(spec.extra.get("default_guidance", 3.5) if guidance_scale is None else guidance_scale)
            return {"guidance_scale": g}
        if guidance_scale is not None:
            raise ProbebenchError(f"{spec.name} has no guidance embedding; do not pass guidance_scale.")
        return {"guidance_scale": None}

    @classmethod
    def encode_prompt(
        cls, folder: Path, prompt: str, text: TextSpec, *, device: torch.device, dtype: torch.dtype
    ) -> TextConditioning:
        pipe = load_text_pipeline("FluxPipeline", folder, device, dtype)
        with torch.inference_mode():
            embeds, pooled, _ = pipe.encode_prompt(
                prompt=prompt, prompt_2=prompt, device=device, max_sequence_length=text.seq_len
            )
        del pipe
        return TextConditioning(embeds.float().cpu(), pooled.float().cpu(), None, source="flux:encode_prompt")

    def run_transformer(self, latents: torch.Tensor, timesteps: torch.Tensor) -> Any:
        n, _, h, w = latents.shape
        ctx, pooled, _ = self.text_inputs(n)
        dtype = latents.dtype
        guidance = None
        if self.guidance_scale is not None:
            guidance = torch.full((n,), self.guidance_scale, dtype=torch.float32, device=latents.device)
        return self.transformer(
            hidden_states=pack_latents_2x2(latents),
            encoder_hidden_states=ctx,
            pooled_projections=pooled,
            timestep=timesteps,
            img_ids=latent_image_ids(h // 2, w // 2, latents.device, dtype),
            txt_ids=torch.zeros(ctx.shape[1], 3, device=latents.device, dtype=dtype),
            guidance=guidance,
            return_dict=False,
        )

    def conditioning_fingerprint(self) -> dict[str, Any]:
        return {**super().conditioning_fingerprint(), "guidance_scale": self.guidance_scale}

    # -- sampling: FluxPipeline ------------------------------------------------------------------------------
    def sampling_pipeline(self) -> Any:
        """``FluxPipeline`` with a shift-free Euler scheduler: the pipeline always passes ``mu`` (the
        resolution-dependent shift of FLUX.1-dev) to ``set_timesteps``; with ``use_dynamic_shifting`` off and
        shift 1 the scheduler ignores it, so the planned σ (already the family's shifted schedule,
        :meth:`sampling_sigmas`) reach the transformer as they are."""
        from diffusers import FluxPipeline

        from backbones.diffusion.sampling import flow_scheduler

        config = dict(self.spec.scheduler_config) if self.spec is not None else {}
        none = dict.fromkeys(("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"))
        pipe = FluxPipeline(
            transformer=self.transformer, vae=self.model.vae, scheduler=flow_scheduler(config), **none
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
        """Classifier-free guidance is FluxPipeline's ``true_cfg_scale`` (a second forward per step on the
        negative); ``guidance_scale`` — FLUX.1-dev's distilled guidance *embedding*, not CFG — is the adapter's
        own (the one its extraction conditions on); schnell has none."""
        args = self.sampling_prompt_arguments(conditioning, guidance, negative, n, pooled=True)
        args["true_cfg_scale"] = guidance
        if self.guidance_scale is not None:
            args["guidance_scale"] = self.guidance_scale
        return args

    def sampling_rows(self, call: int, rows: int, n: int) -> slice | None:
        """FluxPipeline runs the conditional forward first and, under true CFG, the negative one second."""
        return slice(0, n) if call == 0 else None

    def sampling_latent_shape(self) -> tuple[int, ...]:
        """Packed: (h/2 · w/2 tokens, 4 · latent channels), as FluxPipeline's ``latents=`` takes them."""
        side = self.image_size // self.vae_factor
        return (side // 2) ** 2, int(self.transformer.config.in_channels)

    def sampling_unpack(self, latents: torch.Tensor) -> torch.Tensor:
        side = self.image_size // self.vae_factor
        return unpack_latents_2x2(latents, side, side)


def _flux_spec(variant: str) -> DiffusionSpec:
    dev = variant == "dev"
    seq = 512 if dev else 256
    return DiffusionSpec(
        name=f"flux.1-{variant}",
        family="flux",
        hf_id=f"black-forest-labs/FLUX.1-{variant}",
        transformer_cls="FluxTransformer2DModel",
        vae_cls="AutoencoderKL",
        pipeline_cls="FluxPipeline",
        transformer_config={
            "patch_size": 1,
            "in_channels": 64,
            "num_layers": 19,
            "num_single_layers": 38,
            "attention_head_dim": 128,
            "num_attention_heads": 24,
            "joint_attention_dim": 4096,
            "pooled_projection_dim": 768,
            "guidance_embeds": dev,
            "axes_dims_rope": (16, 56, 56),
        },
        vae_config={**FLUX_VAE_CONFIG, "sample_size": 1024},
        tiny_transformer_config={
            "patch_size": 1,
            "in_channels": 64,
            "num_layers": 2,
            "num_single_layers": 2,
            "attention_head_dim": 16,
            "num_attention_heads": 2,
            "joint_attention_dim": 24,
            "pooled_projection_dim": 16,
            "guidance_embeds": dev,
            "axes_dims_rope": (4, 6, 6),
        },
        tiny_vae_config=tiny_vae_config(FLUX_VAE_CONFIG),
        image_size=1024,
        tiny_image_size=64,
        num_layers=57,
        width=3072,
        patch_size=2,
        convention="flow",
        scheduler_cls="FlowMatchEulerDiscreteScheduler",
        scheduler_config={  # dev: a shift that grows with the token count; schnell: none
            "num_train_timesteps": 1000,
            "shift": 3.0 if dev else 1.0,
            "use_dynamic_shifting": dev,
            "base_image_seq_len": 256,
            "max_image_seq_len": 4096,
            "base_shift": 0.5,
            "max_shift": 1.15,
        },
        text=TextSpec(seq_len=seq, dim=4096, pooled_dim=768),
        tiny_text=TextSpec(seq_len=6, dim=24, pooled_dim=16),
        license="flux-1-dev-non-commercial-license" if dev else "apache-2.0",
        citation="Black Forest Labs, FLUX.1 (2024); Labs et al., FLUX.1 Kontext, arXiv 2506.15742",
        notes=f"FLUX.1-{variant}: 19 double-stream + 38 single-stream blocks = layers 0..56, flow sigma in [0, 1], "
        f"2x2-packed 16ch latents (z-0.1159)*0.3611, empty prompt (T5 {seq} tokens)"
        + (", guidance 3.5" if dev else ", no guidance embedding"),
        flow_timestep_scale=1.0,  # FluxTransformer2DModel multiplies the timestep by 1000 itself
        extra={
            "double_stream_layers": [0, 18],
            "single_stream_layers": [19, 56],
            "default_guidance": 3.5 if dev else None,
            "pipeline_sigmas": "linear",  # FluxPipeline passes linspace(1, 1/N, N) (+ mu) to its scheduler
            "text_encoders": f"T5-XXL ({seq} tokens x 4096) + CLIP-L pooled 768",
        },
    )


SPECS = {s.name: s for s in (SD3_MEDIUM, _flux_spec("dev"), _flux_spec("schnell"))}
register_diffusion(SD3_MEDIUM, SD3Adapter, kind="diffusion (MM-DiT, SD3)")
register_diffusion(SPECS["flux.1-dev"], FluxAdapter, kind="diffusion (MM-DiT, FLUX)")
register_diffusion(SPECS["flux.1-schnell"], FluxAdapter, kind="diffusion (MM-DiT, FLUX)")
