"""Concept attention: spatial maps of concept words read from an MM-DiT's joint attention, as features.

ConceptAttention (Helbling et al., 2025) adds one token per concept word ("sphere", "floor", "background") to an
MM-DiT. The concept tokens are carried through the joint blocks by the **text stream's own weights** and read the
image through a separate attention whose concept rows alone are kept, so the image never sees the concepts and
the model's output is unchanged. The map of concept c at image token n is ``softmax_c(<o_c, o_n>)``, where o_c and
o_n are the attention outputs of the concept and of the image token **before the output projections**
(``to_add_out`` / ``to_out``), over all heads concatenated.

How it runs here: :class:`ConceptStream` is a passenger on the model's own forward. Forward hooks capture what the
joint attention already computes (the image keys, the image values, the image attention output before
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
  default the last 4 double-stream layers (15–18) at σ = 0.5 (schnell, 4 unshifted steps, index 2). Averaging
  over layers and timesteps is left to the reader of the cache.

Deliberate differences from the reference: each word is embedded on its own (the reference's SD3 path encodes
all concepts as one prompt, so a concept depends on the ones before it, and runs the BOS row as an extra
concept); the image vectors are the model's real joint-attention outputs (the reference's SD3 block reruns the
attention with the concepts visible to the image); no L2 normalisation of the concept vectors (one score, as the
issue specifies); the model's forward is never modified, so the FLUX image stream keeps the prompt's pooled
vector (the reference's FLUX ``encode_image`` conditions the image on the zero pooled vector too).

Memory: :meth:`ConceptMapAdapter.check_memory` refuses a forward whose concept work (the float32 bound of
:func:`concept_memory_bytes`) would exceed :data:`MEMORY_FRACTION` of the free memory, saying how many concepts fit.

Not done yet: a "split word" warning for real tokenizers, a zero-pooled option for SD3, the cross-attention
baseline maps, the ``concepts:`` option of ``backbones.create`` / run configs.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backbones.base import Adapter, FeatureKey
from backbones.diffusion.adapter import TextConditionedAdapter
from probebench.core.errors import ProbebenchError

CONCEPT_FORMAT = 1
"""Version of the concept-map definition; part of every fingerprint (a change of the score bumps it)."""
MEMORY_FRACTION = 0.5
"""Share of the free memory the concept stream may plan to use (the model needs the rest)."""
SCORE = "softmax over concepts of <o_c, o_img>, all heads, before to_out/to_add_out, float32"


# -- concept words and their tokens -------------------------------------------------------------------------
@dataclass(frozen=True)
class ConceptEmbeddings:
    """The concept tokens before the context embedder: ``embeds`` (1, C, joint_attention_dim) float32 on the CPU,
    one row per word of ``words``; ``source`` says how they were made (part of the fingerprint with a digest)."""

    words: tuple[str, ...]
    embeds: torch.Tensor
    source: str = "injected"

    def __post_init__(self) -> None:
        check_words(self.words)
        if self.embeds.ndim != 3 or self.embeds.shape[:2] != (1, len(self.words)):
            raise ProbebenchError(
                f"Concept embeddings must have shape (1, {len(self.words)}, dim) for the words "
                f"{list(self.words)}, got {tuple(self.embeds.shape)}."
            )

    def digest(self) -> str:
        h = hashlib.sha256("\0".join(self.words).encode())
        t = self.embeds.detach().float().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
        return h.hexdigest()[:16]


def check_words(words: Sequence[str]) -> tuple[str, ...]:
    """Concept words as a tuple: each a non-empty single word (no spaces or commas), none twice, at least one."""
    if isinstance(words, str):
        raise ProbebenchError(f"Concept words must be a list of words, got the string {words!r}.")
    words = tuple(words)
    if not words:
        raise ProbebenchError("Concept maps need at least one concept word, got an empty list.")
    bad = [w for w in words if not isinstance(w, str) or not w or any(ch.isspace() or ch == "," for ch in w)]
    if bad:
        raise ProbebenchError(
            f"Concept words must be single non-empty words (no spaces or commas), got {bad} in {list(words)}."
        )
    dup = sorted({w for w in words if words.count(w) > 1})
    if dup:
        raise ProbebenchError(
            f"Concept words must be distinct: {dup} appear more than once in {list(words)}."
        )
    return words


def supported_backbones() -> list[str]:
    """Registered backbones whose declared family has joint blocks the concept stream knows."""
    from backbones._registry import BACKBONES

    return sorted(e.name for e in BACKBONES if e.extra.get("family") in SUPPORTED_FAMILIES)


def require_joint_attention(adapter: Adapter) -> TextConditionedAdapter:
    """``adapter`` if it is an MM-DiT whose joint blocks the concept stream supports; else an error naming the
    backbones that support concept maps."""
    family = adapter.meta.family
    if family in SUPPORTED_FAMILIES and isinstance(adapter, TextConditionedAdapter):
        return adapter
    raise ProbebenchError(
        f"Concept maps need an MM-DiT's joint attention (a text stream with its own weights); {adapter.name} "
        f"(family {family!r}) has none. Backbones that support them: {', '.join(supported_backbones())}."
    )


def embed_concepts(adapter: TextConditionedAdapter, words: Sequence[str]) -> ConceptEmbeddings:
    """Each word's concept token: row ``adapter.concept_row`` of the model's own embedding of the one-word
    prompt (tiny-mmdit: its caption table row; SD3: CLIP at the first sub-word; random weights: the seeded
    stand-in embeddings of that prompt)."""
    words = check_words(words)
    require_joint_attention(adapter)
    row = getattr(adapter, "concept_row", None)
    if adapter.text_encoder is None or row is None:
        raise ProbebenchError(
            f"{adapter.name} cannot embed concept words (it was given fixed prompt embeddings); pass "
            "ConceptEmbeddings(words, embeds) instead."
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


# -- one block of the concept stream ---------------------------------------------------------------------------
@dataclass
class ImageAttention:
    """What the model's joint attention computed for the image tokens of one block, as its kernel used it:
    ``key``/``value`` (B, H, N, d) and ``out`` (B, N, H·d), the image rows of the attention before ``to_out``."""

    key: torch.Tensor
    value: torch.Tensor
    out: torch.Tensor


def sd3_concept_step(
    block: nn.Module, c: torch.Tensor, temb: torch.Tensor, img: ImageAttention
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One ``JointTransformerBlock`` for the concept tokens ``c`` (B, C, D) with the block's text-stream modules:
    returns (the next concept tokens, or None after a ``context_pre_only`` block; the concept rows' attention
    output before ``to_add_out``, (B, C, H·d)). The queries are the concepts only, the keys and values
    [image; concepts]: the image never attends to the concepts."""
    attn = block.attn
    b, heads = c.shape[0], attn.heads
    if block.context_pre_only:  # last block: AdaLayerNormContinuous, no gates, no context MLP
        nc = block.norm1_context(c, temb)
    else:
        nc, g_msa, sh_mlp, sc_mlp, g_mlp = block.norm1_context(c, emb=temb)

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(b, -1, heads, x.shape[-1] // heads).transpose(1, 2)  # (B, H, C, d)

    q, k, v = split(attn.add_q_proj(nc)), split(attn.add_k_proj(nc)), split(attn.add_v_proj(nc))
    if attn.norm_added_q is not None:
        q = attn.norm_added_q(q)
    if attn.norm_added_k is not None:
        k = attn.norm_added_k(k)
    keys = torch.cat([img.key, k], dim=2)
    values = torch.cat([img.value, v], dim=2)
    o = F.scaled_dot_product_attention(q, keys, values)
    o = o.transpose(1, 2).reshape(b, -1, heads * q.shape[-1]).to(q.dtype)
    if block.context_pre_only:
        return None, o
    c = c + g_msa.unsqueeze(1) * attn.to_add_out(o)
    n2 = block.norm2_context(c) * (1 + sc_mlp[:, None]) + sh_mlp[:, None]
    c = c + g_mlp.unsqueeze(1) * block.ff_context(n2)
    return c, o


def flux_concept_step(
    block: nn.Module, c: torch.Tensor, temb: torch.Tensor, img: ImageAttention
) -> tuple[torch.Tensor, torch.Tensor]:
    """One FLUX double-stream block (``FluxTransformerBlock``) for the concept tokens ``c`` (B, C, D): as
    :func:`sd3_concept_step`, with FLUX's QK-norm (always on) and key order [concepts; image]. The concepts sit at
    position ids (0, 0, 0), where RoPE is the identity (cos 1, sin 0), so it is not applied to them."""
    attn = block.attn
    nc, g_msa, sh_mlp, sc_mlp, g_mlp = block.norm1_context(c, emb=temb)

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (-1, attn.head_dim))  # (B, C, H, d), FLUX's layout

    q = attn.norm_added_q(split(attn.add_q_proj(nc))).transpose(1, 2)
    k = attn.norm_added_k(split(attn.add_k_proj(nc))).transpose(1, 2)
    v = split(attn.add_v_proj(nc)).transpose(1, 2)
    keys = torch.cat([k, img.key], dim=2)
    values = torch.cat([v, img.value], dim=2)
    o = F.scaled_dot_product_attention(q, keys, values).transpose(1, 2).flatten(2, 3).to(q.dtype)
    c = c + g_msa.unsqueeze(1) * attn.to_add_out(o)
    n2 = block.norm2_context(c) * (1 + sc_mlp[:, None]) + sh_mlp[:, None]
    c = c + g_mlp.unsqueeze(1) * block.ff_context(n2)
    if c.dtype == torch.float16:
        c = c.clip(-65504, 65504)  # as the block clips its text stream
    return c, o


