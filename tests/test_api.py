"""The notebook API: ``probebench.run`` / ``load_results`` / ``figures`` return data and figures, and run the
same pipeline as the command line."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from _runs import small_run

import probebench
from probebench.config import load_config
from probebench.core.errors import ProbebenchError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "efficientnet_scenes.yaml"


def _kwargs(tmp_path):
    return dict(a.split("=", 1) for a in small_run(tmp_path, "name=nb", "tasks=[segmentation]"))


def test_overrides_as_keywords_equal_the_command_lines(tmp_path):
    cli = load_config(
        CONFIG, small_run(tmp_path, "name=nb", "tasks=[segmentation]", "probes.0.params.lambdas=[1.0]")
    )
    api = probebench.make_config(
        str(CONFIG),
        **{k: (int(v) if v.isdigit() else v) for k, v in _kwargs(tmp_path).items() if k != "tasks"},
        tasks=["segmentation"],
        probes__0__params__lambdas=[1.0],
    )
    assert api == cli
    assert probebench.make_config(cli, name="other").name == "other"
    assert probebench.make_config({"name": "d"}).probes == load_config().probes  # a dict is over the defaults
    with pytest.raises(ProbebenchError, match="Unknown"):
        probebench.make_config({"nmae": "d"})
    with pytest.raises(ProbebenchError, match="takes a config path"):
        probebench.make_config(3)


def test_run_returns_rows_and_directory_and_figures_are_figures(tmp_path):
    kw = {k: (int(v) if v.isdigit() else v) for k, v in _kwargs(tmp_path).items() if k != "tasks"}
    rows, run_dir = probebench.run(str(CONFIG), analyze=False, progress=False, tasks=["segmentation"], **kw)
    assert run_dir == tmp_path / "r" / "nb" and (run_dir / "results.csv").is_file()
    assert len(rows) and set(rows["task"]) == {"segmentation"} and "model" in rows
    again = probebench.load_results(run_dir)
    assert again.equals(rows)
    curves = probebench.figures.layer_curves(rows)
    assert curves and all(isinstance(f, plt.Figure) for f in curves.values())
    assert probebench.figures.predictions(run_dir)  # the ridge heads' predictions
    assert not (run_dir / "figures").exists()  # nothing written
    for f in curves.values():
        plt.close(f)
