"""``probebench generate``: images with their dense labels from a frozen diffusion transformer and a bundle.

For each sample the family's own diffusers pipeline samples from seeded noise, conditioned on the sample's prompt;
the schedule is forced through the bundle's noise levels and the blocks its heads read are captured in the same
pass (:func:`backbones.diffusion.sampling.sample_with_features`); the heads decode segmentation / saliency /
depth (:func:`probes.bundle.decode_heads`) and the sample is written in the ``folder`` layout, which
``probebench run`` reads back (``data: {name: folder, root: OUT}``).

Sample ``i`` (id ``s000042``) has prompt ``prompts[i mod len(prompts)]`` and initial noise
``draw_noise(seed, id)``: a pure function of (seed, i). Samples are computed in fixed batches of
``batch_size`` consecutive ids (batch ``b`` = samples ``b·B … b·B + B − 1``): a matrix product's last bits depend
on how many rows it holds, so the batch is a unit of the computation like the extraction's ``compute_batch``, and
a dataset is the same bytes for any world size and any resume, given the same ``batch_size`` and, on a CPU, the same
threads per process (a reduction splits across threads; torchrun gives each process one thread by default, so
compare with ``--threads 1``); a rerun with other settings is refused. Under ``torchrun`` batch ``b`` goes to rank ``b mod W`` (``--batch-size 1``: sample ``i`` to rank
``i mod W``). A sample is done when its marker ``.generate/done/<id>.json`` exists (written after its files); a
rerun computes only batches with a sample not done and writes only those samples, so a killed run resumes and ends
with the same bytes. ``dataset.yaml`` (with the provenance) and the contact
sheet are written once every sample is done, last — a folder without ``dataset.yaml`` is not yet a dataset.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probebench.core.errors import ProbebenchError
from probebench.core.io import atomic_write_json

STATE_DIR = ".generate"
SPLIT = "train"
CONTACT_SHEET = "contact_sheet.png"


@dataclass
class GenerateConfig:
    """What ``probebench generate`` takes (every field is a CLI option)."""

    bundle: str
    out: str
    num_samples: int = 8
    prompts: list[str] = field(default_factory=lambda: [""])
    seed: int = 0
    steps: int | None = None  # None: the family's pipeline default (tiny-mmdit: its recipe's 40)
    guidance: float = 1.0
    # guidance's negative (None: the prompt the bundle's features were made with)
    negative_prompt: str | None = None
    tasks: list[str] | None = None
    batch_size: int = (
        8  # samples computed together: fixed batches of consecutive ids (see the module docstring)
    )
    device: str | None = None
    threads: int | None = None  # CPU threads (None: torch's default); part of what makes the bytes on a CPU
    split: str = SPLIT
    name: str | None = None  # the dataset's name (default: generated-<backbone>)
    contact_rows: int = 8

    def check(self) -> None:
        if self.num_samples < 1:
            raise ProbebenchError(f"num_samples must be at least 1, got {self.num_samples}.")
        if not self.prompts:
            raise ProbebenchError("Give at least one prompt (the empty prompt: '').")
        if self.batch_size < 1:
            raise ProbebenchError(f"batch_size must be at least 1, got {self.batch_size}.")
        if self.guidance < 1.0:
            raise ProbebenchError(
                f"guidance must be at least 1 (1: no classifier-free guidance), got {self.guidance}."
            )


def sample_id(i: int) -> str:
    return f"s{i:06d}"


@dataclass
class Generator:
    """A bundle's heads on a live adapter: sampling + decoding for batches of sample indices."""

    cfg: GenerateConfig
    bundle: Any
    adapter: Any
    nets: dict[str, Any]
    plan: Any
    steps: int
    concepts: Any = None  # the generator's concept maps, for heads trained with cues

    @classmethod
    def build(cls, cfg: GenerateConfig, adapter: Any = None) -> Generator:
        """Load the bundle, build (or check) the adapter it records, load the heads and plan the schedule."""
        import backbones
        from probes.bundle import load_bundle

        cfg.check()
        bundle = load_bundle(cfg.bundle).select(cfg.tasks)
        g = bundle.generator
        if adapter is None:
            adapter = backbones.create(
                g["backbone"],
                weights=g["weights"],
                device=cfg.device,
                dtype=g["dtype"],
                **({"image_size": g["image_size"]} if g.get("image_size") else {}),
                **g.get("options", {}),
            )
        bundle.check_generator(adapter)
        steps = int(cfg.steps or getattr(adapter, "default_steps", 28))
        plan = adapter.sampling_plan(steps, bundle.timesteps())
        nets = {t: n.to(adapter.device) for t, n in bundle.load_heads().items()}
        return cls(cfg, bundle, adapter, nets, plan, steps, bundle.concept_adapter(adapter))

    def prompt(self, i: int) -> str:
        return self.cfg.prompts[i % len(self.cfg.prompts)]

    def noise(self, i: int) -> Any:
        from backbones.diffusion.noise import draw_noise

        shape = self.adapter.sampling_latent_shape()
        return draw_noise(shape, seed=self.cfg.seed, image_id=sample_id(i), draw=0)

    def run(self, indices: Sequence[int]) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, int]]:
        """Images (B, H, W, 3) in [0, 1], each task's decoded labels (B, H, W), and the forwards spent."""
        import torch

        from backbones.diffusion.sampling import sample_with_features
        from probes.bundle import decode_heads

        conds = [self.adapter.sample_condition(self.prompt(i)) for i in indices]
        latents = torch.stack([self.noise(i) for i in indices])
        traj = sample_with_features(
            self.adapter,
            latents,
            self.plan,
            self.bundle.layers(),
            conditioning=conds,
            guidance=self.cfg.guidance,
            negative=None
            if self.cfg.negative_prompt is None
            else self.adapter.sample_condition(self.cfg.negative_prompt),
            concepts=self.concepts,
            concept_layers=self.bundle.cue_layers(),
        )
        size = tuple(traj.images.shape[-2:])
        decoded = decode_heads(self.bundle, self.nets, traj.features, size, traj.cues)
        labels = {
            t: h.target_spec.target_kind.as_target(decoded[t], h.target_spec)
            for t, h in self.bundle.heads.items()
        }
        return traj.images.permute(0, 2, 3, 1).cpu().numpy(), labels, traj.forwards

    def compute(self) -> dict[str, Any]:
        """What besides the settings changes a sample's last bits: the device type and, on a CPU, the thread count
        (a reduction splits across threads: 1 and 2 threads give different bytes)."""
        import torch

        kind = self.adapter.device.type
        return {"device_type": kind, "cpu_threads": torch.get_num_threads() if kind == "cpu" else None}

    def provenance(self) -> dict[str, Any]:
        """What ``dataset.yaml`` records of how the samples were made (nothing that depends on the world size)."""
        g = self.bundle.generator
        return {
            "generator": "probebench generate",
            "backbone": g["backbone"],
            "weights": g["weights"],
            "weights_id": g["adapter"].get("weights"),
            "image_size": self.adapter.image_size,
            "bundle": str(Path(self.cfg.bundle).resolve()),
            "bundle_sha256": self.bundle.hash,
            "heads": {
                t: {"variant": h.variant, "keys": [list(k) for k in h.keys]}
                for t, h in self.bundle.heads.items()
            },
            "prompts": list(self.cfg.prompts),
            "prompt_rule": "sample i: prompts[i mod len(prompts)]",
            "seed": self.cfg.seed,
            "noise": "sample i: draw_noise(seed, image_id='s%06d' % i, draw=0), the latent's shape",
            "num_samples": self.cfg.num_samples,
            "steps": self.steps,
            "guidance": self.cfg.guidance,
            "negative_prompt": self.cfg.negative_prompt
            if self.cfg.negative_prompt is not None
            else f"the bundle's conditioning ({g['adapter'].get('conditioning', {}).get('text_source')})",
            "features_from": "the conditional forward (the sample's prompt)",
            "sigmas": [float(s) for s in self.plan.sigmas],
            "capture_steps": {int(k): float(v) for k, v in sorted(self.plan.capture.items())},
            "clean_forward": bool(self.plan.clean),
            "forwards_per_sample": len(self.plan.sigmas) * (2 if self.cfg.guidance > 1 else 1)
            + int(self.plan.clean),
            "sampler": "diffusers " + type(self.adapter.sampling_pipeline()).__name__,
            **(
                {"cues": {**self.bundle.cues["concepts"], "layers": self.bundle.cue_layers()}}
                if self.bundle.cues
                else {}
            ),
            "compute": self.compute(),
        }


