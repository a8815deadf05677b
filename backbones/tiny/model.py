"""The tiny MM-DiT that probebench trains itself: architecture, caption conditioning and weight files.

The denoiser is diffusers' real ``SD3Transformer2DModel`` (joint text/image attention blocks, each returning
``(text, image)``, the last ``(None, image)``). The shipped model runs on the latent of a small diffusers
``AutoencoderKL`` stored in the same file (:func:`load_vae`): an RGB image in [0, 1] is mapped to 2·rgb − 1,
encoded (posterior mean), shifted and scaled by the autoencoder's ``shift_factor`` / ``scaling_factor``; a
weight file without an autoencoder is a pixel-space model (x0 = 2·rgb − 1). It is a rectified-flow model like
SD3: x_σ = (1−σ)·x0 + σ·ε, the transformer predicts v = ε − x0 and takes ``timestep = σ·1000``.

Text conditioning is a caption listing the classes visible in a scene, as tokens of a tiny vocabulary (the
8 scene class names plus ``<pad>``) embedded by a learned :class:`CaptionEncoder`. The empty caption (all
``<pad>``) is the unconditional model (trained with caption dropout); use :func:`empty_conditioning` to build
its ``encoder_hidden_states`` and ``pooled_projections``.

One safetensors file holds everything (parameters fp16, buffers fp32): ``transformer.*`` (the SD3 module's
state dict), ``caption.embedding.weight`` (the token embedding), ``vae.*`` (the autoencoder), and in its
metadata the model config, vocabulary, preprocessing and the autoencoder's config, so :func:`load_weights` and
:func:`load_vae` need nothing else. The autoencoder's architecture is :func:`vae_config`.

No training code here: the recipe that trains both models (and measures them) is ``recipes/tiny_mmdit/`` in the
repository, which imports this module and is not installed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tasks.scenes_render import CLASS_NAMES, PRIMITIVE_KINDS

PAD = "<pad>"
VOCAB: tuple[str, ...] = (PAD, *CLASS_NAMES)  # token id = index; class id c has token id c + 1
PAD_ID = 0
MAX_TOKENS = 8  # every scene class fits: a caption never needs truncation
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "tiny_mmdit.safetensors"
VAE_NAME = "vae.safetensors"
DEFAULT_VAE = WEIGHTS_DIR / VAE_NAME  # the autoencoder alone (what the DiT's training encodes with)
FORMAT_VERSION = "1"

# Preprocessing stored with the weights: what an adapter must do to an RGB image in [0, 1].
PREPROCESSING: dict[str, Any] = {
    "space": "pixel",
    "scale": 2.0,  # x0 = rgb * scale + shift, so [0, 1] -> [-1, 1]
    "shift": -1.0,
    "objective": "rectified flow: x_sigma = (1 - sigma) * x0 + sigma * eps, target v = eps - x0",
    "timestep": "sigma * 1000",
}
# The same for a latent-space model: the image goes through the shipped autoencoder first.
LATENT_PREPROCESSING: dict[str, Any] = {
    "space": "latent",
    "scale": 2.0,  # x = rgb * scale + shift in [-1, 1] is the autoencoder's input
    "shift": -1.0,
    "latent": "x0 = (vae.encode(x).latent_dist.mean - vae.shift_factor) * vae.scaling_factor",
    "objective": PREPROCESSING["objective"],
    "timestep": PREPROCESSING["timestep"],
}


def model_config(
    resolution: int = 32,
    patch_size: int = 2,
    num_layers: int = 8,
    num_heads: int = 2,
    head_dim: int = 64,
    text_dim: int = 128,
    in_channels: int = 3,
) -> dict[str, Any]:
    """Keyword arguments of ``SD3Transformer2DModel`` for a model of this size.

    ``resolution`` is the side of the diffused array: the image (pixel space, 3 channels) or the latent
    (``in_channels`` = the autoencoder's latent channels)."""
    if resolution % patch_size:
        raise ValueError(f"resolution {resolution} is not a multiple of patch_size {patch_size}")
    inner = num_heads * head_dim
    return {
        "sample_size": resolution,
        "patch_size": patch_size,
        "in_channels": in_channels,
        "out_channels": in_channels,
        "num_layers": num_layers,
        "attention_head_dim": head_dim,
        "num_attention_heads": num_heads,
        "joint_attention_dim": text_dim,
        "caption_projection_dim": inner,
        "pooled_projection_dim": text_dim,
        "pos_embed_max_size": resolution // patch_size,
    }


class CaptionEncoder(nn.Module):
    """Token ids (B, L) → (``encoder_hidden_states`` (B, L, D), ``pooled_projections`` (B, D)).

    The hidden states are the token embeddings (no positions: a caption is a set of classes); the pooled
    vector
    is their mean over all L slots, so the empty caption pools to the ``<pad>`` embedding.
    """

    def __init__(self, dim: int, vocab_size: int = len(VOCAB)):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.embedding.weight, std=1.0)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.embedding(ids)
        return hidden, hidden.mean(dim=1)


