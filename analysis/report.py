"""Figures and ``REPORT.md`` from a results directory.

Everything here reads the tidy result table (:mod:`probes.results`); nothing knows which backbone made it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from probebench.errors import ProbebenchError
from probes.results import read_results
from tasks.base import MAIN_METRIC

PALETTE = "colorblind"
METRIC_LABELS = {"mIoU": "mIoU (fraction)", "maxF": "max F-measure (fraction)", "rmse": "RMSE (m)"}


def model_label(df: pd.DataFrame) -> pd.Series:
    """ "backbone (weights)" — the legend names both."""
    return df["backbone"] + " (" + df["weights"] + ")"


def main_metric_rows(df: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of each task's main metric on ``split``."""
    keep = [(df["task"] == task) & (df["metric"] == metric) for task, (metric, _) in MAIN_METRIC.items()]
    mask = pd.concat(keep, axis=1).any(axis=1) & (df["split"] == split)
    out = df[mask].copy()
    if out.empty:
        raise ProbebenchError(
            f"No main-metric rows on split {split!r}. Splits present: {sorted(df['split'].unique())}; "
            f"tasks: {sorted(df['task'].unique())}; metrics: {sorted(df['metric'].unique())}."
        )
    out["model"] = model_label(out)
    return out


def best_cells(df: pd.DataFrame, split: str = "test", select_split: str = "val") -> pd.DataFrame:
    """Per (model, task): the cell that is best on ``select_split`` and its score on ``split``.

    Selecting on validation and reporting test avoids picking the cell by its test score.
    """
    sel = main_metric_rows(df, select_split)
    rep = main_metric_rows(df, split)
    rows = []
    for (model, task), g in sel.groupby(["model", "task"], sort=True):
        higher = MAIN_METRIC[task][1]
        best = g.loc[g["value"].idxmax() if higher else g["value"].idxmin()]
        hit = rep[
            (rep["model"] == model)
            & (rep["task"] == task)
            & (rep["layer"] == best["layer"])
            & (rep["timestep"] == best["timestep"])
            & (rep["probe"] == best["probe"])
        ]
        rows.append(
            {
                "model": model,
                "task": task,
                "probe": best["probe"],
                "layer": best["layer"],
                "timestep": best["timestep"],
                "metric": best["metric"],
                f"{select_split}_value": float(best["value"]),
                f"{split}_value": float(hit["value"].iloc[0]) if len(hit) else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def plot_layer_curves(df: pd.DataFrame, out: Path, split: str = "test") -> list[Path]:
    """Main metric vs layer, one panel per task, one line per model; PNG and PDF."""
    d = main_metric_rows(df, split)
    d = d[~d["layer"].str.contains(r"\+")].copy()
    d["layer_index"] = d["layer"].astype(int)
    tasks = [t for t in MAIN_METRIC if t in set(d["task"])]
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        g = d[d["task"] == task]
        sns.lineplot(
            data=g,
            x="layer_index",
            y="value",
            hue="model",
            style="model",
            markers=True,
            dashes=False,
            palette=PALETTE,
            ax=ax,
            errorbar=None,
        )
        metric, higher = MAIN_METRIC[task]
        ax.set_title(f"{task} — {metric} ({'higher' if higher else 'lower'} is better)")
        ax.set_xlabel("layer (block index)")
        ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)}, {split} split")
        ax.set_xticks(sorted(g["layer_index"].unique()))
        ax.legend(fontsize=8, title=None)
    probe = ", ".join(sorted(d["probe"].unique()))
    fig.suptitle(f"Probe ({probe}) score per layer on {', '.join(sorted(d['dataset'].unique()))}", y=1.02)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "layer_curves.png", out / "layer_curves.pdf"]
    for p in paths:
        fig.savefig(p, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return paths


def plot_predictions(rdir: Path, num_rows: int = 4) -> list[Path]:
    """For each model with saved heads: input, ground truth and prediction of every task's best cell."""
    import json

    import numpy as np

    paths = []
    for d in sorted((rdir / "heads").glob("*")) if (rdir / "heads").is_dir() else []:
        kinds = [k for k in MAIN_METRIC if (d / f"{k}_pred.npy").is_file()]
        if not kinds or not (d / "images.npy").is_file():
            continue
        images = np.load(d / "images.npy")[:num_rows]
        n = len(images)
        fig, axes = plt.subplots(
            n, 1 + 2 * len(kinds), figsize=(1.7 * (1 + 2 * len(kinds)), 1.75 * n + 0.6), squeeze=False
        )
        title = ""
        for c, kind in enumerate(kinds):
            meta = json.loads((d / f"{kind}.json").read_text())
            title = f"{meta['backbone']} ({meta['weights']})"
            pred, tgt = np.load(d / f"{kind}_pred.npy")[:n], np.load(d / f"{kind}_target.npy")[:n]
            if kind == "segmentation":
                kw = {"cmap": "tab10", "vmin": 0, "vmax": 9, "interpolation": "nearest"}
                tgt = np.where(tgt == 255, np.nan, tgt)
            elif kind == "saliency":
                kw = {"cmap": "gray", "vmin": 0, "vmax": 1}
            else:
                valid = tgt[tgt > 0]
                kw = {
                    "cmap": "magma_r",
                    "vmin": float(valid.min()) if valid.size else 0,
                    "vmax": float(np.percentile(valid, 98)) if valid.size else 1,
                }
                tgt = np.where(tgt > 0, tgt, np.nan)
            for r in range(n):
                axes[r, 1 + 2 * c].imshow(tgt[r], **kw)
                axes[r, 2 + 2 * c].imshow(pred[r], **kw)
            where = f"layer {meta['layer']}" + (
                f", t={meta['timestep']}" if meta["timestep"] != "none" else ""
            )
            axes[0, 1 + 2 * c].set_title(f"{kind}\ntarget", fontsize=9)
            axes[0, 2 + 2 * c].set_title(f"{kind}\nprobe ({where})", fontsize=9)
        for r in range(n):
            axes[r, 0].imshow(np.clip(images[r], 0, 1))
        axes[0, 0].set_title("input", fontsize=9)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"{title}: best cell per task (test images)", fontsize=10)
        fig.tight_layout()
        for ext in ("png", "pdf"):
            p = rdir / "figures" / f"predictions_{d.name}.{ext}"
            p.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(p, dpi=110, bbox_inches="tight")
            paths.append(p)
        plt.close(fig)
    return [p for p in paths if p.suffix == ".png"]


