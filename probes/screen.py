"""The ridge screen: every (layer, timestep) of a cache × every task × every λ, from one pass over the train
features per cell, λ chosen on the validation split, scored on the test split with the task's metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from backbones.base import FeatureKey
from backbones.store import FeatureCache
from probebench.core.errors import ProbebenchError
from probes.ridge import RidgeAccumulator, RidgeSolution
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
from tasks.base import Dataset, TargetSpec

DEFAULT_LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass
class Split:
    """A split's cached features and the dataset that provides its targets (checked to match)."""

    cache: FeatureCache
    dataset: Dataset

    def __post_init__(self) -> None:
        ids = [self.dataset.image_id(i) for i in range(len(self.dataset))]
        if ids != self.cache.image_ids:
            raise ProbebenchError(
                f"Cache {self.cache.path} was made for other images than {self.dataset.name}/{self.dataset.split} "
                f"({len(self.cache.image_ids)} cached vs {len(ids)} in the split, first ids "
                f"{self.cache.image_ids[:2]} vs {ids[:2]})."
            )

    def targets(self, start: int, stop: int, kind: str) -> np.ndarray:
        return np.stack(
            [self.dataset.load_target(i, kind) for i in range(start, min(stop, len(self.dataset)))]
        )


def _check_kinds(split: Split, kinds: Sequence[str]) -> dict[str, TargetSpec]:
    return {k: split.dataset.target_spec(k) for k in kinds}


@dataclass
class Head:
    """A fitted linear read-out on one (layer, timestep): ``x @ coef + intercept`` at feature resolution."""

    key: FeatureKey
    kind: str
    coef: np.ndarray  # (D, K)
    intercept: np.ndarray  # (K,)
    lam: float
    val_score: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.coef + self.intercept


@dataclass
class ProbeOutput:
    """What a probe returns (every registered probe returns one).

    ``records``: one dict per (cell, task, split, metric) with keys ``layer`` (int or list of ints),
    ``timestep`` (native value, None, or a list), ``log_snr`` (float, None or a list), ``task``, ``split``,
    ``metric``, ``value`` and optionally ``lambda``, ``probe`` (a variant name such as ``fusion-spatial``),
    ``seed``. ``best``: the best closed-form head per task (ridge). ``state_dicts``: trained heads to save as
    safetensors, by name. ``artifacts``: arrays to save as ``.npy`` for the analysis figures, by name
    (e.g. ``fusion_weights/segmentation`` of shape (N, T, h, w) for validation images, or
    ``global_weights/segmentation`` of shape (L, T)); ``artifact_meta``: JSON-able descriptions of them.
    """

    records: list[dict[str, Any]]
    best: dict[str, Head] = field(default_factory=dict)
    state_dicts: dict[str, dict[str, Any]] = field(default_factory=dict)
    artifacts: dict[str, np.ndarray] = field(default_factory=dict)
    artifact_meta: dict[str, dict[str, Any]] = field(default_factory=dict)


