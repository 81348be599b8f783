"""Peak memory (RSS) of `icsscan scan` against folder size: does it stay flat from 10,000 to 100,000 files?

    nice -n 19 python benchmarks/scan_memory.py [--counts 100 10000 50000 100000] [--model DIR] [--workdir DIR]
    nice -n 19 python benchmarks/scan_memory.py --code ../other-checkout --stem scan_memory_before_fix

Acceptance (issue 16): peak RSS at 100,000 files ≤ 1.2 × at 10,000. `--code DIR` runs `python -m icsscan` from
another checkout of icsscan (same interpreter and packages) for a before/after comparison; `--stem` names the
result files.

Files: 28×28 grey PNGs, byte copies of the first 32 images of sample_data/good (distinct contents), written as
real files into sub-folders of 1,000 under --workdir (default /tmp/icsscan-scan-memory; kept between runs, and
rewritten only when a count's folder is incomplete). Each count is scanned once by a real `icsscan scan`
subprocess with its default settings (batch 64, 4 decode threads, all outputs incl. report.html); its peak RSS
is the child's ru_maxrss from os.wait4 (exact for that one process, no polling). The 100-file scan is the
fixed cost (interpreter, onnxruntime, model); the slope between the two large counts is the cost per file.

The model is --model, or a tiny bundle trained here on sample_data/good (40 iterations, seed 0, like the test
fixture) and cached in --workdir. Writes benchmarks/results/scan_memory.json and scan_memory.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
from icsscan.runinfo import machine, now_iso, versions, write_json_atomic  # noqa: E402

PER_DIR = 1000


def make_folder(root: Path, count: int, sources: list[Path]) -> Path:
    folder = root / f"n{count}"
    stamp = folder / ".complete"
    if stamp.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    blobs = [p.read_bytes() for p in sources]
    for i in range(count):
        sub = folder / f"d{i // PER_DIR:03d}"
        if i % PER_DIR == 0:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img_{i:06d}.png").write_bytes(blobs[i % len(blobs)])
    stamp.write_text(str(count))  # not an image extension: never scanned
    return folder


def tiny_model(workdir: Path) -> Path:
    out = workdir / "model"
    if (out / "model.onnx").exists():
        return out
    from icsscan import ICSDetector
    from icsscan.config import preset_config

    cfg = preset_config("default", backbone="small", ae_epochs=3, iterations=40, seed=0, device="cpu")
    ICSDetector(config=cfg).fit(REPO / "sample_data" / "good").save(out)
    return out


def describe_model(model: Path) -> dict:
    """What the bundle is (from its config.json), so a run with --model is still self-describing."""
    info: dict = {"path": str(model)}
    try:
        meta = json.loads((model / "config.json").read_text(encoding="utf-8"))
        cfg = meta["config"]
        info.update({k: cfg.get(k) for k in ("image_size", "channels", "iterations", "ae_epochs", "seed", "score")})
        info["n_train_files"] = meta.get("n_train_files")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return info


def peak_rss_of(cmd: list[str], cwd: Path | None = None) -> dict:
    """Run cmd; its exit code, wall seconds and peak resident set size (ru_maxrss, KiB on Linux)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd)
    stderr_tail = proc.stderr.read()[-2000:]  # small: scan prints a summary table to stdout, errors to stderr
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    kib = usage.ru_maxrss if platform.system() != "Darwin" else usage.ru_maxrss / 1024
    return {"exit_code": proc.returncode, "wall_s": round(seconds, 2), "peak_rss_mib": round(kib / 1024, 1),
            "user_s": round(usage.ru_utime, 2), "sys_s": round(usage.ru_stime, 2), "stderr_tail": stderr_tail}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", type=int, nargs="+", default=[100, 10_000, 50_000, 100_000])
    ap.add_argument("--code", type=Path, default=None, help="run `python -m icsscan` from this checkout")
    ap.add_argument("--code-label", default=None, help="what --code is (default: its git commit)")
    ap.add_argument("--stem", default="scan_memory", help="result file names (STEM.json, STEM.md)")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/icsscan-scan-memory"))
    ap.add_argument("--results", type=Path, default=HERE / "results")
    args = ap.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    sources = sorted((REPO / "sample_data" / "good").glob("*.png"))[:32]
    model = args.model or tiny_model(args.workdir)
    runs = []
    for count in args.counts:
        t = time.perf_counter()
        folder = make_folder(args.workdir, count, sources)
        write_s = time.perf_counter() - t
        report = args.workdir / f"report-{count}"
        cmd = [sys.executable, "-m", "icsscan", "scan", str(folder), "--model", str(model), "--out", str(report),
               "--force"]
        load_before = os.getloadavg()
        run = peak_rss_of(cmd, cwd=args.code)
        summary = json.loads((report / "summary.json").read_text()) if (report / "summary.json").exists() else {}
        run.update({"files": count, "rows": summary.get("counts", {}).get("rows"),
                    "images_per_s": summary.get("timings", {}).get("images_per_s"),
                    "outputs": summary.get("outputs"), "write_files_s": round(write_s, 1),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "command": ["icsscan", *cmd[3:]]})
        if run["exit_code"] == 0:
            run.pop("stderr_tail")
        runs.append(run)
        print(f"{count:>7} files: peak RSS {run['peak_rss_mib']:.1f} MiB, {run['wall_s']:.1f} s, "
              f"{run['images_per_s']} images/s, exit {run['exit_code']}", file=sys.stderr)

    big = sorted((r for r in runs if r["files"] >= 10_000 and r["exit_code"] == 0), key=lambda r: r["files"])
    slope = ratio = None
    if len(big) >= 2:
        a, b = big[0], big[-1]
        slope = round((b["peak_rss_mib"] - a["peak_rss_mib"]) * 1024 * 1024 / (b["files"] - a["files"]), 1)
        ratio = {"files": [a["files"], b["files"]], "peak_rss_ratio": round(b["peak_rss_mib"] / a["peak_rss_mib"], 3),
                 "limit": 1.2, "within_limit": b["peak_rss_mib"] <= 1.2 * a["peak_rss_mib"]}
    code = (args.code or REPO).resolve()
    result = {
        "benchmark": "scan_memory",
        "created": now_iso(),
        "command": f"nice -n {os.nice(0)} " + " ".join(["python", "benchmarks/scan_memory.py", *sys.argv[1:]]),
        "code": {"path": str(code), "git": args.code_label or git_describe(code)},
        "what": "peak RSS (os.wait4 ru_maxrss) of one `icsscan scan` subprocess per folder size; default scan "
                "settings; 28x28 grey PNG copies of sample_data/good",
        "model": {**describe_model(model), "trained_here": args.model is None},
        "runs": runs,
        "bytes_per_extra_file": slope,
        "ratio_largest_to_10k": ratio,
        "machine": machine(),
        "versions": versions(),
        "nice": os.nice(0),
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    args.results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results / f"{args.stem}.json", result)
    write_markdown(args.results / f"{args.stem}.md", result)
    print(json.dumps({r["files"]: r["peak_rss_mib"] for r in runs}), f"bytes/file: {slope}", f"ratio: {ratio}")


