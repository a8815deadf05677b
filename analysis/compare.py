"""Comparison tables across many runs and backbones: the best cell per (model, task, probe), the gain of fusion
over the best single timestep, and the gain of a backbone combination over each of its members.

Every table selects cells on the validation split (mean over seeds) and reports them on the test split, so a
cell is never picked by its test score. Gains are *improvements*: positive means better, whatever the metric's
direction (for RMSE, ``gain = baseline − value``); ``rel_gain_pct`` divides by ``|baseline|``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from analysis.common import (
    FUSION_PREFIX,
    best_row,
    colors_for,
    error_bar_phrase,
    is_multi,
    main_metric_rows,
    metric_label,
    registered_cell_probes,
    save_figure,
    seed_mean,
    with_model,
)
from probebench.core.errors import ProbebenchError
from probebench.core.results import read_results
from probebench.core.rundir import find_results_files
from tasks.base import HIGHER_IS_BETTER, MAIN_METRIC

FUSION_MAIN = "fusion-spatial"
FUSION_SINGLE = "fusion-single"
BASELINE_FUSION_SINGLE = "fusion-single: the same fusion head on the best single timestep"
BASELINE_BEST_CELL = "the best single-timestep ridge/linear cell, selected on val"


# -- loading --------------------------------------------------------------------------------------------------
def load_results(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """The concatenated tables of several runs (schema checked per file; an empty table is an error)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files = find_results_files(paths)
    frames = [read_results(f) for f in files]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if df.empty:
        raise ProbebenchError(f"The results files {[str(f) for f in files]} hold no rows.")
    return with_model(df)


# -- best cells -----------------------------------------------------------------------------------------------
def _pick(g: pd.DataFrame, higher: bool) -> pd.Series:
    """The best row of ``g`` by ``value``; ties go to the first row in (layer, timestep) order."""
    g = g.sort_values(["probe", "layer", "timestep"], kind="stable")
    return best_row(g, higher)


def best_cells(
    df: pd.DataFrame,
    by: Sequence[str] = ("model", "task", "probe"),
    *,
    split: str = "test",
    select_split: str = "val",
    metric: str | None = None,
) -> pd.DataFrame:
    """The best cell per group ``by`` (plus dataset): chosen on ``select_split`` by the seed-mean of the main
    metric (or ``metric``), reported on ``split`` with its seed std and count.

    If the table has no ``select_split`` rows, the cell is chosen on ``split`` itself and the ``selected_on``
    column says so.
    """
    rows_all = seed_mean(main_metric_rows(df, metric=metric))
    if rows_all.empty:
        return pd.DataFrame()
    sel_on = select_split if (rows_all["split"] == select_split).any() else split
    sel = rows_all[rows_all["split"] == sel_on]
    rep = rows_all[rows_all["split"] == split].set_index(
        ["dataset", "model", "task", "probe", "layer", "timestep", "metric"]
    )
    if sel.empty:
        raise ProbebenchError(
            f"No rows on split {split!r} or {select_split!r}; splits present: {sorted(rows_all['split'].unique())}."
        )
    keys = ["dataset", *[k for k in by if k != "dataset"]]
    out = []
    for _, g in sel.groupby(keys, sort=True):
        m = g["metric"].iloc[0]
        best = _pick(g, HIGHER_IS_BETTER.get(m, True))
        idx = (
            best["dataset"],
            best["model"],
            best["task"],
            best["probe"],
            best["layer"],
            best["timestep"],
            m,
        )
        hit = rep.loc[idx] if idx in rep.index else None
        row = {
            "dataset": best["dataset"],
            "model": best["model"],
            "backbone": best["backbone"],
            "weights": best["weights"],
            "task": best["task"],
            "probe": best["probe"],
            "layer": best["layer"],
            "timestep": best["timestep"],
            "log_snr": best["log_snr"],
            "metric": m,
            "higher_is_better": HIGHER_IS_BETTER.get(m, True),
            "selected_on": sel_on,
            f"{sel_on}_value": float(best["value"]),
        }
        if sel_on != split:
            row[f"{split}_value"] = float(hit["value"]) if hit is not None else float("nan")
        row[f"{split}_std"] = float(hit["std"]) if hit is not None else float("nan")
        row["n_seeds"] = int(hit["n_seeds"]) if hit is not None else 0
        out.append(row)
    return pd.DataFrame(out)


