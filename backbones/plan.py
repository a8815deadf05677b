"""What an extraction will cost, known before any weight is read: feature shapes, parameters and forwards.

:func:`feature_plan` answers for a registered backbone from its registered configuration alone. The
architecture is built on PyTorch's *meta* device (every parameter has a shape and no storage, so FLUX's 12 B
parameters cost nothing) for exact parameter counts and layer lists; feature-map shapes come from the same
geometry the adapters use — image size / VAE downsampling / token patch for the diffusion transformers
(:class:`~backbones.diffusion.DiffusionAdapter`), and a meta-device ``forward_intermediates`` for timm models
— then :func:`~backbones.store.pool_features` on a meta tensor for ``pool_to``. Weights stay on disk (or
absent): a plan works offline for any registered size. ``tests/test_plan.py`` checks every registered backbone's
plan against a real extraction of its tiny config.

Counting conventions (what :class:`BackbonePlan` reports):

* **Model rows.** A diffusion adapter runs ONE batched transformer forward per compute batch and noise draw,
  holding every requested timestep of every image of the batch as a row (``compute_batch × T`` rows, see
  :mod:`backbones.diffusion`), and stops after the deepest requested block. So an image costs ``T × K`` rows
  (K noise draws; one draw when every timestep is the clean latent). A timm model costs one row per image
  (early exit at the deepest requested level).
* **Cache bytes** of ``N`` images: ``N × h × w × C × 2`` (fp16) per (layer, timestep) key — the feature arrays
  only; ``.npy`` headers (128 bytes per shard file), shard markers and the manifest are not counted.
* **Memory** is an estimate: parameters as built (their dtype), plus activations of one compute batch,
  ``compute_batch × rows per image × elements per row × bytes per element × ACTIVATION_FACTOR``, where the
  elements per row are the widest hidden state (tokens × width; for a CNN the largest feature map).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from backbones.base import FeatureKey, parse_dtype, resolve_layers
from probebench.core.errors import ProbebenchError

ACTIVATION_FACTOR = 8
"""Live activation copies per hidden-state element in a forward (residual, norm, q/k/v, attention output and a
4× MLP expansion): the multiplier of the memory estimate."""


@dataclass(frozen=True)
class BackbonePlan:
    """The cost of one backbone's extraction per image, from :func:`feature_plan` (no weights loaded)."""

    name: str
    image_size: int
    num_layers: int
    layers: tuple[int, ...]
    timesteps: tuple[Any, ...]  # native timesteps; (None,) for a non-diffusion backbone
    shapes: dict[FeatureKey, tuple[int, int, int]]  # (h, w, C) of each key as stored (after pool_to)
    grid: dict[
        FeatureKey, tuple[int, int, int]
    ]  # (h, w, C) of each key as the model returns it (before pooling)
    n_params: int
    param_bytes: int  # parameters in the dtype they are built in
    row_elements: int  # elements of the widest hidden state of one model row (tokens × width)
    act_bytes: int  # bytes per activation element (the run dtype)
    noise_draws: int  # effective draws (1 for clean-only timesteps and for non-diffusion backbones)
    compute_batch: int
    source: str  # where the numbers come from, in words
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def diffusion(self) -> bool:
        return self.timesteps != (None,)

    @property
    def keys(self) -> list[FeatureKey]:
        return list(self.shapes)

    def key_bytes(self, key: FeatureKey) -> int:
        """fp16 bytes of one image's feature map at ``key``."""
        h, w, c = self.shapes[key]
        return h * w * c * 2

    def bytes_per_image(self, keys: list[FeatureKey] | None = None) -> int:
        return sum(self.key_bytes(k) for k in (self.shapes if keys is None else keys))

    def cache_bytes(self, n_images: int, keys: list[FeatureKey] | None = None) -> int:
        """Feature-array bytes of a cache of ``n_images`` (fp16, (N, h, w, C) per key)."""
        return n_images * self.bytes_per_image(keys)

    @property
    def rows_per_image(self) -> int:
        """Model rows one image costs: T timesteps × K noise draws (diffusion), else 1."""
        return len(self.timesteps) * self.noise_draws if self.diffusion else 1

    @property
    def deepest(self) -> int:
        return max(self.layers)

    def with_pool(self, pool_to: int | None) -> BackbonePlan:
        """This plan with its maps pooled to at most ``pool_to`` (as the feature store pools them)."""
        return replace(self, shapes={k: _pooled(s, pool_to) for k, s in self.grid.items()})

    def activation_bytes(self) -> int:
        """Estimated activations of one compute batch (see the module docstring)."""
        rows = self.compute_batch * (len(self.timesteps) if self.diffusion else 1)
        return rows * self.row_elements * self.act_bytes * ACTIVATION_FACTOR