def ridge_screen(
    train: Split,
    val: Split,
    test: Split | None,
    kinds: Sequence[str],
    *,
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    class_balanced: bool = True,
    batch_size: int = 32,
    keys: Sequence[FeatureKey] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> ProbeOutput:
    """Fit and score a ridge probe per (key, task), λ chosen on ``val``; the best cell per task (by its
    validation score) is returned as a :class:`Head`. Closed form: ``seed`` changes nothing (kept for the
    common probe signature)."""
    specs = _check_kinds(train, kinds)
    if not lambdas:
        raise ProbebenchError("The ridge screen needs at least one λ.")
    keys = list(keys) if keys is not None else train.cache.keys
    class_w: dict[str, np.ndarray | None] = {}
    for kind, spec in specs.items():
        if class_balanced and spec.kind in ("segmentation", "saliency"):
            counts = class_frequencies(
                [train.dataset.load_target(i, kind) for i in range(len(train.dataset))], spec
            )
            class_w[kind] = inverse_frequency_weights(counts)
        else:
            class_w[kind] = None
    records: list[dict[str, Any]] = []
    best_heads: dict[str, Head] = {}
    for key in tqdm(keys, desc="ridge screen", unit="cell", disable=not progress):
        info = train.cache.info(key)
        for split in (val, test):
            if split is not None and split.cache.info(key).shape[1:] != info.shape[1:]:
                raise ProbebenchError(
                    f"Feature {key} has shape {info.shape[1:]} in train but "
                    f"{split.cache.info(key).shape[1:]} in {split.dataset.split}."
                )
        _, h, w, dim = info.shape
        accs = {k: RidgeAccumulator(dim, num_outputs(s)) for k, s in specs.items()}
        arr = train.cache.array(key)
        for start in range(0, len(arr), batch_size):
            x = arr[start : start + batch_size].astype(np.float64).reshape(-1, dim)
            for kind, spec in specs.items():
                y, wt = targets_at(train.targets(start, start + len(x) // (h * w), kind), spec, (h, w))
                wt = balance_weights(y, wt, class_w[kind])
                accs[kind].add(x, y.reshape(len(x), -1), wt.reshape(-1))
        for kind, spec in specs.items():
            coef, icpt, lam = accs[kind].solve(lambdas)
            sol = RidgeSolution(coef, icpt, lam, tuple(lambdas))
            if len(lambdas) > 1:
                # λ is chosen on val by a cheap criterion per task (saliency's full metric set costs ~100×
                # more than the others), then the chosen λ is scored with every metric
                fast = evaluate(sol, val, key, kind, spec, batch_size, fast=True)
                best = int(
                    np.nanargmax(fast)
                    if spec.kind != "saliency" and spec.higher_is_better
                    else np.nanargmin(fast)
                )
            else:
                best = 0
            val_scores = {best: evaluate(sol, val, key, kind, spec, batch_size, which=best)[0]}
            order = {best: val_scores[best][spec.main_metric]}
            base = {
                "layer": key[0],
                "timestep": key[1],
                "log_snr": info.log_snr,
                "task": kind,
                "lambda": float(lambdas[best]),
                "train_cells": accs[kind].count,
            }
            records += [
                {**base, "split": val.dataset.split, "metric": m, "value": v}
                for m, v in val_scores[best].items()
            ]
            score = float(order[best])
            prev = best_heads.get(kind)
            if prev is None or (score > prev.val_score if spec.higher_is_better else score < prev.val_score):
                best_heads[kind] = Head(key, kind, coef[best], icpt[best], float(lambdas[best]), score)
            if test is not None:
                test_scores = evaluate(sol, test, key, kind, spec, batch_size, which=best)[0]
                records += [
                    {**base, "split": test.dataset.split, "metric": m, "value": v}
                    for m, v in test_scores.items()
                ]
    return ProbeOutput(records, best_heads)


def predict_maps(head: Head, split: Split, spec: TargetSpec, indices: Sequence[int]) -> np.ndarray:
    """Decoded predictions of ``head`` at label resolution for some images of ``split`` (for figures)."""
    arr = split.cache.array(head.key)
    out = []
    for i in indices:
        target = split.dataset.load_target(i, head.kind)
        pred = head.predict(arr[i][None])
        out.append(decode(upsample(pred, target.shape[-2:]), spec)[0].numpy())
    return np.stack(out)


def evaluate(
    sol: RidgeSolution,
    split: Split,
    key: FeatureKey,
    kind: str,
    spec: TargetSpec,
    batch_size: int,
    which: int | None = None,
    fast: bool = False,
) -> list[Any]:
    """Score the probe(s) on a split at label resolution: one metric dict per λ (or for λ index ``which``).

    ``fast=True`` returns one number per λ for choosing λ: the main metric for segmentation (mIoU) and depth
    (RMSE), and the mean absolute error for saliency (lower is better) instead of its costly full set.
    """
    n_l = len(sol.lambdas) if which is None else 1
    if fast and spec.kind == "saliency":
        err, count = np.zeros(n_l), 0
        arr = split.cache.array(key)
        for start in range(0, len(arr), batch_size):
            x = arr[start : start + batch_size]
            target = split.targets(start, start + len(x), kind).astype(np.float32)
            pred = sol.predict(x) if which is None else sol.predict(x, which)[..., None, :]
            for li in range(n_l):
                p = decode(upsample(pred[..., li, :], target.shape[-2:]), spec).numpy()
                err[li] += np.abs(p - target).sum()
            count += target.size
        return list(err / max(count, 1))
    options = getattr(split.dataset, "eval_options", {}).get(kind, {})
    metrics = [make_metric(spec, **options) for _ in range(n_l)]
    arr = split.cache.array(key)
    for start in range(0, len(arr), batch_size):
        x = arr[start : start + batch_size]
        target = split.targets(start, start + len(x), kind)
        pred = sol.predict(x) if which is None else sol.predict(x, which)[..., None, :]  # (b, h, w, L, K)
        for li in range(n_l):
            up = upsample(pred[..., li, :], target.shape[-2:])
            metrics[li].update(decode(up, spec), target)
    if fast:
        return [m.compute()[spec.main_metric] for m in metrics]
    return [m.compute() for m in metrics]
