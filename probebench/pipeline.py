"""Wires the stages: datasets → backbones → feature caches → probes → result rows → report. No science here.

:func:`run` is a sequence of steps: prepare the run directory (:func:`prepare_run_dir`), then for each probe
stage plan its fits (:func:`plan_fits`: one per backbone group and probe seed), skip what is done, fit — on
feature caches, extracted where missing, or on live features for a probe that needs no cache and for an
``online`` stage of a trained probe (a backbone only those use is never extracted to disk) — write the result
rows and the heads, and say what was done; last, the report. What a probe can do is read from its
:class:`~probes.base.Probe` class alone; config checks live in :meth:`RunConfig.validate`.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import backbones
import tasks
from backbones.store import FeatureCache, extract_to_cache
from probebench.cells import best_cells_grid, cell_screen, resolve_cells
from probebench.config import (
    BackboneConfig,
    ProbeConfig,
    RunConfig,
    identity_dict,
    resolve_tasks,
    save_config,
    stage_identity,
    to_dict,
)
from probebench.core.errors import ProbebenchError
from probebench.core.io import atomic_save_npy, stable_hash
from probebench.core.results import (
    append_results,
    done_cells,
    fmt_layers,
    fmt_timestep,
    provenance,
)
from probebench.core.rundir import RunDir
from probebench.rundir import check_rerun, write_backbone_notes, write_run_file
from probes import probe_class
from probes.base import FeatureSource, Probe, ProbeOutput, Split
from probes.screen import predict_maps
from probes.stream import LiveSource
from tasks.base import HIGHER_IS_BETTER, Dataset, Slice, Subset, check_disjoint, parse_split

SPLITS = ("train", "val", "test")


# -- data and backbones ----------------------------------------------------------------------------------------
def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def split_source(cfg: RunConfig, which: str) -> tuple[str, str | None, str, dict[str, Any]]:
    """(dataset name, root, split text, options) of split ``which``: ``data``'s, or ``data.test``'s dataset for
    the test split when it names one."""
    d = cfg.data
    split = d.split_text(which)
    if which == "test" and d.test:
        unknown = set(d.test) - {"name", "root", "split", "options"}
        if unknown or "name" not in d.test:
            raise ProbebenchError(
                f"data.test must be a mapping with name (and optionally root, split, options); got {d.test!r}."
            )
        return (
            d.test["name"],
            d.test.get("root", d.root),
            d.test.get("split", split),
            d.test.get("options", {}),
        )
    return d.name, d.root, split, d.options


def dataset_label(cfg: RunConfig) -> str:
    """The ``dataset`` of a run's rows: ``data.name``, or ``<train dataset>→<test dataset>`` when the test split
    comes from another dataset (``data.test``), so every row of the run — val and test — carries one label."""
    test = split_source(cfg, "test")[0]
    return cfg.data.name if test == cfg.data.name else f"{cfg.data.name}→{test}"


def build_split(cfg: RunConfig, which: str) -> Dataset:
    """Split ``which`` of the run's data: a registered dataset's split, or a part of one (``train[-1000:]``),
    limited to ``data.max_<which>`` images."""
    name, root, text, options = split_source(cfg, which)
    split, part = parse_split(text)
    limit = cfg.data.limit(which)
    ds = tasks.create(name, split=split, **({"root": root} if root else {}), **options)
    if part is not None:
        ds = Slice(ds, part)
    return Subset(ds, limit) if limit is not None and limit < len(ds) else ds


def nominal_split_size(cfg: RunConfig, which: str) -> int | None:
    """The image count of split ``which`` from the dataset's official release sizes (``nominal_sizes``),
    without reading the data — what a plan counts when the data is not on this machine; None if unknown."""
    name, _, text, _ = split_source(cfg, which)
    split, part = parse_split(text)
    n = getattr(tasks.TASKS.get(name), "nominal_sizes", {}).get(split)
    if n is None:
        return None
    if part is not None:
        start, stop, _ = part.indices(n)
        n = max(0, stop - start)
    limit = cfg.data.limit(which)
    return n if limit is None else min(n, limit)


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
        **({"concepts": b.concepts} if b.concepts is not None else {}),
        **b.options,
    )
    if notes is not None:
        notes[model_key([b])] = adapter.weights_note
    return adapter


def noise_seed(b: BackboneConfig, cfg: RunConfig) -> int:
    """The extraction noise seed of a backbone: its own ``seed`` if set, else the run's."""
    return cfg.seed if b.seed is None else b.seed


