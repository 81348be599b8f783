"""Find image files in folders and decode them into fixed-size uint8 arrays.

This module imports only Pillow and NumPy (never torch) because `scan` uses it too and must start fast.
Every decode either returns an array or raises `DecodeError` with a one-line reason; callers decide
whether a failure is skipped (train) or reported as a row (scan).
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps

from .errors import UsageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DEFAULT_MAX_PIXELS = 100_000_000  # 10k x 10k; larger declared sizes are treated as decompression bombs
GREY_TOLERANCE = 3  # max |R-G|, |G-B| (of 255) for an RGB image to count as grey (JPEG chroma noise)

# Truncated files must fail loudly, never decode as half-grey images.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# We check the declared size ourselves (see decode_image); keep Pillow's own guard as a second line.
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS
# Pillow's warnings about the files it reads (decompression-bomb size, EXIF and palette chatter) are not for our
# users: every real problem raises and becomes a reported row or a skip warning. Filtered once, here, because
# warnings.catch_warnings() swaps a process-wide list and is not safe in the decoding threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", module=r"PIL\.")


class DecodeError(Exception):
    """An image file could not be turned into an array; the message is the one-line reason."""


@dataclass(frozen=True)
class Failure:
    path: str
    reason: str


def printable(path: str | os.PathLike) -> str:
    """A file name for one-line messages: control characters (newline, tab, ...) and undecodable bytes escaped."""
    text = os.fspath(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def find_images(root: str | os.PathLike) -> list[Path]:
    """All image files below `root` (or `root` itself if it is a file), sorted, symlink loops avoided."""
    return [Path(p) for p in iter_images(root)]


def iter_images(root: str | os.PathLike) -> Iterator[str]:
    """The image files below `root` (or `root` itself if it is a file) as str paths, one at a time, in the
    order of their relative POSIX paths (the same on every OS).

    The walk is depth first with each folder's entries sorted by name, a sub-folder's name taken with a
    trailing "/": every path below folder "a" starts with "a/", so this visits files in exactly the sorted
    order of their relative paths while holding only the folders on the current branch, never the whole list.
    Directories are visited once each by their resolved path, so a symlink pointing back up the tree is not
    followed twice (the first one met in that order is the one listed).
    """
    root = Path(root)
    if root.is_file():
        if is_image_file(root):
            yield str(root)
        return
    seen_dirs: set[str] = set()

    def listing(folder: str) -> Iterator[tuple[str, bool]] | None:
        """(path, is_folder) of a folder's images and sub-folders, sorted; None if seen or unreadable."""
        try:
            real = os.path.realpath(folder)
            if real in seen_dirs:
                return None
            seen_dirs.add(real)
            with os.scandir(folder) as it:
                entries = []
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=True):
                            entries.append((entry.name + "/", entry.path, True))
                        elif entry.is_file(follow_symlinks=True) and is_image_file(Path(entry.name)):
                            entries.append((entry.name, entry.path, False))
                    except OSError:
                        continue
        except OSError:
            return None  # unreadable folder: nothing to list (permissions, vanished while walking)
        entries.sort()
        return iter([(path, is_dir) for _, path, is_dir in entries])

    first = listing(str(root))
    stack = [first] if first is not None else []
    while stack:
        for path, is_dir in stack[-1]:
            if not is_dir:
                yield path
                continue
            below = listing(path)
            if below is not None:
                stack.append(below)
                break
        else:
            stack.pop()


def _to_8bit(img: Image.Image) -> Image.Image:
    """Bring 16-bit and float single-channel images into 8-bit 'L' by scaling, not clipping."""
    if img.mode.startswith("I;16"):
        arr = np.asarray(img, dtype=np.float64) / 257.0
    elif img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        arr = arr / 257.0 if arr.max(initial=0) > 255 else arr
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.where(np.isfinite(arr), arr, 0.0)  # NaN/inf pixels: 0, not an invalid cast (and a warning)
        arr = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
    else:
        return img
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite transparent images onto white so transparent pixels have a defined value."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img


Size = int | tuple[int, int]  # a square side, or (width, height)


