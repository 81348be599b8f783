"""Synthetic anomalies made from normal images: what icsscan learns and weighs with when a user has no defects.

`synthetic_defects`: one small local defect per image (cut-paste, blob, scratch) — the atypical patches of the
ICS head on patches (local.synthetic_defect_patches) and the label-free weights of local models (fusion).
`synthetic_anomalies`: one large whole-object change per image — the label-free weights of global models.
Pure NumPy, uint8 (N, H, W, 3) in and out.
"""
from __future__ import annotations

import numpy as np


def synthetic_defects(images: np.ndarray, donors: np.ndarray, seed: int,
                      return_masks: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """One synthetic local defect per image (uint8 (N, H, W, 3)), for weighting components without labels.

    A user has no anomalies to tune on, so each held-out normal image gets one small local change of a kind
    real defects take: a patch cut from another normal image and pasted elsewhere (a misplaced structure), a
    dark or bright blob (a hole, a spot), or a thin scratch. Sizes span 1.5-6 % of the short side, the scale
    of the small defects inspection users care about. return_masks: also the pixels each defect changed
    (bool (N, H, W)), which the ICS head on patches learns as its atypical examples.
    """
    rng = np.random.default_rng(seed)
    out = images.copy()
    n, h, w, _ = images.shape
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        r = max(2, int(round(rng.uniform(0.015, 0.06) * min(h, w))))
        cy, cx = int(rng.integers(r, h - r)), int(rng.integers(r, w - r))
        kind = i % 3
        img = out[i].astype(np.float64)
        if kind == 0:  # cut-paste: a square from another image, from another place
            donor = donors[rng.integers(len(donors))]
            sy, sx = int(rng.integers(0, h - 2 * r)), int(rng.integers(0, w - 2 * r))
            img[cy - r:cy + r, cx - r:cx + r] = donor[sy:sy + 2 * r, sx:sx + 2 * r]
        elif kind == 1:  # a blob, darker or brighter than what it covers
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            covered = img[mask].mean()  # away from what it covers: on white, dark; on black, bright
            level = covered + (-1 if covered > 128 else 1) * rng.uniform(60, 120)
            img[mask] = np.clip(level, 0, 255)
        else:  # a thin scratch through (cx, cy)
            angle = rng.uniform(0, np.pi)
            t = np.linspace(-2 * r, 2 * r, 8 * r)
            px = np.clip((cx + t * np.cos(angle)).astype(int), 0, w - 1)
            py = np.clip((cy + t * np.sin(angle)).astype(int), 0, h - 1)
            value = 255.0 if img[py, px].mean() < 128 else 0.0
            for d in (0, 1):
                img[np.clip(py + d, 0, h - 1), px] = value
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    if return_masks:
        return out, (out != images).any(-1)
    return out


def synthetic_anomalies(images: np.ndarray, donors: np.ndarray, seed: int) -> np.ndarray:
    """One synthetic anomaly per whole-object image (uint8 (N, H, W, 3)), for weighting without labels.

    Whole-object anomalies change what the object is, so these changes are large: a quarter of another
    normal image pasted in (cut-paste: a part that does not belong), a strong local blur (a missing detail),
    a block of noise (a foreign texture), or a half mirrored onto the other (a broken shape).
    """
    rng = np.random.default_rng(seed)
    out = images.copy()
    n, h, w, _ = images.shape
    for i in range(n):
        img = out[i].astype(np.float64)
        rh, rw = max(2, int(rng.uniform(0.3, 0.5) * h)), max(2, int(rng.uniform(0.3, 0.5) * w))
        y, x = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
        kind = i % 4
        if kind == 0:  # cut-paste from another normal image, from another place
            donor = donors[rng.integers(len(donors))].astype(np.float64)
            sy, sx = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
            img[y:y + rh, x:x + rw] = donor[sy:sy + rh, sx:sx + rw]
        elif kind == 1:  # blur the region to its mean: the detail there is gone
            img[y:y + rh, x:x + rw] = img[y:y + rh, x:x + rw].mean((0, 1))
        elif kind == 2:  # a block of noise
            img[y:y + rh, x:x + rw] = rng.uniform(0, 255, (rh, rw, 1 if np.ptp(img, 2).max() == 0 else 3))
        else:  # the left half mirrored onto the right (or top onto bottom)
            if rng.random() < 0.5:
                img[:, w // 2:] = img[:, :w - w // 2][:, ::-1]
            else:
                img[h // 2:] = img[:h - h // 2][::-1]
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out
