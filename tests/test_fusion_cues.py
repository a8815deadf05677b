"""Cues of the fusion probe (``cues: true``): an extra source's maps at each input's timestep concatenated to that
input's channels before its projection, fused by the same timestep weights; on synthetic caches where we know
which cue carries the targets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _synthetic import synthetic_splits

from probebench.core.errors import ProbebenchError
from probes.features import FeatureSet
from probes.fusion import fusion_probe, load_fusion_head
from probes.training import ProbeRun, TrainConfig

MAIN_KEYS = [(1, 0), (1, 500)]  # noise
CUE_KEYS = [(0, 0), (0, 500), (2, 0), (2, 500)]  # the cue source: (0, 500) carries the targets, on a 4×4 grid
CUE_SIGNAL = (0, 500)
FAST = {"epochs": 12, "lr": 1e-2, "batch_size": 4, "width": 16, "progress": False}
SMALL = {"train": 8, "val": 4, "test": 4}

pytestmark = pytest.mark.usefixtures("one_thread")


def _extra(cue, roles=("train", "val", "test")):
    return {r: [cue[r]] for r in roles}


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("cues")
    main = synthetic_splits(root, MAIN_KEYS, signal=None)
    cue = synthetic_splits(root, CUE_KEYS, signal=CUE_SIGNAL, backbone="cue", grid=(4, 4))
    return main, cue


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("cues-small")
    main = synthetic_splits(root, MAIN_KEYS, signal=None, sizes=SMALL)
    cue = synthetic_splits(root, CUE_KEYS, signal=CUE_SIGNAL, sizes=SMALL, backbone="cue", grid=(4, 4))
    return main, cue


def _fit(main, extra=None, **params):
    return fusion_probe(main["train"], main["val"], main["test"], ["segmentation"], extra=extra, **params)


def val_score(out, metric="mIoU"):
    (v,) = [r["value"] for r in out.records if r["metric"] == metric and r["split"] == "val"]
    return v


def test_cue_channels_are_the_cue_maps_on_the_inputs_grid(small):
    """An input with cues reads [its maps ; every cue key of its timestep, resampled to its grid], exactly the
    numbers the same keys give as separate inputs on that grid, in memory or streamed."""
    main, cue = small
    run = ProbeRun(
        "fusion", main["train"], main["val"], None, ["segmentation"], cfg=TrainConfig(), seed=0,
        progress=False, extra=_extra(cue, ("train", "val")),
    )  # fmt: skip
    from probes.fusion import cue_inputs

    (with_cues,) = cue_inputs(run, run.inputs([(1, 500)]), None)
    assert with_cues.dim == 30 and with_cues.own_dim == 10 and with_cues.label == "L001_T500+cues"
    assert [c.key for c in with_cues.cues] == [(0, 500), (2, 500)]  # the cue keys at t=500, in key order
    separate = run.inputs([(1, 500)]) + run.inputs([(0, 500), (2, 500)], source=1)
    grid = [with_cues.grid]
    idx = np.arange(3)
    a = FeatureSet(run.splits["train"], [with_cues], grid, max_bytes=1e9).batch(idx)[0]
    streamed = FeatureSet(run.splits["train"], [with_cues], grid, max_bytes=0).batch(idx)[0]
    b = torch.cat(FeatureSet(run.splits["train"], separate, grid * 3, max_bytes=1e9).batch(idx), 1)
    assert a.shape == (3, 30, 8, 8)
    assert torch.equal(a, b) and torch.equal(a, streamed)


def test_cues_widen_the_inputs_and_the_probe_records_rows(small, tmp_path):
    main, cue = small
    out = _fit(main, _extra(cue), mode="spatial", cues=True, **{**FAST, "epochs": 2})
    rec = out.records[0]
    assert rec["inputs"] == ["L001_T0+cues", "L001_T500+cues"]
    assert rec["layer"] == 1 and rec["timestep"] == [0, 500] and rec["cues"] is True
    assert {r["split"] for r in out.records} == {"val", "test"} and rec["probe"] == "fusion-spatial"
    (name,) = out.state_dicts
    assert name == "fusion-spatial/segmentation/L1_T0+500+cues"
    spec = out.state_specs[name]
    assert spec["kwargs"]["in_dims"] == [30, 30]  # 10 own channels + 2 cue keys × 10
    assert spec["cues"] == {"sources": [1], "names": ["cue"]}
    first = spec["inputs"][0]
    assert first["source"] == 0 and first["dim"] == 10 and (first["layer"], first["timestep"]) == (1, 0)
    assert [(c["source"], c["layer"], c["timestep"], c["dim"], c["grid"]) for c in first["cues"]] == [
        (1, 0, 0, 10, [4, 4]),
        (1, 2, 0, 10, [4, 4]),
    ]
    meta = out.artifact_meta["fusion_weights/segmentation"]
    assert meta["cues"] == [["cue:L000_T0", "cue:L002_T0"], ["cue:L000_T500", "cue:L002_T500"]]
    assert out.artifacts["fusion_weights/segmentation"].shape == (SMALL["val"], 2, 8, 8)
    # the saved head rebuilds from its own file, cues and all
    specs = {"segmentation": main["train"].dataset.target_spec("segmentation")}
    out.save(tmp_path, backbone="synthetic+cue", weights="random", stage="fusion", specs=specs, probe_seed=0)
    (path,) = tmp_path.glob("fusion_fusion-spatial_*cues*.safetensors")
    net, saved = load_fusion_head(path)
    assert saved["cues"] == spec["cues"] and net.fusion.proj[0].in_channels == 30
    # extra_keys restrict the cue keys
    out = _fit(
        main, _extra(cue), mode="mean", cues=True, extra_keys=[[0, 0], [0, 500]], **{**FAST, "epochs": 1}
    )
    (spec,) = out.state_specs.values()
    assert spec["kwargs"]["in_dims"] == [20, 20]


def test_cues_that_carry_the_answer_help_and_get_the_timestep_weight(caches):
    """Main features are noise; the cue at t=500 encodes the targets: with cues the fusion reads it (and the
    global timestep weights choose t=500), without cues it cannot."""
    main, cue = caches
    without = _fit(main, mode="spatial", **FAST)
    with_cues = _fit(main, _extra(cue), mode="spatial", cues=True, **FAST)
    assert val_score(with_cues) > val_score(without) + 0.15
    glob = _fit(main, _extra(cue), mode="global", cues=True, **FAST)
    g = glob.artifacts["global_weights/segmentation"]
    assert g.shape == (1, 2) and glob.artifact_meta["global_weights/segmentation"]["rows"] == ["L001"]
    assert g[0, 1] > 0.6  # the timestep whose cue carries the targets
    assert val_score(glob) > val_score(without) + 0.15


def test_without_cues_extra_keys_stay_inputs_of_their_own(small):
    main, cue = small
    out = _fit(main, _extra(cue), mode="spatial", **{**FAST, "epochs": 1})
    rec = out.records[0]
    assert rec["inputs"] == [
        "L001_T0", "L001_T500", "cue:L000_T0", "cue:L000_T500", "cue:L002_T0", "cue:L002_T500",
    ]  # fmt: skip
    assert "cues" not in rec and rec["layer"] == [1, 0, 2]
    (name,) = out.state_dicts
    assert name == "fusion-spatial/segmentation/L1_T0+500+x1-L0+2_T0+500"
    spec = out.state_specs[name]
    assert spec["kwargs"]["in_dims"] == [10] * 6 and "cues" not in spec
    assert not any("cues" in i for i in spec["inputs"]) and "cues" not in json.dumps(spec)
    assert "cues" not in out.artifact_meta["fusion_weights/segmentation"]


def test_cue_errors_say_what_is_expected(small, tmp_path):
    main, cue = small
    args = {"mode": "spatial", "cues": True, **{**FAST, "epochs": 1}}
    with pytest.raises(ProbebenchError, match=r"exactly one extra source .*it got 0\."):
        _fit(main, **args)
    other = synthetic_splits(tmp_path, CUE_KEYS, signal=None, sizes=SMALL, backbone="other")
    two = {r: [cue[r], other[r]] for r in ("train", "val", "test")}
    with pytest.raises(ProbebenchError, match=r"exactly one extra source .*it got 2 \(cue, other\)"):
        _fit(main, two, **args)
    with pytest.raises(
        ProbebenchError, match=r"input L001_T0 is at timestep 0, but the cue source cue has no map there; its "
        r"timesteps: \[500\]",
    ):  # fmt: skip
        _fit(main, _extra(cue), extra_keys=[[0, 500], [2, 500]], **args)
    with pytest.raises(ProbebenchError, match=r"run it on each backbone alone .*cues: true"):
        _fit(main, _extra(cue), mode="single", **{**FAST, "epochs": 1})  # single without cues: still refused


def test_single_with_cues_fits_each_timestep_with_its_own_cues(caches, tmp_path):
    """The control 'best single timestep + cues': one model per input, each with its timestep's cue channels."""
    main, cue = caches
    out = _fit(main, _extra(cue), mode="single", cues=True, extra_keys=[[0, 0], [0, 500]], **FAST)
    scores = out.artifacts["single_val_scores/segmentation"]
    meta = out.artifact_meta["single_val_scores/segmentation"]
    assert scores.shape == (2,) and meta["chosen"] == 1  # t=500, whose cue carries the targets
    assert meta["cues"] == [["cue:L000_T0"], ["cue:L000_T500"]]
    assert scores[1] > scores[0] + 0.2
    assert {(r["layer"], r["timestep"]) for r in out.records} == set(MAIN_KEYS)
    assert {r["split"] for r in out.records} == {"val", "test"}
    (name,) = out.state_dicts
    assert name == "fusion-single/segmentation/L1_T500+cues"
    spec = out.state_specs[name]
    assert spec["kwargs"]["in_dims"] == [20] and spec["kwargs"]["mode"] == "mean"
    assert spec["cues"]["sources"] == [1] and spec["inputs"][0]["cues"][0]["timestep"] == 500


def test_same_seed_same_records_and_weights(small):
    main, cue = small
    runs = [_fit(main, _extra(cue), mode="spatial", cues=True, **{**FAST, "epochs": 3}) for _ in range(2)]
    assert runs[0].records == runs[1].records
    (name,) = runs[0].state_dicts
    a, b = runs[0].state_dicts[name], runs[1].state_dicts[name]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(
        runs[0].artifacts["fusion_weights/segmentation"], runs[1].artifacts["fusion_weights/segmentation"]
    )
