"""Export the scorer (classifier, plus the autoencoder when the score uses SSIM) to ONNX, then prove it.

The graph takes float pixels in [0, 1], shape (batch, channels, size, size), batch dynamic, and returns the
*raw* anomaly score in [0, 1]; per-channel standardisation is inside the graph. No threshold is baked in:
the default threshold and the calibration live in `metadata_props`, so `scan` can change them per run.
Every export is checked with `onnx.checker` and against PyTorch on real images (max |Δ| ≤ 1e-4).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .tracing import trace_onnx
from .config import MAP_COMPONENTS, ICSConfig, map_in_score_units
from .errors import ModelError
from .files import write_bytes_atomic
from .runinfo import hash_json, now_iso

PARITY_TOLERANCE = 1e-4
DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME, MAP_NAME = "pixels", "score", "map"


MAP_MEANINGS = {
    "local": "per-location fused anomaly evidence (standardised on held-out normals; > 0 = less typical than the "
             "median normal location); the score rises with its peak",
    "logit": "per location, the score's logit (log-odds) were this region the image's hottest: local evidence plus "
             "the image's global evidence; 0 = the default threshold 0.5, > 0 = above it; the peak is about the "
             "score's logit"}
MAP_RANGE_SPREADS = 4.0  # the colour scale's hot end, in robust spreads of the normals' hottest regions above them


def map_colour_range(fusion: dict, score_units: bool = False) -> dict[str, str]:
    """`map_range` [lo, hi] for the overlays (scan.ScanModel.map_range): lo = the fused map's level in the hottest
    region of a typical held-out normal image (its top-k centre), hi = MAP_RANGE_SPREADS robust spreads of that
    level above it. A region hotter than normal parts' hottest is coloured, and one that is clearly abnormal is
    full red, in every model's own units (a fixed scale left a visible crack almost uncoloured). `score_units`:
    the map is in the score's logit (map_units "logit"): the same two levels carried into it for an image of
    typical global evidence (LocalScorer.in_score_units), so the colours do not change with the units."""
    if "map_center" in fusion and "map_scale" in fusion:  # the blurred map's own level (config map_smoothing)
        lo, spread = float(fusion["map_center"]), float(fusion["map_scale"])
    elif "local_center" in fusion and "local_scale" in fusion:
        lo, spread = float(fusion["local_center"]), float(fusion["local_scale"])
    else:
        return {}
    hi = lo + MAP_RANGE_SPREADS * spread
    if score_units:
        from .fusion import standardised

        total = sum(float(fusion.get(f"{p}_weight", 0.0)) for p in MAP_COMPONENTS)
        levels = total * standardised(np.array([lo, hi]), fusion["local_center"], fusion["local_scale"])
        lo, hi = (float(v) - float(fusion.get("offset", 0.0)) for v in levels)
    return {"map_range": json.dumps([lo, hi])}


def metadata_for(bundle: dict, opset: int) -> dict[str, str]:
    """Everything `scan` needs besides the graph, as strings (ONNX metadata_props are string→string).

    `bundle`: the bundle's dict (bundle.contents: config.json's metadata plus its "calibration")."""
    cfg = ICSConfig.from_dict(bundle["config"])
    local = {}
    if cfg.is_local:
        local = {"image_height": str(cfg.image_height), "outputs": f"{OUTPUT_NAME},{MAP_NAME}",
                 "map_stride": str(bundle["local"]["map_stride"]),
                 "map_units": cfg.map_units, "map_meaning": MAP_MEANINGS[cfg.map_units]}
        local.update(map_colour_range(bundle.get("fusion") or {}, map_in_score_units(cfg.map_units, cfg.local_aggregate)))
    return {
        "icsscan_version": __version__,
        "icsscan_format": "1",
        "image_size": str(cfg.image_size),
        **local,
        "channels": str(cfg.channels),
        "input": "float32 pixels in [0,1], NCHW; RGB decoded by Pillow, bilinear resize (squash) to image_size, "
                 "1 channel = ITU-R 601 luma; standardisation is inside the graph",
        "normalisation": json.dumps(bundle.get("normalisation", {})),
        "score": cfg.score,
        "rho": str(cfg.rho),
        "default_threshold": str(bundle["threshold"]),
        **({"threshold_auto": str(bundle["known_defects"]["threshold_auto"]["threshold"])}
           if bundle.get("known_defects") else {}),  # scan --threshold auto (train --defects)
        "calibration": json.dumps(bundle["calibration"]),
        "config_hash": bundle.get("config_hash") or hash_json(cfg.to_dict()),
        "config": json.dumps(cfg.to_dict()),
        "preset": cfg.preset,
        "opset": str(opset),
        "created": now_iso(),
    }


def export_scorer(scorer: torch.nn.Module, bundle: dict, path: str | os.PathLike, parity_sample: np.ndarray | None,
                  opset: int = DEFAULT_OPSET, quiet: bool = False) -> float:
    """Write `scorer` to `path` (atomically) with the bundle's dict as metadata; returns the measured
    max |ONNX − PyTorch| on real images (`parity_sample`: uint8 RGB images at the model's input size)."""
    import onnx

    path = Path(path)
    scorer = scorer.to("cpu").eval()
    cfg = ICSConfig.from_dict(bundle["config"])
    height = cfg.image_height if cfg.is_local else cfg.image_size
    example = torch.rand(2, cfg.channels, height, cfg.image_size)
    outputs = [OUTPUT_NAME, MAP_NAME] if cfg.is_local else [OUTPUT_NAME]
    # the TorchScript exporter (no onnxscript needed) handles this graph fully; the TF-style backbone's "same"
    # padding is fixed for this input size: constant pads, folded into the convolutions by onnxruntime
    model = trace_onnx(scorer, example, input_names=[INPUT_NAME], output_names=outputs,
                       dynamic_axes={INPUT_NAME: {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
                       opset_version=opset)
    for key, value in metadata_for(bundle, opset).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name, model.producer_version = "icsscan", __version__
    onnx.checker.check_model(model, full_check=True)

    inputs = parity_inputs(parity_sample, cfg)
    max_diff = parity_check(model.SerializeToString(), scorer, inputs)
    if not quiet:
        print(f"export: onnx.checker passed; parity on {len(inputs)} real images: max |onnx - torch| = {max_diff:.2e}",
              file=sys.stderr)
    if not max_diff <= PARITY_TOLERANCE:
        raise ModelError(f"ONNX export differs from PyTorch by {max_diff:.2e} > {PARITY_TOLERANCE:.0e}; not written")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, model.SerializeToString())
    return max_diff


def parity_inputs(sample: np.ndarray | None, cfg: ICSConfig) -> np.ndarray:
    """Real images (from the bundle's parity sample) as float32 NCHW; random pixels only as a last resort."""
    from .data import to_channels

    if sample is not None and len(sample):
        return to_channels(np.asarray(sample), cfg.channels).astype(np.float32)
    height = cfg.image_height if cfg.is_local else cfg.image_size
    return np.random.default_rng(0).random((8, cfg.channels, height, cfg.image_size), dtype=np.float32)


def parity_check(model_bytes: bytes, scorer: torch.nn.Module, inputs: np.ndarray) -> float:
    """Max |ONNX − PyTorch| over every output (score, and the anomaly map of local models)."""
    from .scan import import_onnxruntime

    session = import_onnxruntime().InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: inputs})
    with torch.no_grad():
        want = scorer(torch.from_numpy(inputs))
    want = [w.numpy() for w in (want if isinstance(want, tuple) else (want,))]
    if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)):
        return float("inf")
    if not len(inputs):
        return 0.0
    return max(float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64)))) for g, w in zip(got, want))
