"""Weights of a diffusion backbone: the HF cache (downloaded only when online), a local diffusers folder, or
the real architecture with seeded random weights.

:func:`resolve_weights` finds and checks the pipeline folder first — the right family (``model_index.json``),
every component a run needs present (configs, weights: ``.safetensors`` or, where a repo has none, ``.bin``,
which diffusers and transformers load with ``torch.load(weights_only=True)``; sharded indexes with all their
shards), a gated repo named as such — so a wrong or partial folder fails before gigabytes are read.
:func:`build_modules` then loads the transformer and VAE (or builds them with random weights) and returns them
with a *weights identity* (``hf:<repo>@<snapshot>``, ``dir:<fingerprint>``, ``random:<config>:seed<n>:<init>``)
that is part of every feature-cache hash, so features of other weights are never reused.
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
from backbones.weights import find_hf_file, gated_message, hf_offline, is_gated_error
from probebench.core.errors import ProbebenchError, WeightsNotFoundError

# weight file names by component type (diffusers models, transformers text encoders); safetensors first
WEIGHT_NAMES = {
    "model": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "encoder": ("model.safetensors", "pytorch_model.bin"),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "tokenizer.model", "vocab.json")
LEGACY_TRANSFORMER_CLASS = "Transformer2DModel"  # the DiT and PixArt repos' transformer/config.json say this


def component_type(subfolder: str) -> str:
    """``tokenizer`` / ``encoder`` / ``model`` for a pipeline subfolder name."""
    if subfolder.startswith("tokenizer"):
        return "tokenizer"
    return "encoder" if subfolder.startswith("text_encoder") else "model"


def missing_files(root: Path, subfolder: str) -> list[str]:
    """What a pipeline component lacks (``[]`` when complete): its config, its weights — one file, or an index
    with every shard it lists — or, for a tokenizer, any tokenizer file."""
    folder = root / subfolder
    kind = component_type(subfolder)
    if kind == "tokenizer":
        if any((folder / f).is_file() for f in TOKENIZER_FILES):
            return []
        return [f"{subfolder}/ (one of {', '.join(TOKENIZER_FILES)})"]
    missing = [] if (folder / "config.json").is_file() else [f"{subfolder}/config.json"]
    names = WEIGHT_NAMES[kind]
    for name in names:
        if (folder / name).is_file():
            return missing
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
            return missing + [f"{subfolder}/{s}" for s in shards if not (folder / s).is_file()]
    return [*missing, f"{subfolder}/{names[0]} (or {names[1]}, or a sharded index)"]


def check_family(root: Path, spec: DiffusionSpec, where: str) -> None:
    """A folder of another family fails naming what it holds (``model_index.json``) and what was expected."""
    index = root / "model_index.json"
    if index.is_file():
        try:
            found = json.loads(index.read_text()).get("_class_name")
        except ValueError as e:
            raise ProbebenchError(f"{where}: {index} is not valid JSON ({e}).") from e
        if found and found != spec.pipeline_cls:
            from backbones.diffusion.factory import DIFFUSION_SPECS

            same = sorted(n for n, (s, _) in DIFFUSION_SPECS.items() if s.pipeline_cls == found)
            hint = f" Backbones for a {found}: {', '.join(same)}." if same else ""
            raise ProbebenchError(
                f"{where} holds a {found} (model_index.json), but {spec.name} needs a {spec.pipeline_cls} "
                f"folder like the Hugging Face repo {spec.hf_id}.{hint}"
            )
        return
    config = root / spec.transformer_subfolder / "config.json"
    if config.is_file():
        found = json.loads(config.read_text()).get("_class_name")
        if found and found not in (spec.transformer_cls, LEGACY_TRANSFORMER_CLASS):
            raise ProbebenchError(
                f"{where}: {spec.transformer_subfolder}/config.json holds a {found}, but {spec.name} needs a "
                f"{spec.transformer_cls} (as in {spec.hf_id})."
            )


def check_components(root: Path, spec: DiffusionSpec, subfolders: Sequence[str], where: str) -> None:
    """Every file the ``subfolders`` need is there, else one error naming all missing files."""
    missing = [m for sub in subfolders for m in missing_files(root, sub)]
    if missing:
        raise WeightsNotFoundError(
            f"{where} is a partial copy of {spec.hf_id}: missing {', '.join(missing)}. Complete it (e.g. "
            f"`huggingface-cli download {spec.hf_id}` where the network is reachable) or pass weights='random'."
        )


def hf_snapshot(spec: DiffusionSpec, subfolders: Sequence[str]) -> Path:
    """The local snapshot of ``spec.hf_id`` holding ``subfolders`` (configs and weights), checked complete.

    Offline (``HF_HUB_OFFLINE=1``) nothing is downloaded: a missing file fails at once naming the cache directory
    and the files. Online, missing files are downloaded — safetensors, or ``.bin`` where a repo has none.
    """
    first = find_hf_file(spec.hf_id, (f"{subfolders[0]}/config.json",), spec.revision)
    snap = first.parents[1]
    where = f"The Hugging Face cache's snapshot {snap}"
    check_family(snap, spec, where)
    if any(missing_files(snap, s) for s in subfolders) and not hf_offline():
        snap = download(spec, subfolders)
    check_components(snap, spec, subfolders, where)
    return snap


def download(spec: DiffusionSpec, subfolders: Sequence[str]) -> Path:
    """Download ``subfolders`` of the repo (safetensors first, ``.bin`` only where no safetensors exist)."""
    from huggingface_hub import snapshot_download

    common = ["model_index.json", "scheduler/*"]
    try:
        snap = Path(
            snapshot_download(
                spec.hf_id,
                revision=spec.revision,
                allow_patterns=common
                + [f"{s}/{p}" for s in subfolders for p in ("*.json", "*.safetensors", "*.txt", "*.model")],
            )
        )
        if any(missing_files(snap, s) for s in subfolders):
            snap = Path(
                snapshot_download(
                    spec.hf_id, revision=spec.revision, allow_patterns=[f"{s}/*.bin" for s in subfolders]
                )
            )
    except Exception as e:
        if is_gated_error(e):
            raise WeightsNotFoundError(gated_message(spec.hf_id)) from e
        raise WeightsNotFoundError(f"Could not download {spec.hf_id!r} ({', '.join(subfolders)}): {e}") from e
    return snap


def folder_fingerprint(root: Path, subfolders: Sequence[str]) -> str:
    """A fast identity of some subfolders of a local pipeline folder: config/tokenizer contents + each weight
    file's size, head and tail.

    (Hashing multi-GB weight files in full would take minutes; size + first/last MiB catch any real change.)
    """
    h = hashlib.sha256()
    for sub in subfolders:
        for f in sorted((root / sub).glob("*")):
            if not f.is_file():
                continue
            h.update(f"{sub}/{f.name}".encode())
            size = f.stat().st_size
            if f.suffix in (".json", ".txt", ".model") and size < (8 << 20):
                h.update(f.read_bytes())
                continue
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


def resolve_weights(
    spec: DiffusionSpec, weights: str, config: str = "full", random_seed: int = 0
) -> tuple[Path | None, str]:
    """(pipeline folder or None for random weights, weights identity), checked before anything is loaded: the
    family and the transformer's and VAE's files (text encoders are checked when they are needed)."""
    if config not in ("full", "tiny"):
        raise ProbebenchError(f"config must be 'full' or 'tiny', got {config!r}.")
    if config == "tiny" and weights != "random":
        raise ProbebenchError(f"config='tiny' builds a test-sized {spec.name} and needs weights='random'.")
    subs = (spec.transformer_subfolder, spec.vae_subfolder)
    if weights == "random":
        return None, f"random:{config}:seed{random_seed}:{RANDOM_INIT}"
    if weights == "default":
        root = hf_snapshot(spec, subs)
        return root, f"hf:{spec.hf_id}@{root.name}"
    root = Path(weights).expanduser()
    if not root.is_dir():
        raise WeightsNotFoundError(
            f"weights={weights!r} is not a folder: pass a diffusers folder (the pipeline layout) with {subs[0]}/ and "
            f"{subs[1]}/ (as in the Hugging Face repo {spec.hf_id!r}), 'default' or 'random'."
        )
    where = f"weights={weights!r}"
    check_family(root, spec, where)
    check_components(root, spec, subs, where)
    return root, f"dir:{folder_fingerprint(root, subs)}"


def build_modules(
    spec: DiffusionSpec,
    weights: str,
    *,
    config: str = "full",
    random_seed: int = 0,
    dtype: torch.dtype = torch.float32,
    resolved: tuple[Path | None, str] | None = None,
) -> tuple[DiffusionModules, str, Path | None]:
    """Build (transformer, VAE) with random weights from the spec's configs, or load them from HF / a folder.

    Random weights: the transformer gets the standard random init of :mod:`backbones.random_init` (PyTorch's
    default layer init, seeded; no zero adaLN gates or output projections), the VAE diffusers' constructor init
    under the same seed — both random, as no trained VAE is on disk offline. Real weights are loaded with
    ``low_cpu_mem_usage`` (accelerate: read, not randomly initialised first).

    Returns the modules, the weights identity recorded in cache hashes, and the local diffusers folder (None
    for random weights); ``resolved`` is :func:`resolve_weights`'s answer when the caller already has it. The
    VAE is kept in float32; the transformer is cast to ``dtype``.
    """
    root, weights_id = resolved or resolve_weights(spec, weights, config, random_seed)
    tcls, vcls = _diffusers_class(spec.transformer_cls), _diffusers_class(spec.vae_cls)
    if weights == "random":
        tcfg = spec.tiny_transformer_config if config == "tiny" else spec.transformer_config
        vcfg = spec.tiny_vae_config if config == "tiny" else spec.vae_config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(random_seed)  # random weights are a pure function of the seed
            transformer = tcls(**tcfg)
            vae = vcls(**vcfg)
        standard_random_init(transformer, random_seed)  # the one documented init (backbones/random_init.py)
        if dtype != torch.float32:  # as from_pretrained(torch_dtype=...) does, keeping its float32 modules
            nn.Module.to(transformer, dtype)
            keep = tuple(getattr(transformer, "_keep_in_fp32_modules", None) or ())
            for mod_name, module in transformer.named_modules():
                if keep and any(k in mod_name.split(".") for k in keep):
                    nn.Module.to(module, torch.float32)
    else:
        assert root is not None
        transformer = tcls.from_pretrained(str(root), subfolder=spec.transformer_subfolder, torch_dtype=dtype)
        vae = vcls.from_pretrained(str(root), subfolder=spec.vae_subfolder, torch_dtype=torch.float32)
    return DiffusionModules(transformer, vae), weights_id, root
