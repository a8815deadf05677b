"""Trained probes: parameters, determinism, learning, divergence, early stopping, light heads, Spearman helper."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from _synthetic import synthetic_splits
from scipy.stats import spearmanr

import backbones
import tasks
from backbones.store import extract_to_cache
from probebench.core.errors import ProbebenchError
from probes import PROBES
from probes import training as tr
from probes.base import Split
from probes.heads import (
    FULL_WIDTH,
    DeepLabV3PlusLite,
    DPTLite,
    count_parameters,
    head_probe,
    reference_parameter_counts,
)
from probes.linear import LinearHead, linear_probe, spearman_ridge_vs_linear
from tasks.base import Dataset, TargetSpec

KEYS = [(1, None), (2, None)]
SIGNAL = (2, None)
FAST = {"epochs": 12, "lr": 1e-2, "batch_size": 4, "progress": False}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    sp = synthetic_splits(tmp_path_factory.mktemp("trained"), KEYS, signal=SIGNAL)
    return sp["train"], sp["val"], sp["test"]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A real (tiny) timm cache of scenes: two layers on different grids."""
    tmp = tmp_path_factory.mktemp("real")
    adapter = backbones.create("timm:efficientnet_lite0", image_size=32)
    out = []
    for role, n in (("train", 12), ("val", 6), ("test", 6)):
        ds = tasks.create("scenes", split=role, resolution=16, num_images=n)
        out.append(Split(extract_to_cache(adapter, ds, layers=[1, 2], cache_root=tmp, progress=False), ds))
    return out


def test_registered_with_metadata():
    for name in ("linear", "fusion", "head", "combine"):
        e = PROBES.entry(name)
        assert e.kind == "trained" and e.notes and callable(PROBES.get(name))


def test_unknown_or_bad_params_are_clear_errors(synth):
    with pytest.raises(
        ProbebenchError, match=r"Unknown parameter 'lr_rate' for probe 'linear'.*Did you mean: lr"
    ):
        linear_probe(*synth, ["segmentation"], lr_rate=0.1)
    with pytest.raises(ProbebenchError, match="λ is a parameter of the ridge screen only"):
        linear_probe(*synth, ["segmentation"], lambdas=[1.0])
    with pytest.raises(ProbebenchError, match=r"Valid: .*concat_keys.*dropout.*epochs"):
        linear_probe(*synth, ["segmentation"], nonsense=1)
    with pytest.raises(ProbebenchError, match="depth_loss must be one of bins, silog"):
        linear_probe(*synth, ["depth"], depth_loss="l1")
    with pytest.raises(ProbebenchError, match="'epochs' must be an integer, got 'many'"):
        linear_probe(*synth, ["depth"], epochs="many")
    with pytest.raises(
        ProbebenchError, match=r"Unknown parameter 'widht' for probe 'head'.*Did you mean: width"
    ):
        head_probe(*synth, ["segmentation"], widht=8)
    cfg, _ = tr.resolve_params("linear", {"lr": "3e-3", "epochs": 2.0}, {})
    assert cfg.lr == 3e-3 and cfg.epochs == 2 and isinstance(cfg.epochs, int)


def test_same_seed_same_records_other_seed_other_numbers(synth):
    kw = {**FAST, "epochs": 3}
    a = linear_probe(*synth, ["segmentation", "depth"], keys=[SIGNAL], **kw)
    b = linear_probe(*synth, ["segmentation", "depth"], keys=[SIGNAL], **kw)
    c = linear_probe(*synth, ["segmentation", "depth"], keys=[SIGNAL], seed=1, **kw)
    assert a.records == b.records
    for name, sd in a.state_dicts.items():
        for k, v in sd.items():
            assert torch.equal(v, b.state_dicts[name][k])
    assert [r["value"] for r in a.records] != [r["value"] for r in c.records]
    assert {r["seed"] for r in c.records} == {1} and {r["probe"] for r in a.records} == {"linear"}
    # a run does not depend on what ran before it in the process (each run re-seeds in its own RNG fork)
    torch.manual_seed(123)
    torch.rand(5)
    assert linear_probe(*synth, ["segmentation", "depth"], keys=[SIGNAL], **kw).records == a.records


def test_records_cover_every_key_task_split_metric(synth):
    out = linear_probe(*synth, ["segmentation", "saliency"], **{**FAST, "epochs": 1})
    df = pd.DataFrame(out.records)
    assert set(zip(df.layer, df.timestep)) == set(KEYS)
    assert set(df.split) == {"val", "test"} and set(df.task) == {"segmentation", "saliency"}
    assert len(df) == len(KEYS) * 2 * (2 + 8)  # (mIoU, pixel_acc) + 8 saliency metrics, on val and test
    assert not df.duplicated(["layer", "task", "split", "metric"]).any()
    assert set(out.state_dicts) == {
        f"linear/{t}/L{k[0]}_Tnone" for k in KEYS for t in ("segmentation", "saliency")
    }
    assert (df.trained_params > 0).all() and df.value.notna().all()


