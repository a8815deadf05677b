"""The ``scenes`` task wrapper and its export (the renderer itself is tested in test_scenes_render.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import tasks
from probebench.cli import main
from probebench.core.errors import ProbebenchError


def test_splits_are_disjoint_and_deterministic():
    tr = tasks.create("scenes", split="train", resolution=16, num_images=3)
    va = tasks.create("scenes", split="val", resolution=16, num_images=3)
    assert not np.array_equal(tr.load_image(0), va.load_image(0))
    again = tasks.create("scenes", split="train", resolution=16, num_images=3)
    assert np.array_equal(tr.load_image(2), again.load_image(2))
    assert tr.image_id(2) == "train_000002"
    seed1 = tasks.create("scenes", split="train", resolution=16, num_images=3, seed=1)
    assert not np.array_equal(tr.load_image(0), seed1.load_image(0))


def test_targets_and_specs():
    ds = tasks.create("scenes", split="test", resolution=24, num_images=2)
    assert set(ds.targets) == {"segmentation", "saliency", "depth"}
    seg, sal, dep = (ds.load_target(0, k) for k in ("segmentation", "saliency", "depth"))
    assert seg.shape == sal.shape == dep.shape == (24, 24)
    assert seg.dtype == np.int64 and sal.dtype == bool and dep.dtype == np.float32
    assert ds.target_spec("segmentation").num_classes == 8
    assert ds.target_spec("depth").main_metric == "rmse" and not ds.target_spec("depth").higher_is_better
    with pytest.raises(ProbebenchError, match="has no 'normals' target"):
        ds.load_target(0, "normals")


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        ({"split": "validation"}, "Unknown split 'validation'"),
        ({"resolution": 4}, ">= 8"),
        ({"num_images": 0}, "at least 1 image"),
        ({"root": "/data"}, "takes no root"),
    ],
)
def test_bad_options(kwargs, msg):
    with pytest.raises(ProbebenchError, match=msg):
        tasks.create("scenes", **kwargs)


def test_cli_export_writes_plain_folders(tmp_path, capsys):
    assert (
        main(
            [
                "scenes",
                "export",
                str(tmp_path),
                "--resolution",
                "16",
                "--train",
                "2",
                "--val",
                "1",
                "--test",
                "1",
            ]
        )
        == 0
    )
    ds = tasks.create("scenes", split="train", resolution=16, num_images=2)
    iid = ds.image_id(1)
    depth = np.array(Image.open(tmp_path / "train" / "depth" / f"{iid}.png"))
    assert depth.dtype == np.uint16
    np.testing.assert_allclose(depth / 1000.0, ds.load_target(1, "depth"), atol=5e-4)
    mask = np.array(Image.open(tmp_path / "train" / "masks" / f"{iid}.png"))
    assert np.array_equal(mask, ds.load_target(1, "segmentation"))
    sal = np.array(Image.open(tmp_path / "train" / "saliency" / f"{iid}.png"))
    assert set(np.unique(sal)) <= {0, 255} and np.array_equal(sal > 128, ds.load_target(1, "saliency"))
    assert (tmp_path / "dataset.yaml").is_file() and (tmp_path / "test" / "images").is_dir()
