"""Layer × timestep maps of each task's main metric: the whole screen of a diffusion backbone at a glance.

Columns run from noisy (left) to clean (right) by log-SNR, rows are block indices. The colour map is
reversed for lower-is-better metrics so that brighter is always better; comparison figures share one
colour scale across backbones so equal colours mean equal scores.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from analysis.common import (
    SEQUENTIAL,
    cell_probe,
    metric_label,
    pick_split,
    resolve_models,
    save_figure,
    slug,
    t_label,
)
from analysis.curves import chosen_cells, curve_table, seeds_phrase
from analysis.layout import fit_texts
from tasks.base import HIGHER_IS_BETTER, MAIN_METRIC


def heatmap_matrix(table: pd.DataFrame, model: str, task: str) -> pd.DataFrame:
    """(layers × timesteps) of the seed-mean metric for one model and task; columns ordered noisy → clean,
    labelled ``t=<native>\\n(<log-SNR>)``."""
    g = table[(table["model"] == model) & (table["task"] == task)]
    order = (
        g.drop_duplicates("timestep")
        .assign(_s=lambda x: x["log_snr"].fillna(np.inf))
        .sort_values(["_s", "t_native"], ascending=[True, False])
    )
    m = g.pivot_table(index="layer_index", columns="timestep", values="value", aggfunc="mean")
    m = m[list(order["timestep"])]
    m.columns = [t_label(t, s) for t, s in zip(order["timestep"], order["log_snr"])]
    m.index = [int(i) for i in m.index]
    m.index.name = "layer"
    m.attrs["timesteps"] = [str(t) for t in order["timestep"]]  # column order, for marking a chosen cell
    return m


def _position(m: pd.DataFrame, cell: tuple[str, str] | None) -> tuple[int, int] | None:
    """(row, column) of a (layer, timestep) cell in a :func:`heatmap_matrix`, or None."""
    if cell is None:
        return None
    try:
        return list(m.index).index(int(cell[0])), m.attrs["timesteps"].index(cell[1])
    except (ValueError, KeyError):
        return None


def _draw(
    ax: plt.Axes,
    m: pd.DataFrame,
    metric: str,
    vmin: float,
    vmax: float,
    cbar: bool,
    mark: tuple[int, int] | None = None,
) -> None:
    """Annotated heatmap; the red box marks ``mark`` (the cell chosen on val), else the best cell shown."""
    higher = HIGHER_IS_BETTER.get(metric, True)
    sns.heatmap(
        m,
        ax=ax,
        cmap=SEQUENTIAL if higher else f"{SEQUENTIAL}_r",
        vmin=vmin,
        vmax=vmax,
        annot=m.size <= 160,
        fmt=".2f",
        annot_kws={"fontsize": 7},
        linewidths=0.4,
        linecolor="white",
        cbar=cbar,
        cbar_kws={"label": f"{metric} ({'higher' if higher else 'lower'} is better)"},
    )
    if mark is None:
        best = np.nanargmax(m.to_numpy()) if higher else np.nanargmin(m.to_numpy())
        mark = np.unravel_index(best, m.shape)
    r, c = mark
    ax.add_patch(plt.Rectangle((c, r), 1, 1, fill=False, edgecolor="red", lw=2.2))
    ax.set_xlabel("timestep (native) and log-SNR; noisy → clean")
    ax.set_ylabel("layer (block index)")
    ax.tick_params(axis="x", labelsize=7, rotation=0)
    ax.tick_params(axis="y", rotation=0)


def plot_heatmaps(
    df: pd.DataFrame,
    out_dir: Path,
    *,
    split: str | None = None,
    probe: str | None = None,
    metric: str | None = None,
    models: list[str] | None = None,
) -> list[Path]:
    """Per diffusion model: one annotated heatmap per task (red box = best cell, chosen on val when the results
    have a val split, as the report chooses cells). Per task, when several
    models have maps: all of them side by side on one shared colour scale. A model with a single task whose
    map is in such a comparison gets no figure of its own (it would repeat that panel). ``models``: labels or
    backbone names (default all)."""
    split = split or pick_split(df)
    probe = cell_probe(df, probe)
    models = resolve_models(df, models)
    table = curve_table(df, split=split, probe=probe, metric=metric)
    if models is not None:
        table = table[table["model"].isin(models)]
    ok = table.groupby("model")["timestep"].nunique()
    table = table[table["model"].isin(ok[ok >= 2].index)]
    chosen = chosen_cells(df, probe=probe, metric=metric)
    paths: list[Path] = []
    sns.set_theme(style="white", context="notebook")
    tasks_all = [t for t in MAIN_METRIC if t in set(table["task"])] + sorted(
        set(table["task"]) - set(MAIN_METRIC)
    )
    compared = {t for t in tasks_all if table[table["task"] == t]["model"].nunique() >= 2}
    for model, dm in table.groupby("model", sort=True):
        tasks = [t for t in tasks_all if t in set(dm["task"])]
        if len(tasks) == 1 and tasks[0] in compared:
            continue  # its one map is a panel of heatmap_compare_<task>: the same figure under two names
        mats = [heatmap_matrix(dm, model, t) for t in tasks]
        w = max(4.5, 0.75 * max(m.shape[1] for m in mats) + 2.2)
        h = max(3.8, 0.42 * max(m.shape[0] for m in mats) + 2.0)
        fig, axes = plt.subplots(
            1, len(tasks), figsize=(w * len(tasks), h), squeeze=False, layout="constrained"
        )
        for ax, task, m in zip(axes[0], tasks, mats):
            metric_name = dm[dm["task"] == task]["metric"].iloc[0]
            lo, hi = float(np.nanmin(m.to_numpy())), float(np.nanmax(m.to_numpy()))
            _draw(ax, m, metric_name, lo, hi, True, _position(m, chosen.get((model, task))))
            ax.set_title(f"{task} — {metric_label(metric_name)}", fontsize=10)
        fig.suptitle(
            f"{model}: {probe} probe, layer × timestep ({split} split, {seeds_phrase(dm['n_seeds'])})"
        )
        fit_texts(fig)
        paths += save_figure(fig, out_dir, f"heatmap_{slug(model)}")
    for task in tasks_all:
        dt = table[table["task"] == task]
        names = sorted(dt["model"].unique())
        if len(names) < 2:
            continue
        mats = [heatmap_matrix(dt, m, task) for m in names]
        vmin = min(float(np.nanmin(m.to_numpy())) for m in mats)
        vmax = max(float(np.nanmax(m.to_numpy())) for m in mats)
        metric_name = dt["metric"].iloc[0]
        w = max(4.0, 0.75 * max(m.shape[1] for m in mats) + 1.6)
        h = max(3.2, 0.38 * max(m.shape[0] for m in mats) + 1.6)
        fig, axes = plt.subplots(
            1, len(names), figsize=(w * len(names) + 1.2, h), squeeze=False, layout="constrained"
        )
        for i, (ax, model, m) in enumerate(zip(axes[0], names, mats)):
            _draw(
                ax, m, metric_name, vmin, vmax, i == len(names) - 1, _position(m, chosen.get((model, task)))
            )
            ax.set_title(f"{model} · {probe}", fontsize=10)
        fig.suptitle(
            f"{task} — {metric_label(metric_name)}: layer × timestep, shared colour scale ({split} split, "
            f"{seeds_phrase(dt['n_seeds'])})"
        )
        fit_texts(fig)
        paths += save_figure(fig, out_dir, f"heatmap_compare_{task}")
    return paths
