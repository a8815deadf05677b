"""The diffusion adapter base classes: :class:`DiffusionAdapter` and :class:`TextConditionedAdapter`.

The one extraction every family shares lives here — encode, noise to every requested timestep, one hooked
forward per noise draw with early exit, image tokens to maps, averaging over draws — so a family implements
only its blocks and one transformer forward (:mod:`backbones.dit` is the smallest example). The
conventions (noise identity, batching, timestep units) are documented in :mod:`backbones.diffusion`.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager as ContextManager
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from backbones.base import Adapter, BackboneMeta, FeatureKey
from backbones.diffusion.latents import encode_latents, vae_downsample, vae_factors
from backbones.diffusion.noise import NoiseSchedule, draw_noise
from backbones.diffusion.spec import DiffusionModules, DiffusionSpec, TextSpec
from backbones.diffusion.taps import image_tokens, run_blocks_with_taps, tokens_to_map
from backbones.diffusion.text import (
    PromptEmbeddingCache,
    TextConditioning,
    require_transformers,
    text_conditioning_for,
)
from probebench.core.errors import ProbebenchError


class DiffusionAdapter(Adapter):
    """A frozen diffusion transformer read block by block at chosen noise levels.

    Families implement :meth:`blocks`, :meth:`token_grid` and :meth:`run_transformer` (and
    :meth:`conditioning_fingerprint`); noising, batching, hooks, early exit and averaging live here.
    """

    model: DiffusionModules
    spec: DiffusionSpec | None = None  # the registered family spec (set by the factory; None for tiny-mmdit)
    default_steps: int = 28  # sampling steps of the family's pipeline default (SD3, FLUX.1-dev)

    def __init__(
        self, meta: BackboneMeta, model: DiffusionModules, *, schedule: NoiseSchedule, **kwargs: Any
    ):
        super().__init__(meta, model, **kwargs)
        self.schedule = schedule
        self.vae_scale, self.vae_shift = vae_factors(model.vae)
        self.vae_factor = vae_downsample(model.vae)
        step = self.vae_factor * self.token_patch
        if self.image_size % step:
            raise ProbebenchError(
                f"{self.name}: image_size {self.image_size} must be a multiple of {step} "
                f"(VAE downsampling {self.vae_factor} x patch {self.token_patch})."
            )

    # -- family hooks -----------------------------------------------------------------------------------
    @property
    def token_patch(self) -> int:
        """Latent pixels per token side (the transformer's patch size; 2 for FLUX's 2×2 packing)."""
        return int(self.meta.patch_size or 1)

    @property
    def transformer(self) -> nn.Module:
        return self.model.transformer

    @staticmethod
    def block_list(transformer: nn.Module) -> list[nn.Module]:
        """The transformer blocks in layer order (layer i = block i)."""
        raise NotImplementedError

    def blocks(self) -> list[nn.Module]:
        return self.block_list(self.transformer)

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
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Family options (prompt, class id, ...) → extra constructor arguments; rejects unknown options."""
        if kwargs:
            raise ProbebenchError(f"{spec.name} takes no option(s) {', '.join(map(repr, kwargs))}.")
        return {}

    @classmethod
    def before_load(cls, spec: DiffusionSpec, **kwargs: Any) -> dict[str, Any]:
        """Work that must happen before the weights are loaded (text-to-image families: the prompt embeddings);
        gets ``weights``, ``config``, ``root``, ``random_seed``, ``device``, ``dtype`` and the family options,
        returns the options for :meth:`prepare`."""
        for k in ("weights", "config", "root", "random_seed", "device", "dtype"):
            kwargs.pop(k, None)
        return kwargs

    def run_transformer(self, latents: torch.Tensor, timesteps: torch.Tensor) -> Any:
        """One forward of the transformer on noisy latents (N, C, H, W) at model timesteps (N,)."""
        raise NotImplementedError

    def conditioning_fingerprint(self) -> dict[str, Any]:
        return {}

    def sampling_pipeline(self) -> Any:
        """The family's diffusers pipeline around this adapter's transformer and VAE, without text encoders (the
        adapter's prompt embeddings are passed in), its scheduler taking the noise levels it is given unshifted
        (:mod:`backbones.diffusion.sampling`)."""
        raise ProbebenchError(
            f"{self.name}: sampling is not supported for this family yet (supported: SD3 and tiny-mmdit, FLUX.1, "
            "PixArt-Σ/α, Sana, DiT)."
        )

    def sampling_arguments(
        self, conditioning: Sequence[Any] | None, guidance: float, negative: Any | None, n: int
    ) -> dict[str, Any]:
        """The :meth:`sampling_pipeline` call's conditioning and guidance arguments for ``n`` samples: one
        ``conditioning`` per sample (None: the adapter's own), classifier-free ``guidance`` against ``negative``."""
        raise NotImplementedError

    def sample_condition(self, prompt: str) -> Any:
        """One sample's conditioning from the text a user gives ``probebench generate`` (a prompt; DiT: an
        ImageNet class id), as :meth:`sampling_arguments` takes it."""
        raise ProbebenchError(f"{self.name} takes no per-sample prompt.")

    def sampling_rows(self, call: int, rows: int, n: int) -> slice | None:
        """The rows of a sampling forward that carry the samples' own conditioning (the features to read), for the
        ``call``-th transformer forward of a step with ``rows`` rows; None: a forward not to read. Default, the
        diffusers convention of SD3, PixArt and Sana: one forward per step, a guided batch is [negative;
        conditional]."""
        return slice(rows - n, rows) if call == 0 else None

    def sampling_latent_shape(self) -> tuple[int, ...]:
        """The per-sample shape of the initial noise the sampling pipeline's ``latents=`` takes at this adapter's
        image size: (latent channels, h, w)."""
        side = self.image_size // self.vae_factor
        return int(self.transformer.config.in_channels), side, side

    def sampling_unpack(self, latents: torch.Tensor) -> torch.Tensor:
        """The pipeline's final latents → (B, C, h, w) model latents, as :meth:`forward_features` and the VAE
        take them (identity but for FLUX's packing)."""
        return latents

    def sampling_conditioning(self, conditioning: Sequence[Any] | None, n: int) -> ContextManager[None]:
        """Forwards inside are conditioned per sample as :meth:`sampling_arguments` conditions the sampler (the
        clean-latent forward after sampling)."""
        if conditioning is not None:
            raise ProbebenchError(f"{self.name} takes no per-sample conditioning.")
        return nullcontext()

    def sampling_plan(self, steps: int, heads: Sequence[Any]) -> Any:
        """The family's own schedule for ``steps`` steps (:meth:`sampling_sigmas`) with every head noise level
        inserted, in this family's native units (:func:`~backbones.diffusion.sampling.plan_sigmas`)."""
        from backbones.diffusion.sampling import plan_sigmas

        return plan_sigmas(self.sampling_sigmas(steps), heads, self.schedule.convention)

    def sampling_sigmas(self, steps: int) -> np.ndarray:
        """The noise levels of the family's own sampler for ``steps`` steps at this adapter's image size, in
        probebench's units (:func:`~backbones.diffusion.sigmas.pipeline_timesteps`); a flow model without a
        registered spec (tiny-mmdit) samples on ``linspace(1, 0, steps + 1)`` without shift, as it was trained."""
        if steps < 1:
            raise ProbebenchError(f"Sampling needs at least one step, got {steps}.")
        if self.spec is not None and self.spec.scheduler_cls:
            from backbones.diffusion.sigmas import pipeline_timesteps

            return pipeline_timesteps(self.spec, steps, self.image_size)
        if self.schedule.convention != "flow":
            raise ProbebenchError(f"{self.name}: no sampler schedule is known for this model.")
        return np.linspace(1.0, 0.0, steps + 1)[:-1]

    # -- timesteps ---------------------------------------------------------------------------------------
    def resolve_timesteps(self, spec: Any) -> list[Any]:
        """Native timesteps (see :mod:`backbones.diffusion`); ``None`` → ``schedule.default_timesteps``."""
        return self.schedule.resolve(spec)

    def log_snr(self, timestep: Any) -> float | None:
        return self.schedule.log_snr(timestep)

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        fp.update(
            family=self.meta.family,
            schedule=self.schedule.describe(),
            vae={
                "scaling_factor": self.vae_scale,
                "shift_factor": self.vae_shift,
                "latent": "posterior mean",
                "input_range": "[-1, 1]",
            },
            noise="sha256(seed:image_id:draw)->torch.Generator(cpu).randn; one eps per draw shared by all timesteps",
            conditioning=self.conditioning_fingerprint(),
        )
        return fp

    # -- extraction --------------------------------------------------------------------------------------
    def token_grid(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        p = self.token_patch
        return latent_hw[0] // p, latent_hw[1] // p

    @torch.inference_mode()
    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        """Preprocessed [0, 1] images → scaled model latents (float32)."""
        return encode_latents(self.model.vae, x01)

    def noised(
        self, z0: torch.Tensor, timesteps: list[Any], image_ids: Sequence[Any], seed: int, draw: int
    ) -> torch.Tensor:
        """(B, C, H, W) clean latents → (B·T, C, H, W) noisy latents, image-major (all timesteps of image 0 first)."""
        coef = torch.tensor(
            [self.schedule.alpha_sigma(t) for t in timesteps], dtype=torch.float32, device=z0.device
        )
        eps = torch.stack([draw_noise(z0.shape[1:], seed=seed, image_id=i, draw=draw) for i in image_ids])
        eps = eps.to(z0.device)
        zt = (
            coef[None, :, 0, None, None, None] * z0[:, None]
            + coef[None, :, 1, None, None, None] * eps[:, None]
        )
        return zt.reshape(-1, *z0.shape[1:])

    def model_timesteps(self, timesteps: list[Any], n_images: int) -> torch.Tensor:
        t = torch.tensor([self.schedule.model_timestep(v) for v in timesteps], dtype=torch.float32)
        return t.repeat(n_images).to(self.device)

    def forward_features(
        self, latents: torch.Tensor, model_t: torch.Tensor, layers: list[int]
    ) -> dict[int, torch.Tensor]:
        """Hooked forward with early exit: layer → (N, C, h, w) image-token maps."""
        h, w = self.token_grid(tuple(latents.shape[-2:]))
        latents = latents.to(self.transformer.dtype)
        taps = run_blocks_with_taps(
            lambda: self.run_transformer(latents, model_t),
            self.blocks(),
            layers,
            lambda out: image_tokens(out, h * w),
        )
        return {layer: tokens_to_map(tok.float(), h, w) for layer, tok in taps.items()}

    @torch.inference_mode()
    def bare_forward(self, images: torch.Tensor, timesteps: Any = None) -> Any:
        """The model's own work on a batch, without hooks or stored features: VAE encoding, then ONE full
        transformer forward over every (image, timestep) at plain Gaussian noise — the reference of the
        extraction-overhead benchmark."""
        x = self.preprocess(images)
        ts = self.resolve_timesteps(timesteps)
        z0 = self.encode(x)
        zt = z0.repeat_interleave(len(ts), dim=0)
        zt = zt + torch.randn_like(zt)
        return self.run_transformer(zt.to(self.transformer.dtype), self.model_timesteps(ts, len(x)))

    def _extract(
        self,
        x: torch.Tensor,
        layers: list[int],
        timesteps: list[Any],
        *,
        image_ids: Sequence[str] | None,
        seed: int,
        noise_draws: int,
    ) -> dict[FeatureKey, torch.Tensor]:
        return self.average_over_draws(
            x, layers, timesteps, image_ids=image_ids, seed=seed, noise_draws=noise_draws
        )

    def average_over_draws(
        self,
        x: torch.Tensor,
        layers: list[int],
        timesteps: list[Any],
        *,
        image_ids: Sequence[str] | None,
        seed: int,
        noise_draws: int,
        forward: Callable[[torch.Tensor, torch.Tensor, list[int]], dict[int, torch.Tensor]] | None = None,
    ) -> dict[FeatureKey, torch.Tensor]:
        """The extraction of one compute batch: encode, noise to every timestep, ``forward(noisy latents, model
        timesteps, layers)`` (default :meth:`forward_features`; layer → (rows, C, h, w)) once per noise draw,
        mean over draws, split into ``(layer, timestep)``. Other per-layer maps of the same forward (the concept
        maps of :mod:`backbones.diffusion.concepts`) pass their own ``forward`` and inherit everything else."""
        forward = forward or self.forward_features
        ids = [str(i) for i in (image_ids if image_ids is not None else range(x.shape[0]))]
        n_t = len(timesteps)
        if all(self.schedule.alpha_sigma(t)[1] == 0.0 for t in timesteps):
            noise_draws = 1  # clean latents only: every draw gives the same features
        z0 = self.encode(x)
        model_t = self.model_timesteps(timesteps, len(ids))
        acc: dict[int, torch.Tensor] = {}
        for k in range(noise_draws):
            feats = forward(self.noised(z0, timesteps, ids, seed, k), model_t, layers)
            for layer, f in feats.items():
                acc[layer] = f if layer not in acc else acc[layer] + f
        out: dict[FeatureKey, torch.Tensor] = {}
        for layer in layers:
            f = acc[layer] / noise_draws
            f = f.reshape(x.shape[0], n_t, *f.shape[1:])
            for ti, t in enumerate(timesteps):
                out[(layer, t)] = f[:, ti]
        return out


def load_text_pipeline(pipeline_cls: str, folder: Path, device: torch.device, dtype: torch.dtype) -> Any:
    """The diffusers pipeline in ``folder`` with its text encoders and tokenizers only (no transformer, no VAE),
    on ``device`` in ``dtype``."""
    import diffusers

    pipe = getattr(diffusers, pipeline_cls).from_pretrained(
        str(folder), transformer=None, vae=None, torch_dtype=dtype
    )
    return pipe.to(device)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class TextConditionedAdapter(DiffusionAdapter):
    """A text-to-image transformer (SD3, FLUX, PixArt, Sana) conditioned on one fixed prompt (empty by default).

    Options at creation: ``prompt=""``; ``text_embeddings=TextConditioning(...)`` to inject embeddings (tests,
    precomputed prompts); ``prompt_cache=PromptEmbeddingCache(root)``. With random weights the embeddings are
    seeded random tensors of the real shape; with real weights the pipeline's own ``encode_prompt`` runs once
    per prompt (needs ``transformers``) and the result is cached on disk.
    """

    text_subfolders: tuple[str, ...] = ()

    def __init__(
        self,
        meta: BackboneMeta,
        model: DiffusionModules,
        *,
        text: TextConditioning,
        prompt: str = "",
        **kwargs: Any,
    ):
        super().__init__(meta, model, **kwargs)
        self.prompt = prompt
        self.text = text
        # prompt → embeddings with this model's own text path (set by the factory / tiny-mmdit; None: injected
        # embeddings only); what generation conditions each sample on
        self.text_encoder: Callable[[str], TextConditioning] | None = None
        self._batch_text: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None] | None = None

    # -- family hooks ----------------------------------------------------------------------------------
    @classmethod
    def text_dims(cls, transformer: nn.Module) -> tuple[int, int]:
        """(embedding width, pooled width or 0) the transformer expects."""
        raise NotImplementedError

    @classmethod
    def encode_prompt(
        cls, folder: Path, prompt: str, text: TextSpec, *, device: torch.device, dtype: torch.dtype
    ) -> TextConditioning:
        """Run the real text encoders of the pipeline stored in ``folder`` on ``prompt`` (on ``device`` in
        ``dtype``; see :func:`load_text_pipeline`), returning float32 CPU tensors."""
        raise NotImplementedError

    @classmethod
    def prepare_family(cls, spec: DiffusionSpec, modules: DiffusionModules, **kwargs: Any) -> dict[str, Any]:
        if kwargs:
            raise ProbebenchError(f"{spec.name} takes no option(s) {', '.join(map(repr, kwargs))}.")
        return {}

    # -- setup -----------------------------------------------------------------------------------------
    @classmethod
    def before_load(
        cls,
        spec: DiffusionSpec,
        *,
        weights: str,
        config: str,
        root: Path | None,
        random_seed: int,
        device: Any = None,
        dtype: torch.dtype = torch.float32,
        prompt: str = "",
        text_embeddings: TextConditioning | None = None,
        prompt_cache: PromptEmbeddingCache | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The prompt embeddings, before the transformer is loaded: injected, seeded stand-ins (random weights),
        or the pipeline's own from the prompt cache — on a miss its text encoders run once on the adapter's
        device and dtype and are freed, so a missing ``transformers`` or text-encoder file fails before any
        large weight is read, and the encoders never share memory with the transformer."""
        text_spec = spec.tiny_text if config == "tiny" else spec.text
        assert text_spec is not None

        def encode_real(folder: Path, p: str, dev: torch.device, enc_dtype: torch.dtype) -> TextConditioning:
            require_transformers(f"Embedding the prompt {p!r} for {spec.name}")
            try:
                return cls.encode_prompt(folder, p, text_spec, device=dev, dtype=enc_dtype)
            finally:
                free_memory()

        cond = text_conditioning_for(
            spec,
            weights=weights,
            config=config,
            root=root,
            prompt=prompt,
            random_seed=random_seed,
            text_embeddings=text_embeddings,
            encode_real=encode_real,
            subfolders=cls.text_subfolders,
            device=device,
            dtype=dtype,
            cache=prompt_cache,
        )
        return {"prompt": prompt, "text_embeddings": cond, **kwargs}

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
        prompt: str = "",
        text_embeddings: TextConditioning | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        extra = cls.prepare_family(spec, modules, **kwargs)
        assert text_embeddings is not None, "before_load() resolves the prompt embeddings"
        cls.check_text(text_embeddings, modules.transformer)
        return {"text": text_embeddings, "prompt": prompt, **extra}

    @classmethod
    def check_text(cls, cond: TextConditioning, transformer: nn.Module) -> None:
        dim, pooled = cls.text_dims(transformer)
        if cond.embeds.ndim != 3 or cond.embeds.shape[0] != 1 or cond.embeds.shape[-1] != dim:
            raise ProbebenchError(
                f"Text embeddings must have shape (1, L, {dim}), got {tuple(cond.embeds.shape)}."
            )
        if pooled and (cond.pooled is None or tuple(cond.pooled.shape) != (1, pooled)):
            got = None if cond.pooled is None else tuple(cond.pooled.shape)
            raise ProbebenchError(f"Pooled text embeddings must have shape (1, {pooled}), got {got}.")
        if cond.mask is not None and tuple(cond.mask.shape) != tuple(cond.embeds.shape[:2]):
            raise ProbebenchError(f"Text mask shape {tuple(cond.mask.shape)} does not match the embeddings.")

    def set_text_conditioning(self, cond: TextConditioning, prompt: str | None = None) -> None:
        """Swap the prompt embeddings (the fingerprint follows)."""
        self.check_text(cond, self.transformer)
        self.text = cond
        if prompt is not None:
            self.prompt = prompt

    def text_inputs(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if self._batch_text is not None:
            if self._batch_text[0].shape[0] != n:
                raise ProbebenchError(
                    f"Per-sample conditioning holds {self._batch_text[0].shape[0]} samples, the batch {n}."
                )
            return self._batch_text
        return self.text.expand(n, self.device, self.transformer.dtype)

    def sample_condition(self, prompt: str) -> TextConditioning:
        return self.encode_text(prompt)

    def encode_text(self, prompt: str) -> TextConditioning:
        """The embeddings of ``prompt`` by this model's own text path (the adapter's prompt: its embeddings)."""
        if prompt == self.prompt:
            return self.text
        if self.text_encoder is None:
            raise ProbebenchError(
                f"{self.name} was given fixed prompt embeddings and cannot embed the prompt {prompt!r}."
            )
        return self.text_encoder(prompt)

    def sampling_prompt_arguments(
        self,
        conditioning: Sequence[TextConditioning] | None,
        guidance: float,
        negative: TextConditioning | None,
        n: int,
        *,
        pooled: bool = False,
        mask: bool = False,
    ) -> dict[str, Any]:
        """Per-sample prompt embeddings (None: the adapter's own for all) as diffusers' pipelines name them —
        ``prompt_embeds`` (+ ``pooled_prompt_embeds``, ``prompt_attention_mask``: all-ones when the embeddings
        carry none) — and, when ``guidance`` > 1, the ``negative_`` ones (default: the adapter's own prompt, the
        conditioning its extraction used)."""
        conds = list(conditioning) if conditioning is not None else [self.text] * n
        if len(conds) != n:
            raise ProbebenchError(f"{len(conds)} prompt embeddings for {n} samples.")

        def named(prefix: str, batch: Sequence[TextConditioning]) -> dict[str, Any]:
            embeds, pool, attn = stack_conditioning(batch, self.device, self.transformer.dtype)
            out = {f"{prefix}prompt_embeds": embeds}
            if pooled:
                out[f"{prefix}pooled_prompt_embeds"] = pool
            if mask:
                ones = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
                out[f"{prefix}prompt_attention_mask"] = attn if attn is not None else ones
            return out

        args = named("", conds)
        if guidance > 1.0:
            args.update(named("negative_", [negative if negative is not None else self.text] * n))
        return args

    def sampling_conditioning(
        self, conditioning: Sequence[TextConditioning] | None, n: int
    ) -> ContextManager[None]:
        return self.batch_conditioning(list(conditioning) if conditioning is not None else [self.text] * n)

    @contextmanager
    def batch_conditioning(self, conds: Sequence[TextConditioning]) -> Iterator[None]:
        """Forwards inside the block are conditioned per sample on ``conds`` (one per batch row) instead of the
        adapter's fixed prompt."""
        self._batch_text = stack_conditioning(conds, self.device, self.transformer.dtype)
        try:
            yield
        finally:
            self._batch_text = None

    def conditioning_fingerprint(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "text_source": self.text.source,
            "text_sha256": self.text.digest(),
            "text_tokens": int(self.text.embeds.shape[1]),
        }


def stack_conditioning(
    conds: Sequence[TextConditioning], device: Any, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One batch of per-sample prompt embeddings (each ``(1, L, D)``; all of one length, as the family's
    ``encode_prompt`` pads them)."""
    shapes = {tuple(c.embeds.shape) for c in conds}
    if len(shapes) != 1:
        raise ProbebenchError(
            f"Prompt embeddings of different shapes cannot share a batch: {sorted(shapes)}."
        )
    embeds = torch.cat([c.embeds for c in conds]).to(device=device, dtype=dtype)
    pooled = None if conds[0].pooled is None else torch.cat([c.pooled for c in conds]).to(device, dtype)  # type: ignore[misc]
    mask = None if conds[0].mask is None else torch.cat([c.mask for c in conds]).to(device)  # type: ignore[misc]
    return embeds, pooled, mask
