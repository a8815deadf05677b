"""``tiny-mmdit``: the project's own small MM-DiT (diffusers ``SD3Transformer2DModel``), trained with rectified
flow on the scene dataset (``backbones/tiny/``), so a real generative model can be probed offline.

It goes through the SD3 adapter unchanged, with its own small diffusers ``AutoencoderKL`` (64 px images →
16×16×4 latents, shipped in the same weight file, scaling and shift factors in its config) in place of SD3's
VAE. A pixel-space weight file (no autoencoder in it) runs with :class:`PixelSpace`, an identity "VAE" with
scaling 1 and shift 0. Conditioning is the empty caption by default (as real backbones use the empty prompt: a caption that
lists the classes present would leak the labels into the features); ``caption=[class names]`` gives
caption-conditioned features, and the caption is part of the adapter fingerprint and of every cache hash.

``weights="random"`` is the random-weight control ("the trained model beats its random twin"): the shipped
architecture with the standard random init of :mod:`backbones.random_init` (PyTorch's default layer init, seed
``random_seed=0``; NOT the adaLN-Zero training init of ``backbones.tiny.model.build``, under which every block is
the identity and all layers' features are equal), a random caption embedding, and the shipped **trained** VAE —
the same latents as the trained model, so the comparison isolates what the DiT's training adds. Its
``weights_id`` carries the init's version tag and the VAE's state hash; ``weights_note`` says all this in one
sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from backbones._registry import BACKBONES
from backbones.base import BackboneMeta, file_sha256, module_sha256, parse_dtype
from backbones.diffusion import DiffusionModules, FlowSchedule, TextConditioning, vae_downsample
from backbones.mmdit import SD3Adapter
from backbones.random_init import RANDOM_INIT, random_weights_note, standard_random_init
from probebench.core.errors import ProbebenchError, WeightsNotFoundError


class PixelSpace(nn.Module):
    """The identity autoencoder of a pixel-space diffusion model, with a diffusers-like interface.

    ``encode(x)`` returns ``x`` as the posterior mean; ``config`` says: scaling 1, shift 0, no downsampling.
    """

    def __init__(self, channels: int = 3):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # carries the dtype/device
        self.config = SimpleNamespace(
            scaling_factor=1.0, shift_factor=0.0, block_out_channels=[channels], latent_channels=channels
        )

    def encode(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=x))


ARCHITECTURE = {
    "num_layers": 6,
    "num_heads": 3,
    "head_dim": 64,
    "text_dim": 128,
    "resolution": 16,
    "patch_size": 2,
    "in_channels": 4,
}
"""The shipped DiT's size (``backbones.tiny.model.model_config`` arguments): what ``weights="random"`` builds
(with the shipped trained VAE, whatever its size)."""
VAE_ARCHITECTURE = {"resolution": 64, "channels": (32, 64, 64), "latent_channels": 4}
"""The shipped autoencoder's size (``backbones.tiny.model.vae_config`` arguments)."""


def _weights_path(weights: str) -> Path:
    from backbones.tiny.model import DEFAULT_WEIGHTS

    path = DEFAULT_WEIGHTS if weights == "default" else Path(weights).expanduser()
    if path.is_dir():
        path = path / "tiny_mmdit.safetensors"
    if not path.is_file():
        raise WeightsNotFoundError(
            f"tiny-mmdit weights not found at {path} (they ship in backbones/tiny/weights/)."
        )
    return path


def _shipped_vae_file() -> Path:
    """The shipped weight file whose trained VAE the random twin uses (a clear error when it is missing)."""
    try:
        return _weights_path("default")
    except WeightsNotFoundError as e:
        raise WeightsNotFoundError(
            f"{e} The random twin (weights='random') uses the shipped trained VAE from that file."
        ) from e


