"""Online trained probes: features computed from the live adapter inside the training loop equal those of a
feature cache, so online and cache mode give the same records and rows; an online run stores no feature; the
stage key ``online`` is not part of any identity; and it is refused for a probe that is not trained."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _runs import small_run

import backbones
import tasks
from backbones.store import extract_to_cache
from probebench.core.errors import ProbebenchError
from probes.base import Split
from probes.fusion import fusion_probe
from probes.linear import combine_probe, linear_probe
from probes.stream import LiveSource

KINDS = ["segmentation", "depth"]
LAYERS, TIMESTEPS = [0, 1], [0.0, 0.5]
TINY = "{name: sd3-medium, weights: random, image_size: null, options: {config: tiny}, layers: [0, 1], timesteps: [0.0, 0.5]}"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random SD3, scenes 8/4/4 at 16 px, and its caches with noise seeds 0 and 1."""
    root = tmp_path_factory.mktemp("cache")
    adapter = backbones.create("sd3-medium", weights="random", config="tiny")
    splits = {
        s: tasks.create("scenes", split=s, resolution=16, num_images=n)
        for s, n in (("train", 8), ("val", 4), ("test", 4))
    }
    grid = {"layers": LAYERS, "timesteps": TIMESTEPS}
    cached = {
        seed: [
            Split(
                extract_to_cache(adapter, splits[s], **grid, cache_root=root, seed=seed, progress=False),
                splits[s],
            )
            for s in ("train", "val", "test")
        ]
        for seed in (0, 1)
    }
    # extracted 3 images at a time: other batches than the cache's, and shuffled training batches
    live = {
        seed: [
            LiveSource(adapter, splits[s], **grid, seed=seed, batch_size=3) for s in ("train", "val", "test")
        ]
        for seed in (0, 1)
    }
    return adapter, cached, live