def caption_ids(class_ids: Iterable[int], max_tokens: int = MAX_TOKENS) -> torch.Tensor:
    """Token ids (max_tokens,) listing scene class ids (sorted, unique, padded with ``<pad>``)."""
    toks = [int(c) + 1 for c in sorted({int(c) for c in class_ids})]
    if any(not 1 <= t < len(VOCAB) for t in toks):
        raise ValueError(f"class ids must lie in [0, {len(CLASS_NAMES)}), got {sorted(class_ids)}")
    if len(toks) > max_tokens:
        raise ValueError(f"caption of {len(toks)} classes exceeds max_tokens={max_tokens}")
    return torch.tensor(toks + [PAD_ID] * (max_tokens - len(toks)), dtype=torch.long)


def caption_from_names(names: Sequence[str], max_tokens: int = MAX_TOKENS) -> torch.Tensor:
    """Token ids for a caption given as class names, e.g. ``["floor", "sphere"]``."""
    unknown = [n for n in names if n not in CLASS_NAMES]
    if unknown:
        raise ValueError(f"unknown class names {unknown}; vocabulary: {list(CLASS_NAMES)}")
    return caption_ids([CLASS_NAMES.index(n) for n in names], max_tokens)


def caption_text(ids: torch.Tensor) -> str:
    """Readable caption for token ids (empty string for the empty caption)."""
    return " ".join(VOCAB[int(t)] for t in ids.tolist() if int(t) != PAD_ID)


OBJECT_IDS: tuple[int, ...] = tuple(
    CLASS_NAMES.index(k) + 1 for k in PRIMITIVE_KINDS
)  # token ids of the objects


def without_objects(ids: torch.Tensor) -> torch.Tensor:
    """The caption(s) ``ids`` (..., max_tokens) with the object classes (sphere, box, cylinder, cone, torus)
    left out and the rest kept in order, padded: the scene's stuff alone (``background floor``, ``floor wall``).
    As the negative caption of classifier-free guidance it makes the guidance direction the objects' classes
    alone (``negative`` of ``sample`` in the training recipe, ``recipes/tiny_mmdit/train.py``)."""
    keep = ~torch.isin(ids, torch.tensor(OBJECT_IDS, device=ids.device))
    # a stable sort on "dropped" moves the kept tokens to the front in their order, the dropped ones behind
    order = torch.sort((~keep).to(torch.uint8), dim=-1, stable=True).indices
    return torch.where(keep, ids, PAD_ID).gather(-1, order)


def object_caption(kind: str, max_tokens: int = MAX_TOKENS) -> torch.Tensor:
    """The caption ``background floor <kind>`` for one object class ``kind`` (a ``PRIMITIVE_KINDS`` name): what
    the sample grid's class rows and ``evaluate.py``'s class accuracy ask for, guided away from
    :func:`without_objects` of it (``background floor``)."""
    if kind not in PRIMITIVE_KINDS:
        raise ValueError(f"unknown object class {kind!r}; object classes: {list(PRIMITIVE_KINDS)}")
    return caption_from_names(["background", "floor", kind], max_tokens)


def empty_ids(batch: int = 1, max_tokens: int = MAX_TOKENS) -> torch.Tensor:
    """Token ids of the empty caption (all ``<pad>``), shape (batch, max_tokens)."""
    return torch.full((batch, max_tokens), PAD_ID, dtype=torch.long)


