"""Seed study of the local default: the product's own fit, replayed on cached backbone features.

How much does the default's AUC on an inspection set move with the seed, and does a change of the ICS head's
training (steps, weight averaging, batch) raise it on every seed or on one? Each seed changes the fit /
calibration split, the memory bank, the synthetic defects and the head's initialisation, exactly as
`icsscan train --seed S` does. A full `icsscan train` + `scan` of deeppcb costs ~5 min; here the frozen
backbone's features of every training and test image are computed once (onnxruntime, cached under
benchmarks/.cache/local_seeds), and only what the seed and the variant change is recomputed, in the product's
own code path: local.embed_images / greedy_coreset / synthetic_defect_patches / train_ics_head, then
fusion.fit_local_fusion and LocalScorer's fused score. Checked against the CLI: deeppcb seed 0 0.9108 here vs
0.9111 through `icsscan train` + `scan` (ONNX); casting 0.9937 vs 0.9938.

    python benchmarks/local_seeds.py --sets deeppcb,casting --seeds 0,1,2 \
        --variants "patch_ema=0;patch_ema=0.995;patch_iterations=2000,patch_ema=0"

Features are cached per set and patch_pool (benchmarks/.cache/local_seeds/<set>-pool<K>).
A variant is config overrides (`key=value,...`), plus `synthetic_images=N`: the number of training images given
synthetic defects for the ICS head's atypical side (local.SYNTHETIC_SPLIT_IMAGES, not a config field), and
`top_k=N`: the locations averaged into a map's image value (local.TOP_K, in fitting and scoring alike).

Writes benchmarks/results/local_seeds.csv (one row per set × variant × seed; appended) and local_seeds.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from icsscan import ICSDetector, data  # noqa: E402
from icsscan import knn as K  # noqa: E402
from icsscan import local as L  # noqa: E402
from icsscan.backbones import PatchFeatures  # noqa: E402
from icsscan.tracing import onnx_runtime  # noqa: E402
from icsscan.config import preset_config, score_parts  # noqa: E402
from icsscan.thresholds import calibration_holdout  # noqa: E402
from icsscan.fusion import fit_local_fusion  # noqa: E402
from icsscan.runinfo import machine, now_iso, versions  # noqa: E402

RESULTS = HERE / "results"
DEFAULT_TOP_K = L.TOP_K
FIELDS = ["set", "variant", "seed", "default", "knn_pics", "pics", "knn", "gknn_weight", "head_train_s", "finished"]


def backbone_features(features: PatchFeatures, rgb: np.ndarray, channels: int, batch: int = 8) -> np.ndarray:
    """(N, h, w, D) float32 patch features of uint8 RGB images, in onnxruntime as fitting runs them."""
    images = L.FloatBatches(rgb, channels, torch.device("cpu"))
    out = []
    with torch.no_grad(), onnx_runtime(features, images[:1]):
        for i in range(0, len(images), batch):
            out.append(features(images[i:i + batch]).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


class Lookup(torch.nn.Module):
    """Stands in for PatchFeatures: its input is a column of row numbers (n, 1, 1, 1) into a feature table."""

    def __init__(self, table: np.ndarray):
        super().__init__()
        self.table, self.dim, self.stride = table, table.shape[-1], 8

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        picked = np.ascontiguousarray(self.table[rows.flatten().long().numpy()])
        return torch.from_numpy(picked).permute(0, 3, 1, 2).float()


def rows(indices) -> torch.Tensor:
    return torch.as_tensor(np.asarray(indices), dtype=torch.float32)[:, None, None, None]


def parse_variant(text: str) -> dict:
    if text in ("", "default"):
        return {}
    out = {}
    for item in text.split(","):
        key, value = item.split("=")
        out[key.strip()] = value.strip()
    return out


class SetCache:
    """One set's decoded training images and cached features (train, test, labels)."""

    def __init__(self, root: Path, name: str, cache: Path, features: PatchFeatures):
        self.name, self.dir, self.features = name, cache / f"{name}-pool{features.pool}", features
        self.dir.mkdir(parents=True, exist_ok=True)
        det = ICSDetector(config=preset_config("default", seed=0))
        det.verbose = False
        self.cfg, loaded, _, _ = det._load_for_fit(root / name / "train" / "good")
        self.images = loaded.images
        if not (self.dir / "train.npy").exists():
            np.save(self.dir / "train.npy", backbone_features(features, self.images, self.cfg.channels))
        if not (self.dir / "y.npy").exists():
            test = det._read(data.find_images(root / name / "test"), det.image_size_, warn=True)
            np.save(self.dir / "test.npy", backbone_features(features, test.images, self.cfg.channels))
            np.save(self.dir / "y.npy", np.array([1 if "/defect/" in p else 0 for p in test.paths]))
        self.train = np.load(self.dir / "train.npy", mmap_mode="r")
        self.test = np.load(self.dir / "test.npy", mmap_mode="r")
        self.y = np.load(self.dir / "y.npy")


