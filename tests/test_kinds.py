"""Target kinds as objects (:mod:`tasks.kinds`): adding a kind is one file (a toy fourth kind, defined here, runs
through the ridge screen and a trained probe, is read by the ``folder`` dataset and listed by ``probebench list
kinds``); the built-in kinds give the numbers the code gave before they
were objects (the old per-kind formulas are written out below); class palettes are sized to the label space."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from _synthetic import synthetic_splits
from PIL import Image

import tasks
from analysis.complementarity import error_mask, error_overlap
from probebench.cli import main
from probebench.core.errors import ProbebenchError, UnknownNameError
from probes.heads import check_heads, head_for
from probes.linear import linear_probe
from probes.screen import Split, predict_maps, ridge_screen
from probes.targets import upsample
from probes.training import TrainConfig, make_objective
from tasks import TASKS, Dataset, TargetSpec
from tasks.base import HIGHER_IS_BETTER, KINDS, MAIN_METRIC
from tasks.kinds import TARGET_KINDS, Objective, TargetKind, class_palette, get_kind, kind_names
from tasks.kinds.base import area_mean

# ---------------------------------------------------------------------------------------------------------------
# a fourth kind in one file: edge maps (where the class changes), as a plugin would write it
# ---------------------------------------------------------------------------------------------------------------


def edges_of(classes: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixel's class differs from its right or lower neighbour."""
    e = np.zeros(classes.shape, dtype=bool)
    e[:, :-1] |= classes[:, 1:] != classes[:, :-1]
    e[:-1, :] |= classes[1:, :] != classes[:-1, :]
    return e


class EdgeMetric:
    """IoU of the edge map thresholded at 0.5, and the mean absolute error of the scores."""

    def __init__(self) -> None:
        self.inter = self.union = self.abs_err = self.pixels = 0.0

    def update(self, pred: Any, target: Any) -> None:
        p, t = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=bool)
        self.inter += float(((p >= 0.5) & t).sum())
        self.union += float(((p >= 0.5) | t).sum())
        self.abs_err += float(np.abs(p - t).sum())
        self.pixels += t.size

    def compute(self) -> dict[str, float]:
        return {"edge_iou": self.inter / max(self.union, 1.0), "edge_mae": self.abs_err / self.pixels}


