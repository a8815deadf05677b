"""Stream-fit: the ridge screen computed *during* extraction, without storing any feature.

For grids too large for the disk (e.g. every block × many timesteps of FLUX), features are extracted batch by
batch and folded into the ridge sufficient statistics at once; validation and test features are recomputed
(two more passes over those splits) instead of being read back. Features are rounded to fp16 exactly as the
feature store would store them, so the records equal those of :func:`probes.screen.ridge_screen` on a cache of
the same extraction (up to float summation order). Keys are processed in groups whose accumulators fit
``memory_gb``; each group costs one pass over the data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from backbones.base import Adapter, FeatureKey
from backbones.store import _load_batch, pool_features
from probebench.core.errors import ProbebenchError
from probes.ridge import RidgeAccumulator, RidgeSolution
from probes.screen import DEFAULT_LAMBDAS, ProbeOutput
from probes.targets import (
    balance_weights,
    class_frequencies,
    decode,
    inverse_frequency_weights,
    make_metric,
    num_outputs,
    targets_at,
    upsample,
)
from tasks.base import Dataset


def _features(
    adapter: Adapter,
    ds: Dataset,
    group: Sequence[FeatureKey],
    *,
    seed: int,
    noise_draws: int,
    batch_size: int,
    pool_to: int | None,
) -> Iterator[tuple[int, dict[FeatureKey, np.ndarray]]]:
    """(start index, {key: (b, h, w, C) float64 rounded through fp16}) batches of ``ds`` for the keys of a group."""
    layers = sorted({k[0] for k in group})
    ts = sorted({k[1] for k in group}, key=lambda t: (t is None, t))
    for start in range(0, len(ds), batch_size):
        idx = list(range(start, min(len(ds), start + batch_size)))
        feats = adapter.extract(
            _load_batch(ds, idx, adapter.image_size),
            layers,
            None if ts == [None] else ts,
            image_ids=[ds.image_id(i) for i in idx],
            seed=seed,
            noise_draws=noise_draws,
        )
        out = {}
        for key in group:
            f = pool_features(feats[key], pool_to)
            out[key] = f.permute(0, 2, 3, 1).half().double().numpy()
        yield start, out


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
    """Ridge probes for every (layer, timestep) × task from features that are never written to disk."""
    if not lambdas:
        raise ProbebenchError("The ridge screen needs at least one λ.")
    specs = {k: train.target_spec(k) for k in kinds}
    keys = [
        (layer, t) for layer in adapter.resolve_layers(layers) for t in adapter.resolve_timesteps(timesteps)
    ]
    class_w = {}
    for kind, spec in specs.items():
        use = class_balanced and spec.kind in ("segmentation", "saliency")
        class_w[kind] = (
            inverse_frequency_weights(
                class_frequencies([train.load_target(i, kind) for i in range(len(train))], spec)
            )
            if use
            else None
        )
    # feature width per key, from one image, to size the key groups
    _, probe = next(
        _features(
            adapter, _Head1(train), keys, seed=seed, noise_draws=noise_draws, batch_size=1, pool_to=pool_to
        )
    )
    per_key = sum(8 * (probe[k].shape[-1] + 1) ** 2 * len(specs) for k in keys) / len(keys)
    per_group = max(1, int(memory_gb * 2**30 // max(per_key, 1)))
    groups = [keys[i : i + per_group] for i in range(0, len(keys), per_group)]
    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(groups) * 3, desc="stream ridge", unit="pass", disable=not progress)
    for group in groups:
        accs = {
            (k, kind): RidgeAccumulator(probe[k].shape[-1], num_outputs(s))
            for k in group
            for kind, s in specs.items()
        }
        for start, feats in _features(
            adapter, train, group, seed=seed, noise_draws=noise_draws, batch_size=batch_size, pool_to=pool_to
        ):
            for key, x in feats.items():
                b, h, w, d = x.shape
                for kind, spec in specs.items():
                    tg = np.stack([train.load_target(i, kind) for i in range(start, start + b)])
                    y, wt = targets_at(tg, spec, (h, w))
                    accs[(key, kind)].add(
                        x.reshape(-1, d),
                        y.reshape(b * h * w, -1),
                        balance_weights(y, wt, class_w[kind]).reshape(-1),
                    )
        bar.update()
        sols = {}
        for (key, kind), acc in accs.items():
            coef, icpt, lam = acc.solve(lambdas)
            sols[(key, kind)] = RidgeSolution(coef, icpt, lam, tuple(lambdas))
        # λ per (key, task) by the screen's cheap criterion on val, then every metric at that λ
        crit = _score(
            adapter, val, group, specs, sols, None, seed, noise_draws, batch_size, pool_to, fast=True
        )
        bar.update()
        chosen = {}
        for (key, kind), values in crit.items():
            spec = specs[kind]
            pick_max = spec.kind != "saliency" and spec.higher_is_better
            chosen[(key, kind)] = int(np.nanargmax(values) if pick_max else np.nanargmin(values))
        for split in [s for s in (val, test) if s is not None]:
            full = _score(adapter, split, group, specs, sols, chosen, seed, noise_draws, batch_size, pool_to)
            for (key, kind), scores in full.items():
                base = {
                    "layer": key[0],
                    "timestep": key[1],
                    "log_snr": adapter.log_snr(key[1]),
                    "task": kind,
                    "lambda": float(lambdas[chosen[(key, kind)]]),
                    "probe": "ridge",
                }
                records += [
                    {**base, "split": split.split, "metric": m, "value": v} for m, v in scores.items()
                ]
        bar.update()
    bar.close()
    return ProbeOutput(records)


stream_ridge_screen.needs_cache = False  # the pipeline passes the adapter and datasets, not caches


class _Head1(Dataset):
    """The first image of a dataset (to read feature widths)."""

    def __init__(self, base: Dataset):
        super().__init__(base.split)
        self.base = base

    @property
    def targets(self):
        return self.base.targets

    def __len__(self) -> int:
        return 1

    def image_id(self, index: int) -> str:
        return self.base.image_id(index)

    def load_image(self, index: int) -> np.ndarray:
        return self.base.load_image(index)

    def load_target(self, index: int, kind: str) -> np.ndarray:
        return self.base.load_target(index, kind)


def _score(adapter, ds, group, specs, sols, chosen, seed, noise_draws, batch_size, pool_to, fast=False):
    """Metrics of every (key, task) on ``ds``: per λ (the fast criterion) or at the chosen λ (every metric)."""
    options = getattr(ds, "eval_options", {})
    metrics, errors = {}, {}
    for key in group:
        for kind, spec in specs.items():
            n_l = len(sols[(key, kind)].lambdas) if chosen is None else 1
            if fast and spec.kind == "saliency":
                errors[(key, kind)] = np.zeros(n_l)
            else:
                metrics[(key, kind)] = [make_metric(spec, **options.get(kind, {})) for _ in range(n_l)]
    count = 0
    for start, feats in _features(
        adapter, ds, group, seed=seed, noise_draws=noise_draws, batch_size=batch_size, pool_to=pool_to
    ):
        b = next(iter(feats.values())).shape[0]
        targets = {
            kind: np.stack([ds.load_target(i, kind) for i in range(start, start + b)]) for kind in specs
        }
        count += targets[next(iter(specs))].size
        for key, x in feats.items():
            for kind, spec in specs.items():
                sol, tg = sols[(key, kind)], targets[kind]
                pred = sol.predict(x) if chosen is None else sol.predict(x, chosen[(key, kind)])[..., None, :]
                for li in range(pred.shape[-2]):
                    p = decode(upsample(pred[..., li, :], tg.shape[-2:]), spec)
                    if (key, kind) in errors:
                        errors[(key, kind)][li] += float(np.abs(p.numpy() - tg.astype(np.float32)).sum())
                    else:
                        metrics[(key, kind)][li].update(p, tg)
    out: dict[tuple[FeatureKey, str], Any] = {k: list(v / max(count, 1)) for k, v in errors.items()}
    for k, ms in metrics.items():
        spec = specs[k[1]]
        out[k] = [m.compute()[spec.main_metric] for m in ms] if fast else ms[0].compute()
    return out


__all__ = ["stream_ridge_screen"]
