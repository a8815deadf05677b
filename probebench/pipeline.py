"""Wires the stages: datasets → backbones → feature caches → probes → result rows → report. No science here."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

import backbones
import tasks
from backbones.store import FeatureCache, extract_to_cache
from probebench.config import BackboneConfig, RunConfig, config_hash, save_config
from probebench.errors import ProbebenchError
from probebench.io import atomic_save_npy, atomic_write_json
from probes import PROBES
from probes.results import RESULTS_FILE, append_results, done_cells, fmt_layers, fmt_timestep, provenance
from probes.screen import Head, Split, predict_maps
from tasks.base import HIGHER_IS_BETTER, Dataset, Subset

log = logging.getLogger("probebench")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_split(cfg: RunConfig, which: str) -> Dataset:
    d = cfg.data
    split = {"train": d.train_split, "val": d.val_split, "test": d.test_split}[which]
    limit = {"train": d.max_train, "val": d.max_val, "test": d.max_test}[which]
    ds = tasks.create(d.name, split=split, **({"root": d.root} if d.root else {}), **d.options)
    return Subset(ds, limit) if limit is not None and limit < len(ds) else ds


def build_adapter(b: BackboneConfig, cfg: RunConfig) -> backbones.Adapter:
    return backbones.create(
        b.name,
        weights=b.weights,
        device=cfg.extract.device,
        dtype=b.dtype,
        **({"image_size": b.image_size} if b.image_size else {}),
        **b.options,
    )


def extract_backbone(
    b: BackboneConfig, cfg: RunConfig, splits: dict[str, Dataset], progress: bool = True
) -> dict[str, FeatureCache]:
    adapter = build_adapter(b, cfg)
    caches = {}
    for which, ds in splits.items():
        caches[which] = extract_to_cache(
            adapter,
            ds,
            layers=b.layers,
            timesteps=b.timesteps,
            cache_root=cfg.extract.cache_dir,
            seed=cfg.seed,
            noise_draws=b.noise_draws,
            batch_size=cfg.extract.batch_size,
            shard_size=cfg.extract.shard_size,
            pool_to=b.pool_to,
            progress=progress,
        )
    del adapter
    return caches


def result_rows(
    records: list[dict[str, Any]],
    cfg: RunConfig,
    b: BackboneConfig,
    cache: FeatureCache,
    chash: str,
    prov: dict[str, Any],
) -> list[dict[str, Any]]:
    return [
        {
            "run": cfg.name,
            "backbone": b.name,
            "weights": b.weights,
            "task": r["task"],
            "dataset": cfg.data.name,
            "split": r["split"],
            "probe": cfg.probe.name,
            "layer": fmt_layers(r["layer"]),
            "timestep": fmt_timestep(r["timestep"]),
            "log_snr": r["log_snr"],
            "seed": cfg.seed,
            "metric": r["metric"],
            "value": r["value"],
            "higher_is_better": HIGHER_IS_BETTER.get(r["metric"]),
            "lambda": r.get("lambda"),
            "config_hash": chash,
            "cache_hash": cache.hash,
            **prov,
        }
        for r in records
    ]


def run(cfg: RunConfig, *, extract: bool = True, analyze: bool = True, progress: bool = True) -> Path:
    """Run the pipeline for ``cfg``; returns the run's output directory. Reruns do only what is missing."""
    out = Path(cfg.output_dir) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    chash = config_hash(cfg)
    probe = PROBES.get(cfg.probe.name)
    splits = {w: build_split(cfg, w) for w in ("train", "val", "test")}
    for ds in splits.values():
        for kind in cfg.probe.tasks:
            ds.target_spec(kind)
    results = out / RESULTS_FILE
    prov = provenance()
    for b in cfg.backbones:
        todo = [k for k in cfg.probe.tasks if (b.name, b.weights, k) not in done_cells(results, chash)]
        if not todo:
            say(
                f"[probebench] {b.name} ({b.weights}): all results present for config {chash}; skipping (only-missing)."
            )
            continue
        if extract:
            caches = extract_backbone(b, cfg, splits, progress)
        else:
            caches = {w: find_cache(b, cfg, ds) for w, ds in splits.items()}
        data = {w: Split(caches[w], splits[w]) for w in splits}
        output = probe(
            data["train"],
            data["val"],
            data["test"],
            todo,
            lambdas=cfg.probe.lambdas,
            class_balanced=cfg.probe.class_balanced,
            batch_size=cfg.probe.batch_size,
            progress=progress,
        )
        save_heads(out, b, output.best, data["test"])
        n = append_results(results, result_rows(output.records, cfg, b, caches["train"], chash, prov))
        say(f"[probebench] {b.name} ({b.weights}): {n} result rows → {results}")
    if analyze:
        from analysis.report import write_report

        report = write_report(out)
        say(f"[probebench] report: {report}")
    return out


def model_slug(b: BackboneConfig) -> str:
    return f"{b.name}-{b.weights}".replace("/", "_").replace(":", "_")


def save_heads(
    out: Path, b: BackboneConfig, heads: dict[str, Head], test: Split, num_examples: int = 6
) -> None:
    """Save each task's best head (safetensors) and its predictions on a few test images (for figures)."""
    from safetensors.numpy import save_file

    d = out / "heads" / model_slug(b)
    d.mkdir(parents=True, exist_ok=True)
    idx = list(range(min(num_examples, len(test.dataset))))
    for kind, head in heads.items():
        meta = {
            "backbone": b.name,
            "weights": b.weights,
            "task": kind,
            "layer": str(head.key[0]),
            "timestep": fmt_timestep(head.key[1]),
            "lambda": str(head.lam),
            "val_score": str(head.val_score),
        }
        save_file(
            {"coef": head.coef.astype(np.float32), "intercept": head.intercept.astype(np.float32)},
            str(d / f"{kind}.safetensors"),
            metadata=meta,
        )
        spec = test.dataset.target_spec(kind)
        atomic_save_npy(d / f"{kind}_pred.npy", predict_maps(head, test, spec, idx).astype(np.float32))
        atomic_save_npy(
            d / f"{kind}_target.npy",
            np.stack([test.dataset.load_target(i, kind) for i in idx]).astype(np.float32),
        )
        atomic_write_json(d / f"{kind}.json", meta)
    atomic_save_npy(d / "images.npy", np.stack([test.dataset.load_image(i) for i in idx]).astype(np.float32))


def find_cache(b: BackboneConfig, cfg: RunConfig, ds: Dataset) -> FeatureCache:
    """The complete cache for a backbone config and split, without extracting (``probebench fit``)."""
    from backbones.store import cache_dir_for, extraction_fingerprint
    from probebench.io import stable_hash

    adapter = build_adapter(b, cfg)
    fp = extraction_fingerprint(
        adapter,
        ds,
        adapter.resolve_layers(b.layers),
        adapter.resolve_timesteps(b.timesteps),
        seed=cfg.seed,
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
