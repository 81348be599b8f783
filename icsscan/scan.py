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
from typing import Callable, Iterator, Sequence

import numpy as np

from . import data
from .config import readable_score
from .errors import ModelError, UsageError
from .maps import peak
from .rowstore import PathList, Row, RowTable  # noqa: F401  (Row: one scanned file, re-exported)
from .thresholds import DEFAULT_THRESHOLD, false_alarm_rate, percentile_of, resolve_threshold, threshold_meaning  # noqa: F401

DEFAULT_MODEL = "icsscan-model"
DEFAULT_REPORT = "icsscan-report"


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
    image_height: int = 0  # local models: input height (image_size is then the width); 0 = square
    has_map: bool = False  # local models also output an anomaly map
    map_range: tuple[float, float] | None = None  # local models: the map's colour range (metadata "map_range")

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    @property
    def decode_size(self) -> int | tuple[int, int]:
        """What data.decode_image takes: a side, or (width, height) for a local model."""
        return (self.image_size, self.image_height) if self.image_height else self.image_size

    def score(self, pixels: np.ndarray) -> np.ndarray:
        return self.score_and_map(pixels)[0]

    @property
    def run_batch(self) -> int:
        """The most images one onnxruntime call takes (0: no limit): a local model on CPU runs 2 at a time.

        Its search holds a (cells × bank rows) product per image, 12 MB at 304 px against 2,048 rows: with 8 images
        per call those no longer stay in the caches. Graph alone, batch 2 vs 8, images/s at 1 | 2 threads: casting
        37.4 vs 34.0 | 69.8 vs 59.2, deeppcb 8.3 vs 7.8 | 13.8 vs 13.8, magnetic_tile 55.9 vs 48.1 | 101.5 vs 92.8;
        batch 1 was no better (benchmarks/results/scan_batch.md; scores and maps within 2e-6). A GPU wants larger
        batches, so it keeps the caller's."""
        return LOCAL_CPU_RUN_BATCH if self.has_map and "CUDAExecutionProvider" not in self.providers else 0

    def score_and_map(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        step = self.run_batch or max(1, len(pixels))
        name = self.session.get_inputs()[0].name
        outs = [self.session.run(None, {name: pixels[i:i + step]}) for i in range(0, max(1, len(pixels)), step)]
        scores = np.concatenate([np.asarray(o[0], dtype=np.float64).reshape(-1) for o in outs])
        if not (self.has_map and outs and len(outs[0]) > 1):
            return scores, None
        return scores, np.concatenate([np.asarray(o[1], dtype=np.float32) for o in outs])


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
        threshold = float(meta.get("default_threshold", DEFAULT_THRESHOLD))
        calibration = np.sort(np.asarray(json.loads(meta.get("calibration", "{}")).get("scores", []), dtype=np.float64))
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ModelError(f"{path}: icsscan metadata is malformed ({exc})") from None
    try:
        height = int(meta.get("image_height", 0))
    except ValueError as exc:
        raise ModelError(f"{path}: icsscan metadata is malformed ({exc})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"{path}: expected one input, the model has {len(inputs)}")
    shape = inputs[0].shape
    if len(shape) != 4 or list(shape[1:]) != [channels, height or size, size]:
        raise ModelError(f"{path}: input shape {shape} disagrees with metadata ({channels}x{height or size}x{size})")
    has_map = len(session.get_outputs()) >= 2 and session.get_outputs()[1].name == "map"
    return ScanModel(path, session, size, channels, threshold, calibration, readable_score(meta.get("score", "?")),
                     hashlib.sha256(blob).hexdigest(), meta, height, has_map,
                     map_range=parse_map_range(meta.get("map_range")))


def parse_map_range(text: str | None) -> tuple[float, float] | None:
    """The metadata's "map_range" (JSON [lo, hi]: lo = the map level of normal parts, hi = clearly abnormal) as
    a tuple; None when absent or malformed (not JSON, not two finite numbers, lo ≥ hi): the overlays then use
    maps.MAP_RANGE. A bad colour range must never stop a scan."""
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in json.loads(text))
    except (TypeError, ValueError):  # JSONDecodeError is a ValueError; a number or dict is a TypeError/ValueError
        return None
    return (lo, hi) if np.isfinite(lo) and np.isfinite(hi) and lo < hi else None


# --------------------------------------------------------------------------------------------- core

MapHook = Callable[[Row, np.ndarray, np.ndarray], None]  # (row, decoded RGB pixels, anomaly map)


def infer_batch(model: ScanModel, paths: Sequence[str], decoded: list, on_map: MapHook | None = None) -> list[Row]:
    """Rows for one decoded batch: scores for the images, errors for the failures, input order kept.

    `decoded` items are (pixels or None, error, original (w, h) or None); for models with an anomaly map the
    row also gets the map's peak in original pixels, and `on_map` sees each scored image with its map.
    """
    good = [i for i, item in enumerate(decoded) if item[0] is not None]
    rows = [Row(str(p), None, item[1] or "") for p, item in zip(paths, decoded)]
    if good:
        pixels = data.to_channels(np.stack([decoded[i][0] for i in good]), model.channels)
        try:
            scores, maps = model.score_and_map(pixels)
        except Exception as exc:  # noqa: BLE001 - an inference failure must cost a batch's scores, not the run
            reason = "inference failed: " + " ".join(str(exc).split())[:160]
            for i in good:
                rows[i].error = reason
            return rows
        for k, (i, s) in enumerate(zip(good, scores)):
            rows[i].score = float(s) if np.isfinite(s) else None
            if rows[i].score is None:
                rows[i].error = "model returned a non-finite score"
            elif maps is not None:
                original = decoded[i][2] if len(decoded[i]) > 2 else None  # unknown: no peak rather than a wrong one
                if original:
                    rows[i].peak_x, rows[i].peak_y = peak(maps[k], original)
                if on_map:
                    on_map(rows[i], decoded[i][0], maps[k])
    return rows


def score_paths(model: ScanModel, paths: Sequence[str], workers: int = 4) -> list[Row]:
    """One batch of files in, one row per file out (the Ray engine shares `infer_batch`)."""
    with data.decode_pool(workers) as pool:
        return infer_batch(model, paths, data.decode_list(paths, model.decode_size, pool))


# A local model's batch holds (batch × locations × bank) distances at once: 8 images of 640 px against a
# 4,096-patch bank (--bank-size 4096) is 0.8 GB, so local models decode and run in small batches whatever
# --batch-size says; on CPU each onnxruntime call takes fewer still (ScanModel.run_batch).
LOCAL_MAX_BATCH = 8
LOCAL_CPU_RUN_BATCH = 2


def stream_rows(model: ScanModel, paths: Sequence[str], batch_size: int = 64, workers: int = 4,
                on_batch: Callable[[int], None] | None = None, on_map: MapHook | None = None) -> Iterator[Row]:
    """Score `paths` batch by batch; the next batch decodes in threads while the current one runs.

    Memory stays bounded: at most two batches of decoded pixels exist at any time.
    """
    if model.has_map:
        batch_size = min(batch_size, LOCAL_MAX_BATCH)
    starts = range(0, len(paths), batch_size)  # chunks are sliced when needed: `paths` may be a compact PathList
    if not starts:
        return
    chunk_at = lambda i: [str(p) for p in paths[i:i + batch_size]]  # noqa: E731
    with data.decode_pool(workers) as pool:
        submit = lambda chunk: [pool.submit(data.decode_or_reason, p, model.decode_size) for p in chunk]  # noqa: E731
        chunk = chunk_at(0)
        pending = submit(chunk)
        for k in range(len(starts)):
            current = pending
            following = chunk_at(starts[k + 1]) if k + 1 < len(starts) else []
            pending = submit(following) if following else []
            decoded = [f.result() for f in current]
            yield from infer_batch(model, chunk, decoded, on_map)
            if on_batch:
                on_batch(len(chunk))
            chunk = following


class MapKeeper:
    """During a scan of a local model: keeps the maps of the `keep` highest-scoring images (for the HTML
    report's overlays; bounded memory however large the folder) and writes an overlay (JPEG, or PNG with
    map_format "png") for every flagged image into `maps_dir` (scan --maps), named by a running number so that
    names never collide.

    The overlays are drawn and encoded in a background thread (Pillow and NumPy release the GIL there) while the next
    batch runs: ~10 ms per flagged image that would otherwise stall inference (casting test set, 496 overlays:
    4.6 s of a 20 s scan). At most MAX_PENDING wait; `close()` waits for the rest and raises the first failure."""

    MAX_PENDING = 16

    def __init__(self, threshold: float, keep: int = 24, maps_dir: Path | None = None,
                 map_range: tuple[float, float] | None = None, map_format: str = "jpg"):
        import heapq
        from collections import deque

        from .maps import overlay_suffix

        self.suffix = overlay_suffix(map_format)
        self._heapq, self.threshold, self.keep, self.maps_dir = heapq, threshold, keep, maps_dir
        self.map_range = map_range  # the model's colour range (None: maps.MAP_RANGE)
        self.top: list[tuple[float, int, str, np.ndarray]] = []  # min-heap of (score, seq, path, map)
        self.written: dict[str, str] = {}  # path → overlay file name (once the file is complete)
        self._seq = 0
        self._pending: deque = deque()  # (path, name, future) in submission order
        self._writer = ThreadPoolExecutor(max_workers=1) if maps_dir is not None else None

    def __call__(self, row: Row, rgb: np.ndarray, anomaly_map: np.ndarray) -> None:
        self._seq += 1
        entry = (row.score, self._seq, row.path, anomaly_map.astype(np.float16))
        if len(self.top) < self.keep:
            self._heapq.heappush(self.top, entry)
        elif row.score > self.top[0][0]:
            self._heapq.heapreplace(self.top, entry)
        if self._writer is not None and row.score >= self.threshold:
            stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(row.path).stem)[:80] or "image"
            name = f"{self._seq:06d}_{stem}{self.suffix}"
            future = self._writer.submit(write_overlay, row.path, rgb, anomaly_map.copy(), self.maps_dir / name,
                                         self.map_range)
            self._pending.append((row.path, name, future))
            while len(self._pending) > self.MAX_PENDING:
                self._finish_one()

    def _finish_one(self) -> None:
        path, name, future = self._pending.popleft()
        future.result()  # a failed write (disk full, …) surfaces here, as it did when written inline
        self.written[path] = name

    def close(self) -> None:
        """Wait for the overlays still being written."""
        if self._writer is None:
            return
        try:
            while self._pending:
                self._finish_one()
        finally:
            for _, _, future in self._pending:
                future.cancel()
            self._writer.shutdown(wait=True)

    def maps(self) -> dict[str, np.ndarray]:
        return {path: m.astype(np.float32) for _, _, path, m in self.top}


