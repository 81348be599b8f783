"""Anomaly maps for people: where a map peaks in the original image, and heat-map overlays as JPEG or PNG.

Pillow and NumPy only (no torch): `scan` draws these. A map value is in the score's log-odds (metadata map_units
"logit": 0 = the default threshold, higher = more abnormal) or, in bundles before it, standardised local evidence
(0 = as typical as the median normal location, higher = less typical). The colour scale is the model's own `map_range` (ONNX
metadata: [lo, hi], lo = the level of normal parts, hi = clearly abnormal) when it has one, else MAP_RANGE; it
is the same in every image a model scans, so a colour means the same everywhere.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .errors import UsageError

MAP_RANGE = (0.0, 3.0)  # colour scale without a model map_range: ≤ 0 transparent, ≥ 3 (≈ 19 robust spreads) red
# colour anchors from cool to hot (blue → cyan → yellow → orange → red): the warm half starts early, so a region
# half way to `hi` already reads as hot at thumbnail size
_ANCHORS = np.array([[40, 70, 230], [0, 200, 230], [255, 230, 0], [255, 120, 0], [230, 0, 0]], dtype=np.float64)
ALPHA_LOW, ALPHA_HIGH = 0.45, 0.85  # opacity just above lo, and at hi and beyond (alpha rises as sqrt in between)


def peak(anomaly_map: np.ndarray, image_wh: tuple[int, int]) -> tuple[int, int]:
    """(x, y) of the centre of the map's hottest cell, in the pixels of an image of size `image_wh` (the map
    covers the whole image, so the original's size is all it takes to map back)."""
    h, w = anomaly_map.shape
    finite = np.nan_to_num(np.asarray(anomaly_map, dtype=np.float64), nan=-np.inf)  # argmax would pick a NaN
    i, j = np.unravel_index(int(np.argmax(finite)), anomaly_map.shape)
    x, y = (j + 0.5) * image_wh[0] / w, (i + 0.5) * image_wh[1] / h
    return int(min(image_wh[0] - 1, x)), int(min(image_wh[1] - 1, y))


