"""Figures, tables and ``REPORT.md`` from a results directory (``probebench analyze RESULTS_DIR``).

Everything here reads the tidy result table (:mod:`probes.results`) and, where present, the saved heads,
weight arrays, per-class IoUs and feature caches; nothing knows which backbone made them. Each analysis runs
only where its inputs exist; the report lists the ones that did not apply and why. Every number in the
generated summary is read from a table that is written beside the report (``best_cells.csv``,
``fusion_gains.csv``, ``combination_gains.csv``), so the two cannot disagree.
"""

from __future__ import annotations

import json
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
    PER_CELL_PROBES,
    best_row,
    cell_of,
    colors_for,
    fmt_cell,
    head_dirs,
    main_metric_rows,
    metric_label,
    model_label,  # noqa: F401  (re-exported)
    pick_split,
    save_figure,
    seed_mean,
    single_cells,
    slug,
    timestep_rows,
    with_model,
)
from analysis.compare import (
    FUSION_MAIN,
    combination_gains,
    combination_members,
    comparison_table,
    fusion_gains,
    markdown_table,
    plot_comparison,
    write_table,
)
from analysis.compare import best_cells as _best_cells
from analysis.complementarity import (
    PER_CLASS_FILE,
    cka_matrix,
    cka_stem,
    complementarity_table,
    error_overlap_table,
    per_class_iou_gain,
    plot_cka_matrix,
    plot_complementarity,
    plot_error_overlap,
    plot_per_class_gain,
    read_per_class_iou,
)
from analysis.curves import (
    best_timestep_table,
    curve_table,
    plot_log_snr_comparison,
    plot_timestep_curves,
)
from analysis.findings import findings_lines
from analysis.fusion_plots import load_weight_artifacts, plot_fusion
from analysis.heatmaps import plot_heatmaps
from probebench.errors import ProbebenchError
from probes.results import RESULTS_FILE, read_results
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
    probes = [p for p in PER_CELL_PROBES if (d["probe"] == p).any()] or sorted(d["probe"].unique())
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
    return save_figure(fig, out, "layer_curves")


def plot_predictions(rdir: Path, num_rows: int = 4) -> list[Path]:
    """For each model with saved heads: input, ground truth and prediction of every task's best cell."""
    paths = []
    for d in head_dirs(rdir):
        cell = cell_of(d)
        kinds = [k for k in MAIN_METRIC if (d / f"{k}_pred.npy").is_file()]
        if not kinds or not (d / "images.npy").is_file():
            continue
        images = np.load(d / "images.npy")[:num_rows]
        n = len(images)
        fig, axes = plt.subplots(
            n,
            1 + 2 * len(kinds),
            figsize=(1.7 * (1 + 2 * len(kinds)), 1.75 * n + 0.6),
            squeeze=False,
            layout="constrained",
        )
        title = d.name
        for c, kind in enumerate(kinds):
            meta = json.loads((d / f"{kind}.json").read_text()) if (d / f"{kind}.json").is_file() else {}
            if "backbone" in meta:
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
            where = fmt_cell(meta.get("layer", "?"), meta.get("timestep", "none"))
            axes[0, 1 + 2 * c].set_title(f"{kind}\ntarget", fontsize=9)
            axes[0, 2 + 2 * c].set_title(f"{kind}\nprobe ({where})", fontsize=9)
        for r in range(n):
            axes[r, 0].imshow(np.clip(images[r], 0, 1))
        axes[0, 0].set_title("input", fontsize=9)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        title = f"{cell}: {title}" if cell else title
        fig.suptitle(f"{title}: best cell per task (test images)", fontsize=10)
        paths += save_figure(fig, rdir / "figures", f"predictions_{slug(cell) + '_' if cell else ''}{d.name}")
    return [p for p in paths if p.suffix == ".png"]


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
    best: pd.DataFrame, fusion: pd.DataFrame, combos: pd.DataFrame, split: str, notes: list[str]
) -> list[str]:
    """The summary bullets; every number is formatted from a row of the given tables (3 decimals)."""
    v = f"{split}_value"
    out = []
    if len(best):
        sel_on = best["selected_on"].iloc[0]
        seeds = sorted(set(best["n_seeds"]))
        out += [
            f"Cells are selected on the **{sel_on}** split (mean over "
            f"{'/'.join(map(str, seeds))} seed(s)) and reported on the **{split}** split. Gains are improvements "
            "(positive = better, for lower-is-better metrics too), in the metric's units, with the relative "
            "change in brackets.",
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
                f"→ gain {_signed(r['gain'])} {r['metric']}{_pct(r['rel_gain_pct'])}."
            )
        out.append("")
    if len(combos):
        out += ["**Combination over each backbone** (best cell of each model over all its probes)", ""]
        for _, r in combos.iterrows():
            out.append(
                f"- {r['task']}, {r['combination']} ({r['combination_probe']}, {_num(r['combination_value'])}) over "
                f"{r['member']} ({r['member_probe']}, {_num(r['member_value'])}): gain {_signed(r['gain'])} "
                f"{r['metric']}{_pct(r['rel_gain_pct'])}."
            )
        out.append("")
    out += [f"- Note: {n}" for n in notes]
    return out


