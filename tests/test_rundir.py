"""The run-directory module: one place that knows where a run's and a sweep's files are."""

from __future__ import annotations

import json

import pytest
import yaml

from probebench.core.errors import ProbebenchError
from probebench.core.rundir import (
    HeadsDir,
    RunDir,
    find_results_files,
    model_slug,
)


def _run(path, roles=None, notes=None, heads=("m-default",)):
    path.mkdir(parents=True)
    probes = [
        {"name": "ridge"},
        *({"name": "fusion", "label": lbl, "role": r} for lbl, r in (roles or {}).items()),
    ]
    (path / "config.yaml").write_text(yaml.safe_dump({"name": path.name, "probes": probes}))
    (path / "results.csv").write_text("")
    if notes:
        (path / "backbones.json").write_text(json.dumps(notes))
    for h in heads:
        (path / "heads" / h).mkdir(parents=True)
    return RunDir(path)


def test_a_sweep_directory_is_its_cells(tmp_path):
    sweep = tmp_path / "sw"
    _run(sweep, heads=())
    (sweep / "sweep.yaml").write_text(yaml.safe_dump({"name": "my sweep"}))
    _run(sweep / "cells" / "a", roles={"ctl": "noise-control"}, notes={"m (random)": "twin"})
    _run(sweep / "cells" / "b", notes={"n (random)": "other twin"})
    rd = RunDir(sweep)
    assert rd.is_sweep and rd.sweep_name() == "my sweep"
    assert [r.cell_name() for r in rd.runs()] == ["", "a", "b"]
    assert [(h.cell, h.path.name) for h in rd.head_dirs()] == [("a", "m-default"), ("b", "m-default")]
    assert rd.stage_roles() == {"ctl": "noise-control"}
    assert rd.backbone_notes() == {"m (random)": "twin", "n (random)": "other twin"}
    assert RunDir(sweep / "cells" / "a").sweep_name() is None


def test_heads_dirs_name_their_model_and_stage(tmp_path):
    rd = _run(tmp_path / "r", heads=())
    d = rd.heads_dir("tiny-mmdit[caption=a b]", "default", "fusion-noise-control")
    assert d == tmp_path / "r" / "heads" / "tiny-mmdit_caption=a_b_-default" / "fusion-noise-control"
    assert d.is_dir() and model_slug("a/b", "c") == "a_b-c"
    (d.parent / "segmentation.json").write_text(json.dumps({"backbone": "tiny", "weights": "random"}))
    h = HeadsDir(d.parent)
    assert h.model("segmentation") == "tiny (random)" and h.model("depth") == d.parent.name


def test_per_class_tables_of_a_sweep_are_read_from_every_cell(tmp_path):
    sweep = tmp_path / "sw"
    for cell, cls in (("a", "sky"), ("b", "floor")):
        _run(sweep / "cells" / cell, heads=())
        (sweep / "cells" / cell / "per_class_iou.csv").write_text(
            f"backbone,weights,probe,class,iou\nm,default,ridge,{cls},0.5\n"
        )
    rd = RunDir(sweep)
    assert rd.has_per_class_iou() and list(rd.per_class_iou()["class"]) == ["sky", "floor"]
    with pytest.raises(ProbebenchError, match=r"No per_class_iou\.csv"):
        RunDir(tmp_path / "other").per_class_iou()


def test_imported_heads_leave_temporary_files_behind(tmp_path):
    src, dst = _run(tmp_path / "screen", heads=("m-default",)), _run(tmp_path / "cell", heads=())
    (src.path / "heads" / "m-default" / "segmentation.json").write_text("{}")
    (src.path / "heads" / "m-default" / ".segmentation.json.tmp").write_text("half")
    dst.import_heads(src)
    assert [p.name for p in (dst.path / "heads" / "m-default").iterdir()] == ["segmentation.json"]


def test_missing_results_is_one_clear_error(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "x.txt").write_text("")
    with pytest.raises(ProbebenchError, match=r"has no results.csv; it holds: \['x.txt'\]"):
        RunDir(tmp_path / "r").read_results()
    with pytest.raises(ProbebenchError, match="does not exist"):
        find_results_files([tmp_path / "nowhere"])
