"""The report's figures as functions that return matplotlib figures (the notebook API: ``probebench.figures``).

Each function takes the result rows (a DataFrame from ``probebench.load_results``, or a results directory /
``results.csv`` path) or a results directory, draws exactly what ``probebench analyze`` draws, and returns
``{name: Figure}`` — one entry per figure the report would save (e.g. one per model), open and unsaved. The
drawing code is the report's own (:func:`analysis.common.collect_figures` keeps it from writing files).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from analysis.common import collect_figures, pick_split, with_model
from analysis.compare import comparison_table, load_results, plot_comparison
from analysis.complementarity import (
    complementarity_table,
    error_overlap_table,
    plot_complementarity,
    plot_error_overlap,
)
from analysis.concepts import plot_concept_maps
from analysis.curves import plot_log_snr_comparison, plot_timestep_curves
from analysis.fusion_plots import plot_fusion
from analysis.heatmaps import plot_heatmaps
from analysis.predictions import plot_predictions

Rows = pd.DataFrame | str | Path
_NOWHERE = Path("figures")  # never written: figures are collected, not saved


def _rows(rows: Rows) -> pd.DataFrame:
    return with_model(rows) if isinstance(rows, pd.DataFrame) else load_results(rows)


def _collect(draw: Callable[[], Any]) -> dict[str, plt.Figure]:
    with collect_figures() as figures:
        draw()
    return figures


def layer_curves(rows: Rows, split: str | None = None) -> dict[str, plt.Figure]:
    """Score per layer, per model and task (the report's "Score per layer")."""
    from analysis.report import plot_layer_curves  # the report imports this module's siblings, not this one

    df = _rows(rows)
    return _collect(lambda: plot_layer_curves(df, _NOWHERE, split or pick_split(df)))


def timestep_curves(rows: Rows, split: str | None = None) -> dict[str, plt.Figure]:
    """Metric vs timestep per layer, one figure per model (the val-chosen cell starred)."""
    df = _rows(rows)
    return _collect(lambda: plot_timestep_curves(df, _NOWHERE, split=split))


def log_snr_comparison(rows: Rows, split: str | None = None) -> dict[str, plt.Figure]:
    """Every model's best layer against log-SNR, one panel per task."""
    df = _rows(rows)
    return _collect(lambda: plot_log_snr_comparison(df, _NOWHERE, split=split))


def heatmaps(rows: Rows, split: str | None = None) -> dict[str, plt.Figure]:
    """Layer × timestep maps per model and task (the best cell boxed)."""
    df = _rows(rows)
    return _collect(lambda: plot_heatmaps(df, _NOWHERE, split=split))


def comparison(rows: Rows, split: str | None = None) -> dict[str, plt.Figure]:
    """The best cell of each (model, task, probe), chosen on val, scored on ``split``."""
    df = _rows(rows)
    split = split or pick_split(df)
    return _collect(lambda: plot_comparison(comparison_table(df, split=split), _NOWHERE, split=split))


def complementarity(rows: Rows, split: str | None = None) -> dict[str, plt.Figure]:
    """Each member backbone alone vs their combination (``{}`` without combination rows)."""
    df = _rows(rows)
    split = split or pick_split(df)
    table = complementarity_table(df, split=split)
    return _collect(lambda: plot_complementarity(table, _NOWHERE, split=split)) if len(table) else {}


def fusion_weights(results_dir: str | Path) -> dict[str, plt.Figure]:
    """The fusion probes' learned timestep weights (distributions, maps, global weights) of a results
    directory (a sweep's cells included)."""
    return _collect(lambda: plot_fusion(results_dir, _NOWHERE))


def predictions(results_dir: str | Path, num_rows: int = 4) -> dict[str, plt.Figure]:
    """Input, target and prediction of every task's best cell, per model with saved heads."""
    return _collect(lambda: plot_predictions(Path(results_dir), num_rows, _NOWHERE))


def concept_maps(results_dir: str | Path, num_images: int = 2) -> dict[str, plt.Figure]:
    """Saved concept maps (zero-shot ``concept`` probe): per model and image, one row per concept word and one
    column per timestep (noisy → clean), with the argmax over concepts (``{}`` when none were saved)."""
    return _collect(lambda: plot_concept_maps(Path(results_dir), _NOWHERE, num_images))


def error_overlap(results_dir: str | Path) -> dict[str, plt.Figure]:
    """Where two models are wrong together, from their saved predictions (``{}`` with fewer than two)."""
    table = error_overlap_table(results_dir)
    return _collect(lambda: plot_error_overlap(table, _NOWHERE)) if len(table) else {}


__all__ = [
    "comparison",
    "complementarity",
    "concept_maps",
    "error_overlap",
    "fusion_weights",
    "heatmaps",
    "layer_curves",
    "log_snr_comparison",
    "predictions",
    "timestep_curves",
]
