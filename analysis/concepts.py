"""Zero-shot concept maps (ConceptAttention): the score set against its baseline and its supervised ceiling, and
the maps themselves.

A concept model's features are probability maps over a few concept words, read from an MM-DiT's joint attention.
The ``concept`` probe scores them with no training, so the question is how far a training-free readout gets. The
answer needs two reference points. The first is ConceptAttention's own baseline: the same words scored by
cross-attention. The second is the ceiling: the supervised ridge probe of the same backbone, at the same
(layer, timestep) cell. :func:`concept_table` puts the three side by side, per model and task. The cell is chosen
on val and every number is reported on test, as everywhere else. :func:`plot_concept_maps` shows what the probe
saw, one concept per row and one timestep per column.

Inputs:

- Result rows whose ``backbone`` is a concept label,
  ``<name>[concepts=<words>(;score=cross-attention)(;output=pair;background=<words>)]``. Only
  :func:`parse_concept_label` reads these labels. The rows come from probe ``concept`` (one row per
  (layer, timestep) cell) and probe ``concept-mean`` (the maps averaged over every cell, so ``layer`` and
  ``timestep`` are ``+`` lists). The ceiling is the ``ridge`` rows of the base backbone: the label without its
  bracket, with the same weights.
- ``heads/<model>/concept_maps.npy``: float32 (N, C, T, h, w), softmax over the C concepts, for the first N val
  images at one layer. ``concept_maps.json`` describes it: ``backbone``, ``weights``, ``words``, ``layer``,
  ``timesteps``, ``log_snr``, ``split``, ``image_ids``. The images come from ``images_<split>.npy`` beside it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.common import (
    cell_probe,
    collect_figures,
    fmt_cell,
    main_metric_rows,
    save_figure,
    seed_mean,
    slug,
    timestep_rows,
    with_model,
)
from analysis.compare import best_cells, markdown_table
from analysis.concept_labels import (
    BASELINE_SCORE,
    CEILING_PROBE,
    CONCEPT_MEAN_PROBE,
    CONCEPT_PROBE,
    MAPS_STEM,
    ConceptLabel,
    _labels,
    concept_rows,
    parse_concept_label,
)
from analysis.concept_maps import ConceptMaps, load_concept_maps, plot_concept_maps, read_concept_maps
from analysis.heatmaps import plot_heatmaps
from tasks.base import MAIN_METRIC

__all__ = [  # the labels' and the figure's names are re-exported: this module is the concept analysis' face
    "BASELINE_SCORE",
    "CEILING_PROBE",
    "CONCEPT_MEAN_PROBE",
    "CONCEPT_PROBE",
    "MAPS_STEM",
    "NOT_APPLICABLE",
    "SECTION_TITLE",
    "TABLE_FILE",
    "ConceptLabel",
    "ConceptMaps",
    "concept_rows",
    "concept_section",
    "concept_summary",
    "concept_table",
    "load_concept_maps",
    "parse_concept_label",
    "plot_concept_heatmaps",
    "plot_concept_maps",
    "read_concept_maps",
]
TABLE_FILE = "concept_zero_shot.csv"
SECTION_TITLE = "Zero-shot concept maps (ConceptAttention)"
NOT_APPLICABLE = "Zero-shot concept maps: no `concept` probe rows of a `<backbone>[concepts=…]` model."
TABLE_COLUMNS = [
    "dataset",
    "model",
    "base_model",
    "concepts",
    "variant",
    "score",
    "task",
    "metric",
    "higher_is_better",
    "layer",
    "timestep",
    "log_snr",
    "selected_on",
    "selection_value",
    "zero_shot",
    "zero_shot_mean",
    "cross_attention",
    "cross_attention_layer",
    "cross_attention_timestep",
    "cross_attention_mean",
    "ridge_ceiling",
    "split",
]
REPORT_COLUMNS = [
    "base_model",
    "concepts",
    "task",
    "metric",
    "layer",
    "timestep",
    "log_snr",
    "zero_shot",
    "zero_shot_mean",
    "cross_attention",
    "cross_attention_mean",
    "ridge_ceiling",
]


# -- the zero-shot table --------------------------------------------------------------------------------------
def _main(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of each task's main metric (no error when there are none)."""
    keep = np.zeros(len(df), dtype=bool)
    for task, (metric, _) in MAIN_METRIC.items():
        keep |= ((df["task"] == task) & (df["metric"] == metric)).to_numpy()
    return df[keep]


