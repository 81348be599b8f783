"""Local defects on real inspection images: AUC per set per method, train seconds, scan images/s with maps.

    python benchmarks/industrial.py [--data-root ../shared/data] [--sets casting,deeppcb] [--threads 2]

For each set under DATA_ROOT/industrial/<set>/{train/good,test/good,test/defect}:
  * icsscan default (`ICSDetector().fit(train/good)`: backbone auto → efficientnet-lite0, local scores), trained
    once; the bundle (with ONNX) is saved and its size recorded; `icsscan scan --maps` (its own torch-free
    process, onnxruntime) scores the test set: the default's AUC from its scores.csv, and scan images/s (the
    scan's own timing in summary.json; scan_wall_s: the whole command with start-up and report) with overlays;
  * the ablation, from one PyTorch pass of the same model over the test set (its per-image components):
    patch-kNN alone (PatchCore-like: coreset bank, mean of the map's 10 highest locations), ICS on patches
    alone, global kNN alone, the fusion without the ICS head, without the global part, and the fusion (the
    default's aggregate: top-k of the fused map; its weights refitted per row), and the previous aggregate (each
    map's own top-k, then fused);
  * the previous default (global, `--backbone small`, 64 px) and raw-pixel baselines (64 px grey pixels:
    scikit-learn OneClassSVM and IsolationForest).
Writes benchmarks/results/industrial.csv (one row per set × method) and industrial.md (table, machine, config).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from icsscan.runinfo import machine, now_iso, versions  # noqa: E402

RESULTS = HERE / "results"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_files(root: Path) -> tuple[list[str], np.ndarray]:
    from icsscan.data import find_images

    good, bad = find_images(root / "test" / "good"), find_images(root / "test" / "defect")
    return [str(p) for p in good + bad], np.r_[np.zeros(len(good)), np.ones(len(bad))]


def fused(components: dict[str, np.ndarray], fusion: dict, parts: tuple[str, ...]) -> np.ndarray:
    """The previous aggregate (each map's own top-k, then fused) with the model's centres, spreads and weights,
    restricted to `parts`: ranks like a model trained with local_aggregate "separate"."""
    z = 0.0
    for p in parts:
        v = (components[p] - fusion[f"{p}_center"]) / fusion[f"{p}_scale"]
        z = z + fusion[f"{p}_weight"] * np.sign(v) * np.log1p(np.abs(v))
    return np.asarray(z)


def component_pass(det, rgb: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
    """The model's per-image components (PyTorch) over decoded images, and its local maps."""
    from icsscan.local import FloatBatches, component_values

    device = next(det.scorer_.buffers()).device
    return component_values(det.scorer_, FloatBatches(rgb, det.channels_, device), keep_maps=True)


def fused_map_score(det, test: tuple[dict, dict], held: tuple[dict, dict], weights: dict[str, float]) -> np.ndarray:
    """The default's score (LocalScorer.fused_logit: the top-k of the fused knn/pics map plus gknn) with `weights`
    in place of the model's, the fused map's centre and spread refitted on the held-out normals for those weights
    (detector.calibrate_fused_local): ranks like a model trained with them. The model is left as it was."""
    import torch

    from icsscan.detector import calibrate_fused_local

    scorer = det.scorer_
    saved = {k: v.clone() for k, v in scorer.state_dict().items() if v.ndim == 0}
    try:
        fusion = {**det.fusion_, **{f"{p}_weight": w for p, w in weights.items()}}
        refit = calibrate_fused_local(scorer, held[0], held[1], fusion, det.config_.rho)
        scorer.local_center.fill_(refit["local_center"])
        scorer.local_scale.fill_(refit["local_scale"])
        with torch.no_grad():
            values = {p: torch.from_numpy(v).float() for p, v in test[0].items()}
            return scorer.fused_logit(values, scorer.heat(test[1])).double().numpy()
    finally:
        scorer.load_state_dict(saved, strict=False)


def local_rows(name: str, root: Path, work: Path, seed: int) -> list[dict]:
    from icsscan import ICSDetector

    rows = []
    det = ICSDetector(seed=seed, verbose=True)
    t = time.perf_counter()
    det.fit(root / "train" / "good")
    train_s = time.perf_counter() - t
    rss_train = peak_rss_mib()
    bundle = det.save(work / f"{name}-model")
    bundle_mib = sum(f.stat().st_size for f in bundle.iterdir()) / 2**20
    cfg = det.config_
    paths, y = test_files(root)

    # the default through the scanner as a user runs it: `icsscan scan --maps` in its own process (torch-free;
    # in this process torch's idle OpenMP threads spin beside onnxruntime's and halved its speed: 18 vs 39 img/s)
    report = work / f"{name}-report"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "icsscan", "scan", str(root / "test"), "--model", str(bundle),
                    "--out", str(report), "--maps", "--device", "cpu"], check=True, capture_output=True)
    scan_wall_s = time.perf_counter() - t
    scan_s = json.loads((report / "summary.json").read_text())["timings"]["seconds"]  # scoring, without start-up
    with open(report / "scores.csv", newline="", encoding="utf-8") as f:
        by_path = {str(Path(r["path"]).resolve()): float(r["score"]) for r in csv.DictReader(f)}
    onnx_scores = np.array([by_path[str(Path(p).resolve())] for p in paths])
    n_maps = len(list((report / "maps").glob("*.png")))

    # ablation: components of the same model, one PyTorch pass
    loaded = det._read(paths, (cfg.image_size, cfg.image_height), warn=False)
    assert loaded.paths == paths, "an unreadable test image would misalign the labels"
    comps, maps = component_pass(det, loaded.images)
    fusion = det.fusion_
    common = {"set": name, "train_images": det.n_train_, "calibration_images": det.n_calibration_,
              "test_images": len(paths), "input": f"{cfg.image_size}x{cfg.image_height}", "seed": seed}
    # the label-free alternative to the default's equal weights: each component's weight from how well it tells
    # the held-out normals from copies with one synthetic local defect (local.label_free_weights)
    from icsscan.local import label_free_weights, synthetic_defects

    size = (cfg.image_size, cfg.image_height)
    held = det._read(det.calibration_paths_, size, warn=False).images
    synthetic = synthetic_defects(held, held[:64], seed)
    held_pass, syn_c = component_pass(det, held), component_pass(det, synthetic)[0]
    held_c = held_pass[0]
    # the default's gate (local.gated_weights): which components it kept; the "without" rows keep the same gate
    kept = tuple(p for p in ("knn", "pics", "gknn") if fusion[f"{p}_weight"] > 0)
    gate = {p: [round(fusion[f"{p}_synthetic_auc"], 3), float(f"{fusion[f'{p}_gate_p']:.2g}")]
            for p in ("knn", "pics", "gknn")}
    gknn_kept = 1.0 if "gknn" in kept else 0.0
    per_image = [  # each component's own image value (the top-k of its map)
        ("patch-kNN alone (coreset bank; PatchCore-like)", "knn"),
        ("ICS on patches alone (atypical = synthetic-defect patches)", "pics"),
        ("global kNN alone (mean patch embedding)", "gknn"),
    ]
    for label, part in per_image:
        rows.append({**common, "method": label, "auc": roc_auc_score(y, comps[part])})
    fused_map = [  # the default's aggregate: top-k of the fused map (knn, pics) + gknn; equal weights
        ("fusion without ICS (knn+gknn), equal weights, same gate", {"knn": 1.0, "pics": 0.0, "gknn": gknn_kept}),
        ("fusion without global (knn+pics), equal weights", {"knn": 1.0, "pics": 1.0, "gknn": 0.0}),
        ("fusion knn+pics+gknn, equal weights, no gate", {"knn": 1.0, "pics": 1.0, "gknn": 1.0}),
        ("fusion knn+pics+gknn, gated equal weights (the default, torch)", {"knn": 1.0, "pics": 1.0, "gknn": gknn_kept}),
    ]
    for label, weights in fused_map:
        row = {**common, "method": label, "auc": roc_auc_score(y, fused_map_score(det, (comps, maps), held_pass, weights))}
        if "gate" in label:
            row["weights"] = json.dumps({"kept": [p for p, w in weights.items() if w > 0], "synthetic_auc_and_p": gate})
        rows.append(row)
    # the aggregate before this one: each map's own top-k, then fused (local_aggregate "separate")
    rows.append({**common, "method": "previous aggregate: top-k of each map, then fused (gated equal weights)",
                 "auc": roc_auc_score(y, fused(comps, fusion, ("knn", "pics", "gknn")))})
    for label, parts in (("fusion knn+pics+gknn, label-free weights (synthetic defects; not the default)",
                          ("knn", "pics", "gknn")),
                         ("fusion without ICS, label-free weights", ("knn", "gknn"))):
        sub = label_free_weights({p: held_c[p] for p in parts}, {p: syn_c[p] for p in parts})
        weights = {"knn": 0.0, "pics": 0.0, "gknn": 0.0, **{p: w for p, (w, _) in sub.items()}}
        rows.append({**common, "method": label,
                     "auc": roc_auc_score(y, fused_map_score(det, (comps, maps), held_pass, weights)),
                     "weights": json.dumps({p: [round(w, 3), round(a, 3)] for p, (w, a) in sub.items()})})
    weights = {p: (round(fusion[f"{p}_weight"], 3), *gate[p]) for p in ("knn", "pics", "gknn")}  # weight, AUC, p
    with open(RESULTS / f"industrial_components_{name}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", *comps])
        for k, path in enumerate(paths):
            w.writerow([Path(path).name, int(y[k]), *(f"{comps[c][k]:.6g}" for c in comps)])
    rows.append({**common, "method": "icsscan default (scan via ONNX)", "auc": roc_auc_score(y, onnx_scores),
                 "train_s": round(train_s, 1), "scan_images_per_s": round(len(paths) / scan_s, 2),
                 "scan_wall_s": round(scan_wall_s, 1),
                 "overlays_written": n_maps, "bundle_mib": round(bundle_mib, 2),
                 "peak_rss_train_mib": round(rss_train, 0), "timings": json.dumps(det.timings_),
                 "weights": json.dumps(weights)})
    return rows


