"""Ablation sweeps: one YAML file → a grid of run configs → shared extractions → probe jobs → one results table.

A sweep file (``configs/sweeps/*.yaml``, read with ``yaml.safe_load``)::

    name: timestep_layer                   # the sweep's name (default: the file's stem) → results/<name>/
    base: ../quickstart.yaml               # a config file (relative to this file) or an inline config mapping
    set:                                   # optional: overrides applied to every cell
      data.max_train: 32
    axes:                                  # crossed (cartesian product, first axis outermost)
      backbones.0.timesteps: [[0.2], [0.5], [0.8]]
      backbones.0.layers: [[0], [1]]
      seed: {range: [0, 3]}                # range(start, stop[, step]); also {linspace: [start, stop, num]}
    zip:                                   # groups of axes whose values go together (equal lengths)
      - backbones.0.name: [dinov3-vits16, dit-xl-2-256]
        backbones.0.options: [{config: tiny}, {config: tiny}]
    cell_name: "t{backbones.0.timesteps}-l{backbones.0.layers}-s{seed}"   # default: key=value joined by _
    slurm: {partition: gpu, gpus_per_node: 1, timeout_min: 240, array_parallelism: 16}

Every cell (base + set + its axis values) is validated into a :class:`RunConfig` before anything runs: an
unknown key, an empty axis, a value of the wrong type, zipped axes of different lengths, an unknown probe,
probe parameter, task or backbone are errors naming the axis and the value; so is a grid larger than
``max_cells``.

**Layout.** ``results/<sweep>/results.csv`` is the sweep's table: every cell's rows, with the cell's name in
the ``run`` column, so ``probebench analyze results/<sweep>`` works directly. Each cell also runs as an
ordinary pipeline run in ``results/<sweep>/cells/<cell>/`` (its own ``results.csv``, ``config.yaml`` and
``heads/``). Why both: the pipeline's per-run semantics stay intact — ``cells: best`` reads the best ridge
cell of *this* cell's results, not another cell's; each cell's config and heads have their own place — and
the per-cell file is the cell's state (only-missing), while the sweep table is its union, merged under the
results lock with identity de-duplication after every cell and again at the end of every sweep (so a crash
between the two costs nothing: the next sweep merges it).

**Planning.** Distinct extraction configs (backbone config × data × seed × cache dir) of the cells still to
run are extracted once, as jobs of their own, before the cell jobs; the cache is content-addressed, so the
cell jobs then find complete caches (``pipeline.run(cfg, extract=False)``). An extraction that fails fails the
cells that need it (with the reason) and no others.

**Shared screens.** A screen stage — closed-form (the ridge screen), on cells that come from no other results
(``all`` or explicit) — whose stage keys (the pipeline's stage hashes: data and its content, seed, backbones,
stage; :func:`probebench.pipeline.stage_keys`) are equal in several cells to run is computed ONCE, as a job of its
own after the extractions: an ordinary pipeline run of a config holding only that stage, in
``results/<sweep>/screens/<key>/``. Each cell job then imports it before its pipeline runs: heads first, then
the rows (relabelled with the cell's name) — so the pipeline's only-missing rule skips the stage and the cell's
``cells: best`` stages read its own rows. The import holds the screen's lock, which the screen job holds while
it computes, and takes only a complete screen (else the cell fits the stage itself), so no cell reads a
half-written screen; a killed screen job resumes from its rows like any run (a screen with rows on disk is
always finished and imported, even for one cell). ``--dry-run`` lists the shared screens and their state;
``--force`` recomputes the forced cells' screens.

**Executors.** ``local``: in this process, one job after another (``workers=1``), or N worker processes
(``concurrent.futures.ProcessPoolExecutor``, spawn). ``slurm``: ``submitit.AutoExecutor`` job arrays (partition,
GPUs, time limit, ``array_parallelism``; jobs are :class:`submitit.helpers.Checkpointable`, so a pre-empted or
timed-out job is requeued — pre-emptions always, time-outs up to ``max_num_timeout`` times — and resumes from
the cache shards and result rows already written). ``submitit-local`` / ``submitit-debug``: the same submitit
code path with its ``LocalExecutor`` (one subprocess per job) or ``DebugExecutor`` (in-process).
Multi-GPU extraction is not split inside a sweep job: run ``torchrun --nproc-per-node N -m probebench.cli
extract ...`` (ranks write disjoint shards) for the big extraction configs first; the sweep then finds those
caches complete. Locks are ``fcntl.flock`` files, which work on local disks and on shared file systems mounted
with flock support (NFSv4, Lustre with ``-o flock``).

**Resume.** Results are the state: a cell is done when every (probe stage, model group, task) of it has rows
in its results file — the same hashes the pipeline's only-missing rule uses. A rerun runs only what is missing;
``force`` deletes the named cells' rows (atomically, under the results lock) and reruns them. Rows are written
atomically, and a per-cell lock keeps two sweeps (or a sweep and its orphaned workers) from running one cell
twice at once, so a killed sweep resumes without duplicated or half-written rows.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import io
import itertools
import math
import re
import sys
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from probebench.config import RunConfig, apply_overrides, from_dict, load_config, resolve_tasks, to_dict
from probebench.core.errors import ProbebenchError, did_you_mean
from probebench.core.io import atomic_write_bytes, stable_hash

DEFAULT_MAX_CELLS = 500
EXECUTORS = ("local", "slurm", "submitit-local", "submitit-debug")
SPLITS = ("train", "val", "test")
SWEEP_KEYS = ("name", "base", "set", "axes", "zip", "cell_name", "slurm")
RANGE_KINDS = ("range", "linspace")
RESERVED_AXES = ("name", "output_dir")  # set by the sweep for every cell
CELLS_DIR = "cells"
SCREENS_DIR = "screens"  # <sweep>/screens/<key>/: the shared screens, each a run directory of its own
RUN_LOCK = ".cell"  # locked(<run dir>/RUN_LOCK) while a job works on a cell's or a screen's run directory


# -- the sweep file --------------------------------------------------------------------------------------------
@dataclass
class SlurmConfig:
    """Resources of every sweep job on SLURM (``slurm:`` in the sweep file), passed to submitit."""

    partition: str | None = None
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem_gb: float | None = None
    timeout_min: int = 240
    array_parallelism: int = 32
    max_num_timeout: int = 3  # requeues after time-outs; pre-emptions are always requeued
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: list[str] = field(default_factory=list)  # shell lines run before each job (module load ...)
    additional: dict[str, Any] = field(default_factory=dict)  # any other sbatch option


@dataclass
class Axis:
    """One config key path and the values it takes."""

    key: str
    values: list[Any]


@dataclass
class Cell:
    """One point of the grid: its name, the axis values that define it, and its validated config."""

    name: str
    overrides: dict[str, Any]
    config: RunConfig

    @property
    def dir(self) -> Path:
        return Path(self.config.output_dir) / self.config.name

    @property
    def results(self) -> Path:
        from probebench.core.results import RESULTS_FILE

        return self.dir / RESULTS_FILE


@dataclass
class Sweep:
    """A parsed, expanded and validated sweep."""

    name: str
    source: Path | None
    base: dict[str, Any]
    axes: list[Axis]
    zips: list[list[Axis]]
    cell_name: str | None
    slurm: SlurmConfig
    cells: list[Cell]

    @property
    def dir(self) -> Path:
        return Path(self.base["output_dir"]) / self.name

    @property
    def table(self) -> Path:
        from probebench.core.results import RESULTS_FILE

        return self.dir / RESULTS_FILE

    def cell(self, name: str) -> Cell:
        for c in self.cells:
            if c.name == name:
                return c
        raise ProbebenchError(_unknown_cell(name, [c.name for c in self.cells]))


def _unknown_cell(name: str, names: list[str]) -> str:
    close = did_you_mean(name, names)
    listed = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    return (
        f"No cell matches {name!r}."
        + (f" Did you mean: {', '.join(close)}?" if close else "")
        + (f" Cells: {listed}.")
    )


def _inline(value: Any) -> str:
    """A value as one line of YAML (flow style), as the user would write it in an override."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def _expand_axis(key: str, spec: Any, where: str) -> Axis:
    """An axis spec (a list, or ``{range: [...]}`` / ``{linspace: [...]}``) → its list of values."""
    if not isinstance(key, str) or not key:
        raise ProbebenchError(f"{where}: axis names must be config key paths (e.g. seed), got {key!r}.")
    if key in RESERVED_AXES:
        raise ProbebenchError(
            f"{where}: axis {key!r} is set by the sweep for every cell (cells are named by cell_name and "
            "write into <output_dir>/<sweep name>/); use the sweep's name: or base output_dir instead."
        )
    if isinstance(spec, dict):
        kinds = [k for k in spec if k in RANGE_KINDS]
        if len(spec) != 1 or not kinds:
            raise ProbebenchError(
                f"{where}: axis {key!r} must be a list of values or one of {{range: [start, stop, step]}}, "
                f"{{linspace: [start, stop, num]}}; got {spec!r}."
            )
        kind, args = kinds[0], spec[kinds[0]]
        if not isinstance(args, list) or not all(
            isinstance(a, (int, float)) and not isinstance(a, bool) for a in args
        ):
            raise ProbebenchError(f"{where}: axis {key!r}: {kind} needs a list of numbers, got {args!r}.")
        if kind == "range":
            if not 1 <= len(args) <= 3:
                raise ProbebenchError(
                    f"{where}: axis {key!r}: range takes [stop], [start, stop] or [start, stop, step], got {args}."
                )
            start, stop, step = ([0, *args, 1] if len(args) == 1 else [*args, 1])[:3]
            if step == 0:
                raise ProbebenchError(f"{where}: axis {key!r}: range step must not be 0.")
            if all(isinstance(a, int) for a in (start, stop, step)):
                values: list[Any] = list(range(start, stop, step))
            else:
                n = max(0, math.ceil((stop - start) / step - 1e-9))
                values = [round(start + i * step, 12) for i in range(n)]
        else:
            if len(args) != 3 or not isinstance(args[2], int) or args[2] < 0:
                raise ProbebenchError(
                    f"{where}: axis {key!r}: linspace takes [start, stop, num] with an integer num >= 0, got {args}."
                )
            start, stop, num = args
            values = (
                [start]
                if num == 1
                else [round(start + (stop - start) * i / (num - 1), 12) for i in range(num)]
            )
    elif isinstance(spec, list):
        values = list(spec)
    else:
        raise ProbebenchError(
            f"{where}: axis {key!r} must be a list of values (or a {{range: ...}} mapping), got {spec!r}; "
            f"write [{_inline(spec)}] for a single value."
        )
    if not values:
        raise ProbebenchError(f"{where}: axis {key!r} is empty ({spec!r}); give it at least one value.")
    return Axis(key, values)