def adapter_key(b: BackboneConfig) -> str:
    """What builds backbone ``b``'s adapter (:func:`build_adapter`): backbones that differ only in their grid or
    noise seed (e.g. noise controls) share one live adapter."""
    d = to_dict(b)
    keys = ("name", "weights", "dtype", "image_size", "options") + (
        ("concepts",) if b.concepts is not None else ()
    )
    return stable_hash({k: d[k] for k in keys}, 12)


def live_sources(
    adapter: backbones.Adapter, b: BackboneConfig, cfg: RunConfig, splits: dict[str, Dataset]
) -> dict[str, LiveSource]:
    """Each split's live features of backbone ``b`` — its grid, noise seed and pooling, the values its cache
    would hold — extracted ``extract.batch_size`` images at a time as a probe reads them; nothing is stored."""
    extraction = {"layers": b.layers, "timesteps": b.timesteps, "noise_draws": b.noise_draws}
    return {
        w: LiveSource(
            adapter,
            ds,
            **extraction,
            seed=noise_seed(b, cfg),
            pool_to=b.pool_to,
            batch_size=cfg.extract.batch_size,
        )
        for w, ds in splits.items()
    }


def extract_backbone(
    b: BackboneConfig,
    cfg: RunConfig,
    splits: dict[str, Dataset],
    progress: bool = True,
    notes: dict[str, str] | None = None,
    adapter: backbones.Adapter | None = None,
) -> dict[str, FeatureCache]:
    """Each split's complete feature cache for backbone ``b`` (extracted where missing); ``notes``: as in
    :func:`build_adapter`; ``adapter``: ``b``'s adapter when the caller holds it already."""
    adapter = adapter or build_adapter(b, cfg, notes)
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


# -- identities and labels ------------------------------------------------------------------------------------
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
    path), the backbone(s) and the stage (its ``role`` only labels it for the analysis)."""
    data = {k: v for k, v in identity_dict("data", to_dict(cfg.data)).items() if k != "root"}
    d = {
        "data": {**data, "content": data_identity_of(cfg) if data_id is None else data_id},
        "backbones": [identity_dict("backbone", to_dict(b)) for b in models],
        "probe": stage_identity(stage),
    }
    rows = probe_class(stage.name).rows_version
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
    """The run's probe seeds (``probe_seeds``, else ``[seed]``), checked (:meth:`RunConfig.fit_seeds`)."""
    return cfg.fit_seeds()


def stage_seeds(cfg: RunConfig, stage: ProbeConfig) -> list[int]:
    """The seeds a stage is fitted with: the probe seeds for a trained probe, the run's seed for a closed-form
    one (its numbers do not depend on a seed)."""
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
    as such in every row, and two option sets of one model never share rows; concept maps add their words and
    settings (``tiny-mmdit[concepts=floor sphere;score=cross-attention]``)."""
    parts = [
        f"{k}={' '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}".replace("+", " ")
        for k, v in sorted(b.options.items())
    ]
    if b.concepts is not None:
        from backbones.diffusion.concepts import ConceptSpec

        parts.append(ConceptSpec.parse(b.concepts).label())
    return f"{b.name}[{';'.join(parts)}]" if parts else b.name


def model_label(models: list[BackboneConfig]) -> tuple[str, str]:
    """(backbone, weights) labels of result rows; joint probes join distinct ones with ``+`` (repeats of one
    model, e.g. other noise seeds, keep its label)."""
    pairs = list(dict.fromkeys((backbone_label(b), b.weights) for b in models))
    return "+".join(p[0] for p in pairs), "+".join(p[1] for p in pairs)


def model_key(models: list[BackboneConfig]) -> str:
    """``backbone (weights)``: how result tables and messages name a model (or a joint group)."""
    return "{} ({})".format(*model_label(models))


def stage_is_seeded(cfg: RunConfig, stage: ProbeConfig) -> bool:
    """Whether a stage's fits depend on a probe seed (``Probe.trained``)."""
    return probe_class(stage.name).trained


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
                "dataset": dataset_label(cfg),
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


