"""Analysis: the numbers behind the figures (CKA, best cells, gains, weight summaries, error overlap), the
report's summary against its tables, the figures a full results directory yields, and errors on bad input."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from analysis_fakes import fake_results_dir, frame, row, synthetic_rows, write_cache

import analysis.common
from analysis.common import SnrAxis, seed_mean, select
from analysis.compare import (
    BASELINE_BEST_CELL,
    BASELINE_FUSION_SINGLE,
    best_cells,
    combination_gains,
    compare_runs,
    comparison_table,
    fusion_gains,
    load_results,
)
from analysis.complementarity import (
    LinearCKA,
    MinibatchCKA,
    cka_matrix,
    error_overlap,
    linear_cka,
    per_class_iou_gain,
    read_per_class_iou,
)
from analysis.concepts import NOT_APPLICABLE as CONCEPT_NOT_APPLICABLE
from analysis.cues import NOT_APPLICABLE as CUES_NOT_APPLICABLE
from analysis.curves import curve_table, plot_timestep_curves
from analysis.fusion_plots import load_weight_artifacts, weight_summary
from analysis.heatmaps import heatmap_matrix
from analysis.report import best_per_task, write_report
from backbones.store import FeatureCache
from probebench.core.errors import ProbebenchError


# -- CKA ------------------------------------------------------------------------------------------------------
def gram_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.'s definition, computed directly: HSIC of centred Gram matrices."""
    n = len(x)
    h = np.eye(n) - 1.0 / n
    k, ell = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float((k * ell).sum() / math.sqrt((k * k).sum() * (ell * ell).sum()))


def related(n: int, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = np.tanh(x @ rng.normal(size=(d, d + 2))) + 0.5 * rng.normal(size=(n, d + 2))
    return x, y


def test_cka_of_a_representation_with_itself_is_one():
    x, _ = related(300)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x, unbiased=True) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_isotropic_scaling_and_shifts():
    x, y = related(400)
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(6, 6)))
    base = linear_cka(x, y)
    assert 0.2 < base < 0.95  # related but not identical
    assert linear_cka(x @ q, y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(3.7 * x, 0.01 * y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x + 50.0, y) == pytest.approx(base, abs=1e-9)
    ub = linear_cka(x, y, unbiased=True)
    assert linear_cka(2.0 * x @ q, y, unbiased=True) == pytest.approx(ub, abs=1e-10)


def test_streaming_cka_over_uneven_batches_equals_the_direct_gram_computation():
    x, y = related(257)
    x, y = x + 1e3, y - 40.0  # a large mean: the shifted running sums must not lose precision
    acc = LinearCKA()
    for lo, hi in [(0, 10), (10, 11), (11, 150), (150, 257)]:
        acc.update(x[lo:hi], y[lo:hi])
    assert acc.n == 257
    assert acc.value() == pytest.approx(gram_cka(x, y), abs=1e-10)


def test_unbiased_minibatch_cka_is_close_to_the_full_value_on_large_n():
    x, y = related(20_000, d=10, seed=2)
    full = linear_cka(x, y)
    mb = MinibatchCKA(2)
    for lo in range(0, len(x), 500):
        mb.update([x[lo : lo + 500], y[lo : lo + 500]])
    assert mb.batches == 40
    assert mb.value()[0, 1] == pytest.approx(full, abs=0.02)
    assert np.diag(mb.value()) == pytest.approx([1.0, 1.0])
    assert linear_cka(x[:3000], y[:3000], unbiased=True) == pytest.approx(full, abs=0.02)
    # unrelated features: the unbiased estimator is near 0, the biased one is pulled up by d/n
    z = np.random.default_rng(9).normal(size=(200, 40))
    assert abs(linear_cka(x[:200], z, unbiased=True)) < 0.05 < linear_cka(x[:200], z)


@pytest.fixture
def cka_cache(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(11, 6, 6, 5))
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    feats = {(0, None): x, (1, None): 2.0 * x @ q, (2, None): rng.normal(size=(11, 6, 6, 7)) + x[..., :1]}
    return FeatureCache(write_cache(tmp_path, "enc", "default", "h0000001", feats, shard_size=4)), feats


def test_cka_matrix_streams_over_shards_and_matches_the_direct_computation(cka_cache):
    cache, feats = cka_cache
    m = cka_matrix(cache, method="exact", image_batch=3)
    assert list(m.index) == ["L0", "L1", "L2"] and m.attrs["n_pixels"] == 11 * 36
    flat = {k: v.astype(np.float16).astype(np.float64).reshape(-1, v.shape[-1]) for k, v in feats.items()}
    assert m.loc["L0", "L1"] == pytest.approx(gram_cka(flat[(0, None)], flat[(1, None)]), abs=1e-9)
    assert m.loc["L0", "L2"] == pytest.approx(gram_cka(flat[(0, None)], flat[(2, None)]), abs=1e-9)
    assert np.allclose(m.to_numpy(), m.to_numpy().T) and np.allclose(np.diag(m), 1)
    mb = cka_matrix(cache, method="minibatch", minibatch_size=64, image_batch=4)
    assert mb.loc["L0", "L1"] == pytest.approx(1.0, abs=1e-3)  # fp16 storage rounds a little
    assert mb.loc["L0", "L2"] == pytest.approx(m.loc["L0", "L2"], abs=0.1)
    sub = cka_matrix(cache, method="exact", pixels_per_image=9, max_images=5)
    assert sub.attrs["n_pixels"] == 45
    with pytest.raises(ProbebenchError, match="minibatch"):
        cka_matrix(cache, method="exact", max_bytes=100)


def test_cka_across_caches_pools_to_a_common_grid_and_needs_the_same_images(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 4, 4, 3))
    fine = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)  # 8×8 that area-pools back to x exactly
    a = FeatureCache(write_cache(tmp_path, "coarse", "default", "ha", {(0, 0.5): x, (1, 0.5): x**2}))
    b = FeatureCache(
        write_cache(
            tmp_path, "fine", "default", "hb", {(3, None): fine @ np.linalg.qr(rng.normal(size=(3, 3)))[0]}
        )
    )
    m = cka_matrix(a, other=b)
    assert m.shape == (2, 1) and m.attrs["grid"] == (4, 4)
    assert m.iloc[0, 0] == pytest.approx(1.0, abs=1e-3)
    other = FeatureCache(
        write_cache(tmp_path, "o", "default", "hc", {(0, None): x}, image_ids=list("abcdef"))
    )
    with pytest.raises(ProbebenchError, match="same images"):
        cka_matrix(a, other=other)


