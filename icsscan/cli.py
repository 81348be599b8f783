"""The `icsscan` command: a thin Typer layer over the library (split, train, export, scan, evaluate).

Exit codes: 0 = done (unreadable images are listed, not fatal); 1 = anomalies found and --fail-on-anomaly;
2 = usage error (missing folder, no images, bad flag values); 3 = model missing, invalid or incompatible;
4 = unexpected internal error; 130 = interrupted. Errors are one line on stderr; --debug shows tracebacks.
Torch is imported only by split/train/export, so `scan` starts fast and runs without it.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .errors import IcsscanError, ModelError, UsageError

EXIT_CODES = """Exit codes: 0 done (unreadable files are listed, not fatal) · 1 anomalies found with --fail-on-anomaly ·
2 usage error (missing folder, no images, bad flag) · 3 model missing/invalid/incompatible · 4 internal error ·
130 interrupted."""

app = typer.Typer(name="icsscan", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Learn what normal images look like from a folder of good ones, then rank new images by "
                       "how abnormal they look (deep one-class classification with intra-class splitting).\n\n"
                       + EXIT_CODES)
STATE = {"debug": False, "held": ExitStack()}

# --- options shared by several verbs (defined once) ---------------------------------------------------------
Seed = Annotated[int, typer.Option(help="Random seed (same seed + CPU → identical results).")]
Device = Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda.")]
Rho = Annotated[float, typer.Option(help="Fraction of normal images called atypical, 0 < rho < 0.5.")]
ImageSize = Annotated[int, typer.Option("--image-size", help="Global models: side in pixels images are resized to "
                                        "(0 = the training images' usual size, capped at 64). Local models: the long "
                                        "side, aspect ratio kept (0 = their own, clamped to 224-640).")]
Channels = Annotated[int, typer.Option(help="1 (grey) or 3 (RGB); 0 = automatic (1 when all images are grey).")]
Workers = Annotated[int, typer.Option(help="Threads that decode images in parallel.")]
Force = Annotated[bool, typer.Option("--force", help="Write into --out even if it holds something else.")]


def fail(exc: BaseException) -> None:
    """Print one line and exit with the documented code (or re-raise with --debug)."""
    if STATE["debug"]:
        raise exc
    if isinstance(exc, IcsscanError):
        typer.echo(f"icsscan: error: {exc}", err=True)
        raise typer.Exit(exc.exit_code)
    reason = " ".join(str(exc).split())[:300] or type(exc).__name__
    typer.echo(f"icsscan: internal error: {type(exc).__name__}: {reason} (rerun with --debug for details)", err=True)
    raise typer.Exit(4)


@contextmanager
def errors_as_exit_codes():
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):  # SIGTERM (docker stop, CI cancel) behaves like Ctrl-C: clean up, then exit
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not in the main thread (e.g. inside a test runner thread)
        pass
    try:
        with STATE["held"]:  # locks taken by claim_out, released when the command ends
            yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        typer.echo("icsscan: interrupted", err=True)
        raise typer.Exit(130)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line and an exit code
        fail(exc)
    finally:
        STATE["held"] = ExitStack()
        try:
            signal.signal(signal.SIGTERM, previous)
        except (ValueError, TypeError):
            pass


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"icsscan {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[Optional[bool], typer.Option("--version", callback=version_callback, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    STATE["debug"] = debug


def is_icsscan_output(out: Path, marker: str) -> bool:
    """True when `out` holds our marker file; a config.json or split.csv must also be icsscan's own, since
    `train` replaces the whole folder and a folder with some other config.json is not ours to delete."""
    path = out / marker
    if not path.is_file():
        return False
    try:
        if marker == "config.json":
            meta = json.loads(path.read_text(encoding="utf-8"))
            return isinstance(meta, dict) and isinstance(meta.get("config"), dict) and "created" in meta
        if marker == "split.csv":
            with open(path, encoding="utf-8") as f:
                return f.readline().strip() == "path,ssim,rank,subset"
    except (OSError, ValueError):
        return False
    return True


def check_out_dir(out: Path, marker: str, force: bool) -> None:
    """Refuse to write into a non-empty folder that is not one of ours (unless --force)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not is_icsscan_output(out, marker) and not force:
        raise UsageError(f"--out {out}: folder is not empty and is not an icsscan output; choose another or add --force")


