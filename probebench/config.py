"""Typed, nested dataclass configs: defaults → YAML preset → ``key.path=value`` overrides → validation.

Every key is checked: an unknown key is an error naming it and the closest valid key; a value of the wrong
type is an error naming the key, the expected type and the value. The resolved config is saved next to every
output (``config.yaml``), and its hash (without runtime-only fields) goes into every result row.

**Dataset-specific keys follow the dataset.** ``data.options`` and ``data.root`` belong to the dataset named by
``data.name`` (scenes' ``resolution`` means nothing to ``folder``, which rejects it). Each layer — the YAML
preset, the command line's overrides together, a sweep's ``set:``, a sweep cell's axis values — that names a
*different* dataset starts those two keys afresh (``{}`` and ``null``) before its own values apply. So
``data.name=folder data.root=DIR`` on the defaults drops scenes' options; a preset that names its dataset and its
options keeps them; ``data.name=X data.options.k=v`` in one layer gives X exactly ``{k: v}``; and a layer that
names the dataset already configured changes nothing else.

**Tasks default to the dataset's.** ``tasks: null`` (the default) means every target kind the dataset
provides, in the dataset's order; :func:`resolve_tasks` fills them in (and checks an explicit list) once the
dataset is known.

**Caches.** ``extract.cache_dir`` defaults to ``$PROBEBENCH_CACHE`` (else ``~/.cache/probebench/features``), read
when the config is built; presets leave it unset so that the variable works with them.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from probebench.core.errors import ProbebenchError, closest_hint, did_you_mean
from probebench.core.io import atomic_write_bytes, stable_hash
from probebench.core.rundir import ROLES

Layers = Union[str, int, list[int]]  # noqa: UP007  (a runtime union typing can introspect on 3.10)


def default_cache_dir() -> str:
    return os.environ.get("PROBEBENCH_CACHE", "~/.cache/probebench/features")


@dataclass
class DataConfig:
    """Which dataset and splits. A split may be a contiguous part of one (``train_split: train[:-1000]``,
    ``val_split: train[-1000:]``: a validation set held out of a dataset that ships only train and val); the
    run refuses splits of one dataset that overlap. ``options`` go to the dataset's constructor (e.g. scenes' ``resolution``);
    ``root`` is where an on-disk dataset lies. Both belong to the dataset named by ``name``: a preset or an
    override layer that names another dataset without giving them resets them to ``{}`` and ``null`` (the module
    docstring has the rule), so one dataset's options never reach another."""

    name: str = "scenes"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    max_train: int | None = 160
    max_val: int | None = 48
    max_test: int | None = 64
    options: dict[str, Any] = field(default_factory=dict)
    # the test split from another dataset (cross-dataset evaluation, e.g. train on DUTS-TR, test on ECSSD):
    # {name: ecssd, root: ..., split: test, options: {...}}; root defaults to data.root, split to test_split
    test: dict[str, Any] | None = None

    def split_text(self, which: str) -> str:
        """The configured split of role ``which`` (train / val / test), e.g. ``train[-1000:]``."""
        return {"train": self.train_split, "val": self.val_split, "test": self.test_split}[which]

    def limit(self, which: str) -> int | None:
        """``max_<which>``: at most this many images of that split (None: all)."""
        return {"train": self.max_train, "val": self.max_val, "test": self.max_test}[which]


DATASET_KEYS = ("options", "root")  # the DataConfig keys that belong to the dataset named by data.name


