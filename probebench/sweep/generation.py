"""Generation sweeps: one sweep file → a grid of ``probebench generate`` runs (prompts × seeds × guidance ...), each
cell a labelled ``folder`` dataset.

A sweep file with ``generate:`` in place of ``base:``::

    name: generate_tiny                    # → <output_dir>/generate_tiny/
    output_dir: results                    # default: results (cells write <output_dir>/<name>/cells/<cell>/)
    generate:                              # GenerateConfig fields every cell shares (not ``out``: set per cell)
      bundle: bundles/tiny                 # from `probebench export-bundle RUN_DIR --out bundles/tiny`
      num_samples: 8
      steps: 40
    axes:                                  # crossed, as in run sweeps
      seed: [0, 1]
      guidance: [1.0, 3.0]
    zip:                                   # values that go together
      - prompts: [["sphere floor"], ["box floor"]]
        negative_prompt: [null, "floor"]
    cell_name: "s{seed}-g{guidance}-{prompts}"
    slurm: {partition: gpu, timeout_min: 60}

Axis expansion, cell names, the executors and the summary are the run sweeps' (:mod:`.spec`, :mod:`.executors`,
:mod:`.summary`); a cell is a ``generate`` :class:`~probebench.sweep.jobs.Task` that calls
:func:`probebench.generate.generate` in whichever process runs it: this one, a worker, or a submitit / SLURM job.
Every cell is validated before anything runs: an unknown field (with the closest one), ``out``, a value of the
wrong type, a bundle that does not exist or lacks a task's head are errors naming the axis or the cell.

The folder is the state (:func:`~probebench.sweep.state.generation_progress`): a cell whose ``dataset.yaml``
exists (generate writes it last) is done and skipped, so a rerun writes nothing; a folder with some samples
resumes from them; a finished or partial folder whose recorded settings are not the cell's any more (the sweep
file changed) fails and names the fields, and ``--force CELL`` deletes the folder and generates it again.
``sweep.yaml`` records the grid and ``summary.csv`` each cell's outcome. There is no ``results.csv`` and no report:
a generation sweep makes datasets, which ``probebench run`` reads (``data: {name: folder, root: <cell folder>}``).
Relative ``bundle`` and ``output_dir`` paths are relative to the working directory, as in run configs.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from probebench.config import RunConfig, from_dict, parse_override
from probebench.core.errors import ProbebenchError, unknown_message
from probebench.core.io import atomic_write_bytes
from probebench.core.results import locked
from probebench.core.rundir import CELLS_DIR, SWEEP_FILE
from probebench.generate import GenerateConfig
from probebench.sweep.executors import make_backend, run_cells
from probebench.sweep.jobs import JobResult, Task
from probebench.sweep.spec import (
    Axis,
    SlurmConfig,
    check_axis_values,
    check_keys,
    duplicate_cell,
    fill_cell_name,
    grid_points,
    inline,
    parse_cell_name,
    parse_grid,
    parse_slurm,
    sweep_name,
    unknown_cell,
)
from probebench.sweep.state import GenerationProgress, force_cells, generation_lock, generation_progress
from probebench.sweep.summary import Summary, format_table, write_summary

GENERATE_SWEEP_KEYS = ("name", "output_dir", "generate", "axes", "zip", "cell_name", "slurm")
FIELDS = tuple(f.name for f in dataclasses.fields(GenerateConfig) if f.name != "out")


@dataclass
class GenerationCell:
    """One point of a generation grid: its name, its axis values and its config (``out``: the cell's folder)."""

    name: str
    overrides: dict[str, Any]
    config: GenerateConfig

    @property
    def dir(self) -> Path:
        return Path(self.config.out)


@dataclass
class GenerationSweep:
    """A parsed, expanded and validated generation sweep."""

    name: str
    source: Path | None
    generate: dict[str, Any]  # the fields every cell shares
    output_dir: str
    axes: list[Axis]
    zips: list[list[Axis]]
    cell_name: str | None
    slurm: SlurmConfig
    cells: list[GenerationCell]
    bundle_hashes: dict[str, str] = dataclasses.field(default_factory=dict)  # bundle path → its sha256

    @property
    def dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def progress(self, cell: GenerationCell) -> GenerationProgress:
        """How far the cell's folder is, its settings compared with the cell's config and bundle."""
        return generation_progress(cell.config, self.bundle_hashes.get(cell.config.bundle))

    @property
    def output(self) -> Path:
        """What the sweep makes, as its summary names it: the folder of the cells' datasets."""
        return self.dir / CELLS_DIR

    def cell(self, name: str) -> GenerationCell:
        for c in self.cells:
            if c.name == name:
                return c
        raise ProbebenchError(unknown_cell(name, [c.name for c in self.cells]))


def _check_field(key: str, where: str) -> None:
    if key == "out":
        raise ProbebenchError(
            f"{where}: out is set by the sweep: each cell writes <output_dir>/<sweep name>/{CELLS_DIR}/<cell>/; "
            "give output_dir: (top level) instead."
        )
    if key not in FIELDS:
        raise ProbebenchError(f"{where}: " + unknown_message("generate field", key, FIELDS))


def load_generation_sweep(
    raw: dict[str, Any],
    source: Path | None,
    where: str,
    overrides: Sequence[str] = (),
    *,
    max_cells: int | None = None,
) -> GenerationSweep:
    """A sweep file's mapping with ``generate:`` → its validated cells (see the module docstring); nothing runs.
    ``overrides`` (``field=value`` or ``output_dir=...``) apply to every cell before the axes."""
    check_keys(raw, GENERATE_SWEEP_KEYS, where)
    name = sweep_name(raw, source, where)
    base = raw.get("generate")
    if not isinstance(base, dict):
        raise ProbebenchError(
            f"{where}: generate must map GenerateConfig fields (bundle, num_samples, prompts, seed, ...) to "
            f"values, got {base!r}."
        )
    base = dict(base)
    output_dir = raw.get("output_dir", RunConfig().output_dir)
    for assignment in overrides:
        key, value = parse_override(assignment)
        if key == "output_dir":
            output_dir = value
        else:
            _check_field(key, f"{where}: override {assignment!r}")
            base[key] = value
    if not isinstance(output_dir, str) or not output_dir:
        raise ProbebenchError(f"{where}: output_dir must be a folder path, got {output_dir!r}.")
    output_dir = str(Path(output_dir).expanduser())
    for key in base:
        _check_field(key, f"{where}: generate")
    try:
        from_dict(GenerateConfig, {"bundle": "", "out": "", **base}, "generate")
    except ProbebenchError as e:
        raise ProbebenchError(f"{where}: {e}") from None

    axes, zips = parse_grid(raw, where, max_cells, reserved=())
    keys = [ax.key for ax in [*axes, *(a for g in zips for a in g)]]
    for key in keys:
        _check_field(key, f"{where}: axis {key!r}")
    if "bundle" not in base and "bundle" not in keys:
        raise ProbebenchError(
            f"{where}: generate: bundle is required (a folder written by `probebench export-bundle RUN_DIR "
            "--out BUNDLE`)."
        )

    def check(key: str, value: Any) -> None:
        from_dict(GenerateConfig, {"bundle": "", "out": "", **base, key: value})

    check_axis_values(axes, zips, where, check)
    cell_name = parse_cell_name(raw, where)
    slurm = parse_slurm(raw, where)

    from probes.bundle import load_bundle  # torch and safetensors: only once the file itself is valid

    cells_dir = Path(output_dir) / name / CELLS_DIR
    cells: list[GenerationCell] = []
    names: dict[str, dict[str, Any]] = {}
    bundles: dict[str, str] = {}
    checked: set[tuple[str, Any]] = set()
    for point in grid_points(axes, zips):
        overrides_of = {k: v for k, (v, _) in point.items()}
        data = {**base, **overrides_of}
        label = ", ".join(f"{k}={inline(v)}" for k, v in overrides_of.items()) or "the generate config"
        cname = fill_cell_name(cell_name, point, data, where)
        try:
            bundle = str(Path(data["bundle"]).expanduser().resolve())
            cfg = from_dict(GenerateConfig, {**data, "bundle": bundle, "out": str(cells_dir / cname)})
            cfg.check()
            key = (bundle, None if cfg.tasks is None else tuple(cfg.tasks))
            if key not in checked:  # the bundle exists, its heads match their digests, it has the tasks
                bundles[bundle] = load_bundle(bundle).select(cfg.tasks).hash
                checked.add(key)
        except ProbebenchError as e:
            raise ProbebenchError(f"{where}: cell with {label}: {e}") from None
        duplicate_cell(names, cname, overrides_of, where)
        cells.append(GenerationCell(cname, overrides_of, cfg))
    return GenerationSweep(name, source, base, output_dir, axes, zips, cell_name, slurm, cells, bundles)


# -- planning, --dry-run and running --------------------------------------------------------------------------
@dataclass
class GenerationPlan:
    """The cells one invocation runs (missing, partial, stale or forced) and those it skips (done)."""

    cells: list[Task]
    skipped: list[GenerationCell]


def cell_task(sweep: GenerationSweep, cell: GenerationCell) -> Task:
    """A cell as a picklable task, its paths absolute so that any job finds them."""
    cfg = dataclasses.replace(cell.config, out=str(cell.dir.expanduser().resolve()))
    err = sweep.dir.expanduser().resolve() / "errors" / f"generate-{cell.name}.txt"
    return Task("generate", cell.name, dataclasses.asdict(cfg), key=cell.name, error_file=str(err))


def plan_generation(sweep: GenerationSweep, force: Iterable[str] = ()) -> GenerationPlan:
    """Which cells run: every cell not done, and the forced ones."""
    forced = set(force)
    cells, skipped = [], []
    for cell in sweep.cells:
        if cell.name not in forced and sweep.progress(cell).done:
            skipped.append(cell)
        else:
            cells.append(cell_task(sweep, cell))
    return GenerationPlan(cells, skipped)


def dry_run_generation(sweep: GenerationSweep, force: Sequence[str] = ()) -> str:
    """The expanded cells with their state (done, partial k/n, stale, todo or forced) and axis values."""
    forced = {c.name for c in force_cells(sweep, force)} if force else set()
    rows, done = [], 0
    for c in sweep.cells:
        progress = sweep.progress(c)
        done += progress.done
        rows.append(
            {
                "cell": c.name,
                "state": "forced" if c.name in forced else progress.label(),
                "overrides": " ".join(f"{k}={inline(v)}" for k, v in c.overrides.items()) or "(base)",
            }
        )
    to_run = len(plan_generation(sweep, forced).cells)
    return "\n".join(
        [
            f"generation sweep {sweep.name}: {len(sweep.cells)} cells, {done} done, {to_run} to run "
            f"→ {sweep.output}",
            *format_table(rows),
        ]
    )


def reset_generation_cell(cell: GenerationCell) -> None:
    """Delete a cell's folder (``--force``), under the cell's lock."""
    with locked(generation_lock(cell.dir)):
        shutil.rmtree(cell.dir, ignore_errors=True)


def write_sweep_file(sweep: GenerationSweep) -> None:
    """``sweep.yaml``: the shared generate config and each cell's folder and axis values."""
    doc = {
        "name": sweep.name,
        "kind": "generate",
        "source": str(sweep.source) if sweep.source else None,
        "generate": sweep.generate,
        "cells": [  # copies: yaml would write a value two cells share as an anchor and an alias
            {"name": c.name, "dir": str(c.dir), "overrides": copy.deepcopy(c.overrides)} for c in sweep.cells
        ],
    }
    atomic_write_bytes(sweep.dir / SWEEP_FILE, yaml.safe_dump(doc, sort_keys=False).encode())


def run_generation_sweep(
    sweep: GenerationSweep,
    *,
    executor: str = "local",
    workers: int = 1,
    force: Sequence[str] = (),
    fail_fast: bool = False,
    progress: bool = True,
    poll_s: float | None = None,
) -> Summary:
    """Generate the sweep's missing (and forced: deleted first) cells on an executor; returns the per-cell summary,
    also written to ``summary.csv`` (a failing cell is recorded and the others go on unless ``fail_fast``)."""
    forced = force_cells(sweep, force) if force else []
    backend = make_backend(executor, workers, sweep, poll_s)
    sweep.dir.mkdir(parents=True, exist_ok=True)
    write_sweep_file(sweep)
    for cell in forced:
        reset_generation_cell(cell)
    plan = plan_generation(sweep, [c.name for c in forced])
    results = {c.name: JobResult("generate", c.name, "skipped") for c in plan.skipped}
    bar = tqdm(
        total=len(plan.cells),
        desc=f"generation sweep {sweep.name}",
        unit="cell",
        disable=not progress,
        file=sys.stderr,
    )
    try:
        run_cells(backend, plan.cells, results, bar, fail_fast)
    finally:
        bar.close()
        backend.close()
    summary = Summary(sweep, [results[c.name] for c in sweep.cells], [])
    write_summary(summary)
    return summary
