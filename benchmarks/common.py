"""What every benchmark harness shares: where the data is, the thread count, the CLI timed as a user runs it,
an MVTec-layout set read as `evaluate` reads it, and results written with their command, machine and versions.

Harnesses (one per question a user asks; each `--help`s):
    industrial.py  quality on real inspection sets (default, plain kNN, rules overturned, LOSO, few-shot,
                   contamination, known defects, thresholds on small folders, seeds)
    table1.py      quality on the paper's whole-object tasks (Table 1: MNIST, Fashion-MNIST, CIFAR-10)
    speed.py       train, scan, scan --maps, evaluate: seconds and images/s, in one run on one machine
    scale.py       memory against folder size (scan, train) and the Ray engine
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from icsscan.runinfo import machine, now_iso, versions  # noqa: E402

RESULTS = HERE / "results"
CACHE = HERE / ".cache"


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser with the options every harness takes: --data-root, --threads, --seed."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=Path(os.environ.get(
        "ICSSCAN_DATA", str(HERE.parent.parent / "shared" / "data"))), help="benchmark data (or $ICSSCAN_DATA)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch / onnxruntime threads per process (on a busy 2-core box 2 can be 5x slower than 1)")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def use_threads(n: int) -> None:
    """Fix the thread count of this process and of the CLI processes it starts (benchmarks say which)."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)


def confine(threads: int) -> list[int]:
    """Limit this process and the CLI processes it starts to `threads` cores (onnxruntime sizes its thread pool by
    the cores it may use and ignores OMP_NUM_THREADS); the cores kept. On a busy box a confined process cannot move
    off a busy core: measure speed on a quiet one."""
    cores = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cores)
    return cores


def run_info(threads: int | None = None, **config) -> dict:
    """What every results file records: the command, when, machine, versions, thread count, load, config."""
    return {"command": " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
            "finished": now_iso(), "machine": machine(), "versions": versions(), "threads": threads,
            "load_1min": os.getloadavg()[0], "config": config}


def md_header(title: str, info: dict) -> list[str]:
    """The opening lines of a Markdown results file: title, command, date, machine, versions, threads, load."""
    return [f"# {title}", "",
            f"Command: `{info['command']}`  ",
            f"Finished {info['finished']}; torch threads {info['threads']}; 1-min load {info['load_1min']:.1f}; "
            f"machine `{json.dumps(info['machine'])}`  ",
            f"Versions: `{json.dumps(info['versions'])}`", ""]


# ------------------------------------------------------------------------------------------------ the data

def suite(root: Path) -> list[str]:
    """Every set under ROOT/industrial/ with MVTec AD's layout: a set added there joins the suite."""
    return sorted(p.name for p in (root / "industrial").iterdir() if (p / "train" / "good").is_dir())


def train_paths(base: Path) -> list[str]:
    from icsscan.data import find_images

    return [str(p) for p in find_images(base / "train" / "good")]


def test_items(base: Path) -> tuple[list[str], np.ndarray]:
    """Paths and labels (good 0, any defect class 1) of a set's test folder, through evaluate's own reader."""
    from icsscan.labels import folder_items

    items = folder_items(base / "test")
    return [i.path for i in items], np.array([i.label for i in items])


def auroc(labels, scores) -> float:
    """Image AUROC through the library's own metrics (what `icsscan evaluate` reports)."""
    from icsscan.metrics import image_metrics

    return image_metrics(np.asarray(labels), np.asarray(scores))["auroc"]


def library_scores(det, paths: list[str]) -> np.ndarray:
    """A fitted detector's scores of `paths` (NaN for an unreadable file, which the suites do not have)."""
    return np.asarray(det.score_samples(paths), dtype=float)


# ------------------------------------------------------------------------------------------------ the CLI

def cli(*args: str, env: dict | None = None) -> float:
    """Run `python -m icsscan ARGS` as a user would; its wall seconds. A failure stops the benchmark with stderr."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "icsscan", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if done.returncode:
        sys.exit(f"icsscan {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - t


# ------------------------------------------------------------------------------------------------ results

def read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


@contextlib.contextmanager
def locked(name: str):
    """An exclusive lock for a results file's read-modify-write: runs on different sets may go in parallel."""
    import fcntl

    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as handle:  # under benchmarks/.cache: ignored by git
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def replace_rows(path: Path, columns: list[str], new: list[dict], mine) -> list[dict]:
    """Write `new` into the CSV at `path` in place of the earlier rows for which mine(row) holds; all rows."""
    with locked(path.stem):
        rows = [r for r in read_csv(path) if not mine(r)] + new
        write_csv(path, rows, columns)
    return rows


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def fmt(value, digits: int = 4) -> str:
    if value in (None, "") or (isinstance(value, float) and np.isnan(value)):
        return "–"
    try:
        return f"{float(value):.{digits}f}"
    except ValueError:
        return str(value)
