"""Two ideas for issue 31 measured on the suite, neither adopted: the global term spread over the map's cells, and
position-aware patch statistics.

    python benchmarks/map_position_study.py [--data-root ../shared/data] [--sets casting,deeppcb,magnetic_tile]
                                            [--studies cells,position] [--threads 2]

Both read each set's default model (benchmarks/.cache/industrial/SET-model, as benchmarks/industrial.py leaves it;
trained with `icsscan train SET/train/good --seed 0` when missing) through the library, in PyTorch.

cells     The map in the score's units (map_units logit) gives every cell of an image the same global term: the
          weighted, standardised gknn, the squared distance of the image's mean patch embedding m to its nearest
          training image's t. That distance splits exactly over the cells: with q_c a cell's embedding (centred
          like m), a_c = <q_c - t, m - t> averages to |m - t|^2 over the image. Variants replace the uniform term:
          "cells σ" gives each cell w·slog((blur_σ(a)_c - centre) / spread) (gknn's own weight, centre and spread);
          "share σ" gives it G · max(blur_σ(a)_c / |m - t|^2, 0) (G the image's global term: the same total,
          placed where the difference lies). Image scores do not change (they are read before the map). Reported:
          pixel AUROC and AUPRO@0.3 against the masks (icsscan.metrics, maps upsampled to each image's size), and
          the share of test images whose map peaks on a border row or column. "bound" is no method: every cell of
          every defect image raised above every good image's cells (from the labels), i.e. the pixel AUROC that a
          perfect image-level term would give with today's localisation inside each image. Sets whose gknn the gate dropped
          (weight 0) are skipped: nothing to spread.
position  For aligned parts a cell could be compared with the same place of other parts (PaDiM-like) instead of
          with every normal patch (the bank). "pos r": each cell's squared distance to the nearest patch of 64
          random training images within r cells of the same position; the image value is the mean of the
          map's 10 highest cells (as the product's). Alone, and added to the default's logit as w·slog(robust z)
          with the median and spread of 64 other training images' values (not in the position bank).

Writes benchmarks/results/map_position_study.{csv,md}.
"""
from __future__ import annotations

import argparse
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
CACHE = HERE / ".cache" / "industrial"
RESULTS = HERE / "results"
BATCH = 8
BANK_IMAGES = 64
WEIGHTS = (0.25, 0.5, 1.0)


def model_for(base: Path, name: str) -> Path:
    model = CACHE / f"{name}-model"
    if not (model / "config.json").exists():
        subprocess.run([sys.executable, "-m", "icsscan", "train", str(base / "train" / "good"), "--out", str(model),
                        "--seed", "0", "--force"], check=True)
    return model


def pixels(det, paths: list[str]):
    """The images at the model's working size, as the scorer takes them (N, C, H, W) float in [0, 1]."""
    import torch

    size = (det.config_.image_size, det.config_.image_height)
    loaded = det._read(paths, size, warn=False)
    if loaded.failures:
        raise SystemExit(f"unreadable test images: {[f.path for f in loaded.failures]}")
    return det._tensor(loaded.images, torch.device("cpu"))


def gaussian_blur(m, sigma: float):
    """(N, h, w) blurred by a Gaussian of σ cells, edges replicated (the same as LocalScorer.blurred)."""
    import math

    import torch
    from torch.nn import functional as F

    if not sigma:
        return m
    r = max(1, math.ceil(3 * sigma))
    taps = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2)
    k = (taps / taps.sum()).to(m.dtype)
    x = F.pad(m[:, None], (r, r, r, r), mode="replicate")
    return F.conv2d(F.conv2d(x, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))[:, 0]


def border_share(maps: list[np.ndarray]) -> float:
    hits = 0
    for m in maps:
        i, j = np.unravel_index(int(np.argmax(m)), m.shape)
        hits += i in (0, m.shape[0] - 1) or j in (0, m.shape[1] - 1)
    return hits / len(maps)


