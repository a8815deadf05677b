"""What a probed noise level is in the family's own sampler: σ ↔ pipeline step ↔ img2img strength.

probebench's timesteps are the *actual* noise level of the input the transformer sees: for flow families the
σ of x_σ = (1−σ)·x0 + σ·ε after every shift the sampler applies, for DDPM families t ∈ [0, 999] with
x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε. They are neither a step fraction nor an img2img strength: samplers reach noise
levels through a shift (SD3: σ = 3s / (1 + 2s) of the linear s; FLUX.1-dev: a shift that grows with the image's
token count; Sana: flow_shift 3). This module asks the repos' own diffusers schedulers (configured from
``DiffusionSpec.scheduler_config``) where a pipeline's steps and strengths land, so the README's table and any
"which step is σ = 0.5?" question are answered by the library that samples, not re-derived here.
"""

from __future__ import annotations

import numpy as np

from backbones.diffusion.spec import DiffusionSpec
from probebench.core.errors import ProbebenchError


def _scheduler(spec: DiffusionSpec):
    import diffusers

    if not spec.scheduler_cls:
        raise ProbebenchError(f"{spec.name} declares no sampler (DiffusionSpec.scheduler_cls).")
    return getattr(diffusers, spec.scheduler_cls)(**spec.scheduler_config)


def image_tokens(spec: DiffusionSpec, image_size: int) -> int:
    """Latent tokens of a square image, as the pipelines count them for resolution-dependent shifts."""
    factor = 32 if spec.vae_cls == "AutoencoderDC" else 8
    return (image_size // factor // spec.patch_size) ** 2


def pipeline_timesteps(spec: DiffusionSpec, steps: int, image_size: int | None = None) -> np.ndarray:
    """The noise level of the input at each of a pipeline's ``steps`` sampling steps, in probebench's units
    (flow: σ after the sampler's shift; DDPM: t), as the family's diffusers pipeline sets its scheduler."""
    sched = _scheduler(spec)
    cfg = sched.config
    if spec.extra.get("pipeline_sigmas") == "linear":  # FLUX: linear sigmas, shifted by mu(resolution) on dev
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        mu = calculate_shift(
            image_tokens(spec, image_size or spec.image_size),
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", 1.15),
        )
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    else:
        sched.set_timesteps(steps)
    if spec.convention == "flow":
        return np.asarray(sched.sigmas[:steps], dtype=np.float64)
    return np.asarray(sched.timesteps[:steps], dtype=np.float64)


def strength_timestep(
    spec: DiffusionSpec, strength: float, steps: int, image_size: int | None = None
) -> float:
    """Where an img2img pipeline with ``strength`` starts denoising (diffusers' ``get_timesteps``: the step
    ``int(steps − min(steps·strength, steps))``), as a noise level in probebench's units."""
    if not 0.0 < strength <= 1.0:
        raise ProbebenchError(f"strength must be in (0, 1], got {strength!r}.")
    start = int(max(steps - min(steps * strength, steps), 0))
    return float(pipeline_timesteps(spec, steps, image_size)[start])


def step_of(spec: DiffusionSpec, timestep: float, steps: int, image_size: int | None = None) -> int:
    """The pipeline step whose noise level is nearest to ``timestep`` (probebench units)."""
    levels = pipeline_timesteps(spec, steps, image_size)
    return int(np.argmin(np.abs(levels - float(timestep))))