@BACKBONES.register(
    "tiny-mmdit",
    kind="diffusion (MM-DiT, flow)",
    source="shipped: backbones/tiny/weights",
    notes="SD3-class MM-DiT + small VAE trained here on scenes (64 px); caption=[...] optional",
    family="sd3",
    meta=BackboneMeta(
        name="tiny-mmdit",
        family="sd3",
        source="backbones/tiny/weights/tiny_mmdit.safetensors",
        num_layers=ARCHITECTURE["num_layers"],
        width=ARCHITECTURE["num_heads"] * ARCHITECTURE["head_dim"],
        patch_size=ARCHITECTURE["patch_size"],
        image_size=VAE_ARCHITECTURE["resolution"],
        timestep_convention="flow",
        license="Apache-2.0 (trained by this project)",
        notes="latent-space rectified-flow MM-DiT trained on the scene dataset",
    ),
    test_name="tiny-mmdit",
    test_kwargs={},
)
def create_tiny_mmdit(
    name: str,
    weights: str = "default",
    device: Any = None,
    dtype: Any = None,
    caption: list[str] | None = None,
    image_size: int | None = None,
    compute_batch: int = 8,
    random_seed: int = 0,
) -> SD3Adapter:
    """The trained model (``weights="default"`` or a path) or its untrained twin (``weights="random"``).

    The twin is the shipped architecture with the standard random init of :mod:`backbones.random_init` (seeded
    by ``random_seed``; not the adaLN-Zero training init, whose blocks are the identity), a random caption
    embedding, and the shipped *trained* VAE: the trained model and its twin then see the same latents, so the
    control isolates what the DiT's training adds.
    """
    from backbones.tiny.model import (
        DEFAULT_WEIGHTS,
        VOCAB,
        build,
        caption_from_names,
        empty_conditioning,
        load_vae,
        load_weights,
        model_config,
    )

    if weights == "random":  # the shipped architecture with seeded random weights + the shipped trained VAE
        path = _shipped_vae_file()
        vae = load_vae(path)
        if vae is None:
            raise ProbebenchError(
                f"{path} holds no autoencoder; tiny-mmdit's random twin needs the trained VAE."
            )
        with torch.random.fork_rng(devices=[]):
            # build() applies the adaLN-Zero *training* init; standard_random_init re-draws every layer
            transformer, caption_enc = build(model_config(**ARCHITECTURE), seed=random_seed)
        standard_random_init(transformer, random_seed)
        vae_id = module_sha256(vae)[:16]
        weights_id = f"random:seed{random_seed}:{RANDOM_INIT}+vae:sha256:{vae_id}"
        note = random_weights_note(random_seed, f"trained (shipped {path.name})")
        note += "; caption embedding: random N(0, 1)"
        meta_file = {}
    else:
        path = _weights_path(weights)
        transformer, caption_enc, meta_file = load_weights(path)
        vae = load_vae(path)
        digest = file_sha256(path)[:16]
        weights_id = f"file:sha256:{digest}"
        where = "shipped" if path.resolve() == DEFAULT_WEIGHTS.resolve() else "file"
        note = (
            f"trained: {where} {path.name} (sha256 {digest}), MM-DiT, caption embedding and "
            + ("VAE" if vae is not None else "no VAE (pixel space)")
            + " trained by recipes/tiny_mmdit/train.py on the scene dataset"
        )
    transformer.eval().requires_grad_(False)
    caption_enc.eval().requires_grad_(False)
    # the transformer runs in the adapter's dtype, as every diffusion family's (the VAE and caption table stay
    # float32); before, a bfloat16 tiny-mmdit was recorded as bfloat16 but computed in float32
    nn.Module.to(transformer, parse_dtype(dtype))

    def encode(words: Sequence[str]) -> TextConditioning:
        """A caption (class names; none: the empty caption) through the model's own caption table."""
        unknown = [c for c in words if c not in VOCAB[1:]]
        if unknown:
            raise ProbebenchError(
                f"tiny-mmdit caption words {unknown} are not in its vocabulary {list(VOCAB[1:])}."
            )
        with torch.no_grad():
            if words:
                hidden, pooled = caption_enc(caption_from_names(list(words))[None])
                return TextConditioning(
                    hidden.float(), pooled.float(), None, source=f"caption:{' '.join(words)}"
                )
            hidden, pooled = empty_conditioning(caption_enc)
        return TextConditioning(hidden.float(), pooled.float(), None, source="empty-caption")

    text = encode(list(caption or []))
    cfg = transformer.config
    latent = vae is not None
    modules = DiffusionModules(transformer, vae if latent else PixelSpace())
    size = int(cfg.sample_size) * vae_downsample(modules.vae)  # PixelSpace: 1
    meta = BackboneMeta(
        name=name,
        family="sd3",
        source=f"random (trained VAE of {path.name})" if weights == "random" else path.name,
        num_layers=int(cfg.num_layers),
        width=int(cfg.num_attention_heads * cfg.attention_head_dim),
        patch_size=int(cfg.patch_size),
        image_size=size,
        timestep_convention="flow",
        license="Apache-2.0 (trained by this project)",
        notes=f"{'latent' if latent else 'pixel'}-space rectified-flow MM-DiT trained on the scene dataset",
        extra={"training": meta_file.get("extra", {}), "pixel_space": not latent},
    )
    adapter = SD3Adapter(
        meta,
        modules,
        schedule=FlowSchedule(1000.0),
        text=text,
        prompt=" ".join(caption or []),
        weights=weights,
        weights_id=weights_id,
        weights_note=note,
        device=device,
        dtype=dtype,
        image_size=image_size or size,
        compute_batch=compute_batch,
    )
    adapter.text_encoder = lambda prompt: encode(caption_words(prompt))
    # concept tokens (backbones.diffusion.concepts): a one-word caption is [word, <pad> x 7], row 0 is the word's
    adapter.concept_row = 0
    adapter.default_steps = 40  # the recipe's sampler (recipes/tiny_mmdit/train.py)
    return adapter


def caption_words(prompt: str) -> list[str]:
    """A tiny-mmdit prompt as caption words: class names separated by spaces or commas (``"sphere, floor"``)."""
    return [w for w in prompt.replace(",", " ").split() if w]