def _load_base(raw: Any, source: Path | None, where: str) -> dict[str, Any]:
    """The base config as a full dict (defaults filled in): a path relative to the sweep file, or a mapping."""
    if raw is None:
        return to_dict(RunConfig())
    if isinstance(raw, str):
        path = Path(raw).expanduser()
        if not path.is_absolute() and source is not None:
            path = source.parent / path
        if not path.is_file():
            raise ProbebenchError(f"{where}: base config file not found: {path}")
        return to_dict(load_config(path))
    if isinstance(raw, dict):
        try:
            return to_dict(from_dict(RunConfig, raw))
        except ProbebenchError as e:
            raise ProbebenchError(f"{where}: base: {e}") from None
    raise ProbebenchError(f"{where}: base must be a config file path or a config mapping, got {raw!r}.")


def _set_paths(data: dict[str, Any], values: dict[str, Any]) -> None:
    """``key.path = value`` for each item, as ONE layer of CLI overrides (same semantics and errors; a layer that
    names another dataset starts its options and root afresh, see :mod:`probebench.config`)."""
    apply_overrides(data, [f"{key}={_inline(value)}" for key, value in values.items()])


def _resolve_tasks(cfg: RunConfig, memo: dict[str, list[str]]) -> RunConfig:
    """``cfg`` with ``tasks: null`` filled in from its dataset, as the pipeline does (``pipeline.resolved``; the
    dataset is built once per data config)."""
    from probebench.pipeline import resolved

    if cfg.tasks is not None:
        return cfg
    key = stable_hash(to_dict(cfg.data))
    if key not in memo:
        memo[key] = list(resolved(cfg).tasks or [])
    return resolve_tasks(cfg, memo[key])


