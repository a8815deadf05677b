"""Complementarity of backbones: does a generative backbone add anything to a discriminative one?

- **Bars**: each member backbone alone vs the combination (concatenated, fused: one bar per probe of the
  combination run), per task, seed std as error bars where a cell was fitted more than once.
- **Per-class IoU gain** of one model over another. Input format (``per_class_iou.csv`` in a results
  directory, or any DataFrame with these columns)::

      backbone, weights, probe, class, iou          required; iou a fraction, NaN/empty if the class is absent
      task (default "segmentation"), split (default "test"), seed (default 0)     optional

- **Linear CKA** (Kornblith et al. 2019) between feature maps, streamed over caches: exactly, from running
  sums of XᵀY, XᵀX, YᵀY and the means in one pass (CKA = ‖XcᵀYc‖²_F / (‖XcᵀXc‖_F ‖YcᵀYc‖_F)); or with the
  unbiased minibatch HSIC estimator of Nguyen et al. 2021 (memory m² per key, independent of the channel
  count). Pixels are the samples; across caches they are matched on a common (coarser) grid.
- **Error overlap**: the fraction of pixels where each of two models is wrong, both are, or neither, from
  the saved prediction arrays (``heads/<model>/<task>_pred.npy`` / ``_target.npy``).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from analysis.common import (
    PALETTE,
    SEQUENTIAL,
    colors_for,
    error_bar_phrase,
    metric_label,
    save_figure,
    slug,
)
from analysis.compare import best_cells, combination_members
from analysis.layout import fit_texts, legend_ncol
from probebench.core.errors import ProbebenchError
from tasks.base import MAIN_METRIC

# -- single vs combination ------------------------------------------------------------------------------------


def complementarity_table(
    df: pd.DataFrame, *, split: str = "test", select_split: str = "val"
) -> pd.DataFrame:
    """One row per bar: for each combination model (backbone ``a+b``) and task, each member's best cell (all
    probes) and the combination's best cell per probe; values on ``split`` with seed std."""
    best_model = best_cells(df, ("model", "task"), split=split, select_split=select_split)
    if best_model.empty:
        return pd.DataFrame()
    combos = best_model[best_model["backbone"].str.contains("+", regex=False)]
    if combos.empty:
        return pd.DataFrame()
    best_probe = best_cells(df, ("model", "task", "probe"), split=split, select_split=select_split)
    v, s = f"{split}_value", f"{split}_std"
    rows: list[tuple[str, str, str, pd.Series]] = []  # (kind, bar label, combination, best-cell row)
    for _, c in combos.iterrows():
        ds, combo, task = c["dataset"], c["model"], c["task"]
        for mb, mw in combination_members(c["backbone"], c["weights"]):
            m = best_model[
                (best_model["dataset"] == ds)
                & (best_model["model"] == f"{mb} ({mw})")
                & (best_model["task"] == task)
            ]
            if len(m):
                r = m.iloc[0]
                rows.append(("single", f"{r['model']} · {r['probe']}", combo, r))
        mine = best_probe[
            (best_probe["dataset"] == ds) & (best_probe["model"] == combo) & (best_probe["task"] == task)
        ]
        for _, r in mine.iterrows():
            rows.append(("combination", f"{combo} · {r['probe']}", combo, r))
    out = pd.DataFrame(
        [
            {
                "dataset": r["dataset"],
                "task": r["task"],
                "combination": combo,
                "kind": kind,
                "bar": bar,
                "model": r["model"],
                "probe": r["probe"],
                "cell": f"{r['layer']} @ {r['timestep']}",
                "metric": r["metric"],
                "higher_is_better": r["higher_is_better"],
                "value": r[v],
                "std": r[s],
                "n_seeds": r["n_seeds"],
            }
            for kind, bar, combo, r in rows
        ]
    )
    return out.reset_index(drop=True)


