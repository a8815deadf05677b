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
    """"backbone (weights)" — the legend names both."""
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
        hit = rep[(rep["model"] == model) & (rep["task"] == task) & (rep["layer"] == best["layer"])
                  & (rep["timestep"] == best["timestep"]) & (rep["probe"] == best["probe"])]
        rows.append({"model": model, "task": task, "probe": best["probe"], "layer": best["layer"],
                     "timestep": best["timestep"], "metric": best["metric"],
                     f"{select_split}_value": float(best["value"]),
                     f"{split}_value": float(hit["value"].iloc[0]) if len(hit) else float("nan")})
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
        sns.lineplot(data=g, x="layer_index", y="value", hue="model", style="model", markers=True, dashes=False,
                     palette=PALETTE, ax=ax, errorbar=None)
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
        f"Full table: `{Path('results.csv')}`; resolved config: `config.yaml`.",
        "",
    ]
    report = rdir / "REPORT.md"
    report.write_text("\n".join(lines))
    best.to_csv(rdir / "best_cells.csv", index=False)
    return report
