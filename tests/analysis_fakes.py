"""Hand-made result tables, weight arrays, predictions and feature caches for the analysis tests.

The numbers are smooth functions of (layer, log-SNR) with a little seed noise, so the figures look like a real
screen, and every table value is known exactly from the rows written here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from probebench.core.results import to_frame

PROV = {
    "run": "fake",
    "dataset": "scenes",
    "lambda": float("nan"),
    "config_hash": "cfg000000000",
    "setup_hash": "setup0000000",
    "cache_hash": "",
    "schema_version": 2,
    "probebench_version": "0.1.0",
    "torch_version": "2",
    "timm_version": "1",
    "git_commit": "0123456789abcdef",
    "created": "2025-01-01T00:00:00",
}
HIGHER = {"mIoU": True, "maxF": True, "rmse": False, "pixel_acc": True, "delta1": True}
TASK_METRICS = {"segmentation": ("mIoU", "pixel_acc"), "saliency": ("maxF",), "depth": ("rmse", "delta1")}


def row(**kw: Any) -> dict[str, Any]:
    """One result row with defaults for everything the analysis does not look at."""
    r = {**PROV, "split": "test", "seed": 0, "log_snr": float("nan"), "timestep": "none", "probe": "ridge"}
    r.update(kw)
    r["higher_is_better"] = HIGHER.get(r["metric"], True)
    return r


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return to_frame(rows)


def ddpm_log_snr(t: int) -> float:
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = float(np.cumprod(1 - betas)[t])
    return math.log(abar / (1 - abar))


def flow_log_snr(s: float) -> float:
    return math.inf if s == 0 else -math.inf if s == 1 else 2 * math.log((1 - s) / s)


def _quality(layer_frac: float, lsnr: float, peak: float) -> float:
    """In [0, 1]: best at ``peak`` log-SNR and a middle-to-late layer."""
    x = float(np.clip(lsnr, -9, 12))
    return math.exp(-((x - peak) ** 2) / 18.0) * (1 - 1.2 * (layer_frac - 0.65) ** 2)


def _values(task: str, q: float, base: float) -> dict[str, float]:
    if task == "segmentation":
        return {"mIoU": base + 0.35 * q, "pixel_acc": 0.5 + 0.4 * q}
    if task == "saliency":
        return {"maxF": 0.35 + base / 2 + 0.4 * q}
    return {"rmse": 2.2 - 1.2 * q - base, "delta1": 0.3 + 0.5 * q}


MODELS = {
    # label: (backbone, weights, layers, timesteps, log_snr fn, peak log-SNR, base)
    "dit": ("dit-xl-2-256", "default", [4, 12, 20, 27], [0, 100, 250, 500, 750], ddpm_log_snr, 1.5, 0.12),
    "flux": ("flux.1-dev", "default", [5, 15, 30], [0.0, 0.25, 0.5, 0.75, 1.0], flow_log_snr, 2.5, 0.18),
    "dino": ("dinov3-vitb16", "default", [3, 7, 11], [None], None, 0.0, 0.22),
    "dino-random": ("dinov3-vitb16", "random", [3, 7, 11], [None], None, 0.0, 0.02),
}


def synthetic_rows(
    seeds: tuple[int, ...] = (0, 1),
    with_fusion: bool = True,
    with_combo: bool = True,
    tasks: tuple[str, ...] = tuple(TASK_METRICS),
) -> pd.DataFrame:
    """A screen of two diffusion models, a clean-image encoder (trained and random), fusion variants and a
    combination run, on val and test, for ``seeds``."""
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for backbone, weights, layers, timesteps, snr, peak, base in MODELS.values():
        for task, metrics in TASK_METRICS.items():
            if task not in tasks:
                continue
            for seed in seeds:
                for split, off in (("val", 0.01), ("test", 0.0)):
                    best_q = 0.0
                    for li, layer in enumerate(layers):
                        for t in timesteps:
                            lsnr = snr(t) if snr else float("nan")
                            q = _quality(li / max(1, len(layers) - 1), lsnr if snr else peak, peak)
                            best_q = max(best_q, q)
                            for m, v in _values(task, q, base).items():
                                if m not in metrics:
                                    continue
                                rows.append(
                                    row(
                                        backbone=backbone,
                                        weights=weights,
                                        task=task,
                                        split=split,
                                        seed=seed,
                                        layer=str(layer),
                                        timestep="none" if t is None else format(t, "g"),
                                        log_snr=lsnr,
                                        metric=m,
                                        value=v + off + rng.normal(0, 0.004),
                                    )
                                )
                    if not (with_fusion and snr):
                        continue
                    bl = str(layers[len(layers) // 2])
                    multi = "+".join(format(t, "g") for t in timesteps[:4])
                    for probe, f, t in (
                        ("fusion-single", 1.02, format(timesteps[1], "g")),
                        ("fusion-spatial", 1.25, multi),
                        ("fusion-global", 1.12, multi),
                        ("fusion-mean", 1.06, multi),
                        ("fusion-concat", 1.1, multi),
                        ("fusion-noise-control", 1.03, format(timesteps[1], "g")),
                    ):
                        for m in metrics[:1]:
                            v = _values(task, min(1.0, best_q * f), base)[m]
                            rows.append(
                                row(
                                    backbone=backbone,
                                    weights=weights,
                                    task=task,
                                    split=split,
                                    seed=seed,
                                    probe=probe,
                                    layer=bl,
                                    timestep=t,
                                    metric=m,
                                    log_snr=snr(timesteps[1]) if "+" not in t else float("nan"),
                                    value=v + off + rng.normal(0, 0.004),
                                )
                            )
                    m = metrics[0]
                    rows.append(
                        row(
                            backbone=backbone,
                            weights=weights,
                            task=task,
                            split=split,
                            seed=seed,
                            probe="linear",
                            layer=bl,
                            timestep=format(timesteps[1], "g"),
                            log_snr=snr(timesteps[1]),
                            metric=m,
                            value=_values(task, best_q * 0.98, base)[m] + off + rng.normal(0, 0.004),
                        )
                    )
    if with_combo:
        for task, metrics in TASK_METRICS.items():
            if task not in tasks:
                continue
            for seed in seeds:
                for split, off in (("val", 0.01), ("test", 0.0)):
                    for probe, q in (("linear", 0.95), ("fusion-spatial", 1.0)):
                        m = metrics[0]
                        rows.append(
                            row(
                                backbone="flux.1-dev+dinov3-vitb16",
                                weights="default",
                                task=task,
                                split=split,
                                seed=seed,
                                probe=probe,
                                layer="15+7",
                                timestep="0.25+none",
                                metric=m,
                                value=_values(task, q, 0.24)[m] + off + rng.normal(0, 0.004),
                            )
                        )
    return frame(rows)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def write_weight_artifacts(
    model_dir: Path,
    timesteps: list[Any],
    log_snrs: list[float],
    layers: list[int],
    n: int = 5,
    hw: int = 8,
    size: int = 48,
) -> None:
    """Fake weight arrays in both accepted formats: segmentation as the fusion probe writes them (``keys``,
    per-input ``log_snr``, one softmax group per layer, ``split``: val → ``images_val.npy``), depth in the
    plain format (``timesteps``/``log_snrs``, no split → ``images.npy``); global weights with ``rows``,
    ``column_log_snr`` and one absent (NaN) cell."""
    model_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    T = len(timesteps)
    yy, xx = np.mgrid[0:hw, 0:hw] / (hw - 1)

    def maps(k: int, shift: int) -> np.ndarray:
        logits = np.stack(
            [
                np.stack(
                    [3 * np.sin(3 * xx + t + shift + i) * yy + rng.normal(0, 0.3, (hw, hw)) for t in range(k)]
                )
                for i in range(n)
            ]
        )
        return _softmax(logits, axis=1).astype(np.float32)

    two = layers[:2]
    seg = np.concatenate([maps(T, 0), maps(T, 2)], axis=1)  # (n, 2T, h, w): a softmax per layer
    seg_meta = {
        "task": "segmentation",
        "mode": "spatial",
        "group_by": "layer",
        "keys": [[layer, t] for layer in two for t in timesteps],
        "inputs": [f"L{layer:03d}_T{t:g}" for layer in two for t in timesteps],
        "sources": [0] * (2 * T),
        "log_snr": [s for _ in two for s in log_snrs],
        "groups": [list(range(T)), list(range(T, 2 * T))],
        "split": "val",
        "image_ids": [f"v{i}" for i in range(n)],
        "backbone": "flux.1-dev",
        "weights": "default",
    }
    np.save(model_dir / "fusion_weights_segmentation.npy", seg)
    (model_dir / "fusion_weights_segmentation.json").write_text(json.dumps(seg_meta))
    np.save(model_dir / "fusion_weights_depth.npy", maps(T, 1))
    (model_dir / "fusion_weights_depth.json").write_text(
        json.dumps(
            {
                "timesteps": timesteps,
                "log_snrs": log_snrs,
                "layers": layers[:1],
                "backbone": "flux.1-dev",
                "weights": "default",
            }
        )
    )
    for task in ("segmentation", "depth"):
        g = _softmax(rng.normal(0, 1, (len(layers) * T,)), 0).reshape(len(layers), T).astype(np.float32)
        g[-1, 0] = np.nan
        np.save(model_dir / f"global_weights_{task}.npy", g)
        (model_dir / f"global_weights_{task}.json").write_text(
            json.dumps(
                {
                    "rows": [f"L{x:03d}" for x in layers],
                    "layers": layers,
                    "timesteps": timesteps,
                    "column_log_snr": log_snrs,
                    "axes": "layer, timestep",
                    "backbone": "flux.1-dev",
                    "weights": "default",
                }
            )
        )
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    ims = np.stack(
        [np.stack([xx * (i + 1) / n, yy, 0.5 + 0.5 * np.sin(6 * xx * yy + i)], -1) for i in range(n)]
    )
    np.save(model_dir / "images_val.npy", np.clip(ims, 0, 1).astype(np.float32))
    np.save(model_dir / "images.npy", np.clip(ims[:, ::-1], 0, 1).astype(np.float32))


def write_predictions(
    model_dir: Path, backbone: str, weights: str, seed: int, n: int = 4, size: int = 24
) -> None:
    """Fake saved predictions/targets of the best cells (same targets for every model)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    t_rng, rng = np.random.default_rng(0), np.random.default_rng(seed)
    seg = t_rng.integers(0, 5, (n, size, size)).astype(np.float32)
    seg[:, :2] = 255
    sal = (t_rng.random((n, size, size)) > 0.6).astype(np.float32)
    depth = t_rng.uniform(1, 8, (n, size, size)).astype(np.float32)
    depth[:, -2:] = 0
    preds = {
        "segmentation": np.where(rng.random(seg.shape) < 0.3, rng.integers(0, 5, seg.shape), seg),
        "saliency": np.clip(sal + rng.normal(0, 0.35, sal.shape), 0, 1),
        "depth": depth * rng.uniform(0.7, 1.4, depth.shape),
    }
    for task, target in (("segmentation", seg), ("saliency", sal), ("depth", depth)):
        np.save(model_dir / f"{task}_pred.npy", preds[task].astype(np.float32))
        np.save(model_dir / f"{task}_target.npy", target)
        (model_dir / f"{task}.json").write_text(
            json.dumps(
                {"backbone": backbone, "weights": weights, "task": task, "layer": "7", "timestep": "none"}
            )
        )
    if not (model_dir / "images.npy").is_file():
        np.save(
            model_dir / "images.npy", np.random.default_rng(2).random((n, size, size, 3)).astype(np.float32)
        )


