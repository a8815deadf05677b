"""The recipe sweep (recipes.tiny_mmdit.sweep) on the CPU: variant parsing, independence of variants, outputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from backbones.tiny.model import MAX_TOKENS, VOCAB, load_weights
from recipes.tiny_mmdit import sweep
from recipes.tiny_mmdit import train as T
from recipes.tiny_mmdit.train import TrainConfig


def _small_recipe(**over: object) -> TrainConfig:
    """The shipped recipe (its autoencoder's latent shape) with a 1-block DiT: cheap steps."""
    return dataclasses.replace(
        T.shipped_config(), num_layers=1, batch_size=4, warmup=2, slg_scale=0.0, **over
    )


def _fake_pool(n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, n, 4, 16, 16, generator=g)
    ids = torch.randint(1, len(VOCAB), (n, MAX_TOKENS), generator=g)
    return latents, ids


def test_parse_variant_replaces_fields_and_names_bad_ones() -> None:
    base = TrainConfig(resolution=16, lr=5e-4, batch_size=32)
    name, cfg = sweep.parse_variant("B:64:1e-3:logit_mean=-0.5,hflip=false,warmup=10", base)
    assert name == "B"
    assert (cfg.batch_size, cfg.lr, cfg.logit_mean, cfg.hflip, cfg.warmup) == (64, 1e-3, -0.5, False, 10)
    assert (cfg.steps, cfg.resolution, cfg.seed) == (base.steps, base.resolution, base.seed)
    for bad, says in [
        ("A:32", "NAME:BATCH:LR"),
        (":32:1e-3", "NAME:BATCH:LR"),
        ("A:x:1e-3", "BATCH must be an integer"),
        ("A:0:1e-3", "BATCH must be ≥ 1"),
        ("A:32:1e-3:logit_men=1", "'logit_men=1' is not field=value"),
        ("A:32:1e-3:hflip=maybe", "hflip must be true or false"),
        ("A:32:1e-3:warmup=ten", "warmup must be int"),
        ("A:32:1e-3:num_heads=0", "num_heads must be ≥ 1, got 0"),
        ("A:32:1e-3:warmup=-1", "warmup must be ≥ 0, got -1"),
        ("A:32:1e-3:resolution=32", "resolution is shared by all variants"),
        ("A:32:1e-3:pool_size=10", "pool_size is shared by all variants"),
        ("A:32:1e-3:start_step=5", "start_step is shared by all variants"),
        ("A:32:1e-3:repa_weight=0.5", "trains without representation alignment"),
    ]:
        with pytest.raises(ValueError, match=says):
            sweep.parse_variant(bad, base)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--variant", "A:8:1e-3"], "variant names must differ"),
        (["--save-weights", "B"], "--save-weights names no variant: ['B']"),
        (["--log-every", "0"], "--log-every must be at least 1, got 0"),
        (["--pool-size", "-3"], "--pool-size must be at least 1, got -3"),
        (["--stop-at", "0"], "--stop-at must be at least 1, got 0"),
        (["--deadline-minutes", "-1"], "--deadline-minutes must be ≥ 0"),
    ],
)
def test_cli_refuses_bad_arguments(extra: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        sweep.parse_args(["--out", "x", "--variant", "A:4:1e-3", *extra])
    assert says in capsys.readouterr().err


def test_a_bad_variant_fails_before_the_pool_is_rendered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_render(*a: object, **k: object) -> None:
        raise AssertionError("rendered the pool before checking the variants")

    monkeypatch.setattr(sweep, "render_parallel", no_render)
    with pytest.raises(SystemExit, match="vae is shared by all variants"):
        sweep.main(["--out", str(tmp_path), "--variant", "A:4:1e-3:vae=x.safetensors"])
    with pytest.raises(SystemExit, match="variant A: resolution 16 is not a multiple of patch_size 3"):
        sweep.main(["--out", str(tmp_path), "--variant", "A:4:1e-3:patch_size=3"])
    with pytest.raises(SystemExit, match="slg_layer 6 is not a block of a 6-block model"):
        sweep.main(["--out", str(tmp_path), "--variant", "A:4:1e-3:slg_layer=6"])


def test_a_variant_step_is_the_trainers_step() -> None:
    """On the CPU a sweep variant draws the same batches as recipes.tiny_mmdit.train's Trainer and takes the same
    step (foreach AdamW and the sub/mul/add EMA agree with the trainer's to float rounding)."""
    cfg = _small_recipe()
    latents, ids = _fake_pool()
    trainer = T.Trainer(cfg, torch.empty(0, 3, 64, 64, dtype=torch.uint8), ids, latents)
    variant = sweep.Variant("A", cfg, 3, latents, ids, torch.device("cpu"))
    losses = [trainer.step()[0] for _ in range(3)]
    for _ in range(3):
        variant.eager_step()
    assert float(variant.loss_sum) == pytest.approx(sum(losses), rel=1e-4)
    for name, mine, theirs in [("net", variant.net, trainer.net), ("ema", variant.ema, trainer.ema)]:
        for (k, a), b in zip(mine.named_parameters(), theirs.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"{name}.{k}")
    assert not torch.equal(
        variant.net.transformer.proj_out.weight,
        sweep.Variant("B", cfg, 3, latents, ids, torch.device("cpu")).net.transformer.proj_out.weight,
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_captured_graph_takes_the_eager_step() -> None:  # pragma: no cover - runs only on a GPU
    cfg = _small_recipe()
    latents, ids = (t.cuda() for t in _fake_pool())
    dev = torch.device("cuda")
    graphed, eager = (sweep.Variant(n, cfg, 8, latents, ids, dev) for n in "GE")
    graphed.capture(warmup_steps=3)
    assert graphed.graph is not None and graphed.step_count == 3
    while not graphed.done:
        graphed.step()
    while not eager.done:
        eager.eager_step()
    torch.cuda.synchronize()
    for a, b in zip(graphed.ema.parameters(), eager.ema.parameters()):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-4)


def test_variants_are_independent_and_scored_like_the_shipped_model(tmp_path: Path) -> None:
    """A and B are the same recipe, with C (another batch size, lr and σ law) taking turns between them: A and B
    must end bit-identical, C must differ; files are written and load."""
    common = ["--pool-size", "12", "--stop-at", "3", "--device", "cpu", "--log-every", "1"]
    variants = [
        "A:4:5e-4:sample_steps=2",
        "C:2:2e-3:sample_steps=2,logit_mean=-1.0",
        "B:4:5e-4:sample_steps=2",
    ]
    flags = [f for v in variants for f in ("--variant", v)]
    res = sweep.main(["--out", str(tmp_path), *common, "--save-weights", "A,B", *flags])
    assert json.loads((tmp_path / "results.json").read_text()) == res
    for name in "ABC":
        r = res[name]
        assert (r["steps"], r["stopped_by"], r["cuda_graph"]) == (3, "stop_at", False)
        assert [row["step"] for row in r["log"]] == [1, 2, 3]
        assert torch.isfinite(torch.tensor(r["val_loss"]))
        assert (tmp_path / f"samples_{name}.png").stat().st_size > 0
    assert res["C"]["config"]["batch_size"] == 2 and res["C"]["config"]["logit_mean"] == -1.0
    assert res["A"]["val_loss"] == res["B"]["val_loss"]
    assert res["A"]["log"] == [
        {**row, "wall_s": a["wall_s"]} for row, a in zip(res["B"]["log"], res["A"]["log"])
    ]
    assert res["C"]["val_loss"] != res["A"]["val_loss"]
    (ta, _, meta), (tb, _, _) = (load_weights(tmp_path / f"weights_{n}.safetensors") for n in "AB")
    assert meta["extra"]["step"] == 3 and meta["extra"]["training"]["batch_size"] == 4
    for (ka, va), (kb, vb) in zip(ta.state_dict().items(), tb.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert not (tmp_path / "weights_C.safetensors").exists()


def test_deadline_stops_and_is_recorded(tmp_path: Path) -> None:
    common = ["--pool-size", "8", "--stop-at", "50", "--device", "cpu", "--log-every", "1"]
    res = sweep.main(
        ["--out", str(tmp_path), *common, "--deadline-minutes", "0", "--variant", "A:2:1e-3:sample_steps=1"]
    )
    assert res["A"]["stopped_by"] == "deadline" and 1 <= res["A"]["steps"] < 50
