"""Generation bundles: a run's trained heads plus everything generation needs to trust them (MMDiff's generator).

A bundle is a folder::

    bundle.json              format, generator, tasks, source (below)
    heads/<task>.safetensors the run's head files, copied (each carries its own spec: see probes.training.head_spec)

- ``generator``: the backbone config the heads' features came from (name, weights, options, image size, dtype,
  ``pool_to``) and the adapter fingerprint recorded in the feature cache they were trained on (weights identity
  with its content hash or snapshot, conditioning with the prompt embeddings' hash, VAE factors, schedule).
  :meth:`Bundle.check_generator` compares a live adapter against it and names both sides of every difference.
- ``tasks``: per task the head file and its sha256, the probe variant (``fusion-spatial``...), the probe seed
  chosen on the validation split and its validation scores, the inputs ((layer, timestep) in the backbone's
  native units), the label space (``target_spec``) and the objective options that decode its outputs.
- ``source``: where it was exported from (run directory, config hash, stage, git commit).

The bundle's identity (:attr:`Bundle.hash`) is the sha256 of ``bundle.json``, which holds every head file's
sha256; a head whose file no longer matches is refused when loaded.

:func:`decode_heads` applies the heads to features read during sampling, through the same steps their training
inputs took — the cache's pooling (``pool_to``), float16 storage, resampling to the first input's grid — so a
head sees at generation what it saw in training. The bundle is written by ``probebench export-bundle``
(:mod:`probebench.bundles`); this module only reads it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probebench.core.errors import ProbebenchError
from tasks.base import TargetSpec

BUNDLE_FILE = "bundle.json"
FORMAT = 1
# adapter fingerprint fields that change the features a head reads (the compute device and batch do not)
IDENTITY_FIELDS = ("backbone", "family", "weights", "image_size", "dtype", "conditioning", "vae", "schedule")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class BundleHead:
    """One task's head in a bundle (see the module docstring for the fields)."""

    task: str
    file: str
    sha256: str
    variant: str
    probe_seed: int | None
    val: dict[str, float]
    spec: dict[str, Any]

    @property
    def keys(self) -> list[tuple[int, Any]]:
        """The (layer, native timestep) of each input, in the head's order."""
        return [(int(i["layer"]), i["timestep"]) for i in self.spec["inputs"]]

    @property
    def target_spec(self) -> TargetSpec:
        d = dict(self.spec["target_spec"])
        d["class_names"] = tuple(d.get("class_names") or ())
        return TargetSpec(**d)


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle (:func:`load_bundle`)."""

    root: Path
    generator: dict[str, Any]
    heads: dict[str, BundleHead]
    source: dict[str, Any]
    hash: str
    cues: dict[str, Any] | None = None  # the concept maps the heads read beside the features (export's _cues)

    @property
    def tasks(self) -> list[str]:
        return list(self.heads)

    def select(self, tasks: Iterable[str] | None) -> Bundle:
        """The bundle restricted to ``tasks`` (None: all); a task it has no head for is an error naming those it
        has."""
        if tasks is None:
            return self
        tasks = list(tasks)
        missing = [t for t in tasks if t not in self.heads]
        if missing:
            raise ProbebenchError(
                f"Bundle {self.root} has no head for {', '.join(map(repr, missing))}; it has: "
                f"{', '.join(self.heads)}."
            )
        heads = {t: self.heads[t] for t in tasks}
        return Bundle(self.root, self.generator, heads, self.source, self.hash, self.cues)

    def layers(self) -> list[int]:
        return sorted({k[0] for h in self.heads.values() for k in h.keys})

    def cue_layers(self) -> list[int]:
        """The concept-map layers the heads' cues read (none without cues)."""
        return sorted(
            {
                int(c["layer"])
                for h in self.heads.values()
                for i in h.spec["inputs"]
                for c in i.get("cues", [])
            }
        )

    def concept_adapter(self, adapter: Any) -> Any:
        """The generator's concept maps for the heads' cues (None without cues), checked to be those the heads
        were trained with (the concept words' embeddings, score and output: one error naming both sides)."""
        if not self.cues:
            return None
        from backbones.diffusion.concepts import concept_maps

        cm = concept_maps(adapter, self.cues["concepts"])
        want, got = self.cues["adapter"].get("concepts"), cm.fingerprint().get("concepts")
        if json.dumps(want, sort_keys=True) != json.dumps(got, sort_keys=True):
            raise ProbebenchError(
                f"Bundle {self.root}: the generator's concept maps are not those its heads' cues were trained on:\n"
                f"  bundle {json.dumps(want, sort_keys=True)}\n  generator {json.dumps(got, sort_keys=True)}"
            )
        return cm

    def timesteps(self) -> list[float]:
        """Every noise level a head reads, in native units, descending."""
        return sorted({float(k[1]) for h in self.heads.values() for k in h.keys}, reverse=True)

    def check_generator(self, adapter: Any) -> None:
        """One error naming both sides of every difference between the adapter the heads were trained on and
        ``adapter`` (weights identity, image size, conditioning, dtype, ...)."""
        want = self.generator["adapter"]
        got = adapter.fingerprint()
        diffs = [
            f"{k}: bundle {json.dumps(want.get(k), sort_keys=True)} vs generator {json.dumps(got.get(k), sort_keys=True)}"
            for k in IDENTITY_FIELDS
            if json.dumps(want.get(k), sort_keys=True) != json.dumps(got.get(k), sort_keys=True)
        ]
        if diffs:
            raise ProbebenchError(
                f"Bundle {self.root} was trained on features of another generator than {adapter.name} "
                f"({adapter.weights}):\n  "
                + "\n  ".join(diffs)
                + "\nGenerate with the backbone, weights, image size, dtype and options the bundle records "
                "(`probebench generate` builds them from the bundle), or export a bundle from a run on this one."
            )

    def load_heads(self) -> dict[str, torch.nn.Module]:
        """Each task's head, rebuilt from its own file (eval mode)."""
        from probes.fusion import load_fusion_head

        return {t: load_fusion_head(self.root / h.file)[0] for t, h in self.heads.items()}


