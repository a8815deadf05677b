"""Zero-shot concept maps in the analysis: the table picks the concept probe's cell on val and reports test,
sets it against the cross-attention model with the same words and the base backbone's ridge score at the same
cell; the concept-map figure has one row per word and one column per timestep (noisy → clean) on a [0, 1]
scale; the report gains its section with concept rows and a not-applicable line without them.

Rows and artifacts are hand-made (the contract of the ``concept`` probe), so every expected number is known."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from analysis_fakes import flow_log_snr, frame, row

import analysis.common
from analysis import figures
from analysis.concepts import (
    NOT_APPLICABLE,
    SECTION_TITLE,
    concept_table,
    load_concept_maps,
    parse_concept_label,
)
from analysis.layout import clipped_texts
from analysis.report import write_report
from probebench.core.errors import ProbebenchError

WORDS = ["background", "floor", "wall", "sphere", "box", "cylinder", "cone", "torus"]
METHOD = f"tiny-mmdit[concepts={' '.join(WORDS)}]"
BASELINE = f"tiny-mmdit[concepts={' '.join(WORDS)};score=cross-attention]"
OTHER_WORDS = "tiny-mmdit[concepts=sphere box;score=cross-attention]"  # a baseline of other words: no match
LAYERS = ["0", "1", "2", "3"]
SIGMAS = ["0.9", "0.6", "0.3", "0"]


@pytest.fixture(autouse=True)
def low_dpi(monkeypatch):
    monkeypatch.setattr(analysis.common, "DPI", 40)


def concept_cells(backbone: str, probe: str, values: dict, weights: str = "default") -> list[dict]:
    """Rows of one per-cell probe: ``values[(split, layer, sigma)]`` is the segmentation mIoU (pixel accuracy
    and saliency maxF follow from it, so the main metric alone decides)."""
    out = []
    for (split, layer, s), v in values.items():
        common = dict(
            backbone=backbone,
            weights=weights,
            probe=probe,
            split=split,
            layer=layer,
            timestep=s,
            log_snr=flow_log_snr(float(s)),
        )
        out += [
            row(**common, task="segmentation", metric="mIoU", value=v),
            row(**common, task="segmentation", metric="pixel_acc", value=1.0 - v),  # never the choice
            row(**common, task="saliency", metric="maxF", value=v / 2),
        ]
    return out


def grid(fn) -> dict:
    return {(sp, la, s): fn(sp, int(la), float(s)) for sp in ("val", "test") for la in LAYERS for s in SIGMAS}


def method_value(split: str, layer: int, sigma: float) -> float:
    """Best on val at (2, 0.3); best on test at (3, 0.6): the table must report (2, 0.3)'s test score."""
    v = 0.1 + 0.01 * layer + 0.1 * (1 - sigma)
    if split == "val" and (layer, sigma) == (2, 0.3):
        v = 0.9
    if split == "test" and (layer, sigma) == (3, 0.6):
        v = 0.95
    if split == "test" and (layer, sigma) == (2, 0.3):
        v = 0.31
    return v


def baseline_value(split: str, layer: int, sigma: float) -> float:
    """Best on val at (1, 0.6), whose test score is 0.22."""
    if (layer, sigma) == (1, 0.6):
        return {"val": 0.5, "test": 0.22}[split]
    return 0.05 + 0.001 * layer


def ridge_value(split: str, layer: int, sigma: float) -> float:
    """The ceiling: 0.45 on test at the method's chosen cell (2, 0.3)."""
    return 0.45 if (split, layer, sigma) == ("test", 2, 0.3) else 0.2 + 0.01 * layer


def mean_rows(backbone: str, value: dict[str, float]) -> list[dict]:
    """``concept-mean``: one row per split, layer and timestep lists."""
    out = []
    for split, v in value.items():
        common = dict(
            backbone=backbone,
            weights="default",
            probe="concept-mean",
            split=split,
            layer="+".join(LAYERS),
            timestep="+".join(SIGMAS),
        )
        out += [
            row(**common, task="segmentation", metric="mIoU", value=v),
            row(**common, task="saliency", metric="maxF", value=v / 2),
        ]
    return out


def concept_results() -> pd.DataFrame:
    """The ridge screen first (as a run whose ridge stage comes first writes it), then the concept models."""
    rows = concept_cells("tiny-mmdit", "ridge", grid(ridge_value))
    rows += concept_cells("tiny-mmdit", "ridge", grid(lambda *a: 0.0), weights="random")  # not the ceiling
    rows += concept_cells(METHOD, "concept", grid(method_value))
    rows += concept_cells(BASELINE, "concept", grid(baseline_value))
    rows += concept_cells(OTHER_WORDS, "concept", grid(lambda *a: 0.01))
    rows += mean_rows(METHOD, {"val": 0.27, "test": 0.28}) + mean_rows(BASELINE, {"val": 0.18, "test": 0.19})
    return frame(rows)


