"""The ridge screen: every (layer, timestep) of a feature source × every task × every λ, from one pass over the
train features, λ chosen on the validation split, scored on the validation and test splits with the task's
metrics.

One code path serves cached and streaming fits. :func:`screen` reads :class:`~probes.base.FeatureSource` s in
groups of keys; per group it makes one pass over train (the ridge statistics of every key × task), one over
val per λ criterion, and one over val and test at the chosen λ. A cache (:class:`~probes.base.Split`) is read
one key per group; a live adapter (:class:`probes.stream.LiveSource`) takes as many keys per group as the
accumulators' memory allows, since each of its passes is an extraction. Every accumulator and metric sees the
same batches in the same order either way, so the records are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from backbones.base import FeatureKey
from backbones.store import FeatureInfo
from probebench.core.errors import ProbebenchError
from probes.base import FeatureSource, Head, Probe, ProbeOutput, Split, check_single
from probes.ridge import RidgeAccumulator, RidgeSolution
from probes.targets import upsample
from tasks.base import TargetSpec

DEFAULT_LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
Cell = tuple[FeatureKey, str]  # (key, task)


class RidgeProbe(Probe):
    """A closed-form ridge probe per (key, task), λ chosen on ``val``; the best cell per task (by its validation
    score) is returned as a :class:`~probes.base.Head`. Its ``seed`` changes nothing."""

    name = "ridge"
    per_cell = True

    @dataclass
    class Params:
        """``lambdas``: the λ grid, relative to the mean feature variance (:meth:`RidgeAccumulator.solve`);
        ``class_balanced``: inverse-frequency class weights for kinds with classes; ``batch_size``: images
        per read."""

        lambdas: Sequence[float] = DEFAULT_LAMBDAS
        class_balanced: bool = True
        batch_size: int = 32

    def fit(
        self,
        train: FeatureSource,
        val: FeatureSource,
        test: FeatureSource | None,
        kinds: Sequence[str],
        *,
        keys: Sequence[FeatureKey] | None = None,
        seed: int = 0,
        progress: bool = True,
        extra: Any = None,
    ) -> ProbeOutput:
        check_single(self.name, extra)
        keys = list(keys) if keys is not None else train.keys
        groups = self.key_groups(train, keys, kinds)
        return screen(train, val, test, kinds, groups, self.params, progress=progress, probe=self.rows_probe)

    def key_groups(
        self, train: FeatureSource, keys: list[FeatureKey], kinds: Sequence[str]
    ) -> list[list[FeatureKey]]:
        """The keys fitted per pass over the data: one per pass from a cache (each key read on its own)."""
        return [[k] for k in keys]


ridge_screen = RidgeProbe.fit_with  # the probe as a function, its parameters by keyword


def screen(
    train: FeatureSource,
    val: FeatureSource,
    test: FeatureSource | None,
    kinds: Sequence[str],
    groups: Sequence[Sequence[FeatureKey]],
    params: RidgeProbe.Params,
    *,
    progress: bool = True,
    probe: str | None = None,
) -> ProbeOutput:
    """The screen over ``groups`` of keys (each group: one pass over each split); records in group order, then
    key, task and split. ``probe``: a name for the records' ``probe`` field (rows otherwise carry the stage's)."""
    specs = {k: train.dataset.target_spec(k) for k in kinds}
    lambdas, batch_size = params.lambdas, params.batch_size
    if not lambdas:
        raise ProbebenchError("The ridge screen needs at least one λ.")
    class_w: dict[str, np.ndarray | None] = {}
    for kind, spec in specs.items():  # None for a kind without classes (its targets are not read)
        all_targets = (train.dataset.load_target(i, kind) for i in range(len(train.dataset)))
        class_w[kind] = spec.target_kind.class_weights(all_targets, spec) if params.class_balanced else None
    records: list[dict[str, Any]] = []
    best_heads: dict[str, Head] = {}
    bar = tqdm(total=sum(map(len, groups)), desc="ridge screen", unit="cell", disable=not progress)
    for group in groups:
        infos = {key: _info(key, train, val, test) for key in group}
        accs = _accumulate(train, infos, specs, class_w, batch_size)
        sols = {cell: RidgeSolution(*acc.solve(lambdas), tuple(lambdas)) for cell, acc in accs.items()}
        if len(lambdas) > 1:
            # λ is chosen on val by the kind's cheap criterion (saliency's full metric set costs ~100× more than
            # the others), then the chosen λ is scored with every metric
            criteria = evaluate(sols, val, specs, batch_size, fast=True)
            chosen = {
                cell: _pick([c.compute() for c in crit], crit[0].higher_is_better)
                for cell, crit in criteria.items()
            }
        else:
            chosen = dict.fromkeys(sols, 0)
        val_scores = evaluate(sols, val, specs, batch_size, which=chosen)
        test_scores = None if test is None else evaluate(sols, test, specs, batch_size, which=chosen)
        for key in group:
            for kind, spec in specs.items():
                cell, best = (key, kind), chosen[key, kind]
                base = {
                    "layer": key[0],
                    "timestep": key[1],
                    "log_snr": infos[key].log_snr,
                    "task": kind,
                    "lambda": float(lambdas[best]),
                    "train_cells": accs[cell].count,
                    **({"probe": probe} if probe else {}),
                }
                scores = val_scores[cell][0]
                records += [{**base, "split": "val", "metric": m, "value": v} for m, v in scores.items()]
                score = float(scores[spec.main_metric])
                prev = best_heads.get(kind)
                if prev is None or (
                    score > prev.val_score if spec.higher_is_better else score < prev.val_score
                ):
                    sol = sols[cell]
                    best_heads[kind] = Head(
                        key, kind, sol.coef[best], sol.intercept[best], float(lambdas[best]), score
                    )
                if test_scores is not None:
                    records += [
                        {**base, "split": "test", "metric": m, "value": v}
                        for m, v in test_scores[cell][0].items()
                    ]
        bar.update(len(group))
    bar.close()
    return ProbeOutput(records, best_heads)


def _info(
    key: FeatureKey, train: FeatureSource, val: FeatureSource, test: FeatureSource | None
) -> FeatureInfo:
    """The train features' info of ``key``, checked to have the same shape in val and test."""
    info = train.info(key)
    for split in (val, test):
        if split is not None and split.info(key).shape[1:] != info.shape[1:]:
            raise ProbebenchError(
                f"Feature {key} has shape {info.shape[1:]} in train but "
                f"{split.info(key).shape[1:]} in {split.dataset.split}."
            )
    return info


