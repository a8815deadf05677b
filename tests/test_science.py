"""Tests that guard the science: each quantity checked against a reference that does not share its code.

- the forward process x_t = α·x0 + σ·ε of every registered diffusion family: diffusers'
  ``DDPMScheduler.add_noise`` with the family's own scheduler config (DiT, PixArt) and
  ``FlowMatchEulerDiscreteScheduler.scale_noise`` (SD3, FLUX, Sana, tiny-mmdit), on the latents the transformer
  actually receives (a pre-hook on the transformer), with the VAE latent computed here from the VAE module;
- the noise: one ε per (image, draw), the documented pure function of (seed, image id, draw), shared by every
  timestep of that draw (recovered from the transformer's input at each timestep);
- the ridge screen as the pipeline calls it (the registered ``ridge`` probe on a cache, λ grid and class
  balancing as in the quickstart preset) against scikit-learn's ``Ridge`` with the absolute λ, on labels WITH
  ignored pixels, targets and weights built here by block counting;
- the segmentation targets, the global fusion weights (a softmax per layer group) and the SIlog training loss
  (λ = 0.85) against values computed by hand.

Nothing here depends on the values of random weights: the references read the same modules the adapter uses.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from _synthetic import write_cache
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from sklearn.linear_model import Ridge

import backbones
from backbones import BACKBONES
from backbones.diffusion import DiffusionAdapter, draw_noise
from probes import PROBES
from probes.base import Split
from probes.fusion import TimestepFusion, layer_groups
from probes.ridge import RidgeAccumulator
from probes.targets import targets_at
from probes.training import Input, TrainConfig, make_objective
from tasks.base import Dataset, TargetSpec

# ---------------------------------------------------------------------------------------------------------------
# forward process and noise
# ---------------------------------------------------------------------------------------------------------------

# The families' own DDPM training schedules, as the HF repos' ``scheduler/scheduler_config.json`` state them:
# facebook/DiT-XL-2-{256,512} (DDIMScheduler) and PixArt-alpha/* (DPMSolverMultistepScheduler, from diffusers'
# PixArt conversion script): 1000 steps, linear betas 1e-4..0.02.
FAMILY_DDPM_SCHEDULERS: dict[str, dict[str, Any]] = {
    "dit": {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"},
    "pixart": {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"},
}
# Flow families: the transformer's ``timestep`` is the scheduler's timestep σ·1000, except FLUX, whose pipeline
# passes ``timestep / 1000`` (the transformer multiplies by 1000 itself).
FLOW_FAMILIES = {"sd3": 1.0, "sana": 1.0, "flux": 1e-3}

SEED = 7
IDS = ["img-a", "img-b"]
# Registered diffusion backbones NOT checked against diffusers' schedulers, each with the reason (none today);
# every other one is, so a new family fails here until its published schedule is added above.
NO_REFERENCE_SCHEDULER: dict[str, str] = {}
DIFFUSION = [
    e
    for e in BACKBONES
    if getattr(e.extra.get("meta"), "is_diffusion", False) and e.name not in NO_REFERENCE_SCHEDULER
]
_ADAPTERS: dict[str, DiffusionAdapter] = {}


pytestmark = pytest.mark.usefixtures("one_thread")


def adapter_of(entry: Any) -> DiffusionAdapter:
    """The entry's test-sized adapter with random weights, batches of exactly the two test images."""
    if entry.name not in _ADAPTERS:
        kwargs = {"compute_batch": len(IDS), **entry.extra["test_kwargs"]}
        _ADAPTERS[entry.name] = backbones.create(entry.extra["test_name"], weights="random", **kwargs)
    return _ADAPTERS[entry.name]


def probe_images(a: DiffusionAdapter) -> torch.Tensor:
    """Two images already at the adapter's input size (resizing is not under test here)."""
    gen = torch.Generator().manual_seed(0)
    return torch.rand(len(IDS), 3, a.image_size, a.image_size, generator=gen)


def vae_latents(a: DiffusionAdapter, images01: torch.Tensor) -> torch.Tensor:
    """x0 from the VAE module itself: posterior mean (or the deterministic latent), then (z − shift)·scale."""
    vae = a.model.vae
    with torch.inference_mode():
        out = vae.encode(images01 * 2.0 - 1.0)
    z = out.latent_dist.mean if hasattr(out, "latent_dist") else out.latent
    shift = vae.config.get("shift_factor") or 0.0
    return ((z.float() - shift) * vae.config["scaling_factor"]).float()