# -- best cells and gains on hand-made tables -----------------------------------------------------------------
def seg(
    model: str,
    layer: str,
    split: str,
    seed: int,
    value: float,
    probe: str = "ridge",
    t: str = "none",
    task: str = "segmentation",
    metric: str = "mIoU",
    weights: str = "default",
) -> dict:
    return row(
        backbone=model,
        weights=weights,
        task=task,
        metric=metric,
        layer=layer,
        split=split,
        seed=seed,
        value=value,
        probe=probe,
        timestep=t,
    )


def test_best_cell_is_the_seed_mean_best_on_val_reported_on_test():
    rows = [
        # layer 1: best single val seed (0.60) but mean 0.55; layer 2: mean 0.57 → layer 2
        seg("enc", "1", "val", 0, 0.50),
        seg("enc", "1", "val", 1, 0.60),
        seg("enc", "2", "val", 0, 0.57),
        seg("enc", "2", "val", 1, 0.57),
        seg("enc", "1", "test", 0, 0.90),
        seg("enc", "1", "test", 1, 0.90),
        seg("enc", "2", "test", 0, 0.30),
        seg("enc", "2", "test", 1, 0.50),
        # depth, lower is better
        seg("enc", "1", "val", 0, 1.0, task="depth", metric="rmse"),
        seg("enc", "2", "val", 0, 0.8, task="depth", metric="rmse"),
        seg("enc", "1", "test", 0, 0.5, task="depth", metric="rmse"),
        seg("enc", "2", "test", 0, 0.9, task="depth", metric="rmse"),
    ]
    b = best_cells(frame(rows), ("model", "task")).set_index("task")
    assert b.loc["segmentation", "layer"] == "2"
    assert b.loc["segmentation", "val_value"] == pytest.approx(0.57)
    assert b.loc["segmentation", "test_value"] == pytest.approx(0.40)
    assert b.loc["segmentation", "test_std"] == pytest.approx(np.std([0.3, 0.5], ddof=1))
    assert b.loc["segmentation", "n_seeds"] == 2
    assert b.loc["depth", "layer"] == "2" and b.loc["depth", "test_value"] == pytest.approx(0.9)
    only_test = best_cells(frame([r for r in rows if r["split"] == "test"]), ("model", "task"))
    assert (
        set(only_test["selected_on"]) == {"test"} and only_test.set_index("task").loc["depth", "layer"] == "1"
    )


