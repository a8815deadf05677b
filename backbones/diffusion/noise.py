"""Noise and noise schedules: what x_t is, for every family, in its own timestep units.

Noise is a pure function of (seed, image id, draw) — never of batch size, composition, shard or device — so a
cached feature can be recomputed bit for bit anywhere. A :class:`NoiseSchedule` owns one family's native
timestep units (DDPM integers or flow-matching σ): validation with errors that name the range, the forward
process coefficients (α, σ), log-SNR and the value the transformer's ``timestep`` argument takes. The
conventions are written once, in :mod:`backbones.diffusion`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import torch

from probebench.core.errors import ProbebenchError


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from ``":".join(parts)`` through SHA-256 (stable across processes, unlike ``hash()``)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def draw_noise(shape: Sequence[int], *, seed: int, image_id: Any, draw: int) -> torch.Tensor:
    """Standard normal noise of ``shape`` (float32, CPU) for one image and one draw."""
    gen = torch.Generator(device="cpu").manual_seed(stable_seed(seed, image_id, draw))
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float32)


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