# -- planning a stage's fits -----------------------------------------------------------------------------------
def stage_groups(cfg: RunConfig, stage: ProbeConfig) -> list[list[int]]:
    """The backbone index groups a stage runs on: each selected backbone alone, or one joint group."""
    if stage.backbones is not None:
        return [list(stage.backbones)]
    alone = stage.select if stage.select is not None else range(len(cfg.backbones))
    return [[i] for i in alone]


def reads_live(stage: ProbeConfig) -> bool:
    """Whether a stage fits on live features (a probe that needs no cache, or an ``online`` stage)."""
    return stage.online or not probe_class(stage.name).needs_cache


def cached_backbones(cfg: RunConfig) -> set[int]:
    """The backbones some stage reads from a feature cache; the others — used only by stages that read live
    features (:func:`reads_live`) — are never extracted to disk."""
    return {i for st in cfg.probes if not reads_live(st) for group in stage_groups(cfg, st) for i in group}


def checked_probe(stage: ProbeConfig) -> Probe:
    """The stage's registered probe with its parameters checked (:meth:`Probe.from_config`), and ``online``
    refused for a probe that is not trained."""
    cls = probe_class(stage.name)
    if stage.online and not cls.trained:
        raise ProbebenchError(
            f"Probe {stage.name!r}: `online: true` computes a trained probe's features inside its training loop; "
            f"{stage.name!r} is not a trained probe. The ridge screen without a feature cache is the streaming "
            "screen `ridge-stream` (name: ridge-stream, no `online`)."
        )
    return cls.from_config(stage.params)


@dataclass(frozen=True)
class Fit:
    """One fit of a stage: a backbone group with one probe seed, and the hashes its rows carry."""

    group: tuple[int, ...]
    seed: int
    config_hash: str
    setup_hash: str


def plan_fits(cfg: RunConfig, stage: ProbeConfig, data_id: dict[str, Any] | None = None) -> list[Fit]:
    """Every fit of ``stage``: each backbone group (:func:`stage_groups`) × each of its seeds."""
    fits = []
    for group in stage_groups(cfg, stage):
        models = [cfg.backbones[i] for i in group]
        setup = setup_hash(cfg, stage, models, data_id)
        fits += [Fit(tuple(group), s, h, setup) for s, h in stage_keys(cfg, stage, models, data_id)]
    return fits


# -- the run ---------------------------------------------------------------------------------------------------
def run(cfg: RunConfig, *, extract: bool = True, analyze: bool = True, progress: bool = True) -> Path:
    """Run the pipeline for ``cfg``; returns the run's output directory. Reruns do only what is missing.

    A run that fails before writing any result leaves no run directory behind (unless it existed before)."""
    if extract:  # refuse new caches larger than the free disk before anything is written
        from probebench.plan import check_disk  # here: probebench.plan imports this module

        check_disk(cfg)
    out = Path(cfg.output_dir) / cfg.name
    created = not out.exists()
    try:
        return _run(cfg, extract=extract, analyze=analyze, progress=progress)
    except BaseException:
        if created and out.is_dir() and not RunDir(out).has_results():
            shutil.rmtree(out, ignore_errors=True)
        raise


