"""Labelled inputs for `icsscan evaluate`: which images are good or defective, of which class, with which mask.

Two sources: the MVTec AD layout of a folder (good/ = label 0, every other sub-folder a defect class; masks in
ground_truth/<class>/) or a labels CSV (path, label, optional class and mask columns).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from . import data
from .errors import UsageError

GOOD = "good"
GOOD_WORDS = {"0", "good", "normal", "ok", "false"}
DEFECT_WORDS = {"1", "defect", "anomaly", "anomalous", "bad", "ng", "true"}


@dataclass(slots=True)
class Item:
    """One labelled image: label 0 = good, 1 = defect; `cls` = its class (folder name; "good" for good ones)."""

    path: str
    label: int
    cls: str
    mask: str | None = None


# --------------------------------------------------------------------------------------------- inputs

def find_items(data_dir: Path | None, masks: Path | None = None, labels_csv: Path | None = None) -> list[Item]:
    """The labelled images: from `labels_csv` (paths relative to `data_dir`, else to the CSV's folder), or from
    the MVTec AD layout of `data_dir` (good/ = label 0, every other sub-folder a defect class; masks under
    `masks` or DATA/../ground_truth). Raises UsageError for unusable input, including a single class."""
    if labels_csv is not None:
        items = read_labels_csv(labels_csv, data_dir)
    elif data_dir is None:
        raise UsageError("give DATA (a folder with good/ and defect sub-folders) or --labels labels.csv")
    else:
        items = folder_items(data_dir, masks)
    check_both_labels(items, str(labels_csv or data_dir))
    return items


def folder_items(root: Path, masks: Path | None = None) -> list[Item]:
    """MVTec AD layout: root/good/** (label 0), root/<class>/** (label 1); masks masks/<class>/<stem>*, by default
    root/../ground_truth/<class>/<stem>* (MVTec: <stem>_mask.png)."""
    if not root.is_dir():
        raise UsageError(f"{root}: no such folder")
    if masks is not None and not masks.is_dir():
        raise UsageError(f"--masks {masks}: no such folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p for p in root.iterdir() if p.is_file() and data.is_image_file(p)]
    if loose:
        raise UsageError(f"{data.printable(loose[0])}: images directly in {root} have no class; put them in "
                         f"{root / GOOD}/ or {root}/<defect class>/, or list them with --labels")
    if GOOD not in classes:
        hint = f" (did you mean {root / 'test'}?)" if (root / "test" / GOOD).is_dir() else ""
        raise UsageError(f"{root}: no {GOOD}/ sub-folder: evaluate needs good images in {root / GOOD}/ and defects "
                         f"in other sub-folders{hint}")
    mask_root = masks if masks is not None else root.parent / "ground_truth"
    items: list[Item] = []
    for cls in classes:
        index = mask_index(mask_root / cls) if cls != GOOD and mask_root.is_dir() else {}
        base = root / cls
        for path in data.iter_images(base):
            rel = os.path.splitext(os.path.relpath(path, base))[0]
            items.append(Item(path, 0 if cls == GOOD else 1, cls, find_mask(index, rel)))
    return items


def mask_index(folder: Path) -> dict[str, str]:
    """{relative path without extension: file} of the image files below `folder` (empty if there is none)."""
    if not folder.is_dir():
        return {}
    return {os.path.splitext(os.path.relpath(p, folder))[0]: p for p in data.iter_images(folder)}


def find_mask(index: dict[str, str], stem: str) -> str | None:
    """The mask of the image whose relative path without extension is `stem`: `<stem>_mask`, `<stem>`, or else
    the first (by name) `<stem>_…` / `<stem>-…`."""
    if not index:
        return None
    for key in (stem + "_mask", stem):
        if key in index:
            return index[key]
    matches = sorted(k for k in index if k.startswith((stem + "_", stem + "-")))
    return index[matches[0]] if matches else None


def read_labels_csv(path: Path, base: Path | None = None) -> list[Item]:
    """Rows `path,label[,mask]` (a header naming path, label, mask and class / class_name columns is optional);
    label 0/1 or good/defect; relative paths are taken from `base`, else from the CSV's folder."""
    if not path.is_file():
        raise UsageError(f"--labels {path}: no such file")
    base = base if base is not None else path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"--labels {path}: cannot read ({exc})") from None
    if not rows:
        raise UsageError(f"--labels {path}: no rows")
    header = [c.strip().lower() for c in rows[0]]
    if header[0] == "path":
        columns = {name: i for i, name in enumerate(header)}
        if "label" not in columns:
            raise UsageError(f"--labels {path}: the header has no 'label' column")
        rows, first_line = rows[1:], 2
    else:
        columns, first_line = {"path": 0, "label": 1, "mask": 2}, 1
    col_path, col_label = columns["path"], columns["label"]
    col_mask = columns.get("mask", columns.get("mask_path"))
    col_class = columns.get("class", columns.get("class_name"))
    items = []
    for line, row in enumerate(rows, first_line):
        cell = lambda i: row[i].strip() if i is not None and i < len(row) else ""  # noqa: E731
        if not cell(col_path):
            raise UsageError(f"--labels {path}, line {line}: no path")
        word = cell(col_label).lower()
        if word in GOOD_WORDS:
            label = 0
        elif word in DEFECT_WORDS:
            label = 1
        else:
            raise UsageError(f"--labels {path}, line {line}: label {cell(col_label)!r} is not 0/1 (or good/defect)")
        mask = cell(col_mask)
        cls = GOOD if label == 0 else (cell(col_class) or "defect")
        items.append(Item(str(base / cell(col_path)), label, cls, str(base / mask) if mask else None))
    return items


def check_both_labels(items: Sequence[Item], where: str) -> None:
    labels = {item.label for item in items}
    if labels != {0, 1}:
        if not items:
            raise UsageError(f"{where}: no images found")
        have = "good" if labels == {0} else "defective"
        raise UsageError(f"{where}: only {have} images ({len(items)}); evaluate needs both good and defective ones")


def load_mask(path: str, size_wh: tuple[int, int]) -> np.ndarray:
    """A ground-truth mask as bool (height, width) at `size_wh` (nearest neighbour if its size differs);
    any image mode, non-zero = defect. Raises data.DecodeError."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.seek(0)
            if img.mode not in ("1", "L", "I", "I;16", "F"):
                img = img.convert("L")
            if img.size != tuple(size_wh):
                img = img.resize(tuple(size_wh), Image.Resampling.NEAREST)
            return np.asarray(img) != 0
    except Exception as exc:  # noqa: BLE001 - a bad mask costs that image's pixel metrics, never the run
        raise data.DecodeError(f"mask {data.printable(path)}: {' '.join(str(exc).split()) or type(exc).__name__}") from None
