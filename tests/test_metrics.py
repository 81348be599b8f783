"""icsscan.metrics: AUPRO and pixel AUROC against a reference implementation and a case with a known answer;
image metrics against scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import label
from sklearn.metrics import auc, roc_auc_score

from icsscan.metrics import (PixelAccumulator, area_to, at_threshold, float16_keys, image_metrics, key_values)


def reference_aupro(maps: list[np.ndarray], masks: list[np.ndarray], limit: float = 0.3) -> float:
    """MVTec AD's definition as its evaluation code computes it (`compute_pro` in generic_util.py /
    pro_curve_util.py, mvtec_ad_evaluation), written out here independently: 8-connected ground-truth regions
    of every image; at every distinct score taken as threshold, FPR = share of all normal pixels (all images) at
    or above it and PRO = mean over all regions of the share of the region's pixels at or above it; the curve from
    (0, 0) to (1, 1), trapezoids up to FPR = `limit` (the last one interpolated), divided by `limit`."""
    fp_change, pro_change, scores = [], [], []
    n_normal, n_regions = 0, 0
    for m, g in zip(maps, masks):
        regions, n = label(g, structure=np.ones((3, 3), int))
        sizes = np.bincount(regions.ravel(), minlength=n + 1)
        normal = regions == 0
        n_normal += int(normal.sum())
        n_regions += n
        fp_change.append(normal.ravel().astype(float))
        pro_change.append(np.where(normal, 0.0, 1.0 / sizes[regions]).ravel())
        scores.append(np.asarray(m, dtype=np.float64).ravel())
    scores, fp_change, pro_change = map(np.concatenate, (scores, fp_change, pro_change))
    order = np.argsort(-scores, kind="stable")
    scores = scores[order]
    fprs = np.cumsum(fp_change[order]) / n_normal
    pros = np.cumsum(pro_change[order]) / n_regions
    last_of_tie = np.append(np.diff(scores) != 0, True)
    x = np.concatenate([[0.0], np.minimum(fprs[last_of_tie], 1), [1.0]])
    y = np.concatenate([[0.0], np.minimum(pros[last_of_tie], 1), [1.0]])
    inside = x <= limit
    k = int(np.argmax(~inside))
    y_limit = y[k - 1] + (y[k] - y[k - 1]) * (limit - x[k - 1]) / (x[k] - x[k - 1])
    return float(auc(np.append(x[inside], limit), np.append(y[inside], y_limit)) / limit)


def known_case() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two images with an exact answer. Image 1 (good, 20 x 50): 1,000 normal pixels scoring k/1024, k = 0…999.
    Image 2 (50 wide): rows 0-1 region A (100 px, all 2.0: above every normal pixel), row 2 a normal gap (50 px,
    -1.0), rows 3-23 region B (1,050 px): the same 1,000 scores k/1024 and fifty -1.0, i.e. exactly the normal
    pixels' scores. So at every threshold A is covered, B's overlap equals the FPR, and PRO = (1 + FPR) / 2:
    AUPRO@0.3 = (0.3 * 0.5 + 0.3² / 4) / 0.3 = 0.575. Pixel AUROC: A beats every normal pixel, B ties them
    all (each counts half): (100 + 1,050 / 2) / 1,150 = 0.54347826… (every score is exact in float16)."""
    rng = np.random.default_rng(0)
    ladder = np.arange(1000) / 1024
    good = rng.permutation(ladder).reshape(20, 50)
    defect = np.full((24, 50), -1.0)
    defect[0:2] = 2.0
    defect[3:] = rng.permutation(np.concatenate([ladder, np.full(50, -1.0)])).reshape(21, 50)
    mask = np.ones((24, 50), bool)
    mask[2] = False
    return [good, defect], [np.zeros_like(good, bool), mask]


def test_aupro_known_answer_and_reference():
    maps, masks = known_case()
    reference = reference_aupro(maps, masks)
    assert reference == pytest.approx(0.575, abs=1e-9)  # the reference gives the analytic value
    acc = PixelAccumulator()
    for m, g in zip(maps, masks):
        acc.add(m, g)
    assert acc.counts.n_regions == 2
    assert acc.aupro() == pytest.approx(reference, abs=1e-9)
    assert acc.pixel_auroc() == pytest.approx(625 / 1150, abs=1e-12)
    flat = np.concatenate([m.ravel() for m in maps]), np.concatenate([g.ravel() for g in masks])
    assert acc.pixel_auroc() == pytest.approx(roc_auc_score(flat[1], flat[0]), abs=1e-12)