# -- labels ---------------------------------------------------------------------------------------------------
def test_concept_labels_are_taken_apart_in_one_place():
    lab = parse_concept_label(METHOD)
    assert (lab.base, lab.words, lab.score, lab.is_baseline) == ("tiny-mmdit", tuple(WORDS), "", False)
    base = parse_concept_label(BASELINE)
    assert base.is_baseline and base.match_key == lab.match_key
    pair = parse_concept_label("sd3-medium[concepts=sphere box;output=pair;background=sky floor]")
    assert pair.variant == "output=pair; background=sky floor" and pair.match_key != lab.match_key
    assert parse_concept_label("tiny-mmdit") is None and parse_concept_label("a+b") is None
    with pytest.raises(ProbebenchError, match=r"option 'score' is not key=value.*expected <name>\[concepts="):
        parse_concept_label("tiny-mmdit[concepts=sphere;score]")
    with pytest.raises(ProbebenchError, match="no concept words"):
        parse_concept_label("tiny-mmdit[concepts=]")


# -- the table ------------------------------------------------------------------------------------------------
def test_the_table_reports_the_val_chosen_cell_on_test_beside_baseline_and_ridge_ceiling():
    t = concept_table(concept_results(), split="test")
    # the baseline matched to the method has no row of its own; the one of other words has
    assert set(t["model"]) == {f"{METHOD} (default)", f"{OTHER_WORDS} (default)"}
    m = t[t["model"] == f"{METHOD} (default)"].set_index("task")
    seg = m.loc["segmentation"]
    assert (seg["metric"], seg["layer"], seg["timestep"], seg["selected_on"]) == ("mIoU", "2", "0.3", "val")
    assert seg["selection_value"] == pytest.approx(0.9)
    assert seg["zero_shot"] == pytest.approx(0.31)  # not 0.95, the best cell on test
    assert seg["log_snr"] == pytest.approx(flow_log_snr(0.3))
    assert seg["zero_shot_mean"] == pytest.approx(0.28)
    assert seg["cross_attention"] == pytest.approx(0.22)
    assert (seg["cross_attention_layer"], seg["cross_attention_timestep"]) == ("1", "0.6")
    assert seg["cross_attention_mean"] == pytest.approx(0.19)
    assert seg["ridge_ceiling"] == pytest.approx(0.45)  # the default weights' ridge, not the random twin's
    assert (seg["base_model"], seg["concepts"]) == ("tiny-mmdit (default)", " ".join(WORDS))
    assert seg["score"] == "ConceptAttention"
    sal = m.loc["saliency"]
    assert sal["metric"] == "maxF" and sal["layer"] == "2"  # the main metric's (maxF = mIoU / 2) choice
    assert (sal["zero_shot"], sal["ridge_ceiling"]) == (pytest.approx(0.155), pytest.approx(0.225))
    other = t[t["model"] == f"{OTHER_WORDS} (default)"].iloc[0]
    assert other["score"] == "cross-attention baseline" and math.isnan(other["cross_attention"])
    val = concept_table(concept_results(), split="val").set_index(["model", "task"])
    assert val.loc[(f"{METHOD} (default)", "segmentation"), "zero_shot"] == pytest.approx(0.9)


def test_the_table_is_empty_without_concept_rows_and_the_ceiling_is_missing_without_ridge():
    df = concept_results()
    assert concept_table(df[~df["backbone"].str.contains("[", regex=False)]).empty
    no_ridge = concept_table(df[df["probe"] != "ridge"])
    assert no_ridge["ridge_ceiling"].isna().all() and no_ridge["zero_shot"].notna().all()


