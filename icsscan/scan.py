"""Score image folders with the exported ONNX model through onnxruntime. Never imports torch.

The core is `score_paths(model, paths)`: a batch of files in, one row per file out (score or error).
`scan_folder` streams a folder through it in bounded batches, with decoding in parallel threads running
ahead of inference, and hands the rows to `report` for the CSV / JSON / JUnit / HTML outputs.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from . import data
from .errors import ModelError, UsageError

DEFAULT_MODEL = "icsscan-model"
DEFAULT_REPORT = "icsscan-report"


@dataclass(slots=True)  # one per file is kept until the ranked report: keep them small
class Row:
    path: str
    score: float | None
    error: str = ""


@dataclass
class ScanModel:
    """An onnxruntime session plus what the model's metadata says about inputs, threshold and calibration."""

    path: Path
    session: object
    image_size: int
    channels: int
    default_threshold: float
    calibration: np.ndarray  # sorted scores of held-out normal images
    score_kind: str
    sha256: str
    metadata: dict = field(repr=False)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def score(self, pixels: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.session.get_inputs()[0].name: pixels})[0]
        return np.asarray(out, dtype=np.float64).reshape(-1)


def resolve_model_path(model: str | os.PathLike) -> Path:
    path = Path(model)
    if path.is_dir():
        onnx_path = path / "model.onnx"
        if not onnx_path.is_file():
            raise ModelError(f"{path}: model folder has no model.onnx (run: icsscan export {path})")
        return onnx_path
    if not path.exists():
        hint = " (train one first: icsscan train GOOD_IMAGES_DIR)" if str(model) == DEFAULT_MODEL else ""
        raise ModelError(f"{path}: model not found{hint}")
    return path


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UsageError("onnxruntime is not installed: pip install 'icsscan[cpu]' (or 'icsscan[gpu]' with CUDA)") from None
    return onnxruntime


def choose_providers(device: str = "auto") -> list[str]:
    ort = import_onnxruntime()

    available = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise UsageError("--device cuda: onnxruntime has no CUDAExecutionProvider here (install icsscan[gpu])")
    return ["CPUExecutionProvider"]


def load_model(model: str | os.PathLike, device: str = "auto", threads: int = 0) -> ScanModel:
    """Open and validate an icsscan ONNX model; every problem is a ModelError with one line of reason."""
    path = resolve_model_path(model)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model ({exc.strerror or exc})") from None
    return model_from_bytes(blob, path, device, threads)


