"""Training speed of both presets on 28×28×1 and 32×32×3 inputs: seconds per ICS iteration, seconds per
autoencoder epoch, and the projected time of a full training run (the preset's iterations + AE epochs).

    python benchmarks/train_speed.py [--data-root DIR] [--iters-default 20] [--iters-paper 5] [--warmup 2]

Inputs (real data, no random images):
  28×28×1  MNIST training digit 0 (5,923 images), read with torchvision's MNIST(root, download=False);
  32×32×3  CIFAR-10 training airplanes (5,000 JPEGs) from CIFAR10-jpeg/train/airplane, decoded by icsscan.data.

What is timed is `icsscan.train.train_ics` (the real loop: three losses, three optimizer steps per iteration)
and `icsscan.split.train_autoencoder` for one epoch, both on the images that `fit` trains on (the class minus the
10 % calibration hold-out). The typical/atypical mask is a seeded random ρ = 0.1 subset instead of the SSIM
split: an iteration's cost does not depend on which images are atypical, only on the batch size.
Each preset × input first runs `--warmup` iterations (allocator, thread pools) in a separate call, then
the timed call; s/iteration = timed seconds / timed iterations (includes building the network, < 1 %).
Projected total = iterations × s/iteration + AE epochs × s/epoch; it leaves out decoding, SSIM scoring,
calibration and ONNX export (seconds, see the CLI benchmarks).

On a shared machine wall-clock numbers swing with the load, so each row also records the load average, the
CPU share the process got, and — unless --no-single-thread — the same work on ONE torch thread measured in
process CPU seconds: the cost of the work itself, nearly independent of other processes.

Writes benchmarks/results/train_speed.json and .md with the command, machine, load average and versions.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from icsscan import data  # noqa: E402
from icsscan.config import preset_config  # noqa: E402
from icsscan.thresholds import calibration_holdout  # noqa: E402
from icsscan.runinfo import machine, now_iso, versions, write_json_atomic  # noqa: E402
from icsscan.split import n_atypical, train_autoencoder  # noqa: E402
from icsscan.train import train_ics  # noqa: E402


def default_data_root() -> str:
    return os.environ.get("ICSSCAN_DATA", "/work/shared/data")


def load_mnist_digit(root: Path, digit: int = 0) -> np.ndarray:
    """(N, 1, 28, 28) float32 in [0, 1]."""
    from torchvision.datasets import MNIST

    ds = MNIST(str(root), train=True, download=False)
    x = ds.data[ds.targets == digit].numpy()
    return (x.astype(np.float32) / 255.0)[:, None]


def load_cifar_class(root: Path, name: str = "airplane", workers: int = 2) -> np.ndarray:
    """(N, 3, 32, 32) float32 in [0, 1], decoded exactly as `icsscan train` decodes them."""
    folder = root / "CIFAR10-jpeg" / "train" / name
    paths = data.find_images(folder)
    if not paths:
        raise SystemExit(f"{folder}: no images (set --data-root or $ICSSCAN_DATA)")
    loaded = data.load_images(paths, 32, workers=workers)
    if loaded.failures:
        raise SystemExit(f"{len(loaded.failures)} CIFAR files failed to decode, e.g. {loaded.failures[0]}")
    return data.to_channels(loaded.images, 3)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def time_preset(images: np.ndarray, preset: str, iters: int, warmup: int, device: torch.device,
                single_thread: bool = True) -> dict:
    channels, size = images.shape[1], images.shape[-1]
    cfg = preset_config(preset, image_size=size, channels=channels, device=str(device), seed=0)
    fit_idx, _ = calibration_holdout(len(images), cfg.calibration_fraction, cfg.seed)
    x = torch.from_numpy(images[fit_idx]).to(device)
    rng = np.random.default_rng(0)
    mask = np.zeros(len(x), dtype=bool)
    mask[rng.choice(len(x), n_atypical(len(x), cfg.rho), replace=False)] = True
    atypical = torch.as_tensor(mask, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    load_start = loadavg()
    if warmup:
        train_ics(x, atypical, cfg.with_overrides(iterations=warmup), device)
        sync()
    t, c = time.perf_counter(), time.process_time()
    train_ics(x, atypical, cfg.with_overrides(iterations=iters), device)
    sync()
    ics_s, ics_cpu = time.perf_counter() - t, time.process_time() - c
    s_per_it = ics_s / iters

    # Autoencoder: a warm-up epoch on a few batches, then one full epoch on the fit images.
    train_autoencoder(x[: cfg.ae_batch_size * 4], cfg.with_overrides(ae_epochs=1), device)
    sync()
    t, c = time.perf_counter(), time.process_time()
    train_autoencoder(x, cfg.with_overrides(ae_epochs=1), device)
    sync()
    ae_epoch_s, ae_cpu = time.perf_counter() - t, time.process_time() - c

    # The same work on one torch thread, measured in CPU seconds: the cost of the work itself, nearly
    # independent of what else runs on the machine (no thread waits at barriers for a descheduled peer).
    single = {}
    if single_thread and device.type == "cpu":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            train_ics(x, atypical, cfg.with_overrides(iterations=1), device)
            t, c = time.perf_counter(), time.process_time()
            train_ics(x, atypical, cfg.with_overrides(iterations=iters), device)
            one_it, one_wall = (time.process_time() - c) / iters, (time.perf_counter() - t) / iters
            c = time.process_time()
            train_autoencoder(x, cfg.with_overrides(ae_epochs=1), device)
            one_ae = time.process_time() - c
        finally:
            torch.set_num_threads(threads)
        single = {"cpu_s_per_iteration_1thread": round(one_it, 4), "wall_s_per_iteration_1thread": round(one_wall, 4), "ae_cpu_s_per_epoch_1thread": round(one_ae, 3),
                  "projected_total_cpu_s_1thread": round(cfg.iterations * one_it + cfg.ae_epochs * one_ae, 1)}

    ics_total = cfg.iterations * s_per_it
    ae_total = cfg.ae_epochs * ae_epoch_s
    return {
        "preset": preset,
        "input": f"{size}x{size}x{channels}",
        "n_images": int(len(images)),
        "n_fit_images": int(len(x)),
        "warmup_iterations": warmup,
        "timed_iterations": iters,
        "ics_timed_s": round(ics_s, 3),
        # CPU seconds this process got per wall second: ≈ torch threads when it had the cores to itself,
        # lower when other processes competed for them (wall-clock timings are then inflated).
        "ics_cpu_share": round(ics_cpu / ics_s, 2),
        "cpu_s_per_iteration": round(ics_cpu / iters, 4),
        "s_per_iteration": round(s_per_it, 4),
        "ae_epoch_s": round(ae_epoch_s, 3),
        "ae_cpu_share": round(ae_cpu / ae_epoch_s, 2),
        "preset_iterations": cfg.iterations,
        "preset_ae_epochs": cfg.ae_epochs,
        "projected_ics_s": round(ics_total, 1),
        "projected_ae_s": round(ae_total, 1),
        "projected_total_s": round(ics_total + ae_total, 1),
        **single,
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "config": cfg.to_dict(),
    }


def fmt_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def write_markdown(path: Path, report: dict) -> None:
    lines = [
        "# Training speed (`benchmarks/train_speed.py`)",
        "",
        f"Command: `{' '.join(report['command'])}`  ",
        f"Created {report['created']} on {report['machine']['platform']}, {report['machine']['cpu_count']} CPUs, "
        f"device {report['device']}, torch threads {report['torch_threads']}, torch {report['versions']['torch']}.  ",
        f"Load average (1/5/15 min) at start {report['loadavg_start']}, at end {report['loadavg_end']} — "
        "a shared machine: timings are noisy and on the slow side when the load exceeds the core count.",
        "",
        "| preset | input | fit images | s / iteration (timed its) | AE s / epoch | full run: iterations + AE epochs "
        "| projected total | load during | CPU share |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | --- | ---: |",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['preset']} | {r['input']} | {r['n_fit_images']} | {r['s_per_iteration']:.3f} ({r['timed_iterations']}) "
            f"| {r['ae_epoch_s']:.2f} | {r['preset_iterations']} × {r['s_per_iteration']:.3f} s + "
            f"{r['preset_ae_epochs']} × {r['ae_epoch_s']:.2f} s | {fmt_duration(r['projected_total_s'])} "
            f"| {r['loadavg_start'][0]} → {r['loadavg_end'][0]} | {r['ics_cpu_share']:.2f} |")
    if any("cpu_s_per_iteration_1thread" in r for r in report["results"]):
        lines += [
            "",
            "Load-insensitive cost: the same iterations and one AE epoch on **one** torch thread, in process CPU seconds",
            "(≈ wall time on one otherwise idle core; on two idle cores expect somewhat less, not half). The wall time",
            "of those one-thread iterations, taken under the same load, is shown beside it.",
            "",
            "| preset | input | CPU s / iteration, 1 thread | wall s / iteration, 1 thread (loaded) "
            "| AE CPU s / epoch, 1 thread | projected full run, 1 idle core |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for r in report["results"]:
            if "cpu_s_per_iteration_1thread" in r:
                lines.append(f"| {r['preset']} | {r['input']} | {r['cpu_s_per_iteration_1thread']:.3f} | "
                             f"{r.get('wall_s_per_iteration_1thread', float('nan')):.3f} | "
                             f"{r['ae_cpu_s_per_epoch_1thread']:.2f} | {fmt_duration(r['projected_total_cpu_s_1thread'])} |")
    lines += [
        "",
        "28×28×1 = MNIST training digit 0; 32×32×3 = CIFAR-10 training airplanes (JPEG). Projected total covers the ICS",
        "iterations and autoencoder epochs only (not decoding, SSIM scoring, calibration or ONNX export).",
        "CPU share = process CPU seconds per wall second during the timed ICS iterations (at most the torch thread",
        "count); below that, other processes held the cores and the wall-clock numbers above are inflated — by more",
        "than threads / CPU share, because a torch thread waiting at a barrier for a descheduled peer burns CPU too",
        "(compare the CPU seconds per iteration of the main run in the JSON with the one-thread cost).",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def rewrite_markdown(json_path: Path) -> None:
    """Re-render the .md table from an existing .json (no measuring)."""
    write_markdown(json_path.with_suffix(".md"), json.loads(json_path.read_text(encoding="utf-8")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=default_data_root(), help="Folder with MNIST/ and CIFAR10-jpeg/ "
                    "(default $ICSSCAN_DATA or /work/shared/data).")
    ap.add_argument("--iters-default", type=int, default=20)
    ap.add_argument("--iters-paper", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads for the main timing "
                    "(0 = torch's default, what `icsscan train` uses).")
    ap.add_argument("--no-single-thread", action="store_true", help="Skip the one-thread CPU-time measurement.")
    ap.add_argument("--presets", default="default,paper")
    ap.add_argument("--inputs", default="28x28x1,32x32x3")
    ap.add_argument("--out", default=str(HERE / "results" / "train_speed"), help="Output path without suffix.")
    ap.add_argument("--markdown-only", action="store_true", help="Only re-render OUT.md from OUT.json.")
    args = ap.parse_args()
    if args.markdown_only:
        rewrite_markdown(Path(args.out).with_suffix(".json"))
        return

    root = Path(args.data_root)
    device = torch.device(args.device)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    report = {
        "benchmark": "train_speed",
        "command": [Path(sys.executable).name, *sys.argv],
        "created": now_iso(),
        "machine": machine(),
        "versions": versions(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "data_root": str(root),
        "loadavg_start": loadavg(),
        "results": [],
    }
    loaders = {"28x28x1": lambda: load_mnist_digit(root, 0), "32x32x3": lambda: load_cifar_class(root, "airplane")}
    iters = {"default": args.iters_default, "paper": args.iters_paper}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.inputs.split(","):
        images = loaders[name]()
        for preset in args.presets.split(","):
            r = time_preset(images, preset, iters[preset], args.warmup, device, not args.no_single_thread)
            print(f"{preset:8s} {name}: {r['s_per_iteration']:.3f} s/it, AE {r['ae_epoch_s']:.2f} s/epoch, "
                  f"projected {fmt_duration(r['projected_total_s'])} (load {r['loadavg_start'][0]}→{r['loadavg_end'][0]})",
                  flush=True)
            report["results"].append(r)
            report["loadavg_end"] = loadavg()
            write_json_atomic(out.with_suffix(".json"), report)  # partial results survive an interruption
            write_markdown(out.with_suffix(".md"), report)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
