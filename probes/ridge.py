"""Closed-form ridge probes: one streaming pass per (layer, timestep), every λ from one eigendecomposition.

For weighted ridge with an unpenalised intercept, only the weighted sums Σw, Σw·x, Σw·y, Σw·xxᵀ and Σw·xyᵀ are
needed. They are accumulated in float64 over feature cells (pixels at feature resolution) while the cache is
streamed once; then the centred covariance C = V diag(e) Vᵀ gives W_λ = V diag(1/(e+λ)) Vᵀ R for every λ.
This is the estimator of scikit-learn's ``Ridge(alpha=λ, fit_intercept=True)`` with ``sample_weight``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from probebench.core.errors import ProbebenchError


class RidgeAccumulator:
    """Streaming sufficient statistics of a weighted multi-output ridge regression."""

    def __init__(self, dim: int, outputs: int):
        self.dim, self.outputs = dim, outputs
        self.sw = 0.0
        self.sx = np.zeros(dim)
        self.sy = np.zeros(outputs)
        self.xx = np.zeros((dim, dim))
        self.xy = np.zeros((dim, outputs))
        self.count = 0

    def add(self, x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> None:
        """Add rows ``x`` (n, D), targets ``y`` (n, K) with optional non-negative weights ``w`` (n,)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.dim)
        y = np.asarray(y, dtype=np.float64).reshape(-1, self.outputs)
        w = np.ones(len(x)) if w is None else np.asarray(w, dtype=np.float64).reshape(-1)
        keep = w > 0
        if not keep.all():
            x, y, w = x[keep], y[keep], w[keep]
        xw = x * w[:, None]
        self.sw += float(w.sum())
        self.sx += xw.sum(0)
        self.sy += (y * w[:, None]).sum(0)
        self.xx += x.T @ xw
        self.xy += xw.T @ y
        self.count += len(x)

    def merge(self, other: RidgeAccumulator) -> RidgeAccumulator:
        """Combine with another accumulator (e.g. from another rank)."""
        self.sw += other.sw
        self.sx += other.sx
        self.sy += other.sy
        self.xx += other.xx
        self.xy += other.xy
        self.count += other.count
        return self

    def solve(
        self, lambdas: Sequence[float], relative: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coefficients (L, D, K), intercepts (L, K) and the absolute λ used, for every λ of the grid.

        With ``relative=True`` each λ is multiplied by trace(C)/D (the mean feature variance × Σw), so one grid
        fits features of any scale.
        """
        if self.sw <= 0:
            raise ProbebenchError("The ridge probe saw no training cell with positive weight (all ignored?).")
        mx, my = self.sx / self.sw, self.sy / self.sw
        cov = self.xx - self.sw * np.outer(mx, mx)
        cross = self.xy - self.sw * np.outer(mx, my)
        cov = (cov + cov.T) / 2
        evals, evecs = np.linalg.eigh(cov)
        evals = np.clip(evals, 0, None)
        scale = float(np.trace(cov)) / self.dim if relative else 1.0
        lam = np.asarray(lambdas, dtype=np.float64) * (scale if scale > 0 else 1.0)
        proj = evecs.T @ cross  # (D, K)
        coefs = np.stack([evecs @ (proj / (evals + lmb)[:, None]) for lmb in lam])
        intercepts = my[None] - np.einsum("d,ldk->lk", mx, coefs)
        return coefs, intercepts, lam


@dataclass
class RidgeSolution:
    coef: np.ndarray  # (L, D, K)
    intercept: np.ndarray  # (L, K)
    lambdas: np.ndarray  # absolute λ per grid entry
    grid: tuple[float, ...]  # the λ grid as given

    def predict(self, x: np.ndarray, which: int | None = None) -> np.ndarray:
        """(..., D) features → (..., L, K) for every λ, or (..., K) for grid entry ``which``."""
        x = np.asarray(x, dtype=np.float64)
        if which is not None:
            return x @ self.coef[which] + self.intercept[which]
        return np.einsum("...d,ldk->...lk", x, self.coef) + self.intercept


def fit_ridge(
    batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    dim: int,
    outputs: int,
    lambdas: Sequence[float],
    relative: bool = True,
) -> RidgeSolution:
    """Accumulate ``(x, y, w)`` batches once and solve for every λ."""
    acc = RidgeAccumulator(dim, outputs)
    for x, y, w in batches:
        acc.add(x, y, w)
    coef, intercept, lam = acc.solve(lambdas, relative=relative)
    return RidgeSolution(coef, intercept, lam, tuple(lambdas))
