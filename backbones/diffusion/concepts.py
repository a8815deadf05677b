"""Concept attention: spatial maps of concept words read from an MM-DiT's joint attention, as features.

ConceptAttention (Helbling et al., 2025) adds one token per concept word ("sphere", "floor", "background") to an
MM-DiT. The concept tokens are carried through the joint blocks by the **text stream's own weights** and read the
image through a separate attention whose concept rows alone are kept, so the image never sees the concepts and
the model's output is unchanged. The map of concept c at image token n is ``softmax_c(<o_c, o_n>)``, where o_c and
o_n are the attention outputs of the concept and of the image token **before the output projections**
(``to_add_out`` / ``to_out``), over all heads concatenated.

How it runs here (:mod:`backbones.diffusion.concept_stream`): :class:`ConceptStream` is a passenger on the
model's own forward. Forward hooks capture what the joint attention already computes (the image keys, the image values, the image attention output before
``to_out``); a hook on each block's output then advances the concept tokens by one block with that block's
text-stream modules (``norm1_context``, ``add_{q,k,v}_proj``, ``norm_added_{q,k}``, ``to_add_out``,
``norm2_context``, ``ff_context``). Every hook returns ``None`` and nothing is recomputed for the image tokens, so
the transformer's outputs and every image feature are bit-identical with and without the stream, and the extra
work is the C concept tokens' own (no projection of the image tokens is repeated). :class:`ConceptMapAdapter`
(built by :func:`concept_maps`) makes the maps features: ``extract`` returns (B, C, h, w) per (joint layer,
timestep), channel c = concept c, and ``backbones.store.extract_to_cache`` caches them like any features
(resumable, world-size invariant), hashed by the concept words and their embeddings.

Supported families (:data:`FAMILIES`; the two differ in one step function and one capture rule):

* **SD3 class** — ``sd3-medium`` and ``tiny-mmdit`` (diffusers ``JointTransformerBlock`` with
  ``JointAttnProcessor2_0``), including the last block (``context_pre_only``: ``AdaLayerNormContinuous``, no
  ``to_add_out`` / ``ff_context``; the concepts are read there and the stream ends), QK-norm (``norm_added_q/k``
  for the concepts, ``norm_k`` as the model applied it to the image keys) and SD3.5's dual attention (``attn2``
  is image-only and ignored).
* **FLUX.1** — ``flux.1-dev`` and ``flux.1-schnell``: the 19 double-stream blocks (``FluxTransformerBlock`` with
  ``FluxAttnProcessor``), concept layers 0–18; single-stream blocks share one set of weights for text and image,
  and the reference runs no concepts through them. The captured image keys get RoPE at their rows of the block's
  rotary tables, as the processor applies it after ``norm_k``; the concepts sit at position (0, 0, 0), where
  RoPE is the identity.

Defaults and their source (reference implementation ``helblazer811/ConceptAttention``):

* **Concept token** of a word: one row of the model's own embedding of the one-word prompt — tiny-mmdit row 0 (its
  caption table row of the word), SD3 row 1 (CLIP-L ⊕ CLIP-G at the first sub-word after BOS, as the reference's
  SD3 ``encode_concepts``), FLUX row 0 (T5 at the first sub-word, as the reference's ``embed_concepts``) —
  projected by the model's ``context_embedder``.
* **Modulation**: SD3 concepts use the temb of the forward (timestep + the prompt's pooled vector), as the
  reference's SD3 pipeline modulates its concepts with the text's temb; FLUX concepts use the same timestep (and
  guidance) with a **zero** pooled vector, as the reference's FLUX code.
* **Keys and values** of the concept attention: the family's joint order, [image; concepts] for SD3,
  [concepts; image] for FLUX; text tokens are not among them (the reference's concepts attend to themselves and
  the image only).
* **Scores** in float32 and stored after the softmax over concepts (raw scores can exceed float16's range, the
  cache stores float16). Noise draws are averaged after the softmax, as the reference averages samples.
* The reference's SD3 default reads all layers at σ ≈ 0.60 (4-step schedule with shift 3, index −2); its FLUX
  default the last 4 double-stream layers (15–18) at σ = 0.5 (schnell, 4 unshifted steps, index 2). Maps are
  cached per (layer, timestep); the zero-shot ``concept`` probe (:mod:`probes.concept`) scores every cell and
  their average (``concept-mean``), so a configuration picks the reference's cells with ``layers`` and
  ``timesteps``.
* **Words a tokenizer splits** (real weights: SD3's CLIP-L, FLUX's T5) stand for their first sub-word, as in the
  reference; :func:`embed_concepts` names them in one warning.

Deliberate differences from the reference: each word is embedded on its own (the reference's SD3 path encodes
all concepts as one prompt, so a concept depends on the ones before it, and runs the BOS row as an extra
concept); the image vectors are the model's real joint-attention outputs (the reference's SD3 block reruns the
attention with the concepts visible to the image); no L2 normalisation of the concept vectors (one score, as the
issue specifies); the model's forward is never modified, so the FLUX image stream keeps the prompt's pooled
vector (the reference's FLUX ``encode_image`` conditions the image on the zero pooled vector too).

Memory: :meth:`ConceptMapAdapter.check_memory` refuses a forward whose concept work (the float32 bound of
:func:`concept_memory_bytes`) would exceed :data:`MEMORY_FRACTION` of the free memory, saying how many concepts fit.

What to compute is a :class:`ConceptSpec` (``backbones.create(name, concepts=...)`` and a run config's
``concepts:`` take a list of words or its mapping): ``score: output`` (the method, above) or ``cross-attention``
(ConceptAttention's baseline: softmax over concepts of the head-averaged image-query · concept-key logits,
:func:`cross_attention_scores`), and ``output: concepts`` (a channel per word) or ``pair`` (object vs background:
the summed probabilities of the non-background and of the ``background`` words — the cues of the fusion heads,
which generation computes with the same stream, :func:`backbones.diffusion.sampling.sample_with_features`).

Not done: a zero-pooled option for SD3's concepts.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from backbones.base import Adapter, FeatureKey
from backbones.diffusion.adapter import TextConditionedAdapter
from backbones.diffusion.concept_stream import (
    FAMILIES,
    SCORE,
    SCORES,
    SUPPORTED_FAMILIES,
    ConceptEmbeddings,
    ConceptStream,
    ImageAttention,
    JointFamily,
    check_words,
    concept_scores,
    cross_attention_scores,
    flux_concept_step,
    require_joint_attention,
    sd3_concept_step,
    supported_backbones,
)
from probebench.core.errors import ProbebenchError, closest_hint

__all__ = [  # the stream's names are re-exported: this module is the concept maps' public face
    "CONCEPT_FORMAT",
    "FAMILIES",
    "MEMORY_FRACTION",
    "OUTPUTS",
    "PAIR_CHANNELS",
    "SCORE",
    "SCORES",
    "SUPPORTED_FAMILIES",
    "ConceptEmbeddings",
    "ConceptMapAdapter",
    "ConceptSpec",
    "ConceptStream",
    "ImageAttention",
    "JointFamily",
    "available_memory",
    "check_words",
    "concept_maps",
    "concept_memory_bytes",
    "concept_scores",
    "cross_attention_scores",
    "embed_concepts",
    "flux_concept_step",
    "require_joint_attention",
    "sd3_concept_step",
    "supported_backbones",
]

CONCEPT_FORMAT = 1
"""Version of the concept-map definition; part of every fingerprint (a change of the score bumps it)."""
MEMORY_FRACTION = 0.5
"""Share of the free memory the concept stream may plan to use (the model needs the rest)."""


OUTPUTS = ("concepts", "pair")
PAIR_CHANNELS = ("object", "background")  # the channels of ``output: pair`` maps, in order
"""What a concept-map feature holds: ``concepts`` (one channel per word) or ``pair`` (two channels: the summed
probability of the words that are not background, then of the background words — the object/background cue)."""


@dataclass(frozen=True)
class ConceptSpec:
    """What concept maps to compute, as a run config or ``backbones.create(..., concepts=...)`` gives it: a list of
    words, or a mapping ``{words: [...], score: output | cross-attention, output: concepts | pair, background:
    [...]}``; ``background`` (a subset of the words) is what ``output: pair`` sums into its second channel."""

    words: tuple[str, ...]
    score: str = "output"
    output: str = "concepts"
    background: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_words(self.words)
        if self.score not in SCORES:
            raise ProbebenchError(
                f"Unknown concept score {self.score!r}."
                + closest_hint(self.score, SCORES)
                + f" Valid: {', '.join(SCORES)}."
            )
        if self.output not in OUTPUTS:
            raise ProbebenchError(
                f"Unknown concept output {self.output!r}."
                + closest_hint(self.output, OUTPUTS)
                + f" Valid: {', '.join(OUTPUTS)}."
            )
        stray = [w for w in self.background if w not in self.words]
        if stray:
            raise ProbebenchError(
                f"Concept background words {stray} are not among the concept words {list(self.words)}."
            )
        if self.output == "pair" and not (self.background and len(self.background) < len(self.words)):
            raise ProbebenchError(
                "Concept output 'pair' (object vs background) needs `background:` naming some but not all of the "
                f"concept words {list(self.words)}, got {list(self.background)}."
            )

    @classmethod
    def parse(cls, value: Any) -> ConceptSpec:
        """A spec from a list of words or a mapping (unknown keys: an error naming the closest valid one)."""
        if isinstance(value, ConceptSpec):
            return value
        if isinstance(value, dict):
            valid = [f.name for f in fields(cls)]
            for key in value:
                if key not in valid:
                    raise ProbebenchError(
                        f"Unknown concepts key {key!r}."
                        + closest_hint(str(key), valid)
                        + f" Valid: {', '.join(valid)}."
                    )
            if "words" not in value:
                raise ProbebenchError(f"`concepts:` as a mapping needs `words: [...]`, got {value}.")
            background = value.get("background") or ()
            if isinstance(background, str):
                raise ProbebenchError(
                    f"`concepts: background:` must be a list of words, got the string {background!r}."
                )
            return cls(
                check_words(value["words"]),
                str(value.get("score", "output")),
                str(value.get("output", "concepts")),
                tuple(background),
            )
        return cls(check_words(value))

    @property
    def channels(self) -> tuple[str, ...]:
        """What each channel of the maps is: a word per concept, or :data:`PAIR_CHANNELS` for ``output: pair``."""
        return PAIR_CHANNELS if self.output == "pair" else self.words

    def label(self) -> str:
        """How result rows name these maps: ``concepts=<words>`` and the settings that are not the default."""
        parts = [f"concepts={' '.join(self.words)}"]
        if self.score != "output":
            parts.append(f"score={self.score}")
        if self.output != "concepts":
            parts.append(f"output={self.output}")
        if self.background:
            parts.append(f"background={' '.join(self.background)}")
        return ";".join(parts)


def embed_concepts(adapter: TextConditionedAdapter, words: Sequence[str]) -> ConceptEmbeddings:
    """Each word's concept token: row ``adapter.concept_row`` of the model's own embedding of the one-word
    prompt (tiny-mmdit: its caption table row; SD3: CLIP at the first sub-word; random weights: the seeded
    stand-in embeddings of that prompt). Words the adapter's tokenizer (``adapter.word_pieces``, real weights)
    splits into several sub-words are named in one warning."""
    words = check_words(words)
    require_joint_attention(adapter)
    row = getattr(adapter, "concept_row", None)
    if adapter.text_encoder is None or row is None:
        raise ProbebenchError(
            f"{adapter.name} cannot embed concept words (it was given fixed prompt embeddings); pass "
            "ConceptEmbeddings(words, embeds) instead."
        )
    pieces = getattr(adapter, "word_pieces", None)  # real tokenizers only (tiny-mmdit's words are whole)
    split = {w: p for w in words if pieces is not None and len(p := pieces(w)) > 1}
    if split:  # one warning for the whole concept set
        warnings.warn(
            f"{adapter.name}: its tokenizer splits the concept words "
            + ", ".join(f"{w!r} into {p}" for w, p in split.items())
            + "; each is represented by its first sub-word, as ConceptAttention does. A word the tokenizer keeps "
            "whole gives a cleaner map.",
            UserWarning,
            stacklevel=2,
        )
    rows = []
    for w in words:
        try:
            cond = adapter.text_encoder(w)
        except ProbebenchError as e:
            raise ProbebenchError(f"Concept word {w!r}: {e}") from e
        if cond.embeds.shape[1] <= row:
            raise ProbebenchError(
                f"{adapter.name}: the prompt {w!r} embeds to {cond.embeds.shape[1]} tokens, no row {row}."
            )
        rows.append(cond.embeds[:, row].float().cpu())
    source = f"{adapter.name}:row{row}:{cond.source.split(':')[0]}"
    return ConceptEmbeddings(words, torch.stack(rows, dim=1), source=source)


# -- memory --------------------------------------------------------------------------------------------------
def concept_memory_bytes(
    *, rows: int, concepts: int, tokens: int, heads: int, width: int, read_layers: int
) -> int:
    """An upper bound, in bytes, of what the concept stream adds to one forward of ``rows`` rows (float32
    throughout): per concept and row, the attention logits of one block (``heads·(tokens + concepts)``), the
    score and softmax temporaries (``2·tokens``), the maps kept for every read layer and their sum over noise
    draws (``2·read_layers·tokens``), and the concept state with its feed-forward (``16·width``)."""
    per = heads * (tokens + concepts) + 2 * tokens + 2 * read_layers * tokens + 16 * width
    return 4 * rows * concepts * per


def available_memory(device: torch.device) -> int:
    """Free bytes on ``device``: CUDA's free memory, else the host's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is a dependency of the environment
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


