"""Writing the ``folder`` layout through the target kinds (tasks/folder_io.py): what is written is what the
loader reads back, for every built-in kind, and targets a file cannot hold are refused with the file named."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

import tasks
from probebench.core.errors import ProbebenchError
from tasks.folder_io import write_meta, write_sample
from tasks.kinds import kind_names


def test_written_targets_read_back_as_the_loader_returns_them(tmp_path):
    scenes = tasks.create("scenes", split="val", resolution=32, seed=2)
    specs = scenes.targets
    assert set(specs) <= set(kind_names())
    for i in range(3):
        targets = {k: scenes.load_target(i, k) for k in specs}
        write_sample(tmp_path, "test", scenes.image_id(i), scenes.load_image(i), targets, specs)
    meta = yaml.safe_load(write_meta(tmp_path, "copy", specs, {"from": "scenes val"}).read_text())
    assert meta["targets"] == list(specs) and meta["source"] == {"from": "scenes val"}
    back = tasks.create("folder", split="test", root=tmp_path)
    assert {k: back.target_spec(k) for k in specs} == specs
    for i in range(3):
        assert back.image_id(i) == scenes.image_id(i)
        assert np.abs(back.load_image(i) - scenes.load_image(i)).max() <= 0.5 / 255 + 1e-6
        for k in specs:
            want, got = scenes.load_target(i, k), back.load_target(i, k)
            if k == "depth":
                np.testing.assert_allclose(got, want, atol=0.5e-3)
            else:
                assert np.array_equal(got, want), k


def test_targets_a_file_cannot_hold_are_refused(tmp_path):
    specs = tasks.create("scenes", split="val", resolution=32).targets
    with pytest.raises(ProbebenchError, match=r"class ids 0\.\.300 do not fit an 8-bit label PNG"):
        write_sample(tmp_path, "x", "a", np.zeros((4, 4, 3)), {"segmentation": np.array([[0, 300]])}, specs)
    with pytest.raises(ProbebenchError, match=r"depth 70\.0 m does not fit a 16-bit PNG at depth_scale 1000"):
        write_sample(tmp_path, "x", "b", np.zeros((4, 4, 3)), {"depth": np.array([[1.0, 70.0]])}, specs)
