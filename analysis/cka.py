"""Linear CKA (Kornblith et al. 2019) between feature maps, streamed over feature caches: exactly, from running
sums of XᵀY, XᵀX, YᵀY and the means in one pass (CKA = ‖XcᵀYc‖²_F / (‖XcᵀXc‖_F ‖YcᵀYc‖_F)); or with the unbiased
minibatch HSIC estimator of Nguyen et al. 2021 (memory m² per key, independent of the channel count). Pixels are the
samples; across caches they are matched on a common (coarser) grid. Written by hand: no maintained library streams
CKA over on-disk feature caches.
"""

from __future__ import annotations

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
    SEQUENTIAL,
    save_figure,
    slug,
)
from analysis.compare import combination_members
from analysis.layout import fit_texts
from probebench.core.errors import ProbebenchError


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


def cka_stem(label: str) -> str:
    return f"cka_{slug(label)}"
