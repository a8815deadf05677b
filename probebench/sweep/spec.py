"""The sweep file: parsing, axis expansion, cell naming and validation — one YAML file → a grid of run configs.

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
``max_cells``. Nothing here runs or reads results: that is :mod:`.state`, :mod:`.plan` and :mod:`.runner`.

A file with ``generate:`` in place of ``base:`` is a generation sweep, parsed by :mod:`.generation` with the
helpers here (:func:`parse_grid`, :func:`check_axis_values`, :func:`grid_points`, :func:`fill_cell_name`).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

import backbones
import tasks
from probebench.config import RunConfig, apply_overrides, from_dict, load_config, resolve_tasks, to_dict
from probebench.core.errors import ProbebenchError, UnknownNameError, closest_hint, did_you_mean
from probebench.core.io import stable_hash
from probebench.core.results import RESULTS_FILE
from probebench.core.rundir import CELLS_DIR
from probebench.pipeline import checked_probe, probe_seeds, resolved
from tasks.base import MAIN_METRIC

if TYPE_CHECKING:
    from probebench.sweep.generation import GenerationSweep

DEFAULT_MAX_CELLS = 500
SWEEP_KEYS = ("name", "base", "set", "axes", "zip", "cell_name", "slurm")
RANGE_KINDS = ("range", "linspace")
RESERVED_AXES = ("name", "output_dir")  # set by the sweep for every cell


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
        return self.dir / RESULTS_FILE

    @property
    def output(self) -> Path:
        """What the sweep makes, as its summary names it: the results table."""
        return self.table

    def cell(self, name: str) -> Cell:
        for c in self.cells:
            if c.name == name:
                return c
        raise ProbebenchError(unknown_cell(name, [c.name for c in self.cells]))


def unknown_cell(name: str, names: list[str]) -> str:
    """The error for a cell name (or --force pattern) that matches no cell: close names, then the cells."""
    close = did_you_mean(name, names)
    listed = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    return (
        f"No cell matches {name!r}."
        + (f" Did you mean: {', '.join(close)}?" if close else "")
        + (f" Cells: {listed}.")
    )


def inline(value: Any) -> str:
    """A value as one line of YAML (flow style), as the user would write it in an override."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def _expand_axis(key: str, spec: Any, where: str, reserved: Sequence[str] = RESERVED_AXES) -> Axis:
    """An axis spec (a list, or ``{range: [...]}`` / ``{linspace: [...]}``) → its list of values."""
    if not isinstance(key, str) or not key:
        raise ProbebenchError(f"{where}: axis names must be config key paths (e.g. seed), got {key!r}.")
    if key in reserved:
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
            f"write [{inline(spec)}] for a single value."
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
    apply_overrides(data, [f"{key}={inline(value)}" for key, value in values.items()])


def _resolve_tasks(cfg: RunConfig, memo: dict[str, list[str]]) -> RunConfig:
    """``cfg`` with ``tasks: null`` filled in from its dataset, as the pipeline does (``pipeline.resolved``; the
    dataset is built once per data config)."""
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