MAX_OVERLAY_SIDE = 4096  # overlays of larger originals are drawn downscaled to this long side


def write_overlay(source: str, rgb: np.ndarray, anomaly_map: np.ndarray, path: Path,
                  map_range: tuple[float, float] | None = None) -> None:
    """Write `path`: original | heat map over it, at the original's own size (re-read from `source`; EXIF
    orientation and modes as in scanning; a long side above MAX_OVERLAY_SIDE is downscaled to it). When the
    original cannot be read again (deleted or changed since it was scored), the decoded pixels `rgb` (the
    model's working size) stand in: an overlay never fails for that."""
    from .maps import save_picture, side_by_side

    try:
        pixels = original_pixels(source)
    except Exception:  # noqa: BLE001 - DecodeError, or anything a changed file raises: the decoded pixels will do
        pixels = rgb
    save_picture(side_by_side(pixels, anomaly_map, map_range), path)


def original_pixels(path: str, max_side: int = MAX_OVERLAY_SIDE) -> np.ndarray:
    """The image at `path` as RGB uint8 at its own size (after EXIF rotation), long side capped at `max_side`.
    Raises data.DecodeError on any failure."""
    from PIL import Image

    try:
        with Image.open(path) as img:  # the header only: the size, and whether EXIF turns it on its side
            width, height = img.size
            turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception as exc:  # noqa: BLE001 - whatever the file has become since it was scored
        raise data.DecodeError(f"cannot read the original again ({type(exc).__name__})") from None
    if turned:
        width, height = height, width
    scale = min(1.0, max_side / max(width, height, 1))
    return data.decode_image(path, (max(1, round(width * scale)), max(1, round(height * scale))))


