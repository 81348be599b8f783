"""Peak memory and time of `icsscan train` (local model) against the number of training images.

    python benchmarks/local_train_memory.py [--source DIR] [--counts 1000,5000]

Builds folders of N JPEGs from the images of SOURCE (default: the casting set's train/good; beyond its own
count, rotated and mirrored copies, so every file is a distinct real image of the same size), runs
`icsscan train` on each in a fresh process and records its peak RSS (the child's ru_maxrss) and wall time.
The bank (2,048 patches by default; 4,096 before 2026-12-02) and the patch candidates (100,000) are fixed in
size; what grows with N is the decoded training set itself (uint8, N × H × W × 3). Writes benchmarks/results/local_train_memory.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from icsscan.runinfo import machine, now_iso, versions  # noqa: E402

CHILD = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
         "sys.stderr.write(r.stderr[-2000:]); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
         "sys.exit(r.returncode)")


def build_folder(source: list[Path], n: int, out: Path) -> None:
    from PIL import Image

    out.mkdir(parents=True)
    ops = [None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270,
           Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM]
    for k in range(n):
        op, src = ops[(k // len(source)) % len(ops)], source[k % len(source)]
        with Image.open(src) as im:
            (im if op is None else im.transpose(op)).convert("L").save(out / f"{k:05d}.jpg", quality=92)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data_root = os.environ.get("ICSSCAN_DATA", str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--source", default=str(Path(data_root) / "industrial" / "casting" / "train" / "good"))
    ap.add_argument("--counts", default="1000,5000")
    args = ap.parse_args()
    from icsscan.data import find_images

    source = find_images(args.source)
    if not source:
        sys.exit(f"{args.source}: no images (set --source or ICSSCAN_DATA)")
    rows, started = [], now_iso()
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(c) for c in args.counts.split(",")):
            folder = Path(tmp) / f"train{n}"
            build_folder(source, n, folder)
            cmd = [sys.executable, "-m", "icsscan", "train", str(folder), "--out", str(Path(tmp) / f"model{n}")]
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", CHILD, *cmd], capture_output=True, text=True)
            wall = time.perf_counter() - t
            if proc.returncode:
                sys.exit(f"train on {n} images failed: {proc.stderr[-1000:]}")
            cfg = json.loads((Path(tmp) / f"model{n}" / "config.json").read_text())
            rows.append({"images": n, "peak_rss_mib": round(int(proc.stdout.split()[-1]) / 1024, 1),
                         "wall_s": round(wall, 1), "input": f"{cfg['config']['image_size']}x{cfg['config']['image_height']}",
                         "bank_rows": cfg["local"]["bank_rows"], "timings": cfg.get("timings")})
            print(json.dumps(rows[-1]), flush=True)
            for f in folder.iterdir():
                f.unlink()
    out = {"command": " ".join(sys.argv), "started": started, "finished": now_iso(), "machine": machine(),
           "versions": versions(), "torch_threads": "default (all cores)", "source": args.source, "rows": rows}
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "local_train_memory.json").write_text(json.dumps(out, indent=1), encoding="utf-8")
    lines = ["# Peak memory of `icsscan train` (local model) vs training images", "",
             f"Command: `{out['command']}`; {started} → {out['finished']}; machine `{json.dumps(machine())}`", "",
             "| training images | input | bank rows | peak RSS MiB | wall s (train incl. export) |",
             "| ---: | --- | ---: | ---: | ---: |"]
    lines += [f"| {r['images']} | {r['input']} | {r['bank_rows']} | {r['peak_rss_mib']} | {r['wall_s']} |" for r in rows]
    (results / "local_train_memory.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
