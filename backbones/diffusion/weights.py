"""Weights of a diffusion backbone: the HF cache (downloaded only when online), a local diffusers folder, or
the real architecture with seeded random weights.

:func:`build_modules` returns the modules with a *weights identity* (``hf:<repo>@<snapshot>``,
``dir:<fingerprint>``, ``random:<config>:seed<n>:<init>``) that is part of every feature-cache hash, so
features of other weights are never reused. Offline, a missing file fails at once naming where it looked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backbones.diffusion.spec import DiffusionModules, DiffusionSpec
from backbones.random_init import RANDOM_INIT, standard_random_init
from backbones.weights import find_hf_file, hf_offline
from probebench.core.errors import ProbebenchError, WeightsNotFoundError

_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")


def _has_weights(folder: Path) -> bool:
    return any((folder / f).is_file() for f in _WEIGHT_FILES)


def hf_snapshot(repo_id: str, subfolders: Sequence[str], revision: str | None = None) -> Path:
    """A local snapshot of ``repo_id`` holding ``subfolders`` (configs and safetensors weights).

    Offline (``HF_HUB_OFFLINE=1``) nothing is downloaded and a missing file raises
    :class:`WeightsNotFoundError` at once, naming the cache directory and the files looked for.
    """
    first = find_hf_file(repo_id, (f"{subfolders[0]}/config.json",), revision)
    snap = first.parents[1]
    for sub in subfolders[1:]:
        find_hf_file(repo_id, (f"{sub}/config.json",), revision)
    missing = [s for s in subfolders if not _has_weights(snap / s)]
    if missing:
        if hf_offline():
            raise WeightsNotFoundError(
                f"Weights for {repo_id!r} ({', '.join(f'{m}/{_WEIGHT_FILES[0]}' for m in missing)}) are not in the "
                f"Hugging Face cache {snap} and HF_HUB_OFFLINE=1 forbids downloading. Pass weights=<local diffusers "
                "folder> or weights='random'."
            )
        from huggingface_hub import snapshot_download

        patterns = [
            p
            for s in subfolders
            for p in (
                f"{s}/*.json",
                f"{s}/diffusion_pytorch_model.safetensors",
                f"{s}/diffusion_pytorch_model-*.safetensors",
            )
        ]
        try:
            snap = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
        except Exception as e:
            raise WeightsNotFoundError(
                f"Could not download {repo_id!r} ({', '.join(subfolders)}): {e}"
            ) from e
    return snap


def folder_fingerprint(root: Path, subfolders: Sequence[str]) -> str:
    """A fast identity of a local diffusers folder: config contents + each weight file's size, head and tail.

    (Hashing multi-GB weight files in full would take minutes; size + first/last MiB catch any real change.)
    """
    h = hashlib.sha256()
    for sub in subfolders:
        for f in sorted((root / sub).glob("*")):
            if not f.is_file():
                continue
            h.update(f"{sub}/{f.name}".encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
                continue
            size = f.stat().st_size
            h.update(str(size).encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
                if size > 2 << 20:
                    fh.seek(size - (1 << 20))
                    h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def read_scheduler_config(root: Path | None) -> dict[str, Any]:
    """``scheduler/scheduler_config.json`` of a diffusers folder, or {} when absent."""
    if root is None:
        return {}
    path = root / "scheduler" / "scheduler_config.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _diffusers_class(name: str) -> type:
    import diffusers

    return getattr(diffusers, name)


def build_modules(
    spec: DiffusionSpec,
    weights: str,
    *,
    config: str = "full",
    random_seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[DiffusionModules, str, Path | None]:
    """Build (transformer, VAE) with random weights from the spec's configs, or load them from HF / a folder.

    Random weights: the transformer gets the standard random init of :mod:`backbones.random_init` (PyTorch's
    default layer init, seeded; no zero adaLN gates or output projections), the VAE diffusers' constructor init
    under the same seed — both random, as no trained VAE is on disk offline.

    Returns the modules, the weights identity recorded in cache hashes, and the local diffusers folder (None
    for random weights). The VAE is kept in float32; the transformer is cast to ``dtype``.
    """
    if config not in ("full", "tiny"):
        raise ProbebenchError(f"config must be 'full' or 'tiny', got {config!r}.")
    if config == "tiny" and weights != "random":
        raise ProbebenchError(f"config='tiny' builds a test-sized {spec.name} and needs weights='random'.")
    tcls, vcls = _diffusers_class(spec.transformer_cls), _diffusers_class(spec.vae_cls)
    subs = (spec.transformer_subfolder, spec.vae_subfolder)
    if weights == "random":
        tcfg = spec.tiny_transformer_config if config == "tiny" else spec.transformer_config
        vcfg = spec.tiny_vae_config if config == "tiny" else spec.vae_config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(random_seed)  # random weights are a pure function of the seed
            transformer = tcls(**tcfg)
            vae = vcls(**vcfg)
        standard_random_init(transformer, random_seed)  # the one documented init (backbones/random_init.py)
        weights_id, root = f"random:{config}:seed{random_seed}:{RANDOM_INIT}", None
        if dtype != torch.float32:  # as from_pretrained(torch_dtype=...) does, keeping its float32 modules
            nn.Module.to(transformer, dtype)
            keep = tuple(getattr(transformer, "_keep_in_fp32_modules", None) or ())
            for mod_name, module in transformer.named_modules():
                if keep and any(k in mod_name.split(".") for k in keep):
                    nn.Module.to(module, torch.float32)
    else:
        if weights == "default":
            root = hf_snapshot(spec.hf_id, subs, spec.revision)
            weights_id = f"hf:{spec.hf_id}@{root.name}"
        else:
            root = Path(weights).expanduser()
            if not root.is_dir() or not all((root / s / "config.json").is_file() for s in subs):
                raise WeightsNotFoundError(
                    f"weights={weights!r} must be a diffusers folder with {subs[0]}/ and {subs[1]}/ subfolders "
                    f"(each with config.json and safetensors weights), as in the HF repo {spec.hf_id!r}."
                )
            weights_id = f"dir:{folder_fingerprint(root, subs)}"
        transformer = tcls.from_pretrained(str(root), subfolder=subs[0], torch_dtype=dtype)
        vae = vcls.from_pretrained(str(root), subfolder=subs[1], torch_dtype=torch.float32)
    return DiffusionModules(transformer, vae), weights_id, root
