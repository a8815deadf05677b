"""Which (layer, timestep) cells a probe stage runs on, and which cells a ``cells_from`` backbone extracts.

``cells: all`` and explicit lists need nothing else; ``best`` and ``best-layer`` are read from the results
table: from the rows of the *cell screen* of the stage (:func:`cell_screen`), the nearest stage up to it whose
probe is per-cell (``Probe.per_cell``: each row scores one cell) and that ran on cells of its own — the ridge
screen in every shipped config, whatever the probe is called.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from backbones.base import FeatureKey
from backbones.store import FeatureCache
from probebench.config import BackboneConfig, ProbeConfig, RunConfig
from probebench.core.errors import ProbebenchError
from probebench.core.results import fmt_timestep, read_results
from probes import probe_class
from tasks.base import MAIN_METRIC

Label = tuple[str, str]  # (backbone, weights) as result rows name a model


def cell_screen(cfg: RunConfig, index: int, backbone: int | None = None) -> str | None:
    """The ``probe`` label of the rows that best cells come from for stage ``index``: that of the nearest stage up
    to it whose probe is per-cell and that ran on cells of its own (``all`` or a list) — on the model of backbone
    ``backbone`` when given (the backbones its rows are labelled as: itself, its noise-seed repeats and
    ``cells_from`` entries; so a per-cell stage on another model, e.g. a zero-shot probe of concept maps, is not the
    screen of this one's cells); ``None`` when there is no such stage."""
    from probebench.pipeline import model_label, stage_groups

    label = None if backbone is None else model_label([cfg.backbones[backbone]])
    for st in reversed(cfg.probes[: index + 1]):
        cls = probe_class(st.name)
        scored = {
            model_label([cfg.backbones[g[0]]]) for g in stage_groups(cfg, st)
        }  # a joint group: its first
        if label is not None and label not in scored:
            continue
        if cls.per_cell and (st.cells == "all" or isinstance(st.cells, list)):
            return st.label or cls.rows_probe or st.name
    return None


def resolve_cells(
    stage: ProbeConfig, results: Path, model: Label, task: str, cache: FeatureCache, screen: str | None
) -> list[FeatureKey] | None:
    """The (layer, timestep) keys of ``cache`` a stage runs on for one task and model (``None``: the probe's own
    default, all keys); best cells come from the rows labelled ``screen`` (:func:`cell_screen`)."""
    if stage.cells == "all":
        return None
    if isinstance(stage.cells, list):
        keys = [(int(c[0]), c[1] if len(c) > 1 else None) for c in stage.cells]
        for k in keys:
            cache.info(k)  # a clear error for a cell that is not cached
        return keys
    if stage.cells not in ("best", "best-layer"):
        raise ProbebenchError(
            f"Unknown cells {stage.cells!r} for probe {stage.name!r}. "
            "Valid: all, best, best-layer, or [[layer, timestep], ...]."
        )
    who = f"Probe {stage.name!r} with cells={stage.cells!r}"
    key = best_cell(results, model, task, cache, who, screen)
    if stage.cells == "best":
        return [key]
    return [k for k in cache.keys if k[0] == key[0]]


def best_cell(
    results: Path, model: Label, task: str, cache: FeatureCache, who: str, screen: str | None
) -> FeatureKey:
    """The key of ``cache`` whose rows labelled ``screen`` scored best on val for ``task`` (the mean over probe
    seeds within a setup; the first best cell in the table on ties); ``who`` names the asker in errors."""
    backbone, weights = model
    df = read_results(results) if results.is_file() and screen is not None else None
    metric, higher = MAIN_METRIC[task]
    if df is not None:
        df = df[
            (df.backbone == backbone)
            & (df.weights == weights)
            & (df.task == task)
            & (df.probe == screen)
            & (df.metric == metric)
            & (df.split == "val")
        ]
    if df is None or df.empty:
        need = (
            f"{screen} results"
            if screen
            else "the results of a per-cell probe on cells of its own (ridge...)"
        )
        put = f"a {screen} stage" if screen else "one"
        raise ProbebenchError(
            f"{who} needs {need} for {backbone} ({weights}) on {task}; put {put} before it."
        )
    means = df.groupby(["setup_hash", "layer", "timestep"], sort=False)["value"].mean()
    _, layer, timestep = means.idxmax() if higher else means.idxmin()
    by_name = {(str(k[0]), fmt_timestep(k[1])): k for k in cache.keys}
    return by_name[(layer, timestep)]


def best_cells_grid(
    cfg: RunConfig, i: int, results: Path, ref: Label, ref_cache: FeatureCache, screen: str | None
) -> BackboneConfig:
    """Backbone ``i`` with ``cells_from: j`` → the same backbone extracting the layers × timesteps of backbone
    ``j``'s best cells over the run's tasks (so its keys contain every one of them) — with ``cells: best-layer``
    the best cells' layers × every timestep of ``j``'s grid; ``ref``: ``j``'s label, ``ref_cache`` its features
    (a cache or a live source: only its keys are read)."""
    b = cfg.backbones[i]
    who = f"Backbone {i} ({b.name}, cells_from: {b.cells_from})"
    keys = [best_cell(results, ref, task, ref_cache, who, screen) for task in cfg.tasks]
    layers = sorted({k[0] for k in keys})
    if b.cells == "best-layer":  # every timestep of the reference's grid at those layers
        keys = [k for k in ref_cache.keys if k[0] in layers]
    ts = sorted({k[1] for k in keys}, key=lambda t: -1.0 if t is None else t)
    return replace(b, layers=layers, timesteps=None if ts == [None] else ts, cells_from=None, cells="best")
