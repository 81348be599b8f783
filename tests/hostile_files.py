"""Generators for hostile inputs used by the hardening tests (test_hostile, test_fuzz, test_interrupt).

Everything is made by code at test time: no binary fixtures in the repository.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise(size=(32, 32), mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "LA": 2}[mode]
    a = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(a[..., 0] if channels == 1 else a, mode)


def patch_png_size(png: bytes, width: int, height: int) -> bytes:
    """A copy of a PNG whose IHDR declares width x height (CRC recomputed): a cheap decompression bomb."""
    assert png[12:16] == b"IHDR"
    ihdr = bytearray(png[12:29])  # chunk type + 13 data bytes
    ihdr[4:8] = width.to_bytes(4, "big")
    ihdr[8:12] = height.to_bytes(4, "big")
    return png[:12] + bytes(ihdr) + zlib.crc32(bytes(ihdr)).to_bytes(4, "big") + png[33:]


def patch_gif_size(gif: bytes, width: int, height: int) -> bytes:
    """A GIF whose logical screen (and first image descriptor) declare width x height."""
    out = bytearray(gif)
    out[6:8] = width.to_bytes(2, "little")
    out[8:10] = height.to_bytes(2, "little")
    return bytes(out)


def exif_rotated_jpeg() -> bytes:
    img = Image.new("RGB", (32, 16), (0, 0, 0))
    img.paste((255, 255, 255), (16, 0, 32, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", exif=exif.tobytes(), quality=95)


def animated_gif() -> bytes:
    frames = [noise((24, 24), "L", seed=i).convert("P") for i in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def multipage_tiff() -> bytes:
    pages = [noise((24, 24), "RGB", seed=i) for i in range(3)]
    return encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def palette_with_transparency() -> bytes:
    img = noise((24, 24), "L", seed=3).convert("P")
    return encode(img, "PNG", transparency=0)


def float_with_nan() -> bytes:
    a = np.linspace(0, 1, 24 * 24, dtype=np.float32).reshape(24, 24)
    a[0, :4] = [np.nan, np.inf, -np.inf, 3e38]
    return encode(Image.fromarray(a, "F"), "TIFF")


def grey16() -> bytes:
    a = (np.arange(24 * 24, dtype=np.uint16).reshape(24, 24) * 113)
    img = Image.fromarray(a)
    assert img.mode.startswith("I;16")
    return encode(img, "PNG")


# name (relative POSIX path, str or bytes) -> bytes; names are chosen to be nasty in CSV, JSON, XML, shells.
def good_files() -> dict:
    png = encode(noise(), "PNG")
    small = encode(noise((16, 16), "L", seed=5), "PNG")
    return {
        "tiny_1x1.png": encode(Image.new("L", (1, 1), 77), "PNG"),
        "grey16.png": grey16(),
        "float_nan.tif": float_with_nan(),
        "cmyk.jpg": encode(noise((24, 24), "RGB", seed=1).convert("CMYK"), "JPEG"),
        "palette_transparent.png": palette_with_transparency(),
        "la.png": encode(noise((24, 24), "LA", seed=2), "PNG"),
        "rgba.png": encode(noise((24, 24), "RGBA", seed=4), "PNG"),
        "exif_rotated.jpg": exif_rotated_jpeg(),
        "animated.gif": animated_gif(),
        "multipage.tif": multipage_tiff(),
        "image.webp": encode(noise(), "WEBP"),
        "image.bmp": encode(noise(), "BMP"),
        "bmp_content.png": encode(noise((20, 20)), "BMP"),  # content decides the format, not the name
        "UPPER.PNG": png,
        "UPPER.JPEG": encode(noise(), "JPEG"),
        "Mixed.JpG": encode(noise((20, 20)), "JPEG"),
        "ünïcödé_画像.png": small,
        "emoji_🙂.png": small,
        "comma, name.png": small,
        'double"quote.png': small,
        "single'quote.png": small,
        "new\nline.png": small,
        "carriage\rreturn.png": small,
        "tab\tname.png": small,
        "=cmd.png": small,
        "+cmd.png": small,
        "-cmd.png": small,
        "@cmd.png": small,
        '=HYPERLINK("x",1).png': small,
        " leading space.png": small,
        "<xml> & 'amp'.png": small,
        "a/b/c/deep.png": small,
        "folder.png/inside.png": small,
        b"latin1_\xe9_not_utf8.png": small,
    }


def bad_files() -> dict:
    png = encode(noise((64, 64), seed=7), "PNG")
    jpg = encode(noise((64, 64), seed=8), "JPEG", quality=95)
    gif = encode(noise((16, 16), "L").convert("P"), "GIF")
    rng = np.random.default_rng(42)
    return {
        "truncated.png": png[: len(png) // 2],
        "truncated.jpg": jpg[: len(jpg) // 2],
        "signature_only.png": png[:8],
        "header_only.png": png[:33],
        "zero_bytes.png": b"",
        "zero_bytes.jpg": b"",
        "text.png": b"this is just text, not a picture\n" * 10,
        "text.jpg": b"%PDF-1.4 pretending\n",
        "random.png": b"\x00" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes(),
        "random.tiff": b"\x00" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes(),
        "bomb_50000x50000.png": patch_png_size(png, 50_000, 50_000),
        "bomb_15000x10000.png": patch_png_size(png, 15_000, 10_000),
        "bomb_65535x65535.gif": patch_gif_size(gif, 65_535, 65_535),
        "nested/deeper/bad.jpeg": b"\xff\xd8\xff\xe0 not really a jpeg",
    }


IGNORED = {
    "notes.txt": b"not an image\n",
    "data.csv": b"a,b\n1,2\n",
    "README": b"readme\n",
    "image.png.txt": b"still not an image\n",
}


def _path(root: Path, name) -> Path:
    return Path(os.fsdecode(os.path.join(os.fsencode(root), os.fsencode(name))))


def make_hostile_folder(root: Path) -> tuple[list[Path], list[Path]]:
    """Write the hostile folder; returns (files expected to decode, files expected to fail)."""
    root.mkdir(parents=True, exist_ok=True)
    good, bad = [], []
    for files, out in ((good_files(), good), (bad_files(), bad)):
        for name, blob in files.items():
            path = _path(root, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
            out.append(path)
    for name, blob in IGNORED.items():
        (root / name).write_bytes(blob)
    (root / "empty_folder.jpg").mkdir()
    os.symlink("..", root / "nested" / "loop")          # points back at root
    os.symlink("..", root / "loop")                     # root's parent: callers keep root alone in it
    os.symlink(".", root / "a" / "b" / "self")           # points at its own folder
    os.mkfifo(root / "fifo.png")                          # not a regular file: must be ignored, never opened
    if os.geteuid() != 0:                                 # root reads everything; skip the permission case there
        locked = root / "no_permission.png"
        locked.write_bytes(encode(noise((8, 8)), "PNG"))
        locked.chmod(0)
        bad.append(locked)
    return good, bad


def tree_state(root: Path) -> dict[str, tuple]:
    """Everything about a folder that a scan must not change: names, types, sizes, contents, link targets."""
    state = {}
    for folder, dirs, files in os.walk(root):  # does not follow symlinks
        for name in dirs + files:
            p = os.path.join(folder, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                state[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                try:
                    digest = hashlib.sha256(Path(p).read_bytes()).hexdigest()
                except PermissionError:
                    digest = None
                state[rel] = ("file", st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode), digest)
            else:
                state[rel] = ("other", stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode))
    return state


def tiny_png_variants(n: int = 16, size: int = 8) -> list[bytes]:
    return [encode(noise((size, size), "L", seed=i), "PNG") for i in range(n)]


def write_many(folder: Path, count: int, size: int = 8, per_dir: int = 1000) -> list[Path]:
    """`count` small PNGs (a few distinct contents, copied) in sub-folders of `per_dir` files."""
    variants = tiny_png_variants(16, size)
    paths = []
    for i in range(count):
        sub = folder / f"d{i // per_dir:03d}"
        if i % per_dir == 0:
            sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"img_{i:06d}.png"
        p.write_bytes(variants[i % len(variants)])
        paths.append(p)
    return paths
