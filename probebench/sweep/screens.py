"""Shared ridge screens: a screen stage that several cells of a sweep share is computed once and imported into each.

A screen stage — closed-form (the ridge screen), on cells that come from no other results (``all`` or
explicit) — whose stage keys (the pipeline's stage hashes: data and its content, seed, backbones, stage;
:func:`probebench.pipeline.stage_keys`) are equal in several cells to run is computed ONCE, as a job of its own
after the extractions: an ordinary pipeline run of a config holding only that stage, in
``results/<sweep>/screens/<key>/``. Each cell job then imports it before its pipeline runs: heads first, then
the rows (relabelled with the cell's name) — so the pipeline's only-missing rule skips the stage and the cell's
``cells: best`` stages read its own rows. The import holds the screen's lock, which the screen job holds while
it computes, and takes only a complete screen (else the cell fits the stage itself), so no cell reads a
half-written screen; a killed screen job resumes from its rows like any run (a screen with rows on disk is
always finished and imported, even for one cell). Which screens are shared is decided by :mod:`.plan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probebench import pipeline
from probebench.config import STAGE_RUNTIME, RunConfig, from_dict, to_dict
from probebench.core.io import stable_hash
from probebench.core.results import RESULTS_FILE, append_results, done_cells, locked, read_results
from probebench.core.rundir import SCREENS_DIR, RunDir
from probebench.sweep.spec import absolute_config
from probebench.sweep.state import RUN_LOCK, delete_rows, missing_parts
from probes import probe_class


def is_screen(cfg: RunConfig, stage: Any) -> bool:
    """Whether a probe stage is a *screen* that cells can share: closed-form (fitted once, no probe seed), on cells
    that come from no other results (``all`` or an explicit list) and on backbones without ``cells_from``. Its rows
    and heads then depend on its stage keys alone, so cells with equal keys would compute the same thing."""
    if probe_class(stage.name).trained:
        return False
    if not (stage.cells == "all" or isinstance(stage.cells, list)):
        return False
    return all(cfg.backbones[i].cells_from is None for g in pipeline.stage_groups(cfg, stage) for i in g)


@dataclass(frozen=True)
class Screen:
    """One screen stage as a run of its own, ``<sweep>/screens/<key>/``: computed once, imported into every cell
    whose stage has the same key."""

    key: str  # the stage keys (stage hashes: data and its content, seed, backbones, stage) and the run config
    label: str
    config: dict[str, Any]  # the screen's run config: the cell's, with only this stage

    @property
    def dir(self) -> Path:
        return Path(self.config["output_dir"]) / self.config["name"]


def screen_of(cfg: RunConfig, index: int, sweep_dir: Path) -> Screen:
    """Probe stage ``index`` of ``cfg`` as a shared screen. Its config holds only that stage; backbones the stage
    does not read are replaced by one it reads (so cells that differ only in those share it; indices, and with
    them the stage hash, stay), and probe seeds are dropped (a closed-form stage fits once)."""
    stage = cfg.probes[index]
    fits = pipeline.stage_groups(cfg, stage)
    used = sorted({i for g in fits for i in g})
    d = absolute_config(cfg)
    d["backbones"] = [d["backbones"][i if i in used else used[0]] for i in range(len(d["backbones"]))]
    d["probes"] = [to_dict(stage)]
    d["probe_seeds"] = None
    keys = [pipeline.stage_keys(cfg, stage, [cfg.backbones[i] for i in g]) for g in fits]
    ident = {k: v for k, v in d.items() if k not in ("name", "output_dir", "extract")}
    # how a stage computes (`online`) changes no number: screen keys stay those made before it existed
    ident["probes"] = [{k: v for k, v in st.items() if k not in STAGE_RUNTIME} for st in d["probes"]]
    key = stable_hash({"config": ident, "stage_keys": keys}, 16)
    d["name"], d["output_dir"] = key, str(sweep_dir.expanduser().resolve() / SCREENS_DIR)
    models = ", ".join(pipeline.model_key([cfg.backbones[i] for i in g]) for g in fits)
    return Screen(key, f"{stage.label or stage.name} on {models} [{key[:8]}]", d)


def screens_of(cfg: RunConfig, sweep_dir: Path) -> list[tuple[int, Screen]]:
    """(probe stage index, screen) of every screen stage of ``cfg``."""
    return [(i, screen_of(cfg, i, sweep_dir)) for i, st in enumerate(cfg.probes) if is_screen(cfg, st)]


def screen_state(screen: Screen) -> str:
    """``complete`` (every row written), ``partial`` (some: a killed screen job) or ``todo``."""
    results = screen.dir / RESULTS_FILE
    if not results.is_file() or read_results(results).empty:
        return "todo"
    return "partial" if missing_parts(from_dict(RunConfig, screen.config), results) else "complete"


def reset_screen(screen: Screen) -> int:
    """Delete a screen's rows (``--force`` of a cell that uses it), so that it is computed again."""
    if not screen.dir.is_dir():
        return 0
    with locked(screen.dir / RUN_LOCK):
        return delete_rows(screen.dir / RESULTS_FILE)


def import_screen(cfg: RunConfig, index: int, screen_dir: Path) -> int:
    """Import a complete screen into ``cfg``'s run directory for its probe stage ``index``: the screen's heads
    (and backbone notes), then its rows for the stage's keys and ``cfg``'s tasks, relabelled with ``cfg``'s run
    name — heads before rows, as the pipeline writes them, so a killed import leaves the rows missing and is
    redone. The pipeline's only-missing rule then skips the stage. Runs under the screen's lock, so a screen being
    computed is never read; an incomplete screen imports nothing (the pipeline then fits the stage itself).
    Returns the rows added."""
    stage = cfg.probes[index]
    fits = []
    for g in pipeline.stage_groups(cfg, stage):
        models = [cfg.backbones[i] for i in g]
        fits += [
            (pipeline.model_label(models), chash) for _, chash in pipeline.stage_keys(cfg, stage, models)
        ]
    out, src = Path(cfg.output_dir) / cfg.name, screen_dir / RESULTS_FILE
    with locked(screen_dir / RUN_LOCK):
        for label, chash in fits:
            have = done_cells(src, chash)
            if any((*label, task) not in have for task in cfg.tasks):
                return 0
        df = read_results(src)
        df = df[df["config_hash"].isin([c for _, c in fits]) & df["task"].isin(list(cfg.tasks))].copy()
        pipeline.prepare_run_dir(cfg)  # refuses a directory of another setup, as the pipeline would
        run, screen = RunDir(out), RunDir(screen_dir)
        run.import_heads(screen)
        run.write_backbone_notes(screen.backbone_notes())
        df["run"] = cfg.name
        return append_results(out / RESULTS_FILE, df.to_dict("records"))