def test_fusion_gain_is_over_fusion_single_when_present_else_over_the_best_single_timestep_cell():
    rows = []
    for split in ("val", "test"):
        rows += [
            seg("dit", "3", split, 0, 0.60, probe="fusion-spatial", t="0+100+500"),
            seg("dit", "3", split, 0, 0.55, probe="fusion-mean", t="0+100+500"),
            seg("dit", "3", split, 0, 0.50, probe="fusion-single", t="100"),
            seg(
                "dit", "3", split, 0, 1.00, probe="fusion-spatial", t="0+100+500", task="depth", metric="rmse"
            ),
            seg(
                "dit",
                "3",
                split,
                0,
                {"val": 1.1, "test": 1.25}[split],
                probe="ridge",
                t="100",
                task="depth",
                metric="rmse",
            ),
            seg(
                "dit",
                "3",
                split,
                0,
                {"val": 1.2, "test": 1.05}[split],
                probe="ridge",
                t="500",
                task="depth",
                metric="rmse",
            ),
        ]
    g = fusion_gains(frame(rows)).set_index(["task", "variant"])
    s = g.loc[("segmentation", "fusion-spatial")]
    assert s["baseline"] == BASELINE_FUSION_SINGLE and s["baseline_value"] == pytest.approx(0.50)
    assert s["gain"] == pytest.approx(0.10) and s["rel_gain_pct"] == pytest.approx(20.0)
    assert g.loc[("segmentation", "fusion-mean"), "gain"] == pytest.approx(0.05)
    d = g.loc[("depth", "fusion-spatial")]  # no fusion-single: the ridge cell best on val (t=100), test 1.25
    assert d["baseline"] == BASELINE_BEST_CELL and d["baseline_timestep"] == "100"
    assert d["gain"] == pytest.approx(0.25) and d["rel_gain_pct"] == pytest.approx(20.0)
    assert fusion_gains(frame([r for r in rows if not r["probe"].startswith("fusion")])).empty


def test_combination_gain_over_each_member_and_comparison_gains():
    rows = []
    for split in ("val", "test"):
        rows += [
            seg("a+b", "1+2", split, 0, 0.70, probe="fusion-spatial", t="none+none"),
            seg("a+b", "1+2", split, 0, 0.65, probe="linear", t="none+none"),
            seg("a", "1", split, 0, 0.60),
            seg("b", "2", split, 0, 0.50, probe="linear"),
            seg("a", "1", split, 0, 0.20, weights="random"),
        ]
    df = frame(rows)
    c, notes = combination_gains(df)
    c = c.set_index("member")
    assert notes == []
    assert c.loc["a (default)", "gain"] == pytest.approx(0.10) and c.loc[
        "b (default)", "gain"
    ] == pytest.approx(0.20)
    assert c.loc["b (default)", "member_probe"] == "linear"
    assert set(c["combination_probe"]) == {"fusion-spatial"}
    _, notes = combination_gains(frame([r for r in rows if r["backbone"] != "b"]))
    assert any("b (default)" in n for n in notes)
    t = comparison_table(df).set_index(["model", "probe"])
    assert t.loc[("a (default)", "ridge"), "gain_vs_random"] == pytest.approx(0.40)
    assert t.loc[("a+b (default)", "fusion-spatial"), "delta_vs_task_best"] == 0.0
    assert t.loc[("b (default)", "linear"), "delta_vs_task_best"] == pytest.approx(-0.20)


