"""Sweeps: grid expansion and its errors, shared extractions, shared ridge screens, only-missing resume (also
after SIGKILL of a real sweep process), --force, failing cells, the submitit LocalExecutor path, and two sweeps
writing at once.

Everything runs on a tiny grid: 16 px scenes, 8/4/4 images, EfficientNet-Lite0 with random weights at 32 px,
layers 0-1, one task, a one-λ ridge screen.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from _runs import small_run

from probebench import pipeline
from probebench.cli import main
from probebench.config import load_config
from probebench.core.errors import ProbebenchError
from probebench.core.results import IDENTITY, read_results
from probebench.sweep import load_sweep, missing_parts, plan_sweep, run_sweep, screen_state
from probebench.sweep.spec import _expand_axis

ROOT = Path(__file__).resolve().parents[1]


def tiny_sweep(tmp_path: Path, **extra) -> dict:
    """A sweep mapping over the tiny base config; ``extra`` adds or replaces top-level sweep keys."""
    return {
        "name": "tiny",
        "base": {
            "output_dir": str(tmp_path / "results"),
            "data": {"max_train": 8, "max_val": 4, "max_test": 4, "options": {"resolution": 16, "seed": 0}},
            "backbones": [
                {"name": "timm:efficientnet_lite0", "weights": "random", "image_size": 32, "layers": [0, 1]}
            ],
            "tasks": ["segmentation"],
            "extract": {"cache_dir": str(tmp_path / "cache"), "batch_size": 8},
            "probes": [{"name": "ridge", "params": {"lambdas": [1.0]}}],
        },
        **extra,
    }


def write_sweep(tmp_path: Path, **extra) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_sweep(tmp_path, **extra), sort_keys=False))
    return path


def cache_dirs(tmp_path: Path) -> list[Path]:
    root = tmp_path / "cache"
    return sorted(p for p in root.iterdir() if (p / "manifest.json").is_file()) if root.is_dir() else []


def assert_complete_and_unique(sweep) -> None:
    """Every cell has all its rows; the sweep table has every cell and no duplicated row identity."""
    df = read_results(sweep.table)
    assert not df.duplicated(subset=list(IDENTITY)).any()
    for cell in sweep.cells:
        assert missing_parts(cell.config) == [], cell.name
        cell_df = read_results(cell.results)
        assert not cell_df.duplicated(subset=list(IDENTITY)).any()
    assert set(df["run"]) == {c.name for c in sweep.cells}


# -- expansion -------------------------------------------------------------------------------------------------
def test_crossed_and_zipped_axes_expand_in_order_with_names(tmp_path):
    spec = tiny_sweep(
        tmp_path,
        axes={"probes.0.params.lambdas": [[0.1], [1.0]], "backbones.0.layers": {"range": [0, 3]}},
        zip=[{"seed": [0, 1], "data.max_train": [8, 6]}],
    )
    sweep = load_sweep(spec)
    assert len(sweep.cells) == 2 * 3 * 2
    first, last = sweep.cells[0], sweep.cells[-1]
    assert first.overrides == {
        "probes.0.params.lambdas": [0.1],
        "backbones.0.layers": 0,
        "seed": 0,
        "data.max_train": 8,
    }
    assert last.overrides == {
        "probes.0.params.lambdas": [1.0],
        "backbones.0.layers": 2,
        "seed": 1,
        "data.max_train": 6,
    }
    assert first.name == "lambdas=0.1_layers=0_seed=0_max_train=8"  # default: shortest unique key suffixes
    assert (first.config.seed, first.config.data.max_train, first.config.backbones[0].layers) == (0, 8, 0)
    assert (last.config.seed, last.config.data.max_train) == (1, 6)  # zipped values go together
    assert first.config.output_dir == str(tmp_path / "results" / "tiny" / "cells")
    assert first.config.name == first.name

    spec["cell_name"] = "l{backbones.0.layers}-lam{probes.0.params.lambdas}-s{seed:02d}"
    sweep = load_sweep(spec)
    assert sweep.cells[0].name == "l0-lam0.1-s00"
    assert _expand_axis("t", {"linspace": [0, 1, 3]}, "").values == [0.0, 0.5, 1.0]
    assert _expand_axis("t", {"range": [0.1, 0.4, 0.1]}, "").values == [0.1, 0.2, 0.3]
    assert _expand_axis("t", {"range": [5, 0, -2]}, "").values == [5, 3, 1]


@pytest.mark.parametrize(
    "extra, expect",
    [
        ({"axes": {"backbones.0.weight": ["random"]}}, ["backbones.0.weight", "backbones.0.weights"]),
        ({"axes": {"seeds": [0, 1]}}, ["'seeds'", "Did you mean 'seed'"]),
        ({"axes": {"seed": []}}, ["'seed'", "empty"]),
        ({"axes": {"seed": {"range": [3, 3]}}}, ["'seed'", "empty"]),
        ({"axes": {"seed": [0, "one"]}}, ["'seed'", "one", "expects int"]),
        ({"axes": {"data.max_train": [8, [1]]}}, ["data.max_train", "[1]"]),
        (
            {"axes": {"backbones.0.timesteps": [0.5]}},
            ["backbones.0.timesteps", "expects list", "[[0.5], ...]"],
        ),
        ({"axes": {"probes.0.params.lambda": [[1.0]]}}, ["probes.0.params.lambda", "lambdas"]),
        ({"axes": {"tasks": [["segmentation"], ["segmentaton"]]}}, ["tasks", "segmentaton", "segmentation"]),
        (
            {"zip": [{"seed": [0, 1], "data.max_train": [8]}]},
            ["equal lengths", "seed (2 values)", "data.max_train (1 values)"],
        ),
        ({"axes": {"seed": [0]}, "zip": [{"seed": [1]}]}, ["'seed'", "twice"]),
        ({"axes": {"backbones.1.weights": ["random"]}}, ["backbones.1.weights", "list index"]),
        ({"axes": {"name": ["a"]}}, ["'name'", "set by the sweep"]),
        ({"axis": {"seed": [0]}}, ["unknown key 'axis'", "'axes'"]),
        ({"axes": {"seed": [0, 1]}, "cell_name": "same"}, ["both named 'same'"]),
        ({"slurm": {"partiton": "gpu"}}, ["slurm.partiton", "slurm.partition"]),
    ],
)
def test_bad_sweeps_fail_before_anything_runs_naming_axis_and_value(tmp_path, extra, expect):
    with pytest.raises(ProbebenchError) as e:
        load_sweep(tiny_sweep(tmp_path, **extra))
    for text in expect:
        assert text in str(e.value), str(e.value)
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()


def test_cells_take_tasks_and_options_from_their_own_dataset(tmp_path):
    """``tasks: null`` is each cell's dataset's kinds; an axis that switches the dataset drops scenes' options."""
    from tasks.scenes import export_scenes

    root = export_scenes(
        tmp_path / "export", {"train": 2, "val": 1, "test": 1}, resolution=16, progress=False
    )
    meta = yaml.safe_load((root / "dataset.yaml").read_text())
    (root / "dataset.yaml").write_text(yaml.safe_dump({**meta, "targets": ["depth"]}))
    spec = tiny_sweep(tmp_path, zip=[{"data.name": ["scenes", "folder"], "data.root": [None, str(root)]}])
    spec["base"]["tasks"] = None
    scenes, folder = (c.config for c in load_sweep(spec).cells)
    assert scenes.tasks == ["segmentation", "saliency", "depth"]
    assert scenes.data.options == {"resolution": 16, "seed": 0}
    assert (folder.tasks, folder.data.options, folder.data.root) == (["depth"], {}, str(root))


