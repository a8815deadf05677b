"""Live features: the ridge screen computed *during* extraction, and the source of online trained probes.

For grids too large for the disk (e.g. every block × many timesteps of FLUX), a :class:`LiveSource` extracts
features batch by batch as the screen reads them (:func:`probes.screen.screen`, the same code as on a cache);
validation and test features are recomputed (more passes over those splits) instead of being read back.
Features are rounded to fp16 exactly as the feature store would store them, so the records equal those of the
ridge screen on a cache of the same extraction (up to float summation order). Keys are screened in groups whose
accumulators fit ``memory_gb`` (:func:`memory_groups`); each group costs one extraction pass per split and
criterion.

A :class:`LiveSource` also gives the features of any images (:meth:`LiveSource.features`): a trained probe in
online mode (a stage's ``online: true``) reads its shuffled training batches through it, so its features are
extracted inside the training loop on the adapter's device and never stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from backbones.base import Adapter, FeatureKey
from backbones.store import FeatureInfo, _load_batch, key_stem, pool_features
from probebench.core.errors import ProbebenchError
from probebench.core.io import stable_hash
from probes.base import Batches, FeatureSource, ProbeOutput
from probes.screen import DEFAULT_LAMBDAS, RidgeProbe
from tasks.base import Dataset


class LiveSource:
    """The :class:`~probes.base.FeatureSource` of a live adapter: ``dataset``'s features at ``layers`` ×
    ``timesteps``, extracted with the noise ``seed`` and ``noise_draws``, pooled to ``pool_to``, and rounded
    through fp16 as the feature store stores them. Its ``hash`` is ``stream:<adapter fingerprint>``; only the
    requested keys are extracted, at most ``batch_size`` images per call of the adapter. The adapter pads every
    call to its ``compute_batch``, so an image's features do not depend on which images it is extracted with:
    they equal those of a cache of the same extraction bit for bit."""

    def __init__(
        self,
        adapter: Adapter,
        dataset: Dataset,
        *,
        layers: Any = None,
        timesteps: Any = None,
        seed: int = 0,
        noise_draws: int = 1,
        pool_to: int | None = None,
        batch_size: int = 16,
    ):
        self.adapter, self.dataset = adapter, dataset
        self.seed, self.noise_draws, self.pool_to = seed, noise_draws, pool_to
        self.batch_size = max(1, int(batch_size))
        self._keys = [
            (la, t) for la in adapter.resolve_layers(layers) for t in adapter.resolve_timesteps(timesteps)
        ]
        self._shapes: dict[FeatureKey, tuple[int, ...]] = {}

    @property
    def keys(self) -> list[FeatureKey]:
        return list(self._keys)

    @property
    def hash(self) -> str:
        return "stream:" + stable_hash(self.adapter.fingerprint(), 12)

    @property
    def fingerprint(self) -> dict[str, Any]:
        """The parts of a cache's fingerprint that name the model and the noise (result labels read them)."""
        return {
            "adapter": self.adapter.fingerprint(),
            "seed": int(self.seed),
            "noise_draws": int(self.noise_draws),
            "pool_to": self.pool_to,
        }

    def info(self, key: FeatureKey) -> FeatureInfo:
        """Shape and log-SNR of ``key``: shapes are read from image 0, extracted once per layer (every timestep of
        it), so asking for a few keys never extracts the whole grid."""
        key = (key[0], key[1])
        if key not in self._keys:
            raise ProbebenchError(
                f"Feature {key} is not among the live features of {self.adapter.name} "
                f"on {self.dataset.name}/{self.dataset.split}. It has: {self._keys}."
            )
        if key not in self._shapes:
            _, first = next(self._extract([0], [k for k in self._keys if k[0] == key[0]]))
            self._shapes.update({k: (len(self.dataset), *f.shape[1:]) for k, f in first.items()})
        return FeatureInfo(key[0], key[1], self.adapter.log_snr(key[1]), key_stem(key), self._shapes[key])

    def batches(self, keys: Sequence[FeatureKey], batch_size: int) -> Batches:
        for start in range(0, len(self.dataset), batch_size):
            yield from self._extract(range(start, min(len(self.dataset), start + batch_size)), keys)

    def features(self, indices: Sequence[int], keys: Sequence[FeatureKey]) -> dict[FeatureKey, np.ndarray]:
        """The features of images ``indices`` at ``keys`` (only those extracted), ``batch_size`` images at a time."""
        idx = [int(i) for i in indices]
        keys = [(k[0], k[1]) for k in keys]
        parts = [
            feats
            for s in range(0, len(idx), self.batch_size)
            for _, feats in self._extract(idx[s : s + self.batch_size], keys)
        ]
        return {k: np.concatenate([p[k] for p in parts]) for k in keys}

    def targets(self, start: int, stop: int, kind: str) -> np.ndarray:
        return np.stack(
            [self.dataset.load_target(i, kind) for i in range(start, min(stop, len(self.dataset)))]
        )

    def _extract(self, indices: Sequence[int], keys: Sequence[FeatureKey]) -> Batches:
        idx = list(indices)
        layers = sorted({k[0] for k in keys})
        ts = sorted({k[1] for k in keys}, key=lambda t: (t is None, t))
        feats = self.adapter.extract(
            _load_batch(self.dataset, idx, self.adapter.image_size),
            layers,
            None if ts == [None] else ts,
            image_ids=[self.dataset.image_id(i) for i in idx],
            seed=self.seed,
            noise_draws=self.noise_draws,
        )
        yield (
            idx[0],
            {k: pool_features(feats[k], self.pool_to).permute(0, 2, 3, 1).half().numpy() for k in keys},
        )