# --------------------------------------------------------------------------------------------- thresholds
# (thresholds.py; the names stay importable from here: report, ray_engine and callers of scan use them)
expected_false_alarm_rate = false_alarm_rate


# --------------------------------------------------------------------------------------------- folder scan

@dataclass
class ScanResult:
    rows: RowTable  # a sequence of Row (a list of Row is converted)
    threshold: float
    threshold_source: str
    meaning: str
    model: ScanModel
    n_files: int
    seconds: float
    interrupted: bool = False
    maps: dict = field(default_factory=dict)  # local models: path → anomaly map of the top-scoring images
    overlays: dict = field(default_factory=dict)  # scan --maps: path → overlay file name under maps/
    raw_maps: int = 0  # scan --raw-maps: maps written to raw_maps/

    def __post_init__(self) -> None:
        self.rows = RowTable.of(self.rows)  # compact: one Row object per file would grow with the folder

    @property
    def failures(self) -> list[Row]:
        table = RowTable.of(self.rows)
        return [table.row(int(i)) for i in np.flatnonzero(np.isnan(table.scores))]

    @property
    def anomalies(self) -> list[Row]:
        table = RowTable.of(self.rows)
        flagged = np.nan_to_num(table.scores, nan=-np.inf) >= self.threshold  # no score: never an anomaly
        return [table.row(int(i)) for i in np.flatnonzero(flagged)]

    @property
    def n_failures(self) -> int:
        return RowTable.of(self.rows).n_failures

    @property
    def n_anomalies(self) -> int:
        return RowTable.of(self.rows).count_at_or_above(self.threshold)


