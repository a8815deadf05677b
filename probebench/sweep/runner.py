"""Running a sweep: forced cells reset, then extractions, shared screens and cells on an executor, then the table.

The sweep's table ``results/<sweep>/results.csv`` holds every cell's rows, with the cell's name in the ``run``
column; each cell's own run directory (``results/<sweep>/cells/<cell>/``) keeps its ``results.csv``, which is
its state. The table is merged from them under the results lock with identity de-duplication after every cell
and again at the end of every sweep, so a crash between the two costs nothing: the next sweep merges it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import yaml
from tqdm import tqdm

from probebench.core.io import atomic_write_bytes
from probebench.core.rundir import CONFIG_FILE, SWEEP_FILE
from probebench.sweep.executors import make_backend, run_cells
from probebench.sweep.generation import GenerationSweep, run_generation_sweep
from probebench.sweep.jobs import JobResult, reason
from probebench.sweep.plan import plan_sweep
from probebench.sweep.screens import reset_screen, screens_of
from probebench.sweep.spec import Sweep
from probebench.sweep.state import force_cells, reset_cell, sync_table
from probebench.sweep.summary import Summary, write_summary


def _write_state(sweep: Sweep) -> None:
    """``sweep.yaml`` (the expanded grid: each cell's overrides) and ``config.yaml`` (the base config, where
    ``probebench analyze`` looks for the cache directory) in the sweep directory."""
    sweep.dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": sweep.name,
        "source": str(sweep.source) if sweep.source else None,
        "cells": [{"name": c.name, "dir": str(c.dir), "overrides": c.overrides} for c in sweep.cells],
    }
    atomic_write_bytes(sweep.dir / SWEEP_FILE, yaml.safe_dump(doc, sort_keys=False).encode())
    atomic_write_bytes(sweep.dir / CONFIG_FILE, yaml.safe_dump(sweep.base, sort_keys=False).encode())


def run_sweep(
    sweep: Sweep | GenerationSweep,
    *,
    executor: str = "local",
    workers: int = 1,
    force: Sequence[str] = (),
    fail_fast: bool = False,
    progress: bool = True,
    report: bool = True,
    poll_s: float | None = None,
) -> Summary:
    """Run the sweep's missing (and forced) cells: distinct extractions first, then the shared screens, then the
    cells; returns the per-cell summary (a failing job is recorded — with the cells that need it — and the others
    go on unless ``fail_fast``). Forced cells' screens are recomputed too. A generation sweep runs its cells
    (:func:`.generation.run_generation_sweep`; no table, no report)."""
    if isinstance(sweep, GenerationSweep):
        return run_generation_sweep(
            sweep,
            executor=executor,
            workers=workers,
            force=force,
            fail_fast=fail_fast,
            progress=progress,
            poll_s=poll_s,
        )
    forced = force_cells(sweep, force) if force else []
    backend = make_backend(executor, workers, sweep, poll_s)
    _write_state(sweep)
    for cell in forced:
        reset_cell(cell, sweep.table)
        for _, screen in screens_of(cell.config, sweep.dir):  # recomputed, not re-imported
            reset_screen(screen)
    plan = plan_sweep(sweep, [c.name for c in forced])
    results: dict[str, JobResult] = {c.name: JobResult("cell", c.name, "skipped") for c in plan.skipped}
    phases: dict[str, list[JobResult]] = {"extract": [], "screen": []}
    bar = tqdm(
        total=len(plan.extractions) + len(plan.screens) + len(plan.cells),
        desc=f"sweep {sweep.name}",
        unit="job",
        disable=not progress,
        file=sys.stderr,
    )
    stop = False
    try:
        failed_keys: dict[str, str] = {}  # extraction or screen key → why the jobs that need it cannot run
        for kind, tasks in (("extract", plan.extractions), ("screen", plan.screens)):
            what = "extraction" if kind == "extract" else "screen"
            runnable = []
            for t in tasks:
                blocked = [failed_keys[k] for k in t.needs if k in failed_keys]
                if stop:
                    phases[kind].append(JobResult(kind, t.name, "cancelled", "not run (--fail-fast)"))
                elif blocked:
                    phases[kind].append(JobResult(kind, t.name, "failed", blocked[0]))
                    failed_keys[t.key] = f"{what} {t.name} failed: {blocked[0]}"
                    bar.update()
                else:
                    runnable.append(t)
            if stop:
                continue
            by_name = {t.name: t for t in runnable}
            for r in backend.map(runnable):
                phases[kind].append(r)
                bar.update()
                if r.status not in ("done", "skipped"):
                    failed_keys[by_name[r.name].key] = f"{what} {r.name} failed: {r.reason}"
                    if fail_fast:
                        stop = True
                        backend.cancel()
                        break
        runnable = []
        for t in plan.cells:
            blocked = [failed_keys[k] for k in t.needs if k in failed_keys]
            if stop:
                results[t.name] = JobResult("cell", t.name, "cancelled", "not run (--fail-fast)")
            elif blocked:
                results[t.name] = JobResult("cell", t.name, "failed", blocked[0])
                bar.update()
            else:
                runnable.append(t)
        if not stop:
            run_cells(backend, runnable, results, bar, fail_fast)
        for t in plan.cells:
            results.setdefault(t.name, JobResult("cell", t.name, "cancelled", "not run (--fail-fast)"))
    finally:
        bar.close()
        backend.close()
    sync_table(sweep)
    summary = Summary(
        sweep, [results[c.name] for c in sweep.cells], phases["extract"], screens=phases["screen"]
    )
    write_summary(summary)
    if report and sweep.table.is_file() and any(r.status == "done" for r in summary.cells):
        try:
            from analysis.report import write_report  # matplotlib and seaborn: only when a report is due

            summary.report = write_report(sweep.dir)
        except Exception as e:  # the results are safe; say what went wrong
            summary.report_error = reason(e)
    return summary
