"""Does a longer-trained split autoencoder widen the default's MNIST margin? (Table 1 cells, seed 0.)

Retrains only the `ssim` component of the whole-object default with each number of autoencoder epochs, on the
same held-out split and synthetic anomalies as embed_table1.py, and fuses it with that run's dumped eknn and
eics by the product's rule (embed_table1.fused_rows).

    python benchmarks/ae_epochs_check.py --dataset mnist --epochs 8,16 --dump benchmarks/.cache/components_embed_v2

Appends its table to benchmarks/results/ae_epochs_check.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import paper_eval as pe  # noqa: E402
from embed_table1 import cell_split, fused_rows, load_cell  # noqa: E402


def main() -> None:
    import torch

    from icsscan import data
    from icsscan.config import preset_config
    from icsscan.data import array_to_rgb
    from icsscan.synthetic import synthetic_anomalies
    from icsscan.split import ssim_scores, train_autoencoder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--epochs", default="8,16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dump", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds, seed = pe.load_dataset(args.dataset), args.seed
    epochs = [int(e) for e in args.epochs.split(",")]
    fused, alone, seconds = ({e: [] for e in epochs} for _ in range(3))
    for cls in range(10):
        values = load_cell(args.dump / f"{args.dataset}-{cls}-s{seed}.npz")
        cfg = preset_config("default", seed=seed)
        _, fit_idx, cal_idx, images, base, donors = cell_split(ds, cls, seed, cfg.calibration_fraction)
        side, channels = images.shape[1], 1 if images.ndim == 3 else 3

        def tensor(rgb):
            return torch.from_numpy(data.to_channels(rgb, channels))

        for e in epochs:
            t = time.perf_counter()
            ae = train_autoencoder(tensor(array_to_rgb(images[fit_idx], side)), cfg.with_overrides(ae_epochs=e),
                                   torch.device("cpu"))
            with torch.no_grad():
                for key, rgb in (("cal", array_to_rgb(images[cal_idx], side)),
                                 ("syn", synthetic_anomalies(base, donors, seed)), ("test", array_to_rgb(ds.x_test, side))):
                    values[key]["ssim"] = 1.0 - np.asarray(ssim_scores(ae, tensor(rgb)), dtype=np.float64)
            score = dict((m, s) for m, s, _ in fused_rows(values, 0.1))["icsscan"]
            fused[e].append(pe.auc_percent(ds.y_test, cls, score))
            alone[e].append(pe.auc_percent(ds.y_test, cls, values["test"]["ssim"]))
            seconds[e].append(time.perf_counter() - t)
            print(args.dataset, cls, e, f"{fused[e][-1]:.2f} {alone[e][-1]:.2f}", flush=True)
    lines = [f"\n## {args.dataset}, seed {seed} (`python benchmarks/ae_epochs_check.py --dataset {args.dataset} "
             f"--epochs {args.epochs} --dump {args.dump} --threads {args.threads}`)", "",
             "| AE epochs | default fused AUC | ssim alone | s per cell (AE + scoring, 1 thread) |", "|---:|---:|---:|---:|"]
    lines += [f"| {e} | {np.mean(fused[e]):.2f} | {np.mean(alone[e]):.2f} | {np.mean(seconds[e]):.1f} |" for e in epochs]
    out = HERE / "results" / "ae_epochs_check.md"
    if not out.exists():
        out.write_text("# Split-autoencoder epochs in the whole-object default (`benchmarks/ae_epochs_check.py`)\n",
                       encoding="utf-8")
    with open(out, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
