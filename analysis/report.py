"""Figures, tables and ``REPORT.md`` from a results directory (``probebench analyze RESULTS_DIR``).

Everything here reads the tidy result table (:mod:`probebench.core.results`) and, where present, the saved heads,
weight arrays, per-class IoUs and feature caches; nothing knows which backbone made them. Each analysis runs
only where its inputs exist; the report lists the ones that did not apply and why. Every number in the
generated summary is read from a table that is written beside the report (``best_cells.csv``,
``fusion_gains.csv``, ``combination_gains.csv``), so the two cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from analysis.common import (
    METRIC_LABELS,  # noqa: F401  (re-exported: older callers import it from here)
    best_row,
    colors_for,
    fmt_cell,
    main_metric_rows,
    metric_label,
    model_label,  # noqa: F401  (re-exported)
    pick_split,
    registered_cell_probes,
    save_figure,
    seed_mean,
    single_cells,
    timestep_rows,
    with_model,
)
from analysis.compare import (
    FUSION_MAIN,
    VERDICT_RULE,
    combination_gains,
    comparison_table,
    fusion_gains,
    markdown_table,
    plot_comparison,
    write_table,
)
from analysis.compare import best_cells as _best_cells
from analysis.complementarity import (
    cka_figures,
    complementarity_table,
    error_overlap_table,
    per_class_iou_gain,
    plot_complementarity,
    plot_error_overlap,
    plot_per_class_gain,
    read_per_class_iou,
)
from analysis.concepts import NOT_APPLICABLE as CONCEPT_NOT_APPLICABLE
from analysis.concepts import SECTION_TITLE as CONCEPT_SECTION
from analysis.concepts import TABLE_FILE as CONCEPT_TABLE
from analysis.concepts import concept_section, concept_table
from analysis.cues import NOT_APPLICABLE as CUES_NOT_APPLICABLE
from analysis.cues import SECTION_TITLE as CUES_SECTION
from analysis.cues import cue_gains, cue_summary
from analysis.curves import plot_log_snr_comparison, plot_timestep_curves
from analysis.findings import best_timesteps, findings_lines
from analysis.fusion_plots import load_weight_artifacts, plot_fusion
from analysis.heatmaps import plot_heatmaps
from analysis.layout import fit_texts
from analysis.predictions import plot_predictions
from probebench.core.errors import ProbebenchError
from probebench.core.results import RESULTS_FILE
from probebench.core.rundir import PER_CLASS_FILE, RunDir
from tasks.base import MAIN_METRIC

_markdown_table = markdown_table  # older name
FUSION_TABLE_COLUMNS = [
    "model",
    "task",
    "metric",
    "variant",
    "value",
    "baseline_probe",
    "baseline_value",
    "gain",
    "rel_gain_pct",
    "verdict",
    "n_seeds",
]
COMBO_TABLE_COLUMNS = [
    "task",
    "metric",
    "combination",
    "combination_probe",
    "combination_value",
    "member",
    "member_probe",
    "member_value",
    "gain",
    "rel_gain_pct",
    "verdict",
]
TIMESTEP_TABLE_COLUMNS = [
    "model",
    "task",
    "metric",
    "probe",
    "layer",
    "timestep",
    "log_snr",
    "val_value",
    "test_value",
    "test_std",
    "n_seeds",
]


def best_cells(df: pd.DataFrame, split: str = "test", select_split: str = "val") -> pd.DataFrame:
    """Per (dataset, model, task): the cell (probe, layer, timestep) that is best on ``select_split`` (mean
    over seeds) and its score on ``split``. Selecting on validation avoids picking a cell by its test score."""
    return _best_cells(df, ("model", "task"), split=split, select_split=select_split)


def plot_layer_curves(df: pd.DataFrame, out: Path, split: str = "test") -> list[Path]:
    """Main metric vs layer (best timestep per layer), one panel per task, one line per model; PNG and PDF."""
    d = single_cells(main_metric_rows(df, split))
    if d.empty:  # only multi-key cells (fusion over layers, combinations): no per-layer score
        return []
    probes = registered_cell_probes(d) or sorted(d["probe"].unique())
    d = seed_mean(d[d["probe"] == probes[0]])
    d["layer_index"] = d["layer"].astype(int)
    rows = []
    for _, g in d.groupby(["model", "task", "layer_index"], sort=True):
        higher = MAIN_METRIC.get(g["task"].iloc[0], ("", True))[1]
        rows.append(best_row(g, higher))
    d = pd.DataFrame(rows)
    tasks = [t for t in MAIN_METRIC if t in set(d["task"])]
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(4.6 * len(tasks), 3.8), squeeze=False, layout="constrained"
    )
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
            palette=colors_for(sorted(d["model"].unique())),
            ax=ax,
            errorbar=None,
        )
        metric, higher = MAIN_METRIC[task]
        ax.set_title(f"{task} — {metric} ({'higher' if higher else 'lower'} is better)")
        ax.set_xlabel("layer (block index)")
        ax.set_ylabel(f"{metric_label(metric)}, {split} split")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8, title=None)
    multi_t = d["timestep"].ne("none").any()
    fig.suptitle(
        f"Probe ({probes[0]}) score per layer{' (best timestep per layer)' if multi_t else ''} on "
        f"{', '.join(sorted(d['dataset'].unique()))}",
    )
    out.mkdir(parents=True, exist_ok=True)
    fit_texts(fig)
    return save_figure(fig, out, "layer_curves")


# -- the generated summary ------------------------------------------------------------------------------------
def _num(x: float) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.3f}"


def _signed(x: float) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:+.3f}"


def _pct(x: float) -> str:
    return "" if x is None or not np.isfinite(x) else f" ({x:+.1f} %)"


def best_per_task(best: pd.DataFrame) -> pd.DataFrame:
    """From :func:`best_cells`: the single best model's cell per (dataset, task), by the selection split."""
    if best.empty:
        return best
    sel = f"{best['selected_on'].iloc[0]}_value"
    rows = []
    for _, g in best.groupby(["dataset", "task"], sort=True):
        higher = bool(g["higher_is_better"].iloc[0])
        rows.append(best_row(g, higher, sel))
    return pd.DataFrame(rows).reset_index(drop=True)


