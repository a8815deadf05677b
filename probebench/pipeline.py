"""Wires the stages: datasets → backbones → feature caches → probes → result rows → report. No science here."""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

import backbones
import tasks
from backbones.base import FeatureKey
from backbones.store import FeatureCache, extract_to_cache
from probebench.config import BackboneConfig, ProbeConfig, RunConfig, resolve_tasks, save_config, to_dict
from probebench.core.errors import ProbebenchError, did_you_mean
from probebench.core.io import atomic_save_npy, atomic_write_bytes, atomic_write_json, stable_hash
from probebench.core.results import (
    RESULTS_FILE,
    append_results,
    done_cells,
    fmt_layers,
    fmt_timestep,
    provenance,
    read_results,
)
from probebench.rundir import check_rerun, write_backbone_notes, write_run_file
from probes import PROBES
from probes.screen import ProbeOutput, Split, predict_maps
from tasks.base import HIGHER_IS_BETTER, MAIN_METRIC, Dataset, Subset

log = logging.getLogger("probebench")
SPLITS = ("train", "val", "test")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_split(cfg: RunConfig, which: str) -> Dataset:
    d = cfg.data
    split = {"train": d.train_split, "val": d.val_split, "test": d.test_split}[which]
    limit = {"train": d.max_train, "val": d.max_val, "test": d.max_test}[which]
    ds = tasks.create(d.name, split=split, **({"root": d.root} if d.root else {}), **d.options)
    return Subset(ds, limit) if limit is not None and limit < len(ds) else ds


def build_adapter(
    b: BackboneConfig, cfg: RunConfig, notes: dict[str, str] | None = None
) -> backbones.Adapter:
    """The frozen adapter of backbone ``b``; ``notes`` receives what its weights are (``adapter.weights_note``),
    keyed by :func:`model_key` (a run writes them to ``backbones.json``)."""
    adapter = backbones.create(
        b.name,
        weights=b.weights,
        device=cfg.extract.device,
        dtype=b.dtype,
        **({"image_size": b.image_size} if b.image_size else {}),
        **b.options,
    )
    if notes is not None:
        notes[model_key([b])] = adapter.weights_note
    return adapter


def noise_seed(b: BackboneConfig, cfg: RunConfig) -> int:
    """The extraction noise seed of a backbone: its own ``seed`` if set, else the run's."""
    return cfg.seed if b.seed is None else b.seed


def extract_backbone(
    b: BackboneConfig,
    cfg: RunConfig,
    splits: dict[str, Dataset],
    progress: bool = True,
    notes: dict[str, str] | None = None,
) -> dict[str, FeatureCache]:
    """Each split's complete feature cache for backbone ``b`` (extracted where missing); ``notes``: as in
    :func:`build_adapter`."""
    adapter = build_adapter(b, cfg, notes)
    caches = {}
    for which, ds in splits.items():
        caches[which] = extract_to_cache(
            adapter,
            ds,
            layers=b.layers,
            timesteps=b.timesteps,
            cache_root=cfg.extract.cache_dir,
            seed=noise_seed(b, cfg),
            noise_draws=b.noise_draws,
            batch_size=cfg.extract.batch_size,
            shard_size=cfg.extract.shard_size,
            pool_to=b.pool_to,
            progress=progress,
        )
    del adapter
    return caches


def data_identity(splits: dict[str, Dataset]) -> dict[str, Any]:
    """What the data contributes to a result's identity, per split: the images (what changes features) and the
    targets (what else changes scores), by content — never the path the data lies at."""
    return {w: {"images": ds.fingerprint(), "targets": ds.target_fingerprint()} for w, ds in splits.items()}


_DATA_IDS: dict[str, dict[str, Any]] = {}


def data_identity_of(cfg: RunConfig) -> dict[str, Any]:
    """:func:`data_identity` of ``cfg``'s splits (built once per data config in a process)."""
    key = stable_hash(to_dict(cfg.data))
    if key not in _DATA_IDS:
        _DATA_IDS[key] = data_identity({w: build_split(cfg, w) for w in SPLITS})
    return _DATA_IDS[key]