@dataclass
class BackboneConfig:
    """One backbone and the (layer, timestep) grid to extract from it."""

    name: str = "timm:efficientnet_lite0"
    weights: str = "default"
    layers: Layers = "all"
    timesteps: list[float] | None = None
    noise_draws: int = 1
    image_size: int | None = 128
    dtype: str = "float32"
    pool_to: int | None = None
    seed: int | None = None  # noise seed of this extraction (default: the run's seed); e.g. noise controls
    # extract only the cells backbone #cells_from scored best (per task, on val, in the rows of the cell screen:
    # see ProbeConfig) instead of `layers` × `timesteps`: e.g. a noise control with other seeds at the best
    # cells, without a full grid
    cells_from: int | None = None
    # with cells_from: `best` (the best cell per task) or `best-layer` (every timestep of backbone #cells_from
    # at the best layer per task: what a fusion over timesteps reads), e.g. cached pooled while #cells_from is
    # screened without a cache
    cells: str = "best"
    options: dict[str, Any] = field(default_factory=dict)
    # concept words (or {words, score, output, background}: backbones.diffusion.concepts.ConceptSpec): the
    # backbone's features are then its concept-attention maps (MM-DiTs), one channel per word
    concepts: Any = None


@dataclass
class ExtractConfig:
    """How to run extraction (none of it changes the numbers, so none of it is in cache hashes)."""

    batch_size: int = 16
    shard_size: int = 64
    device: str | None = None
    cache_dir: str = field(default_factory=default_cache_dir)


@dataclass
class ProbeConfig:
    """One probe stage. ``params`` are the registered probe's parameters (``Params``; unknown ones are errors).

    ``cells``: ``all`` (every cached (layer, timestep)), ``best`` (the best cell per task on val, read from the
    results table), ``best-layer`` (every timestep of the best layer per task), or explicit
    ``[[layer, timestep], ...]``. Best cells come from the rows of the *cell screen*: the nearest stage up to
    this one whose probe is per-cell (``Probe.per_cell``, e.g. ridge) and that ran on cells of its own (``all``
    or a list); in the quickstart, the ridge stage. ``backbones``: ``null`` runs the probe on each backbone
    alone; a list of indices into ``backbones`` runs ONE joint probe over them (features resampled to the first
    one's grid; with ``best``/``best-layer`` cells every backbone's cells come from its own screen results, and
    repeats of the first backbone — other noise seeds — use its cells). ``select`` restricts per-backbone runs to some
    indices. ``label`` replaces the probe name in the result rows (e.g. ``fusion-noise-control``). ``role``
    says what the stage is for in the analysis (:data:`probebench.core.rundir.ROLES`; ``noise-control``: the
    control of fusion-spatial with as many inputs but no timestep diversity); it changes no number, so it is
    not part of the result identity. ``online: true`` (trained probes only) computes the features inside the
    training loop from the live adapter(s) instead of reading a feature cache: nothing is stored (a backbone
    that only online stages and ``ridge-stream`` use is never extracted to disk), every epoch extracts again
    unless the features fit the probe's ``max_memory_gb``, and the numbers are those of the cache, so it is not
    part of the result identity either (rows fitted in one mode are done in the other).
    """

    name: str = "ridge"
    cells: Union[str, list[list[Any]]] = "all"  # noqa: UP007
    backbones: list[int] | None = None
    select: list[int] | None = None
    label: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    role: str | None = None
    online: bool = False


BACKBONE_CELLS = ("best", "best-layer")  # what a backbone with cells_from extracts of the other's grid

QUICKSTART_TIMESTEPS = [0.0, 0.1, 0.2, 0.35, 0.5, 0.7]


def _default_data() -> DataConfig:
    return DataConfig(max_train=160, max_val=48, max_test=48, options={"resolution": 64, "seed": 0})


def _default_backbones() -> list[BackboneConfig]:
    """The quickstart study (``configs/quickstart.yaml`` explains it): the trained tiny MM-DiT, its random twin,
    EfficientNet-Lite0, and five noise-seed copies of the tiny MM-DiT at its best cells (the noise control)."""
    tiny = {"name": "tiny-mmdit", "image_size": None, "dtype": "float32"}
    grid = {"layers": "all", "timesteps": list(QUICKSTART_TIMESTEPS)}
    return [
        BackboneConfig(**tiny, **grid),
        BackboneConfig(**tiny, **grid, weights="random"),
        BackboneConfig("timm:efficientnet_lite0", image_size=128),
        *(BackboneConfig(**tiny, seed=s, cells_from=0) for s in range(1, 6)),
    ]