def load_bundle(path: str | Path) -> Bundle:
    """A bundle folder (or its ``bundle.json``), its head files checked against their recorded sha256."""
    root = Path(path)
    if root.name == BUNDLE_FILE:
        root = root.parent
    meta_path = root / BUNDLE_FILE
    if not meta_path.is_file():
        what = "does not exist" if not root.exists() else f"holds no {BUNDLE_FILE}"
        raise ProbebenchError(
            f"{root} {what}: a generation bundle is a folder written by `probebench export-bundle RUN_DIR`."
        )
    raw = meta_path.read_bytes()
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise ProbebenchError(
            f"{meta_path}: bundle format {meta.get('format')!r}, this version reads {FORMAT}."
        )
    heads = {}
    for task, h in meta["tasks"].items():
        f = root / h["file"]
        if not f.is_file():
            raise ProbebenchError(f"Bundle {root}: the {task} head {h['file']} is missing.")
        if file_sha256(f) != h["sha256"]:
            raise ProbebenchError(
                f"Bundle {root}: {h['file']} does not match its recorded sha256 (changed after export); "
                "export the bundle again."
            )
        heads[task] = BundleHead(
            task, h["file"], h["sha256"], h["variant"], h.get("probe_seed"), dict(h.get("val", {})), h["spec"]
        )
    digest = hashlib.sha256(raw).hexdigest()
    return Bundle(root, meta["generator"], heads, meta.get("source", {}), digest, meta.get("cues"))


def head_input(feature: torch.Tensor, pool_to: int | None, grid: Sequence[int]) -> torch.Tensor:
    """A feature map (B, C, h, w) as the cache stored it (``pool_to`` pooling, float16), then resampled to the
    head's ``grid`` (its first input's) and rounded through float16, as the training sets hold their inputs."""
    from backbones.store import pool_features
    from probes.features import to_grid

    stored = pool_features(feature.float(), pool_to).half().float()
    return to_grid(stored, grid).half().float()


@torch.inference_mode()
def decode_heads(
    bundle: Bundle,
    nets: Mapping[str, torch.nn.Module],
    features: Mapping[tuple[int, float], torch.Tensor],
    size: Sequence[int],
    cues: Mapping[tuple[int, float], torch.Tensor] | None = None,
) -> dict[str, np.ndarray]:
    """Each task's decoded prediction (B, H, W) at image ``size`` from features keyed (layer, noise level) — and,
    for heads trained with cues, the concept maps ``cues`` keyed the same way, concatenated to each input as the
    training sets held them — as the training loop decodes (``Objective.prepare`` → bilinear to label size →
    ``Objective.decode``)."""
    from backbones.store import pool_features
    from probes.training import upsample_to

    pool_to = bundle.generator.get("pool_to")
    cue_pool = (bundle.cues or {}).get("pool_to")
    out: dict[str, np.ndarray] = {}
    for task, head in bundle.heads.items():
        inputs = head.spec["inputs"]
        grid = inputs[0]["grid"]
        xs = []
        for inp in inputs:
            key = (int(inp["layer"]), float(inp["timestep"]))
            if key not in features:
                raise ProbebenchError(f"The {task} head reads {key}, which sampling did not capture.")
            f = features[key]
            stored = list(pool_features(f[:1].float(), pool_to).shape[1:])
            if stored != [int(inp["dim"]), *map(int, inp["grid"])]:
                raise ProbebenchError(
                    f"The {task} head was trained on {key} maps of {inp['dim']} channels on a {inp['grid']} grid; "
                    f"the generator gives {stored[0]} channels on {stored[1:]}."
                )
            x = head_input(f, pool_to, grid)
            for c in inp.get("cues", []):
                ckey = (int(c["layer"]), float(c["timestep"]))
                if cues is None or ckey not in cues:
                    raise ProbebenchError(
                        f"The {task} head reads the cue map {ckey}, which sampling did not give."
                    )
                cue = cues[ckey]
                if pool_features(cue[:1].float(), cue_pool).shape[1] != int(c["dim"]):
                    raise ProbebenchError(
                        f"The {task} head was trained on {c['dim']}-channel cue maps at {ckey}; the generator "
                        f"gives {cue.shape[1]}."
                    )
                x = torch.cat([x, head_input(cue, cue_pool, grid)], 1)
            xs.append(x)
        spec = head.target_spec
        objective = spec.target_kind.objective(spec, head.spec.get("objective", {}), None)
        net = nets[task]
        device = next(net.parameters()).device
        raw = net([x.to(device) for x in xs]).float().cpu()
        out[task] = objective.decode(upsample_to(objective.prepare(raw), size)).numpy()
    return out
