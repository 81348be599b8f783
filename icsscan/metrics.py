"""How well scores and anomaly maps separate good from defective: image metrics, streaming pixel metrics.

Pure NumPy / scikit-learn / SciPy (no torch): `evaluate` uses it and benchmarks may too.

Image level: AUROC, average precision, per-class AUROC (each defect class against the good images) and the
counts and rates at a threshold, all by scikit-learn.

Pixel level (`PixelAccumulator`): pixel AUROC and AUPRO (MVTec AD's per-region overlap, integrated over the
false-positive rate from 0 to 0.3 and divided by 0.3) from maps added one image at a time, in memory that does
not grow with the number of images. Each map value is rounded to float16 and counted in one of 65,536 bins, one
per float16 bit pattern, ordered by value; every float16 value is a threshold. So no score range needs to be known
in advance (the grid spans every finite value), and the metrics are *exactly* those of the maps rounded to float16
(3 significant digits, relative step 2^-11 ≈ 0.05 %; values beyond ±65,504 share the ±inf bins). How much the
rounding can change them is reported with them (`auroc_tie_bound`, `aupro_tie_bound`: the most that ordering the
pixels tied inside a bin either way could move the value). Memory: three arrays of 65,536 numbers (1.5 MB), whatever the folder's size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_KEYS = 1 << 16  # one bin per float16 bit pattern
AUPRO_FPR_LIMIT = 0.3
CONNECTIVITY = np.ones((3, 3), dtype=int)  # 8-connected regions, as MVTec AD's evaluation code (and anomalib)


# --------------------------------------------------------------------------------------------- image level

def image_metrics(labels: np.ndarray, scores: np.ndarray, classes: np.ndarray | None = None) -> dict:
    """AUROC and average precision of `scores` (higher = more anomalous) for `labels` (1 = defect), and with
    `classes` (the defect class per image; good images' entries are ignored) the AUROC of each class against
    all good images.

    Parameters
    ----------
    labels : array of int (N,), 0 = good, 1 = defect; both must occur.
    scores : array of float (N,).
    classes : array of str (N,), optional.

    Returns
    -------
    dict with auroc, average_precision, n_good, n_defect and per_class {class: {auroc, n}}.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels, scores = np.asarray(labels, dtype=int), np.asarray(scores, dtype=np.float64)
    out = {"auroc": float(roc_auc_score(labels, scores)),
           "average_precision": float(average_precision_score(labels, scores)),
           "n_good": int((labels == 0).sum()), "n_defect": int((labels == 1).sum()), "per_class": {}}
    if classes is not None:
        classes = np.asarray(classes)
        good = labels == 0
        for name in sorted(set(classes[labels == 1].tolist())):
            pick = good | ((labels == 1) & (classes == name))
            out["per_class"][name] = {"auroc": float(roc_auc_score(labels[pick], scores[pick])),
                                      "n": int(((labels == 1) & (classes == name)).sum())}
    return out


def at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Images flagged at `scores >= threshold`: confusion counts, false-alarm rate (good images flagged), miss
    rate (defects not flagged), precision, recall and F1."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score

    labels = np.asarray(labels, dtype=int)
    flagged = (np.asarray(scores, dtype=np.float64) >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(labels, flagged, labels=[0, 1]).ravel())
    return {"threshold": float(threshold), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "false_alarm_rate": fp / (fp + tn) if fp + tn else None,
            "miss_rate": fn / (fn + tp) if fn + tp else None,
            "precision": float(precision_score(labels, flagged, zero_division=0)),
            "recall": float(recall_score(labels, flagged, zero_division=0)),
            "f1": float(f1_score(labels, flagged, zero_division=0))}


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) of the image ROC curve, for plots."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(labels, dtype=int), np.asarray(scores, dtype=np.float64))
    return fpr, tpr


# --------------------------------------------------------------------------------------------- pixel level

