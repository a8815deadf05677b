"""Figures as a reader sees them: nothing clipped off the canvas (one task and three, one model and several),
no figure drawn twice under two names, keys on the prediction panels (class legend, depth colour bar,
ignored/invalid pixels), argmax bars only for weights that prefer an input, CKA labels without timesteps for
clean-image models, and captions that claim a seed mean only where there is one.

Figures are captured instead of saved (``save_figure`` is replaced), so these tests lay figures out but never
rasterise them."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from analysis_fakes import synthetic_rows, write_cache
from matplotlib.container import BarContainer
from matplotlib.text import Text

import analysis.cka as cka
import analysis.compare as compare
import analysis.complementarity as complementarity
import analysis.curves as curves
import analysis.fusion_plots as fusion_plots
import analysis.heatmaps as heatmaps
import analysis.predictions as predictions
from analysis.cka import cka_matrix, distinct_caches, plot_cka_matrix
from analysis.curves import seeds_phrase
from analysis.fusion_plots import WeightArtifact, is_uniform, plot_weight_distributions, plot_weight_maps
from analysis.layout import clipped_texts, fit_texts
from analysis.predictions import plot_model_predictions
from backbones.store import FeatureCache
from tasks.kinds import class_palette
from tasks.kinds.depth import INVALID_DEPTH_COLOR

PLOTTING = (cka, compare, complementarity, curves, fusion_plots, heatmaps, predictions)


@pytest.fixture
def figs(monkeypatch):
    """``{stem: figure}`` of every figure the plotting modules would save (closed at teardown)."""
    got: dict[str, plt.Figure] = {}

    def capture(fig: plt.Figure, out_dir: Path, stem: str, dpi: int | None = None) -> list[Path]:
        assert stem not in got, f"{stem} drawn twice"
        got[stem] = fig
        return [Path(out_dir) / f"{stem}.png", Path(out_dir) / f"{stem}.pdf"]

    for m in PLOTTING:
        monkeypatch.setattr(m, "save_figure", capture)
    yield got
    for f in got.values():
        plt.close(f)


def texts(fig: plt.Figure) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]


def suptitle(fig: plt.Figure) -> str:
    return fig._suptitle.get_text().replace("\n", " ") if fig._suptitle is not None else ""


# -- nothing clipped ------------------------------------------------------------------------------------------
def test_the_clipping_check_sees_a_title_wider_than_the_figure_and_fit_texts_wraps_it():
    fig, ax = plt.subplots(figsize=(3, 2), layout="constrained")
    ax.plot([0, 1], [0, 1])
    ax.set_xlim(0.2, 0.8)  # ticks at 0 and 1 exist but are not drawn: they must not count as clipped
    fig.suptitle("a one-panel figure with a suptitle far longer than its three inches of width, as before")
    fig.legend(
        ["a legend entry that is very long indeed", "and another one"], loc="outside lower center", ncol=2
    )
    before = clipped_texts(fig)
    assert any("suptitle far longer" in b for b in before) and any("legend entry" in b for b in before)
    fit_texts(fig)
    assert clipped_texts(fig) == []
    assert "\n" in fig._suptitle.get_text()  # wrapped, not shrunk
    plt.close(fig)


def test_one_task_figures_keep_every_text_on_the_canvas_and_no_map_is_drawn_twice(figs, tmp_path):
    df = synthetic_rows(seeds=(0,), tasks=("depth",))
    heatmaps.plot_heatmaps(df, tmp_path)
    curves.plot_timestep_curves(df, tmp_path, models=["flux.1-dev"])
    curves.plot_log_snr_comparison(df, tmp_path)
    compare.plot_comparison(compare.comparison_table(df), tmp_path)
    complementarity.plot_complementarity(complementarity.complementarity_table(df), tmp_path)
    assert set(figs) == {
        "heatmap_compare_depth",  # the per-model maps would repeat its two panels under two more names
        "timestep_curves_flux.1-dev-default",
        "log_snr_comparison",
        "comparison",
        "complementarity",
    }
    for stem, fig in figs.items():
        assert clipped_texts(fig) == [], stem
        assert "mean over" not in suptitle(fig), stem  # every value is a single fit (one seed)
    assert "one fit per cell" in suptitle(figs["heatmap_compare_depth"])
    assert "single fit" in suptitle(figs["comparison"]) and "single fit" in suptitle(figs["complementarity"])


def test_three_task_figures_keep_every_text_on_the_canvas_and_name_their_seed_means(figs, tmp_path):
    df = synthetic_rows(seeds=(0, 1))
    heatmaps.plot_heatmaps(df, tmp_path, models=["flux.1-dev"])
    compare.plot_comparison(compare.comparison_table(df), tmp_path)
    complementarity.plot_complementarity(complementarity.complementarity_table(df), tmp_path)
    assert set(figs) == {"heatmap_flux.1-dev-default", "comparison", "complementarity"}
    for stem, fig in figs.items():
        assert clipped_texts(fig) == [], stem
    assert "mean over 2 seeds" in suptitle(figs["heatmap_flux.1-dev-default"])
    assert "error bars: std over 2 probe seeds" in suptitle(figs["comparison"])


def test_seed_phrase_says_single_fit_unless_several_seeds_were_averaged():
    assert seeds_phrase([1, 1, 1]) == "one fit per cell"
    assert seeds_phrase([3, 3]) == "mean over 3 seeds"
    assert seeds_phrase([1, 3]) == "mean over up to 3 seeds"


# -- prediction panels ----------------------------------------------------------------------------------------
ADE = [f"ade class {k}" for k in range(150)]


def write_heads(d: Path, seg_meta: dict | None = None) -> dict[str, np.ndarray]:
    """A heads directory with a 150-class segmentation (classes 3, 17 and 140 present, a band of ignored
    pixels) and a depth map with invalid (0 and NaN) pixels."""
    d.mkdir(parents=True)
    n, s = 2, 12
    seg = np.full((n, s, s), 3.0, dtype=np.float32)
    seg[:, 4:8] = 17
    seg[:, :, 9:] = 140
    seg[:, :2] = 255
    seg_pred = seg.copy()
    seg_pred[seg_pred == 255] = 3
    depth = np.linspace(0.5, 9.0, n * s * s, dtype=np.float32).reshape(n, s, s)
    depth[:, :3] = 0.0
    depth[0, 5, 5] = np.nan
    for task, target, pred, extra in (
        ("segmentation", seg, seg_pred, seg_meta or {}),
        ("depth", depth, np.nan_to_num(depth) + 0.3, {}),
    ):
        np.save(d / f"{task}_target.npy", target)
        np.save(d / f"{task}_pred.npy", pred.astype(np.float32))
        meta = {"backbone": "enc", "weights": "default", "task": task, "layer": "3", "timestep": "none"}
        (d / f"{task}.json").write_text(json.dumps({**meta, **extra}))
    np.save(d / "images.npy", np.random.default_rng(0).random((n, s, s, 3)).astype(np.float32))
    return {"segmentation": seg, "depth": depth}


def legend_labels(fig: plt.Figure) -> list[list[str]]:
    return [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes if ax.get_legend()]


def test_segmentation_panels_name_the_classes_present_with_one_colour_per_class(figs, tmp_path):
    d = tmp_path / "heads" / "enc-default"
    targets = write_heads(d, {"class_names": ADE, "ignore_index": 255})
    plot_model_predictions(d, tmp_path)
    fig = figs["predictions_enc-default"]
    assert clipped_texts(fig) == []
    seg_legend = next(labels for labels in legend_labels(fig) if "ade class 3" in labels)
    assert seg_legend == ["ade class 3", "ade class 17", "ade class 140", "ignored (label 255; not scored)"]
    seg_target = next(ax for ax in fig.axes if ax.get_title() == "segmentation\ntarget").images[0]
    assert seg_target.cmap.N == 150  # a palette sized by the label space, not tab10 with vmax 9
    assert np.array_equal(np.ma.getmaskarray(seg_target.get_array()), targets["segmentation"][0] == 255)
    assert seg_target.cmap.get_bad()[:3].tolist() == [0.0, 0.0, 0.0]  # ignored pixels: black


def test_segmentation_panels_fall_back_to_class_numbers_without_names(figs, tmp_path):
    d = tmp_path / "heads" / "enc-default"
    write_heads(d)
    plot_model_predictions(d, tmp_path)
    seg_legend = next(
        labels for labels in legend_labels(figs["predictions_enc-default"]) if "class 3" in labels
    )
    assert seg_legend[:3] == ["class 3", "class 17", "class 140"]


def test_depth_panels_have_a_colour_bar_in_metres_and_key_invalid_pixels(figs, tmp_path):
    d = tmp_path / "heads" / "enc-default"
    targets = write_heads(d)
    plot_model_predictions(d, tmp_path)
    fig = figs["predictions_enc-default"]
    colorbar_labels = [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert "depth (m)" in colorbar_labels
    assert ["invalid depth (0 / NaN; not scored)"] in legend_labels(fig)
    depth = next(ax for ax in fig.axes if ax.get_title() == "depth\ntarget").images[0]
    invalid = ~np.isfinite(targets["depth"][0]) | (targets["depth"][0] <= 0)
    assert np.array_equal(np.ma.getmaskarray(depth.get_array()), invalid)
    assert depth.cmap.get_bad()[:3].tolist() == list(INVALID_DEPTH_COLOR)


def test_class_palette_has_as_many_distinct_colours_as_classes_and_no_black():
    for n in (3, 10, 19, 150):
        pal = class_palette(n)
        assert len(pal) == n and len({tuple(np.round(c, 4)) for c in pal}) == n
        assert all(max(c) > 0.2 for c in pal)  # nothing that reads as the black of ignored pixels


# -- fusion weights -------------------------------------------------------------------------------------------
def artifact(weights: np.ndarray, model_dir: Path) -> WeightArtifact:
    t = weights.shape[1]
    return WeightArtifact(
        model_dir,
        "fusion_weights",
        "depth",
        weights,
        {"backbone": "dit", "weights": "default"},
        [f"t={i}" for i in range(t)],
        [float(i) for i in range(t)],
        list(range(t)),
    )


def test_uniform_fusion_weights_get_a_note_instead_of_argmax_bars_and_map(figs, tmp_path):
    rng = np.random.default_rng(0)
    near = 0.25 + rng.uniform(-0.01, 0.01, (3, 4, 6, 6))  # within ±4 % of 1/4: a mean-like gate
    near /= near.sum(axis=1, keepdims=True)
    peaked = np.full((3, 4, 6, 6), 0.1)
    peaked[:, 2] = 0.7
    uniform, learned = artifact(near, tmp_path / "u"), artifact(peaked, tmp_path / "p")
    assert is_uniform(uniform) and not is_uniform(learned)
    plot_weight_distributions([uniform], tmp_path)
    fig = figs.pop("fusion_weights_dit-default")
    right = fig.axes[1]
    assert not any(isinstance(c, BarContainer) for c in right.containers)
    assert any(t.startswith("uniform weights") for t in texts(fig))
    assert clipped_texts(fig) == []
    plot_weight_maps([uniform], tmp_path)
    maps = figs.pop("fusion_maps_dit-default_depth")
    assert not maps.legends and any(t.startswith("uniform weights") for t in texts(maps))
    assert clipped_texts(maps) == []
    plot_weight_distributions([learned], tmp_path)
    bars = [c for c in figs["fusion_weights_dit-default"].axes[1].containers if isinstance(c, BarContainer)]
    assert len(bars) == 1 and [p.get_height() for p in bars[0]] == [0.0, 0.0, 1.0, 0.0]


# -- CKA ------------------------------------------------------------------------------------------------------
def test_cka_labels_show_timesteps_only_for_diffusion_models(figs, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 4, 4, 5))
    enc = FeatureCache(write_cache(tmp_path, "enc", "default", "he", {(3, None): x, (7, None): x**2}))
    dit = FeatureCache(write_cache(tmp_path, "dit", "default", "hd", {(2, 0.5): x, (2, 0.0): np.tanh(x)}))
    plot_cka_matrix(cka_matrix(enc), tmp_path, "cka_enc")
    plot_cka_matrix(cka_matrix(dit, other=enc), tmp_path, "cka_dit_vs_enc")
    for stem, fig in figs.items():
        assert clipped_texts(fig) == [], stem
    ax = figs["cka_enc"].axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
    assert sorted(ticks) == ["layer 3", "layer 3", "layer 7", "layer 7"]
    assert "timestep" not in ax.get_xlabel() + ax.get_ylabel()
    ax = figs["cka_dit_vs_enc"].axes[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows == ["layer 2, t=0.5", "layer 2, t=0"] and "timestep" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["layer 3", "layer 7"]
    assert "timestep" not in ax.get_xlabel()


def test_a_cache_found_under_a_member_and_a_combination_label_is_drawn_once(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 2, 2, 3))
    main = FeatureCache(write_cache(tmp_path, "dit", "default", "h1", {(0, 0.5): x, (1, 0.5): x}))
    extra = FeatureCache(write_cache(tmp_path, "enc", "default", "h2", {(0, None): x}))
    found = {"dit+enc (default+default)": main, "dit (default)": main, "enc (default)": extra}
    assert list(distinct_caches(found)) == ["dit (default)", "enc (default)"]
