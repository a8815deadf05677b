"""Fusion probes over timesteps (MMDiff) and their baselines, on synthetic caches where we know which key
carries the signal; the noise-control use through extra caches; two backbones at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _synthetic import synthetic_splits

from probebench.core.errors import ProbebenchError
from probes.fusion import FusionNet, FusionProbe, TimestepFusion, fusion_probe
from probes.linear import combine_probe

KEYS = [(1, 0), (1, 250), (1, 500), (1, 750)]
SIGNAL = (1, 500)
FAST = {"epochs": 20, "lr": 1e-2, "batch_size": 4, "width": 16, "progress": False}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def signal(tmp_path_factory):
    sp = synthetic_splits(tmp_path_factory.mktemp("fusion"), KEYS, signal=SIGNAL)
    return sp["train"], sp["val"], sp["test"]


@pytest.fixture(scope="module")
def runs(signal):
    """Each mode once on the one-signal-key case (segmentation)."""
    return {m: fusion_probe(*signal, ["segmentation"], mode=m, **FAST) for m in ("spatial", "global", "mean")}


def val_score(out, metric="mIoU"):
    (v,) = [r["value"] for r in out.records if r["metric"] == metric and r["split"] == "val"]
    return v


def test_spatial_weights_sum_to_one_and_concentrate_on_the_signal_key(runs, signal):
    out = runs["spatial"]
    w = out.artifacts["fusion_weights/segmentation"]
    assert w.shape == (len(signal[1].dataset), len(KEYS), 8, 8) and w.dtype == np.float32
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-5)
    assert (w >= 0).all()
    assert w[:, KEYS.index(SIGNAL)].mean() > 0.6  # uniform would be 0.25
    meta = out.artifact_meta["fusion_weights/segmentation"]
    assert meta["keys"] == [list(k) for k in KEYS] and meta["split"] == "val"
    assert meta["log_snr"] == [1.0, 0.0, -1.0, -2.0] and len(meta["image_ids"]) == w.shape[0]
    rec = out.records[0]
    assert rec["probe"] == "fusion-spatial" and rec["layer"] == 1 and rec["timestep"] == [0, 250, 500, 750]
    assert {r["split"] for r in out.records} == {"val", "test"} and rec["seed"] == 0
    assert any(k.startswith("fusion-spatial/segmentation/") for k in out.state_dicts)


def test_global_weights_concentrate_and_fusion_beats_the_mean(runs):
    g = runs["global"].artifacts["global_weights/segmentation"]
    assert g.shape == (1, len(KEYS))
    assert g.sum() == pytest.approx(1.0, abs=1e-5)
    assert g[0, KEYS.index(SIGNAL)] > 0.5
    mean = val_score(runs["mean"])
    assert val_score(runs["spatial"]) > mean + 0.03
    assert val_score(runs["global"]) > mean + 0.03
    assert not runs["mean"].artifacts  # the uniform mean has nothing learned to plot


def test_global_weights_grid_is_layers_by_timesteps(tmp_path):
    keys = [(layer, t) for layer in (0, 2) for t in (0, 250, 500)]
    sp = synthetic_splits(tmp_path, keys, signal=(2, 250), sizes={"train": 8, "val": 4})
    out = fusion_probe(sp["train"], sp["val"], None, ["segmentation"], mode="global", **{**FAST, "epochs": 2})
    g = out.artifacts["global_weights/segmentation"]
    meta = out.artifact_meta["global_weights/segmentation"]
    assert g.shape == (2, 3) and g.sum() == pytest.approx(1.0, abs=1e-5)
    assert meta["layers"] == [0, 2] and meta["timesteps"] == [0, 250, 500]
    assert {r["split"] for r in out.records} == {"val"}  # no test split given
    # group_by="layer": a softmax per layer, each row sums to 1
    out = fusion_probe(
        sp["train"],
        sp["val"],
        None,
        ["segmentation"],
        mode="global",
        group_by="layer",
        **{**FAST, "epochs": 1},
    )
    np.testing.assert_allclose(out.artifacts["global_weights/segmentation"].sum(1), 1.0, atol=1e-5)


def test_single_picks_the_best_key_on_val(signal):
    out = fusion_probe(*signal, ["segmentation"], mode="single", **{**FAST, "epochs": 8})
    scores = out.artifacts["single_val_scores/segmentation"]
    meta = out.artifact_meta["single_val_scores/segmentation"]
    best = int(np.argmax(scores))
    assert scores.shape == (len(KEYS),) and meta["chosen"] == best == KEYS.index(SIGNAL)
    recs = out.records  # every input at its own cell, val and test: the analysis picks the best on val
    assert {(r["layer"], r["timestep"]) for r in recs} == set(KEYS)
    main = {
        (r["layer"], r["timestep"]): r["value"] for r in recs if r["split"] == "val" and r["metric"] == "mIoU"
    }
    assert [main[k] for k in KEYS] == pytest.approx(scores.tolist(), abs=1e-6)
    assert max(main, key=main.get) == SIGNAL
    assert {r["probe"] for r in recs} == {"fusion-single"} and {r["split"] for r in recs} == {"val", "test"}


def test_layer_groups_feed_a_dpt_head_for_depth(tmp_path):
    keys = [(layer, t) for layer in (0, 1) for t in (0, 500)]
    sp = synthetic_splits(tmp_path, keys, signal=(1, 500), sizes={"train": 6, "val": 4})
    out = fusion_probe(
        sp["train"], sp["val"], None, ["depth"], mode="spatial", group_by="layer", head="auto",
        head_width=8, **{**FAST, "epochs": 1},
    )  # fmt: skip
    w = out.artifacts["fusion_weights/depth"]
    assert w.shape == (4, 4, 8, 8)
    np.testing.assert_allclose(w[:, :2].sum(1), 1.0, atol=1e-5)  # layer 0's timesteps
    np.testing.assert_allclose(w[:, 2:].sum(1), 1.0, atol=1e-5)  # layer 1's timesteps
    assert out.artifact_meta["fusion_weights/depth"]["groups"] == [[0, 1], [2, 3]]
    assert {r["metric"] for r in out.records} >= {"rmse", "abs_rel", "delta1"}
    with pytest.raises(ProbebenchError, match=r"dpt head .* does not fit the segmentation task"):
        fusion_probe(sp["train"], sp["val"], None, ["segmentation"], head="dpt", progress=False)


def test_fusion_modules_are_uniform_at_init_and_shape_preserving():
    torch.manual_seed(0)
    xs = [torch.randn(2, c, 6, 6) for c in (5, 7, 9)]
    for mode in ("spatial", "global", "mean"):
        f = TimestepFusion([5, 7, 9], mode, width=4)
        np.testing.assert_allclose(f.weight_maps(xs).detach().numpy(), 1 / 3, atol=1e-6)
        assert f(xs)[0].shape == (2, 4, 6, 6)
    assert TimestepFusion([5, 7, 9], "concat", width=4)(xs)[0].shape == (2, 12, 6, 6)
    assert FusionNet([5, 7, 9], 3, mode="spatial", width=4)(xs).shape == (2, 3, 6, 6)
    with pytest.raises(ProbebenchError, match="Unknown fusion mode 'spatiall'"):
        TimestepFusion([5], "spatiall")


def test_gate_entropy_term_is_the_weights_entropy_in_training_only():
    torch.manual_seed(0)
    xs = [torch.randn(2, 5, 6, 6) for _ in range(3)]
    net = FusionNet([5, 5, 5], 3, mode="spatial", width=4, gate_entropy=0.5)
    net.fusion.gates[0][-1].weight.data.normal_()  # non-uniform weights
    net.train()
    net(xs)
    w = net.fusion.weight_maps(xs)
    expected = -0.5 * (-(w * w.log()).sum(1).mean())
    torch.testing.assert_close(net.regularization(), expected)
    assert net.regularization() is None  # consumed; nothing was run since
    net.eval()
    net(xs)
    assert net.regularization() is None  # evaluation adds nothing
    plain = FusionNet([5, 5, 5], 3, mode="spatial", width=4)
    plain.train()
    plain(xs)
    assert plain.regularization() is None  # off by default
    with pytest.raises(ProbebenchError, match="gate_entropy must be ≥ 0"):
        TimestepFusion([5], "spatial", gate_entropy=-1.0)


def test_gate_entropy_keeps_the_spatial_weights_spread(signal):
    def entropy(out):
        w = out.artifacts["fusion_weights/segmentation"]
        return float(-(w * np.log(np.clip(w, 1e-12, None))).sum(1).mean())

    sharp = fusion_probe(*signal, ["segmentation"], mode="spatial", **FAST)
    spread = fusion_probe(*signal, ["segmentation"], mode="spatial", gate_entropy=1.0, **FAST)
    assert entropy(spread) > entropy(sharp) + 0.2  # uniform over the 4 keys: log 4 = 1.39


def test_bad_params_are_clear_errors(signal):
    with pytest.raises(
        ProbebenchError, match=r"unknown mode 'spacial'. Valid: spatial, global, mean, concat"
    ):
        fusion_probe(*signal, ["segmentation"], mode="spacial", progress=False)
    with pytest.raises(ProbebenchError, match=r"Unknown parameter 'gate_widht'.*Did you mean: gate_width"):
        fusion_probe(*signal, ["segmentation"], gate_widht=4, progress=False)


def test_noise_control_fuses_extra_caches_of_other_seeds(tmp_path):
    """K noise draws of one timestep = the same key in K caches extracted with other seeds (extra)."""
    key = [(1, 500)]
    caches = [
        synthetic_splits(
            tmp_path, key, signal=key[0] if s == 2 else None, sizes={"train": 8, "val": 4}, seed=s
        )
        for s in range(3)
    ]
    extra = {role: [c[role] for c in caches[1:]] for role in ("train", "val")}
    out = fusion_probe(caches[0]["train"], caches[0]["val"], None, ["segmentation"], mode="global",
                       extra=extra, **{**FAST, "epochs": 2})  # fmt: skip
    g = out.artifacts["global_weights/segmentation"]
    meta = out.artifact_meta["global_weights/segmentation"]
    assert g.shape == (3, 1) and meta["sources"] == [0, 1, 2]
    assert meta["rows"] == ["L001", "synthetic#seed1:L001", "synthetic#seed2:L001"]
    assert out.records[0]["inputs"] == ["L001_T500", "synthetic#seed1:L001_T500", "synthetic#seed2:L001_T500"]
    assert out.records[0]["layer"] == 1 and out.records[0]["timestep"] == 500


def test_combine_two_backbones_on_different_grids(tmp_path):
    """Main cache (8×8 grid) carries noise; the second backbone (4×4 grid) carries the signal."""
    main = synthetic_splits(tmp_path, [(3, 500)], signal=None, backbone="dit")
    other = synthetic_splits(tmp_path, [(11, None)], signal=(11, None), backbone="dino", grid=(4, 4))
    extra = {role: [other[role]] for role in ("train", "val", "test")}
    out = combine_probe(main["train"], main["val"], main["test"], ["segmentation"], extra=extra,
                        **{**FAST, "epochs": 10})  # fmt: skip
    val = {r["probe"]: r for r in out.records if r["metric"] == "mIoU" and r["split"] == "val"}
    assert set(val) == {"combine", "combine-main", "combine-extra"}
    assert val["combine"]["inputs"] == ["L003_T500", "dino:L011_Tnone"]
    assert val["combine"]["layer"] == [3, 11] and val["combine"]["timestep"] == [500, None]
    assert set(out.state_dicts) == {
        "combine/segmentation/L3_T500+x1-L11_Tnone",
        "combine-main/segmentation/L3_T500",
        "combine-extra/segmentation/x1-L11_Tnone",
    }
    assert val["combine"]["value"] > val["combine-main"]["value"] + 0.2
    assert val["combine-extra"]["value"] > val["combine-main"]["value"] + 0.2
    with pytest.raises(ProbebenchError, match="needs a second backbone"):
        combine_probe(main["train"], main["val"], None, ["segmentation"], progress=False)
    wrong = {"train": [other["val"]], "val": [other["val"]]}
    with pytest.raises(ProbebenchError, match="other images"):
        combine_probe(main["train"], main["val"], None, ["segmentation"], extra=wrong, progress=False)


def test_single_mode_refuses_extra_caches(tmp_path):
    """'single' records each input at its (layer, timestep); inputs of other caches would share those cells."""
    key = [(1, 500)]
    caches = [
        synthetic_splits(tmp_path, key, signal=None, sizes={"train": 4, "val": 2}, seed=s) for s in range(2)
    ]
    extra = {role: [caches[1][role]] for role in ("train", "val")}
    with pytest.raises(ProbebenchError, match="run it on each backbone alone"):
        fusion_probe(caches[0]["train"], caches[0]["val"], None, ["segmentation"], mode="single", extra=extra,
                     **{**FAST, "epochs": 1})  # fmt: skip


def test_a_change_of_the_rows_a_probe_writes_changes_its_stage_hash(monkeypatch):
    from probebench.config import RunConfig
    from probebench.pipeline import stage_hash

    cfg = RunConfig()
    st = cfg.probes[3]  # fusion, mode single
    before = stage_hash(cfg, st, [cfg.backbones[0]])
    monkeypatch.setattr(FusionProbe, "rows_version", 99)
    assert stage_hash(cfg, st, [cfg.backbones[0]]) != before


def test_a_saved_fusion_head_rebuilds_from_its_own_file(runs, signal, tmp_path):
    """The head file carries its spec (constructor arguments, inputs in order, objective options, label space):
    rebuilt from the file alone, it predicts exactly what the fitted model predicts — what generation needs."""
    from probes.fusion import load_fusion_head

    out = runs["spatial"]
    specs = {"segmentation": signal[0].dataset.target_spec("segmentation")}
    out.save(tmp_path, backbone="synthetic", weights="random", stage="fusion", specs=specs, probe_seed=0)
    (name,) = [n for n in out.state_dicts if n.startswith("fusion-spatial/")]
    path = tmp_path / f"fusion_{name.replace('/', '_')}_seed0.safetensors"
    net, spec = load_fusion_head(path)
    assert [(i["layer"], i["timestep"]) for i in spec["inputs"]] == KEYS
    assert spec["task"] == "segmentation" and spec["kwargs"]["mode"] == "spatial" and spec["grid"] == "first"
    assert spec["target_spec"]["num_classes"] == specs["segmentation"].num_classes
    fitted = FusionNet(**{**spec["kwargs"], "rates": tuple(spec["kwargs"]["rates"])})
    fitted.load_state_dict(out.state_dicts[name])
    xs = [
        torch.randn(2, d, 8, 8, generator=torch.Generator().manual_seed(k))
        for k, d in enumerate(spec["kwargs"]["in_dims"])
    ]
    with torch.no_grad():
        assert torch.equal(net(xs), fitted.eval()(xs))
    single = fusion_probe(*signal, ["segmentation"], mode="single", **FAST)
    single.save(
        tmp_path / "s", backbone="synthetic", weights="random", stage="fusion", specs=specs, probe_seed=0
    )
    (path,) = (tmp_path / "s").glob("fusion_fusion-single_*.safetensors")
    net, spec = load_fusion_head(path)
    assert spec["kwargs"]["mode"] == "mean" and len(spec["inputs"]) == 1
