"""Prediction panels of the best cells: for every model with saved heads, a few test images with each task's
target and the probe's prediction side by side, keyed so that they read without the code.

Input, per model under ``<results>/heads/<model slug>/`` (a sweep's ``cells/*/heads/*`` too): ``<task>_pred.npy``
and ``<task>_target.npy`` (N, H, W), ``<task>.json`` (``backbone``, ``weights``, ``layer``, ``timestep``; for
segmentation ``class_names`` and ``ignore_index`` when the pipeline saved its label space) and ``images.npy``
(N, H, W, 3) in [0, 1].

Each target kind owns its panel style (``TargetKind.panels`` in :mod:`tasks.kinds`): segmentation maps use a
palette with one distinct colour per class of the label space (``tasks.kinds.class_palette``: not a fixed
10-colour map, which repeats colours from class 10 on: ADE20K has 150) and a legend of the classes present,
ignored pixels in black with their own entry; depth maps share one colour scale per column pair with a colour
bar in metres, invalid pixels (target 0 or NaN, not scored) in a colour the depth map never uses, with a legend
entry; saliency has a 0-1 colour bar. A task whose kind is not registered gets one linear colour scale.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from analysis.common import fmt_cell, save_figure, slug
from analysis.layout import fit_texts
from probebench.core.rundir import HeadsDir, RunDir
from tasks.base import MAIN_METRIC
from tasks.kinds import Panels, continuous_panels, find_kind


def _meta(d: Path, kind: str) -> dict[str, Any]:
    f = d / f"{kind}.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _kinds(d: Path) -> list[str]:
    """Tasks with saved predictions and targets, in the usual task order (unknown kinds last, sorted)."""
    have = {f.name.removesuffix("_pred.npy") for f in d.glob("*_pred.npy")}
    have = {k for k in have if (d / f"{k}_target.npy").is_file()}
    return [k for k in MAIN_METRIC if k in have] + sorted(have - set(MAIN_METRIC))


def _panels(kind: str, target: np.ndarray, pred: np.ndarray, meta: dict[str, Any]) -> Panels:
    """The task's kind draws its panels; a task of no registered kind gets one linear colour scale."""
    target_kind = find_kind(kind)
    return target_kind.panels(target, pred, meta) if target_kind else continuous_panels(target, pred)


def _legend_columns(handles: list[Patch], width_in: float, fontsize: float) -> int:
    """The most legend columns whose widths (each its longest label plus the handle, filled column by column
    as matplotlib does) add up to at most ``width_in`` inches; at least 1."""
    if not handles:
        return 1
    chars = [len(h.get_label()) for h in handles]
    em = fontsize / 72  # inches
    for ncol in range(len(chars), 0, -1):
        rows = math.ceil(len(chars) / ncol)
        cols = [chars[i : i + rows] for i in range(0, len(chars), rows)]
        if sum(0.55 * em * max(c) + 3.0 * em for c in cols) <= width_in:
            return ncol
    return 1


def draw_colorbar(fig: plt.Figure, im: Any, axes: list[Any], p: Panels) -> None:
    """The colour bar of a task's panels beside ``axes`` (none when its kind keys it by a legend)."""
    if p.colorbar:
        cb = fig.colorbar(im, ax=axes, shrink=0.9, extend=p.colorbar_extend)
        cb.set_label(p.colorbar, fontsize=8)
        cb.ax.tick_params(labelsize=7)


def draw_key(key: Any, p: Panels, width_in: float, fontsize: float) -> None:
    """A task's legend (its kind's handles) in the axes ``key`` under its columns, ``width_in`` inches wide."""
    key.axis("off")
    if p.legend:
        key.legend(
            handles=p.legend,
            loc="upper center",
            ncol=_legend_columns(p.legend, width_in, fontsize),
            fontsize=fontsize,
            title=p.legend_title or None,
            title_fontsize=8,
            frameon=False,
            handlelength=1.2,
            columnspacing=0.8,
        )