def prepare_run_dir(
    cfg: RunConfig, splits: dict[str, Dataset] | None = None
) -> tuple[RunConfig, Path, dict[str, Any]]:
    """What a run does before its stages: validate ``cfg``, resolve its tasks against the dataset, refuse a run
    directory that holds results of another setup (:func:`check_rerun`), then write ``config.yaml`` and
    ``run.json``. Returns the resolved config, the run directory and the splits' data identity."""
    cfg.validate()  # fails before anything is written
    splits = splits or {w: build_split(cfg, w) for w in SPLITS}
    check_disjoint(splits)
    cfg = resolve_tasks(cfg, list(splits["train"].targets))
    for ds in splits.values():
        for kind in cfg.tasks:
            ds.target_spec(kind)
    data_id = data_identity(splits)
    out = Path(cfg.output_dir) / cfg.name
    check_rerun(out, cfg, data_id)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, RunDir(out).config_file)
    write_run_file(out, data_id)
    return cfg, out, data_id


def _run(cfg: RunConfig, *, extract: bool, analyze: bool, progress: bool) -> Path:
    # unknown probes or parameters fail before anything is written
    probes = [checked_probe(st) for st in cfg.probes]
    splits = {w: build_split(cfg, w) for w in SPLITS}
    cfg, out, data_id = prepare_run_dir(cfg, splits)
    stages = _Stages(cfg, out, splits, extract=extract, progress=progress)
    for index, (stage, probe) in enumerate(zip(cfg.probes, probes)):
        for fit in plan_fits(cfg, stage, data_id):
            stages.fit(index, stage, probe, fit)
    if analyze:
        from analysis.report import write_report

        say(f"[probebench] report: {write_report(out)}")
    return out


Fitted = Iterator[tuple[list[str] | None, ProbeOutput, list[str]]]  # (tasks, output, each model's cache hash)


