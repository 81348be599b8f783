"""Same scores before and after a refactor (issue 32): train, save, scan; then compare.

Two steps, each run with the code under test on PYTHONPATH (the package imported is checked against --code):

    # before: the code at the base commit, in its own worktree
    git worktree add /tmp/base HEAD
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/base .venv/bin/python tools/refactor_equality.py record \
        --code /tmp/base --out /tmp/equality/before
    # after: the working tree
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python tools/refactor_equality.py compare \
        --code . --before /tmp/equality/before --out /tmp/equality/after

`record` trains the default model on each training folder (sample_data/good: a whole-object model;
the casting parts: a local model), saves the bundle (with its ONNX export), and keeps the scores of the test
folder twice: through the library (ICSDetector.score_samples, PyTorch) and through the scanner (onnxruntime).
`compare` does the same with the code under test and checks (max |difference| ≤ --tol, default 1e-6):
  1. the new bundles' scores equal the old ones (library and scanner);
  2. each bundle written before loads with the new code (ICSDetector.load and the scanner) and scores the same.

The configuration is pinned to the values the defaults had at the base commit (PINNED below, plus the backbone
and score `auto` resolved for each data set), so that a concurrent change of *defaults* does not read as a
refactor's difference. Fields the code under test lacks, or has beyond PINNED, are reported.
One thread (torch, onnxruntime, decode): the numbers do not depend on the machine's load.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
CASTING = ROOT.parent / "shared" / "data" / "industrial" / "casting"
BRICK = ROOT.parent / "shared" / "data" / "industrial" / "brick_cracks"
# data set name → (training folder, test folder, the backbone and score `auto` resolved to at the base commit)
DATASETS = {
    "sample": (ROOT / "sample_data" / "good", ROOT / "sample_data" / "incoming",
               {"backbone": "small", "score": "eknn+eics+ssim", "global_weights": "synthetic"}),
    "casting": (CASTING / "train" / "good", CASTING / "test",
                {"backbone": "efficientnet-lite0", "score": "knn+pics+gknn"}),
    # 250 images: calibrated in two folds (thresholds.calibration_folds), where casting's 800 have one
    "brick_cracks": (BRICK / "train" / "good", BRICK / "test",
                     {"backbone": "efficientnet-lite0", "score": "knn+pics+gknn"}),
}
# icsscan/config.py ICSConfig() at commit 166dc37 (the base of issue 32), every field
PINNED = {
    "preset": "default", "image_size": 0, "image_height": 0, "channels": 0, "rho": 0.1, "ae_width": 32,
    "ae_code_dim": 16, "ae_epochs": 8, "ae_lr": 2e-3, "ae_batch_size": 64, "backbone": "auto", "width": 16,
    "hidden_dim": 256, "latent_dim": 128, "iterations": 200, "batch_size": 64, "lr": 3e-4, "beta1": 0.5,
    "l2": 1e-3, "grad_clip": 5.0, "rotation": True, "rotation_batch": 64, "rotation_lr": 1e-3,
    "ics_losses": "ics", "score": "auto", "local_min_side": 224, "local_max_side": 640, "patch_pool": 1,
    "bank": "coreset", "bank_size": 2048, "patch_candidates": 100_000, "patch_split": "synthetic",
    "patch_iterations": 1000, "patch_ema": 0.995, "patch_heads": 1, "patch_batch": 256, "patch_lr": 1e-3,
    "local_weights": "gated", "local_aggregate": "fused", "embed_size": 160, "embed_iterations": 300,
    "embed_batch": 128, "global_weights": "auto", "calibration_fraction": 0.1, "seed": 0, "device": "cpu",
    "workers": 1, "log_every": 10,
}

# fields added after the base commit by other changes (issue 31), at the values that reproduce the base's behaviour:
# pinned when the code under test has them, so that only the refactor is compared
ADDED_SINCE = {"patch_pad": 0, "normalise_brightness": False, "edge_calibration": False, "map_smoothing": 0.0}


def _import(code: Path):
    import torch

    torch.set_num_threads(1)
    import icsscan

    where = Path(icsscan.__file__).resolve().parents[1]
    if where != code.resolve():
        sys.exit(f"icsscan imported from {where}, not from --code {code} (set PYTHONPATH={code})")
    return icsscan


def pinned_config(name: str):
    from dataclasses import fields

    from icsscan.config import ICSConfig

    known = {f.name for f in fields(ICSConfig)}
    values = {**PINNED, **DATASETS[name][2]}
    lacking = sorted(set(values) - known)
    values.update({k: v for k, v in ADDED_SINCE.items() if k in known})
    beyond = sorted(known - set(values))
    if lacking or beyond:
        print(f"  config: the code under test lacks {lacking or 'nothing'}; has beyond the pinned fields "
              f"{beyond or 'nothing'} (those take its defaults)", flush=True)
    return ICSConfig(**{k: v for k, v in values.items() if k in known})


def scores_of(bundle: Path, test: Path, det=None) -> dict[str, dict[str, float]]:
    """{"library": {path: score}, "scanner": {path: score}} for every file of `test`."""
    from icsscan import ICSDetector
    from icsscan.scan import load_model, scan_folder

    det = det or ICSDetector.load(bundle, device="cpu")
    det.workers = 1
    from icsscan.scan import list_scan_files

    paths = [str(p) for p in list_scan_files(test)]
    library = det.score_samples(paths)
    model = load_model(bundle / "model.onnx", device="cpu", threads=1)
    result = scan_folder(test, model, workers=1)
    return {"library": {p: float(s) for p, s in zip(paths, library)},
            "scanner": {r.path: r.score for r in result.rows}}


def train(name: str, out: Path) -> tuple[Path, dict, float]:
    from icsscan import ICSDetector

    train_dir, test_dir, _ = DATASETS[name]
    t = time.perf_counter()
    det = ICSDetector(config=pinned_config(name)).fit(str(train_dir))
    bundle = out / f"{name}-bundle"
    det.save(bundle)
    took = time.perf_counter() - t
    return bundle, scores_of(bundle, test_dir), took


def max_diff(a: dict[str, float], b: dict[str, float]) -> tuple[float, int]:
    """Largest |a − b| over the common paths (inf when the path sets or the missing scores differ)."""
    if set(a) != set(b):
        return float("inf"), len(set(a) ^ set(b))
    worst = 0.0
    for p in a:
        if (a[p] is None) != (b[p] is None):
            return float("inf"), 1
        if a[p] is not None:
            worst = max(worst, abs(a[p] - b[p]))
    return worst, len(a)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("record", "compare"))
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose icsscan must be imported")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--before", type=Path, help="compare: the --out of `record`")
    parser.add_argument("--only", choices=tuple(DATASETS), action="append", help="data sets (default: all)")
    parser.add_argument("--tol", type=float, default=1e-6)
    args = parser.parse_args()
    _import(args.code)
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(DATASETS)
    failed = False
    for name in names:
        print(f"{name}: training with {args.code} …", flush=True)
        bundle, scores, took = train(name, args.out)
        config = json.loads((bundle / "config.json").read_text())["config"]
        (args.out / f"{name}-scores.json").write_text(json.dumps({"scores": scores, "config": config,
                                                                   "train_s": took}, indent=1))
        print(f"  trained and scanned in {took:.0f} s; {len(scores['scanner'])} test files", flush=True)
        if args.step == "record":
            continue
        before = json.loads((args.before / f"{name}-scores.json").read_text())
        if before["config"] != config:
            changed = {k: (before["config"].get(k), config.get(k)) for k in set(before["config"]) | set(config)
                       if before["config"].get(k) != config.get(k)}
            print(f"  config.json differs (before, after): {changed}", flush=True)
        old = scores_of(args.before / f"{name}-bundle", DATASETS[name][1])
        checks = [("new bundle, library", before["scores"]["library"], scores["library"]),
                  ("new bundle, scanner", before["scores"]["scanner"], scores["scanner"]),
                  ("old bundle loaded by the new code, library", before["scores"]["library"], old["library"]),
                  ("old bundle loaded by the new code, scanner", before["scores"]["scanner"], old["scanner"])]
        for label, a, b in checks:
            worst, n = max_diff(a, b)
            ok = worst <= args.tol
            failed |= not ok
            print(f"  {'ok  ' if ok else 'FAIL'} {label}: max |diff| {worst:.3g} over {n} files", flush=True)
    if args.step == "compare":
        print("equal" if not failed else "DIFFERENT", flush=True)
    return int(failed)


if __name__ == "__main__":
    raise SystemExit(main())
