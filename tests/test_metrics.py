"""Tests for tasks.metrics: segmentation vs scikit-learn, saliency vs PySODMetrics 1.6.2 golden values,
depth vs hand-computed values, and every input error."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, jaccard_score

from tasks.metrics import DepthMetric, SaliencyMetric, SegmentationMetric, eigen_crop_mask

# ==================================================================================================
# segmentation
# ==================================================================================================
NC = 7


def _random_seg(seed: int, shape: tuple[int, ...], num_classes: int = NC, ignore_frac: float = 0.1):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, num_classes, size=shape)
    pred = np.where(rng.random(shape) < 0.6, target, rng.integers(0, num_classes, size=shape))
    target[rng.random(shape) < ignore_frac] = 255
    return pred, target


def test_segmentation_matches_sklearn():
    pred, target = _random_seg(0, (3, 20, 24))
    metric = SegmentationMetric(NC)
    metric.update(pred, target)
    keep = target != 255
    y_true, y_pred = target[keep], pred[keep]
    labels = list(range(NC))
    np.testing.assert_array_equal(metric.confusion, confusion_matrix(y_true, y_pred, labels=labels))
    ref_iou = jaccard_score(y_true, y_pred, labels=labels, average=None)
    np.testing.assert_allclose(metric.per_class_iou(), ref_iou, rtol=1e-12)
    result = metric.compute()
    assert set(result) == {"mIoU", "pixel_acc"}
    assert all(type(v) is float for v in result.values())
    assert result["mIoU"] == pytest.approx(ref_iou.mean(), rel=1e-12)
    assert result["pixel_acc"] == pytest.approx(accuracy_score(y_true, y_pred), rel=1e-12)
    assert 0 < result["mIoU"] < 1  # a fraction, not a percentage


def test_segmentation_batch_equals_per_image_and_reset():
    pred, target = _random_seg(1, (4, 9, 11))
    batched, single = SegmentationMetric(NC), SegmentationMetric(NC)
    batched.update(pred, target)
    for p, t in zip(pred, target):
        single.update(p, t)
    np.testing.assert_array_equal(batched.confusion, single.confusion)
    assert batched.compute() == single.compute()
    batched.reset()
    assert batched.confusion.sum() == 0


def test_segmentation_torch_equals_numpy():
    torch = pytest.importorskip("torch")
    pred, target = _random_seg(2, (2, 8, 8))
    a, b = SegmentationMetric(NC), SegmentationMetric(NC)
    a.update(pred, target)
    b.update(torch.from_numpy(pred), torch.from_numpy(target).to(torch.uint8))
    np.testing.assert_array_equal(a.confusion, b.confusion)
    assert a.compute() == b.compute()


def test_segmentation_absent_class_excluded_from_mean():
    target = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    metric = SegmentationMetric(4)  # class 3 never appears in pred nor target
    metric.update(pred, target)
    iou = metric.per_class_iou()
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 1 / 2])
    assert np.isnan(iou[3])
    assert metric.compute()["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert metric.compute()["pixel_acc"] == pytest.approx(4 / 6)


def test_segmentation_all_ignore_image_contributes_nothing():
    pred, target = _random_seg(3, (10, 10))
    metric = SegmentationMetric(NC)
    metric.update(pred, target)
    before = metric.confusion.copy()
    metric.update(np.zeros((10, 10), dtype=np.int64), np.full((10, 10), 255))
    np.testing.assert_array_equal(metric.confusion, before)


def test_segmentation_nothing_scored_is_nan():
    metric = SegmentationMetric(3)
    assert all(math.isnan(v) for v in metric.compute().values())
    metric.update(np.zeros((2, 2), dtype=np.int64), np.full((2, 2), 255))
    assert math.isnan(metric.compute()["mIoU"])
    assert np.isnan(metric.per_class_iou()).all()


def test_segmentation_one_pixel_objects():
    target = np.zeros((5, 5), dtype=np.int64)
    target[2, 2] = 1  # one-pixel object, hit
    target[4, 4] = 2  # one-pixel object, missed
    pred = np.zeros_like(target)
    pred[2, 2] = 1
    pred[0, 0] = 2  # one-pixel false positive
    metric = SegmentationMetric(3)
    metric.update(pred, target)
    np.testing.assert_allclose(metric.per_class_iou(), [22 / 24, 1.0, 0.0])
    assert metric.compute()["pixel_acc"] == pytest.approx(23 / 25)


def test_segmentation_constant_prediction():
    target = np.array([[0, 1, 2, 2]])
    metric = SegmentationMetric(3)
    metric.update(np.full_like(target, 2), target)
    np.testing.assert_allclose(metric.per_class_iou(), [0.0, 0.0, 0.5])
    assert metric.compute() == {"mIoU": pytest.approx(1 / 6), "pixel_acc": 0.5}


def test_segmentation_custom_and_disabled_ignore_index():
    target = np.array([[0, -1, 1]])
    pred = np.array([[0, 1, 1]])
    metric = SegmentationMetric(2, ignore_index=-1)
    metric.update(pred, target)
    assert metric.compute()["pixel_acc"] == 1.0
    strict = SegmentationMetric(2, ignore_index=None)
    with pytest.raises(ValueError, match=r"target contains labels outside \[0, 2\).*\[-1\]"):
        strict.update(pred, target)


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        (np.zeros((2, 3), int), np.zeros((3, 2), int), r"shapes differ: pred \(2, 3\) vs target \(3, 2\)"),
        (np.zeros((2, 3, 4, 4)), np.zeros((2, 3, 4, 4), int), r"\(H, W\) or a batch \(B, H, W\)"),
        (np.zeros((2, 3), np.float32), np.zeros((2, 3), int), r"pred must hold integer.*float32.*argmax"),
        (np.zeros((2, 3), int), np.zeros((2, 3), np.float64), r"target must hold integer.*float64"),
        (np.zeros((2, 3), int), np.array([[0, 1, 7], [9, 255, 7]]), r"target.*outside \[0, 4\).*\[7, 9\]"),
        (np.array([[0, 1, -2], [4, 0, 0]]), np.zeros((2, 3), int), r"pred.*outside \[0, 4\).*\[-2, 4\]"),
        (np.array([["a"]]), np.array([[0]]), r"pred must be a numeric array"),
    ],
)
def test_segmentation_bad_input(pred, target, match):
    metric = SegmentationMetric(4)
    with pytest.raises(ValueError, match=match):
        metric.update(pred, target)
    assert metric.confusion.sum() == 0  # a rejected update leaves no partial state


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, True])
def test_segmentation_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        SegmentationMetric(num_classes)


# ==================================================================================================
# saliency
# ==================================================================================================
def _lcg(seed: int, n: int) -> np.ndarray:
    """n integers in [0, 32768) from the C-library LCG: platform and numpy-version independent."""
    out, x = np.empty(n, np.int64), seed
    for i in range(n):
        x = (1103515245 * x + 12345) % 2**31
        out[i] = x >> 16
    return out


def _make_sod_image(seed: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer-only (pred uint8, gt uint8) pair: a noisy ellipse; some gt pixels are exactly 128/129."""
    noise = _lcg(seed, 2 * h * w)
    n1, n2 = noise[: h * w].reshape(h, w), noise[h * w :].reshape(h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx, ry, rx = h * 2 // 5 + seed % 5, w // 2 - seed % 7, h // 4 + 1, w // 3 + 1
    inside = (yy - cy) ** 2 * rx**2 + (xx - cx) ** 2 * ry**2 <= rx**2 * ry**2
    gt = np.where(inside, 255, 0)
    gt = np.where(n2 % 17 == 0, 128, np.where(n2 % 17 == 1, 129, gt))
    pred = np.clip(np.where(inside, 170, 40) + n1 % 121 - 60, 0, 255)
    return pred.astype(np.uint8), gt.astype(np.uint8)


def _saliency_cases() -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """name -> list of (pred uint8, gt uint8) images accumulated together."""
    cases = {"mixed": [_make_sod_image(1, 48, 64), _make_sod_image(2, 64, 64), _make_sod_image(3, 37, 53)]}
    cases["empty_gt"] = [(_make_sod_image(4, 32, 40)[0], np.zeros((32, 40), np.uint8))]
    cases["full_gt"] = [(_make_sod_image(5, 32, 40)[0], np.full((32, 40), 255, np.uint8))]
    cases["const_pred"] = [(np.full((32, 40), 77, np.uint8), _make_sod_image(6, 32, 40)[1])]
    cases["zero_pred"] = [(np.zeros((32, 40), np.uint8), _make_sod_image(7, 32, 40)[1])]
    one = np.zeros((24, 30), np.uint8)
    one[5, 9] = 255
    cases["one_pixel"] = [(_make_sod_image(8, 24, 30)[0], one)]
    corner = np.zeros((24, 30), np.uint8)
    corner[3, 29] = 255  # centroid on the last column: PySOD 1.6.2 S-measure is NaN here
    cases["last_column_pixel"] = [(_make_sod_image(9, 24, 30)[0], corner)]
    cases["all"] = [img for imgs in list(cases.values()) for img in imgs]
    return cases


# Golden values from PySODMetrics 1.6.2 (py_sod_metrics: Fmeasure, MAE, Smeasure, Emeasure; FmeasureV2
# was checked to agree with Fmeasure), generated in a throwaway venv because pysodmetrics pins numpy:
#
#   python3 -m venv /tmp/sodref && /tmp/sodref/bin/pip install pysodmetrics==1.6.2
#   /tmp/sodref/bin/python gen.py
#
# where gen.py is `import warnings; import numpy as np; import py_sod_metrics as M;
# warnings.simplefilter("ignore")`, then `_lcg`, `_make_sod_image` and `_saliency_cases` copied
# verbatim from this file, then:
#
#   class FixedSmeasure(M.Smeasure):
#       """PySOD's Smeasure, except that an empty (zero-weight) quadrant scores 0 instead of NaN."""
#       def ssim(self, pred, gt):
#           return 0.0 if pred.size == 0 else super().ssim(pred, gt)
#
#   def reference(images, smeasure_cls):
#       fm, mae, sm, em, fm2 = M.Fmeasure(), M.MAE(), smeasure_cls(), M.Emeasure(), M.FmeasureV2(
#           {"fm": M.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=0.3)})
#       for pred, gt in images:
#           for m in (fm, mae, sm, em, fm2):
#               m.step(pred, gt)
#       f, e = fm.get_results()["fm"], em.get_results()["em"]
#       f2 = fm2.get_results()["fm"]
#       assert np.allclose(f2["dynamic"], f["curve"], atol=1e-12) and abs(f2["adaptive"] - f["adp"]) < 1e-12
#       return {"MAE": mae.get_results()["mae"], "maxF": f["curve"].max(), "meanF": f["curve"].mean(),
#               "adpF": f["adp"], "S": sm.get_results()["sm"], "maxE": e["curve"].max(),
#               "meanE": e["curve"].mean(), "adpE": e["adp"]}
#
#   for name, images in _saliency_cases().items():
#       ref, fixed = reference(images, M.Smeasure), reference(images, FixedSmeasure)
#       assert all(ref[k] == fixed[k] for k in ref if np.isfinite(ref[k]))  # the fix only touches NaN
#       print(f"{name!r}: {{" + ", ".join(f"{k!r}: {float(v)!r}" for k, v in fixed.items()) + "},")
#
# Unpatched 1.6.2 gives S = nan for "last_column_pixel" and hence "all"; every other value (and every
# value of every other case) is identical with and without the patch.  Our implementation agrees to
# ~1e-16.
SOD_GOLDEN: dict[str, dict[str, float]] = {
    "mixed": {"MAE": 0.2406038027378922, "maxF": 0.915610994699536, "meanF": 0.6324181946302957, "adpF": 0.7885712533910092, "S": 0.7556023643846692, "maxE": 0.9388638578842996, "meanE": 0.6265125288322609, "adpE": 0.7544523784899496},
    "empty_gt": {"MAE": 0.35114470108695656, "maxF": 0.0, "meanF": 0.0, "adpF": 0.0, "S": 0.6488552989130434, "maxE": 0.9984362783424551, "meanE": 0.6485657740422205, "adpE": 0.835027365129007},
    "full_gt": {"MAE": 0.6594327445652175, "maxF": 1.0, "meanF": 0.5927025530750529, "adpF": 0.4843137254901961, "S": 0.3405672554347826, "maxE": 1.0007818608287724, "meanE": 0.34170372361219703, "adpE": 0.1782642689601251},
    "const_pred": {"MAE": 0.43161458333333325, "maxF": 0.38749377534324536, "meanF": 0.11806450967489504, "adpF": 0.0, "S": 0.406294015980297, "maxE": 0.2501954652071931, "meanE": 0.25019546520719305, "adpE": 0.2501954652071931},
    "zero_pred": {"MAE": 0.31328125, "maxF": 0.37227736913518533, "meanF": 0.0014542084731843177, "adpF": 0.37227736913518533, "S": 0.343359375, "maxE": 0.2501954652071931, "meanE": 0.25019546520719305, "adpE": 0.2501954652071931},
    "one_pixel": {"MAE": 0.36067028985507243, "maxF": 0.0037324145851277634, "meanF": 0.0008597582664769336, "adpF": 0.0, "S": 0.37652079493216317, "maxE": 0.8087822593539549, "meanE": 0.2634460344581505, "adpE": 0.256591977693636},
    "last_column_pixel": {"MAE": 0.3620289855072463, "maxF": 0.0021025392204431508, "meanF": 7.980188762568898e-05, "adpF": 0.0, "S": 0.3736892204905401, "maxE": 0.6387088550195057, "meanE": 0.25955759247343707, "adpE": 0.25680683265775545},
    "all": {"MAE": 0.3555537736179447, "maxF": 0.3780782168711715, "meanF": 0.29004615725201355, "adpF": 0.3580338727553788, "S": 0.5284547837672038, "maxE": 0.53579972280955, "meanE": 0.43257796016635264, "adpE": 0.47671539003608426},
}  # fmt: skip


@pytest.fixture(scope="module")
def sod_cases() -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    return _saliency_cases()


@pytest.mark.parametrize("case", list(SOD_GOLDEN))
def test_saliency_matches_pysodmetrics_golden(case, sod_cases):
    metric = SaliencyMetric()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning (empty means, 0/0) on any corner case
        for pred, gt in sod_cases[case]:
            metric.update(pred, gt)
        result = metric.compute()
    assert list(result) == ["MAE", "maxF", "meanF", "adpF", "S", "maxE", "meanE", "adpE"]
    assert all(type(v) is float for v in result.values())
    assert metric.num_images == len(sod_cases[case])
    for key, expected in SOD_GOLDEN[case].items():
        assert result[key] == pytest.approx(expected, rel=1e-9, abs=1e-12), key


def test_saliency_input_formats_agree(sod_cases):
    """uint8 vs float-probability pred, uint8 vs bool gt, batch vs single, numpy vs torch."""
    images = [_make_sod_image(s, 32, 40) for s in (11, 12, 13)]
    pred = np.stack([p for p, _ in images])
    gt = np.stack([g for _, g in images])
    reference = SaliencyMetric()
    for p, g in images:
        reference.update(p, g)
    expected = reference.compute()

    variants = [
        (pred, gt),
        ((pred / 255).astype(np.float32), gt > 128),
        (pred.astype(np.int64), (gt > 128).astype(np.float64)),
    ]
    torch = pytest.importorskip("torch")
    variants.append((torch.from_numpy(pred).float() / 255, torch.from_numpy(gt)))
    for p, g in variants:
        metric = SaliencyMetric()
        metric.update(p, g)
        assert metric.compute() == pytest.approx(expected, rel=1e-12, abs=1e-15)

    reference.reset()
    assert reference.num_images == 0
    with pytest.raises(ValueError, match="before any image"):
        reference.compute()


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        (np.zeros((4, 4)), np.zeros((4, 5), np.uint8), r"shapes differ: pred \(4, 4\) vs target \(4, 5\)"),
        (np.full((4, 4), 1.5), np.zeros((4, 4), np.uint8), r"float saliency pred must lie in \[0, 1\]"),
        (np.full((4, 4), np.nan), np.zeros((4, 4), np.uint8), r"pred contains NaN"),
        (np.full((4, 4), 300), np.zeros((4, 4), np.uint8), r"integer saliency pred must lie in \[0, 255\]"),
        (np.zeros((4, 4), np.uint8), np.eye(4, dtype=np.uint8), r"looks like a 0/1 mask"),
        (np.zeros((4, 4), np.uint8), np.full((4, 4), -1), r"integer saliency target must lie in \[0, 255\]"),
        (np.zeros((4, 4), np.uint8), np.full((4, 4), 255.0), r"float saliency target must lie in \[0, 1\]"),
        (np.zeros((2, 0, 4), np.uint8), np.zeros((2, 0, 4), np.uint8), r"at least one pixel"),
        (np.zeros((1, 1, 4, 4), np.uint8), np.zeros((1, 1, 4, 4), np.uint8), r"\(H, W\) or a batch"),
    ],
)
def test_saliency_bad_input(pred, target, match):
    metric = SaliencyMetric()
    with pytest.raises(ValueError, match=match):
        metric.update(pred, target)
    assert metric.num_images == 0


