"""`icsscan evaluate`: image metrics equal to scan's scores, gates and exit codes, pixel metrics from masks, the
report; and `scan --raw-maps`.

Most checks use a real icsscan ONNX model made here in a second (score = the brightest 8 x 8 cell's mean, map =
the mean brightness of each 8 x 8 cell), scanned through the real CLI, decoding and onnxruntime: training a local
model takes minutes on a busy CPU, and a map that is exactly known makes the pixel metrics checkable. The image
AUROC check against scan's scores.csv also runs on the suite's trained model (conftest's tiny_bundle).
"""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from conftest import SAMPLE, run_cli_here, save_onnx

W, H = 64, 48  # the model's input (width, height); its map is 8 x 6
STRIDE = 8


def map_model(path: Path, calibration: np.ndarray | None = None) -> Path:
    """A real icsscan local ONNX model: map = mean brightness per 8 x 8 cell, score = the map's maximum."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("AveragePool", ["pixels"], ["pooled"], kernel_shape=[STRIDE, STRIDE],
                              strides=[STRIDE, STRIDE]),
             helper.make_node("Squeeze", ["pooled", "axis1"], ["map"]),
             helper.make_node("ReduceMax", ["map"], ["score"], axes=[1, 2], keepdims=0)]
    graph = helper.make_graph(
        nodes, "cellmax", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 1, H, W])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("map", TensorProto.FLOAT, ["batch", H // STRIDE, W // STRIDE])],
        initializer=[helper.make_tensor("axis1", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    calibration = np.linspace(0.2, 0.4, 50) if calibration is None else calibration
    meta = {"icsscan_version": "test", "image_size": str(W), "image_height": str(H), "channels": "1",
            "score": "cellmax", "default_threshold": "0.5", "outputs": "score,map",
            "calibration": json.dumps({"scores": sorted(map(float, calibration))})}
    return save_onnx(model, meta, path)


def plate(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    return np.clip(rng.normal(60, 8, (h, w)), 0, 255)


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory) -> dict:
    """An MVTec AD-style set: test/good (12), test/spot (8: a bright square), test/scratch (6: a bright bar),
    ground_truth/<class>/<stem>_mask.png; images 96 x 72 and 80 x 60 (not the model's size), and the defects'
    brightness varies so that some are missed."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("mvtec")
    test, truth = root / "test", root / "ground_truth"
    for i in range(12):
        size = (96, 72) if i % 2 else (80, 60)
        (test / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(plate(rng, size).astype(np.uint8)).save(test / "good" / f"{i:03d}.png")
    for cls, n in (("spot", 8), ("scratch", 6)):
        (test / cls).mkdir(parents=True)
        (truth / cls).mkdir(parents=True)
        for i in range(n):
            size = (96, 72) if i % 2 else (80, 60)
            img = plate(rng, size)
            mask = np.zeros(img.shape, bool)
            x, y = int(rng.integers(5, size[0] - 30)), int(rng.integers(5, size[1] - 25))
            if cls == "spot":
                mask[y:y + 16, x:x + 16] = True
            else:
                mask[y:y + 4, x:x + 24] = True
            img[mask] = 60 + 20 * i  # from barely visible to bright: the weak ones are missed
            Image.fromarray(img.astype(np.uint8)).save(test / cls / f"{i:03d}.png")
            Image.fromarray(mask).save(truth / cls / f"{i:03d}_mask.png")  # mode "1"
    model = map_model(root / "model.onnx")
    return {"root": root, "test": test, "truth": truth, "model": model}


def read_metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------- CLI

def test_evaluate_image_auroc_equals_scan_scores(tiny_onnx, tmp_path):
    """On the suite's trained model: evaluate's image AUROC is the AUROC of scan's scores.csv (±1e-6)."""
    data = tmp_path / "data"
    with open(SAMPLE / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            target = data / ("good" if row["label"] == "0" else "other") / Path(row["path"]).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(SAMPLE / row["path"], target)
    proc = run_cli_here("evaluate", data, "--model", tiny_onnx, "--out", tmp_path / "ev")
    assert proc.returncode == 0, proc.stderr
    scan = run_cli_here("scan", data, "--model", tiny_onnx, "--out", tmp_path / "scan")
    assert scan.returncode == 0, scan.stderr
    with open(tmp_path / "scan" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    truth = [int(Path(r["path"]).parent.name != "good") for r in rows]
    expected = roc_auc_score(truth, [float(r["score"]) for r in rows])
    metrics = read_metrics(tmp_path / "ev")
    assert abs(metrics["image"]["auroc"] - expected) <= 1e-6
    assert metrics["counts"] == {"images": 120, "scored": 120, "unreadable": 0, "good": 60, "defective": 60,
                                 "classes": {"good": 60, "other": 60}}
    assert metrics["pixel"] is None and "no anomaly map" in metrics["pixel_note"]
    assert f"{metrics['image']['auroc']:.4f}" in proc.stdout


def test_evaluate_pixel_metrics_report_and_corrupt_file(mvtec, tmp_path):
    test = tmp_path / "test"
    shutil.copytree(mvtec["test"], test)
    shutil.copytree(mvtec["truth"], tmp_path / "ground_truth")
    (test / "spot" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    out = tmp_path / "ev"
    proc = run_cli_here("evaluate", test, "--model", mvtec["model"], "--out", out, "--false-alarm-rate", "0.1",
                        "--min-auroc", "0.5", "--min-pixel-auroc", "0.5", "--min-aupro", "0.1")
    assert proc.returncode == 0, proc.stderr
    metrics = read_metrics(out)
    assert metrics["passed"] and len(metrics["gates"]) == 3
    assert metrics["counts"]["unreadable"] == 1
    assert metrics["unreadable"][0]["path"].endswith("broken.png")
    assert "not a recognised image format" in metrics["unreadable"][0]["reason"]
    assert set(metrics["image"]["per_class"]) == {"spot", "scratch"}
    pixel = metrics["pixel"]
    assert 0.5 < pixel["pixel_auroc"] <= 1 and 0 < pixel["aupro"] <= 1
    assert pixel["defect_regions"] == 14 and pixel["images"] == 26  # every good image, every defect with a mask
    assert pixel["precision"]["auroc_tie_bound"] < 1e-3
    assert pixel["normal_pixels"] + pixel["defect_pixels"] == 13 * (96 * 72 + 80 * 60)  # original resolution
    t = metrics["at_threshold"]
    assert t["model_default"]["tp"] + t["model_default"]["fn"] == 14
    assert t["false_alarm_rate"]["target_false_alarm_rate"] == 0.1
    page = (out / "report.html").read_text(encoding="utf-8")
    assert 'src="roc.png"' in page and 'src="histograms.png"' in page and 'src="pro.png"' in page
    assert "broken.png" in page and "<script" not in page
    for name in ("roc.png", "histograms.png", "pro.png", "scores.csv"):
        assert (out / name).stat().st_size > 0
    pictures = [e["picture"] for e in metrics["worst_misses"] + metrics["false_alarms"]]
    assert len(pictures) == 16 and all(pictures)
    for p in pictures:
        assert f'src="{p}"' in page
        with Image.open(out / p) as im:
            assert im.width > 2 * im.height  # image | overlay | mask
    assert "pixel AUROC" in proc.stdout


def test_evaluate_gate_missed_exits_1(mvtec, tmp_path):
    proc = run_cli_here("evaluate", mvtec["test"], "--model", mvtec["model"], "--out", tmp_path / "ev",
                        "--min-auroc", "0.999")
    assert proc.returncode == 1, proc.stderr
    auroc = read_metrics(tmp_path / "ev")["image"]["auroc"]
    assert auroc < 0.999
    line = proc.stderr.strip().splitlines()[-1]
    assert re.search(r"image AUROC 0\.\d{4} < --min-auroc 0\.999 \(short by 0\.\d{4}\)", line), line
    assert f"{0.999 - auroc:.4f}" in line


def test_evaluate_bad_input_exits_2(mvtec, tmp_path):
    one_class = tmp_path / "one"
    shutil.copytree(mvtec["test"] / "good", one_class / "good")
    proc = run_cli_here("evaluate", one_class, "--model", mvtec["model"], "--out", tmp_path / "ev")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "only good images" in proc.stderr
    proc = run_cli_here("evaluate", mvtec["root"], "--model", mvtec["model"], "--out", tmp_path / "ev")
    assert proc.returncode == 2 and "did you mean" in proc.stderr  # the MVTec category folder, not its test/
    proc = run_cli_here("evaluate", mvtec["test"], "--model", mvtec["model"], "--masks", tmp_path / "nowhere")
    assert proc.returncode == 2 and "--masks" in proc.stderr
    proc = run_cli_here("evaluate", mvtec["test"], "--model", tmp_path / "missing.onnx")
    assert proc.returncode == 3


def test_evaluate_labels_csv_and_masks_option(mvtec, tmp_path):
    """--labels with a header and a mask column, and --masks pointing elsewhere, give the folder's numbers."""
    masks = tmp_path / "gt"
    shutil.copytree(mvtec["truth"], masks)
    folder = run_cli_here("evaluate", mvtec["test"], "--model", mvtec["model"], "--masks", masks, "--out", tmp_path / "a")
    assert folder.returncode == 0, folder.stderr
    lines = ["path,label,mask,class"]
    for p in sorted(mvtec["test"].rglob("*.png")):
        cls = p.parent.name
        mask = "" if cls == "good" else f"gt/{cls}/{p.stem}_mask.png"
        lines.append(f"{p.relative_to(mvtec['test'])},{int(cls != 'good')},{mask},{cls}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    # relative image paths from DATA, masks from DATA too: point DATA at a folder holding both
    both = tmp_path / "both"
    shutil.copytree(mvtec["test"], both, dirs_exist_ok=True)
    shutil.copytree(masks, both / "gt")
    listed = run_cli_here("evaluate", both, "--labels", tmp_path / "labels.csv", "--model", mvtec["model"],
                          "--out", tmp_path / "b")
    assert listed.returncode == 0, listed.stderr
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert a["image"] == b["image"]
    assert a["pixel"]["aupro"] == b["pixel"]["aupro"] and a["pixel"]["pixel_auroc"] == b["pixel"]["pixel_auroc"]


def test_pixel_gate_without_masks_is_a_usage_error(tiny_onnx, tmp_path):
    data = tmp_path / "d"
    for cls, names in (("good", ["sneaker_0000.png", "sneaker_0001.png"]), ("bad", ["sneaker_0002.png"])):
        (data / cls).mkdir(parents=True)
        for n in names:
            shutil.copy(SAMPLE / "good" / n, data / cls / n)
    proc = run_cli_here("evaluate", data, "--model", tiny_onnx, "--min-aupro", "0.5", "--out", tmp_path / "ev")
    assert proc.returncode == 2 and "--min-aupro: no pixel metrics here" in proc.stderr


def test_find_mask_prefers_exact_stems():
    from icsscan.labels import find_mask

    index = {"0001_mask": "a", "000_mask": "b", "002": "c", "003_gt_v2": "d", "0030_mask": "e"}
    assert find_mask(index, "000") == "b"  # not 0001_mask
    assert find_mask(index, "002") == "c"
    assert find_mask(index, "003") == "d"
    assert find_mask(index, "004") is None and find_mask({}, "000") is None


# --------------------------------------------------------------------------------------------- scan --raw-maps

def test_scan_raw_maps_writes_float16_maps_and_index(mvtec, tmp_path):
    from icsscan import data
    from icsscan.maps import upsample
    from icsscan.rawmaps import read_raw_maps

    out = tmp_path / "scan"
    proc = run_cli_here("scan", mvtec["test"], "--model", mvtec["model"], "--out", out, "--raw-maps")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["maps"]["raw_maps_written"] == 26 and summary["maps"]["raw_folder"] == "raw_maps/"
    with open(out / "raw_maps" / "index.csv", newline="") as f:
        index = list(csv.DictReader(f))
    assert len(index) == 26 and len(list((out / "raw_maps").glob("*.npy"))) == 26
    entries = list(read_raw_maps(out / "raw_maps"))
    for (path, m, size), row in zip(entries, index):
        assert m.dtype == np.float16 and m.shape == (H // STRIDE, W // STRIDE)
        with Image.open(path) as im:
            assert size == im.size
        grey = data.to_channels(data.decode_image(path, (W, H))[None], 1)[0, 0]
        expected = grey.reshape(H // STRIDE, STRIDE, W // STRIDE, STRIDE).mean(axis=(1, 3))
        np.testing.assert_allclose(m.astype(np.float32), expected, atol=1e-3)  # what the model computes
        assert float(row["score"]) == pytest.approx(expected.max(), abs=1e-3)
        assert upsample(m, size).shape == (size[1], size[0])


def test_scan_raw_maps_refused_for_global_models(tiny_onnx, tmp_path):
    proc = run_cli_here("scan", SAMPLE / "incoming", "--model", tiny_onnx, "--out", tmp_path / "r", "--raw-maps")
    assert proc.returncode == 2 and "--raw-maps" in proc.stderr


# --------------------------------------------------------------------------------------------- browser

@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="chromium not installed (make browser, or apt-get install chromium)")
def test_evaluation_report_renders_with_its_images(mvtec, tmp_path):
    """report.html in headless Chromium: the ROC, histogram and PRO plots and every overlay load."""
    from test_html import chromium, parse

    out = tmp_path / "ev"
    proc = run_cli_here("evaluate", mvtec["test"], "--model", mvtec["model"], "--out", out)
    assert proc.returncode == 0, proc.stderr
    page = out / "report.html"
    text = page.read_text(encoding="utf-8")
    probe = ("<script>addEventListener('load', () => { const imgs = [...document.images];"
             " document.body.dataset.imagesTotal = imgs.length;"
             " document.body.dataset.imagesOk = imgs.filter(i => i.complete && i.naturalWidth > 0).length;"
             " document.body.dataset.plots = imgs.filter(i => i.naturalWidth > 0)"
             ".map(i => i.getAttribute('src')).filter(s => !s.includes('/')).join(' '); });</script></body>")
    check = out / "_browser_check.html"
    check.write_text(text.replace("script-src 'none'", "script-src 'unsafe-inline'").replace("</body>", probe),
                     encoding="utf-8")
    proc = chromium(["--virtual-time-budget=10000", "--dump-dom", check.as_uri()], tmp_path)
    total = re.search(r'data-images-total="(\d+)"', proc.stdout)
    ok = re.search(r'data-images-ok="(\d+)"', proc.stdout)
    plots = re.search(r'data-plots="([^"]*)"', proc.stdout)
    assert total and ok and plots, proc.stdout[-1000:] + proc.stderr[-2000:]
    assert int(total.group(1)) == len(parse(page).imgs) == 3 + 16
    assert int(ok.group(1)) == int(total.group(1))
    assert plots.group(1).split() == ["roc.png", "histograms.png", "pro.png"]


def test_pixel_metrics_equal_reference_on_full_size_maps(mvtec, tmp_path):
    """End to end: evaluate's pixel AUROC and AUPRO equal the reference computed from every map upsampled to its
    image's own size (the model run directly, masks read here) within the reported precision."""
    from test_metrics import reference_aupro

    from icsscan import data
    from icsscan.maps import upsample
    from icsscan.scan import load_model

    proc = run_cli_here("evaluate", mvtec["test"], "--model", mvtec["model"], "--out", tmp_path / "ev")
    assert proc.returncode == 0, proc.stderr
    pixel = read_metrics(tmp_path / "ev")["pixel"]
    model = load_model(mvtec["model"])
    maps, masks = [], []
    for path in sorted(mvtec["test"].rglob("*.png")):
        rgb, size = data.decode_image_sized(path, (W, H))
        _, m = model.score_and_map(data.to_channels(rgb[None], 1))
        maps.append(upsample(m[0], size))
        mask = mvtec["truth"] / path.parent.name / f"{path.stem}_mask.png"
        masks.append(np.asarray(Image.open(mask)) != 0 if mask.exists() else np.zeros(maps[-1].shape, bool))
    flat_m, flat_g = np.concatenate([m.ravel() for m in maps]), np.concatenate([g.ravel() for g in masks])
    bound = pixel["precision"]
    assert abs(pixel["pixel_auroc"] - roc_auc_score(flat_g, flat_m)) <= min(1e-3, bound["auroc_tie_bound"] + 1e-9)
    assert abs(pixel["aupro"] - reference_aupro(maps, masks)) <= min(1e-3, bound["aupro_tie_bound"] + 1e-9)


def test_labels_csv_of_sample_data_gives_classes(tiny_onnx, tmp_path):
    """sample_data/labels.csv (path,label,class_name; paths relative to the CSV): per-class AUROC by class_name."""
    proc = run_cli_here("evaluate", "--labels", SAMPLE / "labels.csv", "--model", tiny_onnx, "--out", tmp_path / "ev")
    assert proc.returncode == 0, proc.stderr
    metrics = read_metrics(tmp_path / "ev")
    with open(SAMPLE / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert set(metrics["image"]["per_class"]) == {r["class_name"] for r in rows if r["label"] == "1"}
    assert metrics["counts"]["good"] == sum(r["label"] == "0" for r in rows) and metrics["counts"]["unreadable"] == 0


def test_unreadable_mask_is_listed_not_fatal(mvtec, tmp_path):
    shutil.copytree(mvtec["test"], tmp_path / "test")
    shutil.copytree(mvtec["truth"], tmp_path / "ground_truth")
    (tmp_path / "ground_truth" / "scratch" / "000_mask.png").write_bytes(b"not a png")
    proc = run_cli_here("evaluate", tmp_path / "test", "--model", mvtec["model"], "--out", tmp_path / "ev")
    assert proc.returncode == 0, proc.stderr
    pixel = read_metrics(tmp_path / "ev")["pixel"]
    assert [p["path"].endswith("scratch/000.png") for p in pixel["unreadable_masks"]] == [True]
    assert "000_mask.png" in pixel["unreadable_masks"][0]["reason"]
    assert pixel["images"] == 25 and pixel["defect_regions"] == 13
