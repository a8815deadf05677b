"""Prediction panels of the best cells: for every model with saved heads, a few test images with each task's
target and the probe's prediction side by side, keyed so that they read without the code.

Input, per model under ``<results>/heads/<model slug>/`` (a sweep's ``cells/*/heads/*`` too): ``<task>_pred.npy``
and ``<task>_target.npy`` (N, H, W), ``<task>.json`` (``backbone``, ``weights``, ``layer``, ``timestep``; for
segmentation ``class_names`` and ``ignore_index`` when the pipeline saved its label space) and ``images.npy``
(N, H, W, 3) in [0, 1].

Each target kind owns its panel style (:data:`PANEL_STYLES`): segmentation maps use a palette with one
distinct colour per class of the label space (not a fixed 10-colour map, which repeats colours from class 10
on: ADE20K has 150) and a legend of the classes present, ignored pixels in black with their own entry;
depth maps share one colour scale per column pair with a colour bar in metres, invalid pixels (target 0 or
NaN, not scored) in a colour the depth map never uses, with a legend entry; saliency has a 0-1 colour bar.
"""

from __future__ import annotations

import colorsys
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import Colormap, ListedColormap
from matplotlib.patches import Patch

from analysis.common import cell_of, fmt_cell, head_dirs, save_figure, slug
from analysis.layout import fit_texts
from tasks.base import MAIN_METRIC

IGNORED_COLOR = (0.0, 0.0, 0.0)  # ignored segmentation pixels: black, in no class palette
INVALID_DEPTH_COLOR = (0.0, 0.75, 0.75)  # invalid depth: cyan, far from every colour of magma
DEPTH_CMAP = "magma_r"  # near = light, far = dark
MAX_LEGEND_CLASSES = 30  # beyond this the key lists the classes with the most pixels and counts the rest


