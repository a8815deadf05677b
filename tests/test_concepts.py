"""Concept attention (``backbones/diffusion/concepts.py``): the concept stream rides on the model's own forward
without changing one bit of it, reproduces a hand-written attention to 1e-5, never lets the image see the
concepts, and its maps are cached features keyed by the concept words."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import backbones
import tasks
from backbones.diffusion import concepts as concepts_mod
from backbones.diffusion.concepts import (
    MEMORY_FRACTION,
    ConceptEmbeddings,
    ConceptStream,
    concept_maps,
    concept_memory_bytes,
    embed_concepts,
)
from backbones.random_init import standard_random_init
from backbones.store import extract_to_cache
from probebench.core.errors import ProbebenchError

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["sphere", "box", "floor", "background"]


@pytest.fixture(scope="module")
def tiny():
    return backbones.create("tiny-mmdit", compute_batch=2)


@pytest.fixture(scope="module")
def sd3():
    return backbones.create("sd3-medium", weights="random", config="tiny")


@pytest.fixture(scope="module")
def sd35():
    """The tiny SD3 config with SD3.5's QK-norm (RMSNorm, non-unit weights) and dual attention in block 0."""
    from diffusers import SD3Transformer2DModel

    ad = backbones.create("sd3-medium", weights="random", config="tiny")
    cfg = {k: v for k, v in ad.transformer.config.items() if not k.startswith("_")}
    cfg.update(qk_norm="rms_norm", dual_attention_layers=(0,))
    tr = standard_random_init(SD3Transformer2DModel(**cfg), 3)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in tr.named_parameters():
            if ".attn" in name and ".norm_" in name:  # RMSNorm weights start at one: make them matter
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
    ad.model.transformer = tr.eval().requires_grad_(False)
    assert ad.blocks()[0].attn.norm_added_q is not None and ad.blocks()[0].attn2 is not None
    return ad


@pytest.fixture(scope="module")
def flux():
    return backbones.create("flux.1-schnell", weights="random", config="tiny")


@pytest.fixture(scope="module")
def flux_dev():  # embeds a guidance scale in its temb
    return backbones.create("flux.1-dev", weights="random", config="tiny")


def latents(ad, n: int = 2, seed: int = 0) -> torch.Tensor:
    """Model latents (n, C, h, w) as ``forward_features`` takes them."""
    side = ad.image_size // ad.vae_factor
    shape = (n, int(ad.model.vae.config.latent_channels), side, side)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def joint_layers(ad) -> list[int]:
    return list(range(len(ad.transformer.transformer_blocks)))


