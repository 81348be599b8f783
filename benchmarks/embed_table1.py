"""Table 1 (30 one-vs-rest tasks × seeds) for icsscan's pretrained whole-object components, on cached embeddings.

The frozen ImageNet EfficientNet-Lite0 embedding of every image is computed once per dataset
(`embed_cache.py`, the graph `icsscan scan` runs); each cell then runs the library's own fitting code on them:
`icsscan.thresholds.calibration_holdout` (10 % of the class's training images held out), `embed.fit_embedding`
(kNN bank + ICS head on embeddings, split by leave-one-out kNN distance), `embed.synthetic_anomalies` on the
held-out normals (embedded by the same graph) for the label-free weights (`fusion.weigh_without_labels`),
`fusion.standardise_and_offset`, then the test set's fused score. Only the images' pass through the frozen
network is shared between cells; everything trained is trained per cell and seed.

Methods written (rows of the same format as table1_raw.csv, into table1_embed_raw.csv):
  icsscan                eknn+eics+ssim, label-free weights   (the default for whole-object images) [--with-ssim]
  icsscan_default_equal  the same three, equal weights                                              [--with-ssim]
  icsscan_ssim           the split autoencoder's 1 − SSIM alone                                     [--with-ssim]
  icsscan_no_ssim        eknn+eics, label-free weights (the pretrained part alone)
  icsscan_no_ssim_equal  eknn+eics, equal weights
  icsscan_no_eics        eknn+ssim, label-free weights (the default without its ICS part)               [--with-ssim]
  icsscan_eknn           kNN (k=2) distance of the embedding alone (DN2-like)
  icsscan_eics           the ICS head on embeddings alone (symmetric distance head)
  icsscan_eics_bce       the same head trained by the intra-class BCE alone (no closeness/dispersion: NNwICS)  [--ablation-seeds]
  icsscan_eics_paper     the same head with the paper's antisymmetric distance head                           [--ablation-seeds]
  ImageNet_OCSVM         the paper's baseline with EfficientNet-Lite0 in place of VGG19: OCSVM (rbf, ν 0.15,
                         γ "scale") on the same embeddings of all the class's training images (seed 0 only)

    python benchmarks/embed_cache.py                       # once: every image's embedding (~7 min per digit set, ~10 for CIFAR, 1 thread)
    python benchmarks/embed_table1.py --datasets mnist --seeds 0 --ablation-seeds 0 --with-ssim
    python benchmarks/embed_table1.py --from-dump DIR      # fused rows missing from --raw, from a --dump DIR run's scores
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import embed_cache  # noqa: E402
import paper_eval as pe  # noqa: E402
from table1 import RawWriter, int_list, read_rows  # noqa: E402

RESULTS = HERE / "results"
RAW = RESULTS / "table1_embed_raw.csv"
SYNTHETIC_MAX = 256  # held-out normals given a synthetic anomaly (as icsscan.detector does)


def cell_split(ds, cls: int, seed: int, calibration_fraction: float):
    """One cell's images as the library splits them: (class indices into the training set, fit and held-out
    positions within them, the class's images, held-out normals given a synthetic anomaly (RGB), their donors)."""
    from icsscan.data import array_to_rgb
    from icsscan.thresholds import calibration_holdout

    idx = np.flatnonzero(ds.y_train == cls)
    fit_idx, cal_idx = calibration_holdout(len(idx), calibration_fraction, seed)
    images = ds.x_train[idx]
    side = images.shape[1]
    base = array_to_rgb(images[cal_idx[:SYNTHETIC_MAX]], side)
    donors = array_to_rgb(images[fit_idx[:256]], side)
    return idx, fit_idx, cal_idx, images, base, donors


def load_cell(path: Path) -> dict:
    """A cell's component scores as dumped by --dump: {"cal"|"syn"|"test": {part: float64 array}}."""
    from collections import defaultdict

    values: dict = defaultdict(dict)
    with np.load(path) as f:
        for key in f.files:
            where, part = key.split("__")
            values[where][part] = f[key].astype(np.float64)
    return values


