"""Text conditioning of the text-to-image families: prompt embeddings, where they come from, and their cache.

Injected embeddings win; random weights get seeded N(0, 1) stand-ins of the real shape; real weights get the
pipeline's own prompt embeddings, computed once (the text encoders — T5-XXL, CLIP, Gemma — are loaded only
on a cache miss) and kept on disk as safetensors keyed by everything that produced them. The source and a
hash of the values are part of the adapter fingerprint.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from backbones.diffusion.noise import stable_seed
from backbones.diffusion.spec import DiffusionSpec, TextSpec
from backbones.diffusion.weights import check_components, download, folder_fingerprint, missing_files
from backbones.weights import hf_offline
from probebench.core.errors import ProbebenchError


@dataclass
class TextConditioning:
    """Prompt embeddings for one prompt (batch 1); expanded to the batch at run time.

    ``embeds`` (1, L, D), ``pooled`` (1, P) or None, ``mask`` (1, L) of 0/1 or None (all tokens valid).
    ``source`` says where they came from and is part of the adapter fingerprint, with a hash of the values.
    """

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    source: str = "injected"

    def digest(self) -> str:
        h = hashlib.sha256()
        for t in (self.embeds, self.pooled, self.mask):
            if t is not None:
                t = t.detach().float().cpu().contiguous()
                h.update(str(tuple(t.shape)).encode())
                h.update(t.numpy().tobytes())
        return h.hexdigest()[:16]

    def expand(
        self, n: int, device: Any, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        embeds = self.embeds.to(device=device, dtype=dtype).expand(n, -1, -1)
        pooled = None if self.pooled is None else self.pooled.to(device=device, dtype=dtype).expand(n, -1)
        mask = None if self.mask is None else self.mask.to(device=device).expand(n, -1)
        return embeds, pooled, mask


def random_text_conditioning(spec: TextSpec, *, prompt: str, family: str, seed: int) -> TextConditioning:
    """Deterministic stand-in embeddings for random-weight models: N(0, 1), seeded by (family, prompt, seed)."""
    gen = torch.Generator(device="cpu").manual_seed(stable_seed("text", family, prompt, seed))
    embeds = torch.randn(1, spec.seq_len, spec.dim, generator=gen)
    pooled = torch.randn(1, spec.pooled_dim, generator=gen) if spec.pooled_dim else None
    return TextConditioning(embeds, pooled, None, source=f"random:{family}:seed{seed}")


def require_transformers(what: str) -> None:
    """Raise a clear error when ``transformers`` (needed to run the text encoders) is missing."""
    if importlib.util.find_spec("transformers") is None:
        raise ProbebenchError(
            f"{what} needs the text encoders, which need the `transformers` package (and `sentencepiece` for T5 "
            f"tokenizers): pip install transformers sentencepiece. Alternatively pass text_embeddings=... or "
            "use weights='random'."
        )


class PromptEmbeddingCache:
    """Prompt embeddings on disk as safetensors, keyed by a hash of everything that produced them.

    Real text encoders (T5-XXL, CLIP, Gemma) are loaded only when a prompt is not cached, run once, and freed.
    Root: ``$PROBEBENCH_PROMPT_CACHE`` or ``~/.cache/probebench/prompt_embeddings``.
    """

    def __init__(self, root: str | Path | None = None):
        default = os.environ.get("PROBEBENCH_PROMPT_CACHE") or "~/.cache/probebench/prompt_embeddings"
        self.root = Path(root or default).expanduser()

    @staticmethod
    def key_hash(key: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def path(self, key: dict[str, Any]) -> Path:
        return self.root / f"{self.key_hash(key)}.safetensors"

    def load(self, key: dict[str, Any]) -> TextConditioning | None:
        path = self.path(key)
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            meta = f.metadata() or {}
            tensors = {n: f.get_tensor(n) for n in names}
        return TextConditioning(
            tensors["embeds"],
            tensors.get("pooled"),
            tensors.get("mask"),
            source=meta.get("source", f"cache:{path.name}"),
        )

    def save(self, key: dict[str, Any], cond: TextConditioning) -> Path:
        from safetensors.torch import save_file

        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"embeds": cond.embeds.detach().float().cpu().contiguous()}
        if cond.pooled is not None:
            tensors["pooled"] = cond.pooled.detach().float().cpu().contiguous()
        if cond.mask is not None:
            tensors["mask"] = cond.mask.detach().cpu().contiguous()
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file(
            tensors,
            str(tmp),
            metadata={"source": cond.source, "key": json.dumps(key, sort_keys=True, default=str)},
        )
        os.replace(tmp, path)
        return path

    def get(self, key: dict[str, Any], compute: Callable[[], TextConditioning]) -> TextConditioning:
        """The cached embeddings for ``key``, computing (and caching) them with ``compute()`` when missing."""
        hit = self.load(key)
        if hit is not None:
            return hit
        cond = compute()
        cond = replace(cond, source=f"prompt-cache:{self.key_hash(key)}")
        self.save(key, cond)
        gc.collect()
        return self.load(key) or cond


def encoder_precision(device: Any, dtype: torch.dtype) -> tuple[torch.device, torch.dtype]:
    """Where and in which dtype the text encoders run: the adapter's device and dtype (float16 becomes bfloat16:
    T5 overflows in float16)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return dev, (torch.bfloat16 if dtype == torch.float16 else dtype)