def git_describe(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "log", "-1", "--format=%h %s"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (out.stdout.strip()[:100] + (" (+ uncommitted changes)" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_markdown(path: Path, result: dict) -> None:
    m = result["machine"]
    ratio = result.get("ratio_largest_to_10k")
    lines = [
        "# Scan memory: peak RSS against folder size",
        "",
        f"`{result['command']}` — {result['created']}",
        "",
        result["what"] + ".",
        "",
        "| files | rows | peak RSS (MiB) | wall (s) | images/s | exit |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        lines.append(f"| {r['files']:,} | {r['rows']} | {r['peak_rss_mib']:.1f} | {r['wall_s']:.1f} | "
                     f"{r['images_per_s']} | {r['exit_code']} |")
    slope = result["bytes_per_extra_file"]
    mod = result["model"]
    lines += [
        "",
        f"Model: {mod.get('image_size')}x{mod.get('image_size')}x{mod.get('channels')}, score {mod.get('score')}, "
        f"{mod.get('iterations')} iterations on {mod.get('n_train_files')} images of sample_data/good "
        "(the size of the test fixture's tiny bundle; memory does not depend on how well it is trained).",
        "",
        f"Growth between the smallest and largest folder of ≥ 10,000 files: **{slope} bytes of peak RSS per extra "
        f"file**; peak RSS at {ratio['files'][1]:,} files = **{ratio['peak_rss_ratio']} ×** the peak at "
        f"{ratio['files'][0]:,} (limit 1.2: {'met' if ratio['within_limit'] else 'NOT met'})."
        if slope is not None else "Growth: not measured (needs two folders of ≥ 10,000 files).",
        "(What a scan keeps per file: its path's UTF-8 bytes plus about 30 bytes of typed arrays for offset, score and "
        "peak, `icsscan/rowstore.py`; the ranking is an int64 index; decoded pixels are bounded to two batches.)",
        "",
        f"Code: `{result['code']['git']}` ({result['code']['path']}).",
        "",
        *before_fix_section(path.parent, result),
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs, Python {m['python']}; "
        f"onnxruntime {result['versions'].get('onnxruntime')}, Pillow {result['versions'].get('pillow')}, "
        f"numpy {result['versions'].get('numpy')}, icsscan {result['versions'].get('icsscan')}. "
        f"Run under nice {result['nice']}; load average before each run is in the JSON (a shared machine: "
        "wall times and images/s are indicative, peak RSS is not affected by load).",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def before_fix_section(folder: Path, result: dict) -> list[str]:
    """The same benchmark run with the code before the compact row store, when its results lie beside these."""
    if result["code"]["path"] != str(REPO):
        return []
    try:
        before = json.loads((folder / "scan_memory_before_fix.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    after = {r["files"]: r["peak_rss_mib"] for r in result["runs"]}
    lines = [f"Before the fix (`{before['code']['git']}`: a `Row` object and a `Path` per file, the whole ranked "
             f"table as tuples, the JUnit tree in memory), same model, folders and machine "
             f"(`scan_memory_before_fix.json`, {before['created']}):", "",
             "| files | peak RSS before (MiB) | after (MiB) |", "|---:|---:|---:|"]
    for r in before["runs"]:
        lines.append(f"| {r['files']:,} | {r['peak_rss_mib']:.1f} | {after.get(r['files'], float('nan')):.1f} |")
    b = before.get("ratio_largest_to_10k") or {}
    lines += ["", f"Before: {before['bytes_per_extra_file']} bytes per extra file, ratio {b.get('peak_rss_ratio')}.", ""]
    return lines


if __name__ == "__main__":
    main()
