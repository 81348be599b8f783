"""How many images one onnxruntime call of a local model should take on CPU (scan.LOCAL_CPU_RUN_BATCH).

    python benchmarks/scan_batch.py [--data-root ../shared/data] [--sets casting,deeppcb,magnetic_tile]
                                    [--threads 1,2] [--batches 8,4,2,1] [--repeats 5] [--images 96]

The graph alone (no decoding, no overlays): each set's default model (benchmarks/.cache/industrial/SET-model, as
benchmarks/industrial.py leaves it; trained with `icsscan train SET/train/good --seed 0` when missing) runs the
same decoded test images (every 4th, up to --images) in calls of each batch size, alternating, --repeats times, at
a fixed onnxruntime thread count (intra-op, spinning off as in the scan). Every batch size must give the same
scores and maps as the first (the check is printed and recorded). Writes benchmarks/results/scan_batch.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from icsscan import data  # noqa: E402
from icsscan.runinfo import machine, now_iso, versions  # noqa: E402


def session(model: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model / "model.onnx"), options, providers=["CPUExecutionProvider"])


def pixels_for(sess, test: Path, every: int, limit: int) -> np.ndarray:
    meta = sess.get_modelmeta().custom_metadata_map
    width = int(meta["image_size"])
    size = (width, int(meta.get("image_height", 0)) or width)
    files = data.find_images(test)[::every][:limit]
    return data.to_channels(np.stack([data.decode_image(f, size) for f in files]), int(meta["channels"]))


def run_all(sess, px: np.ndarray, batch: int) -> tuple[float, np.ndarray, np.ndarray]:
    name = sess.get_inputs()[0].name
    start = time.perf_counter()
    outs = [sess.run(None, {name: px[i:i + batch]}) for i in range(0, len(px), batch)]
    rate = len(px) / (time.perf_counter() - start)
    return rate, np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=os.environ.get("ICSSCAN_DATA", str(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--sets", default="casting,deeppcb,magnetic_tile")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="8,4,2,1")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--images", type=int, default=96)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    rows, load_before = [], os.getloadavg()
    for name in args.sets.split(","):
        base = Path(args.data_root) / "industrial" / name
        model = HERE / ".cache" / "industrial" / f"{name}-model"
        if not (model / "model.onnx").is_file():
            subprocess.run([sys.executable, "-m", "icsscan", "train", str(base / "train" / "good"), "--out", str(model),
                            "--seed", "0", "--force"], check=True, capture_output=True)
        for threads in (int(t) for t in args.threads.split(",")):
            sess = session(model, threads)
            px = pixels_for(sess, base / "test", 4, args.images)
            rates: dict[int, list[float]] = {b: [] for b in batches}
            reference, largest_diff = None, 0.0
            for _ in range(args.repeats):
                for b in batches:
                    rate, scores, maps = run_all(sess, px, b)
                    rates[b].append(rate)
                    if reference is None:
                        reference = (scores, maps)
                    largest_diff = max(largest_diff, float(np.abs(scores - reference[0]).max()),
                                       float(np.abs(maps - reference[1]).max()))
            row = {"set": name, "threads": threads, "images": len(px), "input": f"{px.shape[3]}x{px.shape[2]}",
                   "rates": {str(b): [round(r, 2) for r in v] for b, v in rates.items()},
                   "median": {str(b): round(float(np.median(v)), 2) for b, v in rates.items()},
                   "largest_difference": largest_diff}
            print(json.dumps(row), flush=True)
            rows.append(row)
    out = {"command": "python " + " ".join(sys.argv), "created": now_iso(), "machine": machine(),
           "versions": versions(), "load_before": load_before, "load_after": os.getloadavg(), "rows": rows}
    results = HERE / "results"
    (results / "scan_batch.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = ["# Images per onnxruntime call for local models on CPU (`benchmarks/scan_batch.py`)", "",
             f"Command: `{out['command']}` ({out['created']}); machine `{json.dumps(out['machine'])}`; load average "
             f"before/after {tuple(round(v, 2) for v in load_before)} / "
             f"{tuple(round(v, 2) for v in out['load_after'])}. The graph alone (decoded images, no overlays), "
             "onnxruntime intra-op threads as given, spinning off; batch sizes alternating; median of the runs.", "",
             "| set | input | threads | " + " | ".join(f"batch {b} img/s" for b in batches)
             + " | largest score/map difference between batch sizes |",
             "| --- | --- | ---: | " + " | ".join("---:" for _ in batches) + " | ---: |"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['input']} | {r['threads']} | "
                     + " | ".join(f"{r['median'][str(b)]:.1f}" for b in batches) + f" | {r['largest_difference']:.1e} |")
    lines += ["", "Every run's rate is in scan_batch.json. The scan decodes and keeps up to 8 images of a local model at "
              "a time (scan.LOCAL_MAX_BATCH) and runs them through onnxruntime in calls of scan.LOCAL_CPU_RUN_BATCH "
              "on CPU."]
    (results / "scan_batch.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
