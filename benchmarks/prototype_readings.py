"""Which reading of issue 31's prototype gives the 0.851 the issue reports on magnetic tiles?

    python benchmarks/prototype_readings.py [--data-root ../shared/data] [--set magnetic_tile]
                                            [--readings squash,imagenet,crop,crop-imagenet,short,long] [--threads 1]

The issue describes its prototype in one line: "Lite0 stages 2-3 at 224 px, each map averaged over 3x3 neighbours,
a random 40,000-patch bank, image score = the maximum patch distance". benchmarks/industrial.py's baseline row
reads "at 224 px" as a 224x224 resize with the network's own [-1, 1] inputs and gets 0.681 there. The other
readings, each scored the same way (seed 0 bank draw, squared distance, max over the map):
  squash         the image resized to 224x224, inputs in [-1, 1] (the baseline row's reading)
  imagenet       the same, inputs normalised with ImageNet's mean and std instead
  crop           torchvision's Resize(224) + CenterCrop(224): the short side at 224, the middle square kept
  crop-imagenet  both
  short / long   the aspect kept, the short (long) side at 224, no crop (one image per forward pass)
Writes benchmarks/results/prototype_readings.{csv,md}. Not the product: a check of the baseline row.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
RESULTS = HERE / "results"
SIDE = 224
BANK = 40_000


def load(path: str, reading: str):
    import torch
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        if reading.startswith("crop"):
            s = SIDE / min(w, h)
            img = img.resize((max(SIDE, round(w * s)), max(SIDE, round(h * s))), Image.BILINEAR)
            w, h = img.size
            left, top = (w - SIDE) // 2, (h - SIDE) // 2
            img = img.crop((left, top, left + SIDE, top + SIDE))
        elif reading in ("short", "long"):
            s = SIDE / (min(w, h) if reading == "short" else max(w, h))
            img = img.resize((max(16, round(w * s)), max(16, round(h * s))), Image.BILINEAR)
        else:
            img = img.resize((SIDE, SIDE), Image.BILINEAR)
        return torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1)


def features(net, paths: list[str], reading: str) -> list:
    """Each image's (h, w, 152) map: stages 2 and 3, the coarser upsampled, averaged over 3x3 neighbours."""
    import torch
    from torch.nn import functional as F

    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    step = 1 if reading in ("short", "long") else 16  # sizes differ per image when the aspect is kept
    out = []
    with torch.no_grad():
        for i in range(0, len(paths), step):
            x = torch.stack([load(p, reading) for p in paths[i:i + step]])
            x = (x - mean) / std if reading.endswith("imagenet") else x * 2 - 1
            a, b = net(x)
            e = torch.cat([a, F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)], 1)
            e = F.avg_pool2d(e, 3, stride=1, padding=1, count_include_pad=False)
            out += list(e.permute(0, 2, 3, 1))
    return out


def score(reading: str, train: list[str], test: list[str], net, seed: int) -> np.ndarray:
    import torch

    from icsscan.knn import nearest_bank_distance

    patches = torch.cat([t.reshape(-1, t.shape[-1]) for t in features(net, train, reading)])
    bank = patches[torch.randperm(len(patches), generator=torch.Generator().manual_seed(seed))[:BANK]]
    centre = bank.mean(0)
    return np.array([float(nearest_bank_distance(q.reshape(1, -1, q.shape[-1]) - centre, bank - centre).max())
                     for q in features(net, test, reading)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=os.environ.get("ICSSCAN_DATA", str(HERE.parent.parent / "shared" / "data")))
    ap.add_argument("--set", default="magnetic_tile")
    ap.add_argument("--readings", default="squash,imagenet,crop,crop-imagenet,short,long")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from sklearn.metrics import roc_auc_score

    from icsscan.backbones import pretrained_network
    from icsscan.data import find_images
    from icsscan.labels import folder_items
    from icsscan.runinfo import machine, now_iso, versions

    torch.set_num_threads(args.threads)
    base = Path(args.data_root) / "industrial" / args.set
    items = folder_items(base / "test")
    test, y = [i.path for i in items], np.array([i.label for i in items])
    train = [str(p) for p in find_images(base / "train" / "good")]
    net = pretrained_network("efficientnet-lite0", True, (2, 3)).eval()
    rows = []
    for reading in args.readings.split(","):
        t = time.perf_counter()
        auc = roc_auc_score(y, score(reading, train, test, net, args.seed))
        rows.append({"set": args.set, "reading": reading, "auc": round(float(auc), 4),
                     "seconds": round(time.perf_counter() - t, 1), "seed": args.seed})
        print(rows[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "prototype_readings.csv", "w", newline="", encoding="utf-8") as f:
        out = csv.DictWriter(f, list(rows[0]))
        out.writeheader()
        out.writerows(rows)
    command = "python benchmarks/prototype_readings.py " + " ".join(sys.argv[1:])
    lines = ["# Readings of issue 31's prototype (`benchmarks/prototype_readings.py`)", "",
             f"`{command}`, {now_iso()}, torch {args.threads} thread(s); machine `{json.dumps(machine())}`; "
             f"versions `{json.dumps(versions())}`. The issue reports 0.851 for its prototype on magnetic tiles.", "",
             "| set | reading | image AUROC | seconds |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {r['set']} | {r['reading']} | {r['auc']} | {r['seconds']} |" for r in rows]
    (RESULTS / "prototype_readings.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