def model_from_bytes(blob: bytes, path: Path, device: str = "auto", threads: int = 0) -> ScanModel:
    """`load_model` for ONNX bytes already in memory (the Ray engine's actors get them from the object store);
    `path` is only used in messages and reports."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: onnxruntime's warnings are not for our users
    # The decode threads share the cores with inference, and onnxruntime's intra-op threads busy-wait between ops
    # by default, taking CPU from them (and from each other on a busy machine). Without spinning, the scan ran
    # 1.6-2.2x faster on a loaded 2-core machine and within noise on a quiet one (benchmarks/results/scan_speed*.md).
    # Sleeping threads change no score, only who gets the cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(blob, sess_options=options, providers=choose_providers(device))
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types for broken files
        reason = " ".join(str(exc).split())[:160]
        raise ModelError(f"{path}: not a valid ONNX model ({reason})") from None
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if "icsscan_version" not in meta:
        raise ModelError(f"{path}: ONNX model has no icsscan metadata (export it with: icsscan export MODEL_DIR)")
    try:
        size, channels = int(meta["image_size"]), int(meta["channels"])
        threshold = float(meta.get("default_threshold", 0.5))
        calibration = np.sort(np.asarray(json.loads(meta.get("calibration", "{}")).get("scores", []), dtype=np.float64))
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ModelError(f"{path}: icsscan metadata is malformed ({exc})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"{path}: expected one input, the model has {len(inputs)}")
    shape = inputs[0].shape
    if len(shape) != 4 or list(shape[1:]) != [channels, size, size]:
        raise ModelError(f"{path}: input shape {shape} disagrees with metadata ({channels}x{size}x{size})")
    return ScanModel(path, session, size, channels, threshold, calibration, meta.get("score", "?"),
                     hashlib.sha256(blob).hexdigest(), meta)


# --------------------------------------------------------------------------------------------- core

def decode_batch(paths: Sequence[str], model: ScanModel, pool: ThreadPoolExecutor | None) -> list:
    work = lambda p: _decode_one(p, model.image_size)  # noqa: E731
    return list(pool.map(work, paths)) if pool else [work(p) for p in paths]


def _decode_one(path: str, size: int):
    try:
        return data.decode_image(path, size), ""
    except data.DecodeError as exc:
        return None, str(exc)


def infer_batch(model: ScanModel, paths: Sequence[str], decoded: list) -> list[Row]:
    """Rows for one decoded batch: scores for the images, errors for the failures, input order kept."""
    good = [i for i, (arr, _) in enumerate(decoded) if arr is not None]
    rows = [Row(str(p), None, err or "") for p, (_, err) in zip(paths, decoded)]
    if good:
        pixels = data.to_channels(np.stack([decoded[i][0] for i in good]), model.channels)
        try:
            scores = model.score(pixels)
        except Exception as exc:  # noqa: BLE001 - an inference failure must cost a batch's scores, not the run
            reason = "inference failed: " + " ".join(str(exc).split())[:160]
            for i in good:
                rows[i].error = reason
            return rows
        for i, s in zip(good, scores):
            rows[i].score = float(s) if np.isfinite(s) else None
            if rows[i].score is None:
                rows[i].error = "model returned a non-finite score"
    return rows


def score_paths(model: ScanModel, paths: Sequence[str], workers: int = 4) -> list[Row]:
    """One batch of files in, one row per file out (the Ray engine shares `_decode_one` and `infer_batch`)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return infer_batch(model, paths, decode_batch(paths, model, pool))


def stream_rows(model: ScanModel, paths: Sequence[str], batch_size: int = 64, workers: int = 4,
                on_batch: Callable[[int], None] | None = None) -> Iterator[Row]:
    """Score `paths` batch by batch; the next batch decodes in threads while the current one runs.

    Memory stays bounded: at most two batches of decoded pixels exist at any time.
    """
    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        submit = lambda chunk: [pool.submit(_decode_one, str(p), model.image_size) for p in chunk]  # noqa: E731
        pending = submit(chunks[0])
        for k, chunk in enumerate(chunks):
            current = pending
            pending = submit(chunks[k + 1]) if k + 1 < len(chunks) else []
            decoded = [f.result() for f in current]
            yield from infer_batch(model, chunk, decoded)
            if on_batch:
                on_batch(len(chunk))


# --------------------------------------------------------------------------------------------- thresholds

def expected_false_alarm_rate(calibration: np.ndarray, threshold: float) -> float | None:
    return float(np.mean(calibration >= threshold)) if len(calibration) else None


def percentile_of(scores: Iterable[float | None], calibration: np.ndarray) -> list[float | None]:
    """Fraction of calibration normals scoring strictly lower than each score (monotone in the score)."""
    out: list[float | None] = []
    for s in scores:
        if s is None or not len(calibration):
            out.append(None)
        else:
            out.append(float(np.searchsorted(calibration, s, side="left") / len(calibration)))
    return out


