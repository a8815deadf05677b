"""A sweep's state: which cells are done, merging cell rows into the sweep table, and forgetting rows (--force).

Results are the state: a cell is done when every (probe stage, model group, task) of it has rows in its results
file — the same hashes the pipeline's only-missing rule uses. A rerun runs only what is missing; ``force``
deletes the named cells' rows (atomically, under the results lock) and reruns them. Rows are written
atomically, and a per-cell lock (``RUN_LOCK``) keeps two sweeps (or a sweep and its orphaned workers) from
running one cell twice at once, so a killed sweep resumes without duplicated or half-written rows.
"""

from __future__ import annotations

import fnmatch
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from probebench.config import RunConfig
from probebench.core.errors import ProbebenchError
from probebench.core.io import atomic_write_bytes
from probebench.core.results import RESULTS_FILE, append_results, done_cells, locked, read_results
from probebench.pipeline import model_key, model_label, stage_keys, stage_seeds
from probebench.pipeline import stage_groups as pipeline_groups
from probebench.sweep.spec import Cell, Sweep, unknown_cell

RUN_LOCK = ".cell"  # locked(<run dir>/RUN_LOCK) while a job works on a cell's or a screen's run directory


# -- which cells are done -------------------------------------------------------------------------------------
def stage_index_groups(cfg: RunConfig) -> Iterator[tuple[Any, list[int]]]:
    """(probe stage, backbone indices) pairs in the pipeline's order, by the pipeline's own rule."""
    for st in cfg.probes:
        for group in pipeline_groups(cfg, st):
            yield st, group


def stage_groups(cfg: RunConfig) -> Iterator[tuple[Any, list[Any]]]:
    """(probe stage, its model configs) pairs: what the pipeline fits, and keys its result rows by."""
    for st, group in stage_index_groups(cfg):
        yield st, [cfg.backbones[i] for i in group]


def missing_parts(
    cfg: RunConfig, results: Path | None = None, stages: Sequence[int] | None = None
) -> list[tuple[str, str, str]]:
    """(probe, model, task) triples of ``cfg`` without rows in its results file: the pipeline's only-missing
    rule (rows keyed by the stage hash), so an empty list means ``pipeline.run(cfg)`` would skip everything.
    ``stages``: only these probe stages (indices into ``cfg.probes``)."""
    results = results or Path(cfg.output_dir) / cfg.name / RESULTS_FILE
    chosen = None if stages is None else [cfg.probes[i] for i in stages]
    out = []
    for st, models in stage_groups(cfg):
        if chosen is not None and not any(st is c for c in chosen):
            continue
        label, keys = model_label(models), stage_keys(cfg, st, models)
        for seed, chash in keys:
            done = done_cells(results, chash)
            name = st.name if len(keys) == 1 else f"{st.name} (probe seed {seed})"
            out += [(name, model_key(models), t) for t in cfg.tasks if (*label, t) not in done]
    return out


def cell_done(cfg: RunConfig) -> bool:
    """Whether every result row of the cell's config exists (what the pipeline would skip)."""
    return not missing_parts(cfg)


def parts_count(cfg: RunConfig) -> int:
    """How many parts :func:`missing_parts` lists for ``cfg`` while none of them has rows."""
    return sum(len(cfg.tasks) * len(stage_seeds(cfg, st)) for st, _ in stage_groups(cfg))


# -- results files: merge into the sweep table, delete a cell's rows ------------------------------------------
def merge_into_table(cell_results: Path, table: Path) -> int:
    """Add a cell's rows to the sweep table (locked, atomic, identity de-duplicated); returns rows added."""
    if not cell_results.is_file():
        return 0
    df = read_results(cell_results)
    return append_results(table, df.to_dict("records")) if len(df) else 0


def delete_rows(path: Path, run: str | None = None) -> int:
    """Delete rows (all, or those whose ``run`` is ``run``) from a results file, atomically under its lock."""
    if not path.is_file():
        return 0
    with locked(path):
        df = read_results(path)
        drop = (df["run"] == run).fillna(False) if run is not None else pd.Series(True, index=df.index)
        if not drop.any():
            return 0
        buf = io.StringIO()
        df[~drop].to_csv(buf, index=False)
        atomic_write_bytes(path, buf.getvalue().encode())
    return int(drop.sum())


def sync_table(sweep: Sweep) -> int:
    """Merge every cell's results into the sweep table (idempotent); returns rows added."""
    return sum(merge_into_table(c.results, sweep.table) for c in sweep.cells)


def force_cells(sweep: Sweep, patterns: Sequence[str]) -> list[Cell]:
    """The cells named by ``patterns`` (exact names or shell globs); an unmatched pattern is an error."""
    names = [c.name for c in sweep.cells]
    chosen: dict[str, None] = {}
    for pat in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise ProbebenchError("--force: " + unknown_cell(pat, names))
        chosen.update(dict.fromkeys(hits))
    return [c for c in sweep.cells if c.name in chosen]


def reset_cell(cell: Cell, table: Path) -> int:
    """Delete a cell's rows (its own results file and its rows in the sweep table) so that it runs again."""
    cell.dir.mkdir(parents=True, exist_ok=True)
    with locked(cell.dir / RUN_LOCK):
        return delete_rows(cell.results) + delete_rows(table, run=cell.name)