def cell_rows(ds, cache: dict, cls: int, seed: int, size: int, session, ablation: bool,
              with_ssim: bool = False, dump: Path | None = None) -> list[tuple[str, np.ndarray, dict]]:
    import torch

    from icsscan.config import preset_config
    from icsscan.data import array_to_rgb
    from icsscan.embed import fit_embedding
    from icsscan.synthetic import synthetic_anomalies

    torch.manual_seed(seed)
    cfg = preset_config("default", seed=seed, embed_size=size, score="eknn+eics", global_weights="synthetic")
    idx, fit_idx, cal_idx, images, base, donors = cell_split(ds, cls, seed, cfg.calibration_fraction)
    side = images.shape[1]
    e_fit = torch.from_numpy(cache["train"][idx[fit_idx]])
    e_cal = torch.from_numpy(cache["train"][idx[cal_idx]])
    e_test = torch.from_numpy(cache["test"])
    e_syn = torch.from_numpy(embed_cache.embed_array(session, synthetic_anomalies(base, donors, seed), size))

    scorer, info = fit_embedding(e_fit, cfg, ("eknn", "eics"))
    with torch.no_grad():
        comp = {name: scorer.components_of(e) for name, e in (("cal", e_cal), ("syn", e_syn), ("test", e_test))}
    values = {k: {p: v.double().numpy() for p, v in c.items()} for k, c in comp.items()}
    if with_ssim:  # the split autoencoder's SSIM error beside the pretrained components (from scratch, per cell)
        from icsscan import data
        from icsscan.split import ssim_scores, train_autoencoder

        channels = 1 if images.ndim == 3 else 3

        def tensor(rgb):
            return torch.from_numpy(data.to_channels(rgb, channels))

        ae = train_autoencoder(tensor(array_to_rgb(images[fit_idx], side)), cfg, torch.device("cpu"))
        with torch.no_grad():
            for key, rgb in (("cal", array_to_rgb(images[cal_idx], side)), ("syn", synthetic_anomalies(base, donors, seed)),
                             ("test", array_to_rgb(ds.x_test, side))):
                values[key]["ssim"] = 1.0 - ssim_scores(ae, tensor(rgb))
    out = fused_rows(values, cfg.rho)
    if with_ssim:
        out.append(("icsscan_ssim", values["test"]["ssim"], {}))
    if dump is not None:  # every component on held-out normals, synthetic anomalies and the test set, for
        dump.mkdir(parents=True, exist_ok=True)  # comparing weighting rules offline (weight_rules.py)
        np.savez_compressed(dump / f"{ds.name}-{cls}-s{seed}.npz",
                            **{f"{key}__{part}": v for key, parts in values.items() for part, v in parts.items()})
    out.append(("icsscan_eknn", values["test"]["eknn"], {}))
    out.append(("icsscan_eics", values["test"]["eics"], {"n_atypical": info["n_atypical"]}))
    if ablation:
        for method, kwargs in (("icsscan_eics_bce", {"pair_losses": False}), ("icsscan_eics_paper", {"symmetric": False})):
            s2, _ = fit_embedding_variant(e_fit, cfg, kwargs)
            with torch.no_grad():
                out.append((method, s2.head(e_test).double().numpy(), kwargs))
    return out


FUSIONS = (  # method, its components, the equal-weight row of the same components (or None)
    ("icsscan_no_ssim", ("eknn", "eics"), "icsscan_no_ssim_equal"),
    ("icsscan", ("eknn", "eics", "ssim"), "icsscan_default_equal"),
    ("icsscan_no_eics", ("eknn", "ssim"), None),
)


