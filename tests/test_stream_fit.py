"""Stream-fit (ridge during extraction, nothing stored) equals the ridge screen on a cache of the same features."""

from __future__ import annotations

import pytest
from _runs import small_run

import backbones
import tasks
from backbones.store import extract_to_cache
from probes.base import Split
from probes.screen import ridge_screen
from probes.stream import stream_ridge_screen

KINDS = ["segmentation", "saliency", "depth"]


def _table(records):
    return {
        (r["layer"], r["timestep"], r["task"], r["split"], r["metric"]): (r["value"], r["lambda"])
        for r in records
    }


@pytest.mark.parametrize(
    "name,kwargs,timesteps",
    [
        ("timm:efficientnet_lite0", {"image_size": 32}, None),
        ("sd3-medium", {"weights": "random", "config": "tiny"}, [0.0, 0.5]),
    ],
)
def test_stream_fit_equals_cached_screen(tmp_path, name, kwargs, timesteps):
    adapter = backbones.create(name, **kwargs)
    splits = {
        s: tasks.create("scenes", split=s, resolution=16, num_images=n)
        for s, n in (("train", 12), ("val", 6), ("test", 6))
    }
    layers = [0, 1]
    caches = {
        s: extract_to_cache(
            adapter,
            ds,
            layers=layers,
            timesteps=timesteps,
            cache_root=tmp_path,
            seed=3,
            progress=False,
            batch_size=4,
        )
        for s, ds in splits.items()
    }
    cached = ridge_screen(
        *(Split(caches[s], splits[s]) for s in ("train", "val", "test")), KINDS, batch_size=4, progress=False
    )
    streamed = stream_ridge_screen(
        adapter,
        splits["train"],
        splits["val"],
        splits["test"],
        KINDS,
        layers=layers,
        timesteps=timesteps,
        seed=3,
        batch_size=4,
        progress=False,
        memory_gb=1e-6,
    )
    a, b = _table(cached.records), _table(streamed.records)
    assert a.keys() == b.keys() and len(a) == 2 * len(caches["train"].keys) * (2 + 8 + 9)
    for k in a:
        assert b[k][1] == a[k][1], k  # the same λ is chosen
        assert b[k][0] == pytest.approx(a[k][0], rel=1e-6, abs=1e-6), k


def test_pipeline_stream_stage_writes_rows_and_no_cache(tmp_path):
    from probebench.config import load_config
    from probebench.core.results import read_results
    from probebench.pipeline import run

    cfg = load_config(
        None,
        small_run(
            tmp_path,
            "backbones=[{name: 'timm:efficientnet_lite0', image_size: 32, layers: [1, 2]}]",
            "tasks=[depth]",
            "probes=[{name: ridge-stream, params: {lambdas: [0.1, 1.0]}}]",
        ),
    )
    out = run(cfg, progress=False, analyze=False)
    df = read_results(out)
    assert set(df["layer"]) == {"1", "2"} and set(df["split"]) == {"val", "test"}
    assert df["cache_hash"].str.startswith("stream:").all()
    assert not (tmp_path / "c").exists()  # nothing was extracted to disk