def _default_probes() -> list[ProbeConfig]:
    return [
        ProbeConfig(
            "ridge",
            select=[0, 1, 2],
            params={"lambdas": [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0], "class_balanced": True},
        ),
        ProbeConfig("linear", cells="best", select=[0, 1, 2]),
        ProbeConfig("fusion", cells="best-layer", select=[0, 1], params={"mode": "spatial"}),
        ProbeConfig("fusion", cells="best-layer", select=[0, 1], params={"mode": "single"}),
        ProbeConfig(
            "fusion",
            cells="best",
            backbones=[0, 3, 4, 5, 6, 7],
            label="fusion-noise-control",
            params={"mode": "spatial"},
            role="noise-control",
        ),
        ProbeConfig("combine", cells="best", backbones=[0, 2]),
    ]


@dataclass
class RunConfig:
    """A whole pipeline run: data → backbones → cache → probes → results → figures and report. The defaults
    are the quickstart study, ``configs/quickstart.yaml``."""

    name: str = "quickstart"
    seed: int = 0
    # seeds of the trained probes (initialisation, shuffling, dropout): each trained probe stage is fitted once
    # per seed, rows carry it, the analysis reports mean ± std over them. Extraction noise keeps ``seed``;
    # closed-form probes (ridge) run once. ``null`` = ``[seed]``.
    probe_seeds: list[int] | None = field(default_factory=lambda: [0, 1, 2])
    output_dir: str = "results"
    data: DataConfig = field(default_factory=_default_data)
    backbones: list[BackboneConfig] = field(default_factory=_default_backbones)
    # target kinds to probe; ``null`` = every kind the dataset provides, in its order (resolve_tasks)
    tasks: list[str] | None = None
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    probes: list[ProbeConfig] = field(default_factory=_default_probes)

    def fit_seeds(self) -> list[int]:
        """The probe seeds (``probe_seeds``, else ``[seed]``), checked."""
        seeds = [self.seed] if self.probe_seeds is None else list(self.probe_seeds)
        if not seeds or len(set(seeds)) != len(seeds):
            raise ProbebenchError(
                f"probe_seeds must be a non-empty list of distinct integers, got {self.probe_seeds}."
            )
        return seeds

    def validate(self) -> None:
        """The checks that need no data and no registry: probe seeds, ``cells_from`` references and the stages'
        backbone indices (a run makes them before it writes anything)."""
        self.fit_seeds()
        n = len(self.backbones)
        for i, b in enumerate(self.backbones):
            if b.cells not in BACKBONE_CELLS:
                raise ProbebenchError(
                    f"Backbone {i}: cells {b.cells!r} must be one of {', '.join(BACKBONE_CELLS)} (with cells_from)."
                    f"{closest_hint(b.cells, BACKBONE_CELLS)}"
                )
            if b.cells_from is None:
                if b.cells != "best":
                    raise ProbebenchError(
                        f"Backbone {i}: cells: {b.cells} needs cells_from: <backbone index>."
                    )
                continue
            if not (0 <= b.cells_from < n and b.cells_from != i):
                raise ProbebenchError(
                    f"Backbone {i}: cells_from {b.cells_from} must be the index of another backbone "
                    f"(0..{n - 1})."
                )
            if self.backbones[b.cells_from].cells_from is not None:
                raise ProbebenchError(
                    f"Backbone {i}: cells_from {b.cells_from} points at a backbone that itself has cells_from; "
                    "point it at a backbone with its own layers and timesteps."
                )
        for st in self.probes:
            for i in [*(st.backbones or []), *(st.select or [])]:
                if not 0 <= i < n:
                    raise ProbebenchError(f"Probe {st.name!r}: backbone index {i} out of range 0..{n - 1}.")
            if st.role is not None and st.role not in ROLES:
                raise ProbebenchError(
                    f"Probe {st.name!r}: unknown role {st.role!r}.{closest_hint(st.role, ROLES)} "
                    f"Valid: {', '.join(ROLES)}."
                )


