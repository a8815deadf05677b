"""Planning a sweep: which cells run, the distinct extractions and shared screens they need, and ``--dry-run``.

Distinct extraction configs (backbone config × data × seed × cache dir) of the cells still to run are extracted
once, as jobs of their own, before the cell jobs; the cache is content-addressed, so the cell jobs then find
complete caches (``pipeline.run(cfg, extract=False)``). A screen stage that two or more cells to run share (same
stage keys, see :mod:`.screens`) becomes one screen job after the extractions. Each job names the keys it
needs, so an extraction or screen that fails fails the jobs that need it (with the reason) and no others.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from probebench.config import RunConfig, from_dict, identity_dict, to_dict
from probebench.core.io import stable_hash
from probebench.core.rundir import SCREENS_DIR
from probebench.pipeline import cached_backbones
from probebench.sweep.generation import GenerationSweep, dry_run_generation
from probebench.sweep.jobs import Task
from probebench.sweep.screens import Screen, screen_state, screens_of
from probebench.sweep.spec import Cell, Sweep, absolute_config, inline
from probebench.sweep.state import cell_done, force_cells, missing_parts, parts_count
from probebench.sweep.summary import format_table


def extraction_key(cfg: RunConfig, index: int) -> str:
    """What makes one extraction: backbone config × data × seed × cache root (the cache is content-addressed
    inside that root, so equal keys always mean one shared cache)."""
    backbone = identity_dict("backbone", to_dict(cfg.backbones[index]))
    return stable_hash(
        {
            "backbone": {k: v for k, v in backbone.items() if k != "seed"},
            "data": identity_dict("data", to_dict(cfg.data)),
            "seed": noise_seed(cfg, index),
            "cache_dir": str(Path(cfg.extract.cache_dir).expanduser().resolve()),
        },
        16,
    )


def noise_seed(cfg: RunConfig, index: int) -> int:
    """The seed an extraction uses: the backbone's own ``seed`` when set (noise controls), else the run's."""
    own = getattr(cfg.backbones[index], "seed", None)
    return cfg.seed if own is None else own


def used_backbones(cfg: RunConfig) -> list[int]:
    """Indices of the backbones whose caches the pipeline extracts (:func:`probebench.pipeline.cached_backbones`:
    not those only ``ridge-stream`` and ``online`` stages read)."""
    return sorted(cached_backbones(cfg))


@dataclass
class Plan:
    """The work of one sweep invocation: extractions first, then the shared screens, then the cells."""

    extractions: list[Task]
    cells: list[Task]
    skipped: list[Cell]  # complete before this invocation
    users: dict[str, list[str]]  # extraction key → cell names that need it
    screens: list[Task] = field(default_factory=list)  # shared screens still to compute
    # (screen, its state, the cells that import it) of every screen the cells to run share
    shared: list[tuple[Screen, str, list[str]]] = field(default_factory=list)


def plan_sweep(sweep: Sweep, force: Iterable[str] = ()) -> Plan:
    """Which cells run (missing, or forced), the distinct extractions they need, and the screens they share,
    each once. A screen stage still missing in two or more of the cells to run — or already (partly) computed
    by an earlier invocation — becomes one screen job; a screen only one cell needs stays in that cell."""
    forced = set(force)
    extractions: dict[str, Task] = {}
    users: dict[str, list[str]] = {}
    candidates: dict[str, Screen] = {}
    wanting: dict[str, list[str]] = {}
    to_run: list[tuple[Cell, list[str], list[tuple[int, str]]]] = []
    skipped = []
    table = str(sweep.table.expanduser().resolve())
    sweep_dir = sweep.dir.expanduser().resolve()
    for cell in sweep.cells:
        if cell.name not in forced and cell_done(cell.config):
            skipped.append(cell)
            continue
        cfg = absolute_config(cell.config)
        needs = []
        for i in used_backbones(cell.config):
            key = extraction_key(cell.config, i)
            needs.append(key)
            users.setdefault(key, []).append(cell.name)
            if key not in extractions:
                b = cell.config.backbones[i]
                label = (
                    f"{b.name} ({b.weights}) layers={inline(b.layers)} timesteps={inline(b.timesteps)} "
                    f"seed={noise_seed(cell.config, i)} [{key[:8]}]"
                )
                err = sweep_dir / "errors" / f"extract-{key}.txt"
                extractions[key] = Task("extract", label, cfg, key=key, backbone=i, error_file=str(err))
        wants = []
        for index, screen in screens_of(cell.config, sweep_dir):
            if cell.name not in forced and not missing_parts(cell.config, stages=[index]):
                continue  # this cell has the stage's rows already
            candidates.setdefault(screen.key, screen)
            if cell.name not in wanting.setdefault(screen.key, []):
                wanting[screen.key].append(cell.name)
            wants.append((index, screen.key))
        to_run.append((cell, needs, wants))

    shared: dict[str, str] = {}  # screen key → state
    for key, screen in candidates.items():
        state = screen_state(screen)
        if len(wanting[key]) >= 2 or state != "todo":
            shared[key] = state
    screens = []
    for key, state in shared.items():
        if state == "complete":
            continue
        sc = candidates[key]
        cfg = from_dict(RunConfig, sc.config)
        needs = tuple(dict.fromkeys(extraction_key(cfg, i) for i in used_backbones(cfg)))
        err = sweep_dir / "errors" / f"screen-{key}.txt"
        screens.append(Task("screen", sc.label, sc.config, key=key, needs=needs, error_file=str(err)))
    cells = []
    for cell, needs, wants in to_run:
        cfg = absolute_config(cell.config)
        imports = [(index, key) for index, key in wants if key in shared]
        err = Path(cfg["output_dir"]) / cell.name / "error.txt"
        cells.append(
            Task(
                "cell",
                cell.name,
                cfg,
                key=cell.name,
                table=table,
                needs=(*needs, *dict.fromkeys(key for _, key in imports)),
                error_file=str(err),
                imports=tuple((index, str(candidates[key].dir)) for index, key in imports),
            )
        )
    listed = [(candidates[k], state, wanting[k]) for k, state in shared.items()]
    return Plan(list(extractions.values()), cells, skipped, users, screens, listed)


def dry_run_text(sweep: Sweep | GenerationSweep, force: Sequence[str] = ()) -> str:
    """The expanded cells (name, state, overrides), how many are done, the extractions still needed and their
    cost (:func:`probebench.plan.sweep_cost_lines`: model rows, cache bytes, what is cached, free disk). A
    generation sweep lists its cells and their state (:func:`.generation.dry_run_generation`)."""
    if isinstance(sweep, GenerationSweep):
        return dry_run_generation(sweep, force)
    forced = {c.name for c in force_cells(sweep, force)} if force else set()
    rows, done = [], 0
    for c in sweep.cells:
        total = parts_count(c.config)
        missing = len(missing_parts(c.config))
        if c.name in forced:
            state = "forced"
        elif missing == 0:
            state, done = "done", done + 1
        elif missing < total:
            state = f"partial {total - missing}/{total}"
        else:
            state = "todo"
        rows.append(
            {
                "cell": c.name,
                "state": state,
                "overrides": " ".join(f"{k}={inline(v)}" for k, v in c.overrides.items()) or "(base)",
            }
        )
    plan = plan_sweep(sweep, forced)
    lines = [
        f"sweep {sweep.name}: {len(sweep.cells)} cells, {done} done, {len(plan.cells)} to run "
        f"→ {sweep.table}",
        *format_table(rows),
        f"{len(plan.extractions)} distinct extraction configs for the cells to run (each extracted once; "
        "complete caches are reused):",
    ]
    for t in plan.extractions:
        users = plan.users[t.key]
        lines.append(
            f"  {t.name}: {len(users)} cells ({', '.join(users[:6])}{', ...' if len(users) > 6 else ''})"
        )
    if plan.extractions:
        from probebench.plan import sweep_cost_lines  # here: probebench.plan imports the pipeline

        jobs = [
            (t.name.rsplit("[", 1)[-1].rstrip("]"), from_dict(RunConfig, t.config), t.backbone)
            for t in plan.extractions
        ]
        lines += sweep_cost_lines(jobs)
    if plan.shared:
        lines.append(
            f"{len(plan.shared)} shared screens (cells whose screen stage has the same stage keys: computed "
            f"once in {sweep.dir / SCREENS_DIR}, then imported into each cell):"
        )
    for screen, state, users in plan.shared:
        lines.append(
            f"  {screen.label}: {state}, {len(users)} cells "
            f"({', '.join(users[:6])}{', ...' if len(users) > 6 else ''})"
        )
    return "\n".join(lines)
