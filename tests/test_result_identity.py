"""A result identity never spans two configs: a run directory holds one config (a rerun may only add to it),
rows carry their setup, and tables aggregate only the seeds of one setup."""

from __future__ import annotations

import os
import stat

import pandas as pd
import pytest
from _runs import small_run

from analysis.common import seed_mean, with_model
from analysis.compare import best_cells
from probebench.cli import main
from probebench.core.results import LEGACY_SETUP, RESULTS_FILE, read_results

EFFNET = "backbones=[{name: 'timm:efficientnet_lite0', image_size: 32, layers: [2, 3]}]"
RIDGE = "probes=[{name: ridge}]"


def _args(tmp_path, *extra):
    return ["run", *small_run(tmp_path, EFFNET, RIDGE, "tasks=[depth]", "name=mix", *extra), "--no-progress"]


def test_rerun_with_another_data_config_is_refused_naming_the_keys(tmp_path, capsys):
    """The issue's repro: `name=mix` with max_train 8 then 6 into one results directory. Before, best_cells.csv
    averaged both configs' rows as if they were seeds; now the second run is refused and nothing is mixed."""
    assert main(_args(tmp_path)) == 0
    out = tmp_path / "r" / "mix"
    before = read_results(out)
    best_before = pd.read_csv(out / "best_cells.csv")
    capsys.readouterr()
    assert main(_args(tmp_path, "data.max_train=6")) == 2
    err = capsys.readouterr().err
    assert "holds results of another config (data.max_train: 8 → 6)" in err
    assert "name=" in err and "delete" in err
    pd.testing.assert_frame_equal(read_results(out), before)  # nothing added
    best = pd.read_csv(out / "best_cells.csv")
    pd.testing.assert_frame_equal(best, best_before)
    assert (best["n_seeds"] == 1).all()
    # the seed and an existing backbone's entry are part of the setup too
    assert main(_args(tmp_path, "seed=3")) == 2
    assert "seed: 0 → 3" in capsys.readouterr().err
    assert main(_args(tmp_path, "backbones.0.layers=[2]")) == 2
    assert "backbones.0.layers: [2, 3] → [2]" in capsys.readouterr().err


def test_a_rerun_may_add_stages_backbones_and_tasks(tmp_path, capsys):
    assert main(_args(tmp_path)) == 0
    grown = [
        "run",
        *small_run(
            tmp_path,
            "backbones=[{name: 'timm:efficientnet_lite0', image_size: 32, layers: [2, 3]}, "
            "{name: 'timm:efficientnet_lite0', weights: random, image_size: 32, layers: [2]}]",
            "probes=[{name: ridge}, {name: linear, cells: best, params: {epochs: 1}}]",
            "tasks=[depth, saliency]",
            "name=mix",
            "probe_seeds=[0]",
        ),
        "--no-progress",
    ]
    assert main(grown) == 0, capsys.readouterr().err
    df = read_results(tmp_path / "r" / "mix")
    assert set(df["probe"]) == {"ridge", "linear"} and set(df["weights"]) == {"default", "random"}
    assert set(df["task"]) == {"depth", "saliency"}
    # every stage × model has one setup; seeds aside, the rows of one setup share it
    assert df.groupby(["backbone", "weights", "probe"])["setup_hash"].nunique().eq(1).all()
    capsys.readouterr()
    shrunk = [a if not a.startswith("probes=") else "probes=[{name: ridge}]" for a in grown]
    assert main(shrunk) == 2
    assert "probes.1: removed" in capsys.readouterr().err


def test_rows_of_two_setups_are_kept_apart_and_labelled(tmp_path):
    """Rows that differ in more than their seeds (two sweep cells, two configs) are never one mean ± std."""
    from analysis_fakes import frame, row

    rows = []
    for run, setup, vals in (("a", "s1", (0.30, 0.32)), ("b", "s2", (0.50, 0.52))):
        for seed, v in enumerate(vals):
            for split in ("val", "test"):
                rows.append(
                    row(
                        run=run,
                        setup_hash=setup,
                        config_hash=f"{setup}-{seed}",
                        seed=seed,
                        backbone="m",
                        weights="default",
                        task="segmentation",
                        metric="mIoU",
                        layer="1",
                        split=split,
                        value=v,
                    )
                )
    df = frame(rows)
    assert sorted(set(with_model(df)["model"])) == ["m (default) [a]", "m (default) [b]"]
    m = seed_mean(df[df["split"] == "test"])
    assert sorted(m["value"].round(3)) == [0.31, 0.51] and (m["n_seeds"] == 2).all()
    best = best_cells(df, ("model", "task"))
    assert len(best) == 2 and sorted(best["test_value"].round(3)) == [0.31, 0.51]
    # one setup spread over two runs (a sweep's seed axis): one model, replicates counted per fit
    same = frame([{**r, "setup_hash": "s1"} for r in rows])
    m = seed_mean(same[same["split"] == "test"])
    assert len(m) == 1 and m["n_seeds"].iloc[0] == 4 and set(with_model(same)["model"]) == {"m (default)"}
    # a setup shared by two runs, beside another setup: labelled by its hash
    mixed = frame(rows + [{**r, "run": "c"} for r in rows if r["run"] == "a"])
    assert "m (default) [setup s1]" in set(with_model(mixed)["model"])