def summary_lines(
    best: pd.DataFrame,
    fusion: pd.DataFrame,
    combos: pd.DataFrame,
    split: str,
    notes: list[str],
    timesteps: pd.DataFrame | None = None,
) -> list[str]:
    """The summary bullets; every number is formatted from a row of the given tables (3 decimals)."""
    v = f"{split}_value"
    out = []
    if len(best):
        sel_on = best["selected_on"].iloc[0]
        several = (best["n_seeds"] > 1).any()
        out += [
            f"Cells are selected on the **{sel_on}** split"
            + (" (by the mean over probe seeds where a probe was fitted with several)" if several else "")
            + f" and reported on the **{split}** split, here and in every finding and figure. Gains are "
            "improvements (positive = better, for lower-is-better metrics too), in the metric's units, with the "
            "relative change in brackets. " + VERDICT_RULE,
            "",
            "**Best cell per task**",
            "",
        ]
        for _, r in best_per_task(best).iterrows():
            ds = "" if best["dataset"].nunique() == 1 else f" on {r['dataset']}"
            extra = f" ({sel_on} {_num(r[f'{sel_on}_value'])})" if sel_on != split else ""
            out.append(
                f"- {r['task']}{ds} ({r['metric']}, {'higher' if r['higher_is_better'] else 'lower'} is better): "
                f"{r['model']} · {r['probe']} · {fmt_cell(r['layer'], r['timestep'])} → "
                f"{_num(r[v])} {split}{extra}."
            )
        out.append("")
    if timesteps is not None and len(timesteps):
        probe = timesteps["probe"].iloc[0]
        out += [f"**Best timestep per task** (the {probe} cell chosen on val; its {split} score)", ""]
        for model, g in timesteps.groupby("model", sort=True):
            cells = ", ".join(
                f"{r['task']} t={r['timestep']} (layer {r['layer']}, {_num(r['test_value'])})"
                for _, r in g.iterrows()
            )
            out.append(f"- {model}: {cells}.")
        out.append("")
    main = fusion[fusion["variant"] == FUSION_MAIN] if len(fusion) else fusion
    if len(main):
        kinds = sorted(set(main["baseline"]))
        head = (
            f"fusion-spatial vs {kinds[0]}"
            if len(kinds) == 1
            else "fusion-spatial vs the baseline on each line"
        )
        out += [f"**Fusion over the best single timestep** ({head})", ""]
        for _, r in main.iterrows():
            named = "" if len(kinds) == 1 else f"; baseline: {r['baseline']}"
            out.append(
                f"- {r['task']}, {r['model']}: fusion-spatial {_num(r['value'])} vs {r['baseline_probe']} "
                f"{_num(r['baseline_value'])} ({fmt_cell(r['baseline_layer'], r['baseline_timestep'])}{named}) "
                f"→ gain {_signed(r['gain'])} {r['metric']}{_pct(r['rel_gain_pct'])}: {r['verdict']}."
            )
        out.append("")
    if len(combos):
        out += ["**Combination over each backbone** (best cell of each model over all its probes)", ""]
        for _, r in combos.iterrows():
            out.append(
                f"- {r['task']}, {r['combination']} ({r['combination_probe']}, {_num(r['combination_value'])}) over "
                f"{r['member']} ({r['member_probe']}, {_num(r['member_value'])}): gain {_signed(r['gain'])} "
                f"{r['metric']}{_pct(r['rel_gain_pct'])}: {r['verdict']}."
            )
        out.append("")
    out += [f"- Note: {n}" for n in notes]
    return out


