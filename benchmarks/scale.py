"""How big? Peak memory of `icsscan scan` against folder size, peak memory and time of `icsscan train` against
training images, and the local engine against `--engine ray`, each as its own CLI process.

    nice -n 19 python benchmarks/scale.py [--parts scan,train,ray] [--scan-counts 100,10000,50000,100000]
                                          [--train-counts 1000,5000] [--ray-files 20000] [--model DIR] [--threads 1]

scan   folders of N real 32x32 JPEGs (symlinks to CIFAR10-jpeg train, then test; past their 60,000 the same files
       again under new names), each scanned once by `icsscan scan` with its defaults. Peak RSS = the process's
       ru_maxrss (os.wait4: exact, no polling). Acceptance (issue 16): the peak at the largest folder ≤ 1.2 × the
       peak at 10,000 files; the 100-file scan is the fixed cost (interpreter, onnxruntime, model).
train  `icsscan train` (local default) on N casting images: train/good itself, then rotated and mirrored copies
       (distinct real images of the same size): peak RSS and wall s. What grows with N is the decoded set.
ray    one folder of --ray-files of those JPEGs scanned by `icsscan scan` and by `icsscan scan --engine ray` (a
       local Ray the CLI starts): wall s, images/s (end to end and the scan's own), and whether both wrote the same
       scores. On one small machine Ray only adds overhead; its point is many machines (docs/ray.md).

The whole-object model of `scan` and `ray` is --model, or `icsscan train --backbone B` on 500 CIFAR-10 test
airplanes (kept in benchmarks/.cache/scale/): B = auto is the default a user gets; B = small (the from-scratch recipe
of the deleted scan_memory.py) scans ~3x faster for a quick answer to the same question, at a smaller fixed cost.
Threads as in speed.py: OMP_NUM_THREADS = --threads and every process confined to --threads cores.
Writes RESULTS/scale.{json,md}.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (CACHE, RESULTS, cli, confine, fmt, md_header, parser, run_info, train_paths, use_threads,
                    write_json)

# The CLI is started from this small launcher, not from the harness: a child's ru_maxrss also counts what its parent
# held between fork and exec, and the harness holds torch.
LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = child.stderr.read()
_, status, usage = os.wait4(child.pid, 0)
print(json.dumps({"exit": os.waitstatus_to_exitcode(status), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
                  "wall_s": round(time.perf_counter() - start, 2), "stderr": err.decode(errors="replace")[-2000:]}))
"""
PER_FOLDER = 1000  # files per sub-folder, as a camera dump would be split



def measured(*args: str) -> dict:
    """`python -m icsscan ARGS` under the launcher: exit, peak RSS (MiB), wall s. A failure stops the benchmark."""
    done = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, "-m", "icsscan", *args],
                          capture_output=True, text=True, check=True)
    usage = json.loads(done.stdout)
    if usage["exit"]:
        sys.exit(f"icsscan {' '.join(args)}: exit {usage['exit']}: {usage['stderr'].strip()}")
    return {k: usage[k] for k in ("peak_rss_mib", "wall_s")}


def cifar_jpegs(root: Path) -> list[Path]:
    base = root / "CIFAR10-jpeg"
    files = sorted(base.glob("train/*/*.jpg")) + sorted(base.glob("test/*/*.jpg"))
    if not files:
        sys.exit(f"{base}: no CIFAR-10 JPEGs (set --data-root or $ICSSCAN_DATA)")
    return files


def jpeg_folder(files: list[Path], n: int, folder: Path) -> Path:
    """N links to real JPEGs in sub-folders of PER_FOLDER; the list repeats under new names when N exceeds it."""
    for i in range(n):
        sub = folder / f"d{i // PER_FOLDER:03d}"
        if i % PER_FOLDER == 0:
            sub.mkdir(parents=True)
        (sub / f"{i:06d}.jpg").symlink_to(files[i % len(files)])
    return folder


def whole_object_model(args, files: list[Path], tmp: Path) -> Path:
    """--model, or one trained on the first 500 CIFAR-10 test airplanes with --backbone (cached)."""
    if args.model:
        return args.model
    model = CACHE / "scale" / f"cifar-airplane-{args.backbone}-model"
    if not (model / "model.onnx").is_file():
        planes = [f for f in files if f.parent.name == "airplane" and f.parent.parent.name == "test"][:500]
        good = tmp / "airplanes"
        good.mkdir()
        for f in planes:
            (good / f.name).symlink_to(f)
        short = ["--iterations", "50"] if args.backbone == "small" else []  # as scan_memory.py: memory ignores them
        cli("train", str(good), "--out", str(model), "--seed", str(args.seed), "--backbone", args.backbone, *short,
            "--force")
    return model