def resolve_threshold(model: ScanModel, threshold: float | None, false_alarm_rate: float | None) -> tuple[float, str]:
    """The threshold to apply and where it came from ('raw', 'false-alarm-rate' or 'model default')."""
    if threshold is not None and false_alarm_rate is not None:
        raise UsageError("give either --threshold or --false-alarm-rate, not both")
    if threshold is not None:
        if not 0 <= threshold <= 1:
            raise UsageError(f"--threshold must be between 0 and 1 (raw anomaly score), got {threshold}")
        return float(threshold), "raw"
    if false_alarm_rate is not None:
        if not 0 < false_alarm_rate < 1:
            raise UsageError(f"--false-alarm-rate must be between 0 and 1, got {false_alarm_rate}")
        if not len(model.calibration):
            raise ModelError(f"{model.path}: model has no calibration scores; use --threshold instead")
        return float(np.quantile(model.calibration, 1 - false_alarm_rate, method="higher")), "false-alarm-rate"
    return model.default_threshold, "model default"


def threshold_meaning(model: ScanModel, threshold: float, source: str, false_alarm_rate: float | None) -> str:
    rate = expected_false_alarm_rate(model.calibration, threshold)
    if rate is None:
        return (f"flag images with a raw anomaly score >= {threshold:.4g}; this model has no calibration, "
                "so the expected false-alarm rate is unknown")
    n = len(model.calibration)
    head = (f"threshold {threshold:.4g} chosen for a target false-alarm rate of {false_alarm_rate:.2%}"
            if source == "false-alarm-rate" else f"raw anomaly-score threshold {threshold:.4g} ({source})")
    return (f"{head}: {rate:.2%} of {n} held-out normal images score at or above it, so expect about "
            f"{rate * 100:.1f} false alarms per 100 normal images")


# --------------------------------------------------------------------------------------------- folder scan

@dataclass
class ScanResult:
    rows: list[Row]
    threshold: float
    threshold_source: str
    meaning: str
    model: ScanModel
    n_files: int
    seconds: float
    interrupted: bool = False

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if r.score is None]

    @property
    def anomalies(self) -> list[Row]:
        return [r for r in self.rows if r.score is not None and r.score >= self.threshold]


def list_scan_files(folder: str | os.PathLike) -> list[Path]:
    root = Path(folder)
    if not root.exists():
        raise UsageError(f"{root}: no such file or folder")
    files = data.find_images(root)
    if not files:
        raise UsageError(f"{root}: no image files found ({', '.join(data.IMAGE_EXTENSIONS)}, any letter case)")
    return files


def scan_folder(folder: str | os.PathLike, model: ScanModel | str | os.PathLike = DEFAULT_MODEL,
                threshold: float | None = None, false_alarm_rate: float | None = None, batch_size: int = 64,
                workers: int = 4, on_progress: Callable[[int, int], None] | None = None,
                done: dict[str, Row] | None = None, on_rows: Callable[[list[Row]], None] | None = None) -> ScanResult:
    """Score every image file under `folder`; returns all rows (unreadable files have score None).

    `done`: rows of an earlier, interrupted scan by path (those files are not scored again); `on_rows` gets
    each finished batch's rows (`resume.PartialWriter.add`)."""
    if batch_size < 1 or workers < 1:
        raise UsageError("--batch-size and --workers must be ≥ 1")
    if not isinstance(model, ScanModel):
        model = load_model(model)
    thr, source = resolve_threshold(model, threshold, false_alarm_rate)
    files = list_scan_files(folder)
    started = time.perf_counter()
    rows: list[Row] = [done[str(f)] for f in files if str(f) in done] if done else []
    todo = [str(f) for f in files if not done or str(f) not in done]
    count = [len(rows)]

    def tick(n: int) -> None:
        count[0] += n
        if on_rows:
            on_rows(rows[-n:])
        if on_progress:
            on_progress(count[0], len(files))

    interrupted = False
    try:
        for row in stream_rows(model, todo, batch_size, workers, tick):
            rows.append(row)
    except KeyboardInterrupt:
        interrupted = True
    return ScanResult(rows, thr, source, threshold_meaning(model, thr, source, false_alarm_rate), model,
                      len(files), time.perf_counter() - started, interrupted)
