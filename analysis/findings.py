"""The four questions of an MMDiff-style study, answered with numbers from the result table:

(a) does the best timestep differ between tasks, and are the metric-vs-timestep curves far from flat?
(b) does spatially varying fusion beat the best single timestep — and a control with as many inputs but no
    timestep diversity (a stage with ``role: noise-control`` in the config: K noise draws at one timestep)?
(c) does combining two backbones beat each alone?
(d) does a trained model beat its random-weight twin?

One selection rule everywhere: a cell (layer, timestep, probe) is chosen on the validation split (mean over
seeds) and its test score is reported. The best timestep of a model for a task is the timestep of its per-cell
probe's val-chosen cell (:func:`best_timesteps`) — the same answer in the summary, the findings and the figures.

One vocabulary for verdicts (:func:`verdict`): *beats*, *within noise*, *loses*. The noise is the larger seed
std of the two sides; a gain larger than it beats, a loss larger than it loses, anything else is within noise.
When neither side has two fits the noise is not measured: the sign decides and the verdict says "1 fit".
A question the results cannot answer is said to be not applicable rather than guessed.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from analysis.common import (
    cell_probe,
    main_metric_rows,
    registered_cell_probes,
    seed_mean,
    single_cells,
    timestep_rows,
)
from analysis.compare import VERDICT_RULE, VERDICTS, best_cells, gain, verdict, verdict_phrase, with_model
from analysis.curves import chosen_cells
from probebench.core.errors import ProbebenchError
from tasks.base import MAIN_METRIC

NOISE_CONTROL = "noise-control"  # the stage role of fusion-spatial's noise control (``role:`` in the config)


def controls_of(roles: dict[str, str] | None, role: str = NOISE_CONTROL) -> list[str]:
    """The probe labels whose stage declares ``role`` (``roles``: :meth:`RunDir.stage_roles`)."""
    return sorted(label for label, r in (roles or {}).items() if r == role)


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _pm(value: float, std: float) -> str:
    """``0.477 ± 0.012`` (std over probe seeds), or ``0.477`` for one fit."""
    return f"{value:.3f} ± {std:.3f}" if np.isfinite(std) else _fmt(value)


def best_timesteps(df: pd.DataFrame, probe: str | None = None) -> pd.DataFrame:
    """Per diffusion model and task: the per-cell probe's cell chosen on val (seed mean) — its layer and
    timestep, val score, test score at that cell — and the test curve over the timesteps at that layer.

    Columns: model, task, metric, probe, layer, timestep, log_snr, val_value, test_value, test_std, n_seeds,
    curve (dict timestep → test value). Empty when no model has several timesteps or no val rows exist."""
    cols = ["model", "task", "metric", "probe", "layer", "timestep", "log_snr", "val_value", "test_value"]
    cols += ["test_std", "n_seeds", "curve"]
    try:
        d = timestep_rows(main_metric_rows(with_model(df)))
        probe = cell_probe(df, probe)
    except ProbebenchError:  # no main-metric rows, or no cells at a timestep
        return pd.DataFrame(columns=cols)
    m = seed_mean(d[d["probe"] == probe])
    val, test = m[m["split"] == "val"], m[m["split"] == "test"]
    chosen = chosen_cells(df, probe=probe)  # the cell the curves star and the heatmaps box: one answer
    out = []
    for (model, task), g in val.groupby(["model", "task"], sort=True):
        if g["timestep"].nunique() < 2 or (model, task) not in chosen:
            continue
        metric = str(g["metric"].iloc[0])
        layer, timestep = chosen[model, task]
        best = g[(g["layer"] == layer) & (g["timestep"] == timestep)].iloc[0]
        t = test[(test["model"] == model) & (test["task"] == task) & (test["layer"] == best["layer"])]
        at = t[t["timestep"] == best["timestep"]]
        curve = t.assign(tn=pd.to_numeric(t["timestep"])).sort_values("tn")
        out.append(
            {
                "model": model,
                "task": task,
                "metric": metric,
                "probe": probe,
                "layer": best["layer"],
                "timestep": best["timestep"],
                "log_snr": best["log_snr"],
                "val_value": float(best["value"]),
                "test_value": float(at["value"].iloc[0]) if len(at) else float("nan"),
                "test_std": float(at["std"].iloc[0]) if len(at) else float("nan"),
                "n_seeds": int(at["n_seeds"].iloc[0]) if len(at) else 0,
                "curve": dict(zip(curve["timestep"], curve["value"].astype(float))),
            }
        )
    order = {t: i for i, t in enumerate(MAIN_METRIC)}  # tasks in the kinds' order, as everywhere
    out.sort(key=lambda r: (r["model"], order.get(r["task"], len(order)), r["task"]))
    return pd.DataFrame(out, columns=cols)


def timestep_findings(df: pd.DataFrame, split: str = "test") -> list[str]:
    """(a): per diffusion model, the best timestep per task (the val-chosen cell of :func:`best_timesteps`) and
    how far from flat the test curve over the timesteps of that cell's layer is."""
    bt = best_timesteps(df)
    out = []
    for model, g in bt.groupby("model", sort=True):  # tasks already in the kinds' order
        where, spreads = [], []
        for _, r in g.iterrows():
            where.append(
                f"{r['task']} t={r['timestep']} (layer {r['layer']}, {split} {_fmt(r['test_value'])})"
            )
            curve = pd.Series(r["curve"], dtype=float)
            if len(curve) >= 2:
                lo, hi = float(curve.min()), float(curve.max())
                spreads.append(
                    f"{r['task']} {r['metric']} {_fmt(lo)}–{_fmt(hi)} over t at layer {r['layer']} "
                    f"(spread {_fmt(hi - lo)}, {100 * (hi - lo) / max(abs(hi), 1e-12):.0f} % of the maximum)"
                )
        differs = g["timestep"].nunique() > 1
        out.append(
            f"- (a) {model}: best timestep per task ({g['probe'].iloc[0]} cell chosen on val) — "
            + ", ".join(where)
            + f": {'differs between tasks' if differs else 'the same for every task'}."
            + (f" {split.capitalize()} curves: " + "; ".join(spreads) + "." if spreads else "")
        )
    return out