def pixel_metrics(items, maps: list[np.ndarray]) -> dict:
    from icsscan.labels import load_mask
    from icsscan.maps import upsample
    from icsscan.metrics import PixelAccumulator
    from icsscan.rawmaps import original_size

    if not any(i.mask for i in items):
        return {}  # no masks (casting): border peaks only
    acc = PixelAccumulator()
    for item, m in zip(items, maps):
        if item.label == 1 and not item.mask:
            continue
        size = original_size(item.path)
        truth = load_mask(item.mask, size) if item.mask else np.zeros(size[::-1], bool)
        acc.add(upsample(m, size), truth)
    return {"pixel_auroc": acc.pixel_auroc(), "aupro": acc.aupro(), "auroc_tie_bound": acc.auroc_tie_bound()}


# ------------------------------------------------------------------------------------------------ cells

def cell_terms(scorer, x):
    """For a batch: the map as the model outputs it, its local part (local term − offset), the image's global
    term G, gknn's value and the per-cell split a (N, h, w) of gknn."""
    import torch

    values, maps = scorer.components(x)
    heat = scorer.heat(maps)
    out = scorer.output_map(heat, values)
    local = scorer.local_term(heat) - scorer.offset
    g_term = torch.as_tensor(scorer.image_terms(values)).reshape(-1)
    e = scorer.features(x)
    n, d, h, w = e.shape
    q = e.permute(0, 2, 3, 1).reshape(n, h * w, d) - scorer.train_mean
    m = q.mean(1)
    nearest = torch.cdist(m.double(), scorer.train_embeddings.double()).argmin(1)
    t = scorer.train_embeddings[nearest]
    a = ((q - t[:, None]) * (m - t)[:, None]).sum(-1).view(n, h, w)
    return out, local, g_term, values["gknn"], a


def cells_study(name: str, det, items) -> list[dict]:
    import torch

    scorer = det.scorer_.eval()
    fusion = {k: float(v) for k, v in (getattr(det, "fusion_", None) or {}).items()}
    weight = float(scorer.gknn_weight)
    if weight == 0.0 or "gknn" not in scorer.parts:
        return [{"study": "cells", "set": name, "variant": "skipped: gknn weight 0 (gated off), nothing to spread"}]
    assert scorer.scores_map() and not scorer.smoothing, "the study starts from the default map (logit, no blur)"
    sigmas = (0, 2, 3, 4, 6)
    variants: dict[str, list[np.ndarray]] = {"default (uniform global term)": []}
    for s in sigmas:
        variants[f"cells σ{s}"] = []
        variants[f"share σ{s}"] = []
    check = []
    x_all = pixels(det, [i.path for i in items])
    with torch.no_grad():
        for b in range(0, len(items), BATCH):
            out, local, g_term, gknn, a = cell_terms(scorer, x_all[b:b + BATCH])
            base = local + g_term.view(-1, 1, 1)
            check.append(float((out - base).abs().max()))
            check.append(float((a.flatten(1).mean(1) - gknn).abs().max() / gknn.abs().max()))
            variants["default (uniform global term)"] += list(out.numpy())
            for s in sigmas:
                blurred = gaussian_blur(a, s)
                cells = local + weight * scorer.standardised("gknn", blurred)
                share = local + g_term.view(-1, 1, 1) * (blurred / gknn.view(-1, 1, 1)).clamp_min(0)
                variants[f"cells σ{s}"] += list(cells.numpy())
                variants[f"share σ{s}"] += list(share.numpy())
    # the bound: every defect image's map lifted above every good image's (by the maps' whole range, not more:
    # the pixel metrics count float16-rounded values)
    default = variants["default (uniform global term)"]
    lift = float(max(m.max() for m in default) - min(m.min() for m in default)) + 1.0
    variants["bound: every defect image lifted above every good one (labels)"] = [
        m + lift * item.label for m, item in zip(default, items)]
    print(f"{name}: map rebuilt from its parts within {max(check[0::2]):.1e}; "
          f"mean of a over cells = gknn within {max(check[1::2]):.1e} (relative)", flush=True)
    rows = []
    for variant, maps in variants.items():
        px = pixel_metrics(items, maps)
        rows.append({"study": "cells", "set": name, "variant": variant, **{k: round(v, 4) for k, v in px.items()},
                     "border_peaks": round(border_share(maps), 4), "gknn_weight": round(weight, 3),
                     "fusion": json.dumps({k: round(v, 3) for k, v in fusion.items() if k.startswith("gknn")})})
        print(rows[-1], flush=True)
    return rows


