"""The default quickstart (the MMDiff-style study on tiny-mmdit) end to end at a small size: every probe stage,
the noise control extracted only at the best cells, and a report that answers (a)-(d)."""

from __future__ import annotations

import json

import pytest

from probebench.config import RunConfig, load_config, to_dict
from probebench.core.errors import ProbebenchError
from probebench.core.results import read_results
from probebench.pipeline import run

TS = "[0.0, 0.35, 0.7]"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    fast = "{epochs: 2, patience: 0}"
    cfg = load_config(
        None,
        [
            "data.max_train=16",
            "data.max_val=8",
            "data.max_test=8",
            f"backbones.0.timesteps={TS}",
            f"backbones.1.timesteps={TS}",
            "backbones.2.image_size=64",
            f"probes.1.params={fast}",
            "probes.2.params={mode: spatial, epochs: 2, patience: 0}",
            "probes.3.params={mode: single, epochs: 2, patience: 0}",
            "probes.4.params={mode: spatial, epochs: 2, patience: 0}",
            f"probes.5.params={fast}",
            f"extract.cache_dir={tmp / 'cache'}",
            f"output_dir={tmp / 'results'}",
            "name=study",
        ],
    )
    return cfg, run(cfg, progress=False), tmp / "cache"


def test_default_config_is_the_study():
    cfg = RunConfig()
    names = [(b.name, b.weights) for b in cfg.backbones]
    assert names[:3] == [
        ("tiny-mmdit", "default"),
        ("tiny-mmdit", "random"),
        ("timm:efficientnet_lite0", "default"),
    ]
    assert [b.cells_from for b in cfg.backbones[3:]] == [0] * 5
    assert len({b.seed for b in cfg.backbones[3:]} | {None}) == 6  # five other noise seeds
    assert len(cfg.backbones[0].timesteps) >= 6 and cfg.backbones[0].layers == "all"
    # the noise control has as many inputs as the timestep fusion
    control = next(p for p in cfg.probes if p.label == "fusion-noise-control")
    assert len(control.backbones) == len(cfg.backbones[0].timesteps)
    assert to_dict(cfg)["backbones"][0]["options"] == {}  # empty caption: no label leak into the features


def test_every_stage_writes_rows(study):
    _, out, _ = study
    df = read_results(out)
    probes = set(df["probe"])
    assert {"ridge", "linear", "fusion-spatial", "fusion-single", "fusion-noise-control"} <= probes
    assert {"combine", "combine-main", "combine-extra"} <= probes  # the pair and each member, one recipe
    assert set(df[df.probe == "combine"]["backbone"]) == {"tiny-mmdit+timm:efficientnet_lite0"}
    # each member alone is labelled as that member, never as the combination
    assert set(df[df.probe == "combine-main"]["backbone"]) == {"tiny-mmdit"}
    assert set(df[df.probe == "combine-extra"]["backbone"]) == {"timm:efficientnet_lite0"}
    mm = df[df.backbone == "tiny-mmdit"]
    assert set(mm[mm.probe == "ridge"]["timestep"]) == {"0", "0.35", "0.7"}
    assert set(mm["weights"]) == {"default", "random"}
    assert set(df[df.probe == "fusion-noise-control"]["backbone"]) == {"tiny-mmdit"}
    from safetensors import safe_open

    heads = sorted((out / "heads").rglob("*.safetensors"))
    assert len(heads) >= 9  # ridge heads per model and task, trained probes' state dicts
    for h in heads:
        with safe_open(str(h), "np") as f:
            assert f.keys() and f.metadata()["backbone"]
    assert not list(out.rglob("*.tmp"))  # every artifact was renamed into place


def test_noise_control_is_extracted_only_at_the_best_cells(study):
    cfg, out, cache = study
    df = read_results(out)
    best = set()
    from probebench.pipeline import resolved

    for task in resolved(cfg).tasks:
        from tasks.base import MAIN_METRIC

        metric, higher = MAIN_METRIC[task]
        r = df[
            (df.backbone == "tiny-mmdit")
            & (df.weights == "default")
            & (df.probe == "ridge")
            & (df.task == task)
            & (df.split == "val")
            & (df.metric == metric)
        ]
        row = r.loc[r["value"].idxmax() if higher else r["value"].idxmin()]
        best.add((int(row["layer"]), float(row["timestep"])))
    seeds = {}
    for m in cache.glob("tiny-mmdit-scenes-train-*/manifest.json"):
        man = json.loads(m.read_text())
        seeds[man["fingerprint"]["seed"]] = {(f["layer"], f["timestep"]) for f in man["features"]}
    assert set(seeds) == {0, 1, 2, 3, 4, 5}
    assert len(seeds[0]) == 6 * 3  # the full grid for the main backbone
    layers, ts = {k[0] for k in best}, {k[1] for k in best}
    for s in range(1, 6):
        assert seeds[s] == {(la, t) for la in layers for t in ts}  # only the best cells' layers × timesteps


