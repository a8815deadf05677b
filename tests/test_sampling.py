"""Sampling with the family's own diffusers pipeline and reading features in the same pass
(``backbones/diffusion/sampling.py``): tiny-mmdit through ``StableDiffusion3Pipeline`` is its training recipe's
sampler bit for bit, the schedule passes through every head noise level exactly, and the features read during
sampling are the adapter's own features of the latent the transformer saw at that step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import backbones
from backbones.diffusion import TextConditioning
from backbones.diffusion.sampling import plan_sigmas, sample_with_features
from probebench.core.errors import ProbebenchError

HEADS = [0.0, 0.1, 0.2, 0.35, 0.5, 0.7]


@pytest.fixture(scope="module")
def tiny():
    return backbones.create("tiny-mmdit")


def noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_the_schedule_passes_through_every_head_noise_level():
    plan = plan_sigmas(np.linspace(1, 0, 41)[:-1], HEADS)
    assert len(plan.sigmas) == 40 and plan.clean  # multiples of 0.025: no step added
    assert plan.capture == {12: 0.7, 20: 0.5, 26: 0.35, 32: 0.2, 36: 0.1}
    coarse = plan_sigmas([1.0, 0.75, 0.5, 0.25], [0.3, 0.5])
    assert coarse.sigmas == (1.0, 0.75, 0.5, float(np.float32(0.3)), 0.25)  # 0.3 inserted, in order
    assert coarse.capture == {2: 0.5, 3: 0.3} and not coarse.clean
    with pytest.raises(
        ProbebenchError, match=r"\[0\.9\] lie above the sampling schedule's first noise level 0\.8"
    ):
        plan_sigmas([0.8, 0.4], [0.9, 0.2])


def test_tiny_mmdit_through_the_sd3_pipeline_is_its_training_sampler(tiny):
    """The library's pipeline (scheduler, Euler steps) gives the recipe's own sampler's images exactly."""
    from backbones.tiny.model import PAD_ID, load_weights
    from recipes.tiny_mmdit.train import Denoiser, sample

    transformer, caption, _ = load_weights()
    steps = 8
    plan = plan_sigmas(np.linspace(1, 0, steps + 1)[:-1], [])
    ours = sample_with_features(tiny, noise(2, seed=3), plan, [0])
    ids = torch.full(
        (2, tiny.text.embeds.shape[1]), PAD_ID
    )  # the empty caption, as the adapter's conditioning
    recipe = sample(Denoiser(transformer, caption), ids, steps=steps, seed=3, vae=tiny.model.vae)
    assert torch.equal(ours.images, recipe)
    assert ours.forwards == {"sampler": steps, "clean": 0}


def test_features_read_while_sampling_are_the_adapters_features_of_that_latent(tiny):
    """At each capture step the hooks keep exactly what ``adapter.forward_features`` gives for the latent the
    transformer saw at that σ; σ = 0 is one extra forward on the final latent; nothing else is run twice."""
    plan = plan_sigmas(np.linspace(1, 0, 41)[:-1], HEADS)
    seen: dict[float, torch.Tensor] = {}

    def keep(
        module, args, kwargs
    ):  # the latent the transformer sees at each head σ (timestep = σ·1000, float32)
        t = float(kwargs["timestep"].reshape(-1)[0])
        for s in HEADS[1:]:
            if t == float(torch.tensor(s, dtype=torch.float32) * 1000):
                seen[s] = kwargs["hidden_states"].clone()

    handle = tiny.transformer.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        traj = sample_with_features(tiny, noise(2), plan, [2, 4])
    finally:
        handle.remove()
    assert set(traj.features) == {(la, s) for la in (2, 4) for s in HEADS}
    assert traj.forwards == {"sampler": 40, "clean": 1}
    for s in HEADS[1:]:
        ref = tiny.forward_features(seen[s], tiny.model_timesteps([s], 2), [2, 4])
        assert all(torch.equal(traj.features[(la, s)], ref[la]) for la in (2, 4)), s
    clean = tiny.forward_features(traj.latents, tiny.model_timesteps([0.0], 2), [2, 4])
    assert torch.equal(traj.features[(4, 0.0)], clean[4])
    assert traj.images.shape == (2, 3, 64, 64) and traj.images.min() >= 0 and traj.images.max() <= 1