# --------------------------------------------------------------------------------------------- position

def embeddings(scorer, x):
    import torch

    with torch.no_grad():
        return torch.cat([scorer.features(x[b:b + BATCH]) for b in range(0, len(x), BATCH)])


def position_map(q, bank, r: int):
    """(N, h, w): each cell's squared distance to the nearest of `bank`'s (M, D, h, w) patches within r cells of
    the same position (offsets past the map's edge are not candidates)."""
    import torch

    n, d, h, w = q.shape
    best = torch.full((n, h, w), float("inf"))
    q2 = (q * q).sum(1)
    for di in range(-r, r + 1):
        for dj in range(-r, r + 1):
            # bank patch at (i + di, j + dj) for query cell (i, j)
            shifted = torch.full_like(bank, float("nan"))
            ys, yd = slice(max(0, di), h + min(0, di)), slice(max(0, -di), h + min(0, -di))
            xs, xd = slice(max(0, dj), w + min(0, dj)), slice(max(0, -dj), w + min(0, -dj))
            shifted[:, :, yd, xd] = bank[:, :, ys, xs]
            valid = ~torch.isnan(shifted[:, 0])  # (M, h, w)
            shifted = torch.nan_to_num(shifted)
            b2 = (shifted * shifted).sum(1)  # (M, h, w)
            dot = torch.einsum("ndhw,mdhw->nmhw", q, shifted)
            dist = (q2[:, None] - 2 * dot + b2[None]).masked_fill(~valid[None], float("inf"))
            best = torch.minimum(best, dist.min(1).values)
    return best.clamp_min(0)


def position_values(q_all, bank, r: int) -> np.ndarray:
    """The image values (top-10 mean) of the position maps of embeddings (N, D, h, w)."""
    import torch

    from icsscan.local import top_k_mean

    with torch.no_grad():
        return torch.cat([top_k_mean(position_map(q_all[b:b + BATCH], bank, r))
                          for b in range(0, len(q_all), BATCH)]).double().numpy()


def position_study(name: str, det, items, train: list[str], radii=(0, 1, 2)) -> list[dict]:
    import torch
    from sklearn.metrics import roc_auc_score

    from icsscan.fusion import robust_center_scale, standardised

    t = time.perf_counter()
    scorer = det.scorer_.eval()
    y = np.array([i.label for i in items])
    gen = torch.Generator().manual_seed(0)
    # a loaded model keeps no image lists: the bank's images and the reference are two disjoint random draws
    order = torch.randperm(len(train), generator=gen).tolist()
    bank = embeddings(scorer, pixels(det, [train[i] for i in order[:BANK_IMAGES]]))
    reference = [train[i] for i in order[BANK_IMAGES:2 * BANK_IMAGES]]
    q_ref = embeddings(scorer, pixels(det, reference))
    x_test = pixels(det, [i.path for i in items])
    with torch.no_grad():
        scores = np.concatenate([scorer(x_test[b:b + BATCH])[0].double().numpy()
                                 for b in range(0, len(x_test), BATCH)])
    q_test = embeddings(scorer, x_test)
    del x_test
    logit = np.log(np.clip(scores, 1e-12, 1)) - np.log(np.clip(1 - scores, 1e-12, 1))
    rows = [{"study": "position", "set": name, "variant": "default", "auc": round(roc_auc_score(y, scores), 4)}]
    print(rows[-1], flush=True)
    for r in radii:
        values = position_values(q_test, bank, r)
        center, scale = robust_center_scale(position_values(q_ref, bank, r))
        z = standardised(values, center, scale)
        rows.append({"study": "position", "set": name, "variant": f"pos r{r} alone",
                     "auc": round(roc_auc_score(y, values), 4), "reference_images": len(reference)})
        print(rows[-1], flush=True)
        for wgt in WEIGHTS:
            rows.append({"study": "position", "set": name, "variant": f"default + {wgt}·pos r{r}",
                         "auc": round(roc_auc_score(y, logit + wgt * z), 4)})
            print(rows[-1], flush=True)
    rows[0]["seconds"] = round(time.perf_counter() - t, 1)
    return rows