# -- optional inputs ------------------------------------------------------------------------------------------
def find_caches(rdir: Path, df: pd.DataFrame, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """The feature caches the results were fitted on (their train split), by model label, when they are
    still on disk: ``cache_dir`` or ``extract.cache_dir`` of ``config.yaml``, matched by ``cache_hash``."""
    if cache_dir is None:
        cfg = rdir / "config.yaml"
        if not cfg.is_file():
            return {}
        import yaml

        cache_dir = ((yaml.safe_load(cfg.read_text()) or {}).get("extract") or {}).get("cache_dir")
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


def _cka_sections(
    caches: dict[str, Any], df: pd.DataFrame, fig_dir: Path, max_images: int, pixels_per_image: int
) -> tuple[list[Path], list[str]]:
    """Within-model CKA matrices (models with ≥ 2 keys) and across-model ones (combination members, or every
    pair when there are at most 3 models) on a small pixel sample."""
    # the unbiased (minibatch) estimator: with few pixels relative to the channel count the exact, biased
    # estimate is pulled towards 1 (its bias is of order d/n)
    kw = {"max_images": max_images, "pixels_per_image": pixels_per_image, "method": "minibatch"}
    figs: list[Path] = []
    texts: list[str] = []
    for model, cache in sorted(caches.items()):
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
    d = with_model(df)
    pairs = []
    for _, c in d.drop_duplicates("model").iterrows():
        if "+" in c["backbone"]:
            mem = [f"{b} ({w})" for b, w in combination_members(c["backbone"], c["weights"])]
            pairs += [(a, b) for i, a in enumerate(mem) for b in mem[i + 1 :] if a in caches and b in caches]
    if not pairs and len(models) <= 3:
        pairs = [(a, b) for i, a in enumerate(models) for b in models[i + 1 :]]
    for a, b in pairs:
        if list(caches[a].image_ids) != list(caches[b].image_ids):
            continue
        m = cka_matrix(caches[a], other=caches[b], **kw)
        figs += plot_cka_matrix(m, fig_dir, cka_stem(f"{a}_vs_{b}"), title=f"Linear CKA: {a} vs {b}")
        texts.append(
            f"{a} vs {b}: {m.attrs['method']} (unbiased HSIC) linear CKA over {m.attrs['n_pixels']} pixels on "
            f"a {m.attrs['grid']} grid."
        )
    return figs, texts


def write_report(
    results_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    cka: bool = True,
    cka_max_images: int = 32,
    cka_pixels_per_image: int = 64,
) -> Path:
    """Every applicable figure and table, and ``REPORT.md`` with a generated summary; returns its path."""
    rdir = Path(results_dir)
    if rdir.is_dir() and not (rdir / RESULTS_FILE).is_file():
        listing = sorted(p.name for p in rdir.iterdir())
        raise ProbebenchError(
            f"{rdir} has no {RESULTS_FILE}; it holds: {listing or 'nothing (empty directory)'}. "
            "Run `probebench run` or `probebench fit` first."
        )
    df = read_results(rdir)
    if df.empty:
        raise ProbebenchError(f"{rdir} has a results file but no rows.")
    df = with_model(df)
    split = pick_split(df)
    fig_dir = rdir / "figures"
    sections: list[Section] = []
    not_applicable: list[str] = []

    best = best_cells(df, split=split)
    best.to_csv(rdir / "best_cells.csv", index=False)
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
        bt = best_timestep_table(curve_table(df, split=split))
        figs_cmp = plot_log_snr_comparison(df, fig_dir, split=split)
        sections.append(
            Section(
                "Where along the denoising trajectory",
                "Best (layer, timestep) per model and task on the curves (★):\n\n" + markdown_table(bt),
                figs + figs_cmp,
            )
        )
        sections.append(
            Section("Layer × timestep maps", "Red box: best cell.", plot_heatmaps(df, fig_dir, split=split))
        )
    else:
        not_applicable.append(
            "Timestep curves, log-SNR comparison and layer × timestep maps: no backbone has more than one timestep."
        )
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
    if (rdir / PER_CLASS_FILE).is_file():
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
        figs, texts = _cka_sections(caches, df, fig_dir, cka_max_images, cka_pixels_per_image)
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

    findings = findings_lines(df, combos, split)
    runs = ", ".join(sorted(df["run"].unique()))
    commit = str(df["git_commit"].iloc[0])[:12]
    cols = ["model", "task", "probe", "layer", "timestep", "metric"]
    cols += [c for c in best.columns if c.endswith("_value")] + [f"{split}_std", "n_seeds"]
    if best["dataset"].nunique() > 1:
        cols.append("dataset")
    lines = [
        f"# probebench report — {runs}",
        "",
        f"{len(df)} result rows; datasets: {', '.join(sorted(df['dataset'].unique()))}; "
        f"probes: {', '.join(sorted(df['probe'].unique()))}; seeds: "
        f"{', '.join(map(str, sorted(df['seed'].unique())))}; config hash(es): "
        f"{', '.join(sorted(df['config_hash'].unique()))}; git commit: {commit}.",
        "",
        "## Summary",
        "",
        *summary_lines(best, fusion, combos, split, combo_notes),
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