def random_case(seed: int = 1, n: int = 8) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Maps of noise, higher (by varying amounts) inside irregular masks of several regions; half the images
    good; values not representable in float16."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(n):
        g = np.zeros((60, 80), bool)
        if i % 2:
            for _ in range(int(rng.integers(1, 4))):
                y, x = rng.integers(0, 50), rng.integers(0, 70)
                g[y:y + rng.integers(2, 12), x:x + rng.integers(2, 12)] = True
            g[rng.random(g.shape) < 0.002] = True  # single-pixel regions too
        m = rng.normal(0, 1, g.shape) + g * rng.uniform(0.5, 3) + rng.normal(0, 0.3)
        maps.append(m * 3.7 + 11.3)
        masks.append(g)
    return maps, masks


def test_aupro_and_pixel_auroc_match_reference_on_random_maps():
    maps, masks = random_case()
    acc = PixelAccumulator()
    for m, g in zip(maps, masks):
        acc.add(m, g)
    rounded = [m.astype(np.float16).astype(np.float64) for m in maps]
    # exactly the reference's value on the maps rounded to float16 (the bins are float16 values) …
    assert acc.aupro() == pytest.approx(reference_aupro(rounded, masks), abs=1e-9)
    # … and within 1e-3, and within the reported bound, of the reference on the exact maps
    exact = reference_aupro(maps, masks)
    assert abs(acc.aupro() - exact) <= min(1e-3, acc.aupro_tie_bound() + 1e-12)
    flat_m, flat_g = np.concatenate([m.ravel() for m in maps]), np.concatenate([g.ravel() for g in masks])
    exact_auroc = roc_auc_score(flat_g, flat_m)
    assert abs(acc.pixel_auroc() - exact_auroc) <= min(1e-3, acc.auroc_tie_bound() + 1e-12)
    assert acc.pixel_auroc() == pytest.approx(roc_auc_score(flat_g, flat_m.astype(np.float16)), abs=1e-12)
    summary = acc.summary()
    assert summary["aupro_fpr_limit"] == 0.3 and summary["images"] == 8


def test_accumulation_is_order_free_and_mergeable():
    maps, masks = random_case(seed=2, n=6)
    one, a, b = PixelAccumulator(), PixelAccumulator(), PixelAccumulator()
    for m, g in zip(maps, masks):
        one.add(m, g)
    for k, (m, g) in enumerate(zip(maps[::-1], masks[::-1])):
        (a if k % 2 else b).add(m, g)
    a.merge(b)
    assert a.aupro() == pytest.approx(one.aupro(), abs=1e-12)
    assert a.pixel_auroc() == one.pixel_auroc()


def test_float16_keys_order_and_values():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0, 10, 5000), [-0.0, 0.0, 1e-9, -1e-9, 65504, -65504, 1e9, -np.inf, np.nan]])
    keys = float16_keys(values)
    with np.errstate(over="ignore"):
        rounded = np.nan_to_num(values, nan=-np.inf, posinf=np.inf, neginf=-np.inf).astype(np.float16)  # 1e9: inf
    ordered = rounded[np.argsort(keys)]
    assert np.all(ordered[1:] >= ordered[:-1])  # integer order = numeric order
    assert np.array_equal(key_values()[keys], rounded.astype(np.float64))
    assert keys.min() >= 0 and keys.max() < 1 << 16


def test_area_to_interpolates_at_the_limit():
    assert area_to([0, 0.2, 0.4], [0, 1, 1], 0.3) == pytest.approx(0.1 + 0.1)  # 0.5*0.2*1 + 0.1*1
    assert area_to([0, 0.1], [0.5, 0.5], 0.3) == pytest.approx(0.15)  # flat to the limit


def test_image_metrics_and_counts_match_sklearn():
    rng = np.random.default_rng(4)
    labels = np.r_[np.zeros(30, int), np.ones(20, int)]
    classes = np.r_[["good"] * 30, ["crack"] * 12, ["hole"] * 8]
    scores = rng.random(50) + labels * np.r_[np.zeros(30), np.full(12, 0.5), np.full(8, 0.1)]
    m = image_metrics(labels, scores, classes)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    crack = np.r_[np.arange(30), np.arange(30, 42)]
    assert m["per_class"]["crack"]["auroc"] == pytest.approx(roc_auc_score(labels[crack], scores[crack]))
    assert m["per_class"]["hole"]["n"] == 8 and m["n_good"] == 30
    t = at_threshold(labels, scores, 0.8)
    assert t["fp"] == int((scores[:30] >= 0.8).sum()) and t["tp"] == int((scores[30:] >= 0.8).sum())
    assert t["false_alarm_rate"] == pytest.approx(t["fp"] / 30) and t["miss_rate"] == pytest.approx(t["fn"] / 20)