def _fit_signal(synth, kind, **params):
    cfg = tr.TrainConfig(**{k: v for k, v in {**FAST, **params}.items() if k != "progress"})
    run = tr.ProbeRun("linear", synth[0], synth[1], None, [kind], cfg=cfg, seed=0, progress=False)
    inputs = run.inputs([SIGNAL])
    feats = run.features(inputs)
    ch = run.objective(kind).channels
    return run.train(lambda: LinearHead([inputs[0].dim], ch, 0.0), feats, kind, "linear", inputs)


@pytest.mark.parametrize(
    "kind, params, metric",
    [
        ("segmentation", {}, "mIoU"),
        ("saliency", {}, "maxF"),
        ("depth", {"depth_loss": "bins", "lr": 3e-2}, "rmse"),
        ("depth", {"depth_loss": "silog", "lr": 3e-2}, "rmse"),
    ],
)
def test_training_beats_the_untrained_head(synth, kind, params, metric):
    fitted = _fit_signal(synth, kind, **params)
    untrained, trained = fitted.history[0][metric], fitted.val_scores[metric]
    if metric == "rmse":
        assert trained < 0.6 * untrained
    else:
        assert trained > untrained + 0.2
    assert fitted.history[fitted.best_epoch][metric] == trained


def test_nan_loss_stops_with_an_error_naming_the_run(tmp_path):
    sp = synthetic_splits(tmp_path, KEYS, signal=SIGNAL, sizes={"train": 8, "val": 4}, nan_key=(1, None))
    with pytest.raises(
        ProbebenchError, match=r"probe linear, task segmentation, cell L1_Tnone: training diverged"
    ):
        linear_probe(sp["train"], sp["val"], None, ["segmentation"], **FAST)
    with pytest.raises(ProbebenchError, match="cell L1_Tnone: training diverged"):
        linear_probe(sp["train"], sp["val"], None, ["depth"], **{**FAST, "depth_loss": "silog"})


def test_early_stopping_keeps_the_best_state(synth, monkeypatch):
    """Scripted validation scores: best at epoch 2, then two worse epochs (patience 2) stop the run."""
    script = iter([0.1, 0.3, 0.6, 0.5, 0.4, 0.9, 0.9])
    states = []

    def fake_evaluate(model, *a, **k):
        states.append({n: v.clone() for n, v in model.state_dict().items()})
        return {"mIoU": next(script), "pixel_acc": 0.0}

    monkeypatch.setattr(tr, "evaluate", fake_evaluate)
    fitted = _fit_signal(synth, "segmentation", epochs=6, patience=2)
    assert fitted.best_epoch == 2 and fitted.epochs_run == 4 and len(states) == 5
    assert fitted.val_scores["mIoU"] == 0.6
    final = fitted.model.state_dict()
    for name, v in states[2].items():
        assert torch.equal(final[name], v)
    assert not torch.equal(final["conv.weight"], states[4]["conv.weight"])


def test_head_outputs_and_probe_at_label_resolution(real):
    xs = [torch.randn(2, 24, 8, 8), torch.randn(2, 40, 4, 4)]
    dl = DeepLabV3PlusLite([24, 40], 8, width=16, rates=(1, 2, 3))
    assert dl(xs).shape == (2, 8, 8, 8)  # at the shallow input's grid
    dpt = DPTLite([24, 40], 256, width=16)
    assert dpt(xs).shape == (2, 256, 64, 64)  # ×4 reassemble, ×2 head: 8× the first token grid
    assert tr.upsample_to(dpt(xs), (16, 16)).shape == (2, 256, 16, 16)
    assert DPTLite([24], 1, width=16)(xs[:1]).shape == (2, 1, 64, 64)  # one map reused at every scale
    out = head_probe(*real, ["segmentation", "depth"], width=8, rates=(1, 2), epochs=2, progress=False)
    probes = {(r["task"], r["probe"]) for r in out.records}
    assert probes == {("segmentation", "head-deeplab"), ("depth", "head-dpt")}
    assert out.records[0]["layer"] == [1, 2] and out.records[0]["timestep"] is None
    assert set(out.state_dicts) == {"head-deeplab/segmentation/L1+2_Tnone", "head-dpt/depth/L1+2_Tnone"}


