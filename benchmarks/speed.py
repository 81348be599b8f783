"""How fast? `icsscan train`, `scan`, `scan --maps` and `evaluate` measured in one run on one machine, each as its
own CLI process (what a user runs), at a fixed thread count.

    nice -n 19 python benchmarks/speed.py [--set casting] [--repeats 2] [--parts local,mnist] [--variants graph]
                                          [--limit N] [--mnist-limit N] [--model DIR] [--threads 1]

local  the patch model on an inspection set (DATA_ROOT/industrial/SET): `icsscan train SET/train/good` (wall s; into
       benchmarks/.cache/speed/, skipped with --model), then `scan`, `scan --maps` and `evaluate` of SET/test,
       alternating, --repeats times. images/s = images / median wall s, end to end (interpreter start and model
       load included); the scan's own rate (summary.json, without them) beside it; evaluate's AUROC.
mnist  the whole-object model: `icsscan train` on MNIST digit 0's training images written as PNGs (5,923), then
       `icsscan scan --no-html` of the test PNGs (10,000), --repeats times: train s, images/s, AUROC (anomaly = any
       other digit). The old mnist0_cli.py's question, same commands.
--variants graph
       inside this process, the local model's decode alone and its onnxruntime graph alone at 8, 4, 2, 1 images per
       call (what scan_batch.py and scan_speed.py asked: which of decoding and inference bounds a scan, and the
       calls' size behind scan.LOCAL_CPU_RUN_BATCH = 2); the largest score difference between call sizes.

Threads: OMP_NUM_THREADS = --threads, and this process and every CLI process it starts are confined to --threads
cores (sched_setaffinity, inherited): onnxruntime sizes its pool by the cores and ignores OMP_NUM_THREADS.
--limit N / --mnist-limit N cut the image counts for a quick run (--limit: N training images and N test images
spread evenly over the test classes). Writes RESULTS/speed.{json,md}.

Settled by the scripts this one replaced (numbers: results/history/NOTES-speed-scale.md): onnxruntime beats PyTorch
eager on the same graph (1.71x); onnxruntime threads must not spin (1.6-2.2x on a loaded box); decoding costs a
tenth of inference per image, so a scan is inference-bound; the `paper` preset trains for hours, `default` minutes.
"""
from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from common import (CACHE, HERE, RESULTS, auroc, cli, confine, fmt, md_header, parser, run_info, test_items,
                    train_paths, use_threads, write_json)

LOCAL_STEPS = {"scan": ["scan"], "scan --maps": ["scan", "--maps"], "evaluate": ["evaluate"]}
CALL_SIZES = (8, 4, 2, 1)