def global_rows(name: str, root: Path, seed: int) -> list[dict]:
    """The previous default (global model at 64 px) and raw-pixel baselines at 64 px."""
    from sklearn.ensemble import IsolationForest
    from sklearn.svm import OneClassSVM

    from icsscan import ICSDetector
    from icsscan.data import find_images, load_images, to_channels

    rows = []
    paths, y = test_files(root)
    det = ICSDetector(seed=seed, backbone="small")
    t = time.perf_counter()
    det.fit(root / "train" / "good")
    train_s = time.perf_counter() - t
    scores = det.score_samples(paths)
    rows.append({"set": name, "method": "previous default (global, small backbone, 64 px)",
                 "auc": roc_auc_score(y, scores), "train_s": round(train_s, 1), "seed": seed})
    train = load_images(find_images(root / "train" / "good"), 64).images
    test = load_images(paths, 64).images
    flat = lambda a: to_channels(a, 1).reshape(len(a), -1)  # noqa: E731
    for label, est in (("raw pixels 64 px + OneClassSVM (rbf, nu=0.1)", OneClassSVM(nu=0.1, gamma="scale")),
                       ("raw pixels 64 px + IsolationForest", IsolationForest(random_state=seed))):
        est.fit(flat(train))
        rows.append({"set": name, "method": label, "auc": roc_auc_score(y, -est.score_samples(flat(test))),
                     "seed": seed})
    return rows