# -- the concept-map figure -----------------------------------------------------------------------------------
def write_concept_maps(d: Path, n: int = 3, hw: int = 8, size: int = 32, reverse: bool = True) -> np.ndarray:
    """A fake artifact of a scene (floor below, wall above, a sphere and a box) whose maps sharpen towards the
    clean end; stored clean → noisy when ``reverse`` (the reader must order the columns noisy → clean).
    Returns the maps in noisy → clean order."""
    d.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:hw, 0:hw] / (hw - 1)
    masks = np.zeros((len(WORDS), hw, hw))
    masks[1] = yy > 0.6
    masks[2] = yy < 0.3
    masks[0] = (yy >= 0.3) & (yy <= 0.6)
    masks[3] = (xx - 0.3) ** 2 + (yy - 0.45) ** 2 < 0.04
    masks[4] = (abs(xx - 0.72) < 0.13) & (abs(yy - 0.5) < 0.13)
    masks[0] = np.where(masks[3] + masks[4] > 0, 0, masks[0])
    rng = np.random.default_rng(0)
    sharp = [0.3, 1.5, 3.0, 5.0]  # noisy → clean
    maps = np.stack(
        [np.stack([s * masks + rng.normal(0, 0.4, masks.shape) for s in sharp], axis=1) for _ in range(n)]
    )
    maps = np.exp(maps - maps.max(axis=1, keepdims=True))
    maps = (maps / maps.sum(axis=1, keepdims=True)).astype(np.float32)  # (n, C, T, h, w)
    stored = maps[:, :, ::-1] if reverse else maps
    sigmas = [0.9, 0.6, 0.3, 0.0][::-1] if reverse else [0.9, 0.6, 0.3, 0.0]
    np.save(d / "concept_maps.npy", stored)
    meta = {
        "backbone": METHOD,
        "weights": "default",
        "probe": "concept",
        "words": WORDS,
        "layer": 2,
        "timesteps": sigmas,
        "log_snr": [flow_log_snr(s) for s in sigmas],
        "axes": "image, concept, timestep, y, x",
        "split": "val",
        "image_ids": [f"val{i:04d}" for i in range(n)],
    }
    (d / "concept_maps.json").write_text(json.dumps(meta))  # +∞ is written as Infinity, as Python's json does
    Y, X = np.mgrid[0:size, 0:size] / (size - 1)
    img = np.zeros((size, size, 3))
    img[Y > 0.6] = (0.55, 0.45, 0.35)
    img[Y < 0.3] = (0.8, 0.8, 0.85)
    img[(X - 0.3) ** 2 + (Y - 0.45) ** 2 < 0.04] = (0.9, 0.2, 0.2)
    img[(abs(X - 0.72) < 0.13) & (abs(Y - 0.5) < 0.13)] = (0.2, 0.4, 0.9)
    np.save(d / "images_val.npy", np.stack([img] * (n + 2)).astype(np.float32))  # more val images than maps
    return maps


def test_the_concept_map_figure_has_a_row_per_word_and_a_column_per_timestep_noisy_to_clean(tmp_path):
    d = tmp_path / "heads" / "tiny-mmdit_concepts=x-default"
    maps = write_concept_maps(d)
    (cm,) = load_concept_maps(tmp_path)
    assert np.array_equal(cm.maps, maps) and cm.timesteps == [0.9, 0.6, 0.3, 0.0]
    got = figures.concept_maps(tmp_path)
    assert sorted(got) == [
        "concept_maps_tiny-mmdit_concepts=x-default_img0",
        "concept_maps_tiny-mmdit_concepts=x-default_img1",
    ]
    fig = got["concept_maps_tiny-mmdit_concepts=x-default_img1"]
    cells = [ax for ax in fig.axes if ax.get_label() == "concept_map"]
    assert len(cells) == len(WORDS) * 4
    first_row = [ax.get_title().split("\n")[0] for ax in cells[:4]]
    assert first_row == ["t=0.9", "t=0.6", "t=0.3", "t=0"]
    assert cells[3].get_title().endswith("clean (+∞)")
    assert [ax.get_ylabel() for ax in cells[::4]] == WORDS
    assert np.array_equal(cells[3 * 4 + 2].images[0].get_array(), maps[1, 3, 2])  # sphere, σ 0.3, image 1
    assert all(ax.images[0].get_clim() == (0.0, 1.0) for ax in cells)
    argmax = [ax for ax in fig.axes if ax.get_label() == "concept_argmax"]
    assert len(argmax) == 4 and np.array_equal(argmax[0].images[0].get_array(), maps[1, :, 0].argmax(0))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == WORDS
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert [ax.get_ylabel() for ax in bars] == ["softmax probability over concepts"]
    title = fig._suptitle.get_text().replace("\n", " ")
    assert "tiny-mmdit (default), ConceptAttention maps at layer 2" in title and "val0001" in title
    assert len([ax for ax in fig.axes if ax.get_label() == "image"]) == 2
    assert clipped_texts(fig) == []
    for f in got.values():
        plt.close(f)


def test_a_meta_that_does_not_describe_the_array_is_a_clear_error(tmp_path):
    d = tmp_path / "heads" / "m"
    write_concept_maps(d)
    meta = json.loads((d / "concept_maps.json").read_text())
    (d / "concept_maps.json").write_text(json.dumps({**meta, "words": WORDS[:3]}))
    with pytest.raises(ProbebenchError, match="names 3 words, 4 timesteps and 4 log-SNRs; expected 8, 4, 4"):
        load_concept_maps(tmp_path)


