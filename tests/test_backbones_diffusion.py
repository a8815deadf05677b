"""Diffusion-transformer adapters (DiT, SD3, FLUX, PixArt, Sana) and DINOv3, on tiny random configs.

Parametrized over the registry minus :data:`EXCLUDE`: every other entry is built through its ``test_name`` /
``test_kwargs`` (``config="tiny"``: the real diffusers/timm classes with test-sized dimensions), so a newly
registered diffusion family is tested here without editing this file. Where one test cannot apply to an entry,
the entry is left out by an exclusion list of its own, each with the reason. The adapter contract every
backbone shares (shapes and keys, finite values, determinism and noise identity, batch independence, early
exit, timestep sensitivity, layer range, offline error) is ``backbones.contract``, run over the whole registry
by ``tests/test_check_backbone.py``; this file keeps what is particular to these families.
"""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

import backbones
from backbones import BACKBONES
from backbones.base import BackboneMeta
from backbones.contract import check_offline
from backbones.diffusion import (
    DiffusionAdapter,
    PromptEmbeddingCache,
    TextConditionedAdapter,
    TextConditioning,
    draw_noise,
    image_tokens,
    latent_image_ids,
    pack_latents_2x2,
    require_transformers,
    stable_seed,
    unpack_latents_2x2,
    vae_downsample,
)
from probebench.core.errors import ProbebenchError, WeightsNotFoundError

# Registry entries NOT tested in this file, each with the reason; every other one is.
EXCLUDE: dict[str, str] = {
    "timm:": "the prefix family serving any timm model, with no metadata of its own: tests/test_timm_backbone.py",
}
# Entries left out of one test only, each with the reason.
TEXT_EXCLUDE: dict[str, str] = {  # test_text_conditioning_injection_and_prompt
    "dit-xl-2-512": "class-conditioned like dit-xl-2-256, which checks that text options are rejected",
    "flux.1-schnell": "the FLUX adapter and test-sized text shape of flux.1-dev",
    "pixart-alpha-512": "the PixArt adapter of pixart-sigma-1024",
    "pixart-alpha-1024": "the PixArt adapter of pixart-sigma-1024",
    "tiny-mmdit": "conditioned on a caption of its own vocabulary (caption=[...]), not a prompt or injected embeddings",
}
NO_MANUAL_FORWARD: dict[str, str] = {  # test_hooks_agree_with_a_manual_forward_of_the_blocks, by family
    "pixart": "no hand-written forward yet; test_hooks_agree_with_an_unhooked_full_forward checks its hooks",
    "sana": "no hand-written forward yet; test_hooks_agree_with_an_unhooked_full_forward checks its hooks",
}

ENTRIES = [e for e in BACKBONES if e.name not in EXCLUDE]
DIFFUSION = [e for e in ENTRIES if getattr(e.extra.get("meta"), "is_diffusion", False)]
DINO = [
    e for e in ENTRIES if e.extra.get("family") == "dinov3"
]  # DINOv3's own options (CLS, register tokens)
IDS = lambda entries: [e.name for e in entries]  # noqa: E731
# entries whose weights ship with the package (no hub download, no test-sized config: their real size is small)
SHIPPED = [e for e in ENTRIES if e.source.startswith("shipped")]
HUB = [e for e in ENTRIES if e not in SHIPPED]

_CACHE: dict[str, backbones.Adapter] = {}


def make(entry, **kwargs) -> backbones.Adapter:
    """The entry's tiny test adapter (cached when built with the default options)."""
    kw = {"compute_batch": 2, **entry.extra["test_kwargs"], **kwargs}
    if kwargs:
        return backbones.create(entry.extra["test_name"], weights="random", **kw)
    if entry.name not in _CACHE:
        _CACHE[entry.name] = backbones.create(entry.extra["test_name"], weights="random", **kw)
    return _CACHE[entry.name]