def run_one(s: SetCache, seed: int, overrides: dict) -> dict:
    """The product's fit_local + calibration for this seed and config, scored on the cached test features."""
    from icsscan.metrics import image_metrics

    overrides = dict(overrides)
    n_synthetic = int(overrides.pop("synthetic_images", L.SYNTHETIC_SPLIT_IMAGES))  # not a config field: the module's
    L.TOP_K = int(overrides.pop("top_k", DEFAULT_TOP_K))  # nor this: locations averaged into a map's image value
    cfg = s.cfg.with_overrides(seed=seed, **{k: type(getattr(s.cfg, k))(v) for k, v in overrides.items()})
    n, h, w, _ = s.train.shape
    fit_idx, cal_idx = calibration_holdout(n, cfg.calibration_fraction, seed)
    fit_images = L.FloatBatches(s.images, cfg.channels, torch.device("cpu"), rows=fit_idx)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # as ICSDetector._load_for_fit, before the scorer (and its head) is built
    parts = score_parts(cfg.score)
    scorer = L.LocalScorer(cfg.channels, 1, len(fit_idx), parts, aggregate=cfg.local_aggregate, pretrained=False,
                           heads=cfg.patch_heads).eval()
    members = L.head_members(scorer.head)
    member_seeds = [seed + 1000 * k for k in range(len(members))]  # as local.fit_local
    scorer.features = Lookup(s.train)
    per_image = max(16, math.ceil(cfg.patch_candidates / len(fit_idx)))
    pooled, patches, owners = L.embed_images(scorer.features, rows(fit_idx), per_image, gen)
    chosen = K.greedy_coreset(patches, cfg.bank_size, gen) if cfg.bank == "coreset" else \
        torch.randperm(len(patches), generator=gen)[:cfg.bank_size]
    bank = patches[chosen]
    scorer.bank_mean, scorer.bank = bank.mean(0), bank - bank.mean(0)
    scorer.train_mean, scorer.train_embeddings = pooled.mean(0), pooled - pooled.mean(0)
    defective = []
    for member_seed in member_seeds:  # the defected copies' features depend on the seed only: cached
        synth_file = s.dir / (f"synthetic_{seed}.pt" if member_seed == seed else f"synthetic_{member_seed}_for_{seed}.pt")
        if n_synthetic != L.SYNTHETIC_SPLIT_IMAGES:
            synth_file = synth_file.with_name(synth_file.stem + f"_n{n_synthetic}.pt")
        if not synth_file.exists():
            torch.save(L.synthetic_defect_patches(s.features, fit_images, member_seed, n_images=n_synthetic), synth_file)
        defective.append(torch.load(synth_file, weights_only=True))
    t = time.perf_counter()
    L.train_patch_heads(members, member_seeds, patches, owners, chosen, gen, defective, cfg, True, {})
    head_s = time.perf_counter() - t
    scorer.eval()

    cal_file = s.dir / f"calibration_synthetic_{seed}.npy"  # held-out normals with a synthetic defect each
    if not cal_file.exists():
        defected = L.synthetic_defects(s.images[cal_idx], s.images[fit_idx[:64]], seed)
        np.save(cal_file, backbone_features(s.features, defected, cfg.channels))
    scorer.features = Lookup(np.concatenate([s.train[cal_idx], np.load(cal_file)]))
    nc = len(cal_idx)
    fusion = fit_local_fusion(scorer, rows(range(nc)), cfg, synthetic=rows(range(nc, 2 * nc)))[0]
    for key, value in fusion.items():
        if key in dict(scorer.named_buffers()):
            getattr(scorer, key).fill_(value)

    scorer.features = Lookup(s.test)
    knn_file = s.dir / f"knn_{seed}_{cfg.bank}_{cfg.bank_size}_{cfg.patch_candidates}.pt"  # the head does not enter
    with torch.no_grad():
        if knn_file.exists():
            knn, gknn = torch.load(knn_file, weights_only=True)
        else:
            knn, gknn = [], []
            for i in range(0, len(s.test), 8):
                maps, pooled_test = scorer.component_maps(rows(range(i, min(i + 8, len(s.test)))))
                knn.append(maps["knn"])
                gknn.append(K.knn_distance((pooled_test - scorer.train_mean)[None], scorer.train_embeddings)[0])
            knn, gknn = torch.cat(knn), torch.cat(gknn)
            torch.save((knn, gknn), knn_file)
        pics = torch.cat([scorer.head(torch.from_numpy(np.ascontiguousarray(s.test[i:i + 8])).float()).reshape(-1, h, w)
                          for i in range(0, len(s.test), 8)])
        values = {"knn": L.top_k_mean(knn), "pics": L.top_k_mean(pics), "gknn": gknn}
        heat = scorer.heat({"knn": knn, "pics": pics})
        score = scorer.fused_logit(values, heat)
        local_only = scorer.standardised("local", L.top_k_mean(heat))
    auc = lambda v: round(image_metrics(s.y, v.numpy())["auroc"], 4)  # noqa: E731
    return {"default": auc(score), "knn_pics": auc(local_only), "pics": auc(values["pics"]), "knn": auc(values["knn"]),
            "gknn_weight": round(float(fusion.get("gknn_weight", 0.0)), 4), "head_train_s": round(head_s, 1)}