def _pooled(shape: tuple[int, int, int], pool_to: int | None) -> tuple[int, int, int]:
    """(h, w, C) after :func:`~backbones.store.pool_features` (run on a meta tensor: its own rounding)."""
    from backbones.store import pool_features

    h, w, c = shape
    out = pool_features(torch.empty(1, c, h, w, device="meta"), pool_to)
    return int(out.shape[2]), int(out.shape[3]), c


@dataclass(frozen=True)
class _Arch:
    """What a family planner knows: the layer list, geometry and sizes of the built (meta) architecture."""

    num_layers: int
    image_size: int
    channels: dict[int, tuple[int, int, int]]  # layer → (h, w, C) before pooling; every layer
    n_params: int
    param_bytes: int
    row_elements: int
    act_bytes: int
    schedule: Any  # a NoiseSchedule, or None for a non-diffusion backbone
    source: str
    notes: tuple[str, ...] = ()
    joint_layers: int = 0  # the joint (text + image) blocks concept maps are read from (0: none)


def _sizes(*modules: torch.nn.Module) -> tuple[int, int]:
    params = [p for m in modules for p in m.parameters()]
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def _diffusion_arch(name: str, weights: str, image_size: int | None, dtype: torch.dtype, opts: dict) -> _Arch:
    """A registered :class:`~backbones.diffusion.DiffusionSpec`: transformer and VAE built on the meta device from
    the spec's configs (the full or the tiny ones), geometry as :class:`DiffusionAdapter` computes it."""
    import diffusers

    from backbones.diffusion import DDPMSchedule, FlowSchedule, diffusion_spec, vae_downsample

    spec, adapter_cls = diffusion_spec(name)
    tiny = opts.get("config", "full") == "tiny"
    tcfg = spec.tiny_transformer_config if tiny else spec.transformer_config
    vcfg = spec.tiny_vae_config if tiny else spec.vae_config
    with torch.device("meta"):
        transformer = getattr(diffusers, spec.transformer_cls)(**tcfg)
        vae = getattr(diffusers, spec.vae_cls)(**vcfg)
    torch.nn.Module.to(transformer, dtype)  # as build_modules and from_pretrained do; the VAE stays float32
    cfg = transformer.config
    width = int(getattr(transformer, "inner_dim", 0) or cfg.num_attention_heads * cfg.attention_head_dim)
    size = int(image_size or (spec.tiny_image_size if tiny else spec.image_size))
    step = (
        vae_downsample(vcfg) * spec.patch_size
    )  # spec.patch_size: latent pixels per token (FLUX: 2×2 packing)
    if size % step:
        raise ProbebenchError(
            f"{name}: image_size {size} must be a multiple of {step} "
            f"(VAE downsampling {vae_downsample(vcfg)} x patch {spec.patch_size})."
        )
    side = size // step
    num_layers = len(adapter_cls.block_list(transformer))
    joint = len(getattr(transformer, "transformer_blocks", ())) if spec.family in ("sd3", "flux") else 0
    text = spec.tiny_text if tiny else spec.text
    n, nbytes = _sizes(transformer, vae)
    schedule = (
        DDPMSchedule(**spec.ddpm) if spec.convention == "ddpm" else FlowSchedule(spec.flow_timestep_scale)
    )
    return _Arch(
        num_layers,
        size,
        dict.fromkeys(range(num_layers), (side, side, width)),
        n,
        nbytes,
        (side * side + (text.seq_len if text else 0)) * width,
        transformer.dtype.itemsize,
        schedule,
        f"registered {'tiny ' if tiny else ''}config of {spec.hf_id} ({spec.transformer_cls} + {spec.vae_cls})",
        ("text encoders run once per prompt before extraction (not counted)",) if weights != "random" else (),
        joint,
    )