def _setup(
    cfg: RunConfig, stage: ProbeConfig, models: list[BackboneConfig], data_id: dict[str, Any] | None
) -> dict[str, Any]:
    """Everything that changes a probe stage's numbers except the seeds: the data (config and content, not its
    path), the backbone(s) and the stage."""
    data = {k: v for k, v in to_dict(cfg.data).items() if k != "root"}
    d = {
        "data": {**data, "content": data_identity_of(cfg) if data_id is None else data_id},
        "backbones": [to_dict(b) for b in models],
        "probe": to_dict(stage),
    }
    rows = getattr(PROBES.get(stage.name), "rows_version", None)
    if rows is not None:  # the probe changed which rows it writes: earlier rows are not "done"
        d["rows_version"] = rows
    return d


def stage_hash(
    cfg: RunConfig,
    stage: ProbeConfig,
    models: list[BackboneConfig],
    probe_seed: int | None = None,
    data_id: dict[str, Any] | None = None,
) -> str:
    """Hash of everything that changes a probe stage's numbers: the setup (:func:`setup_hash`), the run's seed and
    the probe's seed (left out when it is the run's seed). Result rows carry it as ``config_hash``.
    ``data_id``: the splits' :func:`data_identity` when the caller has it (else built from ``cfg``)."""
    d = {**_setup(cfg, stage, models, data_id), "seed": cfg.seed}
    if probe_seed is not None and probe_seed != cfg.seed:
        d["probe_seed"] = probe_seed
    return stable_hash(d, 12)


def setup_hash(
    cfg: RunConfig, stage: ProbeConfig, models: list[BackboneConfig], data_id: dict[str, Any] | None = None
) -> str:
    """Hash of a stage's setup: :func:`stage_hash` without the seeds. Rows of one setup that differ in their seeds
    are replicates; tables aggregate only within a setup (``setup_hash`` in result rows)."""
    return stable_hash(_setup(cfg, stage, models, data_id), 12)


