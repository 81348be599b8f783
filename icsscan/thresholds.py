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
    """The score above which about `rate` of normal images fall; `where` names the model in the error."""
    if not 0 < rate < 1:
        raise UsageError(f"--false-alarm-rate must be between 0 and 1, got {rate}")
    if len(calibration_sorted) == 0:
        raise ModelError(f"{where} has no calibration scores (trained with --calibration-fraction 0): "
                         "use --threshold instead of --false-alarm-rate")
    return float(np.quantile(calibration_sorted, 1 - rate, method="higher"))


def resolve_threshold(model: Any, threshold: float | None, false_alarm_rate: float | None) -> tuple[float, str]:
    """The threshold to apply and where it came from ('raw', 'false-alarm-rate' or 'model default').

    `model`: anything with `calibration` (sorted scores), `default_threshold` and `path` (scan.ScanModel)."""
    if threshold is not None and false_alarm_rate is not None:
        raise UsageError("give either --threshold or --false-alarm-rate, not both")
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
            if source == "false-alarm-rate" else f"raw anomaly-score threshold {threshold:.4g} ({source})")
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
