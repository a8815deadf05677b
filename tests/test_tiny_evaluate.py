"""Sample scores of the tiny MM-DiT (recipes.tiny_mmdit.evaluate): FD and KID formulas, and the CLI end to end."""

from __future__ import annotations

import csv
import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from backbones.tiny.model import DEFAULT_WEIGHTS, caption_from_names, load_weights, object_caption
from recipes.tiny_mmdit import evaluate as ev
from recipes.tiny_mmdit.train import Denoiser, render_pool, sample


def test_frechet_distance_of_a_shift_is_its_squared_length() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0, 1.0])
    assert ev.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert ev.frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    b = rng.normal(size=(150, 6)) * 2.0  # a different covariance adds a positive trace term
    assert ev.frechet_distance(a, b) == pytest.approx(ev.frechet_distance(b, a), rel=1e-6)
    assert ev.frechet_distance(a, b) > 0


def test_kid_is_the_unbiased_polynomial_mmd() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)) + 0.5

    def k(x, y):
        return (x @ y / 3 + 1.0) ** 3

    aa = np.mean([k(a[i], a[j]) for i, j in itertools.permutations(range(7), 2)])
    bb = np.mean([k(b[i], b[j]) for i, j in itertools.permutations(range(5), 2)])
    ab = np.mean([k(x, y) for x in a for y in b])
    assert ev.kernel_inception_distance(a, b) == pytest.approx(aa + bb - 2 * ab, rel=1e-10)
    same = ev.kernel_inception_distance(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)))
    apart = ev.kernel_inception_distance(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)) + 1.0)
    assert abs(same) < 0.05 * apart


@pytest.mark.parametrize("fn", [ev.frechet_distance, ev.kernel_inception_distance])
def test_feature_sets_are_checked(fn) -> None:
    with pytest.raises(ValueError, match="same D"):
        fn(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="N ≥ 2"):
        fn(np.zeros((1, 3)), np.zeros((4, 3)))


def test_cli_scores_the_shipped_model_reproducibly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--images", "4", "--steps", "1", "--threads", "1", "--class-images", "2", "--probe-images", "200"]
    ev.main([*argv, "--csv", str(tmp_path / "a.csv")])
    ev.main([*argv, "--csv", str(tmp_path / "b.csv")])
    text = (tmp_path / "a.csv").read_text()
    assert text == (tmp_path / "b.csv").read_text()  # same settings, same numbers
    rows = list(csv.DictReader(text.splitlines()))
    assert text.splitlines()[0] == ",".join(ev.FIELDS)
    sets = ["real", "reconstruction", "samples", "samples+slg", "class cfg 1", "class object cfg 3"]
    assert [r["set"] for r in rows] == sets
    for r in rows[:4]:  # scored against the reference
        assert np.isfinite(float(r["fd"])) and np.isfinite(float(r["kid_x1000"]))
    for r in rows[4:]:  # scored by the class probe: 2 samples of each class
        assert r["fd"] == r["kid_x1000"] == "" and r["images"] == "10"
        per = [float(r[f]) for f in ev.ACCURACY_FIELDS]
        assert all(x in (0.0, 0.5, 1.0) for x in per)
        assert float(r["class_accuracy"]) == pytest.approx(np.mean(per))
    # the probe on the real one-class renders among the 8 val renders (deterministic: there are some)
    assert rows[0]["class_accuracy"] != "" and 0.0 <= float(rows[0]["class_accuracy"]) <= 1.0
    assert 0 < int(rows[0]["class_images"]) <= 8 and all(r["class_images"] == "10" for r in rows[4:])
    assert str(DEFAULT_WEIGHTS) == rows[1]["weights"]
    out = capsys.readouterr().out
    assert "samples+slg" in out and "class accuracy" in out


def test_single_object_class_and_the_probe() -> None:
    names = caption_from_names
    ids = torch.stack(
        [
            names(["floor", "cone"]),
            names(["background", "floor", "box", "cone"]),
            names(["floor"]),
            names(["torus"]),
        ]
    )
    assert ev.single_object_class(ids).tolist() == [3, -1, -1, 4]
    feats = ev.Features()
    probe = ev.ClassProbe(feats, 200, 64)
    rgb, ids = render_pool("train", 200, 64)
    y = ev.single_object_class(ids)
    assert probe.fitted_on == int((y >= 0).sum()) > 20
    fit = probe.accuracy(rgb[y >= 0].float() / 255.0, y[y >= 0])  # on the images it was fitted on
    assert fit["class_accuracy"] > 0.9 and set(fit) == {"class_images", "class_accuracy", *ev.ACCURACY_FIELDS}
    one = probe.accuracy(rgb[y == 3][:2].float() / 255.0, y[y == 3][:2])
    assert set(one) == {"class_images", "class_accuracy", "accuracy_cone"}  # only the classes asked for
    with pytest.raises(ValueError, match=r"--probe-images 3: no train render shows \[.*\] alone"):
        ev.ClassProbe(feats, 3, 64)


def test_cli_names_bad_input_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        ev.main(["--weights", str(tmp_path / "nope.safetensors"), "--csv", str(tmp_path / "out.csv")])
    with pytest.raises(SystemExit):
        ev.main(["--images", "1", "--csv", str(tmp_path / "out.csv")])
    with pytest.raises(SystemExit):
        ev.main(["--threads", "0", "--csv", str(tmp_path / "out.csv")])
    bad_input = {
        "--class-images must be ≥ 0": ["--class-images", "-1"],
        r"--object-cfg scales must be finite numbers ≥ 0, got \[-1.0\]": ["--object-cfg", "3", "-1"],
        r"--object-cfg scales must be finite numbers ≥ 0, got \[inf\]": ["--object-cfg", "inf"],
        "--probe-images must be at least 1": ["--probe-images", "0"],
    }
    for message, argv in bad_input.items():
        with pytest.raises(SystemExit):
            ev.main([*argv, "--csv", str(tmp_path / "out.csv")])
        assert re.search(message, capsys.readouterr().err), message
    assert not (tmp_path / "out.csv").exists()
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        ev.evaluate([tmp_path / "nope.safetensors"], images=4)


def test_class_samples_are_guided_away_from_the_caption_without_objects() -> None:
    """evaluate's class rows ask for ``background floor <class>`` against ``background floor`` (not the empty
    caption): the same images as :func:`sample` with that negative, and not those of plain CFG."""
    torch.set_num_threads(1)
    transformer, caption, _ = load_weights()
    net = Denoiser(transformer, caption).eval()
    rgb, y = ev.class_samples(net, None, 2, 1, 5, 3.0, 2)
    assert rgb.shape[0] == 10 and y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    cone = object_caption("cone").expand(2, -1)
    want = sample(net, cone, 1, 3.0, 5, negative=caption_from_names(["background", "floor"]))
    assert torch.equal(rgb[6:8], want)
    assert not torch.allclose(rgb[6:8], sample(net, cone, 1, 3.0, 5))
    with pytest.raises(ValueError, match="unknown object class 'floor'"):
        object_caption("floor")
