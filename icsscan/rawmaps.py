"""Raw anomaly maps on disk (`scan --raw-maps`), for users who post-process maps, and the image sizes they need.

REPORT/raw_maps/ holds one NumPy file per scored image, `000001.npy`, `000002.npy`, … in scan order: the model's
map as float16, shape (map_height, map_width), at the model's map resolution (its input size / the backbone's
stride, e.g. 38 x 38 for a 300 px image), values as the model outputs them (standardised evidence: 0 = as typical
as the median normal location, higher = less typical). `index.csv` says which image each file belongs to:
`file,path,score,width,height,map_width,map_height`, where width and height are the original image's (after
EXIF rotation). The map covers the whole image, so a bilinear resize to (width, height) puts it on the image's
pixels: `icsscan.maps.upsample(np.load(file), (width, height))`.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

INDEX = "index.csv"
INDEX_COLUMNS = ["file", "path", "score", "width", "height", "map_width", "map_height"]


def original_size(path: str) -> tuple[int, int]:
    """(width, height) of an image as icsscan decodes it (after EXIF rotation), from its header only."""
    from PIL import Image

    with Image.open(path) as img:
        width, height = img.size
        turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    return (height, width) if turned else (width, height)


class RawMapWriter:
    """A scan map hook (row, pixels, map) that writes each map as float16 .npy into `folder` and a line of
    index.csv, then passes the call on to `then` (another hook, e.g. scan.MapKeeper). Memory: none kept."""

    def __init__(self, folder: Path, then: Callable | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.then, self.count = folder, then, 0
        self._index = open(folder / INDEX, "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._index)
        self._csv.writerow(INDEX_COLUMNS)

    def __call__(self, row, rgb: np.ndarray, anomaly_map: np.ndarray) -> None:
        from .files import neutralise

        self.count += 1
        name = f"{self.count:06d}.npy"
        np.save(self.folder / name, np.asarray(anomaly_map, dtype=np.float16))
        try:
            width, height = original_size(row.path)
        except Exception:  # noqa: BLE001 - the file changed since it was decoded: the size is unknown
            width = height = ""
        self._csv.writerow([name, neutralise(row.path), f"{row.score:.6f}", width, height,
                            anomaly_map.shape[1], anomaly_map.shape[0]])
        if self.then is not None:
            self.then(row, rgb, anomaly_map)

    def close(self) -> None:
        self._index.close()


def read_raw_maps(folder: str | Path) -> Iterator[tuple[str, np.ndarray, tuple[int, int] | None]]:
    """(image path, float16 map, original (width, height) or None) for each map in a scan's raw_maps/ folder."""
    folder = Path(folder)
    with open(folder / INDEX, newline="", encoding="utf-8") as f:
        for entry in csv.DictReader(f):
            size = (int(entry["width"]), int(entry["height"])) if entry["width"] else None
            path = entry["path"][1:] if entry["path"].startswith("'") else entry["path"]
            yield path, np.load(folder / entry["file"]), size