def test_families_without_a_sampling_pipeline_say_so(monkeypatch):
    from backbones.diffusion import DiffusionAdapter
    from backbones.dit import DiTAdapter

    dit = tiny_family("dit-xl-2-256")
    monkeypatch.setattr(DiTAdapter, "sampling_pipeline", DiffusionAdapter.sampling_pipeline)  # the base hook
    with pytest.raises(ProbebenchError, match="sampling is not supported for this family yet"):
        sample_with_features(dit, family_noise(dit, 1), dit.sampling_plan(2, []), [0])


# ------------------------------------------------------------------------ the other families, tiny random configs
# (name, head levels in the family's native units): flow σ (0 = the clean latent, one extra forward), DDPM t
FAMILIES = {
    "flux.1-dev": [0.0, 0.35, 0.6180339],  # 0.618...: not on the family's 4-step grid, so a step is inserted
    "flux.1-schnell": [0.0, 0.35],
    "sana-1600m-1024": [0.0, 0.35, 0.6],
    "pixart-sigma-1024": [0, 250, 600],  # t = 0 is a DDPM noise level like any other: read at its own step
    "pixart-alpha-512": [0, 600],
    "dit-xl-2-256": [0, 250, 600],
}
_TINY: dict[str, backbones.Adapter] = {}


def tiny_family(name: str) -> backbones.Adapter:
    if name not in _TINY:
        ad = backbones.create(name, weights="random", config="tiny")
        if name.startswith(("pixart", "sana")):
            # masked like real T5 / Gemma embeddings: these pipelines require an attention mask, and the seeded
            # stand-ins carry none (an all-ones mask is the same attention, but not bit for bit)
            t = ad.text
            ad.set_text_conditioning(
                TextConditioning(t.embeds, None, torch.ones(t.embeds.shape[:2], dtype=torch.long))
            )
        _TINY[name] = ad
    return _TINY[name]


def family_noise(ad, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *ad.sampling_latent_shape(), generator=torch.Generator().manual_seed(seed))