def link(src: str | Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(Path(src).resolve())


def spread(n_items: int, limit: int | None) -> list[int]:
    """Indices of `limit` items spread evenly over `n_items` (all without a limit): both test classes stay in."""
    if not limit or limit >= n_items:
        return list(range(n_items))
    return sorted(set(np.linspace(0, n_items - 1, limit).round().astype(int).tolist()))


def local_folders(base: Path, limit: int | None, tmp: Path) -> tuple[Path, Path]:
    """SET/train/good and SET (holding test/), or with --limit links to a subset in the same layout."""
    if not limit:
        return base / "train" / "good", base
    for path in train_paths(base)[:limit]:
        link(path, tmp / "train" / "good" / Path(path).name)
    paths, _ = test_items(base)
    for k in spread(len(paths), limit):
        link(paths[k], tmp / "test" / Path(paths[k]).relative_to(base / "test"))
    return tmp / "train" / "good", tmp


def median_row(part: str, step: str, images: int, runs: list[float], own: list[float] | None = None, **extra) -> dict:
    median = statistics.median(runs)
    return {"part": part, "step": step, "images": images, "runs_s": [round(r, 2) for r in runs],
            "median_s": round(median, 2), "images_per_s": round(images / median, 2),
            "own_images_per_s": round(statistics.median(own), 2) if own else None, **extra}


def train_row(part: str, train_dir: Path, model: Path, seed: int, *options: str) -> dict:
    """`icsscan train` once (it is the long step): wall seconds, and the images per second it got through."""
    from icsscan.data import find_images

    seconds = cli("train", str(train_dir), "--out", str(model), "--seed", str(seed), "--force", *options)
    print(f"{part} train: {seconds:.1f} s", flush=True)
    return median_row(part, "train", len(find_images(train_dir)), [seconds], model=str(model))


def local_model(args, train_dir: Path) -> tuple[list[dict], Path]:
    """--model, or the default trained here (its train row): a fresh model, so no stale cache is timed."""
    if args.model:
        return [], args.model
    model = CACHE / "speed" / (f"{args.set}-model" + (f"-limit{args.limit}" if args.limit else ""))
    return [train_row("local", train_dir, model, args.seed)], model


def local_steps(model: Path, test_base: Path, repeats: int, tmp: Path) -> list[dict]:
    """scan, scan --maps and evaluate of TEST_BASE/test, alternating, so a change in load hits each alike."""
    test = test_base / "test"
    runs, own, auc = {step: [] for step in LOCAL_STEPS}, {step: [] for step in LOCAL_STEPS}, None
    for r in range(repeats):
        for step, (verb, *flags) in LOCAL_STEPS.items():
            out = tmp / f"{verb}{len(flags)}-{r}"
            runs[step].append(cli(verb, str(test), "--model", str(model), "--out", str(out), *flags))
            report = json.loads((out / ("metrics.json" if verb == "evaluate" else "summary.json")).read_text())
            own[step].append(report["timings"]["images_per_s"])
            auc = report["image"]["auroc"] if verb == "evaluate" else auc
            print(f"local {step}: {runs[step][-1]:.1f} s", flush=True)
    images = len(test_items(test_base)[0])
    return [median_row("local", step, images, runs[step], own[step], auroc=auc if step == "evaluate" else None)
            for step in LOCAL_STEPS]


def mnist_folders(root: Path, digit: int, limit: int | None, tmp: Path) -> tuple[Path, Path, dict[str, int]]:
    """The digit's training images and the test set as PNG files; each test file's label (1 = another digit)."""
    from PIL import Image
    from torchvision.datasets import MNIST

    train, test = (MNIST(str(root), train=flag, download=False) for flag in (True, False))
    good, scan = tmp / "good", tmp / "test"
    good.mkdir(parents=True)
    scan.mkdir()
    for i, pixels in enumerate(train.data[train.targets == digit].numpy()[:limit]):
        Image.fromarray(pixels).save(good / f"{i:05d}.png")
    labels = {}
    for i, (pixels, y) in enumerate(zip(test.data.numpy()[:limit], test.targets.numpy()[:limit])):
        Image.fromarray(pixels).save(scan / f"{i:05d}.png")
        labels[f"{i:05d}.png"] = int(y != digit)
    return good, scan, labels


def scan_auroc(report: Path, labels: dict[str, int]) -> float:
    with open(report / "scores.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return auroc([labels[Path(r["path"]).name] for r in rows], [float(r["score"]) for r in rows])


def mnist_part(args, tmp: Path) -> list[dict]:
    good, test, labels = mnist_folders(args.data_root, args.digit, args.mnist_limit, tmp / "mnist")
    model = tmp / "mnist" / "model"
    rows = [train_row("mnist", good, model, args.seed, "--preset", "default")]
    runs, own = [], []
    for r in range(args.repeats):
        out = tmp / f"mnist-scan-{r}"
        runs.append(cli("scan", str(test), "--model", str(model), "--out", str(out), "--no-html"))
        own.append(json.loads((out / "summary.json").read_text())["timings"]["images_per_s"])
        print(f"mnist scan: {runs[-1]:.1f} s", flush=True)
    return rows + [median_row("mnist", "scan --no-html", len(labels), runs, own, auroc=scan_auroc(out, labels))]


def rate(fn, images: int) -> float:
    start = time.perf_counter()
    fn()
    return images / (time.perf_counter() - start)


def graph_variant(model: Path, test: Path, threads: int, repeats: int, images: int = 64) -> list[dict]:
    """Decode alone, then the graph alone on those decoded images at each call size (alternating)."""
    from icsscan import data
    from icsscan.scan import load_model

    m = load_model(model, device="cpu", threads=threads)
    files = data.find_images(test)
    files = [files[k] for k in spread(len(files), images)]
    decoded = []
    decode = rate(lambda: decoded.extend(data.decode_image(f, m.decode_size) for f in files), len(files))
    pixels = data.to_channels(np.stack(decoded), m.channels)
    name = m.session.get_inputs()[0].name

    def run(size: int) -> np.ndarray:
        return np.concatenate([m.session.run(None, {name: pixels[i:i + size]})[0].reshape(-1)
                               for i in range(0, len(pixels), size)])

    rates, scores = {s: [] for s in CALL_SIZES}, {s: run(s) for s in CALL_SIZES}  # the first pass warms up too
    for _ in range(repeats):
        for size in CALL_SIZES:
            rates[size].append(rate(lambda: run(size), len(pixels)))
    diff = max(float(np.abs(scores[s] - scores[CALL_SIZES[0]]).max()) for s in CALL_SIZES)
    rows = [{"part": "graph", "step": "decode only, 1 thread", "images": len(files), "images_per_s": round(decode, 2)}]
    return rows + [{"part": "graph", "step": f"graph alone, {s} per call", "images": len(files),
                    "images_per_s": round(statistics.median(rates[s]), 2),
                    "runs_images_per_s": [round(x, 2) for x in rates[s]], "largest_score_difference": diff}
                   for s in CALL_SIZES]


def test_suite_rows(repeats: int) -> list[dict]:
    """`make test` (what CI runs) and `make test-fast`, alternating, on every core of the box (not confined): the wall
    seconds of each run, the slowest kept (the budget's reading), pytest's last line and the load before it."""
    rows = [{"part": "tests", "step": f"make {t}", "runs_s": [], "load_before": []} for t in ("test", "test-fast")]
    for _ in range(repeats):
        for r in rows:
            r["load_before"].append(round(os.getloadavg()[0], 1))
            t = time.perf_counter()
            done = subprocess.run(r["step"].split(), cwd=HERE.parent, capture_output=True, text=True)
            r["runs_s"].append(round(time.perf_counter() - t, 1))
            tail = done.stdout.strip().splitlines()
            r["outcome"] = tail[-1] if tail else f"exit {done.returncode}"
    return [{**r, "slowest_s": max(r["runs_s"])} for r in rows]


def write_test_md(path: Path, info: dict, rows: list[dict]) -> None:
    lines = md_header("How long the tests take (`benchmarks/speed.py --parts tests`)", info) + [
        "Budget (issue 46): `make test` ≤ 6 min, `make test-fast` ≤ 2 min on 2 cores, the slowest run counting. "
        "Each run is the Makefile target as a user or CI runs it (the venv already installed).", "",
        "| command | runs (s) | slowest (s) | 1-min load before each | pytest's last line |",
        "| --- | --- | ---: | --- | --- |"]
    lines += [f"| `{r['step']}` | {' / '.join(f'{x:.0f}' for x in r['runs_s'])} | {r['slowest_s']:.0f} | "
              f"{' / '.join(str(x) for x in r['load_before'])} | {r['outcome']} |" for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_md(path: Path, info: dict, rows: list[dict]) -> None:
    cfg = info["config"]
    lines = md_header("How fast: train, scan, scan --maps, evaluate (`benchmarks/speed.py`)", info) + [
        f"Each step is its own `python -m icsscan` process, confined to {len(cfg['cores'])} core(s) "
        f"(cores {cfg['cores']}) with OMP_NUM_THREADS={info['threads']}; steps alternate, {cfg['repeats']} run(s) "
        "each, the median kept. images/s end to end includes starting Python and loading the model; 'own' is the "
        "rate the command reports itself (summary.json / metrics.json). Rows of part `graph` run inside this "
        "process on decoded images (onnxruntime intra-op threads = --threads).", "",
        "| part | step | images | runs (s) | median s | images/s end to end | images/s own | AUROC |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        runs = " / ".join(f"{x:.1f}" for x in r.get("runs_s", []))
        lines.append(f"| {r['part']} | `{r['step']}` | {r['images']} | {runs or '–'} | {fmt(r.get('median_s'), 1)} | "
                     f"{fmt(r['images_per_s'], 1)} | {fmt(r.get('own_images_per_s'), 1)} | {fmt(r.get('auroc'))} |")
    diffs = [r["largest_score_difference"] for r in rows if "largest_score_difference" in r]
    if diffs:
        lines += ["", f"Largest score difference between call sizes: {max(diffs):.1e}."]
    parts = {r["part"] for r in rows}
    if parts & {"local", "graph"}:
        lines += ["", f"Local set `{cfg['set']}`" + (f" cut to {cfg['limit']} train / test images" if cfg["limit"]
                                                    else "") + f"; model `{cfg['model']}`."]
    if "mnist" in parts:
        lines += ["", f"MNIST digit {cfg['digit']}" + (f" cut to {cfg['mnist_limit']} train / test images"
                                                      if cfg["mnist_limit"] else "") + ", default preset."]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--set", default="casting", help="inspection set under DATA_ROOT/industrial (local part)")
    ap.add_argument("--parts", default="local,mnist",
                    help="comma list of local, mnist; or tests (alone: the test suite's wall time, test_time.md)")
    ap.add_argument("--variants", default="", help="graph: decode alone and the graph alone per call size")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each scan / evaluate step (train runs once)")
    ap.add_argument("--limit", type=int, default=None, help="local: N training and N test images (quick run)")
    ap.add_argument("--mnist-limit", type=int, default=None, help="mnist: N training and N test images (quick run)")
    ap.add_argument("--digit", type=int, default=0)
    ap.add_argument("--model", type=Path, default=None, help="local model to scan (default: train one)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.parts == "tests":
        rows = test_suite_rows(args.repeats)
        info = run_info(None, repeats=args.repeats, cpu_count=os.cpu_count())
        write_json(args.results / "test_time.json", {**info, "rows": rows})
        write_test_md(args.results / "test_time.md", info, rows)
        print((args.results / "test_time.md").read_text())
        return
    use_threads(args.threads)
    cores = confine(args.threads)
    parts, rows = args.parts.split(","), []
    with tempfile.TemporaryDirectory(prefix="icsscan-speed-") as tmp:
        tmp, model = Path(tmp), args.model
        if "local" in parts or "graph" in args.variants:
            train_dir, test_base = local_folders(args.data_root / "industrial" / args.set, args.limit, tmp / "local")
            train, model = local_model(args, train_dir)
            rows += train
        if "local" in parts:
            rows += local_steps(model, test_base, args.repeats, tmp)
        if "graph" in args.variants:
            rows += graph_variant(model, test_base / "test", args.threads, args.repeats)
        if "mnist" in parts:
            rows += mnist_part(args, tmp)
    info = run_info(args.threads, set=args.set, limit=args.limit, mnist_limit=args.mnist_limit, digit=args.digit,
                    repeats=args.repeats, parts=args.parts, variants=args.variants, model=str(model), cores=cores,
                    seed=args.seed)
    write_json(args.results / "speed.json", {**info, "rows": rows})
    write_md(args.results / "speed.md", info, rows)
    print((args.results / "speed.md").read_text())


if __name__ == "__main__":
    main()