VERDICTS = ("beats", "within noise", "loses")
VERDICT_RULE = (
    "Verdicts use three words: **beats** when the gain is larger than the noise, **loses** when the loss is, "
    "**within noise** otherwise; the noise is the larger seed std (over probe seeds) of the two sides. Where "
    "neither side was fitted more than once the noise is not measured, the sign decides, and the verdict says "
    "so (1 fit)."
)


def verdict(gn: float, std_a: float = float("nan"), std_b: float = float("nan")) -> str:
    """*beats* / *within noise* / *loses* for a gain ``gn`` (positive = better), against the larger of the two
    sides' seed std; with no std on either side, the sign decides and the word says "(1 fit)"."""
    stds = np.asarray([std_a, std_b], dtype=float)
    measured = bool(np.isfinite(stds).any())
    noise = float(np.nanmax(stds)) if measured else 0.0
    word = "beats" if gn > noise else "loses" if gn < -noise else "within noise"
    return word if measured else f"{word} (1 fit)"


def verdict_phrase(word: str) -> str:
    """A verdict inside a sentence ("A beats B", "A loses to B", "A is within noise of B"), its qualifier kept."""
    head, _, rest = word.partition(" (")
    phrase = {"beats": "beats", "loses": "loses to", "within noise": "is within noise of"}[head]
    return phrase + (f" ({rest}" if rest else "")


def gain(value: float, baseline: float, higher: bool) -> float:
    """Improvement of ``value`` over ``baseline`` (positive = better, in the metric's units)."""
    return (value - baseline) if higher else (baseline - value)


def rel_gain_pct(g: float, baseline: float) -> float:
    return 100.0 * g / abs(baseline) if baseline not in (0, 0.0) and np.isfinite(baseline) else float("nan")


def comparison_table(df: pd.DataFrame, *, split: str = "test", select_split: str = "val") -> pd.DataFrame:
    """Best cell per (dataset, model, task, probe) with two gains on ``split``: over the same backbone with
    random weights (the random-feature baseline; NaN if absent), and the gap to the best model of the task
    (``delta_vs_task_best``: 0 for the best, negative for the others)."""
    t = best_cells(df, ("model", "task", "probe"), split=split, select_split=select_split)
    if t.empty:
        return t
    v = f"{split}_value"
    rand = t[t["weights"] == "random"].set_index(["dataset", "backbone", "task", "probe"])[v]
    gr, dl = [], []
    for _, r in t.iterrows():
        higher = bool(r["higher_is_better"])
        k = (r["dataset"], r["backbone"], r["task"], r["probe"])
        base = rand.get(k, np.nan) if r["weights"] != "random" else np.nan
        gr.append(gain(r[v], float(base), higher))
        same = t[(t["dataset"] == r["dataset"]) & (t["task"] == r["task"])][v]
        top = same.max() if higher else same.min()
        dl.append(gain(r[v], float(top), higher))
    t["gain_vs_random"] = gr
    t["delta_vs_task_best"] = dl
    return t.sort_values(["dataset", "task", v], ascending=[True, True, False]).reset_index(drop=True)