class _Stages:
    """The probe stages of one run: its caches (extracted once per backbone, when first needed), its live
    adapters (built when a live fit first needs them, kept while the following fits use them), the rows it appends
    and the heads it saves."""

    def __init__(
        self, cfg: RunConfig, out: Path, splits: dict[str, Dataset], *, extract: bool, progress: bool
    ):
        self.cfg, self.out, self.splits = cfg, out, splits
        self.extract, self.progress = extract, progress
        self.results = RunDir(out).results_file
        self.prov = provenance()
        self.caches: dict[int, dict[str, FeatureCache]] = {}
        self.adapters: dict[str, backbones.Adapter] = {}  # by adapter_key
        self.live: dict[int, dict[str, LiveSource]] = {}
        self.notes: dict[str, str] = {}
        self.cached = cached_backbones(cfg)

    def caches_of(self, i: int, index: int) -> dict[str, FeatureCache]:
        """Backbone ``i``'s cache per split (extracted, or found with ``extract=False``); a backbone with
        ``cells_from`` extracts the best cells of stage ``index``'s :func:`cell_screen`."""
        if i not in self.caches:
            cfg, b = self.cfg, self.cfg.backbones[i]
            if b.cells_from is not None:
                b = self.best_cells(i, index)
            held = self.adapters.get(adapter_key(b))
            self.caches[i] = (
                extract_backbone(b, cfg, self.splits, self.progress, self.notes, held)
                if self.extract
                else {w: find_cache(b, cfg, ds, self.notes) for w, ds in self.splits.items()}
            )
            write_backbone_notes(self.out, self.notes)
        return self.caches[i]

    def adapter_of(self, b: BackboneConfig) -> backbones.Adapter:
        """Backbone ``b``'s live adapter, built once and shared by backbones that differ only in their grid or
        noise seed (:func:`adapter_key`)."""
        key = adapter_key(b)
        if key not in self.adapters:
            self.adapters[key] = build_adapter(b, self.cfg, self.notes)
            write_backbone_notes(self.out, self.notes)
        return self.adapters[key]

    def keep_adapters(self, models: list[BackboneConfig]) -> None:
        """Release the live adapters (and their sources) that ``models`` do not use, before a fit."""
        keep = {adapter_key(b) for b in models}
        self.adapters = {k: a for k, a in self.adapters.items() if k in keep}
        self.live = {i: s for i, s in self.live.items() if adapter_key(self.cfg.backbones[i]) in keep}

    def live_of(self, i: int, index: int) -> dict[str, LiveSource]:
        """Backbone ``i``'s live features per split (an ``online`` stage: nothing is extracted to disk); a backbone
        with ``cells_from`` gives the best cells of stage ``index``'s :func:`cell_screen`, as its cache would."""
        if i not in self.live:
            b = self.cfg.backbones[i]
            if b.cells_from is not None:
                b = self.best_cells(i, index)
            self.live[i] = live_sources(self.adapter_of(b), b, self.cfg, self.splits)
        return self.live[i]

    def best_cells(self, i: int, index: int) -> BackboneConfig:
        """Backbone ``i`` (with ``cells_from: j``) on the best cells of ``j`` (:func:`best_cells_grid`), whose key
        grid is read from ``j``'s cache when the run caches ``j``, else from its live features (no extraction)."""
        j = self.cfg.backbones[i].cells_from
        assert j is not None
        ref = self.caches_of(j, index)["train"] if j in self.cached else self.live_of(j, index)["train"]
        ref_label = model_label([self.cfg.backbones[j]])
        return best_cells_grid(self.cfg, i, self.results, ref_label, ref, cell_screen(self.cfg, index, j))

    def sources_of(self, i: int, index: int, online: bool) -> dict[str, FeatureSource]:
        """Backbone ``i``'s feature source per split: its live features for an ``online`` stage, else its cache."""
        if online:
            return dict(self.live_of(i, index))
        return {w: Split(self.caches_of(i, index)[w], ds) for w, ds in self.splits.items()}

    def fit(self, index: int, stage: ProbeConfig, probe: Probe, fit: Fit) -> None:
        """One fit of stage ``index``: skipped when its rows are all present; else fitted — on caches, or on live
        features for a probe that needs no cache or an ``online`` stage — and its rows written, one task batch at
        a time."""
        cfg, models = self.cfg, [self.cfg.backbones[i] for i in fit.group]
        label = model_key(models) + (f", probe seed {fit.seed}" if len(stage_seeds(cfg, stage)) > 1 else "")
        done = done_cells(self.results, fit.config_hash)
        specs = {k: self.splits["val"].target_spec(k) for k in cfg.tasks}
        todo = [k for k in cfg.tasks if (*model_label(models), k) not in done and probe.answers(specs[k])]
        if not todo:
            say(f"[probebench] {stage.name} on {label}: all results present; skipping (only-missing).")
            return
        if len(fit.group) > 1 and not (probe.joint and probe.needs_cache):
            how = "fits" if probe.needs_cache else "streams"
            raise ProbebenchError(f"Probe {stage.name!r} {how} one backbone at a time; drop `backbones:`.")
        self.keep_adapters(models if reads_live(stage) else [])
        if probe.needs_cache:
            fitted = self.fit_sources(index, stage, probe, fit, models, todo)
        else:
            fitted = self.fit_live(probe, fit, models[0], todo)
        for kinds, output, hashes in fitted:
            chash, setup = fit.config_hash, fit.setup_hash
            rows = result_rows(output.records, cfg, stage, models, hashes, chash, setup, self.prov, fit.seed)
            n = append_results(self.results, rows)
            what = label if kinds is None else f"{label}, {', '.join(kinds)}"
            say(f"[probebench] {stage.name} on {what}: {n} result rows → {self.results}")

    def fit_live(self, probe: Probe, fit: Fit, b: BackboneConfig, todo: list[str]) -> Fitted:
        """A probe that needs no cache, on backbone ``b``'s features extracted as it fits (nothing stored)."""
        live = live_sources(self.adapter_of(b), b, self.cfg, self.splits)
        output = probe.fit(
            live["train"], live["val"], live["test"], todo, seed=fit.seed, progress=self.progress
        )
        yield None, output, [live["train"].hash]

    def fit_sources(
        self,
        index: int,
        stage: ProbeConfig,
        probe: Probe,
        fit: Fit,
        models: list[BackboneConfig],
        todo: list[str],
    ) -> Fitted:
        """A probe on each split's features of the group's backbones (the first one's, plus ``extra`` for a joint
        fit) — their caches, or their live features for an ``online`` stage —, its heads saved; cells that do not
        depend on the task take one call for every task (one pass over the features)."""
        group, seeds = fit.group, stage_seeds(self.cfg, stage)
        screen = cell_screen(self.cfg, index, group[0])
        data = [self.sources_of(i, index, stage.online) for i in group]
        main = data[0]
        extra = {w: [d[w] for d in data[1:]] for w in self.splits} if len(group) > 1 else None
        per_task, label = not (stage.cells == "all" or isinstance(stage.cells, list)), model_label(models[:1])
        for kinds in [[t] for t in todo] if per_task else [todo]:
            keys = resolve_cells(stage, self.results, label, kinds[0], main["train"], screen)
            fitter = probe
            if extra and keys is not None and "extra_keys" not in stage.params:
                first = models[1]
                extra_keys = (
                    keys
                    if same_grid(models[0], first) or first.cells_from == group[0]
                    else resolve_cells(
                        stage,
                        self.results,
                        model_label([first]),
                        kinds[0],
                        data[1]["train"],
                        cell_screen(self.cfg, index, group[1]),
                    )
                )
                fitter = type(probe).from_config({**stage.params, "extra_keys": extra_keys})
            output = fitter.fit(
                *(main[w] for w in SPLITS),
                kinds,
                keys=keys,
                seed=fit.seed,
                progress=self.progress,
                extra=extra,
            )
            if fit.seed != seeds[0]:  # predictions and weight maps: those of the first seed
                output.artifacts, output.artifact_meta = {}, {}
            elif len(seeds) > 1:  # say which seed they are
                for meta in output.artifact_meta.values():
                    meta["probe_seed"] = fit.seed
            seed = fit.seed if probe.trained else None
            stage_label = stage.label or stage.name
            save_outputs(
                self.out,
                models,
                output,
                main["test"],
                stage_label,
                val=main["val"],
                subdir=stage.label,
                probe_seed=seed,
            )
            yield kinds, output, [d["train"].hash for d in data]