def test_per_class_iou_gain_and_error_overlap_on_hand_made_inputs():
    pc = pd.DataFrame(
        [
            {"backbone": b, "weights": "default", "probe": p, "class": c, "iou": v, "seed": s}
            for b, p, c, v, s in [
                ("a", "ridge", "cat", 0.5, 0),
                ("a", "ridge", "cat", 0.7, 1),
                ("a", "ridge", "dog", 0.4, 0),
                ("a", "linear", "cat", 0.1, 0),
                ("a", "linear", "dog", 0.1, 0),
                ("b", "ridge", "cat", 0.2, 0),
                ("b", "ridge", "dog", 0.5, 0),
            ]
        ]
    )
    g = per_class_iou_gain(pc, "a (default)", "b (default)").set_index("class")
    assert g.attrs["probe_a"] == "ridge"  # the probe with the better mean IoU
    assert g.loc["cat", "gain"] == pytest.approx(0.4) and g.loc["dog", "gain"] == pytest.approx(-0.1)
    with pytest.raises(ProbebenchError, match="lacks \\['iou'\\]"):
        read_per_class_iou(pc.drop(columns=["iou"]))
    with pytest.raises(ProbebenchError, match="models there"):
        per_class_iou_gain(pc, "a (default)", "c (default)")
    target = np.array([[0, 1, 2, 3, 255]])
    o = error_overlap(np.array([[0, 1, 9, 9, 4]]), np.array([[0, 9, 2, 9, 7]]), target, "segmentation")
    assert o == {
        "only_a_wrong": 0.25,
        "only_b_wrong": 0.25,
        "both_wrong": 0.25,
        "neither_wrong": 0.25,
        "n_pixels": 4,
    }
    depth = error_overlap(
        np.array([1.0, 1.0, 2.0, 1.0]),
        np.array([1.0, 1.5, 1.0, 1.0]),
        np.array([1.0, 1.0, 1.0, 0.0]),
        "depth",
    )
    assert depth["n_pixels"] == 3 and depth["only_a_wrong"] == pytest.approx(1 / 3)


# -- the numbers behind the figures ---------------------------------------------------------------------------
def test_snr_axis_puts_the_clean_image_at_a_labelled_right_edge():
    ax = SnrAxis.from_values([math.inf, 2.0, -1.0, -math.inf, float("nan")])
    assert ax(math.inf) > 2.0 and ax(-math.inf) < -1.0 and ax(0.5) == 0.5
    import matplotlib.pyplot as plt

    fig, a = plt.subplots()
    a.plot(ax([-math.inf, -1.0, 2.0, math.inf]), [0, 1, 2, 3])
    ax.decorate(a)
    labels = [t.get_text() for t in a.get_xticklabels()]
    assert labels[-1].startswith("clean") and labels[0].startswith("noise")
    plt.close(fig)


def test_figures_mark_the_cell_chosen_on_val_not_the_best_on_test():
    from analysis.curves import chosen_cells, marked_cell
    from analysis.heatmaps import _position

    base = {"backbone": "m", "weights": "default", "task": "depth", "metric": "rmse", "dataset": "scenes"}
    cells = {
        ("0", "0"): (1.0, 2.0),
        ("0", "0.5"): (2.0, 1.0),
        ("1", "0"): (3.0, 3.0),
        ("1", "0.5"): (4.0, 4.0),
    }
    rows = [
        row(**base, layer=layer, timestep=t, split=split, value=v, log_snr=float("inf") if t == "0" else 0.0)
        for (layer, t), vals in cells.items()
        for split, v in zip(("val", "test"), vals)
    ]
    df = frame(rows)
    chosen = chosen_cells(df, probe="ridge")
    assert chosen == {("m (default)", "depth"): ("0", "0")}  # best on val, although (0, 0.5) is best on test
    t = curve_table(df, split="test")
    best, where = marked_cell(t, chosen, "m (default)", "depth", "test")
    assert (best["layer"], best["timestep"], where, best["value"]) == ("0", "0", "val", 2.0)
    m = heatmap_matrix(t, "m (default)", "depth")
    assert _position(m, chosen[("m (default)", "depth")]) == (0, 1)  # layer 0, the clean (rightmost) column
    assert chosen_cells(df[df.split == "test"], probe="ridge") == {}  # no val: figures fall back to the split