# -- fusion gains ---------------------------------------------------------------------------------------------
def fusion_gains(df: pd.DataFrame, *, split: str = "test", select_split: str = "val") -> pd.DataFrame:
    """Each fusion variant vs the best single timestep, per (dataset, model, task).

    The baseline is ``fusion-single`` (the same head on the best single timestep: the fair comparison) when
    the model has it, else the best single-timestep ridge/linear cell chosen on the validation split; the
    ``baseline`` column says which. Empty if no model has fusion rows.
    """
    d = with_model(df)
    fused = d[d["probe"].str.startswith(FUSION_PREFIX)]
    if fused.empty:
        return pd.DataFrame()
    best = best_cells(d, ("model", "task", "probe"), split=split, select_split=select_split)
    v = f"{split}_value"
    singles = d[d["probe"].isin(registered_cell_probes(d)) & ~is_multi(d["timestep"]) & ~is_multi(d["layer"])]
    singles = singles[singles["timestep"] != "none"]
    single_best = (
        best_cells(singles, ("model", "task"), split=split, select_split=select_split)
        if len(singles)
        else pd.DataFrame(columns=["dataset", "model", "task"])
    )
    out = []
    for (ds, model, task), g in best.groupby(["dataset", "model", "task"], sort=True):
        if not g["probe"].str.startswith(FUSION_PREFIX).any():
            continue
        if (g["probe"] == FUSION_SINGLE).any():
            base, kind = g[g["probe"] == FUSION_SINGLE].iloc[0], BASELINE_FUSION_SINGLE
        else:
            sb = single_best[
                (single_best["dataset"] == ds)
                & (single_best["model"] == model)
                & (single_best["task"] == task)
            ]
            if sb.empty:
                continue
            base, kind = sb.iloc[0], BASELINE_BEST_CELL
        for _, r in g[g["probe"].str.startswith(FUSION_PREFIX)].iterrows():
            if r["probe"] == base["probe"]:
                continue
            higher = bool(r["higher_is_better"])
            gn = gain(r[v], base[v], higher)
            out.append(
                {
                    "dataset": ds,
                    "model": model,
                    "task": task,
                    "metric": r["metric"],
                    "variant": r["probe"],
                    "variant_layer": r["layer"],
                    "variant_timestep": r["timestep"],
                    "value": r[v],
                    "value_std": r[f"{split}_std"],
                    "baseline": kind,
                    "baseline_probe": base["probe"],
                    "baseline_layer": base["layer"],
                    "baseline_timestep": base["timestep"],
                    "baseline_value": base[v],
                    "baseline_std": base[f"{split}_std"],
                    "gain": gn,
                    "rel_gain_pct": rel_gain_pct(gn, base[v]),
                    "verdict": verdict(gn, r[f"{split}_std"], base[f"{split}_std"]),
                    "n_seeds": r["n_seeds"],
                }
            )
    return pd.DataFrame(out)


# -- combination gains ----------------------------------------------------------------------------------------
def combination_members(backbone: str, weights: str) -> list[tuple[str, str]]:
    """``("a+b", "w")`` → ``[("a", "w"), ("b", "w")]``; ``("a+b", "w1+w2")`` → ``[("a", "w1"), ("b", "w2")]``."""
    parts = backbone.split("+")
    ws = weights.split("+")
    ws = ws if len(ws) == len(parts) else [weights] * len(parts)
    return list(zip(parts, ws))


def combination_gains(
    df: pd.DataFrame, *, split: str = "test", select_split: str = "val"
) -> tuple[pd.DataFrame, list[str]]:
    """The best cell of each combination (backbone ``"a+b"``) vs the best cell of each member, per task —
    best over all probes of each model, chosen on validation. Returns the table and notes on members that
    are not in the results."""
    d = with_model(df)
    combos = d[d["backbone"].str.contains("+", regex=False)]
    if combos.empty:
        return pd.DataFrame(), []
    best = best_cells(d, ("model", "task"), split=split, select_split=select_split)
    v = f"{split}_value"
    by_model = best.set_index(["dataset", "model", "task"])
    out, notes = [], []
    for _, c in best[best["backbone"].str.contains("+", regex=False)].iterrows():
        for mb, mw in combination_members(c["backbone"], c["weights"]):
            member = f"{mb} ({mw})"
            k = (c["dataset"], member, c["task"])
            if k not in by_model.index:
                notes.append(
                    f"{member} has no {c['task']} rows on {c['dataset']}, so {c['model']} is not compared to it."
                )
                continue
            m = by_model.loc[k]
            gn = gain(c[v], m[v], bool(c["higher_is_better"]))
            out.append(
                {
                    "dataset": c["dataset"],
                    "task": c["task"],
                    "metric": c["metric"],
                    "combination": c["model"],
                    "combination_probe": c["probe"],
                    "combination_cell": f"{c['layer']} @ {c['timestep']}",
                    "combination_value": c[v],
                    "combination_std": c[f"{split}_std"],
                    "member": member,
                    "member_probe": m["probe"],
                    "member_cell": f"{m['layer']} @ {m['timestep']}",
                    "member_value": m[v],
                    "member_std": m[f"{split}_std"],
                    "gain": gn,
                    "rel_gain_pct": rel_gain_pct(gn, m[v]),
                    "verdict": verdict(gn, c[f"{split}_std"], m[f"{split}_std"]),
                }
            )
    return pd.DataFrame(out), sorted(set(notes))