def scan_rows(args, files: list[Path], model: Path, tmp: Path) -> list[dict]:
    rows = []
    for n in args.scan_counts:
        folder = jpeg_folder(files, n, tmp / f"scan{n}")
        report = tmp / f"report{n}"
        run = measured("scan", str(folder), "--model", str(model), "--out", str(report))
        summary = json.loads((report / "summary.json").read_text())
        rows.append({"part": "scan", "n": n, **run, "images_per_s": summary["timings"]["images_per_s"],
                     "rows": summary["counts"]["rows"]})
        print(f"scan {n}: {run['peak_rss_mib']} MiB, {run['wall_s']} s", flush=True)
        shutil.rmtree(folder)
        shutil.rmtree(report)
    return rows


def rss_ratio(rows: list[dict]) -> dict | None:
    """Peak at the largest folder over the peak at the smallest of at least 10,000 files (issue 16: ≤ 1.2)."""
    big = sorted((r for r in rows if r["part"] == "scan" and r["n"] >= 10_000), key=lambda r: r["n"])
    if len(big) < 2:
        return None
    a, b = big[0], big[-1]
    ratio = b["peak_rss_mib"] / a["peak_rss_mib"]
    return {"files": [a["n"], b["n"]], "ratio": round(ratio, 3), "limit": 1.2, "met": ratio <= 1.2,
            "bytes_per_extra_file": round((b["peak_rss_mib"] - a["peak_rss_mib"]) * 2**20 / (b["n"] - a["n"]), 1)}


