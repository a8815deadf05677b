"""The adapter contract shared by every backbone family.

An adapter wraps a frozen torch module (``.model``) and turns float RGB images in [0, 1] into spatial feature
maps keyed by ``(layer, timestep)``. One helper owns the index semantics of layers and timesteps
(:func:`resolve_layers`, :func:`resolve_timesteps`), as timm's ``feature_take_indices`` does for models.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from probebench.core.errors import ProbebenchError

FeatureKey = tuple[int, "float | int | None"]
"""``(layer, timestep)``; the timestep is ``None`` for non-diffusion backbones."""

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass(frozen=True)
class BackboneMeta:
    """What a user needs to know about a registered backbone (MTEB-style metadata beside the loader)."""

    name: str
    family: str
    source: str  # where default weights come from: HF id, package, ...
    num_layers: int
    width: int | tuple[int, ...]
    patch_size: int | None = None
    image_size: int = 224
    revision: str | None = None
    timestep_convention: str = "none"  # "none" | "ddpm" (t in [0, 999]) | "flow" (sigma in [0, 1])
    license: str = ""
    citation: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_diffusion(self) -> bool:
        return self.timestep_convention != "none"


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``"bf16"``/``"float32"``/... or a torch dtype → torch dtype (float32 when ``None``)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ProbebenchError(f"Unknown dtype {dtype!r}. Valid: {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def resolve_layers(spec: int | str | Sequence[int | str] | None, num_layers: int) -> list[int]:
    """Turn a layer request into sorted absolute 0-based block indices.

    ``None`` or ``"all"`` → every layer; an int or a list of ints → those block indices (negative counts from
    the end); a string may hold a comma list (``"0,3,-1"``) and/or python slices (``"0:12:2"``, ``"-4:"``).
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return list(range(num_layers))
    items: list[int | str] = [spec] if isinstance(spec, (int, str)) else list(spec)
    out: list[int] = []
    for item in items:
        parts = [p.strip() for p in item.split(",") if p.strip()] if isinstance(item, str) else [item]
        for p in parts:
            if isinstance(p, str) and ":" in p:
                try:
                    bounds = [int(b) if b.strip() else None for b in p.split(":")]
                    out.extend(range(num_layers)[slice(*bounds)])
                except (ValueError, TypeError) as e:
                    raise ProbebenchError(f"Invalid layer slice {p!r}: expected 'start:stop[:step]'.") from e
                continue
            try:
                idx = int(p)
            except (TypeError, ValueError) as e:
                raise ProbebenchError(
                    f"Invalid layer {p!r}: expected an integer block index, a slice 'a:b', or 'all'."
                ) from e
            if not -num_layers <= idx < num_layers:
                raise ProbebenchError(
                    f"Layer {idx} is out of range: this backbone has {num_layers} layers, "
                    f"valid indices are 0..{num_layers - 1} (or -{num_layers}..-1 from the end)."
                )
            out.append(idx % num_layers)
    if not out:
        raise ProbebenchError(f"The layer request {spec!r} selects no layer (valid: 0..{num_layers - 1}).")
    return sorted(set(out))