def test_max_cells_guard_names_the_count(tmp_path):
    spec = tiny_sweep(tmp_path, axes={"seed": {"range": [0, 30]}, "data.max_train": [4, 8]})
    with pytest.raises(
        ProbebenchError, match=r"60 cells \(seed \(30\) × data.max_train \(2\)\).*--max-cells 50"
    ):
        load_sweep(spec, max_cells=50)
    assert len(load_sweep(spec, max_cells=60).cells) == 60


# -- running in-process ----------------------------------------------------------------------------------------
def test_cells_share_one_extraction_and_reruns_skip_everything(tmp_path, monkeypatch, capsys):
    calls = []
    real = pipeline.extract_backbone

    def counting(b, cfg, splits, progress=True):
        calls.append((b.name, b.weights, cfg.seed))
        return real(b, cfg, splits, progress)

    monkeypatch.setattr(pipeline, "extract_backbone", counting)
    path = write_sweep(
        tmp_path, axes={"probes.0.params.lambdas": [[0.1], [1.0]], "tasks": [["segmentation"], ["depth"]]}
    )
    sweep = load_sweep(path)
    summary = run_sweep(sweep, progress=False, report=False)
    assert summary.ok, summary.text()
    assert [r.status for r in summary.cells] == ["done"] * 4
    assert len(calls) == 1  # four cells, one extraction config
    assert len(cache_dirs(tmp_path)) == 3  # its train, val and test caches
    assert_complete_and_unique(sweep)
    n_rows = len(read_results(sweep.table))

    assert main(["sweep", str(path), "--dry-run"]) == 0
    assert "4 cells, 4 done, 0 to run" in capsys.readouterr().out

    calls.clear()
    again = run_sweep(load_sweep(path), progress=False, report=False)
    assert [r.status for r in again.cells] == ["skipped"] * 4 and calls == []
    assert len(read_results(sweep.table)) == n_rows

    forced = sweep.cells[1].name
    stamp = read_results(sweep.cells[1].results)["created"].max()
    time.sleep(1.1)
    redo = run_sweep(load_sweep(path), force=[forced], progress=False, report=False)
    assert {r.name: r.status for r in redo.cells}[forced] == "done"
    assert sum(r.status == "done" for r in redo.cells) == 1
    assert read_results(sweep.cells[1].results)["created"].max() > stamp  # recomputed, not kept
    assert len(read_results(sweep.table)) == n_rows
    assert_complete_and_unique(sweep)
    with pytest.raises(ProbebenchError, match="No cell matches 'nope'"):
        run_sweep(load_sweep(path), force=["nope"], progress=False, report=False)