def float16_keys(values: np.ndarray) -> np.ndarray:
    """Bin index 0 … 65,535 (uint16) of each value, increasing with the value: the bit pattern of its float16
    rounding, with the sign bit flipped for positives and every bit for negatives, so that integer order is
    numeric order. Values beyond float16's range fall in the ±inf bins at the ends; NaN counts as -inf."""
    v = np.asarray(values)
    v = v if v.dtype in (np.float16, np.float32, np.float64) else v.astype(np.float32)  # rounded once, to float16
    if not np.isfinite(v).all():
        v = np.nan_to_num(v, nan=-np.inf, posinf=np.inf, neginf=-np.inf)
    with np.errstate(over="ignore"):
        bits = v.astype(np.float16).view(np.uint16)
    return bits ^ ((bits >> 15) * np.uint16(0x7FFF) | np.uint16(0x8000))


def key_values() -> np.ndarray:
    """The float16 value (as float64) of every bin index of `float16_keys` (NaN for the NaN patterns)."""
    keys = np.arange(N_KEYS, dtype=np.uint32)
    bits = np.where(keys >= 0x8000, keys - 0x8000, 0xFFFF - keys).astype(np.uint16)
    return bits.view(np.float16).astype(np.float64)


@dataclass
class PixelCounts:
    """Per-bin totals over the images added so far."""

    normal: np.ndarray  # int64 (N_KEYS,): pixels outside every defect region, in all images
    defect: np.ndarray  # int64 (N_KEYS,): pixels inside a defect region
    overlap: np.ndarray  # float64 (N_KEYS,): Σ over regions of (its pixels in the bin) / (its size)
    n_regions: int = 0
    n_images: int = 0