def _chosen(rows: pd.DataFrame, split: str, select_split: str) -> pd.DataFrame:
    """The val-chosen cell of each (dataset, model, task) among ``rows``, reported on ``split``."""
    rows = _main(rows)
    if rows.empty:
        return pd.DataFrame()
    return best_cells(rows, ("model", "task"), split=split, select_split=select_split)


def _ceiling(df: pd.DataFrame, r: pd.Series, label: ConceptLabel, split: str) -> float:
    """The base backbone's ridge score on ``split`` at the cell of ``r`` (its seed mean; NaN without one).
    Rows of the concept model's own runs come first. If several setups remain, the first model label in
    sorted order is used."""
    d = df[
        (df["backbone"] == label.base)
        & (df["weights"] == r["weights"])
        & (df["probe"] == CEILING_PROBE)
        & (df["dataset"] == r["dataset"])
        & (df["task"] == r["task"])
        & (df["metric"] == r["metric"])
        & (df["split"] == split)
        & (df["layer"].astype(str) == str(r["layer"]))
        & (df["timestep"].astype(str) == str(r["timestep"]))
    ]
    if d.empty:
        return float("nan")
    runs = set(df.loc[df["model"] == r["model"], "run"].astype(str))
    own = d[d["run"].astype(str).isin(runs)]
    m = seed_mean(own if len(own) else d).sort_values("model", kind="stable")
    return float(m["value"].iloc[0])


def concept_table(df: pd.DataFrame, split: str = "test", select_split: str = "val") -> pd.DataFrame:
    """The zero-shot score of each concept model and task, set against its baseline and its ceiling.

    There is one row per (dataset, concept model, task) of the ``concept`` probe, on each task's main metric.
    A cross-attention model gets its own row only when no ConceptAttention model has its words, base, weights
    and options.

    - ``layer``, ``timestep``, ``log_snr``: the cell chosen on ``select_split``. ``selection_value`` is its
      score there. When the results have no ``select_split`` rows, ``split`` is used and ``selected_on`` says so.
    - ``zero_shot``: that cell's score on ``split``.
    - ``zero_shot_mean``: the ``concept-mean`` score on ``split``.
    - ``cross_attention``, ``cross_attention_mean``: the same two numbers for the ``score=cross-attention``
      model with the same base, weights, words and other options. Its cell, chosen on val in the same way, is
      in ``cross_attention_layer`` and ``cross_attention_timestep``.
    - ``ridge_ceiling``: the base backbone's ``ridge`` score on ``split`` at the zero-shot cell. The base
      backbone is the label without its bracket, with the same weights and dataset. The score is the mean over
      seeds.

    Missing numbers are NaN. The result is empty (with these columns) when there are no concept rows."""
    df = with_model(df)
    labels = _labels(df)
    concept = df[df["backbone"].astype(str).isin(labels)]
    cells = _chosen(concept[concept["probe"] == CONCEPT_PROBE], split, select_split)
    if cells.empty:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    means = _chosen(concept[concept["probe"] == CONCEPT_MEAN_PROBE], split, select_split)
    mean_of = (
        {(r["dataset"], r["model"], r["task"]): float(r[f"{split}_value"]) for _, r in means.iterrows()}
        if len(means)
        else {}
    )
    label_of = [labels[str(b)] for b in cells["backbone"]]

    def partners(i: int, baseline: bool) -> pd.DataFrame:
        r, lab = cells.iloc[i], label_of[i]
        same = [
            j
            for j in range(len(cells))
            if label_of[j].is_baseline == baseline
            and label_of[j].match_key == lab.match_key
            and cells.iloc[j]["weights"] == r["weights"]
            and cells.iloc[j]["dataset"] == r["dataset"]
            and cells.iloc[j]["task"] == r["task"]
        ]
        return cells.iloc[same]

    out = []
    for i in range(len(cells)):
        r, lab = cells.iloc[i], label_of[i]
        if lab.is_baseline and len(partners(i, baseline=False)):
            continue  # shown in its method's row
        base = None if lab.is_baseline else next((b for _, b in partners(i, baseline=True).iterrows()), None)
        nan = float("nan")
        out.append(
            {
                "dataset": r["dataset"],
                "model": r["model"],
                "base_model": f"{lab.base} ({r['weights']})",
                "concepts": " ".join(lab.words),
                "variant": lab.variant,
                "score": lab.kind,
                "task": r["task"],
                "metric": r["metric"],
                "higher_is_better": bool(r["higher_is_better"]),
                "layer": r["layer"],
                "timestep": r["timestep"],
                "log_snr": float(r["log_snr"]),
                "selected_on": r["selected_on"],
                "selection_value": float(r[f"{r['selected_on']}_value"]),
                "zero_shot": float(r[f"{split}_value"]),
                "zero_shot_mean": mean_of.get((r["dataset"], r["model"], r["task"]), nan),
                "cross_attention": nan if base is None else float(base[f"{split}_value"]),
                "cross_attention_layer": "" if base is None else base["layer"],
                "cross_attention_timestep": "" if base is None else base["timestep"],
                "cross_attention_mean": nan
                if base is None
                else mean_of.get((base["dataset"], base["model"], base["task"]), nan),
                "ridge_ceiling": _ceiling(df, r, lab, split),
                "split": split,
            }
        )
    t = pd.DataFrame(out, columns=TABLE_COLUMNS)
    tasks = list(MAIN_METRIC)
    order = t.assign(
        _baseline=t["score"] != "ConceptAttention",
        _task=[tasks.index(k) if k in tasks else len(tasks) for k in t["task"]],
    ).sort_values(["dataset", "_baseline", "model", "_task", "task"], kind="stable")
    return t.loc[order.index].reset_index(drop=True)