def write_outputs(rows: list[dict], args, started: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    columns = ["set", "method", "auc", "train_s", "scan_images_per_s", "scan_wall_s", "overlays_written", "bundle_mib",
               "peak_rss_train_mib", "train_images", "calibration_images", "test_images", "input", "seed", "weights",
               "timings"]
    with open(RESULTS / "industrial.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "auc": f"{r['auc']:.4f}"})
    lines = [
        "# Local defects on real inspection images (`benchmarks/industrial.py`)", "",
        f"Command: `{' '.join(sys.argv)}`  ", f"Started {started}, finished {now_iso()}; torch threads: "
        f"{args.threads}; machine: `{json.dumps(machine())}`  ",
        f"Versions: `{json.dumps(versions())}`", "",
        "| set | method | AUC | train s | scan img/s (maps on) | bundle MiB | peak RSS train MiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['set']} | {r['method']} | {r['auc']:.4f} | {r.get('train_s', '')} | "
                     f"{r.get('scan_images_per_s', '')} | {r.get('bundle_mib', '')} | {r.get('peak_rss_train_mib', '')} |")
    (RESULTS / "industrial.md").write_text("\n".join(lines) + "\n" + NOTES, encoding="utf-8")


NOTES = """
Notes: AUC from the labels of `test/good` (0) and `test/defect` (1). The ablation rows re-use the one trained
default model: the "alone" rows rank the test images by one component's image value (the mean of its map's 10
highest locations); the "fusion" rows by the default's score with the named components' weights (the top-k of
the fused knn/pics map, its centre and spread refitted on the held-out normals for those weights, plus gknn;
fitted on held-out normal training images only); "previous aggregate" by each map's own top-k, then fused
(the aggregate before this one, with the model's centres and weights). "icsscan default (scan via
ONNX)" is what `icsscan train DIR` + `icsscan scan` give: the exported graph run by onnxruntime, with an overlay PNG
written for every flagged image; the scan runs as `icsscan scan --maps` in its own process, and its img/s is the
scan's own timing (summary.json: scoring and overlays, without the ~2 s of start-up and the report; the whole
command's wall time is `scan_wall_s` in the CSV). Peak RSS is the benchmark process's high-water mark after
training (sets run in the order given, so a later set's value is at least an earlier one's).
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=os.environ.get("ICSSCAN_DATA", str(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--sets", default="casting,deeppcb")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-global", action="store_true", help="only the local model and its ablation")
    ap.add_argument("--global-from", help="with --skip-global: take the global/raw-pixel rows from this earlier "
                                         "industrial.csv (they do not depend on the local model)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    started = now_iso()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets.split(","):
            root = Path(args.data_root) / "industrial" / name
            if not root.is_dir():
                sys.exit(f"{root}: not found (set --data-root or ICSSCAN_DATA)")
            rows += local_rows(name, root, Path(tmp), args.seed)
            write_outputs(rows, args, started)
            if not args.skip_global:
                rows += global_rows(name, root, args.seed)
            elif args.global_from:
                with open(args.global_from, newline="", encoding="utf-8") as f:
                    rows += [{**r, "auc": float(r["auc"]), "method": r["method"].removesuffix(" [earlier run]") + " [earlier run]"}
                             for r in csv.DictReader(f) if r["set"] == name
                             and r["method"].startswith(("previous default", "raw pixels", "ICS on patches, "))]
            write_outputs(rows, args, started)
            print(json.dumps([{k: r[k] for k in ("set", "method", "auc")} for r in rows], indent=1), flush=True)


if __name__ == "__main__":
    main()
