"""Shared helpers of the analysis modules: row selection with helpful errors, seed aggregation, the log-SNR
axis (with the clean image at +∞), timestep labels, and saving figures as PNG + PDF.

Nothing here knows which backbone made a row: models are told apart only by their ``backbone`` and
``weights`` columns, and diffusion models only by having timesteps other than ``none``.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from probebench.core.errors import ProbebenchError, UnknownNameError
from tasks.base import HIGHER_IS_BETTER, MAIN_METRIC

PALETTE = "colorblind"  # seaborn's colour-blind-safe qualitative palette
SEQUENTIAL = "viridis"  # perceptually uniform, colour-blind safe
METRIC_LABELS = {
    "mIoU": "mIoU (fraction)",
    "pixel_acc": "pixel accuracy (fraction)",
    "maxF": "max F-measure (fraction)",
    "MAE": "MAE (fraction)",
    "rmse": "RMSE (m)",
    "abs_rel": "AbsRel (fraction)",
    "delta1": "δ<1.25 (fraction)",
}
LOG_SNR_LABEL = "log-SNR ln(α²/σ²), dimensionless (→ cleaner)"
NATIVE_T_LABEL = "native timestep (model units; 0 = clean)"
DPI = 130  # PNG resolution; tests lower it for speed
FUSION_PREFIX = "fusion-"


def colors_for(names: Sequence[str]) -> dict[str, Any]:
    """Colour-blind-safe colours for named series, ordered so that the first ones are far apart (blue,
    vermillion, green, pink, …; orange and vermillion only together beyond four series)."""
    import seaborn as sns

    pal = sns.color_palette(PALETTE, 10)
    order = [0, 3, 2, 4, 1, 9, 5, 7, 6, 8]
    return {n: pal[order[i % 10]] for i, n in enumerate(names)}


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def higher_is_better(metric: str) -> bool:
    """Direction of a metric (every metric name in ``tasks.base.HIGHER_IS_BETTER``)."""
    if metric not in HIGHER_IS_BETTER:
        raise UnknownNameError("metric", metric, HIGHER_IS_BETTER)
    return HIGHER_IS_BETTER[metric]


def best_index(values: pd.Series, higher: bool) -> Any:
    """Index label of the best value: the largest if ``higher`` (mIoU, maxF), else the smallest (RMSE)."""
    return values.idxmax() if higher else values.idxmin()


def best_row(frame: pd.DataFrame, higher: bool, column: str = "value") -> pd.Series:
    """The row of ``frame`` with the best ``column`` (first one on ties)."""
    return frame.loc[best_index(frame[column], higher)]


def model_label(df: pd.DataFrame) -> pd.Series:
    """ "backbone (weights)" — every legend names both."""
    return df["backbone"].astype(str) + " (" + df["weights"].astype(str) + ")"


SETUP_KEYS = ["dataset", "backbone", "weights", "probe"]  # one setup per these, or the labels tell them apart


def with_model(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a ``model`` column: ``backbone (weights)``, extended where the table holds rows of several
    setups (``setup_hash``) for the same backbone, weights and probe — e.g. sweep cells that change the data or a
    probe's parameters — so that tables never average two configs: ``… [run]`` when each setup is one run's,
    else ``… [setup <hash>]``."""
    if "model" in df.columns:
        return df
    out = df.copy()
    if not len(out):
        out["model"] = pd.Series(dtype="string")
        return out
    out["model"] = model_label(out)
    if "setup_hash" not in out.columns:
        return out
    setups = out.groupby(SETUP_KEYS, dropna=False)["setup_hash"].transform("nunique")
    mixed = (setups > 1).to_numpy()
    if mixed.any():
        runs_per_setup = out.groupby("setup_hash")["run"].transform("nunique")
        setups_per_run = out.groupby("run")["setup_hash"].transform("nunique")
        own_run = ((runs_per_setup == 1) & (setups_per_run == 1)).to_numpy()
        tag = np.where(own_run, out["run"].astype(str), "setup " + out["setup_hash"].astype(str))
        out.loc[mixed, "model"] = (
            out.loc[mixed, "model"] + " [" + pd.Series(tag, index=out.index)[mixed] + "]"
        )
    return out