def plot_complementarity(table: pd.DataFrame, out_dir: Path, split: str = "test") -> list[Path]:
    """Bars per task (columns) and combination (rows): members alone vs the combination's probes. Colour =
    model, tick = probe; combination bars have a black edge."""
    if table.empty:
        return []
    sns.set_theme(style="whitegrid", context="notebook")
    combos = sorted(table["combination"].unique())
    tasks = [t for t in MAIN_METRIC if t in set(table["task"])] + sorted(
        set(table["task"]) - set(MAIN_METRIC)
    )
    models = list(dict.fromkeys(table.sort_values(["kind"], ascending=False, kind="stable")["model"]))
    colors = colors_for(models)
    fig, axes = plt.subplots(
        len(combos),
        len(tasks),
        figsize=(4.6 * len(tasks), 3.9 * len(combos) + 0.8),
        squeeze=False,
        layout="constrained",
    )
    for r, combo in enumerate(combos):
        for c, task in enumerate(tasks):
            ax = axes[r, c]
            g = table[(table["combination"] == combo) & (table["task"] == task)].reset_index(drop=True)
            if g.empty:
                ax.set_visible(False)
                continue
            x = np.arange(len(g))
            err = g["std"].fillna(0).to_numpy()
            ax.bar(
                x,
                g["value"],
                color=[colors[m] for m in g["model"]],
                edgecolor=["black" if k == "combination" else "none" for k in g["kind"]],
                linewidth=1.2,
            )
            spread = g["std"].notna().to_numpy()  # error bars only where a std over seeds exists
            if spread.any():
                ax.errorbar(
                    x[spread], g["value"][spread], yerr=err[spread], fmt="none", ecolor="black", capsize=4
                )
            for xi, val, e in zip(x, g["value"], err):
                ax.annotate(
                    f"{val:.3f}",
                    (xi, val + e),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
            ax.set_xticks(x)
            ax.set_xticklabels(g["probe"], fontsize=7, rotation=20, ha="right")
            metric = g["metric"].iloc[0]
            better = "higher" if g["higher_is_better"].iloc[0] else "lower"
            ax.set_ylabel(f"{metric_label(metric)}, {split}")
            ax.set_xlabel("probe (best cell, selected on val)", fontsize=8)
            ax.set_title(
                f"{task} — {metric} ({better} is better)" + (f"\n{combo}" if len(combos) > 1 else ""),
                fontsize=9,
            )
            lo, hi = float((g["value"] - err).min()), float((g["value"] + err).max())
            pad = hi - lo + 1e-9
            ax.set_ylim(max(0.0, lo - 0.3 * pad), hi + 0.2 * pad)
    handles = [
        plt.Rectangle(
            (0, 0), 1, 1, facecolor=colors[m], edgecolor="black" if "+" in m.split(" (")[0] else "none"
        )
        for m in models
    ]
    fig.legend(
        handles,
        models,
        loc="outside lower center",
        ncol=legend_ncol(fig, models, 8, max_ncol=3),
        fontsize=8,
        title="model (black edge: combination)",
    )
    spread = error_bar_phrase(table["n_seeds"], single="every bar is a single fit")
    fig.suptitle(f"Single backbones vs their combination ({split} split; {spread})")
    fit_texts(fig)
    return save_figure(fig, out_dir, "complementarity")


# -- per-class IoU --------------------------------------------------------------------------------------------
PER_CLASS_FILE = "per_class_iou.csv"
PER_CLASS_REQUIRED = ("backbone", "weights", "probe", "class", "iou")
PER_CLASS_DEFAULTS: dict[str, Any] = {"task": "segmentation", "split": "test", "seed": 0}


def read_per_class_iou(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """A per-class IoU table (see the module docstring) with defaults filled in and a ``model`` column."""
    if isinstance(source, pd.DataFrame):
        df = source.copy()
    else:
        p = Path(source)
        p = p / PER_CLASS_FILE if p.is_dir() else p
        if not p.is_file():
            raise ProbebenchError(f"No per-class IoU file at {p}.")
        df = pd.read_csv(p, dtype={"backbone": str, "weights": str, "probe": str, "class": str})
    missing = [c for c in PER_CLASS_REQUIRED if c not in df.columns]
    if missing:
        raise ProbebenchError(
            f"A per-class IoU table needs the columns {list(PER_CLASS_REQUIRED)}; it lacks {missing} "
            f"(it has {list(df.columns)})."
        )
    for c, v in PER_CLASS_DEFAULTS.items():
        if c not in df.columns:
            df[c] = v
    df["class"] = df["class"].astype(str)
    df["iou"] = pd.to_numeric(df["iou"], errors="coerce")
    df["model"] = df["backbone"].astype(str) + " (" + df["weights"].astype(str) + ")"
    return df


def _model_classes(pc: pd.DataFrame, model: str, probe: str | None, split: str) -> pd.Series:
    g = pc[(pc["model"] == model) & (pc["split"] == split)]
    if g.empty:
        raise ProbebenchError(
            f"Model {model!r} has no per-class IoUs on split {split!r}; models there: "
            f"{sorted(pc[pc['split'] == split]['model'].unique())}."
        )
    if probe is None:  # the probe with the best mean IoU over classes (its mIoU)
        probe = str(g.groupby("probe")["iou"].mean().idxmax())
    g = g[g["probe"] == probe]
    if g.empty:
        raise ProbebenchError(f"Model {model!r} has no per-class IoUs for probe {probe!r}.")
    s = g.groupby("class", sort=False)["iou"].mean()
    s.attrs["probe"] = probe
    return s


def per_class_iou_gain(
    pc: pd.DataFrame,
    model_a: str,
    model_b: str,
    *,
    probe_a: str | None = None,
    probe_b: str | None = None,
    split: str = "test",
) -> pd.DataFrame:
    """Per class: IoU of ``model_a`` and ``model_b`` (mean over seeds) and ``gain = iou_a − iou_b``. Each
    model's probe defaults to its probe with the best mean IoU; classes absent from either are dropped."""
    pc = read_per_class_iou(pc)
    a = _model_classes(pc, model_a, probe_a, split)
    b = _model_classes(pc, model_b, probe_b, split)
    t = pd.DataFrame({"iou_a": a, "iou_b": b}).dropna()
    t["gain"] = t["iou_a"] - t["iou_b"]
    t.index.name = "class"
    t = t.reset_index().sort_values("gain", ascending=False).reset_index(drop=True)
    t.attrs.update(model_a=model_a, model_b=model_b, probe_a=a.attrs["probe"], probe_b=b.attrs["probe"])
    return t


def plot_per_class_gain(
    gains: list[pd.DataFrame], out_dir: Path, stem: str = "per_class_iou_gain"
) -> list[Path]:
    """One horizontal bar chart per comparison: IoU gain per class, sorted, blue = gain, orange = loss."""
    gains = [g for g in gains if len(g)]
    if not gains:
        return []
    sns.set_theme(style="whitegrid", context="notebook")
    pal = sns.color_palette(PALETTE)
    n_cls = max(len(g) for g in gains)
    fig, axes = plt.subplots(
        1, len(gains), figsize=(5.4 * len(gains), 0.26 * n_cls + 1.6), squeeze=False, layout="constrained"
    )
    for ax, g in zip(axes[0], gains):
        y = np.arange(len(g))
        ax.barh(y, g["gain"], color=[pal[0] if v >= 0 else pal[1] for v in g["gain"]])
        ax.set_yticks(y)
        ax.set_yticklabels(g["class"], fontsize=7)
        ax.invert_yaxis()
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel("IoU gain (fraction; > 0: first model better)")
        at = g.attrs
        ax.set_title(
            f"{at.get('model_a')} · {at.get('probe_a')}\nover {at.get('model_b')} · {at.get('probe_b')}"
            f" (mean {g['gain'].mean():+.3f})",
            fontsize=8,
        )
    fig.suptitle("Per-class IoU gain")
    fit_texts(fig)
    return save_figure(fig, out_dir, stem)


# -- CKA ------------------------------------------------------------------------------------------------------
class LinearCKA:
    """Exact linear CKA between X (n, d1) and Y (n, d2), accumulated over row batches in one pass.

    Keeps running sums of Xᵀ Y, Xᵀ X, Yᵀ Y and of the rows (shifted by the first batch's mean for numerical
    stability), and centres at the end: Xcᵀ Yc = Σ x̃ ỹᵀ − n μ̃x μ̃yᵀ. Memory is O(d1² + d2² + d1 d2).
    """

    def __init__(self) -> None:
        self.n = 0

    def update(self, x: np.ndarray, y: np.ndarray) -> LinearCKA:
        x = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])
        y = np.asarray(y, dtype=np.float64).reshape(-1, np.shape(y)[-1])
        if len(x) != len(y):
            raise ProbebenchError(f"CKA needs the same samples in X and Y, got {len(x)} and {len(y)} rows.")
        if not len(x):
            return self
        if self.n == 0:
            self.shift_x, self.shift_y = x.mean(0), y.mean(0)
            self.sx, self.sy = np.zeros(x.shape[1]), np.zeros(y.shape[1])
            self.xx = np.zeros((x.shape[1],) * 2)
            self.yy = np.zeros((y.shape[1],) * 2)
            self.xy = np.zeros((x.shape[1], y.shape[1]))
        xs, ys = x - self.shift_x, y - self.shift_y
        self.sx += xs.sum(0)
        self.sy += ys.sum(0)
        self.xx += xs.T @ xs
        self.yy += ys.T @ ys
        self.xy += xs.T @ ys
        self.n += len(x)
        return self

    def value(self) -> float:
        if self.n < 2:
            raise ProbebenchError(f"CKA needs at least 2 samples, got {self.n}.")
        mx, my = self.sx / self.n, self.sy / self.n
        cxy = self.xy - self.n * np.outer(mx, my)
        cxx = self.xx - self.n * np.outer(mx, mx)
        cyy = self.yy - self.n * np.outer(my, my)
        den = np.linalg.norm(cxx) * np.linalg.norm(cyy)
        return float(np.linalg.norm(cxy) ** 2 / den) if den > 0 else float("nan")


