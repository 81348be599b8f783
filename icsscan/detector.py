"""`ICSDetector`: the library API (scikit-learn / PyOD style) over data → split → train → score.

    det = ICSDetector(preset="default", seed=0).fit("good/")
    det.score_samples("incoming/")      # anomaly scores in [0, 1]
    det.predict("incoming/", threshold=0.5)
    det.save("icsscan-model"); ICSDetector.load("icsscan-model")
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from sklearn.base import BaseEstimator

from . import bundle, data
from .config import (COMPONENTS, EMBED_COMPONENTS, MIN_IMAGES, ICSConfig, networks_of, preset_config,
                     resolve_backbone, score_parts)
from .data import array_to_rgb, list_inputs
from .errors import NotFittedError, UsageError
from .fusion import fuse_global, fuse_local
from .models import ConvAutoencoder, ICSClassifier, resolve_device
from .runinfo import now_iso
from .scorer import CLASSIFIER_COMPONENTS, SCORE_BATCH, fit_latent_gaussian
from .split import rank_by_ssim, split_by_ssim, ssim_scores, train_autoencoder
from .thresholds import (DEFAULT_THRESHOLD, calibration_folds, calibration_holdout, percentile_of,
                         threshold_for_rate)
from .train import train_ics

# a local model learns patches on pretrained features (each image gives ~10³ of them) and trains nothing from
# scratch on whole images: a handful of good parts is a usable start (16 images: benchmarks/results/industrial.md)
MIN_LOCAL_IMAGES = 8
PARITY_SAMPLES = 16
LOCAL_PARITY_SAMPLES = 4  # local inputs are large (640x640x3 = 1.2 MB each): a few real images suffice


class ICSDetector(BaseEstimator):
    """Deep one-class classifier trained by intra-class splitting (Schlachter, Liao, Yang 2019).

    Parameters (all optional; None takes the preset's value)
    ----------
    preset : "default" | "paper"
        icsscan's fast recipe, or the paper's settings.
    image_size : int, 0 = automatic (the training images' usual size, capped at 64 px).
    channels : 1, 3, or 0 = automatic (1 when every training image is grey).
    rho : float, fraction of normal images called atypical (0 < rho < 0.5). Default 0.1.
    iterations, batch_size, seed, device ("auto"|"cpu"|"cuda"), calibration_fraction, score, workers:
        see `ICSConfig`.
    config : ICSConfig, a full configuration; the other arguments override it.
    verbose : bool, print progress lines to stderr.

    The constructor only stores its arguments (scikit-learn's rule): `get_params` / `set_params` and
    `sklearn.base.clone` work, and an unfitted clone trains the same model.

    Attributes after `fit` (and after `load`, as far as the bundle holds them)
    ----------------------
    config_, image_size_, channels_, classifier_, autoencoder_, scorer_, split_ (dict), calibration_scores_
    (sorted scores of held-out normals), out_of_fold_scores_ (the same in calibration_paths_' order; local
    models: each scored by a model fitted without it; None after load), threshold_ (0.5 raw score),
    known_defects_ (fit with defects: the recipes weighed, the one kept, threshold auto; else None),
    train_log_, failures_, timings_.
    """

    def __init__(self, preset: str = "default", image_size: int | None = None, channels: int | None = None,
                 rho: float | None = None, iterations: int | None = None, batch_size: int | None = None,
                 seed: int | None = None, device: str | None = None, calibration_fraction: float | None = None,
                 score: str | None = None, workers: int | None = None, config: ICSConfig | None = None,
                 backbone: str | None = None, verbose: bool = False):
        self.preset = preset
        self.backbone = backbone
        self.image_size = image_size
        self.channels = channels
        self.rho = rho
        self.iterations = iterations
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.calibration_fraction = calibration_fraction
        self.score = score
        self.workers = workers
        self.config = config
        self.verbose = verbose
        self.progress: Callable[..., None] | None = None  # hook(stage, completed, total, info) for the CLI

    # ----------------------------------------------------------------------------------------- helpers
    def _resolved_config(self) -> ICSConfig:
        base = self.config or preset_config(self.preset)
        cfg = base.with_overrides(image_size=self.image_size, channels=self.channels, rho=self.rho,
                                  iterations=self.iterations, batch_size=self.batch_size, seed=self.seed,
                                  device=self.device, calibration_fraction=self.calibration_fraction,
                                  score=self.score, workers=self.workers, backbone=self.backbone)
        try:
            cfg.validate()
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return cfg

    def _say(self, message: str) -> None:
        if self.verbose:
            print(message, file=sys.stderr, flush=True)

    def _tick(self, stage: str, completed: int, total: int, **info: Any) -> None:
        if self.progress:
            self.progress(stage, completed, total, info)

    def _counter(self, stage: str, total: int) -> Callable[[int], None]:
        """A callback that adds n to a running count and reports it as `stage` progress of `total`."""
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            self._tick(stage, done[0], total)
        return advance

    def _training_logger(self, total: int) -> Callable[[dict], None]:
        """A callback that keeps a training-loop row in train_log_ and reports it as "train" progress."""
        def on_log(row: dict) -> None:
            self.train_log_.append(row)
            self._tick("train", row["iteration"], total, **{k: v for k, v in row.items() if k not in ("iteration", "head")})
        return on_log

    def _check_fitted(self) -> None:
        if not hasattr(self, "scorer_"):
            raise NotFittedError("this ICSDetector is not fitted yet: call fit() or ICSDetector.load() first")

    # ----------------------------------------------------------------------------------------- input
    def _read(self, X: Any, size: int, warn: bool) -> data.LoadedImages:
        """Folder, file list or array → RGB uint8 (N, size, size, 3), with the list of unreadable files."""
        if isinstance(X, np.ndarray):
            return data.LoadedImages(array_to_rgb(X, size), [f"array[{i}]" for i in range(len(X))], [])
        paths = list_inputs(X)
        on_failure = (lambda f: print(f"warning: skipped {data.printable(f.path)}: {f.reason}", file=sys.stderr)
                      if warn else None)
        workers = self.workers if self.workers is not None else (self.config or preset_config(self.preset)).workers
        return data.load_images(paths, size, workers=workers, on_failure=on_failure,
                                progress=self._counter("decode", len(paths)))

    def _tensor(self, rgb: np.ndarray, device: torch.device) -> torch.Tensor:
        return torch.from_numpy(data.to_channels(rgb, self.channels_)).to(device)

    # ----------------------------------------------------------------------------------------- fit
    def _load_for_fit(self, X: Any) -> tuple[ICSConfig, data.LoadedImages, torch.device, dict]:
        """Resolve the config, decode the training images, choose size and channels."""
        t = time.perf_counter()
        cfg = self._resolved_config()
        device = resolve_device(cfg.device)
        shape = data.input_shape(X)
        cfg = resolve_backbone(cfg, shape)
        if cfg.is_local:
            width, height = data.local_input_size(shape, cfg.image_size, cfg.local_min_side, cfg.local_max_side)
            cfg = cfg.with_overrides(image_size=width, image_height=height)
            size: int | tuple[int, int] = (width, height)
        else:
            size = cfg.image_size or int(max(8, min(64, max(shape))))
        loaded = self._read(X, size, warn=True)
        minimum = MIN_LOCAL_IMAGES if cfg.is_local else MIN_IMAGES
        if len(loaded.images) < minimum:
            raise UsageError(f"{X}: only {len(loaded.images)} readable images ({len(loaded.failures)} unreadable); "
                             f"icsscan needs at least {minimum} normal images to learn from")
        channels = cfg.channels or (1 if all(data.is_grey(a) for a in loaded.images) else 3)
        cfg = cfg.with_overrides(image_size=size if isinstance(size, int) else None, channels=channels,
                                 device=str(device))
        self.config_, self.image_size_, self.channels_ = cfg, size, channels
        self.failures_ = loaded.failures
        self.metadata_ = None  # a loaded bundle's config.json (bundle.load); a fitted model's is bundle.metadata
        self.known_defects_ = None  # fit(defects=...) sets it (recipes.fit_with_defects)
        w, h = data.wh(size)
        kind = ("backbone " + cfg.backbone + " (local scores)" if cfg.is_local else
                f"score {cfg.score} ({networks_of(cfg)})")
        self._say(f"icsscan: {len(loaded.images)} images at {w}x{h}x{channels} on {device}, {kind}")
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        return cfg, loaded, device, {"decode_s": time.perf_counter() - t}

    def _split(self, images: torch.Tensor, paths: list[str], cfg: ICSConfig, device: torch.device,
               given: dict[str, str] | None = None, autoencoder: ConvAutoencoder | None = None) -> None:
        """Train (or reuse) the autoencoder, SSIM-score every image, and split typical / atypical."""
        self.autoencoder_ = autoencoder or train_autoencoder(
            images, cfg, device, on_epoch=lambda e, loss: self._tick("split", e + 1, cfg.ae_epochs, mse=loss))
        ssim_values = ssim_scores(self.autoencoder_, images)
        if given is None:
            rank, atypical = split_by_ssim(ssim_values, cfg.rho)
        else:
            missing = [p for p in paths if p not in given]
            if missing:
                raise UsageError(f"--split: {len(missing)} training images are not in the split CSV, e.g. {missing[0]}")
            atypical = np.array([given[p] == "atypical" for p in paths])
            if atypical.sum() < 2 or (~atypical).sum() < 2:
                raise UsageError("--split: need at least 2 typical and 2 atypical images among the training images")
            rank = rank_by_ssim(ssim_values)
        self.split_ = {"paths": paths, "ssim": ssim_values, "rank": rank, "atypical": atypical}

    def fit_split(self, X: Any) -> "ICSDetector":
        """Only the split step (what `icsscan split` runs): autoencoder, SSIM, typical/atypical on all of X."""
        cfg, loaded, device, timings = self._load_for_fit(X)
        t = time.perf_counter()
        self._split_images_ = self._tensor(loaded.images, device)
        self._split(self._split_images_, loaded.paths, cfg, device)
        timings["split_s"] = time.perf_counter() - t
        self.timings_ = timings
        return self

    def save_split(self, directory: str | os.PathLike) -> Path:
        """What `icsscan split` writes (bundle.save_split): split.csv, its preview, autoencoder.pt, config.json."""
        return bundle.save_split(self, directory)

    def fit(self, X: Any, y: Any = None, split: str | os.PathLike | None = None,
            defects: Any = None) -> "ICSDetector":
        """Learn "normal" from X: a folder, a list of image paths, or an array of images (N,H,W[,C]) uint8.

        Unreadable files are skipped with a warning each (listed in `failures_`); fewer than 20 readable
        images is an error. `y` is ignored (one-class: every image is assumed normal). `split` reuses a
        split.csv from `icsscan split` (and its autoencoder.pt, when one lies beside it and fits).
        `defects`: known defective images (a folder, path list or array; local models): they choose among
        candidate recipes and give `threshold auto`, and never train anything (recipes.fit_with_defects;
        `known_defects_`).
        """
        if defects is not None:
            if split is not None:
                raise UsageError("--defects and --split do not go together (--split is for global models)")
            from .recipes import fit_with_defects

            return fit_with_defects(self, X, defects)
        t_start = time.perf_counter()
        cfg, loaded, device, timings = self._load_for_fit(X)
        if cfg.is_local:
            if split is not None:
                raise UsageError("--split applies to global models; a local model splits patches, not images")
            return self._fit_local(cfg, loaded, device, timings, t_start)
        if split is not None and not any(p in COMPONENTS for p in score_parts(cfg.score)):
            raise UsageError(f"--split: score {cfg.score} reads no from-scratch network the split could train; "
                             "use it with --backbone small (the from-scratch ICS recipe) or a score with ics/ssim/rot/maha")
        given, autoencoder = (None, None) if split is None else bundle.read_given_split(Path(split), cfg, device)
        fit_idx, cal_idx = calibration_holdout(len(loaded.images), cfg.calibration_fraction, cfg.seed)
        images = self._tensor(loaded.images[fit_idx], device)
        fit_paths = [loaded.paths[i] for i in fit_idx]
        parts = score_parts(cfg.score)
        self.train_log_: list[dict] = []

        # only what the score reads is trained; untrained stand-ins keep one bundle format
        self.split_ = None
        self.autoencoder_ = ConvAutoencoder(cfg.channels, cfg.image_size, cfg.ae_width, cfg.ae_code_dim).to(device)
        self.classifier_ = ICSClassifier(cfg.channels, cfg.image_size, cfg.backbone, cfg.width, cfg.hidden_dim,
                                         cfg.latent_dim).to(device).eval()
        if any(p in COMPONENTS for p in parts):  # 1. split: the autoencoder (also the "ssim" component)
            t = time.perf_counter()
            self._split(images, fit_paths, cfg, device, given, autoencoder)
            timings["split_s"] = time.perf_counter() - t
        if any(p in CLASSIFIER_COMPONENTS for p in parts):  # 2. train the ICS classifier on that split
            t = time.perf_counter()
            atypical = torch.as_tensor(self.split_["atypical"], device=device)
            self.classifier_ = train_ics(images, atypical, cfg, device, losses=cfg.ics_losses,
                                         on_log=self._training_logger(cfg.iterations))
            timings["train_s"] = time.perf_counter() - t

        # 2b. the pretrained whole-object components: embeddings, kNN bank, ICS head on embeddings
        embedder, self.embed_info_ = None, None
        if any(p in EMBED_COMPONENTS for p in parts):
            from .embed import fit_embedder

            t = time.perf_counter()
            embedder, self.embed_info_ = fit_embedder(images, cfg, self._counter("features", len(images)),
                                                      self._training_logger(cfg.embed_iterations))
            self.embed_info_.pop("train_log")  # kept in train_log_; bundle.embedding_metadata adds the bank's size
            timings["embed_s"] = time.perf_counter() - t

        # 3. score: fuse the components on held-out normals (training images when there are too few)
        t = time.perf_counter()
        reference = self._tensor(loaded.images[cal_idx], device) if len(cal_idx) else images
        if "maha" in parts:
            fit_latent_gaussian(self.classifier_, images)
        synthetic = None
        if len(parts) > 1 and cfg.global_weights == "synthetic":  # label-free weights (synthetic.synthetic_anomalies)
            from .synthetic import synthetic_anomalies

            base = loaded.images[cal_idx] if len(cal_idx) else loaded.images[fit_idx]
            synthetic = self._tensor(synthetic_anomalies(base, loaded.images[fit_idx[:256]], cfg.seed), device)
        self.scorer_, fusion, scores = fuse_global(self.classifier_, self.autoencoder_, embedder, cfg, reference,
                                                   synthetic, reference_is_training=not len(cal_idx))
        self.rot_accuracy_ = fusion.get("rot_accuracy") if fusion else None
        if fusion is not None:
            self.fusion_ = fusion
        if scores is None:
            scores = np.sort(self._score_tensor(reference)) if len(cal_idx) else np.zeros(0)
        self.calibration_scores_ = self.out_of_fold_scores_ = scores  # held out: out of fold (sorted)
        return self._fitted(loaded, fit_idx, cal_idx, PARITY_SAMPLES, timings, t, t_start)

    def _fit_local(self, cfg: ICSConfig, loaded: data.LoadedImages, device: torch.device, timings: dict,
                   t_start: float) -> "ICSDetector":
        """fit() for local models: patch bank + ICS on patches + global kNN (local.py), fused on held-out normals."""
        from .local import FloatBatches, fit_local, resolve_brightness

        # the calibration images are scored out of fold (thresholds.calibration_folds). Several folds (a folder
        # under ~500): every image trains the model, each fold is scored by a model fitted without it. One fold: the
        # model *is* that fold's model, fitted on the other images (a held-out split): no fold-vs-final mismatch, one
        # coreset less (elpv_poly, seed 0: 0.8233 this way, 0.7713 with the fold in the bank; 2026-12-07)
        n = len(loaded.images)
        folds = calibration_folds(n, cfg.calibration_fraction, cfg.seed)
        held_out = len(folds) == 1
        fit_idx = np.setdiff1d(np.arange(n), folds[0]) if held_out else np.arange(n)
        cal_idx = np.concatenate(folds) if folds else np.zeros(0, dtype=np.int64)
        images = FloatBatches(loaded.images, cfg.channels, device, rows=fit_idx)
        self.train_log_ = []
        cfg, brightness = resolve_brightness(cfg, images)  # "auto": decided on the training images, then saved
        # the patch ICS head is fitted once, on all images: where the calibration runs in several folds (a folder
        # under ~500 images) its scores of the calibration images would be in-sample and the threshold too low
        # (magnetic_tile, 16 images: 48 % of new good parts flagged at 0.5 with the head, 9 % without). So the
        # gate leaves it out there; ics_gate 1 (always kept) is the user's call
        head_allowed = len(folds) <= 1 or cfg.ics_gate >= 1
        self.config_ = cfg
        scorer, info, heads = fit_local(images, cfg, self._counter("features", len(fit_idx)),
                                        None if held_out else folds)
        info.update(brightness)
        info["patch_ics_head_left_out"] = heads is not None and not head_allowed
        if info["patch_ics_head_left_out"]:
            self._say(f"icsscan: patch ICS head left out: with {len(loaded.images)} images the calibration runs in "
                      f"{len(folds)} folds, and the head cannot be fitted per fold")
        if "exposure_spread" in brightness:
            said = "normalised" if cfg.normalise_brightness else "kept"
            self._say(f"icsscan: brightness {said} (the training images' exposure spread "
                      f"{brightness['exposure_spread']:.2f}, normalised above {brightness['exposure_spread_limit']})")
        t = time.perf_counter()
        self.fusion_, self.out_of_fold_scores_ = fuse_local(
            scorer, loaded.images, fit_idx, folds, cfg, device, heads, info,
            self._training_logger(cfg.patch_iterations * cfg.patch_heads),  # trains the heads the gate keeps
            head_allowed=head_allowed)
        del images, heads
        self.calibration_scores_ = np.sort(self.out_of_fold_scores_)
        self.scorer_ = scorer.eval()
        timings.update(info.pop("timings"))
        info["patch_heads_trained"] = "train_s" in timings
        info["calibration_folds"] = len(folds)  # the calibration images' scores are out of fold
        self.local_info_ = info
        # calibrate_s counts from here, as before: without the heads' own training
        t += timings.get("synthetic_features_s", 0.0) + timings.get("train_s", 0.0)
        self.classifier_ = self.autoencoder_ = None
        self.split_ = None
        self.rot_accuracy_ = None
        return self._fitted(loaded, fit_idx, cal_idx, LOCAL_PARITY_SAMPLES, timings, t, t_start)

    def _fitted(self, loaded: data.LoadedImages, fit_idx: np.ndarray, cal_idx: np.ndarray, parity_samples: int,
                timings: dict, t_calibrate: float, t_start: float) -> "ICSDetector":
        """What every fit records last: threshold, which images trained and calibrated, parity inputs, times."""
        self.threshold_ = DEFAULT_THRESHOLD
        self.n_train_, self.n_calibration_ = len(fit_idx), len(cal_idx)
        self.train_paths_ = [loaded.paths[i] for i in fit_idx]
        self.calibration_paths_ = [loaded.paths[i] for i in cal_idx]
        self.parity_inputs_ = loaded.images[cal_idx[:parity_samples] if len(cal_idx) else fit_idx[:parity_samples]]
        timings["calibrate_s"] = time.perf_counter() - t_calibrate
        timings["total_s"] = time.perf_counter() - t_start
        self.timings_ = timings
        self.created_ = now_iso()
        return self

    # ----------------------------------------------------------------------------------------- scoring
    @torch.no_grad()
    def _score_tensor(self, x: torch.Tensor, batch_size: int | None = None) -> np.ndarray:
        self.scorer_.eval()
        batch_size = batch_size or (8 if self.config_.is_local else SCORE_BATCH)
        parts = []
        for i in range(0, len(x), batch_size):
            out = self.scorer_(x[i:i + batch_size])
            parts.append((out[0] if isinstance(out, tuple) else out).float().cpu())
        return torch.cat(parts).numpy().astype(np.float64) if parts else np.zeros(0)

    @torch.no_grad()
    def anomaly_maps(self, X: Any) -> np.ndarray:
        """Local models only: the anomaly map of each image (N, H/8, W/8), same units as the fused score's logit.

        Positive = more abnormal than the typical normal location; the image score rises with the map's peak.
        """
        self._check_fitted()
        if not self.config_.is_local:
            raise UsageError("anomaly maps need a local model (backbone efficientnet-lite0)")
        device = next(self.scorer_.buffers()).device
        size = (self.config_.image_size, self.config_.image_height)
        x = (self._tensor(array_to_rgb(X, size), device) if isinstance(X, np.ndarray)
             else self._tensor(self._read(X, size, warn=True).images, device))
        maps = [self.scorer_(x[i:i + 8])[1].float().cpu() for i in range(0, len(x), 8)]
        return torch.cat(maps).numpy() if maps else np.zeros((0,))

    def score_samples(self, X: Any) -> np.ndarray:
        """Anomaly scores in [0, 1] (higher = more abnormal) for a folder, path list or image array.

        For folders and path lists, unreadable files get NaN (their reasons are in `last_failures_`), so the
        output always has one value per input file.
        """
        self._check_fitted()
        device = next(self.scorer_.buffers()).device
        size = (self.config_.image_size, self.config_.image_height) if self.config_.is_local else self.image_size_
        if isinstance(X, np.ndarray):
            return self._score_tensor(self._tensor(array_to_rgb(X, size), device))
        paths = [str(p) for p in list_inputs(X)]
        loaded = self._read(paths, size, warn=False)
        self.last_failures_ = loaded.failures
        scores = np.full(len(paths), np.nan)
        if len(loaded.images):
            index = {p: i for i, p in enumerate(paths)}
            got = self._score_tensor(self._tensor(loaded.images, device))
            scores[[index[p] for p in loaded.paths]] = got
        return scores

    decision_function = score_samples  # PyOD's name for the same thing

    def predict(self, X: Any, threshold: float | None = None) -> np.ndarray:
        """1 = anomaly (score ≥ threshold), 0 = normal; threshold defaults to `threshold_` (0.5)."""
        scores = self.score_samples(X)
        thr = self.threshold_ if threshold is None else threshold
        return (scores >= thr).astype(int)

    def normal_percentile(self, scores: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return np.array(percentile_of(np.asarray(scores, dtype=float).tolist(), self.calibration_scores_), dtype=float)

    def threshold_for_false_alarm_rate(self, rate: float) -> float:
        """The score above which about `rate` of normal images fall (from the calibration split)."""
        self._check_fitted()
        return threshold_for_rate(self.calibration_scores_, rate)

    # ----------------------------------------------------------------------------------------- persistence
    def bundle_metadata(self) -> dict[str, Any]:
        """config.json of this fitted model (bundle.metadata)."""
        return bundle.metadata(self)

    def fusion_dict(self) -> dict[str, float]:
        """The fusion's fitted numbers (bundle.fusion_dict)."""
        return bundle.fusion_dict(self)

    def save(self, directory: str | os.PathLike, export_onnx: bool = True, extra_files: dict | None = None) -> Path:
        """Write the model bundle atomically (bundle.save): a crash mid-save leaves the previous bundle, or none."""
        self._check_fitted()
        return bundle.save(self, directory, export_onnx=export_onnx, extra_files=extra_files)

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str = "auto") -> "ICSDetector":
        """Load a bundle written by `save` (bundle.load); older bundles are migrated as they are read."""
        return bundle.load(cls, directory, device)