# -- the report's text ----------------------------------------------------------------------------------------
def _num(x: float) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.3f}"


def _where(layer: Any, timestep: Any, log_snr: Any = None) -> str:
    """``(layer 3, t=0.5, log-SNR +0.00)``: a cell with its noise level where it is known."""
    snr = ""
    try:
        s = float(log_snr)
        if not math.isnan(s):
            snr = ", clean (log-SNR +∞)" if s == math.inf else f", log-SNR {s:+.2f}"
    except (TypeError, ValueError):
        pass
    return f"({fmt_cell(layer, timestep)}{snr})"


def concept_summary(table: pd.DataFrame, split: str) -> str:
    """One paragraph with the evidence of :func:`concept_table`. It names each zero-shot score at its cell
    beside the maps' mean over cells, the cross-attention baseline and the ridge ceiling. Every number is
    formatted from a row of the table."""
    if table.empty:
        return ""
    sel = sorted(set(table["selected_on"]))
    out = [
        f"The `{CONCEPT_PROBE}` probe scores each (layer, timestep) cell's concept maps with no training. Its cell is "
        f"chosen on **{'/'.join(sel)}** by the task's main metric and reported on **{split}**. "
        f"`{CONCEPT_MEAN_PROBE}` scores the maps averaged over every cell the probe read, and the ceiling is the "
        f"supervised `{CEILING_PROBE}` probe of the same backbone at the same cell."
    ]
    for _, r in table.iterrows():
        better = "higher" if r["higher_is_better"] else "lower"
        who = r["base_model"] + (f" [{r['variant']}]" if r["variant"] else "")
        if r["score"] != "ConceptAttention":  # a baseline without its method model, or another score
            who = f"{who}'s {r['score']}" if r["score"].endswith("baseline") else f"{who} ({r['score']})"
        s = (
            f"For {r['task']} ({r['metric']}, {better} is better), {who} with {len(r['concepts'].split())} "
            f"concepts scores {_num(r['zero_shot'])} zero-shot at "
            f"{_where(r['layer'], r['timestep'], r['log_snr'])}"
        )
        if r["selected_on"] != split:
            s += f" ({r['selected_on']} {_num(r['selection_value'])})"
        if np.isfinite(r["zero_shot_mean"]):
            s += f" and {_num(r['zero_shot_mean'])} with the maps averaged over all cells"
        if np.isfinite(r["cross_attention"]):
            s += (
                f", against the cross-attention baseline's {_num(r['cross_attention'])} at "
                f"{_where(r['cross_attention_layer'], r['cross_attention_timestep'])}"
            )
            if np.isfinite(r["cross_attention_mean"]):
                s += f" ({_num(r['cross_attention_mean'])} averaged)"
        if np.isfinite(r["ridge_ceiling"]):
            s += f"; the supervised ridge ceiling is {_num(r['ridge_ceiling'])} at the same cell."
        else:
            s += f"; no `{CEILING_PROBE}` row of {r['base_model']} at that cell, so no ceiling."
        out.append(s)
    return " ".join(out)