def _same_records(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x == y  # every field, scores included, exactly


def test_live_features_equal_the_cache_for_any_images(setup):
    _, cached, live = setup
    idx, keys = [6, 1, 4], [(1, 0.5), (0, 0.0)]
    a, b = cached[0][0].features(idx, keys), live[0][0].features(idx, keys)
    for k in keys:
        assert a[k].dtype == b[k].dtype == np.float16 and np.array_equal(a[k], b[k])
    a_info, b_info = cached[0][0].info((1, 0.5)), live[0][0].info((1, 0.5))
    assert (a_info.shape, a_info.log_snr, a_info.stem) == (b_info.shape, b_info.log_snr, b_info.stem)
    with pytest.raises(ProbebenchError, match=r"not among the live features"):
        live[0][0].info((2, 0.5))


@pytest.mark.parametrize("memory_gb", [8.0, 0.0])  # in memory (extracted once), or extracted every epoch
def test_linear_online_equals_cache(setup, memory_gb):
    _, cached, live = setup
    params = {"epochs": 2, "batch_size": 3, "max_memory_gb": memory_gb, "device": "cpu"}
    keys = [(1, 0.5), (0, 0.0)]
    a = linear_probe(*cached[0], KINDS, keys=keys, progress=False, **params)
    b = linear_probe(*live[0], KINDS, keys=keys, progress=False, **params)
    _same_records(a.records, b.records)
    for name, sd in a.state_dicts.items():
        for k, v in sd.items():
            assert torch.equal(v, b.state_dicts[name][k])


def test_streamed_online_features_are_extracted_every_epoch(setup, monkeypatch):
    adapter, _, live = setup
    calls = []
    real = adapter.extract
    monkeypatch.setattr(
        adapter, "extract", lambda images, *a, **k: calls.append(len(images)) or real(images, *a, **k)
    )
    params = {"epochs": 2, "batch_size": 4, "patience": 0, "device": "cpu"}
    for src in live[0][:2]:
        src.info((1, 0.5))  # the shapes (read from one image) before counting
    linear_probe(*live[0][:2], None, ["depth"], keys=[(1, 0.5)], progress=False, max_memory_gb=8.0, **params)
    in_memory = sum(calls)
    calls.clear()
    linear_probe(*live[0][:2], None, ["depth"], keys=[(1, 0.5)], progress=False, max_memory_gb=0.0, **params)
    # in memory: train and val once each; streamed: train every epoch, val after every epoch and before training
    assert in_memory == 8 + 4
    assert sum(calls) == 2 * 8 + 3 * 4


def test_fusion_and_combine_online_equal_cache(setup):
    _, cached, live = setup
    params = {"epochs": 2, "batch_size": 3, "device": "cpu"}
    keys = [(1, 0.0), (1, 0.5)]
    a = fusion_probe(*cached[0], KINDS, keys=keys, progress=False, mode="spatial", width=8, **params)
    b = fusion_probe(*live[0], KINDS, keys=keys, progress=False, mode="spatial", width=8, **params)
    _same_records(a.records, b.records)
    assert a.artifacts.keys() == b.artifacts.keys()
    for name in a.artifacts:
        assert np.array_equal(a.artifacts[name], b.artifacts[name])
        assert a.artifact_meta[name] == b.artifact_meta[name]  # input labels name the same sources
    # two sources at once: the noise seed 1 copy as the extra backbone
    extra = {w: [s] for w, s in zip(("train", "val", "test"), cached[1])}
    extra_live = {w: [s] for w, s in zip(("train", "val", "test"), live[1])}
    c = combine_probe(
        *cached[0], ["depth"], keys=[(1, 0.5)], extra=extra, extra_keys=[(0, 0.0)], progress=False, **params
    )
    d = combine_probe(
        *live[0],
        ["depth"],
        keys=[(1, 0.5)],
        extra=extra_live,
        extra_keys=[(0, 0.0)],
        progress=False,
        **params,
    )
    _same_records(c.records, d.records)
    assert {r["probe"] for r in d.records} == {"combine", "combine-main", "combine-extra"}


# -- the pipeline -----------------------------------------------------------------------------------------------
def _config(tmp_path, name, online, probes=None):
    from probebench.config import load_config

    flag = "true" if online else "false"
    probes = probes or (
        "probes=[{name: ridge-stream, params: {lambdas: [0.1, 1.0]}}, "
        f"{{name: linear, cells: best, online: {flag}, params: {{epochs: 2, batch_size: 3}}}}, "
        f"{{name: fusion, cells: best-layer, online: {flag}, params: {{epochs: 2, batch_size: 3, width: 8}}}}]"
    )
    return load_config(
        None,
        small_run(
            tmp_path, f"name={name}", f"backbones=[{TINY}]", "tasks=[depth]", "probe_seeds=[0]", probes
        ),
    )


IDENTITY = ["backbone", "weights", "task", "split", "probe", "layer", "timestep", "seed", "metric"]


def test_pipeline_online_stores_no_cache_and_equals_cache_mode(tmp_path):
    from probebench.core.results import read_results
    from probebench.pipeline import run

    online = read_results(run(_config(tmp_path, "x", True), progress=False, analyze=False))
    assert set(online["probe"]) == {"ridge", "linear", "fusion-spatial"}
    assert not (tmp_path / "c").exists()  # a backbone used only by ridge-stream and online stages: no cache
    trained = online[online["probe"] != "ridge"]
    assert trained["cache_hash"].str.startswith("stream:").all()

    # the same config in cache mode, in the same run directory: every row is done, nothing is extracted
    again = read_results(run(_config(tmp_path, "x", False), progress=False, analyze=False))
    assert len(again) == len(online) and not (tmp_path / "c").exists()

    # in a run directory of its own, cache mode computes the same rows: same identity, same numbers
    cached = read_results(run(_config(tmp_path, "y", False), progress=False, analyze=False))
    assert (tmp_path / "c").is_dir()
    cols = [*IDENTITY, "config_hash", "setup_hash", "value"]
    a = online[cols].sort_values(IDENTITY).reset_index(drop=True)
    b = cached[cols].sort_values(IDENTITY).reset_index(drop=True)
    assert a.equals(b)


def test_online_is_left_out_of_every_identity():
    from probebench.config import ProbeConfig, RunConfig, config_hash, stage_identity, to_dict
    from probebench.pipeline import stage_hash
    from probebench.rundir import config_changes

    off, on = ProbeConfig("linear", cells="best"), ProbeConfig("linear", cells="best", online=True)
    assert stage_identity(on) == stage_identity(off) and "online" not in stage_identity(on)
    cfg_off, cfg_on = RunConfig(probes=[off]), RunConfig(probes=[on])
    assert config_hash(cfg_on) == config_hash(cfg_off)
    assert config_changes(to_dict(cfg_off), to_dict(cfg_on)) == []
    data_id = {"train": {}, "val": {}, "test": {}}
    models = cfg_on.backbones[:1]
    assert stage_hash(cfg_on, on, models, data_id=data_id) == stage_hash(
        cfg_off, off, models, data_id=data_id
    )
    # what does change numbers still does
    other = ProbeConfig("linear", cells="best", online=True, params={"lr": 0.1})
    assert stage_hash(cfg_on, other, models, data_id=data_id) != stage_hash(
        cfg_on, on, models, data_id=data_id
    )


@pytest.mark.parametrize("probe", ["ridge", "ridge-stream"])
def test_online_for_a_probe_that_is_not_trained_is_refused(tmp_path, probe):
    from probebench.pipeline import run

    cfg = _config(tmp_path, "z", True, probes=f"probes=[{{name: {probe}, online: true}}]")
    with pytest.raises(ProbebenchError, match=rf"Probe '{probe}'.*not a trained probe.*`ridge-stream`"):
        run(cfg, progress=False, analyze=False)
    assert not (tmp_path / "r" / "z").exists() and not (tmp_path / "c").exists()


def test_cells_from_with_pool_to_caches_only_the_chosen_cells_pooled(tmp_path):
    """The way to cache only the chosen cells, pooled: a backbone entry with ``cells_from`` and ``pool_to``; its
    reference backbone, screened by ridge-stream, is never extracted."""
    import json

    from probebench.config import load_config
    from probebench.core.results import read_results
    from probebench.pipeline import run

    pooled = TINY.replace("layers: [0, 1], timesteps: [0.0, 0.5]", "cells_from: 0, pool_to: 2")
    cfg = load_config(
        None,
        small_run(
            tmp_path,
            "name=p",
            f"backbones=[{TINY}, {pooled}]",
            "tasks=[depth]",
            "probe_seeds=[0]",
            "probes=[{name: ridge-stream, select: [0], params: {lambdas: [0.1, 1.0]}}, "
            "{name: linear, cells: best, select: [1], label: linear-pooled, params: {epochs: 1}}]",
        ),
    )
    df = read_results(run(cfg, progress=False, analyze=False))
    ridge = df[(df.probe == "ridge") & (df.split == "val") & (df.metric == "rmse")]
    best = ridge.sort_values("value").iloc[0]
    manifests = [json.loads(p.read_text()) for p in sorted((tmp_path / "c").glob("*/manifest.json"))]
    assert len(manifests) == 3  # train, val and test of the pooled backbone; none of backbone 0
    for m in manifests:
        assert [(f["layer"], f["timestep"]) for f in m["features"]] == [
            (int(best.layer), float(best.timestep))
        ]
        assert max(m["features"][0]["shape"][1:3]) <= 2
    linear = df[df.probe == "linear-pooled"]
    assert set(zip(linear.layer, linear.timestep)) == {(best.layer, best.timestep)}