# -- writing --------------------------------------------------------------------------------------------------
def markdown_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub-flavoured markdown table (floats with ``floatfmt``; NaN as ``–``)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        cells = []
        for v in r:
            if isinstance(v, (float, np.floating)):
                cells.append("–" if not np.isfinite(v) else format(float(v), floatfmt))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(df: pd.DataFrame, out_dir: Path, stem: str) -> list[Path]:
    """``<stem>.csv`` (full precision) and ``<stem>.md`` (3 decimals)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.csv", out_dir / f"{stem}.md"]
    df.to_csv(paths[0], index=False)
    paths[1].write_text(markdown_table(df) + "\n")
    return paths


def plot_comparison(
    table: pd.DataFrame, out_dir: Path, split: str = "test", stem: str = "comparison"
) -> list[Path]:
    """A dot plot: one row per model, one panel per task, one marker (colour + shape) per probe at its best
    cell's score on ``split`` with the seed std as error bar. The x axis is not forced to 0, so small
    differences between probes stay visible."""
    if table.empty:
        return []
    v, s = f"{split}_value", f"{split}_std"
    tasks = [t for t in MAIN_METRIC if t in set(table["task"])] + sorted(
        set(table["task"]) - set(MAIN_METRIC)
    )
    sns.set_theme(style="whitegrid", context="notebook")
    models = sorted(table["model"].unique())
    probes = sorted(table["probe"].unique())
    colors = colors_for(probes)
    markers = dict(zip(probes, "oDs^vP*XhpH<>"))
    fig, axes = plt.subplots(
        1,
        len(tasks),
        figsize=(4.8 * len(tasks), 0.5 * len(models) + 2.2),
        squeeze=False,
        layout="constrained",
        sharey=True,
    )
    step = 0.5 / max(1, len(probes) - 1) if len(probes) > 1 else 0.0
    for ax, task in zip(axes[0], tasks):
        g = table[table["task"] == task]
        for j, p in enumerate(probes):
            gp = g[g["probe"] == p]
            y = np.array([models.index(m) for m in gp["model"]]) + (
                j * step - 0.25 if len(probes) > 1 else 0.0
            )
            ax.errorbar(
                gp[v],
                y,
                xerr=gp[s].fillna(0),
                fmt=markers[p],
                color=colors[p],
                ms=6,
                capsize=2,
                lw=1,
                label=p,
            )
        ax.set_yticks(np.arange(len(models)))
        # long labels (a concept model names its words) wrap at spaces instead of squeezing the panels
        ax.set_yticklabels([textwrap.fill(m, 48, break_long_words=False) for m in models], fontsize=8)
        ax.set_ylim(len(models) - 0.5, -0.5)
        err = g[s].fillna(0)
        lo, hi = float((g[v] - err).min()), float((g[v] + err).max())
        pad = max(0.1 * (hi - lo), 0.03 * abs(float(g[v].mean())), 1e-3)  # context, not a zoom on noise
        ax.set_xlim(lo - pad, hi + pad)
        metric = g["metric"].iloc[0]
        better = "higher" if g["higher_is_better"].iloc[0] else "lower"
        ax.set_xlabel(f"{metric_label(metric)}, {split}\n({better} is better)")
        ax.set_title(task)
    from analysis.layout import fit_texts, legend_ncol

    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        title="probe",
        loc="outside lower center",
        ncol=legend_ncol(fig, labels, 8, max_ncol=4),
        fontsize=8,
    )

    spread = error_bar_phrase(table.get("n_seeds", []))
    fig.suptitle(f"Best cell per model and probe (selected on val; {split} score; {spread})")
    fit_texts(fig)
    return save_figure(fig, out_dir, stem)


def compare_runs(paths: str | Path | Iterable[str | Path], out_dir: str | Path) -> dict[str, list[Path]]:
    """Tables (CSV + markdown) and plots comparing every backbone/run found under ``paths``."""
    df = load_results(paths)
    out = Path(out_dir)
    split = "test" if (df["split"] == "test").any() else str(df["split"].iloc[0])
    written: dict[str, list[Path]] = {}
    table = comparison_table(df, split=split)
    written["comparison"] = write_table(table, out, "comparison")
    written["comparison_plot"] = plot_comparison(table, out / "figures", split=split)
    fg = fusion_gains(df, split=split)
    if len(fg):
        written["fusion_gains"] = write_table(fg, out, "fusion_gains")
    cg, _ = combination_gains(df, split=split)
    if len(cg):
        written["combination_gains"] = write_table(cg, out, "combination_gains")
    return written
