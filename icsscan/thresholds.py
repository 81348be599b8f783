"""Thresholds: the default raw threshold, the threshold for a false-alarm rate, and what a threshold means.

One home for these, used by the estimator (detector), the scanners (scan, ray_engine), the reports and the CLI.
Every number here is read off the sorted scores of the held-out normal images (the bundle's calibration).
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from .config import MIN_IMAGES
from .errors import ModelError, UsageError

# Raw anomaly score at which an image is flagged unless told otherwise: the fusion's offset puts 0.5 at the
# (1 − ρ) quantile of held-out normal images (and the paper's ICS sigmoid puts its boundary there).
DEFAULT_THRESHOLD = 0.5


def false_alarm_rate(calibration: np.ndarray, threshold: float) -> float | None:
    """Fraction of held-out normal images scoring at or above `threshold`; None without calibration."""
    calibration = np.asarray(calibration)
    return float(np.mean(calibration >= threshold)) if len(calibration) else None


def percentile_of(scores: Iterable[float | None], calibration: np.ndarray) -> list[float | None]:
    """Fraction of calibration normals scoring strictly lower than each score (monotone in the score)."""
    out: list[float | None] = []
    for s in scores:
        if s is None or not len(calibration):
            out.append(None)
        else:
            out.append(float(np.searchsorted(calibration, s, side="left") / len(calibration)))
    return out


def threshold_for_rate(calibration_sorted: np.ndarray, rate: float, where: str = "this model") -> float:
    """The lowest threshold that flags at most `rate` of the calibration images (flagged: score ≥ threshold);
    `where` names the model in the error.

    At most, not about: with 50 calibration images a 5 % rate allows 2 of them, and the (1 − rate) quantile
    (what this was) flagged 3, 6 %. Tied scores move the threshold above the tie; when not even one image may be
    flagged (rate < 1/n), it sits just above the highest score."""
    if not 0 < rate < 1:
        raise UsageError(f"--false-alarm-rate must be between 0 and 1, got {rate}")
    scores = np.sort(np.asarray(calibration_sorted, dtype=np.float64).reshape(-1))
    if len(scores) == 0:
        raise ModelError(f"{where} has no calibration scores (trained with --calibration-fraction 0): "
                         "use --threshold instead of --false-alarm-rate")
    allowed = int(np.floor(rate * len(scores) + 1e-9))  # images that may score at or above it
    if allowed == 0:
        return float(np.nextafter(scores[-1], np.inf))
    threshold = scores[len(scores) - allowed]
    if np.count_nonzero(scores >= threshold) > allowed:  # ties below: the next higher score, if any
        higher = scores[scores > threshold]
        threshold = higher[0] if len(higher) else np.nextafter(scores[-1], np.inf)
    return float(threshold)


def resolve_threshold(model: Any, threshold: float | str | None, false_alarm_rate: float | None) -> tuple[float, str]:
    """The threshold to apply and where it came from ('raw', 'false-alarm-rate', 'known defects' or 'model
    default'). threshold "auto": the score that best separated the good images from the known defects given to
    `train --defects` (the model's metadata "threshold_auto").

    `model`: anything with `calibration` (sorted scores), `default_threshold`, `metadata` and `path` (scan.ScanModel)."""
    if threshold is not None and false_alarm_rate is not None:
        raise UsageError("give either --threshold or --false-alarm-rate, not both")
    if threshold == "auto":
        value = (getattr(model, "metadata", None) or {}).get("threshold_auto")
        if value is None:
            raise UsageError(f"--threshold auto: {model.path} was trained without known defects "
                             "(train it with --defects DIR, or give a number)")
        return float(value), "known defects"
    if isinstance(threshold, str):
        try:
            threshold = float(threshold)
        except ValueError:
            raise UsageError(f"--threshold must be a number in [0, 1] or auto, got {threshold!r}") from None
    if threshold is not None:
        if not 0 <= threshold <= 1:
            raise UsageError(f"--threshold must be between 0 and 1 (raw anomaly score), got {threshold}")
        return float(threshold), "raw"
    if false_alarm_rate is not None:
        return threshold_for_rate(model.calibration, false_alarm_rate, f"{model.path}: model"), "false-alarm-rate"
    return model.default_threshold, "model default"


def threshold_meaning(model: Any, threshold: float, source: str, rate_asked: float | None) -> str:
    """One sentence for the reports: the threshold, where it came from, and the false alarms to expect."""
    rate = false_alarm_rate(model.calibration, threshold)
    if rate is None:
        return (f"flag images with a raw anomaly score >= {threshold:.4g}; this model has no calibration, "
                "so the expected false-alarm rate is unknown")
    n = len(model.calibration)
    head = (f"threshold {threshold:.4g} chosen for a target false-alarm rate of {rate_asked:.2%}"
            if source == "false-alarm-rate" else
            f"threshold {threshold:.4g} (auto: the score that best separated the known defects given to train "
            "from the good images)" if source == "known defects" else
            f"raw anomaly-score threshold {threshold:.4g} ({source})")
    return (f"{head}: {rate:.2%} of {n} held-out normal images score at or above it, so expect about "
            f"{rate * 100:.1f} false alarms per 100 normal images")


def calibration_holdout(n: int, fraction: float, seed: int,
                        min_fit: int = MIN_IMAGES) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, calibration): the held-out normal images that calibrate the fusion and the threshold. They
    never touch training; skipped (no held-out set) when fewer than 10 would be held out or fewer than `min_fit`
    (config.MIN_IMAGES) would remain to fit on."""
    n_cal = int(round(n * fraction))
    if n_cal < 10 or n - n_cal < min_fit:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_cal:]), np.sort(perm[:n_cal])


CALIBRATION_MIN = 100  # out-of-fold calibration images wanted at least (all of them in a smaller folder)
FOLD_MAX_SHARE = 0.2   # a fold leaves out at most this share of the images (at most 5 folds)


def calibration_folds(n: int, fraction: float, seed: int) -> list[np.ndarray]:
    """The calibration images of a local model, in folds: each fold's images are scored by a model fitted on all
    the *other* images (local.fold_banks), so every calibration score is out of fold, from ~20 images on.

    How many: max(CALIBRATION_MIN, fraction·n), at most n (a small folder calibrates on all its images); `fraction`
    0 means none. How many folds: as few as keep each fold at most FOLD_MAX_SHARE of the images, so each fold's
    model has seen ≥ 80 % of what the final model sees (a folder of 1,000: one fold of 100, as the held-out
    split before it; of 40: five of 8). Why: with a plain held-out split a folder under ~95 images had no
    calibration at all, and one of 320 calibrated on 32 images (a 90th percentile read from 32 values)."""
    if fraction <= 0 or n < 2:
        return []
    n_cal = min(n, max(CALIBRATION_MIN, int(round(n * fraction))))
    per_fold = max(1, int(FOLD_MAX_SHARE * n))
    k = max(1, min(5, -(-n_cal // per_fold)))
    chosen = np.random.default_rng(seed).permutation(n)[:n_cal]
    return [np.sort(f) for f in np.array_split(chosen, k)]