def fusion_findings(df: pd.DataFrame, split: str = "test", roles: dict[str, str] | None = None) -> list[str]:
    """(b): fusion-spatial vs fusion-single and vs every noise-control stage (``roles``: probe label → stage
    role, from the run's config), per model and task."""
    d = with_model(df)
    if not d["probe"].eq("fusion-spatial").any():
        return []
    controls = [c for c in controls_of(roles) if d["probe"].eq(c).any()]
    best = best_cells(
        d[d["probe"].str.startswith("fusion-") | d["probe"].isin(controls)],
        ("model", "task", "probe"),
        split=split,
    )
    v, sd = f"{split}_value", f"{split}_std"
    out = []
    for (model, task), g in best.groupby(["model", "task"], sort=True):
        by = g.set_index("probe")
        if "fusion-spatial" not in by.index:
            continue
        s = by.loc["fusion-spatial"]
        higher = bool(s["higher_is_better"])
        parts, note = [], ""
        for base in ("fusion-single", *controls):
            if base in by.index:
                b = by.loc[base]
                gn = gain(s[v], b[v], higher)
                parts.append(
                    f"{verdict_phrase(verdict(gn, s[sd], b[sd]))} {base} {_pm(b[v], b[sd])} (gain {gn:+.3f})"
                )
                ctrl = d[(d["probe"] == base) & (d["model"] == model) & (d["task"] == task)]
                clean = len(ctrl) and (pd.to_numeric(ctrl["log_snr"], errors="coerce") == np.inf).all()
                if base in controls and clean:
                    note = (
                        f" The {base} sits at a clean-image cell (log-SNR +∞), where every noise draw gives "
                        "the same features: there it controls only for the fusion's width, not for noise "
                        "diversity."
                    )
        if parts:
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
        c = g.iloc[0]
        parts = [
            f"{verdict_phrase(verdict(r['gain'], r['combination_std'], r['member_std']))} {r['member']} "
            f"{_pm(r['member_value'], r['member_std'])} ({r['member_probe']}; gain {r['gain']:+.3f} {r['metric']})"
            for _, r in g.iterrows()
        ]
        out.append(
            f"- (c) {task}, {combo} {_pm(c['combination_value'], c['combination_std'])} "
            f"({c['combination_probe']}): " + "; ".join(parts) + "."
        )
    return out


def random_twin_findings(
    df: pd.DataFrame, split: str = "test", notes: dict[str, str] | None = None
) -> list[str]:
    """(d): best cell of each trained model vs the best cell of the same backbone with random weights. ``notes``
    (model label → what its weights are, from the run's ``backbones.json``) name the control, once per twin."""
    d = with_model(df)
    d = d[~d["backbone"].str.contains("+", regex=False)]
    best = best_cells(d, ("model", "task"), split=split)
    v, sd = f"{split}_value", f"{split}_std"
    out = []
    named: set[str] = set()
    for (_, task), g in best.groupby(["backbone", "task"], sort=True):
        rand = g[g["weights"] == "random"]
        if rand.empty:
            continue
        rr = rand.iloc[0]
        what = (notes or {}).get(str(rr["model"]))
        if what and rr["model"] not in named:
            named.add(rr["model"])
            out.append(f"- (d) The control, {rr['model']}: {what}.")
        for _, r in g[g["weights"] != "random"].iterrows():
            gn = gain(r[v], rr[v], bool(r["higher_is_better"]))
            out.append(
                f"- (d) {task}, {r['model']}: {r['metric']} {_pm(r[v], r[sd])} ({r['probe']}) "
                f"{verdict_phrase(verdict(gn, r[sd], rr[sd]))} its random twin {_pm(rr[v], rr[sd])} "
                f"({rr['probe']}; gain {gn:+.3f})."
            )
    return out