# -- the report -----------------------------------------------------------------------------------------------
def run_dir(root: Path, df: pd.DataFrame, maps: bool) -> Path:
    """A run directory of ``df``'s segmentation rows of the method, its baseline and the default-weights ridge
    (fewer models and tasks: fewer figures to draw), with a concept-map artifact of one image if ``maps``."""
    keep = df["backbone"].isin([METHOD, BASELINE, "tiny-mmdit"]) & (df["weights"] == "default")
    root.mkdir()
    df[keep & (df["task"] == "segmentation")].to_csv(root / "results.csv", index=False)
    if maps:
        write_concept_maps(root / "heads" / "tiny-mmdit_concepts=background_floor-default", n=1)
    return root


def test_the_report_gains_the_concept_section_with_its_table_heatmaps_and_maps(tmp_path):
    rdir = run_dir(tmp_path / "r", concept_results(), maps=True)
    text = write_report(rdir, cka=False).read_text()
    section = text.split(f"## {SECTION_TITLE}")[1].split("\n## ")[0]
    assert "scores 0.310 zero-shot at (layer 2, t=0.3, log-SNR +1.69)" in section
    assert "cross-attention baseline's 0.220 at (layer 1, t=0.6)" in section
    assert "supervised ridge ceiling is 0.450 at the same cell" in section
    assert "0.280 with the maps averaged over all cells" in section
    # the generic maps draw one probe for every model, here the ridge screen (as many cells, first in the
    # table), so the section draws the concept probe's own
    assert "`concept_heatmap_*` figures below" in section and "draw the `ridge` probe" in section
    assert "figures/concept_heatmap_compare_segmentation.png" in section
    assert "figures/concept_maps_tiny-mmdit_concepts_background_floor-default_img0.png" in section
    figs = {p.stem for p in (rdir / "figures").glob("concept_*.png")}
    assert figs == {  # the two models' own maps would repeat the comparison's panels
        "concept_heatmap_compare_segmentation",
        "concept_maps_tiny-mmdit_concepts_background_floor-default_img0",
    }
    table = pd.read_csv(rdir / "concept_zero_shot.csv")
    assert table["zero_shot"].tolist() == [0.31] and NOT_APPLICABLE not in text


def test_the_report_points_to_the_generic_maps_when_they_draw_the_concept_probe(tmp_path):
    df = concept_results()
    rdir = run_dir(tmp_path / "r", df[df["probe"] != "ridge"], maps=False)
    text = write_report(rdir, cka=False).read_text()
    section = text.split(f"## {SECTION_TITLE}")[1].split("\n## ")[0]
    assert "are the *Layer × timestep maps* above" in section and "concept_heatmap" not in section
    assert "no `heads/*/concept_maps.npy` was saved" in section


def test_the_report_without_concept_rows_says_the_section_does_not_apply(tmp_path):
    df = concept_results()
    rdir = run_dir(tmp_path / "r", df[df["backbone"] == "tiny-mmdit"], maps=False)
    (rdir / "concept_zero_shot.csv").write_text("stale")
    text = write_report(rdir, cka=False).read_text()
    assert SECTION_TITLE not in text
    assert f"- {NOT_APPLICABLE}" in text.split("## Not applicable to these results")[1]
    assert not (rdir / "concept_zero_shot.csv").exists()


def test_the_cue_ablation_sets_each_fusion_variant_against_itself_without_cues():
    from analysis.cues import cue_gains, cue_summary

    cue = f"tiny-mmdit+tiny-mmdit[concepts={' '.join(WORDS)};output=pair;background=background floor wall]"
    rows = []
    for backbone, weights, base in (("tiny-mmdit", "default", 0.40), (cue, "default+default", 0.44)):
        for probe, extra in (("fusion-spatial", 0.0), ("fusion-single", -0.1)):
            for seed in (0, 1, 2):
                for split, shift in (("val", 0.0), ("test", -0.02)):
                    v = base + extra + shift + 0.001 * seed
                    rows.append(
                        row(
                            backbone=backbone,
                            weights=weights,
                            probe=probe,
                            split=split,
                            seed=seed,
                            layer="3",
                            timestep="0+0.5",
                            task="segmentation",
                            metric="mIoU",
                            value=v,
                        )
                    )
    t = cue_gains(frame(rows))
    assert sorted(t["probe"]) == ["fusion-single", "fusion-spatial"]
    r = t.set_index("probe").loc["fusion-spatial"]
    assert r["without"] == pytest.approx(0.381) and r["with"] == pytest.approx(0.421)
    assert r["gain"] == pytest.approx(0.04) and r["verdict"] == "beats" and r["n_seeds"] == 3
    text = cue_summary(t, "test")
    assert "0.381 ± 0.001 without cues, 0.421 ± 0.001 with them (test, 3 probe seeds" in text
    assert "with cues it **beats** the head without (+0.040)" in text
    # without the base model's rows there is nothing to compare
    assert cue_gains(frame([r for r in rows if r["backbone"] == cue])).empty