def _check_values(df: pd.DataFrame, column: str, wanted: Iterable[str] | None, what: str) -> None:
    if wanted is None:
        return
    have = sorted({str(v) for v in df[column].unique()})
    for w in [wanted] if isinstance(wanted, str) else wanted:
        if str(w) not in have:
            raise UnknownNameError(what, str(w), have, extra="(these are the values in the results table)")


def select(
    df: pd.DataFrame,
    *,
    backbone: str | Sequence[str] | None = None,
    weights: str | Sequence[str] | None = None,
    model: str | Sequence[str] | None = None,
    task: str | Sequence[str] | None = None,
    metric: str | Sequence[str] | None = None,
    split: str | Sequence[str] | None = None,
    probe: str | Sequence[str] | None = None,
    dataset: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """Rows matching every given filter; a value that is not in the table raises a :class:`ProbebenchError`
    that lists the values that are there (so a typo is obvious)."""
    df = with_model(df)
    if df.empty:
        raise ProbebenchError("The results table is empty; there is nothing to select from.")
    mask = pd.Series(True, index=df.index)
    for column, wanted in (
        ("backbone", backbone),
        ("weights", weights),
        ("model", model),
        ("task", task),
        ("metric", metric),
        ("split", split),
        ("probe", probe),
        ("dataset", dataset),
    ):
        _check_values(df, column, wanted, column)
        if wanted is not None:
            mask &= df[column].isin([wanted] if isinstance(wanted, str) else list(wanted))
    return df[mask.to_numpy()]


def resolve_models(df: pd.DataFrame, wanted: str | Sequence[str] | None) -> list[str] | None:
    """Model labels (``backbone (weights)``) for ``wanted`` items that are labels or backbone names; an item
    that is neither raises an error listing the models and backbones in the table."""
    if wanted is None:
        return None
    df = with_model(df)
    labels = sorted(set(df["model"]))
    out: list[str] = []
    for w in [wanted] if isinstance(wanted, str) else wanted:
        if w in labels:
            out.append(w)
        elif (df["backbone"] == w).any():
            out += sorted(set(df[df["backbone"] == w]["model"]))
        else:
            raise UnknownNameError(
                "backbone or model",
                str(w),
                labels + sorted(set(df["backbone"])),
                extra="(models are named 'backbone (weights)')",
            )
    return list(dict.fromkeys(out))


def main_metric_rows(df: pd.DataFrame, split: str | None = None, metric: str | None = None) -> pd.DataFrame:
    """Rows of each task's main metric (or of ``metric`` for every task that has it), on ``split`` if given."""
    df = with_model(df)
    if metric is not None:
        out = select(df, metric=metric)
    else:
        keep = np.zeros(len(df), dtype=bool)
        for task, (m, _) in MAIN_METRIC.items():
            keep |= ((df["task"] == task) & (df["metric"] == m)).to_numpy()
        out = df[keep]
    if split is not None:
        out = out[(out["split"] == split).to_numpy()]
    if out.empty:
        raise ProbebenchError(
            f"No {'main-metric' if metric is None else repr(metric)} rows"
            f"{'' if split is None else f' on split {split!r}'}. Splits present: {sorted(df['split'].unique())}; "
            f"tasks: {sorted(df['task'].unique())}; metrics: {sorted(df['metric'].unique())}."
        )
    return out.copy()


def pick_split(df: pd.DataFrame, preferred: Sequence[str] = ("test", "val")) -> str:
    """The first of ``preferred`` present in the table (figures default to test, then val)."""
    have = set(df["split"].unique())
    for s in preferred:
        if s in have:
            return s
    raise ProbebenchError(f"None of the splits {list(preferred)} is in the results; present: {sorted(have)}.")


def is_multi(values: pd.Series) -> np.ndarray:
    """``"1+4"`` / ``"0+0.25"``: several layers or timesteps in one cell."""
    return values.astype(str).str.contains("+", regex=False).to_numpy()


def single_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Rows that score one layer at one timestep (``none`` included)."""
    return df[~is_multi(df["layer"]) & ~is_multi(df["timestep"])]


def timestep_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Single cells at a real timestep (diffusion backbones), with numeric ``t_native`` and ``log_snr``."""
    d = single_cells(df)
    d = d[(d["timestep"] != "none").to_numpy()].copy()
    d["t_native"] = pd.to_numeric(d["timestep"], errors="coerce")
    d["layer_index"] = pd.to_numeric(d["layer"], errors="coerce")
    return d


def registered_cell_probes(df: pd.DataFrame) -> list[str]:
    """The probes of ``df`` (in the order they first appear) that are registered probes whose class declares
    ``per_cell`` (each fit scores one (layer, timestep) cell, e.g. the ridge screen and the linear probe) — the
    probes whose cells are comparable with a fusion over cells, read from the probe classes, not their names."""
    from probes import PROBES, probe_class

    names = set(PROBES.names())
    return [str(p) for p in dict.fromkeys(df["probe"]) if p in names and probe_class(str(p)).per_cell]


def cell_probe(df: pd.DataFrame, probe: str | None = None) -> str:
    """The per-cell probe to draw layer × timestep maps with: ``probe`` if given, else the per-cell probe
    (:func:`registered_cell_probes`; fitted ones before zero-shot ones such as ``concept``) with the most cells at
    a timestep (the first in the table on ties), else the
    probe with the most single (layer, timestep) cells (e.g. a per-cell stage under its own label)."""
    d = timestep_rows(df)
    if probe is not None:
        _check_values(df, "probe", probe, "probe")
        return probe
    if d.empty:
        raise ProbebenchError(
            "No single (layer, timestep) cells with a timestep in the results (no diffusion backbone rows); "
            f"probes present: {sorted(df['probe'].unique())}."
        )
    cells = d.groupby("probe", sort=False)[["layer", "timestep"]].apply(lambda g: len(g.drop_duplicates()))
    per_cell = [p for p in registered_cell_probes(df) if p in cells.index]
    from probes import probe_class

    fitted = [
        p for p in per_cell if not probe_class(p).zero_shot
    ]  # a fitted screen before a zero-shot reading
    per_cell = fitted or per_cell
    if per_cell:
        return str(cells[per_cell].idxmax())
    return str(cells.sort_index().idxmax())


CELL_KEYS = [
    "dataset",
    "model",
    "backbone",
    "weights",
    "task",
    "probe",
    "layer",
    "timestep",
    "metric",
    "split",
]


def seed_mean(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell (``CELL_KEYS``) and setup: mean, std (ddof=1, NaN for one fit) and count over seeds.

    Only rows of one setup (``setup_hash``: everything but the seeds) are aggregated; a replicate is one fit
    (``config_hash``: the setup with its run seed and probe seed), so a sweep's ``seed`` axis and a run's probe
    seeds both count, and rows of two configs never do."""
    df = with_model(df)
    if df.empty:
        return pd.DataFrame(columns=[*CELL_KEYS, "log_snr", "value", "std", "n_seeds"])
    keys = CELL_KEYS + (["setup_hash"] if "setup_hash" in df.columns else [])
    fit = (df["run"].astype(str) if "run" in df else "") + "#" + df["seed"].astype(str)
    if "config_hash" in df.columns:
        fit = fit + "#" + df["config_hash"].astype(str)
    df = df.assign(_replicate=fit)
    g = df.groupby(keys, sort=True, dropna=False)
    out = g.agg(
        value=("value", "mean"),
        std=("value", "std"),
        n_seeds=("_replicate", "nunique"),
        log_snr=("log_snr", "first"),
    ).reset_index()
    return out


def error_bar_phrase(
    n_seeds: pd.Series, bars: str = "error bars", single: str = "every point is a single fit"
) -> str:
    """What a figure's error bars are, from the plotted rows' ``n_seeds``: "error bars: std over 3 probe seeds"
    (``up to 3`` when rows differ; single fits named), or that there are none — never a seed std for one fit."""
    n = pd.to_numeric(pd.Series(list(n_seeds)), errors="coerce").dropna()
    several = sorted({int(k) for k in n if k > 1})
    if not several:
        return f"{single}, no error bars"
    out = f"{bars}: std over {'up to ' if len(several) > 1 else ''}{several[-1]} probe seeds"
    return out + ("; single fits have none" if (n <= 1).any() else "")


# -- the log-SNR axis -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SnrAxis:
    """Positions on a log-SNR axis where ±∞ (clean image / pure noise) sit at labelled edge positions."""

    lo: float
    hi: float
    pos_inf: float
    neg_inf: float
    has_pos_inf: bool
    has_neg_inf: bool

    @classmethod
    def from_values(cls, values: Iterable[float]) -> SnrAxis:
        v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))])
        v = v.astype(float)
        finite = v[np.isfinite(v)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        gap = max(0.15 * (hi - lo), 1.0)
        return cls(lo, hi, hi + gap, lo - gap, bool(np.isposinf(v).any()), bool(np.isneginf(v).any()))

    def __call__(self, x: Any) -> Any:
        a = np.asarray(x, dtype=float)
        out = np.where(np.isposinf(a), self.pos_inf, np.where(np.isneginf(a), self.neg_inf, a))
        return out if out.ndim else float(out)

    def decorate(self, ax: plt.Axes) -> None:
        """Finite ticks from matplotlib plus labelled ticks at the ±∞ positions and a break marker."""
        ax.set_xlabel(LOG_SNR_LABEL)
        if not (self.has_pos_inf or self.has_neg_inf):
            return
        ticks = [t for t in ax.get_xticks() if self.lo - 0.5 <= t <= self.hi + 0.5]
        labels = [format(t, "g") for t in ticks]
        if self.has_pos_inf:
            ticks.append(self.pos_inf)
            labels.append("clean\n(+∞)")
            ax.axvline((self.hi + self.pos_inf) / 2, color="0.6", lw=0.8, ls=":")
        if self.has_neg_inf:
            ticks.insert(0, self.neg_inf)
            labels.insert(0, "noise\n(−∞)")
            ax.axvline((self.lo + self.neg_inf) / 2, color="0.6", lw=0.8, ls=":")
        ax.set_xticks(ticks)
        ax.set_xticklabels(labels)
        span = self.pos_inf if self.has_pos_inf else self.hi
        base = self.neg_inf if self.has_neg_inf else self.lo
        pad = 0.04 * max(span - base, 1.0)
        ax.set_xlim(base - pad, span + pad)


def t_label(timestep: Any, log_snr: Any = None) -> str:
    """``t=500`` with its log-SNR below (``clean`` / ``noise`` for ±∞) for axis ticks."""
    t = f"t={timestep}"
    try:
        s = float(log_snr)
    except (TypeError, ValueError):
        return t
    if math.isnan(s):
        return t
    if math.isinf(s):
        return f"{t}\n({'clean' if s > 0 else 'noise'})"
    return f"{t}\n({s:+.1f})"


def fmt_cell(layer: str, timestep: str) -> str:
    return f"layer {layer}" + ("" if str(timestep) == "none" else f", t={timestep}")


_COLLECTING: contextvars.ContextVar[dict[str, plt.Figure] | None] = contextvars.ContextVar(
    "probebench_figures", default=None
)


@contextlib.contextmanager
def collect_figures() -> Iterator[dict[str, plt.Figure]]:
    """Within the block, :func:`save_figure` hands every figure to the returned ``{stem: Figure}`` instead of
    writing and closing it: how the notebook API (``probebench.figures``) returns the report's figures."""
    figures: dict[str, plt.Figure] = {}
    token = _COLLECTING.set(figures)
    try:
        yield figures
    finally:
        _COLLECTING.reset(token)


def save_figure(fig: plt.Figure, out_dir: Path, stem: str, dpi: int | None = None) -> list[Path]:
    """Save ``fig`` as ``<stem>.png`` and ``<stem>.pdf`` under ``out_dir``; returns both paths (PNG first).
    Inside :func:`collect_figures` nothing is written: the figure is collected, open, and ``[]`` returned."""
    collecting = _COLLECTING.get()
    if collecting is not None:
        collecting[stem] = fig
        return []
    dpi = dpi or DPI
    out_dir.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in stem)
    paths = [out_dir / f"{safe}.png", out_dir / f"{safe}.pdf"]
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    # constrained layout already fits everything in the canvas; "tight" would render each file twice
    tight = None if isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine) else "tight"
    for p in paths:
        fig.savefig(p, dpi=dpi, bbox_inches=tight)
    plt.close(fig)
    return paths


def slug(text: str) -> str:
    """File-system name of a model label: ``flux.1-dev (default)`` → ``flux.1-dev-default``."""
    text = text.replace(" (", "-").replace(")", "")
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in text)