def memory_groups(
    source: FeatureSource, keys: Sequence[FeatureKey], tasks: int, memory_gb: float
) -> list[list[FeatureKey]]:
    """``keys`` in consecutive groups whose ridge accumulators (float64 (D+1)² per key and task) fit
    ``memory_gb`` (by the mean feature width)."""
    per_key = sum(8 * (source.info(k).shape[-1] + 1) ** 2 * tasks for k in keys) / len(keys)
    per_group = max(1, int(memory_gb * 2**30 // max(per_key, 1)))
    return [list(keys[i : i + per_group]) for i in range(0, len(keys), per_group)]


class RidgeStreamProbe(RidgeProbe):
    """The ridge screen on a :class:`LiveSource` (features never stored); its rows are ``ridge`` rows."""

    name = "ridge-stream"
    needs_cache = False
    rows_probe = "ridge"

    @dataclass
    class Params(RidgeProbe.Params):
        """The ridge screen's parameters (``batch_size``: images per extraction) and ``memory_gb``: the memory
        the accumulators of one key group may take."""

        batch_size: int = 16
        memory_gb: float = 4.0

    def key_groups(
        self, train: FeatureSource, keys: list[FeatureKey], kinds: Sequence[str]
    ) -> list[list[FeatureKey]]:
        """As many keys per extraction pass as fit ``memory_gb`` (:func:`memory_groups`)."""
        return memory_groups(train, keys, len(kinds), self.params.memory_gb)


def stream_ridge_screen(
    adapter: Adapter,
    train: Dataset,
    val: Dataset,
    test: Dataset | None,
    kinds: Sequence[str],
    *,
    layers: Any = None,
    timesteps: Any = None,
    seed: int = 0,
    noise_draws: int = 1,
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    class_balanced: bool = True,
    batch_size: int = 16,
    pool_to: int | None = None,
    memory_gb: float = 4.0,
    progress: bool = True,
) -> ProbeOutput:
    """Ridge probes for every (layer, timestep) × task from features that are never written to disk:
    :class:`RidgeStreamProbe` on :class:`LiveSource` s of the three datasets (``seed``: the noise seed)."""
    extraction = {"layers": layers, "timesteps": timesteps, "seed": seed, "noise_draws": noise_draws}
    train_src, val_src, test_src = (
        None if ds is None else LiveSource(adapter, ds, **extraction, pool_to=pool_to)
        for ds in (train, val, test)
    )
    params = RidgeStreamProbe.Params(
        lambdas=lambdas, class_balanced=class_balanced, batch_size=batch_size, memory_gb=memory_gb
    )
    return RidgeStreamProbe(params).fit(train_src, val_src, test_src, kinds, progress=progress)


__all__ = ["LiveSource", "RidgeStreamProbe", "memory_groups", "stream_ridge_screen"]