def sample_recording(ad, x, plan, layers, **kw):
    """Sample while recording every transformer forward's (timestep, latent) in call order, as the pipeline
    passes them (before the sampler's own hook)."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def keep(module, args, kwargs):
        latent = args[0] if args else kwargs["hidden_states"]
        calls.append((kwargs["timestep"].clone(), latent.clone()))

    handle = ad.transformer.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        return sample_with_features(ad, x, plan, layers, **kw), calls
    finally:
        handle.remove()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_family_samples_through_its_pipeline_reading_the_adapters_features(name):
    """Through the family's own pipeline (packed latents for FLUX, DDPM timesteps for PixArt and DiT): the
    transformer runs once per planned level, at exactly the level (model units); at each head level the features
    read are ``adapter.forward_features`` of the latent the transformer saw there, bit for bit (one batch of the
    same 2 rows, float32); a flow σ = 0 is one counted forward on the final latent."""
    ad = tiny_family(name)
    heads = FAMILIES[name]
    plan = ad.sampling_plan(4, heads)
    assert plan.convention == ad.schedule.convention
    read_at_a_step = [h for h in heads if plan.convention == "ddpm" or h > 0]  # flow σ = 0: after sampling
    assert sorted(plan.capture.values()) == sorted(read_at_a_step)
    traj, calls = sample_recording(ad, family_noise(ad, 2), plan, [0, 2])
    model_t = [float(ad.model_timesteps([level], 1)[0]) for level in plan.sigmas] + [0.0] * plan.clean
    assert [float(t.reshape(-1)[0]) for t, _ in calls] == model_t  # the schedule, step by step, unshifted
    assert traj.forwards == {"sampler": len(plan.sigmas), "clean": int(plan.clean)}
    assert plan.clean == (plan.convention == "flow")
    # the reference is conditioned as the sampler conditions: each sample's prompt stacked into the batch (the
    # adapter's fixed prompt alone is one expanded row, which some kernels round differently)
    with ad.sampling_conditioning(None, 2):
        for i, level in plan.capture.items():
            seen = ad.sampling_unpack(calls[i][1])
            ref = ad.forward_features(seen, ad.model_timesteps([level], 2), [0, 2])
            assert all(torch.equal(traj.features[(la, level)], ref[la]) for la in (0, 2)), (name, level)
        if plan.clean:
            clean = ad.forward_features(traj.latents, ad.model_timesteps([0.0], 2), [2])
            assert torch.equal(traj.features[(2, 0.0)], clean[2])
    side = ad.image_size // ad.vae_factor
    assert traj.latents.shape == (2, ad.model.vae.config.latent_channels, side, side)  # unpacked for FLUX
    assert traj.images.shape == (2, 3, ad.image_size, ad.image_size)


def test_plans_in_ddpm_timesteps():
    """DDPM families plan over integer timesteps: heads inserted in order, t = 0 a level like any other (no extra
    clean forward), a level above the schedule's first or a non-integer one refused; each adapter plans in its
    own units."""
    plan = plan_sigmas([999, 749, 500, 250], [0, 600, 250], "ddpm")
    assert plan.sigmas == (999, 749, 600, 500, 250, 0) and plan.levels == plan.sigmas
    assert plan.capture == {2: 600, 4: 250, 5: 0} and not plan.clean and plan.convention == "ddpm"
    with pytest.raises(
        ProbebenchError, match=r"\[999\] lie above the sampling schedule's first noise level 980"
    ):
        plan_sigmas([980, 500], [999], "ddpm")
    with pytest.raises(ProbebenchError, match=r"Head timestep 0\.35 is not a DDPM timestep"):
        plan_sigmas([999, 500], [0.35], "ddpm")
    with pytest.raises(ProbebenchError, match="expected 'flow' or 'ddpm'"):
        plan_sigmas([1.0], [], "edm")
    assert plan_sigmas([1.0, 0.5], [0.5]).convention == "flow"  # the SD3 signature is unchanged
    assert tiny_family("dit-xl-2-256").sampling_plan(4, [250]).convention == "ddpm"
    assert tiny_family("flux.1-schnell").sampling_plan(4, [0.3]).convention == "flow"


# family → the rows of a guided forward that hold the samples' own conditioning (None: FLUX's separate calls)
GUIDED = {"flux.1-schnell": None, "pixart-sigma-1024": slice(2, 4), "dit-xl-2-256": slice(0, 2)}


@pytest.mark.parametrize("name", list(GUIDED))
def test_guided_sampling_reads_the_conditional_forward(name, monkeypatch):
    """Under classifier-free guidance the features are the samples' own conditioning's: FLUX's true CFG runs the
    conditional forward first and the negative second (2 forwards a step; the first is read, bit for bit); PixArt's
    batch is [negative; conditional], DiT's [class; null class] (one forward of 4 rows a step, read rows compared
    with a 2-row reference: equal up to a matrix product's last bits)."""
    ad = tiny_family(name)
    plan = ad.sampling_plan(3, [0.5] if ad.schedule.convention == "flow" else [500])
    ((i, level),) = plan.capture.items()
    if name.startswith("dit"):
        conditioning, negative = [3, 3], None
        ref_cond = lambda: monkeypatch.setattr(ad, "class_id", 3)  # noqa: E731
        other_cond = lambda: monkeypatch.setattr(ad, "class_id", 1000)  # noqa: E731
    else:
        t = ad.text
        draw = lambda s: torch.randn(t.embeds.shape, generator=torch.Generator().manual_seed(s))  # noqa: E731
        cond, neg = (TextConditioning(draw(s), t.pooled, t.mask) for s in (1, 2))
        conditioning, negative = [cond, cond], neg
        ref_cond = lambda: ad.set_text_conditioning(cond)  # noqa: E731
        other_cond = lambda: ad.set_text_conditioning(neg)  # noqa: E731
    original = getattr(ad, "text", None)
    traj, calls = sample_recording(
        ad, family_noise(ad, 2), plan, [1], conditioning=conditioning, guidance=3.0, negative=negative
    )
    rows = GUIDED[name]
    per_step = 1 if rows is not None else 2
    assert traj.forwards["sampler"] == per_step * len(plan.sigmas)
    seen = calls[per_step * i][1]
    seen = ad.sampling_unpack(seen if rows is None else seen[rows])
    try:
        ref_cond()
        ref = ad.forward_features(seen, ad.model_timesteps([level], 2), [1])[1]
        other_cond()
        other = ad.forward_features(seen, ad.model_timesteps([level], 2), [1])[1]
    finally:
        if original is not None:
            ad.set_text_conditioning(original)
    got = traj.features[(1, level)]
    if rows is None:
        assert torch.equal(got, ref)
    else:
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(
        got, other, atol=1e-3
    )  # the negative's (null class's) features: not what was read