def test_a_failing_cell_is_recorded_and_the_others_run(tmp_path, monkeypatch):
    real = pipeline.run

    def flaky(cfg, **kwargs):
        if cfg.seed == 1:
            raise RuntimeError("out of memory (simulated)")
        return real(cfg, **kwargs)

    monkeypatch.setattr(pipeline, "run", flaky)
    path = write_sweep(tmp_path, axes={"seed": [0, 1, 2]}, cell_name="s{seed}")
    summary = run_sweep(load_sweep(path), progress=False, report=False)
    status = {r.name: r for r in summary.cells}
    assert [status[n].status for n in ("s0", "s1", "s2")] == ["done", "failed", "done"]
    assert "RuntimeError: out of memory (simulated)" in status["s1"].reason
    assert "out of memory" in (tmp_path / "results" / "tiny" / "cells" / "s1" / "error.txt").read_text()
    assert not summary.ok and "failed" in summary.text() and "out of memory" in summary.text()
    assert "s1,failed" in (tmp_path / "results" / "tiny" / "summary.csv").read_text()

    # --fail-fast: nothing after the first failure runs; the rerun only retries the missing cell
    summary = run_sweep(load_sweep(path), force=["s2"], fail_fast=True, progress=False, report=False)
    assert [r.status for r in summary.cells] == ["skipped", "failed", "cancelled"]
    monkeypatch.setattr(pipeline, "run", real)
    summary = run_sweep(load_sweep(path), progress=False, report=False)
    assert [r.status for r in summary.cells] == ["skipped", "done", "done"] and summary.ok
    assert not (tmp_path / "results" / "tiny" / "cells" / "s1" / "error.txt").exists()


def test_submitit_local_executor_end_to_end(tmp_path):
    # the two cells differ only in a later stage, so they share their ridge screen
    sweep = load_sweep(with_later_stage(tiny_sweep(tmp_path, axes=LATER_STAGE_AXIS)))
    summary = run_sweep(sweep, executor="submitit-local", progress=False, report=False, poll_s=0.5)
    assert summary.ok, summary.text()
    assert [r.status for r in summary.cells] == ["done", "done"]
    assert [r.status for r in summary.extractions] == ["done"]
    assert [r.status for r in summary.screens] == ["done"]
    assert len(cache_dirs(tmp_path)) == 3
    assert_complete_and_unique(sweep)
    for cell in sweep.cells:  # imported in the cell's own job
        assert set(read_results(cell.results)["run"]) == {cell.name}
        assert list(cell.dir.glob("heads/*/segmentation.safetensors"))
    logs = list((sweep.dir / "submitit").rglob("*_log.out"))
    assert len(logs) == 4  # one extraction job, one screen job, then two cell jobs: each its own process