def _format_value(value: Any, index: int) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, str, type(None))) for v in value):
        return "+".join(_format_value(v, index) for v in value)
    return f"v{index}"  # mappings and nested lists: the value's position on its axis


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that no other key ends with (``backbones.0.layers`` → ``layers``)."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            short = ".".join(parts[-n:])
            if not any(o != key and (o == short or o.endswith("." + short)) for o in keys):
                out[key] = short
                break
        else:
            out[key] = key
    return out


_FIELD = re.compile(r"\{([^{}:!]+)(?::([^{}]*))?\}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,@-]+")


def _cell_name(
    pattern: str | None, point: dict[str, tuple[Any, int]], data: dict[str, Any], where: str
) -> str:
    """Fill ``pattern`` (``{key.path}`` or ``{key.path:fmt}`` fields) or join ``key=value``; file-name safe."""
    if pattern is None:
        short = _short_keys(list(point))
        name = "_".join(f"{short[k]}={_format_value(v, i)}" for k, (v, i) in point.items()) or "base"
    else:

        def fill(m: re.Match) -> str:
            key, spec = m.group(1).strip(), m.group(2)
            if key in point:
                value, index = point[key]
            else:
                node: Any = data
                for part in key.split("."):
                    if (
                        isinstance(node, list)
                        and part.lstrip("-").isdigit()
                        and -len(node) <= int(part) < len(node)
                    ):
                        node = node[int(part)]
                    elif isinstance(node, dict) and part in node:
                        node = node[part]
                    else:
                        raise ProbebenchError(
                            f"{where}: cell_name field {{{key}}} is neither an axis nor a config key. "
                            f"Axes: {', '.join(point) or 'none'}."
                        )
                value, index = node, 0
            if spec:
                try:
                    return format(value, spec)
                except (TypeError, ValueError) as e:
                    raise ProbebenchError(
                        f"{where}: cell_name field {{{key}:{spec}}} on {value!r}: {e}"
                    ) from None
            return _format_value(value, index)

        name = _FIELD.sub(fill, pattern)
    name = _UNSAFE.sub("_", name).strip("._")
    if not name:
        raise ProbebenchError(f"{where}: cell_name {pattern!r} gives an empty name.")
    return name


def _validate_cell(cfg: RunConfig) -> None:
    """Names that would only fail once a cell runs: probes and their params, tasks, dataset, backbones."""
    import backbones
    import tasks
    from probebench.core.errors import UnknownNameError
    from probebench.pipeline import checked_probe, probe_seeds
    from tasks.base import MAIN_METRIC

    probe_seeds(cfg)
    for st in cfg.probes:
        checked_probe(st)
        for i in [*(st.backbones or []), *(getattr(st, "select", None) or [])]:
            if not 0 <= i < len(cfg.backbones):
                raise ProbebenchError(
                    f"probe {st.name!r}: backbones index {i} out of range 0..{len(cfg.backbones) - 1}."
                )
    for t in cfg.tasks:
        if t not in MAIN_METRIC:
            raise UnknownNameError("task", t, MAIN_METRIC)
    tasks.TASKS.entry(cfg.data.name)
    for i, b in enumerate(cfg.backbones):
        backbones.BACKBONES.entry(b.name)
        if getattr(b, "cells_from", None) is not None:
            raise ProbebenchError(
                f"backbone {i} ({b.name}): cells_from needs the ridge results of the same run before its "
                "extraction, which a sweep's separate extraction jobs cannot wait for; give it explicit "
                "layers and timesteps in a sweep."
            )


