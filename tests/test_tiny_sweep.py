"""The recipe sweep (backbones.tiny.sweep) on the CPU: variant parsing, independence of variants, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backbones.tiny import sweep
from backbones.tiny.model import load_weights
from backbones.tiny.train import TrainConfig


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
    ]:
        with pytest.raises(ValueError, match=says):
            sweep.parse_variant(bad, base)


def test_cli_refuses_duplicate_names_and_unknown_saves() -> None:
    with pytest.raises(SystemExit):
        sweep.parse_args(["--out", "x", "--variant", "A:4:1e-3", "--variant", "A:8:1e-3"])
    with pytest.raises(SystemExit):
        sweep.parse_args(["--out", "x", "--variant", "A:4:1e-3", "--save-weights", "B"])


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
