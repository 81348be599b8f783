"""Carry the Table 1 datasets to a GPU machine that cannot reach ../shared or the internet, and rebuild them there.

The device tool sends the working tree plus at most 64 MiB of carried, git-ignored paths per call, so the data
travels in two packs, one per call (each under the limit together with the repository):

    python benchmarks/device_pack.py pack                       # here: writes .gpupack/digits/ and .gpupack/cifar/
    python benchmarks/device_pack.py unpack --to /tmp/data      # there: rebuilds a data root from what was carried

`digits` holds the original MNIST and Fashion-MNIST IDX files, gzip'ed (torchvision reads them after gunzip).
`cifar` holds the CIFAR-10 JPEG copy byte for byte (one blob + an index), so the other side rebuilds the very
same `CIFAR10-jpeg/{train,test}/<class>/*.jpg` tree and `ImageFolder` reads it as here. The pack records the
SHA-256 of every decoded array here; `unpack` decodes them there and prints whether each matches, because a
different Pillow/libjpeg could decode a JPEG differently (the result rows would then not be the same data).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import paper_eval as pe  # noqa: E402

PACK = HERE.parent / ".gpupack"
IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DIGIT_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def array_digest(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


def dataset_digests(name: str, root: Path) -> dict[str, str]:
    ds = pe.load_dataset(name, root)
    return {"x_train": array_digest(ds.x_train), "y_train": array_digest(ds.y_train),
            "x_test": array_digest(ds.x_test), "y_test": array_digest(ds.y_test), "source": ds.source}


def pack_digits(root: Path, out: Path) -> dict:
    manifest = {}
    for name, folder in DIGIT_FOLDERS.items():
        (out / folder).mkdir(parents=True, exist_ok=True)
        for f in IDX:
            with open(root / folder / "raw" / f, "rb") as src, gzip.open(out / folder / f"{f}.gz", "wb", 9) as dst:
                shutil.copyfileobj(src, dst)
        manifest[name] = dataset_digests(name, root)
    return manifest


def pack_cifar(root: Path, out: Path) -> dict:
    """Every JPEG's bytes appended to one blob; the index keeps (relative path, offset, length)."""
    jpeg = root / "CIFAR10-jpeg"
    files = sorted(p for p in jpeg.rglob("*") if p.is_file())
    out.mkdir(parents=True, exist_ok=True)
    index, offset = [], 0
    with open(out / "cifar10-jpeg.blob", "wb") as blob:
        for p in files:
            data = p.read_bytes()
            blob.write(data)
            index.append([p.relative_to(jpeg).as_posix(), offset, len(data)])
            offset += len(data)
    with gzip.open(out / "cifar10-jpeg.index.json.gz", "wt", encoding="utf-8") as f:
        json.dump(index, f)
    return {"cifar10": dataset_digests("cifar10", root)}


def pack(root: Path) -> None:
    for group, builder in (("digits", pack_digits), ("cifar", pack_cifar)):
        out = PACK / group
        shutil.rmtree(out, ignore_errors=True)
        manifest = builder(root, out)
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        print(f"{out}: {size / 2**20:.1f} MiB")


def unpack(to: Path, pack_dir: Path) -> int:
    """Rebuild the data root from whichever packs were carried; 1 when a decoded array differs from here."""
    found, bad = [], 0
    digits, cifar = pack_dir / "digits", pack_dir / "cifar"
    if (digits / "manifest.json").exists():
        for folder in DIGIT_FOLDERS.values():
            raw = to / folder / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            for f in IDX:
                with gzip.open(digits / folder / f"{f}.gz", "rb") as src, open(raw / f, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        found.append(json.loads((digits / "manifest.json").read_text(encoding="utf-8")))
    if (cifar / "manifest.json").exists():
        with gzip.open(cifar / "cifar10-jpeg.index.json.gz", "rt", encoding="utf-8") as f:
            index = json.load(f)
        with open(cifar / "cifar10-jpeg.blob", "rb") as blob:
            for rel, offset, length in index:
                path = to / "CIFAR10-jpeg" / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                blob.seek(offset)
                path.write_bytes(blob.read(length))
        found.append(json.loads((cifar / "manifest.json").read_text(encoding="utf-8")))
    if not found:
        print(f"device_pack: no pack under {pack_dir} (carry .gpupack/digits or .gpupack/cifar)", file=sys.stderr)
        return 2
    for manifest in found:
        for name, want in manifest.items():
            got = dataset_digests(name, to)   # also fills the bench cache, so workers do not all decode at once
            same = all(got[k] == want[k] for k in ("x_train", "y_train", "x_test", "y_test"))
            bad += not same
            print(f"device_pack: {name} ({got['source']}) decoded {'identical to' if same else 'DIFFERENT from'}"
                  " the arrays the pack was made from")
    return 1 if bad else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="verb", required=True)
    a = sub.add_parser("pack", help="here: write .gpupack/digits and .gpupack/cifar from the data root")
    a.add_argument("--data-root", type=Path, default=pe.default_data_root())
    b = sub.add_parser("unpack", help="there: rebuild a data root from the carried packs")
    b.add_argument("--to", type=Path, required=True)
    b.add_argument("--pack-dir", type=Path, default=PACK)
    args = p.parse_args(argv)
    if args.verb == "pack":
        pack(args.data_root)
        return 0
    return unpack(args.to, args.pack_dir)


if __name__ == "__main__":
    raise SystemExit(main())