class PixelAccumulator:
    """Pixel AUROC and AUPRO from maps added one image at a time; memory independent of the number of images.

    `add(anomaly_map, mask)` takes a map at the image's own resolution and its ground truth (non-zero = defect;
    all zero for a good image). Every normal pixel counts towards the false-positive rate, every 8-connected
    defect region towards the per-region overlap (PRO), as in MVTec AD's `compute_pro`.
    """

    def __init__(self) -> None:
        self.counts = PixelCounts(np.zeros(N_KEYS, np.int64), np.zeros(N_KEYS, np.int64), np.zeros(N_KEYS))

    def add(self, anomaly_map: np.ndarray, mask: np.ndarray) -> None:
        """Count one image: `anomaly_map` (H, W) float and `mask` (H, W), the same shape."""
        from scipy.ndimage import label

        anomaly_map, mask = np.asarray(anomaly_map), np.asarray(mask) != 0
        if anomaly_map.shape != mask.shape:
            raise ValueError(f"map {anomaly_map.shape} and mask {mask.shape} differ in shape")
        keys = float16_keys(anomaly_map).ravel()
        c = self.counts
        c.n_images += 1
        every = np.bincount(keys, minlength=N_KEYS)
        if not mask.any():
            c.normal += every
            return
        regions, n = label(mask, structure=CONNECTIVITY)
        regions = regions.ravel()
        inside = np.flatnonzero(mask.ravel())  # the pixels of some region
        defect_keys, defect_regions = keys[inside], regions[inside]
        defect = np.bincount(defect_keys, minlength=N_KEYS)
        c.normal += every - defect
        c.defect += defect
        sizes = np.bincount(defect_regions, minlength=n + 1).astype(np.float64)
        c.overlap += np.bincount(defect_keys, weights=1.0 / sizes[defect_regions], minlength=N_KEYS)
        c.n_regions += int(n)

    def merge(self, other: "PixelAccumulator") -> None:
        a, b = self.counts, other.counts
        a.normal += b.normal
        a.defect += b.defect
        a.overlap += b.overlap
        a.n_regions += b.n_regions
        a.n_images += b.n_images

    @property
    def has_defects(self) -> bool:
        return self.counts.n_regions > 0 and self.counts.normal.sum() > 0

    def pixel_auroc(self) -> float:
        """AUROC over all pixels (defect against normal) of the float16-rounded maps, ties counted half."""
        from sklearn.metrics import roc_auc_score

        c = self.counts
        neg, pos = np.flatnonzero(c.normal), np.flatnonzero(c.defect)
        keys = np.concatenate([neg, pos]).astype(np.float64)
        truth = np.concatenate([np.zeros(len(neg), int), np.ones(len(pos), int)])
        weight = np.concatenate([c.normal[neg], c.defect[pos]]).astype(np.float64)
        return float(roc_auc_score(truth, keys, sample_weight=weight))

    def auroc_tie_bound(self) -> float:
        """The most the pixel AUROC could move if the pixels tied in a bin were ordered either way: half the
        share of (defect, normal) pairs that fall into the same bin."""
        c = self.counts
        pairs = float(c.defect.sum()) * float(c.normal.sum())
        return 0.5 * float(np.dot(c.defect.astype(np.float64), c.normal.astype(np.float64))) / pairs if pairs else 0.0

    def pro_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(false-positive rates, PRO, thresholds): one point per occupied bin, thresholds from the highest down,
        plus (0, 0) above the highest value (threshold +inf) and ending at (1, 1)."""
        c = self.counts
        used = np.flatnonzero((c.normal > 0) | (c.defect > 0))[::-1]  # highest value first
        fp = np.cumsum(c.normal[::-1])[::-1][used] / max(1, int(c.normal.sum()))  # share of normals >= threshold
        pro = np.cumsum(c.overlap[::-1])[::-1][used] / max(1, c.n_regions)
        values = key_values()[used]
        fpr = np.concatenate([[0.0], np.minimum(fp, 1.0)])
        pro = np.concatenate([[0.0], np.minimum(pro, 1.0)])
        return fpr, pro, np.concatenate([[np.inf], values])

    def aupro(self, limit: float = AUPRO_FPR_LIMIT) -> float:
        """Area under the PRO curve for false-positive rates 0 … `limit`, divided by `limit` (1 = perfect)."""
        fpr, pro, _ = self.pro_curve()
        return area_to(fpr, pro, limit) / limit

    def aupro_tie_bound(self, limit: float = AUPRO_FPR_LIMIT) -> float:
        """The most the normalised AUPRO could move if the pixels tied in each bin were ordered either way: the
        curve's straight step across a bin lies inside that step's box, so at most the boxes below `limit`."""
        fpr, pro, _ = self.pro_curve()
        keep = fpr[:-1] < limit
        dx = np.minimum(fpr[1:], limit) - fpr[:-1]
        return float(np.sum((dx * np.abs(np.diff(pro)))[keep]) / 2 / limit)

    def summary(self, limit: float = AUPRO_FPR_LIMIT) -> dict:
        c = self.counts
        return {"pixel_auroc": self.pixel_auroc(), "aupro": self.aupro(limit), "aupro_fpr_limit": limit,
                "images": c.n_images, "defect_regions": c.n_regions, "defect_pixels": int(c.defect.sum()),
                "normal_pixels": int(c.normal.sum()),
                "precision": {"values_rounded_to": "float16", "auroc_tie_bound": self.auroc_tie_bound(),
                              "aupro_tie_bound": self.aupro_tie_bound(limit)}}


def area_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoidal area under the curve (x increasing, from 0) up to x = `limit`, y interpolated linearly there
    (where the curve jumps at `limit`, the value before the jump)."""
    from sklearn.metrics import auc

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    inside = x <= limit
    xs, ys = x[inside], y[inside]
    if xs[-1] < limit and inside.sum() < len(x):
        k = int(np.argmax(~inside))  # the first point past the limit
        y_at = y[k - 1] + (y[k] - y[k - 1]) * (limit - x[k - 1]) / (x[k] - x[k - 1])
        xs, ys = np.append(xs, limit), np.append(ys, y_at)
    elif inside.all() and xs[-1] < limit:  # the curve stops short: it is flat to the limit
        xs, ys = np.append(xs, limit), np.append(ys, ys[-1])
    return float(auc(xs, ys)) if len(xs) > 1 else 0.0