def test_curve_figures_work_without_a_val_split(tmp_path):
    from analysis.curves import plot_log_snr_comparison
    from analysis.heatmaps import plot_heatmaps

    df = synthetic_rows(seeds=(0,), with_fusion=False, with_combo=False)
    test_only = df[df.split == "test"]
    assert plot_log_snr_comparison(test_only, tmp_path) and plot_heatmaps(test_only, tmp_path)
    assert plot_timestep_curves(test_only, tmp_path)


def test_curve_and_heatmap_numbers_are_seed_means_ordered_noisy_to_clean():
    df = synthetic_rows(seeds=(0, 1, 2), with_fusion=False, with_combo=False)
    t = curve_table(df, split="test")
    assert set(t["probe"]) == {"ridge"} and set(t["n_seeds"]) == {3}
    raw = df[
        (df.backbone == "flux.1-dev")
        & (df.task == "depth")
        & (df.metric == "rmse")
        & (df.split == "test")
        & (df.layer == "15")
        & (df.timestep == "0.25")
        & (df.probe == "ridge")
    ]
    m = heatmap_matrix(t, "flux.1-dev (default)", "depth")
    assert list(m.index) == [5, 15, 30]
    assert [c.split("\n")[0] for c in m.columns] == ["t=1", "t=0.75", "t=0.5", "t=0.25", "t=0"]
    assert m.loc[15, "t=0.25\n(+2.2)"] == pytest.approx(raw["value"].mean())


def test_weight_artifacts_of_both_formats_are_read_per_group_and_summarised(tmp_path):
    rdir = fake_results_dir(tmp_path, caches=False)
    arts = load_weight_artifacts(rdir)
    got = sorted((a.kind, a.task, a.group) for a in arts)
    assert got == [
        ("fusion_weights", "depth", ""),
        ("fusion_weights", "segmentation", "L15"),
        ("fusion_weights", "segmentation", "L5"),
        ("global_weights", "depth", ""),
        ("global_weights", "segmentation", ""),
    ]
    d = next(a for a in arts if a.kind == "fusion_weights" and a.task == "depth")
    assert d.timesteps == [0.75, 0.5, 0.25, 0.0]  # reordered noisy → clean
    assert (
        d.images().shape[0] == 5
        and d.images()[0, 0, 0, 0] == np.load(rdir / "heads/flux.1-dev-default/images.npy")[0, 0, 0, 0]
    )
    raw = np.load(rdir / "heads" / "flux.1-dev-default" / "fusion_weights_depth.npy")
    s = weight_summary(d)
    assert s["mean_weight"].sum() == pytest.approx(1.0)
    assert s["mean_weight"].tolist() == pytest.approx(raw.mean(axis=(0, 2, 3))[::-1].tolist())
    assert s["argmax_fraction"].sum() == pytest.approx(1.0)
    seg15 = next(a for a in arts if a.task == "segmentation" and a.group == "L15")
    raw = np.load(rdir / "heads" / "flux.1-dev-default" / "fusion_weights_segmentation.npy")
    assert np.allclose(seg15.weights, raw[:, 4:][:, ::-1])  # the second softmax group, noisy → clean
    assert weight_summary(seg15)["mean_weight"].sum() == pytest.approx(1.0)
    val_images = np.load(rdir / "heads/flux.1-dev-default/images_val.npy")
    assert np.array_equal(seg15.images(), val_images)  # split "val" → images_val.npy, never the test images
    g = next(a for a in arts if a.kind == "global_weights" and a.task == "depth")
    assert g.row_labels == ["L005", "L015", "L030"] and np.isnan(g.weights[-1, -1])  # t=0 (clean) is now last


# -- the report -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report(tmp_path_factory):
    dpi, analysis.common.DPI = analysis.common.DPI, 40
    try:
        rdir = fake_results_dir(tmp_path_factory.mktemp("an"), tasks=("segmentation", "depth"))
        path = write_report(rdir)
    finally:
        analysis.common.DPI = dpi
    return rdir, path.read_text()