def images(n: int = 3, size: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


# -- 1. bit-identical with the stream attached ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny", "sd3", "sd35", "flux", "flux_dev"])
def test_outputs_and_image_features_are_bit_identical_with_the_stream(name, request):
    ad = request.getfixturevalue(name)
    words = WORDS if name == "tiny" else ["cat", "dog", "sky"]
    score = "cross-attention" if name in ("sd35", "flux_dev") else "output"  # the baseline's hooks too
    stream = ConceptStream(ad, embed_concepts(ad, words), score=score)
    layers, joint = list(range(ad.num_layers)), joint_layers(ad)  # FLUX: + the single-stream layers
    z, t = latents(ad), ad.model_timesteps([0.6], 2)
    with torch.inference_mode():
        out = ad.run_transformer(z, t)[0]
        feats = ad.forward_features(z, t, layers)
        with stream.attached(read=joint):
            out_c = ad.run_transformer(z, t)[0]
            assert sorted(stream.maps) == joint  # every read layer got a map: the hooks did run
            for m in stream.maps.values():
                assert m.shape == (2, len(words), z.shape[-1] * z.shape[-2] // 4) and torch.isfinite(m).all()
            feats_c = ad.forward_features(z, t, layers)
            assert sorted(stream.maps) == joint
    assert torch.equal(out, out_c)
    for layer in layers:
        assert torch.equal(feats[layer], feats_c[layer])
    # and the whole extraction (encode, noise, draws, early exit) of the image features
    x, ts = images(), [0.3, 0.7]
    plain = ad.extract(x, [0, ad.num_layers - 1], ts, seed=5, noise_draws=2)
    with stream.attached(read=joint):
        hooked = ad.extract(x, [0, ad.num_layers - 1], ts, seed=5, noise_draws=2)
    assert plain.keys() == hooked.keys() and all(torch.equal(plain[k], hooked[k]) for k in plain)
    assert not stream._cap and all(not b._forward_hooks for b in ad.blocks())  # hooks removed on exit


# -- 2. a hand-written reference ------------------------------------------------------------------------------
def _lin(x, m):
    return F.linear(x, m.weight, m.bias)


def _ln(x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def _rms(x, m):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + m.eps) * m.weight


def _heads(x, h):
    b, n, d = x.shape
    return x.reshape(b, n, h, d // h).permute(0, 2, 1, 3)


def _merge(x):
    b, h, n, d = x.shape
    return x.permute(0, 2, 1, 3).reshape(b, n, h * d)


def _attend(q, k, v):
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return w @ v


def reference_block(block, h, ctx, c, temb):
    """One joint block by hand from its weights: (next concept tokens or None, concept rows o_c, maps)."""
    attn, heads = block.attn, block.attn.heads
    chunks = 9 if block.use_dual_attention else 6
    shift, scale = _lin(F.silu(temb), block.norm1.linear).chunk(chunks, dim=1)[:2]
    nh = _ln(h) * (1 + scale[:, None]) + shift[:, None]
    qi, ki, vi = (_heads(_lin(nh, m), heads) for m in (attn.to_q, attn.to_k, attn.to_v))
    if attn.norm_q is not None:
        qi, ki = _rms(qi, attn.norm_q), _rms(ki, attn.norm_k)

    def context(x):  # the text stream's modulation and projections, for the text or the concepts
        mod = _lin(F.silu(temb), block.norm1_context.linear)
        if block.context_pre_only:
            sc, sh = mod.chunk(2, dim=1)  # AdaLayerNormContinuous: scale first
            gates = None
        else:
            sh, sc, *gates = mod.chunk(6, dim=1)
        n = _ln(x) * (1 + sc[:, None]) + sh[:, None]
        q, k, v = (_heads(_lin(n, m), heads) for m in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        if attn.norm_added_q is not None:
            q, k = _rms(q, attn.norm_added_q), _rms(k, attn.norm_added_k)
        return q, k, v, gates

    _, kt, vt, _ = context(ctx)
    o_img = _merge(_attend(qi, torch.cat([ki, kt], 2), torch.cat([vi, vt], 2)))  # the model's image rows
    qc, kc, vc, gates = context(c)
    o_c = _merge(_attend(qc, torch.cat([ki, kc], 2), torch.cat([vi, vc], 2)))  # concepts: image + concepts
    maps = torch.softmax(torch.einsum("bcd,bnd->bcn", o_c, o_img), dim=1)
    cross = _cross(qi, kc)
    if gates is None:
        return None, o_c, maps, cross
    g_msa, sh_mlp, sc_mlp, g_mlp = gates
    c = c + g_msa[:, None] * _lin(o_c, attn.to_add_out)
    n2 = _ln(c) * (1 + sc_mlp[:, None]) + sh_mlp[:, None]
    ff = block.ff_context.net
    c = c + g_mlp[:, None] * _lin(F.gelu(_lin(n2, ff[0].proj), approximate="tanh"), ff[2])
    return c, o_c, maps, cross


def _cross(q_img, k_c):
    """ConceptAttention's baseline by hand: softmax over concepts of the head-averaged q_img·k_c / √d."""
    logits = (q_img @ k_c.transpose(-1, -2)).mean(1) / math.sqrt(q_img.shape[-1])  # (B, N, C)
    return torch.softmax(logits.transpose(1, 2), dim=1)


def _rope(x, cos, sin):
    """Interleaved rotary embedding of x (B, H, S, d) with tables (S, d): pairs (x0, x1) → (x0·cos − x1·sin, ...)."""
    x0, x1 = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    return x * cos + torch.stack([-x1, x0], dim=-1).flatten(-2) * sin


def reference_flux_block(block, h, ctx, c, temb, temb_c, rope):
    """One FLUX double-stream block by hand: RoPE over [text; image] after QK-norm; concepts at RoPE position 0
    (the identity), their keys [concepts; image], their temb the zero-pooled one."""
    attn, heads = block.attn, block.attn.heads
    shift, scale = _lin(F.silu(temb), block.norm1.linear).chunk(6, dim=1)[:2]
    nh = _ln(h) * (1 + scale[:, None]) + shift[:, None]
    qi, ki, vi = (_heads(_lin(nh, m), heads) for m in (attn.to_q, attn.to_k, attn.to_v))
    qi, ki = _rms(qi, attn.norm_q), _rms(ki, attn.norm_k)

    def context(x, e):
        sh, sc, *gates = _lin(F.silu(e), block.norm1_context.linear).chunk(6, dim=1)
        n = _ln(x) * (1 + sc[:, None]) + sh[:, None]
        q, k, v = (_heads(_lin(n, m), heads) for m in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        return _rms(q, attn.norm_added_q), _rms(k, attn.norm_added_k), v, gates

    qt, kt, vt, _ = context(ctx, temb)
    n_txt = ctx.shape[1]
    q_all = _rope(torch.cat([qt, qi], 2), *rope)
    k_all = _rope(torch.cat([kt, ki], 2), *rope)
    o_img = _merge(_attend(q_all, k_all, torch.cat([vt, vi], 2)))[:, n_txt:]
    qc, kc, vc, (g_msa, sh_mlp, sc_mlp, g_mlp) = context(c, temb_c)
    o_c = _merge(_attend(qc, torch.cat([kc, k_all[:, :, n_txt:]], 2), torch.cat([vc, vi], 2)))
    maps = torch.softmax(torch.einsum("bcd,bnd->bcn", o_c, o_img), dim=1)
    cross = _cross(q_all[:, :, n_txt:], kc)
    c = c + g_msa[:, None] * _lin(o_c, attn.to_add_out)
    n2 = _ln(c) * (1 + sc_mlp[:, None]) + sh_mlp[:, None]
    ff = block.ff_context.net
    c = c + g_mlp[:, None] * _lin(F.gelu(_lin(n2, ff[0].proj), approximate="tanh"), ff[2])
    return c, o_c, maps, cross


@pytest.mark.parametrize("name", ["sd3", "sd35", "flux", "flux_dev"])
def test_concept_rows_match_a_hand_written_attention(name, request):
    ad = request.getfixturevalue(name)
    concepts = embed_concepts(ad, ["cat", "dog", "sky"])
    blocks = list(ad.transformer.transformer_blocks)
    flux = name.startswith("flux")
    assert flux or (blocks[-1].context_pre_only and len(blocks) == 3)
    inputs, temb_args = {}, []
    handles = [
        b.register_forward_pre_hook(
            lambda m, a, kw, i=i: inputs.__setitem__(
                i, (kw["hidden_states"], kw["encoder_hidden_states"], kw["temb"], kw.get("image_rotary_emb"))
            ),
            with_kwargs=True,
        )
        for i, b in enumerate(blocks)
    ]
    tte = ad.transformer.time_text_embed
    handles.append(tte.register_forward_pre_hook(lambda m, a: temb_args.append(a)))
    stream = ConceptStream(ad, concepts, record=True)
    baseline = ConceptStream(ad, concepts, score="cross-attention")  # ConceptAttention's baseline maps
    z, t = latents(ad, seed=2), ad.model_timesteps([0.5], 2)
    read = range(len(blocks))
    try:
        with torch.inference_mode(), stream.attached(read=read), baseline.attached(read=read):
            ad.run_transformer(z, t)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        c = _lin(concepts.embeds.expand(2, -1, -1), ad.transformer.context_embedder)
        (targs,) = temb_args
        temb_c = tte(*targs[:-1], torch.zeros_like(targs[-1]))  # FLUX concepts: the zero pooled vector
        for i, b in enumerate(blocks):
            h, ctx, temb, rope = inputs[i]
            if flux:
                c_next, o_c, maps, cross = reference_flux_block(b, h, ctx, c, temb, temb_c, rope)
            else:
                c_next, o_c, maps, cross = reference_block(b, h, ctx, c, temb)
            torch.testing.assert_close(stream.outputs[i], o_c, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(stream.maps[i], maps, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(baseline.maps[i], cross, atol=1e-5, rtol=1e-5)
            assert not torch.allclose(cross, maps, atol=1e-3)  # two different readings
            c = c_next
    assert flux or c is None  # the last SD3 block ends the stream
    assert not torch.allclose(stream.maps[0], stream.maps[len(blocks) - 1])  # the concepts moved


# -- 3. one-directional -------------------------------------------------------------------------------------
def test_image_never_sees_the_concepts_and_concepts_see_each_other(tiny):
    layers = list(range(tiny.num_layers))
    z, t = latents(tiny, seed=3), tiny.model_timesteps([0.5], 2)
    a = ConceptStream(tiny, embed_concepts(tiny, ["sphere", "box"]), record=True)
    b = ConceptStream(tiny, embed_concepts(tiny, ["sphere", "cone", "floor"]), record=True)
    with torch.inference_mode():
        plain = tiny.forward_features(z, t, layers)
        with a.attached(read=layers):
            fa = tiny.forward_features(z, t, layers)
        with b.attached(read=layers):
            fb = tiny.forward_features(z, t, layers)
    assert all(torch.equal(plain[k], fa[k]) and torch.equal(plain[k], fb[k]) for k in layers)
    # "sphere" is concept 0 of both; its rows differ because the concepts attend to each other
    assert not torch.allclose(a.outputs[0][:, 0], b.outputs[0][:, 0])
    assert a.maps[3].shape[1] == 2 and b.maps[3].shape[1] == 3


# -- 4. maps as cached features -----------------------------------------------------------------------------
def test_concept_maps_are_cached_features_keyed_by_the_words(tiny, tmp_path, monkeypatch):
    data = tasks.create("scenes", split="val", resolution=64, num_images=5)
    cm = concept_maps(tiny, WORDS)
    other = concept_maps(tiny, ["sphere", "box", "floor"])
    kw = dict(layers=[1, 5], timesteps=[0.3, 0.6], shard_size=2, batch_size=3, progress=False, noise_draws=2)
    cache = extract_to_cache(cm, data, cache_root=tmp_path / "one", **kw)
    assert cache.keys == [(1, 0.3), (1, 0.6), (5, 0.3), (5, 0.6)]
    assert cache.path.name.startswith("tiny-mmdit+concepts-scenes-val-")
    assert cache.fingerprint["adapter"]["concepts"]["words"] == WORDS
    arrays = {k: cache.array(k)[:] for k in cache.keys}
    for arr in arrays.values():
        assert arr.shape == (5, 8, 8, 4) and arr.dtype == np.float16
        np.testing.assert_allclose(arr.astype(np.float32).sum(-1), 1.0, atol=4e-3)  # softmax over concepts
        assert arr.astype(np.float32).std() > 0.01  # maps, not a constant
    x = torch.stack([torch.from_numpy(data.load_image(i)).permute(2, 0, 1) for i in range(5)])
    ids = [data.image_id(i) for i in range(5)]  # the same rows per forward as the cache's: the same bits
    direct = cm.extract(x, [1, 5], [0.3, 0.6], image_ids=ids, noise_draws=2)
    for k in cache.keys:
        np.testing.assert_array_equal(arrays[k], direct[k].permute(0, 2, 3, 1).numpy().astype(np.float16))
    # another concept set: another cache; the same one again: reused, nothing recomputed
    assert extract_to_cache(other, data, cache_root=tmp_path / "one", **kw).path != cache.path
    monkeypatch.setattr(cm, "iter_extract", lambda *a, **k: pytest.fail("a complete cache was recomputed"))
    assert extract_to_cache(cm, data, cache_root=tmp_path / "one", **kw).path == cache.path
    monkeypatch.undo()
    # two ranks (rank 1 first, then rank 0 writes the manifest) give the same bytes as one
    extract_to_cache(cm, data, cache_root=tmp_path / "two", rank=1, world_size=2, **kw)
    two = extract_to_cache(cm, data, cache_root=tmp_path / "two", rank=0, world_size=2, **kw)
    for k in cache.keys:
        np.testing.assert_array_equal(two.array(k)[:], arrays[k])


# -- 5. bad input ---------------------------------------------------------------------------------------------
def test_bad_concepts_and_backbones_are_explained(tiny, sd3, monkeypatch):
    with pytest.raises(ProbebenchError, match=r"'dog'.*vocabulary \['background', 'floor'"):
        concept_maps(tiny, ["sphere", "dog"])
    with pytest.raises(ProbebenchError, match=r"distinct: \['box'\]"):
        concept_maps(tiny, ["box", "sphere", "box"])
    with pytest.raises(ProbebenchError, match="at least one concept word"):
        concept_maps(tiny, [])
    with pytest.raises(ProbebenchError, match="single non-empty words"):
        concept_maps(tiny, ["sphere box"])
    with pytest.raises(ProbebenchError, match="a list of words"):
        concept_maps(tiny, "sphere")
    with pytest.raises(ProbebenchError, match="width 5 for sd3-medium, whose context embedder takes 24"):
        concept_maps(sd3, ConceptEmbeddings(("a", "b"), torch.zeros(1, 2, 5)))
    dit = backbones.create("dit-xl-2-256", weights="random", config="tiny")
    supported = "flux.1-dev, flux.1-schnell, sd3-medium, tiny-mmdit"
    with pytest.raises(ProbebenchError, match=rf"has none\. Backbones that support them: {supported}\."):
        concept_maps(dit, ["cat"])
    # too many concepts for memory: the error says how many fit
    cm = concept_maps(tiny, WORDS)
    sizes = dict(rows=2 * 2, tokens=64, heads=3, width=192, read_layers=1)
    free = concept_memory_bytes(concepts=2, **sizes) / MEMORY_FRACTION
    monkeypatch.setattr(concepts_mod, "available_memory", lambda device: int(free))
    with pytest.raises(ProbebenchError, match=r"4 concepts need .* at most 2 concepts at compute_batch 2"):
        cm.extract(images(), [3], [0.3, 0.6])
    monkeypatch.setattr(concepts_mod, "available_memory", lambda device: int(free) * 4)
    assert cm.extract(images(), [3], [0.3, 0.6])[(3, 0.3)].shape == (3, 4, 8, 8)


def test_flux_maps_exist_at_the_double_stream_layers_only(flux):
    cm = concept_maps(flux, ["cat", "dog"])
    assert cm.num_layers == len(flux.transformer.transformer_blocks) == 2 < flux.num_layers
    maps = cm.extract(images(2), "all", [0.5])
    assert sorted(maps) == [(0, 0.5), (1, 0.5)]
    assert maps[(1, 0.5)].shape == (2, 2, 4, 4)  # 64 px / VAE 8 / 2x2 packing
    torch.testing.assert_close(maps[(1, 0.5)].sum(1), torch.ones(2, 4, 4))
    assert cm.fingerprint()["concepts"]["pooled"] == "zero"
    with pytest.raises(ProbebenchError, match=r"this backbone has 2 layers, valid indices are 0\.\.1"):
        cm.extract(images(2), [3], [0.5])