def fill_cell_name(
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


def read_sweep_file(path: str | Path | dict[str, Any]) -> tuple[dict[str, Any], Path | None, str]:
    """A sweep file's top-level mapping, its path (None when given a mapping) and how errors name it."""
    if isinstance(path, dict):
        return path, None, "sweep"
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
    return raw, source, where


def check_keys(raw: dict[str, Any], valid: Sequence[str], where: str) -> None:
    """Every top-level key of the sweep file is one of ``valid`` (else the closest one is named)."""
    for key in raw:
        if key not in valid:
            raise ProbebenchError(
                f"{where}: unknown key {key!r}."
                + closest_hint(key, valid)
                + f" Valid keys: {', '.join(valid)}."
            )


def sweep_name(raw: dict[str, Any], source: Path | None, where: str) -> str:
    """``name:``, else the file's stem: the sweep's folder under the output directory."""
    name = raw.get("name") or (source.stem if source else "sweep")
    if not isinstance(name, str) or _UNSAFE.sub("_", name) != name:
        raise ProbebenchError(f"{where}: name must be a file-name-safe string, got {name!r}.")
    return name


def parse_grid(
    raw: dict[str, Any], where: str, max_cells: int | None, reserved: Sequence[str] = RESERVED_AXES
) -> tuple[list[Axis], list[list[Axis]]]:
    """``axes:`` and ``zip:`` expanded and checked: no axis twice, zipped axes of equal lengths, a grid of at
    most ``max_cells`` cells."""
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
    axes = [_expand_axis(k, v, where, reserved) for k, v in axes_raw.items()]
    zips = [[_expand_axis(k, v, where, reserved) for k, v in g.items()] for g in zips_raw]
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
    return axes, zips


def check_axis_values(
    axes: list[Axis], zips: list[list[Axis]], where: str, check: Callable[[str, Any], None]
) -> None:
    """``check(key, value)`` for each value of each axis alone on the base, so that an error names exactly the
    axis and the value (with a hint when a list-valued key was given one value per cell)."""
    for ax in [*axes, *itertools.chain.from_iterable(zips)]:
        for value in ax.values:
            try:
                check(ax.key, value)
            except ProbebenchError as e:
                hint = ""
                wants_list = "expects list" in str(e) or "expects a list" in str(e)
                if wants_list and not isinstance(value, list):
                    hint = f" (a list per cell: write the axis as [{inline([value])}, ...])"
                raise ProbebenchError(f"{where}: axis {ax.key!r}, value {inline(value)}: {e}{hint}") from None


def grid_points(axes: list[Axis], zips: list[list[Axis]]) -> Iterator[dict[str, tuple[Any, int]]]:
    """The grid's points in order (the first axis outermost, then the zip groups): key → (value, its index)."""
    dims: list[list[dict[str, tuple[Any, int]]]] = [
        [{ax.key: (v, i)} for i, v in enumerate(ax.values)] for ax in axes
    ] + [[{ax.key: (ax.values[i], i) for ax in g} for i in range(len(g[0].values))] for g in zips]
    for combo in itertools.product(*dims):
        yield {k: vi for part in combo for k, vi in part.items()}


def parse_cell_name(raw: dict[str, Any], where: str) -> str | None:
    cell_name = raw.get("cell_name")
    if cell_name is not None and not isinstance(cell_name, str):
        raise ProbebenchError(f"{where}: cell_name must be a pattern string, got {cell_name!r}.")
    return cell_name


def parse_slurm(raw: dict[str, Any], where: str) -> SlurmConfig:
    try:
        return from_dict(SlurmConfig, raw.get("slurm") or {}, "slurm")
    except ProbebenchError as e:
        raise ProbebenchError(f"{where}: {e}") from None


def duplicate_cell(
    names: dict[str, dict[str, Any]], cname: str, overrides: dict[str, Any], where: str
) -> None:
    """Record a cell's name; two cells of one name are an error naming both cells' values."""
    if cname in names:
        raise ProbebenchError(
            f"{where}: two cells are both named {cname!r} ({inline(names[cname])} and "
            f"{inline(overrides)}); give a cell_name pattern with a field for every axis."
        )
    names[cname] = overrides


def load_sweep(
    path: str | Path | dict[str, Any],
    overrides: Sequence[str] = (),
    *,
    max_cells: int | None = DEFAULT_MAX_CELLS,
) -> Sweep | GenerationSweep:
    """Parse a sweep file (or mapping), expand its grid and validate every cell; nothing runs.

    ``overrides`` (``key.path=value``, as for ``probebench run``) apply to every cell before the axes. A file with
    ``generate:`` instead of ``base:`` is a generation sweep (:mod:`.generation`).
    """
    raw, source, where = read_sweep_file(path)
    if "generate" in raw:
        if "base" in raw:
            raise ProbebenchError(
                f"{where}: give either base: (a sweep of probebench runs) or generate: (a sweep of "
                "probebench generate), not both."
            )
        from probebench.sweep.generation import load_generation_sweep  # it builds on this module

        return load_generation_sweep(raw, source, where, overrides, max_cells=max_cells)
    check_keys(raw, SWEEP_KEYS, where)
    name = sweep_name(raw, source, where)

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

    axes, zips = parse_grid(raw, where, max_cells)

    def check(key: str, value: Any) -> None:
        data = _copy(base)
        _set_paths(data, {key: value})
        from_dict(RunConfig, data)

    check_axis_values(axes, zips, where, check)  # each value alone on the base
    cell_name = parse_cell_name(raw, where)
    slurm = parse_slurm(raw, where)

    sweep_dir = Path(base["output_dir"]) / name
    cells: list[Cell] = []
    names: dict[str, dict[str, Any]] = {}
    validated: dict[str, None] = {}
    kinds: dict[str, list[str]] = {}
    for point in grid_points(axes, zips):
        overrides_of = {k: v for k, (v, _) in point.items()}
        data = _copy(base)
        label = ", ".join(f"{k}={inline(v)}" for k, v in overrides_of.items()) or "the base config"
        try:
            _set_paths(data, overrides_of)
            cname = fill_cell_name(cell_name, point, data, where)
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
        duplicate_cell(names, cname, overrides_of, where)
        cells.append(Cell(cname, overrides_of, cfg))
    return Sweep(name, source, base, axes, zips, cell_name, slurm, cells)


def _copy(obj: Any) -> Any:
    """A deep copy of a plain config structure (dicts, lists, scalars)."""
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy(v) for v in obj]
    return obj


def absolute_config(cfg: RunConfig) -> dict[str, Any]:
    """The config with output and cache paths made absolute, so jobs find them from any working directory."""
    d = to_dict(cfg)
    d["output_dir"] = str(Path(d["output_dir"]).expanduser().resolve())
    d["extract"]["cache_dir"] = str(Path(d["extract"]["cache_dir"]).expanduser().resolve())
    return d
