"""`icsscan scan --engine ray`: the same scan as `scan.scan_folder`, spread over a Ray cluster.

The driver lists the files (`scan.list_scan_files`), builds a Ray Dataset of paths, decodes them in
parallel Ray tasks (`data.decode_list`) and scores the decoded batches in a fixed-size pool of actors,
each holding one onnxruntime session built from the model bytes, which are put in the object store once
(`scan.model_from_bytes` + `scan.infer_batch`). Rows come back to the driver, are checked to be exactly
one per file, and are returned in listing order as a `scan.ScanResult`, so `report.write_report` writes
the same scores.csv / summary.json / report.html as the local engine. Thresholds and ranking stay in the
shared report code.

Ray is imported only here, and only when this engine runs: `pip install 'icsscan[ray]'`.
Paths travel as bytes (os.fsencode), so file names that are not valid UTF-8 survive the trip.
Workers open the files by the driver's paths: on a multi-node cluster every node must see the same
files at the same path (shared storage), see docs/ray.md.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import data
from .errors import ModelError, UsageError
from .scan import ScanModel, ScanResult, Row, infer_batch, list_scan_files, load_model, model_from_bytes
from .thresholds import resolve_threshold, threshold_meaning

INSTALL_HINT = "--engine ray needs Ray: install icsscan[ray] (pip install 'icsscan[ray]')"


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray


def _encode(text: str) -> bytes:  # any str, lone surrogates included, survives the round trip
    return text.encode("utf-8", "surrogatepass")


def _decode(raw) -> str:
    return bytes(raw).decode("utf-8", "surrogatepass")


# --------------------------------------------------------------------------------------------- remote side

def decode_block(batch: dict, size: "data.Size", threads: int) -> dict:
    """Ray task: decode one batch of paths to (size, size, 3) uint8; failures get zeros, ok=False, a reason."""
    paths = [os.fsdecode(bytes(p)) for p in batch["path"]]
    if threads > 1 and len(paths) > 1:
        with data.decode_pool(min(threads, len(paths))) as pool:
            decoded = data.decode_list(paths, size, pool)
    else:
        decoded = data.decode_list(paths, size)
    w, h = data.wh(size)
    pixels = np.zeros((len(paths), h, w, 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    for k, (arr, *_) in enumerate(decoded):
        if arr is not None:
            pixels[k], ok[k] = arr, True
    errors = np.array([_encode(err or "") for _, err, *_ in decoded], dtype=object)
    return {"i": batch["i"], "path": batch["path"], "pixels": pixels, "ok": ok, "error": errors}


class Scorer:
    """Ray actor: one onnxruntime session per actor, built from the model bytes in the object store."""

    def __init__(self, model_ref: list, model_path: str, device: str, threads: int):
        import ray

        blob = ray.get(model_ref[0])  # wrapped in a list so Ray hands us the reference, fetched once per actor
        self.model = model_from_bytes(blob, Path(model_path), device=device, threads=threads)

    def __call__(self, batch: dict) -> dict:
        paths = [os.fsdecode(bytes(p)) for p in batch["path"]]
        decoded = [(px, "") if ok else (None, _decode(err))
                   for px, ok, err in zip(batch["pixels"], batch["ok"], batch["error"])]
        rows = infer_batch(self.model, paths, decoded)
        return {"i": batch["i"], "path": batch["path"],
                "score": np.array([np.nan if r.score is None else r.score for r in rows], dtype=np.float64),
                "error": np.array([_encode(r.error) for r in rows], dtype=object)}


# --------------------------------------------------------------------------------------------- driver side

def connect(ray, ray_address: str | None, num_cpus: int | None = None) -> bool:
    """Start a local Ray (no address) or connect to a cluster ('auto' or HOST:PORT); True if we did ray.init."""
    if ray.is_initialized():
        return False
    common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                  configure_logging=True)
    on_term = signal.getsignal(signal.SIGTERM)
    try:
        if ray_address:
            ray.init(address=ray_address, **common)
        else:
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1,
                     object_store_memory=512 * 1024 ** 2, **common)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]
        where = f"--ray-address {ray_address}" if ray_address else "local Ray"
        raise UsageError(f"{where}: cannot start or connect to Ray ({reason})") from None
    if on_term is not None:  # ray.init installs its own SIGTERM handler; keep ours (SIGTERM = Ctrl-C: partial report)
        try:
            signal.signal(signal.SIGTERM, on_term)
        except ValueError:  # not the main thread
            pass
    return True


def quiet_ray_data(ray) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # icsscan draws its own progress bar
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no "execution finished" chatter
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # nor "progress bars disabled"


def plan_pool(resources: dict, actors: int | None, actor_cpus: float, actor_gpus: float) -> tuple[int, int]:
    """(scoring actors, concurrent decode tasks) for a cluster with `resources` (ray.cluster_resources())."""
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    if actors is None:
        actors = max(1, int(cpus // (2 * actor_cpus))) if actor_cpus > 0 else max(1, int(cpus // 2))
        if actor_gpus:
            actors = max(1, min(actors, int(gpus // actor_gpus)))
    if actors * actor_cpus > cpus + 1e-9:
        raise UsageError(f"--actors {actors}: each scoring actor reserves {actor_cpus:g} CPU, the Ray cluster has "
                         f"{cpus:g}; use --actors {max(1, int(cpus // actor_cpus)) if actor_cpus else 1} or fewer")
    if actors * actor_gpus > gpus + 1e-9:
        raise UsageError(f"{actors} scoring actors with {actor_gpus:g} GPU each need {actors * actor_gpus:g} GPUs, "
                         f"the Ray cluster has {gpus:g}")
    decoders = max(1, round(cpus - actors * actor_cpus))
    return actors, decoders


def scan_folder_ray(folder: str | os.PathLike, model_path: ScanModel | str | os.PathLike,
                    threshold: float | None = None, false_alarm_rate: float | None = None, batch_size: int = 64,
                    workers: int = 4, ray_address: str | None = None, actors: int | None = None,
                    on_progress: Callable[[int, int], None] | None = None, actor_cpus: float = 1.0,
                    actor_gpus: float = 0.0, num_cpus: int | None = None) -> ScanResult:
    """Score every image under `folder` on Ray; same rows (and `ScanResult`) as `scan.scan_folder`.

    `actors` scoring actors (default: half the cluster's CPUs), each reserving `actor_cpus` CPUs (its
    onnxruntime thread count) and `actor_gpus` GPUs (> 0 runs the session on CUDA: onnxruntime-gpu on the
    workers). `workers` is the number of decode threads inside each decode task. `num_cpus` sizes the
    local Ray started when no `ray_address` is given (default: all cores).
    """
    if batch_size < 1 or workers < 1:
        raise UsageError("--batch-size and --workers must be ≥ 1")
    if actors is not None and actors < 1:
        raise UsageError("--actors must be ≥ 1")
    ray = import_ray()
    model = model_path if isinstance(model_path, ScanModel) else load_model(model_path)
    thr, source = resolve_threshold(model, threshold, false_alarm_rate)
    files = [str(f) for f in list_scan_files(folder)]
    blob = model.path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != model.sha256:
        raise ModelError(f"{model.path}: model file changed while scanning; run again")

    started_ray = connect(ray, ray_address, num_cpus)
    started = time.perf_counter()
    by_index: dict[int, Row] = {}
    interrupted = False
    try:
        quiet_ray_data(ray)
        actors, decoders = plan_pool(ray.cluster_resources(), actors, actor_cpus, actor_gpus)
        model_ref = ray.put(blob)  # the model bytes go into the object store once; every actor reads them
        items = [{"i": i, "path": os.fsencode(p)} for i, p in enumerate(files)]
        ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(files) / batch_size)))
        # Decode tasks reserve no logical CPU, so actors holding every CPU (e.g. restarted after a node loss)
        # can never starve them; their number is capped instead. They are not fused into the actors.
        ds = ds.map_batches(decode_block, batch_size=batch_size, batch_format="numpy", num_cpus=0,
                            compute=ray.data.TaskPoolStrategy(size=decoders),
                            fn_kwargs={"size": model.decode_size, "threads": workers})
        ds = ds.map_batches(Scorer, batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=actors),
                            fn_constructor_kwargs={"model_ref": [model_ref], "model_path": str(model.path),
                                                   "device": "cuda" if actor_gpus else "cpu",
                                                   "threads": max(1, round(actor_cpus))},
                            num_cpus=actor_cpus, num_gpus=actor_gpus or None)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i, raw_path, score, err in zip(batch["i"], batch["path"], batch["score"], batch["error"]):
                i = int(i)
                if not 0 <= i < len(files) or os.fsdecode(bytes(raw_path)) != files[i]:
                    raise RuntimeError(f"ray engine returned a row for an unknown file ({os.fsdecode(bytes(raw_path))!r})")
                if i in by_index:
                    continue  # a retried block delivered twice: keep the first copy
                by_index[i] = Row(files[i], None if np.isnan(score) else float(score), _decode(err))
            if on_progress:
                on_progress(len(by_index), len(files))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if started_ray:
            ray.shutdown()
    if not interrupted and len(by_index) != len(files):
        raise RuntimeError(f"ray engine returned {len(by_index)} rows for {len(files)} files; the report would "
                           "be incomplete, so none was written")
    rows = [by_index[i] for i in range(len(files)) if i in by_index]
    return ScanResult(rows, thr, source, threshold_meaning(model, thr, source, false_alarm_rate), model,
                      len(files), time.perf_counter() - started, interrupted)
