"""`icsscan evaluate` against `icsscan scan --maps` on the same labelled folder and model (issue 30's target:
evaluate no slower than scan --maps + 20 %), and scan's own speed with and without maps.

    python benchmarks/evaluate_speed.py [--data-root ../shared/data] [--set casting] [--model DIR] [--repeats 2]

Each command runs as its own CLI process (what a user or CI job runs), `--repeats` times in alternation; the
table keeps every run and the median. Without `--model` the default is trained first (`icsscan train SET/train/good`,
kept in benchmarks/.cache/evaluate_speed/). Threads: whatever the CLI uses on this machine (torch and onnxruntime
defaults); the machine's load during the run is recorded (os.getloadavg). Writes
benchmarks/results/evaluate_speed.{json,md}.
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

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from icsscan.runinfo import machine, now_iso, versions  # noqa: E402


def timed(*args: str) -> float:
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "icsscan", *args], capture_output=True, text=True)
    if done.returncode not in (0, 1):  # evaluate without gates exits 0; 1 would be a missed gate
        sys.exit(f"icsscan {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()[-1500:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=os.environ.get("ICSSCAN_DATA", str(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--set", default="casting")
    ap.add_argument("--model", default=None)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    base = Path(args.data_root) / "industrial" / args.set
    model = Path(args.model) if args.model else HERE / ".cache" / "evaluate_speed" / f"{args.set}-model"
    if not args.model:
        timed("train", str(base / "train" / "good"), "--out", str(model), "--seed", "0", "--force")
    test = base / "test"
    n_images = sum(1 for p in test.rglob("*") if p.is_file())
    commands = {
        "scan": ["scan", str(test), "--model", str(model), "--force"],
        "scan --maps": ["scan", str(test), "--model", str(model), "--maps", "--force"],
        "scan --maps --map-format png": ["scan", str(test), "--model", str(model), "--maps", "--map-format", "png",
                                         "--force"],
        "evaluate": ["evaluate", str(test), "--model", str(model)],
    }
    runs: dict[str, list[float]] = {k: [] for k in commands}
    own: dict[str, list[float]] = {k: [] for k in commands if k.startswith("scan")}  # summary.json's images/s
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, cmd in commands.items():
                out = Path(tmp) / f"{name.replace(' ', '').replace('-', '')}-{r}"
                runs[name].append(timed(*cmd, "--out", str(out)))
                if name in own:  # the scan's own rate: decoding, inference, maps and overlays, no process start
                    own[name].append(json.loads((out / "summary.json").read_text())["timings"]["images_per_s"])
                print(name, round(runs[name][-1], 1), flush=True)
    median = {k: float(np.median(v)) for k, v in runs.items()}
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "finished": now_iso(),
              "machine": machine(), "versions": versions(), "load_before": load_before, "load_after": os.getloadavg(),
              "set": args.set, "images": n_images, "model": str(model), "runs_s": runs, "median_s": median,
              "images_per_s": {k: n_images / v for k, v in median.items()},
              "scan_own_images_per_s": own,
              "evaluate_over_scan_maps": median["evaluate"] / median["scan --maps"] - 1}
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "evaluate_speed.json").write_text(json.dumps(result, indent=2))
    lines = ["# `icsscan evaluate` vs `icsscan scan --maps` (`benchmarks/evaluate_speed.py`)", "",
             f"Command: `python benchmarks/{result['command']}` ({result['finished']}); set `{args.set}/test` "
             f"({n_images} images); machine `{json.dumps(result['machine'])}`; load average before/after "
             f"{tuple(round(x, 2) for x in load_before)} / {tuple(round(x, 2) for x in result['load_after'])}; each "
             "command a CLI process with its default threads, runs alternating.", "",
             "| command | runs (s) | median s | images/s | images/s as the scan reports it (summary.json) |",
             "| --- | --- | ---: | ---: | --- |"]
    for k, v in runs.items():
        reported = " / ".join(f"{x:.1f}" for x in own[k]) if k in own else "–"
        lines.append(f"| `icsscan {k}` | {' / '.join(f'{x:.1f}' for x in v)} | {median[k]:.1f} | "
                     f"{n_images / median[k]:.1f} | {reported} |")
    lines += ["", f"evaluate takes {100 * result['evaluate_over_scan_maps']:+.1f} % of scan --maps' time (target: "
              "at most +20 %). Times include starting Python and loading the model (~2-3 s per process); the "
              "scan's own rate does not. scan --maps writes JPEG overlays by default, PNG with --map-format png."]
    (results / "evaluate_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
