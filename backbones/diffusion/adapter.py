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
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib.util
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backbones.base import Adapter, BackboneMeta, FeatureKey
from backbones.random_init import RANDOM_INIT, random_weights_note, standard_random_init
from backbones.weights import find_hf_file, hf_offline
from probebench.core.errors import ProbebenchError, WeightsNotFoundError

# ---------------------------------------------------------------------------------------------------------------
# noise: a pure function of (seed, image id, draw)
# ---------------------------------------------------------------------------------------------------------------


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from ``":".join(parts)`` through SHA-256 (stable across processes, unlike ``hash()``)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def draw_noise(shape: Sequence[int], *, seed: int, image_id: Any, draw: int) -> torch.Tensor:
    """Standard normal noise of ``shape`` (float32, CPU) for one image and one draw."""
    gen = torch.Generator(device="cpu").manual_seed(stable_seed(seed, image_id, draw))
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# noise schedules: native timestep units, (alpha, sigma), log-SNR
# ---------------------------------------------------------------------------------------------------------------


def _as_list(spec: Any) -> list[Any]:
    if isinstance(spec, str):
        return [s.strip() for s in spec.split(",") if s.strip()]
    if isinstance(spec, torch.Tensor):
        return spec.flatten().tolist()
    if isinstance(spec, (list, tuple, set)):
        return list(spec)
    return [spec]


class NoiseSchedule:
    """Native timestep units of one family: validation, x_t = α·x0 + σ·ε, log-SNR, model input."""

    convention: str
    default_timesteps: tuple[Any, ...]

    def resolve(self, spec: Any) -> list[Any]:
        """``None`` → the default set; one value, a list, or a comma string → sorted unique native timesteps."""
        if spec is None:
            return list(self.default_timesteps)
        values = [self.validate(v) for v in _as_list(spec)]
        if not values:
            raise ProbebenchError(f"The timestep request {spec!r} selects no timestep ({self.range_text()}).")
        return sorted(set(values))

    def validate(self, value: Any) -> Any:
        raise NotImplementedError

    def range_text(self) -> str:
        raise NotImplementedError

    def alpha_sigma(self, t: Any) -> tuple[float, float]:
        raise NotImplementedError

    def log_snr(self, t: Any) -> float:
        raise NotImplementedError

    def model_timestep(self, t: Any) -> float:
        """The value the transformer's ``timestep`` argument takes for native timestep ``t``."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError


class DDPMSchedule(NoiseSchedule):
    """Discrete DDPM timesteps t ∈ [0, T−1]; ᾱ_t from the beta schedule, computed by diffusers' DDPMScheduler."""

    convention = "ddpm"
    default_timesteps = (0, 250, 500, 750)

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
    ):
        from diffusers import DDPMScheduler

        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_start, self.beta_end, self.beta_schedule = float(beta_start), float(beta_end), beta_schedule
        sched = DDPMScheduler(
            num_train_timesteps=self.num_train_timesteps,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            beta_schedule=beta_schedule,
        )
        self.alphas_cumprod = sched.alphas_cumprod.to(torch.float64)

    def range_text(self) -> str:
        return f"DDPM timesteps are integers in [0, {self.num_train_timesteps - 1}]"

    def validate(self, value: Any) -> int:
        try:
            f = float(value)
        except (TypeError, ValueError) as e:
            raise ProbebenchError(f"Invalid timestep {value!r}: {self.range_text()}.") from e
        if not f.is_integer():
            raise ProbebenchError(f"Timestep {value!r} is not an integer: {self.range_text()}.")
        if not 0 <= f <= self.num_train_timesteps - 1:
            raise ProbebenchError(f"Timestep {value!r} is out of range: {self.range_text()}.")
        return int(f)

    def alpha_sigma(self, t: Any) -> tuple[float, float]:
        abar = float(self.alphas_cumprod[self.validate(t)])
        return math.sqrt(abar), math.sqrt(1.0 - abar)

    def log_snr(self, t: Any) -> float:
        abar = float(self.alphas_cumprod[self.validate(t)])
        return math.log(abar / (1.0 - abar))

    def model_timestep(self, t: Any) -> float:
        return float(self.validate(t))

    def describe(self) -> dict[str, Any]:
        return {
            "convention": "ddpm",
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "beta_schedule": self.beta_schedule,
            "x_t": "sqrt(abar_t)*x0 + sqrt(1-abar_t)*eps",
        }