def images(n: int = 3, size: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def two_timesteps(a: DiffusionAdapter) -> list:
    return [300, 700] if a.meta.timestep_convention == "ddpm" else [0.3, 0.7]


def grid(a: DiffusionAdapter) -> tuple[int, int]:
    side = a.image_size // a.vae_factor // a.token_patch
    return side, side


def test_exclusions_name_registered_backbones():
    """A stale exclusion hides nothing: remove it."""
    assert set(EXCLUDE) <= {e.name for e in BACKBONES}
    assert set(TEXT_EXCLUDE) <= {e.name for e in DIFFUSION}
    assert set(NO_MANUAL_FORWARD) <= {e.extra["family"] for e in DIFFUSION}


def test_registry_has_the_contract_names_with_metadata():
    names = set(BACKBONES.names())
    for required in (
        "dit-xl-2-256",
        "dit-xl-2-512",
        "pixart-sigma-1024",
        "sd3-medium",
        "flux.1-dev",
        "flux.1-schnell",
        "dinov3-vits16",
        "dinov3-vitb16",
        "dinov3-vitl16",
    ):
        assert required in names
    expect = {
        "dit-xl-2-256": (28, 1152, 2, "ddpm"),
        "sd3-medium": (24, 1536, 2, "flow"),
        "flux.1-dev": (57, 3072, 2, "flow"),
        "pixart-sigma-1024": (28, 1152, 2, "ddpm"),
        "dinov3-vitl16": (24, 1024, 16, "none"),
    }
    for name, (layers, width, patch, conv) in expect.items():
        meta = BACKBONES.entry(name).extra["meta"]
        assert (meta.num_layers, meta.width, meta.patch_size, meta.timestep_convention) == (
            layers,
            width,
            patch,
            conv,
        )
    for e in ENTRIES:
        meta = e.extra["meta"]
        assert isinstance(meta, BackboneMeta) and meta.source and meta.license and meta.revision is None
        # hub models test at a tiny config; shipped ones (tiny-mmdit) at their real, already small size
        assert e.extra["test_kwargs"] == ({} if e in SHIPPED else {"config": "tiny"})
    assert [e.name for e in SHIPPED] == ["tiny-mmdit"]


def test_vae_factors_match_the_published_configs():
    expect = {
        "dit-xl-2-256": (0.18215, None),
        "sd3-medium": (1.5305, 0.0609),
        "flux.1-dev": (0.3611, 0.1159),
        "flux.1-schnell": (0.3611, 0.1159),
        "pixart-sigma-1024": (0.13025, None),
        "pixart-alpha-512": (0.18215, None),
        "sana-1600m-1024": (0.41407, None),
    }
    for name, (scale, shift) in expect.items():
        extra = BACKBONES.entry(name).extra["meta"].extra
        assert (extra["vae_scaling_factor"], extra["vae_shift_factor"]) == (scale, shift)
        a = make(BACKBONES.entry(name))  # the tiny VAE keeps the factors
        assert (a.vae_scale, a.vae_shift) == (scale, shift or 0.0)


def test_vae_downsample_from_module_or_config():
    from diffusers import AutoencoderKL

    kl = {
        "block_out_channels": [8, 8, 8],
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "norm_num_groups": 4,
    }
    vae = AutoencoderKL(**kl)
    assert vae_downsample(vae) == vae_downsample(dict(vae.config)) == vae_downsample(kl) == 4
    assert vae.encode(torch.zeros(1, 3, 16, 16)).latent_dist.mean.shape[-1] == 16 // 4
    # DC-AE names its encoder's levels (the decoder's list may differ): f32 from six levels
    dc = {"encoder_block_out_channels": [8] * 6, "decoder_block_out_channels": [8] * 2}
    assert vae_downsample(dc) == 32


# ----------------------------------------------------------------------------------------- diffusion adapters


@pytest.mark.parametrize("entry", DIFFUSION, ids=IDS(DIFFUSION))
def test_builds_and_describes(entry):
    a = make(entry)
    assert isinstance(a, DiffusionAdapter) and a.meta.is_diffusion
    assert a.num_layers == len(a.blocks()) and a.meta.family == entry.extra["family"]
    json.dumps(a.fingerprint()), json.dumps(a.describe(), default=str)
    assert a.fingerprint()["schedule"]["convention"] == a.meta.timestep_convention
    assert a.model.transformer is a.transformer and hasattr(a.model, "vae")


@pytest.mark.parametrize("entry", DIFFUSION, ids=IDS(DIFFUSION))
def test_token_grid_and_text_tokens_of_the_test_configs(entry):
    """The contract's shapes check asserts every map is (B, width, *token grid) with exactly the requested
    keys; here, the grid itself."""
    a = make(entry)
    # tiny configs: 64 px / VAE 8 / patch 2 (Sana: 128 px / DC-AE 32 / patch 1) = a 4x4 grid of image tokens;
    # tiny-mmdit at its real size: 64 px / VAE 4 / patch 2 = 8x8. The text tokens (which FLUX single-stream
    # and SD3 joint blocks carry along) never reach the map
    assert grid(a) == ((8, 8) if entry in SHIPPED else (4, 4))
    if isinstance(a, TextConditionedAdapter):
        assert a.text.embeds.shape[1] not in (0, 16)


@pytest.mark.parametrize("entry", DIFFUSION, ids=IDS(DIFFUSION))
def test_hooks_agree_with_an_unhooked_full_forward(entry):
    """Early-exit hook features equal the block output seen by a plain hook during a complete forward."""
    a = make(entry)
    x, ts, ids = images(2), two_timesteps(a), ["m", "n"]
    layer = a.num_layers - 2
    feats = a.extract(x, [layer], ts, image_ids=ids)
    with torch.inference_mode():
        z0 = a.encode(a.preprocess(x))
        zt = a.noised(z0, ts, ids, seed=0, draw=0)
        seen = {}
        h = a.blocks()[layer].register_forward_hook(lambda _m, _i, out: seen.setdefault("out", out))
        try:
            a.run_transformer(zt, a.model_timesteps(ts, 2))  # runs to the end: no early exit here
        finally:
            h.remove()
    out = seen["out"]
    tok = out[-1] if isinstance(out, tuple) else out
    hh, ww = grid(a)
    tok = tok[:, -hh * ww :]
    ref = tok.reshape(2 * len(ts), hh, ww, -1).permute(0, 3, 1, 2).reshape(2, len(ts), -1, hh, ww)
    for i, t in enumerate(ts):
        torch.testing.assert_close(feats[(layer, t)], ref[:, i].float(), rtol=1e-5, atol=1e-5)


def _manual_tokens(a: DiffusionAdapter, zt: torch.Tensor, model_t: torch.Tensor) -> list[torch.Tensor]:
    """Image tokens after every block, from a hand-written forward through the diffusers modules."""
    t, fam, n = a.transformer, a.meta.family, zt.shape[0]
    out = []
    if fam == "dit":
        labels = torch.full((n,), a.class_id, dtype=torch.long)
        hs = t.pos_embed(zt)
        for blk in t.transformer_blocks:
            hs = blk(hs, timestep=model_t, class_labels=labels)
            out.append(hs)
    elif fam == "sd3":
        ctx, pooled, _ = a.text_inputs(n)
        hs, temb, ctx = t.pos_embed(zt), t.time_text_embed(model_t, pooled), t.context_embedder(ctx)
        for blk in t.transformer_blocks:
            ctx, hs = blk(hidden_states=hs, encoder_hidden_states=ctx, temb=temb)
            out.append(hs)
    elif fam == "flux":
        ctx, pooled, _ = a.text_inputs(n)
        h, w = zt.shape[-2] // 2, zt.shape[-1] // 2
        hs = t.x_embedder(pack_latents_2x2(zt))
        g = torch.full((n,), a.guidance_scale) * 1000 if a.guidance_scale is not None else None
        temb = (
            t.time_text_embed(model_t * 1000, pooled)
            if g is None
            else t.time_text_embed(model_t * 1000, g, pooled)
        )
        ctx = t.context_embedder(ctx)
        rope = t.pos_embed(torch.cat([torch.zeros(ctx.shape[1], 3), latent_image_ids(h, w)]))
        for blk in [*t.transformer_blocks, *t.single_transformer_blocks]:
            res = blk(hidden_states=hs, encoder_hidden_states=ctx, temb=temb, image_rotary_emb=rope)
            ctx, hs = res if isinstance(res, tuple) else (res[:, : ctx.shape[1]], res[:, ctx.shape[1] :])
            out.append(hs)
    else:
        raise AssertionError(
            f"no hand-written forward of family {fam!r}: write one here, or add it to NO_MANUAL_FORWARD with the "
            "reason"
        )
    return out


MANUAL = [e for e in DIFFUSION if e.extra["family"] not in NO_MANUAL_FORWARD]


@pytest.mark.parametrize("entry", MANUAL, ids=IDS(MANUAL))
def test_hooks_agree_with_a_manual_forward_of_the_blocks(entry):
    a = make(entry)
    x, ts, ids = images(2), two_timesteps(a), ["s", "t"]
    feats = a.extract(x, "all", ts, image_ids=ids)
    hh, ww = grid(a)
    with torch.inference_mode():
        zt = a.noised(a.encode(a.preprocess(x)), ts, ids, seed=0, draw=0)
        manual = _manual_tokens(a, zt, a.model_timesteps(ts, 2))
    assert len(manual) == a.num_layers
    for layer, tok in enumerate(manual):
        assert tok.shape[1] == hh * ww
        ref = tok.reshape(2, len(ts), hh, ww, -1).permute(0, 1, 4, 2, 3)
        for i, t in enumerate(ts):
            torch.testing.assert_close(feats[(layer, t)], ref[:, i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("entry", DIFFUSION, ids=IDS(DIFFUSION))
def test_out_of_range_layers_and_timesteps_name_the_range(entry):
    a = make(entry)
    n = a.num_layers
    with pytest.raises(ProbebenchError, match=rf"valid indices are 0..{n - 1}"):
        a.extract(images(1), [n], None)
    if a.meta.timestep_convention == "ddpm":
        bad = [
            (1000, r"\[0, 999\]"),
            (-1, r"\[0, 999\]"),
            (2.5, "not an integer"),
            ("soon", "Invalid timestep"),
        ]
    else:
        bad = [(1.5, r"sigma in \[0, 1\]"), (-0.1, r"sigma in \[0, 1\]"), ("soon", "Invalid timestep")]
    for t, msg in bad:
        with pytest.raises(ProbebenchError, match=msg):
            a.extract(images(1), [0], [t])


@pytest.mark.parametrize("entry", DIFFUSION, ids=IDS(DIFFUSION))
def test_timestep_defaults_and_log_snr(entry):
    a = make(entry)
    if a.meta.timestep_convention == "ddpm":
        from diffusers import DDPMScheduler

        assert a.resolve_timesteps(None) == [0, 250, 500, 750]
        assert a.resolve_timesteps("500, 0,500") == [0, 500] and a.resolve_timesteps(250.0) == [250]
        abar = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").alphas_cumprod.double()
        for t in (0, 1, 500, 999):
            assert a.log_snr(t) == pytest.approx(math.log(abar[t] / (1 - abar[t])), rel=1e-9)
        snr = [a.log_snr(t) for t in range(0, 1000, 37)]
        assert all(x > y for x, y in itertools.pairwise(snr))
        assert math.isfinite(a.log_snr(0))  # t = 0 is the least noisy training step, not a clean latent
    else:
        assert a.resolve_timesteps(None) == [0.0, 0.25, 0.5, 0.75]
        assert a.log_snr(0.0) == math.inf and a.log_snr(1.0) == -math.inf and a.log_snr(0.5) == 0.0
        assert a.log_snr(0.2) == pytest.approx(2 * math.log(0.8 / 0.2))


@pytest.mark.parametrize("entry", HUB, ids=IDS(HUB))
def test_default_weights_offline_fail_fast_naming_the_cache(entry):
    """The contract's offline check (HF_HUB_OFFLINE=1, empty caches): WeightsNotFoundError in under a second,
    naming the cache it looked in and the hub repo."""
    result = check_offline(entry.name)
    assert result.passed and result.value < 1.0, result.line()
    msg = result.data["message"]
    assert result.data["error"] == "WeightsNotFoundError"
    assert result.data["cache"] in msg and "HF_HUB_OFFLINE" in msg
    assert entry.extra["meta"].source.split("/")[-1].split(".")[0] in msg


@pytest.mark.parametrize("entry", HUB, ids=IDS(HUB))
def test_tiny_config_needs_random_weights(entry):
    with pytest.raises(ProbebenchError, match="needs weights='random'"):
        backbones.create(entry.name, weights="default", config="tiny")


# ----------------------------------------------------------------------------------------- family options


def test_dit_class_conditioning():
    entry = BACKBONES.entry("dit-xl-2-256")
    null = make(entry)
    cls5 = make(entry, class_id=5)
    assert null.class_id == 1000 and null.fingerprint()["conditioning"]["null_class"]
    assert cls5.fingerprint() != null.fingerprint()
    x = images(1)
    assert not torch.allclose(null.extract(x, [1], [500])[(1, 500)], cls5.extract(x, [1], [500])[(1, 500)])
    with pytest.raises(ProbebenchError, match=r"class_id must be an ImageNet class in 0..999"):
        make(entry, class_id=1001)
    with pytest.raises(ProbebenchError, match="takes no option"):
        make(entry, prompt="a cat")


def test_flux_guidance_dev_only():
    dev = make(BACKBONES.entry("flux.1-dev"))
    assert dev.guidance_scale == 3.5 and dev.fingerprint()["conditioning"]["guidance_scale"] == 3.5
    g5 = make(BACKBONES.entry("flux.1-dev"), guidance_scale=5.0)
    x = images(1)
    assert not torch.allclose(dev.extract(x, [0], [0.5])[(0, 0.5)], g5.extract(x, [0], [0.5])[(0, 0.5)])
    assert make(BACKBONES.entry("flux.1-schnell")).guidance_scale is None
    with pytest.raises(ProbebenchError, match="no guidance embedding"):
        make(BACKBONES.entry("flux.1-schnell"), guidance_scale=3.5)


def test_flux_latent_packing_roundtrip_and_ids():
    z = torch.randn(2, 16, 6, 8)
    packed = pack_latents_2x2(z)
    assert packed.shape == (2, 12, 64) and torch.equal(unpack_latents_2x2(packed, 6, 8), z)
    assert torch.equal(packed[0, 1], z[0, :, 0:2, 2:4].reshape(-1))  # token (0, 1): channel-major 2x2 patch
    ids = latent_image_ids(3, 4)
    assert ids.shape == (12, 3) and ids[5].tolist() == [0.0, 1.0, 1.0]


TEXT = [e for e in DIFFUSION if e.name not in TEXT_EXCLUDE]


@pytest.mark.parametrize("entry", TEXT, ids=IDS(TEXT))
def test_text_conditioning_injection_and_prompt(entry):
    a = make(entry)
    if not isinstance(a, TextConditionedAdapter):  # class-conditioned (DiT): text options are rejected
        with pytest.raises(ProbebenchError, match="takes no option"):
            make(entry, text_embeddings=TextConditioning(torch.randn(1, 4, 8)))
        return
    text = a.text
    other = TextConditioning(
        torch.randn(1, 9, text.embeds.shape[-1]),
        None if text.pooled is None else torch.randn_like(text.pooled),
        None,
        source="test",
    )
    b = make(entry, text_embeddings=other)
    c = make(entry, prompt="a photo of a cat")
    assert len({json.dumps(m.fingerprint()["conditioning"]) for m in (a, b, c)}) == 3
    x = images(1)
    fa, fb = a.extract(x, [0], two_timesteps(a)[:1]), b.extract(x, [0], two_timesteps(a)[:1])
    assert all(not torch.allclose(fa[k], fb[k]) for k in fa)
    with pytest.raises(ProbebenchError, match="Text embeddings must have shape"):
        make(entry, text_embeddings=TextConditioning(torch.randn(1, 4, 7), text.pooled))


def test_prompt_embedding_cache_computes_once(tmp_path):
    cache = PromptEmbeddingCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return TextConditioning(torch.randn(1, 5, 8), torch.randn(1, 3), torch.ones(1, 5, dtype=torch.long))

    key = {"backbone": "sd3-medium", "prompt": ""}
    first = cache.get(key, compute)
    second = PromptEmbeddingCache(tmp_path).get(key, compute)
    assert calls == [1] and cache.path(key).is_file()
    assert torch.equal(first.embeds, second.embeds) and torch.equal(first.pooled, second.pooled)
    assert torch.equal(first.mask, second.mask) and first.digest() == second.digest()


def test_real_prompt_embedding_without_transformers_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "transformers" else real(n, *a)
    )
    with pytest.raises(ProbebenchError, match="pip install transformers sentencepiece"):
        require_transformers("Embedding the prompt")


@pytest.mark.parametrize("name", ["dit-xl-2-256", "flux.1-schnell"])
def test_local_diffusers_folder_weights(name, tmp_path):
    entry = BACKBONES.entry(name)
    a = make(entry)
    a.model.transformer.save_pretrained(tmp_path / "transformer")
    a.model.vae.save_pretrained(tmp_path / "vae")
    kw = {"text_embeddings": a.text} if isinstance(a, TextConditionedAdapter) else {}
    b = backbones.create(name, weights=str(tmp_path), image_size=a.image_size, compute_batch=2, **kw)
    assert b.weights_id.startswith("dir:") and b.num_layers == a.num_layers
    x = images(2)
    fa, fb = a.extract(x, [0, -1], two_timesteps(a)), b.extract(x, [0, -1], two_timesteps(a))
    for k in fa:
        assert torch.equal(fa[k], fb[k])
    with pytest.raises(WeightsNotFoundError, match="diffusers folder"):
        backbones.create(name, weights=str(tmp_path / "missing"))


def test_noise_is_a_pure_function_of_seed_id_draw():
    a = draw_noise((4, 3), seed=1, image_id="x", draw=0)
    assert torch.equal(a, draw_noise((4, 3), seed=1, image_id="x", draw=0))
    for other in (
        {"seed": 2, "image_id": "x", "draw": 0},
        {"seed": 1, "image_id": "y", "draw": 0},
        {"seed": 1, "image_id": "x", "draw": 1},
    ):
        assert not torch.equal(a, draw_noise((4, 3), **other))
    assert stable_seed(1, "x", 0) == stable_seed("1:x:0")  # the seed hashes f"{seed}:{image_id}:{draw}"


def test_image_token_selection_handles_tuples_and_concatenated_streams():
    img, txt = torch.randn(2, 6, 4), torch.randn(2, 3, 4)
    assert image_tokens((txt, img), 6) is img and image_tokens((None, img), 6) is img
    assert torch.equal(image_tokens(torch.cat([txt, img], 1), 6), img)
    with pytest.raises(ProbebenchError, match="fewer than"):
        image_tokens(txt, 6)


# ----------------------------------------------------------------------------------------- DINOv3


@pytest.mark.parametrize("entry", DINO, ids=IDS(DINO))
def test_dinov3_maps_cls_and_no_timesteps(entry):
    a = make(entry)
    assert a.meta.family == "dinov3" and not a.meta.is_diffusion and a.num_prefix_tokens == 5
    x = images(2)
    feats = a.extract(x, [0, -1])
    side = a.image_size // 16
    assert all(
        f.shape == (2, a.meta.width, side, side) for f in feats.values()
    )  # CLS/registers are not pixels
    both, cls = a.extract(x, [0, -1], return_cls=True)
    assert all(torch.equal(both[k], feats[k]) for k in feats)
    assert set(cls) == set(feats) and all(c.shape == (2, a.meta.width) for c in cls.values())
    assert torch.equal(a.extract_cls(x, [-1])[(a.num_layers - 1, None)], cls[(a.num_layers - 1, None)])
    with pytest.raises(ProbebenchError, match="not a diffusion model"):
        a.extract(x, [0], [500])
    assert a.log_snr(None) is None


# ----------------------------------------------------------------------------------------- real sizes


@pytest.mark.slow
def test_real_size_dit_xl_and_dinov3_vitl_random_weights():
    """The real architectures (DiT-XL/2 256: 28 x 1152; DINOv3 ViT-L/16: 24 x 1024) with random weights."""
    dit = backbones.create("dit-xl-2-256", weights="random", compute_batch=1)
    assert (dit.num_layers, dit.meta.width, dit.image_size) == (28, 1152, 256)
    f = dit.extract(images(1, 32), [13], [500])[(13, 500)]
    assert f.shape == (1, 1152, 16, 16) and torch.isfinite(f).all()
    del dit
    dino = backbones.create("dinov3-vitl16", weights="random", compute_batch=1)
    assert (dino.num_layers, dino.meta.width) == (24, 1024)
    f = dino.extract(images(1, 32), [12])[(12, None)]
    assert f.shape == (1, 1024, 16, 16) and torch.isfinite(f).all()
