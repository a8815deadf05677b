"""The EfficientNet scenes preset end to end at a small size: cache → ridge screen → tidy results → figures → report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from _runs import small_run

from analysis.report import best_cells
from probebench.config import load_config
from probebench.core.results import COLUMNS, read_results
from probebench.pipeline import run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qs")
    cfg = load_config(
        ROOT / "configs" / "efficientnet_scenes.yaml",
        [
            "data.max_train=24",
            "data.max_val=12",
            "data.max_test=12",
            "data.options.resolution=32",
            "backbones.0.image_size=64",
            "backbones.1.image_size=64",
            f"extract.cache_dir={tmp / 'cache'}",
            f"output_dir={tmp / 'results'}",
            "name=small",
        ],
    )
    out = run(cfg, progress=False)
    return cfg, out


def test_results_table_is_tidy_and_complete(quickstart):
    _, out = quickstart
    df = read_results(out)
    assert list(df.columns) == list(COLUMNS)
    assert set(df["backbone"]) == {"timm:efficientnet_lite0"} and set(df["weights"]) == {"default", "random"}
    assert set(df["task"]) == {"segmentation", "saliency", "depth"}
    assert set(df["split"]) == {"val", "test"}
    assert set(df["layer"]) == {str(i) for i in range(5)} and set(df["timestep"]) == {"none"}
    # 2 models × 5 layers × 2 splits × (2 seg + 8 sal + 9 depth metrics)
    assert len(df) == 2 * 5 * 2 * 19
    assert not df.duplicated(["weights", "task", "split", "layer", "metric"]).any()
    assert df["value"].notna().all()
    assert df.groupby("weights")["config_hash"].nunique().eq(1).all() and df["config_hash"].nunique() == 2
    seg = df[(df.metric == "mIoU")]
    assert seg["value"].between(0, 1).all()
    assert (out / "config.yaml").is_file()


def test_probes_learn_something(quickstart):
    _, out = quickstart
    df = read_results(out)
    miou = df[(df.metric == "mIoU") & (df.split == "test") & (df.weights == "default")]["value"].max()
    assert miou > 0.2  # all-background-and-floor guessing scores ~0.1 on 8 classes
    d1 = df[(df.metric == "delta1") & (df.split == "test") & (df.weights == "default")]["value"].max()
    assert d1 > 0.3


def test_report_embeds_existing_figures_and_the_table_numbers(quickstart):
    _, out = quickstart
    report = (out / "REPORT.md").read_text()
    figs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert "figures/layer_curves.png" in figs and any("predictions_" in f for f in figs)
    for f in figs:
        assert (out / f).is_file() and (out / f).stat().st_size > 10_000
        assert (out / f).with_suffix(".pdf").is_file()
    best = best_cells(read_results(out))
    for _, row in best.iterrows():
        assert f"| {row['model']} | {row['task']} | ridge | {row['layer']} |" in report
        assert f"{row['test_value']:.3f}" in report
    assert pd.read_csv(out / "best_cells.csv").shape[0] == 6


def test_rerun_only_fills_missing_rows(quickstart, capsys):
    cfg, out = quickstart
    before = read_results(out)
    run(cfg, progress=False, analyze=False)
    assert "skipping (only-missing)" in capsys.readouterr().err
    after = read_results(out)
    assert len(after) == len(before)


def test_cli_run_with_overrides(tmp_path, capsys):
    from probebench.cli import main

    code = main(
        [
            "run",
            "--no-progress",
            *small_run(
                tmp_path,
                "backbones=[{name: 'timm:efficientnet_lite0', image_size: 32, layers: [3]}]",
                "probes=[{name: ridge}]",
                "tasks=[depth]",
            ),
        ]
    )
    assert code == 0
    df = read_results(tmp_path / "r" / "quickstart")
    assert set(df["task"]) == {"depth"} and set(df["layer"]) == {"3"}
    assert capsys.readouterr().out.strip().endswith("REPORT.md")


def test_trained_probes_run_once_per_probe_seed_and_ridge_once(tmp_path, capsys):
    from probebench.cli import main

    args = [
        "run",
        "--no-progress",
        *small_run(
            tmp_path,
            "backbones=[{name: 'timm:efficientnet_lite0', image_size: 32, layers: [2, 3]}]",
            "probes=[{name: ridge}, {name: linear, cells: best, params: {epochs: 2}}]",
            "tasks=[depth]",
            "probe_seeds=[0, 5]",
        ),
    ]
    assert main(args) == 0
    df = read_results(tmp_path / "r" / "quickstart")
    ridge, linear = df[df["probe"] == "ridge"], df[df["probe"] == "linear"]
    assert set(ridge["seed"]) == {0} and set(linear["seed"]) == {0, 5}
    assert (
        linear.groupby("seed")["config_hash"].nunique().eq(1).all() and linear["config_hash"].nunique() == 2
    )
    rmse = linear[(linear["metric"] == "rmse") & (linear["split"] == "test")].set_index("seed")["value"]
    assert len(rmse) == 2 and rmse[0] != rmse[5]  # another initialisation and shuffling
    assert "probe seed 5" in capsys.readouterr().err
    heads = sorted(p.name for p in (tmp_path / "r" / "quickstart" / "heads").rglob("linear_*.safetensors"))
    # one head per probe seed, named by it: no seed overwrites another
    assert [h.rsplit("_", 1)[1] for h in heads] == ["seed0.safetensors", "seed5.safetensors"]
    assert main([*args, "--no-progress"]) == 0  # rerun: nothing missing
    assert len(read_results(tmp_path / "r" / "quickstart")) == len(df)
    assert "probe seed 5: all results present" in capsys.readouterr().err
    assert main([*args, "probe_seeds=[1, 1]"]) != 0
    assert "probe_seeds must be a non-empty list of distinct integers, got [1, 1]" in capsys.readouterr().err


def test_saved_weight_maps_name_their_probe_seed(tmp_path):
    from probebench.cli import main

    args = [
        "run",
        "--no-progress",
        *small_run(
            tmp_path,
            "backbones=[{name: 'timm:efficientnet_lite0', image_size: 32, layers: [2, 3]}]",
            "probes=[{name: fusion, cells: all, params: {mode: spatial, epochs: 1}}]",
            "tasks=[segmentation]",
            "probe_seeds=[3, 0]",
        ),
    ]
    assert main(args) == 0
    metas = list((tmp_path / "r" / "quickstart" / "heads").rglob("fusion_weights_*.json"))
    assert metas and all(json.loads(m.read_text())["probe_seed"] == 3 for m in metas)