def class_palette(n: int) -> list[tuple[float, float, float]]:
    """``n`` distinct RGB colours, none of them black: tab10 up to 10 classes, tab20 up to 20, beyond that
    hues spaced by the golden ratio at three lightness and two saturation levels, so neighbouring class ids
    get far-apart colours (a 150-class ADE20K map stays readable)."""
    if n <= 0:
        return []
    if n <= 20:
        cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
        return [tuple(float(c) for c in cmap(i)[:3]) for i in range(n)]
    out = []
    for i in range(n):
        hue = (i * 0.6180339887498949) % 1.0
        light = (0.45, 0.62, 0.78)[i % 3]
        sat = (0.85, 0.55)[(i // 3) % 2]
        out.append(colorsys.hls_to_rgb(hue, light, sat))
    return out


def _with_bad(cmap: Colormap | str, color: tuple[float, float, float]) -> Colormap:
    """A copy of ``cmap`` that draws masked (not scored) pixels in ``color``."""
    return plt.get_cmap(cmap).with_extremes(bad=color)


@dataclass
class Panels:
    """What one task draws: images for its target and prediction columns, and how to key them."""

    target: np.ndarray  # (n, H, W), masked where not scored
    pred: np.ndarray
    imshow: dict[str, Any]
    legend: list[Patch]  # handles of the key under the column pair (empty: none)
    legend_title: str = ""
    colorbar: str = ""  # colour-bar label (empty: none)
    colorbar_extend: str = "neither"


class SegmentationStyle:
    """Class maps: one colour per class of the label space; ignored pixels black; a legend of the classes
    present in the shown targets and predictions."""

    def panels(self, target: np.ndarray, pred: np.ndarray, meta: dict[str, Any]) -> Panels:
        names = [str(c) for c in meta.get("class_names") or []]
        ignore = int(meta.get("ignore_index", 255))
        t, p = np.asarray(target, dtype=np.float64), np.asarray(pred, dtype=np.float64)
        ignored = ~np.isfinite(t) | (t == ignore)
        ids = np.concatenate([t[~ignored].ravel(), p[np.isfinite(p) & (p != ignore)].ravel()])
        top = int(ids.max()) + 1 if ids.size else 0
        n = max(len(names), top, 1)
        names += [f"class {k}" for k in range(len(names), n)]
        colors = class_palette(n)
        cmap = _with_bad(ListedColormap(colors, name="classes"), IGNORED_COLOR)
        values, counts = np.unique(ids[ids >= 0].astype(np.int64), return_counts=True)
        present = [int(k) for k in values]
        keyed = sorted(present, key=lambda k: -counts[present.index(k)])[:MAX_LEGEND_CLASSES]
        legend = [Patch(facecolor=colors[k], edgecolor="0.4", lw=0.3, label=names[k]) for k in sorted(keyed)]
        if len(present) > len(keyed):
            rest = len(present) - len(keyed)
            legend.append(Patch(facecolor="none", edgecolor="none", label=f"+ {rest} more (fewest pixels)"))
        if ignored.any():
            legend.append(Patch(facecolor=IGNORED_COLOR, label=f"ignored (label {ignore}; not scored)"))
        return Panels(
            np.ma.masked_array(t, ignored),
            np.ma.masked_invalid(p),
            {"cmap": cmap, "vmin": -0.5, "vmax": n - 0.5, "interpolation": "nearest"},
            legend,
            f"classes present ({len(present)} of {n})",
        )


class SaliencyStyle:
    """Saliency masks and scores on a fixed 0-1 grey scale with its colour bar."""

    def panels(self, target: np.ndarray, pred: np.ndarray, meta: dict[str, Any]) -> Panels:
        return Panels(
            np.ma.masked_invalid(np.asarray(target, dtype=np.float64)),
            np.ma.masked_invalid(np.asarray(pred, dtype=np.float64)),
            {"cmap": "gray", "vmin": 0.0, "vmax": 1.0},
            [],
            colorbar="saliency (0 = background, 1 = salient)",
        )


class DepthStyle:
    """Depth in metres on one scale (the valid targets' minimum to their 98th percentile) with a colour bar;
    invalid target pixels (0 or NaN: not scored) in cyan with a legend entry."""

    def panels(self, target: np.ndarray, pred: np.ndarray, meta: dict[str, Any]) -> Panels:
        t, p = np.asarray(target, dtype=np.float64), np.asarray(pred, dtype=np.float64)
        invalid = ~np.isfinite(t) | (t <= 0)
        valid = t[~invalid]
        lo = float(valid.min()) if valid.size else 0.0
        hi = float(np.percentile(valid, 98)) if valid.size else 1.0
        legend = []
        if invalid.any():
            legend.append(Patch(facecolor=INVALID_DEPTH_COLOR, label="invalid depth (0 / NaN; not scored)"))
        return Panels(
            np.ma.masked_array(t, invalid),
            np.ma.masked_invalid(p),
            {"cmap": _with_bad(DEPTH_CMAP, INVALID_DEPTH_COLOR), "vmin": lo, "vmax": max(hi, lo + 1e-6)},
            legend,
            colorbar="depth (m)",
            colorbar_extend="both",
        )


class ContinuousStyle:
    """Any other dense target: one shared linear scale over the shown targets, with a colour bar."""

    def panels(self, target: np.ndarray, pred: np.ndarray, meta: dict[str, Any]) -> Panels:
        t = np.ma.masked_invalid(np.asarray(target, dtype=np.float64))
        lo, hi = (float(t.min()), float(t.max())) if t.count() else (0.0, 1.0)
        return Panels(
            t,
            np.ma.masked_invalid(np.asarray(pred, dtype=np.float64)),
            {"cmap": "viridis", "vmin": lo, "vmax": max(hi, lo + 1e-6)},
            [],
            colorbar="value",
            colorbar_extend="both",
        )


PANEL_STYLES: dict[str, Any] = {
    "segmentation": SegmentationStyle(),
    "saliency": SaliencyStyle(),
    "depth": DepthStyle(),
}


def _meta(d: Path, kind: str) -> dict[str, Any]:
    f = d / f"{kind}.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _kinds(d: Path) -> list[str]:
    """Tasks with saved predictions and targets, in the usual task order (unknown kinds last, sorted)."""
    have = {f.name.removesuffix("_pred.npy") for f in d.glob("*_pred.npy")}
    have = {k for k in have if (d / f"{k}_target.npy").is_file()}
    return [k for k in MAIN_METRIC if k in have] + sorted(have - set(MAIN_METRIC))


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


def plot_model_predictions(d: Path, out_dir: Path, num_rows: int = 4) -> list[Path]:
    """The panel figure of one heads directory (PNG and PDF), or ``[]`` when it has no predictions/images."""
    kinds = _kinds(d)
    if not kinds or not (d / "images.npy").is_file():
        return []
    images = np.load(d / "images.npy")[:num_rows]
    n = len(images)
    metas = {k: _meta(d, k) for k in kinds}
    panels = {
        k: PANEL_STYLES.get(k, ContinuousStyle()).panels(
            np.load(d / f"{k}_target.npy")[:n], np.load(d / f"{k}_pred.npy")[:n], metas[k]
        )
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
        if p.colorbar and im is not None:
            cb = fig.colorbar(im, ax=list(axes[:, 2 + 2 * c]), shrink=0.9, extend=p.colorbar_extend)
            cb.set_label(p.colorbar, fontsize=8)
            cb.ax.tick_params(labelsize=7)
        if keyed:
            key = fig.add_subplot(gs[n, 1 + 2 * c : 3 + 2 * c])
            key.axis("off")
            if p.legend:
                key.legend(
                    handles=p.legend,
                    loc="upper center",
                    ncol=_legend_columns(p.legend, 2 * col_in, fontsize),
                    fontsize=fontsize,
                    title=p.legend_title or None,
                    title_fontsize=8,
                    frameon=False,
                    handlelength=1.2,
                    columnspacing=0.8,
                )
    if keyed:
        fig.add_subplot(gs[n, 0]).axis("off")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    cell = cell_of(d)
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
    for d in head_dirs(rdir):
        paths += plot_model_predictions(d, out, num_rows)
    return [p for p in paths if p.suffix == ".png"]