def resolved(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``tasks: null`` resolved to every target kind its dataset provides (explicit tasks checked
    against the dataset), as :func:`run` resolves it."""
    return resolve_tasks(cfg, list(build_split(cfg, "train").targets))


def probe_seeds(cfg: RunConfig) -> list[int]:
    """The run's probe seeds (``probe_seeds``, else ``[seed]``), checked."""
    seeds = [cfg.seed] if cfg.probe_seeds is None else list(cfg.probe_seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ProbebenchError(
            f"probe_seeds must be a non-empty list of distinct integers, got {cfg.probe_seeds}."
        )
    return seeds


def stage_seeds(cfg: RunConfig, stage: ProbeConfig) -> list[int]:
    """The seeds a stage is fitted with: the probe seeds for a trained probe, the run's seed for a closed-form
    one (its numbers do not depend on a seed)."""
    # a closed-form probe, or one fitted while streaming the extraction (its seed is the noise seed): once
    return probe_seeds(cfg) if stage_is_seeded(cfg, stage) else [cfg.seed]


def stage_keys(
    cfg: RunConfig, stage: ProbeConfig, models: list[BackboneConfig], data_id: dict[str, Any] | None = None
) -> list[tuple[int, str]]:
    """(probe seed, stage hash) of each fit of ``stage`` on ``models``: what its result rows are keyed by (the
    pipeline's only-missing rule and the sweep's plan both read this)."""
    return [(seed, stage_hash(cfg, stage, models, seed, data_id)) for seed in stage_seeds(cfg, stage)]


def backbone_label(b: BackboneConfig) -> str:
    """A backbone's name in result rows: its options in brackets when it has any, e.g.
    ``tiny-mmdit[caption=floor sphere]`` or ``dit-xl-2-256[class_id=207]`` — so conditioned features are labelled
    as such in every row, and two option sets of one model never share rows."""
    if not b.options:
        return b.name
    opts = ";".join(
        f"{k}={' '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
        for k, v in sorted(b.options.items())
    )
    return f"{b.name}[{opts.replace('+', ' ')}]"


def model_label(models: list[BackboneConfig]) -> tuple[str, str]:
    """(backbone, weights) labels of result rows; joint probes join distinct ones with ``+`` (repeats of one
    model, e.g. other noise seeds, keep its label)."""
    pairs = list(dict.fromkeys((backbone_label(b), b.weights) for b in models))
    return "+".join(p[0] for p in pairs), "+".join(p[1] for p in pairs)


def same_grid(a: BackboneConfig, b: BackboneConfig) -> bool:
    """Same model and (layer, timestep) grid: only the noise seed may differ."""
    return to_dict(a) | {"seed": None} == to_dict(b) | {"seed": None}


def result_rows(
    records: list[dict[str, Any]],
    cfg: RunConfig,
    stage: ProbeConfig,
    models: list[BackboneConfig],
    cache_hashes: list[str],
    chash: str,
    setup: str,
    prov: dict[str, Any],
    seed: int | None = None,
) -> list[dict[str, Any]]:
    """Tidy result rows of a stage's records; ``cache_hashes``: each model's train-cache hash; ``seed``: the probe
    seed of this fit (default: the run's).

    A record that scores only some of the stage's models (e.g. ``combine-extra``: the second backbone alone, with
    the combination's recipe) names them in ``members`` (indices into ``models``); its row is labelled with those
    models and their cache, so it never stands for the combination."""
    seed = cfg.seed if seed is None else seed
    rows = []
    for r in records:
        members = r.get("members")
        idx = list(range(len(models))) if members is None else [int(i) for i in members]
        backbone, weights = model_label([models[i] for i in idx])
        snr = r.get("log_snr")
        rows.append(
            {
                "run": cfg.name,
                "backbone": backbone,
                "weights": weights,
                "task": r["task"],
                "dataset": cfg.data.name,
                "split": r["split"],
                "probe": stage.label or r.get("probe", stage.name),
                "layer": fmt_layers(r["layer"]),
                "timestep": fmt_timestep(r["timestep"]),
                "log_snr": snr if isinstance(snr, (int, float)) else None,
                "seed": r.get("seed", seed),
                "metric": r["metric"],
                "value": r["value"],
                "higher_is_better": HIGHER_IS_BETTER.get(r["metric"]),
                "lambda": r.get("lambda"),
                "config_hash": chash,
                "setup_hash": setup,
                "cache_hash": "+".join(dict.fromkeys(cache_hashes[i] for i in idx)),
                **prov,
            }
        )
    return rows


def resolve_cells(
    stage: ProbeConfig, results: Path, models: list[BackboneConfig], task: str, cache: FeatureCache
) -> list[FeatureKey] | None:
    """The (layer, timestep) keys a stage runs on for one task (``None``: the probe's own default, all keys)."""
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
    key = best_ridge_cell(results, models[0], task, cache, f"Probe {stage.name!r} with cells={stage.cells!r}")
    if stage.cells == "best":
        return [key]
    return [k for k in cache.keys if k[0] == key[0]]


def best_ridge_cell(
    results: Path, model: BackboneConfig, task: str, cache: FeatureCache, who: str
) -> FeatureKey:
    """The (layer, timestep) key of ``cache`` whose ridge probe scored best on val for ``task``."""
    backbone, weights = model_label([model])
    df = read_results(results) if results.is_file() else None
    metric, higher = MAIN_METRIC[task]
    if df is not None:
        df = df[
            (df.backbone == backbone)
            & (df.weights == weights)
            & (df.task == task)
            & (df.probe == "ridge")
            & (df.metric == metric)
            & (df.split == "val")
        ]
    if df is None or df.empty:
        raise ProbebenchError(
            f"{who} needs ridge results for {backbone} ({weights}) on {task}; put a ridge stage before it."
        )
    best = df.loc[df["value"].idxmax() if higher else df["value"].idxmin()]
    by_name = {(str(k[0]), fmt_timestep(k[1])): k for k in cache.keys}
    return by_name[(best["layer"], best["timestep"])]


def best_cells_grid(cfg: RunConfig, i: int, results: Path, ref_cache: FeatureCache) -> BackboneConfig:
    """Backbone ``i`` with ``cells_from: j`` → the same backbone extracting the layers × timesteps of backbone
    ``j``'s best ridge cells over the run's tasks (so its keys contain every one of them)."""
    b = cfg.backbones[i]
    ref = cfg.backbones[b.cells_from]
    who = f"Backbone {i} ({b.name}, cells_from: {b.cells_from})"
    keys = [best_ridge_cell(results, ref, task, ref_cache, who) for task in cfg.tasks]
    layers = sorted({k[0] for k in keys})
    ts = sorted({k[1] for k in keys}, key=lambda t: -1.0 if t is None else t)
    return replace(b, layers=layers, timesteps=None if ts == [None] else ts, cells_from=None)


def stage_groups(cfg: RunConfig, stage: ProbeConfig) -> list[list[int]]:
    """The backbone index groups a stage runs on: each selected backbone alone, or one joint group."""
    if stage.backbones is not None:
        return [list(stage.backbones)]
    alone = stage.select if stage.select is not None else range(len(cfg.backbones))
    return [[i] for i in alone]


def checked_probe(stage: ProbeConfig):
    """The registered probe function, after checking the stage's params against its signature."""
    import inspect

    fn = PROBES.get(stage.name)
    sig = inspect.signature(fn)
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        valid = [
            n
            for n, p in sig.parameters.items()
            if p.kind is p.KEYWORD_ONLY and n not in ("keys", "seed", "progress", "extra")
        ]
        for name in stage.params:
            if name not in valid:
                close = did_you_mean(name, valid, n=1)
                raise ProbebenchError(
                    f"Unknown parameter {name!r} for probe {stage.name!r}."
                    + (f" Did you mean {close[0]!r}?" if close else "")
                    + f" Valid: {', '.join(valid)}."
                )
    return fn


def validate(cfg: RunConfig) -> None:
    """Config checks that need no data: probe seeds, backbone indices, ``cells_from`` references."""
    probe_seeds(cfg)
    for i, b in enumerate(cfg.backbones):
        if b.cells_from is None:
            continue
        if not (0 <= b.cells_from < len(cfg.backbones) and b.cells_from != i):
            raise ProbebenchError(
                f"Backbone {i}: cells_from {b.cells_from} must be the index of another backbone "
                f"(0..{len(cfg.backbones) - 1})."
            )
        if cfg.backbones[b.cells_from].cells_from is not None:
            raise ProbebenchError(
                f"Backbone {i}: cells_from {b.cells_from} points at a backbone that itself has cells_from; "
                "point it at a backbone with its own layers and timesteps."
            )
    for st in cfg.probes:
        for i in [*(st.backbones or []), *(st.select or [])]:
            if not 0 <= i < len(cfg.backbones):
                raise ProbebenchError(
                    f"Probe {st.name!r}: backbone index {i} out of range 0..{len(cfg.backbones) - 1}."
                )


def run(cfg: RunConfig, *, extract: bool = True, analyze: bool = True, progress: bool = True) -> Path:
    """Run the pipeline for ``cfg``; returns the run's output directory. Reruns do only what is missing.

    A run that fails before writing any result leaves no run directory behind (unless it existed before)."""
    out = Path(cfg.output_dir) / cfg.name
    created = not out.exists()
    try:
        return _run(cfg, out, extract=extract, analyze=analyze, progress=progress)
    except BaseException:
        if created and out.is_dir() and not (out / RESULTS_FILE).is_file():
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise


def prepare_run_dir(
    cfg: RunConfig, splits: dict[str, Dataset] | None = None
) -> tuple[RunConfig, Path, dict[str, Any]]:
    """What a run does before its stages: validate ``cfg``, resolve its tasks against the dataset, refuse a run
    directory that holds results of another setup (:func:`check_rerun`), then write ``config.yaml`` and
    ``run.json``. Returns the resolved config, the run directory and the splits' data identity."""
    validate(cfg)  # fails before anything is written
    splits = splits or {w: build_split(cfg, w) for w in SPLITS}
    cfg = resolve_tasks(cfg, list(splits["train"].targets))
    for ds in splits.values():
        for kind in cfg.tasks:
            ds.target_spec(kind)
    data_id = data_identity(splits)
    out = Path(cfg.output_dir) / cfg.name
    check_rerun(out, cfg, data_id)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    write_run_file(out, data_id)
    return cfg, out, data_id


def _run(cfg: RunConfig, out: Path, *, extract: bool, analyze: bool, progress: bool) -> Path:
    stages = [(st, checked_probe(st)) for st in cfg.probes]
    splits = {w: build_split(cfg, w) for w in SPLITS}
    cfg, out, data_id = prepare_run_dir(cfg, splits)
    results = out / RESULTS_FILE
    prov = provenance()
    caches: dict[int, dict[str, FeatureCache]] = {}
    notes: dict[str, str] = {}

    def caches_of(i: int) -> dict[str, FeatureCache]:
        if i not in caches:
            b = cfg.backbones[i]
            if b.cells_from is not None:
                b = best_cells_grid(cfg, i, results, caches_of(b.cells_from)["train"])
            caches[i] = (
                extract_backbone(b, cfg, splits, progress, notes)
                if extract
                else {w: find_cache(b, cfg, ds, notes) for w, ds in splits.items()}
            )
            write_backbone_notes(out, notes)
        return caches[i]

    for st, probe in stages:
        seeds = stage_seeds(cfg, st)
        fits = [
            (g, seed, chash, setup_hash(cfg, st, [cfg.backbones[i] for i in g], data_id))
            for g in stage_groups(cfg, st)
            for seed, chash in stage_keys(cfg, st, [cfg.backbones[i] for i in g], data_id)
        ]
        for group, seed, chash, setup in fits:
            models = [cfg.backbones[i] for i in group]
            label = model_key(models) + (f", probe seed {seed}" if len(seeds) > 1 else "")
            done = done_cells(results, chash)
            todo = [k for k in cfg.tasks if (*model_label(models), k) not in done]
            if not todo:
                say(f"[probebench] {st.name} on {label}: all results present; skipping (only-missing).")
                continue
            if not getattr(probe, "needs_cache", True):  # stream-fit: features are never stored
                if len(group) > 1:
                    raise ProbebenchError(
                        f"Probe {st.name!r} streams one backbone at a time; drop `backbones:`."
                    )
                b = models[0]
                adapter = build_adapter(b, cfg, notes)
                write_backbone_notes(out, notes)
                output = probe(
                    adapter,
                    splits["train"],
                    splits["val"],
                    splits["test"],
                    todo,
                    layers=b.layers,
                    timesteps=b.timesteps,
                    seed=noise_seed(b, cfg),
                    noise_draws=b.noise_draws,
                    pool_to=b.pool_to,
                    progress=progress,
                    **st.params,
                )
                tag = "stream:" + stable_hash(adapter.fingerprint(), 12)
                rows = result_rows(output.records, cfg, st, models, [tag], chash, setup, prov)
                n = append_results(results, rows)
                say(f"[probebench] {st.name} on {label}: {n} result rows → {results}")
                continue
            data = [{w: Split(caches_of(i)[w], splits[w]) for w in splits} for i in group]
            extra = {w: [d[w] for d in data[1:]] for w in splits}
            # cells that do not depend on the task: one call for every task (one pass over the cache)
            batches = [todo] if st.cells == "all" or isinstance(st.cells, list) else [[t] for t in todo]
            for kinds in batches:
                task = kinds[0]
                keys = resolve_cells(st, results, models, task, data[0]["train"].cache)
                kwargs: dict[str, Any] = {"extra": extra} if len(group) > 1 else {}
                if len(group) > 1 and keys is not None and "extra_keys" not in st.params:
                    first = models[1]
                    kwargs["extra_keys"] = (
                        keys
                        if same_grid(models[0], first) or first.cells_from == group[0]
                        else resolve_cells(st, results, [first], task, data[1]["train"].cache)
                    )
                output = probe(
                    data[0]["train"],
                    data[0]["val"],
                    data[0]["test"],
                    kinds,
                    keys=keys,
                    seed=seed,
                    progress=progress,
                    **kwargs,
                    **st.params,
                )
                if seed != seeds[0]:  # predictions and weight maps: those of the first seed
                    output.artifacts, output.artifact_meta = {}, {}
                elif len(seeds) > 1:  # say which seed they are
                    for meta in output.artifact_meta.values():
                        meta["probe_seed"] = seed
                save_outputs(
                    out,
                    models,
                    output,
                    data[0]["test"],
                    st.label or st.name,
                    val=data[0]["val"],
                    subdir=st.label,
                    probe_seed=seed if stage_is_seeded(cfg, st) else None,
                )
                cache_hashes = [d["train"].cache.hash for d in data]
                rows = result_rows(output.records, cfg, st, models, cache_hashes, chash, setup, prov, seed)
                n = append_results(results, rows)
                say(f"[probebench] {st.name} on {label}, {', '.join(kinds)}: {n} result rows → {results}")
    if analyze:
        from analysis.report import write_report

        report = write_report(out)
        say(f"[probebench] report: {report}")
    return out


def model_key(models: list[BackboneConfig]) -> str:
    """``backbone (weights)``: how result tables and messages name a model (or a joint group)."""
    return "{} ({})".format(*model_label(models))


def stage_is_seeded(cfg: RunConfig, stage: ProbeConfig) -> bool:
    """Whether a stage's fits depend on a probe seed (trained probes read from a cache)."""
    trained = PROBES.entry(stage.name).kind.startswith("trained")
    return trained and getattr(PROBES.get(stage.name), "needs_cache", True)


def model_slug(models: list[BackboneConfig]) -> str:
    from analysis.common import model_slug as slug

    return slug(*model_label(models))


def save_outputs(
    out: Path,
    models: list[BackboneConfig],
    output: ProbeOutput,
    test: Split,
    stage: str,
    num_examples: int = 6,
    val: Split | None = None,
    subdir: str | None = None,
    probe_seed: int | None = None,
) -> None:
    """Save a probe's best closed-form heads with predictions on a few test images, its trained state dicts
    (safetensors; ``<stage>_<name>_seed<probe seed>.safetensors`` for seeded probes, so no seed overwrites
    another) and its artifacts (``.npy`` + JSON meta), under ``heads/<model>/``. Head metadata carries the
    target's label space (class names, ignore index) so figures can key them."""
    from safetensors.numpy import save as to_bytes
    from safetensors.torch import save as torch_to_bytes

    d = out / "heads" / model_slug(models)
    if subdir:  # a labelled stage (e.g. a noise control) keeps its heads apart from the model's main ones
        d = d / subdir
    d.mkdir(parents=True, exist_ok=True)
    backbone, weights = model_label(models)
    idx = list(range(min(num_examples, len(test.dataset))))
    for kind, head in output.best.items():
        spec = test.dataset.target_spec(kind)
        meta = {
            "backbone": backbone,
            "weights": weights,
            "task": kind,
            "layer": str(head.key[0]),
            "timestep": fmt_timestep(head.key[1]),
            "lambda": str(head.lam),
            "val_score": str(head.val_score),
        }
        label_space = {"class_names": list(spec.class_names), "ignore_index": spec.ignore_index}
        atomic_write_bytes(  # a killed run never leaves a half-written head behind
            d / f"{kind}.safetensors",
            to_bytes(
                {"coef": head.coef.astype(np.float32), "intercept": head.intercept.astype(np.float32)},
                metadata=meta,
            ),
        )
        atomic_save_npy(d / f"{kind}_pred.npy", predict_maps(head, test, spec, idx).astype(np.float32))
        atomic_save_npy(
            d / f"{kind}_target.npy",
            np.stack([test.dataset.load_target(i, kind) for i in idx]).astype(np.float32),
        )
        atomic_write_json(d / f"{kind}.json", {**meta, **label_space})
    if output.best and not (d / "images.npy").is_file():
        atomic_save_npy(
            d / "images.npy", np.stack([test.dataset.load_image(i) for i in idx]).astype(np.float32)
        )
    seed_tag = "" if probe_seed is None else f"_seed{probe_seed}"
    for name, sd in output.state_dicts.items():
        path = d / f"{stage}_{name.replace('/', '_')}{seed_tag}.safetensors"
        meta = {"backbone": backbone, "weights": weights, "probe": stage, "name": name}
        if probe_seed is not None:
            meta["probe_seed"] = str(probe_seed)
        atomic_write_bytes(
            path, torch_to_bytes({k: v.detach().cpu().contiguous() for k, v in sd.items()}, metadata=meta)
        )
    if output.artifacts and val is not None and not (d / "images_val.npy").is_file():
        n_val = min(max(len(np.asarray(a)) for a in output.artifacts.values()), len(val.dataset))
        images = np.stack([val.dataset.load_image(i) for i in range(n_val)]).astype(np.float32)
        atomic_save_npy(d / "images_val.npy", images)
    for name, arr in output.artifacts.items():
        stem = name.replace("/", "_")
        atomic_save_npy(d / f"{stem}.npy", np.asarray(arr))
        atomic_write_json(
            d / f"{stem}.json",
            {"backbone": backbone, "weights": weights, "probe": stage, **output.artifact_meta.get(name, {})},
        )


def find_cache(
    b: BackboneConfig, cfg: RunConfig, ds: Dataset, notes: dict[str, str] | None = None
) -> FeatureCache:
    """The complete cache for a backbone config and split, without extracting (``probebench fit``)."""
    from backbones.store import cache_dir_for, extraction_fingerprint

    adapter = build_adapter(b, cfg, notes)
    fp = extraction_fingerprint(
        adapter,
        ds,
        adapter.resolve_layers(b.layers),
        adapter.resolve_timesteps(b.timesteps),
        seed=noise_seed(b, cfg),
        noise_draws=b.noise_draws,
        pool_to=b.pool_to,
    )
    path = cache_dir_for(cfg.extract.cache_dir, fp)
    try:
        return FeatureCache(path, expect_hash=stable_hash(fp))
    except ProbebenchError as e:
        raise ProbebenchError(
            f"{e} (backbone {b.name}, split {ds.split}; `probebench run` extracts it)"
        ) from None
