"""The MMDiff protocol configs (``configs/mmdiff/``): each plans offline (``--dry-run``: no weights, no data) and
runs end to end — FLUX.1-dev and DINOv3 ViT-B/16 from miniature Hugging Face snapshots (``weights: default``),
tiny copies of ADE20K / VOC / NYUv2 / DUTS laid out as the real ones, the held-out validation slices, the
streamed screen, the pooled best-layer cache and the trained probes — at test size (overrides shrink images,
grids and epochs only)."""

from __future__ import annotations

from pathlib import Path

import layouts
import numpy as np
import pytest
from miniature import MiniatureHub, redirect_hf_home

import probebench
from probebench.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "mmdiff"
LAYOUTS = {  # config: (layout builder, expected test split size)
    "ade20k": (layouts.ade20k, 4),
    "voc2012": (layouts.voc2012, 4),
    "nyuv2": (layouts.nyuv2, 4),
    "duts": (layouts.saliency, 6),
}


def test_every_config_is_tested():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(LAYOUTS)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_dry_run_offline_without_data_or_weights(name, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    assert main(["run", "--dry-run", str(CONFIGS / f"{name}.yaml")]) == 0
    out = capsys.readouterr().out
    assert f"plan of run 'mmdiff-{name}'" in out and "(the official release's size)" in out
    assert "flux.1-dev (default)" in out and "dinov3-vitb16 (default)" in out
    assert not (tmp_path / "empty_hf_home").exists()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmdiff")
    mp = pytest.MonkeyPatch()
    cache = redirect_hf_home(mp, root / "hf_home")
    mp.setenv("PROBEBENCH_PROMPT_CACHE", str(root / "prompts"))
    hub = MiniatureHub(root, cache)
    hub.folder("flux.1-dev")
    hub.folder("dinov3-vitb16")
    yield hub
    mp.undo()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_runs_end_to_end_on_miniatures(name, hub, tmp_path):
    build, _ = LAYOUTS[name]
    root = build(tmp_path / "data")
    small = {
        "data.root": str(root),
        "data.train_split": "train[:-3]",
        "data.val_split": "train[-3:]",
        "probe_seeds": [0],
        "backbones.0.image_size": 64,
        "backbones.0.layers": [1, 3],
        "backbones.0.timesteps": [0.0, 0.5],
        "backbones.1.image_size": 64,
        "backbones.1.dtype": "float32",  # a real-size ViT-B: bfloat16 matmuls are slow on CPUs without bf16 units
        "backbones.2.image_size": 64,
        "extract.device": None,
        "extract.batch_size": 4,
        "extract.cache_dir": str(tmp_path / "cache"),
        "output_dir": str(tmp_path / "results"),
        **{f"probes.{k}.params.epochs": 1 for k in range(1, 5)},
    }
    rows, _ = probebench.run(str(CONFIGS / f"{name}.yaml"), analyze=False, progress=False, **small)
    test = rows[rows["split"] == "test"]
    assert np.isfinite(test["value"]).all()
    assert set(test["probe"]) == {
        "ridge",
        "fusion-spatial",
        "fusion-single",
        "fusion+dinov3",
        "dinov3-linear",
    }
    # the trained probes read FLUX's best layer with every timestep of the screened grid (the pooled cache)
    fused = test[test["probe"] == "fusion-spatial"]
    assert set(fused["timestep"]) == {"0+0.5"}
    # FLUX's screened grid (2 layers × 2 timesteps) is never cached: only its best layer, every timestep
    flux_keys = {k.name for k in (tmp_path / "cache").glob("flux.1-dev-*/shards/L*")}
    assert len({k.split("_")[0] for k in flux_keys}) == 1 and len(flux_keys) == 2, flux_keys
