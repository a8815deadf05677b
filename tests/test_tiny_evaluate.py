"""Sample scores of the tiny MM-DiT (backbones.tiny.evaluate): FD and KID formulas, and the CLI end to end."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from backbones.tiny import evaluate as ev
from backbones.tiny.model import DEFAULT_WEIGHTS


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
    argv = ["--images", "4", "--steps", "1", "--threads", "1", "--csv"]
    ev.main([*argv, str(tmp_path / "a.csv")])
    ev.main([*argv, str(tmp_path / "b.csv")])
    text = (tmp_path / "a.csv").read_text()
    assert text == (tmp_path / "b.csv").read_text()  # same settings, same numbers
    rows = text.splitlines()
    assert rows[0] == ",".join(ev.FIELDS)
    assert [r.split(",")[1] for r in rows[1:]] == ["real", "reconstruction", "samples", "samples+slg"]
    assert all(np.isfinite(float(x)) for r in rows[1:] for x in r.split(",")[3:])
    assert str(DEFAULT_WEIGHTS) in rows[2]
    assert "samples+slg" in capsys.readouterr().out


def test_cli_names_bad_input_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        ev.main(["--weights", str(tmp_path / "nope.safetensors"), "--csv", str(tmp_path / "out.csv")])
    with pytest.raises(SystemExit):
        ev.main(["--images", "1", "--csv", str(tmp_path / "out.csv")])
    with pytest.raises(SystemExit):
        ev.main(["--threads", "0", "--csv", str(tmp_path / "out.csv")])
    assert not (tmp_path / "out.csv").exists()
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        ev.evaluate([tmp_path / "nope.safetensors"], images=4)