# -- shared ridge screens --------------------------------------------------------------------------------------
LATER_STAGE_AXIS = {"probes.1.label": ["ridge-best-a", "ridge-best-b"]}


def with_later_stage(spec: dict) -> dict:
    """``spec`` with a cheap second stage after the ridge screen: a ridge fit at the best cell (not a screen: it
    reads the screen's rows), labelled by the axis ``LATER_STAGE_AXIS``."""
    spec["base"]["probes"].append({"name": "ridge", "cells": "best", "params": {"lambdas": [1.0]}})
    return spec


def count_ridge_fits(monkeypatch) -> list:
    """Patch the registered ridge probe's fit to record each call (the pipeline and screen jobs call it by name)."""
    from probes import probe_class

    cls = probe_class("ridge")
    real = cls.fit
    calls = []

    @functools.wraps(real)
    def counting(self, *args, **kwargs):
        calls.append(kwargs.get("keys"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, "fit", counting)
    return calls


def test_cells_with_the_same_ridge_screen_compute_it_once(tmp_path, monkeypatch, capsys):
    calls = count_ridge_fits(monkeypatch)
    spec = tiny_sweep(
        tmp_path,
        zip=[  # three cells differ only in the linear probe's lr; the fourth has its own ridge λ
            {
                "probes.1.params.lr": [0.01, 0.02, 0.03, 0.01],
                "probes.0.params.lambdas": [[1.0], [1.0], [1.0], [0.1]],
            }
        ],
        cell_name="lr{probes.1.params.lr}-lam{probes.0.params.lambdas}",
    )
    spec["base"]["probes"].append(
        {"name": "linear", "cells": "best", "params": {"epochs": 1, "batch_size": 8, "patience": 0}}
    )
    spec["base"]["probe_seeds"] = [0]
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    sweep = load_sweep(path)
    shared_cells = [c.name for c in sweep.cells[:3]]
    odd = sweep.cells[3]

    plan = plan_sweep(sweep)
    assert [(state, users) for _, state, users in plan.shared] == [("todo", shared_cells)]
    assert len(plan.screens) == 1 and odd.name not in plan.shared[0][2]
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 shared screens" in out and f"todo, 3 cells ({', '.join(shared_cells)})" in out

    summary = run_sweep(sweep, progress=False, report=False)
    assert summary.ok, summary.text()
    assert [r.status for r in summary.screens] == ["done"]
    assert "1 shared screen jobs (1 computed" in summary.text()
    assert len(calls) == 2  # the shared screen once, the fourth cell's own screen once
    assert_complete_and_unique(sweep)
    screen = plan.shared[0][0]
    screen_rows = read_results(screen.dir)
    screen_head = next(screen.dir.glob("heads/*/segmentation.safetensors"))
    # every cell has its ridge rows (under its own name) and heads, and its linear rows
    for cell in sweep.cells:
        df = read_results(cell.results)
        ridge = df[df.probe == "ridge"].reset_index(drop=True)
        assert len(ridge) == len(screen_rows) and set(ridge["run"]) == {cell.name}
        assert (df.probe == "linear").any()
        head = cell.dir / screen_head.relative_to(screen.dir)
        same = list(ridge["config_hash"].unique()) == list(screen_rows["config_hash"].unique())
        assert same == (cell is not odd)
        if cell is not odd:
            assert ridge["value"].tolist() == screen_rows["value"].tolist()
            assert head.read_bytes() == screen_head.read_bytes()
        else:
            assert head.is_file() and head.read_bytes() != screen_head.read_bytes()
    assert screen_state(screen) == "complete"

    calls.clear()
    again = run_sweep(load_sweep(path), progress=False, report=False)
    assert [r.status for r in again.cells] == ["skipped"] * 4 and again.screens == [] and calls == []

    # a cell that lost its run directory (killed before its import) imports the finished screen, even alone
    shutil.rmtree(sweep.cells[0].dir)
    again = run_sweep(load_sweep(path), progress=False, report=False)
    assert [r.status for r in again.cells] == ["done"] + ["skipped"] * 3 and calls == []
    assert len(read_results(sweep.cells[0].results).query("probe == 'ridge'")) == len(screen_rows)
    assert (sweep.cells[0].dir / screen_head.relative_to(screen.dir)).is_file()

    # --force recomputes the forced cell's screen instead of importing the old one
    redo = run_sweep(load_sweep(path), force=[shared_cells[1]], progress=False, report=False)
    assert {r.name: r.status for r in redo.cells}[shared_cells[1]] == "done" and len(calls) == 1
    assert_complete_and_unique(sweep)


def test_a_half_written_screen_is_never_imported(tmp_path, monkeypatch):
    """Rows of a screen that a killed job left incomplete are not imported; its next job finishes it."""
    from probebench.sweep import import_screen, run_locked

    calls = count_ridge_fits(monkeypatch)
    spec = with_later_stage(tiny_sweep(tmp_path, axes=LATER_STAGE_AXIS))
    spec["base"]["tasks"] = ["segmentation", "depth"]
    sweep = load_sweep(spec)
    plan = plan_sweep(sweep)
    (screen, _, users), cell = plan.shared[0], sweep.cells[0]
    assert len(users) == 2
    for t in plan.extractions:
        assert t.run().status == "done"
    partial = replace(from_config(screen.config), tasks=["depth"])  # killed after its first task
    assert run_locked(partial) == "done" and screen_state(screen) == "partial"
    assert import_screen(cell.config, 0, screen.dir) == 0 and not cell.results.exists()
    assert next(t for t in plan_sweep(sweep).screens).key == screen.key  # planned again: finish it
    summary = run_sweep(sweep, progress=False, report=False)
    assert summary.ok and [r.status for r in summary.screens] == ["done"]
    assert calls.count(None) == 2  # the screen (on all cells): depth, then only the missing segmentation
    assert_complete_and_unique(sweep)


def from_config(d: dict):
    from probebench.config import RunConfig, from_dict

    return from_dict(RunConfig, d)


# -- real processes: SIGKILL and concurrent writers ----------------------------------------------------------
def sweep_cmd(path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "probebench.cli", "sweep", str(path), "--no-report", "--no-progress", *args]


def sub_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}