def _markdown_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(results_dir: str | Path) -> Path:
    """Figures and ``REPORT.md`` for a results directory; returns the report's path."""
    rdir = Path(results_dir)
    df = read_results(rdir)
    if df.empty:
        raise ProbebenchError(f"{rdir} has a results file but no rows.")
    fig_dir = rdir / "figures"
    figs = plot_layer_curves(df, fig_dir)
    preds = plot_predictions(rdir)
    best = best_cells(df)
    runs = ", ".join(sorted(df["run"].unique()))
    lines = [
        f"# probebench report — {runs}",
        "",
        f"{len(df)} result rows; datasets: {', '.join(sorted(df['dataset'].unique()))}; "
        f"probes: {', '.join(sorted(df['probe'].unique()))}; config hash(es): "
        f"{', '.join(sorted(df['config_hash'].unique()))}; git commit: {df['git_commit'].iloc[0][:12]}.",
        "",
        "## Best cell per task",
        "",
        "The cell (layer, timestep) is chosen on the validation split; the test score is reported beside it.",
        "",
        _markdown_table(best),
        "",
        "## Score per layer",
        "",
        f"![layer curves]({figs[0].relative_to(rdir).as_posix()})",
        "",
        *(["## Predictions of the best cells", ""] if preds else []),
        *[f"![predictions]({p.relative_to(rdir).as_posix()})\n" for p in preds],
        f"Full table: `{Path('results.csv')}`; resolved config: `config.yaml`.",
        "",
    ]
    report = rdir / "REPORT.md"
    report.write_text("\n".join(lines))
    best.to_csv(rdir / "best_cells.csv", index=False)
    return report