class FlowSchedule(NoiseSchedule):
    """Rectified flow: σ ∈ [0, 1], x_σ = (1−σ)·x0 + σ·ε; the transformer takes ``σ·timestep_scale``."""

    convention = "flow"
    default_timesteps = (0.0, 0.25, 0.5, 0.75)

    def __init__(self, timestep_scale: float = 1000.0):
        self.timestep_scale = float(timestep_scale)

    def range_text(self) -> str:
        return "flow-matching timesteps are noise levels sigma in [0, 1] (0 = clean image, 1 = pure noise)"

    def validate(self, value: Any) -> float:
        try:
            f = float(value)
        except (TypeError, ValueError) as e:
            raise ProbebenchError(f"Invalid timestep {value!r}: {self.range_text()}.") from e
        if not 0.0 <= f <= 1.0:
            raise ProbebenchError(f"Timestep {value!r} is out of range: {self.range_text()}.")
        return f

    def alpha_sigma(self, t: Any) -> tuple[float, float]:
        s = self.validate(t)
        return 1.0 - s, s

    def log_snr(self, t: Any) -> float:
        s = self.validate(t)
        if s == 0.0:
            return math.inf
        if s == 1.0:
            return -math.inf
        return 2.0 * math.log((1.0 - s) / s)

    def model_timestep(self, t: Any) -> float:
        return self.validate(t) * self.timestep_scale

    def describe(self) -> dict[str, Any]:
        return {
            "convention": "flow",
            "x_t": "(1-sigma)*x0 + sigma*eps",
            "model_timestep_scale": self.timestep_scale,
        }


# ---------------------------------------------------------------------------------------------------------------
# forward hooks with early exit; token selection and reshaping
# ---------------------------------------------------------------------------------------------------------------


class _EarlyExit(Exception):
    """Raised by the hook on the deepest requested block to end the forward (never escapes this module)."""


def image_tokens(output: Any, num_image_tokens: int) -> torch.Tensor:
    """The image tokens (N, L_img, C) of a block output.

    Tuples/lists follow diffusers' ``(text, image)`` order — the last tensor element is the image stream (the
    last SD3 block returns ``(None, image)``). A single tensor longer than ``num_image_tokens`` is a
    concatenated ``[text, image]`` sequence (FLUX single-stream blocks in older diffusers): keep the tail.
    """
    if isinstance(output, (tuple, list)):
        tensors = [o for o in output if isinstance(o, torch.Tensor)]
        if not tensors:
            raise ProbebenchError("A transformer block returned no tensor; cannot read its image tokens.")
        output = tensors[-1]
    if not isinstance(output, torch.Tensor) or output.ndim != 3:
        raise ProbebenchError(
            f"Unexpected block output {type(output).__name__}; expected (batch, tokens, channels)."
        )
    n = output.shape[1]
    if n == num_image_tokens:
        return output
    if n > num_image_tokens:
        return output[:, n - num_image_tokens :]
    raise ProbebenchError(f"A block returned {n} tokens, fewer than the {num_image_tokens} image tokens.")