# -- optional inputs ------------------------------------------------------------------------------------------
def find_caches(rdir: Path, df: pd.DataFrame, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """The feature caches the results were fitted on (their train split), by model label, when they are
    still on disk: ``cache_dir`` or ``extract.cache_dir`` of ``config.yaml``, matched by ``cache_hash``."""
    if cache_dir is None:
        cache_dir = (RunDir(rdir).config().get("extract") or {}).get("cache_dir")
    root = Path(str(cache_dir)).expanduser() if cache_dir else None
    if root is None or not root.is_dir():
        return {}
    from backbones.store import FeatureCache

    found: dict[str, Any] = {}
    for (model, h), _ in with_model(df).groupby(["model", "cache_hash"], sort=True):
        if model in found or not h:
            continue
        for p in sorted(root.glob(f"*-{h}")):
            if (p / "manifest.json").is_file():
                found[model] = FeatureCache(p, expect_hash=h)
                break
    return found


@dataclass
class Section:
    title: str
    text: str = ""
    figures: list[Path] = field(default_factory=list)


def write_report(
    results_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    cka: bool = True,
    cka_max_images: int = 32,
    cka_pixels_per_image: int = 64,
) -> Path:
    """Every applicable figure and table, and ``REPORT.md`` with a generated summary; returns its path."""
    run_dir = RunDir(results_dir)
    rdir = run_dir.path
    df = run_dir.read_results()
    if df.empty:
        raise ProbebenchError(f"{rdir} has a results file but no rows.")
    df = with_model(df)
    split = pick_split(df)
    fig_dir = run_dir.figures_dir
    sections: list[Section] = []
    not_applicable: list[str] = []

    best = best_cells(df, split=split)
    best.to_csv(rdir / "best_cells.csv", index=False)
    timesteps = best_timesteps(df)  # (a)'s answer: chosen on val, scored on test
    comp = comparison_table(df, split=split)
    write_table(comp, rdir, "comparison")
    fusion = fusion_gains(df, split=split)
    combos, combo_notes = combination_gains(df, split=split)
    for name, table in (("fusion_gains.csv", fusion), ("combination_gains.csv", combos)):
        if len(table):
            table.to_csv(rdir / name, index=False)
        else:
            (rdir / name).unlink(missing_ok=True)  # a stale table from an earlier analysis would mislead

    sections.append(Section("Score per layer", figures=plot_layer_curves(df, fig_dir, split)))
    if df["model"].nunique() > 1 or df["probe"].nunique() > 1:
        sections.append(
            Section(
                "Comparison of models and probes",
                "Best cell per (model, task, probe); full table in `comparison.csv` / `comparison.md` "
                "(`gain_vs_random`: over the same backbone with random weights).",
                plot_comparison(comp, fig_dir, split=split),
            )
        )
    ts = timestep_rows(main_metric_rows(df))
    multi_t = ts.groupby("model")["timestep"].nunique() if len(ts) else pd.Series(dtype=int)
    if (multi_t >= 2).any():
        figs = plot_timestep_curves(df, fig_dir, split=split)
        figs_cmp = plot_log_snr_comparison(df, fig_dir, split=split)
        text = (
            "Best (layer, timestep) per model and task — the cell chosen on val, starred on the curves — with "
            f"its {split} score:\n\n" + markdown_table(timesteps[TIMESTEP_TABLE_COLUMNS])
            if len(timesteps)
            else ""
        )
        sections.append(Section("Where along the denoising trajectory", text, figs + figs_cmp))
        sections.append(
            Section("Layer × timestep maps", "Red box: best cell.", plot_heatmaps(df, fig_dir, split=split))
        )
    else:
        not_applicable.append(
            "Timestep curves, log-SNR comparison and layer × timestep maps: no backbone has more than one timestep."
        )
    concepts = concept_table(df, split=split)
    if len(concepts):
        concepts.to_csv(rdir / CONCEPT_TABLE, index=False)
        sections.append(Section(CONCEPT_SECTION, *concept_section(df, concepts, rdir, fig_dir, split)))
    else:
        (rdir / CONCEPT_TABLE).unlink(missing_ok=True)
        not_applicable.append(CONCEPT_NOT_APPLICABLE)
    cues = cue_gains(df, split=split)
    if len(cues):
        cues.to_csv(rdir / "cue_gains.csv", index=False)
        text = cue_summary(cues, split) + "\n\nFull table: `cue_gains.csv`."
        sections.append(Section(CUES_SECTION, text))
    else:
        (rdir / "cue_gains.csv").unlink(missing_ok=True)
        not_applicable.append(CUES_NOT_APPLICABLE)
    if len(fusion):
        sections.append(
            Section(
                "Fusion variants vs the best single timestep",
                "Every fusion variant against the same baseline (full table: `fusion_gains.csv`).\n\n"
                + markdown_table(fusion[FUSION_TABLE_COLUMNS]),
            )
        )
    else:
        not_applicable.append("Fusion gains: no fusion-* probe rows (or no single-timestep baseline).")
    if load_weight_artifacts(rdir):
        sections.append(Section("Learned fusion weights", figures=plot_fusion(rdir, fig_dir)))
    else:
        not_applicable.append(
            "Fusion-weight figures: no `heads/*/fusion_weights_*.npy` or `global_weights_*.npy`."
        )
    ctab = complementarity_table(df, split=split)
    if len(ctab):
        sections.append(
            Section(
                "Complementarity: single backbones vs their combination",
                markdown_table(combos[COMBO_TABLE_COLUMNS]) if len(combos) else "",
                plot_complementarity(ctab, fig_dir, split=split),
            )
        )
    else:
        not_applicable.append("Complementarity and combination gains: no combination (`a+b`) backbone rows.")
    if run_dir.has_per_class_iou():
        pc = read_per_class_iou(rdir)
        pairs = []
        for _, c in combos.drop_duplicates(["combination", "member"]).iterrows() if len(combos) else []:
            pairs.append((c["combination"], c["member"]))
        for b, g in pc.groupby("backbone"):
            ws = set(g["weights"])
            pairs += [(f"{b} ({w})", f"{b} (random)") for w in sorted(ws - {"random"}) if "random" in ws]
        have = set(pc["model"])
        gains = [per_class_iou_gain(pc, a, b) for a, b in pairs if a in have and b in have]
        figs = plot_per_class_gain(gains, fig_dir)
        if figs:
            sections.append(Section("Per-class IoU gain", figures=figs))
        else:
            not_applicable.append(
                "Per-class IoU gain: no (combination, member) or (trained, random) pair in it."
            )
    else:
        not_applicable.append(f"Per-class IoU gain: no `{PER_CLASS_FILE}` in the results directory.")
    eo = error_overlap_table(rdir)
    if len(eo):
        eo.to_csv(rdir / "error_overlap.csv", index=False)
        sections.append(
            Section("Error overlap", "Table: `error_overlap.csv`.", plot_error_overlap(eo, fig_dir))
        )
    else:
        (rdir / "error_overlap.csv").unlink(missing_ok=True)
        not_applicable.append(
            "Error overlap: fewer than two models with saved predictions on the same images."
        )
    caches = find_caches(rdir, df, cache_dir) if cka else {}
    if caches:
        figs, texts = cka_figures(caches, df, fig_dir, cka_max_images, cka_pixels_per_image)
        if figs:
            sections.append(
                Section(
                    "Representation similarity (linear CKA, train-split features)",
                    "\n".join(f"- {t}" for t in texts),
                    figs,
                )
            )
        else:
            not_applicable.append(
                "CKA: each cached model has a single feature map and no pair shares images."
            )
    else:
        not_applicable.append("CKA: the feature caches are not on disk (or `cka=False`).")
    preds = plot_predictions(rdir)
    if preds:
        sections.append(Section("Predictions of the best cells", figures=preds))

    findings = findings_lines(df, combos, split, run_dir.backbone_notes(), run_dir.stage_roles())
    runs = ", ".join(sorted(df["run"].unique()))
    sweep = run_dir.sweep_name()
    title = f"sweep {sweep} ({df['run'].nunique()} cells: {runs})" if sweep else runs
    commit = str(df["git_commit"].iloc[0])[:12]
    cols = ["model", "task", "probe", "layer", "timestep", "metric"]
    cols += [c for c in best.columns if c.endswith("_value")] + [f"{split}_std", "n_seeds"]
    if best["dataset"].nunique() > 1:
        cols.append("dataset")
    lines = [
        f"# probebench report — {title}",
        "",
        f"{len(df)} result rows; datasets: {', '.join(sorted(df['dataset'].unique()))}; "
        f"probes: {', '.join(sorted(df['probe'].unique()))}; seeds: "
        f"{', '.join(map(str, sorted(df['seed'].unique())))}; config hash(es): "
        f"{', '.join(sorted(df['config_hash'].unique()))}; git commit: {commit}.",
        "",
        "## Summary",
        "",
        *summary_lines(best, fusion, combos, split, combo_notes, timesteps),
        *(["## Findings", "", *findings, ""] if findings else []),
        "## Best cell per model and task",
        "",
        "The cell (probe, layer, timestep) is chosen on the validation split; the test score is reported beside "
        "it.",
        "",
        markdown_table(best[cols]),
        "",
    ]
    for s in sections:
        if not (s.text or s.figures):
            continue
        lines += [f"## {s.title}", ""]
        if s.text:
            lines += [s.text, ""]
        for f in s.figures:
            if f.suffix == ".png":
                lines += [f"![{f.stem}]({f.relative_to(rdir).as_posix()})", ""]
    if not_applicable:
        lines += ["## Not applicable to these results", "", *[f"- {n}" for n in not_applicable], ""]
    tables = [
        t
        for t in (
            "best_cells.csv",
            "comparison.csv",
            "fusion_gains.csv",
            "combination_gains.csv",
            "error_overlap.csv",
            CONCEPT_TABLE,
            "cue_gains.csv",
        )
        if (rdir / t).is_file()
    ]
    lines += [
        f"Full table: `{RESULTS_FILE}`; tables: {', '.join(f'`{t}`' for t in tables)}; resolved config: "
        "`config.yaml`. Figures are in `figures/` as PNG and PDF.",
        "",
    ]
    report = rdir / "REPORT.md"
    report.write_text("\n".join(lines))
    return report