# -- maps as features ------------------------------------------------------------------------------------------
class ConceptMapAdapter(Adapter):
    """Concept-attention maps of an MM-DiT (SD3 class, FLUX) as features: (B, C, h, w) per (joint layer,
    timestep), channel c = concept c, summing to 1 over channels, averaged over noise draws after the softmax.
    Images, noise, batching and timesteps are the wrapped adapter's; its fingerprint adds the concept words and
    the digest of their embeddings, so a cache is keyed by the concept set."""

    def __init__(
        self, base: TextConditionedAdapter, concepts: ConceptEmbeddings, spec: ConceptSpec | None = None
    ):
        require_joint_attention(base)
        spec = spec or ConceptSpec(concepts.words)
        if spec.words != concepts.words:
            raise ProbebenchError(
                f"Concept embeddings for {list(concepts.words)} but a spec for {list(spec.words)}."
            )
        self.base = base
        self.concepts = concepts
        self.spec = spec
        self.stream = ConceptStream(base, concepts, score=spec.score)
        joint = len(self.stream.blocks())
        words = list(concepts.words)
        what = "object/background" if spec.output == "pair" else spec.score
        meta = replace(
            base.meta,
            name=f"{base.name}+concepts",
            num_layers=joint,
            width=len(spec.channels),
            notes=f"concept-attention maps ({what}) of {base.name} for {words}",
        )
        super().__init__(
            meta,
            base.model,
            weights=base.weights,
            weights_id=base.weights_id,
            weights_note=base.weights_note,
            device=base.device,
            dtype=base.dtype,
            image_size=base.image_size,
            compute_batch=base.compute_batch,
        )

    @property
    def words(self) -> tuple[str, ...]:
        return self.concepts.words

    def resolve_timesteps(self, spec: Any) -> list[Any]:
        return self.base.resolve_timesteps(spec)

    def log_snr(self, timestep: Any) -> float | None:
        return self.base.log_snr(timestep)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return self.base.preprocess(images)

    def fingerprint(self) -> dict[str, Any]:
        fp = self.base.fingerprint()
        fp["backbone"] = self.name
        fp["concepts"] = {
            "format": CONCEPT_FORMAT,
            "base": self.base.name,
            "words": list(self.words),
            "embeds_sha256": self.concepts.digest(),
            "source": self.concepts.source,
            "pooled": self.stream.family.pooled,
            "keys": self.stream.family.key_order,
            "score": SCORES[self.spec.score],
        }
        if self.spec.output == "pair":
            fp["concepts"]["output"] = {
                "pair": "object, background",
                "background": list(self.spec.background),
            }
        return fp

    def check_memory(self, rows: int, read_layers: int) -> None:
        """Raise, saying the limit, when the concepts of a forward of ``rows`` rows would not fit in
        :data:`MEMORY_FRACTION` of the free memory (bound: :func:`concept_memory_bytes`)."""
        side = self.image_size // self.base.vae_factor
        h, w = self.base.token_grid((side, side))
        attn = self.stream.blocks()[0].attn
        sizes = dict(rows=rows, tokens=h * w, heads=int(attn.heads), width=int(attn.inner_dim))
        sizes["read_layers"] = read_layers
        c = len(self.words)
        need = concept_memory_bytes(concepts=c, **sizes)
        budget = int(available_memory(self.device) * MEMORY_FRACTION)
        if need <= budget:
            return
        limit = c
        while limit > 0 and concept_memory_bytes(concepts=limit, **sizes) > budget:
            limit -= 1
        gib = 1024**3
        raise ProbebenchError(
            f"{c} concepts need about {need / gib:.2f} GiB per forward of {rows} rows on {self.device}, more than "
            f"{MEMORY_FRACTION:.0%} of the {budget / MEMORY_FRACTION / gib:.2f} GiB free: at most {limit} concepts "
            f"at compute_batch {self.compute_batch} with these timesteps and layers (lower compute_batch, or ask "
            "for fewer timesteps or layers, for more)."
        )

    def forward_maps(
        self, latents: torch.Tensor, model_t: torch.Tensor, layers: list[int]
    ) -> dict[int, torch.Tensor]:
        """One forward of the wrapped adapter (its early exit at the deepest layer) with the concept stream
        attached: layer → (rows, C, h, w) maps."""
        h, w = self.base.token_grid(tuple(latents.shape[-2:]))
        with self.stream.attached(read=layers):
            self.base.forward_features(latents, model_t, [max(layers)])
            maps = dict(self.stream.maps)
        return {layer: self.output(maps[layer], (h, w)) for layer in layers}

    def output(self, scores: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """A layer's concept probabilities (B, C, N) as this adapter's features (B, C', h, w): every concept, or
        for ``output: pair`` the summed probabilities of the object words and of the background words."""
        if self.spec.output == "pair":
            bg = torch.tensor([w in self.spec.background for w in self.words], device=scores.device)
            scores = torch.stack([scores[:, ~bg].sum(1), scores[:, bg].sum(1)], dim=1)
        return scores.reshape(scores.shape[0], -1, *grid)

    def _extract(
        self,
        x: torch.Tensor,
        layers: list[int],
        timesteps: list[Any],
        *,
        image_ids: Sequence[str] | None,
        seed: int,
        noise_draws: int,
    ) -> dict[FeatureKey, torch.Tensor]:
        self.check_memory(x.shape[0] * len(timesteps), len(layers))
        return self.base.average_over_draws(
            x,
            layers,
            timesteps,
            image_ids=image_ids,
            seed=seed,
            noise_draws=noise_draws,
            forward=self.forward_maps,
        )


def concept_maps(
    adapter: Adapter, words: Sequence[str] | ConceptEmbeddings | ConceptSpec | dict[str, Any]
) -> ConceptMapAdapter:
    """An adapter whose features are the concept-attention maps of ``adapter`` for ``words``: a list of single
    words, a :class:`ConceptSpec` or its mapping (score, output, background), or precomputed
    :class:`ConceptEmbeddings`; errors name the supported backbones, the vocabulary of tiny-mmdit, duplicates and
    empty lists."""
    base = require_joint_attention(adapter)
    if isinstance(words, ConceptEmbeddings):
        return ConceptMapAdapter(base, words)
    spec = ConceptSpec.parse(words)
    return ConceptMapAdapter(base, embed_concepts(base, spec.words), spec)
