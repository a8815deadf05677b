"""Generation sweeps (a sweep file with ``generate:``): a seeds × (prompts, guidance) grid of ``probebench generate``
cells through the sweep executors, one folder dataset per cell with its provenance; the folder is the state — a
rerun writes nothing, a partial cell resumes to the same bytes, ``--force`` redoes a cell (here in a submitit
job), a cell of other settings is refused by name — and one clear error per bad sweep file.

Tiny sizes on the session's tiny-mmdit bundle (``generation_run``): 2 samples, 4 steps, batches of 2.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest
import torch
import yaml

import tasks
from probebench.cli import main
from probebench.core.errors import ProbebenchError
from probebench.generate import STATE_DIR, sample_id
from probebench.sweep import dry_run_text, load_sweep, run_sweep
from probes.bundle import load_bundle

pytestmark = pytest.mark.usefixtures("one_thread")

CELLS = ["s0-g1", "s0-g2", "s1-g1", "s1-g2"]
PROMPTS = {1.0: ["sphere floor"], 2.0: ["box floor", ""]}


def sweep_doc(bundle: Path, root: Path, **extra) -> dict:
    return {
        "name": "gen",
        "output_dir": str(root / "out"),
        "generate": {
            "bundle": str(bundle),
            "num_samples": 2,
            "steps": 4,
            "batch_size": 2,
            "contact_rows": 2,
        },
        "axes": {"seed": [0, 1]},
        "zip": [{"prompts": [PROMPTS[1.0], PROMPTS[2.0]], "guidance": [1.0, 2.0]}],
        "cell_name": "s{seed}-g{guidance}",
        **extra,
    }


def files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def digests(root: Path) -> dict[str, str]:
    return {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in files(root).items()}


def mtimes(root: Path) -> dict[str, int]:
    return {k: p.stat().st_mtime_ns for k, p in files(root).items()}


@pytest.fixture(scope="module")
def swept(generation_run, tmp_path_factory):
    """The 2 × 2 sweep, generated once in this process: (sweep file, sweep, summary, digests per cell)."""
    _, bundle, _ = generation_run
    root = tmp_path_factory.mktemp("gen-sweep")
    path = root / "gen.yaml"
    path.write_text(yaml.safe_dump(sweep_doc(bundle, root), sort_keys=False))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the cells run in this process: tiny models are fastest on one thread
    try:
        sweep = load_sweep(path)
        summary = run_sweep(sweep, progress=False)
    finally:
        torch.set_num_threads(threads)
    return path, sweep, summary, {c.name: digests(c.dir) for c in sweep.cells}


def test_a_grid_of_generation_cells_writes_one_folder_dataset_per_cell(swept, generation_run):
    _, sweep, summary, digest = swept
    assert summary.ok, summary.text()
    assert [(r.name, r.status) for r in summary.cells] == [(c, "done") for c in CELLS]
    rows = list(csv.DictReader((sweep.dir / "summary.csv").open()))
    assert [(r["kind"], r["name"], r["status"]) for r in rows] == [("generate", c, "done") for c in CELLS]
    grid = yaml.safe_load((sweep.dir / "sweep.yaml").read_text())
    assert grid["kind"] == "generate" and [c["name"] for c in grid["cells"]] == CELLS
    assert grid["cells"][1]["overrides"] == {"seed": 0, "prompts": PROMPTS[2.0], "guidance": 2.0}
    assert not (sweep.dir / "results.csv").exists() and not (sweep.dir / "REPORT.md").exists()
    assert sorted(p.name for p in sweep.output.iterdir()) == [
        ".locks",
        *CELLS,
    ]  # the datasets, and their locks
    bundle_hash = load_bundle(generation_run[1]).hash
    for cell in sweep.cells:
        seed, guidance = cell.overrides["seed"], cell.overrides["guidance"]
        assert cell.dir == sweep.dir / "cells" / f"s{seed}-g{guidance:g}"
        src = yaml.safe_load((cell.dir / "dataset.yaml").read_text())["source"]
        assert (src["seed"], src["guidance"], src["prompts"]) == (seed, guidance, PROMPTS[guidance])
        assert src["steps"] == 4 and src["num_samples"] == 2 and src["bundle_sha256"] == bundle_hash
        ds = tasks.create("folder", split="train", root=str(cell.dir))
        assert len(ds) == 2 and set(ds.targets) == {"segmentation", "saliency", "depth"}
        assert ds.load_image(0).shape[:2] == ds.load_target(0, "depth").shape == (64, 64)
    # the axes matter: another seed, or another prompt and guidance, gives other images
    image = "train/images/s000000.png"
    assert len({digest[c][image] for c in CELLS}) == 4


def test_a_rerun_writes_nothing_and_force_redoes_one_cell_in_a_submitit_job(swept, capsys):
    path, sweep, _, digest = swept
    before = {c.name: mtimes(c.dir) for c in sweep.cells}
    assert main(["sweep", str(path), "--no-progress"]) == 0
    assert "4 cells — 0 done, 4 skipped, 0 failed" in capsys.readouterr().out
    assert {c.name: mtimes(c.dir) for c in sweep.cells} == before
    assert main(["sweep", str(path), "--dry-run", "--force", "s1-g*"]) == 0
    text = capsys.readouterr().out
    assert "4 cells, 4 done, 2 to run" in text
    assert [line.split()[:2] for line in text.splitlines()[2:]] == [
        ["s0-g1", "done"],
        ["s0-g2", "done"],
        ["s1-g1", "forced"],
        ["s1-g2", "forced"],
    ]
    # --force: the folder is deleted and generated again, here through submitit (in-process DebugExecutor)
    (sweep.cell("s1-g2").dir / "stray.txt").write_text("left by hand")
    summary = run_sweep(
        load_sweep(path), executor="submitit-debug", force=["s1-g2"], progress=False, poll_s=0.1
    )
    assert [r.status for r in summary.cells] == ["skipped", "skipped", "skipped", "done"], summary.text()
    redone = sweep.cell("s1-g2").dir
    assert digests(redone) == digest["s1-g2"]  # the same bytes; the stray file went with the old folder
    assert all(t != before["s1-g2"][k] for k, t in mtimes(redone).items())
    assert {c.name: mtimes(c.dir) for c in sweep.cells if c.name != "s1-g2"} == {
        k: v for k, v in before.items() if k != "s1-g2"
    }
    assert list((sweep.dir / "submitit").rglob("*_log.out"))  # it went through submitit


def test_a_partial_cell_resumes_and_a_cell_of_other_settings_is_refused(swept, capsys):
    path, sweep, _, digest = swept
    cell = sweep.cell("s0-g1")
    # a killed job: no dataset.yaml and one sample without its marker; the rerun finishes it, same bytes
    (cell.dir / "dataset.yaml").unlink()
    (cell.dir / STATE_DIR / "done" / f"{sample_id(1)}.json").unlink()
    assert "s0-g1  partial 1/2" in dry_run_text(load_sweep(path))
    summary = run_sweep(load_sweep(path), progress=False)
    assert [r.status for r in summary.cells] == ["done", "skipped", "skipped", "skipped"], summary.text()
    assert digests(cell.dir) == digest["s0-g1"]
    # the sweep file changed under done cells: each names what differs and how to redo it; nothing is touched
    before = mtimes(cell.dir)
    assert main(["sweep", str(path), "steps=5", "--dry-run"]) == 0
    assert "s0-g1  stale (different steps)" in capsys.readouterr().out
    summary = run_sweep(load_sweep(path, ["steps=5"]), progress=False)
    assert [r.status for r in summary.cells] == ["failed"] * 4
    assert "holds a generation of other settings (different steps); --force s0-g1 deletes it" in (
        summary.cells[0].reason
    )
    assert mtimes(cell.dir) == before
    assert main(["sweep", str(path), "steps=5", "--no-progress", "--fail-fast"]) == 1
    assert "1 failed, 3 cancelled" in capsys.readouterr().out
    # a bundle exported again under the same path is another generation too
    recorded = sweep.cell("s0-g2").dir / STATE_DIR / "settings.json"
    recorded.write_text(
        recorded.read_text().replace(load_bundle(sweep.cell("s0-g2").config.bundle).hash, "x")
    )
    lines = dry_run_text(load_sweep(path)).splitlines()
    assert [line.split("  ")[:2] for line in lines[2:4]] == [
        ["s0-g1", "done"],
        ["s0-g2", "stale (different bundle_sha256)"],
    ]


NO_ZIP = {"zip": None}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"generate": {"promts": ["x"]}},
            r"generate: Unknown generate field 'promts'. Did you mean: prompts\?",
        ),
        ({"axes": {"sed": [0, 1]}}, r"axis 'sed': Unknown generate field 'sed'. Did you mean: seed, "),
        ({"generate": {"out": "x"}}, r"generate: out is set by the sweep: each cell writes <output_dir>/"),
        ({"axes": {"out": ["a", "b"]}}, r"axis 'out': out is set by the sweep"),
        ({"base": {"seed": 0}}, r"give either base: .* or generate: .*, not both"),
        ({"set": {"seed": 1}}, r"unknown key 'set'. .*Valid keys: name, output_dir, generate, axes"),
        ({"generate": {"bundle": None}}, r"generate: bundle is required"),
        (
            {"generate": {"bundle": "nowhere"}},
            r"cell with seed=0, .*nowhere does not exist: a generation bundle",
        ),
        ({"axes": {"seed": ["a"]}}, r"axis 'seed', value a: Config key 'seed' expects int"),
        (
            {"axes": {"prompts": ["a", "b"]}, **NO_ZIP},
            r"value a: .*expects a list.*write the axis as \[\[a\], ",
        ),
        (
            {"axes": {"seed": [0], "guidance": [0.5]}, **NO_ZIP},
            r"cell with seed=0, guidance=0.5: guidance must be at least 1",
        ),
        ({"generate": {"tasks": ["normals"]}}, r"has no head for 'normals'; it has: "),
        ({"cell_name": "s{seed}"}, r"two cells are both named 's0'"),
        ({"cell_name": "{sede}"}, r"cell_name field \{sede\} is neither an axis nor a config key"),
    ],
    ids=[
        "unknown-field",
        "unknown-axis",
        "out",
        "out-axis",
        "base-and-generate",
        "unknown-key",
        "no-bundle",
        "missing-bundle",
        "wrong-type",
        "list-axis-of-strings",
        "guidance-below-1",
        "task-without-head",
        "duplicate-cell-names",
        "unknown-name-field",
    ],
)
def test_bad_generation_sweeps_get_one_clear_error(generation_run, tmp_path, change, message):
    """``change``: top-level keys replace (None: removed), ``generate`` fields merge (None: removed)."""
    doc = sweep_doc(generation_run[1], tmp_path)
    for key, value in change.items():
        if key == "generate":
            doc["generate"] = {k: v for k, v in {**doc["generate"], **value}.items() if v is not None}
        elif value is None:
            del doc[key]
        else:
            doc[key] = value
    with pytest.raises(ProbebenchError, match=message):
        load_sweep(doc)
    assert not (tmp_path / "out").exists()


def test_the_cli_names_an_unknown_forced_cell_and_a_bad_file(generation_run, tmp_path, capsys):
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump(sweep_doc(generation_run[1], tmp_path)))
    assert main(["sweep", str(path), "--dry-run", "--force", "s0-g3"]) == 2
    err = capsys.readouterr().err
    assert (
        "--force: No cell matches 's0-g3'. Did you mean: " in err
        and "Cells: s0-g1, s0-g2, s1-g1, s1-g2." in err
    )
    assert main(["sweep", str(path), "ouput_dir=/tmp/x", "--dry-run"]) == 2
    assert "override 'ouput_dir=/tmp/x': Unknown generate field 'ouput_dir'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_shipped_example_expands_to_its_four_cells(generation_run, tmp_path, capsys):
    example = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "generate_tiny.yaml"
    args = [f"bundle={generation_run[1]}", f"output_dir={tmp_path}"]
    sweep = load_sweep(example, args)
    assert [c.name for c in sweep.cells] == ["s0-g1", "s0-g3", "s1-g1", "s1-g3"]
    guided = sweep.cell("s1-g3").config
    assert (guided.seed, guided.guidance, guided.prompts) == (1, 3.0, ["sphere floor", "box floor"])
    assert guided.out == str(tmp_path / "generate_tiny" / "cells" / "s1-g3")
    assert main(["sweep", str(example), *args, "--dry-run"]) == 0
    assert "4 cells, 0 done, 4 to run" in capsys.readouterr().out
    assert not (tmp_path / "generate_tiny").exists()