def _sd3_image(block: nn.Module, cap: dict[str, torch.Tensor], inputs: dict[str, Any]) -> ImageAttention:
    """SD3: keys from ``norm_k`` (B, H, N, d) or ``to_k`` (B, N, H·d); values from ``to_v``."""
    b, heads = inputs["temb"].shape[0], block.attn.heads

    def split(x: torch.Tensor) -> torch.Tensor:  # (B, N, H·d) → (B, H, N, d)
        return x.view(b, -1, heads, x.shape[-1] // heads).transpose(1, 2) if x.ndim == 3 else x

    return ImageAttention(split(cap["key"]), split(cap["value"]), cap["out"])


def _flux_image(block: nn.Module, cap: dict[str, torch.Tensor], inputs: dict[str, Any]) -> ImageAttention:
    """FLUX: keys from ``norm_k`` (B, N, H, d), then RoPE at the image rows of the block's rotary tables (which
    are [text; image]), as the processor applies it after the norm; values from ``to_v``."""
    from diffusers.models.embeddings import apply_rotary_emb

    key = cap["key"]
    rope = inputs.get("image_rotary_emb")
    if rope is not None:
        n_txt = inputs["encoder_hidden_states"].shape[1]
        key = apply_rotary_emb(key, (rope[0][n_txt:], rope[1][n_txt:]), sequence_dim=1)
    value = cap["value"].unflatten(-1, (-1, block.attn.head_dim))
    return ImageAttention(key.transpose(1, 2), value.transpose(1, 2), cap["out"])


@dataclass(frozen=True)
class JointFamily:
    """What differs between the MM-DiT families for the concept stream (everything else is shared)."""

    processor: str  # the attention processor whose call order the hooks rely on
    key_order: str
    pooled: str  # the concepts' temb: "text" (the forward's own) or "zero" (a zero pooled vector)
    step: Callable[..., tuple[torch.Tensor | None, torch.Tensor]]
    image: Callable[[nn.Module, dict[str, torch.Tensor], dict[str, Any]], ImageAttention]


FAMILIES: dict[str, JointFamily] = {
    "sd3": JointFamily("JointAttnProcessor2_0", "[image; concepts]", "text", sd3_concept_step, _sd3_image),
    "flux": JointFamily("FluxAttnProcessor", "[concepts; image]", "zero", flux_concept_step, _flux_image),
}
"""Families (``BackboneMeta.family``) whose joint blocks the concept stream knows."""
SUPPORTED_FAMILIES = tuple(FAMILIES)


def concept_scores(o_c: torch.Tensor, o_img: torch.Tensor) -> torch.Tensor:
    """(B, C, N) float32: softmax over concepts of the dot products of the concept rows ``o_c`` (B, C, D) and the
    image rows ``o_img`` (B, N, D) of the attention output, before the output projections."""
    return torch.einsum("bcd,bnd->bcn", o_c.float(), o_img.float()).softmax(dim=1)


class ConceptStream:
    """Concept tokens carried through an MM-DiT's joint blocks by the text stream's own weights, reading
    the image through a separate attention whose concept rows alone are kept; the model's tensors are never
    replaced (every hook returns None).

    ``with stream.attached(read=layers): <any forward of adapter.transformer>`` fills ``stream.maps`` (layer →
    (B, C, N) float32, softmaxed over concepts) for the read layers the forward reached; ``record=True`` also
    keeps ``stream.outputs`` (layer → the concept rows' attention output (B, C, H·d)). Each transformer forward
    starts the stream afresh.
    """

    def __init__(self, adapter: TextConditionedAdapter, concepts: ConceptEmbeddings, *, record: bool = False):
        self.adapter = require_joint_attention(adapter)
        dim = int(self.transformer.context_embedder.in_features)
        if concepts.embeds.shape[-1] != dim:
            raise ProbebenchError(
                f"Concept embeddings of width {concepts.embeds.shape[-1]} for {adapter.name}, whose context "
                f"embedder takes {dim}."
            )
        self.family = FAMILIES[adapter.meta.family]
        self.concepts = concepts
        self.record = record
        self.maps: dict[int, torch.Tensor] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self._state: torch.Tensor | None = None
        self._temb: torch.Tensor | None = None  # the concepts' zero-pooled temb of this forward
        self._cap: dict[int, dict[str, torch.Tensor]] = {}
        self._signature: inspect.Signature | None = None

    @property
    def transformer(self) -> nn.Module:
        return self.adapter.transformer

    def blocks(self) -> list[nn.Module]:
        """The joint blocks (SD3: all; FLUX: the double-stream ones), checked to be ones the stream knows."""
        blocks = list(self.transformer.transformer_blocks)
        for i, b in enumerate(blocks):
            attn = getattr(b, "attn", None)
            processor = type(getattr(attn, "processor", None)).__name__
            if getattr(b, "norm1_context", None) is None or getattr(attn, "add_k_proj", None) is None:
                raise ProbebenchError(f"{self.adapter.name} block {i} is not a joint (text + image) block.")
            if processor != self.family.processor:
                raise ProbebenchError(
                    f"{self.adapter.name} block {i} uses the attention processor {processor}; the concept stream "
                    f"knows {self.family.processor} only (no IP-adapter or custom processors)."
                )
            if getattr(attn, "fused_projections", False):
                raise ProbebenchError(
                    f"{self.adapter.name} block {i} has fused QKV projections; unfuse them for concept maps."
                )
        return blocks

    @contextmanager
    def attached(self, read: Sequence[int]) -> Iterator[ConceptStream]:
        """Hooks on the joint blocks up to the deepest of ``read`` while the block runs; removed on exit."""
        blocks = self.blocks()
        read = sorted({int(i) for i in read})
        if not read or read[0] < 0 or read[-1] >= len(blocks):
            raise ProbebenchError(
                f"Concept layers {read} out of range: valid joint layers 0..{len(blocks) - 1}."
            )
        handles = [self.transformer.register_forward_pre_hook(self._reset)]
        try:
            if self.family.pooled == "zero":
                handles.append(self.transformer.time_text_embed.register_forward_hook(self._zero_pooled_temb))
            for i, b in enumerate(blocks[: read[-1] + 1]):
                attn = b.attn
                keys = attn.norm_k if attn.norm_k is not None else attn.to_k  # the keys the kernel saw
                handles.append(keys.register_forward_hook(partial(self._capture, i, "key")))
                handles.append(attn.to_v.register_forward_hook(partial(self._capture, i, "value")))
                handles.append(attn.to_out[0].register_forward_pre_hook(partial(self._capture_out, i)))
                handles.append(
                    b.register_forward_hook(
                        partial(self._on_block, i, i in read), with_kwargs=True, prepend=True
                    )
                )
            self._reset()
            yield self
        finally:
            for h in handles:
                h.remove()
            self._cap.clear()
            self._state = self._temb = None

    # -- hooks (all return None) ------------------------------------------------------------------------------
    def _reset(self, *_: Any) -> None:
        if torch.is_grad_enabled() and getattr(self.transformer, "gradient_checkpointing", False):
            raise ProbebenchError("Concept maps do not support gradient checkpointing; run under no_grad.")
        self.maps.clear()
        self.outputs.clear()
        self._cap.clear()
        self._state = self._temb = None

    def _zero_pooled_temb(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        """The concepts' temb: the same timestep (and guidance) with a zero pooled text vector, as the
        reference's FLUX concepts (``module.forward`` skips the hooks; the model's temb is untouched)."""
        self._temb = module.forward(*args[:-1], torch.zeros_like(args[-1]))

    def _capture(self, i: int, what: str, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self._cap.setdefault(i, {})[what] = output

    def _capture_out(self, i: int, module: nn.Module, args: Any) -> None:
        self._cap.setdefault(i, {})["out"] = args[0]

    def _on_block(self, i: int, read: bool, block: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        cap = self._cap.pop(i, {})
        missing = [k for k in ("key", "value", "out") if k not in cap]
        if missing:
            raise ProbebenchError(
                f"{self.adapter.name} block {i} ran without computing the image attention's {missing}: an "
                "attention path the concept stream does not know."
            )
        if self._signature is None:
            self._signature = inspect.signature(block.forward)
        inputs = self._signature.bind(*args, **kwargs).arguments
        img = self.family.image(block, cap, inputs)
        temb = inputs["temb"] if self.family.pooled == "text" else self._temb
        if temb is None:
            raise ProbebenchError(
                f"{self.adapter.name}: the concepts' temb was not computed before block {i}."
            )
        b = temb.shape[0]
        if self._state is None:
            if i != 0:
                raise ProbebenchError(
                    f"{self.adapter.name}: the concept stream ended before block {i} (a context_pre_only block "
                    "that is not the last)."
                )
            embeds = self.concepts.embeds.to(temb.device, self.transformer.dtype).expand(b, -1, -1)
            self._state = self.transformer.context_embedder(embeds)
        nxt, o_c = self.family.step(block, self._state, temb, img)
        if read:
            self.maps[i] = concept_scores(o_c, img.out)
            if self.record:
                self.outputs[i] = o_c
        self._state = nxt


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

    def __init__(self, base: TextConditionedAdapter, concepts: ConceptEmbeddings):
        require_joint_attention(base)
        self.base = base
        self.concepts = concepts
        self.stream = ConceptStream(base, concepts)
        joint = len(self.stream.blocks())
        words = list(concepts.words)
        meta = replace(
            base.meta,
            name=f"{base.name}+concepts",
            num_layers=joint,
            width=len(words),
            notes=f"concept-attention maps of {base.name} for {words}",
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
            "score": SCORE,
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
        return {layer: maps[layer].reshape(maps[layer].shape[0], -1, h, w) for layer in layers}

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


def concept_maps(adapter: Adapter, words: Sequence[str] | ConceptEmbeddings) -> ConceptMapAdapter:
    """An adapter whose features are the concept-attention maps of ``adapter`` for ``words`` (a list of single
    words, or precomputed :class:`ConceptEmbeddings`); errors name the supported backbones, the vocabulary of
    tiny-mmdit, duplicates and empty lists."""
    base = require_joint_attention(adapter)
    concepts = words if isinstance(words, ConceptEmbeddings) else embed_concepts(base, words)
    return ConceptMapAdapter(base, concepts)