def test_parameter_counts_reach_mmdiff_scale():
    counts = reference_parameter_counts()  # FLUX.1-sized inputs: 4 levels of 3072 channels
    print("trained parameters:", {k: f"{v / 1e6:.2f} M" for k, v in counts.items()})
    assert 30e6 < counts["dpt/full"] < 40e6 and 30e6 < counts["deeplab/full"] < 40e6
    assert counts["dpt/default"] < 2e6 and counts["deeplab/default"] < 3e6
    assert count_parameters(DPTLite([32], 1, width=FULL_WIDTH)) > 20e6


class SegmentationOnly(Dataset):
    """Scenes with only its segmentation target declared."""

    name = "seg-only"

    def __init__(self, base: Dataset):
        super().__init__(base.split)
        self.base = base

    @property
    def targets(self) -> dict[str, TargetSpec]:
        return {"segmentation": self.base.targets["segmentation"]}

    def __len__(self) -> int:
        return len(self.base)

    def image_id(self, index: int) -> str:
        return self.base.image_id(index)

    def load_image(self, index: int) -> np.ndarray:
        return self.base.load_image(index)

    def load_target(self, index: int, kind: str) -> np.ndarray:
        self.target_spec(kind)
        return self.base.load_target(index, kind)


def test_a_head_that_does_not_fit_the_task_is_refused(synth):
    seg_only = [Split(s.cache, SegmentationOnly(s.dataset)) for s in synth]
    with pytest.raises(
        ProbebenchError, match="dpt head is a depth head and does not fit the segmentation task"
    ):
        head_probe(*seg_only, ["segmentation"], head="dpt", progress=False)
    with pytest.raises(ProbebenchError, match=r"has no 'depth' target. It provides: segmentation"):
        head_probe(*seg_only, ["depth"], head="dpt", progress=False)
    with pytest.raises(ProbebenchError, match=r"deeplab head .* does not fit the depth task"):
        head_probe(*synth, ["depth"], head="deeplab", progress=False)


def test_concat_keys_concatenate_layers_on_the_first_grid(real):
    out = linear_probe(*real, ["segmentation"], concat_keys=[[1, None], [2, None]], epochs=1, progress=False)
    assert {r["layer"] if isinstance(r["layer"], int) else tuple(r["layer"]) for r in out.records} == {(1, 2)}
    assert out.records[0]["trained_params"] == (24 + 40) * 2 + (24 + 40) * 8 + 8  # BN + 1×1 conv
    with pytest.raises(ProbebenchError, match="give keys or concat_keys, not both"):
        linear_probe(*real, ["segmentation"], keys=[(1, None)], concat_keys=[[1, None]], progress=False)


def test_spearman_of_ridge_against_linear_on_a_hand_made_table():
    cells = [(0, 0), (0, 500), (1, 0), (1, 500), (2, 0)]
    ridge = [0.10, 0.30, 0.20, 0.50, 0.40]
    linear = [0.15, 0.25, 0.30, 0.60, 0.45]  # ranks 1 2 3 5 4 vs ridge 1 3 2 5 4: rho = 1 - 6·2/120
    rows = lambda vals, probe: [  # noqa: E731
        {
            "layer": c[0],
            "timestep": c[1],
            "task": "segmentation",
            "split": s,
            "metric": m,
            "value": v,
            "probe": probe,
        }
        for c, v in zip(cells, vals)
        for s in ("val", "test")
        for m in ("mIoU", "pixel_acc")
    ]
    res = spearman_ridge_vs_linear(rows(ridge, "ridge"), rows(linear, "linear"), "segmentation")
    assert res["n"] == 5 and res["rho"] == pytest.approx(spearmanr(ridge, linear).statistic) == pytest.approx(
        0.9
    )
    assert list(res["table"].columns) == ["layer", "timestep", "ridge", "linear"]
    # results-table form (strings) matches too, and only common cells are ranked
    df = pd.DataFrame(rows(linear[:4], "linear")).assign(layer=lambda d: d.layer.astype(str),
                                                        timestep=lambda d: d.timestep.astype(str))  # fmt: skip
    res = spearman_ridge_vs_linear(rows(ridge, "ridge"), df, "segmentation")
    assert res["n"] == 4 and res["rho"] == pytest.approx(spearmanr(ridge[:4], linear[:4]).statistic)
    with pytest.raises(ProbebenchError, match="Spearman needs at least 2"):
        spearman_ridge_vs_linear(rows(ridge[:1], "ridge"), rows(linear[:1], "linear"), "segmentation")


def test_streamed_features_give_the_same_numbers(real):
    """With no memory budget, features and targets are read from the cache per batch: same records."""
    kw = {"concat_keys": [[1, None], [2, None]], "epochs": 2, "progress": False}
    held = linear_probe(*real, ["segmentation"], **kw)
    streamed = linear_probe(*real, ["segmentation"], max_memory_gb=0, **kw)
    assert held.records == streamed.records