def test_flux_bfloat16_timestep_rounding_is_replaced_by_the_planned_level():
    """FluxPipeline casts t = σ·1000 to the latents' dtype and divides by 1000: in bfloat16 σ = 0.6180339 reaches
    the transformer as 0.62109375, while extraction gives bf16(σ). The sampler feeds the planned level at capture
    steps, so the features are the extraction's at the head's σ, bit for bit."""
    ad = backbones.create("flux.1-dev", weights="random", config="tiny", dtype="bfloat16")
    plan = ad.sampling_plan(4, [0.6180339])
    ((i, level),) = plan.capture.items()
    traj, calls = sample_recording(ad, family_noise(ad, 2), plan, [0, 2], decode=False)
    assert (
        float(calls[i][0][0]) == 0.62109375
    )  # what the pipeline passes (recorded before the sampler's hook)
    with ad.sampling_conditioning(None, 2):
        seen = ad.sampling_unpack(calls[i][1])
        ref = ad.forward_features(seen, ad.model_timesteps([level], 2), [0, 2])
        rounded = ad.forward_features(seen, calls[i][0].float(), [0, 2])
    assert all(torch.equal(traj.features[(la, level)], ref[la]) for la in (0, 2))
    assert not torch.equal(ref[2], rounded[2])  # the pipeline's own timestep would have given other features


def test_dit_loop_is_ditpipeline_bit_for_bit():
    """DiTPipeline takes neither initial noise nor a schedule, so DiT samples with its loop repeated here with
    both; given DiTPipeline's own noise and timesteps the images are the same, guided or not."""
    from diffusers import DiTPipeline
    from diffusers.utils.torch_utils import randn_tensor

    ad = tiny_family("dit-xl-2-256")
    ours = ad.sampling_pipeline()
    theirs = DiTPipeline(transformer=ad.transformer, vae=ad.model.vae, scheduler=ours.scheduler)
    theirs.set_progress_bar_config(disable=True)
    for g in (1.0, 4.0):
        gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
        ref = theirs(
            class_labels=[3, 7], guidance_scale=g, generator=gen(), num_inference_steps=4, output_type="pt"
        )
        x = randn_tensor((2, *ad.sampling_latent_shape()), generator=gen(), dtype=ad.transformer.dtype)
        timesteps = theirs.scheduler.timesteps.tolist()
        out = ours(class_labels=[3, 7], guidance_scale=g, latents=x, timesteps=timesteps, output_type="pt")
        assert torch.equal(out.images, ref.images), g


def test_sampling_errors_name_what_is_wrong(monkeypatch):
    from diffusers import FlowMatchEulerDiscreteScheduler

    flux, dit = tiny_family("flux.1-schnell"), tiny_family("dit-xl-2-256")
    pixart = tiny_family("pixart-sigma-1024")
    with pytest.raises(ProbebenchError, match=r"samples in 'ddpm' units, the plan is in 'flow' units"):
        sample_with_features(pixart, family_noise(pixart, 1), plan_sigmas([1.0, 0.5], []), [0])
    with pytest.raises(ProbebenchError, match=r"initial noise must have shape \(batch, 16, 64\)"):
        sample_with_features(flux, torch.zeros(1, 16, 8, 8), flux.sampling_plan(2, []), [0])  # unpacked
    with pytest.raises(ProbebenchError, match="guides against the null class 1000"):
        sample_with_features(dit, family_noise(dit, 1), dit.sampling_plan(2, []), [0], negative=3)
    with pytest.raises(ProbebenchError, match=r"class ids in 0..1000 \(1000: the null class\), got 'cat'"):
        sample_with_features(dit, family_noise(dit, 1), dit.sampling_plan(2, []), [0], conditioning=["cat"])
    alpha = tiny_family("pixart-alpha-1024")  # test-sized, with micro-conditions at sample_size 8
    with pytest.raises(ProbebenchError, match="micro-conditions exactly when its sample_size is 128"):
        sample_with_features(alpha, family_noise(alpha, 1), alpha.sampling_plan(2, []), [0])
    own = flux.sampling_pipeline

    def shifted():  # a scheduler that shifts the σ it is given
        pipe = own()
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
        return pipe

    monkeypatch.setattr(flux, "sampling_pipeline", shifted)
    with pytest.raises(
        ProbebenchError, match=r"step 1 ran the transformer at timestep 0\.75.*moved the planned"
    ):
        sample_with_features(flux, family_noise(flux, 1), flux.sampling_plan(2, [0.5]), [0])