def wh(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def decode_image(path: str | os.PathLike, size: Size, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one file into an RGB uint8 array of shape (height, width, 3); `size` = side or (width, height)."""
    return decode_image_sized(path, size, max_pixels)[0]


def decode_image_sized(path: str | os.PathLike, size: Size,
                       max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode one file into an RGB uint8 array of shape (height, width, 3), and the image's own (width, height).

    EXIF orientation is applied; multi-frame files (GIF, TIFF) use their first frame; every Pillow mode
    is mapped to RGB. The image is resized (squashed, not cropped) with a bilinear filter, the same way
    for training and scanning. Raises DecodeError with a short reason on any failure.
    """
    try:
        if os.path.getsize(path) == 0:
            raise DecodeError("empty file (0 bytes)")
        with Image.open(path) as img:
            width, height = img.size
            if width < 1 or height < 1:
                raise DecodeError(f"empty image ({width}x{height})")
            if width * height > max_pixels:
                raise DecodeError(
                    f"image too large ({width}x{height} px > {max_pixels} px limit; possible decompression bomb)"
                )
            target = wh(size)
            if img.format == "JPEG":
                img.draft("RGB", target)  # let libjpeg decode at reduced scale: much faster
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            # the original's size (after EXIF rotation), so peaks found on the resized image map back to it;
            # draft() may have decoded at 1/2, 1/4 or 1/8 scale, so scale from the declared size instead
            rotated = img.size[0] > img.size[1] and height > width or img.size[0] < img.size[1] and width > height
            original = (height, width) if rotated else (width, height)
            img = _flatten_alpha(_to_8bit(img))
            img = img.convert("RGB")
            if img.size != target:
                img = img.resize(target, Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8), original
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"image too large (possible decompression bomb): {exc}") from None
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except IsADirectoryError:
        raise DecodeError("is a directory, not a file") from None
    except PermissionError:
        raise DecodeError("permission denied") from None
    except Image.UnidentifiedImageError:
        raise DecodeError("not a recognised image format (corrupt or not an image)") from None
    except Exception as exc:  # noqa: BLE001 - hostile files raise anything; each becomes a reported row
        text = " ".join(str(exc).split()) or type(exc).__name__
        if "truncated" in text.lower() or isinstance(exc, EOFError):
            text = f"truncated or incomplete file ({text})"
        raise DecodeError(f"cannot decode: {text}") from None


def is_grey(arr: np.ndarray) -> bool:
    """True when an RGB uint8 array carries no colour (all channels equal up to JPEG noise)."""
    a = arr.astype(np.int16)
    return bool(np.abs(a[..., 0] - a[..., 1]).max() <= GREY_TOLERANCE and np.abs(a[..., 1] - a[..., 2]).max() <= GREY_TOLERANCE)


def to_channels(rgb: np.ndarray, channels: int) -> np.ndarray:
    """(…, H, W, 3) uint8 → (…, channels, H, W) float32 in [0, 1]; 1 channel uses ITU-R 601 luma like Pillow."""
    x = rgb.astype(np.float32) / 255.0
    if channels == 1:
        x = (x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114)[..., None]
    return np.moveaxis(x, -1, -3).copy()


def decode_pool(workers: int) -> ThreadPoolExecutor:
    """The thread pool images are decoded in, everywhere in icsscan (fit, scan, the Ray engine's decode tasks).

    Threads, not processes: Pillow releases the GIL while decoding and resizing, so threads give real
    parallelism without the start-up cost and platform trouble (Windows spawn) of worker processes."""
    return ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="icsscan-decode")


def decode_or_reason(path: str | os.PathLike, size: Size) -> tuple[np.ndarray | None, str, tuple[int, int] | None]:
    """(pixels, "", original (width, height)), or (None, reason, None) for a file that cannot be decoded: a bad
    file costs its own row, never the run."""
    try:
        arr, original = decode_image_sized(path, size)
        return arr, "", original
    except DecodeError as exc:
        return None, str(exc), None


def decode_list(paths: Sequence[str | os.PathLike], size: Size, pool: ThreadPoolExecutor | None = None) -> list:
    """decode_or_reason of each path, in input order, in `pool`'s threads (here, one by one, when None)."""
    work = lambda p: decode_or_reason(p, size)  # noqa: E731
    return list(pool.map(work, paths)) if pool else [work(p) for p in paths]