def upsample(anomaly_map: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """The map resized to `size_wh` = (width, height) with bilinear interpolation, as float32 (height, width).

    The map covers the whole image, so this puts one value on every pixel of an image of that size (overlays at
    the original size, pixel-level scoring against masks). NaN → the map's lowest finite value, ±inf → its finite
    extremes, so one bad cell cannot smear over its neighbours. Pillow mode "F" (no torch, no SciPy)."""
    values = np.asarray(anomaly_map, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"anomaly map must be 2-D, got shape {values.shape}")
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
    width, height = int(size_wh[0]), int(size_wh[1])
    resized = Image.fromarray(np.ascontiguousarray(values), mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def _colour_table(steps: int = 256) -> tuple[list[int], list[int]]:
    """A 256-entry palette (flat RGB list) and alpha table (0–255) for levels t = 0 … 1 of the colour range.

    Level 0 (a value at or below the range's low end: looks like normal parts, most of any image) is fully
    transparent, so the overlay leaves normal regions untouched: the defect is what stands out, and a PNG whose
    right half repeats its left outside the hot spots is about half the bytes and a quarter faster to encode
    (casting: 91 vs 164 KiB, 7.4 vs 9.6 ms; scan --maps draws one per flagged image). Above it the colour is
    strong at once (ALPHA_LOW) and rises fast (square root) to ALPHA_HIGH at the top: with the old gentle ramp
    (0.15 → 0.75 linear) a crack at a moderate level was a faint tint that only the ring gave away."""
    t = np.linspace(0.0, 1.0, steps)
    pos = t * (len(_ANCHORS) - 1)
    k = np.minimum(pos.astype(int), len(_ANCHORS) - 2)
    frac = (pos - k)[:, None]
    rgb = _ANCHORS[k] * (1 - frac) + _ANCHORS[k + 1] * frac
    alpha = 255 * (ALPHA_LOW + (ALPHA_HIGH - ALPHA_LOW) * np.sqrt(t))
    alpha[0] = 0
    return np.rint(rgb).astype(np.uint8).ravel().tolist(), np.rint(alpha).astype(int).tolist()


_PALETTE, _ALPHAS = _colour_table()


def colour_range(map_range: tuple[float, float] | None) -> tuple[float, float]:
    """`map_range` when it is a usable (lo, hi) (finite, lo < hi), else MAP_RANGE."""
    try:
        lo, hi = (float(v) for v in map_range)
    except (TypeError, ValueError):
        return MAP_RANGE
    return (lo, hi) if np.isfinite(lo) and np.isfinite(hi) and lo < hi else MAP_RANGE


def levels(anomaly_map: np.ndarray, size: tuple[int, int], map_range: tuple[float, float] | None = None) -> Image.Image:
    """Map → colour levels 0–255 of the colour range (`map_range`, else MAP_RANGE) as an "L" image of `size` =
    (width, height), bilinear. Pillow throughout (resize, affine point, clamping convert): 0.6 ms for 300 px,
    ~4x faster than the same in NumPy."""
    lo, hi = colour_range(map_range)
    scale = 255.0 / (hi - lo)
    values = np.nan_to_num(np.asarray(anomaly_map, dtype=np.float32), nan=lo, posinf=hi, neginf=lo)
    resized = Image.fromarray(values, mode="F").resize(size, Image.Resampling.BILINEAR)
    return resized.point(lambda v: v * scale + (0.5 - lo * scale)).convert("L")  # + 0.5: convert truncates


def overlay(rgb: np.ndarray, anomaly_map: np.ndarray, map_range: tuple[float, float] | None = None) -> Image.Image:
    """The image (H, W, 3 uint8) with the heat map blended over it and a ring around the map's peak: values at
    or below the range's lo leave the image as it is, values at hi and above are red at ALPHA_HIGH."""
    h, w = rgb.shape[:2]
    level = levels(anomaly_map, (w, h), map_range)
    heat = level.copy()
    heat.putpalette(_PALETTE)
    over = Image.composite(heat.convert("RGB"), Image.fromarray(rgb), level.point(_ALPHAS))
    x, y = peak(anomaly_map, (w, h))
    r = max(6, min(w, h) // 20)
    ImageDraw.Draw(over).ellipse([x - r, y - r, x + r, y + r], outline=(255, 255, 255), width=2)
    return over


def side_by_side(rgb: np.ndarray, anomaly_map: np.ndarray, map_range: tuple[float, float] | None = None) -> Image.Image:
    """Original | overlay (ringed peak)."""
    h, w = rgb.shape[:2]
    canvas = Image.new("RGB", (2 * w + 4, h), (255, 255, 255))
    canvas.paste(Image.fromarray(rgb), (0, 0))
    canvas.paste(overlay(rgb, anomaly_map, map_range), (w + 4, 0))
    return canvas


OVERLAY_FORMATS = ("jpg", "png")  # scan --map-format
JPEG_QUALITY = 92


def overlay_suffix(map_format: str) -> str:
    """The file suffix of scan --maps' overlays for `map_format`; a UsageError naming the option for any other."""
    if map_format not in OVERLAY_FORMATS:
        raise UsageError(f"--map-format {map_format}: use {' or '.join(OVERLAY_FORMATS)}")
    return f".{map_format}"


def save_picture(img: Image.Image, path: Path) -> None:
    """Write a JPEG (suffix .jpg/.jpeg) or a PNG (any other suffix), to a temporary name, then renamed: a reader
    never sees half a file.

    Why JPEG for scan --maps: one overlay per flagged image, and a PNG of a 300-px photo pair took ~13 ms to encode
    (zlib level 1) against ~1 ms as JPEG at quality 92, with files a third the size; on casting's 715 test images
    (~450 flagged) scan --maps ran at 38-39 images/s with PNG overlays and 42-47 with JPEG (the same model)
    (benchmarks/results/evaluate_speed.md). PNG stays available (--map-format png) where the overlay must be lossless."""
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix.lower() in (".jpg", ".jpeg"):
        (img if img.mode == "RGB" else img.convert("RGB")).save(tmp, format="JPEG", quality=JPEG_QUALITY)
    else:
        img.save(tmp, format="PNG", compress_level=1)  # fast: a scan may write thousands; files ~1.5x larger
    tmp.replace(path)