EXPECTED_FIGURES = [
    "layer_curves",
    "comparison",
    "timestep_curves_flux.1-dev-default",
    "timestep_curves_dit-xl-2-256-default",
    "log_snr_comparison",
    "heatmap_flux.1-dev-default",
    "heatmap_compare_segmentation",
    "heatmap_compare_depth",
    "fusion_weights_flux.1-dev-default",
    "fusion_maps_flux.1-dev-default_segmentation_L5",
    "fusion_maps_flux.1-dev-default_segmentation_L15",
    "fusion_maps_flux.1-dev-default_depth",
    "global_weights_flux.1-dev-default",
    "complementarity",
    "per_class_iou_gain",
    "error_overlap",
    "cka_flux.1-dev-default",
    "cka_dinov3-vitb16-default",
    "cka_flux.1-dev-default_vs_dinov3-vitb16-default",
]


def test_report_writes_and_embeds_every_applicable_figure(report):
    rdir, text = report
    embedded = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    for stem in EXPECTED_FIGURES:
        png = rdir / "figures" / f"{stem}.png"
        assert png.is_file() and png.stat().st_size > 5_000, stem
        assert png.with_suffix(".pdf").stat().st_size > 5_000, stem
        assert f"figures/{stem}.png" in embedded
    assert all((rdir / f).is_file() for f in embedded)
    na = text.split("## Not applicable to these results")[1] if "Not applicable" in text else ""
    listed = [ln for ln in na.splitlines() if ln.startswith("- ")]
    # everything applies but concept maps and cues (no concept rows)
    assert listed == [f"- {CONCEPT_NOT_APPLICABLE}", f"- {CUES_NOT_APPLICABLE}"]


def test_report_summary_numbers_equal_the_tables(report):
    rdir, text = report
    lines = text.splitlines()

    def line(prefix: str) -> str:
        hits = [ln for ln in lines if ln.startswith(prefix)]
        assert len(hits) == 1, (prefix, hits)
        return hits[0]

    best = pd.read_csv(rdir / "best_cells.csv", dtype={"layer": str, "timestep": str})
    for _, r in best_per_task(best).iterrows():
        ln = line(f"- {r['task']} (")
        assert (
            f"{r['model']} · {r['probe']}" in ln
            and f"→ {r['test_value']:.3f} test (val {r['val_value']:.3f})" in ln
        )
    fusion = pd.read_csv(rdir / "fusion_gains.csv")
    spatial = fusion[fusion["variant"] == "fusion-spatial"]
    assert len(spatial) == 4 and set(spatial["baseline_probe"]) == {"fusion-single"}
    for _, r in spatial.iterrows():
        ln = line(f"- {r['task']}, {r['model']}: fusion-spatial")
        assert f"fusion-spatial {r['value']:.3f} vs fusion-single {r['baseline_value']:.3f}" in ln
        assert f"gain {r['gain']:+.3f} {r['metric']} ({r['rel_gain_pct']:+.1f} %)" in ln
    combos = pd.read_csv(rdir / "combination_gains.csv")
    assert set(combos["member"]) == {"flux.1-dev (default)", "dinov3-vitb16 (default)"} and len(combos) == 4
    for _, r in combos.iterrows():
        ln = line(
            f"- {r['task']}, {r['combination']} ({r['combination_probe']}, {r['combination_value']:.3f}) over "
            f"{r['member']} "
        )
        assert f"({r['member_probe']}, {r['member_value']:.3f}): gain {r['gain']:+.3f}" in ln
    # and the tables agree with the raw rows
    df = load_results(rdir)
    r = spatial.iloc[0]
    raw = df[
        (df.model == r["model"])
        & (df.task == r["task"])
        & (df.probe == "fusion-spatial")
        & (df.split == "test")
        & (df.metric == r["metric"])
    ]
    assert r["value"] == pytest.approx(raw["value"].mean())


def test_report_without_timesteps_fusion_or_caches_lists_what_does_not_apply(tmp_path):
    df = synthetic_rows(seeds=(0,), with_fusion=False, with_combo=False)
    df = df[df["backbone"] == "dinov3-vitb16"]
    rdir = tmp_path / "r"
    rdir.mkdir()
    df.to_csv(rdir / "results.csv", index=False)
    text = write_report(rdir).read_text()
    na = text.split("## Not applicable to these results")[1]
    for phrase in (
        "no backbone has more than one timestep",
        "no fusion-* probe rows",
        "no combination",
        "per_class_iou.csv",
        "fewer than two models",
        "feature caches are not on disk",
    ):
        assert phrase in na
    assert not (rdir / "fusion_gains.csv").exists()
    assert {p.stem for p in (rdir / "figures").glob("*.png")} == {"layer_curves", "comparison"}