def pack_2x2(z: torch.Tensor) -> torch.Tensor:
    """diffusers' ``FluxPipeline._pack_latents``: (N, C, H, W) → (N, H/2·W/2, 4C)."""
    n, c, h, w = z.shape
    z = z.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(n, (h // 2) * (w // 2), c * 4)


@contextlib.contextmanager
def transformer_inputs(a: DiffusionAdapter) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Record (hidden_states, timestep) of every call of the adapter's transformer."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(_module: Any, args: tuple, kwargs: dict) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        seen.append((hidden.detach().float().clone(), torch.as_tensor(kwargs["timestep"]).float().clone()))

    handle = a.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def reference_noised(
    family: str, x0: torch.Tensor, eps: torch.Tensor, timesteps: list[Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B·T, ...) noisy latents (image-major) and the transformer's timesteps, from diffusers' schedulers."""
    assert family in {*FAMILY_DDPM_SCHEDULERS, *FLOW_FAMILIES}, (
        f"family {family!r}: add its published training schedule to FAMILY_DDPM_SCHEDULERS or FLOW_FAMILIES, "
        "or its backbones to NO_REFERENCE_SCHEDULER with the reason"
    )
    b, n_t = x0.shape[0], len(timesteps)
    x0_rep, eps_rep = x0.repeat_interleave(n_t, 0), eps.repeat_interleave(n_t, 0)
    if family in FAMILY_DDPM_SCHEDULERS:
        sched = DDPMScheduler(**FAMILY_DDPM_SCHEDULERS[family])
        t = torch.tensor(timesteps, dtype=torch.long).repeat(b)
        return sched.add_noise(x0_rep, eps_rep, t), t.float()
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    sched.set_timesteps(sigmas=list(timesteps))  # σ is the noise level after the shift: no shift here
    t = sched.timesteps.float().repeat(b)
    return sched.scale_noise(x0_rep, t, eps_rep), t * FLOW_FAMILIES[family]


def reference_timesteps(family: str) -> list[Any]:
    """t = 0 (least noisy DDPM step / clean flow latent), a middle and a late level; never symmetric."""
    return [0, 400, 999] if family in FAMILY_DDPM_SCHEDULERS else [0.0, 0.3, 0.85]


@pytest.mark.parametrize("entry", DIFFUSION, ids=[e.name for e in DIFFUSION])
def test_forward_process_matches_diffusers_schedulers(entry):
    """The latents the transformer receives equal diffusers' forward process on the VAE latent with ε(seed, id, k),
    for both draws and every timestep; its timestep argument is in the family's own units."""
    a, family = adapter_of(entry), entry.extra["family"]
    x, ts = probe_images(a), reference_timesteps(family)
    x0 = vae_latents(a, x)
    with transformer_inputs(a) as seen:
        a.extract(x, [0], ts, image_ids=IDS, seed=SEED, noise_draws=2)
    assert len(seen) == 2  # one forward per draw, every (image, timestep) in it
    for k, (hidden, model_t) in enumerate(seen):
        eps = torch.stack([draw_noise(x0.shape[1:], seed=SEED, image_id=i, draw=k) for i in IDS])
        want, want_t = reference_noised(family, x0, eps, ts)
        if family == "flux":
            want = pack_2x2(want)
        torch.testing.assert_close(hidden, want, rtol=1e-5, atol=1e-5, msg=f"{entry.name}: x_t of draw {k}")
        torch.testing.assert_close(model_t, want_t, rtol=1e-6, atol=1e-6, msg=f"{entry.name}: timestep")


ENTRY_BY_NAME = {e.name: e for e in DIFFUSION}


def test_scheduler_exclusions_name_registered_diffusion_backbones():
    assert set(NO_REFERENCE_SCHEDULER) <= {e.name for e in BACKBONES}  # a stale exclusion hides nothing


@pytest.mark.parametrize("name", ["dit-xl-2-256", "sd3-medium"])
def test_one_noise_per_image_and_draw_shared_by_all_timesteps(name):
    """ε recovered from the transformer's input, (x_t − α·x0)/σ with diffusers' α and σ, is the same at every
    timestep of a draw, and is the documented pure function of (seed, image id, draw)."""
    entry = ENTRY_BY_NAME[name]
    a, family = adapter_of(entry), entry.extra["family"]
    x = probe_images(a)
    x0 = vae_latents(a, x)
    if family in FAMILY_DDPM_SCHEDULERS:
        ts = [0, 250, 600, 999]
        abar = DDPMScheduler(**FAMILY_DDPM_SCHEDULERS[family]).alphas_cumprod.double()
        coef = [(abar[t].sqrt().item(), (1 - abar[t]).sqrt().item()) for t in ts]
    else:
        ts = [0.1, 0.4, 0.65, 1.0]
        coef = [(1.0 - s, s) for s in ts]
    with transformer_inputs(a) as seen:
        a.extract(x, [0], ts, image_ids=IDS, seed=SEED, noise_draws=2)
    recovered = {}
    for k, (hidden, _) in enumerate(seen):
        xt = hidden.reshape(len(IDS), len(ts), *x0.shape[1:]).double()
        for i, image_id in enumerate(IDS):
            per_t = [(xt[i, j] - al * x0[i].double()) / sg for j, (al, sg) in enumerate(coef)]
            for j in range(1, len(ts)):
                torch.testing.assert_close(
                    per_t[j],
                    per_t[0],
                    rtol=0,
                    atol=2e-3,
                    msg=f"{name}: ε differs between {ts[0]} and {ts[j]}",
                )
            documented = draw_noise(x0.shape[1:], seed=SEED, image_id=image_id, draw=k).double()
            torch.testing.assert_close(per_t[-1], documented, rtol=0, atol=2e-3)
            recovered[(image_id, k)] = per_t[-1]
    # and the noise really varies with the image and the draw
    assert not torch.allclose(recovered[("img-a", 0)], recovered[("img-a", 1)], atol=0.1)
    assert not torch.allclose(recovered[("img-a", 0)], recovered[("img-b", 0)], atol=0.1)


# ---------------------------------------------------------------------------------------------------------------
# ridge screen
# ---------------------------------------------------------------------------------------------------------------

LABEL = 16  # label side (pixels)
GRID = 4  # feature grid side: each cell is a LABEL/GRID block of pixels
K = 3  # classes
IGNORE = 255
DIM = 5


class IgnoredPixels(Dataset):
    """Random 3-class segmentation labels in which ~30 % of the pixels and one whole cell per image are ignored."""

    name = "ignored-pixels"

    def __init__(self, split: str, n: int, seed: int):
        super().__init__(split)
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, K, size=(n, LABEL, LABEL))
        labels[rng.random(labels.shape) < 0.3] = IGNORE
        labels[:, :4, :4] = IGNORE  # a cell with no valid pixel: weight 0
        self.labels = labels.astype(np.int64)

    @property
    def targets(self) -> dict[str, TargetSpec]:
        return {"segmentation": TargetSpec("segmentation", num_classes=K, ignore_index=IGNORE)}

    def __len__(self) -> int:
        return len(self.labels)

    def image_id(self, index: int) -> str:
        return f"{self.split}-{index:03d}"

    def load_image(self, index: int) -> np.ndarray:
        return np.zeros((LABEL, LABEL, 3), np.float32)

    def load_target(self, index: int, kind: str) -> np.ndarray:
        return self.labels[self.check_index(index)]


def block_targets(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: class fractions over the non-ignored pixels (N, g, g, K) and the non-ignored fraction (N, g, g)."""
    n, s = len(labels), LABEL // GRID
    blocks = labels.reshape(n, GRID, s, GRID, s).transpose(0, 1, 3, 2, 4).reshape(n, GRID, GRID, s * s)
    counts = np.stack([(blocks == c).sum(-1) for c in range(K)], -1).astype(np.float64)
    valid = counts.sum(-1)
    y = np.divide(counts, valid[..., None], out=np.zeros_like(counts), where=valid[..., None] > 0)
    return y, valid / (s * s)


def cell_features(labels: np.ndarray, seed: int) -> np.ndarray:
    """(N, g, g, DIM) fp16 features: a noisy linear image of the class fractions, plus pure-noise channels."""
    rng = np.random.default_rng(seed)
    y, _ = block_targets(labels)
    mix = rng.normal(size=(K, DIM))
    return (y @ mix + 0.5 * rng.normal(size=(*y.shape[:3], DIM))).astype(np.float16)


@pytest.fixture(scope="module")
def ignored_splits(tmp_path_factory) -> dict[str, Split]:
    root = tmp_path_factory.mktemp("science-ridge")
    out = {}
    for r, (role, n) in enumerate({"train": 12, "val": 6, "test": 4}.items()):
        ds = IgnoredPixels(role, n, seed=10 + r)
        ids = [ds.image_id(i) for i in range(n)]
        cache = write_cache(root / role, ids, {(2, 500): cell_features(ds.labels, seed=20 + r)})
        out[role] = Split(cache, ds)
    return out


@pytest.mark.parametrize("class_balanced", [True, False])
def test_ridge_screen_matches_sklearn_with_the_absolute_lambda(ignored_splits, class_balanced):
    """The registered ``ridge`` probe, called as the pipeline calls it, fits the coefficients of scikit-learn's
    ``Ridge(alpha=λ·trace(C)/D)`` with sample weights = valid-pixel fraction (× class-balancing weights), on
    targets that exclude ignored pixels."""
    lam = 0.7
    sp = ignored_splits
    probe = PROBES.get("ridge").from_config({"lambdas": [lam], "class_balanced": class_balanced})
    out = probe.fit(sp["train"], sp["val"], sp["test"], ["segmentation"], keys=None, seed=0, progress=False)
    head = out.best["segmentation"]
    assert head.key == (2, 500) and head.lam == lam

    labels = sp["train"].dataset.labels
    y, w = block_targets(labels)
    if class_balanced:  # inverse pixel frequency over the non-ignored train pixels, mean weight 1 over pixels
        counts = np.array([(labels == c).sum() for c in range(K)], dtype=np.float64)
        assert (counts > 0).all()
        class_w = counts.sum() / (K * counts)
        w = w * (y @ class_w)
    x = np.asarray(sp["train"].cache.array((2, 500))[: len(labels)], dtype=np.float64).reshape(-1, DIM)
    y, w = y.reshape(-1, K), w.reshape(-1)
    keep = w > 0
    x, y, w = x[keep], y[keep], w[keep]
    assert (~keep).sum() >= len(labels)  # the fully ignored cells are really out
    mean = (w[:, None] * x).sum(0) / w.sum()
    trace = float((w[:, None] * (x - mean) ** 2).sum())  # trace of the weighted centred covariance
    ref = Ridge(alpha=lam * trace / DIM, fit_intercept=True).fit(x, y, sample_weight=w)
    np.testing.assert_allclose(head.coef, ref.coef_.T, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(head.intercept, ref.intercept_, rtol=1e-7, atol=1e-9)
    # λ matters at this value: the screen is not just close to the unpenalised fit
    loose = Ridge(alpha=lam * trace, fit_intercept=True).fit(x, y, sample_weight=w)
    assert np.abs(loose.coef_ - ref.coef_).max() > 1e-2


def test_relative_lambda_is_the_mean_feature_variance_times_the_weight():
    """The absolute λ of the ridge solver = λ_rel · trace(C)/D, C the weighted centred covariance."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, DIM)) * [1.0, 2.0, 3.0, 0.5, 4.0]
    y, w = rng.normal(size=(40, 2)), rng.uniform(0.2, 1.0, size=40)
    acc = RidgeAccumulator(DIM, 2)
    acc.add(x, y, w)
    _, _, lam = acc.solve([0.1, 1.0])
    mean = (w[:, None] * x).sum(0) / w.sum()
    per_dim = (w[:, None] * (x - mean) ** 2).sum() / DIM
    np.testing.assert_allclose(lam, [0.1 * per_dim, per_dim], rtol=1e-12)


def test_segmentation_targets_exclude_ignored_pixels_by_hand():
    """A 4×4 label on a 2×2 grid: class fractions over non-ignored pixels, weight = non-ignored fraction."""
    label = np.array(
        [
            [0, 1, 2, 2],
            [255, 255, 2, 1],
            [255, 255, 0, 0],
            [255, 255, 0, 255],
        ]
    )
    spec = TargetSpec("segmentation", num_classes=3, ignore_index=255)
    y, w = targets_at(label[None], spec, (2, 2))
    np.testing.assert_allclose(w[0], [[0.5, 1.0], [0.0, 0.75]])
    np.testing.assert_allclose(y[0, 0, 0], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(y[0, 0, 1], [0.0, 0.25, 0.75])
    np.testing.assert_allclose(y[0, 1, 1], [1.0, 0.0, 0.0])
    assert w[0, 1, 0] == 0.0  # no valid pixel: the cell does not count, whatever its soft target


# ---------------------------------------------------------------------------------------------------------------
# fusion group weights
# ---------------------------------------------------------------------------------------------------------------


def test_global_fusion_weights_are_a_softmax_per_layer_group():
    """Logits log[1, 3 | 1, 2, 5] over groups [0, 1] and [2, 3, 4] → weights [1/4, 3/4 | 1/8, 2/8, 5/8]: in the
    fused maps the model computes, in its weight maps and in the reported global weights."""
    torch.manual_seed(0)
    fusion = TimestepFusion([3] * 5, mode="global", width=4, groups=[[0, 1], [2, 3, 4]])
    with torch.no_grad():
        fusion.logits.copy_(torch.log(torch.tensor([1.0, 3.0, 1.0, 2.0, 5.0])))
    fusion.eval()
    expected = [0.25, 0.75, 0.125, 0.25, 0.625]
    xs = [torch.randn(2, 3, 4, 4) for _ in range(5)]
    with torch.no_grad():
        fused = fusion(xs)
        proj = fusion.project(xs)
        maps = fusion.weight_maps(xs)
    assert len(fused) == 2
    want0 = expected[0] * proj[0] + expected[1] * proj[1]
    want1 = expected[2] * proj[2] + expected[3] * proj[3] + expected[4] * proj[4]
    torch.testing.assert_close(fused[0], want0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused[1], want1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(maps, torch.tensor(expected).view(1, 5, 1, 1).expand(2, 5, 4, 4))
    torch.testing.assert_close(fusion.global_weights(), torch.tensor(expected))


def test_layer_groups_are_one_group_per_cache_and_layer():
    def inp(source: int, layer: int, t: Any) -> Input:
        return Input(source, (layer, t), f"L{layer}_T{t}", None, 3, (4, 4))

    inputs = [inp(0, 1, 0), inp(0, 1, 500), inp(0, 3, 0), inp(1, 1, None), inp(0, 3, 500), inp(0, 1, 999)]
    assert layer_groups(inputs, "layer") == [[0, 1, 5], [2, 4], [3]]
    assert layer_groups(inputs, "none") == [[0, 1, 2, 3, 4, 5]]


# ---------------------------------------------------------------------------------------------------------------
# SIlog training loss
# ---------------------------------------------------------------------------------------------------------------

DEPTH = TargetSpec("depth", min_depth=0.1, max_depth=10.0)
# valid log-depth errors d = [0.2, -0.1, 0.5, 0.3]: mean 0.225, mean square 0.0975
# SIlog (λ = 0.85) = sqrt(0.0975 − 0.85·0.225² + 1e-8) = sqrt(0.05446876) = 0.2333854...
SILOG_085 = math.sqrt(0.0975 - 0.85 * 0.225**2 + 1e-8)


def _depth_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Targets (1, 2, 3) in metres with two invalid pixels (0, and beyond max_depth), and predicted log-depth
    errors [0.2, -0.1, ·, 0.5, 0.3, ·] (the invalid pixels' errors are large and must not count)."""
    target = torch.tensor([[[1.0, 2.0, 0.0], [4.0, 0.5, 20.0]]])
    d = torch.tensor([[[0.2, -0.1, 3.0], [0.5, 0.3, -4.0]]])
    log_pred = torch.log(torch.where(target > 0, target, torch.ones_like(target))) + d
    return log_pred, target


def test_silog_training_loss_by_hand():
    assert math.isclose(SILOG_085, 0.2333854, abs_tol=1e-7)  # and not 0.2686773 (λ = 0.5)
    log_pred, target = _depth_case()
    silog = make_objective(DEPTH, TrainConfig(depth_loss="silog"))
    assert silog.loss(log_pred[:, None], target).item() == pytest.approx(SILOG_085, rel=1e-5)
    # the bins objective regresses the expected depth in metres: the same loss on its logarithm
    bins = make_objective(DEPTH, TrainConfig(depth_loss="bins"))
    assert bins.loss(log_pred.exp()[:, None], target).item() == pytest.approx(SILOG_085, rel=1e-5)