def write_cache(
    root: Path,
    name: str,
    weights: str,
    fhash: str,
    feats: dict[tuple[int, Any], np.ndarray],
    log_snrs: dict[tuple[int, Any], float | None] | None = None,
    shard_size: int = 4,
    image_ids: list[str] | None = None,
) -> Path:
    """A complete feature cache directory (manifest format 1) holding ``feats[(layer, t)]`` of shape
    (N, h, w, C), split into shards of ``shard_size`` images."""
    from backbones.store import FORMAT_VERSION, key_stem

    path = root / f"{name.replace(':', '_')}-scenes-train-{fhash}"
    n = len(next(iter(feats.values())))
    num_shards = math.ceil(n / shard_size)
    features = []
    for key, a in feats.items():
        stem = key_stem(key)
        (path / "shards" / stem).mkdir(parents=True, exist_ok=True)
        for s in range(num_shards):
            np.save(
                path / "shards" / stem / f"{s:05d}.npy",
                a[s * shard_size : (s + 1) * shard_size].astype(np.float16),
            )
        features.append(
            {
                "layer": key[0],
                "timestep": key[1],
                "log_snr": (log_snrs or {}).get(key),
                "stem": stem,
                "shape": list(a.shape),
            }
        )
    manifest = {
        "format": FORMAT_VERSION,
        "hash": fhash,
        "fingerprint": {"adapter": {"backbone": name, "weights": weights}},
        "backbone": {"name": name, "weights": weights},
        "num_images": n,
        "image_ids": image_ids or [f"img{i:03d}" for i in range(n)],
        "num_shards": num_shards,
        "shard_size": shard_size,
        "features": features,
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def fake_results_dir(
    root: Path,
    seeds: tuple[int, ...] = (0, 1),
    caches: bool = True,
    tasks: tuple[str, ...] = tuple(TASK_METRICS),
) -> Path:
    """A results directory with every input the report can use: timesteps, fusion and combination rows,
    weight arrays, saved predictions, per-class IoUs, and (optionally) two small feature caches."""
    rdir = root / "results" / "fake"
    rdir.mkdir(parents=True)
    df = synthetic_rows(seeds, tasks=tasks)
    rng = np.random.default_rng(3)
    cache_root = root / "cache"
    if caches:
        x = rng.normal(0, 1, (10, 4, 4, 6))
        flux = {
            (5, 0.0): x,
            (5, 0.5): x @ np.linalg.qr(rng.normal(size=(6, 6)))[0] + 0.5 * rng.normal(0, 1, x.shape),
            (15, 0.0): np.tanh(x[..., :5] * 2),
            (15, 0.5): rng.normal(0, 1, (10, 4, 4, 5)),
        }
        write_cache(
            cache_root,
            "flux.1-dev",
            "default",
            "fluxhash0001",
            flux,
            {(5, 0.0): math.inf, (5, 0.5): 0.0, (15, 0.0): math.inf, (15, 0.5): 0.0},
        )
        up = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
        dino = {(3, None): up[..., :4] + 0.2 * rng.normal(0, 1, (10, 8, 8, 4)), (7, None): up**2}
        write_cache(cache_root, "dinov3-vitb16", "default", "dinohash0001", dino)
        df.loc[df["backbone"] == "flux.1-dev", "cache_hash"] = "fluxhash0001"
        df.loc[(df["backbone"] == "dinov3-vitb16") & (df["weights"] == "default"), "cache_hash"] = (
            "dinohash0001"
        )
    df.to_csv(rdir / "results.csv", index=False)
    (rdir / "config.yaml").write_text(f"name: fake\nextract:\n  cache_dir: {cache_root}\n")
    ts = [0.0, 0.25, 0.5, 0.75]
    write_weight_artifacts(
        rdir / "heads" / "flux.1-dev-default", ts, [flow_log_snr(t) for t in ts], [5, 15, 30]
    )
    for i, (b, w) in enumerate(
        [("flux.1-dev", "default"), ("dinov3-vitb16", "default"), ("flux.1-dev+dinov3-vitb16", "default")]
    ):
        write_predictions(rdir / "heads" / f"{b}-{w}", b, w, seed=10 + i)
    pc = []
    classes = ["background", "floor", "sphere", "cube", "cylinder", "cone"]
    for b, w, probe, base in [
        ("flux.1-dev", "default", "fusion-spatial", 0.4),
        ("dinov3-vitb16", "default", "ridge", 0.45),
        ("dinov3-vitb16", "random", "ridge", 0.1),
        ("flux.1-dev+dinov3-vitb16", "default", "fusion-spatial", 0.5),
    ]:
        for k, c in enumerate(classes):
            pc.append(
                {
                    "backbone": b,
                    "weights": w,
                    "probe": probe,
                    "class": c,
                    "iou": base + 0.05 * math.sin(k + len(b)),
                    "seed": 0,
                }
            )
    pd.DataFrame(pc).to_csv(rdir / "per_class_iou.csv", index=False)
    return rdir
