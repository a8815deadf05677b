"""The contact sheet of a generated dataset: one row per sample — the image, then each task's decoded labels —
read back from the written files (what a user of the dataset gets), drawn in each target kind's own style
(``TargetKind.panels``: class palette with a legend, depth in metres with a colour bar, saliency 0-1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from analysis.layout import fit_texts
from analysis.predictions import _legend_columns, draw_colorbar, draw_key
from tasks.base import TargetSpec
from tasks.loaders import target_folder


def contact_sheet(
    root: Path,
    split: str,
    ids: Sequence[str],
    specs: Mapping[str, TargetSpec],
    captions: Sequence[str] | None = None,
    name: str = "contact_sheet.png",
) -> Path:
    """``root/<name>``: image | one column per task, a row per sample id (caption as the row label)."""
    base = Path(root) / split
    images = [np.asarray(Image.open(base / "images" / f"{i}.png").convert("RGB")) for i in ids]
    tasks = list(specs)
    labels: dict[str, np.ndarray] = {}
    for t in tasks:
        kind = specs[t].target_kind
        labels[t] = np.stack(
            [kind.read_target(base / target_folder(kind) / f"{i}.png", specs[t]) for i in ids]
        )
    panels: dict[str, Any] = {}
    for t in tasks:
        spec = specs[t]
        meta = {"class_names": list(spec.class_names), "ignore_index": spec.ignore_index}
        panels[t] = spec.target_kind.panels(labels[t], labels[t], meta)
    n, cols, col_in, fontsize = len(ids), 1 + len(tasks), 1.6, 7.0
    keyed = any(p.legend for p in panels.values())
    key_rows = max(
        (
            -(-len(p.legend) // _legend_columns(p.legend, col_in * 1.6, fontsize))
            for p in panels.values()
            if p.legend
        ),
        default=0,
    )
    key_in = 0.35 + 0.17 * key_rows if keyed else 0.0
    fig = plt.figure(
        figsize=(
            col_in * cols + 0.9 * sum(bool(p.colorbar) for p in panels.values()) + 0.6,
            col_in * n + 0.7 + key_in,
        ),
        layout="constrained",
    )
    gs = fig.add_gridspec(
        n + (1 if keyed else 0), cols, height_ratios=[col_in] * n + ([key_in] if keyed else [])
    )
    axes = np.array([[fig.add_subplot(gs[r, c]) for c in range(cols)] for r in range(n)]).reshape(n, cols)
    for r in range(n):
        axes[r, 0].imshow(images[r])
        if captions is not None:
            axes[r, 0].set_ylabel(f"{ids[r]}\n{captions[r] or '(empty prompt)'}", fontsize=7)
    axes[0, 0].set_title("generated image", fontsize=9)
    for c, t in enumerate(tasks, start=1):
        p = panels[t]
        im = None
        for r in range(n):
            im = axes[r, c].imshow(p.pred[r], **p.imshow)
        axes[0, c].set_title(f"{t}\n(decoded in the same pass)", fontsize=9)
        if im is not None:
            draw_colorbar(fig, im, list(axes[:, c]), p)
        if keyed:
            draw_key(fig.add_subplot(gs[n, c]), p, col_in * 1.6, fontsize)
    if keyed:
        fig.add_subplot(gs[n, 0]).axis("off")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("generated samples and their labels", fontsize=10)
    fit_texts(fig)
    out = Path(root) / name
    fig.savefig(out, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return out