def generic_heatmap_probe(df: pd.DataFrame) -> str | None:
    """The probe that the report's *Layer × timestep maps* draw, or None when the report draws none.

    The report draws those maps when a model has more than one timestep. They show a single per-cell probe for
    every model, :func:`analysis.common.cell_probe`: the registered per-cell probe with the most cells. The
    base backbone's ridge screen usually has more cells than the concept probe. In that case the concept
    models are not on those maps, and :func:`concept_section` draws their own."""
    ts = timestep_rows(main_metric_rows(df))
    if ts.empty or not (ts.groupby("model")["timestep"].nunique() >= 2).any():
        return None
    return cell_probe(df)


def plot_concept_heatmaps(df: pd.DataFrame, out_dir: Path, split: str) -> list[Path]:
    """The ``concept`` probe's layer × timestep maps of the concept models, saved as
    ``concept_heatmap_*``. The drawing is the generic heatmaps' own. When a ConceptAttention model and its
    cross-attention baseline share a task, they are drawn side by side on one colour scale, and a model whose
    every task is in such a comparison gets no figure of its own. Models with a single timestep have no map."""
    d = concept_rows(df)
    d = d[d["probe"] == CONCEPT_PROBE]
    per_model = timestep_rows(_main(d)).groupby("model")["timestep"].nunique()
    if per_model.empty or per_model.max() < 2:
        return []
    with collect_figures() as figures:
        plot_heatmaps(d, out_dir, split=split, probe=CONCEPT_PROBE)
    compared = {s.removeprefix("heatmap_compare_") for s in figures if s.startswith("heatmap_compare_")}
    repeats = {  # a model whose every task is a panel of a comparison: its own figure would repeat them
        f"heatmap_{slug(model)}"
        for model, tasks in _main(d).groupby("model")["task"]
        if set(tasks) <= compared
    }
    paths: list[Path] = []
    for stem, fig in figures.items():
        if stem in repeats:
            plt.close(fig)
        else:
            paths += save_figure(fig, out_dir, f"concept_{stem}")
    return [p for p in paths if p.suffix == ".png"]


def concept_section(
    df: pd.DataFrame, table: pd.DataFrame, rdir: Path, fig_dir: Path, split: str
) -> tuple[str, list[Path]]:
    """The report section's text and figures: the summary paragraph, where the layer × timestep maps of the
    zero-shot score are, the table, and the concept-map figures of the saved artifacts."""
    generic = generic_heatmap_probe(df)
    heat = [] if generic == CONCEPT_PROBE else plot_concept_heatmaps(df, fig_dir, split)
    if generic == CONCEPT_PROBE:
        where = (
            "The zero-shot score's layer × timestep maps are the *Layer × timestep maps* above, where the "
            f"`{CONCEPT_PROBE}` probe is the per-cell probe drawn."
        )
    elif heat:
        other = f" (those draw the `{generic}` probe for every model)" if generic else ""
        where = (
            "The zero-shot score's layer × timestep maps are the `concept_heatmap_*` figures below, not the "
            f"generic maps{other}. The red box marks the cell chosen on val."
        )
    else:
        where = "No layer × timestep map of the zero-shot score: the concept models have one timestep."
    maps = plot_concept_maps(rdir, fig_dir)
    what = (
        "The concept-map figures show the softmax over concepts for the first val images, one concept per row "
        "and one timestep per column (noisy → clean), at the layer the artifact was saved at. Their last row is "
        "the argmax over concepts."
        if maps
        else f"No concept-map figures: no `heads/*/{MAPS_STEM}.npy` was saved."
    )
    cols = list(REPORT_COLUMNS)
    if table["variant"].astype(str).ne("").any():
        cols.insert(cols.index("concepts") + 1, "variant")
    if table["score"].ne("ConceptAttention").any():
        cols.insert(cols.index("task"), "score")
    text = "\n\n".join(
        [
            concept_summary(table, split),
            f"{where} {what}",
            f"Full table: `{TABLE_FILE}`.\n\n" + markdown_table(table[cols]),
        ]
    )
    return text, heat + maps