def statuses(stdout: str) -> dict[str, str]:
    """CELL -> STATUS from the summary table a sweep prints."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("CELL "))
    return {
        line.split()[0]: line.split()[1]
        for line in lines[start + 1 :]
        if line[:1] not in ("", " ") and not line.startswith(("extraction ", "screen ", "report"))
    }


def test_sweep_killed_with_sigkill_resumes_without_duplicates(tmp_path):
    path = write_sweep(tmp_path, axes={"seed": [0, 1, 2]}, cell_name="s{seed}")
    sweep = load_sweep(path)
    first = sweep.cells[0].results
    proc = subprocess.Popen(
        sweep_cmd(path), cwd=ROOT, env=sub_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    while not first.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, (
        "the sweep finished before it could be killed: " + proc.stderr.read().decode()[-2000:]
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert sum(missing_parts(c.config) == [] for c in sweep.cells) < len(sweep.cells)  # killed mid-way

    out = subprocess.run(
        sweep_cmd(path), cwd=ROOT, env=sub_env(), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    status = statuses(out.stdout)
    assert status["s0"] == "skipped" and set(status.values()) <= {"done", "skipped"}
    assert_complete_and_unique(sweep)


def test_two_concurrent_sweeps_never_corrupt_the_results(tmp_path):
    path = write_sweep(tmp_path, axes={"probes.0.params.lambdas": [[0.1], [1.0]]})
    procs = [
        subprocess.Popen(
            sweep_cmd(path), cwd=ROOT, env=sub_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()[-3000:]
    sweep = load_sweep(path)
    assert_complete_and_unique(sweep)
    assert len(cache_dirs(tmp_path)) == 3
    # each cell was computed by exactly one of the two processes (the other found it done)
    runs = [statuses(o.decode()) for o, _ in outs]
    for cell in sweep.cells:
        assert sorted(r[cell.name] for r in runs) == ["done", "skipped"], runs
    assert not list(sweep.dir.rglob(".*.tmp"))


def test_slurm_section_becomes_the_sbatch_script(tmp_path, monkeypatch):
    """The slurm executor's job script, written by submitit (a fake ``srun`` stands in for a cluster)."""
    from probebench.sweep import SubmititBackend

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    slurm = {"partition": "gpu", "gpus_per_node": 2, "timeout_min": 90, "array_parallelism": 4, "mem_gb": 32}
    sweep = load_sweep(tiny_sweep(tmp_path, slurm={**slurm, "setup": ["module load cuda"]}))
    backend = SubmititBackend("slurm", tmp_path / "submitit", sweep.slurm, "probebench-tiny", 30)
    assert backend.executor._executor.parameters["array_parallelism"] == 4
    script = backend.executor._executor._make_submission_file_text("python -m submitit.core._submit x", "u")
    for line in ("--partition=gpu", "--gpus-per-node=2", "--time=90", "--mem=32GB", "--signal=USR2@"):
        assert line in script
    assert "module load cuda" in script