def _done_dir(out: Path) -> Path:
    return out / STATE_DIR / "done"


NOT_SETTINGS = ("out", "device", "threads", "contact_rows")  # where and how it runs, not what it makes


def generation_settings(cfg: GenerateConfig, bundle_hash: str | None, **made: Any) -> dict[str, Any]:
    """What a generation's samples are made of (recorded in ``.generate/settings.json``; a rerun into the folder
    must match it): ``cfg``'s fields but :data:`NOT_SETTINGS`, the bundle's hash, and ``made`` (``steps`` as
    resolved, ``compute``)."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in NOT_SETTINGS}
    settings.update(bundle_sha256=bundle_hash, **made)
    return settings


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """A rerun into ``out`` must be the same generation (else its samples would mix two settings)."""
    path = out / STATE_DIR / "settings.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != settings:
            diffs = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
            hint = (
                " (on a CPU the thread count changes a sample's last bits: pass --threads)"
                if "compute" in diffs
                else ""
            )
            raise ProbebenchError(
                f"{out} holds samples of another generation (different {', '.join(diffs)}){hint}; choose another "
                "--out or delete it."
            )
    else:
        atomic_write_json(path, settings)


def generate(cfg: GenerateConfig, *, adapter: Any = None, progress: bool = True) -> Path:
    """Generate ``cfg.num_samples`` labelled samples into ``cfg.out`` (this rank's share under torchrun); the
    rank that finds every sample done writes the contact sheet and ``dataset.yaml``. Returns the output folder.
    ``cfg.threads`` holds for the call (the previous thread count is restored)."""
    import torch

    before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(int(cfg.threads))
    try:
        return _generate(cfg, adapter, progress)
    finally:
        torch.set_num_threads(before)


def _generate(cfg: GenerateConfig, adapter: Any, progress: bool) -> Path:
    import torch
    from tqdm.auto import tqdm

    from backbones.store import dist_info
    from tasks.folder_io import write_sample

    gen = Generator.build(cfg, adapter)
    out = Path(cfg.out)
    rank, world = dist_info()
    settings = generation_settings(cfg, gen.bundle.hash, steps=gen.steps, compute=gen.compute())
    if rank == 0:
        _done_dir(out).mkdir(parents=True, exist_ok=True)
        _check_settings(out, settings)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    _check_settings(out, settings)
    done = _done_dir(out)
    n, size = cfg.num_samples, cfg.batch_size
    batches = [list(range(s, min(s + size, n))) for s in range(0, n, size)][rank::world]
    todo = [(b, [i for i in b if not (done / f"{sample_id(i)}.json").is_file()]) for b in batches]
    todo = [(b, m) for b, m in todo if m]
    specs = {t: h.target_spec for t, h in gen.bundle.heads.items()}
    bar = tqdm(
        total=sum(len(m) for _, m in todo),
        desc=f"generate (rank {rank}/{world})",
        unit="sample",
        disable=not progress,
    )
    for batch, missing in todo:
        images, labels, forwards = gen.run(
            batch
        )  # the whole batch: its numbers do not depend on what is done
        for j, i in enumerate(batch):
            if i not in missing:
                continue
            sid = sample_id(i)
            write_sample(out, cfg.split, sid, images[j], {t: labels[t][j] for t in specs}, specs)
            atomic_write_json(
                done / f"{sid}.json",
                {"id": sid, "prompt": gen.prompt(i), "seed": cfg.seed, "forwards": forwards},
            )
        bar.update(len(missing))
    bar.close()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    missing = [i for i in range(cfg.num_samples) if not (done / f"{sample_id(i)}.json").is_file()]
    if rank == 0 and not missing:
        finish(out, gen, specs)
    return out


def finish(out: Path, gen: Generator, specs: dict[str, Any]) -> None:
    """The samples table, the contact sheet and, last, ``dataset.yaml``."""
    import pandas as pd

    from analysis.contact_sheet import contact_sheet
    from tasks.folder_io import write_meta

    cfg = gen.cfg
    ids = [sample_id(i) for i in range(cfg.num_samples)]
    table = pd.DataFrame(
        {"id": ids, "prompt": [gen.prompt(i) for i in range(cfg.num_samples)], "seed": cfg.seed}
    )
    table.to_csv(out / "samples.csv", index=False)
    contact_sheet(
        out, cfg.split, ids[: cfg.contact_rows], specs, [gen.prompt(i) for i in range(cfg.contact_rows)]
    )
    name = cfg.name or f"generated-{gen.bundle.generator['backbone']}"
    write_meta(out, name, specs, gen.provenance())


def clear(out: str | Path) -> None:
    """Delete a generated folder (tests, ``--force``)."""
    shutil.rmtree(out, ignore_errors=True)