def training_folder(source: list[str], n: int, folder: Path) -> None:
    """N distinct real images: links to SOURCE, then rotated and mirrored copies of it (JPEG, its mode)."""
    from PIL import Image

    turns = [Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270,
             Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM]
    if n > len(source) * (len(turns) + 1):
        sys.exit(f"--train-counts {n}: at most {len(source) * (len(turns) + 1)} distinct images from {len(source)}")
    folder.mkdir(parents=True)
    for k in range(n):
        src = Path(source[k % len(source)])
        if k < len(source):
            (folder / src.name).symlink_to(src.resolve())
            continue
        with Image.open(src) as im:
            im.transpose(turns[k // len(source) - 1]).save(folder / f"{k:05d}-{src.stem}.jpg", quality=92)


def train_rows(args, tmp: Path) -> list[dict]:
    source = train_paths(args.data_root / "industrial" / args.train_set)
    rows = []
    for n in args.train_counts:
        folder, model = tmp / f"train{n}", tmp / f"model{n}"
        training_folder(source, n, folder)
        run = measured("train", str(folder), "--out", str(model), "--seed", str(args.seed))
        cfg = json.loads((model / "config.json").read_text())
        width = cfg["config"].get("image_size")
        size = f"{width}x{cfg['config'].get('image_height') or width}"
        rows.append({"part": "train", "n": n, **run, "input": size, "bank_rows": cfg.get("local", {}).get("bank_rows")})
        print(f"train {n}: {run['peak_rss_mib']} MiB, {run['wall_s']} s", flush=True)
        shutil.rmtree(folder)
        shutil.rmtree(model)
    return rows


def scores(report: Path) -> dict[str, float]:
    with open(report / "scores.csv", newline="", encoding="utf-8") as f:
        return {r["path"]: float(r["score"]) for r in csv.DictReader(f) if r["score"]}


def ray_rows(args, files: list[Path], model: Path, tmp: Path) -> list[dict]:
    """The same folder through both engines; Ray's files stay in TMP (RAY_TMPDIR), not in /tmp/ray."""
    folder, rows, found = jpeg_folder(files, args.ray_files, tmp / "ray-folder"), [], {}
    for engine in ("local", "ray"):
        out = tmp / f"report-{engine}"
        wall = cli("scan", str(folder), "--model", str(model), "--out", str(out), "--engine", engine,
                   env={"RAY_TMPDIR": str(tmp)})
        own = json.loads((out / "summary.json").read_text())["timings"]["images_per_s"]
        found[engine] = scores(out)
        rows.append({"part": "ray", "n": args.ray_files, "engine": engine, "wall_s": round(wall, 2),
                     "images_per_s_end_to_end": round(args.ray_files / wall, 1), "images_per_s": own})
        print(f"{engine}: {wall:.1f} s", flush=True)
    local, ray = found["local"], found["ray"]
    same = local.keys() == ray.keys()
    rows[-1]["same_rows"] = same
    rows[-1]["largest_score_difference"] = max((abs(local[p] - ray[p]) for p in local), default=0.0) if same else None
    return rows


def md_table(columns: list[str], cells: list[list]) -> list[str]:
    """A Markdown table; every column but the first right-aligned (numbers)."""
    return [f"| {' | '.join(columns)} |", "| --- |" + " ---: |" * (len(columns) - 1),
            *(f"| {' | '.join(str(c) for c in row)} |" for row in cells), ""]


def ratio_line(ratio: dict | None) -> str:
    if not ratio:
        return "Ratio: needs two folders of ≥ 10,000 files."
    verdict = "met" if ratio["met"] else "NOT met"
    return (f"Peak at {ratio['files'][1]:,} files = **{ratio['ratio']} ×** the peak at {ratio['files'][0]:,} "
            f"({ratio['bytes_per_extra_file']} bytes per extra file; limit 1.2: {verdict}).")


def write_md(path: Path, info: dict, rows: list[dict], ratio: dict | None) -> None:
    cfg = info["config"]
    lines = md_header("How big: memory against folder size, train against images, Ray (`benchmarks/scale.py`)", info)
    lines += [f"Every command its own `python -m icsscan` process, confined to {len(cfg['cores'])} core(s) with "
              f"OMP_NUM_THREADS={info['threads']}, run once.", ""]
    scan, train, ray = ([r for r in rows if r["part"] == p] for p in ("scan", "train", "ray"))
    if scan:
        lines += [f"`icsscan scan` of N linked CIFAR-10 JPEGs (32x32), model `{cfg['model']}`:", ""]
        lines += md_table(["files", "rows", "peak RSS MiB", "wall s", "images/s (the scan's own)"],
                          [[f"{r['n']:,}", f"{r['rows']:,}", fmt(r["peak_rss_mib"], 1), fmt(r["wall_s"], 1),
                            fmt(r["images_per_s"], 1)] for r in scan])
        lines += [ratio_line(ratio), ""]
    if train:
        lines += [f"`icsscan train` (local default) on N `{cfg['train_set']}` images (beyond train/good: rotated and "
                  "mirrored copies):", ""]
        lines += md_table(["training images", "input", "bank rows", "peak RSS MiB", "wall s"],
                          [[f"{r['n']:,}", r["input"], fmt(r["bank_rows"], 0), fmt(r["peak_rss_mib"], 1),
                            fmt(r["wall_s"], 1)] for r in train])
    if ray:
        diff = ray[-1]["largest_score_difference"]
        lines += [f"`icsscan scan` of {ray[0]['n']:,} linked CIFAR-10 JPEGs, local engine vs `--engine ray` (a local "
                  "Ray started by the CLI; wall includes starting and stopping it):", ""]
        lines += md_table(["engine", "wall s", "images/s end to end", "images/s (the scan's own)"],
                          [[r["engine"], fmt(r["wall_s"], 1), fmt(r["images_per_s_end_to_end"], 1),
                            fmt(r["images_per_s"], 1)] for r in ray])
        lines += [f"Same rows from both engines: {ray[-1]['same_rows']}; largest score difference "
                  f"{'–' if diff is None else f'{diff:.1e}'}.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def counts(text: str) -> list[int]:
    return [int(c) for c in text.split(",") if c.strip()]


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--parts", default="scan,train,ray", help="comma list of scan, train, ray")
    ap.add_argument("--scan-counts", type=counts, default=[100, 10_000, 50_000, 100_000])
    ap.add_argument("--train-counts", type=counts, default=[1000, 5000])
    ap.add_argument("--train-set", default="casting", help="inspection set under DATA_ROOT/industrial (train part)")
    ap.add_argument("--ray-files", type=int, default=20_000)
    ap.add_argument("--model", type=Path, default=None, help="whole-object model for scan and ray (default: train one)")
    ap.add_argument("--backbone", default="auto", help="of the model trained here: auto (the default a user gets: "
                    "pretrained embedding) or small (from scratch, ~3x faster scans, a smaller fixed cost)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    use_threads(args.threads)
    cores = confine(args.threads)
    parts, rows, model = args.parts.split(","), [], None
    if "ray" in parts and importlib.util.find_spec("ray") is None:
        sys.exit("--parts ray: Ray is not installed in this environment (pip install 'icsscan[ray]')")
    with tempfile.TemporaryDirectory(prefix="icsscan-scale-") as tmp:
        tmp = Path(tmp)
        if {"scan", "ray"} & set(parts):
            files = cifar_jpegs(args.data_root)
            model = whole_object_model(args, files, tmp)
        if "scan" in parts:
            rows += scan_rows(args, files, model, tmp)
        if "train" in parts:
            rows += train_rows(args, tmp)
        if "ray" in parts:
            rows += ray_rows(args, files, model, tmp)
    ratio = rss_ratio(rows)
    info = run_info(args.threads, parts=args.parts, scan_counts=args.scan_counts, train_counts=args.train_counts,
                    train_set=args.train_set, ray_files=args.ray_files, model=str(model), backbone=args.backbone,
                    cores=cores, seed=args.seed)
    write_json(args.results / "scale.json", {**info, "rows": rows, "scan_rss_ratio": ratio})
    write_md(args.results / "scale.md", info, rows, ratio)
    print((args.results / "scale.md").read_text())


if __name__ == "__main__":
    main()