def _tiny_mmdit_arch(weights: str, image_size: int | None, opts: dict) -> _Arch:
    """``tiny-mmdit``: the architecture in the weight file's metadata (read without its tensors); the random twin
    is :data:`backbones.tiny_mmdit.ARCHITECTURE` with the shipped VAE. Built in float32 (as the adapter runs)."""
    from diffusers import AutoencoderKL

    from backbones.diffusion import FlowSchedule, vae_downsample
    from backbones.tiny.model import build, model_config, read_metadata
    from backbones.tiny_mmdit import ARCHITECTURE, _weights_path

    file_meta = read_metadata(_weights_path("default" if weights == "random" else weights))
    mcfg = model_config(**ARCHITECTURE) if weights == "random" else file_meta["model_config"]
    vcfg = file_meta.get("vae_config")
    with torch.device("meta"):
        transformer, _ = build(mcfg, seed=None)
        vae = AutoencoderKL(**vcfg) if vcfg else None
    factor = vae_downsample(vcfg) if vcfg else 1
    size = int(image_size or int(mcfg["sample_size"]) * factor)
    side = size // factor // int(mcfg["patch_size"])
    width = int(mcfg["num_attention_heads"]) * int(mcfg["attention_head_dim"])
    n, nbytes = _sizes(
        transformer, *([vae] if vae is not None else [])
    )  # adapter.model (caption precomputed)
    return _Arch(
        int(mcfg["num_layers"]),
        size,
        dict.fromkeys(range(int(mcfg["num_layers"])), (side, side, width)),
        n,
        nbytes,
        (side * side + int(file_meta["max_tokens"])) * width,
        4,
        FlowSchedule(1000.0),
        "the weight file's model_config (metadata only)",
        joint_layers=int(mcfg["num_layers"]),
    )


def _timm_arch(model_name: str, image_size: int | None, dtype: torch.dtype, model_kwargs: dict) -> _Arch:
    """A timm model built on the meta device as :func:`~backbones.timm_backbones.build_timm_adapter` builds it;
    shapes from a meta-device ``forward_intermediates`` at every ``feature_info`` level (no compute)."""
    import timm

    from probebench.core.errors import UnknownNameError

    if not timm.models.is_model(model_name):
        raise UnknownNameError(
            "timm model", model_name, timm.list_models(), "Any name from timm.list_models() works."
        )
    with torch.device("meta"):
        try:
            model = timm.create_model(
                model_name,
                pretrained=False,
                **model_kwargs,
                **({"img_size": image_size} if image_size else {}),
            )
        except TypeError:
            model = timm.create_model(model_name, pretrained=False, **model_kwargs)
        size = int(image_size or (model.pretrained_cfg or {}).get("input_size", (3, 224, 224))[-1])
        levels = list(range(len(model.feature_info)))
        feats = model.forward_intermediates(
            torch.empty(1, 3, size, size), indices=levels, intermediates_only=True, output_fmt="NCHW"
        )
    shapes = {i: (int(f.shape[2]), int(f.shape[3]), int(f.shape[1])) for i, f in zip(levels, feats)}
    n, nbytes = _sizes(model)  # timm adapters keep float32 weights and run under autocast
    return _Arch(
        len(levels),
        size,
        shapes,
        n,
        nbytes,
        max(h * w * c for h, w, c in shapes.values()),
        dtype.itemsize,
        None,
        f"timm {model_name} on the meta device",
    )


