"""Discovery and decoding: every common mode, EXIF orientation, corrupt files, channel choice."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from icsscan import data


def save(img: Image.Image, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def gradient(mode="L", size=(20, 12)):
    a = np.tile(np.linspace(0, 255, size[0], dtype=np.uint8), (size[1], 1))
    img = Image.fromarray(a, "L")
    return img.convert(mode) if mode != "L" else img


def test_find_images_recursive_case_insensitive_sorted_no_loops(tmp_path):
    save(gradient(), tmp_path / "b" / "x.PNG")
    save(gradient(), tmp_path / "a.jpeg", format="JPEG")
    save(gradient(), tmp_path / "b" / "c" / "y.Tif", format="TIFF")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "folder.png").mkdir()  # a folder named like an image is not a file
    os.symlink("..", tmp_path / "b" / "loop")  # would recurse forever if followed blindly
    found = [p.relative_to(tmp_path).as_posix() for p in data.find_images(tmp_path)]
    assert found == ["a.jpeg", "b/c/y.Tif", "b/x.PNG"]
    assert data.find_images(tmp_path) == data.find_images(tmp_path)  # deterministic


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"])
def test_every_common_mode_decodes_to_rgb(tmp_path, mode):
    if mode == "I;16":
        img = Image.fromarray((np.arange(240, dtype=np.uint16).reshape(12, 20) * 250))
    else:
        img = gradient(mode)
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode in ("I;16", "I", "F") else "PNG")
    path = save(img, tmp_path / f"img.{fmt.lower()}", format=fmt)
    arr = data.decode_image(path, 16)
    assert arr.shape == (16, 16, 3) and arr.dtype == np.uint8


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    a = np.full((10, 10), 65535 // 2, dtype=np.uint16)
    path = save(Image.fromarray(a), tmp_path / "mid.png")
    value = data.decode_image(path, 10)[0, 0, 0]
    assert 120 <= value <= 135  # half of full scale, not 255


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("L", (30, 10), 0)
    img.paste(255, (0, 0, 10, 10))  # white block on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, format="JPEG", exif=exif.tobytes(), quality=95)
    arr = data.decode_image(path, 30).astype(int)[..., 0]
    # after rotation the white block is at the top, so the top rows are brighter than the bottom rows
    assert arr[:5].mean() > arr[-5:].mean() + 100


def test_transparent_pixels_become_white(tmp_path):
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    arr = data.decode_image(save(img, tmp_path / "t.png"), 8)
    assert (arr == 255).all()


@pytest.mark.parametrize("content,expect", [
    (b"", "empty file"),
    (b"hello, I am text", "not a recognised image"),
])
def test_bad_files_raise_one_line_decode_error(tmp_path, content, expect):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(data.DecodeError) as info:
        data.decode_image(path, 8)
    message = str(info.value)
    assert "\n" not in message and message
    assert expect in message or "cannot decode" in message


def test_truncated_png_is_an_error_not_a_grey_image(tmp_path):
    buf = io.BytesIO()
    gradient(size=(64, 64)).save(buf, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(data.DecodeError):
        data.decode_image(path, 8)


def test_decompression_bomb_is_refused(tmp_path):
    path = save(Image.new("1", (12000, 10000)), tmp_path / "bomb.png")
    with pytest.raises(data.DecodeError, match="too large"):
        data.decode_image(path, 8)


def test_load_images_skips_failures_and_keeps_order(tmp_path):
    good = [save(gradient(), tmp_path / f"g{i}.png") for i in range(3)]
    bad = tmp_path / "g1b.png"
    bad.write_bytes(b"junk")
    seen = []
    loaded = data.load_images(sorted([*good, bad]), 8, workers=2, on_failure=seen.append)
    assert loaded.paths == [str(p) for p in sorted(good)]
    assert [f.path for f in loaded.failures] == [str(bad)] == [f.path for f in seen]
    assert loaded.images.shape == (3, 8, 8, 3)
    # the kept images sit in order, each equal to its own decode (the buffer is filled in place, failures skipped)
    for k, path in enumerate(loaded.paths):
        np.testing.assert_array_equal(loaded.images[k], data.decode_image(path, 8))


def test_load_images_mostly_failures_keeps_only_the_good(tmp_path):
    good = save(gradient(), tmp_path / "a_good.png")
    for i in range(5):
        (tmp_path / f"b_bad{i}.png").write_bytes(b"junk")
    loaded = data.load_images(sorted(tmp_path.iterdir()), 8, workers=2)
    assert loaded.paths == [str(good)] and len(loaded.failures) == 5 and loaded.images.shape == (1, 8, 8, 3)
    np.testing.assert_array_equal(loaded.images[0], data.decode_image(good, 8))


def test_channels_grey_detection_and_luma():
    grey = np.repeat(np.arange(16, dtype=np.uint8).reshape(4, 4, 1) * 16, 3, axis=2)
    colour = grey.copy()
    colour[..., 0] = 255
    assert data.is_grey(grey) and not data.is_grey(colour)
    x = data.to_channels(grey[None], 1)
    assert x.shape == (1, 1, 4, 4) and np.allclose(x[0, 0], grey[..., 0] / 255.0, atol=1e-6)
    assert data.to_channels(colour[None], 3).shape == (1, 3, 4, 4)


def test_typical_size_caps_large_photos(tmp_path):
    for i in range(3):
        save(gradient(size=(300, 200)), tmp_path / f"p{i}.png")
    assert data.typical_size(data.find_images(tmp_path)) == 64
    small = tmp_path / "small"
    for i in range(3):
        save(gradient(size=(28, 28)), small / f"s{i}.png")
    assert data.typical_size(data.find_images(small)) == 28
