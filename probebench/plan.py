"""The cost of a run before it starts: ``probebench run --dry-run`` and the disk check of a real run.

:func:`plan_run` walks a :class:`~probebench.config.RunConfig` as :func:`probebench.pipeline.run` would — the
feature cache of every backbone × split that a cache-reading stage needs, then each probe stage — and says per
row how many model rows it computes, how many cache bytes it writes, what is already cached and, per backbone,
an estimate of the memory it takes. Sizes come from :func:`backbones.plan.feature_plan` (registry metadata and
the architecture on the meta device: no weights are read), dataset sizes from the split objects (built as the
pipeline builds them; a dataset that is not on disk is reported, not fatal), and whether a cache exists from the
pipeline's own key functions (:func:`backbones.store.extraction_fingerprint`, :func:`~backbones.store.cache_dir_for`).
That exact check builds the adapter, so it runs for backbones whose parameters take at most
:data:`BUILD_TO_CHECK_BYTES`; a larger one is matched against the complete caches on disk by everything the
plan knows without its weights (grid, seed, noise draws, pooling, data, image size, dtype), and says so.

:func:`check_disk` refuses a run whose new caches exceed the free disk of the cache directory, before anything
is extracted, with the options that fit (pooling, the streaming ridge screen, online training, fewer cells).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backbones.plan import ACTIVATION_FACTOR, BackbonePlan, feature_plan
from probebench.config import BackboneConfig, ProbeConfig, RunConfig, to_dict
from probebench.core.errors import ProbebenchError
from probebench.pipeline import (
    SPLITS,
    build_adapter,
    build_split,
    cached_backbones,
    checked_probe,
    model_key,
    noise_seed,
    nominal_split_size,
    reads_live,
    stage_groups,
    stage_seeds,
)
from probes import probe_class
from tasks.base import Dataset

BUILD_TO_CHECK_BYTES = 2**30
"""Largest parameter size (bytes) for which the plan builds an adapter to find its cache exactly."""


def human(n: float | None) -> str:
    """Bytes in decimal units: ``25.2 MB``, ``3.05 TB``; ``?`` when unknown."""
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def free_disk(path: str | Path) -> tuple[Path, int]:
    """(nearest existing folder at or above ``path``, its free bytes): where the cache will be written."""
    p = Path(path).expanduser().absolute()
    while not p.exists():
        p = p.parent
    return p, shutil.disk_usage(p).free


# -- the plan ---------------------------------------------------------------------------------------------------
@dataclass
class Extraction:
    """One backbone × split cache: its size, model rows and whether it exists."""

    index: int
    split: str
    images: int | None
    keys: int
    rows: int | None  # model rows (see backbones.plan)
    total: int | None  # feature bytes of the whole cache
    new: int | None  # bytes still to write (0 when cached)
    state: str
    bound: bool = False  # the numbers are upper bounds (cells_from, or a max_* limit on an absent dataset)


@dataclass
class Stage:
    index: int
    label: str
    reads: str
    fits: int
    rows: int | None
    note: str


@dataclass
class RunPlan:
    """What a run will compute and store; :meth:`text` formats it, :attr:`fits` compares it with the disk."""

    cfg: RunConfig
    plans: dict[int, BackbonePlan]
    missing: dict[int, str]  # backbone index → why it has no plan
    extractions: list[Extraction]
    stages: list[Stage]
    images: dict[str, int | None]
    cache_dir: Path
    disk: Path
    free: int
    notes: list[str] = field(default_factory=list)

    @property
    def new_bytes(self) -> int:
        return sum(e.new or 0 for e in self.extractions)

    @property
    def fits(self) -> bool:
        return self.new_bytes <= self.free

    def text(self) -> str:
        return "\n".join(_format(self))

    def options(self) -> list[str]:
        return _options(self)


def _split_sizes(cfg: RunConfig) -> tuple[dict[str, Dataset | None], dict[str, int | None], list[str]]:
    """Each split's dataset (None when it cannot be built) and image count (an upper bound from ``max_*`` when
    the data is absent)."""
    d = cfg.data
    splits: dict[str, Dataset | None] = {}
    sizes: dict[str, int | None] = {}
    notes = []
    for which in SPLITS:
        try:
            splits[which] = build_split(cfg, which)
            sizes[which] = len(splits[which])
        except ProbebenchError as e:
            nominal = nominal_split_size(cfg, which)
            splits[which] = None
            limit = d.limit(which)
            sizes[which] = nominal if nominal is not None else limit
            if nominal is not None:
                how = f"; counted as {nominal} images (the official release's size)"
            else:
                how = f"; counted as at most max_{which}={limit} images" if limit else ""
            notes.append(f"data: {d.name}/{which} cannot be read here ({e}){how}")
    return splits, sizes, notes


def backbone_plan(b: BackboneConfig, **changes: Any) -> BackbonePlan:
    """:func:`feature_plan` of a backbone config (``changes``: e.g. other layers/timesteps)."""
    kw = {"layers": b.layers, "timesteps": b.timesteps, "pool_to": b.pool_to, **changes}
    return feature_plan(
        b.name,
        b.weights,
        image_size=b.image_size,
        options=b.options,
        dtype=b.dtype,
        noise_draws=b.noise_draws,
        concepts=b.concepts,
        **kw,
    )


class _CacheFinder:
    """Whether a backbone's cache of a split is complete, by the pipeline's own cache key (small models, built
    once per model config) or by matching the caches on disk (large ones)."""

    def __init__(self, cfg: RunConfig, adapters: dict[str, Any]):
        self.cfg, self.adapters = cfg, adapters  # model config → adapter, or the error building it
        self.root = Path(cfg.extract.cache_dir).expanduser()

    def state(self, i: int, plan: BackbonePlan, ds: Dataset) -> str:
        from backbones.store import FeatureCache, cache_dir_for, extraction_fingerprint
        from probebench.core.io import stable_hash

        b = self.cfg.backbones[i]
        if plan.param_bytes > BUILD_TO_CHECK_BYTES:
            return self._match(b, plan, ds)
        model = json.dumps(
            {
                k: v
                for k, v in to_dict(b).items()
                if k in ("name", "weights", "image_size", "dtype", "options")
            },
            sort_keys=True,
        )
        if model not in self.adapters:
            try:
                self.adapters[model] = build_adapter(b, self.cfg)
            except ProbebenchError as e:
                self.adapters[model] = e
        adapter = self.adapters[model]
        if isinstance(adapter, Exception):
            return f"to extract (cannot build: {str(adapter).split('. ')[0]})"
        fp = extraction_fingerprint(
            adapter,
            ds,
            adapter.resolve_layers(b.layers),
            adapter.resolve_timesteps(b.timesteps),
            seed=noise_seed(b, self.cfg),
            noise_draws=b.noise_draws,
            pool_to=b.pool_to,
        )
        path = cache_dir_for(self.root, fp)
        if (path / "manifest.json").is_file():
            try:
                FeatureCache(path, expect_hash=stable_hash(fp))
                return "cached"
            except ProbebenchError:
                pass
        return "partial (resumes)" if path.is_dir() else "to extract"

    def _match(self, b: BackboneConfig, plan: BackbonePlan, ds: Dataset) -> str:
        """A complete cache on disk whose fingerprint agrees with everything known without the weights."""
        from backbones.base import parse_dtype
        from backbones.store import cache_dir_for

        fp = ds.fingerprint()
        stub = {"adapter": {"backbone": b.name}, "dataset": fp}
        slug = cache_dir_for(self.root, stub).name.rsplit("-", 1)[0]
        want = {
            "layers": list(plan.layers),
            "timesteps": list(plan.timesteps),
            "seed": noise_seed(b, self.cfg),
            "noise_draws": b.noise_draws if plan.diffusion else 1,
            "pool_to": b.pool_to,
            "dataset": json.loads(json.dumps(fp)),
        }
        adapter = {
            "backbone": b.name,
            "image_size": plan.image_size,
            "dtype": str(parse_dtype(b.dtype)).removeprefix("torch."),
            "compute_batch": plan.compute_batch,
        }
        for manifest in sorted(self.root.glob(f"{slug}-*/manifest.json")):
            try:
                have = json.loads(manifest.read_text())["fingerprint"]
            except (OSError, ValueError, KeyError):
                continue
            if all(have.get(k) == v for k, v in want.items()) and all(
                have.get("adapter", {}).get(k) == v for k, v in adapter.items()
            ):
                return "cached (weights identity not verified)"
        return "to extract"


def plan_run(
    cfg: RunConfig,
    *,
    check_cached: bool = True,
    only: Sequence[int] | None = None,
    memo: dict[str, dict[str, Any]] | None = None,
) -> RunPlan:
    """The plan of ``cfg`` (see the module docstring); ``check_cached=False`` counts every cache as missing
    (an upper bound that needs no adapter and no data hashing); ``only``: the extractions of these backbone
    indices alone, no stages (a sweep's extraction jobs); ``memo``: plans and adapters shared between calls
    (``{}`` to start one)."""
    cfg.validate()
    splits, sizes, notes = _split_sizes(cfg)
    tasks = cfg.tasks or (list(splits["train"].targets) if splits["train"] is not None else None)
    memo = {} if memo is None else memo
    memo.setdefault("plans", {})
    memo.setdefault("adapters", {})
    finder = _CacheFinder(cfg, memo["adapters"])
    plans: dict[int, BackbonePlan] = {}
    missing: dict[int, str] = {}
    plan_memo: dict[str, BackbonePlan | str] = memo["plans"]  # equal model configs (noise-seed copies): once
    for i, b in enumerate(cfg.backbones):
        ref = cfg.backbones[b.cells_from] if b.cells_from is not None else b
        key = json.dumps(
            [to_dict(b) | {"seed": None, "cells_from": None}, ref.layers, ref.timesteps], default=str
        )
        if key not in plan_memo:
            try:
                plan_memo[key] = backbone_plan(b, layers=ref.layers, timesteps=ref.timesteps)
            except (ProbebenchError, ValueError, OSError) as e:  # unknown name, bad grid, unreadable weights
                plan_memo[key] = str(e)
        if isinstance(plan_memo[key], str):
            missing[i] = plan_memo[key]
        else:
            plans[i] = plan_memo[key]
    extractions = []
    for i in sorted(cached_backbones(cfg)) if only is None else only:
        b, plan = cfg.backbones[i], plans.get(i)
        for which in SPLITS:
            n, ds = sizes[which], splits[which]
            if plan is None:
                extractions.append(Extraction(i, which, n, 0, None, None, None, "sizes unknown (no plan)"))
                continue
            keys = plan.keys
            bound = ds is None and n is not None
            if b.cells_from is not None:  # the best cell (or layer) per task of cells_from's screen, at most
                n_layers = len(tasks) if tasks else None
                if b.cells == "best-layer":  # every timestep at those layers: the largest layers bound them
                    by_layer: dict[Any, list[Any]] = {}
                    for k in keys:
                        by_layer.setdefault(k[0], []).append(k)
                    biggest = sorted(by_layer.values(), key=lambda ks: -sum(map(plan.key_bytes, ks)))
                    keys = [k for ks in biggest[:n_layers] for k in ks]
                else:
                    keys = sorted(keys, key=plan.key_bytes, reverse=True)[:n_layers]
                bound = True
            total = None if n is None else plan.cache_bytes(n, keys)
            rows = None if n is None else n * plan.rows_per_image
            if b.cells_from is not None and rows is not None:
                rows = n * len({k[1] for k in keys}) * plan.noise_draws
            if ds is None:
                state = "data absent"
            elif b.cells_from is not None:
                state = f"after the screen (≤ {len(keys)} cells)"
            elif check_cached:
                state = finder.state(i, plan, ds)
            else:
                state = "not checked"
            new = 0 if state.startswith("cached") else total
            extractions.append(Extraction(i, which, n, len(keys), rows, total, new, state, bound))
    stages = (
        []
        if only is not None
        else [_stage(cfg, k, st, plans, sizes, tasks) for k, st in enumerate(cfg.probes)]
    )
    root = Path(cfg.extract.cache_dir).expanduser()
    disk, free = free_disk(root)
    return RunPlan(cfg, plans, missing, extractions, stages, sizes, root, disk, free, notes)


def _stage(
    cfg: RunConfig,
    k: int,
    st: ProbeConfig,
    plans: dict[int, BackbonePlan],
    sizes: dict[str, int | None],
    tasks: list[str] | None,
) -> Stage:
    """One probe stage: what it reads, its fits, and the model rows of a stage that reads live features."""
    groups = stage_groups(cfg, st)
    fits = len(groups) * len(stage_seeds(cfg, st))
    label = st.label or st.name
    names = ", ".join("+".join(str(i) for i in g) for g in groups)
    if not reads_live(st):
        return Stage(k, label, f"caches of {names}", fits, 0, "")
    n = [sizes[w] for w in SPLITS]
    plan_list = [plans.get(g[0]) for g in groups]
    if any(v is None for v in n) or any(p is None for p in plan_list):
        return Stage(k, label, f"live {names}", fits, None, "sizes unknown")
    params = checked_probe(st).params
    n_train, n_val, n_test = n
    if probe_class(
        st.name
    ).trained:  # online training: features held in memory when they fit, else every epoch
        epochs = int(getattr(params, "epochs", 1))
        held = (
            sum(p.cache_bytes(n_train + n_val) for p in plan_list)
            <= getattr(params, "max_memory_gb", 0) * 2**30
        )
        per = n_train + n_val + n_test if held else epochs * (n_train + n_val) + n_test
        rows = sum(per * p.rows_per_image for p in plan_list) * len(stage_seeds(cfg, st))
        note = (
            "features fit max_memory_gb: one pass"
            if held
            else f"≤ {epochs} epochs × (train + val), then test"
        )
        return Stage(k, label, f"live {names}", fits, rows, note)
    from probes.stream import memory_groups

    rows, note = 0, ""
    for p in plan_list:
        groups_ = memory_groups(_Shapes(p), p.keys, len(tasks or [1]), getattr(params, "memory_gb", 4.0))
        val_passes = 2 if len(getattr(params, "lambdas", [0, 0])) > 1 else 1
        per = n_train + val_passes * n_val + n_test
        rows += len(groups_) * per * p.rows_per_image
        note = f"{len(groups_)} key group(s), each one pass over train, {val_passes} over val, 1 over test"
    return Stage(k, label, f"live {names}", fits, rows, note)


class _Shapes:
    """A :class:`~probes.base.FeatureSource` stand-in that knows only shapes (for :func:`memory_groups`)."""

    def __init__(self, plan: BackbonePlan):
        self.plan = plan

    def info(self, key: Any) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(shape=(0, *self.plan.shapes[key]))


# -- memory ---------------------------------------------------------------------------------------------------
def memory_row(cfg: RunConfig, i: int, plan: BackbonePlan) -> dict[str, str]:
    """Estimated memory of extracting backbone ``i``: weights + activations on the device, feature buffers in
    host memory (for a cached backbone the shard being filled and the one being written; always one compute
    batch of float32 maps)."""
    weights, act = plan.param_bytes, plan.activation_bytes()
    per_image = plan.bytes_per_image()
    shards = 2 * cfg.extract.shard_size * per_image if i in cached_backbones(cfg) else 0
    buffers = shards + plan.compute_batch * 2 * per_image
    gpu = str(cfg.extract.device or "").startswith("cuda")
    return {
        "#": str(i),
        "backbone": model_key([cfg.backbones[i]]),
        "params": f"{plan.n_params / 1e6:,.1f} M",
        "weights": human(weights),
        "activations": human(act),
        "host buffers": human(buffers),
        "RAM": human(buffers if gpu else weights + act + buffers),
        "VRAM": human(weights + act) if gpu else "-",
    }


# -- text -----------------------------------------------------------------------------------------------------
def _table(rows: list[dict[str, Any]]) -> list[str]:
    import pandas as pd

    if not rows:
        return ["  (none)"]
    return ["  " + line for line in pd.DataFrame(rows).to_string(index=False).splitlines()]


def extraction_rows(p: RunPlan, name: str | None = None) -> list[dict[str, Any]]:
    """One table row per backbone × split cache of ``p`` (``name``: a first column naming the extraction)."""
    cfg = p.cfg
    rows = []
    for e in p.extractions:
        plan = p.plans.get(e.index)
        bound = "≤ " if e.bound else ""
        rows.append(
            {
                **({"extraction": name} if name else {}),
                "#": e.index,
                "backbone": model_key([cfg.backbones[e.index]]),
                "split": e.split,
                "images": bound + count(e.images),
                "keys": e.keys,
                "map h×w×C": "?"
                if plan is None
                else "/".join(dict.fromkeys("×".join(map(str, s)) for s in plan.shapes.values())),
                "model rows": bound + count(e.rows),
                "cache": bound + human(e.total),
                "state": e.state,
            }
        )
    return rows


def _format(p: RunPlan) -> list[str]:
    cfg = p.cfg
    total = sum(e.total or 0 for e in p.extractions)
    lines = [
        f"plan of run {cfg.name!r} (nothing is run; sizes from backbones/plan.py, no weights read)",
        "images: " + ", ".join(f"{w} {count(n)}" for w, n in p.images.items()),
        "",
        "extraction — one cache per backbone × split; cache = N × h × w × C × 2 bytes (fp16) per (layer, timestep)"
        " key, feature arrays only (.npy headers, shard markers and the manifest are not counted); model rows ="
        " images × timesteps × noise draws (diffusion: one batched transformer forward per compute batch and draw,"
        " every timestep a row, early exit after the deepest requested block; timm: one row per image)",
    ]
    lines += _table(extraction_rows(p))
    for i, why in p.missing.items():
        lines.append(f"  backbone {i}: {why}")
    lines += ["", "probe stages"]
    lines += _table(
        [
            {
                "stage": s.index,
                "probe": s.label,
                "reads": s.reads,
                "fits": s.fits,
                "model rows": count(s.rows),
                "note": s.note,
            }
            for s in p.stages
        ]
    )
    used = sorted(
        {e.index for e in p.extractions} | {i for s in p.stages for i in _live_indices(cfg, s.index)}
    )
    mem = [memory_row(cfg, i, p.plans[i]) for i in used if i in p.plans]
    lines += [
        "",
        "memory (ESTIMATE) — weights: parameters in the dtype they are built in; activations: compute_batch × "
        f"timesteps × elements per row (tokens × width) × bytes × {ACTIVATION_FACTOR}; host buffers: 2 shards of fp16 maps (cached backbones) + one "
        "compute batch of float32 maps; RAM and VRAM: extraction device " + (cfg.extract.device or "cpu"),
    ]
    lines += _table(mem)
    cached = total - p.new_bytes
    lines += [
        "",
        f"total: {human(p.new_bytes)} of new caches ({human(total)} in all, {human(cached)} already cached); "
        f"model rows {count(sum(e.rows or 0 for e in p.extractions) + sum(s.rows or 0 for s in p.stages))}"
        + (" (some sizes unknown)" if any(e.total is None for e in p.extractions) else ""),
        f"cache dir: {p.cache_dir} — free disk {human(p.free)} (on {p.disk})",
        *p.notes,
    ]
    if not p.fits:
        lines += [
            "",
            f"REFUSED: the new caches ({human(p.new_bytes)}) exceed the free disk ({human(p.free)}).",
            *p.options(),
        ]
    return lines


def _live_indices(cfg: RunConfig, k: int) -> list[int]:
    st = cfg.probes[k]
    return [g[0] for g in stage_groups(cfg, st)] if reads_live(st) else []


# -- refusal --------------------------------------------------------------------------------------------------
def _options(p: RunPlan) -> list[str]:
    """Ways to make the plan fit the free disk, each with its estimated bytes."""
    cfg, free = p.cfg, p.free
    per_backbone: dict[int, int] = {}
    for e in p.extractions:
        per_backbone[e.index] = per_backbone.get(e.index, 0) + (e.new or 0)
    out = ["Options that fit (estimated new cache bytes of the whole run):"]
    heavy = sorted((i for i, v in per_backbone.items() if v > 0), key=lambda i: -per_backbone[i])
    for i in heavy:
        b, plan, mine = cfg.backbones[i], p.plans[i], per_backbone[i]
        rest, label = p.new_bytes - mine, f"backbone {i} ({model_key([b])})"
        side = max(max(h, w) for h, w, _ in plan.grid.values())
        for n in (64, 32, 16, 8, 4, 2, 1):
            new = rest + int(mine * plan.with_pool(n).bytes_per_image() / plan.bytes_per_image())
            if n < side and new <= free:
                out.append(f"  - pool_to: {n} on {label} (maps {side}→{n} per side): {human(new)}")
                break
        if rest <= free:
            reading = [
                cfg.probes[st.index]
                for st in p.stages
                if not reads_live(cfg.probes[st.index])
                and any(i in g for g in stage_groups(cfg, cfg.probes[st.index]))
            ]
            how = [
                f"`online: true` on {st.label or st.name}"
                if probe_class(st.name).trained
                else f"{st.name} → ridge-stream (the streaming screen)"
                for st in reading
            ]
            out.append(f"  - no cache for {label}: {'; '.join(dict.fromkeys(how))}: {human(rest)}")
        per_cell = mine / len(plan.shapes)
        cells = int((free - rest) // per_cell) if free > rest else 0
        if 1 <= cells < len(plan.shapes):
            out.append(
                f"  - fewer cells on {label}: at most {cells} of its {len(plan.layers)} layers × "
                f"{len(plan.timesteps)} timesteps = {len(plan.shapes)} (layer, timestep) cells: "
                f"{human(rest + int(cells * per_cell))}"
            )
    if len(out) == 1:
        out.append("  (none found: free disk space, or set extract.cache_dir to a larger disk)")
    return out


def check_disk(cfg: RunConfig) -> None:
    """Refuse ``cfg`` before anything is extracted when its new caches exceed the cache directory's free disk
    (:class:`ProbebenchError` with the numbers and the options). Cheap when it fits: caches are looked up only
    when the upper bound does not fit."""
    if plan_run(cfg, check_cached=False).fits:
        return
    plan = plan_run(cfg)
    if not plan.fits:
        raise ProbebenchError(
            f"Run {cfg.name!r} needs {human(plan.new_bytes)} of new feature caches, but {plan.disk} has "
            f"{human(plan.free)} free. Nothing was extracted.\n"
            + "\n".join(plan.options())
            + "\n(`probebench run --dry-run` shows the whole plan.)"
        )


def sweep_cost_lines(extractions: Sequence[tuple[str, RunConfig, int]]) -> list[str]:
    """The cost section of ``probebench sweep --dry-run``: per distinct extraction ``(name, cell config, backbone
    index)``, its caches per split (as :func:`plan_run` counts them), then the total against each cache
    directory's free disk."""
    rows: list[dict[str, Any]] = []
    need: dict[Path, list[Any]] = {}
    memo: dict[str, dict[str, Any]] = {}
    for name, cfg, i in extractions:
        p = plan_run(cfg, only=[i], memo=memo)
        rows += extraction_rows(p, name)
        for why in p.missing.values():
            rows.append({"extraction": name, "state": f"sizes unknown: {why}"})
        disk = need.setdefault(p.disk, [0, p.free])
        disk[0] += p.new_bytes
    lines = [
        "cost of those extractions (cache = N × h × w × C × 2 bytes per (layer, timestep) key, feature arrays only; "
        "`probebench run --dry-run CONFIG` explains every column):",
        *_table(rows),
    ]
    for disk, (new, free) in need.items():
        verdict = (
            "fits" if new <= free else "DOES NOT FIT: pool_to, ridge-stream, online: true or fewer cells"
        )
        lines.append(f"total new caches on {disk}: {human(new)}; free disk {human(free)} — {verdict}")
    return lines