def claim_out(out: Path, parent: bool = False) -> None:
    """Before any work: refuse an --out that cannot be written, or that another icsscan is writing (exit 2);
    then hold its lock until the command ends. `parent`: the output is renamed into place in out's parent."""
    from .files import check_writable, out_lock

    check_writable(out, parent=parent)
    STATE["held"].enter_context(out_lock(out))


def make_detector(preset: str, folder: Path, **kwargs):
    """An ICSDetector for `split` / `train`, once `folder` is known to hold images: importing torch and the
    detector takes seconds, and a mistyped or empty folder should be refused at once."""
    from .data import require_an_image

    require_an_image(folder)
    from .detector import ICSDetector
    from .progress import training_progress

    det = ICSDetector(preset=preset, verbose=True, **kwargs)
    return det, training_progress


@app.command()
def split(
    folder: Annotated[Path, typer.Argument(help="Folder of normal images (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("icsscan-split"),
    rho: Rho = 0.1,
    image_size: ImageSize = 0,
    channels: Channels = 0,
    epochs: Annotated[int, typer.Option(help="Autoencoder epochs (default: the preset's).")] = 0,
    preset: Annotated[str, typer.Option(help="default or paper.")] = "default",
    seed: Seed = 0,
    device: Device = "auto",
    workers: Workers = 4,
    force: Force = False,
) -> None:
    """Split normal images into typical and atypical by autoencoder SSIM; write split.csv and a preview."""
    with errors_as_exit_codes():
        from .config import preset_config

        check_out_dir(out, "split.csv", force)
        claim_out(out)
        cfg = preset_config(preset, rho=rho, image_size=image_size, channels=channels, seed=seed, device=device,
                            workers=workers, ae_epochs=epochs or None)
        det, progress = make_detector(preset, folder, config=cfg)
        with progress(det):
            det.fit_split(folder)
        det.save_split(out)
        n_atyp = int(det.split_["atypical"].sum())
        typer.echo(f"split: {len(det.split_['paths'])} images → {n_atyp} atypical, "
                   f"{len(det.split_['paths']) - n_atyp} typical; wrote {out / 'split.csv'} and "
                   f"{out / 'split_preview.png'}" + (f"; {len(det.failures_)} unreadable files skipped" if det.failures_ else ""))


@app.command()
def train(
    folder: Annotated[Path, typer.Argument(help="Folder of normal (good) images, searched recursively (symlinks followed, also outside it).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model bundle folder.")] = Path("icsscan-model"),
    split_csv: Annotated[Optional[Path], typer.Option("--split", help="Reuse a split.csv from `icsscan split`.")] = None,
    preset: Annotated[str, typer.Option(help="default (fast, icsscan's recipe) or paper (the paper's settings).")] = "default",
    iterations: Annotated[int, typer.Option(help="ICS training iterations (default: the preset's).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Batch size B.")] = 64,
    rho: Rho = 0.1,
    image_size: ImageSize = 0,
    channels: Channels = 0,
    calibration_fraction: Annotated[float, typer.Option(help="Share of normal images that calibrate thresholds "
                                                        "(global models: held out, never trained on; local "
                                                        "models: at least 100, or all, each scored out of fold by "
                                                        "a model fitted without it). 0 = none.")] = 0.1,
    defects: Annotated[Optional[Path], typer.Option("--defects", help="Local models: a folder of known defective "
                                                    "images (any number ≥ 1, searched recursively). They choose "
                                                    "the recipe that separates them best from the good images "
                                                    "(never trained on) and give `scan --threshold auto`.")] = None,
    score: Annotated[str, typer.Option(help="What the model outputs: global models: ics, ssim, rotation, "
                                       "mahalanobis (from scratch), embedding_knn, embedding_ics (pretrained "
                                       "embedding); local models: patch_knn, patch_ics, global_knn; or several "
                                       "joined by +, each optionally weighted as name*w (default: "
                                       "embedding_knn+embedding_ics+ssim for images of at most 64 px, "
                                       "patch_knn+patch_ics+global_knn for larger ones, "
                                       "ics+ssim+rotation*0.7+mahalanobis*2 with --backbone small). The short "
                                       "names rot, maha, eknn, eics, knn, pics, gknn are accepted too.")] = "",
    backbone: Annotated[str, typer.Option(help="auto (default: efficientnet-lite0 local scores for images over "
                                          "64 px; smaller ones get one global score on the pretrained embedding), "
                                          "efficientnet-lite0 (ImageNet-pretrained, local scores and heat maps at "
                                          "the images' own resolution), small or alexnet (the from-scratch ICS "
                                          "recipe: fastest scans).")] = "auto",
    embed_size: Annotated[int, typer.Option(help="Side in px at which whole-object images are fed to the "
                                            "pretrained network for the embedding_knn / embedding_ics components (0 = the preset's, "
                                            "160; 112 is ~2x faster to train and scan, a little less accurate).")] = 0,
    bank_size: Annotated[int, typer.Option(help="Local models: patches in the kNN memory bank (0 = the preset's, "
                                           "2048). Larger covers more normal variety (parts that vary a lot) "
                                           "at a slower scan (300-px casting, 2 cores: the graph 60 instead of 82 "
                                           "images/s at 4096).",
                                           min=0)] = 0,
    weights: Annotated[str, typer.Option(help="How the score's components are weighted: auto (the preset's), "
                                         "synthetic (by how well each tells held-out normals from synthetic "
                                         "anomalies made from them: no labels needed), gated (local models: the "
                                         "--score string's weights, dropping global_knn when it cannot tell "
                                         "them apart better than chance; the local default) or fixed (the --score "
                                         "string's weights as given).")] = "auto",
    brightness: Annotated[str, typer.Option(help="Local models: auto (default: normalise only when the training "
                                            "images' own exposure varies widely), normalise (each image's brightness "
                                            "and contrast brought to the training images' typical ones, so a change "
                                            "of lighting between sessions is not flagged) or keep (a dark region or "
                                            "a change of brightness is itself a defect you want flagged).")] = "auto",
    seed: Seed = 0,
    device: Device = "auto",
    workers: Workers = 4,
    force: Force = False,
) -> None:
    """Train an ICS model on normal images and write the model bundle (weights, config, split, log, ONNX)."""
    with errors_as_exit_codes():
        from .config import preset_config

        if weights not in ("auto", "synthetic", "gated", "fixed"):
            raise UsageError(f"--weights {weights!r}: choose auto, synthetic, gated or fixed")
        if brightness not in ("auto", "normalise", "keep"):
            raise UsageError(f"--brightness {brightness!r}: choose auto, normalise or keep")
        if defects is not None and not defects.is_dir():
            raise UsageError(f"--defects {defects}: not a folder")
        check_out_dir(out, "config.json", force)
        claim_out(out, parent=True)
        chosen = None if weights == "auto" else weights
        cfg = preset_config(preset, rho=rho, image_size=image_size, channels=channels, seed=seed, device=device,
                            workers=workers, batch_size=batch_size, iterations=iterations or None,
                            calibration_fraction=calibration_fraction, score=score or None,
                            backbone=None if backbone == "auto" else backbone,  # auto: the preset's
                            embed_size=embed_size or None, bank_size=bank_size or None, local_weights=chosen,
                            global_weights=None if chosen == "gated" else chosen,  # gated: local models only
                            normalise_brightness={"auto": "auto", "normalise": True, "keep": False}[brightness])
        det, progress = make_detector(preset, folder, config=cfg)
        with progress(det):
            det.fit(folder, split=split_csv, defects=defects)
        from .plots import save_loss_curve
        from .thresholds import DEFAULT_THRESHOLD, false_alarm_rate

        det.save(out, extra_files={"loss_curve.png": lambda p: save_loss_curve(det.train_log_, p)})
        cal = det.calibration_scores_
        rate = f"{false_alarm_rate(cal, DEFAULT_THRESHOLD):.1%}" if len(cal) else "unknown (no calibration)"
        if det.config_.is_local and det.local_info_.get("calibration_folds", 0) > 1:  # every image trains
            images = f"{det.n_train_} training images, {det.n_calibration_} of them scored out of fold to calibrate"
        elif det.config_.is_local and not det.n_calibration_:
            images = f"{det.n_train_} training images, no calibration"
        else:
            images = f"{det.n_train_} training + {det.n_calibration_} calibration images"
        seconds = det.timings_.get("known_defects_total_s", det.timings_["total_s"])
        typer.echo(f"train: model bundle written to {out} ({images}, {seconds:.1f} s). At --threshold 0.5, "
                   f"{rate} of held-out normal images are flagged; use `icsscan scan DIR --model {out} "
                   f"--false-alarm-rate 0.01` for a 1% rate.")
        if det.known_defects_:
            print_known_defects(det.known_defects_, cal, out)


def print_known_defects(known: dict, calibration, out: Path) -> None:
    """train --defects: the candidates' table (rich) and the auto threshold beside the false-alarm-rate one."""
    from rich.console import Console
    from rich.table import Table

    from .thresholds import false_alarm_rate, threshold_for_rate

    table = Table(title=f"Recipes on {known['n_defects']} known defects vs {known['n_good_out_of_fold']} good images "
                        "(out of fold)")
    for column in ("recipe", "AUROC", "beats default", "fit s", "kept"):
        table.add_column(column, justify="left" if column == "recipe" else "right")
    for c in known["candidates"]:
        beats = "" if c["confidence_beats_default"] is None else f"{c['confidence_beats_default']:.0%}"
        table.add_row(c["name"], f"{c['auroc']:.3f}", beats, f"{c['fit_s']:.0f}", "yes" if c["kept"] else "")
    Console(stderr=True).print(table)
    auto = known["threshold_auto"]
    rate_thr = threshold_for_rate(calibration, 0.05) if len(calibration) else None
    beside = (f"; --false-alarm-rate 0.05 gives {rate_thr:.3f} "
              f"({false_alarm_rate(calibration, rate_thr):.0%} of them)" if rate_thr is not None else "")
    typer.echo(f"train: kept '{known['kept']}' (rule: {known['rule']}). --threshold auto = {auto['threshold']:.3f}: "
               f"it flags {auto['defects_flagged']:.0%} of the known defects and {auto['good_flagged']:.0%} of the "
               f"good images scored out of fold{beside}. Scan with `icsscan scan DIR --model {out} --threshold auto`.")


@app.command()
def export(
    model_dir: Annotated[Path, typer.Argument(help="Model bundle folder written by `icsscan train`.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="ONNX file (default MODEL_DIR/model.onnx).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = 17,
) -> None:
    """Export the bundle's scorer to ONNX (raw score, dynamic batch) and check parity with PyTorch."""
    with errors_as_exit_codes():
        if opset < 11:
            raise UsageError(f"--opset {opset}: icsscan needs opset ≥ 11")
        if not model_dir.is_dir():  # before the seconds torch takes to import (bundle.load says the same)
            raise ModelError(f"{model_dir}: model folder not found")
        from .bundle import export_model
        from .detector import ICSDetector

        det = ICSDetector.load(model_dir, device="cpu")
        target = output or (model_dir / "model.onnx")
        diff = export_model(det, target, opset=opset)
        typer.echo(f"export: wrote {target} (opset {opset}); onnx.checker passed; "
                   f"max |onnx - pytorch| = {diff:.2e} on real images (limit 1e-4)")


@app.command(epilog=EXIT_CODES)
def scan(
    folder: Annotated[Path, typer.Argument(help="Folder of images to screen (searched recursively; symlinked files and folders are followed, also where they lead outside FOLDER).")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle folder or .onnx file.")] = Path("icsscan-model"),
    threshold: Annotated[Optional[str], typer.Option(help="Raw anomaly-score threshold in [0, 1] (model default 0.5), "
                                                     "or auto: the score that best separated the known defects "
                                                     "given to `train --defects` from the good images.")] = None,
    false_alarm_rate: Annotated[Optional[float], typer.Option(help="Set the threshold so that about this fraction of "
                                                              "normal images is flagged (e.g. 0.01).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("icsscan-report"),
    batch_size: Annotated[int, typer.Option(help="Images per inference batch.")] = 64,
    workers: Workers = 4,
    fail_on_anomaly: Annotated[bool, typer.Option("--fail-on-anomaly", help="Exit 1 when any image is flagged.")] = False,
    copy_flagged: Annotated[bool, typer.Option("--copy-flagged", help="Copy flagged images into REPORT/anomalous/.")] = False,
    formats: Annotated[str, typer.Option("--format", help="Comma list of csv, json, junit (csv and json always).")] = "csv,json",
    html: Annotated[bool, typer.Option("--html/--no-html", help="Write report.html.")] = True,
    maps: Annotated[bool, typer.Option("--maps", help="Local models: write an overlay (image | heat map, at the "
                                       "image's own size) of every flagged image into REPORT/maps/.")] = False,
    map_format: Annotated[str, typer.Option(help="With --maps: jpg (quality 92; fast, small) or png "
                                            "(lossless).")] = "jpg",
    raw_maps: Annotated[bool, typer.Option("--raw-maps", help="Local models: keep every scored image's raw anomaly "
                                           "map as float16 .npy at the model's map resolution in REPORT/raw_maps/, "
                                           "with index.csv (image path, score, original width and height).")] = False,
    device: Device = "auto",
    force: Force = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted scan from the partial results "
                                         "in --out (same model and folder), scoring only the files not done yet.")] = False,
    engine: Annotated[str, typer.Option(help="local (this machine) or ray (a Ray cluster; needs icsscan[ray]).")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="With --engine ray: cluster to join, 'auto' or HOST:PORT "
                                                       "(default: start a local Ray).")] = None,
    actors: Annotated[Optional[int], typer.Option(help="With --engine ray: scoring actors (default: half the "
                                                  "cluster's CPUs).")] = None,
) -> None:
    """Score every image under FOLDER and write a ranked report (scores.csv, summary.json, report.html)."""
    with errors_as_exit_codes():
        from .progress import scan_progress
        from .report import MARKER, prepare_out_dir, write_report
        from .scan import load_model, resolve_threshold, scan_folder

        wanted = {f.strip().lower() for f in formats.split(",") if f.strip()}
        unknown = wanted - {"csv", "json", "junit"}
        if unknown:
            raise UsageError(f"--format: unknown format(s) {', '.join(sorted(unknown))}; use csv, json, junit")
        if engine not in ("local", "ray"):
            raise UsageError(f"--engine {engine}: use local or ray")
        from .maps import overlay_suffix

        overlay_suffix(map_format)  # an unknown format fails here, before any work
        if engine == "local" and (ray_address or actors is not None):
            raise UsageError("--ray-address and --actors need --engine ray")
        if engine == "ray" and resume:
            raise UsageError("--resume works with --engine local only")
        if engine == "ray":
            from .ray_engine import import_ray

            import_ray()  # without Ray: exit 2, "install icsscan[ray]", before any work
        if not folder.exists():
            raise UsageError(f"{folder}: no such file or folder")
        loaded_model = load_model(model, device=device)
        resolve_threshold(loaded_model, threshold, false_alarm_rate)  # a bad --threshold: exit 2 before any work
        check_out_dir(out, MARKER, force)
        if maps and not loaded_model.has_map:
            raise UsageError(f"--maps: {loaded_model.path} is a global model without anomaly maps "
                             "(train with --backbone efficientnet-lite0)")
        if maps and engine == "ray":
            raise UsageError("--maps works with --engine local only")
        if raw_maps and not loaded_model.has_map:
            raise UsageError(f"--raw-maps: {loaded_model.path} is a global model without anomaly maps "
                             "(train with --backbone efficientnet-lite0)")
        if raw_maps and (engine == "ray" or resume):
            raise UsageError("--raw-maps works with --engine local only, without --resume (every map in one run)")
        claim_out(out)
        partial = start_partial(out, loaded_model.sha256, folder, resume) if engine == "local" else None
        maps_tmp = out / f".maps-{os.getpid()}.tmp" if maps else None
        raw_tmp = out / f".raw-maps-{os.getpid()}.tmp" if raw_maps else None
        try:
            with scan_progress() as on_progress:
                if engine == "ray":
                    from .ray_engine import scan_folder_ray

                    result = scan_folder_ray(folder, loaded_model, threshold, false_alarm_rate, batch_size, workers,
                                             ray_address=ray_address, actors=actors, on_progress=on_progress)
                else:
                    result = scan_folder(folder, loaded_model, threshold, false_alarm_rate, batch_size, workers,
                                         on_progress, done=partial.done, on_rows=partial.add, maps_dir=maps_tmp,
                                         raw_maps_dir=raw_tmp, map_format=map_format)
            report_dir = prepare_out_dir(out, force=True)
            if maps_tmp is not None:
                install_maps(maps_tmp, report_dir / "maps")
            if raw_tmp is not None:
                install_maps(raw_tmp, report_dir / "raw_maps")
        finally:
            for spool in (maps_tmp, raw_tmp):
                if spool is not None and spool.exists():
                    import shutil

                    shutil.rmtree(spool, ignore_errors=True)
        summary = write_report(result, report_dir, str(folder), wanted, command=sys.argv, copy=copy_flagged, html=html)
        if partial:
            partial.close(finished=not result.interrupted)  # kept after an interrupt: `--resume` continues from it
        from .progress import print_summary

        print_summary(summary, report_dir)
        if result.interrupted:
            typer.echo(f"icsscan: interrupted; partial report ({len(result.rows)} of {result.n_files} files) "
                       f"in {report_dir}, marked incomplete", err=True)
            raise typer.Exit(130)
        if fail_on_anomaly and result.n_anomalies:
            raise typer.Exit(1)


EVALUATE_EXIT_CODES = """Exit codes: 0 every gate met (unreadable files are listed, not fatal) · 1 a gate missed (the message
says which, the value and by how much) · 2 bad input (missing folder, one class only, bad flag) · 3 model
missing/invalid · 4 internal error · 130 interrupted."""


@app.command(epilog=EVALUATE_EXIT_CODES)
def evaluate(
    data: Annotated[Optional[Path], typer.Argument(metavar="DATA", help="Labelled folder in MVTec AD's layout: DATA/good/** are good, "
                                                   "every other sub-folder a defect class (e.g. casting/test). With "
                                                   "--labels: the folder its relative paths start from.")] = None,
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle folder or .onnx file.")] = Path("icsscan-model"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder (metrics.json, report.html, plots).")] = Path("icsscan-evaluation"),
    min_auroc: Annotated[Optional[float], typer.Option(help="Gate: exit 1 when the image AUROC is below this.")] = None,
    min_pixel_auroc: Annotated[Optional[float], typer.Option(help="Gate: exit 1 when the pixel AUROC is below this "
                                                             "(needs masks and a model with maps).")] = None,
    min_aupro: Annotated[Optional[float], typer.Option(help="Gate: exit 1 when the AUPRO (FPR ≤ 0.3, normalised) is "
                                                       "below this (needs masks and a model with maps).")] = None,
    false_alarm_rate: Annotated[Optional[float], typer.Option(help="Also report the counts at the threshold that flags "
                                                              "about this fraction of normal images (e.g. 0.01).")] = None,
    masks: Annotated[Optional[Path], typer.Option(help="Ground-truth masks as MASKS/<class>/<stem>* (any image mode, "
                                                  "non-zero = defect; default DATA/../ground_truth).")] = None,
    labels: Annotated[Optional[Path], typer.Option(help="CSV of path,label[,mask] (label 0 = good, 1 = defect; an "
                                                   "optional header may name a class column) instead of the layout.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per inference batch.")] = 64,
    workers: Workers = 4,
    html: Annotated[bool, typer.Option("--html/--no-html", help="Write report.html.")] = True,
    device: Device = "auto",
    force: Force = False,
) -> None:
    """Measure a model on labelled images: image AUROC, AP, per-class AUROC, rates at the threshold, pixel AUROC
    and AUPRO where masks exist; plots and report.html; --min-* gates for CI."""
    with errors_as_exit_codes():
        from .evaluate import MARKER, evaluate_items, gate_message, pixel_plan, write_evaluation
        from .labels import find_items
        from .progress import scan_progress
        from .scan import load_model, resolve_threshold

        for flag, value in (("--min-auroc", min_auroc), ("--min-pixel-auroc", min_pixel_auroc),
                            ("--min-aupro", min_aupro)):
            if value is not None and not 0 <= value <= 1:
                raise UsageError(f"{flag} must be between 0 and 1, got {value}")
        if batch_size < 1 or workers < 1:
            raise UsageError("--batch-size and --workers must be ≥ 1")
        items = find_items(data, masks, labels)
        loaded_model = load_model(model, device=device)
        pixels_possible, why = pixel_plan(items, loaded_model)
        for flag, value in (("--min-pixel-auroc", min_pixel_auroc), ("--min-aupro", min_aupro)):
            if value is not None and not pixels_possible:
                raise UsageError(f"{flag}: no pixel metrics here ({why})")
        resolve_threshold(loaded_model, None, false_alarm_rate)  # a bad --false-alarm-rate: exit 2/3 before any work
        check_out_dir(out, MARKER, force)
        claim_out(out)
        with scan_progress() as on_progress:
            evaluation = evaluate_items(items, loaded_model, false_alarm_rate, batch_size, workers,
                                        on_progress=on_progress)
        source = {"data": str(data) if data else None, "labels": str(labels) if labels else None,
                  "masks": str(masks) if masks else None, "false_alarm_rate": false_alarm_rate,
                  "batch_size": batch_size, "workers": workers, "device": device}
        gates = {"--min-auroc": min_auroc, "--min-pixel-auroc": min_pixel_auroc, "--min-aupro": min_aupro}
        metrics = write_evaluation(evaluation, out, source, gates, command=sys.argv, html=html)
        from .progress import print_evaluation

        print_evaluation(metrics, out)
        missed = [g for g in metrics["gates"] if not g["passed"]]
        for gate in missed:
            typer.echo(f"icsscan: {gate_message(gate)}", err=True)
        if missed:
            raise typer.Exit(1)


def install_maps(spool: Path, target: Path) -> None:
    """Move this scan's overlays into REPORT/maps/, replacing an earlier run's (never following a symlink)."""
    import shutil

    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    os.replace(spool, target)


def start_partial(out: Path, model_sha256: str, folder: Path, resume: bool):
    """Open --out's partial-results file (rows of an interrupted scan kept with --resume, else started afresh)."""
    from .report import mark_report_folder
    from .resume import PartialWriter, read_partial

    done = read_partial(out, model_sha256, folder) if resume else {}
    if resume and not done:
        typer.echo(f"icsscan: --resume: no partial scan in {out}; scanning every file", err=True)
    if not out.exists() or not any(out.iterdir()):  # a folder we create is ours, even if the scan stops here
        mark_report_folder(out)
    return PartialWriter(out, model_sha256, folder, done)


def run() -> None:
    try:
        app()
    except SystemExit as exc:
        if exc.code != 130:
            raise
        # A Ctrl-C / SIGTERM that lands while code run by exec() or eval() of a string is on the stack (dataclass
        # and namedtuple creation in a lazy import do that) sets CPython's "unhandled KeyboardInterrupt" flag even
        # though we caught it, and `python -m icsscan` then kills itself with SIGINT at exit (status -2, not 130).
        # Everything is cleaned up by now: leave before the interpreter looks at that flag.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(130)


if __name__ == "__main__":
    run()
