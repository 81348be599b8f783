"""Build sample_data/ from Fashion-MNIST in ../shared/data (or --data-root / $ICSSCAN_DATA).

good/      : 400 sneakers from the training set (the "known-good parts")
incoming/  : 60 held-back sneakers from the test set + 60 other items (10 classes minus sneaker)
labels.csv : path,label,class_name for incoming/ (label 1 = anomaly), to measure AUC of the demo
Deterministic (seeded); writes 28x28 greyscale PNGs.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
NORMAL = 7  # Sneaker


def main() -> None:
    here = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-root", default=os.environ.get("ICSSCAN_DATA", str(here.parent / "shared" / "data")))
    ap.add_argument("--out", default=str(here / "sample_data"))
    ap.add_argument("--n-good", type=int, default=400)
    ap.add_argument("--n-incoming-normal", type=int, default=60)
    ap.add_argument("--n-incoming-other", type=int, default=60)
    args = ap.parse_args()
    from torchvision.datasets import FashionMNIST

    train, test = (FashionMNIST(args.data_root, train=t, download=False) for t in (True, False))
    x_tr, y_tr, x_te, y_te = train.data.numpy(), train.targets.numpy(), test.data.numpy(), test.targets.numpy()
    rng = np.random.default_rng(0)
    out = Path(args.out)
    for sub in ("good", "incoming"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True)
    good = rng.choice(np.flatnonzero(y_tr == NORMAL), args.n_good, replace=False)
    for k, i in enumerate(sorted(good)):
        Image.fromarray(x_tr[i]).save(out / "good" / f"sneaker_{k:04d}.png", optimize=True)
    normal = rng.choice(np.flatnonzero(y_te == NORMAL), args.n_incoming_normal, replace=False)
    other = rng.choice(np.flatnonzero(y_te != NORMAL), args.n_incoming_other, replace=False)
    rows = []
    for k, i in enumerate(rng.permutation(np.concatenate([normal, other]))):
        name = f"item_{k:04d}.png"
        Image.fromarray(x_te[i]).save(out / "incoming" / name, optimize=True)
        rows.append((f"incoming/{name}", int(y_te[i] != NORMAL), CLASSES[y_te[i]]))
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "class_name"])
        w.writerows(rows)
    print(f"wrote {len(good)} good and {len(rows)} incoming images to {out}")


if __name__ == "__main__":
    main()
