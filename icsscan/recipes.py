"""Known defects pick the recipe: `train --defects DIR` / `ICSDetector.fit(good, defects=DIR)`.

A handful of rejected parts tells which recipe separates *this* part's defects from its good images, which no
rule chosen on other parts can know (on the development suite a wrong brightness or ICS-head choice cost
0.10-0.16 AUROC on some sets, and each rule was right on one set and wrong on another before it was tuned).

The candidates are today's label-free default and that default with one of its choices turned the other way
(`candidate_configs`). Each is fitted on the good images alone; its AUROC is read between its out-of-fold
calibration scores of the good images (scored by a model fitted without them: thresholds.calibration_folds) and
its scores of the known defects. The defects' pixels never train anything.

Which is kept (`choose`): the default, unless a challenger beats it beyond what so few images can show — in at
least `CONFIDENCE` of paired bootstrap resamples of the good images and of the defects (the same resample for
both candidates). Among challengers that do, the highest AUROC; equal ones go to the fastest. Why the default
first: it was chosen by leave-one-set-out over five sets; with 3-5 defects two recipes a few points apart are
within noise (one defect moves the AUROC by up to 1/k), and a coin flip between them would lose the suite's
0.10-0.16 on the sets where the default is right.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

CONFIDENCE = 0.95   # a challenger must beat the default in this share of paired bootstrap resamples
RESAMPLES = 2000
LARGER_BANK = 2     # the "larger bank" candidate: this many times the default's bank


def candidate_configs(cfg, fusion: dict[str, float], head_possible: bool = True) -> list[tuple[str, Any]]:
    """[(name, config)] of the challengers to a fitted default with config `cfg` (its "auto" choices resolved)
    and fusion `fusion`: brightness the other way, the patch ICS head the other way (when the score has one and
    `head_possible`: not in a folder calibrated in several folds, where the head is left out), a larger memory
    bank. Each differs from the default in one choice only."""
    from .config import score_parts

    normalised = bool(cfg.normalise_brightness)
    out = [("brightness " + ("kept" if normalised else "normalised"), replace(cfg, normalise_brightness=not normalised))]
    if "pics" in score_parts(cfg.score) and head_possible:
        head_kept = float(fusion.get("pics_weight", 0.0)) > 0
        # ics_gate 0: the head is always dropped (and never trained); 1: always kept
        out.append(("patch ICS head " + ("off" if head_kept else "on"), replace(cfg, ics_gate=0.0 if head_kept else 1.0)))
    out.append((f"bank {cfg.bank_size * LARGER_BANK}", replace(cfg, bank_size=cfg.bank_size * LARGER_BANK)))
    return out


def auroc(good: np.ndarray, defects: np.ndarray) -> float:
    """Image AUROC of defect scores against good scores (ties count half)."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(good)), np.ones(len(defects))]
    return float(roc_auc_score(y, np.r_[good, defects]))


def _wins(good: np.ndarray, defects: np.ndarray) -> np.ndarray:
    """(n_good, n_defects): 1 where the defect scores above the good image, 0.5 for a tie (the AUROC's terms)."""
    return (defects[None, :] > good[:, None]) + 0.5 * (defects[None, :] == good[:, None])


def confidence_better(good_a: np.ndarray, defects_a: np.ndarray, good_b: np.ndarray, defects_b: np.ndarray,
                      seed: int = 0, resamples: int = RESAMPLES) -> float:
    """Share of paired bootstrap resamples (good images and defects drawn with replacement, the same draw for
    both) in which recipe a's AUROC is above recipe b's. Both score the same images in the same order."""
    diff = _wins(good_a, defects_a) - _wins(good_b, defects_b)
    rng = np.random.default_rng(seed)
    n_good, n_defects = diff.shape
    w_good = rng.multinomial(n_good, np.full(n_good, 1 / n_good), size=resamples)
    w_defects = rng.multinomial(n_defects, np.full(n_defects, 1 / n_defects), size=resamples)
    delta = np.einsum("bi,ij,bj->b", w_good, diff, w_defects)
    return float(np.mean(delta > 0))


def choose(rows: list[dict], seed: int = 0) -> int:
    """Index of the recipe to keep in `rows` (rows[0] is the default), each a dict with `good` (out-of-fold
    scores of the good images), `defects` (scores of the known defects) and `fit_s`; sets each row's `auroc` and
    `confidence` (that it beats the default). See the module's docstring for the rule."""
    base = rows[0]
    for row in rows:
        row["auroc"] = auroc(row["good"], row["defects"])
        row["confidence"] = (None if row is base else
                             confidence_better(row["good"], row["defects"], base["good"], base["defects"], seed))
    winners = [i for i, r in enumerate(rows[1:], 1)
               if r["auroc"] > base["auroc"] and r["confidence"] >= CONFIDENCE]
    if not winners:
        return 0
    return min(winners, key=lambda i: (-rows[i]["auroc"], rows[i]["fit_s"]))


def separating_threshold(good: np.ndarray, defects: np.ndarray) -> dict[str, float]:
    """`--threshold auto`: the score that best separates the good images' out-of-fold scores from the known
    defects (largest share of defects flagged minus share of good images flagged; of equal ones the highest,
    i.e. the fewest false alarms), placed halfway to the next lower score. Returns the threshold and what it
    does on those images."""
    from sklearn.metrics import roc_curve

    y = np.r_[np.zeros(len(good)), np.ones(len(defects))]
    scores = np.r_[good, defects]
    fpr, tpr, cut = roc_curve(y, scores, drop_intermediate=False)
    j = tpr - fpr
    best = int(np.flatnonzero(j == j.max())[0])  # roc_curve's thresholds fall: the first is the highest
    top = float(min(cut[best], 1.0))
    below = scores[scores < top]
    threshold = float((top + below.max()) / 2) if len(below) else top
    return {"threshold": threshold, "defects_flagged": float(np.mean(defects >= threshold)),
            "good_flagged": float(np.mean(good >= threshold))}
