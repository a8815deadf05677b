"""The four questions of an MMDiff-style study, answered with numbers from the result table:

(a) does the best timestep differ between tasks, and are the metric-vs-timestep curves far from flat?
(b) does spatially varying fusion beat the best single timestep — and a control with as many inputs but no
    timestep diversity (``fusion-noise-control``: K noise draws at one timestep)?
(c) does combining two backbones beat each alone?
(d) does a trained model beat its random-weight twin?

Every number is read from the tables (best cells chosen on validation, reported on test); a question the
results cannot answer is said to be not applicable rather than guessed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.common import best_index, best_row
from analysis.compare import best_cells, gain, with_model
from tasks.base import MAIN_METRIC


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _pm(value: float, std: float) -> str:
    """``0.477 ± 0.012`` (std over probe seeds), or ``0.477`` for one seed."""
    return f"{value:.3f} ± {std:.3f}" if np.isfinite(std) else _fmt(value)


def _versus(gn: float, std_a: float, std_b: float) -> str:
    """The verdict of a gain, flagged when it is smaller than the larger seed std of the two sides."""
    verdict = "beats" if gn > 0 else "does not beat"
    spread = np.nanmax([std_a, std_b]) if np.isfinite([std_a, std_b]).any() else np.nan
    return verdict + (" (within the seed std)" if np.isfinite(spread) and abs(gn) < spread else "")


def timestep_findings(df: pd.DataFrame, split: str = "test") -> list[str]:
    """(a): per diffusion model, the best timestep per task (ridge, best layer chosen on val) and the spread."""
    d = with_model(df)
    d = d[(d["probe"] == "ridge") & (d["timestep"] != "none") & ~d["timestep"].str.contains("+", regex=False)]
    out = []
    for model, g in d.groupby("model", sort=True):
        best_t, spreads = {}, []
        for task, (metric, higher) in MAIN_METRIC.items():
            t = g[(g["task"] == task) & (g["metric"] == metric)]
            val, test = t[t["split"] == "val"], t[t["split"] == split]
            if val.empty or test.empty:
                continue
            cell = best_row(val, higher)
            curve = test[test["layer"] == cell["layer"]].copy()
            curve["t"] = curve["timestep"].astype(float)
            curve = curve.groupby("t")["value"].mean().sort_index()
            best = best_index(curve, higher)
            best_t[task] = best
            spread = float(curve.max() - curve.min())
            ref = float(curve.max() if higher else curve.min())
            spreads.append(
                f"{task} {metric} {_fmt(curve.min())}–{_fmt(curve.max())} over t at layer "
                f"{cell['layer']} (spread {_fmt(spread)}, {100 * spread / abs(ref):.0f} % of the best)"
            )
        if not best_t:
            continue
        differs = len(set(best_t.values())) > 1
        where = ", ".join(f"{k} t={v:g}" for k, v in best_t.items())
        out.append(
            f"- (a) {model}: best timestep per task on {split} — {where}: "
            f"{'differs between tasks' if differs else 'the same for every task'}. Curves: "
            + "; ".join(spreads)
            + "."
        )
    return out


def fusion_findings(df: pd.DataFrame, split: str = "test") -> list[str]:
    """(b): fusion-spatial vs fusion-single and vs fusion-noise-control, per model and task."""
    d = with_model(df)
    if not d["probe"].eq("fusion-spatial").any():
        return []
    best = best_cells(d[d["probe"].str.startswith("fusion-")], ("model", "task", "probe"), split=split)
    v = f"{split}_value"
    out = []
    for (model, task), g in best.groupby(["model", "task"], sort=True):
        by = g.set_index("probe")
        if "fusion-spatial" not in by.index:
            continue
        s = by.loc["fusion-spatial"]
        higher = bool(s["higher_is_better"])
        sd = f"{split}_std"
        parts = []
        for base in ("fusion-single", "fusion-noise-control"):
            if base in by.index:
                b = by.loc[base]
                gn = gain(s[v], b[v], higher)
                parts.append(f"{_versus(gn, s[sd], b[sd])} {base} {_pm(b[v], b[sd])} (gain {gn:+.3f})")
        if parts:
            ctrl = d[(d["probe"] == "fusion-noise-control") & (d["model"] == model) & (d["task"] == task)]
            clean = len(ctrl) and (pd.to_numeric(ctrl["log_snr"], errors="coerce") == np.inf).all()
            note = (
                " The noise control sits at a clean-image cell (log-SNR +∞), where every noise draw gives the "
                "same features: there it controls only for the fusion's width, not for noise diversity."
                if clean
                else ""
            )
            seeds = f" ({int(s['n_seeds'])} probe seeds)" if int(s["n_seeds"]) > 1 else ""
            out.append(
                f"- (b) {task}, {model}: fusion-spatial {s['metric']} {_pm(s[v], s[sd])}{seeds} "
                + "; ".join(parts)
                + "."
                + note
            )
    return out


def combination_findings(combos: pd.DataFrame) -> list[str]:
    """(c): from :func:`analysis.compare.combination_gains`."""
    out = []
    for (task, combo), g in combos.groupby(["task", "combination"], sort=True) if len(combos) else []:
        parts = [
            f"{_versus(r['gain'], r['combination_std'], r['member_std'])} {r['member']} "
            f"{_pm(r['member_value'], r['member_std'])} ({r['gain']:+.3f} {r['metric']})"
            for _, r in g.iterrows()
        ]
        out.append(f"- (c) {task}, {combo}: " + "; ".join(parts) + ".")
    return out


def random_twin_findings(df: pd.DataFrame, split: str = "test") -> list[str]:
    """(d): best cell of each trained model vs the best cell of the same backbone with random weights."""
    d = with_model(df)
    d = d[~d["backbone"].str.contains("+", regex=False)]
    best = best_cells(d, ("model", "task"), split=split)
    v = f"{split}_value"
    out = []
    for (backbone, task), g in best.groupby(["backbone", "task"], sort=True):
        rand = g[g["weights"] == "random"]
        for _, r in g[g["weights"] != "random"].iterrows():
            if rand.empty:
                continue
            rr, sd = rand.iloc[0], f"{split}_std"
            gn = gain(r[v], rr[v], bool(r["higher_is_better"]))
            out.append(
                f"- (d) {task}, {backbone}: {r['weights']} weights {r['metric']} {_pm(r[v], r[sd])} vs random "
                f"{_pm(rr[v], rr[sd])} → {_versus(gn, r[sd], rr[sd])} its random twin ({gn:+.3f})."
            )
    return out


def _curve_by_timestep(g: pd.DataFrame, higher: bool, split: str) -> pd.Series:
    """Per timestep: the test score of the layer that is best on val at that timestep (ridge cells)."""
    out = {}
    for t, gt in g.groupby("timestep", sort=False):
        val, test = gt[gt["split"] == "val"], gt[gt["split"] == split]
        if val.empty or test.empty:
            continue
        layer = best_row(val, higher)["layer"]
        at = test[test["layer"] == layer]["value"]
        if len(at):
            out[float(t)] = float(at.mean())
    return pd.Series(out, dtype=float).sort_index()


def twin_gain_by_timestep_findings(df: pd.DataFrame, split: str = "test") -> list[str]:
    """(d), along the trajectory: a trained diffusion model's gain over its random twin at each timestep (ridge,
    best layer per timestep chosen on val). Where the gain peaks says at which noise level the *learned* information
    sits, which can differ from where the raw score peaks (clean inputs carry the most pixels)."""
    d = df[(df["probe"] == "ridge") & (df["timestep"] != "none")]
    d = d[~d["timestep"].str.contains("+", regex=False) & ~d["backbone"].str.contains("+", regex=False)]
    out = []
    for (backbone, task), g in d.groupby(["backbone", "task"], sort=True):
        if task not in MAIN_METRIC or not (g["weights"] == "random").any():
            continue
        metric, higher = MAIN_METRIC[task]
        g = g[g["metric"] == metric]
        rand = _curve_by_timestep(g[g["weights"] == "random"], higher, split)
        for weights in sorted(set(g["weights"]) - {"random"}):
            mine = _curve_by_timestep(g[g["weights"] == weights], higher, split)
            common = mine.index.intersection(rand.index)
            if len(common) < 2:
                continue
            gains = (mine[common] - rand[common]) * (1 if higher else -1)
            out.append(
                f"- (d) {task}, {backbone} ({weights}) − random twin by timestep ({split} {metric}, ridge): "
                + ", ".join(f"t={t:g} {x:+.3f}" for t, x in gains.items())
                + f" — largest at t={gains.idxmax():g}; the raw score (each timestep at its best val layer) peaks at t="
                + f"{best_index(mine, higher):g}."
            )
    return out


def ranking_findings(df: pd.DataFrame, split: str = "val") -> list[str]:
    """How well the ridge screen ranks cells against trained linear probes: Spearman's ρ over the cells both
    probes scored (per model and task; needs at least 3 common cells)."""
    from scipy.stats import spearmanr

    d = with_model(df)
    d = d[d["split"] == split]
    out = []
    for (model, task), g in d.groupby(["model", "task"], sort=True):
        g = g[g["metric"] == MAIN_METRIC.get(task, ("",))[0]]
        ridge = g[g["probe"] == "ridge"].groupby(["layer", "timestep"])["value"].mean()
        linear = g[g["probe"] == "linear"].groupby(["layer", "timestep"])["value"].mean()
        common = ridge.index.intersection(linear.index)
        if len(common) < 3:
            continue
        rho = spearmanr(ridge[common], linear[common]).statistic
        out.append(
            f"- Ranking, {task}, {model}: ridge vs trained linear probe over {len(common)} cells "
            f"({split} {MAIN_METRIC[task][0]}): Spearman ρ = {rho:.3f}."
        )
    return out


def findings_lines(df: pd.DataFrame, combos: pd.DataFrame, split: str = "test") -> list[str]:
    """All answers that apply, as markdown bullets."""
    return (
        timestep_findings(df, split)
        + fusion_findings(df, split)
        + combination_findings(combos)
        + random_twin_findings(df, split)
        + twin_gain_by_timestep_findings(df, split)
        + ranking_findings(df)
    )