def _arch(name: str, weights: str, image_size: int | None, dtype: torch.dtype, opts: dict) -> _Arch:
    """The family planner of registered backbone ``name`` (an unknown name: the registry's error)."""
    from backbones import BACKBONES
    from backbones.diffusion import DIFFUSION_SPECS

    BACKBONES.entry(name)  # unknown names: one error with the closest registered ones
    BACKBONES.get(name)  # imports a lazy family, which registers its specs
    if name in DIFFUSION_SPECS:
        return _diffusion_arch(name, weights, image_size, dtype, opts)
    if name == "tiny-mmdit":
        return _tiny_mmdit_arch(weights, image_size, opts)
    if name.startswith("timm:"):
        return _timm_arch(name.split(":", 1)[1], image_size, dtype, dict(opts.get("model_kwargs") or {}))
    from backbones.dinov3 import MODELS, TINY_KWARGS

    if name in MODELS:
        tiny = opts.get("config", "full") == "tiny"
        kwargs = {**(opts.get("model_kwargs") or {}), **(TINY_KWARGS if tiny else {})}
        return _timm_arch(MODELS[name][0], image_size or (64 if tiny else None), dtype, kwargs)
    raise ProbebenchError(
        f"No cost plan for backbone {name!r}: backbones/plan.py knows the registered diffusion specs, tiny-mmdit, "
        "timm: and dinov3 models. Its sizes are unknown until it is built."
    )


def _concept_arch(name: str, arch: _Arch, concepts: Any) -> _Arch:
    """The architecture's concept maps: its joint blocks, each a (h, w, C concepts) map."""
    from backbones.diffusion.concepts import ConceptSpec, supported_backbones

    spec = ConceptSpec.parse(concepts)
    if not arch.joint_layers:
        raise ProbebenchError(
            f"Concept maps need an MM-DiT's joint attention; {name} has none. Backbones that support them: "
            f"{', '.join(supported_backbones())}."
        )
    c = len(spec.channels)
    h, w, _ = arch.channels[0]
    return replace(
        arch,
        num_layers=arch.joint_layers,
        channels=dict.fromkeys(range(arch.joint_layers), (h, w, c)),
        notes=(
            *arch.notes,
            "concept maps: the concept stream's memory is checked at extraction (concept_memory_bytes)",
        ),
    )


def feature_plan(
    name: str,
    weights: str = "default",
    *,
    image_size: int | None = None,
    layers: Any = None,
    timesteps: Any = None,
    options: Mapping[str, Any] | None = None,
    dtype: str | torch.dtype | None = None,
    noise_draws: int = 1,
    pool_to: int | None = None,
    concepts: Any = None,
) -> BackbonePlan:
    """The extraction cost of backbone ``name`` per image, without loading weights (see the module docstring).

    Arguments mean what they mean to :func:`backbones.create` and :func:`backbones.store.extract_to_cache`:
    ``options`` are the backbone's creation options (``config="tiny"``, ``compute_batch``, ...), ``layers`` and
    ``timesteps`` are resolved as the adapter resolves them, ``pool_to`` shrinks the stored maps; ``concepts``
    (as ``backbones.create`` takes them): the features are concept maps, one channel per word (two for ``output:
    pair``) on the joint blocks.
    """
    opts = dict(options or {})
    torch_dtype = parse_dtype(dtype)
    arch = _arch(name, weights, image_size, torch_dtype, opts)
    if concepts is not None:
        arch = _concept_arch(name, arch, concepts)
    layer_idx = resolve_layers(layers, arch.num_layers)
    if arch.schedule is None:
        if timesteps is not None and not (
            isinstance(timesteps, (list, tuple)) and all(t is None for t in timesteps)
        ):
            raise ProbebenchError(
                f"Backbone {name!r} is not a diffusion model and takes no timesteps (got {timesteps!r}); "
                "leave timesteps unset."
            )
        ts: list[Any] = [None]
        draws = 1
    else:
        ts = arch.schedule.resolve(timesteps)
        clean = all(arch.schedule.alpha_sigma(t)[1] == 0.0 for t in ts)
        draws = 1 if clean else int(noise_draws)
    grid = {(layer, t): arch.channels[layer] for layer in layer_idx for t in ts}
    return BackbonePlan(
        name=name,
        image_size=arch.image_size,
        num_layers=arch.num_layers,
        layers=tuple(layer_idx),
        timesteps=tuple(ts),
        shapes={k: _pooled(s, pool_to) for k, s in grid.items()},
        grid=grid,
        n_params=arch.n_params,
        param_bytes=arch.param_bytes,
        row_elements=arch.row_elements,
        act_bytes=arch.act_bytes,
        noise_draws=draws,
        compute_batch=int(opts.get("compute_batch", 8)),
        source=arch.source,
        notes=arch.notes,
    )
