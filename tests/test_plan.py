"""The cost plan (``probebench run --dry-run``, :mod:`probebench.plan`, :mod:`backbones.plan`): shapes and
parameter counts from metadata against real extractions of every registered backbone's tiny config, exact cache
bytes against caches written by a tiny run, the disk refusal with its options, and a real-size FLUX plan
offline (no weights, no data on disk)."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

import backbones
from backbones import BACKBONES
from backbones.plan import feature_plan
from probebench.cli import main
from probebench.config import load_config
from probebench.core.errors import ProbebenchError
from probebench.plan import check_disk, plan_run

EXCLUDE: dict[str, str] = {}  # registered name → why its plan cannot be checked against an extraction


def _entries() -> list:
    return [e for e in BACKBONES if "test_name" in e.extra and e.name not in EXCLUDE]


@pytest.mark.parametrize("entry", _entries(), ids=lambda e: e.name)
def test_plan_matches_extraction(entry):
    """Every registered backbone's plan (tiny config, random weights) gives the shapes, layer count and
    parameter count that building it and extracting give."""
    name, kw = entry.extra["test_name"], dict(entry.extra["test_kwargs"])
    adapter = backbones.create(name, weights="random", compute_batch=1, **kw)
    layers = [0, adapter.num_layers - 1]
    ts = adapter.resolve_timesteps(None)[:2] if adapter.meta.is_diffusion else None
    plan = feature_plan(
        name, "random", image_size=kw.pop("image_size", None), layers=layers, timesteps=ts, options=kw
    )
    feats = adapter.extract(torch.rand(1, 3, adapter.image_size, adapter.image_size), layers, ts)
    assert {k: (f.shape[2], f.shape[3], f.shape[1]) for k, f in feats.items()} == plan.shapes
    assert (plan.num_layers, plan.image_size) == (adapter.num_layers, adapter.image_size)
    params = list(adapter.model.parameters())
    assert plan.n_params == sum(p.numel() for p in params)
    assert plan.param_bytes == sum(p.numel() * p.element_size() for p in params)


def test_real_size_numbers():
    """FLUX.1-dev at 1024 px: 64×64 tokens × 3072 per (layer, t) = 25 MB fp16 per image; ADE20K train at one
    layer × 6 timesteps ≈ 3 TB. DiT-XL/2 256: 16×16 × 1152. From metadata, nothing allocated."""
    ts = [0.1, 0.25, 0.4, 0.55, 0.7, 0.85]
    flux = feature_plan("flux.1-dev", layers=[20], timesteps=ts)
    assert set(flux.shapes.values()) == {(64, 64, 3072)} and len(flux.shapes) == 6
    assert flux.key_bytes((20, 0.1)) == 4096 * 3072 * 2
    assert flux.cache_bytes(20210) == 20210 * 6 * 4096 * 3072 * 2  # 3.05e12
    assert flux.num_layers == 57 and 11.9e9 < flux.n_params < 12.1e9
    assert flux.rows_per_image == 6 and flux.with_pool(16).shapes[(20, 0.1)] == (16, 16, 3072)
    dit = feature_plan("dit-xl-2-256", layers=[-1])
    assert set(dit.shapes.values()) == {(16, 16, 1152)} and dit.timesteps == (0, 250, 500, 750)
    with pytest.raises(ProbebenchError, match="out of range"):
        feature_plan("dit-xl-2-256", layers=[28])


def _tiny_cfg(tmp_path: Path, *more: str):
    return load_config(
        None,
        [
            f"output_dir={tmp_path / 'results'}",
            f"extract.cache_dir={tmp_path / 'cache'}",
            "extract.shard_size=8",
            "probe_seeds=[0]",
            "data.max_train=12",
            "data.max_val=4",
            "data.max_test=4",
            "backbones=[{name: tiny-mmdit, layers: [0, 5], timesteps: [0.0, 0.5], image_size: null}, "
            "{name: 'timm:efficientnet_lite0', image_size: 64}]",
            "probes=[{name: ridge}]",
            *more,
        ],
    )


def test_predicted_bytes_equal_written_caches(tmp_path):
    """Predicted feature bytes equal the array bytes of the caches a run writes (exactly; .npy headers, markers
    and manifests are what the prediction leaves out); the written caches are then found and cost nothing."""
    from probebench.pipeline import SPLITS, build_split, extract_backbone

    cfg = _tiny_cfg(tmp_path)
    before = plan_run(cfg)
    assert [(e.index, e.split, e.images, e.state) for e in before.extractions] == [
        (i, w, n, "to extract") for i in (0, 1) for w, n in zip(SPLITS, (12, 4, 4))
    ]
    splits = {w: build_split(cfg, w) for w in SPLITS}
    for i, b in enumerate(cfg.backbones):
        caches = extract_backbone(b, cfg, splits, progress=False)
        for w, cache in caches.items():
            real = sum(cache.array(k)[:].nbytes for k in cache.keys)
            (e,) = [e for e in before.extractions if (e.index, e.split) == (i, w)]
            assert e.total == real
            files = list(cache.path.glob("shards/L*/*.npy"))
            assert 0 < sum(f.stat().st_size for f in files) - real <= 128 * len(files)
    after = plan_run(cfg)
    assert {e.state for e in after.extractions} == {"cached"} and after.new_bytes == 0


def test_dry_run_quickstart(tmp_path, monkeypatch, capsys):
    """``run --dry-run`` on the embedded quickstart: scenes 160/48/48, tiny-mmdit 8×8×192 maps, noise-control
    copies as upper bounds, every stage listed, free disk; exit 0 and nothing created."""
    monkeypatch.setenv("PROBEBENCH_CACHE", str(tmp_path / "cache"))
    assert main(["run", "--dry-run", f"output_dir={tmp_path / 'results'}"]) == 0
    text = capsys.readouterr().out
    assert "images: train 160, val 48, test 48" in text
    assert "8×8×192" in text and "after the screen (≤ 3 cells)" in text
    assert "fusion-noise-control" in text and "free disk" in text and "REFUSED" not in text
    # 2 tiny-mmdit grids of 6 layers × 6 timesteps (36 keys × 8·8·192·2 bytes) on 256 images, + efficientnet
    assert "tiny-mmdit (default) train    160    36" in text
    assert not (tmp_path / "cache").exists() and not (tmp_path / "results").exists()


def _small_disk(monkeypatch, free: int) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(free * 2, free, free))


def test_refused_when_disk_too_small(tmp_path, monkeypatch):
    """A real run whose new caches exceed the free disk fails before anything is written, with the numbers and
    the options that fit (pooling, streaming screen / online training, fewer cells), each with its bytes."""
    from probebench.pipeline import run

    cfg = _tiny_cfg(
        tmp_path, "backbones=[{name: tiny-mmdit, layers: [0, 5], timesteps: [0.0, 0.5], image_size: null}]"
    )
    need = plan_run(cfg).new_bytes  # 20 images × 4 keys × 8·8·192·2 bytes
    assert need == 20 * 4 * 8 * 8 * 192 * 2
    _small_disk(monkeypatch, need // 2)
    with pytest.raises(ProbebenchError) as err:
        run(cfg, progress=False)
    msg = str(err.value)
    assert "1.97 MB of new feature caches" in msg and "983 kB free" in msg
    assert "pool_to: 4 on backbone 0 (tiny-mmdit (default)) (maps 8→4 per side): 492 kB" in msg
    assert (
        "no cache for backbone 0 (tiny-mmdit (default)): ridge → ridge-stream (the streaming screen): 0 B"
        in msg
    )
    assert "fewer cells on backbone 0" in msg and "at most 2 of its 2 layers × 2 timesteps" in msg
    assert not (tmp_path / "cache").exists() and not (tmp_path / "results").exists()
    assert "REFUSED" in plan_run(cfg).text()
    _small_disk(monkeypatch, need)
    check_disk(cfg)  # exactly enough: fits


def test_flux_plan_offline_without_weights_or_data(tmp_path, monkeypatch, capsys):
    """A real-size FLUX config plans offline: weights not on disk, ADE20K not on disk (counted as at most
    max_train images) — no weights are loaded, no adapter is built, and the refusal lists what fits."""
    monkeypatch.setattr(backbones, "create", lambda *a, **k: pytest.fail("the plan built an adapter"))
    cfg_file = tmp_path / "flux.yaml"
    cfg_file.write_text(
        "name: flux-ade\n"
        f"output_dir: {tmp_path / 'results'}\n"
        f"extract: {{cache_dir: {tmp_path / 'cache'}}}\n"
        f"data: {{name: ade20k, root: {tmp_path / 'no-ade'}, max_train: 20210, max_val: 2000, max_test: null}}\n"
        "backbones: [{name: flux.1-dev, weights: default, layers: [20], image_size: 1024, dtype: bfloat16,\n"
        "             timesteps: [0.1, 0.25, 0.4, 0.55, 0.7, 0.85]}]\n"
        "probes: [{name: ridge}]\n"
    )
    assert main(["run", "--dry-run", str(cfg_file)]) == 0
    text = capsys.readouterr().out
    assert "images: train 20,210, val 2,000, test ?" in text
    assert "≤ 3.05 TB" in text and "64×64×3072" in text and "≤ 121,260" in text
    assert "ade20k/train cannot be read here" in text
    assert "REFUSED" in text and "pool_to:" in text and "ridge-stream" in text
    assert "11,985.2 M" in text and "24.1 GB" in text  # bf16 transformer + float32 VAE
    assert not (tmp_path / "cache").exists()


def test_sweep_dry_run_has_costs(tmp_path, capsys):
    sweep = Path("configs/sweeps/timestep_layer.yaml")
    assert (
        main(
            [
                "sweep",
                str(sweep),
                f"output_dir={tmp_path}",
                f"extract.cache_dir={tmp_path / 'c'}",
                "--dry-run",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "cost of those extractions" in text and "8×8×192" in text and "— fits" in text
    assert not (tmp_path / "c").exists()


def test_cache_bytes_arithmetic():
    plan = feature_plan("timm:efficientnet_lite0", "random", image_size=64, layers=[0, 4])
    assert plan.shapes == {(0, None): (32, 32, 16), (4, None): (2, 2, 320)}
    assert plan.cache_bytes(10) == 10 * (32 * 32 * 16 + 2 * 2 * 320) * 2
    assert np.isclose(plan.with_pool(4).bytes_per_image(), (4 * 4 * 16 + 2 * 2 * 320) * 2)
