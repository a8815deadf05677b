"""The concept-map figure: what the zero-shot ``concept`` probe saw, one concept per row and one timestep per
column (noisy → clean), for the first val images, from the probe's ``concept_maps`` artifact.

``heads/<model>/concept_maps.npy``: float32 (N, C, T, h, w), softmax over the C concepts, for the first N val
images at one layer; ``concept_maps.json`` describes it (``backbone``, ``weights``, ``words``, ``layer``,
``timesteps``, ``log_snr``, ``split``, ``image_ids``); the images come from ``images_<split>.npy`` beside it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from analysis.common import SEQUENTIAL, save_figure, slug
from analysis.concept_labels import MAPS_STEM, ConceptLabel, parse_concept_label
from analysis.layout import fit_texts, legend_ncol
from probebench.core.errors import ProbebenchError
from probebench.core.rundir import HEADS_DIR, RunDir
from tasks.kinds import class_palette


# -- the concept-map artifacts --------------------------------------------------------------------------------
def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


@dataclass(frozen=True)
class ConceptMaps:
    """One saved ``concept_maps.npy`` with its meta. ``maps`` is (N, C, T, h, w) with the timesteps ordered
    noisy → clean."""

    path: Path  # the directory holding it
    maps: np.ndarray
    meta: dict[str, Any]
    words: list[str]
    timesteps: list[Any]
    log_snrs: list[float]
    cell: str = ""  # the sweep cell these are from ("" for a run's own)

    @property
    def label(self) -> ConceptLabel | None:
        return parse_concept_label(str(self.meta.get("backbone", "")))

    @property
    def title(self) -> str:
        """``tiny-mmdit (default), ConceptAttention maps``, with the variant and sweep cell where there are."""
        lab, w = self.label, self.meta.get("weights", "?")
        if lab is None:
            name = f"{self.meta['backbone']} ({w})" if "backbone" in self.meta else self.path.name
            text = f"{name}, concept maps"
        else:
            text = f"{lab.base} ({w}), {lab.kind} maps" + (f" [{lab.variant}]" if lab.variant else "")
        return f"{self.cell}: {text}" if self.cell else text

    def images(self) -> np.ndarray | None:
        """The images the maps are of: the meta's ``images`` file, else ``images_<split>.npy``; None if absent."""
        names = [self.meta["images"]] if self.meta.get("images") else []
        names.append(f"images_{self.meta.get('split', 'val')}.npy")
        for n in names:
            p = self.path / n
            if p.is_file():
                return np.load(p, mmap_mode="r")
        return None


def read_concept_maps(d: Path, cell: str = "") -> ConceptMaps:
    """``d/concept_maps.npy`` checked against ``d/concept_maps.json``, with the timesteps sorted noisy → clean
    (by log-SNR when every one is known, else as stored)."""
    f = d / f"{MAPS_STEM}.npy"
    j = d / f"{MAPS_STEM}.json"
    meta = json.loads(j.read_text()) if j.is_file() else {}
    maps = np.load(f)
    if maps.ndim != 5:
        raise ProbebenchError(f"{f} has shape {maps.shape}; expected (images, concepts, timesteps, h, w).")
    c, t = maps.shape[1:3]
    words = [str(w) for w in meta.get("words") or []]
    timesteps = list(meta.get("timesteps") or [])
    snr = meta.get("log_snr")
    snr = [None] * t if snr is None else list(snr)
    if len(words) != c or len(timesteps) != t or len(snr) != t:
        raise ProbebenchError(
            f"{f} has shape {maps.shape} (images, concepts, timesteps, h, w) but {j.name} names {len(words)} "
            f"words, {len(timesteps)} timesteps and {len(snr)} log-SNRs; expected {c}, {t}, {t}."
        )
    log_snrs = [_float(s) for s in snr]
    if not any(math.isnan(s) for s in log_snrs):
        order = sorted(range(t), key=lambda i: log_snrs[i])
        maps = maps[:, :, order]
        timesteps = [timesteps[i] for i in order]
        log_snrs = [log_snrs[i] for i in order]
    return ConceptMaps(d, maps, meta, words, timesteps, log_snrs, cell)


def load_concept_maps(results_dir: str | Path) -> list[ConceptMaps]:
    """Every ``concept_maps.npy`` under ``heads/<model>/`` (a labelled stage's ``heads/<model>/<label>/``
    too) of a run or of a sweep's cells."""
    found = []
    for heads in RunDir(results_dir).head_dirs():
        for d in [heads.path, *sorted(p for p in heads.path.iterdir() if p.is_dir())]:
            if (d / f"{MAPS_STEM}.npy").is_file():
                found.append(read_concept_maps(d, heads.cell))
    return found


def _column_title(timestep: Any, log_snr: float) -> str:
    """``t=0.3`` over ``log-SNR +1.69`` (``clean (+∞)`` / ``noise (−∞)``); timesteps as result rows write them."""
    if isinstance(timestep, (int, float)):
        timestep = format(timestep, "g")
    if math.isnan(log_snr):
        return f"t={timestep}"
    if math.isinf(log_snr):
        return f"t={timestep}\n{'clean (+∞)' if log_snr > 0 else 'noise (−∞)'}"
    return f"t={timestep}\nlog-SNR {log_snr:+.2f}"


def plot_concept_map_figure(cm: ConceptMaps, index: int, out_dir: Path, stem: str) -> list[Path]:
    """The figure of image ``index``. It has one row per concept and one column per timestep (noisy → clean)
    on one [0, 1] colour scale, and a last row with the argmax over concepts whose legend names the words. When
    the images were saved, a leading column shows the image. Returns what :func:`save_figure` returns."""
    maps = np.asarray(cm.maps[index], dtype=np.float32)  # (C, T, h, w)
    c, t = maps.shape[:2]
    images = cm.images()
    image = np.clip(np.asarray(images[index], dtype=np.float32), 0, 1) if images is not None else None
    lead = 1 if image is not None else 0
    rows = c + (1 if c > 1 else 0)
    cell_in = 1.05
    fig = plt.figure(figsize=(cell_in * (t + lead) + 2.4, cell_in * rows + 1.6), layout="constrained")
    gs = fig.add_gridspec(rows, t + lead)
    map_axes = []
    im = None
    for r, word in enumerate(cm.words):
        for k in range(t):
            ax = fig.add_subplot(gs[r, lead + k])
            ax.set_label("concept_map")
            im = ax.imshow(maps[r, k], vmin=0.0, vmax=1.0, cmap=SEQUENTIAL, interpolation="nearest")
            if r == 0:
                ax.set_title(_column_title(cm.timesteps[k], cm.log_snrs[k]), fontsize=8)
            if k == 0:
                ax.set_ylabel(word, fontsize=9, rotation=0, ha="right", va="center")
            map_axes.append(ax)
    arg_axes = []
    if rows > c:
        cmap = ListedColormap(class_palette(c))
        for k in range(t):
            ax = fig.add_subplot(gs[c, lead + k])
            ax.set_label("concept_argmax")
            ax.imshow(maps[:, k].argmax(axis=0), cmap=cmap, vmin=-0.5, vmax=c - 0.5, interpolation="nearest")
            if k == 0:
                ax.set_ylabel("argmax over\nconcepts", fontsize=9, rotation=0, ha="right", va="center")
            arg_axes.append(ax)
    if image is not None:
        for r in (0, rows - 1) if rows > 1 else (0,):
            ax = fig.add_subplot(gs[r, 0])
            ax.set_label("image")
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("image", fontsize=8)
    for ax in map_axes + arg_axes:
        ax.set_xticks([])
        ax.set_yticks([])
    cb = fig.colorbar(im, ax=map_axes, shrink=0.85, aspect=30)
    cb.set_label("softmax probability over concepts", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    if arg_axes:
        pal = class_palette(c)
        handles = [Patch(facecolor=pal[i], label=w) for i, w in enumerate(cm.words)]
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncol=legend_ncol(fig, cm.words, 8, max_ncol=8),
            fontsize=8,
            title="argmax over concepts",
            title_fontsize=8,
            frameon=False,
        )
    ids = cm.meta.get("image_ids") or []
    image_name = str(ids[index]) if index < len(ids) else f"#{index}"
    fig.suptitle(
        f"{cm.title} at layer {cm.meta.get('layer', '?')}: {cm.meta.get('split', 'val')} image {image_name}\n"
        "columns: timestep (native) and log-SNR, noisy → clean",
        fontsize=10,
    )
    fit_texts(fig)
    return save_figure(fig, out_dir, stem)


def plot_concept_maps(results_dir: str | Path, fig_dir: Path, num_images: int = 2) -> list[Path]:
    """For each saved ``concept_maps.npy``, one figure per image for its first ``num_images`` images (see
    :func:`plot_concept_map_figure`). Returns the PNG paths."""
    paths: list[Path] = []
    for cm in load_concept_maps(results_dir):
        # heads/<model>/, or a labelled stage's heads/<model>/<label>/
        name = cm.path.name if cm.path.parent.name == HEADS_DIR else f"{cm.path.parent.name}_{cm.path.name}"
        prefix = f"{slug(cm.cell)}_" if cm.cell else ""
        for i in range(min(num_images, len(cm.maps))):
            paths += plot_concept_map_figure(cm, i, fig_dir, f"{MAPS_STEM}_{prefix}{name}_img{i}")
    return [p for p in paths if p.suffix == ".png"]