def test_schema_v1_files_are_still_read(tmp_path):
    df = read_results(_v1_file(tmp_path))
    assert (df["setup_hash"] == LEGACY_SETUP).all() and len(df) == 2


def _v1_file(tmp_path):
    from analysis_fakes import frame, row

    df = frame(
        [
            row(backbone="m", weights="default", task="depth", metric="rmse", layer=str(i), value=1.0)
            for i in range(2)
        ]
    )
    path = tmp_path / RESULTS_FILE
    df.drop(columns=["setup_hash"]).assign(schema_version=1).to_csv(path, index=False)
    return path


def test_a_failed_run_leaves_no_results_directory(tmp_path, capsys):
    args = _args(tmp_path, "backbones.0.name=timm:no_such_model_anywhere")
    assert main(args) != 0
    assert not (tmp_path / "r" / "mix").exists()


def test_result_files_are_world_readable(tmp_path):
    old = os.umask(0o022)
    try:
        assert main(_args(tmp_path)) == 0
    finally:
        os.umask(old)
    out = tmp_path / "r" / "mix"
    for p in [out / RESULTS_FILE, out / "config.yaml", out / "run.json", *(out / "heads").rglob("*.*")]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


@pytest.mark.parametrize("name", ["combine-main", "combine-extra"])
def test_a_members_rows_are_labelled_with_that_member(name):
    from probebench.config import BackboneConfig, ProbeConfig, RunConfig
    from probebench.pipeline import result_rows

    cfg = RunConfig(name="x")
    models = [BackboneConfig("tiny-mmdit"), BackboneConfig("timm:efficientnet_lite0")]
    member = {"combine-main": 0, "combine-extra": 1}[name]
    rec = {"task": "depth", "split": "test", "probe": name, "layer": 1, "timestep": None, "metric": "rmse"}
    joint = {**rec, "probe": "combine"}
    rows = result_rows(
        [{**rec, "members": [member], "value": 1.0}, {**joint, "value": 0.5}],
        cfg,
        ProbeConfig("combine"),
        models,
        ["h0", "h1"],
        "chash",
        "setup",
        {},
    )
    assert rows[0]["backbone"] == models[member].name and rows[0]["cache_hash"] == ["h0", "h1"][member]
    assert rows[1]["backbone"] == "tiny-mmdit+timm:efficientnet_lite0" and rows[1]["cache_hash"] == "h0+h1"


def test_a_rerun_on_edited_data_is_refused_and_another_name_refits(tmp_path, capsys):
    """Same config, edited labels: the run directory refuses the new rows (they would be another setup), and a new
    run name fits on the new labels without re-extracting (the images, hence the features, are unchanged)."""
    import numpy as np
    from PIL import Image

    from tasks.scenes import export_scenes

    root = export_scenes(tmp_path / "d", {"train": 8, "val": 4, "test": 4}, resolution=16, progress=False)
    args = ["run", "data.name=folder", f"data.root={root}", EFFNET, RIDGE, "tasks=[depth]", "name=own"]
    args += [f"extract.cache_dir={tmp_path / 'c'}", f"output_dir={tmp_path / 'r'}", "--no-progress"]
    assert main(args) == 0, capsys.readouterr().err
    cache_dirs = sorted(p.name for p in (tmp_path / "c").iterdir())
    for p in sorted((root / "train" / "depth").glob("*.png")):  # every depth label 10 % farther
        depth = np.asarray(Image.open(p)).astype(np.float64)
        Image.fromarray((depth * 1.1).round().astype(np.uint16)).save(p)
    capsys.readouterr()
    assert main(args) == 2
    assert "the content of the train split changed" in capsys.readouterr().err
    renamed = [a.replace("name=own", "name=own2") if a == "name=own" else a for a in args]
    assert main(renamed) == 0
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == cache_dirs  # features reused
    a, b = read_results(tmp_path / "r" / "own"), read_results(tmp_path / "r" / "own2")
    assert set(a["setup_hash"]).isdisjoint(set(b["setup_hash"]))
    assert not np.allclose(a["value"].to_numpy(), b["value"].to_numpy())


def test_a_sweep_report_is_titled_by_the_sweep(tmp_path):
    import yaml
    from analysis_fakes import frame, row

    from analysis.report import write_report

    rows = [
        row(
            run=run,
            backbone="m",
            weights="default",
            task="depth",
            metric="rmse",
            layer=str(i),
            split=s,
            value=v,
        )
        for run, v in (("cell-a", 1.0), ("cell-b", 2.0))
        for i in range(2)
        for s in ("val", "test")
    ]
    frame(rows).to_csv(tmp_path / RESULTS_FILE, index=False)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"name": "ablation", "cells": []}))
    report = write_report(tmp_path, cka=False).read_text()
    assert report.splitlines()[0] == "# probebench report — sweep ablation (2 cells: cell-a, cell-b)"
