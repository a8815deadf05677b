"""Is the synthetic data any good? The measurements behind GENERATION.md, on the embedded default (tiny-mmdit on
scenes), from a quickstart run's fusion heads.

    probebench run configs/quickstart.yaml output_dir=R            # the heads (or any run with fusion heads)
    python -m recipes.generation_study --run R/quickstart --out S  # → S/generation_study.json + the tables

What it does, each part reading what ``probebench`` writes (nothing here re-implements generation or probing):

1. **Bundles**: ``export-bundle`` of the run's ``fusion-spatial`` heads (MMDiff's multi-timestep head) and its
   ``fusion-single`` heads (the best single timestep, chosen on val) of ``--model``.
2. **Generated sets**: ``--samples`` samples per sample seed (``--sample-seeds``) with the empty prompt (the
   conditioning the heads were trained on), once per bundle. Both bundles' heads read noise levels already on
   the 40-step schedule, so the two sets hold the same images (checked) and differ only in their labels.
3. **Real renders** in the same folder form (``probebench scenes export``: train ``--samples``, val 48, test
   ``--test``), the quickstart's scenes (64 px, data seed 0): the fusion heads were trained on this train split.
4. **Independent labeller**: EfficientNet-Lite0 (ImageNet weights) + a linear head (BN + 1×1 conv) at its best
   layer (ridge screen on val), trained on the real train renders, ``--probe-seeds`` fits. Its predictions on
   each generated set are scored against the in-pass labels with the task metrics (``data.test`` = the generated
   folder); the reference point is the same labeller against the renderer's ground truth on real test renders.
5. **Downstream**: the same probe recipe trained on N generated pairs vs N real renders vs N real + all generated,
   cells and early stopping on the real val renders, all scored on the real test renders.
6. **Caption control**: ``background floor <class>`` for each object class, ``--class-samples`` samples each,
   without guidance and with guidance 3 against ``background floor`` (the recipe's object guidance): how often the
   decoded segmentation holds the asked class (≥ 1 % of the pixels), against how often the project's class
   classifier (``recipes.tiny_mmdit.evaluate.ClassProbe``: logistic regression on EfficientNet-Lite0 features of
   single-object renders) names it from the image.

Error bars: mean ± std over probe seeds (3 fits of the labeller / downstream heads) and, separately, over sample
seeds (independent generated sets). Every step is resumable (generation's done markers, the pipeline's
only-missing rows), so an interrupted study reruns only what is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from probebench.bundles import export_bundle
from probebench.config import load_config
from probebench.core.results import read_results
from probebench.generate import GenerateConfig, generate, sample_id
from probebench.pipeline import run

OBJECTS = ("sphere", "box", "cylinder", "cone", "torus")
MAIN = {"segmentation": "mIoU", "saliency": "maxF", "depth": "rmse"}
LABELLER = [
    {"name": "timm:efficientnet_lite0", "weights": "default", "layers": "all", "image_size": 128},
]
PROBES = [
    {"name": "ridge", "params": {"lambdas": [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0], "class_balanced": True}},
    {"name": "linear", "cells": "best"},
]


def _link_split(src: Path, split: str, dst: Path, dst_split: str, prefix: str = "") -> None:
    """Hard-link every file of ``src/<split>/`` into ``dst/<dst_split>/`` (ids prefixed with ``prefix``)."""
    for f in sorted((src / split).rglob("*.png")):
        rel = f.relative_to(src / split)
        target = dst / dst_split / rel.parent / f"{prefix}{rel.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(f, target)


def _folder(dst: Path, name: str, parts: Sequence[tuple[Path, str, str, str]], meta_from: Path) -> Path:
    """A folder dataset assembled from ``(source root, split, into split, id prefix)`` parts, with the label space
    of ``meta_from``'s dataset.yaml (written last)."""
    if (dst / "dataset.yaml").is_file():
        return dst
    for src, split, into, prefix in parts:
        _link_split(src, split, dst, into, prefix)
    meta = yaml.safe_load((meta_from / "dataset.yaml").read_text())
    meta["name"] = name
    meta["source"] = {
        "assembled_from": [
            f"{src}/{split} → {into} (ids prefixed {prefix!r})" for src, split, into, prefix in parts
        ]
    }
    (dst / "dataset.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return dst


def _run(
    name: str, out: Path, data_root: Path, test: dict[str, Any], probe_seeds: Sequence[int], cache: Path
) -> Path:
    cfg = load_config(
        None,
        [
            f"name={name}",
            f"output_dir={out / 'runs'}",
            f"extract.cache_dir={cache}",
            f"probe_seeds={list(probe_seeds)}",
            "data.name=folder",
            f"data.root={data_root}",
            "data.max_train=null",
            "data.max_val=null",
            "data.max_test=null",
            f"data.test={json.dumps(test)}",
            f"backbones={json.dumps(LABELLER)}",
            f"probes={json.dumps(PROBES)}",
        ],
    )
    return run(cfg, progress=False)


def _scores(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Test scores of the linear heads per task: the main metric's mean, std and values over probe seeds."""
    df = read_results(run_dir)
    out = {}
    for task, metric in MAIN.items():
        v = df[(df.probe == "linear") & (df.split == "test") & (df.task == task) & (df.metric == metric)]
        vals = [float(x) for x in v.sort_values("seed")["value"]]
        out[task] = {
            "metric": metric,
            "mean": float(np.mean(vals)),
            "std": float(np.std(vals)),
            "values": vals,
        }
    return out


def _digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def caption_control(bundle: Path, out: Path, per_class: int, seed: int) -> dict[str, Any]:
    """Share of ``background floor <class>`` samples whose decoded segmentation holds the class, and whose image
    the class classifier names as it, without guidance and with object guidance 3."""
    import torch

    import tasks
    from backbones.tiny.model import CLASS_NAMES
    from recipes.tiny_mmdit.evaluate import ClassProbe, Features

    probe = ClassProbe(Features(), images=2000, resolution=64)
    result: dict[str, Any] = {"classifier_fitted_on": probe.fitted_on}
    for guidance in (1.0, 3.0):
        rows = {}
        for k, obj in enumerate(OBJECTS):
            d = out / f"g{guidance:g}-{obj}"
            generate(
                GenerateConfig(
                    bundle=str(bundle),
                    out=str(d),
                    num_samples=per_class,
                    prompts=[f"background floor {obj}"],
                    seed=seed,
                    guidance=guidance,
                    negative_prompt="background floor" if guidance > 1 else None,
                    tasks=["segmentation"],
                ),
                progress=False,
            )
            ds = tasks.create("folder", split="train", root=str(d))
            seg = np.stack([ds.load_target(i, "segmentation") for i in range(per_class)])
            rgb = torch.stack([torch.as_tensor(ds.load_image(i)) for i in range(per_class)]).permute(
                0, 3, 1, 2
            )
            cls = CLASS_NAMES.index(obj)
            in_seg = (seg == cls).mean(axis=(1, 2)) >= 0.01
            named = probe.clf.predict(probe.feats(rgb)) == k
            rows[obj] = {
                "segmentation_has_class": float(in_seg.mean()),
                "classifier_names_class": float(named.mean()),
                "both": float((in_seg & named).mean()),
                "agree": float((in_seg == named).mean()),
            }
        mean = {m: float(np.mean([r[m] for r in rows.values()])) for m in next(iter(rows.values()))}
        result[f"guidance_{guidance:g}"] = {"per_class": rows, "mean": mean}
    return result


def _pm(cell: dict[str, Any], digits: int = 3) -> str:
    return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"


def _over_seeds(cells: Sequence[dict[str, Any]], digits: int = 3) -> str:
    """Mean over sample seeds of the probe-seed means, ± their std over sample seeds."""
    means = [c["mean"] for c in cells]
    return f"{np.mean(means):.{digits}f} ± {np.std(means):.{digits}f}"


def tables(results: dict[str, Any]) -> str:
    """The study's numbers as the Markdown tables GENERATION.md quotes."""
    seeds = results["settings"]["sample_seeds"]
    lines = [
        "**Agreement with the independent labeller** (EfficientNet-Lite0 + linear head trained on real renders; its "
        "predictions on the generated images scored against the in-pass labels; mean ± std over "
        f"{len(results['settings']['probe_seeds'])} labeller fits, per sample seed; last column: mean ± std over "
        "the sample seeds):",
        "",
        "| labels | task (metric) | "
        + " | ".join(f"sample seed {s}" for s in seeds)
        + " | over sample seeds |",
        "|---|---|" + "---|" * (len(seeds) + 1),
    ]
    for task, metric in MAIN.items():
        ref = results["labeller_vs_renderer"][task]
        lines.append(
            f"| renderer's ground truth, real test renders (reference) | {task} ({metric}) | {_pm(ref)} |"
            + " |" * len(seeds)
        )
        for variant in ("fusion-spatial", "fusion-single"):
            cells = [results["labeller_vs_in_pass"][f"{variant}/seed{s}"][task] for s in seeds]
            lines.append(
                f"| in-pass, {variant} | {task} ({metric}) | "
                + " | ".join(_pm(c) for c in cells)
                + f" | {_over_seeds(cells)} |"
            )
    lines += [
        "",
        "**Downstream** (the same probe recipe trained on each training set; cells and early stopping on the real val "
        "renders; scored on the real test renders; mean ± std over probe seeds):",
        "",
        "| training set | " + " | ".join(f"{t} ({m})" for t, m in MAIN.items()) + " |",
        "|---|" + "---|" * len(MAIN),
    ]
    n = results["settings"]["samples"]
    names = {"real": f"{n} real renders"}
    names.update({f"generated/seed{s}": f"{n} generated (sample seed {s})" for s in seeds})
    names["real+generated"] = f"{n} real + {n * len(seeds)} generated"
    for key, label in names.items():
        row = results["downstream"][key]
        lines.append(f"| {label} | " + " | ".join(_pm(row[t]) for t in MAIN) + " |")
    ratio = {
        t: np.mean([results["downstream"][f"generated/seed{s}"][t]["mean"] for s in seeds])
        / results["downstream"]["real"][t]["mean"]
        for t in MAIN
    }
    lines += [
        "",
        "Generated ÷ real (means over probe and sample seeds): "
        + ", ".join(f"{t} {ratio[t]:.2f}" for t in MAIN)
        + " (RMSE: lower is better, so a ratio above 1 is worse).",
        "",
        "**Caption control** (`background floor <class>`; share of samples whose decoded segmentation holds the class "
        "on ≥ 1 % of the pixels, and whose image the class classifier names as it; "
        f"{results['settings']['class_samples']} samples per class):",
        "",
        "| guidance | class | segmentation holds it | classifier names it | both | segmentation and classifier agree |",
        "|---|---|---|---|---|---|",
    ]
    cc = results["caption_control"]
    for g in ("guidance_1", "guidance_3"):
        for cls, r in {**cc[g]["per_class"], "mean": cc[g]["mean"]}.items():
            lines.append(
                f"| {g.split('_')[1]} | {cls} | {r['segmentation_has_class']:.2f} | {r['classifier_names_class']:.2f} | "
                f"{r['both']:.2f} | {r['agree']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a run directory with fusion-spatial and fusion-single heads")
    p.add_argument("--model", default="tiny-mmdit-default")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--samples", type=int, default=160, help="N: generated samples per seed = real train renders"
    )
    p.add_argument("--test", type=int, default=128, help="real test renders")
    p.add_argument("--sample-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--probe-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--class-samples", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args(argv)
    out = Path(args.out)
    cache = out / "cache"
    bundles = {}
    for variant in ("fusion-spatial", "fusion-single"):
        d = out / "bundles" / variant
        if not (d / "bundle.json").is_file():
            export_bundle(args.run, d, variant=variant, model=args.model)
        bundles[variant] = d
    from tasks.scenes import export_scenes

    real = out / "real"
    if not (real / "dataset.yaml").is_file():
        shutil.rmtree(real, ignore_errors=True)
        export_scenes(
            real, {"train": args.samples, "val": 48, "test": args.test}, resolution=64, seed=0, progress=False
        )
    gen: dict[tuple[str, int], Path] = {}
    for variant, b in bundles.items():
        for s in args.sample_seeds:
            d = out / "generated" / f"{variant}-seed{s}"
            generate(
                GenerateConfig(
                    bundle=str(b),
                    out=str(d),
                    num_samples=args.samples,
                    prompts=[""],
                    seed=s,
                    batch_size=args.batch_size,
                ),
                progress=True,
            )
            gen[variant, s] = d
    ids = [sample_id(i) for i in range(args.samples)]
    same_images = all(
        _digest([gen["fusion-spatial", s] / "train" / "images" / f"{i}.png" for i in ids])
        == _digest([gen["fusion-single", s] / "train" / "images" / f"{i}.png" for i in ids])
        for s in args.sample_seeds
    )
    results: dict[str, Any] = {"settings": vars(args), "same_images_for_both_bundles": same_images}
    real_test = {"name": "folder", "root": str(real), "split": "test"}
    # 4. the labeller: reference on real test, then against each generated set's in-pass labels
    results["labeller_vs_renderer"] = _scores(
        _run("labeller-real", out, real, real_test, args.probe_seeds, cache)
    )
    agreement: dict[str, Any] = {}
    for (variant, s), d in gen.items():
        test = {"name": "folder", "root": str(d), "split": "train"}
        agreement[f"{variant}/seed{s}"] = _scores(
            _run(f"labeller-{variant}-seed{s}", out, real, test, args.probe_seeds, cache)
        )
    results["labeller_vs_in_pass"] = agreement
    # 5. downstream: trained on generated / real / real + generated, scored on real test
    downstream: dict[str, Any] = {"real": results["labeller_vs_renderer"]}
    for s in args.sample_seeds:
        root = _folder(
            out / "sets" / f"generated-seed{s}",
            f"generated-seed{s}",
            [(gen["fusion-spatial", s], "train", "train", ""), (real, "val", "val", "")],
            real,
        )
        downstream[f"generated/seed{s}"] = _scores(
            _run(f"downstream-generated-seed{s}", out, root, real_test, args.probe_seeds, cache)
        )
    mix = _folder(
        out / "sets" / "real+generated",
        "real+generated",
        [(real, "train", "train", "real-"), (real, "val", "val", "")]
        + [(gen["fusion-spatial", s], "train", "train", f"gen{s}-") for s in args.sample_seeds],
        real,
    )
    downstream["real+generated"] = _scores(
        _run("downstream-real+generated", out, mix, real_test, args.probe_seeds, cache)
    )
    results["downstream"] = downstream
    # 6. caption control
    results["caption_control"] = caption_control(
        bundles["fusion-spatial"], out / "captions", args.class_samples, seed=100
    )
    path = out / "generation_study.json"
    path.write_text(json.dumps(results, indent=1))
    (out / "generation_study.md").write_text(tables(results))
    print(path)
    return results


if __name__ == "__main__":
    main()