# ==================================================================================================
# depth
# ==================================================================================================
def _expected_depth(p: list[float], g: list[float]) -> dict[str, float]:
    """The nine errors of one image, written out term by term with the math module."""
    n = len(g)
    d = [math.log(pi) - math.log(gi) for pi, gi in zip(p, g)]
    ratio = [max(pi / gi, gi / pi) for pi, gi in zip(p, g)]
    return {
        "abs_rel": sum(abs(gi - pi) / gi for pi, gi in zip(p, g)) / n,
        "sq_rel": sum((gi - pi) ** 2 / gi for pi, gi in zip(p, g)) / n,
        "rmse": math.sqrt(sum((gi - pi) ** 2 for pi, gi in zip(p, g)) / n),
        "rmse_log": math.sqrt(sum(di**2 for di in d) / n),
        "log10": sum(abs(math.log10(pi) - math.log10(gi)) for pi, gi in zip(p, g)) / n,
        "silog": 100 * math.sqrt(sum(di**2 for di in d) / n - (sum(d) / n) ** 2),
        "delta1": sum(r < 1.25 for r in ratio) / n,
        "delta2": sum(r < 1.25**2 for r in ratio) / n,
        "delta3": sum(r < 1.25**3 for r in ratio) / n,
    }


def test_depth_hand_computed_tiny_example():
    # image 0: the 0 and NaN targets are invalid; pred 20 is clamped to max_depth 10
    target0 = np.array([[1.0, 2.0, 4.0], [8.0, 0.0, np.nan]])
    pred0 = np.array([[1.2, 3.0, 2.0], [20.0, 5.0, 5.0]])
    # image 1: a single valid pixel (15 > max_depth is invalid), whose pred -1 is clamped to min_depth
    target1 = np.array([[0.5, 15.0, 0.0], [0.0, 0.0, 0.0]])
    pred1 = np.array([[-1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    metric = DepthMetric(min_depth=1e-3, max_depth=10.0)
    metric.update(np.stack([pred0, pred1]), np.stack([target0, target1]))
    e0 = _expected_depth([1.2, 3.0, 2.0, 10.0], [1.0, 2.0, 4.0, 8.0])
    e1 = _expected_depth([1e-3], [0.5])
    assert e1["silog"] == 0.0
    result = metric.compute()
    assert list(result) == list(DepthMetric.KEYS)
    assert all(type(v) is float for v in result.values())
    for key in DepthMetric.KEYS:  # per-image metrics averaged over images, not over pixels
        assert result[key] == pytest.approx((e0[key] + e1[key]) / 2, rel=1e-12, abs=1e-15), key
    assert (metric.num_images, metric.num_skipped) == (2, 0)
    assert result["delta1"] == pytest.approx((1 / 4 + 0) / 2)


def test_depth_skips_all_invalid_image_and_errors_when_nothing_scored():
    metric = DepthMetric()
    invalid = np.array([[0.0, np.nan], [np.inf, 10.5]])  # 10.5 > max_depth: outside the closed range
    metric.update(np.ones((2, 2)), invalid)
    with pytest.raises(ValueError, match=r"no valid pixels.*1 skipped"):
        metric.compute()
    metric.update(np.ones((2, 2)), np.full((2, 2), 2.0))
    assert (metric.num_images, metric.num_skipped) == (1, 1)
    assert metric.compute()["abs_rel"] == pytest.approx(0.5)
    metric.reset()
    assert (metric.num_images, metric.num_skipped) == (0, 0)
    with pytest.raises(ValueError, match="no valid pixels"):
        metric.compute()


def test_depth_median_scaling_makes_scaled_prediction_perfect():
    rng = np.random.default_rng(0)
    target = rng.uniform(0.5, 8.0, size=(2, 12, 16))
    target[:, 0, :] = 0.0  # invalid pixels must not influence the medians
    pred = target / 3.7
    pred[:, 0, :] = 1000.0
    metric = DepthMetric(median_scaling=True)
    metric.update(pred, target)
    result = metric.compute()
    assert metric.median_scaling is True
    np.testing.assert_allclose(metric.scale_ratios, [3.7, 3.7], rtol=1e-12)
    for key in ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog"):
        assert result[key] == pytest.approx(0.0, abs=1e-6), key  # silog is 0, not NaN
    assert result["delta1"] == result["delta2"] == result["delta3"] == 1.0
    unscaled = DepthMetric()
    unscaled.update(pred, target)
    assert unscaled.compute()["delta1"] == 0.0 and unscaled.scale_ratios == []


def test_depth_eigen_crop_excludes_border_pixels():
    mask = eigen_crop_mask(480, 640)
    assert mask.sum() == (471 - 45) * (601 - 41)
    assert mask[45, 41] and mask[470, 600] and not mask[44, 41] and not mask[45, 601] and not mask[471, 600]
    half = eigen_crop_mask(240, 320)  # bounds 22.5, 235.5, 20.5, 300.5 rounded half up
    assert half.sum() == (236 - 23) * (301 - 21) and half[23, 21] and not half[22, 21]

    target = np.full((480, 640), 3.0)
    pred = np.full((480, 640), 9.0)  # wrong everywhere ...
    pred[mask] = 3.0  # ... except inside the crop
    cropped = DepthMetric(eigen_crop=True)
    cropped.update(pred, target)
    assert cropped.compute()["abs_rel"] == 0.0 and cropped.compute()["delta1"] == 1.0
    full = DepthMetric()
    full.update(pred, target)
    assert full.compute()["abs_rel"] == pytest.approx(2.0 * (1 - mask.mean()))

    border_only = DepthMetric(eigen_crop=True)
    target_border = np.where(mask, 0.0, 3.0)  # valid depth only outside the crop
    border_only.update(pred, target_border)
    assert border_only.num_skipped == 1
    with pytest.raises(ValueError, match=r"no valid pixels.*Eigen crop"):
        border_only.compute()


def test_depth_torch_equals_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    target = rng.uniform(0.0, 12.0, size=(3, 8, 10))
    pred = rng.uniform(0.1, 11.0, size=(3, 8, 10))
    a, b = DepthMetric(), DepthMetric()
    a.update(pred, target)
    b.update(torch.from_numpy(pred), torch.from_numpy(target))
    assert a.compute() == b.compute()
    c = DepthMetric()
    c.update(torch.from_numpy(pred).to(torch.bfloat16), torch.from_numpy(target).float())
    assert c.compute()["abs_rel"] == pytest.approx(a.compute()["abs_rel"], rel=0.05)


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        (np.ones((3, 4)), np.ones((4, 3)), r"shapes differ: pred \(3, 4\) vs target \(4, 3\)"),
        (np.ones((2, 2)), np.array([[1.0, -0.5], [2.0, np.nan]]), r"negative values.*-0\.5.*0 or NaN"),
        (np.ones((2, 2)), np.array([[1.0, -np.inf], [2.0, 1.0]]), r"negative values"),
        (np.array([[1.0, np.nan], [1.0, 1.0]]), np.ones((2, 2)), r"pred depth contains NaN or inf"),
        (np.array([[1.0, np.inf], [1.0, 1.0]]), np.ones((2, 2)), r"pred depth contains NaN or inf"),
        (np.ones((2, 2), bool), np.ones((2, 2)), r"pred depth must be real-valued"),
        (np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)), r"\(H, W\) or a batch"),
    ],
)
def test_depth_bad_input(pred, target, match):
    metric = DepthMetric()
    with pytest.raises(ValueError, match=match):
        metric.update(pred, target)
    assert metric.num_images == metric.num_skipped == 0


def test_depth_bad_configuration_and_nonpositive_median():
    for kwargs in ({"min_depth": 0.0}, {"min_depth": 5.0, "max_depth": 1.0}, {"max_depth": math.inf}):
        with pytest.raises(ValueError, match="0 < min_depth < max_depth"):
            DepthMetric(**kwargs)
    metric = DepthMetric(median_scaling=True)
    with pytest.raises(ValueError, match="cannot median-scale"):
        metric.update(np.array([[-1.0, -2.0, 3.0]]), np.array([[1.0, 2.0, 3.0]]))


def test_depth_range_is_closed():
    """Targets exactly on min_depth / max_depth are valid (the issue defines the closed range)."""
    m = DepthMetric(min_depth=1.0, max_depth=10.0)
    m.update(np.array([[2.0, 20.0]]), np.array([[1.0, 10.0]]))
    assert m.num_images == 1
    assert m.compute()["abs_rel"] == pytest.approx(0.5)  # pred clamped: |2-1|/1 = 1 and |10-10|/10 = 0