def tokens_to_map(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, h·w, C) row-major tokens → (N, C, h, w)."""
    n, length, c = tokens.shape
    if length != h * w:
        raise ProbebenchError(f"{length} image tokens do not form a {h}x{w} grid.")
    return tokens.reshape(n, h, w, c).permute(0, 3, 1, 2)


def run_blocks_with_taps(
    forward: Callable[[], Any],
    blocks: Sequence[nn.Module],
    layers: Sequence[int],
    select: Callable[[Any], torch.Tensor],
) -> dict[int, torch.Tensor]:
    """Run ``forward()`` with hooks on ``blocks[layers]``; return ``select(block output)`` per layer.

    The hook on the deepest requested block raises :class:`_EarlyExit` after storing its output, so no later
    block runs. Hooks are removed even when the forward fails.
    """
    layers = sorted(set(int(i) for i in layers))
    deepest = layers[-1]
    captured: dict[int, torch.Tensor] = {}
    handles = []

    def make_hook(idx: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            captured[idx] = select(output)
            if idx == deepest:
                raise _EarlyExit

        return hook

    try:
        for idx in layers:
            handles.append(blocks[idx].register_forward_hook(make_hook(idx)))
        with contextlib.suppress(_EarlyExit):
            forward()
    finally:
        for h in handles:
            h.remove()
    missing = [i for i in layers if i not in captured]
    if missing:  # pragma: no cover - a model whose forward skips blocks
        raise ProbebenchError(f"Blocks {missing} did not run during the forward pass.")
    return captured


# ---------------------------------------------------------------------------------------------------------------
# VAE and latent (un)packing
# ---------------------------------------------------------------------------------------------------------------


def vae_factors(vae: nn.Module) -> tuple[float, float]:
    """(scaling_factor, shift_factor) from the VAE's own config (shift 0 when the config has none)."""
    cfg = vae.config
    scale = float(getattr(cfg, "scaling_factor", None) or 1.0)
    shift = getattr(cfg, "shift_factor", None)
    return scale, float(shift) if shift is not None else 0.0


def vae_downsample(vae: nn.Module | Mapping[str, Any]) -> int:
    """Spatial compression of a diffusers VAE (8 for AutoencoderKL with 4 levels, 32 for DC-AE f32), from the
    module or its config (e.g. a config dict read off a weights file before the module is built)."""
    cfg = vae.config if isinstance(vae, nn.Module) else vae
    # AutoencoderDC names its encoder's levels; both down-sample once per level but the last
    channels = cfg.get("encoder_block_out_channels") or cfg["block_out_channels"]
    return 2 ** (len(channels) - 1)


def encode_latents(vae: nn.Module, images01: torch.Tensor) -> torch.Tensor:
    """[0, 1] images → model latents: VAE posterior *mean* (no sampling), then (z − shift)·scale."""
    x = images01.to(dtype=next(vae.parameters()).dtype) * 2.0 - 1.0
    out = vae.encode(x)
    dist = getattr(out, "latent_dist", None)
    z = dist.mean if dist is not None else out.latent  # AutoencoderKL posterior mean; DC-AE is deterministic
    scale, shift = vae_factors(vae)
    return ((z.float() - shift) * scale).float()