def _pick(scores: list[float], higher_is_better: bool) -> int:
    return int(np.nanargmax(scores) if higher_is_better else np.nanargmin(scores))


def _accumulate(
    train: FeatureSource,
    infos: dict[FeatureKey, FeatureInfo],
    specs: dict[str, TargetSpec],
    class_w: dict[str, np.ndarray | None],
    batch_size: int,
) -> dict[Cell, RidgeAccumulator]:
    """The ridge statistics of every (key, task) of a group, from one pass over ``train``."""
    accs = {
        (key, kind): RidgeAccumulator(info.shape[-1], spec.target_kind.num_outputs(spec))
        for key, info in infos.items()
        for kind, spec in specs.items()
    }
    for start, feats in train.batches(list(infos), batch_size):
        targets: dict[str, np.ndarray] = {}
        for key, arr in feats.items():
            b, h, w, dim = arr.shape
            x = arr.astype(np.float64).reshape(-1, dim)
            for kind, spec in specs.items():
                if kind not in targets:
                    targets[kind] = train.targets(start, start + b, kind)
                y, wt = spec.target_kind.soft_targets(targets[kind], spec, (h, w))
                wt = spec.target_kind.balance_weights(y, wt, class_w[kind])
                accs[key, kind].add(x, y.reshape(len(x), -1), wt.reshape(-1))
    return accs


def evaluate(
    sols: dict[Cell, RidgeSolution],
    split: FeatureSource,
    specs: dict[str, TargetSpec],
    batch_size: int,
    which: dict[Cell, int] | None = None,
    fast: bool = False,
) -> dict[Cell, list[Any]]:
    """Score every (key, task) solution on a split at label resolution, in one pass: one metric dict per λ (or
    for the λ index ``which[cell]``).

    ``fast=True`` returns instead the kind's λ criterion per λ, accumulated (``compute()`` and
    ``higher_is_better``): the main metric for segmentation (mIoU) and depth (RMSE), the mean absolute error for
    saliency instead of its costly full set.
    """
    accs: dict[Cell, list[Any]] = {}
    for (key, kind), sol in sols.items():
        spec = specs[kind]
        options = getattr(split.dataset, "eval_options", {}).get(kind, {})
        make = spec.target_kind.lambda_criterion if fast else spec.target_kind.make_metric
        accs[key, kind] = [make(spec, **options) for _ in range(len(sol.lambdas) if which is None else 1)]
    keys = list(dict.fromkeys(key for key, _ in sols))
    for start, feats in split.batches(keys, batch_size):
        targets: dict[str, np.ndarray] = {}
        for key, x in feats.items():
            for kind, spec in specs.items():
                if kind not in targets:
                    targets[kind] = split.targets(start, start + len(x), kind)
                target, sol = targets[kind], sols[key, kind]
                pred = sol.predict(x) if which is None else sol.predict(x, which[key, kind])[..., None, :]
                for li, acc in enumerate(accs[key, kind]):  # pred: (b, h, w, L, K)
                    up = upsample(pred[..., li, :], target.shape[-2:])
                    acc.update(spec.target_kind.decode(up, spec), target)
    return accs if fast else {cell: [m.compute() for m in ms] for cell, ms in accs.items()}


def predict_maps(head: Head, split: Split, spec: TargetSpec, indices: Sequence[int]) -> np.ndarray:
    """Decoded predictions of ``head`` at label resolution for some images of ``split`` (for figures)."""
    arr = split.cache.array(head.key)
    out = []
    for i in indices:
        target = split.dataset.load_target(i, head.kind)
        pred = head.predict(arr[i][None])
        out.append(spec.target_kind.decode(upsample(pred, target.shape[-2:]), spec)[0].numpy())
    return np.stack(out)
