"""The concept stream: concept tokens carried through an MM-DiT's joint blocks by the text stream's own weights.

The mechanism of ConceptAttention (Helbling et al., 2025) behind :mod:`backbones.diffusion.concepts` (which makes
its maps features and documents the defaults and their source): :class:`ConceptStream` rides on the model's own
forward with hooks that only read. Forward hooks capture what the joint attention already computes (the image keys,
values and — for the cross-attention baseline — queries, and the image attention output before ``to_out``); a hook
on each block's output advances the concept tokens by one block with that block's text-stream modules
(:func:`sd3_concept_step`, :func:`flux_concept_step`), whose concept rows attend to [image; concepts] and are the
only rows kept. Every hook returns ``None``, so the transformer's outputs and every image feature are bit-identical
with and without the stream. :data:`FAMILIES` says what differs between the SD3 class and FLUX.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backbones.base import Adapter
from backbones.diffusion.adapter import TextConditionedAdapter
from probebench.core.errors import ProbebenchError

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


# -- one block of the concept stream ---------------------------------------------------------------------------
@dataclass
class ImageAttention:
    """What the model's joint attention computed for the image tokens of one block, as its kernel used it:
    ``key``/``value`` (B, H, N, d) and ``out`` (B, N, H·d), the image rows of the attention before ``to_out``."""

    key: torch.Tensor
    value: torch.Tensor
    out: torch.Tensor
    query: torch.Tensor | None = None  # (B, H, N, d), captured for the cross-attention baseline only


def sd3_concept_step(
    block: nn.Module, c: torch.Tensor, temb: torch.Tensor, img: ImageAttention
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """One ``JointTransformerBlock`` for the concept tokens ``c`` (B, C, D) with the block's text-stream modules:
    returns (the next concept tokens, or None after a ``context_pre_only`` block; the concept rows' attention
    output before ``to_add_out``, (B, C, H·d); the concepts' keys as the attention used them, (B, H, C, d)). The
    queries are the concepts only, the keys and values [image; concepts]: the image never attends to the
    concepts."""
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
        return None, o, k
    c = c + g_msa.unsqueeze(1) * attn.to_add_out(o)
    n2 = block.norm2_context(c) * (1 + sc_mlp[:, None]) + sh_mlp[:, None]
    c = c + g_mlp.unsqueeze(1) * block.ff_context(n2)
    return c, o, k


def flux_concept_step(
    block: nn.Module, c: torch.Tensor, temb: torch.Tensor, img: ImageAttention
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
    return c, o, k


def _sd3_image(block: nn.Module, cap: dict[str, torch.Tensor], inputs: dict[str, Any]) -> ImageAttention:
    """SD3: keys (queries) from ``norm_k`` (``norm_q``) (B, H, N, d) or ``to_k`` (``to_q``) (B, N, H·d);
    values from ``to_v``."""
    b, heads = inputs["temb"].shape[0], block.attn.heads

    def split(x: torch.Tensor) -> torch.Tensor:  # (B, N, H·d) → (B, H, N, d)
        return x.view(b, -1, heads, x.shape[-1] // heads).transpose(1, 2) if x.ndim == 3 else x

    query = split(cap["query"]) if "query" in cap else None
    return ImageAttention(split(cap["key"]), split(cap["value"]), cap["out"], query)


def _flux_image(block: nn.Module, cap: dict[str, torch.Tensor], inputs: dict[str, Any]) -> ImageAttention:
    """FLUX: keys from ``norm_k`` (B, N, H, d), then RoPE at the image rows of the block's rotary tables (which
    are [text; image]), as the processor applies it after the norm; values from ``to_v``."""
    from diffusers.models.embeddings import apply_rotary_emb

    rope = inputs.get("image_rotary_emb")
    n_txt = inputs["encoder_hidden_states"].shape[1]

    def rotated(x: torch.Tensor) -> torch.Tensor:  # (B, N, H, d) → (B, H, N, d), RoPE at the image rows
        if rope is not None:
            x = apply_rotary_emb(x, (rope[0][n_txt:], rope[1][n_txt:]), sequence_dim=1)
        return x.transpose(1, 2)

    value = cap["value"].unflatten(-1, (-1, block.attn.head_dim))
    query = rotated(cap["query"]) if "query" in cap else None
    return ImageAttention(rotated(cap["key"]), value.transpose(1, 2), cap["out"], query)


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


def cross_attention_scores(k_c: torch.Tensor, q_img: torch.Tensor) -> torch.Tensor:
    """(B, C, N) float32, ConceptAttention's baseline: softmax over concepts of the head-averaged scaled dot
    products of the image queries ``q_img`` (B, H, N, d) with the concept keys ``k_c`` (B, H, C, d) — the
    cross-attention logits between image and concept tokens, before any softmax over keys."""
    d = q_img.shape[-1]
    logits = torch.einsum("bhcd,bhnd->bcn", k_c.float(), q_img.float()) / (k_c.shape[1] * d**0.5)
    return logits.softmax(dim=1)


SCORES: dict[str, str] = {
    "output": SCORE,
    "cross-attention": "softmax over concepts of mean over heads of <q_img, k_c> / sqrt(d), float32",
}
"""What a map is, by score name (part of the fingerprint): ``output`` is ConceptAttention's maps (the method),
``cross-attention`` its baseline, the image–concept attention logits."""


class ConceptStream:
    """Concept tokens carried through an MM-DiT's joint blocks by the text stream's own weights, reading
    the image through a separate attention whose concept rows alone are kept; the model's tensors are never
    replaced (every hook returns None).

    ``with stream.attached(read=layers): <any forward of adapter.transformer>`` fills ``stream.maps`` (layer →
    (B, C, N) float32, softmaxed over concepts) for the read layers the forward reached; ``record=True`` also
    keeps ``stream.outputs`` (layer → the concept rows' attention output (B, C, H·d)). ``score``: ``output``
    (:func:`concept_scores`, the method) or ``cross-attention`` (:func:`cross_attention_scores`, its baseline;
    the image queries are captured too). Each transformer forward starts the stream afresh.
    """

    def __init__(
        self,
        adapter: TextConditionedAdapter,
        concepts: ConceptEmbeddings,
        *,
        record: bool = False,
        score: str = "output",
    ):
        self.adapter = require_joint_attention(adapter)
        if score not in SCORES:
            raise ProbebenchError(f"Unknown concept score {score!r}. Valid: {', '.join(SCORES)}.")
        self.score = score
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
                if self.score == "cross-attention":
                    queries = attn.norm_q if attn.norm_q is not None else attn.to_q
                    handles.append(queries.register_forward_hook(partial(self._capture, i, "query")))
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
        nxt, o_c, k_c = self.family.step(block, self._state, temb, img)
        if read:
            if self.score == "output":
                self.maps[i] = concept_scores(o_c, img.out)
            else:
                assert img.query is not None  # captured when the score needs it
                self.maps[i] = cross_attention_scores(k_c, img.query)
            if self.record:
                self.outputs[i] = o_c
        self._state = nxt