RUNTIME_ONLY = {("extract",), ("output_dir",)}  # excluded from the config hash
# keys added after result tables existed, left out of every identity while they hold their default (which is
# what every earlier config meant), so adding them changed no hash
NEUTRAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {"test": None},
    "backbone": {"cells": "best", "concepts": None},
}


def identity_dict(section: str, d: Mapping[str, Any]) -> dict[str, Any]:
    """``d`` (a ``data`` or ``backbone`` mapping) without the :data:`NEUTRAL_DEFAULTS` keys that hold their
    default."""
    neutral = NEUTRAL_DEFAULTS[section]
    return {k: v for k, v in d.items() if not (k in neutral and v == neutral[k])}


STAGE_LABELS = (
    "role",
)  # probe-stage keys that only label a stage for the analysis: no number depends on them
# probe-stage keys that say how a stage computes, not what: no number depends on them
STAGE_RUNTIME = ("online",)


def stage_identity(stage: ProbeConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A probe stage as a dict without :data:`STAGE_LABELS` and :data:`STAGE_RUNTIME`: what the result identity,
    the config hash and the rerun check compare."""
    d = to_dict(stage) if isinstance(stage, ProbeConfig) else dict(stage)
    return {k: v for k, v in d.items() if k not in STAGE_LABELS + STAGE_RUNTIME}


# -- building from dicts ---------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp``, building nested dataclasses; raise a clear error."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, path)
            except ProbebenchError as e:
                errors.append(e)
        raise ProbebenchError(
            f"Config key {path!r} expects {' or '.join(_type_name(a) for a in args)}, got {value!r}."
        )
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ProbebenchError(f"Config key {path!r} expects a mapping, got {value!r}.")
        return from_dict(tp, value, path)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ProbebenchError(f"Config key {path!r} expects a list, got {value!r}.")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{path}.{i}") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ProbebenchError(f"Config key {path!r} expects a mapping, got {value!r}.")
        return dict(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ProbebenchError(
        f"Config key {path!r} expects {_type_name(tp)}, got {value!r} ({type(value).__name__})."
    )


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys are errors naming the closest valid key."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in names:
            close = did_you_mean(str(key), names, n=1)
            hint = f" Did you mean {(f'{path}.' if path else '') + close[0]!r}?" if close else ""
            raise ProbebenchError(f"Unknown config key {full!r}.{hint} Valid keys here: {', '.join(names)}.")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# -- overrides -------------------------------------------------------------------------------------------------
def parse_override(assignment: str) -> tuple[str, Any]:
    """``a.b.c=value`` → (``a.b.c``, the value parsed as YAML)."""
    if "=" not in assignment:
        raise ProbebenchError(
            f"Override {assignment!r} must look like key.path=value (e.g. probe.batch_size=64)."
        )
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ProbebenchError(f"Override {assignment!r}: the value is not valid YAML ({e}).") from e
    return key.strip(), value


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict/list structure, in place."""
    key, value = parse_override(assignment)
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise ProbebenchError(
                    f"Override {key!r}: {where!r} needs a list index in 0..{len(node) - 1}."
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value  # validated (and unknown keys reported) by from_dict
            else:
                if part not in node:
                    node[part] = {}
                node = node[part]
        else:
            raise ProbebenchError(f"Override {key!r}: {'.'.join(parts[:i])!r} is not a mapping or a list.")


def switch_dataset(data: dict[str, Any], name: Any) -> None:
    """Before a layer that names the dataset ``name`` is applied to the config dict ``data``: if that is another
    dataset than the configured one, its :data:`DATASET_KEYS` start afresh (``DataConfig``'s defaults), so the
    previous dataset's options and root never reach it. The layer's own values are applied afterwards."""
    d = data.get("data")
    if not isinstance(d, dict) or name is None or name == d.get("name", DataConfig.name):
        return
    fresh = to_dict(DataConfig())
    for key in DATASET_KEYS:
        d[key] = fresh[key]


def apply_overrides(data: dict[str, Any], assignments: Sequence[str]) -> None:
    """Apply one layer of ``key.path=value`` overrides (e.g. the command line's) to ``data``, in place. A layer
    that sets ``data.name`` to another dataset first resets ``data.options`` and ``data.root``
    (:func:`switch_dataset`); the layer's own ``data.options...``/``data.root`` then apply, in any order."""
    parsed = [parse_override(a) for a in assignments]
    names = [value for key, value in parsed if key == "data.name"]
    if names:
        switch_dataset(data, names[-1])
    for a in assignments:
        apply_override(data, a)


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), cls: type = RunConfig
) -> Any:
    """Defaults, then the YAML file (``yaml.safe_load``), then overrides; validated into ``cls``. The file and
    the overrides are one layer each for the dataset rule (:func:`switch_dataset`)."""
    data = to_dict(cls())
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ProbebenchError(f"Config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ProbebenchError(f"Config file {p} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ProbebenchError(f"Config file {p} must hold a mapping at the top level.")
        from_dict(cls, loaded)  # report unknown keys against the file's own structure first
        if isinstance(loaded.get("data"), dict):
            switch_dataset(data, loaded["data"].get("name"))
        data = _merge(data, loaded)
    apply_overrides(data, list(overrides))
    return from_dict(cls, data)


def resolve_tasks(cfg: RunConfig, dataset_targets: Sequence[str]) -> RunConfig:
    """``cfg`` with its tasks resolved against the target kinds its dataset provides (``dataset_targets``, e.g.
    ``dataset.targets``, in the dataset's order): ``tasks: null`` → all of them; an explicit list is kept in its
    order after checking that the dataset provides every kind (else one error naming the kind and the kinds the
    dataset has)."""
    kinds = list(dataset_targets)
    where = f"dataset {cfg.data.name!r}" + (f" at {cfg.data.root}" if cfg.data.root else "")
    if cfg.tasks is None:
        if not kinds:
            raise ProbebenchError(f"tasks: {where} provides no target kinds.")
        return dataclasses.replace(cfg, tasks=kinds)
    if not cfg.tasks:
        raise ProbebenchError(
            f"tasks is empty; list target kinds, or null for every kind {where} provides "
            f"({', '.join(kinds)})."
        )
    for i, kind in enumerate(cfg.tasks):
        if kind in cfg.tasks[:i]:
            raise ProbebenchError(f"tasks lists {kind!r} twice: {cfg.tasks}.")
        if kind not in kinds:
            raise ProbebenchError(
                f"tasks: {where} has no {kind!r} target."
                + closest_hint(kind, kinds)
                + f" It provides: {', '.join(kinds) or 'none'}."
            )
    return dataclasses.replace(cfg, tasks=list(cfg.tasks))


def _merge(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in new.items():
        out[k] = (
            _merge(out[k], v)
            if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "options"
            else v
        )
    return out


def save_config(cfg: Any, path: str | Path) -> None:
    atomic_write_bytes(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())


def config_hash(cfg: RunConfig) -> str:
    """Hash of everything in the config that changes numbers (runtime-only fields left out)."""
    d = to_dict(cfg)
    d["probes"] = [stage_identity(st) for st in d["probes"]]
    d["data"] = identity_dict("data", d["data"])
    d["backbones"] = [identity_dict("backbone", b) for b in d["backbones"]]
    for path in RUNTIME_ONLY:
        node = d
        for p in path[:-1]:
            node = node[p]
        node.pop(path[-1], None)
    d.pop("name", None)
    return stable_hash(d, 12)
