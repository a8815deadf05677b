"""``probebench export-bundle RUN_DIR``: a run's trained fusion heads → a generation bundle (:mod:`probes.bundle`).

Which heads: one per task, of one probe variant (default ``fusion-spatial``, MMDiff's head; ``fusion-single`` is
the best-single-timestep control) and one model of the run (``--model``, needed when several have such heads).
Of the probe seeds a run fitted, the one with the best validation score on the task's main metric is taken
(cells and seeds are chosen on val, never on test); its validation scores go into the bundle.

The generator identity is the adapter fingerprint stored in the head's training feature cache (found from the
rows' ``cache_hash`` under the run's ``extract.cache_dir`` or ``--cache-dir``): what the heads' features really
came from, with the weights' content hash or snapshot, not what the config asks for today. A bundle is written
to a temporary folder and renamed into place, so a half-written bundle is never taken for one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from probebench.core.errors import ProbebenchError
from probebench.core.results import fmt_layers, fmt_timestep, git_commit, read_results
from probebench.core.rundir import HEADS_DIR, RunDir, model_slug
from probes.bundle import BUNDLE_FILE, FORMAT, file_sha256
from tasks.kinds import get_kind

DEFAULT_VARIANT = "fusion-spatial"


def _head_files(run: RunDir, variant: str, stage_label: str | None) -> list[dict[str, Any]]:
    """Every saved head of ``variant`` with a spec: {model, task, seed, path, meta, spec}."""
    from safetensors import safe_open

    found = []
    for d in sorted((run.path / HEADS_DIR).glob("*")):
        folder = d / stage_label if stage_label else d
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as h:
                meta = h.metadata() or {}
            name = meta.get("name", "")
            if name.split("/")[0] != variant:
                continue
            if "spec" not in meta:
                raise ProbebenchError(
                    f"{f} holds no head spec (heads saved before this version); refit the stage to export it."
                )
            spec = json.loads(meta["spec"])
            seed = meta.get("probe_seed")
            found.append(
                {
                    "model": d.name,
                    "task": spec["task"],
                    "seed": None if seed is None else int(seed),
                    "path": f,
                    "meta": meta,
                    "spec": spec,
                }
            )
    return found


def _distinct(values: list[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def _val_scores(rows: Any, head: dict[str, Any]) -> dict[str, float]:
    """The validation rows of one saved head (its model, variant, task, cell and seed) as {metric: value}; the
    cell labelled as result rows label it (distinct layers and timesteps in input order)."""
    meta, spec = head["meta"], head["spec"]
    layers = _distinct([i["layer"] for i in spec["inputs"]])
    times = _distinct([i["timestep"] for i in spec["inputs"]])
    mask = (
        (rows["probe"] == meta["name"].split("/")[0])
        & (rows["task"] == head["task"])
        & (rows["split"] == "val")
        & (rows["layer"] == fmt_layers(layers if len(layers) > 1 else layers[0]))
        & (rows["timestep"] == fmt_timestep(times if len(times) > 1 else times[0]))
    ).to_numpy(dtype=bool, copy=True)
    mask &= np.array(
        [model_slug(b, w) == head["model"] for b, w in zip(rows["backbone"], rows["weights"])], dtype=bool
    )
    if head["seed"] is not None:
        mask &= (rows["seed"] == head["seed"]).to_numpy(dtype=bool, copy=True)
    sel = rows[mask]
    return {str(m): float(v) for m, v in zip(sel["metric"], sel["value"])}


def _train_fingerprints(rows: Any, head: dict[str, Any], cache_dir: Path) -> list[dict[str, Any]]:
    """The extraction fingerprints of the head's training features, one per source (a head with cues: the
    backbone's, then the cue maps'), from their caches on disk."""
    meta = head["meta"]
    mask = ((rows["probe"] == meta["name"].split("/")[0]) & (rows["task"] == head["task"])).to_numpy(
        dtype=bool, copy=True
    )
    mask &= np.array(
        [model_slug(b, w) == head["model"] for b, w in zip(rows["backbone"], rows["weights"])], dtype=bool
    )
    sel = rows[mask]
    hashes = sorted(set(sel["cache_hash"].dropna()))
    sources = 1 + len(head["spec"].get("cues", {}).get("sources", []))
    if len(hashes) != 1 or len(hashes[0].split("+")) != sources:
        raise ProbebenchError(
            f"The {head['task']} {meta['name'].split('/')[0]} rows of {head['model']} name {hashes or 'no'} "
            "feature caches; a bundle needs the heads of one backbone's features (and, with cues, its cue maps')."
        )
    return [_cache_fingerprint(h, head, cache_dir) for h in hashes[0].split("+")]


def _cache_fingerprint(cache_hash: str, head: dict[str, Any], cache_dir: Path) -> dict[str, Any]:
    matches = sorted(cache_dir.expanduser().glob(f"*-{cache_hash}"))
    if not matches:
        raise ProbebenchError(
            f"The feature cache the {head['task']} head was trained on (hash {cache_hash}) is not in {cache_dir}: "
            "the bundle records the generator identity from it. Pass --cache-dir where the run's caches are (an "
            "`online` stage keeps none: extract its features once with `probebench extract`)."
        )
    d = matches[0]
    for name in ("manifest.json", "fingerprint.json"):  # a complete cache has its manifest
        if (d / name).is_file():
            return json.loads((d / name).read_text())["fingerprint"]  # type: ignore[no-any-return]
    raise ProbebenchError(f"{d} holds neither manifest.json nor fingerprint.json: not a feature cache.")


def _model_group(cfg: Any, model: str) -> list[Any]:
    """The backbone configs behind the model folder ``model``: one backbone, or a joint stage's group."""
    from probebench.pipeline import model_label

    one = [b for b in cfg.backbones if model_slug(*model_label([b])) == model and b.cells_from is None]
    if one:
        return one[:1]
    for stage in cfg.probes:
        if stage.backbones:
            group = [cfg.backbones[i] for i in stage.backbones]
            if model_slug(*model_label(group)) == model:
                return group
    raise ProbebenchError(f"No backbone of the run's config is {model!r}.")