def decode_many(
    paths: Sequence[str | os.PathLike], size: Size, workers: int = 4, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """Decode paths in a decode_pool; yields (index, array or None, error or None) in input order."""

    def work(i: int):
        try:
            return i, decode_image(paths[i], size, max_pixels), None
        except DecodeError as exc:
            return i, None, str(exc)

    if workers <= 1:
        for i in range(len(paths)):
            yield work(i)
        return
    with decode_pool(workers) as pool:
        yield from pool.map(work, range(len(paths)))


@dataclass
class LoadedImages:
    """Decoded images of a folder: arrays (N, size, size, 3) uint8, the paths they came from, and failures."""

    images: np.ndarray
    paths: list[str]
    failures: list[Failure]


def load_images(
    paths: Iterable[str | os.PathLike], size: Size, workers: int = 4, on_failure=None, progress=None
) -> LoadedImages:
    """Decode every path; failures are collected (and passed to `on_failure`) instead of stopping the load."""
    paths = [str(p) for p in paths]
    w, h = wh(size)
    # one buffer filled in place: a list of arrays stacked at the end held the pixels twice, and thousands of
    # freed 0.3 MB blocks fragmented the heap (5,000 images of 304 px: 9.1 GB peak RSS for 1.4 GB of pixels)
    images = np.empty((len(paths), h, w, 3), np.uint8)
    kept: list[str] = []
    failures: list[Failure] = []
    for i, arr, err in decode_many(paths, size, workers):
        if arr is None:
            failure = Failure(paths[i], err or "unknown error")
            failures.append(failure)
            if on_failure:
                on_failure(failure)
        else:
            images[len(kept)] = arr
            kept.append(paths[i])
        if progress:
            progress(1)
    images = images[:len(kept)] if len(kept) > 0.9 * len(paths) else images[:len(kept)].copy()
    return LoadedImages(images, kept, failures)


def typical_size(paths: Sequence[str | os.PathLike], cap: int = 64, sample: int = 200) -> int:
    """The automatic --image-size: the larger side of the most common image size (of a sample), capped.

    Reading only headers makes this cheap. Small images (MNIST's 28, CIFAR's 32) keep their native size;
    photos are reduced to `cap` so training stays fast on a CPU.
    """
    from collections import Counter

    sizes: Counter[int] = Counter()
    step = max(1, len(paths) // sample)
    for p in list(paths)[::step][:sample]:
        try:
            with Image.open(p) as img:
                sizes[max(img.size)] += 1
        except Exception:  # noqa: BLE001 - unreadable files are reported by the real decode later
            continue
    if not sizes:
        return cap
    side = sizes.most_common(1)[0][0]
    return int(max(8, min(cap, side)))


def typical_shape(paths: Sequence[str | os.PathLike], sample: int = 200) -> tuple[int, int] | None:
    """The most common (width, height) among a sample of the files (headers only), None if none is readable."""
    from collections import Counter

    shapes: Counter[tuple[int, int]] = Counter()
    step = max(1, len(paths) // sample)
    for p in list(paths)[::step][:sample]:
        try:
            with Image.open(p) as img:
                shapes[img.size] += 1
        except Exception:  # noqa: BLE001 - unreadable files are reported by the real decode later
            continue
    return shapes.most_common(1)[0][0] if shapes else None


def input_shape(X) -> tuple[int, int]:
    """The usual (width, height) of a fit's input: an array's (N, H, W[, C]) or (N, C, H, W) shape, or the most
    common size among a folder's or file list's images (64 x 64 when none can be read)."""
    if isinstance(X, np.ndarray):
        if X.ndim == 4 and X.shape[1] in (1, 3) and X.shape[-1] not in (1, 3):
            return int(X.shape[3]), int(X.shape[2])
        return (int(X.shape[2]), int(X.shape[1])) if X.ndim > 2 else (1, 1)
    return typical_shape(require_images(X)) or (64, 64)


def require_images(X) -> list[Path]:
    """The image paths of a folder, file or list; a usage error when there are none."""
    paths = list_inputs(X)
    if not paths:
        raise UsageError(f"{X}: no image files found ({', '.join(IMAGE_EXTENSIONS)}, any letter case)")
    return paths


def require_an_image(root: str | os.PathLike) -> None:
    """require_images' refusal of a folder or file, found without listing it all: the walk stops at the first
    image (the fit lists the folder itself; a CLI checks this first, before importing torch)."""
    if not (Path(root).exists() and next(iter_images(root), None) is not None):
        require_images(root)  # raises: no such file or folder, or no image files found


def local_input_size(shape: tuple[int, int], long_side: int = 0, min_side: int = 224,
                     max_side: int = 640) -> tuple[int, int]:
    """(width, height) for a local model: the images' aspect ratio kept, the long side at `long_side` or else
    their own long side clamped to [min_side, max_side], both rounded to multiples of 16 (the backbone's
    coarsest stride, so both feature maps tile the image exactly)."""
    w, h = shape
    side = long_side or min(max(max(w, h), min_side), max_side)
    scale = side / max(w, h)
    return max(16, int(round(w * scale / 16)) * 16), max(16, int(round(h * scale / 16)) * 16)


# --------------------------------------------------------------------------------------------- library inputs

def list_inputs(X: object) -> list[Path]:
    """A folder, a single file, or a list of paths → list of image paths."""
    if isinstance(X, (str, os.PathLike)):
        root = Path(X)
        if not root.exists():
            raise UsageError(f"{root}: no such file or folder")
        return find_images(root)
    if isinstance(X, Sequence):
        return [Path(p) for p in X]
    raise UsageError(f"cannot read images from a {type(X).__name__}; pass a folder, a list of paths or an array")


def array_to_rgb(X: np.ndarray, size: Size) -> np.ndarray:
    """(N,H,W), (N,H,W,1|3) or (N,1|3,H,W) images (uint8, or float in [0,1]) → RGB uint8 (N,height,width,3);
    `size` is a side or (width, height)."""
    X = np.asarray(X)
    if X.ndim == 4 and X.shape[1] in (1, 3) and X.shape[-1] not in (1, 3):
        X = np.moveaxis(X, 1, -1)
    if X.dtype != np.uint8:
        X = np.clip(np.rint(X.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    if X.ndim == 3:
        X = X[..., None]
    if X.ndim != 4 or X.shape[-1] not in (1, 3):
        raise UsageError(f"image array must be (N,H,W) or (N,H,W,1|3), got shape {X.shape}")
    if X.shape[-1] == 1:
        X = np.repeat(X, 3, axis=-1)
    w, h = wh(size)
    if X.shape[1:3] != (h, w):
        X = np.stack([np.asarray(Image.fromarray(a).resize((w, h), Image.Resampling.BILINEAR)) for a in X])
    return X

