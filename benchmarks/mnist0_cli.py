"""The core issue's target, measured through the real CLI on real PNG files:

`icsscan train` on the full MNIST digit-0 training class (5,923 PNGs) — wall time — then `icsscan scan` of
the full MNIST test set (10,000 PNGs) and the AUC (anomalies = the other digits).

    python benchmarks/mnist0_cli.py [--data-root ../shared/data] [--preset default] [--digit 0]

Writes benchmarks/results/mnist0_cli_<preset>_<digit>.json with the commands, machine, versions and numbers.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image
from icsscan.metrics import image_metrics

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from icsscan.runinfo import machine, now_iso, versions  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=os.environ.get("ICSSCAN_DATA", str(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--preset", default="default")
    ap.add_argument("--digit", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from torchvision.datasets import MNIST

    train, test = (MNIST(args.data_root, train=t, download=False) for t in (True, False))
    x_tr, y_tr, x_te, y_te = train.data.numpy(), train.targets.numpy(), test.data.numpy(), test.targets.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "good").mkdir()
        (tmp / "test").mkdir()
        for i, a in enumerate(x_tr[y_tr == args.digit]):
            Image.fromarray(a).save(tmp / "good" / f"{i:05d}.png")
        labels = {}
        for i, (a, y) in enumerate(zip(x_te, y_te)):
            p = tmp / "test" / f"{i:05d}.png"
            Image.fromarray(a).save(p)
            labels[str(p)] = int(y != args.digit)
        icsscan = [sys.executable, "-m", "icsscan"]
        train_cmd = [*icsscan, "train", str(tmp / "good"), "--out", str(tmp / "model"), "--preset", args.preset,
                     "--seed", str(args.seed)]
        t = time.perf_counter()
        subprocess.run(train_cmd, check=True)
        train_s = time.perf_counter() - t
        scan_cmd = [*icsscan, "scan", str(tmp / "test"), "--model", str(tmp / "model"), "--out", str(tmp / "report"),
                    "--no-html"]
        t = time.perf_counter()
        subprocess.run(scan_cmd, check=True, stdout=subprocess.DEVNULL)
        scan_s = time.perf_counter() - t
        rows = list(csv.DictReader(open(tmp / "report" / "scores.csv", encoding="utf-8")))
        auc = image_metrics([labels[r["path"]] for r in rows], [float(r["score"]) for r in rows])["auroc"]
        meta = json.loads((tmp / "model" / "config.json").read_text())
        summary = json.loads((tmp / "report" / "summary.json").read_text())
    result = {
        "what": f"icsscan train on all MNIST training images of digit {args.digit} (PNG), scan of the full test set",
        "commands": ["python benchmarks/mnist0_cli.py " + " ".join(sys.argv[1:]),
                     " ".join(train_cmd[2:]), " ".join(scan_cmd[2:])],
        "n_train_files": int((y_tr == args.digit).sum()), "n_test_files": len(rows),
        "train_wall_s": round(train_s, 1), "train_timings_s": meta["timings"],
        "scan_wall_s": round(scan_s, 1), "scan_images_per_s": summary["timings"]["images_per_s"],
        "auc": round(float(auc), 4),
        "flagged_at_0.5": summary["counts"]["anomalies"],
        "fusion": meta.get("fusion"),  # the label-free weights and each component's synthetic AUC
        "config": meta["config"], "machine": machine(), "load_avg_1m_at_end": os.getloadavg()[0],
        "versions": versions(), "date": now_iso(),
    }
    out = HERE / "results" / f"mnist0_cli_{args.preset}_{args.digit}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("train_wall_s", "auc", "scan_images_per_s")}))


if __name__ == "__main__":
    main()