def list_scan_files(folder: str | os.PathLike) -> PathList:
    """The image files under `folder` in scan order, as a compact sequence of str."""
    root = Path(folder)
    if not root.exists():
        raise UsageError(f"{root}: no such file or folder")
    files = PathList(data.iter_images(root))
    if not files:
        raise UsageError(f"{root}: no image files found ({', '.join(data.IMAGE_EXTENSIONS)}, any letter case)")
    return files


def scan_folder(folder: str | os.PathLike, model: ScanModel | str | os.PathLike = DEFAULT_MODEL,
                threshold: float | None = None, false_alarm_rate: float | None = None, batch_size: int = 64,
                workers: int = 4, on_progress: Callable[[int, int], None] | None = None,
                done: dict[str, Row] | None = None, on_rows: Callable[[list[Row]], None] | None = None,
                maps_dir: str | os.PathLike | None = None, keep_maps: int = 24,
                raw_maps_dir: str | os.PathLike | None = None, map_format: str = "jpg") -> ScanResult:
    """Score every image file under `folder`; returns all rows (unreadable files have score None).

    `done`: rows of an earlier, interrupted scan by path (those files are not scored again); `on_rows` gets
    each finished batch's rows (`resume.PartialWriter.add`). Local models: rows carry the map's peak; the maps
    of the `keep_maps` top images come back in `maps`, and with `maps_dir` an overlay of every flagged image is
    written there (JPEG, or PNG with map_format "png"); with `raw_maps_dir` every scored image's map as float16
    .npy (rawmaps.RawMapWriter).
    """
    if batch_size < 1 or workers < 1:
        raise UsageError("--batch-size and --workers must be ≥ 1")
    if not isinstance(model, ScanModel):
        model = load_model(model)
    thr, source = resolve_threshold(model, threshold, false_alarm_rate)
    files = list_scan_files(folder)
    started = time.perf_counter()
    rows = RowTable(done[f] for f in files if f in done) if done else RowTable()
    todo = PathList(f for f in files if f not in done) if done else files
    count = [len(rows)]

    def tick(n: int) -> None:
        count[0] += n
        if on_rows:
            on_rows(rows[len(rows) - n:])
        if on_progress:
            on_progress(count[0], len(files))

    keeper = None
    if model.has_map:
        if maps_dir is not None:
            Path(maps_dir).mkdir(parents=True, exist_ok=True)
        keeper = MapKeeper(thr, keep_maps, Path(maps_dir) if maps_dir is not None else None, model.map_range,
                           map_format)
    raw = None
    if model.has_map and raw_maps_dir is not None:
        from .rawmaps import RawMapWriter

        raw = RawMapWriter(Path(raw_maps_dir), then=keeper)
    interrupted = False
    try:
        for row in stream_rows(model, todo, batch_size, workers, tick, raw or keeper):
            rows.append(row)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if raw:
            raw.close()
        if keeper:
            keeper.close()
    return ScanResult(rows, thr, source, threshold_meaning(model, thr, source, false_alarm_rate), model,
                      len(files), time.perf_counter() - started, interrupted,
                      keeper.maps() if keeper else {}, keeper.written if keeper else {}, raw.count if raw else 0)