def _gain_curve(df: pd.DataFrame, model: str, task: str, split: str) -> pd.Series:
    """Per timestep: the test score of the layer chosen on val at that timestep (seed means)."""
    g = df[(df["model"] == model) & (df["task"] == task)]
    higher = MAIN_METRIC[task][1]
    out = {}
    for t, gt in g.groupby("timestep", sort=False):
        val, test = gt[gt["split"] == "val"], gt[gt["split"] == split]
        if val.empty or test.empty:
            continue
        layer = val.loc[val["value"].idxmax() if higher else val["value"].idxmin()]["layer"]
        at = test[test["layer"] == layer]["value"]
        if len(at):
            out[float(t)] = float(at.mean())
    return pd.Series(out, dtype=float).sort_index()


def twin_gain_by_timestep_findings(df: pd.DataFrame, split: str = "test") -> list[str]:
    """(d), along the trajectory: a trained diffusion model's gain over its random twin at each timestep (per-cell
    probe, layer chosen on val at each timestep), reported on test. Where the gain is largest says at which noise
    level the *learned* information sits; the best timestep itself is (a)'s val-chosen one."""
    try:
        probe = cell_probe(df)
        d = timestep_rows(main_metric_rows(with_model(df)))
    except ProbebenchError:
        return []
    d = seed_mean(d[(d["probe"] == probe) & ~d["backbone"].str.contains("+", regex=False)])
    bt = best_timesteps(df, probe)
    out = []
    for (_, task), g in d.groupby(["backbone", "task"], sort=True):
        if task not in MAIN_METRIC or not (g["weights"] == "random").any():
            continue
        higher = MAIN_METRIC[task][1]
        twin = str(g[g["weights"] == "random"]["model"].iloc[0])
        rand = _gain_curve(g, twin, task, split)
        for model in sorted(set(g[g["weights"] != "random"]["model"])):
            mine = _gain_curve(g, model, task, split)
            common = mine.index.intersection(rand.index)
            if len(common) < 2:
                continue
            gains = (mine[common] - rand[common]) * (1 if higher else -1)
            chosen = bt[(bt["model"] == model) & (bt["task"] == task)]
            tail = (
                f"; its best timestep (chosen on val, as in (a)) is t={chosen['timestep'].iloc[0]}"
                if len(chosen)
                else ""
            )
            out.append(
                f"- (d) {task}, {model} − random twin by timestep ({split} {MAIN_METRIC[task][0]}, {probe}, layer "
                "chosen on val per timestep): "
                + ", ".join(f"t={t:g} {x:+.3f}" for t, x in gains.items())
                + f" — the gain is largest at t={gains.idxmax():g} (the largest of these {split} gains){tail}."
            )
    return out


def ranking_findings(df: pd.DataFrame, split: str = "val") -> list[str]:
    """How well one per-cell probe (a registered probe whose class declares ``per_cell``) ranks cells against
    another, e.g. the ridge screen against trained linear probes: Spearman's ρ over the cells both scored, per
    model and task and pair of probes, in the order the probes first appear in the rows (needs at least 3 common
    cells)."""
    from scipy.stats import spearmanr

    d = single_cells(with_model(df))
    d = d[(d["split"] == split) & d["probe"].isin(registered_cell_probes(d))]
    out = []
    for (model, task), g in d.groupby(["model", "task"], sort=True):
        g = g[g["metric"] == MAIN_METRIC.get(task, ("",))[0]]
        by_probe = {
            p: h.groupby(["layer", "timestep"])["value"].mean() for p, h in g.groupby("probe", sort=False)
        }
        for (a, sa), (b, sb) in itertools.combinations(by_probe.items(), 2):
            common = sa.index.intersection(sb.index)
            if len(common) < 3:
                continue
            rho = spearmanr(sa[common], sb[common]).statistic
            out.append(
                f"- Ranking, {task}, {model}: {a} vs {b} over {len(common)} cells "
                f"({split} {MAIN_METRIC[task][0]}): Spearman ρ = {rho:.3f}."
            )
    return out


def findings_lines(
    df: pd.DataFrame,
    combos: pd.DataFrame,
    split: str = "test",
    notes: dict[str, str] | None = None,
    roles: dict[str, str] | None = None,
) -> list[str]:
    """All answers that apply, as markdown bullets; ``notes``: what each model's weights are
    (:meth:`RunDir.backbone_notes`), ``roles``: probe label → stage role (:meth:`RunDir.stage_roles`)."""
    return (
        timestep_findings(df, split)
        + fusion_findings(df, split, roles)
        + combination_findings(combos)
        + random_twin_findings(df, split, notes)
        + twin_gain_by_timestep_findings(df, split)
        + ranking_findings(df)
    )


__all__ = [
    "VERDICTS",
    "VERDICT_RULE",
    "best_timesteps",
    "combination_findings",
    "findings_lines",
    "fusion_findings",
    "random_twin_findings",
    "ranking_findings",
    "timestep_findings",
    "twin_gain_by_timestep_findings",
    "verdict",
]
