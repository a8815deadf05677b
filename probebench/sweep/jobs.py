"""The unit of work of a sweep: a :class:`Task` (an extraction, a shared screen, a cell, or a generation cell) and
its :class:`JobResult`.

Both are plain picklable data, so the same task runs in this process, in a spawned worker or in a SLURM job
(:mod:`.executors`). A task that fails becomes a ``failed`` result with its reason (its traceback goes to a file)
instead of an exception, so one bad cell never stops the others. Every job works on a run directory under its
lock (``RUN_LOCK``), an extraction under its cache key's lock and a generation cell under its lock beside its
folder (:func:`~probebench.sweep.state.generation_lock`), so two sweeps never do one thing at once.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probebench import pipeline
from probebench.config import RunConfig, from_dict
from probebench.core.errors import ProbebenchError
from probebench.core.io import atomic_write_bytes
from probebench.core.results import RESULTS_FILE, locked
from probebench.sweep.screens import import_screen
from probebench.sweep.state import (
    RUN_LOCK,
    cell_done,
    generation_lock,
    generation_progress,
    merge_into_table,
    missing_parts,
)

SPLITS = ("train", "val", "test")


@dataclass
class JobResult:
    """What one job reports back (plain data: it crosses process and cluster boundaries)."""

    kind: str  # extract | screen | cell | generate
    name: str
    status: str  # done | skipped | failed | cancelled
    reason: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Task:
    """One unit of work, as plain picklable data: an extraction, a shared screen, a cell's probe stages, or a
    generation cell (``config``: a :class:`~probebench.generate.GenerateConfig` as a mapping)."""

    kind: str  # extract | screen | cell | generate
    name: str
    config: dict[str, Any]
    key: str = ""  # extraction key (extract), screen key (screen), or the cell name
    backbone: int = 0  # extract: index into config backbones
    table: str = ""  # cell: the sweep table to merge into
    needs: tuple[str, ...] = ()  # screen, cell: the extraction (and, for cells, screen) keys it needs
    error_file: str = ""  # where a failure's traceback is written (removed again on success)
    imports: tuple[tuple[int, str], ...] = ()  # cell: (probe stage index, screen directory) to import

    def run(self) -> JobResult:
        """Run the task; an exception becomes a ``failed`` result with its reason, and its traceback goes to
        ``error_file``, so one bad cell never stops the others and the failure stays on record."""
        t0 = time.time()
        err = Path(self.error_file) if self.error_file else None
        try:
            if self.kind == "extract":
                status = self._extract()
            elif self.kind == "screen":
                status = run_locked(from_dict(RunConfig, self.config))
            elif self.kind == "generate":
                status = self._generate()
            else:
                status = self._cell()
        except Exception as e:  # recorded per cell; the sweep goes on
            why = reason(e)
            if err is not None:
                atomic_write_bytes(err, traceback.format_exc().encode())
                why += f" (traceback: {err})"
            return JobResult(self.kind, self.name, "failed", why, time.time() - t0)
        if err is not None:
            err.unlink(missing_ok=True)
        return JobResult(self.kind, self.name, status, seconds=time.time() - t0)

    def _extract(self) -> str:
        cfg = from_dict(RunConfig, self.config)
        b = cfg.backbones[self.backbone]
        lock_dir = Path(cfg.extract.cache_dir).expanduser() / ".locks"
        t0 = time.time()
        with locked(lock_dir / self.key):  # two sweeps never write one cache at once
            splits = {w: pipeline.build_split(cfg, w) for w in SPLITS}
            caches = pipeline.extract_backbone(b, cfg, splits, progress=False)
        manifests = [Path(getattr(c, "path", c)) / "manifest.json" for c in (caches or {}).values()]
        fresh = any(m.is_file() and m.stat().st_mtime >= t0 - 1 for m in manifests)
        return "done" if fresh or not manifests else "skipped"  # skipped: every cache was already complete

    def _cell(self) -> str:
        cfg = from_dict(RunConfig, self.config)
        status = run_locked(cfg, self.imports)
        if self.table:
            merge_into_table(Path(cfg.output_dir) / cfg.name / RESULTS_FILE, Path(self.table))
        return status

    def _generate(self) -> str:
        """``probebench generate`` into the cell's folder under its lock: ``skipped`` when the folder is a finished
        generation of these settings; a folder of other settings is refused (``--force`` redoes the cell)."""
        from probebench.generate import GenerateConfig, generate
        from probes.bundle import load_bundle

        cfg = from_dict(GenerateConfig, self.config)
        out = Path(cfg.out)
        with locked(generation_lock(out)):
            progress = generation_progress(cfg, load_bundle(cfg.bundle).select(cfg.tasks).hash)
            if progress.done:
                return "skipped"
            if progress.differs:
                raise ProbebenchError(
                    f"{out} holds a generation of other settings (different {', '.join(progress.differs)}); "
                    f"--force {self.name} deletes it and generates the cell again."
                )
            generate(cfg, progress=False)
            if not generation_progress(cfg).done:
                raise ProbebenchError(f"generate finished without writing {out}'s dataset.yaml")
        return "done"


def run_locked(cfg: RunConfig, imports: Iterable[tuple[int, str]] = ()) -> str:
    """Run ``cfg``'s missing probe stages (``pipeline.run`` on complete caches) under its run directory's lock —
    another sweep, or an orphaned worker, may be on it — after importing the shared screens ``imports`` (probe
    stage index, screen directory) whose rows it lacks. ``skipped`` if nothing was missing, else ``done``."""
    out = Path(cfg.output_dir) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    with locked(out / RUN_LOCK):
        if cell_done(cfg):
            return "skipped"
        for index, screen_dir in imports:
            if missing_parts(cfg, stages=[index]):
                import_screen(cfg, index, Path(screen_dir))
        pipeline.run(cfg, extract=False, analyze=False, progress=False)
        missing = missing_parts(cfg)
        if missing:
            raise ProbebenchError(
                "the run finished without result rows for "
                + ", ".join(f"{p} on {m}, {t}" for p, m, t in missing[:4])
            )
    return "done"


def reason(e: BaseException) -> str:
    """An exception as one short line: ``Type: message``."""
    text = " ".join(str(e).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
