"""Complementarity of backbones: does a generative backbone add anything to a discriminative one?

- **Bars**: each member backbone alone vs the combination (concatenated, fused: one bar per probe of the
  combination run), per task, seed std as error bars where a cell was fitted more than once.
- **Per-class IoU gain** of one model over another. Input format (``per_class_iou.csv`` in a results
  directory, or any DataFrame with these columns)::

      backbone, weights, probe, class, iou          required; iou a fraction, NaN/empty if the class is absent
      task (default "segmentation"), split (default "test"), seed (default 0)     optional

- **Linear CKA** between feature maps, streamed over caches: :mod:`analysis.cka` (re-exported here).
- **Error overlap**: the fraction of pixels where each of two models is wrong, both are, or neither, from
  the saved prediction arrays (``heads/<model>/<task>_pred.npy`` / ``_target.npy``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from analysis.cka import (  # noqa: F401  (re-exported: the CKA analysis lived here)
    LinearCKA,
    MinibatchCKA,
    cka_figures,
    cka_key_label,
    cka_matrix,
    cka_stem,
    distinct_caches,
    gram,
    linear_cka,
    plot_cka_matrix,
    unbiased_hsic,
)
from analysis.common import (
    PALETTE,
    colors_for,
    error_bar_phrase,
    metric_label,
    save_figure,
)
from analysis.compare import best_cells, combination_members
from analysis.layout import fit_texts, legend_ncol
from probebench.core.errors import ProbebenchError
from probebench.core.rundir import PER_CLASS_DEFAULTS, PER_CLASS_REQUIRED, RunDir
from tasks.base import MAIN_METRIC
from tasks.kinds import find_kind, get_kind, kind_names

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


def read_per_class_iou(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """A per-class IoU table (see the module docstring) with defaults filled in and a ``model`` column."""
    if isinstance(source, pd.DataFrame):
        df = source.copy()
    elif Path(source).is_dir():  # a run or sweep directory: its (and its cells') tables
        df = RunDir(source).per_class_iou()
    else:
        p = Path(source)
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
    """(wrong, valid) boolean maps, from the task's target kind (``TargetKind.error_mask``). Segmentation: wrong
    class; saliency: the thresholded score disagrees with the mask; depth: max(pred/gt, gt/pred) ≥
    ``depth_ratio`` (fails δ<1.25). Each kind reads the thresholds it knows."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ProbebenchError(f"Prediction shape {pred.shape} differs from the target's {target.shape}.")
    kind = find_kind(task)
    if kind is None:
        raise ProbebenchError(f"Unknown task {task!r} for error overlap. Valid: {', '.join(kind_names())}.")
    return kind.error_mask(
        pred,
        target,
        ignore_index=ignore_index,
        saliency_threshold=saliency_threshold,
        depth_ratio=depth_ratio,
    )


def error_overlap(pred_a: np.ndarray, pred_b: np.ndarray, target: np.ndarray, task: str) -> dict[str, float]:
    """Fractions of pixels valid for both where only A is wrong, only B, both, neither (they sum to 1)."""
    wa, valid_a = error_mask(pred_a, target, task)
    wb, valid_b = error_mask(pred_b, target, task)
    valid = valid_a & valid_b  # a kind's validity may depend on the prediction (depth: positive and finite)
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
    """``{(model, task): (predictions, targets)}`` of every heads directory (a sweep's cells included; a model
    of a cell is named ``<cell>: <model>``)."""
    out = {}
    for heads in RunDir(results_dir).head_dirs():
        d = heads.path
        for task in MAIN_METRIC:
            pf, tf = d / f"{task}_pred.npy", d / f"{task}_target.npy"
            if not (pf.is_file() and tf.is_file()):
                continue
            model = heads.model(task)
            out[(f"{heads.cell}: {model}" if heads.cell else model, task)] = (np.load(pf), np.load(tf))
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
        crit = get_kind(task).error_criterion  # tasks come from MAIN_METRIC: registered kinds
        ax.set_title(f"{task} ({crit})" if crit else task, fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=legend_ncol(fig, labels, 8, 3), fontsize=8)
    fig.suptitle("Error overlap of the best cells on saved test predictions (rest of each bar: both right)")
    fit_texts(fig)
    return save_figure(fig, out_dir, "error_overlap")