def gram(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x @ x.T


def unbiased_hsic(k: np.ndarray, ell: np.ndarray) -> float:
    """The unbiased HSIC estimator (Song et al. 2012) of two (m, m) Gram matrices; m ≥ 4."""
    m = k.shape[0]
    if m < 4:
        raise ProbebenchError(f"The unbiased HSIC estimator needs at least 4 samples, got {m}.")
    k, ell = k.copy(), ell.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(ell, 0.0)
    one_k, one_l = k.sum(1), ell.sum(1)
    t = (k * ell).sum() + one_k.sum() * one_l.sum() / ((m - 1) * (m - 2)) - 2.0 / (m - 2) * one_k @ one_l
    return float(t / (m * (m - 3)))


def linear_cka(x: np.ndarray, y: np.ndarray, *, unbiased: bool = False) -> float:
    """Linear CKA of two (n, d) feature matrices: the exact (biased) value, or with the unbiased HSIC
    estimator (O(n²) memory: for n up to a few thousand; stream with :class:`MinibatchCKA` beyond)."""
    if not unbiased:
        return LinearCKA().update(x, y).value()
    k, ell = gram(x), gram(y)
    return unbiased_hsic(k, ell) / math.sqrt(unbiased_hsic(k, k) * unbiased_hsic(ell, ell))


class MinibatchCKA:
    """Minibatch linear CKA (Nguyen et al. 2021) between F feature sets at once: per minibatch of m rows,
    the unbiased HSIC of every pair of Gram matrices, summed; CKA_ij = ΣHSIC_ij / √(ΣHSIC_ii ΣHSIC_jj).
    Memory is F·m² (independent of the channel count), so it scales to wide features and many keys."""

    def __init__(self, num_features: int):
        self.hsic = np.zeros((num_features, num_features))
        self.batches = 0

    def update(self, feats: Sequence[np.ndarray]) -> MinibatchCKA:
        """One minibatch: the same m samples (rows) of each feature set."""
        m = len(feats[0])
        if m < 4:
            raise ProbebenchError(f"A CKA minibatch needs at least 4 samples, got {m}.")
        grams = []
        for f in feats:
            k = gram(np.asarray(f).reshape(m, -1))
            np.fill_diagonal(k, 0.0)
            grams.append(k)
        g = np.stack([k.ravel() for k in grams])  # (F, m²)
        r = np.stack([k.sum(1) for k in grams])  # (F, m)
        s = r.sum(1)  # (F,)
        h = g @ g.T + np.outer(s, s) / ((m - 1) * (m - 2)) - 2.0 / (m - 2) * (r @ r.T)
        self.hsic += h / (m * (m - 3))
        self.batches += 1
        return self

    def value(self) -> np.ndarray:
        d = np.sqrt(np.clip(np.diag(self.hsic), 1e-300, None))
        return self.hsic / np.outer(d, d)


def _key_label(key: tuple[int, Any], prefix: str = "") -> str:
    layer, t = key
    return f"{prefix}L{layer}" + ("" if t is None else f" t={format(t, 'g') if isinstance(t, float) else t}")


def _cache_name(cache: Any) -> str:
    b = cache.manifest.get("backbone", {}) if hasattr(cache, "manifest") else {}
    name = b.get("name") or cache.fingerprint.get("adapter", {}).get("backbone", "?")
    return f"{name} ({b.get('weights', cache.fingerprint.get('adapter', {}).get('weights', '?'))})"


def _sorted_keys(cache: Any, keys: Sequence[tuple[int, Any]] | None) -> list[tuple[int, Any]]:
    keys = list(cache.keys if keys is None else [tuple(k) for k in keys])
    snr = {f.key: (f.log_snr if f.log_snr is not None else math.inf) for f in cache.features}
    missing = [k for k in keys if k not in snr]
    if missing:
        raise ProbebenchError(f"Keys {missing} are not in cache {cache.path}; it has {list(snr)}.")
    return sorted(keys, key=lambda k: (k[0], snr[k]))


def _pool(a: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(b, h, w, C) → (b, gh, gw, C) by area averaging (adaptive average pooling)."""
    if a.shape[1:3] == grid:
        return a.astype(np.float32)
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(0, 3, 1, 2)
    return F.adaptive_avg_pool2d(t, grid).permute(0, 2, 3, 1).numpy()


def _pixel_rows(
    arrays: Sequence[Any],
    grid: tuple[int, int],
    *,
    max_images: int | None,
    pixels_per_image: int | None,
    image_batch: int,
    seed: int,
) -> Iterator[list[np.ndarray]]:
    """Per batch of images: for every array, the rows (pixels × C) of the same images and grid positions."""
    n = min(len(a) for a in arrays)
    n = n if max_images is None else min(n, max_images)
    cells = grid[0] * grid[1]
    for start in range(0, n, image_batch):
        stop = min(n, start + image_batch)
        if pixels_per_image is not None and pixels_per_image < cells:
            pos = np.stack(
                [
                    np.random.default_rng([seed, i]).choice(cells, pixels_per_image, replace=False)
                    for i in range(start, stop)
                ]
            )
        else:
            pos = None
        out = []
        for a in arrays:
            x = _pool(np.asarray(a[start:stop]), grid).reshape(stop - start, cells, -1)
            if pos is not None:
                x = np.take_along_axis(x, pos[:, :, None], axis=1)
            out.append(x.reshape(-1, x.shape[-1]))
        yield out


def cka_matrix(
    cache: Any,
    keys: Sequence[tuple[int, Any]] | None = None,
    other: Any | None = None,
    other_keys: Sequence[tuple[int, Any]] | None = None,
    *,
    method: str = "exact",
    max_images: int | None = None,
    pixels_per_image: int | None = None,
    image_batch: int = 8,
    minibatch_size: int = 256,
    seed: int = 0,
    max_bytes: float = 2 * 2**30,
) -> pd.DataFrame:
    """Linear CKA between the (layer, timestep) keys of one cache, or between the keys of ``cache`` (rows)
    and of ``other`` (columns), with pixels as samples, in one streaming pass over the caches.

    ``method="exact"``: the exact linear CKA from running sums (memory Σd² + Σ d_i d_j; refused beyond
    ``max_bytes``); ``"minibatch"``: the unbiased minibatch estimator (memory F·m²); ``"auto"``: exact when
    its statistics fit in 256 MiB, else minibatch. Across caches, images
    must be the same (by id) and feature maps are area-pooled to the coarser common grid.
    """
    if method not in ("exact", "minibatch", "auto"):
        raise ProbebenchError(f"Unknown CKA method {method!r}. Valid: exact, minibatch, auto.")
    ka = _sorted_keys(cache, keys)
    kb = _sorted_keys(other, other_keys) if other is not None else ka
    if other is not None and list(other.image_ids) != list(cache.image_ids):
        raise ProbebenchError(
            f"CKA across caches needs the same images: {cache.path} has {len(cache.image_ids)} "
            f"(first {cache.image_ids[:2]}), {other.path} has {len(other.image_ids)} (first {other.image_ids[:2]})."
        )
    arrays = [cache.array(k) for k in ka] + ([other.array(k) for k in kb] if other is not None else [])
    hw = [a.shape[1:3] for a in arrays]
    grid = (min(h for h, _ in hw), min(w for _, w in hw))
    dims = [a.shape[-1] for a in arrays]
    na = len(ka)
    if other is None:
        pairs = [(i, j) for i in range(na) for j in range(i + 1, na)]
        ib, la, lb = list(range(na)), [_key_label(k) for k in ka], [_key_label(k) for k in ka]
    else:
        pairs = [(i, na + j) for i in range(na) for j in range(len(kb))]
        ib = [na + j for j in range(len(kb))]
        la = [_key_label(k, f"{_cache_name(cache)} ") for k in ka]
        lb = [_key_label(k, f"{_cache_name(other)} ") for k in kb]
    rows = _pixel_rows(
        arrays,
        grid,
        max_images=max_images,
        pixels_per_image=pixels_per_image,
        image_batch=image_batch,
        seed=seed,
    )
    n_pixels = 0
    need = 8 * (sum(d * d for d in dims) + sum(dims[i] * dims[j] for i, j in pairs))
    if method == "auto":
        method = "exact" if need <= 256 * 2**20 else "minibatch"
    if method == "exact":
        if need > max_bytes:
            raise ProbebenchError(
                f"Exact CKA over {len(arrays)} feature maps needs {need / 2**30:.1f} GiB of statistics "
                f"(limit {max_bytes / 2**30:.1f} GiB); use method='minibatch' or fewer keys."
            )
        acc = {p: LinearCKA() for p in pairs}
        for feats in rows:
            n_pixels += len(feats[0])
            for i, j in pairs:
                acc[(i, j)].update(feats[i], feats[j])
        full = np.eye(len(arrays))
        for (i, j), a in acc.items():
            full[i, j] = full[j, i] = a.value()
    else:
        mb = MinibatchCKA(len(arrays))
        rng = np.random.default_rng(seed)
        buf: list[np.ndarray] | None = None
        for feats in rows:
            n_pixels += len(feats[0])
            perm = rng.permutation(len(feats[0]))
            feats = [f[perm] for f in feats]
            buf = feats if buf is None else [np.concatenate([b, f]) for b, f in zip(buf, feats)]
            while len(buf[0]) >= minibatch_size:
                mb.update([b[:minibatch_size] for b in buf])
                buf = [b[minibatch_size:] for b in buf]
        if buf is not None and len(buf[0]) >= 4:
            mb.update(buf)
        if mb.batches == 0:
            raise ProbebenchError(f"Too few pixels ({n_pixels}) for a CKA minibatch (need at least 4).")
        full = mb.value()
    out = pd.DataFrame(full[np.ix_(list(range(na)), ib)], index=la, columns=lb)
    out.attrs.update(
        method=method,
        n_pixels=n_pixels,
        grid=grid,
        row_model=_cache_name(cache),
        col_model=_cache_name(other) if other is not None else _cache_name(cache),
        row_keys=[tuple(k) for k in ka],
        col_keys=[tuple(k) for k in kb],
    )
    return out


def _no_timestep(t: Any) -> bool:
    return t is None or str(t).lower() in ("none", "")


def cka_key_label(key: tuple[Any, Any]) -> str:
    """Tick label of a (layer, timestep) key: ``layer 3`` for a clean-image model (timestep None/"none"),
    ``layer 3, t=0.2`` for a diffusion model."""
    layer, t = key
    if _no_timestep(t):
        return f"layer {layer}"
    return f"layer {layer}, t={format(t, 'g') if isinstance(t, float) else t}"


_LABEL = re.compile(r"^(?:.* )?L(?P<layer>-?\d+)(?: t=(?P<t>\S+))?$")


def _keys_of(mat: pd.DataFrame, axis: int) -> list[tuple[Any, Any]]:
    """The (layer, timestep) keys of a CKA matrix's rows (0) or columns (1): from its attrs, else parsed from
    its ``L<layer>[ t=<t>]`` labels (a label that does not parse keeps itself as the layer)."""
    keys = mat.attrs.get("row_keys" if axis == 0 else "col_keys")
    labels = list(mat.index if axis == 0 else mat.columns)
    if keys is not None and len(keys) == len(labels):
        return [tuple(k) for k in keys]
    out = []
    for lab in labels:
        m = _LABEL.match(str(lab))
        out.append((m["layer"], m["t"]) if m else (str(lab), None))
    return out


def plot_cka_matrix(mat: pd.DataFrame, out_dir: Path, stem: str, title: str | None = None) -> list[Path]:
    """An annotated CKA heatmap on the fixed scale [0, 1]; ticks name each key's layer, and its timestep only
    for diffusion models (clean-image models have none)."""
    sns.set_theme(style="white", context="notebook")
    at = mat.attrs
    rows, cols = _keys_of(mat, 0), _keys_of(mat, 1)
    shown = pd.DataFrame(
        mat.to_numpy(), index=[cka_key_label(k) for k in rows], columns=[cka_key_label(k) for k in cols]
    )
    h, w = shown.shape
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * w + 3.2), max(3.8, 0.45 * h + 2.0)), layout="constrained")
    sns.heatmap(
        shown,
        ax=ax,
        cmap=SEQUENTIAL,
        vmin=0,
        vmax=1,
        annot=shown.size <= 196,
        fmt=".2f",
        annot_kws={"fontsize": 7},
        linewidths=0.3,
        linecolor="white",
        cbar_kws={"label": "linear CKA (0 to 1)"},
    )
    ax.set_title(
        (title or "Linear CKA")
        + f"\n{at.get('method', '?')} estimate, {at.get('n_pixels', '?')} pixels on a {at.get('grid')} grid",
        fontsize=10,
    )

    def what(keys: list[tuple[Any, Any]]) -> str:
        return "layer (block index)" if all(_no_timestep(t) for _, t in keys) else "layer and timestep"

    ax.set_xlabel(f"{at.get('col_model', '')}: {what(cols)}".lstrip(": "), fontsize=9)
    ax.set_ylabel(f"{at.get('row_model', '')}: {what(rows)}".lstrip(": "), fontsize=9)
    ax.tick_params(axis="x", labelsize=7, rotation=90)
    ax.tick_params(axis="y", labelsize=7, rotation=0)
    fit_texts(fig)
    return save_figure(fig, out_dir, stem)


def distinct_caches(caches: dict[str, Any]) -> dict[str, Any]:
    """``{model label: cache}`` with each cache directory once: a combination's rows carry its main member's
    cache hash, so the same cache is found under both labels and its CKA matrix would be drawn twice under
    two names. The label of a single backbone (no ``+``) is kept, else the first in sorted order."""
    by_path: dict[str, list[str]] = {}
    for label, cache in sorted(caches.items()):
        by_path.setdefault(str(getattr(cache, "path", id(cache))), []).append(label)
    keep = {}
    for labels in by_path.values():
        single = [lab for lab in labels if "+" not in lab.split(" (")[0]]
        label = (single or labels)[0]
        keep[label] = caches[label]
    return dict(sorted(keep.items()))


def cka_figures(
    caches: dict[str, Any],
    df: pd.DataFrame,
    fig_dir: Path,
    max_images: int = 32,
    pixels_per_image: int = 64,
) -> tuple[list[Path], list[str]]:
    """Within-model CKA matrices (each distinct cache with ≥ 2 keys, once) and across-model ones (combination
    members, or every pair when there are at most 3 models) on a small pixel sample; returns the figures and
    one line of text per figure."""
    from analysis.common import with_model

    # the unbiased (minibatch) estimator: with few pixels relative to the channel count the exact, biased
    # estimate is pulled towards 1 (its bias is of order d/n)
    kw = {"max_images": max_images, "pixels_per_image": pixels_per_image, "method": "minibatch"}
    caches = distinct_caches(caches)
    figs: list[Path] = []
    texts: list[str] = []
    for model, cache in caches.items():
        if len(cache.keys) < 2:
            continue
        m = cka_matrix(cache, **kw)
        figs += plot_cka_matrix(
            m, fig_dir, cka_stem(model), title=f"{model}: linear CKA between feature maps"
        )
        texts.append(
            f"{model}: {m.attrs['method']} (unbiased HSIC) linear CKA over {m.attrs['n_pixels']} pixels on a "
            f"{m.attrs['grid']} grid (every map area-pooled to the coarsest)."
        )
    models = sorted(caches)
    pairs: list[tuple[str, str]] = []
    for _, c in with_model(df).drop_duplicates("model").iterrows():
        if "+" in c["backbone"]:
            mem = [f"{b} ({w})" for b, w in combination_members(c["backbone"], c["weights"])]
            pairs += [(a, b) for i, a in enumerate(mem) for b in mem[i + 1 :] if a in caches and b in caches]
    if not pairs and len(models) <= 3:
        pairs = [(a, b) for i, a in enumerate(models) for b in models[i + 1 :]]
    for a, b in dict.fromkeys(pairs):
        if list(caches[a].image_ids) != list(caches[b].image_ids):
            continue
        m = cka_matrix(caches[a], other=caches[b], **kw)
        figs += plot_cka_matrix(m, fig_dir, cka_stem(f"{a}_vs_{b}"), title=f"Linear CKA: {a} vs {b}")
        texts.append(
            f"{a} vs {b}: {m.attrs['method']} (unbiased HSIC) linear CKA over {m.attrs['n_pixels']} pixels on "
            f"a {m.attrs['grid']} grid."
        )
    return figs, texts


# -- error overlap --------------------------------------------------------------------------------------------
def error_mask(
    pred: np.ndarray,
    target: np.ndarray,
    task: str,
    *,
    ignore_index: int = 255,
    saliency_threshold: float = 0.5,
    depth_ratio: float = 1.25,
) -> tuple[np.ndarray, np.ndarray]:
    """(wrong, valid) boolean maps. Segmentation: wrong class; saliency: the thresholded score disagrees
    with the mask; depth: max(pred/gt, gt/pred) ≥ ``depth_ratio`` (fails δ<1.25)."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ProbebenchError(f"Prediction shape {pred.shape} differs from the target's {target.shape}.")
    if task == "segmentation":
        valid = np.isfinite(target) & (target != ignore_index)
        return (pred != target) & valid, valid
    if task == "saliency":
        valid = np.isfinite(target)
        return ((pred >= saliency_threshold) != (target >= 0.5)) & valid, valid
    if task == "depth":
        valid = np.isfinite(target) & (target > 0) & np.isfinite(pred) & (pred > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.maximum(pred / target, target / pred)
        return (ratio >= depth_ratio) & valid, valid
    raise ProbebenchError(f"Unknown task {task!r} for error overlap. Valid: segmentation, saliency, depth.")


def error_overlap(pred_a: np.ndarray, pred_b: np.ndarray, target: np.ndarray, task: str) -> dict[str, float]:
    """Fractions of valid pixels where only A is wrong, only B, both, neither (they sum to 1)."""
    wa, valid = error_mask(pred_a, target, task)
    wb, _ = error_mask(pred_b, target, task)
    if task == "depth":
        valid = valid & error_mask(pred_b, target, task)[1]
        wa, wb = wa & valid, wb & valid
    n = int(valid.sum())
    if n == 0:
        raise ProbebenchError("No valid pixels to compare errors on.")
    return {
        "only_a_wrong": float((wa & ~wb).sum() / n),
        "only_b_wrong": float((~wa & wb & valid).sum() / n),
        "both_wrong": float((wa & wb).sum() / n),
        "neither_wrong": float((~wa & ~wb & valid).sum() / n),
        "n_pixels": n,
    }


def _saved_predictions(results_dir: Path) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    out = {}
    heads = results_dir / "heads"
    for d in sorted(p for p in heads.iterdir() if p.is_dir()) if heads.is_dir() else []:
        for task in MAIN_METRIC:
            pf, tf = d / f"{task}_pred.npy", d / f"{task}_target.npy"
            if not (pf.is_file() and tf.is_file()):
                continue
            meta = json.loads((d / f"{task}.json").read_text()) if (d / f"{task}.json").is_file() else {}
            model = f"{meta['backbone']} ({meta['weights']})" if "backbone" in meta else d.name
            out[(model, task)] = (np.load(pf), np.load(tf))
    return out


def error_overlap_table(results_dir: str | Path, models: Sequence[str] | None = None) -> pd.DataFrame:
    """Error overlap of every pair of models with saved predictions of the same task on the same images."""
    preds = _saved_predictions(Path(results_dir))
    rows = []
    for task in MAIN_METRIC:
        have = sorted(m for m, t in preds if t == task and (models is None or m in models))
        for a, b in itertools.combinations(have, 2):
            (pa, ta), (pb, tb) = preds[(a, task)], preds[(b, task)]
            n = min(len(pa), len(pb))
            if ta.shape[1:] != tb.shape[1:] or not np.array_equal(ta[:n], tb[:n], equal_nan=True):
                continue  # other images: not comparable
            rows.append(
                {"task": task, "model_a": a, "model_b": b, **error_overlap(pa[:n], pb[:n], ta[:n], task)}
            )
    return pd.DataFrame(rows)


def plot_error_overlap(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Stacked bars per pair (rows) and task (panels): only A wrong, only B wrong, both wrong."""
    if table.empty:
        return []
    sns.set_theme(style="whitegrid", context="notebook")
    tasks = [t for t in MAIN_METRIC if t in set(table["task"])]
    pal = sns.color_palette(PALETTE)
    parts = [
        ("only_a_wrong", "only A wrong", pal[0]),
        ("only_b_wrong", "only B wrong", pal[3]),
        ("both_wrong", "both wrong", "0.25"),
    ]
    n_pairs = table.groupby("task").size().max()
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(5.6 * len(tasks), 0.55 * n_pairs + 2.2), squeeze=False, layout="constrained"
    )
    for ax, task in zip(axes[0], tasks):
        g = table[table["task"] == task].reset_index(drop=True)
        left = np.zeros(len(g))
        for col, label, color in parts:
            ax.barh(np.arange(len(g)), g[col], left=left, color=color, label=label)
            left += g[col].to_numpy()
        ax.set_yticks(np.arange(len(g)))
        ax.set_yticklabels([f"A: {a}\nB: {b}" for a, b in zip(g["model_a"], g["model_b"])], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("fraction of valid pixels")
        crit = {"segmentation": "wrong class", "saliency": "thresholded at 0.5", "depth": "fails δ<1.25"}[
            task
        ]
        ax.set_title(f"{task} ({crit})", fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=legend_ncol(fig, labels, 8, 3), fontsize=8)
    fig.suptitle("Error overlap of the best cells on saved test predictions (rest of each bar: both right)")
    fit_texts(fig)
    return save_figure(fig, out_dir, "error_overlap")


def cka_stem(label: str) -> str:
    return f"cka_{slug(label)}"
