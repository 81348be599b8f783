"""Datasets and methods for the Table 1 reproduction (benchmarks/table1.py drives them).

Every method here learns from the training images of one class only and returns anomaly scores for the whole
test set (higher = more abnormal). Test labels are used for nothing but the AUC, after training is over.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASETS = ("mnist", "fashion_mnist", "cifar10")
DATASET_LABELS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}
CIFAR_JPEG = "CIFAR-10 (JPEG copy)"
HERE = Path(__file__).resolve().parent


def default_data_root() -> Path:
    return Path(os.environ.get("ICSSCAN_DATA", "/work/shared/data"))


def cache_dir() -> Path:
    """Decoded arrays live here; the folder ignores itself in git (its own .gitignore says `*`)."""
    d = Path(os.environ.get("ICSSCAN_BENCH_CACHE", HERE / ".cache"))
    d.mkdir(parents=True, exist_ok=True)
    ignore = d / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n", encoding="utf-8")
    return d


# ----------------------------------------------------------------------------------------------- datasets

@dataclass
class Dataset:
    name: str
    x_train: np.ndarray   # uint8 (N,H,W) or (N,H,W,3)
    y_train: np.ndarray   # int64
    x_test: np.ndarray
    y_test: np.ndarray
    source: str           # what was read, e.g. "torchvision MNIST (original IDX)" or "CIFAR-10 (JPEG copy)"

    def train_of(self, cls: int) -> np.ndarray:
        return self.x_train[self.y_train == cls]


def _from_torchvision(ds) -> tuple[np.ndarray, np.ndarray]:
    x = ds.data.numpy() if hasattr(ds.data, "numpy") else np.asarray(ds.data)
    y = ds.targets.numpy() if hasattr(ds.targets, "numpy") else np.asarray(ds.targets)
    return np.ascontiguousarray(x, dtype=np.uint8), y.astype(np.int64)


def _image_folder_arrays(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(folder))
    expected = CLASS_NAMES["cifar10"]
    if ds.classes != expected:
        raise RuntimeError(f"{folder}: class folders {ds.classes} differ from CIFAR-10's {expected}")
    x = np.empty((len(ds.samples), 32, 32, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(ds.samples):
        with Image.open(path) as im:
            x[i] = np.asarray(im.convert("RGB"))
    return x, np.asarray(ds.targets, dtype=np.int64)


def _cached(key: str, build):
    """(x, y) from the .npz cache when present, else built and saved."""
    path = cache_dir() / f"{key}.npz"
    if path.exists():
        with np.load(path) as f:
            return f["x"], f["y"]
    x, y = build()
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, x=x, y=y)
    os.replace(tmp, path)
    return x, y


def load_dataset(name: str, root: Path | None = None) -> Dataset:
    """Train and test arrays of one dataset, read with torchvision (download=False)."""
    from torchvision import datasets as tvd

    root = Path(root or default_data_root())
    if name in ("mnist", "fashion_mnist"):
        cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
        xtr, ytr = _from_torchvision(cls(str(root), train=True, download=False))
        xte, yte = _from_torchvision(cls(str(root), train=False, download=False))
        source = f"torchvision {cls.__name__} (original IDX)"
    elif name == "cifar10":
        try:  # the original python batches, when a user has them (torchvision checks their MD5s)
            xtr, ytr = _from_torchvision(tvd.CIFAR10(str(root), train=True, download=False))
            xte, yte = _from_torchvision(tvd.CIFAR10(str(root), train=False, download=False))
            source = "CIFAR-10 (original)"
        except (RuntimeError, OSError):
            jpeg = root / "CIFAR10-jpeg"
            if not jpeg.is_dir():
                raise FileNotFoundError(f"CIFAR-10: neither the original batches nor {jpeg} under {root}")
            tag = hashlib.sha1(str(jpeg.resolve()).encode()).hexdigest()[:8]
            xtr, ytr = _cached(f"cifar10-jpeg-train-{tag}", lambda: _image_folder_arrays(jpeg / "train"))
            xte, yte = _cached(f"cifar10-jpeg-test-{tag}", lambda: _image_folder_arrays(jpeg / "test"))
            source = CIFAR_JPEG
    else:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
    return Dataset(name, xtr, ytr, xte, yte, source)


def dataset_label(name: str, source: str) -> str:
    if name == "cifar10":
        return CIFAR_JPEG if source == CIFAR_JPEG else "CIFAR-10"
    return DATASET_LABELS[name]


# ----------------------------------------------------------------------------------------------- methods

METHODS = ("icsscan_small", "ICS", "NNwICS", "NaiveNN", "DSVDD", "SSIM", "OCSVM", "IF", "ImageNet_OCSVM",
           "icsscan_small_rotonly")
# icsscan_small_rotonly: the same network, split, score and calibration as icsscan_small, trained *without* the
# ICS losses (ics_losses "none": the rotation task alone). Does ICS training at least shape the features that
# maha reads? Its by-products (same prefix) are compared with icsscan_small's: maha alone, fused without ics.
# By-products of every icsscan cell (no extra training): the fused score's two components on their own.
#   icsscan_ics  - the default-preset ICS classifier's logit alone (the paper's score, our network);
#   SSIM         - 1 − SSIM of the same detector's split autoencoder (trained on its 90 % fit part), recorded
#                  under the SSIM method with its own config hash and a note; a standalone SSIM run supersedes it.
BYPRODUCTS = ("icsscan_ics",)
ALL_METHODS = ("icsscan", "icsscan_small", "icsscan_ics") + METHODS[1:-1]   # report order (main tables)
# icsscan's default for whole-object images since the pretrained embedding came in (embed_table1.py, run on
# cached embeddings): eknn+eics with label-free weights. The earlier default (from-scratch networks, score
# ics+ssim+rot*0.7+maha*2, what `--backbone small` trains) is reported as icsscan_small; its by-products below
# (icsscan_ics, icsscan_rot, ...) belong to it.
PRETRAINED_ABLATION = ("icsscan", "icsscan_default_equal", "icsscan_no_eics", "icsscan_no_ssim", "icsscan_no_ssim_equal", "icsscan_ssim",
                       "icsscan_eknn", "icsscan_eics", "icsscan_eics_bce", "icsscan_eics_paper", "ImageNet_OCSVM")
# Diagnostic rows written by each icsscan cell (same models, no extra training): one component alone, or the
# fused score without one component. Reported in the ablation section, compared with the paper's ICS.
ABLATION = ("icsscan_small", "icsscan_equal", "icsscan_ics", "SSIM", "icsscan_rot", "icsscan_maha",
            "icsscan_no_ics", "icsscan_no_ssim", "icsscan_no_rot", "icsscan_no_maha")
ROTONLY_ABLATION = ("icsscan_small_rotonly", "icsscan_rotonly_rot", "icsscan_rotonly_maha", "icsscan_rotonly_no_ics")
DETERMINISTIC = {"OCSVM", "ImageNet_OCSVM"}   # one seed is enough (the paper's std is 0.0 for these)
VGG19_FILE = "vgg19-dcbb9e9d.pth"            # torchvision's ImageNet VGG19 weights (never downloaded here)


def vgg19_weights_path() -> Path | None:
    import torch

    path = Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE
    return path if path.is_file() else None


def digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def parse_dsvdd_iterations(value: str | int | None):
    """DSVDD=N → N AE epochs and N Deep SVDD epochs; DSVDD=A+B → A AE epochs, B Deep SVDD epochs."""
    from dsvdd import DSVDDConfig

    if value is None:
        return DSVDDConfig()
    text = str(value)
    a, b = (text.split("+", 1) if "+" in text else (text, text))
    return DSVDDConfig(ae_epochs=int(a), epochs=int(b))


def planned_config(method: str, iterations: str | None = None, rho: float | None = None,
                   options: dict | None = None) -> dict:
    """What a cell will run with (before any data-dependent choices); its digest keys the resumable raw file.

    Changing a preset in icsscan/config.py changes the digest, so stale cells are rerun, not reused.
    """
    from icsscan.config import GLOBAL_DEFAULT_SCORE, preset_config

    options = options or {}
    it = int(iterations) if iterations not in (None, "") and method != "DSVDD" else None
    ae = ae_epochs_for(method, options)
    if method in ("icsscan_small", "icsscan_small_rotonly"):  # the from-scratch recipe (the default before the
        # pretrained embedding); rotonly: the same, trained without the ICS losses
        cfg = preset_config("default", backbone="small", score=GLOBAL_DEFAULT_SCORE, iterations=it, rho=rho,
                            ae_epochs=ae, ics_losses=ROTONLY_LOSSES.get(method)).to_dict()
    elif method in ("ICS", "NNwICS", "NaiveNN"):
        cfg = preset_config("paper", iterations=it, rho=rho, ae_epochs=ae).to_dict()
        cfg["losses"] = {"ICS": "ics", "NNwICS": "bce", "NaiveNN": "naive"}[method]
        cfg["calibration_fraction"] = 0.0   # every training image is used; no held-out calibration here
        cfg["score"] = "ics logit (monotone in the sigmoid output; avoids float32 ties at 1.0)"
    elif method == "SSIM":
        cfg = preset_config("default", rho=rho, ae_epochs=ae).to_dict()
        cfg = {k: cfg[k] for k in ("preset", "ae_width", "ae_code_dim", "ae_epochs", "ae_lr", "ae_batch_size")}
        cfg["score"] = "1 - SSIM(x, AE(x))"
    elif method == "DSVDD":
        cfg = parse_dsvdd_iterations(iterations).to_dict()
    elif method == "OCSVM":
        cfg = {"nu": 0.15, "kernel": "rbf", "gamma": "1/n_features", "pixels": "[0,1]",
               "max_train": options.get("ocsvm_max_train")}
    elif method == "IF":
        cfg = {"n_estimators": 100, "max_samples": "auto", "pixels": "[0,1]"}
    elif method == "ImageNet_OCSVM":
        cfg = {"features": "VGG19 ImageNet", "weights": str(vgg19_weights_path())}
    else:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    for k in ("seed", "device", "workers", "log_every"):
        cfg.pop(k, None)
    if cfg.get("ics_losses") == "ics":  # the default: left out, so the digests of cells run before it existed hold
        del cfg["ics_losses"]
    return cfg


ROTONLY_LOSSES = {"icsscan_small_rotonly": "none"}


def ae_epochs_for(method: str, options: dict) -> int | None:
    """--ae-epochs override for the split autoencoder of icsscan / ICS / NNwICS / SSIM (None = preset's)."""
    value = (options.get("ae_epochs") or {}).get(method)
    return int(value) if value not in (None, "") else None


def iterations_of(method: str, cfg: dict) -> str:
    """The `iterations` column: classifier iterations (ICS family), AE epochs (SSIM), epochs (DSVDD)."""
    if method == "NaiveNN":
        return str(cfg["iterations"])
    if method in ("icsscan_small", "icsscan_small_rotonly", "ICS", "NNwICS"):
        return f"{cfg['iterations']} (AE {cfg['ae_epochs']} ep)"
    if method == "SSIM":
        return f"{cfg['ae_epochs']} AE epochs"
    if method == "DSVDD":
        return f"{cfg['ae_epochs']}+{cfg['epochs']} epochs"
    return ""


def _tensor(images: np.ndarray, device):
    """uint8 → (N,C,S,S) float in [0,1] on device, channels chosen like ICSDetector (1 if grey)."""
    import torch
    from icsscan import data
    from icsscan.data import array_to_rgb

    rgb = array_to_rgb(images, images.shape[1])
    channels = 1 if images.ndim == 3 else 3
    return torch.from_numpy(data.to_channels(rgb, channels)).to(device), channels


def _split_cached(key: str, images, cfg, device):
    """The ICS split (AE + SSIM + ρ) shared by ICS and NNwICS for one (dataset, class, seed, config)."""
    import torch
    from icsscan.split import split_by_ssim, ssim_scores, train_autoencoder

    path = cache_dir() / "splits" / f"{key}.npy"
    if path.exists():
        return torch.from_numpy(np.load(path)), "split reused from cache"
    ae = train_autoencoder(images, cfg, device)
    _, atypical = split_by_ssim(ssim_scores(ae, images), cfg.rho)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, atypical)
    os.replace(tmp, path)
    return torch.from_numpy(atypical), "split computed"


