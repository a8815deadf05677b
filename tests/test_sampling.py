"""Sampling with the family's own diffusers pipeline and reading features in the same pass
(``backbones/diffusion/sampling.py``): tiny-mmdit through ``StableDiffusion3Pipeline`` is its training recipe's
sampler bit for bit, the schedule passes through every head noise level exactly, and the features read during
sampling are the adapter's own features of the latent the transformer saw at that step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import backbones
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

    def keep(module, args, kwargs):  # the latent the transformer sees at each head σ (timestep = σ·1000, float32)
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


def test_families_without_a_sampling_pipeline_say_so():
    dit = backbones.create("dit-xl-2-256", weights="random", config="tiny")
    with pytest.raises(ProbebenchError, match="sampling is not supported for this family yet"):
        sample_with_features(dit, noise(1), plan_sigmas([1.0, 0.5], []), [0])
