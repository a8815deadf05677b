"""Miniature snapshots of the registered Hugging Face repos, for testing the real-weights code path offline.

No pretrained weights can be downloaded here, in CI or on the GPU machine, so ``weights="default"`` (the HF
cache) and ``weights=<folder>`` are tested on *miniatures*: tiny random models saved with ``save_pretrained``
in the layout of each registered repo — the same ``model_index.json`` (pipeline class, component entries,
DiT's ``id2label``), subfolders, config keys and weight file names — with tokenizers built from a hand-made
vocabulary or, for PixArt's slow T5 tokenizer, a sentencepiece model trained on a few sentences (nothing is
downloaded). :func:`install_in_hf_cache` lays a folder out as the HF cache does
(``models--org--name/{blobs, snapshots/<commit>, refs/main}``), so the loaders find it offline.

* :func:`build_snapshot` — the miniature of any registered name whose family has a builder (:data:`BUILDERS`);
  diffusion families through :func:`build_diffusers_folder`, DINOv3 through :func:`build_timm_snapshot`.
* :func:`hf_repo_id` — the repo a registered name loads with ``weights="default"``.

The text encoders are as wide as the tiny transformer expects (``joint_attention_dim``,
``pooled_projection_dim``, ``caption_channels``); SD3's CLIP-L ⊕ CLIP-G (8 + 12) is narrower than its T5 (24)
and zero-padded to it, as 768 + 1280 is to 4096 in the real model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from probebench.core.errors import ProbebenchError

SEED = 1  # not 0, the seed of weights="random": a miniature is never the random control
COMMIT = "0000000000000000000000000000000000c0ffee"  # the fake commit of every miniature HF snapshot
_LETTERS = "abcdefghijklmnopqrstuvwxyz"

# scheduler/scheduler_config.json of the repos (class, values)
_DIT_DDIM = (
    "DDIMScheduler",
    {
        "num_train_timesteps": 1000,
        "beta_schedule": "linear",
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "prediction_type": "epsilon",
        "clip_sample": False,
    },
)
_PIXART_DPM = (
    "DPMSolverMultistepScheduler",
    {
        "num_train_timesteps": 1000,
        "beta_schedule": "linear",
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "prediction_type": "epsilon",
        "algorithm_type": "dpmsolver++",
        "solver_order": 2,
        "solver_type": "midpoint",
        "lower_order_final": True,
    },
)
_FLUX_SHIFT = {
    "num_train_timesteps": 1000,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
}
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "dit-xl-2-256": _DIT_DDIM,
    "dit-xl-2-512": _DIT_DDIM,
    "sd3-medium": ("FlowMatchEulerDiscreteScheduler", {"num_train_timesteps": 1000, "shift": 3.0}),
    "flux.1-dev": (
        "FlowMatchEulerDiscreteScheduler",
        {**_FLUX_SHIFT, "shift": 3.0, "use_dynamic_shifting": True},
    ),
    "flux.1-schnell": (
        "FlowMatchEulerDiscreteScheduler",
        {**_FLUX_SHIFT, "shift": 1.0, "use_dynamic_shifting": False},
    ),
    "pixart-sigma-1024": _PIXART_DPM,
    "pixart-alpha-512": _PIXART_DPM,
    "pixart-alpha-1024": _PIXART_DPM,
    "sana-1600m-1024": (
        "DPMSolverMultistepScheduler",
        {
            "num_train_timesteps": 1000,
            "beta_schedule": "linear",
            "beta_start": 1e-4,
            "beta_end": 0.02,
            "prediction_type": "flow_prediction",
            "flow_shift": 3.0,
            "use_flow_sigmas": True,
            "algorithm_type": "dpmsolver++",
            "solver_order": 2,
            "solver_type": "midpoint",
        },
    ),
}

# class names the repos' model_index.json and config.json record where they differ from today's classes: DiT
# and PixArt were converted before their dedicated transformer classes existed (diffusers maps the legacy name
# back), and the T5 / Gemma tokenizers are stored as their fast classes
REPO_CLASS_NAMES: dict[str, dict[str, str]] = {
    "dit": {"transformer": "Transformer2DModel"},
    "pixart": {"transformer": "Transformer2DModel"},
    "sd3": {"tokenizer_3": "T5TokenizerFast"},
    "flux": {"tokenizer_2": "T5TokenizerFast"},
    "sana": {"tokenizer": "GemmaTokenizerFast"},
}
DIT_ID2LABEL = {"0": "tench, Tinca tinca", "1": "goldfish, Carassius auratus", "2": "great white shark"}


# ------------------------------------------------------------------------------------------------ tokenizers


def clip_tokenizer() -> Any:
    """A CLIP BPE tokenizer over single letters (``a`` and ``a</w>``), 77 tokens like the real ones."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in _LETTERS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer() -> Any:
    """A T5 (Unigram) tokenizer over letters and word-initial letters, with a few sentinel ids."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"\u2581{c}", -1.0) for c in _LETTERS] + [(c, -2.0) for c in _LETTERS] + [("\u2581", -3.0)]
    return T5Tokenizer(vocab=pieces, extra_ids=4, model_max_length=512)


T5_SPIECE_CONFIG = {
    "tokenizer_class": "T5Tokenizer",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "extra_ids": 4,
    "model_max_length": 512,
}


def write_t5_sentencepiece(folder: Path) -> Path:
    """A T5 tokenizer folder as the PixArt repos store it: a sentencepiece ``spiece.model`` (a unigram model
    trained here on a few sentences) and ``tokenizer_config.json``, no ``tokenizer.json`` — transformers
    converts it when loading (needs ``sentencepiece`` and ``protobuf``)."""
    import io

    import sentencepiece as spm

    sentences = ["a photo of a cat", "a red car on a street", "two dogs in the snow", "an empty room"] * 10
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=40,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    folder.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        f.unlink()
    (folder / "spiece.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps(T5_SPIECE_CONFIG, indent=2) + "\n")
    return folder


def gemma_tokenizer() -> Any:
    """A Gemma (BPE, byte fallback) tokenizer over letters that adds ``<bos>`` as the real one does."""
    from transformers import GemmaTokenizer

    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    vocab = {t: i for i, t in enumerate([*special, *_LETTERS, "\u2581"])}
    return GemmaTokenizer(vocab=vocab, merges=[], add_bos_token=True, model_max_length=8192)


# ------------------------------------------------------------------------------------------------ text encoders


def _clip(vocab: int, hidden: int, projection: int, with_projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,  # SD3 reads the penultimate hidden state
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=projection,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)


def _t5(vocab: int, width: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
        vocab_size=vocab,
        d_model=width,
        d_kv=8,
        d_ff=2 * width,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",  # as T5 v1.1 / T5-XXL
        is_encoder_decoder=False,
    )
    return T5EncoderModel(cfg)


def _gemma2(vocab: int, width: int) -> Any:
    from transformers import Gemma2Config, Gemma2Model

    cfg = Gemma2Config(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=512,
        sliding_window=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return Gemma2Model(cfg)


def _text_components(family: str, transformer: Any, root: Path) -> dict[str, Any]:
    """Text encoders and tokenizers of a text-to-image family, as wide as ``transformer`` expects (PixArt's
    sentencepiece tokenizer is written to ``root/tokenizer`` first)."""
    cfg = transformer.config
    if family == "sd3":
        clip = clip_tokenizer()
        t5 = t5_tokenizer()
        half = int(cfg.pooled_projection_dim) // 2  # pooled = CLIP-L ⊕ CLIP-G projections
        return {
            "text_encoder": _clip(len(clip), 8, half, True),
            "text_encoder_2": _clip(len(clip), 12, cfg.pooled_projection_dim - half, True),
            "text_encoder_3": _t5(len(t5), int(cfg.joint_attention_dim)),
            "tokenizer": clip,
            "tokenizer_2": clip_tokenizer(),
            "tokenizer_3": t5,
        }
    if family == "flux":
        clip, t5 = clip_tokenizer(), t5_tokenizer()
        return {
            "text_encoder": _clip(len(clip), int(cfg.pooled_projection_dim), 8, False),
            "text_encoder_2": _t5(len(t5), int(cfg.joint_attention_dim)),
            "tokenizer": clip,
            "tokenizer_2": t5,
        }
    if family == "pixart":
        from transformers import T5Tokenizer

        t5 = T5Tokenizer.from_pretrained(str(write_t5_sentencepiece(root / "tokenizer")))
        return {"text_encoder": _t5(len(t5), int(cfg.caption_channels)), "tokenizer": t5}
    if family == "sana":
        gemma = gemma_tokenizer()
        return {"text_encoder": _gemma2(len(gemma), int(cfg.caption_channels)), "tokenizer": gemma}
    return {}


# ------------------------------------------------------------------------------------------------ builders


def _rename_classes(root: Path, renames: dict[str, str]) -> None:
    """Write the repo's class names into model_index.json (and the component's own config), and drop the
    optional components the repos predate (``image_encoder``, ``feature_extractor``: ``[null, null]``)."""
    index_path = root / "model_index.json"
    index = {k: v for k, v in json.loads(index_path.read_text()).items() if v != [None, None]}
    for component, cls in renames.items():
        index[component][1] = cls
        for name in ("config.json", "tokenizer_config.json"):
            cfg_path = root / component / name
            if cfg_path.is_file():
                cfg = json.loads(cfg_path.read_text())
                key = "_class_name" if name == "config.json" else "tokenizer_class"
                if key in cfg:
                    cfg[key] = cls
                    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def build_diffusers_folder(name: str, root: Path, seed: int = SEED) -> Path:
    """A miniature diffusers pipeline folder of the registered diffusion backbone ``name`` in ``root``.

    The repo's pipeline class built from the spec's tiny transformer and VAE, the repo's scheduler and tiny
    text encoders + tokenizers, saved with ``save_pretrained`` (safetensors), then given the repo's class names.
    """
    import diffusers

    spec = _diffusion_spec(name)
    if name not in SCHEDULERS:
        raise ProbebenchError(
            f"no scheduler config for {name!r}: add the repo's one to SCHEDULERS in tests/miniature.py."
        )
    sched_cls, sched_cfg = SCHEDULERS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = getattr(diffusers, spec.transformer_cls)(**spec.tiny_transformer_config)
        components: dict[str, Any] = {
            "transformer": transformer,
            "vae": getattr(diffusers, spec.vae_cls)(**spec.tiny_vae_config),
            "scheduler": getattr(diffusers, sched_cls)(**sched_cfg),
            **_text_components(spec.family, transformer, root),
        }
    pipe = getattr(diffusers, spec.pipeline_cls)(**components)
    pipe.save_pretrained(str(root), safe_serialization=True)
    if spec.family == "pixart":  # the repos' slow-tokenizer files only, as before save_pretrained added more
        write_t5_sentencepiece(root / "tokenizer")
    _rename_classes(root, REPO_CLASS_NAMES.get(spec.family, {}))
    if spec.pipeline_cls == "DiTPipeline":  # the DiT repos carry the ImageNet labels in model_index.json
        index = json.loads((root / "model_index.json").read_text())
        index["id2label"] = DIT_ID2LABEL
        (root / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return root


def build_timm_snapshot(name: str, root: Path, seed: int = SEED) -> Path:
    """A timm hub folder (``config.json`` + ``model.safetensors``, written by timm's ``save_for_hf``) of a
    registered ``dinov3-*`` name.

    timm builds the full-size architecture from the model name, so this is the real size with random weights:
    seeded N(0, 0.02) values (norm weights 1 + N(0, 0.02)) put into a model built on the meta device, as timm's
    own init of a ViT-S takes seconds.
    """
    import timm
    from timm.models import save_for_hf

    from backbones.dinov3 import MODELS

    with torch.device("meta"):
        model = timm.create_model(MODELS[name][0], pretrained=False)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, meta in model.state_dict().items():
        value = 0.02 * torch.randn(meta.shape, generator=gen)
        state[key] = value + 1.0 if "norm" in key and key.endswith(".weight") else value
    model.load_state_dict(state, assign=True)
    root.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, str(root), safe_serialization=True)
    return root


def _dinov3_repo(name: str) -> str:
    import timm

    from backbones.dinov3 import MODELS

    return str(timm.models.get_pretrained_cfg(MODELS[name][0]).hf_hub_id)


def _diffusion_spec(name: str) -> Any:
    import backbones
    from backbones.diffusion import diffusion_spec

    backbones.list_backbones()  # imports the family modules, which register their specs
    return diffusion_spec(name)[0]


def _diffusion_repo(name: str) -> str:
    return _diffusion_spec(name).hf_id


# family → (builder of a registered name's miniature folder, the HF repo that name loads by default)
BUILDERS: dict[str, tuple[Callable[[str, Path], Path], Callable[[str], str]]] = {
    **{f: (build_diffusers_folder, _diffusion_repo) for f in ("dit", "sd3", "flux", "pixart", "sana")},
    "dinov3": (build_timm_snapshot, _dinov3_repo),
}


def family_of(name: str) -> str:
    """The registered family of backbone ``name``."""
    import backbones

    return str(backbones.BACKBONES.entry(name).extra.get("family", ""))


def _builder(name: str) -> tuple[Callable[[str, Path], Path], Callable[[str], str]]:
    from backbones.diffusion import DIFFUSION_SPECS

    family = family_of(name)
    builder = BUILDERS.get(family)
    if builder is None or (builder[0] is build_diffusers_folder and name not in DIFFUSION_SPECS):
        raise ProbebenchError(
            f"no miniature builder for {name!r} (family {family!r}): add one in tests/miniature.py."
        )
    return builder


def build_snapshot(name: str, root: Path) -> Path:
    """The miniature of registered backbone ``name`` as a plain folder ``root`` (for ``weights=<folder>``)."""
    return _builder(name)[0](name, root)


def hf_repo_id(name: str) -> str:
    """The HF repo that registered backbone ``name`` loads with ``weights="default"``."""
    return _builder(name)[1](name)


# ------------------------------------------------------------------------------------------------ HF cache


def install_in_hf_cache(hub_dir: Path, repo_id: str, folder: Path, commit: str = COMMIT) -> Path:
    """Lay ``folder`` out in the HF hub cache ``hub_dir`` as a download of ``repo_id`` at ``commit`` would be:
    content-addressed ``blobs/``, ``snapshots/<commit>/`` of relative symlinks, ``refs/main``. Returns the
    snapshot folder."""
    repo = hub_dir / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    for src in sorted(p for p in folder.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(src.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(src, blob)
        dst = snap / src.relative_to(folder)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(os.path.relpath(blob, dst.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


def redirect_hf_home(mp: Any, home: Path) -> Path:
    """Point Hugging Face (``HF_HOME``, ``HF_HUB_CACHE``, offline) at ``home`` with the pytest MonkeyPatch
    ``mp``. ``huggingface_hub.constants`` is read at import time, so its values are patched too (child
    processes read the environment). Returns the hub cache directory."""
    from huggingface_hub import constants

    hub = home / "hub"
    hub.mkdir(parents=True, exist_ok=True)
    for var, value in (("HF_HOME", home), ("HF_HUB_CACHE", hub)):
        mp.setenv(var, str(value))
        mp.setattr(constants, var, str(value))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub


class MiniatureHub:
    """Miniatures built once each, on first use: a plain folder per name and its copy in the HF cache ``hub``."""

    def __init__(self, root: Path, hub: Path):
        self.root, self.hub = root, hub
        self._folders: dict[str, Path] = {}

    def folder(self, name: str) -> Path:
        """The plain miniature folder of ``name`` (``weights=<folder>``), also installed in the HF cache."""
        if name not in self._folders:
            folder = build_snapshot(name, self.root / "folders" / name.replace(":", "_"))
            install_in_hf_cache(self.hub, hf_repo_id(name), folder)
            self._folders[name] = folder
        return self._folders[name]

    def snapshot(self, name: str) -> Path:
        """The HF cache snapshot of ``name`` (what ``weights="default"`` loads)."""
        self.folder(name)
        return self.hub / f"models--{hf_repo_id(name).replace('/', '--')}" / "snapshots" / COMMIT