def load_sweep(
    path: str | Path | dict[str, Any],
    overrides: Sequence[str] = (),
    *,
    max_cells: int | None = DEFAULT_MAX_CELLS,
) -> Sweep:
    """Parse a sweep file (or mapping), expand its grid and validate every cell; nothing runs.

    ``overrides`` (``key.path=value``, as for ``probebench run``) apply to every cell before the axes.
    """
    if isinstance(path, dict):
        source, raw, where = None, path, "sweep"
    else:
        source = Path(path)
        where = f"sweep {source}"
        if not source.is_file():
            raise ProbebenchError(f"Sweep file not found: {source}")
        try:
            raw = yaml.safe_load(source.read_text()) or {}
        except yaml.YAMLError as e:
            raise ProbebenchError(f"{where} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ProbebenchError(f"{where} must hold a mapping at the top level.")
    for key in raw:
        if key not in SWEEP_KEYS:
            close = did_you_mean(str(key), SWEEP_KEYS, n=1)
            raise ProbebenchError(
                f"{where}: unknown key {key!r}."
                + (f" Did you mean {close[0]!r}?" if close else "")
                + f" Valid keys: {', '.join(SWEEP_KEYS)}."
            )
    name = raw.get("name") or (source.stem if source else "sweep")
    if not isinstance(name, str) or _UNSAFE.sub("_", name) != name:
        raise ProbebenchError(f"{where}: name must be a file-name-safe string, got {name!r}.")

    base = _load_base(raw.get("base"), source, where)
    set_raw = raw.get("set") or {}
    if not isinstance(set_raw, dict):
        raise ProbebenchError(f"{where}: set must map config key paths to values, got {set_raw!r}.")
    try:
        _set_paths(base, set_raw)
        base = to_dict(from_dict(RunConfig, base))
    except ProbebenchError as e:
        raise ProbebenchError(f"{where}: set: {e}") from None
    apply_overrides(base, list(overrides))
    base = to_dict(from_dict(RunConfig, base))

    axes_raw = raw.get("axes") or {}
    zips_raw = raw.get("zip") or []
    if not isinstance(axes_raw, dict):
        raise ProbebenchError(
            f"{where}: axes must map config key paths to lists of values, got {axes_raw!r}."
        )
    if isinstance(zips_raw, dict):
        zips_raw = [zips_raw]
    if not isinstance(zips_raw, list) or not all(isinstance(g, dict) and g for g in zips_raw):
        raise ProbebenchError(f"{where}: zip must be a list of mappings (axis → values), got {zips_raw!r}.")
    axes = [_expand_axis(k, v, where) for k, v in axes_raw.items()]
    zips = [[_expand_axis(k, v, where) for k, v in g.items()] for g in zips_raw]
    seen: set[str] = set()
    for ax in [*axes, *itertools.chain.from_iterable(zips)]:
        if ax.key in seen:
            raise ProbebenchError(
                f"{where}: axis {ax.key!r} is given twice (axes and zip groups must not overlap)."
            )
        seen.add(ax.key)
    for group in zips:
        lengths = {ax.key: len(ax.values) for ax in group}
        if len(set(lengths.values())) > 1:
            raise ProbebenchError(
                f"{where}: zipped axes must have equal lengths, got "
                + ", ".join(f"{k} ({n} values)" for k, n in lengths.items())
                + "."
            )
    count = math.prod(len(a.values) for a in axes) * math.prod(len(g[0].values) for g in zips)
    if max_cells is not None and count > max_cells:
        sizes = " × ".join(
            [f"{a.key} ({len(a.values)})" for a in axes]
            + [f"zip[{', '.join(a.key for a in g)}] ({len(g[0].values)})" for g in zips]
        )
        raise ProbebenchError(
            f"{where}: the grid has {count} cells ({sizes}), more than --max-cells {max_cells}; "
            "raise --max-cells or shrink the axes."
        )

    # each value alone on the base: errors name exactly the axis and the value
    for ax in [*axes, *itertools.chain.from_iterable(zips)]:
        for value in ax.values:
            data = _copy(base)
            try:
                _set_paths(data, {ax.key: value})
                from_dict(RunConfig, data)
            except ProbebenchError as e:
                hint = ""
                if "expects list" in str(e) and not isinstance(value, list):
                    hint = f" (a list per cell: write the axis as [{_inline([value])}, ...])"
                raise ProbebenchError(
                    f"{where}: axis {ax.key!r}, value {_inline(value)}: {e}{hint}"
                ) from None

    cell_name = raw.get("cell_name")
    if cell_name is not None and not isinstance(cell_name, str):
        raise ProbebenchError(f"{where}: cell_name must be a pattern string, got {cell_name!r}.")
    slurm_raw = raw.get("slurm") or {}
    try:
        slurm = from_dict(SlurmConfig, slurm_raw, "slurm")
    except ProbebenchError as e:
        raise ProbebenchError(f"{where}: {e}") from None

    sweep_dir = Path(base["output_dir"]) / name
    dims: list[list[dict[str, tuple[Any, int]]]] = [
        [{ax.key: (v, i)} for i, v in enumerate(ax.values)] for ax in axes
    ] + [[{ax.key: (ax.values[i], i) for ax in g} for i in range(len(g[0].values))] for g in zips]
    cells: list[Cell] = []
    names: dict[str, dict[str, Any]] = {}
    validated: dict[str, None] = {}
    kinds: dict[str, list[str]] = {}
    for combo in itertools.product(*dims):
        point = {k: vi for part in combo for k, vi in part.items()}
        overrides_of = {k: v for k, (v, _) in point.items()}
        data = _copy(base)
        label = ", ".join(f"{k}={_inline(v)}" for k, v in overrides_of.items()) or "the base config"
        try:
            _set_paths(data, overrides_of)
            cname = _cell_name(cell_name, point, data, where)
            data["name"], data["output_dir"] = cname, str(sweep_dir / CELLS_DIR)
            cfg = from_dict(RunConfig, data)
            cfg = _resolve_tasks(cfg, kinds)  # tasks: null → the dataset's kinds
            sig = stable_hash(
                [[to_dict(st) for st in cfg.probes], cfg.tasks, cfg.data.name, data["backbones"]]
            )
            if sig not in validated:  # what _validate_cell reads, checked once per distinct value
                _validate_cell(cfg)
                validated[sig] = None
        except ProbebenchError as e:
            raise ProbebenchError(f"{where}: cell with {label}: {e}") from None
        if cname in names:
            raise ProbebenchError(
                f"{where}: two cells are both named {cname!r} ({_inline(names[cname])} and "
                f"{_inline(overrides_of)}); give a cell_name pattern with a field for every axis."
            )
        names[cname] = overrides_of
        cells.append(Cell(cname, overrides_of, cfg))
    return Sweep(name, source, base, axes, zips, cell_name, slurm, cells)


def _copy(obj: Any) -> Any:
    """A deep copy of a plain config structure (dicts, lists, scalars)."""
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy(v) for v in obj]
    return obj