def fused_rows(values: dict, rho: float) -> list[tuple[str, np.ndarray, dict]]:
    """Every fused method whose components `values` holds: weighted without labels as the product does
    (fusion.weigh_without_labels, ∝ (2·AUC − 1)^WHOLE_OBJECT_POWER, summed linearly), and with equal weights
    (fixed weights: through the signed log, as the product does with --weights fixed)."""
    from icsscan.fusion import WHOLE_OBJECT_POWER, weigh_without_labels

    out = []
    for method, parts, equal_method in FUSIONS:
        if not all(p in values["cal"] for p in parts):
            continue
        equal = {p: 1 / len(parts) for p in parts}
        record: dict = {}
        weights = weigh_without_labels({p: values["cal"][p] for p in parts}, {p: values["syn"][p] for p in parts},
                                       equal, record, power=WHOLE_OBJECT_POWER)
        out.append((method, fused_logit(values, weights, rho, compress=False), {"weights": weights, **record}))
        if equal_method:
            out.append((equal_method, fused_logit(values, equal, rho), {"weights": equal, **record}))
    return out


def fused_logit(values: dict, weights: dict[str, float], rho: float, compress: bool = True) -> np.ndarray:
    """The test set's fused score before the sigmoid, with centres and spreads from the held-out normals: the
    same ranking as AnomalyScorer's output, without ties where the sigmoid saturates in float32. compress: the
    signed log before the sum, as the product does with fixed weights (label-free weights: a linear sum)."""
    from icsscan.fusion import fused_sum, standardise_and_offset

    fusion = standardise_and_offset({p: values["cal"][p] for p in weights}, weights, rho, compress)
    return fused_sum({p: values["test"][p] for p in weights}, fusion, compress)


def fit_embedding_variant(e_fit, cfg, kwargs):
    """fit_embedding's ICS head with one of train_ics_head's ablation switches."""
    from icsscan.embed import EmbeddingScorer, split_by_knn
    from icsscan.train import train_ics_head

    scorer = EmbeddingScorer(cfg.embed_size, 1, ("eics",), pretrained=False)
    _, atypical = split_by_knn(e_fit, cfg.rho)
    train_ics_head(scorer.head, e_fit, atypical, cfg.embed_iterations, cfg.embed_batch, cfg.patch_lr, cfg.seed,
                    **kwargs)
    return scorer.eval(), None


