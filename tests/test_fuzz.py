"""Issue 5, hardening: random byte mutations of valid PNG and JPEG files (hypothesis).

decode_image must either return a (size, size, 3) uint8 array or raise DecodeError with a one-line reason;
score_paths must return exactly one row per file, in order, each with a score in [0, 1] or an error.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hostile_files import encode, noise
from icsscan import data

SEEDS = {
    "png": encode(noise((16, 16), "L", seed=1), "PNG"),
    "png_rgba": encode(noise((12, 12), "RGBA", seed=2), "PNG"),
    "jpg": encode(noise((16, 16), "RGB", seed=3), "JPEG", quality=90),
    "jpg_progressive": encode(noise((24, 16), "L", seed=4), "JPEG", progressive=True),
}
SUFFIX = {"png": ".png", "png_rgba": ".png", "jpg": ".jpg", "jpg_progressive": ".jpeg"}

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def mutated(draw) -> tuple[str, bytes]:
    """A seed file with 1-4 mutations: bit flips, byte overwrites, insertions, deletions, truncation."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    blob = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate", "header"]))
        pos = draw(st.integers(0, max(0, len(blob) - 1)))
        if op == "flip" and blob:
            blob[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            blob[pos:pos + len(chunk)] = chunk
        elif op == "insert":
            blob[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del blob[pos:pos + draw(st.integers(1, 64))]
        elif op == "truncate":
            del blob[pos:]
        elif op == "header" and len(blob) > 24:  # aim at the size fields of the header
            blob[draw(st.integers(12, 24))] = draw(st.integers(0, 255))
    return SUFFIX[name], bytes(blob)


@pytest.fixture(scope="module")
def fuzz_dir():
    folder = Path(tempfile.mkdtemp(prefix="icsscan-fuzz-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def check_decode(path: Path, size: int) -> None:
    try:
        arr = data.decode_image(path, size)
    except data.DecodeError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert arr.shape == (size, size, 3) and arr.dtype == np.uint8


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@FUZZ
@given(sample=mutated(), size=st.sampled_from([8, 28]))
def test_decode_image_never_raises_anything_but_decode_error(fuzz_dir, sample, size):
    suffix, blob = sample
    path = fuzz_dir / f"decode{suffix}"
    path.write_bytes(blob)
    check_decode(path, size)


@pytest.fixture(scope="module")
def scan_model(tiny_onnx):
    from icsscan.scan import load_model

    return load_model(tiny_onnx, device="cpu", threads=1)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@settings(FUZZ, max_examples=60)
@given(samples=st.lists(mutated(), min_size=1, max_size=5), include_valid=st.booleans())
def test_score_paths_gives_one_row_per_file(fuzz_dir, scan_model, samples, include_valid):
    from icsscan.scan import score_paths

    paths = []
    for i, (suffix, blob) in enumerate(samples):
        path = fuzz_dir / f"score_{i}{suffix}"
        path.write_bytes(blob)
        paths.append(str(path))
    valid_at = len(paths) // 2
    if include_valid:
        path = fuzz_dir / "valid.png"
        path.write_bytes(SEEDS["png"])
        paths.insert(valid_at, str(path))
    rows = score_paths(scan_model, paths, workers=2)
    assert [r.path for r in rows] == paths
    for row in rows:
        if row.score is None:
            assert row.error and "\n" not in row.error
        else:
            assert 0.0 <= row.score <= 1.0 and not row.error
    if include_valid:
        assert rows[valid_at].score is not None  # a broken neighbour never costs a good file its score


def test_seeds_are_valid_images(fuzz_dir):
    for name, blob in SEEDS.items():
        path = fuzz_dir / f"seed{SUFFIX[name]}"
        path.write_bytes(blob)
        assert data.decode_image(path, 8).shape == (8, 8, 3)
        with Image.open(path) as img:
            img.verify()
