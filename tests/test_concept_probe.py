"""Concept maps in a run: ``concepts:`` on a backbone (``backbones.create(..., concepts=...)``), the zero-shot
``concept`` probe (probes/concept.py) reading them through the target kinds, ConceptAttention's cross-attention
baseline, object/background pair maps, and the warning for concept words a real tokenizer splits."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _synthetic import write_cache

import backbones
import tasks
from backbones.diffusion.concepts import ConceptMapAdapter, ConceptSpec
from probebench.config import BackboneConfig, load_config
from probebench.core.errors import ProbebenchError
from probebench.pipeline import backbone_label, run
from probes import probe_class
from probes.base import Split
from tasks.scenes_render import CLASS_NAMES

pytestmark = pytest.mark.usefixtures("one_thread")

BACKGROUND = ["background", "floor", "wall"]


# -- the spec ----------------------------------------------------------------------------------------------
def test_concept_spec_reads_lists_and_mappings_and_explains_mistakes():
    assert ConceptSpec.parse(["sphere", "box"]) == ConceptSpec(("sphere", "box"))
    spec = ConceptSpec.parse(
        {"words": ["sphere", "floor"], "score": "cross-attention", "output": "pair", "background": ["floor"]}
    )
    assert spec.label() == "concepts=sphere floor;score=cross-attention;output=pair;background=floor"
    assert ConceptSpec(("a", "b")).label() == "concepts=a b"
    with pytest.raises(ProbebenchError, match=r"Unknown concepts key 'word'\. Did you mean 'words'"):
        ConceptSpec.parse({"word": ["a"]})
    with pytest.raises(
        ProbebenchError, match=r"Unknown concept score 'cross'.*Valid: output, cross-attention"
    ):
        ConceptSpec.parse({"words": ["a"], "score": "cross"})
    with pytest.raises(ProbebenchError, match=r"background words \['sky'\] are not among"):
        ConceptSpec.parse({"words": ["a", "b"], "background": ["sky"]})
    with pytest.raises(ProbebenchError, match=r"'pair'.*needs `background:` naming some but not all"):
        ConceptSpec.parse({"words": ["a", "b"], "output": "pair", "background": ["a", "b"]})
    with pytest.raises(ProbebenchError, match="background:` must be a list of words, got the string 'floor'"):
        ConceptSpec.parse({"words": ["a", "floor"], "background": "floor"})
    assert ConceptSpec(("a", "b")).channels == ("a", "b")
    assert ConceptSpec(("a", "b"), output="pair", background=("b",)).channels == ("object", "background")
    with pytest.raises(ProbebenchError, match="needs `words:"):
        ConceptSpec.parse({"score": "output"})
    # result rows name the maps: words and settings that are not the default
    b = BackboneConfig(name="tiny-mmdit", concepts={"words": ["sphere", "box"], "score": "cross-attention"})
    assert backbone_label(b) == "tiny-mmdit[concepts=sphere box;score=cross-attention]"
    assert backbone_label(BackboneConfig(name="tiny-mmdit")) == "tiny-mmdit"


def test_create_with_concepts_gives_maps_baseline_and_pairs():
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    words = ["background", "floor", "sphere", "box"]
    maps = backbones.create("tiny-mmdit", concepts=words)
    cross = backbones.create("tiny-mmdit", concepts={"words": words, "score": "cross-attention"})
    pair = backbones.create(
        "tiny-mmdit", concepts={"words": words, "output": "pair", "background": ["background", "floor"]}
    )
    assert isinstance(maps, ConceptMapAdapter) and maps.meta.width == 4 and pair.meta.width == 2
    fps = [a.fingerprint()["concepts"] for a in (maps, cross, pair)]
    assert len({json.dumps(f, sort_keys=True) for f in fps}) == 3  # three caches
    m, c, p = (a.extract(x, [2], [0.5], seed=1)[(2, 0.5)] for a in (maps, cross, pair))
    for t in (m, c, p):
        torch.testing.assert_close(t.sum(1), torch.ones(2, 8, 8))
    assert not torch.allclose(m, c, atol=1e-2)
    # pair: [object, background] = the summed probabilities of the output maps
    torch.testing.assert_close(p, torch.stack([m[:, 2:].sum(1), m[:, :2].sum(1)], 1))


# -- the target kinds ------------------------------------------------------------------------------------
def test_kinds_read_concept_probabilities():
    specs = tasks.create("scenes", split="val", resolution=16, num_images=1).targets
    seg, sal, depth = specs["segmentation"], specs["saliency"], specs["depth"]
    words = ("sphere", "sky", "floor")
    probs = np.array([[[[0.5, 0.3, 0.2]]]], dtype=np.float32)  # (1, 1, 1, 3)
    out = seg.target_kind.from_concepts(probs, words, ("sky", "floor"), seg)
    want = np.zeros(len(CLASS_NAMES), dtype=np.float32)
    want[CLASS_NAMES.index("sphere")] = 0.5
    want[CLASS_NAMES.index("background")] = 0.3  # a background word that names no class
    want[CLASS_NAMES.index("floor")] = 0.2  # a class name wins over the background list
    np.testing.assert_allclose(out[0, 0, 0], want)
    with pytest.raises(ProbebenchError, match=r"\['sky'\] name no class .* not background words"):
        seg.target_kind.from_concepts(probs, words, (), seg)
    np.testing.assert_allclose(
        sal.target_kind.from_concepts(probs, words, ("sky", "floor"), sal), [[[[0.5]]]]
    )
    with pytest.raises(ProbebenchError, match="needs both object and background words"):
        sal.target_kind.from_concepts(probs, words, (), sal)
    assert depth.target_kind.from_concepts(probs, words, (), depth) is None  # depth: no zero-shot reading


# -- the probe -----------------------------------------------------------------------------------------------
def concept_split(root: Path, role: str, n: int, maps: dict, words) -> Split:
    """A cache of concept maps ``maps`` ((n, h, w, C) per key) for scenes ``role`` at 16 px."""
    ds = tasks.create("scenes", split=role, resolution=16, num_images=n)
    snr = {k: 2.0 - 4 * k[1] for k in maps}  # σ 0.2 is cleaner than σ 0.8
    cache = write_cache(root / role, [ds.image_id(i) for i in range(n)], maps, snr, backbone="tiny+concepts")
    manifest = json.loads((cache.path / "manifest.json").read_text())
    manifest["fingerprint"]["adapter"]["concepts"] = {"words": list(words)}
    (cache.path / "manifest.json").write_text(json.dumps(manifest))
    return Split(type(cache)(cache.path), ds)


def one_hot_truth(ds) -> np.ndarray:
    """Concept probabilities that are the true class map (words = the class names), (N, 16, 16, 8)."""
    t = np.stack([ds.load_target(i, "segmentation") for i in range(len(ds))])
    return np.eye(len(CLASS_NAMES), dtype=np.float32)[t]


def test_zero_shot_probe_scores_true_maps_perfectly_and_random_maps_poorly(tmp_path):
    rng = np.random.default_rng(0)
    splits = {}
    for role, n in (("train", 4), ("val", 6), ("test", 5)):
        ds = tasks.create("scenes", split=role, resolution=16, num_images=n)
        noise = rng.dirichlet(np.ones(len(CLASS_NAMES)), size=(n, 16, 16)).astype(np.float32)
        maps = {(1, 0.8): noise, (1, 0.2): one_hot_truth(ds), (3, 0.2): noise[::-1].copy()}
        splits[role] = concept_split(tmp_path, role, n, maps, CLASS_NAMES)
    probe = probe_class("concept").from_config({"background": BACKGROUND})
    out = probe.fit(splits["train"], splits["val"], splits["test"], ["segmentation", "saliency", "depth"])
    rows = {
        (
            r["layer"] if isinstance(r["layer"], int) else "mean",
            r["timestep"] if r.get("probe") is None else "m",
            r["task"],
            r["split"],
            r["metric"],
        ): r["value"]
        for r in out.records
    }
    assert {r["task"] for r in out.records} == {"segmentation", "saliency"}  # depth: no rows
    assert {r["split"] for r in out.records} == {"val", "test"}
    for split in ("val", "test"):
        assert rows[1, 0.2, "segmentation", split, "mIoU"] == pytest.approx(1.0)
        assert rows[1, 0.8, "segmentation", split, "mIoU"] < 0.2
        assert rows[1, 0.2, "saliency", split, "maxF"] > rows[1, 0.8, "saliency", split, "maxF"] + 0.2
        mean = rows["mean", "m", "segmentation", split, "mIoU"]
        assert rows[1, 0.8, "segmentation", split, "mIoU"] < mean <= 1.0  # the truth dominates the mean
    (mean_row,) = [r for r in out.records if r.get("probe") == "concept-mean" and r["metric"] == "mIoU"][:1]
    assert mean_row["layer"] == [1, 3] and mean_row["timestep"] == [0.8, 0.2]
    # the figure's maps: the val-best segmentation cell's layer, noisy → clean, first val images
    maps, meta = out.artifacts["concept_maps"], out.artifact_meta["concept_maps"]
    assert maps.shape == (4, len(CLASS_NAMES), 2, 16, 16)
    assert (
        meta["layer"] == 1
        and meta["timesteps"] == [0.8, 0.2]
        and meta["log_snr"] == pytest.approx([-1.2, 1.2])
    )
    assert meta["words"] == list(CLASS_NAMES) and meta["split"] == "val"
    np.testing.assert_array_equal(
        maps[:, :, 1].transpose(0, 2, 3, 1), splits["val"].cache.array((1, 0.2))[:4]
    )
    # no training, no seed: the same records from another seed
    again = probe.fit(splits["train"], splits["val"], splits["test"], ["segmentation"], seed=7)
    assert again.records == [r for r in out.records if r["task"] == "segmentation"]


def test_zero_shot_probe_refuses_features_that_are_not_concept_maps(tmp_path):
    ds = tasks.create("scenes", split="val", resolution=16, num_images=2)
    cache = write_cache(
        tmp_path / "c", [ds.image_id(i) for i in range(2)], {(0, 0.5): np.zeros((2, 4, 4, 3))}
    )
    split = Split(cache, ds)
    with pytest.raises(ProbebenchError, match=r"reads concept-attention maps.*`concepts: \[word, \.\.\.\]`"):
        probe_class("concept").from_config({}).fit(split, split, split, ["segmentation"])


# -- in a run ---------------------------------------------------------------------------------------------------
def test_a_run_scores_concept_maps_beside_the_ridge_ceiling(tmp_path):
    words = list(CLASS_NAMES)
    grid = {"layers": [1, 4], "timesteps": [0.5], "image_size": None, "dtype": "float32"}
    conf = {
        "name": "concepts",
        "data": {
            "name": "scenes",
            "max_train": 4,
            "max_val": 4,
            "max_test": 4,
            "options": {"resolution": 64},
        },
        "backbones": [
            {"name": "tiny-mmdit", **grid},
            {"name": "tiny-mmdit", **grid, "concepts": words},
            {"name": "tiny-mmdit", **grid, "concepts": {"words": words, "score": "cross-attention"}},
        ],
        "probes": [
            {"name": "ridge", "select": [0]},
            {"name": "concept", "select": [1, 2], "params": {"background": BACKGROUND}},
        ],
        "probe_seeds": [0],
        "output_dir": str(tmp_path / "out"),
        "extract": {"batch_size": 4, "cache_dir": str(tmp_path / "cache")},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    cfg = load_config(tmp_path / "c.yaml")
    out = run(cfg, analyze=False, progress=False)
    import pandas as pd

    df = pd.read_csv(out / "results.csv")
    label = "tiny-mmdit[concepts=" + " ".join(words) + "]"
    assert set(df.backbone) == {"tiny-mmdit", label, label[:-1] + ";score=cross-attention]"}
    zs = df[df.backbone == label]
    assert set(zs.probe) == {"concept", "concept-mean"} and set(zs.task) == {"segmentation", "saliency"}
    cells = zs[(zs.probe == "concept") & (zs.metric == "mIoU") & (zs.split == "test")]
    assert sorted(cells.layer.astype(int)) == [1, 4] and cells.value.between(0, 1).all()
    caches = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert sum(n.startswith("tiny-mmdit+concepts-scenes-") for n in caches) == 6  # 2 map kinds × 3 splits
    assert (next((out / "heads").glob("tiny-mmdit_concepts=*-default")) / "concept_maps.npy").is_file()
    # a rerun has every row: nothing is refitted
    n = len(df)
    run(cfg, analyze=False, progress=False)
    assert len(pd.read_csv(out / "results.csv")) == n


def test_a_new_backbone_key_at_its_default_changes_no_identity():
    plain = BackboneConfig(name="tiny-mmdit")
    from probebench.config import identity_dict, to_dict

    assert "concepts" not in identity_dict("backbone", to_dict(plain))
    assert identity_dict("backbone", to_dict(BackboneConfig(name="tiny-mmdit", concepts=["box"])))["concepts"]


# -- split words --------------------------------------------------------------------------------------------
def test_a_word_the_tokenizer_splits_is_named_once(tmp_path, monkeypatch):
    from miniature import build_snapshot

    monkeypatch.setenv("PROBEBENCH_PROMPT_CACHE", str(tmp_path / "prompts"))
    folder = build_snapshot("flux.1-schnell", tmp_path / "flux")
    ad = backbones.create("flux.1-schnell", weights=str(folder))
    assert ad.word_pieces("a") == ["\u2581a"]  # the miniature's T5 keeps one letter whole
    with pytest.warns(UserWarning, match=r"splits the concept words 'cat' into \['▁c', 'a', 't'\]") as rec:
        cm = backbones.create("flux.1-schnell", weights=str(folder), concepts=["a", "cat"])
    assert len([w for w in rec if "splits the concept words" in str(w.message)]) == 1
    assert cm.fingerprint()["concepts"]["words"] == ["a", "cat"]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        backbones.create("flux.1-schnell", weights=str(folder), concepts=["a", "b"])
    assert not [w for w in rec if "splits the concept words" in str(w.message)]  # whole words: no warning


def test_the_cost_plan_counts_concept_maps_as_extracted():
    from backbones.plan import feature_plan

    pair = {"words": ["sphere", "floor", "box"], "output": "pair", "background": ["floor"]}
    for concepts, c in ((["sphere", "floor", "box"], 3), (pair, 2)):
        plan = feature_plan("tiny-mmdit", layers="all", timesteps=[0.5], concepts=concepts)
        feats = backbones.create("tiny-mmdit", concepts=concepts).extract(
            torch.rand(1, 3, 64, 64), "all", [0.5]
        )
        assert plan.layers == tuple(range(6)) and sorted(plan.shapes) == sorted(feats)
        for key, f in feats.items():
            assert plan.shapes[key] == (*f.shape[2:], f.shape[1]) == (8, 8, c)
    flux = feature_plan("flux.1-schnell", "random", layers="all", timesteps=[0.5], options={"config": "tiny"})
    flux_c = feature_plan(
        "flux.1-schnell", "random", layers="all", timesteps=[0.5], options={"config": "tiny"}, concepts=["a"]
    )
    assert flux_c.num_layers == 2 < flux.num_layers  # the double-stream blocks only
    with pytest.raises(ProbebenchError, match=r"has none\. Backbones that support them: flux\.1-dev"):
        feature_plan("dit-xl-2-256", "random", timesteps=[100], options={"config": "tiny"}, concepts=["cat"])
