"""The cue ablation: fusion heads with concept-map cues vs the same heads without them.

A cue model is a joint fit ``<backbone>+<backbone>[concepts=…]`` (``fusion`` with ``cues: true``: each timestep's
input carries the concept maps of that timestep as extra channels). Its baseline is the same probe variant
(``fusion-spatial``, ``fusion-single``, …) of the first member alone. Each side's cell is chosen on val by the
seed mean and reported on the report's split with its seed std, and the verdict is the report's one vocabulary
(:func:`analysis.compare.verdict`: beats / within noise / loses against the larger seed std).
"""

from __future__ import annotations

import pandas as pd

from analysis.common import with_model
from analysis.compare import best_cells, combination_members, gain, rel_gain_pct, verdict, verdict_phrase
from analysis.concept_labels import parse_concept_label

SECTION_TITLE = "Concept cues for the fusion heads"
NOT_APPLICABLE = (
    "Concept cues: no fusion rows of a `<backbone>+<backbone>[concepts=…]` cue model beside its base."
)
COLUMNS = [
    "dataset",
    "task",
    "metric",
    "probe",
    "cues",
    "without",
    "without_std",
    "with",
    "with_std",
    "gain",
    "rel_gain_pct",
    "verdict",
    "n_seeds",
]


def cue_gains(df: pd.DataFrame, split: str = "test", select_split: str = "val") -> pd.DataFrame:
    """One row per (dataset, cue model, task, probe variant) that its base model also has: the two val-chosen
    cells' ``split`` scores, the gain of the cues (positive = better) and its verdict."""
    d = with_model(df)
    joint = d[d["backbone"].astype(str).str.contains("[concepts=", regex=False)]
    joint = joint[joint["backbone"].astype(str).str.contains("+", regex=False)]
    if joint.empty:
        return pd.DataFrame(columns=COLUMNS)
    best = best_cells(d, ("model", "task", "probe"), split=split, select_split=select_split)
    v, s = f"{split}_value", f"{split}_std"
    index = best.set_index(["dataset", "model", "task", "probe"])
    out = []
    for _, c in best[best["model"].isin(set(joint["model"]))].iterrows():
        members = combination_members(str(c["backbone"]), str(c["weights"]))
        if len(members) != 2 or parse_concept_label(members[1][0]) is None:
            continue
        base = f"{members[0][0]} ({members[0][1]})"
        key = (c["dataset"], base, c["task"], c["probe"])
        if key not in index.index:
            continue
        b = index.loc[key]
        gn = gain(c[v], b[v], bool(c["higher_is_better"]))
        out.append(
            {
                "dataset": c["dataset"],
                "task": c["task"],
                "metric": c["metric"],
                "probe": c["probe"],
                "cues": members[1][0],
                "without": b[v],
                "without_std": b[s],
                "with": c[v],
                "with_std": c[s],
                "gain": gn,
                "rel_gain_pct": rel_gain_pct(gn, b[v]),
                "verdict": verdict(gn, c[s], b[s]),
                "n_seeds": int(min(c["n_seeds"], b["n_seeds"])),
            }
        )
    table = pd.DataFrame(out, columns=COLUMNS)
    order = {t: i for i, t in enumerate(dict.fromkeys(d["task"]))}  # the run's task order, then the variant
    return table.sort_values(
        ["task", "probe"], key=lambda c: c.map(order) if c.name == "task" else c, ignore_index=True
    )


def _pm(value: float, std: float) -> str:
    return f"{value:.3f}" if pd.isna(std) else f"{value:.3f} ± {std:.3f}"


def cue_summary(table: pd.DataFrame, split: str) -> str:
    """One line per row: what the cues did to each task and variant, with the evidence."""
    lines = []
    for _, r in table.iterrows():
        seeds = f"{r['n_seeds']} probe seed{'s' if r['n_seeds'] != 1 else ''}"
        lines.append(
            f"- {r['task']} ({r['metric']}, {r['probe']}): {_pm(r['without'], r['without_std'])} without cues, "
            f"{_pm(r['with'], r['with_std'])} with them ({split}, {seeds}, cells chosen on val): with cues it "
            f"**{verdict_phrase(r['verdict'])}** the head without ({r['gain']:+.3f})."
        )
    words = sorted({str(c) for c in table["cues"]})
    return (
        "Each timestep's input of the fusion head carries the concept maps of that timestep as extra channels "
        f"(`{'`; `'.join(words)}`); the same head without them is the baseline.\n\n" + "\n".join(lines)
    )
