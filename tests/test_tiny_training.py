"""The tiny MM-DiT training script: deterministic steps, weight-file round trip, sample grid, captions."""

from __future__ import annotations

import copy
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from backbones.tiny import model as tiny
from recipes.tiny_mmdit import train as tt

SMALL = {
    "resolution": 16,
    "num_layers": 2,
    "num_heads": 2,
    "head_dim": 16,
    "text_dim": 32,
    "pool_size": 16,
    "batch_size": 4,
    "steps": 20,
    "warmup": 2,
    "lr": 2e-3,
}


@pytest.fixture(scope="module")
def pool() -> tuple[torch.Tensor, torch.Tensor]:
    return tt.render_pool("train", SMALL["pool_size"], SMALL["resolution"])


def run_steps(
    pool: tuple[torch.Tensor, torch.Tensor], n: int, **over: object
) -> tuple[tt.Trainer, list[float]]:
    trainer = tt.Trainer(tt.TrainConfig(**{**SMALL, **over}), *pool)
    return trainer, [trainer.step()[0] for _ in range(n)]


def test_pool_and_captions(pool: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, ids = pool
    assert images.shape == (16, 3, 16, 16) and images.dtype == torch.uint8
    assert ids.shape == (16, tiny.MAX_TOKENS)
    assert all("floor" in tt.caption_text(row).split() for row in ids)  # every scene shows its floor
    assert tt.caption_text(tiny.caption_from_names(["torus", "floor"])) == "floor torus"
    assert tt.caption_text(tiny.empty_ids(1)[0]) == ""


def test_training_is_deterministic_and_learns(pool: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.set_num_threads(1)
    _, a = run_steps(pool, 6)
    _, b = run_steps(pool, 6)
    assert a == b  # same seed → identical loss values
    _, c = run_steps(pool, 6, seed=1)
    assert a != c


def test_loss_decreases_on_fixed_batch(pool: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.set_num_threads(1)
    trainer = tt.Trainer(tt.TrainConfig(**SMALL), *pool)
    fixed = trainer.draw()
    trainer.draw = lambda: fixed  # type: ignore[method-assign]  # overfit one batch
    losses = [trainer.step()[0] for _ in range(25)]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_resume_state_round_trip(pool: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.set_num_threads(1)
    _, straight = run_steps(pool, 6)
    first, head = run_steps(pool, 3)
    state = first.state_tensors()
    second = tt.Trainer(tt.TrainConfig(**SMALL), *pool)
    second.load_state_tensors(state)
    assert head + [second.step()[0] for _ in range(3)] == straight


def test_weights_round_trip(pool: tuple[torch.Tensor, torch.Tensor], tmp_path: Path) -> None:
    trainer, _ = run_steps(pool, 2)
    cfg = tt.TrainConfig(**SMALL)
    net = trainer.ema.float()
    for p in net.parameters():  # fp16 storage: compare against the fp16-rounded weights
        p.data = p.data.half().float()
    path = tiny.save_weights(
        tmp_path / "w.safetensors", net.transformer, net.caption, cfg.model_config(), {"step": 2}
    )
    transformer, caption, meta = tiny.load_weights(path)
    assert meta["model_config"] == cfg.model_config() and meta["extra"]["step"] == 2
    assert tuple(meta["vocab"]) == tiny.VOCAB
    loaded = tt.Denoiser(transformer, caption)
    x = torch.randn(2, 3, 16, 16)
    sigma = torch.tensor([0.3, 0.8])
    ids = torch.stack([pool[1][0], tiny.empty_ids(1)[0]])
    with torch.no_grad():
        assert torch.equal(net.eval()(x, sigma, ids), loaded(x, sigma, ids))
    hidden, pooled = tiny.empty_conditioning(caption)
    assert hidden.shape == (1, tiny.MAX_TOKENS, 32) and pooled.shape == (1, 32)
    assert torch.equal(pooled[0], caption.embedding.weight[tiny.PAD_ID])


def test_sample_grid_shape(pool: tuple[torch.Tensor, torch.Tensor]) -> None:
    trainer, _ = run_steps(pool, 1)
    images, ids = pool
    out = tt.sample(trainer.ema, ids[:3], steps=2, cfg_scale=2.0)
    assert out.shape == (3, 3, 16, 16) and out.min() >= 0 and out.max() <= 1
    grid = tt.image_grid(out, nrow=2, pad=2, scale=2)
    assert grid.shape == (2 * (32 + 2) + 2, 2 * (32 + 2) + 2, 3)
    fig, labels = tt.sample_figure(trainer.ema, images[:4], ids[:4], steps=2, cfg_scale=2.0, scale=1)
    assert len(labels) == 5 and fig.shape[0] == 5 * (16 + 2) + 2 and fig.shape[2] == 3
    guided = tt.Guidance(1.0, (1,))
    fig, labels = tt.sample_figure(
        trainer.ema, images[:4], ids[:4], steps=2, cfg_scale=2.0, scale=1, guidance=guided
    )
    assert labels[5:] == ["empty, skip 1 w1"] * 2 and fig.shape[0] == 7 * (16 + 2) + 2
    fig, labels = tt.sample_figure(
        trainer.ema, images[:4], ids[:4], steps=2, cfg_scale=2.0, scale=1, object_cfg=3
    )
    assert labels[5:] == [f"{k}, object cfg 3" for k in ("sphere", "box", "cylinder", "cone", "torus")]
    assert fig.shape[0] == 10 * (16 + 2) + 2
    # the cone row: "background floor cone" guided away from "background floor", noise seed + 2
    cone = tiny.object_caption("cone").expand(4, -1)
    want = tt.sample(trainer.ema, cone, 2, 3.0, 2, negative=tiny.caption_from_names(["background", "floor"]))
    row = 8  # real, caption ×2, empty ×2, sphere, box, cylinder, cone
    got = fig[row * 18 : (row + 1) * 18 + 2, 140:]
    assert np.array_equal(got, tt.image_grid(want, nrow=4, pad=2, scale=1))


def test_without_objects_keeps_the_stuff_in_order() -> None:
    names = tiny.caption_from_names
    got = tiny.without_objects(
        torch.stack([names(["background", "floor", "sphere", "torus"]), names(["floor", "wall", "cone"])])
    )
    assert torch.equal(got, torch.stack([names(["background", "floor"]), names(["floor", "wall"])]))
    assert torch.equal(tiny.without_objects(names(["box", "cylinder"])), tiny.empty_ids(1)[0])
    assert torch.equal(tiny.without_objects(tiny.empty_ids(2)), tiny.empty_ids(2))
    # tokens in any order (not as caption_ids writes them): the kept ones stay in their order, padded behind
    mixed = torch.tensor([tiny.VOCAB.index("cone"), tiny.VOCAB.index("wall"), 0, tiny.VOCAB.index("floor")])
    want = [tiny.VOCAB.index("wall"), 0, tiny.VOCAB.index("floor"), 0]
    assert tiny.without_objects(mixed).tolist() == want
    assert [tiny.VOCAB[t] for t in tiny.OBJECT_IDS] == ["sphere", "box", "cylinder", "cone", "torus"]


def test_negative_caption_guidance(pool: tuple[torch.Tensor, torch.Tensor]) -> None:
    """CFG against a negative caption: one Euler step from σ = 1 is x0 − (v_neg + s·(v_caption − v_neg)); the
    empty caption as negative is the default; one negative for the batch or one per caption; bad shapes refused."""
    torch.set_num_threads(1)
    trainer, _ = run_steps(pool, 3)
    net = trainer.ema.eval()
    ids = pool[1][:3]
    neg = tiny.without_objects(ids)
    assert not torch.equal(neg, ids)  # the pool's captions name objects
    x0 = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        vc, vn = net(x0, torch.ones(3), ids), net(x0, torch.ones(3), neg)
    got = tt.sample(net, ids, steps=1, cfg_scale=2.5, negative=neg)
    torch.testing.assert_close(got, ((x0 - (vn + 2.5 * (vc - vn))).clamp(-1, 1) + 1) / 2)
    assert not torch.allclose(got, tt.sample(net, ids, steps=1, cfg_scale=2.5))
    empty = tiny.empty_ids(3)
    assert torch.equal(
        tt.sample(net, ids, steps=2, cfg_scale=2.5, negative=empty),
        tt.sample(net, ids, steps=2, cfg_scale=2.5),
    )
    one = tiny.caption_from_names(["background", "floor"])
    assert torch.equal(
        tt.sample(net, ids, steps=2, cfg_scale=2.5, negative=one),
        tt.sample(net, ids, steps=2, cfg_scale=2.5, negative=one.expand(3, -1)),
    )
    for bad in (one[:4], one.expand(2, -1), one[None, None]):
        with pytest.raises(
            ValueError, match=r"negative caption: expected token ids of shape \(8,\), \(1, 8\) or \(3, 8\)"
        ):
            tt.sample(net, ids, steps=1, cfg_scale=2.5, negative=bad)


class _ZeroGuide(torch.nn.Module):
    """A guide that predicts v = 0, with the model's config: guidance then scales v by (1 + w)."""

    def __init__(self, net: tt.Denoiser):
        super().__init__()
        self.transformer = net.transformer

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def test_guidance_formula_and_interval(pool: tuple[torch.Tensor, torch.Tensor]) -> None:
    """One Euler step from σ = 1: x1 = x0 − v; guided by a zero guide: x1 = x0 − (1 + w)·v (with CFG on the
    caption too); a σ interval that excludes σ = 1 leaves the step unguided; guiding by the model itself
    changes nothing; skipping a trained block changes the samples."""
    torch.set_num_threads(1)
    trainer, _ = run_steps(pool, 3)
    net = trainer.ema.eval()
    ids = pool[1][:3]
    x0 = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        vc = net(x0, torch.ones(3), ids)
        vu = net(x0, torch.ones(3), torch.full_like(ids, tiny.PAD_ID))
    plain = tt.sample(net, ids, steps=1, cfg_scale=2.0)
    expected = ((x0 - (vu + 2.0 * (vc - vu))).clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(plain, expected)
    zero = _ZeroGuide(net)
    guided = tt.sample(net, ids, steps=1, cfg_scale=2.0, guidance=tt.Guidance(0.5, (), zero))
    expected = ((x0 - (vu + 2.0 * (vc - vu) + 0.5 * vc)).clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(guided, expected)
    outside = tt.Guidance(0.5, (), zero, sigma_max=0.9)
    assert torch.equal(tt.sample(net, ids, steps=1, cfg_scale=2.0, guidance=outside), plain)
    itself = tt.Guidance(3.0, (), net)
    assert torch.equal(tt.sample(net, ids, steps=4, guidance=itself), tt.sample(net, ids, steps=4))

    # skip-layer guidance: the weak prediction is the model without that block (weights perturbed so that no
    # block is the identity of its adaLN-zero initialisation)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    pruned = copy.deepcopy(net)
    del pruned.transformer.transformer_blocks[0]
    slg = tt.Guidance(1.0, (0,))
    with torch.no_grad():
        weak = slg.weak(net, x0, torch.full((3,), 0.5), ids)
        torch.testing.assert_close(weak, pruned(x0, torch.full((3,), 0.5), ids))
        assert not torch.allclose(weak, net(x0, torch.full((3,), 0.5), ids), atol=1e-2)


def test_guidance_input_is_checked(
    pool: tuple[torch.Tensor, torch.Tensor], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer, _ = run_steps(pool, 1)
    ids = pool[1][:1]
    with pytest.raises(ValueError, match=r"blocks \[2\] do not exist \(the model has blocks 0..1\)"):
        tt.sample(trainer.ema, ids, steps=1, guidance=tt.Guidance(1.0, (2,)))
    with pytest.raises(ValueError, match="σ interval"):
        tt.Guidance(1.0, (1,), sigma_min=0.5, sigma_max=0.2)
    with pytest.raises(ValueError, match="skip_layers or a guide"):
        tt.Guidance(1.0, ())
    with pytest.raises(SystemExit):
        tt.parse_args(["--num-layers", "2", "--slg-layer", "2"])
    assert "slg_layer 2 is not a block of a 2-block model" in capsys.readouterr().err
    tt.parse_args(["--num-layers", "2", "--slg-layer", "2", "--slg-scale", "0"])  # off: any layer
    with pytest.raises(SystemExit):
        tt.parse_args(["--guide-weights", str(tmp_path / "g.safetensors")])
    assert "--guide-weights needs --sample-only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tt.parse_args(["--sample-only", "--guide-scale", "2"])
    assert "--guide-scale needs --guide-weights" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tt.parse_args(["--slg-scale", "-1"])
    assert "slg_scale must be ≥ 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tt.parse_args(["--object-cfg-scale", "-1"])
    assert (
        "object_cfg_scale must be a finite number ≥ 0 (0 = no object-guided rows)" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        tt.parse_args(["--object-cfg-scale", "nan"])
    assert "got nan" in capsys.readouterr().err
    # a saved config decides for --sample-only / --resume: a deeper model's block passes the parser
    tt.parse_args(["--sample-only", "--slg-layer", "8"])
    # the interval's ends count, up to float32 rounding of the σ grid
    assert tt.Guidance(1.0, (1,), sigma_max=0.2).applies(float(torch.tensor(0.2)))
    assert tt.Guidance(1.0, (1,), sigma_min=0.9).applies(float(torch.tensor(0.9)))
    assert not tt.Guidance(1.0, (1,), sigma_max=0.2).applies(0.25)
    # an autoguidance model must diffuse the same latent with the same captions
    net = trainer.ema
    other = types.SimpleNamespace(
        transformer=types.SimpleNamespace(config={**net.transformer.config, "in_channels": 4})
    )
    with pytest.raises(ValueError, match="guide model's in_channels is 4, the model's 3"):
        tt.sample(net, ids, steps=1, guidance=tt.Guidance(1.0, (), other))


def test_cli_config_layering(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  steps: 7\n  lr: 0.001\n")
    cfg, args = tt.parse_args(["--config", str(path), "--lr", "0.002", "--hflip", "false"])
    assert (cfg.steps, cfg.lr, cfg.hflip, args.threads) == (7, 0.002, False, 1)


def test_new_phase_restarts_the_schedule_and_keeps_the_history(tmp_path: Path) -> None:
    import csv

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items() if k != "steps"]
    common = ["--out", str(tmp_path), "--val-images", "2", "--sample-steps", "1", "--log-every", "1"]
    tt.main([*common, *flags, "--steps", "6"])
    with pytest.raises(SystemExit, match=r"may change only the schedule.*num_layers"):
        tt.main([*common, "--resume", "--new-phase", "--steps", "9", "--num-layers", "3"])
    with pytest.raises(SystemExit, match="must exceed"):
        tt.main([*common, "--resume", "--new-phase", "--steps", "6"])
    tt.main([*common, "--resume", "--new-phase", "--steps", "10", "--lr", "1e-3", "--warmup", "2"])
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["steps_done"] == 10 and cfg["training"]["start_step"] == 6 and cfg["training"]["lr"] == 1e-3
    assert [p["steps_done"] for p in cfg["earlier_phases"]] == [6]
    assert cfg["earlier_phases"][0]["lr"] == SMALL["lr"]
    with open(tmp_path / "loss.csv") as f:
        lrs = {int(r["step"]): float(r["lr"]) for r in csv.DictReader(f) if r["lr"]}
    assert sorted(lrs) == list(range(1, 11))  # the first phase's rows are kept
    assert lrs[7] == pytest.approx(1e-3 / 2) and lrs[8] == pytest.approx(1e-3)  # warmup restarts at step 6
    assert lrs[6] < lrs[7]
    # a plain --resume of the new phase takes its config from the checkpoint
    tt.main([*common, "--resume"])
    assert json.loads((tmp_path / "config.json").read_text())["training"]["start_step"] == 6
    # samples with autoguidance (here by the model itself): two more rows, and five object-guided rows
    from PIL import Image

    w = tmp_path / "tiny_mmdit.safetensors"
    tt.main([*common, "--sample-only", "--guide-weights", str(w), "--samples-path", str(tmp_path / "g.png")])
    assert Image.open(tmp_path / "g.png").height == 12 * (16 * 6 + 2) + 2
    # a flag not given keeps the saved value; an impossible block of the saved 2-block model is one message
    off = ["--slg-scale", "0", "--object-cfg-scale", "0"]
    tt.main([*common, "--sample-only", *off, "--samples-path", str(tmp_path / "n.png")])
    assert Image.open(tmp_path / "n.png").height == 5 * (16 * 6 + 2) + 2
    with pytest.raises(SystemExit, match="slg_layer 5 is not a block of a 2-block model"):
        tt.main([*common, "--sample-only", "--slg-layer", "5", "--samples-path", str(tmp_path / "x.png")])


# ------------------------------------------------------------------------------------ latent space (autoencoder)


@pytest.fixture(scope="module")
def small_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-level AutoencoderKL (16 px → 8×8×4) with non-trivial latent factors, as a vae file."""
    from backbones.tiny.model import save_vae, vae_config

    vae = tiny.build_vae(vae_config(16, (8, 8), 4), seed=0)
    vae.register_to_config(shift_factor=0.1, scaling_factor=2.0)
    return save_vae(tmp_path_factory.mktemp("vae") / "vae.safetensors", vae, {"note": "test"})


def test_latent_pool_encodes_both_orientations(
    pool: tuple[torch.Tensor, torch.Tensor], small_vae: Path
) -> None:
    vae = tiny.load_vae(small_vae)
    assert (vae.config.shift_factor, vae.config.scaling_factor) == (0.1, 2.0)
    latents = tt.encode_pool(vae, pool[0])
    assert latents.shape == (2, 16, 4, 8, 8)
    with torch.no_grad():
        x = tt.to_model_space(pool[0][:2])
        for k, img in enumerate((x, x.flip(-1))):
            expected = (vae.encode(img).latent_dist.mean - 0.1) * 2.0
            torch.testing.assert_close(latents[k, :2], expected)


def test_latent_model_trains_deterministically_and_round_trips(
    pool: tuple[torch.Tensor, torch.Tensor], small_vae: Path, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    cfg = tt.TrainConfig(**{**SMALL, "patch_size": 1, "vae": str(small_vae)})
    mc = cfg.model_config()
    assert (mc["sample_size"], mc["in_channels"], mc["out_channels"]) == (8, 4, 4)
    vae = tiny.load_vae(small_vae)
    latents = tt.encode_pool(vae, pool[0])
    runs = []
    for _ in range(2):
        trainer = tt.Trainer(cfg, pool[0][:0], pool[1], latents)
        runs.append([trainer.step()[0] for _ in range(3)])
    assert runs[0] == runs[1]
    path = tiny.save_weights(
        tmp_path / "w.safetensors", trainer.ema.transformer, trainer.ema.caption, mc, {}, vae=vae
    )
    meta = tiny.read_metadata(path)
    assert meta["preprocessing"]["space"] == "latent" and meta["vae_config"]["latent_channels"] == 4
    loaded = tiny.load_vae(path)
    for (k, a), (_, b) in zip(vae.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(
            a.half().float() if a.is_floating_point() and k.endswith(("weight", "bias")) else a, b
        ), k
    assert tiny.load_vae(tmp_path / "w.safetensors") is not None
    out = tt.sample(trainer.ema, pool[1][:2], steps=2, vae=loaded)
    assert out.shape == (2, 3, 16, 16) and out.min() >= 0 and out.max() <= 1  # decoded to RGB


def test_pixel_weight_file_has_no_autoencoder(
    pool: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    trainer, _ = run_steps(pool, 1)
    cfg = tt.TrainConfig(**SMALL)
    path = tiny.save_weights(
        tmp_path / "p.safetensors", trainer.ema.transformer, trainer.ema.caption, cfg.model_config()
    )
    assert tiny.load_vae(path) is None and tiny.read_metadata(path)["preprocessing"]["space"] == "pixel"


def test_adapter_encodes_through_the_files_autoencoder(
    pool: tuple[torch.Tensor, torch.Tensor], small_vae: Path, tmp_path: Path
) -> None:
    import backbones

    cfg = tt.TrainConfig(**{**SMALL, "patch_size": 1, "vae": str(small_vae)})
    trainer = tt.Trainer(cfg, pool[0][:0], pool[1], tt.encode_pool(tiny.load_vae(small_vae), pool[0]))
    vae = tiny.load_vae(small_vae)
    path = tiny.save_weights(
        tmp_path / "w.safetensors",
        trainer.ema.transformer,
        trainer.ema.caption,
        cfg.model_config(),
        {},
        vae=vae,
    )
    adapter = backbones.create("tiny-mmdit", weights=str(path))
    assert adapter.meta.image_size == 16 and adapter.meta.extra["pixel_space"] is False
    x01 = pool[0][:2].float() / 255.0
    with torch.no_grad():
        expected = (tiny.load_vae(path).encode(x01 * 2 - 1).latent_dist.mean - 0.1) * 2.0
    torch.testing.assert_close(adapter.encode(x01), expected)
    feats = adapter.extract(x01, layers=[0, 1], timesteps=[0.0, 0.5])
    assert feats[(1, 0.5)].shape == (2, cfg.num_heads * cfg.head_dim, 8, 8)


def test_autoencoder_training_writes_a_loadable_file(tmp_path: Path) -> None:
    from recipes.tiny_mmdit.autoencoder import VAEConfig, train_vae

    cfg = VAEConfig(
        resolution=16, channels=(8, 8), crop=8, pool_size=8, batch_size=4, steps=3, warmup=1, val_images=4
    )
    train_vae(cfg, tmp_path, max_minutes=5, threads=1)
    vae = tiny.load_vae(tmp_path / "vae.safetensors")
    z = tt.encode_pool(vae, tt.render_pool("train", 8, 16)[0])[0]
    assert abs(float(z.mean())) < 1e-5 and float(z.std()) == pytest.approx(1.0, rel=1e-5)  # factors normalise
    assert (tmp_path / "vae_recon.png").is_file() and (tmp_path / "vae_loss.csv").is_file()


def test_shipped_weights_are_the_latent_model() -> None:
    import backbones
    from backbones.tiny.model import vae_config
    from backbones.tiny_mmdit import ARCHITECTURE, VAE_ARCHITECTURE

    adapter = backbones.create("tiny-mmdit")  # weights="default": the file in backbones/tiny/weights/
    meta = tiny.read_metadata(tiny.DEFAULT_WEIGHTS)
    assert meta["preprocessing"]["space"] == "latent"
    assert meta["model_config"] == tiny.model_config(**ARCHITECTURE)  # the random twin has the same shape
    twin = json.loads(
        json.dumps(vae_config(**VAE_ARCHITECTURE))
    )  # the shipped autoencoder's size (the twin uses it)
    arch = {k: v for k, v in twin.items() if k not in ("scaling_factor", "shift_factor")}
    assert {k: meta["vae_config"][k] for k in arch} == arch
    vae = adapter.model.vae
    assert vae.config.scaling_factor != 1.0 and vae.config.shift_factor != 0.0  # measured, not defaults
    assert (
        adapter.meta.image_size == VAE_ARCHITECTURE["resolution"]
        and adapter.meta.extra["pixel_space"] is False
    )
    assert tiny.DEFAULT_WEIGHTS.stat().st_size < 20e6


def test_missing_weight_file_is_named(tmp_path: Path) -> None:
    import backbones
    from probebench.core.errors import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError, match=str(tmp_path / "nope.safetensors")):
        backbones.create("tiny-mmdit", weights=str(tmp_path / "nope.safetensors"))


def test_bad_vae_file_fails_before_rendering(tmp_path: Path) -> None:
    common = ["--out", str(tmp_path / "out"), "--resolution", "16", "--patch-size", "1", "--steps", "1"]
    with pytest.raises(SystemExit, match="no such file"):
        tt.main([*common, "--vae", str(tmp_path / "missing.safetensors")])
    (tmp_path / "notes.txt").write_text("not a weight file")
    with pytest.raises(SystemExit, match="not a safetensors file"):
        tt.main([*common, "--vae", str(tmp_path / "notes.txt")])
    assert not (tmp_path / "out" / "loss.csv").exists()  # nothing was trained or written


def test_autoencoder_cli_rejects_empty_runs() -> None:
    from recipes.tiny_mmdit.autoencoder import main

    with pytest.raises(SystemExit):
        main(["--steps", "0"])


def test_autoencoder_crop_off_the_latent_grid_is_refused_before_rendering(tmp_path: Path) -> None:
    from recipes.tiny_mmdit.autoencoder import main

    for crop in ("30", "128"):  # not a multiple of the factor 4; larger than the 64-px images
        with pytest.raises(SystemExit):
            main(["--crop", crop, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_autoencoder_crops_lie_on_the_latent_grid() -> None:
    from recipes.tiny_mmdit.autoencoder import crop_offsets

    gen = torch.Generator().manual_seed(0)
    offsets = {crop_offsets(gen, 64, 32, 4) for _ in range(2000)}
    assert {o for pair in offsets for o in pair} == set(range(0, 33, 4))  # every grid position, nothing else
    assert crop_offsets(gen, 64, 64, 4) == (0, 0)


def test_autoencoder_trains_on_crops(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from recipes.tiny_mmdit import autoencoder as ae

    seen: list[tuple[int, ...]] = []
    vae_class = type(tiny.build_vae(ae.vae_config(16, (8, 8), 4), seed=0))
    real_encode = vae_class.encode

    def spy(self, x, *args, **kwargs):
        seen.append(tuple(x.shape))
        return real_encode(self, x, *args, **kwargs)

    monkeypatch.setattr(vae_class, "encode", spy)
    cfg = ae.VAEConfig(
        resolution=16, channels=(8, 8), crop=8, pool_size=8, batch_size=4, steps=4, warmup=1, val_images=4
    )
    ae.train_vae(cfg, tmp_path, max_minutes=5, threads=1)
    assert seen[:4] == [(4, 3, 8, 8)] * 4  # training batches are crops
    assert (4, 3, 16, 16) in seen[4:]  # validation and the latent factors use whole images


def test_shipped_config_finds_its_autoencoder_from_any_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = tt.shipped_config()
    assert Path(cfg.vae).is_file() and Path(cfg.vae).parent == tiny.DEFAULT_WEIGHTS.parent
    assert cfg.model_config()["sample_size"] == cfg.resolution // 4


def test_scale_equivariance_loss_decodes_the_pooled_latent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from recipes.tiny_mmdit import autoencoder as ae

    vae_class = type(tiny.build_vae(ae.vae_config(16, (8, 8), 4), seed=0))
    real_decode = vae_class.decode
    seen: list[tuple[int, ...]] = []

    def spy(self, z, *args, **kwargs):
        seen.append(tuple(z.shape))
        return real_decode(self, z, *args, **kwargs)

    monkeypatch.setattr(vae_class, "decode", spy)
    params = {}
    for weight in (0.0, 1.0):
        seen.clear()
        cfg = ae.VAEConfig(
            resolution=16, channels=(8, 8), crop=8, pool_size=8, batch_size=4, steps=3, warmup=1,
            val_images=4, se_weight=weight,
        )  # fmt: skip
        ae.train_vae(cfg, tmp_path / str(weight), max_minutes=5, threads=1)
        # an 8-px crop has a 4×4 latent (factor 2); the regulariser decodes it pooled to 2×2
        assert seen[:2] == ([(4, 4, 4, 4)] * 2 if weight == 0 else [(4, 4, 4, 4), (4, 4, 2, 2)])
        params[weight] = tiny.load_vae(tmp_path / str(weight) / "vae.safetensors").state_dict()
    assert any(not torch.equal(params[0.0][k], params[1.0][k]) for k in params[0.0])


def test_autoencoder_cli_rejects_a_negative_se_weight(tmp_path: Path) -> None:
    from recipes.tiny_mmdit.autoencoder import main

    with pytest.raises(SystemExit):
        main(["--se-weight", "-1", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_autoencoder_cli_sets_the_levels_and_latent_channels(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from recipes.tiny_mmdit import autoencoder as ae

    got: list[ae.VAEConfig] = []
    monkeypatch.setattr(ae, "train_vae", lambda cfg, *a, **k: got.append(cfg))
    ae.main(["--channels", "32,64,64,128", "--latent-channels", "16", "--crop", "32", "--out", str(tmp_path)])
    assert (got[0].channels, got[0].latent_channels) == ((32, 64, 64, 128), 16)
    assert ae.vae_downsample(ae.vae_config(64, got[0].channels, 16)) == 8
    for bad in (
        ["--channels", "32"],
        ["--channels", "32,0"],
        ["--channels", "a,b"],
        ["--latent-channels", "0"],
    ):
        with pytest.raises(SystemExit):
            ae.main([*bad, "--out", str(tmp_path / "out")])
    assert "expected comma-separated integers such as 32,64,64, got 'a,b'" in capsys.readouterr().err
    assert len(got) == 1
    monkeypatch.undo()
    with pytest.raises(SystemExit):  # a crop of 12 px is off the factor-8 grid: refused before rendering
        ae.main(["--channels", "8,8,8,8", "--crop", "12", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_autoencoder_stop_at_step_keeps_the_longer_schedule(tmp_path: Path) -> None:
    from recipes.tiny_mmdit.autoencoder import VAEConfig, train_vae

    small = dict(resolution=16, channels=(8, 8), crop=8, pool_size=8, batch_size=4, warmup=1, val_images=4)
    runs = {
        "stopped": (VAEConfig(**small, steps=5), 3),  # a 5-step schedule stopped after 3 steps
        "short": (VAEConfig(**small, steps=3), None),  # a 3-step schedule (lr decays faster)
    }
    params = {}
    for name, (cfg, stop) in runs.items():
        train_vae(cfg, tmp_path / name, max_minutes=5, threads=1, stop_at_step=stop)
        extra = json.loads(tiny.file_metadata(tmp_path / name / "vae.safetensors")["extra"])
        assert extra["steps_done"] == 3
        params[name] = tiny.load_vae(tmp_path / name / "vae.safetensors").state_dict()
    assert any(not torch.equal(params["stopped"][k], params["short"][k]) for k in params["short"])


# ------------------------------------------------------------------------------ representation alignment (REPA)


def repa_trainer(pool: tuple[torch.Tensor, torch.Tensor], **over: object) -> tt.Trainer:
    """A pixel-space SMALL trainer (patch 2 → 8×8 tokens) aligned to random 5-channel targets."""
    cfg = tt.TrainConfig(**{**SMALL, "repa_weight": 0.5, "repa_layer": 0, **over})
    targets = torch.randn(pool[0].shape[0], 5, 8, 8, generator=torch.Generator().manual_seed(3)).half()
    return tt.Trainer(cfg, *pool, targets=targets)


def test_repa_config_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="repa_weight must be ≥ 0"):
        tt.TrainConfig(**{**SMALL, "repa_weight": -1.0}).check()
    with pytest.raises(ValueError, match="repa_layer 2 is not a block of a 2-block model"):
        tt.TrainConfig(**{**SMALL, "repa_weight": 0.5, "repa_layer": 2}).check()
    tt.TrainConfig(**{**SMALL, "repa_layer": 7}).check()  # ignored while alignment is off
    with pytest.raises(SystemExit):
        tt.parse_args(["--out", str(tmp_path), "--repa-weight", "0.5", "--repa-layer", "9"])


def test_repa_needs_targets_of_the_token_grid(pool: tuple[torch.Tensor, torch.Tensor]) -> None:
    cfg = tt.TrainConfig(**{**SMALL, "repa_weight": 0.5, "repa_layer": 0})
    with pytest.raises(ValueError, match=r"needs targets \(16, C, 8, 8\); got None"):
        tt.Trainer(cfg, *pool)
    with pytest.raises(ValueError, match=r"got \(16, 5, 4, 4\)"):
        tt.Trainer(cfg, *pool, targets=torch.zeros(16, 5, 4, 4))


def test_repa_targets_follow_the_images_and_their_flips(pool: tuple[torch.Tensor, torch.Tensor]) -> None:
    n = pool[1].shape[0]
    latents = torch.arange(n, dtype=torch.float32).view(1, n, 1, 1, 1).expand(2, n, 4, 8, 8).clone()
    latents[1] = -latents[1] - 1  # the flipped encodings: −i − 1
    cfg = tt.TrainConfig(**{**SMALL, "repa_weight": 0.5, "repa_layer": 0})
    targets = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(0)).half()
    trainer = tt.Trainer(cfg, pool[0][:0], pool[1], latents, targets)
    flips = set()
    for _ in range(4):
        x0, _, _, _, target = trainer.draw()
        for x, t in zip(x0, target):
            i = int(x[0, 0, 0])
            flipped = i < 0
            flips.add(flipped)
            expected = targets[-i - 1].flip(-1) if flipped else targets[i]
            assert torch.equal(t, expected)
    assert flips == {True, False}


def test_repa_aligns_the_image_tokens_after_its_block(pool: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.set_num_threads(1)
    trainer = repa_trainer(pool, repa_layer=1, bf16=False)
    x0, ids, sigma, noise, target = trainer.draw()
    loss, align = tt.flow_repa_loss(trainer.net, x0, ids, sigma, noise, target, 1, bf16=False)
    assert torch.equal(loss, tt.flow_loss(trainer.net, x0, ids, sigma, noise, bf16=False))
    # the image stream after blocks 0 and 1, computed here block by block
    tr, net = trainer.net.transformer, trainer.net
    s = sigma.view(-1, 1, 1, 1)
    hidden, pooled = net.caption(ids)
    with torch.no_grad():
        h = tr.pos_embed((1 - s) * x0 + s * noise)
        temb = tr.time_text_embed(sigma * 1000.0, pooled)
        enc = tr.context_embedder(hidden)
        for block in tr.transformer_blocks[:2]:
            enc, h = block(hidden_states=h, encoder_hidden_states=enc, temb=temb)
        cos = torch.nn.functional.cosine_similarity(
            net.repa(h), target.flatten(2).transpose(1, 2).float(), dim=-1
        )
    torch.testing.assert_close(align.detach(), -cos.mean())


def test_repa_changes_training_not_the_flow_loss_or_the_batches(
    pool: tuple[torch.Tensor, torch.Tensor],
) -> None:
    torch.set_num_threads(1)
    plain, aligned = tt.Trainer(tt.TrainConfig(**SMALL), *pool), repa_trainer(pool)
    assert plain.step()[0] == aligned.step()[0]  # same init and batch: the reported loss is the flow loss
    assert torch.isfinite(torch.tensor(aligned.last_align)) and aligned.last_align < 0.5
    assert aligned.net.repa is not None and all(p.grad is not None for p in aligned.net.repa.parameters())
    a, b = plain.net.transformer.state_dict(), aligned.net.transformer.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the alignment gradient reached the DiT
    assert torch.equal(plain.gen.get_state(), aligned.gen.get_state())  # it drew nothing more


def test_repa_resumes_exactly_and_ships_no_projector(
    pool: tuple[torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    straight = repa_trainer(pool)
    losses = [straight.step()[0] for _ in range(4)]
    first = repa_trainer(pool)
    head = [first.step()[0] for _ in range(2)]
    state = first.state_tensors()
    assert any(k.startswith("net.repa.") for k in state)
    second = repa_trainer(pool)
    second.load_state_tensors(state)
    assert head + [second.step()[0] for _ in range(2)] == losses
    cfg = tt.TrainConfig(**SMALL)
    path = tiny.save_weights(
        tmp_path / "w.safetensors", second.ema.transformer, second.ema.caption, cfg.model_config(), {}
    )
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        names = list(f.keys())
    assert names and not any("repa" in k for k in names)
    tiny.load_weights(path)


def test_repa_targets_are_efficientnet_last_stage_maps(pool: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.set_num_threads(1)
    t = tt.repa_targets(pool[0][:3], grid=2, batch=2)
    assert t.shape == (3, 320, 2, 2) and t.dtype == torch.float16 and torch.isfinite(t).all()
    assert torch.equal(t[2:], tt.repa_targets(pool[0][2:3], grid=2))  # per image, whatever the batch
    assert t.float().std() > 0 and not torch.equal(t[0], t[1])