def run_cell(method: str, ds: Dataset, cls: int, seed: int, iterations: str | None, device: str,
             rho: float | None = None, options: dict | None = None) -> dict:
    """Train `method` on class `cls` of `ds`, score the whole test set; returns scores and what ran."""
    import torch

    options = options or {}
    train, test = ds.train_of(cls), ds.x_test
    plan = planned_config(method, iterations, rho, options)
    note = ""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    extra: list[dict] = []
    components = None
    if method in ("icsscan_small", "icsscan_small_rotonly"):
        from icsscan import ICSDetector
        from icsscan.config import GLOBAL_DEFAULT_SCORE, preset_config
        from icsscan.data import array_to_rgb

        ae = ae_epochs_for(method, options)
        det = ICSDetector(preset="default", seed=seed, device=str(dev), rho=rho, backbone="small",
                          score=GLOBAL_DEFAULT_SCORE, iterations=int(iterations) if iterations else None,
                          config=preset_config("default", ae_epochs=ae, ics_losses=ROTONLY_LOSSES.get(method)))
        det.fit(train)
        config = {k: v for k, v in det.config_.to_dict().items() if k not in ("workers", "log_every")}
        xt = det._tensor(array_to_rgb(test, det.image_size_), next(det.scorer_.parameters()).device)
        # One pass gives the components (for the ablation rows) and, through the scorer's own fusion, the score:
        # exactly AnomalyScorer.forward, checked against score_samples on a slice.
        scorer = det.scorer_
        with torch.no_grad():
            chunks = [scorer.components(xt[i:i + 500]) for i in range(0, len(xt), 500)]
            fused = [torch.sigmoid(scorer.fused_z(c) - scorer.offset) if len(scorer.parts) > 1 else scorer(xt[i:i + 500])
                     for i, c in zip(range(0, len(xt), 500), chunks)]
        scores = torch.cat([f.float().cpu() for f in fused]).double().numpy()
        check = det.score_samples(test[:64])
        assert np.allclose(check, scores[:64], atol=1e-6), "fused score differs from score_samples"
        part = {p: torch.cat([c[p].float().cpu() for c in chunks]).double().numpy() for p in det.scorer_.parts}
        extra = by_products(det, part, config, rotonly=method == "icsscan_small_rotonly")
        components = {"parts": part, "fusion": det.fusion_dict()}
    elif method in ("ICS", "NNwICS", "NaiveNN"):
        from icsscan.config import preset_config
        from icsscan.train import train_ics

        x, channels = _tensor(train, dev)
        cfg = preset_config("paper", seed=seed, rho=rho, iterations=int(iterations) if iterations else None,
                            ae_epochs=ae_epochs_for(method, options), image_size=x.shape[-1], channels=channels, device=str(dev))
        torch.manual_seed(seed)
        if method == "NaiveNN":
            atypical = torch.zeros(len(x), dtype=torch.bool)
        else:
            split_key = f"{ds.name}-{cls}-s{seed}-" + digest({k: getattr(cfg, k) for k in (
                "rho", "ae_width", "ae_code_dim", "ae_epochs", "ae_lr", "ae_batch_size", "image_size", "channels")})
            atypical, note = _split_cached(split_key, x, cfg, dev)
        clf = train_ics(x, atypical.to(dev), cfg, dev, losses=plan["losses"])
        xt, _ = _tensor(test, dev)
        with torch.no_grad():
            scores = torch.cat([clf(xt[i:i + 500]).float().cpu() for i in range(0, len(xt), 500)]).double().numpy()
        config = {**cfg.to_dict(), "losses": plan["losses"], "score": "logit"}
    elif method == "SSIM":
        from icsscan.config import preset_config
        from icsscan.split import ssim_scores, train_autoencoder

        x, channels = _tensor(train, dev)
        cfg = preset_config("default", seed=seed, rho=rho, image_size=x.shape[-1], channels=channels,
                            ae_epochs=ae_epochs_for(method, options), device=str(dev))
        ae = train_autoencoder(x, cfg, dev)
        xt, _ = _tensor(test, dev)
        scores = 1.0 - ssim_scores(ae, xt)
        config = plan
    elif method == "DSVDD":
        from dsvdd import DeepSVDD

        model = DeepSVDD(parse_dsvdd_iterations(iterations), seed=seed, device=str(dev)).fit(train)
        scores = model.score_samples(test)
        config = plan
        if not np.isfinite(scores).all():
            note = "non-finite scores"
    elif method == "OCSVM":
        from sklearn.svm import OneClassSVM

        xtr = train.reshape(len(train), -1).astype(np.float32) / 255.0
        cap = options.get("ocsvm_max_train")
        if cap and len(xtr) > cap:
            idx = np.sort(np.random.default_rng(seed).choice(len(xtr), cap, replace=False))
            xtr = xtr[idx]
            note = f"trained on a random subsample of {cap} of {len(train)} training images"
        svm = OneClassSVM(kernel="rbf", nu=0.15, gamma=1.0 / xtr.shape[1], cache_size=2000).fit(xtr)
        xte = test.reshape(len(test), -1).astype(np.float32) / 255.0
        scores = -svm.decision_function(xte)
        config = plan
        dev = torch.device("cpu")
    elif method == "IF":
        from sklearn.ensemble import IsolationForest

        xtr = train.reshape(len(train), -1).astype(np.float32) / 255.0
        forest = IsolationForest(n_estimators=100, random_state=seed, n_jobs=1).fit(xtr)
        scores = -forest.score_samples(test.reshape(len(test), -1).astype(np.float32) / 255.0)
        config = plan
        dev = torch.device("cpu")
    elif method == "ImageNet_OCSVM":
        scores, note = imagenet_ocsvm(train, test, dev)
        config = plan
    else:
        raise ValueError(f"unknown method {method!r}")
    return {"scores": np.asarray(scores, dtype=np.float64), "config": config, "device": str(dev), "note": note,
            "iterations": iterations_of(method, config if method != "DSVDD" else plan),
            "extra": [] if rho is not None else extra, "components": components}


