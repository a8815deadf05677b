"""Creating and registering a diffusion backbone: spec + weights → modules, schedule, metadata → adapter.

:func:`register_diffusion` puts a :class:`~backbones.diffusion.spec.DiffusionSpec` in the backbone registry
with its metadata and tiny test config; the registered factory is :func:`create_diffusion_adapter`, which
builds the modules (:mod:`backbones.diffusion.weights`), the family's schedule and metadata, and the one
sentence that says what the weights are.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from backbones.base import BackboneMeta
from backbones.diffusion.adapter import DiffusionAdapter, TextConditionedAdapter
from backbones.diffusion.noise import DDPMSchedule, FlowSchedule, NoiseSchedule
from backbones.diffusion.spec import DiffusionSpec
from backbones.diffusion.text import TextConditioning
from backbones.diffusion.weights import build_modules, read_scheduler_config, resolve_weights
from backbones.random_init import random_weights_note
from probebench.core.errors import ProbebenchError


def tiny_meta(meta: BackboneMeta, num_layers: int, width: int, image_size: int) -> BackboneMeta:
    """The registered metadata with the dimensions of the test-sized config."""
    return replace(
        meta,
        num_layers=num_layers,
        width=width,
        image_size=image_size,
        notes=(meta.notes + " [tiny random test config]").strip(),
    )


def make_schedule(spec: DiffusionSpec, root: Path | None, transformer: nn.Module) -> NoiseSchedule:
    """The family's schedule; DDPM betas come from the checkpoint's scheduler config when there is one."""
    if spec.convention == "ddpm":
        params = dict(spec.ddpm)
        sched_cfg = read_scheduler_config(root)
        params.update({k: sched_cfg[k] for k in params if k in sched_cfg})
        return DDPMSchedule(**params)
    scale = spec.flow_timestep_scale * float(getattr(transformer.config, "timestep_scale", 1.0) or 1.0)
    return FlowSchedule(timestep_scale=scale)


def diffusion_weights_note(
    spec: DiffusionSpec,
    weights: str,
    root: Path | None,
    *,
    random_seed: int,
    text: TextConditioning | None = None,
) -> str:
    """What the weights of a diffusion adapter are, in one sentence (``Adapter.weights_note``)."""
    if weights == "random":
        note = random_weights_note(
            random_seed, f"random (diffusers' {spec.vae_cls} init, seed {random_seed})"
        )
        if text is not None and text.source.startswith("random:"):
            note += "; prompt embeddings: seeded N(0, 1) stand-ins"
        return note
    if weights == "default":
        return f"pretrained: Hugging Face {spec.hf_id} (snapshot {root.name if root else '?'}), transformer and VAE"
    return f"pretrained: local diffusers folder {root}, transformer and VAE"


def create_diffusion_adapter(
    spec: DiffusionSpec,
    adapter_cls: type[DiffusionAdapter],
    name: str,
    *,
    weights: str = "default",
    device: Any = None,
    dtype: Any = None,
    config: str = "full",
    image_size: int | None = None,
    random_seed: int = 0,
    compute_batch: int = 8,
    **family_kwargs: Any,
) -> DiffusionAdapter:
    """Check the weights folder, resolve what must exist before loading (prompt embeddings), build the modules
    (random / HF / folder), the schedule and metadata, then the family adapter.

    ``family_kwargs`` go through ``adapter_cls.before_load(spec, weights=..., root=..., device=..., ...)`` (before
    any large weight is read) and then ``adapter_cls.prepare(spec, modules, ...)``, which turns them into
    constructor arguments (text conditioning, class id, guidance...).
    """
    from backbones.base import parse_dtype

    torch_dtype = parse_dtype(dtype)
    resolved = resolve_weights(spec, weights, config, random_seed)

    def before_load(**kwargs: Any) -> dict[str, Any]:  # also embeds other prompts later (generation)
        return adapter_cls.before_load(
            spec,
            weights=weights,
            config=config,
            root=resolved[0],
            random_seed=random_seed,
            device=device,
            dtype=torch_dtype,
            **kwargs,
        )

    options = before_load(**family_kwargs)
    modules, weights_id, root = build_modules(
        spec, weights, config=config, random_seed=random_seed, dtype=torch_dtype, resolved=resolved
    )
    blocks = adapter_cls.block_list(modules.transformer)
    cfg = modules.transformer.config
    width = int(
        getattr(modules.transformer, "inner_dim", 0) or cfg.num_attention_heads * cfg.attention_head_dim
    )
    size = int(image_size or (spec.tiny_image_size if config == "tiny" else spec.image_size))
    meta = replace(spec.meta(), name=name, num_layers=len(blocks), width=width, image_size=size)
    if config == "tiny":
        meta = tiny_meta(meta, len(blocks), width, size)
    extra = adapter_cls.prepare(
        spec, modules, weights=weights, config=config, root=root, random_seed=random_seed, **options
    )
    note = diffusion_weights_note(spec, weights, root, random_seed=random_seed, text=extra.get("text"))
    adapter = adapter_cls(
        meta,
        modules,
        schedule=make_schedule(spec, root, modules.transformer),
        compute_batch=compute_batch,
        weights=weights,
        weights_id=weights_id,
        weights_note=note,
        device=device,
        dtype=torch_dtype,
        image_size=size,
        **extra,
    )
    adapter.spec = spec
    if isinstance(
        adapter, TextConditionedAdapter
    ):  # other prompts (generation): the first prompt's text path
        rest = {k: v for k, v in family_kwargs.items() if k not in ("prompt", "text_embeddings")}
        adapter.text_encoder = lambda prompt: before_load(prompt=prompt, **rest)["text_embeddings"]
        tokenizer = getattr(adapter_cls, "concept_tokenizer", None)  # the tokenizer of the concept tokens
        if tokenizer and weights != "random" and root is not None and (Path(root) / tokenizer).is_dir():
            from backbones.diffusion.text import word_pieces_reader

            adapter.word_pieces = word_pieces_reader(Path(root) / tokenizer)
    return adapter


# registered name → (spec, adapter class), filled by :func:`register_diffusion`
DIFFUSION_SPECS: dict[str, tuple[DiffusionSpec, type[DiffusionAdapter]]] = {}


def diffusion_spec(name: str) -> tuple[DiffusionSpec, type[DiffusionAdapter]]:
    """The spec and adapter class of a registered diffusion backbone (importing the registry first)."""
    from backbones._registry import BACKBONES
    from probebench.core.errors import unknown_message

    BACKBONES.names()  # imports the built-in family modules, which register their specs
    if name not in DIFFUSION_SPECS:
        raise ProbebenchError(unknown_message("diffusion backbone", name, sorted(DIFFUSION_SPECS)))
    return DIFFUSION_SPECS[name]


def register_diffusion(spec: DiffusionSpec, adapter_cls: type[DiffusionAdapter], kind: str) -> None:
    """Register ``spec.name`` with its metadata and the tiny test config (``test_kwargs={'config': 'tiny'}``)."""
    from backbones._registry import BACKBONES

    DIFFUSION_SPECS[spec.name] = (spec, adapter_cls)

    def factory(
        name: str, weights: str = "default", device: Any = None, dtype: Any = None, **kwargs: Any
    ) -> DiffusionAdapter:
        return create_diffusion_adapter(
            spec, adapter_cls, name, weights=weights, device=device, dtype=dtype, **kwargs
        )

    factory.__name__ = f"create_{spec.name.replace('-', '_').replace('.', '_')}"
    factory.__doc__ = f"``{spec.name}``: {spec.notes}"
    BACKBONES.register(
        spec.name,
        factory,
        kind=kind,
        source=spec.hf_id,
        notes=spec.notes,
        family=spec.family,
        meta=spec.meta(),
        test_name=spec.name,
        test_kwargs={"config": "tiny"},
    )