def pack_latents_2x2(z: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) → (N, H/2·W/2, 4C): FLUX packing of 2×2 latent patches, row-major, channel-major per patch."""
    n, c, h, w = z.shape
    if h % 2 or w % 2:
        raise ProbebenchError(f"FLUX latents need even height and width, got {h}x{w}.")
    return z.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // 2) * (w // 2), c * 4)


def unpack_latents_2x2(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents_2x2` for a latent of height ``h`` and width ``w``."""
    n, _, c4 = tokens.shape
    c = c4 // 4
    return tokens.view(n, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


def latent_image_ids(h: int, w: int, device: Any = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """FLUX image position ids (h·w, 3): (0, row, column) for a grid of h×w packed tokens."""
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(h * w, 3).to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------
# text conditioning: seeded random embeddings, or real prompt embeddings cached on disk
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class TextConditioning:
    """Prompt embeddings for one prompt (batch 1); expanded to the batch at run time.

    ``embeds`` (1, L, D), ``pooled`` (1, P) or None, ``mask`` (1, L) of 0/1 or None (all tokens valid).
    ``source`` says where they came from and is part of the adapter fingerprint, with a hash of the values.
    """

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    source: str = "injected"

    def digest(self) -> str:
        h = hashlib.sha256()
        for t in (self.embeds, self.pooled, self.mask):
            if t is not None:
                t = t.detach().float().cpu().contiguous()
                h.update(str(tuple(t.shape)).encode())
                h.update(t.numpy().tobytes())
        return h.hexdigest()[:16]

    def expand(
        self, n: int, device: Any, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        embeds = self.embeds.to(device=device, dtype=dtype).expand(n, -1, -1)
        pooled = None if self.pooled is None else self.pooled.to(device=device, dtype=dtype).expand(n, -1)
        mask = None if self.mask is None else self.mask.to(device=device).expand(n, -1)
        return embeds, pooled, mask


@dataclass(frozen=True)
class TextSpec:
    """Shape of a family's text conditioning: sequence length, embedding width, pooled width (0 = none)."""

    seq_len: int
    dim: int
    pooled_dim: int = 0


def random_text_conditioning(spec: TextSpec, *, prompt: str, family: str, seed: int) -> TextConditioning:
    """Deterministic stand-in embeddings for random-weight models: N(0, 1), seeded by (family, prompt, seed)."""
    gen = torch.Generator(device="cpu").manual_seed(stable_seed("text", family, prompt, seed))
    embeds = torch.randn(1, spec.seq_len, spec.dim, generator=gen)
    pooled = torch.randn(1, spec.pooled_dim, generator=gen) if spec.pooled_dim else None
    return TextConditioning(embeds, pooled, None, source=f"random:{family}:seed{seed}")


def require_transformers(what: str) -> None:
    """Raise a clear error when ``transformers`` (needed to run the text encoders) is missing."""
    if importlib.util.find_spec("transformers") is None:
        raise ProbebenchError(
            f"{what} needs the text encoders, which need the `transformers` package (and `sentencepiece` for T5 "
            f"tokenizers): pip install transformers sentencepiece. Alternatively pass text_embeddings=... or "
            "use weights='random'."
        )


class PromptEmbeddingCache:
    """Prompt embeddings on disk as safetensors, keyed by a hash of everything that produced them.

    Real text encoders (T5-XXL, CLIP, Gemma) are loaded only when a prompt is not cached, run once, and freed.
    Root: ``$PROBEBENCH_PROMPT_CACHE`` or ``~/.cache/probebench/prompt_embeddings``.
    """

    def __init__(self, root: str | Path | None = None):
        default = os.environ.get("PROBEBENCH_PROMPT_CACHE") or "~/.cache/probebench/prompt_embeddings"
        self.root = Path(root or default).expanduser()

    @staticmethod
    def key_hash(key: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def path(self, key: dict[str, Any]) -> Path:
        return self.root / f"{self.key_hash(key)}.safetensors"

    def load(self, key: dict[str, Any]) -> TextConditioning | None:
        path = self.path(key)
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            meta = f.metadata() or {}
            tensors = {n: f.get_tensor(n) for n in names}
        return TextConditioning(
            tensors["embeds"],
            tensors.get("pooled"),
            tensors.get("mask"),
            source=meta.get("source", f"cache:{path.name}"),
        )

    def save(self, key: dict[str, Any], cond: TextConditioning) -> Path:
        from safetensors.torch import save_file

        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"embeds": cond.embeds.detach().float().cpu().contiguous()}
        if cond.pooled is not None:
            tensors["pooled"] = cond.pooled.detach().float().cpu().contiguous()
        if cond.mask is not None:
            tensors["mask"] = cond.mask.detach().cpu().contiguous()
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file(
            tensors,
            str(tmp),
            metadata={"source": cond.source, "key": json.dumps(key, sort_keys=True, default=str)},
        )
        os.replace(tmp, path)
        return path

    def get(self, key: dict[str, Any], compute: Callable[[], TextConditioning]) -> TextConditioning:
        """The cached embeddings for ``key``, computing (and caching) them with ``compute()`` when missing."""
        hit = self.load(key)
        if hit is not None:
            return hit
        cond = compute()
        cond = replace(cond, source=f"prompt-cache:{self.key_hash(key)}")
        self.save(key, cond)
        gc.collect()
        return self.load(key) or cond


# ---------------------------------------------------------------------------------------------------------------
# weights: HF cache / download, local diffusers folders, random configs
# ---------------------------------------------------------------------------------------------------------------

_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")


def _has_weights(folder: Path) -> bool:
    return any((folder / f).is_file() for f in _WEIGHT_FILES)


def hf_snapshot(repo_id: str, subfolders: Sequence[str], revision: str | None = None) -> Path:
    """A local snapshot of ``repo_id`` holding ``subfolders`` (configs and safetensors weights).

    Offline (``HF_HUB_OFFLINE=1``) nothing is downloaded and a missing file raises
    :class:`WeightsNotFoundError` at once, naming the cache directory and the files looked for.
    """
    first = find_hf_file(repo_id, (f"{subfolders[0]}/config.json",), revision)
    snap = first.parents[1]
    for sub in subfolders[1:]:
        find_hf_file(repo_id, (f"{sub}/config.json",), revision)
    missing = [s for s in subfolders if not _has_weights(snap / s)]
    if missing:
        if hf_offline():
            raise WeightsNotFoundError(
                f"Weights for {repo_id!r} ({', '.join(f'{m}/{_WEIGHT_FILES[0]}' for m in missing)}) are not in the "
                f"Hugging Face cache {snap} and HF_HUB_OFFLINE=1 forbids downloading. Pass weights=<local diffusers "
                "folder> or weights='random'."
            )
        from huggingface_hub import snapshot_download

        patterns = [
            p
            for s in subfolders
            for p in (
                f"{s}/*.json",
                f"{s}/diffusion_pytorch_model.safetensors",
                f"{s}/diffusion_pytorch_model-*.safetensors",
            )
        ]
        try:
            snap = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
        except Exception as e:
            raise WeightsNotFoundError(
                f"Could not download {repo_id!r} ({', '.join(subfolders)}): {e}"
            ) from e
    return snap


def folder_fingerprint(root: Path, subfolders: Sequence[str]) -> str:
    """A fast identity of a local diffusers folder: config contents + each weight file's size, head and tail.

    (Hashing multi-GB weight files in full would take minutes; size + first/last MiB catch any real change.)
    """
    h = hashlib.sha256()
    for sub in subfolders:
        for f in sorted((root / sub).glob("*")):
            if not f.is_file():
                continue
            h.update(f"{sub}/{f.name}".encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
                continue
            size = f.stat().st_size
            h.update(str(size).encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
                if size > 2 << 20:
                    fh.seek(size - (1 << 20))
                    h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def read_scheduler_config(root: Path | None) -> dict[str, Any]:
    """``scheduler/scheduler_config.json`` of a diffusers folder, or {} when absent."""
    if root is None:
        return {}
    path = root / "scheduler" / "scheduler_config.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


# VAE configs (the ``vae/config.json`` of the HF repos, AutoencoderKL). SD3 and FLUX encode (z - shift)·scale.
_KL_VAE_BASE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "act_fn": "silu",
    "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512),
    "norm_num_groups": 32,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}
SD_VAE_CONFIG = {
    **_KL_VAE_BASE,
    "latent_channels": 4,
    "scaling_factor": 0.18215,
}  # sd-vae-ft-ema (DiT, PixArt-α)
SDXL_VAE_CONFIG = {
    **_KL_VAE_BASE,
    "latent_channels": 4,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}  # PixArt-Σ
SD3_VAE_CONFIG = {
    **_KL_VAE_BASE,
    "latent_channels": 16,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
FLUX_VAE_CONFIG = {
    **_KL_VAE_BASE,
    "latent_channels": 16,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}


def tiny_vae_config(full: dict[str, Any]) -> dict[str, Any]:
    """A test-sized copy of a VAE config: same class, latent channels, scaling/shift factors and downsampling
    (8× for AutoencoderKL), with 8 channels per level and one layer per block."""
    cfg = dict(full)
    cfg.update(
        layers_per_block=1,
        block_out_channels=(8,) * len(full["block_out_channels"]),
        norm_num_groups=4,
        sample_size=64,
    )
    return cfg


class DiffusionModules(nn.Module):
    """The frozen modules of a diffusion backbone (exposed as ``adapter.model``): ``.transformer`` and ``.vae``."""

    def __init__(self, transformer: nn.Module, vae: nn.Module):
        super().__init__()
        self.transformer = transformer
        self.vae = vae


@dataclass(frozen=True)
class DiffusionSpec:
    """Everything that defines one registered diffusion backbone (configs are the HF ``config.json`` values)."""

    name: str
    family: str
    hf_id: str
    transformer_cls: str  # diffusers class name
    vae_cls: str
    transformer_config: dict[str, Any]
    vae_config: dict[str, Any]
    tiny_transformer_config: dict[str, Any]
    tiny_vae_config: dict[str, Any]
    image_size: int
    tiny_image_size: int
    num_layers: int
    width: int
    patch_size: int
    convention: str  # "ddpm" | "flow"
    text: TextSpec | None = None
    tiny_text: TextSpec | None = None
    revision: str | None = None  # no verified commit hash pinned: None means the repo's main branch
    license: str = ""
    citation: str = ""
    notes: str = ""
    ddpm: dict[str, Any] = field(
        default_factory=lambda: {
            "num_train_timesteps": 1000,
            "beta_start": 1e-4,
            "beta_end": 0.02,
            "beta_schedule": "linear",
        }
    )
    flow_timestep_scale: float = 1000.0
    transformer_subfolder: str = "transformer"
    vae_subfolder: str = "vae"
    extra: dict[str, Any] = field(default_factory=dict)

    def meta(self) -> BackboneMeta:
        return BackboneMeta(
            name=self.name,
            family=self.family,
            source=self.hf_id,
            num_layers=self.num_layers,
            width=self.width,
            patch_size=self.patch_size,
            image_size=self.image_size,
            revision=self.revision,
            timestep_convention=self.convention,
            license=self.license,
            citation=self.citation,
            notes=self.notes,
            extra={
                "vae_scaling_factor": self.vae_config.get("scaling_factor"),
                "vae_shift_factor": self.vae_config.get("shift_factor"),
                "latent_channels": self.vae_config.get("latent_channels"),
                **self.extra,
            },
        )


def _diffusers_class(name: str) -> type:
    import diffusers

    return getattr(diffusers, name)


def build_modules(
    spec: DiffusionSpec,
    weights: str,
    *,
    config: str = "full",
    random_seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[DiffusionModules, str, Path | None]:
    """Build (transformer, VAE) with random weights from the spec's configs, or load them from HF / a folder.

    Random weights: the transformer gets the standard random init of :mod:`backbones.random_init` (PyTorch's
    default layer init, seeded; no zero adaLN gates or output projections), the VAE diffusers' constructor init
    under the same seed — both random, as no trained VAE is on disk offline.

    Returns the modules, the weights identity recorded in cache hashes, and the local diffusers folder (None
    for random weights). The VAE is kept in float32; the transformer is cast to ``dtype``.
    """
    if config not in ("full", "tiny"):
        raise ProbebenchError(f"config must be 'full' or 'tiny', got {config!r}.")
    if config == "tiny" and weights != "random":
        raise ProbebenchError(f"config='tiny' builds a test-sized {spec.name} and needs weights='random'.")
    tcls, vcls = _diffusers_class(spec.transformer_cls), _diffusers_class(spec.vae_cls)
    subs = (spec.transformer_subfolder, spec.vae_subfolder)
    if weights == "random":
        tcfg = spec.tiny_transformer_config if config == "tiny" else spec.transformer_config
        vcfg = spec.tiny_vae_config if config == "tiny" else spec.vae_config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(random_seed)  # random weights are a pure function of the seed
            transformer = tcls(**tcfg)
            vae = vcls(**vcfg)
        standard_random_init(transformer, random_seed)  # the one documented init (backbones/random_init.py)
        weights_id, root = f"random:{config}:seed{random_seed}:{RANDOM_INIT}", None
        if dtype != torch.float32:  # as from_pretrained(torch_dtype=...) does, keeping its float32 modules
            nn.Module.to(transformer, dtype)
            keep = tuple(getattr(transformer, "_keep_in_fp32_modules", None) or ())
            for mod_name, module in transformer.named_modules():
                if keep and any(k in mod_name.split(".") for k in keep):
                    nn.Module.to(module, torch.float32)
    else:
        if weights == "default":
            root = hf_snapshot(spec.hf_id, subs, spec.revision)
            weights_id = f"hf:{spec.hf_id}@{root.name}"
        else:
            root = Path(weights).expanduser()
            if not root.is_dir() or not all((root / s / "config.json").is_file() for s in subs):
                raise WeightsNotFoundError(
                    f"weights={weights!r} must be a diffusers folder with {subs[0]}/ and {subs[1]}/ subfolders "
                    f"(each with config.json and safetensors weights), as in the HF repo {spec.hf_id!r}."
                )
            weights_id = f"dir:{folder_fingerprint(root, subs)}"
        transformer = tcls.from_pretrained(str(root), subfolder=subs[0], torch_dtype=dtype)
        vae = vcls.from_pretrained(str(root), subfolder=subs[1], torch_dtype=torch.float32)
    return DiffusionModules(transformer, vae), weights_id, root


# ---------------------------------------------------------------------------------------------------------------
# the adapter
# ---------------------------------------------------------------------------------------------------------------


class DiffusionAdapter(Adapter):
    """A frozen diffusion transformer read block by block at chosen noise levels.

    Families implement :meth:`blocks`, :meth:`token_grid` and :meth:`run_transformer` (and
    :meth:`conditioning_fingerprint`); noising, batching, hooks, early exit and averaging live here.
    """

    model: DiffusionModules

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

    def run_transformer(self, latents: torch.Tensor, timesteps: torch.Tensor) -> Any:
        """One forward of the transformer on noisy latents (N, C, H, W) at model timesteps (N,)."""
        raise NotImplementedError

    def conditioning_fingerprint(self) -> dict[str, Any]:
        return {}

    # -- timesteps ---------------------------------------------------------------------------------------
    def resolve_timesteps(self, spec: Any) -> list[Any]:
        """Native timesteps (see the module docstring); ``None`` → ``schedule.default_timesteps``."""
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
        ids = [str(i) for i in (image_ids if image_ids is not None else range(x.shape[0]))]
        n_t = len(timesteps)
        if all(self.schedule.alpha_sigma(t)[1] == 0.0 for t in timesteps):
            noise_draws = 1  # clean latents only: every draw gives the same features
        z0 = self.encode(x)
        model_t = self.model_timesteps(timesteps, len(ids))
        acc: dict[int, torch.Tensor] = {}
        for k in range(noise_draws):
            feats = self.forward_features(self.noised(z0, timesteps, ids, seed, k), model_t, layers)
            for layer, f in feats.items():
                acc[layer] = f if layer not in acc else acc[layer] + f
        out: dict[FeatureKey, torch.Tensor] = {}
        for layer in layers:
            f = acc[layer] / noise_draws
            f = f.reshape(x.shape[0], n_t, *f.shape[1:])
            for ti, t in enumerate(timesteps):
                out[(layer, t)] = f[:, ti]
        return out


def text_conditioning_for(
    spec: DiffusionSpec,
    *,
    weights: str,
    config: str,
    root: Path | None,
    prompt: str,
    random_seed: int,
    text_embeddings: TextConditioning | None,
    encode_real: Callable[[Path, str], TextConditioning],
    cache: PromptEmbeddingCache | None = None,
) -> TextConditioning:
    """The text conditioning of a text-to-image family.

    Injected embeddings win; random weights get seeded random embeddings of the right shape; real weights get
    the real prompt embeddings from the on-disk cache, computed once with ``encode_real(folder, prompt)``.
    """
    text = spec.tiny_text if config == "tiny" else spec.text
    assert text is not None
    if text_embeddings is not None:
        return text_embeddings
    if weights == "random":
        return random_text_conditioning(text, prompt=prompt, family=spec.family, seed=random_seed)
    assert root is not None
    key = {
        "backbone": spec.name,
        "repo": spec.hf_id if weights == "default" else "local",
        "weights": root.name if weights == "default" else folder_fingerprint(root, ("transformer",)),
        "prompt": prompt,
        "seq_len": text.seq_len,
    }
    return (cache or PromptEmbeddingCache()).get(key, lambda: encode_real(root, prompt))


def text_snapshot(spec: DiffusionSpec, weights: str, root: Path, subfolders: Sequence[str]) -> Path:
    """The folder holding a pipeline's text encoders and tokenizers (downloaded only when online)."""
    if weights != "default":
        return root
    for sub in subfolders:
        if sub.startswith("text_encoder"):
            find_hf_file(spec.hf_id, (f"{sub}/config.json",), spec.revision)
    if hf_offline():
        return root
    from huggingface_hub import snapshot_download

    patterns = [f"{s}/*" for s in subfolders] + ["scheduler/*", "model_index.json"]
    return Path(snapshot_download(spec.hf_id, revision=spec.revision, allow_patterns=patterns))


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
    """Build modules (random / HF / folder), the schedule and metadata, then the family adapter.

    ``family_kwargs`` go to ``adapter_cls.prepare(spec, modules, weights=..., config=..., root=..., ...)``, which
    turns them into constructor arguments (text conditioning, class id, guidance...).
    """
    from backbones.base import parse_dtype

    torch_dtype = parse_dtype(dtype)
    modules, weights_id, root = build_modules(
        spec, weights, config=config, random_seed=random_seed, dtype=torch_dtype
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
        spec, modules, weights=weights, config=config, root=root, random_seed=random_seed, **family_kwargs
    )
    note = diffusion_weights_note(spec, weights, root, random_seed=random_seed, text=extra.get("text"))
    return adapter_cls(
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


def register_diffusion(spec: DiffusionSpec, adapter_cls: type[DiffusionAdapter], kind: str) -> None:
    """Register ``spec.name`` with its metadata and the tiny test config (``test_kwargs={'config': 'tiny'}``)."""
    from backbones._registry import BACKBONES

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

    # -- family hooks ----------------------------------------------------------------------------------
    @classmethod
    def text_dims(cls, transformer: nn.Module) -> tuple[int, int]:
        """(embedding width, pooled width or 0) the transformer expects."""
        raise NotImplementedError

    @classmethod
    def encode_prompt(cls, folder: Path, prompt: str, text: TextSpec) -> TextConditioning:
        """Run the real text encoders of the pipeline stored in ``folder`` on ``prompt``."""
        raise NotImplementedError

    @classmethod
    def prepare_family(cls, spec: DiffusionSpec, modules: DiffusionModules, **kwargs: Any) -> dict[str, Any]:
        if kwargs:
            raise ProbebenchError(f"{spec.name} takes no option(s) {', '.join(map(repr, kwargs))}.")
        return {}

    # -- setup -----------------------------------------------------------------------------------------
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
        prompt_cache: PromptEmbeddingCache | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        extra = cls.prepare_family(spec, modules, **kwargs)
        text_spec = spec.tiny_text if config == "tiny" else spec.text
        assert text_spec is not None

        def encode_real(folder: Path, p: str) -> TextConditioning:
            require_transformers(f"Embedding the prompt {p!r} for {spec.name}")
            cond = cls.encode_prompt(text_snapshot(spec, weights, folder, cls.text_subfolders), p, text_spec)
            free_memory()
            return cond

        cond = text_conditioning_for(
            spec,
            weights=weights,
            config=config,
            root=root,
            prompt=prompt,
            random_seed=random_seed,
            text_embeddings=text_embeddings,
            encode_real=encode_real,
            cache=prompt_cache,
        )
        cls.check_text(cond, modules.transformer)
        return {"text": cond, "prompt": prompt, **extra}

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
        return self.text.expand(n, self.device, self.transformer.dtype)

    def conditioning_fingerprint(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "text_source": self.text.source,
            "text_sha256": self.text.digest(),
            "text_tokens": int(self.text.embeds.shape[1]),
        }