@torch.no_grad()
def empty_conditioning(
    caption: CaptionEncoder, max_tokens: int = MAX_TOKENS
) -> tuple[torch.Tensor, torch.Tensor]:
    """``encoder_hidden_states`` (1, L, D) and ``pooled_projections`` (1, D) of the empty caption."""
    return caption(empty_ids(1, max_tokens).to(caption.embedding.weight.device))


def init_weights(transformer: nn.Module) -> None:
    """DiT-style init: Xavier linears, and zero adaLN modulations and output projection (adaLN-Zero).

    Every block starts as the identity and the output as zero, which DiT found to converge markedly faster.
    """
    for mod in transformer.modules():
        if isinstance(mod, nn.Linear):
            nn.init.xavier_uniform_(mod.weight)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
    for name, mod in transformer.named_modules():
        if isinstance(mod, nn.Linear) and (
            name.endswith(("norm1.linear", "norm1_context.linear")) or name in ("norm_out.linear", "proj_out")
        ):
            nn.init.zeros_(mod.weight)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)


def build(config: dict[str, Any], seed: int | None = 0) -> tuple[nn.Module, CaptionEncoder]:
    """A freshly initialised (transformer, caption encoder) pair, seeded: random weights are reproducible."""
    from diffusers import SD3Transformer2DModel

    if seed is not None:
        torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(**config)
    init_weights(transformer)
    caption = CaptionEncoder(int(config["joint_attention_dim"]))
    return transformer, caption


def num_parameters(*modules: nn.Module) -> int:
    """Total parameter count of the given modules."""
    return sum(p.numel() for m in modules for p in m.parameters())


def save_weights(
    path: str | Path,
    transformer: nn.Module,
    caption: CaptionEncoder,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float16,
    vae: nn.Module | None = None,
) -> Path:
    """Write transformer + token embedding (+ the autoencoder of a latent model) as one safetensors file,
    atomically (temp file + os.replace).

    Parameters are stored in ``dtype`` (fp16: the file stays small), buffers in float32.
    """

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in (("transformer", transformer), ("caption", caption)):
        params = {k for k, _ in module.named_parameters()}
        for k, v in module.state_dict().items():  # buffers (the sin-cos position table) stay float32
            tensors[f"{prefix}.{k}"] = (
                v.detach().to(dtype if k in params else torch.float32).contiguous().cpu()
            )
    meta = {
        "format": "pt",
        "probebench_tiny_format": FORMAT_VERSION,
        "model_class": "diffusers.SD3Transformer2DModel",
        "model_config": json.dumps(config, sort_keys=True),
        "vocab": json.dumps(list(VOCAB)),
        "max_tokens": str(MAX_TOKENS),
        "preprocessing": json.dumps(PREPROCESSING if vae is None else LATENT_PREPROCESSING, sort_keys=True),
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    if vae is not None:
        vt, vmeta = vae_tensors(vae, dtype)
        tensors.update(vt)
        meta.update(vmeta)
    return write_safetensors(path, tensors, meta)


def write_safetensors(
    path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None
) -> Path:
    """Write a safetensors file atomically (temp file + ``os.replace``): a killed process leaves the old file or
    the new one, never half of one."""
    import os

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def file_metadata(path: str | Path) -> dict[str, str]:
    """The raw (string) metadata of a safetensors file; reads no tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Decoded metadata of a tiny-MM-DiT weight file (model_config, vocab, preprocessing, ...)."""
    raw = file_metadata(path)
    if "model_config" not in raw:
        raise ValueError(f"{path} is not a tiny MM-DiT weight file (no model_config in its metadata)")
    out: dict[str, Any] = {
        k: json.loads(raw[k])
        for k in ("model_config", "vocab", "preprocessing", "extra", "vae_config")
        if k in raw
    }
    out["max_tokens"] = int(raw.get("max_tokens", MAX_TOKENS))
    return out


def load_weights(
    path: str | Path = DEFAULT_WEIGHTS, dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, CaptionEncoder, dict[str, Any]]:
    """(transformer, caption encoder, metadata) from a weight file, in ``dtype``, in eval mode, frozen."""
    meta = read_metadata(path)
    if tuple(meta.get("vocab", VOCAB)) != VOCAB:
        raise ValueError(f"{path}: vocabulary {meta.get('vocab')} differs from this code's {list(VOCAB)}")
    state = load_file(str(path))
    transformer, caption = build(meta["model_config"], seed=None)
    params = {k for k, _ in transformer.named_parameters()}
    missing = sorted(k for k in params if f"transformer.{k}" not in state)
    if missing:
        raise ValueError(
            f"{path}: missing transformer parameters {missing[:5]}{'...' if len(missing) > 5 else ''}"
        )
    tstate = transformer.state_dict()  # buffers (sin-cos position table) are rebuilt exactly from the config;
    tstate.update(
        {
            k[len("transformer.") :]: v
            for k, v in state.items()  # only float32 copies overwrite them
            if k.startswith("transformer.")
            and (k[len("transformer.") :] in params or v.dtype == torch.float32)
        }
    )
    transformer.load_state_dict(tstate, strict=True)
    caption.load_state_dict(
        {k[len("caption.") :]: v for k, v in state.items() if k.startswith("caption.")}, strict=True
    )
    for m in (transformer, caption):  # load_state_dict copied into float32 parameters
        if dtype != torch.float32:
            m.to(dtype)
        m.eval().requires_grad_(False)
    return transformer, caption, meta


def vae_config(
    resolution: int = 64,
    channels: Sequence[int] = (32, 64, 64),
    latent_channels: int = 4,
    mid_attention: bool = False,
) -> dict[str, Any]:
    """Keyword arguments of diffusers ``AutoencoderKL``: downsampling 2^(len(channels) − 1)."""
    n = len(channels)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": list(channels),
        "layers_per_block": 1,
        "latent_channels": latent_channels,
        "norm_num_groups": 8,
        "mid_block_add_attention": mid_attention,
        "sample_size": resolution,
        "scaling_factor": 1.0,
        "shift_factor": 0.0,
    }