def save_outputs(
    out: Path,
    models: list[BackboneConfig],
    output: ProbeOutput,
    test: FeatureSource,
    stage: str,
    num_examples: int = 6,
    val: FeatureSource | None = None,
    subdir: str | None = None,
    probe_seed: int | None = None,
) -> None:
    """Save a probe's heads under ``heads/<model>/`` (``heads/<model>/<subdir>/`` for a labelled stage), as
    :meth:`ProbeOutput.save` writes them, and beside them what the figures show: each best closed-form head's
    decoded predictions and the targets on a few test images, those images, and the validation images that
    artifacts (weight maps) are of."""
    backbone, weights = model_label(models)
    d = RunDir(out).heads_dir(backbone, weights, subdir)
    specs = {kind: test.dataset.target_spec(kind) for kind in output.best}
    output.save(d, backbone=backbone, weights=weights, stage=stage, specs=specs, probe_seed=probe_seed)
    idx = list(range(min(num_examples, len(test.dataset))))
    for kind, head in output.best.items():
        atomic_save_npy(d / f"{kind}_pred.npy", predict_maps(head, test, specs[kind], idx).astype(np.float32))
        atomic_save_npy(
            d / f"{kind}_target.npy",
            np.stack([test.dataset.load_target(i, kind) for i in idx]).astype(np.float32),
        )
    if output.best and not (d / "images.npy").is_file():
        atomic_save_npy(
            d / "images.npy", np.stack([test.dataset.load_image(i) for i in idx]).astype(np.float32)
        )
    if output.artifacts and val is not None and not (d / "images_val.npy").is_file():
        n_val = min(max(len(np.asarray(a)) for a in output.artifacts.values()), len(val.dataset))
        images = np.stack([val.dataset.load_image(i) for i in range(n_val)]).astype(np.float32)
        atomic_save_npy(d / "images_val.npy", images)