def export_bundle(
    run_dir: str | Path,
    out: str | Path,
    *,
    variant: str = DEFAULT_VARIANT,
    model: str | None = None,
    tasks: list[str] | None = None,
    stage_label: str | None = None,
    cache_dir: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Write the bundle of ``run_dir``'s ``variant`` heads to the folder ``out`` (see the module docstring)."""
    from probebench.config import load_config

    run = RunDir(run_dir)
    run.check_results()
    out = Path(out)
    if (out / BUNDLE_FILE).exists() and not force:
        raise ProbebenchError(f"{out} already holds a bundle; pass --force to replace it.")
    cfg = load_config(run.config_file)
    rows = read_results(run.results_file)
    heads = _head_files(run, variant, stage_label)
    if not heads:
        variants = sorted({str(p) for p in rows["probe"].dropna().unique() if str(p).startswith("fusion")})
        raise ProbebenchError(
            f"{run.path} has no saved {variant!r} heads"
            + (f" under the stage label {stage_label!r}" if stage_label else "")
            + f". Fusion variants in its results: {', '.join(variants) or 'none'}."
        )
    models = sorted({h["model"] for h in heads})
    if model is None:
        if len(models) > 1:
            raise ProbebenchError(
                f"{run.path} has {variant} heads of {len(models)} models: {', '.join(models)}; choose one with "
                "--model."
            )
        model = models[0]
    elif model not in models:
        raise ProbebenchError(
            f"No {variant} heads of model {model!r} in {run.path}; models: {', '.join(models)}."
        )
    heads = [h for h in heads if h["model"] == model]
    if any(i["source"] != 0 for h in heads for i in h["spec"]["inputs"]):
        raise ProbebenchError(
            f"The {variant} heads of {model} read features of several backbones; generation reads one backbone "
            "(export a stage fitted on one)."
        )
    group = _model_group(cfg, model)
    cued = [bool(h["spec"].get("cues")) for h in heads]
    if any(cued) and not all(cued):
        raise ProbebenchError(f"Some {variant} heads of {model} read cue maps and some do not.")
    if len(group) > 1 and not (all(cued) and len(group) == 2 and group[1].concepts is not None):
        raise ProbebenchError(
            f"The {variant} heads of {model} read features of several backbones; generation reads one backbone "
            "and, as cues, its own concept maps (export a stage fitted on one, or with `cues: true` on [backbone, "
            "its concept maps])."
        )
    order = list(dict.fromkeys(rows["task"].astype(str)))  # the run's task order
    have = sorted({h["task"] for h in heads}, key=lambda t: (order.index(t) if t in order else len(order), t))
    if tasks is not None:
        missing = [t for t in tasks if t not in have]
        if missing:
            raise ProbebenchError(
                f"No {variant} head of {model} for {', '.join(missing)}; it has: {', '.join(have)}."
            )
        have = [t for t in have if t in tasks]
    backbone_cfg = group[0]
    chosen: dict[str, dict[str, Any]] = {}
    fingerprint: dict[str, Any] | None = None
    cue_fingerprint: dict[str, Any] | None = None
    cache_root = Path(cache_dir) if cache_dir is not None else Path(cfg.extract.cache_dir)
    for task in have:
        cands = [h for h in heads if h["task"] == task]
        kind = get_kind(cands[0]["spec"]["target_spec"]["kind"])
        scored = []
        for h in cands:
            val = _val_scores(rows, h)
            if kind.main_metric not in val:
                raise ProbebenchError(
                    f"{h['path']}: no validation {kind.main_metric} row in {run.results_file}."
                )
            scored.append((val[kind.main_metric], h, val))
        sign = 1.0 if kind.higher_is_better else -1.0  # ties: the lowest seed
        best = max(scored, key=lambda s: (sign * s[0], -(s[1]["seed"] or 0)))
        chosen[task] = {"head": best[1], "val": best[2]}
        fp, *cue_fp = _train_fingerprints(rows, best[1], cache_root)
        if fingerprint is not None and fp["adapter"] != fingerprint["adapter"]:
            raise ProbebenchError(
                f"The {variant} heads of {model} were trained on features of different adapters."
            )
        if cue_fp and cue_fingerprint is not None and cue_fp[0]["adapter"] != cue_fingerprint["adapter"]:
            raise ProbebenchError(f"The {variant} heads of {model} were trained on different cue maps.")
        fingerprint, cue_fingerprint = fp, (cue_fp[0] if cue_fp else None)
    assert fingerprint is not None
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "heads").mkdir(parents=True)
    tasks_meta = {}
    for task, c in chosen.items():
        h = c["head"]
        rel = f"heads/{task}.safetensors"
        shutil.copyfile(h["path"], tmp / rel)
        tasks_meta[task] = {
            "file": rel,
            "sha256": file_sha256(tmp / rel),
            "variant": variant,
            "probe_seed": h["seed"],
            "val": c["val"],
            "spec": h["spec"],
            "from": str(h["path"].relative_to(run.path)),
        }
    adapter_fp = fingerprint["adapter"]
    bundle = {
        "format": FORMAT,
        "generator": {
            "backbone": backbone_cfg.name,
            "weights": backbone_cfg.weights,
            "options": dict(backbone_cfg.options),
            "image_size": int(adapter_fp.get("image_size") or backbone_cfg.image_size or 0) or None,
            "dtype": backbone_cfg.dtype,
            "pool_to": fingerprint.get("pool_to"),
            "adapter": adapter_fp,
        },
        "tasks": tasks_meta,
        **({"cues": _cues(group[1], cue_fingerprint, fingerprint)} if cue_fingerprint is not None else {}),
        "source": {
            "run_dir": str(run.path.resolve()),
            "run": cfg.name,
            "model": model,
            "variant": variant,
            "stage_label": stage_label,
            "config_hashes": sorted(set(rows[rows["probe"] == variant]["config_hash"].dropna().astype(str))),
            "git_commit": git_commit(),
        },
    }
    (tmp / BUNDLE_FILE).write_text(json.dumps(bundle, indent=1) + "\n")  # tasks in the run's order
    (tmp / "README.md").write_text(_readme(bundle))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _cues(cue_cfg: Any, cue_fp: dict[str, Any], fp: dict[str, Any]) -> dict[str, Any]:
    """The bundle's ``cues``: the concept maps the heads read beside the features — their spec (words, score,
    output, background), the cue cache's adapter fingerprint and pooling — checked to be the generator's own
    (the same model, weights, image size, conditioning...: the fingerprint fields but the backbone's name)."""
    from backbones.diffusion.concepts import ConceptSpec
    from probes.bundle import IDENTITY_FIELDS

    want, got = fp["adapter"], cue_fp["adapter"]
    diffs = [k for k in IDENTITY_FIELDS if k != "backbone" and want.get(k) != got.get(k)]
    if diffs or "concepts" not in got:
        raise ProbebenchError(
            "The heads' cue maps were not made by the generator itself "
            + (f"(they differ in {', '.join(diffs)})" if diffs else "(the cue cache holds no concept maps)")
            + ": generation computes the cues with the generator's own concept stream."
        )
    spec = ConceptSpec.parse(cue_cfg.concepts)
    return {
        "concepts": {
            "words": list(spec.words),
            "score": spec.score,
            "output": spec.output,
            "background": list(spec.background),
        },
        "adapter": got,
        "pool_to": cue_fp.get("pool_to"),
    }


def _readme(bundle: dict[str, Any]) -> str:
    g = bundle["generator"]
    lines = [
        "# Generation bundle",
        "",
        f"Generator: {g['backbone']} ({g['weights']}), {g['image_size']} px, {g['dtype']}, "
        f"weights {g['adapter'].get('weights')}.",
        "",
        "| task | variant | probe seed | inputs (layer, timestep) | validation |",
        "|---|---|---|---|---|",
    ]
    for task, t in bundle["tasks"].items():
        keys = ", ".join(f"({i['layer']}, {i['timestep']})" for i in t["spec"]["inputs"])
        val = ", ".join(f"{m} {v:.3f}" for m, v in t["val"].items())
        lines.append(f"| {task} | {t['variant']} | {t['probe_seed']} | {keys} | {val} |")
    if "cues" in bundle:
        c = bundle["cues"]["concepts"]
        lines += ["", f"Cues: concept maps ({c['output']}, {c['score']}) of {', '.join(c['words'])}."]
    lines += ["", "Generate: `probebench generate <this folder> --out DIR --num-samples N`.", ""]
    return "\n".join(lines)