def all_finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite. One float32 sum instead of ``isfinite(t).all()`` (which builds a
    boolean tensor and costs ~10x a float16 cast on CPU): any NaN or inf makes the sum non-finite; only a sum that
    overflows (values near float32's range) falls back to the exact check."""
    if torch.isfinite(t.sum(dtype=torch.float32)):
        return True
    return bool(torch.isfinite(t).all())


def validate_images(images: torch.Tensor) -> torch.Tensor:
    """Check that ``images`` is float RGB in [0, 1] of shape (B, 3, H, W); raise a clear error otherwise."""
    if not isinstance(images, torch.Tensor):
        raise ProbebenchError(
            f"Images must be a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}."
        )
    if images.ndim != 4 or images.shape[1] != 3:
        raise ProbebenchError(
            f"Images must have shape (B, 3, H, W) with 3 RGB channels, got {tuple(images.shape)}."
        )
    if not images.is_floating_point():
        raise ProbebenchError(f"Images must be floating point in [0, 1], got dtype {images.dtype}.")
    if images.numel() and not all_finite(images):
        raise ProbebenchError("Images contain NaN or inf values; expected finite values in [0, 1].")
    if images.numel():
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-4 or hi > 1 + 1e-4:
            raise ProbebenchError(
                f"Images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}] (uint8 images: divide by 255)."
            )
    return images


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a weights file, the identity recorded in cache hashes for local weights."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def module_sha256(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and values, in order): the identity of weights
    that are loaded from part of a file (e.g. the trained VAE inside tiny-mmdit's weight file)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class Adapter:
    """A frozen backbone. Subclasses implement :meth:`_extract` (and :meth:`log_snr` for diffusion models)."""

    meta: BackboneMeta
    model: torch.nn.Module

    def __init__(
        self,
        meta: BackboneMeta,
        model: torch.nn.Module,
        *,
        weights: str,
        weights_id: str,
        weights_note: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        image_size: int | None = None,
        compute_batch: int = 8,
    ):
        self.meta = meta
        self.weights = weights
        self.weights_id = weights_id
        self._weights_note = weights_note
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = parse_dtype(dtype)
        self.image_size = int(image_size or meta.image_size)
        if self.image_size < 8:
            raise ProbebenchError(f"image_size must be >= 8 pixels, got {self.image_size}.")
        if int(compute_batch) < 1:
            raise ProbebenchError(f"compute_batch must be >= 1, got {compute_batch}.")
        self.compute_batch = int(compute_batch)
        model.eval().requires_grad_(False)
        self.model = model.to(self.device)

    # -- index semantics ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def num_layers(self) -> int:
        return self.meta.num_layers

    def resolve_layers(self, spec: Any) -> list[int]:
        return resolve_layers(spec, self.num_layers)

    def resolve_timesteps(self, spec: Any) -> list[Any]:
        """Native timesteps to extract; ``[None]`` for non-diffusion backbones (which refuse timesteps)."""
        if not self.meta.is_diffusion:
            if spec is None or (isinstance(spec, (list, tuple)) and all(s is None for s in spec)):
                return [None]
            raise ProbebenchError(
                f"Backbone {self.name!r} is not a diffusion model and takes no timesteps (got {spec!r}); "
                "leave timesteps unset."
            )
        raise NotImplementedError

    def log_snr(self, timestep: Any) -> float | None:
        """log(α²/σ²) of the noise level; ``None`` for non-diffusion backbones (clean images)."""
        return None

    @property
    def weights_note(self) -> str:
        """One sentence saying what the weights ARE (trained where, or which random init and seed), for run
        directories and reports; a family sets it at creation, a plugin that does not gets the weights id."""
        if self._weights_note:
            return self._weights_note
        return f"random: {self.weights_id}" if self.weights == "random" else f"weights: {self.weights_id}"

    def fingerprint(self) -> dict[str, Any]:
        """Everything about this adapter that changes the numbers it returns (hashed into cache names)."""
        return {
            "backbone": self.name,
            "weights": self.weights_id,
            "revision": self.meta.revision,
            "image_size": self.image_size,
            "dtype": str(self.dtype).removeprefix("torch."),
            "compute_batch": self.compute_batch,
            # kernels differ between device types (e.g. TF32 convolutions on CUDA): features of a GPU
            # extraction are not those of a CPU one, so neither cache is taken for the other
            "device_type": self.device.type,
        }

    def describe(self) -> dict[str, Any]:
        d = asdict(self.meta)
        d.update(
            weights=self.weights,
            weights_id=self.weights_id,
            weights_note=self.weights_note,
            image_size=self.image_size,
        )
        return d

    # -- extraction -----------------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Validate and resize to the adapter's input size (bilinear, antialiased); subclasses normalise."""
        images = validate_images(images).to(self.device, torch.float32)
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = torch.nn.functional.interpolate(
                images,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            ).clamp_(0, 1)
        return images

    def extract(
        self,
        images: torch.Tensor,
        layers: Any = None,
        timesteps: Any = None,
        *,
        image_ids: Sequence[str] | None = None,
        seed: int = 0,
        noise_draws: int = 1,
    ) -> dict[FeatureKey, torch.Tensor]:
        """Features for every requested ``(layer, timestep)`` as float32 (B, C, h, w) tensors on the CPU.

        Without ``image_ids``, an image's id (which seeds its noise) is its position in this batch.
        """
        parts: dict[FeatureKey, list[torch.Tensor]] = {}
        for _, feats in self.iter_extract(
            images, layers, timesteps, image_ids=image_ids, seed=seed, noise_draws=noise_draws
        ):
            for k, v in feats.items():
                parts.setdefault(k, []).append(v)
        return {k: v[0] if len(v) == 1 else torch.cat(v) for k, v in parts.items()}  # one chunk: no copy

    def iter_extract(
        self,
        images: torch.Tensor,
        layers: Any = None,
        timesteps: Any = None,
        *,
        image_ids: Sequence[str] | None = None,
        seed: int = 0,
        noise_draws: int = 1,
    ) -> Iterator[tuple[int, dict[FeatureKey, torch.Tensor]]]:
        """As :meth:`extract`, one compute batch at a time: yields ``(offset, features of images[offset:...])``,
        so a caller that writes features somewhere (the feature store) never concatenates them."""
        layer_idx = self.resolve_layers(layers)
        ts = self.resolve_timesteps(timesteps)
        if noise_draws < 1:
            raise ProbebenchError(f"noise_draws must be >= 1, got {noise_draws}.")
        if image_ids is not None and len(image_ids) != images.shape[0]:
            raise ProbebenchError(f"Got {len(image_ids)} image ids for {images.shape[0]} images.")
        x = self.preprocess(images)
        ids = list(image_ids) if image_ids is not None else [str(i) for i in range(len(x))]
        # The model always sees batches of exactly ``compute_batch`` images (the last one zero-padded): kernels
        # choose algorithms by batch shape, so this makes an image's features independent of how the caller
        # batches, shards or distributes the dataset — bit for bit.
        cb = self.compute_batch
        for s in range(0, len(x), cb):
            xs, n = x[s : s + cb], min(cb, len(x) - s)
            chunk_ids = ids[s : s + cb]
            if n < cb:
                xs = torch.cat([xs, xs.new_zeros((cb - n, *xs.shape[1:]))])
                chunk_ids = chunk_ids + [f"__pad{j}__" for j in range(cb - n)]
            with torch.inference_mode():  # not held across the yield: the caller's code runs outside it
                feats = self._extract(
                    xs, layer_idx, ts, image_ids=chunk_ids, seed=seed, noise_draws=noise_draws
                )
                feats = {k: v[:n].float().cpu() for k, v in feats.items()}
            yield s, feats

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
        raise NotImplementedError

    def autocast(self):
        """bf16/fp16 autocast on the adapter's device (a no-op for float32)."""
        enabled = self.dtype != torch.float32
        return torch.autocast(device_type=self.device.type, dtype=self.dtype, enabled=enabled)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, weights={self.weights!r}, layers={self.num_layers})"