# -- state: which cells are done -------------------------------------------------------------------------------
def stage_index_groups(cfg: RunConfig) -> Iterator[tuple[Any, list[int]]]:
    """(probe stage, backbone indices) pairs in the pipeline's order, by the pipeline's own rule."""
    from probebench.pipeline import stage_groups as pipeline_groups

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
    from probebench.core.results import RESULTS_FILE, done_cells
    from probebench.pipeline import model_key, model_label, stage_keys

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


def _parts_count(cfg: RunConfig) -> int:
    from probebench.pipeline import stage_seeds

    return sum(len(cfg.tasks) * len(stage_seeds(cfg, st)) for st, _ in stage_groups(cfg))


# -- results files: merge into the sweep table, delete a cell's rows ------------------------------------------
def merge_into_table(cell_results: Path, table: Path) -> int:
    """Add a cell's rows to the sweep table (locked, atomic, identity de-duplicated); returns rows added."""
    from probebench.core.results import append_results, read_results

    if not cell_results.is_file():
        return 0
    df = read_results(cell_results)
    return append_results(table, df.to_dict("records")) if len(df) else 0


def delete_rows(path: Path, run: str | None = None) -> int:
    """Delete rows (all, or those whose ``run`` is ``run``) from a results file, atomically under its lock."""
    import pandas as pd

    from probebench.core.results import locked, read_results

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
            raise ProbebenchError("--force: " + _unknown_cell(pat, names))
        chosen.update(dict.fromkeys(hits))
    return [c for c in sweep.cells if c.name in chosen]


def reset_cell(cell: Cell, table: Path) -> int:
    """Delete a cell's rows (its own results file and its rows in the sweep table) so that it runs again."""
    from probebench.core.results import locked

    cell.dir.mkdir(parents=True, exist_ok=True)
    with locked(cell.dir / RUN_LOCK):
        return delete_rows(cell.results) + delete_rows(table, run=cell.name)


# -- jobs ------------------------------------------------------------------------------------------------------
@dataclass
class JobResult:
    """What one job reports back (plain data: it crosses process and cluster boundaries)."""

    kind: str  # extract | screen | cell
    name: str
    status: str  # done | skipped | failed | cancelled
    reason: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Task:
    """One unit of work, as plain picklable data: an extraction, a shared screen, or a cell's probe stages."""

    kind: str  # extract | screen | cell
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
        from probebench import pipeline
        from probebench.core.results import locked

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
        from probebench.core.results import RESULTS_FILE

        cfg = from_dict(RunConfig, self.config)
        status = run_locked(cfg, self.imports)
        if self.table:
            merge_into_table(Path(cfg.output_dir) / cfg.name / RESULTS_FILE, Path(self.table))
        return status