class EdgeObjective(Objective):
    @property
    def channels(self) -> int:
        return 1

    def loss(self, up: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(up[:, 0], target.float())

    def decode(self, up: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(up[:, 0])


class EdgeKind(TargetKind):
    name = "edges"
    metrics = {"edge_iou": True, "edge_mae": False}  # noqa: RUF012
    main_metric = "edge_iou"
    error_criterion = "thresholded at 0.5"

    def num_outputs(self, spec: TargetSpec) -> int:
        return 1

    def soft_targets(self, targets: np.ndarray, spec: TargetSpec, hw: tuple[int, int]):
        y = area_mean(torch.from_numpy(np.asarray(targets))[:, None].double(), hw)
        return y.permute(0, 2, 3, 1).numpy(), np.ones(y[:, 0].shape)

    def decode(self, pred_up: torch.Tensor, spec: TargetSpec) -> torch.Tensor:
        return pred_up[:, 0].clamp(0, 1)

    def make_metric(self, spec: TargetSpec, **options: Any) -> EdgeMetric:
        return EdgeMetric()

    def objective(self, spec, options: Mapping[str, Any] | None = None, class_weights=None) -> EdgeObjective:
        return EdgeObjective(spec, class_weights, options)

    def error_mask(self, pred, target, **options):
        pred, target = np.asarray(pred), np.asarray(target)
        valid = np.isfinite(target)
        return ((pred >= 0.5) != (target >= 0.5)) & valid, valid

    def read_target(self, path, spec: TargetSpec) -> np.ndarray:
        """A black-and-white PNG (the default reads its values) → bool edges."""
        return super().read_target(path, spec) > 0


class EdgeScenes(Dataset):
    """The scenes dataset with one target: the edges of its segmentation."""

    name = "edge-scenes"

    def __init__(self, split: str = "train", **options: Any):
        super().__init__(split)
        self.base = tasks.create("scenes", split=split, **options)

    @property
    def targets(self) -> dict[str, TargetSpec]:
        return {"edges": TargetSpec("edges")}

    def __len__(self) -> int:
        return len(self.base)

    def image_id(self, index: int) -> str:
        return self.base.image_id(index)

    def load_image(self, index: int) -> np.ndarray:
        return self.base.load_image(index)

    def load_target(self, index: int, kind: str) -> np.ndarray:
        self.target_spec(kind)
        return edges_of(self.base.load_target(index, "segmentation"))


@pytest.fixture
def edge_kind(isolated_registries):
    """The toy kind and its dataset registered for one test, then forgotten."""
    saved = dict(TARGET_KINDS._entries)
    TARGET_KINDS.register("edges", EdgeKind)
    TASKS.register("edge-scenes", EdgeScenes, kind="edges", source="rendered")
    yield get_kind("edges")
    TARGET_KINDS._entries.clear()
    TARGET_KINDS._entries.update(saved)


def _edge_splits(tmp_path) -> list[Split]:
    keys = [(1, None), (2, None)]
    sp = synthetic_splits(tmp_path, keys, signal=(2, None), sizes={"train": 16, "val": 8, "test": 8})
    return [
        Split(sp[r].cache, tasks.create("edge-scenes", split=r, resolution=16, num_images=len(sp[r].dataset)))
        for r in ("train", "val", "test")
    ]


def test_a_kind_defined_in_one_file_runs_the_ridge_screen_and_a_trained_probe(edge_kind, tmp_path):
    spec = TargetSpec("edges")
    assert spec.target_kind is edge_kind and spec.main_metric == "edge_iou" and spec.higher_is_better
    assert "edges" in kind_names() and MAIN_METRIC["edges"] == ("edge_iou", True)
    assert HIGHER_IS_BETTER["edge_mae"] is False and KINDS == ("segmentation", "saliency", "depth")
    train, val, test = _edge_splits(tmp_path)

    ridge = ridge_screen(train, val, test, ["edges"], progress=False)
    assert {r["metric"] for r in ridge.records} == {"edge_iou", "edge_mae"}
    assert all(math.isfinite(r["value"]) for r in ridge.records)
    head = ridge.best["edges"]
    assert head.key == (2, None)  # the key that carries the segmentation beats noise
    maps = predict_maps(head, test, spec, [0, 1])
    assert maps.shape == (2, 16, 16) and maps.min() >= 0 and maps.max() <= 1

    linear = linear_probe(
        train, val, test, ["edges"], keys=[(2, None)], epochs=3, lr=1e-2, batch_size=4, progress=False
    )
    assert {(r["split"], r["metric"]) for r in linear.records} == {
        (s, m) for s in ("val", "test") for m in ("edge_iou", "edge_mae")
    }
    assert all(math.isfinite(r["value"]) for r in linear.records)

    assert head_for("auto", "edges", "head") == "linear"  # the base class's default head
    with pytest.raises(
        ProbebenchError, match="deeplab head is a segmentation/saliency head and does not fit"
    ):
        check_heads("deeplab", ["edges"], "head")
    t = test.dataset.load_target(0, "edges")
    overlap = error_overlap(maps[0], 1 - maps[0], t.astype(float), "edges")
    assert overlap["both_wrong"] == 0.0 and overlap["n_pixels"] == t.size


def test_a_plugin_kind_is_read_by_the_folder_dataset(edge_kind, tmp_path, capsys):
    """The ``folder`` dataset reads a kind it was never told about: its subfolder (the kind's name), file types
    and spec come from the kind object."""
    src = tasks.create("edge-scenes", split="train", resolution=16, num_images=3)
    images, edges = tmp_path / "train" / "images", tmp_path / "train" / "edges"
    images.mkdir(parents=True)
    edges.mkdir()
    for i in range(len(src)):
        rgb = np.round(src.load_image(i) * 255).astype(np.uint8)
        Image.fromarray(rgb).save(images / f"{src.image_id(i)}.png")
        Image.fromarray(src.load_target(i, "edges").astype(np.uint8) * 255).save(
            edges / f"{src.image_id(i)}.png"
        )
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump({"name": "toy-edges"}))  # kinds found by folder
    ds = tasks.create("folder", split="train", root=tmp_path)
    assert list(ds.targets) == ["edges"] and ds.target_spec("edges") == TargetSpec("edges")
    assert [ds.image_id(i) for i in range(len(ds))] == [src.image_id(i) for i in range(len(src))]
    for i in range(len(ds)):
        t = ds.load_target(i, "edges")
        assert t.dtype == bool and np.array_equal(t, src.load_target(i, "edges"))
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump({"name": "toy-edges", "targets": ["edgs"]}))
    with pytest.raises(UnknownNameError, match=r"Unknown target kind 'edgs'.*Did you mean: edges"):
        tasks.create("folder", split="train", root=tmp_path)
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump({"name": "toy-edges", "targets": ["edges"]}))
    (edges / f"{src.image_id(0)}.png").unlink()
    with pytest.raises(ProbebenchError, match=r"1 image\(s\) in .* have no edges file in"):
        tasks.create("folder", split="train", root=tmp_path)
    assert main(["list", "kinds"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[0][:4] == ["NAME", "KIND", "SOURCE", "NOTES"]
    assert {r[0] for r in rows[1:]} == {"segmentation", "saliency", "depth", "edges"}


def test_kinds_are_looked_up_with_did_you_mean_and_plugins_leave_no_trace():
    assert "edges" not in TARGET_KINDS and "edges" not in MAIN_METRIC  # the fixture's kind is gone
    with pytest.raises(
        UnknownNameError, match=r"Unknown target kind 'segmentaton'\. Did you mean: segmentation"
    ):
        TargetSpec("segmentaton")
    with pytest.raises(ProbebenchError, match="needs num_classes"):
        TargetSpec("segmentation")


# ---------------------------------------------------------------------------------------------------------------
# every registered kind keeps the contract
# ---------------------------------------------------------------------------------------------------------------
SCENES = tasks.create("scenes", split="val", resolution=16, num_images=3)


@pytest.mark.parametrize("name", kind_names())
def test_every_registered_kind_keeps_the_contract(name):
    if name not in SCENES.targets:
        pytest.skip(f"no sample of {name!r} targets (a kind an installed plugin adds)")
    kind = get_kind(name)
    spec = SCENES.target_spec(name)
    assert kind.name == name and kind.main_metric in kind.metrics and kind.default_head in kind.heads
    t = np.stack([SCENES.load_target(i, name) for i in range(3)])
    y, w = kind.soft_targets(t, spec, (4, 4))
    assert y.shape == (3, 4, 4, kind.num_outputs(spec)) and w.shape == (3, 4, 4) and y.dtype == np.float64
    pred = kind.decode(upsample(y, (16, 16)), spec)
    metric = kind.make_metric(spec)
    metric.update(pred, t)
    assert list(metric.compute()) == list(kind.metrics)
    crit = kind.lambda_criterion(spec)
    crit.update(pred, t)
    assert math.isfinite(crit.compute()) and isinstance(crit.higher_is_better, bool)
    objective = kind.objective(spec, {"depth_loss": "bins", "depth_bins": 8})
    out = torch.zeros(3, objective.channels, 4, 4)
    up = F.interpolate(objective.prepare(out), size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.isfinite(objective.loss(up, torch.from_numpy(t))) and objective.decode(up).shape == (
        3,
        16,
        16,
    )
    wrong, valid = kind.error_mask(pred.numpy(), t.astype(np.float64))
    assert wrong.shape == valid.shape == t.shape and not (wrong & ~valid).any()


# ---------------------------------------------------------------------------------------------------------------
# the built-in kinds reproduce the numbers of the code before kinds were objects (old formulas, verbatim)
# ---------------------------------------------------------------------------------------------------------------
def old_targets_at(targets, spec, hw):
    t = torch.from_numpy(np.asarray(targets))
    if spec.kind == "segmentation":
        valid = t != spec.ignore_index
        onehot = F.one_hot(torch.where(valid, t, 0).long(), spec.num_classes).permute(0, 3, 1, 2).double()
        onehot = onehot * valid[:, None]
        w = F.adaptive_avg_pool2d(valid[:, None].double(), hw)
        y = F.adaptive_avg_pool2d(onehot, hw) / w.clamp_min(1e-12)
    elif spec.kind == "saliency":
        y = F.adaptive_avg_pool2d(t[:, None].double(), hw)
        w = torch.ones_like(y)
    else:
        d = t.double()
        valid = torch.isfinite(d) & (d >= spec.min_depth) & (d <= spec.max_depth)
        logd = torch.where(valid, torch.log(torch.where(valid, d, 1.0)), 0.0)
        w = F.adaptive_avg_pool2d(valid[:, None].double(), hw)
        y = F.adaptive_avg_pool2d(logd[:, None], hw) / w.clamp_min(1e-12)
    return y.permute(0, 2, 3, 1).numpy(), w[:, 0].numpy()


def old_class_frequencies(targets, spec):
    k = spec.num_classes if spec.kind == "segmentation" else 2
    counts = np.zeros(k, dtype=np.float64)
    for t in targets:
        t = np.asarray(t)
        t = t[t != spec.ignore_index] if spec.kind == "segmentation" else t.astype(np.int64)
        counts += np.bincount(t.ravel().astype(np.int64), minlength=k)[:k]
    return counts


def old_balance_weights(y, w, class_weights):
    if class_weights is None:
        return w
    if y.shape[-1] == 1:
        cw = y[..., 0] * class_weights[1] + (1 - y[..., 0]) * class_weights[0]
    else:
        cw = y @ class_weights
    return w * cw


def old_decode(pred_up, spec):
    if spec.kind == "segmentation":
        return pred_up.argmax(1)
    if spec.kind == "saliency":
        return pred_up[:, 0].clamp(0, 1)
    return torch.exp(pred_up[:, 0].clamp(max=float(np.log(spec.max_depth)) + 1.0))


SPECS = {
    "segmentation": TargetSpec("segmentation", 4, ignore_index=255),
    "saliency": TargetSpec("saliency"),
    "depth": TargetSpec("depth", min_depth=0.1, max_depth=10.0),
}


def _example(kind: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "segmentation":
        t = rng.integers(0, 4, (2, 12, 12))
        t[:, :3, :5] = 255
        return t
    if kind == "saliency":
        return rng.random((2, 12, 12)) > 0.6
    d = rng.uniform(0.05, 12.0, (2, 12, 12)).astype(np.float32)
    d[0, :2] = 0.0
    d[1, 5, 5] = np.nan
    return d


@pytest.mark.parametrize("kind", list(SPECS))
def test_builtin_kinds_reproduce_the_old_closed_form_numbers(kind):
    spec, t = SPECS[kind], _example(kind)
    target_kind = spec.target_kind
    for hw in ((3, 3), (5, 4)):
        y, w = target_kind.soft_targets(t, spec, hw)
        y_old, w_old = old_targets_at(t, spec, hw)
        assert np.array_equal(y, y_old) and np.array_equal(w, w_old) and y.dtype == y_old.dtype
    assert target_kind.num_outputs(spec) == (4 if kind == "segmentation" else 1)
    counts = target_kind.class_frequencies(iter(t), spec)
    weights = target_kind.class_weights(iter(t), spec)
    if kind == "depth":
        assert counts is None and weights is None
    else:
        assert np.array_equal(counts, old_class_frequencies(list(t), spec))
        y, w = target_kind.soft_targets(t, spec, (3, 3))
        assert np.array_equal(target_kind.balance_weights(y, w, weights), old_balance_weights(y, w, weights))
    pred = torch.from_numpy(np.random.default_rng(1).normal(size=(2, target_kind.num_outputs(spec), 12, 12)))
    assert torch.equal(target_kind.decode(pred.float(), spec), old_decode(pred.float(), spec))


def test_lambda_criteria_are_the_old_ones():
    """Segmentation and depth pick λ by their main metric, saliency by the mean absolute error: |p − t| of
    float32 maps summed per batch into a float64 total, over the pixel count."""
    rng = np.random.default_rng(2)
    preds = [torch.from_numpy(rng.random((2, 12, 12)).astype(np.float32)) for _ in range(3)]
    targets = [_example("saliency", s) for s in range(3)]
    crit = SPECS["saliency"].target_kind.lambda_criterion(SPECS["saliency"])
    err, count = np.zeros(1), 0
    for p, t in zip(preds, targets):
        crit.update(p, t)
        err[0] += np.abs(p.numpy() - t.astype(np.float32)).sum()
        count += t.size
    assert crit.higher_is_better is False and crit.compute() == (err / count)[0]
    for kind, (metric, higher) in (("segmentation", ("mIoU", True)), ("depth", ("rmse", False))):
        spec = SPECS[kind]
        crit, m = spec.target_kind.lambda_criterion(spec), spec.target_kind.make_metric(spec)
        t = _example(kind)
        p = old_decode(
            torch.from_numpy(
                np.random.default_rng(3).normal(size=(2, spec.target_kind.num_outputs(spec), 12, 12))
            ).float(),
            spec,
        )
        crit.update(p, t)
        m.update(p, t)
        assert crit.higher_is_better is higher and crit.compute() == m.compute()[metric]


def test_the_kind_tables_keep_their_old_values():
    assert KINDS == ("segmentation", "saliency", "depth")
    assert dict(MAIN_METRIC) == {
        "segmentation": ("mIoU", True),
        "saliency": ("maxF", True),
        "depth": ("rmse", False),
    }
    assert list(HIGHER_IS_BETTER.items()) == [
        ("mIoU", True), ("pixel_acc", True), ("MAE", False), ("maxF", True), ("meanF", True), ("adpF", True),
        ("S", True), ("maxE", True), ("meanE", True), ("adpE", True), ("abs_rel", False), ("sq_rel", False),
        ("rmse", False), ("rmse_log", False), ("log10", False), ("silog", False), ("delta1", True),
        ("delta2", True), ("delta3", True),
    ]  # fmt: skip
    assert {k: get_kind(k).default_head for k in KINDS} == {
        "segmentation": "deeplab",
        "saliency": "deeplab",
        "depth": "dpt",
    }
    assert check_heads("linear", list(KINDS), "head") == dict.fromkeys(KINDS, "linear")
    with pytest.raises(
        ProbebenchError,
        match=r"dpt head is a depth head and does not fit the saliency task\. Use head='auto' or 'deeplab'",
    ):
        head_for("dpt", "saliency", "head")


def test_builtin_objectives_reproduce_the_old_losses_and_decoding():
    torch.manual_seed(0)
    seg, sal = SPECS["segmentation"], SPECS["saliency"]
    t = torch.from_numpy(_example("segmentation"))
    up = torch.randn(2, 4, 12, 12)
    cw = np.array([0.5, 2.0, 1.0, 0.0])
    obj = make_objective(seg, TrainConfig(), cw)
    assert obj.channels == 4 and torch.equal(obj.decode(up), up.argmax(1))
    want = F.cross_entropy(up, t.long(), weight=torch.as_tensor(cw).float(), ignore_index=255)
    assert torch.equal(obj.loss(up, t), want)
    assert obj.loss(up, torch.full_like(t, 255)).item() == 0.0
    s = torch.from_numpy(_example("saliency"))
    obj = make_objective(sal, TrainConfig(), np.array([0.8, 1.6]))
    want = F.binary_cross_entropy_with_logits(up[:, 0], s.float(), pos_weight=torch.tensor(2.0))
    assert obj.channels == 1 and torch.equal(obj.loss(up[:, :1], s), want)
    assert torch.equal(obj.decode(up[:, :1]), torch.sigmoid(up[:, 0]))
    depth = SPECS["depth"]
    bins = make_objective(depth, TrainConfig(depth_loss="bins", depth_bins=5))
    centers = torch.linspace(math.log(0.1), math.log(10.0), 5).exp()
    out = torch.randn(2, 5, 3, 3)
    assert bins.channels == 5
    assert torch.equal(
        bins.prepare(out), torch.einsum("bkhw,k->bhw", F.softmax(out, 1), centers).unsqueeze(1)
    )
    silog = make_objective(depth, TrainConfig(depth_loss="silog"))
    logd = torch.randn(2, 1, 12, 12)
    assert silog.channels == 1 and torch.equal(silog.prepare(logd), logd)
    assert torch.equal(silog.decode(logd), logd[:, 0].clamp(max=math.log(10.0) + 1.0).exp())
    with pytest.raises(ProbebenchError, match="depth_loss must be one of bins, silog"):
        depth.target_kind.objective(depth, {"depth_loss": "l1"})


def test_error_masks_are_the_old_ones():
    rng = np.random.default_rng(4)
    t = rng.integers(0, 4, (6, 6)).astype(float)
    t[0] = 255
    p = rng.integers(0, 4, (6, 6))
    wrong, valid = error_mask(p, t, "segmentation")
    assert np.array_equal(valid, t != 255) and np.array_equal(wrong, (p != t) & (t != 255))
    s, ps = (rng.random((6, 6)) > 0.5).astype(float), rng.random((6, 6))
    wrong, valid = error_mask(ps, s, "saliency", saliency_threshold=0.3)
    assert valid.all() and np.array_equal(wrong, (ps >= 0.3) != (s >= 0.5))
    d, pd_ = rng.uniform(0.5, 4, (6, 6)), rng.uniform(0.5, 4, (6, 6))
    d[0, 0], pd_[1, 1] = 0.0, np.nan
    wrong, valid = error_mask(pd_, d, "depth", depth_ratio=1.5)
    ok = (d > 0) & np.isfinite(pd_)
    with np.errstate(divide="ignore", invalid="ignore"):
        assert np.array_equal(valid, ok) and np.array_equal(wrong, (np.maximum(pd_ / d, d / pd_) >= 1.5) & ok)
    with pytest.raises(ProbebenchError, match="Unknown task 'normals' for error overlap"):
        error_mask(p, t, "normals")


# ---------------------------------------------------------------------------------------------------------------
# colour maps sized to the label space
# ---------------------------------------------------------------------------------------------------------------
def test_class_palettes_are_sized_by_the_number_of_classes():
    import matplotlib.pyplot as plt

    tab10, tab20 = plt.get_cmap("tab10"), plt.get_cmap("tab20")
    assert class_palette(7) == [tuple(float(c) for c in tab10(i)[:3]) for i in range(7)]
    assert class_palette(15) == [tuple(float(c) for c in tab20(i)[:3]) for i in range(15)]
    pal = class_palette(150)  # ADE20K
    assert len(pal) == 150 and len({tuple(np.round(c, 4)) for c in pal}) == 150
    assert all(max(c) > 0.2 for c in pal)  # none reads as the black of ignored pixels


def test_a_150_class_map_gets_150_colours_and_keys_ignored_pixels():
    names = [f"c{i}" for i in range(150)]
    t = np.arange(150 * 4).reshape(1, 20, 30) % 150
    t[0, 0, :5] = 255
    panels = get_kind("segmentation").panels(t, t, {"class_names": names, "ignore_index": 255})
    cmap = panels.imshow["cmap"]
    assert cmap.N == 150 and panels.imshow["vmax"] == 149.5 and panels.imshow["vmin"] == -0.5
    assert len({tuple(np.round(cmap(i)[:3], 4)) for i in range(150)}) == 150
    assert cmap.get_bad()[:3].tolist() == [0.0, 0.0, 0.0]
    assert panels.legend[-1].get_label() == "ignored (label 255; not scored)"
    depth = get_kind("depth").panels(np.array([[[0.0, 2.0], [np.nan, 3.0]]]), np.ones((1, 2, 2)), {})
    assert depth.colorbar == "depth (m)" and np.ma.getmaskarray(depth.target).tolist() == [
        [[True, False], [True, False]]
    ]
    sal = get_kind("saliency").panels(np.zeros((1, 2, 2)), np.ones((1, 2, 2)), {})
    assert sal.imshow["cmap"] == "gray" and (sal.imshow["vmin"], sal.imshow["vmax"]) == (0.0, 1.0)