def text_cache_key(
    spec: DiffusionSpec,
    text: TextSpec,
    *,
    weights: str,
    root: Path,
    subfolders: Sequence[str],
    prompt: str,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """Everything that changes a prompt's embeddings: the repo and snapshot, every text encoder's and
    tokenizer's files (:func:`folder_fingerprint`), the prompt and length, and the encoders' device and dtype."""
    return {
        "backbone": spec.name,
        "repo": spec.hf_id if weights == "default" else "local",
        "snapshot": root.name if weights == "default" else "local",
        "text_files": folder_fingerprint(root, subfolders),
        "prompt": prompt,
        "seq_len": text.seq_len,
        "encoder": {"device": device.type, "dtype": str(dtype).replace("torch.", "")},
    }


def text_conditioning_for(
    spec: DiffusionSpec,
    *,
    weights: str,
    config: str,
    root: Path | None,
    prompt: str,
    random_seed: int,
    text_embeddings: TextConditioning | None,
    encode_real: Callable[[Path, str, torch.device, torch.dtype], TextConditioning],
    subfolders: Sequence[str] = (),
    device: Any = None,
    dtype: torch.dtype = torch.float32,
    cache: PromptEmbeddingCache | None = None,
) -> TextConditioning:
    """The text conditioning of a text-to-image family.

    Injected embeddings win; random weights get seeded random embeddings of the right shape; real weights get
    the real prompt embeddings from the on-disk cache (keyed by :func:`text_cache_key`), computed once with
    ``encode_real(folder, prompt, device, dtype)`` — the pipeline's text encoders on the adapter's device.
    The text encoders' and tokenizers' files are checked (and, online, downloaded) first, so a partial
    snapshot fails naming what is missing before the transformer is loaded.
    """
    text = spec.tiny_text if config == "tiny" else spec.text
    assert text is not None
    if text_embeddings is not None:
        return text_embeddings
    if weights == "random":
        return random_text_conditioning(text, prompt=prompt, family=spec.family, seed=random_seed)
    assert root is not None
    folder = text_snapshot(spec, weights, root, subfolders)
    dev, enc_dtype = encoder_precision(device, dtype)
    key = text_cache_key(
        spec,
        text,
        weights=weights,
        root=folder,
        subfolders=subfolders,
        prompt=prompt,
        device=dev,
        dtype=enc_dtype,
    )
    return (cache or PromptEmbeddingCache()).get(key, lambda: encode_real(folder, prompt, dev, enc_dtype))


def text_snapshot(spec: DiffusionSpec, weights: str, root: Path, subfolders: Sequence[str]) -> Path:
    """The folder holding a pipeline's text encoders and tokenizers, checked complete (downloaded only when
    online)."""
    where = f"weights={str(root)!r}" if weights != "default" else f"The Hugging Face cache's snapshot {root}"
    if weights == "default" and not hf_offline() and any(missing_files(root, s) for s in subfolders):
        root = download(spec, subfolders)
    check_components(root, spec, subfolders, where)
    return root


def word_pieces_reader(folder: Path) -> Callable[[str], list[str]]:
    """``word → its sub-words`` by the tokenizer saved in ``folder`` (loaded on first use): what a concept word
    becomes before its first sub-word stands for it (:func:`backbones.diffusion.concepts.embed_concepts`)."""
    tokenizer: list[Any] = []

    def pieces(word: str) -> list[str]:
        if not tokenizer:
            require_transformers("splitting concept words into sub-words")
            from transformers import AutoTokenizer

            tokenizer.append(AutoTokenizer.from_pretrained(str(folder)))
        return list(tokenizer[0].tokenize(word))

    return pieces
