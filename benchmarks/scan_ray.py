"""Benchmark: `icsscan scan` with the local engine vs `--engine ray` (a local Ray on this machine).

Scans N CIFAR-10 JPEGs (the first N/10 of each class of CIFAR10-jpeg/train, linked into one folder) with
both engines through the library calls the CLI uses, checks that both return the same rows, and writes
benchmarks/results/scan_ray.json and .md. Without --model it first trains a quick model on 500 airplane
images of CIFAR10-jpeg/test (`icsscan train --iterations 50`).

  nice -n 10 .venv/bin/python benchmarks/scan_ray.py [--files 20000] [--data-root /work/shared/data]

images/s = rows / the engine's own scan time (listing and model loading excluded for both; for Ray the
time includes building the dataset and starting the actors; the wall time with `ray.init`/`shutdown` is
reported separately).
The page cache is warmed by reading every file once before either engine runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from icsscan.runinfo import machine, now_iso, package_version, versions  # noqa: E402


def link_subset(src: Path, dst: Path, n: int) -> int:
    classes = sorted(p for p in src.iterdir() if p.is_dir())
    per_class = -(-n // len(classes))
    count = 0
    for c in classes:
        (dst / c.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(c.glob("*.jpg"))[:per_class]:
            if count == n:
                return count
            (dst / c.name / f.name).symlink_to(f)
            count += 1
    return count


def warm_cache(folder: Path) -> float:
    started = time.perf_counter()
    for p in folder.rglob("*.jpg"):
        p.read_bytes()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=Path(os.environ.get("ICSSCAN_DATA", "/work/shared/data")))
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--model", type=Path, help="model bundle or .onnx (default: train a quick one)")
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--actors", type=int, default=None, help="Ray scoring actors (default: the engine's)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scan_ray")
    args = ap.parse_args()

    from icsscan.ray_engine import plan_pool, scan_folder_ray
    from icsscan.scan import load_model, scan_folder

    cifar = args.data_root / "CIFAR10-jpeg"
    if not (cifar / "train").is_dir():
        sys.exit(f"CIFAR10-jpeg/train not found under {args.data_root} (use --data-root or $ICSSCAN_DATA)")
    with tempfile.TemporaryDirectory(prefix="icsb-", dir="/tmp") as tmp:
        tmp = Path(tmp)
        folder = tmp / "scan"
        n = link_subset(cifar / "train", folder, args.files)
        model_note = str(args.model) if args.model else None
        train_s = None
        if args.model is None:
            good = tmp / "airplane"
            good.mkdir()
            for f in sorted((cifar / "test" / "airplane").glob("*.jpg"))[:500]:
                (good / f.name).symlink_to(f)
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "icsscan", "train", str(good), "--out", str(tmp / "model"),
                            "--backbone", "small", "--iterations", str(args.iterations), "--seed", "0"], check=True,
                           stdout=subprocess.DEVNULL)
            train_s = time.perf_counter() - t
            args.model = tmp / "model"
            model_note = f"trained here: 500 CIFAR10-jpeg/test/airplane images, --iterations {args.iterations}"
        model = load_model(args.model, device="cpu")
        warm_s = warm_cache(folder)

        load_before = os.getloadavg()
        local = scan_folder(folder, model, batch_size=args.batch_size, workers=args.workers)
        os.environ["RAY_TMPDIR"] = str(tmp)  # a private Ray: its files and address stay out of /tmp/ray
        t = time.perf_counter()
        res = scan_folder_ray(folder, model, batch_size=args.batch_size, workers=args.workers, actors=args.actors)
        ray_wall = time.perf_counter() - t  # + listing, ray.init and ray.shutdown
        n_actors, n_decoders = plan_pool({"CPU": float(os.cpu_count() or 1)}, args.actors, 1.0, 0.0)

        same_paths = [r.path for r in local.rows] == [r.path for r in res.rows]
        diffs = [abs(a.score - b.score) for a, b in zip(local.rows, res.rows)
                 if a.score is not None and b.score is not None]
        result = {
            "benchmark": "scan_ray",
            "finished": now_iso(),
            "command": "nice -n 10 " + " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
            "files": n,
            "source": f"{n} of CIFAR10-jpeg/train ({-(-n // 10)} per class), 32x32 JPEG",
            "model": model_note,
            "model_image_size": model.image_size,
            "train_seconds": None if train_s is None else round(train_s, 1),
            "batch_size": args.batch_size,
            "workers": args.workers,
            "page_cache_warm_seconds": round(warm_s, 2),
            "local": {"seconds": round(local.seconds, 2), "images_per_s": round(len(local.rows) / local.seconds, 1),
                      "rows": len(local.rows), "unreadable": len(local.failures)},
            "ray": {"seconds": round(res.seconds, 2), "images_per_s": round(len(res.rows) / res.seconds, 1),
                    "wall_seconds_incl_ray_start_and_stop": round(ray_wall, 2),
                    "images_per_s_incl_ray_start_and_stop": round(len(res.rows) / ray_wall, 1),
                    "rows": len(res.rows), "unreadable": len(res.failures),
                    "cluster": "local Ray started by this script (ray.init, num_cpus = os.cpu_count())",
                    "scoring_actors": n_actors, "decode_tasks": n_decoders},
            "same_rows": same_paths and [r.error for r in local.rows] == [r.error for r in res.rows],
            "max_abs_score_diff": max(diffs) if diffs else None,
            "load_average_1_5_15min": {"before": [round(x, 2) for x in load_before],
                                       "after": [round(x, 2) for x in os.getloadavg()]},
            "machine": machine(),
            "versions": {**versions(), "ray": package_version("ray")},
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lo, ra = result["local"], result["ray"]
    md = f"""# Benchmark: `icsscan scan` local engine vs `--engine ray`

Command: `{result['command']}` (finished {result['finished']})

| engine | files | scan seconds | images/s |
|---|---:|---:|---:|
| local (threads + onnxruntime) | {lo['rows']} | {lo['seconds']} | **{lo['images_per_s']}** |
| ray (local Ray, {ra['scoring_actors']} scoring actor(s), ≤ {ra['decode_tasks']} decode task(s)) | {ra['rows']} | {ra['seconds']} | **{ra['images_per_s']}** |
| ray incl. starting and stopping the local Ray | {ra['rows']} | {ra['wall_seconds_incl_ray_start_and_stop']} | {ra['images_per_s_incl_ray_start_and_stop']} |

- Data: {result['source']}; model: {result['model']} (input {result['model_image_size']} px).
- Both engines return the same rows: {result['same_rows']}; largest score difference {result['max_abs_score_diff']}.
- Machine: {result['machine']['cpu_count']} CPUs, {result['machine']['platform']}, shared with other jobs
  (load average {result['load_average_1_5_15min']['before'][0]} before, {result['load_average_1_5_15min']['after'][0]} after;
  the run used `nice -n 10`, so absolute numbers are low and noisy), page cache warmed before both runs. Versions: icsscan {result['versions']['icsscan']},
  ray {result['versions']['ray']}, onnxruntime {result['versions']['onnxruntime']}, Python {result['versions']['python']}.
- On one small machine Ray can only add overhead (task scheduling, object-store copies, actor start-up);
  its point is spreading a scan over many machines (docs/ray.md). Scan time excludes listing and model loading.
"""
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
