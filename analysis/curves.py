"""Timestep-distribution curves: where along the denoising trajectory the information lives.

One figure per diffusion model (main metric vs log-SNR on top, vs native timestep below; one line per layer,
one column per task, the best cell starred) and one comparison figure with every model on a shared log-SNR
axis (each model's best layer; clean-image encoders as horizontal reference lines). Clean images
(log-SNR = +∞, e.g. flow σ = 0) sit at a labelled right edge, pure noise (−∞) at the left edge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from analysis.common import (
    NATIVE_T_LABEL,
    SEQUENTIAL,
    SnrAxis,
    best_row,
    cell_probe,
    colors_for,
    main_metric_rows,
    metric_label,
    pick_split,
    resolve_models,
    save_figure,
    seed_mean,
    select,
    single_cells,
    slug,
    timestep_rows,
)
from analysis.layout import fit_texts, legend_ncol
from probebench.core.errors import ProbebenchError
from tasks.base import HIGHER_IS_BETTER, MAIN_METRIC


def seeds_phrase(n_seeds: pd.Series | list[int]) -> str:
    """How the plotted values were aggregated, from their ``n_seeds``: "one fit per cell" (a closed-form
    screen such as ridge is fitted once), "mean over 3 seeds", or "mean over up to 3 seeds" when cells
    differ. Captions never claim a seed mean for single fits."""
    n = pd.to_numeric(pd.Series(list(n_seeds)), errors="coerce").dropna()
    if n.empty or n.max() <= 1:
        return "one fit per cell"
    top = int(n.max())
    return f"mean over {top} seeds" if n.min() == top else f"mean over up to {top} seeds"


def curve_table(
    df: pd.DataFrame, *, split: str | None = None, probe: str | None = None, metric: str | None = None
) -> pd.DataFrame:
    """The numbers behind the curves: seed-mean metric per (model, task, layer, timestep) of one per-cell
    probe, with ``log_snr``, ``t_native`` and ``layer_index`` columns."""
    split = split or pick_split(df)
    probe = cell_probe(df, probe)
    d = main_metric_rows(select(df, probe=probe, split=split), metric=metric)
    d = timestep_rows(d)
    if d.empty:
        raise ProbebenchError(
            f"Probe {probe!r} has no single (layer, timestep) cells with a timestep on {split}."
        )
    m = seed_mean(d)
    m["t_native"] = pd.to_numeric(m["timestep"], errors="coerce")
    m["layer_index"] = pd.to_numeric(m["layer"], errors="coerce")
    return m.sort_values(["model", "task", "layer_index", "log_snr"]).reset_index(drop=True)


def _tasks(d: pd.DataFrame) -> list[str]:
    return [t for t in MAIN_METRIC if t in set(d["task"])] + sorted(set(d["task"]) - set(MAIN_METRIC))


def _best(g: pd.DataFrame) -> pd.Series:
    higher = HIGHER_IS_BETTER.get(g["metric"].iloc[0], True)
    return best_row(g, higher)


def chosen_cells(
    df: pd.DataFrame, *, probe: str, metric: str | None = None
) -> dict[tuple[str, str], tuple[str, str]]:
    """(model, task) → (layer, timestep) of the best cell on the **val** split: the cell a figure marks as best,
    as the report chooses cells (marking the best cell of the test split would select on test). Empty when the
    results have no val rows."""
    try:  # every single cell on val: diffusion (layer, timestep) cells and clean-image (layer, none) ones
        v = seed_mean(single_cells(main_metric_rows(select(df, probe=probe, split="val"), metric=metric)))
    except ProbebenchError:
        return {}
    return {
        (model, task): (str(b["layer"]), str(b["timestep"]))
        for (model, task), g in v.groupby(["model", "task"], sort=False)
        for b in [_best(g)]
    }


def marked_cell(
    g: pd.DataFrame, chosen: dict[tuple[str, str], tuple[str, str]], model: str, task: str, split: str
) -> tuple[pd.Series, str]:
    """The row of ``g`` (one model and task on the plotted split) to mark as best, and where it was chosen."""
    key = chosen.get((model, task))
    if key is not None:
        row = g[(g["layer"].astype(str) == key[0]) & (g["timestep"].astype(str) == key[1])]
        if len(row):
            return row.iloc[0], "val"
    return _best(g), split


def plot_timestep_curves(
    df: pd.DataFrame,
    out_dir: Path,
    *,
    split: str | None = None,
    probe: str | None = None,
    metric: str | None = None,
    models: list[str] | None = None,
) -> list[Path]:
    """One figure per diffusion model: metric vs log-SNR (top row) and vs native timestep (bottom row).
    ``models``: model labels (``backbone (weights)``) or backbone names; default all."""
    split = split or pick_split(df)
    probe = cell_probe(df, probe)
    models = resolve_models(df, models)
    table = curve_table(df, split=split, probe=probe, metric=metric)
    if models is not None:
        table = table[table["model"].isin(models)]
        if table.empty:
            raise ProbebenchError(f"None of {models} has cells at several timesteps for probe {probe!r}.")
    chosen = chosen_cells(df, probe=probe, metric=metric)
    paths: list[Path] = []
    sns.set_theme(style="whitegrid", context="notebook")
    for model, dm in table.groupby("model", sort=True):
        if dm["timestep"].nunique() < 2:
            continue
        tasks = _tasks(dm)
        axis = SnrAxis.from_values(dm["log_snr"])
        layers = sorted(dm["layer_index"].unique())
        colors = dict(zip(layers, sns.color_palette(SEQUENTIAL, len(layers))))
        fig, axes = plt.subplots(
            2, len(tasks), figsize=(4.8 * len(tasks), 7.4), squeeze=False, layout="constrained"
        )
        for c, task in enumerate(tasks):
            g = dm[dm["task"] == task]
            metric_name = g["metric"].iloc[0]
            best, where = marked_cell(g, chosen, model, task, split)
            for row, xcol in enumerate(("log_snr", "t_native")):
                ax = axes[row, c]
                for layer in layers:
                    gl = g[g["layer_index"] == layer].sort_values(xcol)
                    x = axis(gl[xcol]) if xcol == "log_snr" else gl[xcol]
                    ax.plot(x, gl["value"], marker="o", ms=4, color=colors[layer], label=f"layer {layer}")
                    if gl["std"].notna().any():
                        ax.fill_between(
                            x,
                            gl["value"] - gl["std"],
                            gl["value"] + gl["std"],
                            color=colors[layer],
                            alpha=0.15,
                        )
                bx = axis(best["log_snr"]) if xcol == "log_snr" else best["t_native"]
                ax.plot(
                    [bx],
                    [best["value"]],
                    marker="*",
                    ms=16,
                    color="black",
                    ls="none",
                    label=f"best on {where}: layer {best['layer']}, t={best['timestep']}",
                    zorder=5,
                )
                if xcol == "log_snr":
                    axis.decorate(ax)
                else:
                    ax.set_xlabel(NATIVE_T_LABEL)
                better = "higher" if HIGHER_IS_BETTER.get(metric_name, True) else "lower"
                ax.set_ylabel(f"{metric_label(metric_name)}, {split}")
                ax.set_title(f"{task} — {metric_name} ({better} is better)", fontsize=10)
            axes[0, c].legend(fontsize=7, loc="best")
        fig.suptitle(
            f"{model}: {probe} probe score across the denoising trajectory ({split} split, "
            f"{seeds_phrase(dm['n_seeds'])}{'; band: ± std' if dm['std'].notna().any() else ''})",
        )
        fit_texts(fig)
        paths += save_figure(fig, out_dir, f"timestep_curves_{slug(model)}")
    return paths


def plot_log_snr_comparison(
    df: pd.DataFrame,
    out_dir: Path,
    *,
    split: str | None = None,
    probe: str | None = None,
    metric: str | None = None,
    models: list[str] | None = None,
) -> list[Path]:
    """Every model on one log-SNR axis, one panel per task: each diffusion model's best layer as a curve,
    each clean-image model (timestep ``none``) as a dashed horizontal line at its best layer's score."""
    split = split or pick_split(df)
    probe = cell_probe(df, probe)
    models = resolve_models(df, models)
    table = curve_table(df, split=split, probe=probe, metric=metric)
    d_all = main_metric_rows(select(df, probe=probe, split=split), metric=metric)
    clean = seed_mean(single_cells(d_all[d_all["timestep"] == "none"]))
    if models is not None:
        table = table[table["model"].isin(models)]
        clean = clean[clean["model"].isin(models)]
    if table["model"].nunique() + clean["model"].nunique() < 2:
        return []
    tasks = _tasks(pd.concat([table[["task"]], clean[["task"]]]))
    axis = SnrAxis.from_values(table["log_snr"])
    all_models = sorted(set(table["model"]) | set(clean["model"]))
    colors = colors_for(all_models)
    chosen = chosen_cells(df, probe=probe, metric=metric)
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(5.2 * len(tasks), 4.2), squeeze=False, layout="constrained"
    )
    for ax, task in zip(axes[0], tasks):
        metric_name = None
        for model, g in table[table["task"] == task].groupby("model", sort=True):
            best, _ = marked_cell(g, chosen, model, task, split)
            gl = g[g["layer"] == best["layer"]].sort_values("log_snr")
            x = axis(gl["log_snr"])
            ax.plot(
                x,
                gl["value"],
                marker="o",
                ms=4,
                color=colors[model],
                label=f"{model} · {probe} (diffusion; best layer)",
            )
            ax.plot(
                [axis(best["log_snr"])],
                [best["value"]],
                marker="*",
                ms=14,
                color=colors[model],
                markeredgecolor="black",
                ls="none",
                zorder=5,
            )
            ax.annotate(
                f"L{best['layer']}",
                (axis(best["log_snr"]), best["value"]),
                xytext=(7, 4),
                textcoords="offset points",
                fontsize=7,
                color=colors[model],
            )
            metric_name = best["metric"]
        for model, g in clean[clean["task"] == task].groupby("model", sort=True):
            best, _ = marked_cell(g, chosen, model, task, split)
            ax.axhline(
                best["value"],
                color=colors[model],
                ls="--",
                lw=1.4,
                label=f"{model} · {probe} (clean image; best layer)",
            )
            ax.annotate(
                f"L{best['layer']}",
                (0.01, best["value"]),
                xycoords=("axes fraction", "data"),
                xytext=(0, 2),
                textcoords="offset points",
                fontsize=7,
                color=colors[model],
            )
            metric_name = best["metric"]
        axis.decorate(ax)
        better = "higher" if HIGHER_IS_BETTER.get(metric_name, True) else "lower"
        ax.set_ylabel(f"{metric_label(metric_name)}, {split}")
        ax.set_title(f"{task} — {metric_name} ({better} is better)", fontsize=10)
    handles: dict[str, Any] = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.suptitle(
        f"Backbones on a common noise axis: best layer per backbone (L = layer, ★ = best timestep; cells chosen "
        f"on val where it exists), {split} split"
    )
    fig.legend(
        handles.values(),
        handles.keys(),
        loc="outside lower center",
        ncol=legend_ncol(fig, list(handles), 8, max_ncol=2),
        fontsize=8,
        frameon=False,
    )
    fit_texts(fig)
    return save_figure(fig, out_dir, "log_snr_comparison")
