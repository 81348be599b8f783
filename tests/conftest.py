"""Shared fixtures: real image folders written from ../shared/data, and small trained models (session-scoped).

Tests use real PNG files decoded from disk and real (short) training; anything that needs the shared
datasets is skipped with a clear reason when ../shared/data (or $ICSSCAN_DATA) is absent.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# One compute thread per process (torch, and the onnxruntime sessions fitting opens with torch's thread count), set
# before anything imports torch and inherited by every CLI subprocess; OMP_NUM_THREADS set outside wins. The suite's
# models are small, and a second thread mostly waits: on this 2-core machine, busy with other jobs, a CLI train took
# 2.7x (MNIST, backbone small) to 4.5x (sample_data, the default) the wall time of one thread, and a local fit 2.5x.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data"
DATA_ROOT = Path(os.environ.get("ICSSCAN_DATA", REPO.parent / "shared" / "data"))
ICSSCAN = [sys.executable, "-m", "icsscan"]

# Small settings that still train for real: used where a test needs *a* model, not a good one.
TINY = dict(iterations=5, seed=0)


def read_idx(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def mnist(dataset: str = "MNIST", train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    raw = DATA_ROOT / dataset / "raw"
    prefix = "train" if train else "t10k"
    images, labels = raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
    if not images.exists():
        pytest.skip(f"{dataset} not found under {DATA_ROOT} (set ICSSCAN_DATA to the shared data root)")
    return read_idx(images), read_idx(labels)


def write_pngs(folder: Path, images: np.ndarray, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, a in enumerate(images):
        p = folder / f"{prefix}_{i:05d}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    return paths


def save_onnx(model, meta: dict[str, str], path: Path) -> Path:
    """A hand-built onnx ModelProto with icsscan's metadata (what `scan` reads), checked and saved to `path`."""
    import onnx

    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None):
    """Run `python -m icsscan ARGS` in a subprocess; returns CompletedProcess (text)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([*ICSSCAN, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=full_env)


def run_cli_here(*args, cwd: Path | None = None):
    """The CLI run in this process by typer's CliRunner: the same command code, exit code, stdout and stderr as
    `python -m icsscan ARGS`, without a fresh interpreter's 6-11 s of importing torch, scikit-learn and (once an
    optimizer runs) torch's compiler. For tests of what a torch-importing command (train, split, export) says and
    returns; signals, umask, environment, library warnings on stderr, import isolation and the `python -m` exit
    path need run_cli's real process."""
    from typer.testing import CliRunner

    from icsscan.cli import app

    here = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(["icsscan", *map(str, args)], result.exit_code, result.stdout, result.stderr)


@pytest.fixture(scope="session")
def mnist_zero_folders(tmp_path_factory) -> dict[str, Path]:
    """MNIST digit 0 as PNGs: train/good (500 training zeros); test/normal (200 test zeros) and
    test/anomalous (200 other test digits); labels[path] = 1 for anomalies."""
    x_tr, y_tr = mnist("MNIST", True)
    x_te, y_te = mnist("MNIST", False)
    root = tmp_path_factory.mktemp("mnist0")
    rng = np.random.default_rng(0)
    write_pngs(root / "train" / "good", x_tr[y_tr == 0][:500], "zero")
    normal = write_pngs(root / "test" / "normal", x_te[y_te == 0][:200], "zero")
    others = rng.choice(np.flatnonzero(y_te != 0), 200, replace=False)
    anomalous = write_pngs(root / "test" / "anomalous", x_te[others], "other")
    labels = {str(p): 0 for p in normal} | {str(p): 1 for p in anomalous}
    return {"root": root, "train": root / "train" / "good", "test": root / "test", "labels": labels}


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A real model bundle (with model.onnx) trained briefly on sample_data/good. Do not modify it.

    Plumbing only, no test reads its quality: the ICS score alone, whose graph scans 3x faster than the small
    backbone's four-part default (5,000 tiny files: 1,630 vs 540 images/s), which many scans here run."""
    from icsscan import ICSDetector
    from icsscan.config import preset_config

    out = tmp_path_factory.mktemp("tiny") / "model"
    cfg = preset_config("default", ae_epochs=1, backbone="small", score="ics", **TINY)
    ICSDetector(config=cfg).fit(SAMPLE / "good").save(out)
    return out


@pytest.fixture(scope="session")
def tiny_onnx(tiny_bundle) -> Path:
    return tiny_bundle / "model.onnx"


# `make test` runs two pytest-xdist processes, each taking whole files (--dist loadfile), two at the start and
# the next as one ends. Files in this order, the longest first (seconds of one process, `--durations`, 2026-12-07),
# so that the two finish together instead of one running a long file alone at the end; the rest follow in their
# usual order. Within a file the order is unchanged.
LONGEST_FIRST = ("test_local.py", "test_train_scan_e2e.py", "test_ray_engine.py", "test_known_defects.py",
                 "test_hostile.py", "test_interrupt.py", "test_embed.py", "test_bad_models.py", "test_scorer.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable
