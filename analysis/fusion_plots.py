"""Figures of the learned fusion weights (MMDiff-style per-pixel weights, Hyperfeatures-style global weights):
which noise levels the fusion head actually uses, where in the image, and how evenly.

Input, per model under ``<results>/heads/<model slug>/`` (the fusion probe's artifacts):

- ``fusion_weights_<task>.npy``: (N, K, h, w), per pixel of N validation images a softmax over K inputs
  (the timesteps of a layer; with ``groups`` in the meta, a softmax within each group of inputs, e.g. one
  group per layer). ``fusion_weights_<task>.json`` describes the K inputs in order, with either
  ``keys`` ([[layer, t], ...]) and ``log_snr`` (per input; ``log_snrs`` is read too) or ``timesteps`` and
  ``log_snrs``; optional ``groups`` (lists of input indices), ``inputs`` (labels; ``"<backbone>:..."`` marks
  an extra cache), ``split``, ``backbone``, ``weights`` and ``images`` (an image file name).
- ``global_weights_<task>.npy``: (L, T), one weight per (layer, timestep), NaN where a cell is absent;
  meta ``layers`` or ``rows`` (row labels), ``timesteps``, ``column_log_snr`` (or ``log_snrs``).
- Images for the overlays: the meta's ``images`` file, else ``images_<split>.npy`` when the meta names its
  split, else ``images.npy`` (only for weights without a ``split``, since the pipeline's ``images.npy``
  holds test images). (N, H, W, 3) in [0, 1], the same images in the same order. Without images the maps
  are drawn alone.

``fusion_weights/<task>.npy`` (a sub-folder per artifact) is read as well. Columns are shown from noisy to
clean (ascending log-SNR) as on every other figure.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from analysis.common import PALETTE, SEQUENTIAL, save_figure, slug, t_label
from analysis.layout import fit_texts, legend_ncol
from probebench.core.errors import ProbebenchError
from probebench.core.rundir import RunDir
from tasks.base import MAIN_METRIC


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


@dataclass
class WeightArtifact:
    """One weight array (or one softmax group of it) with a label and log-SNR per column."""

    model_dir: Path
    kind: str  # "fusion_weights" or "global_weights"
    task: str
    weights: np.ndarray  # (N, K, h, w) or (L, T)
    meta: dict[str, Any]
    labels: list[str]  # per column (K inputs or T timesteps)
    log_snrs: list[float]
    timesteps: list[Any]
    group: str = ""  # e.g. "L5" when the softmax runs per layer
    group_index: int = 0  # position of the group in the saved array
    row_labels: list[str] = field(default_factory=list)  # global weights
    cell: str = ""  # the sweep cell whose heads these are ("" for a run's own)

    @property
    def model(self) -> str:
        b, w = self.meta.get("backbone"), self.meta.get("weights")
        name = f"{b} ({w})" if b and w else self.model_dir.name
        # a sweep's cells may hold the same model: keep them apart
        return f"{self.cell}: {name}" if self.cell else name

    @property
    def title(self) -> str:
        return f"{self.task} · {self.group}" if self.group else self.task

    @property
    def t_labels(self) -> list[str]:
        return self.labels

    def ordered(self) -> WeightArtifact:
        """Columns sorted noisy → clean (ascending log-SNR; unknown log-SNRs keep the stored order)."""
        s = self.log_snrs
        if any(math.isnan(v) for v in s):
            return self
        o = sorted(range(len(s)), key=lambda i: s[i])
        if o == list(range(len(o))):
            return self
        return WeightArtifact(
            self.model_dir,
            self.kind,
            self.task,
            np.asarray(self.weights)[:, o],
            self.meta,
            [self.labels[i] for i in o],
            [s[i] for i in o],
            [self.timesteps[i] for i in o],
            self.group,
            self.group_index,
            self.row_labels,
        )

    def images(self) -> np.ndarray | None:
        """The images the maps were computed on (see the module docstring), or None."""
        names = [self.meta["images"]] if self.meta.get("images") else []
        split = self.meta.get("split")
        names += [f"images_{split}.npy"] if split else ["images.npy"]
        for n in names:
            p = self.model_dir / n
            if p.is_file():
                return np.load(p, mmap_mode="r")
        return None


def _meta_for(npy: Path) -> dict[str, Any]:
    j = npy.with_suffix(".json")
    return json.loads(j.read_text()) if j.is_file() else {}


def _fusion_artifacts(
    d: Path, task: str, f: Path, w: np.ndarray, meta: dict[str, Any]
) -> list[WeightArtifact]:
    """Split a (N, K, h, w) array into one artifact per softmax group, with a label per input."""
    k = w.shape[1]
    keys = meta.get("keys")
    if keys is None and meta.get("timesteps") is not None:
        keys = [[None, t] for t in meta["timesteps"]]
    keys = keys if keys is not None else [[None, i] for i in range(k)]
    snr = meta.get("log_snr", meta.get("log_snrs")) or [None] * k
    inputs = meta.get("inputs") or [""] * k
    if not (len(keys) == len(snr) == len(inputs) == k):
        raise ProbebenchError(
            f"{f}: {k} inputs in the array but its meta describes {len(keys)} keys, {len(snr)} log-SNRs and "
            f"{len(inputs)} input labels."
        )
    groups = meta.get("groups") or [list(range(k))]
    if sorted(i for g in groups for i in g) != list(range(k)):
        raise ProbebenchError(f"{f}: the meta's groups {groups} do not partition the {k} inputs.")
    out = []
    for gi, g in enumerate(groups):
        src = [str(inputs[i]).split(":")[0] + " " if ":" in str(inputs[i]) else "" for i in g]
        layers = [keys[i][0] for i in g]
        same = len(set(layers)) == 1 and len(set(src)) == 1
        labels = [
            t_label(keys[i][1], snr[i]) if same else f"{s}L{keys[i][0]} " + t_label(keys[i][1], snr[i])
            for s, i in zip(src, g)
        ]
        if len(set(labels)) < len(labels):  # the same key from several caches (noise draws)
            labels = [f"{lab} #{j}" for j, lab in enumerate(labels)]
        group = (f"{src[0]}L{layers[0]}" if same and layers[0] is not None else "") if len(groups) > 1 else ""
        out.append(
            WeightArtifact(
                d,
                "fusion_weights",
                task,
                np.asarray(w[:, g]),
                meta,
                labels,
                [_float(snr[i]) for i in g],
                [keys[i][1] for i in g],
                group.strip(),
                gi,
            ).ordered()
        )
    return out


def _global_artifact(d: Path, task: str, f: Path, w: np.ndarray, meta: dict[str, Any]) -> WeightArtifact:
    rows, cols = w.shape
    ts = meta.get("timesteps") or list(range(cols))
    snr = meta.get("column_log_snr", meta.get("log_snrs")) or [None] * cols
    row_labels = meta.get("rows") or [f"L{x}" for x in (meta.get("layers") or range(rows))]
    if not (len(ts) == len(snr) == cols and len(row_labels) == rows):
        raise ProbebenchError(
            f"{f} has shape {w.shape} but its meta names {len(row_labels)} rows, {len(ts)} timesteps and "
            f"{len(snr)} log-SNRs."
        )
    return WeightArtifact(
        d,
        "global_weights",
        task,
        np.asarray(w),
        meta,
        [t_label(t, s) for t, s in zip(ts, snr)],
        [_float(s) for s in snr],
        list(ts),
        "",
        0,
        [str(r) for r in row_labels],
    ).ordered()


def load_weight_artifacts(results_dir: str | Path) -> list[WeightArtifact]:
    """Every fusion/global weight array under ``<results_dir>/heads/`` (and a sweep's ``cells/*/heads/``), checked against its meta; arrays
    with several softmax groups come back as one artifact per group."""
    found: list[WeightArtifact] = []
    for heads in RunDir(results_dir).head_dirs():
        d = heads.path
        for kind in ("fusion_weights", "global_weights"):
            files = {f.stem.removeprefix(f"{kind}_"): f for f in sorted(d.glob(f"{kind}_*.npy"))}
            files.update({f.stem: f for f in sorted((d / kind).glob("*.npy"))})
            for task, f in files.items():
                w = np.load(f, mmap_mode="r")
                ndim = 4 if kind == "fusion_weights" else 2
                if w.ndim != ndim:
                    raise ProbebenchError(
                        f"{f} has shape {w.shape}; {kind} arrays are {'(N, K, h, w)' if ndim == 4 else '(L, T)'}."
                    )
                meta = _meta_for(f)
                arts = (
                    _fusion_artifacts(d, task, f, w, meta)
                    if kind == "fusion_weights"
                    else [_global_artifact(d, task, f, w, meta)]
                )
                found += [replace(a, cell=heads.cell) for a in arts]
    return found


def _task_order(tasks: set[str]) -> list[str]:
    return [t for t in MAIN_METRIC if t in tasks] + sorted(tasks - set(MAIN_METRIC))


UNIFORM_TOLERANCE = 0.1  # weights within ±10 % of 1/K everywhere: no input is preferred anywhere


def is_uniform(art: WeightArtifact, tolerance: float = UNIFORM_TOLERANCE) -> bool:
    """Whether every per-pixel weight lies within ``tolerance`` × 1/K of the uniform 1/K (a ``mean``-like
    fusion, or a gate that learned nothing). Then which input is the argmax is decided by tiny differences,
    so the figures say "uniform weights" instead of drawing argmax fractions or an argmax map."""
    w = np.asarray(art.weights, dtype=np.float64)
    k = w.shape[1]
    dev = np.abs(w - 1.0 / k)
    return bool(np.all(np.isnan(dev) | (dev <= tolerance / k)))


def _uniform_note(k: int) -> str:
    return (
        f"uniform weights: every per-pixel weight is within ±{UNIFORM_TOLERANCE:.0%} of 1/T = {1 / k:.2f},\n"
        "so no input is preferred and no argmax is shown"
    )


def weight_summary(art: WeightArtifact) -> pd.DataFrame:
    """Per timestep: mean weight over all pixels, std over images of the per-image mean, the fraction of
    pixels where it is the argmax, and the mean per-pixel entropy (in nats; ln T = uniform)."""
    w = np.asarray(art.weights, dtype=np.float64)
    per_image = w.mean(axis=(2, 3))  # (N, T)
    arg = w.argmax(axis=1)  # (N, h, w)
    ent = -(w * np.log(np.clip(w, 1e-12, None))).sum(axis=1).mean()
    return pd.DataFrame(
        {
            "input": [lab.replace("\n", " ") for lab in art.labels],
            "timestep": [str(t) for t in art.timesteps],
            "log_snr": art.log_snrs,
            "mean_weight": per_image.mean(axis=0),
            "std_over_images": per_image.std(axis=0),
            "argmax_fraction": [(arg == t).mean() for t in range(w.shape[1])],
            "mean_entropy_nats": ent,
        }
    )


def _pixel_sample(w: np.ndarray, max_pixels: int, seed: int = 0) -> pd.DataFrame:
    """Long table (t_index, weight) of at most ``max_pixels`` random pixels per timestep."""
    t = w.shape[1]
    flat = np.asarray(w).transpose(1, 0, 2, 3).reshape(t, -1)
    rng = np.random.default_rng(seed)
    idx = rng.choice(flat.shape[1], size=min(max_pixels, flat.shape[1]), replace=False)
    s = flat[:, idx]
    return pd.DataFrame({"t_index": np.repeat(np.arange(t), s.shape[1]), "weight": s.ravel().astype(float)})


def plot_weight_distributions(
    arts: list[WeightArtifact], out_dir: Path, max_pixels: int = 4000
) -> list[Path]:
    """Per model: for each task, a violin of the per-pixel weight of each timestep (left) and the mean weight
    vs timestep with the uniform 1/T reference (right)."""
    paths: list[Path] = []
    sns.set_theme(style="whitegrid", context="notebook")
    by_model: dict[str, list[WeightArtifact]] = {}
    for a in arts:
        if a.kind == "fusion_weights":
            by_model.setdefault(a.model, []).append(a)
    for model, group in sorted(by_model.items()):
        order = _task_order({a.task for a in group})
        group = sorted(group, key=lambda a: (order.index(a.task), a.group_index))
        width = max(11.0, 2 * (0.75 * max(a.weights.shape[1] for a in group) + 2.5))
        fig, axes = plt.subplots(
            len(group), 2, figsize=(width, 3.3 * len(group)), squeeze=False, layout="constrained"
        )
        for r, a in enumerate(group):
            T = a.weights.shape[1]
            colors = sns.color_palette(SEQUENTIAL, T)
            long = _pixel_sample(a.weights, max_pixels)
            ax = axes[r, 0]
            sns.violinplot(
                data=long,
                x="t_index",
                y="weight",
                hue="t_index",
                palette=colors,
                cut=0,
                density_norm="width",
                inner="quartile",
                legend=False,
                ax=ax,
                linewidth=0.8,
            )
            ax.axhline(1 / T, color="0.3", ls="--", lw=1, label=f"uniform 1/T = {1 / T:.2f}")
            ax.set_xticks(range(T))
            ax.set_xticklabels(a.t_labels, fontsize=8)
            ax.set_xlabel("input: timestep (native) and log-SNR")
            ax.set_ylabel("per-pixel weight (fraction)")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{a.title}: distribution over {len(long) // T} sampled pixels", fontsize=10)
            ax.legend(fontsize=8, loc="upper right")
            s = weight_summary(a)
            ax = axes[r, 1]
            ax.errorbar(
                range(T),
                s["mean_weight"],
                yerr=s["std_over_images"],
                marker="o",
                capsize=3,
                color=sns.color_palette(PALETTE)[0],
                label="mean weight (± std over images)",
            )
            uniform = is_uniform(a)
            if not uniform:
                ax.bar(
                    range(T),
                    s["argmax_fraction"],
                    color=sns.color_palette(PALETTE)[1],
                    alpha=0.35,
                    label="fraction of pixels where it is the argmax",
                )
            else:
                ax.text(
                    0.5,
                    0.93,
                    _uniform_note(T),
                    transform=ax.transAxes,
                    ha="center",
                    va="top",
                    fontsize=7,
                    bbox={"facecolor": "white", "edgecolor": "0.7", "boxstyle": "round,pad=0.3"},
                )
            ax.axhline(1 / T, color="0.3", ls="--", lw=1, label="uniform 1/T")
            ax.set_xticks(range(T))
            ax.set_xticklabels(a.t_labels, fontsize=8)
            ax.set_xlabel("input: timestep (native) and log-SNR")
            ax.set_ylabel("weight (fraction)")
            ent = float(s["mean_entropy_nats"].iloc[0])
            ax.set_title(
                f"{a.title}: mean weight; entropy {ent:.2f} of max {math.log(T):.2f} nats", fontsize=10
            )
            shown = [s["mean_weight"] + s["std_over_images"]] + ([] if uniform else [s["argmax_fraction"]])
            top = float(np.nanmax(np.concatenate([np.asarray(x, dtype=float) for x in shown])))
            ax.set_ylim(0, (2.2 if uniform else 1.45) * top)
            ax.legend(fontsize=7, loc="lower right" if uniform else "upper right")
        seeds = sorted({a.meta["probe_seed"] for a in group if "probe_seed" in a.meta})
        of_seed = f", probe seed {', '.join(map(str, seeds))}" if seeds else ""
        fig.suptitle(
            f"{model}: learned per-pixel fusion weights\n(fusion-spatial, validation images{of_seed})"
        )
        fit_texts(fig)
        paths += save_figure(fig, out_dir, f"fusion_weights_{slug(model)}")
    return paths


def plot_weight_maps(
    arts: list[WeightArtifact], out_dir: Path, num_images: int = 4, max_t_columns: int = 6
) -> list[Path]:
    """Per model and task: each sample image, its argmax-timestep map over it, and per-timestep weight maps
    (at most ``max_t_columns``, evenly spaced) over the greyscale image. Uniform weights (:func:`is_uniform`)
    get no argmax map (it would show rounding noise): the column says "uniform weights" instead."""
    paths: list[Path] = []
    sns.set_theme(style="white", context="notebook")
    for a in arts:
        if a.kind != "fusion_weights":
            continue
        images = a.images()
        n = min(num_images, len(a.weights), len(images) if images is not None else num_images)
        T = a.weights.shape[1]
        show = sorted(set(np.linspace(0, T - 1, min(T, max_t_columns)).round().astype(int).tolist()))
        first = 1 if images is not None else 0  # the image column, when there are images
        cols = first + 1 + len(show)
        fig, axes = plt.subplots(
            n, cols, figsize=(1.9 * cols + 1.2, 1.9 * n + 1.4), squeeze=False, layout="constrained"
        )
        cmap = ListedColormap(sns.color_palette(SEQUENTIAL, T))  # timesteps are ordinal: noisy (dark) → clean
        uniform = is_uniform(a)
        last = None
        for r in range(n):
            w = np.asarray(a.weights[r], dtype=np.float32)
            if images is not None:
                img = np.clip(np.asarray(images[r], dtype=np.float32), 0, 1)
                grey = img.mean(axis=2)
                axes[r, 0].imshow(img, extent=(0, img.shape[1], img.shape[0], 0))
                alpha = {"argmax": 0.65, "weight": 0.7}
            else:
                grey = np.zeros(w.shape[1:], dtype=np.float32)
                alpha = {"argmax": 1.0, "weight": 1.0}
            ext = (0, grey.shape[1], grey.shape[0], 0)
            axes[r, first].imshow(grey, cmap="gray", vmin=0, vmax=1, extent=ext)
            if uniform:
                axes[r, first].text(
                    0.5,
                    0.5,
                    "uniform\nweights",
                    transform=axes[r, first].transAxes,
                    ha="center",
                    va="center",
                    fontsize=8,
                    bbox={"facecolor": "white", "edgecolor": "0.7", "boxstyle": "round,pad=0.3"},
                )
            else:
                axes[r, first].imshow(
                    w.argmax(0),
                    cmap=cmap,
                    vmin=-0.5,
                    vmax=T - 0.5,
                    alpha=alpha["argmax"],
                    interpolation="nearest",
                    extent=ext,
                )
            for c, t in enumerate(show):
                axes[r, first + 1 + c].imshow(grey, cmap="gray", vmin=0, vmax=1, extent=ext)
                last = axes[r, first + 1 + c].imshow(
                    w[t],
                    cmap="magma",
                    vmin=0,
                    vmax=1,
                    alpha=alpha["weight"],
                    interpolation="bilinear",
                    extent=ext,
                )
        if images is not None:
            axes[0, 0].set_title("image", fontsize=9)
        axes[0, first].set_title("argmax input" if not uniform else "argmax input: none", fontsize=9)
        for c, t in enumerate(show):
            axes[0, first + 1 + c].set_title(f"weight of {a.t_labels[t]}".replace("\n", " "), fontsize=8)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        if uniform:
            fig.supxlabel(_uniform_note(T), fontsize=8)  # placed by constrained layout, under the panels
        else:
            handles = [Patch(color=cmap(i), label=a.t_labels[i].replace("\n", " ")) for i in range(T)]
            fig.legend(
                handles=handles,
                title="argmax input: timestep (log-SNR)",
                loc="outside lower center",
                ncol=legend_ncol(fig, [h.get_label() for h in handles], 8, max_ncol=6),
                fontsize=8,
            )
        if last is not None:
            fig.colorbar(last, ax=axes[:, -1].tolist(), shrink=0.8, label="per-pixel weight (fraction)")
        where = "validation images" if images is not None else "validation images; no saved images to overlay"
        fig.suptitle(f"{a.model} — {a.title}: where each input is used ({where})", fontsize=11)
        stem = f"fusion_maps_{slug(a.model)}_{a.task}" + (f"_{slug(a.group)}" if a.group else "")
        fit_texts(fig)
        paths += save_figure(fig, out_dir, stem)
    return paths


def plot_global_weights(arts: list[WeightArtifact], out_dir: Path) -> list[Path]:
    """Per model: Hyperfeatures-style global weights as an annotated layer × timestep heatmap per task."""
    paths: list[Path] = []
    by_model: dict[str, list[WeightArtifact]] = {}
    for a in arts:
        if a.kind == "global_weights":
            by_model.setdefault(a.model, []).append(a)
    sns.set_theme(style="white", context="notebook")
    for model, group in sorted(by_model.items()):
        order = _task_order({a.task for a in group})
        group = sorted(group, key=lambda a: order.index(a.task))
        L = max(a.weights.shape[0] for a in group)
        T = max(a.weights.shape[1] for a in group)
        fig, axes = plt.subplots(
            1,
            len(group),
            figsize=((0.8 * T + 2.6) * len(group), 0.45 * L + 2.6),
            squeeze=False,
            layout="constrained",
        )
        for ax, a in zip(axes[0], group):
            w = np.asarray(a.weights, dtype=np.float64)
            m = pd.DataFrame(w, index=a.row_labels, columns=a.t_labels)
            sns.heatmap(
                m,
                ax=ax,
                cmap=SEQUENTIAL,
                vmin=0,
                annot=m.size <= 160,
                fmt=".2f",
                annot_kws={"fontsize": 7},
                linewidths=0.4,
                linecolor="white",
                cbar_kws={"label": "weight (fraction)"},
            )
            ax.set_xlabel("timestep (native) and log-SNR; noisy → clean")
            ax.set_ylabel("layer (block index; blank = not an input)")
            ax.tick_params(axis="x", labelsize=7, rotation=0)
            ax.tick_params(axis="y", rotation=0)
            ax.set_title(f"{a.task}", fontsize=10)
        fig.suptitle(
            f"{model}: global layer × timestep weights (fusion-global, Hyperfeatures-style; sum to 1)"
        )
        fit_texts(fig)
        paths += save_figure(fig, out_dir, f"global_weights_{slug(model)}")
    return paths


def plot_fusion(results_dir: str | Path, out_dir: Path | None = None) -> list[Path]:
    """All fusion-weight figures for a results directory (none if it has no weight arrays)."""
    arts = load_weight_artifacts(results_dir)
    out = out_dir or Path(results_dir) / "figures"
    return plot_weight_distributions(arts, out) + plot_weight_maps(arts, out) + plot_global_weights(arts, out)
