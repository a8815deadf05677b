"""A sweep's state: which cells are done, merging cell rows into the sweep table, and forgetting rows (--force).

Results are the state: a cell is done when every (probe stage, model group, task) of it has rows in its results
file — the same hashes the pipeline's only-missing rule uses. A rerun runs only what is missing; ``force``
deletes the named cells' rows (atomically, under the results lock) and reruns them. Rows are written
atomically, and a per-cell lock (``RUN_LOCK``) keeps two sweeps (or a sweep and its orphaned workers) from
running one cell twice at once, so a killed sweep resumes without duplicated or half-written rows.

A generation cell's state is its folder (:func:`generation_progress`): done once ``dataset.yaml`` exists (written
last), partial while some samples have their done markers, and *stale* when the settings recorded in it are not
the cell's config any more.
"""

from __future__ import annotations

import fnmatch
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from probebench.config import RunConfig
from probebench.core.errors import ProbebenchError
from probebench.core.io import atomic_write_bytes
from probebench.core.results import RESULTS_FILE, append_results, done_cells, locked, read_results
from probebench.generate import STATE_DIR, GenerateConfig, generation_settings
from probebench.pipeline import model_key, model_label, stage_keys, stage_seeds
from probebench.pipeline import stage_groups as pipeline_groups
from probebench.sweep.spec import Cell, Sweep, unknown_cell
from tasks.folder_io import META_FILE

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


# -- generation cells: the folder is the state ---------------------------------------------------------------
def generation_lock(out: Path) -> Path:
    """What a job locks while it works on the generation cell folder ``out``: ``<cells>/.locks/<cell>`` (beside the
    folder, which ``--force`` deletes, so that the cells folder holds only datasets)."""
    return out.parent / ".locks" / out.name


@dataclass
class GenerationProgress:
    """How far a generation cell's folder is: finished (``dataset.yaml``), samples with done markers, and the
    settings recorded in it that differ from the cell's config (a generation of other settings)."""

    finished: bool
    samples: int
    total: int
    differs: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.finished and not self.differs

    def label(self) -> str:
        if self.differs:
            return f"stale (different {', '.join(self.differs)})"
        if self.finished:
            return "done"
        return f"partial {self.samples}/{self.total}" if self.samples else "todo"


def generation_progress(cfg: GenerateConfig, bundle_hash: str | None = None) -> GenerationProgress:
    """The state of ``cfg.out``: ``dataset.yaml``, the done markers, and which of ``cfg``'s fields differ from the
    settings recorded there by ``probebench generate`` (``.generate/settings.json``: the fields that make the
    samples, not ``out``, ``device`` ...); ``steps: null`` matches any recorded steps (the family's default), and
    ``bundle_hash`` (the bundle's sha256), when given, is compared too."""
    out = Path(cfg.out)
    state = out / STATE_DIR
    samples = len(list((state / "done").glob("*.json"))) if (state / "done").is_dir() else 0
    progress = GenerationProgress((out / META_FILE).is_file(), samples, cfg.num_samples)
    recorded = state / "settings.json"
    if recorded.is_file():
        old = json.loads(recorded.read_text())
        new = generation_settings(cfg, bundle_hash)
        if cfg.steps is None:
            new.pop("steps")
        if bundle_hash is None:
            new.pop("bundle_sha256")
        progress.differs = [k for k, v in new.items() if k in old and old[k] != v]
    return progress