def save_components(path: Path, components: dict, y_test: np.ndarray) -> None:
    """Per-image test scores of each icsscan component (and the fusion constants), so that a later change of
    the fusion rule can be measured on the same models without retraining. Cache only, never committed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, y_test=y_test, fusion=json.dumps(components["fusion"]),
                        **{f"part_{k}": v.astype(np.float32) for k, v in components["parts"].items()})
    os.replace(tmp, path)


def by_products(det, part: dict[str, np.ndarray], config: dict, rotonly: bool = False) -> list[dict]:
    """Ablation rows from one icsscan cell: each score component alone, and the fused score without each one.
    rotonly (a network trained without the ICS losses): only rot and maha alone and the fusion without ics."""
    its = iterations_of("icsscan_small", config)
    fusion = det.fusion_dict()
    from icsscan.fusion import standardised

    z = {p: standardised(v, fusion[f"{p}_center"], fusion[f"{p}_scale"]) for p, v in part.items()}  # as the scorer
    names = {"ics": "icsscan_ics", "rot": "icsscan_rot", "maha": "icsscan_maha"}
    rows = []
    if rotonly:
        keep = [p for p in part if p != "ics"]
        w = {p: fusion[f"{p}_weight"] for p in keep}
        for p in ("rot", "maha"):
            rows.append({"method": f"icsscan_rotonly_{p}", "scores": part[p], "iterations": its,
                         "note": f"by-product of the icsscan_small_rotonly cell: its '{p}' component alone",
                         "config": {**config, "score": p}})
        rows.append({"method": "icsscan_rotonly_no_ics", "scores": sum(w[p] * z[p] for p in keep) / sum(w.values()),
                     "note": "by-product of the icsscan_small_rotonly cell: fused score without 'ics'",
                     "config": {**config, "score": "+".join(keep)}, "iterations": its})
        return rows
    for p, v in part.items():
        if p == "ssim":
            rows.append({"method": "SSIM", "scores": v,
                         "note": "by-product of the icsscan cell: its split AE (fit part, 90 % of the class's training images)",
                         "config": {"source": "icsscan detector split autoencoder", "ae_epochs": config["ae_epochs"],
                                    "ae_width": config["ae_width"], "ae_code_dim": config["ae_code_dim"],
                                    "calibration_fraction": config["calibration_fraction"], "score": "1 - SSIM(x, AE(x))"},
                         "iterations": f"{config['ae_epochs']} AE epochs"})
        else:
            rows.append({"method": names[p], "scores": v, "note": f"by-product of the icsscan cell: its '{p}' component alone",
                         "config": {**config, "score": p}, "iterations": its})
    if len({round(fusion[f"{p}_weight"], 9) for p in part}) > 1:  # the same components, equally weighted
        rows.append({"method": "icsscan_equal", "scores": np.mean([z[p] for p in part], axis=0),
                     "note": "by-product of the icsscan cell: the components averaged with equal weights",
                     "config": {**config, "score": "+".join(part)}, "iterations": its})
    if len(part) > 2:  # leave-one-out ablation of the fused score (same models, same calibration)
        for drop in part:
            keep = [p for p in part if p != drop]
            w = {p: fusion[f"{p}_weight"] for p in keep}   # the default's weights, renormalised over the rest
            rows.append({"method": "icsscan_no_" + drop, "scores": sum(w[p] * z[p] for p in keep) / sum(w.values()),
                         "note": f"by-product of the icsscan cell: fused score without '{drop}'",
                         "config": {**config, "score": "+".join(keep)}, "iterations": its})
    return rows


def imagenet_ocsvm(train: np.ndarray, test: np.ndarray, dev) -> tuple[np.ndarray, str]:
    """VGG19 (ImageNet) fc7 features → OCSVM (ν 0.15, γ 1/#features). Only with locally cached weights."""
    import torch
    from sklearn.svm import OneClassSVM
    from torch.nn import functional as F
    from torchvision.models import vgg19

    path = vgg19_weights_path()
    if path is None:
        raise FileNotFoundError("VGG19 ImageNet weights are not in the torch hub cache (never downloaded here)")
    net = vgg19()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net.classifier = net.classifier[:-1]     # up to fc7 (4096-d, after ReLU + dropout, eval mode)
    net = net.to(dev).eval()
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)

    @torch.no_grad()
    def features(images: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images), 64):
            x, _ = _tensor(images[i:i + 64], dev)
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            x = F.interpolate(x, size=224, mode="bilinear", align_corners=False)
            out.append(net((x - mean) / std).float().cpu().numpy())
        return np.concatenate(out)

    ftr = features(train)
    svm = OneClassSVM(kernel="rbf", nu=0.15, gamma=1.0 / ftr.shape[1], cache_size=2000).fit(ftr)
    return -svm.decision_function(features(test)), f"VGG19 weights from {path}"


def auc_percent(y_test: np.ndarray, cls: int, scores: np.ndarray) -> float:
    """AUC in %, anomalies (every class but `cls`) as the positive class, through the library's own metrics
    (what `icsscan evaluate` reports)."""
    from icsscan.metrics import image_metrics

    return 100.0 * image_metrics((y_test != cls).astype(int), scores)["auroc"]