def run_locked(cfg: RunConfig, imports: Iterable[tuple[int, str]] = ()) -> str:
    """Run ``cfg``'s missing probe stages (``pipeline.run`` on complete caches) under its run directory's lock —
    another sweep, or an orphaned worker, may be on it — after importing the shared screens ``imports`` (probe
    stage index, screen directory) whose rows it lacks. ``skipped`` if nothing was missing, else ``done``."""
    from probebench import pipeline
    from probebench.core.results import locked

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


def _run_task(task: Task) -> JobResult:
    """Module-level entry point of worker processes."""
    return task.run()


try:  # submitit requeues Checkpointable callables on pre-emption and time-out
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - submitit is only needed for the slurm executors
    _Checkpointable = object  # type: ignore[assignment,misc]


class SweepJob(_Checkpointable):  # type: ignore[misc,valid-type]
    """The callable submitit runs for every task. Checkpointable: on pre-emption or time-out submitit calls
    ``checkpoint`` (the default resubmits the same task) and requeues it; the task resumes from the cache
    shards and result rows already written, so nothing else needs saving."""

    def __call__(self, task: Task) -> JobResult:
        return task.run()


def extraction_key(cfg: RunConfig, index: int) -> str:
    """What makes one extraction: backbone config × data × seed × cache root (the cache is content-addressed
    inside that root, so equal keys always mean one shared cache)."""
    backbone = to_dict(cfg.backbones[index])
    return stable_hash(
        {
            "backbone": {k: v for k, v in backbone.items() if k != "seed"},
            "data": to_dict(cfg.data),
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
    """Indices of the backbones some probe stage of ``cfg`` reads (the pipeline extracts only those)."""
    return sorted({i for _, group in stage_index_groups(cfg) for i in group})


def _absolute(cfg: RunConfig) -> dict[str, Any]:
    """The config with output and cache paths made absolute, so jobs find them from any working directory."""
    d = to_dict(cfg)
    d["output_dir"] = str(Path(d["output_dir"]).expanduser().resolve())
    d["extract"]["cache_dir"] = str(Path(d["extract"]["cache_dir"]).expanduser().resolve())
    return d


# -- shared screens --------------------------------------------------------------------------------------------
def is_screen(cfg: RunConfig, stage: Any) -> bool:
    """Whether a probe stage is a *screen* that cells can share: closed-form (fitted once, no probe seed), on cells
    that come from no other results (``all`` or an explicit list) and on backbones without ``cells_from``. Its rows
    and heads then depend on its stage keys alone, so cells with equal keys would compute the same thing."""
    from probebench.pipeline import stage_groups as groups
    from probes import PROBES

    if not PROBES.entry(stage.name).kind.startswith("closed form"):
        return False
    if not (stage.cells == "all" or isinstance(stage.cells, list)):
        return False
    return all(cfg.backbones[i].cells_from is None for g in groups(cfg, stage) for i in g)


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
    from probebench.pipeline import model_key, stage_keys
    from probebench.pipeline import stage_groups as groups

    stage = cfg.probes[index]
    fits = groups(cfg, stage)
    used = sorted({i for g in fits for i in g})
    d = _absolute(cfg)
    d["backbones"] = [d["backbones"][i if i in used else used[0]] for i in range(len(d["backbones"]))]
    d["probes"] = [to_dict(stage)]
    d["probe_seeds"] = None
    keys = [stage_keys(cfg, stage, [cfg.backbones[i] for i in g]) for g in fits]
    ident = {k: v for k, v in d.items() if k not in ("name", "output_dir", "extract")}
    key = stable_hash({"config": ident, "stage_keys": keys}, 16)
    d["name"], d["output_dir"] = key, str(sweep_dir.expanduser().resolve() / SCREENS_DIR)
    models = ", ".join(model_key([cfg.backbones[i] for i in g]) for g in fits)
    return Screen(key, f"{stage.label or stage.name} on {models} [{key[:8]}]", d)


def screens_of(cfg: RunConfig, sweep_dir: Path) -> list[tuple[int, Screen]]:
    """(probe stage index, screen) of every screen stage of ``cfg``."""
    return [(i, screen_of(cfg, i, sweep_dir)) for i, st in enumerate(cfg.probes) if is_screen(cfg, st)]


def screen_state(screen: Screen) -> str:
    """``complete`` (every row written), ``partial`` (some: a killed screen job) or ``todo``."""
    from probebench.core.results import RESULTS_FILE, read_results

    results = screen.dir / RESULTS_FILE
    if not results.is_file() or read_results(results).empty:
        return "todo"
    return "partial" if missing_parts(from_dict(RunConfig, screen.config), results) else "complete"


def reset_screen(screen: Screen) -> int:
    """Delete a screen's rows (``--force`` of a cell that uses it), so that it is computed again."""
    from probebench.core.results import RESULTS_FILE, locked

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
    import json

    from probebench import pipeline, rundir
    from probebench.core.results import RESULTS_FILE, append_results, done_cells, locked, read_results

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
        heads = screen_dir / "heads"
        for f in sorted(heads.rglob("*")) if heads.is_dir() else []:
            if f.is_file() and not f.name.startswith("."):  # not a leftover temporary file
                atomic_write_bytes(out / "heads" / f.relative_to(heads), f.read_bytes())
        notes = screen_dir / rundir.BACKBONES_FILE
        if notes.is_file():
            rundir.write_backbone_notes(out, json.loads(notes.read_text()))
        df["run"] = cfg.name
        return append_results(out / RESULTS_FILE, df.to_dict("records"))


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
        cfg = _absolute(cell.config)
        needs = []
        for i in used_backbones(cell.config):
            key = extraction_key(cell.config, i)
            needs.append(key)
            users.setdefault(key, []).append(cell.name)
            if key not in extractions:
                b = cell.config.backbones[i]
                label = (
                    f"{b.name} ({b.weights}) layers={_inline(b.layers)} timesteps={_inline(b.timesteps)} "
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
        cfg = _absolute(cell.config)
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


# -- executors -------------------------------------------------------------------------------------------------
class Backend:
    """Runs tasks and yields their results as they complete; ``cancel`` stops what has not finished."""

    def map(self, tasks: list[Task]) -> Iterator[JobResult]:
        raise NotImplementedError

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        pass


class SequentialBackend(Backend):
    """In this process, one task after another (the default; monkeypatchable in tests)."""

    def map(self, tasks: list[Task]) -> Iterator[JobResult]:
        for t in tasks:
            yield t.run()


class PoolBackend(Backend):
    """N worker processes (``concurrent.futures.ProcessPoolExecutor``, spawn: safe with torch's threads)."""

    def __init__(self, workers: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))

    def map(self, tasks: list[Task]) -> Iterator[JobResult]:
        from concurrent.futures import as_completed

        futures = {self.pool.submit(_run_task, t): t for t in tasks}
        for fut in as_completed(futures):
            t = futures[fut]
            if fut.cancelled():
                yield JobResult(t.kind, t.name, "cancelled", "cancelled (--fail-fast)")
                continue
            try:
                yield fut.result()
            except Exception as e:  # the worker died: killed, out of memory ...
                yield JobResult(t.kind, t.name, "failed", "worker process died: " + reason(e))

    def cancel(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class SubmititBackend(Backend):
    """submitit job arrays: ``cluster`` is ``slurm``, ``local`` (LocalExecutor: a subprocess per job) or
    ``debug`` (DebugExecutor: in this process). The same code path, so tests cover what SLURM runs."""

    def __init__(self, cluster: str, folder: Path, slurm: SlurmConfig, job_name: str, poll_s: float):
        import submitit

        kwargs = {} if cluster == "debug" else {f"{cluster}_max_num_timeout": slurm.max_num_timeout}
        try:
            self.executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster, **kwargs)
        except RuntimeError as e:  # e.g. 'Could not detect "srun"' off a cluster
            raise ProbebenchError(
                f"--executor {'slurm' if cluster == 'slurm' else 'submitit-' + cluster}: {e} "
                "(--executor submitit-local runs the same jobs on this machine)."
            ) from None
        params: dict[str, Any] = {"timeout_min": slurm.timeout_min, "name": job_name}
        if cluster == "slurm":
            params.update(gpus_per_node=slurm.gpus_per_node, cpus_per_task=slurm.cpus_per_task)
            if slurm.mem_gb is not None:
                params["mem_gb"] = slurm.mem_gb
            params["slurm_array_parallelism"] = slurm.array_parallelism
            for key in ("partition", "account", "qos", "constraint"):
                if getattr(slurm, key) is not None:
                    params[f"slurm_{key}"] = getattr(slurm, key)
            if slurm.setup:
                params["slurm_setup"] = list(slurm.setup)
            if slurm.additional:
                params["slurm_additional_parameters"] = dict(slurm.additional)
        self.executor.update_parameters(**params)
        self.poll_s = poll_s
        self.jobs: list[Any] = []

    def map(self, tasks: list[Task]) -> Iterator[JobResult]:
        from submitit.helpers import as_completed

        if not tasks:
            return
        self.jobs = self.executor.map_array(SweepJob(), tasks)
        by_id = {id(j): t for j, t in zip(self.jobs, tasks)}
        for job in as_completed(self.jobs, poll_frequency=self.poll_s):
            t = by_id[id(job)]
            try:
                yield job.result()
            except Exception as e:  # job killed, cancelled, node failure ...
                status = (
                    "cancelled" if getattr(job, "state", "") in ("CANCELLED", "INTERRUPTED") else "failed"
                )
                yield JobResult(t.kind, t.name, status, f"job {job.job_id}: " + reason(e))

    def cancel(self) -> None:
        for job in self.jobs:
            if not job.done():
                job.cancel(check=False)


def make_backend(executor: str, workers: int, sweep: Sweep, poll_s: float | None = None) -> Backend:
    if executor not in EXECUTORS:
        raise ProbebenchError(f"Unknown executor {executor!r}. Valid: {', '.join(EXECUTORS)}.")
    if workers < 1:
        raise ProbebenchError(f"--workers must be >= 1, got {workers}.")
    if executor == "local":
        return SequentialBackend() if workers == 1 else PoolBackend(workers)
    cluster = {"slurm": "slurm", "submitit-local": "local", "submitit-debug": "debug"}[executor]
    folder = sweep.dir.expanduser().resolve() / "submitit"
    poll = poll_s if poll_s is not None else (30.0 if cluster == "slurm" else 1.0)
    return SubmititBackend(cluster, folder, sweep.slurm, f"probebench-{sweep.name}", poll)


# -- running a sweep -------------------------------------------------------------------------------------------
@dataclass
class Summary:
    """Per-cell outcome of one sweep invocation, and the extractions and shared screens it ran."""

    sweep: Sweep
    cells: list[JobResult]
    extractions: list[JobResult]
    report: Path | None = None
    report_error: str = ""
    screens: list[JobResult] = field(default_factory=list)

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self.cells if r.status in ("failed", "cancelled")]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.report_error

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(("done", "skipped", "failed", "cancelled"), 0)
        for r in self.cells:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def text(self) -> str:
        """The summary table: one line per cell with its status, time and (for failures) the reason."""
        c = self.counts()
        ran = sum(r.status == "done" for r in self.extractions)
        found = sum(r.status == "skipped" for r in self.extractions)
        head = (
            f"sweep {self.sweep.name}: {len(self.cells)} cells — {c['done']} done, {c['skipped']} skipped, "
            f"{c['failed']} failed"
            + (f", {c['cancelled']} cancelled" if c["cancelled"] else "")
            + f"; {len(self.extractions)} extraction jobs ({ran} extracted, {found} found complete)"
            + (
                f"; {len(self.screens)} shared screen jobs "
                f"({sum(r.status == 'done' for r in self.screens)} computed, "
                f"{sum(r.status == 'skipped' for r in self.screens)} found complete)"
                if self.screens
                else ""
            )
            + f" → {self.sweep.table}"
        )
        rows = [
            {
                "cell": r.name,
                "status": r.status,
                "time": f"{r.seconds:.1f}s" if r.seconds else "",
                "reason": r.reason,
            }
            for r in self.cells
        ]
        lines = [head, *format_table(rows)]
        failed_ext = [r for r in self.extractions if r.status == "failed"]
        lines += [f"extraction {r.name} failed: {r.reason}" for r in failed_ext]
        lines += [f"screen {r.name} failed: {r.reason}" for r in self.screens if r.status == "failed"]
        if self.report:
            lines.append(f"report: {self.report}")
        if self.report_error:
            lines.append(f"report failed: {self.report_error}")
        return "\n".join(lines)


def format_table(rows: list[dict[str, str]]) -> list[str]:
    if not rows:
        return []
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    out = ["  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip()]
    out += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip() for r in rows]
    return out


def _write_state(sweep: Sweep) -> None:
    """``sweep.yaml`` (the expanded grid: each cell's overrides) and ``config.yaml`` (the base config, where
    ``probebench analyze`` looks for the cache directory) in the sweep directory."""
    sweep.dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": sweep.name,
        "source": str(sweep.source) if sweep.source else None,
        "cells": [{"name": c.name, "dir": str(c.dir), "overrides": c.overrides} for c in sweep.cells],
    }
    atomic_write_bytes(sweep.dir / "sweep.yaml", yaml.safe_dump(doc, sort_keys=False).encode())
    atomic_write_bytes(sweep.dir / "config.yaml", yaml.safe_dump(sweep.base, sort_keys=False).encode())


