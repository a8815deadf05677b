"""Shared machinery of the diffusion-transformer adapters (DiT, SD3, FLUX, PixArt, Sana).

One extraction, for every family::

    images in [0, 1] ─ resize (base class) ─ ×2−1 ─ VAE encode (latent *mean*, deterministic)
      ─ (z − shift)·scale ─ noise to every requested timestep ─ transformer with forward hooks on its blocks,
      stopping after the deepest requested block ─ image tokens only ─ (B, C, h, w)

Conventions (documented once, here):

* **Noise** for image *i*, draw *k* is ``torch.randn`` from a CPU :class:`torch.Generator` seeded with
  ``sha256(f"{seed}:{image_id}:{k}")`` — a pure function of (seed, image id, draw), independent of batch size,
  composition, shard and device. One ε per (image, draw) is shared by all timesteps of that draw, so features at
  different noise levels see the same noise. When ``image_ids`` is ``None`` the batch position (``"0"``,
  ``"1"``, ...) is the id: then results depend on where an image sits in the batch, so the feature store always
  passes dataset ids. ``noise_draws=K`` averages the features of K draws (DIFT-style ensembles).
* **Batching**: the base class feeds fixed-size batches of ``compute_batch`` images (zero-padded), so an image's
  features do not depend on how the caller batches; all timesteps of those images run as ONE forward
  (compute_batch×T rows, image-major), the K draws one after the other. Lower ``compute_batch`` to save memory.
* **Timesteps** are in native units. ``"ddpm"``: integer t ∈ [0, T−1], x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε with ᾱ from the
  model's own beta schedule (diffusers ``DDPMScheduler`` numerics), so t = 0 is the least noisy *training* step
  (ᾱ_0 = 1 − β_0, noise std ≈ 0.01), not an exactly clean latent. ``"flow"`` (rectified flow): σ ∈ [0, 1],
  x_σ = (1−σ)·x0 + σ·ε; σ = 0 is the clean latent, σ = 1 pure noise.
* **log-SNR** = log(α²/σ²): DDPM log(ᾱ_t/(1−ᾱ_t)); flow 2·log((1−σ)/σ) (+inf at σ = 0, −inf at σ = 1).
* **Early exit**: a forward hook on the deepest requested block raises a private exception that ends the forward,
  so deeper blocks never run. Hooks keep only *image* tokens: MM-DiT blocks return ``(text, image)`` tuples
  (the last SD3 block ``(None, image)``), FLUX single-stream blocks return either such a tuple or, in older
  diffusers, one ``[text, image]`` tensor — the output type is inspected at run time.
* **Random weights** (``weights="random"``): the real architecture from its config, the transformer re-drawn
  with the one standard init of :mod:`backbones.random_init` (PyTorch's default layer init, seeded — never an
  adaLN-Zero training init, whose blocks are the identity), a random VAE, seeded N(0, 1) prompt embeddings.
  ``adapter.weights_note`` says in one sentence what the weights are.

Modules, each one seam of the pipeline above (everything is re-exported here, so ``from backbones.diffusion
import X`` works for every public name):

* :mod:`~backbones.diffusion.noise`: seeded noise and the DDPM / flow schedules (native timesteps, log-SNR).
* :mod:`~backbones.diffusion.taps`: forward hooks with early exit; image-token selection and reshaping.
* :mod:`~backbones.diffusion.latents`: VAE encoding to model latents; FLUX's 2×2 latent packing.
* :mod:`~backbones.diffusion.text`: prompt embeddings (injected, seeded random, or real and cached on disk).
* :mod:`~backbones.diffusion.spec`: :class:`DiffusionSpec` (what a registered backbone is) and the VAE configs.
* :mod:`~backbones.diffusion.weights`: loading — HF cache / download, local diffusers folders, random weights.
* :mod:`~backbones.diffusion.adapter`: the base classes :class:`DiffusionAdapter`, :class:`TextConditionedAdapter`.
* :mod:`~backbones.diffusion.factory`: :func:`create_diffusion_adapter` and :func:`register_diffusion`.
* :mod:`~backbones.diffusion.concepts`: concept-attention maps of the MM-DiTs (SD3 class, FLUX), as features
  (:func:`concept_maps`).
"""

from __future__ import annotations

from backbones.diffusion.adapter import (
    DiffusionAdapter,
    TextConditionedAdapter,
    free_memory,
    load_text_pipeline,
)
from backbones.diffusion.concepts import (
    ConceptEmbeddings,
    ConceptMapAdapter,
    ConceptSpec,
    ConceptStream,
    concept_maps,
    concept_scores,
    embed_concepts,
)
from backbones.diffusion.factory import (
    DIFFUSION_SPECS,
    create_diffusion_adapter,
    diffusion_spec,
    diffusion_weights_note,
    make_schedule,
    register_diffusion,
    tiny_meta,
)
from backbones.diffusion.latents import (
    encode_latents,
    latent_image_ids,
    pack_latents_2x2,
    unpack_latents_2x2,
    vae_downsample,
    vae_factors,
)
from backbones.diffusion.noise import DDPMSchedule, FlowSchedule, NoiseSchedule, draw_noise, stable_seed
from backbones.diffusion.spec import (
    FLUX_VAE_CONFIG,
    LINEAR_BETAS,
    SD3_VAE_CONFIG,
    SD_VAE_CONFIG,
    SDXL_VAE_CONFIG,
    DiffusionModules,
    DiffusionSpec,
    TextSpec,
    tiny_vae_config,
)
from backbones.diffusion.taps import image_tokens, run_blocks_with_taps, tokens_to_map
from backbones.diffusion.text import (
    PromptEmbeddingCache,
    TextConditioning,
    random_text_conditioning,
    require_transformers,
    text_conditioning_for,
    text_snapshot,
)
from backbones.diffusion.weights import (
    build_modules,
    folder_fingerprint,
    hf_snapshot,
    read_scheduler_config,
    resolve_weights,
)

__all__ = [
    "DIFFUSION_SPECS",
    "FLUX_VAE_CONFIG",
    "LINEAR_BETAS",
    "SD3_VAE_CONFIG",
    "SDXL_VAE_CONFIG",
    "SD_VAE_CONFIG",
    "ConceptEmbeddings",
    "ConceptMapAdapter",
    "ConceptSpec",
    "ConceptStream",
    "DDPMSchedule",
    "DiffusionAdapter",
    "DiffusionModules",
    "DiffusionSpec",
    "FlowSchedule",
    "NoiseSchedule",
    "PromptEmbeddingCache",
    "TextConditionedAdapter",
    "TextConditioning",
    "TextSpec",
    "build_modules",
    "concept_maps",
    "concept_scores",
    "create_diffusion_adapter",
    "diffusion_spec",
    "diffusion_weights_note",
    "draw_noise",
    "embed_concepts",
    "encode_latents",
    "folder_fingerprint",
    "free_memory",
    "hf_snapshot",
    "image_tokens",
    "latent_image_ids",
    "load_text_pipeline",
    "make_schedule",
    "pack_latents_2x2",
    "random_text_conditioning",
    "read_scheduler_config",
    "register_diffusion",
    "require_transformers",
    "resolve_weights",
    "run_blocks_with_taps",
    "stable_seed",
    "text_conditioning_for",
    "text_snapshot",
    "tiny_meta",
    "tiny_vae_config",
    "tokens_to_map",
    "unpack_latents_2x2",
    "vae_downsample",
    "vae_factors",
]
