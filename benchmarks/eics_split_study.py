"""Which atypical set makes the ICS head on embeddings count? A study on Table 1's 30 tasks (seed 0).

The default's `eics` splits the class's training embeddings by leave-one-out kNN distance (the ρ least typical
normals are atypical) and adds little to the fused score (weight_rules.md: −0.03 / −0.01 / +0.15 on MNIST /
Fashion-MNIST / CIFAR-10). Issue 17 suggests an atypical set chosen by a signal that generalises. Here the same
head and losses are trained with the atypical set = embeddings of synthetic anomalies made from training images
(`embed.synthetic_anomalies`, what the local model's ICS head does with synthetic local defects), and compared,
on the same cells, with the kNN split:

  eics_knn   the default's head (from the dump of embed_table1.py --dump)
  eics_syn   typical = all training embeddings, atypical = 1,024 synthetic anomalies of training images
             (their own random draw, not the held-out normals' copies that the weights are chosen on)

Each is reported alone and fused with the dumped eknn and ssim by the product's rule (label-free weights
∝ (2·AUC − 1)^8 on held-out normals vs their synthetic copies, linear sum). A head trained on the very kind of
anomaly the weights are judged on rates itself highly there, so the product's rule may hand it the weight: the
row "eics_syn at eics_knn's weight" shows the head's worth without that effect (diagnostic only: that weight
is not something a user could compute for the new head).

    python benchmarks/eics_split_study.py --dump benchmarks/.cache/components_embed_v2 --seeds 0 --threads 2

Writes benchmarks/results/eics_split_study.{md,csv}.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import embed_cache  # noqa: E402
import paper_eval as pe  # noqa: E402
from embed_table1 import cell_split, fused_logit, load_cell  # noqa: E402

RESULTS = HERE / "results"
TRAIN_SYNTHETIC = 1024  # synthetic anomalies of training images, the head's atypical set


def product_weights(values: dict, parts: tuple[str, ...]) -> dict[str, float]:
    from icsscan.fusion import WHOLE_OBJECT_POWER, weigh_without_labels

    equal = {p: 1 / len(parts) for p in parts}
    return weigh_without_labels({p: values["cal"][p] for p in parts}, {p: values["syn"][p] for p in parts}, equal,
                                {}, power=WHOLE_OBJECT_POWER)


def synthetic_head_scores(ds, cache: dict, cls: int, seed: int, size: int, session) -> dict[str, np.ndarray]:
    """eics_syn on the held-out normals, their synthetic copies (as embed_table1 makes them) and the test set."""
    import torch

    from icsscan.config import preset_config
    from icsscan.data import array_to_rgb
    from icsscan.synthetic import synthetic_anomalies
    from icsscan.train import ICSHead, train_ics_head

    cfg = preset_config("default", seed=seed, embed_size=size)
    idx, fit_idx, cal_idx, images, base, donors = cell_split(ds, cls, seed, cfg.calibration_fraction)
    side = images.shape[1]
    e_fit = torch.from_numpy(cache["train"][idx[fit_idx]])
    rng = np.random.default_rng(seed + 7919)  # another draw than the weights' (seed) and of other images
    pick = rng.choice(len(fit_idx), min(TRAIN_SYNTHETIC, len(fit_idx)), replace=False)
    made = synthetic_anomalies(array_to_rgb(images[fit_idx[pick]], side), donors, seed + 7919)
    e_made = torch.from_numpy(embed_cache.embed_array(session, made, size))
    train = torch.cat([e_fit, e_made])
    atypical = torch.cat([torch.zeros(len(e_fit), dtype=torch.bool), torch.ones(len(e_made), dtype=torch.bool)])
    head = ICSHead(train.shape[1])
    train_ics_head(head, train, atypical, cfg.embed_iterations, cfg.embed_batch, cfg.patch_lr, seed)
    head.eval()
    e_syn = torch.from_numpy(embed_cache.embed_array(session, synthetic_anomalies(base, donors, seed), size))
    e_cal = torch.from_numpy(cache["train"][idx[cal_idx]])
    with torch.no_grad():
        return {k: head(e).double().numpy() for k, e in (("cal", e_cal), ("syn", e_syn),
                                                         ("test", torch.from_numpy(cache["test"])))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dump", type=Path, required=True)
    ap.add_argument("--datasets", default="mnist,fashion_mnist,cifar10")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    session = embed_cache.session_for(args.size, args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    started = time.time()
    for name in args.datasets.split(","):
        ds = pe.load_dataset(name)
        cache = embed_cache.cached_embeddings(name, args.size, args.threads)
        for cls in range(10):
            for seed in seeds:
                t = time.perf_counter()
                values = load_cell(args.dump / f"{name}-{cls}-s{seed}.npz")
                new = synthetic_head_scores(ds, cache, cls, seed, args.size, session)
                for key in ("cal", "syn", "test"):
                    values[key]["esyn"] = new[key]
                w_knn = product_weights(values, ("eknn", "eics", "ssim"))
                w_syn = product_weights(values, ("eknn", "esyn", "ssim"))
                at_knn_weight = {"eknn": w_knn["eknn"], "esyn": w_knn["eics"], "ssim": w_knn["ssim"]}
                auc = lambda s: pe.auc_percent(ds.y_test, cls, s)  # noqa: E731
                row = {"dataset": name, "class": cls, "seed": seed,
                       "eics_knn_alone": auc(values["test"]["eics"]), "eics_syn_alone": auc(values["test"]["esyn"]),
                       "default_eics_knn": auc(fused_logit(values, w_knn, 0.1, compress=False)),
                       "default_eics_syn": auc(fused_logit(values, w_syn, 0.1, compress=False)),
                       "eics_syn_at_knn_weight": auc(fused_logit(values, at_knn_weight, 0.1, compress=False)),
                       "without_eics": auc(fused_logit(values, product_weights(values, ("eknn", "ssim")), 0.1,
                                                       compress=False)),
                       "w_eics_knn": w_knn["eics"], "w_eics_syn": w_syn["esyn"],
                       "seconds": time.perf_counter() - t}
                rows.append(row)
                print(name, cls, seed, {k: round(v, 2) for k, v in row.items() if isinstance(v, float)}, flush=True)
    write(rows, args, time.time() - started)


def write(rows: list[dict], args, wall_s: float) -> None:
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "eics_split_study.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    labels = {"eics_knn_alone": "ICS head, kNN split (the default's eics), alone",
              "eics_syn_alone": "ICS head, synthetic-anomaly split, alone",
              "default_eics_knn": "default fusion with the kNN-split head (product's rule)",
              "default_eics_syn": "default fusion with the synthetic-split head (product's rule)",
              "eics_syn_at_knn_weight": "synthetic-split head at the kNN head's weight (diagnostic)",
              "without_eics": "fusion without any ICS head (eknn+ssim, product's rule)",
              "w_eics_knn": "mean weight of the kNN-split head", "w_eics_syn": "mean weight of the synthetic-split head"}
    lines = ["# Which atypical set makes the ICS head on embeddings count? (`benchmarks/eics_split_study.py`)", "",
             f"Command: `python benchmarks/eics_split_study.py --dump {args.dump} --seeds {args.seeds} --threads "
             f"{args.threads}`; {len(rows)} cells, {wall_s / 60:.1f} min on {platform.machine()} with "
             f"{os.cpu_count()} CPUs ({args.threads} torch/onnxruntime threads). Mean AUC (%) over classes and seeds.",
             "", "| | " + " | ".join(datasets) + " |", "|---|" + "---:|" * len(datasets)]
    for key, label in labels.items():
        fmt = "{:.3f}" if key.startswith("w_") else "{:.2f}"
        lines.append(f"| {label} | " + " | ".join(
            fmt.format(np.mean([r[key] for r in rows if r["dataset"] == d])) for d in datasets) + " |")
    lines += ["", "Config: " + json.dumps({"train_synthetic": TRAIN_SYNTHETIC, "size": args.size,
                                           "seeds": args.seeds, "embed_iterations": 300})]
    (RESULTS / "eics_split_study.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