def plot_model_predictions(heads: HeadsDir | Path, out_dir: Path, num_rows: int = 4) -> list[Path]:
    """The panel figure of one heads directory (PNG and PDF), or ``[]`` when it has no predictions/images."""
    heads = heads if isinstance(heads, HeadsDir) else HeadsDir(Path(heads))
    d = heads.path
    kinds = _kinds(d)
    if not kinds or not (d / "images.npy").is_file():
        return []
    images = np.load(d / "images.npy")[:num_rows]
    n = len(images)
    metas = {k: _meta(d, k) for k in kinds}
    panels = {
        k: _panels(k, np.load(d / f"{k}_target.npy")[:n], np.load(d / f"{k}_pred.npy")[:n], metas[k])
        for k in kinds
    }
    keyed = any(p.legend for p in panels.values())
    fontsize = 7.0
    cols = 1 + 2 * len(kinds)
    col_in = 1.75
    key_rows = max(
        (
            math.ceil(len(p.legend) / _legend_columns(p.legend, 2 * col_in, fontsize))
            for p in panels.values()
            if p.legend
        ),
        default=0,
    )
    key_in = 0.35 + 0.17 * key_rows if keyed else 0.0
    fig = plt.figure(
        figsize=(
            col_in * cols + 0.9 * sum(bool(p.colorbar) for p in panels.values()),
            1.75 * n + 0.8 + key_in,
        ),
        layout="constrained",
    )
    gs = fig.add_gridspec(
        n + (1 if keyed else 0), cols, height_ratios=[1.75] * n + ([key_in] if keyed else [])
    )
    axes = np.array([[fig.add_subplot(gs[r, c]) for c in range(cols)] for r in range(n)]).reshape(n, cols)
    for r in range(n):
        axes[r, 0].imshow(np.clip(images[r], 0, 1))
    axes[0, 0].set_title("input", fontsize=9)
    title = d.name
    for c, kind in enumerate(kinds):
        p, meta = panels[kind], metas[kind]
        if "backbone" in meta:
            title = f"{meta['backbone']} ({meta['weights']})"
        im = None
        for r in range(n):
            axes[r, 1 + 2 * c].imshow(p.target[r], **p.imshow)
            im = axes[r, 2 + 2 * c].imshow(p.pred[r], **p.imshow)
        where = fmt_cell(meta.get("layer", "?"), meta.get("timestep", "none"))
        axes[0, 1 + 2 * c].set_title(f"{kind}\ntarget", fontsize=9)
        axes[0, 2 + 2 * c].set_title(f"{kind}\nprobe ({where})", fontsize=9)
        if im is not None:
            draw_colorbar(fig, im, list(axes[:, 2 + 2 * c]), p)
        if keyed:
            draw_key(fig.add_subplot(gs[n, 1 + 2 * c : 3 + 2 * c]), p, 2 * col_in, fontsize)
    if keyed:
        fig.add_subplot(gs[n, 0]).axis("off")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    cell = heads.cell
    title = f"{cell}: {title}" if cell else title
    fig.suptitle(f"{title}: best cell per task (test images)", fontsize=10)
    fit_texts(fig)
    return save_figure(fig, out_dir, f"predictions_{slug(cell) + '_' if cell else ''}{d.name}")


def plot_predictions(rdir: Path, num_rows: int = 4, out_dir: Path | None = None) -> list[Path]:
    """For each model with saved heads: input, target and prediction of every task's best cell, keyed (class
    legend, colour bars, ignored/invalid pixels). Returns the PNG paths."""
    rdir = Path(rdir)
    out = out_dir or rdir / "figures"
    paths: list[Path] = []
    for heads in RunDir(rdir).head_dirs():
        paths += plot_model_predictions(heads, out, num_rows)
    return [p for p in paths if p.suffix == ".png"]