def write_markdown(command: str, started: str) -> None:
    with open(RESULTS / "local_seeds.csv", newline="") as f:
        table = list(csv.DictReader(f))
    groups: dict = {}
    for r in table:
        groups.setdefault((r["set"], r["variant"]), {})[int(r["seed"])] = r
    lines = ["# Seed study of the local default (`benchmarks/local_seeds.py`)", "",
             f"Last command: `{command}`  ",
             f"Started {started}, finished {now_iso()}; torch threads: {torch.get_num_threads()}; machine: "
             f"`{json.dumps(machine())}`  ", f"Versions: `{json.dumps(versions())}`", "",
             "The product's fit replayed on cached backbone features, per seed (split, bank, synthetic defects, head "
             "initialisation all follow the seed, as `icsscan train --seed`). `default` is the default's image score; "
             "`knn_pics` the fused local map alone; `pics` and `knn` each component alone. Variants are config "
             "overrides of the default (one ICS head, 1,000 steps, weight average patch_ema 0.995, patch features not "
             "averaged: patch_pool 1, a 2,048-patch bank); `patch_pool=3,bank_size=4096` is the default before "
             "2026-12-02 10:00 (3×3-averaged features, 4,096 patches), and every row measured before then carries "
             "it; "
             "`patch_ema=0` is the head of the default before 2026-12-02 (no weight averaging); `patch_heads=3` an "
             "ensemble of three heads, each on its own synthetic-defect draw.", "",
             "| set | variant | seeds | default per seed | mean | min | pics per seed | knn per seed | head s |",
             "| --- | --- | --- | --- | ---: | ---: | --- | --- | ---: |"]
    for (name, variant), by_seed in sorted(groups.items()):
        seeds = sorted(by_seed)
        get = lambda k: [float(by_seed[s][k]) for s in seeds]  # noqa: E731
        d = get("default")
        lines.append(f"| {name} | {variant} | {','.join(map(str, seeds))} | {' / '.join(f'{v:.3f}' for v in d)} | "
                     f"{np.mean(d):.4f} | {min(d):.3f} | {' / '.join(f'{v:.3f}' for v in get('pics'))} | "
                     f"{' / '.join(f'{v:.3f}' for v in get('knn'))} | {np.mean(get('head_train_s')):.0f} |")
    (RESULTS / "local_seeds.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=os.environ.get("ICSSCAN_DATA", str(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--sets", default="deeppcb,casting")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default="default", help="';'-separated config overrides, e.g. 'patch_ema=0;default'")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=str(HERE / ".cache" / "local_seeds"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = now_iso()
    command = "python benchmarks/local_seeds.py " + " ".join(f'"{a}"' if ";" in a else a for a in sys.argv[1:])
    features: dict[int, PatchFeatures] = {}  # by patch_pool: the cached features depend on it
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "local_seeds.csv"
    if not out.exists():
        with open(out, "w", newline="") as f:
            csv.DictWriter(f, FIELDS).writeheader()
    root = Path(args.data_root) / "industrial"
    for name in args.sets.split(","):
        sets: dict[int, SetCache] = {}  # by patch_pool: decode the set once per pool, not once per variant
        for variant in args.variants.split(";"):
            pool = int(parse_variant(variant).get("patch_pool", preset_config("default").patch_pool))
            if pool not in features:
                features[pool] = PatchFeatures(pool=pool).eval()
            if pool not in sets:
                sets[pool] = SetCache(root, name, Path(args.cache), features[pool])
            s = sets[pool]
            for seed in (int(x) for x in args.seeds.split(",")):
                row = {"set": name, "variant": variant, "seed": seed, **run_one(s, seed, parse_variant(variant)),
                       "finished": now_iso()}
                print(json.dumps(row), flush=True)
                with open(out, "a", newline="") as f:
                    csv.DictWriter(f, FIELDS).writerow(row)
    write_markdown(command, started)


if __name__ == "__main__":
    main()