def ocsvm_scores(cache: dict, ds, cls: int) -> np.ndarray:
    from sklearn.svm import OneClassSVM

    train = cache["train"][ds.y_train == cls]
    svm = OneClassSVM(kernel="rbf", nu=0.15, gamma="scale", cache_size=2000).fit(train)
    return -svm.decision_function(cache["test"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="mnist,fashion_mnist,cifar10")
    ap.add_argument("--classes", default="0-9")
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--ablation-seeds", default="0")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--raw", type=Path, default=RAW)
    ap.add_argument("--with-ssim", action="store_true", help="also train the split autoencoder per cell and "
                    "write icsscan (the default: eknn+eics+ssim, label-free weights), icsscan_default_equal, icsscan_ssim")
    ap.add_argument("--dump", type=Path, help="also save each cell's component scores (held-out normals, "
                    "synthetic anomalies, test set) as DIR/<dataset>-<class>-s<seed>.npz")
    ap.add_argument("--skip-ocsvm", action="store_true", help="do not compute the ImageNet_OCSVM rows")
    ap.add_argument("--from-dump", type=Path, metavar="DIR", help="no fitting: write the fused rows (FUSIONS) "
                    "missing from --raw, from the component scores a run saved with --dump DIR")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    done = {(r["dataset"], r["class_index"], r["method"], r["seed"]) for r in read_rows(args.raw)}
    writer = RawWriter(args.raw)
    if args.from_dump:
        rows_from_dump(args.from_dump, args.size, done, writer)
        writer.close()
        return
    session = embed_cache.session_for(args.size, args.threads)
    machine = json.dumps({"platform": platform.platform(), "cpu_count": os.cpu_count()})
    for name in args.datasets.split(","):
        ds = pe.load_dataset(name)
        cache = embed_cache.cached_embeddings(name, args.size, args.threads)
        per_image_s = 1.0 / float(cache["images_per_s"])
        for cls in int_list(args.classes, 10):
            base = {"dataset": name, "class_index": cls, "class_name": pe.CLASS_NAMES[name][cls], "device": "cpu",
                    "data_source": ds.source, "threads": args.threads, "rho": ""}
            if not args.skip_ocsvm and (name, str(cls), "ImageNet_OCSVM", "0") not in done:
                t = time.perf_counter()
                auc = pe.auc_percent(ds.y_test, cls, ocsvm_scores(cache, ds, cls))
                n = int((ds.y_train == cls).sum())
                writer.write({**base, "method": "ImageNet_OCSVM", "seed": 0, "auc": f"{auc:.4f}", "iterations": "",
                              "seconds": f"{time.perf_counter() - t + per_image_s * (n + len(ds.y_test)):.1f}",
                              "config": json.dumps({"features": f"EfficientNet-Lite0 (ImageNet) pooled stages 3+4, "
                                                    f"L2-normalised, {args.size} px", "nu": 0.15, "gamma": "scale"}),
                              "config_hash": pe.digest(["ImageNet_OCSVM", "efficientnet-lite0", args.size]),
                              "note": "EfficientNet-Lite0 in place of the paper's VGG19 (no VGG19 weights offline)",
                              "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
            for seed in int_list(args.seeds):
                if (name, str(cls), "icsscan_no_ssim", str(seed)) in done:
                    continue
                ablation = seed in int_list(args.ablation_seeds)
                t = time.perf_counter()
                rows = cell_rows(ds, cache, cls, seed, args.size, session, ablation, args.with_ssim, args.dump)
                seconds = time.perf_counter() - t + per_image_s * (int((ds.y_train == cls).sum()) + SYNTHETIC_MAX)
                stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                for method, scores, extra in rows:
                    auc = pe.auc_percent(ds.y_test, cls, scores)
                    writer.write({**base, "method": method, "seed": seed, "auc": f"{auc:.4f}",
                                  "iterations": "300 (ICS on embeddings)", "seconds": f"{seconds:.1f}",
                                  "config": json.dumps({"size": args.size, "machine": machine, **extra}, default=float),
                                  "config_hash": pe.digest([method, args.size, "v2"]), "note": "",
                                  "finished_utc": stamp})
                print(name, cls, seed, " ".join(f"{m}={pe.auc_percent(ds.y_test, cls, s):.1f}" for m, s, _ in rows),
                      flush=True)
    writer.close()


def rows_from_dump(directory: Path, size: int, done: set, writer) -> None:
    """Fused rows computed from dumped component scores (the same fitted components as the run that dumped
    them), for the methods and cells that have none yet."""
    datasets: dict = {}
    for path in sorted(directory.glob("*.npz")):
        name, cls, seed = path.stem.rsplit("-", 2)
        if name not in datasets:
            datasets[name] = pe.load_dataset(name)
        ds, cls, seed = datasets[name], int(cls), int(seed[1:])
        for method, scores, extra in fused_rows(load_cell(path), 0.1):
            if (name, str(cls), method, str(seed)) in done:
                continue
            writer.write({"dataset": name, "class_index": cls, "class_name": pe.CLASS_NAMES[name][cls],
                          "device": "cpu", "data_source": ds.source, "threads": "", "rho": "", "method": method,
                          "seed": seed, "auc": f"{pe.auc_percent(ds.y_test, cls, scores):.4f}",
                          "iterations": "300 (ICS on embeddings)", "seconds": "",
                          "config": json.dumps({"size": size, **extra}, default=float),
                          "config_hash": pe.digest([method, size, "v2"]),
                          "note": f"from the component scores dumped by the run ({path.name})",
                          "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})


if __name__ == "__main__":
    main()