def test_compare_runs_over_several_results_dirs(tmp_path):
    for i, (b, w) in enumerate([("a", "default"), ("a", "random")]):
        d = tmp_path / "sweep" / f"run{i}"
        d.mkdir(parents=True)
        frame([seg(b, "1", s, 0, 0.5 if w == "default" else 0.3, weights=w) for s in ("val", "test")]).to_csv(
            d / "results.csv", index=False
        )
    out = compare_runs(tmp_path / "sweep", tmp_path / "cmp")
    t = pd.read_csv(out["comparison"][0])
    assert len(t) == 2 and t.set_index("weights").loc["default", "gain_vs_random"] == pytest.approx(0.2)
    assert "| a (default) |" in out["comparison"][1].read_text()
    assert out["comparison_plot"][0].is_file()


# -- bad input ------------------------------------------------------------------------------------------------
def test_empty_results_directory_and_table_are_clear_errors(tmp_path):
    with pytest.raises(ProbebenchError, match="empty directory"):
        write_report(tmp_path)
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ProbebenchError, match=r"no results\.csv; it holds: \['x\.txt'\]"):
        write_report(tmp_path)
    frame([]).to_csv(tmp_path / "results.csv", index=False)
    with pytest.raises(ProbebenchError, match="no rows"):
        write_report(tmp_path)
    with pytest.raises(ProbebenchError, match="does not exist"):
        load_results([tmp_path / "nowhere"])
    (tmp_path / "sweep").mkdir()
    with pytest.raises(ProbebenchError, match=r"No results\.csv in .*sweep or below it; it holds: nothing"):
        load_results(tmp_path / "sweep")


def test_mixed_schema_is_a_clear_error(tmp_path):
    good = synthetic_rows(seeds=(0,), with_fusion=False, with_combo=False).head(5)
    (tmp_path / "a").mkdir()
    good.to_csv(tmp_path / "a" / "results.csv", index=False)
    (tmp_path / "b").mkdir()
    good.drop(columns=["log_snr"]).assign(extra=1).to_csv(tmp_path / "b" / "results.csv", index=False)
    with pytest.raises(ProbebenchError, match=r"missing columns \['log_snr'\], unexpected \['extra'\]"):
        write_report(tmp_path / "b")
    with pytest.raises(ProbebenchError, match="missing columns"):
        load_results(tmp_path)


def test_asking_for_a_metric_split_or_backbone_not_in_the_results_lists_what_is_there(tmp_path):
    df = synthetic_rows(seeds=(0,), with_fusion=False, with_combo=False)
    with pytest.raises(
        ProbebenchError, match=r"Unknown metric 'miou'\. Did you mean: mIoU\?.*Available: .*rmse"
    ):
        plot_timestep_curves(df, tmp_path, metric="miou")
    with pytest.raises(ProbebenchError, match=r"Unknown backbone or model 'flux'.*flux\.1-dev \(default\)"):
        plot_timestep_curves(df, tmp_path, models=["flux"])
    with pytest.raises(ProbebenchError, match=r"Unknown split 'train'.*Available: test, val"):
        select(df, split="train")
    with pytest.raises(ProbebenchError, match=r"Unknown probe 'lasso'.*ridge"):
        curve_table(df, probe="lasso")
    paths = plot_timestep_curves(df, tmp_path, models=["flux.1-dev"])  # a backbone name selects its models
    assert [p.name for p in paths] == [
        "timestep_curves_flux.1-dev-default.png",
        "timestep_curves_flux.1-dev-default.pdf",
    ]


def test_replicates_are_run_and_seed_pairs():
    """A sweep's seed axis runs each cell under its own run name, with the same probe seeds inside: two runs ×
    one probe seed are two replicates, not one."""
    rows = [{**seg("enc", "1", "test", 0, v), "run": r} for r, v in (("s0", 0.4), ("s1", 0.6))]
    m = seed_mean(frame(rows))
    assert m["n_seeds"].tolist() == [2] and m["value"].tolist() == pytest.approx([0.5])