def run_sweep(
    sweep: Sweep,
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
    go on unless ``fail_fast``). Forced cells' screens are recomputed too."""
    from tqdm import tqdm

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
            for r in backend.map(runnable):
                results[r.name] = r
                bar.update()
                bar.set_postfix(failed=sum(x.status == "failed" for x in results.values()), refresh=False)
                if r.status == "failed" and fail_fast:
                    backend.cancel()
                    break
        for t in plan.cells:
            results.setdefault(t.name, JobResult("cell", t.name, "cancelled", "not run (--fail-fast)"))
    finally:
        bar.close()
        backend.close()
    sync_table(sweep)
    summary = Summary(
        sweep, [results[c.name] for c in sweep.cells], phases["extract"], screens=phases["screen"]
    )
    _write_summary(summary)
    if report and sweep.table.is_file() and any(r.status == "done" for r in summary.cells):
        try:
            from analysis.report import write_report

            summary.report = write_report(sweep.dir)
        except Exception as e:  # the results are safe; say what went wrong
            summary.report_error = reason(e)
    return summary


def _write_summary(summary: Summary) -> None:
    rows = [dataclasses.asdict(r) for r in [*summary.extractions, *summary.screens, *summary.cells]]
    buf = io.StringIO()
    import csv

    w = csv.DictWriter(buf, fieldnames=["kind", "name", "status", "reason", "seconds"])
    w.writeheader()
    w.writerows({**r, "seconds": f"{r['seconds']:.2f}"} for r in rows)
    atomic_write_bytes(summary.sweep.dir / "summary.csv", buf.getvalue().encode())


def dry_run_text(sweep: Sweep, force: Sequence[str] = ()) -> str:
    """The expanded cells (name, state, overrides), how many are done, and the extractions still needed."""
    forced = {c.name for c in force_cells(sweep, force)} if force else set()
    rows, done = [], 0
    for c in sweep.cells:
        total = _parts_count(c.config)
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
                "overrides": " ".join(f"{k}={_inline(v)}" for k, v in c.overrides.items()) or "(base)",
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