# ------------------------------------------------------------------------------------------------ report

FIELDS = ["study", "set", "variant", "auc", "pixel_auroc", "aupro", "auroc_tie_bound", "border_peaks", "gknn_weight", "reference_images",
          "seconds", "fusion"]


def write(rows: list[dict], command: str, threads: int) -> None:
    from icsscan.runinfo import machine, now_iso, versions

    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "map_position_study.csv", "w", newline="", encoding="utf-8") as f:
        out = csv.DictWriter(f, FIELDS, extrasaction="ignore")
        out.writeheader()
        out.writerows(rows)
    lines = ["# The global term over the map's cells; position-aware patch statistics (`benchmarks/map_position_study.py`)",
             "", f"`{command}`, {now_iso()}, torch {threads} thread(s); machine `{json.dumps(machine())}`; versions "
             f"`{json.dumps(versions())}`. Each set's default model (seed 0) through the library in PyTorch. "
             "Neither idea is adopted: see benchmarks/results/industrial.md's notes.", ""]
    cells = [r for r in rows if r["study"] == "cells"]
    if cells:
        lines += ["## The global term spread over the map's cells (image scores unchanged)", "",
                  "| set | map | pixel AUROC | AUPRO@0.3 | peaks on the border |", "| --- | --- | ---: | ---: | ---: |"]
        lines += [f"| {r['set']} | {r['variant']} | {r.get('pixel_auroc', '')} | {r.get('aupro', '')} | "
                  f"{r.get('border_peaks', '')} |" for r in cells]
        lines.append("")
    pos = [r for r in rows if r["study"] == "position"]
    if pos:
        lines += ["## Position-aware patch kNN (image AUROC)", "", "| set | score | AUROC |", "| --- | --- | ---: |"]
        lines += [f"| {r['set']} | {r['variant']} | {r['auc']} |" for r in pos]
        lines.append("")
    (RESULTS / "map_position_study.md").write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=os.environ.get("ICSSCAN_DATA", str(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--sets", default="casting,deeppcb,magnetic_tile")
    ap.add_argument("--studies", default="cells,position")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from icsscan import ICSDetector
    from icsscan.labels import folder_items

    torch.set_num_threads(args.threads)
    studies = args.studies.split(",")
    rows = []
    for name in args.sets.split(","):
        base = Path(args.data_root) / "industrial" / name
        det = ICSDetector.load(model_for(base, name), device="cpu")
        items = folder_items(base / "test")
        if "cells" in studies:
            rows += cells_study(name, det, items)
        if "position" in studies:
            from icsscan.data import find_images

            rows += position_study(name, det, items, [str(p) for p in find_images(base / "train" / "good")])
    # rows of sets or studies not rerun are kept (a study can run per set, in parallel processes: read at the end)
    path, kept = RESULTS / "map_position_study.csv", []
    if path.exists():
        with open(path, newline="", encoding="utf-8") as f:
            kept = [r for r in csv.DictReader(f)
                    if not (r["set"] in args.sets.split(",") and r["study"] in studies)]
    command = "python benchmarks/map_position_study.py " + " ".join(sys.argv[1:])
    write([{k: v for k, v in r.items() if v not in ("", None)} for r in kept] + rows, command, args.threads)


if __name__ == "__main__":
    main()