def build_vae(config: dict[str, Any], seed: int | None = 0) -> nn.Module:
    """A diffusers ``AutoencoderKL`` of this config (seeded random weights)."""
    from diffusers import AutoencoderKL

    if seed is not None:
        torch.manual_seed(seed)
    return AutoencoderKL(**config)


def load_vae(path: str | Path = DEFAULT_WEIGHTS, dtype: torch.dtype = torch.float32) -> nn.Module | None:
    """The autoencoder stored in a weight file (``vae.*`` tensors, ``vae_config`` metadata), frozen, in eval
    mode; ``None`` for a pixel-space model's file. Reads the DiT's file and ``vae.safetensors`` alike."""
    raw = file_metadata(path)
    if "vae_config" not in raw:
        return None
    state = {k[len("vae.") :]: v.float() for k, v in load_file(str(path)).items() if k.startswith("vae.")}
    vae = build_vae(json.loads(raw["vae_config"]), seed=None)
    vae.load_state_dict(state, strict=True)
    if dtype != torch.float32:
        vae.to(dtype)
    return vae.eval().requires_grad_(False)


def vae_tensors(
    vae: nn.Module, dtype: torch.dtype = torch.float16
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(``vae.*`` tensors: parameters in ``dtype``, buffers float32; the metadata entries that describe it:
    ``vae_class`` and ``vae_config`` as JSON) for a weight file — the DiT's and ``vae.safetensors`` alike."""
    params = {k for k, _ in vae.named_parameters()}
    tensors = {
        f"vae.{k}": v.detach().to(dtype if k in params else torch.float32).contiguous().cpu()
        for k, v in vae.state_dict().items()
    }
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    return tensors, {
        "vae_class": "diffusers.AutoencoderKL",
        "vae_config": json.dumps(config, sort_keys=True, default=list),
    }


def save_vae(path: str | Path, vae: nn.Module, extra: dict[str, Any] | None = None) -> Path:
    """``vae.*`` tensors (parameters fp16, buffers fp32) and the config in the metadata, written atomically;
    :func:`load_vae` reads it back."""
    tensors, vmeta = vae_tensors(vae)
    meta = {"format": "pt", **vmeta}
    meta["extra"] = json.dumps(extra or {}, sort_keys=True)
    return write_safetensors(path, tensors, meta)
