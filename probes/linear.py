"""The trained linear probe (DINOv2/v3 protocol: BN + dropout + 1×1 conv on frozen features, upsampled to the
label size), the two-backbone combination probe, and how well the ridge screen ranks cells against it.

Call with two backbones (the complementarity experiment)::

    out = combine_probe(dit_train, dit_val, dit_test, ["segmentation"],
                        keys=[(14, 500)],                                  # DiT cell(s)
                        extra={"train": [dino_train], "val": [dino_val], "test": [dino_test]},
                        extra_keys=[(11, None)])                           # DINOv3 cell(s)

``dit_*`` and ``dino_*`` are feature sources of the SAME images (:class:`~probes.base.Split` of caches, or
:class:`~probes.stream.LiveSource` s in online mode); the DINOv3 features are resampled (bilinear) to the DiT
grid and concatenated. Records: ``combine`` (joint), ``combine-main`` and
``combine-extra`` (each alone, same recipe), so complementarity is one table. The records of a member alone carry
``members`` (``[0]``: the main backbone, ``[1]``: the extra one), so their result rows are labelled with that
backbone, never with the combination.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from backbones.base import FeatureKey
from probebench.core.errors import ProbebenchError
from probes.base import FeatureSource, ProbeOutput
from probes.heads import LinearHead
from probes.training import Input, ProbeRun, TrainConfig, TrainedProbe, cpu_state, parse_keys
from tasks.base import MAIN_METRIC

COMBINE_MODES = ("concat", "mean", "global", "spatial")


def _groups(concat_keys: Any) -> list[list[FeatureKey]]:
    """``concat_keys``: one group ``[[l, t], ...]`` or several ``[[[l, t], ...], ...]``."""
    if not concat_keys:
        raise ProbebenchError("concat_keys must name at least one (layer, timestep) key.")
    first = concat_keys[0]
    if isinstance(first, (tuple, list)) and first and isinstance(first[0], (int, np.integer)):
        return [parse_keys(concat_keys, "concat_keys")]
    return [parse_keys(g, "concat_keys") for g in concat_keys]


def _train_cells(
    run: ProbeRun,
    cells: Iterable[tuple[list[Input], str]],
    kinds: Sequence[str],
    build_for: Any,
    out: ProbeOutput,
    **fields: Any,
) -> None:
    """Train and record every (cell, task); ``build_for(inputs, channels)`` returns the model factory."""
    for inputs, variant in cells:
        feats = run.features(inputs, grid="first")
        for kind in kinds:
            fitted = run.train(build_for(inputs, run.objective(kind).channels), feats, kind, variant, inputs)
            out.records += run.records(fitted, feats, kind, variant, inputs, **fields)
            out.state_dicts[run.state_dict_name(variant, kind, inputs)] = cpu_state(fitted.model)


class LinearProbe(TrainedProbe):
    """A trained linear probe per cell and task: one cell per key of ``keys`` (default: every cached key), or one
    per group of ``concat_keys`` (features of several layers concatenated, resampled to the first one's grid).
    With ``extra`` caches, every cell also gets their keys (``extra_keys``, default all) concatenated."""

    name = "linear"
    per_cell = True

    @dataclass
    class Params(TrainConfig):
        """``dropout``, ``concat_keys``, ``extra_keys`` and the training parameters (``lr`` 1e-2 here: a linear
        head on normalised features needs a brisk lr in short CPU runs)."""

        lr: float = 1e-2
        dropout: float = 0.1
        concat_keys: Any = None
        extra_keys: Any = None

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
        p = self.params
        run = ProbeRun(self.name, train, val, test, kinds, cfg=p, seed=seed, progress=progress, extra=extra)
        if p.concat_keys is not None:
            if keys is not None:
                raise ProbebenchError("linear probe: give keys or concat_keys, not both.")
            groups = _groups(p.concat_keys)
        else:
            groups = [[k] for k in (parse_keys(keys, "keys") if keys is not None else train.keys)]
        extra_inputs = (
            run.extra_inputs(parse_keys(p.extra_keys, "extra_keys") if p.extra_keys is not None else None)
            if run.extras
            else []
        )
        out = ProbeOutput([])

        def build_for(inputs: list[Input], channels: int):
            return lambda: LinearHead([i.dim for i in inputs], channels, p.dropout)

        cells = [(run.inputs(g) + extra_inputs, "linear") for g in groups]
        _train_cells(run, cells, kinds, build_for, out)
        return out


class CombineProbe(TrainedProbe):
    """Two backbones at once: each main key (``keys``, default all) joined with the first extra cache's
    ``extra_keys`` (default: all of its keys), resampled to the main grid.

    ``mode="concat"``: the linear probe on the concatenated features (variant ``combine``); ``mean``, ``global``
    or ``spatial``: the fusion probe's weighting over the joined inputs (``width`` = its projection width).
    With ``alone=True`` (default) the main key alone (``combine-main``) and the extra keys alone
    (``combine-extra``) are trained with the same recipe."""

    name = "combine"

    @dataclass
    class Params(TrainConfig):
        """``mode``, ``alone``, ``width``, ``dropout``, ``extra_keys`` and the training parameters (``lr`` 1e-2)."""

        lr: float = 1e-2
        dropout: float = 0.1
        extra_keys: Any = None
        mode: str = "concat"
        alone: bool = True
        width: int = 64

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
        p = self.params
        if p.mode not in COMBINE_MODES:
            raise ProbebenchError(
                f"combine probe: unknown mode {p.mode!r}. Valid: {', '.join(COMBINE_MODES)}."
            )
        run = ProbeRun(self.name, train, val, test, kinds, cfg=p, seed=seed, progress=progress, extra=extra)
        if not run.extras:
            raise ProbebenchError(
                "combine probe: needs a second backbone's caches of the same images as extra "
                "(extra={'train': [Split], 'val': [Split], 'test': [Split]}); "
                "in a config, list two backbones in the stage's `backbones`."
            )
        run.extras = run.extras[:1]
        extra_keys = parse_keys(p.extra_keys, "extra_keys") if p.extra_keys is not None else None
        x_inputs = run.extra_inputs(extra_keys)
        main_keys = parse_keys(keys, "keys") if keys is not None else train.keys

        def build_for(inputs: list[Input], channels: int):
            if p.mode == "concat":
                return lambda: LinearHead([i.dim for i in inputs], channels, p.dropout)
            from probes.fusion import FusionNet

            return lambda: FusionNet(
                [i.dim for i in inputs], channels, mode=p.mode, width=p.width, dropout=p.dropout
            )

        out = ProbeOutput([])
        cells = [(run.inputs([k]) + x_inputs, "combine") for k in main_keys]
        _train_cells(run, cells, kinds, build_for, out, mode=p.mode)
        if (
            p.alone
        ):  # each member alone, same recipe; `members` says whose rows these are (0 = main, 1 = extra)
            main_alone = [(run.inputs([k]), "combine-main") for k in main_keys]
            _train_cells(run, main_alone, kinds, build_for, out, mode=p.mode, members=[0])
            _train_cells(run, [(x_inputs, "combine-extra")], kinds, build_for, out, mode=p.mode, members=[1])
        return out


linear_probe = LinearProbe.fit_with  # the probe as a function, its parameters by keyword


combine_probe = CombineProbe.fit_with  # the probe as a function, its parameters by keyword


def _as_frame(records: Any) -> pd.DataFrame:
    df = records.copy() if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))
    if df.empty:
        return df
    from probebench.core.results import fmt_layers, fmt_timestep

    for col, fmt in (("layer", fmt_layers), ("timestep", fmt_timestep)):
        df[col] = [v if isinstance(v, str) else fmt(v) for v in df[col]]
    return df


def spearman_ridge_vs_linear(
    ridge_records: Any,
    linear_records: Any,
    task: str,
    *,
    split: str = "val",
    metric: str | None = None,
) -> dict[str, Any]:
    """How well the ridge screen ranks cells: Spearman's ρ between ridge and trained-probe scores over the
    (layer, timestep) cells both have, for one task, split and metric (default: the task's main metric).

    Records are probe record dicts or results tables (DataFrames). Returns ``rho``, ``p_value``, ``n`` and the
    matched ``table`` (layer, timestep, ridge, linear).
    """
    metric = metric or MAIN_METRIC.get(task, (None,))[0]
    if metric is None:
        raise ProbebenchError(f"Unknown task kind {task!r}; pass metric=.")
    scores = []
    for name, recs in (("ridge", ridge_records), ("linear", linear_records)):
        df = _as_frame(recs)
        if df.empty:
            raise ProbebenchError(f"No {name} records given.")
        df = df[(df["task"] == task) & (df["split"] == split) & (df["metric"] == metric)]
        if df.duplicated(["layer", "timestep"]).any():
            raise ProbebenchError(
                f"{name} records have several {metric} values per (layer, timestep) for {task}/{split}; "
                "filter them to one probe and backbone first."
            )
        scores.append(df.set_index(["layer", "timestep"])["value"].rename(name))
    table = pd.concat(scores, axis=1, join="inner").reset_index()
    if len(table) < 2:
        raise ProbebenchError(
            f"Only {len(table)} cell(s) have both ridge and linear {metric} for {task}/{split}; "
            "Spearman needs at least 2."
        )
    res = spearmanr(table["ridge"], table["linear"])
    return {"rho": float(res.statistic), "p_value": float(res.pvalue), "n": len(table), "table": table}