def test_report_answers_the_four_questions(study):
    _, out, _ = study
    report = (out / "REPORT.md").read_text()
    for q in ("- (a) ", "- (b) ", "- (c) ", "- (d) "):
        assert q in report, q
    assert "fusion-noise-control" in report


def test_report_gives_one_best_timestep_per_task_and_one_vocabulary(study):
    """Summary, (a), the per-timestep (d) and the trajectory table name the same val-chosen timestep; verdicts
    are beats / within noise / loses, nothing else."""
    import re

    from analysis.findings import best_timesteps

    _, out, _ = study
    report = (out / "REPORT.md").read_text()
    bt = best_timesteps(read_results(out))
    trained = bt[bt["model"] == "tiny-mmdit (default)"]
    assert len(trained) == 3
    summary = next(
        ln for ln in report.splitlines() if ln.startswith("- tiny-mmdit (default): segmentation t=")
    )
    (a,) = [ln for ln in report.splitlines() if ln.startswith("- (a) tiny-mmdit (default)")]
    for _, r in trained.iterrows():
        cell = f"{r['task']} t={r['timestep']} (layer {r['layer']}"
        assert cell in summary and cell in a, (cell, summary, a)
        (d,) = [
            ln
            for ln in report.splitlines()
            if ln.startswith(f"- (d) {r['task']}, tiny-mmdit (default) − random twin by timestep")
        ]
        assert d.endswith(f"is t={r['timestep']}."), d
    verdicts = [
        ln
        for ln in report.splitlines()
        if re.match(r"- \((b|c|d)\) ", ln) and " by timestep " not in ln and "The control" not in ln
    ]
    assert verdicts
    for ln in verdicts:
        assert re.search(r"\b(beats|within noise|loses)\b", ln), ln
        assert "does not beat" not in ln and "within the seed std" not in ln
    assert (
        "- (d) The control, tiny-mmdit (random): random: transformer from diffusers' default init" in report
    )


def test_cells_from_needs_another_backbone(tmp_path):
    cfg = load_config(None, ["backbones.3.cells_from=3", f"output_dir={tmp_path}"])
    with pytest.raises(ProbebenchError, match="cells_from 3 must be the index of another backbone"):
        run(cfg, progress=False)
    chained = load_config(None, ["backbones.4.cells_from=3", f"output_dir={tmp_path}"])
    with pytest.raises(
        ProbebenchError, match="Backbone 4: cells_from 3 points at a backbone that itself has"
    ):
        run(chained, progress=False)


def test_cells_from_needs_ridge_results_first(tmp_path):
    cfg = load_config(
        None,
        [
            "data.max_train=4",
            "data.max_val=4",
            "data.max_test=4",
            "backbones.0.timesteps=[0.0]",
            "probes=[{name: ridge, select: [3]}]",
            f"extract.cache_dir={tmp_path / 'c'}",
            f"output_dir={tmp_path / 'r'}",
        ],
    )
    with pytest.raises(ProbebenchError, match=r"Backbone 3 .*cells_from: 0.* needs ridge results"):
        run(cfg, progress=False)


def test_conditioned_backbones_are_labelled_in_rows():
    from probebench.config import BackboneConfig
    from probebench.core.rundir import model_slug
    from probebench.pipeline import backbone_label, model_label

    plain = BackboneConfig("tiny-mmdit")
    captioned = BackboneConfig("tiny-mmdit", options={"caption": ["floor", "sphere"]})
    assert backbone_label(plain) == "tiny-mmdit"
    assert backbone_label(captioned) == "tiny-mmdit[caption=floor sphere]"
    assert (
        backbone_label(BackboneConfig("dit-xl-2-256", options={"class_id": 207}))
        == "dit-xl-2-256[class_id=207]"
    )
    assert model_label([captioned, BackboneConfig("timm:efficientnet_lite0")]) == (
        "tiny-mmdit[caption=floor sphere]+timm:efficientnet_lite0",
        "default+default",
    )
    assert model_slug(*model_label([captioned])) == "tiny-mmdit_caption=floor_sphere_-default"


def test_fit_without_extraction_finds_the_noise_control_caches(study):
    from dataclasses import replace

    cfg, _, cache = study
    before = sorted(p.name for p in cache.iterdir())
    stages = [cfg.probes[0], cfg.probes[4]]  # ridge (for the best cells), then the noise control
    refit = replace(cfg, name="refit", probes=[replace(stages[0], select=[0]), stages[1]])
    df = read_results(run(refit, extract=False, analyze=False, progress=False))
    assert set(df["probe"]) == {"ridge", "fusion-noise-control"}
    assert sorted(p.name for p in cache.iterdir()) == before  # nothing extracted: every cache was found
