"""Sampling with the family's own diffusers pipeline while reading block features at chosen noise levels.

The first piece of generation with labels (issue 23): the sampler, its guidance and its scheduler are the
library's (``StableDiffusion3Pipeline`` for the SD3 class, which includes the project's ``tiny-mmdit``, driven with
precomputed prompt embeddings), and the features a head needs are taken *in the same pass*: the schedule is
forced through the heads' noise levels (:func:`plan_sigmas`), a pre-hook on the transformer marks the steps whose
σ is a head's, and forward hooks on the blocks keep those steps' image tokens as maps — the same
``image_tokens`` → ``tokens_to_map`` the extraction uses. A head σ of 0 (the clean image) costs one more forward
on the final latent, counted in :attr:`Trajectory.forwards`.

Written here rather than taken from a library: diffusers' pipelines expose per-step latents
(``callback_on_step_end``) but not block activations, and the callback runs after a step's forward, so it cannot
mark which forward to read; the hooks are the adapters' own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from backbones.diffusion.adapter import DiffusionAdapter, stack_conditioning
from backbones.diffusion.taps import image_tokens, tokens_to_map
from backbones.diffusion.text import TextConditioning
from probebench.core.errors import ProbebenchError


@dataclass(frozen=True)
class SigmaPlan:
    """The sampler's noise levels step by step (float32 values, descending, without the final 0 the scheduler
    appends), the steps at which a head's σ is read (step index → the head's σ as it was given), and whether a
    head reads σ = 0."""

    sigmas: tuple[float, ...]
    capture: dict[int, float]
    clean: bool


def plan_sigmas(base: Sequence[float], heads: Sequence[float]) -> SigmaPlan:
    """The schedule ``base`` (the family's own noise levels for N steps) with every head noise level in ``heads``
    inserted where it is missing, so the sampler passes through each exactly (compared as float32, the scheduler's
    precision). A head σ above the schedule's first noise level cannot be reached: an error names it."""
    f32 = [float(np.float32(s)) for s in base if float(s) > 0.0]
    if not f32:
        raise ProbebenchError("A sampling schedule needs at least one noise level above 0.")
    top = max(f32)
    given = {float(np.float32(h)): h for h in heads}  # the sampler's float32 value → the head's own value
    want = sorted(given, reverse=True)
    above = [given[h] for h in want if h > top]
    if above:
        raise ProbebenchError(
            f"Head noise level(s) {above} lie above the sampling schedule's first noise level {top}: the sampler "
            "never passes through them. Start the schedule higher or train the heads at lower noise levels."
        )
    sigmas = sorted(set(f32) | {h for h in want if h > 0.0}, reverse=True)
    capture = {i: given[s] for i, s in enumerate(sigmas) if s in given}
    return SigmaPlan(tuple(sigmas), capture, 0.0 in given)


@dataclass
class Trajectory:
    """What one sampling pass gives: images in [0, 1] (B, 3, H, W) (None when not decoded), the final latents,
    the features ``{(layer, σ): (B, C, h, w)}`` at the plan's capture steps (and σ = 0 when planned), and the
    transformer forwards spent (``sampler``: the pipeline's own, ``clean``: the extra σ = 0 forward)."""

    images: torch.Tensor | None
    latents: torch.Tensor
    features: dict[tuple[int, float], torch.Tensor]
    forwards: dict[str, int] = field(default_factory=dict)


def decode_latents(adapter: DiffusionAdapter, z: torch.Tensor) -> torch.Tensor:
    """Model latents → [0, 1] images: the inverse of :func:`~backbones.diffusion.latents.encode_latents`."""
    vae = adapter.model.vae
    x = vae.decode(z.float() / adapter.vae_scale + adapter.vae_shift).sample
    return (x / 2 + 0.5).clamp(0, 1)


@torch.inference_mode()
def sample_with_features(
    adapter: DiffusionAdapter,
    latents: torch.Tensor,
    plan: SigmaPlan,
    layers: Sequence[int],
    *,
    decode: bool = True,
    conditioning: Sequence[TextConditioning] | None = None,
    guidance: float = 1.0,
    negative: TextConditioning | None = None,
) -> Trajectory:
    """Sample from the initial noise ``latents`` (B, C, h, w) through the family's own pipeline on ``plan``'s noise
    levels, reading ``layers`` at the plan's capture steps in the same pass.

    ``conditioning``: one prompt embedding per sample (default: the adapter's own prompt for all). ``guidance`` >
    1 is the pipeline's classifier-free guidance against ``negative`` (default: the adapter's own prompt, the
    conditioning its extraction used); the features are read from the conditional half of the guided batch, so
    they are conditioned on the sample's prompt at any guidance, and σ = 0 is read the same way.
    """
    pipe = adapter.sampling_pipeline()
    scheduler = pipe.scheduler
    n = latents.shape[0]
    layers = adapter.resolve_layers(list(layers))  # sorted absolute block indices
    h, w = adapter.token_grid(tuple(latents.shape[-2:]))
    blocks = adapter.blocks()
    features: dict[tuple[int, float], torch.Tensor] = {}
    state: dict[str, Any] = {"sigma": None, "forwards": 0}
    guided = guidance > 1.0
    conds = list(conditioning) if conditioning is not None else [adapter.text] * n  # type: ignore[attr-defined]
    if len(conds) != n:
        raise ProbebenchError(f"{len(conds)} prompt embeddings for {n} samples.")

    def before(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        i = scheduler.step_index or 0
        state["forwards"] += 1
        state["sigma"] = plan.capture.get(i)
        if state["sigma"] is not None:
            t = float(kwargs["timestep"].reshape(-1)[0])
            if t != float(scheduler.timesteps[i]):  # pragma: no cover - a pipeline that reorders its calls
                raise ProbebenchError(
                    f"Step {i} ran at timestep {t}, not the planned {float(scheduler.timesteps[i])}."
                )

    def reader(layer: int):
        def hook(module: Any, args: Any, output: Any) -> None:
            if state["sigma"] is not None:
                tokens = image_tokens(output, h * w)
                if guided:  # the pipeline's batch is [negative; conditional]
                    tokens = tokens[n:]
                features[(layer, state["sigma"])] = tokens_to_map(tokens.float(), h, w)

        return hook

    handles = [adapter.transformer.register_forward_pre_hook(before, with_kwargs=True)]
    handles += [blocks[layer].register_forward_hook(reader(layer)) for layer in layers]
    dtype = adapter.transformer.dtype
    embeds, pooled, _ = stack_conditioning(conds, adapter.device, dtype)
    extra: dict[str, Any] = {}
    if guided:
        neg = negative if negative is not None else adapter.text  # type: ignore[attr-defined]
        neg_embeds, neg_pooled, _ = stack_conditioning([neg] * n, adapter.device, dtype)
        extra = {"negative_prompt_embeds": neg_embeds, "negative_pooled_prompt_embeds": neg_pooled}
    try:
        out = pipe(
            prompt_embeds=embeds,
            pooled_prompt_embeds=pooled,
            guidance_scale=float(guidance),
            sigmas=list(plan.sigmas),
            latents=latents.to(adapter.device, dtype),
            output_type="latent",
            **extra,
        )
    finally:
        for handle in handles:
            handle.remove()
    z0 = out.images.float()
    forwards = {"sampler": state["forwards"], "clean": 0}
    if plan.clean:
        with adapter.batch_conditioning(conds):  # type: ignore[attr-defined]
            clean = adapter.forward_features(z0, adapter.model_timesteps([0.0], n), layers)
        features.update({(layer, 0.0): f for layer, f in clean.items()})
        forwards["clean"] = 1
    images = decode_latents(adapter, z0) if decode else None
    return Trajectory(images, z0, features, forwards)
