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

import os
import time
from dataclasses import replace
from typing import Any

import numpy as np

from . import data
from .config import resolve_backbone
from .data import array_to_rgb, list_inputs
from .errors import UsageError

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


# ---------------------------------------------------------------- fit with known defects (ICSDetector.fit)

def read_known_defects(det, X: Any, defects: Any) -> tuple[np.ndarray, dict]:
    """The known defects decoded at the input size a local model of X gets, and what to record of them;
    refused (UsageError: exit 2, before any training) when none is readable, when they overlap the good
    images, or when X makes a global model. Unreadable files are listed (a warning each) and skipped."""
    shape = data.input_shape(X)  # reads image headers: once
    cfg = resolve_backbone(det._resolved_config(), shape)
    if not cfg.is_local:
        raise UsageError("--defects: known defects choose among the recipes of local models (images larger "
                         "than 64 px, or --backbone efficientnet-lite0); this folder makes a global model")
    size = data.local_input_size(shape, cfg.image_size, cfg.local_min_side, cfg.local_max_side)
    if isinstance(defects, np.ndarray):
        return array_to_rgb(defects, size), {"source": f"array of {len(defects)}", "n_unreadable": 0}
    where = str(defects)
    paths = list_inputs(defects)
    if not paths:
        raise UsageError(f"--defects {where}: no image files in it")
    if not isinstance(X, np.ndarray):
        good = {os.path.realpath(p) for p in list_inputs(X)}
        shared = [p for p in paths if os.path.realpath(p) in good]
        if shared:
            raise UsageError(f"--defects {where}: {len(shared)} of its files are also among the good images "
                             f"(e.g. {data.printable(shared[0])}); known defects must be kept apart from them")
    loaded = det._read(paths, size, warn=True)
    if not len(loaded.images):
        raise UsageError(f"--defects {where}: none of its {len(paths)} files is a readable image")
    return loaded.images, {"source": where, "n_unreadable": len(loaded.failures),
                           "unreadable": [f"{f.path}: {f.reason}" for f in loaded.failures]}


def fit_with_defects(det, X: Any, defects: Any):
    """fit() with known defects: fit the default, then each challenger of candidate_configs on the
    same good images; keep the one choose picks; record them all and threshold auto in
    `known_defects_`."""
    t_start = time.perf_counter()
    defect_images, record = read_known_defects(det, X, defects)
    det.fit(X)
    if not len(det.out_of_fold_scores_):
        raise UsageError("--defects needs calibration (out-of-fold scores of the good images): "
                         "train without --calibration-fraction 0")
    rows = [{"name": "default", "detector": det, "fit_s": det.timings_["total_s"]}]
    for name, cfg in candidate_configs(det.config_, det.fusion_,
                                       head_possible=det.local_info_["calibration_folds"] <= 1):
        det._say(f"icsscan: known defects: fitting the candidate '{name}'")
        other = type(det)(config=cfg, verbose=False, workers=det.workers)
        other.progress = det.progress
        other.fit(X)
        rows.append({"name": name, "detector": other, "fit_s": other.timings_["total_s"]})
    for row in rows:
        row["good"] = row["detector"].out_of_fold_scores_
        row["defects"] = row["detector"].score_samples(defect_images)
    kept = choose(rows, det.config_.seed)
    chosen = rows[kept]["detector"]
    if chosen is not det:  # adopt the chosen fit: every fitted attribute (they end in "_")
        det.__dict__.update({k: v for k, v in vars(chosen).items() if k.endswith("_")})
    auto = separating_threshold(rows[kept]["good"], rows[kept]["defects"])
    det.known_defects_ = {
        **record, "n_defects": len(defect_images), "n_good_out_of_fold": len(rows[kept]["good"]),
        "rule": f"the default unless a candidate's AUROC beats it in ≥ {CONFIDENCE:.0%} of paired "
                "bootstrap resamples; then the best such (equal ones: the fastest)",
        "candidates": [{"name": r["name"], "auroc": round(r["auroc"], 4),
                        "confidence_beats_default": None if r["confidence"] is None else round(r["confidence"], 3),
                        "fit_s": round(r["fit_s"], 1), "kept": i == kept} for i, r in enumerate(rows)],
        "kept": rows[kept]["name"], "threshold_auto": auto}
    det.timings_ = {**det.timings_, "known_defects_total_s": time.perf_counter() - t_start}
    return det