@pytest.mark.parametrize(
    "name, cells, extractions, screens",
    [("timestep_layer", 12, 12, 0), ("backbone_comparison", 6, 6, 0), ("probe_ablation", 5, 1, 1)],
)
def test_shipped_sweeps_expand_and_validate(tmp_path, name, cells, extractions, screens):
    path = ROOT / "configs" / "sweeps" / f"{name}.yaml"
    sweep = load_sweep(path, [f"output_dir={tmp_path}", f"extract.cache_dir={tmp_path / 'cache'}"])
    assert sweep.name == name and len(sweep.cells) == cells
    plan = plan_sweep(sweep)
    assert len(plan.extractions) == extractions
    assert len(plan.screens) == screens  # probe_ablation: every cell's ridge stage is the same, fitted once
    assert max(c.config.data.max_train or 10**9 for c in sweep.cells) <= 64  # runs in minutes offline


def test_analyzing_a_sweep_directory_sees_every_cells_heads(tmp_path):
    import probebench.core.rundir
    import probebench.sweep
    from analysis.common import slug
    from analysis.complementarity import error_overlap_table
    from analysis.report import plot_predictions

    assert probebench.core.rundir.CELLS_DIR == probebench.sweep.CELLS_DIR
    sweep = load_sweep(write_sweep(tmp_path, axes={"probes.0.params.lambdas": [[0.1], [1.0]]}))
    assert run_sweep(sweep, progress=False, report=False).ok
    sweep_dir = tmp_path / "results" / "tiny"
    dirs = probebench.core.rundir.RunDir(sweep_dir).head_dirs()
    assert sorted(d.cell for d in dirs) == sorted(c.name for c in sweep.cells)
    figs = plot_predictions(sweep_dir)
    assert len(figs) == 2 and all(f.is_file() for f in figs)
    overlap = error_overlap_table(sweep_dir)  # the cells' saved predictions, one model per cell
    models = set(overlap["model_a"]) | set(overlap["model_b"])
    assert {m.split(": ")[0] for m in models} == {c.name for c in sweep.cells}
    for (
        cell
    ) in sweep.cells:  # one figure per cell, named after it: the same model in two cells never collides
        assert sum(slug(cell.name) in f.name for f in figs) == 1


def test_a_cell_is_done_only_when_every_probe_seed_has_its_rows(tmp_path):
    """missing_parts (cell_done, the plan, --dry-run) keys trained probes' rows by probe seed, as the pipeline."""
    cfg = load_config(
        None,
        small_run(
            tmp_path,
            "backbones=[{name: 'timm:efficientnet_lite0', weights: random, image_size: 32, layers: [1]}]",
            "probes=[{name: ridge}, {name: linear, cells: all, params: {epochs: 1}}]",
            "tasks=[depth]",
            "probe_seeds=[0, 4]",
        ),
    )
    assert len(missing_parts(cfg)) == 3  # ridge, linear seed 0, linear seed 4
    partial = replace(cfg, probe_seeds=[0])
    pipeline.run(partial, progress=False, analyze=False)
    assert missing_parts(cfg) == [("linear (probe seed 4)", "timm:efficientnet_lite0 (random)", "depth")]
    pipeline.run(cfg, progress=False, analyze=False)
    assert missing_parts(cfg) == []
