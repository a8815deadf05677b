"""Sampling with the family's own diffusers pipeline while reading block features at chosen noise levels.

The first piece of generation with labels (issue 23): the sampler, its guidance and its scheduler are the
library's — ``StableDiffusion3Pipeline`` (SD3, the project's ``tiny-mmdit``), ``FluxPipeline``,
``PixArtSigmaPipeline`` / ``PixArtAlphaPipeline``, ``SanaPipeline``, driven with precomputed prompt embeddings;
DiT repeats the loop of ``DiTPipeline``, which takes no noise or schedule
(:class:`backbones.dit.DiTPipelineWithSchedule`) — and the features a head needs are taken *in the same
pass*: the schedule is forced through the heads' noise levels in the family's native units
(:func:`plan_sigmas`: flow σ passed as ``sigmas=``, DDPM t as ``timesteps=``, to a scheduler that uses them as
given), a pre-hook on the transformer marks the steps whose level is a head's and checks the transformer gets
it, and forward hooks on the blocks keep those steps' image tokens as maps — the same ``image_tokens`` →
``tokens_to_map`` the extraction uses. A head σ of 0 (the clean image; flow families) costs one more forward on
the final latent, counted in :attr:`Trajectory.forwards`.

What differs by family is behind :class:`~backbones.diffusion.DiffusionAdapter`'s sampling hooks: the pipeline,
its conditioning and guidance arguments, which rows of a guided forward are the samples' own, the initial
noise's shape (FLUX: packed tokens) and the final latents' unpacking.

Written here rather than taken from a library: diffusers' pipelines expose per-step latents
(``callback_on_step_end``) but not block activations, and the callback runs after a step's forward, so it cannot
mark which forward to read; the hooks are the adapters' own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from backbones.diffusion.adapter import DiffusionAdapter
from backbones.diffusion.taps import image_tokens, tokens_to_map
from probebench.core.errors import ProbebenchError


@dataclass(frozen=True)
class SigmaPlan:
    """The sampler's noise levels step by step in the family's native units (:mod:`backbones.diffusion`) —
    ``convention`` ``"flow"``: σ as float32 values; ``"ddpm"``: integer t — descending, without the final clean
    step the scheduler appends; the steps at which a head's level is read (step index → the head's level as it
    was given); and whether a head reads the clean latent (flow σ = 0, one more forward; a DDPM t = 0 is a
    noise level of the schedule like any other, read at its step)."""

    sigmas: tuple[float, ...]
    capture: dict[int, float]
    clean: bool
    convention: str = "flow"

    @property
    def levels(self) -> tuple[float, ...]:
        """The noise levels in native units (the name :attr:`sigmas` is the flow families')."""
        return self.sigmas


def plan_sigmas(base: Sequence[float], heads: Sequence[float], convention: str = "flow") -> SigmaPlan:
    """The schedule ``base`` (the family's own noise levels for N steps, native units) with every head level in
    ``heads`` inserted where it is missing, so the sampler passes through each exactly: flow σ compared as
    float32 (the scheduler's precision), DDPM t as integers. A head level above the schedule's first cannot be
    reached: an error names it."""
    if convention == "ddpm":
        return _plan_ddpm(base, heads)
    if convention != "flow":
        raise ProbebenchError(f"Unknown timestep convention {convention!r}: expected 'flow' or 'ddpm'.")
    f32 = [float(np.float32(s)) for s in base if float(s) > 0.0]
    if not f32:
        raise ProbebenchError("A sampling schedule needs at least one noise level above 0.")
    top = max(f32)
    given = {float(np.float32(h)): h for h in heads}  # the sampler's float32 value → the head's own value
    want = sorted(given, reverse=True)
    _refuse_above([given[h] for h in want if h > top], top)
    sigmas = sorted(set(f32) | {h for h in want if h > 0.0}, reverse=True)
    capture = {i: given[s] for i, s in enumerate(sigmas) if s in given}
    return SigmaPlan(tuple(sigmas), capture, 0.0 in given)


def _ddpm_t(value: Any, what: str) -> int:
    f = float(value)
    if not f.is_integer() or f < 0:
        raise ProbebenchError(f"{what} {value!r} is not a DDPM timestep (an integer t >= 0).")
    return int(f)


def _plan_ddpm(base: Sequence[float], heads: Sequence[float]) -> SigmaPlan:
    steps = [_ddpm_t(t, "Schedule timestep") for t in base]
    if not steps:
        raise ProbebenchError("A sampling schedule needs at least one timestep.")
    top = max(steps)
    given = {_ddpm_t(h, "Head timestep"): h for h in heads}
    _refuse_above([given[t] for t in sorted(given, reverse=True) if t > top], top)
    levels = sorted(set(steps) | set(given), reverse=True)
    capture = {i: given[t] for i, t in enumerate(levels) if t in given}
    return SigmaPlan(tuple(levels), capture, False, "ddpm")


def _refuse_above(above: list[Any], top: float) -> None:
    if above:
        raise ProbebenchError(
            f"Head noise level(s) {above} lie above the sampling schedule's first noise level {top}: the sampler "
            "never passes through them. Start the schedule higher or train the heads at lower noise levels."
        )


def flow_scheduler(config: dict[str, Any] | None = None) -> Any:
    """diffusers' ``FlowMatchEulerDiscreteScheduler`` (from a family's ``config``) that uses the σ it is given as
    they are: shift 1, no resolution-dependent shift (FLUX's ``mu`` is then ignored), no terminal stretch, no
    Karras / exponential / beta re-spacing — the plan's σ reach the transformer unchanged."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    cfg = {"num_train_timesteps": 1000, **(config or {})}
    cfg.update(
        shift=1.0,
        use_dynamic_shifting=False,
        shift_terminal=None,
        use_karras_sigmas=False,
        use_exponential_sigmas=False,
        use_beta_sigmas=False,
        invert_sigmas=False,
    )
    return FlowMatchEulerDiscreteScheduler.from_config(cfg)


def ddpm_scheduler(adapter: DiffusionAdapter) -> Any:
    """diffusers' ``DPMSolverMultistepScheduler`` on the adapter's own betas (those its extraction noises with),
    the family's solver settings when its registered sampler is DPM-Solver (PixArt), and custom ``timesteps=``
    used as given (no Karras / Lu / exponential / beta re-spacing, which would move them)."""
    from diffusers import DPMSolverMultistepScheduler

    spec = adapter.spec
    cfg = dict(spec.scheduler_config) if spec and spec.scheduler_cls == "DPMSolverMultistepScheduler" else {}
    sched = adapter.schedule
    cfg.update(
        num_train_timesteps=sched.num_train_timesteps,  # type: ignore[attr-defined]
        beta_start=sched.beta_start,  # type: ignore[attr-defined]
        beta_end=sched.beta_end,  # type: ignore[attr-defined]
        beta_schedule=sched.beta_schedule,  # type: ignore[attr-defined]
        use_karras_sigmas=False,
        use_lu_lambdas=False,
        use_exponential_sigmas=False,
        use_beta_sigmas=False,
    )
    return DPMSolverMultistepScheduler.from_config(cfg)


@dataclass
class Trajectory:
    """What one sampling pass gives: images in [0, 1] (B, 3, H, W) (None when not decoded), the final latents
    (B, C, h, w) (unpacked for FLUX), the features ``{(layer, head level): (B, C, h, w)}`` at the plan's capture
    steps (and σ = 0 when planned), and the transformer forwards spent (``sampler``: the pipeline's own, two a
    step under FLUX's true CFG; ``clean``: the extra σ = 0 forward)."""

    images: torch.Tensor | None
    latents: torch.Tensor
    features: dict[tuple[int, float], torch.Tensor]
    forwards: dict[str, int] = field(default_factory=dict)
    cues: dict[tuple[int, float], torch.Tensor] = field(
        default_factory=dict
    )  # concept maps, keyed as features


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
    conditioning: Sequence[Any] | None = None,
    guidance: float = 1.0,
    negative: Any | None = None,
    concepts: Any = None,
    concept_layers: Sequence[int] = (),
) -> Trajectory:
    """Sample from the initial noise ``latents`` (B, *``adapter.sampling_latent_shape()``: (C, h, w), FLUX's
    packed (tokens, 4C)) through the family's own pipeline on ``plan``'s noise levels, reading ``layers`` at the
    plan's capture steps in the same pass.

    ``conditioning``: one per sample — prompt embeddings (``TextConditioning``) for text-to-image families,
    class ids for DiT (default: the adapter's own prompt / class for all). ``guidance`` > 1 is classifier-free
    guidance against ``negative`` (default: the adapter's own prompt, the conditioning its extraction used; DiT:
    the null class), as each family's pipeline does it (SD3, PixArt, Sana, DiT: one batched forward of
    [negative; conditional] or [conditional; null]; FLUX: ``true_cfg_scale``, a second forward per step —
    FLUX.1-dev's distilled guidance embedding stays the adapter's ``guidance_scale``). The features are read
    from the conditional rows (:meth:`~backbones.diffusion.DiffusionAdapter.sampling_rows`), so they are
    conditioned on the sample's own prompt at any guidance; σ = 0 is read the same way.

    At each capture step the transformer's timestep is checked against the head level in model units
    (``adapter.model_timesteps``): a scheduler that shifted or remapped it is an error. A pipeline that only
    rounds it to the transformer's dtype (FluxPipeline casts ``t`` to the latents' dtype before dividing by 1000:
    in bfloat16 that can move it by a rounding step) is given the planned value instead, so the features are the
    extraction's at the head's level.

    ``concepts`` (a :class:`~backbones.diffusion.concepts.ConceptMapAdapter` of ``adapter``): its concept stream
    rides on the capture steps' forwards (attached for those only), and ``Trajectory.cues`` holds its maps of ``concept_layers`` at the capture steps
    (and σ = 0), from the conditional rows, as its features (``output: pair`` reduced). The stream only reads, so
    the samples are the same bits with or without it.
    """
    convention = adapter.schedule.convention
    if plan.convention != convention:
        raise ProbebenchError(
            f"{adapter.name} samples in {convention!r} units, the plan is in {plan.convention!r} units: plan with "
            "adapter.sampling_plan(steps, heads)."
        )
    pipe = adapter.sampling_pipeline()
    scheduler = pipe.scheduler
    n = latents.shape[0]
    shape = tuple(adapter.sampling_latent_shape())
    if tuple(latents.shape[1:]) != shape:
        raise ProbebenchError(
            f"{adapter.name}: the initial noise must have shape (batch, {', '.join(map(str, shape))}) "
            f"(adapter.sampling_latent_shape()), got {tuple(latents.shape)}."
        )
    layers = adapter.resolve_layers(list(layers))  # sorted absolute block indices
    side = adapter.image_size // adapter.vae_factor
    h, w = adapter.token_grid((side, side))
    blocks = adapter.blocks()
    arguments = adapter.sampling_arguments(conditioning, float(guidance), negative, n)
    # the timestep each capture step must reach the transformer with, as extraction gives it for the head level
    planned = {i: float(adapter.model_timesteps([level], 1)[0]) for i, level in plan.capture.items()}
    features: dict[tuple[int, float], torch.Tensor] = {}
    state: dict[str, Any] = {"level": None, "rows": None, "forwards": 0, "step": -1, "call": 0}
    eps = torch.finfo(adapter.transformer.dtype).eps

    cues: dict[tuple[int, float], torch.Tensor] = {}
    concept_layers = sorted({int(i) for i in concept_layers}) if concepts is not None else []
    stream = contextlib.ExitStack()  # the concept stream, attached for the capture steps' forwards only

    def before(module: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        i = scheduler.step_index or 0
        # the forward's place within its step (FluxPipeline's true CFG runs two a step)
        state["call"] = state["call"] + 1 if i == state["step"] else 0
        state["step"] = i
        state["forwards"] += 1
        state["level"] = None
        if i not in plan.capture:
            return None
        x = args[0] if args else kwargs["hidden_states"]
        rows = adapter.sampling_rows(state["call"], int(x.shape[0]), n)
        if rows is not None:  # None: a forward without the samples' own conditioning (FLUX's negative call)
            state["level"], state["rows"] = plan.capture[i], rows
            if concept_layers:  # the concept stream rides on this forward only (read_concepts detaches it)
                stream.enter_context(concepts.stream.attached(read=concept_layers))
        t, want = kwargs["timestep"], planned[i]
        got = float(t.reshape(-1)[0])
        if got == want:
            return None
        if abs(got - want) > 2 * eps * abs(want):
            raise ProbebenchError(
                f"{adapter.name}: step {i} ran the transformer at timestep {got}, not {want} (the head level "
                f"{plan.capture[i]} in model units): the scheduler moved the planned level."
            )
        return args, {**kwargs, "timestep": torch.full(t.shape, want, dtype=torch.float32, device=t.device)}

    def reader(layer: int):
        def hook(module: Any, args: Any, output: Any) -> None:
            if state["level"] is not None:
                tokens = image_tokens(output, h * w)[state["rows"]]
                features[(layer, state["level"])] = tokens_to_map(tokens.float(), h, w)

        return hook

    def read_concepts(module: Any, args: Any, output: Any) -> None:
        if state["level"] is not None:
            for layer in concept_layers:
                m = concepts.stream.maps[layer][state["rows"]]
                cues[(layer, state["level"])] = concepts.output(m, (h, w)).float()
            stream.close()

    handles = [adapter.transformer.register_forward_pre_hook(before, with_kwargs=True)]
    handles += [blocks[layer].register_forward_hook(reader(layer)) for layer in layers]
    if concept_layers:
        handles.append(adapter.transformer.register_forward_hook(read_concepts))
    schedule = {"sigmas" if convention == "flow" else "timesteps": list(plan.sigmas)}
    try:
        out = pipe(
            **arguments,
            **schedule,
            latents=latents.to(adapter.device, adapter.transformer.dtype),
            height=adapter.image_size,
            width=adapter.image_size,
            output_type="latent",
        )
    finally:
        for handle in handles:
            handle.remove()
        stream.close()
    z0 = adapter.sampling_unpack(out.images).float()
    forwards = {"sampler": state["forwards"], "clean": 0}
    if plan.clean:
        with contextlib.ExitStack() as clean_stack:
            clean_stack.enter_context(adapter.sampling_conditioning(conditioning, n))
            if concept_layers:
                clean_stack.enter_context(concepts.stream.attached(read=concept_layers))
            deepest = sorted(set(layers) | set(concept_layers))  # the forward's early exit reaches both
            clean = adapter.forward_features(z0, adapter.model_timesteps([0.0], n), deepest)
            for layer in concept_layers:
                cues[(layer, 0.0)] = concepts.output(concepts.stream.maps[layer], (h, w)).float()
        features.update({(layer, 0.0): clean[layer] for layer in layers})
        forwards["clean"] = 1
    images = decode_latents(adapter, z0) if decode else None
    return Trajectory(images, z0, features, forwards, cues)
