"""Generation with heads trained on concept cues: the export records the cue maps (and refuses cues the generator
did not make), sampling computes the same concept maps an extraction would at the head levels without changing the
samples, and ``probebench generate`` decodes the labels with them."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import backbones
from backbones.diffusion.concepts import concept_maps
from backbones.diffusion.noise import draw_noise
from backbones.diffusion.sampling import sample_with_features
from probebench.core.errors import ProbebenchError

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["background", "floor", "wall", "sphere", "box", "cylinder", "cone", "torus"]
PAIR = {"words": WORDS, "output": "pair", "background": ["background", "floor", "wall"]}


@pytest.fixture(scope="module")
def tiny():
    return backbones.create("tiny-mmdit", compute_batch=4)


def test_sampling_gives_the_extractions_concept_maps_and_the_same_samples(tiny):
    cm = concept_maps(tiny, PAIR)
    plan = tiny.sampling_plan(8, [0.6, 0.3, 0.0])  # σ = 0: the extra clean forward
    shape = tiny.sampling_latent_shape()
    noise = torch.stack([draw_noise(shape, seed=0, image_id=f"s{i}", draw=0) for i in range(3)])
    inputs = {}

    def grab(module, args, kwargs):  # the transformer's inputs at each forward
        inputs.setdefault("x", []).append((kwargs["hidden_states"].clone(), kwargs["timestep"].clone()))

    handle = tiny.transformer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with_cues = sample_with_features(tiny, noise, plan, [2], concepts=cm, concept_layers=[1, 4])
    finally:
        handle.remove()
    plain = sample_with_features(tiny, noise, plan, [2])
    assert torch.equal(with_cues.images, plain.images)  # the concept stream only reads
    assert all(torch.equal(with_cues.features[k], plain.features[k]) for k in plain.features)
    assert sorted(with_cues.cues) == sorted((layer, lvl) for layer in (1, 4) for lvl in (0.6, 0.3, 0.0))
    n = len(plan.sigmas)  # the levels forced through the head levels: more steps than asked
    assert plan.clean and len(inputs["x"]) == n + 1
    steps = [*plan.capture.items(), (n, 0.0)]  # the clean forward comes last
    for step, level in steps:  # the concept maps an extraction computes from the same input
        x, t = inputs["x"][step]
        want = cm.forward_maps(x, t, [1, 4])
        for layer in (1, 4):
            got = with_cues.cues[(layer, level)]
            assert got.shape == (3, 2, 8, 8)
            torch.testing.assert_close(got, want[layer], rtol=0, atol=0)
    torch.testing.assert_close(with_cues.cues[(4, 0.0)].sum(1), torch.ones(3, 8, 8))


@pytest.fixture(scope="module")
def cue_run(tmp_path_factory):
    """A small run with spatial fusion heads on tiny-mmdit with and without its object/background cue maps."""
    from probebench.config import load_config
    from probebench.pipeline import run

    tmp = tmp_path_factory.mktemp("cues")
    grid = {"layers": [2, 4], "timesteps": [0.0, 0.6], "image_size": None, "dtype": "float32"}
    fit = {"epochs": 2, "patience": 0}
    conf = {
        "name": "cues",
        "data": {
            "name": "scenes",
            "max_train": 12,
            "max_val": 6,
            "max_test": 6,
            "options": {"resolution": 64},
        },
        "backbones": [{"name": "tiny-mmdit", **grid}, {"name": "tiny-mmdit", **grid, "concepts": PAIR}],
        "probes": [
            {"name": "ridge", "select": [0], "params": {"lambdas": [1.0]}},
            {"name": "fusion", "cells": "best-layer", "select": [0], "params": {"mode": "spatial", **fit}},
            {
                "name": "fusion",
                "cells": "best-layer",
                "backbones": [0, 1],
                "params": {"mode": "spatial", "cues": True, "extra_keys": "all", **fit},
            },
        ],
        "probe_seeds": [0],
        "output_dir": str(tmp / "results"),
        "extract": {"batch_size": 6, "cache_dir": str(tmp / "cache")},
    }
    (tmp / "c.yaml").write_text(yaml.safe_dump(conf))
    return run(load_config(tmp / "c.yaml"), progress=False, analyze=False), tmp


def test_a_bundle_with_cues_generates_labels_from_its_concept_maps(cue_run):
    from probebench.bundles import export_bundle
    from probebench.generate import GenerateConfig, generate
    from probes.bundle import load_bundle

    out, tmp = cue_run
    models = sorted(p.name for p in (out / "heads").iterdir())
    cue_model = next(m for m in models if "+" in m)
    with pytest.raises(ProbebenchError, match="choose one with --model"):
        export_bundle(out, tmp / "b0")
    b = export_bundle(out, tmp / "b", model=cue_model)
    meta = json.loads((b / "bundle.json").read_text())
    assert meta["cues"]["concepts"] == {**PAIR, "score": "output"}
    assert meta["generator"]["backbone"] == "tiny-mmdit"
    bundle = load_bundle(b)
    assert bundle.cue_layers() and set(bundle.cue_layers()) <= {2, 4}
    # every input of every head carries the cue maps of its own timestep, both layers
    for head in bundle.heads.values():
        for inp in head.spec["inputs"]:
            assert {(c["layer"], c["timestep"]) for c in inp["cues"]} == {
                (2, inp["timestep"]),
                (4, inp["timestep"]),
            }
    cfg = GenerateConfig(str(b), str(tmp / "gen"), num_samples=2, prompts=["sphere floor"], batch_size=2)
    folder = generate(cfg)
    data = yaml.safe_load((folder / "dataset.yaml").read_text())
    assert data["source"]["cues"]["words"] == WORDS and data["source"]["cues"]["output"] == "pair"
    assert len(list((folder / "train" / "masks").glob("*.png"))) == 2
    # a bundle whose cue words the generator's concept maps do not match: one error naming both sides
    meta["cues"]["concepts"]["words"] = WORDS[:-1]  # without "torus"
    (b / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(
        ProbebenchError, match=r"not those its heads' cues were trained on:\n  bundle .*\n  generator"
    ):
        load_bundle(b).concept_adapter(backbones.create("tiny-mmdit"))


def test_cue_maps_of_another_model_are_refused_at_export(tiny):
    from probebench.bundles import _cues
    from probebench.config import BackboneConfig

    cue_cfg = BackboneConfig(name="tiny-mmdit", concepts=PAIR)
    fp = {"adapter": tiny.fingerprint()}
    own = {"adapter": concept_maps(tiny, PAIR).fingerprint(), "pool_to": None}
    assert _cues(cue_cfg, own, fp)["concepts"]["background"] == PAIR["background"]
    twin = backbones.create("tiny-mmdit", weights="random", concepts=PAIR)  # the random-weight twin's maps
    with pytest.raises(ProbebenchError, match=r"not made by the generator itself \(they differ in weights"):
        _cues(cue_cfg, {"adapter": twin.fingerprint()}, fp)
    with pytest.raises(ProbebenchError, match="the cue cache holds no concept maps"):
        _cues(cue_cfg, fp, fp)


def test_flux_sampling_with_the_concept_stream_keeps_its_samples():
    flux = backbones.create("flux.1-schnell", weights="random", config="tiny")
    cm = concept_maps(flux, ["cat", "dog", "sky"])
    plan = flux.sampling_plan(4, [0.5])
    shape = flux.sampling_latent_shape()
    noise = torch.stack([draw_noise(shape, seed=0, image_id=f"s{i}", draw=0) for i in range(2)])
    with_cues = sample_with_features(flux, noise, plan, [1], concepts=cm, concept_layers=[0, 1])
    plain = sample_with_features(flux, noise, plan, [1])
    assert torch.equal(with_cues.images, plain.images)
    assert sorted(with_cues.cues) == [(0, 0.5), (1, 0.5)]
    for m in with_cues.cues.values():
        assert m.shape == (2, 3, 4, 4)
        torch.testing.assert_close(m.sum(1), torch.ones(2, 4, 4))
