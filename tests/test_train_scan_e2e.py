"""End to end on real MNIST PNGs: split, train, export, scan through the CLI (subprocesses), and the library.

One model (500 training zeros, 12 iterations, seed 0) is trained once per session and reused.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from sklearn.metrics import roc_auc_score

from conftest import SAMPLE, run_cli, run_cli_here, write_pngs


def read_rows(report: Path) -> list[dict]:
    with open(report / "scores.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def mnist_model(mnist_zero_folders, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "model"
    # 500 zeros, 12 iterations: MNIST-0 AUC 0.984 through train + scan, 31 s at 1 thread (1,000 zeros and 25
    # iterations: 0.989 in 50 s; 50 iterations: 0.985; 100: 0.972)
    r = run_cli("train", mnist_zero_folders["train"], "--out", out, "--backbone", "small", "--iterations", 12, "--seed", 0)
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.slow
def test_bundle_contents(mnist_model):
    names = {p.name for p in mnist_model.iterdir()}
    assert {"config.json", "classifier.pt", "autoencoder.pt", "calibration.json", "split.csv", "train_log.csv",
            "model.onnx", "loss_curve.png"} <= names
    meta = json.loads((mnist_model / "config.json").read_text())
    cfg = meta["config"]
    assert cfg["seed"] == 0 and cfg["iterations"] == 12 and cfg["image_size"] == 28 and cfg["channels"] == 1
    assert cfg["rho"] == 0.1 and cfg["preset"] == "default" and cfg["backbone"] == "small"
    assert meta["versions"]["torch"] and meta["versions"]["python"] and meta["versions"]["icsscan"]
    assert meta["n_train_files"] == 450 and meta["n_calibration_files"] == 50
    assert len(meta["train_files_hash"]) == 64
    log = list(csv.DictReader(open(mnist_model / "train_log.csv")))
    assert {"closeness", "intra_class", "dispersion"} <= set(log[0]) and int(log[-1]["iteration"]) == 12
    split_rows = list(csv.DictReader(open(mnist_model / "split.csv")))
    assert len(split_rows) == 450 and sum(r["subset"] == "atypical" for r in split_rows) == 45


@pytest.mark.slow
def test_issue3_check_export_scan_auc_and_exit_codes(mnist_model, mnist_zero_folders, tmp_path):
    onnx_path = tmp_path / "model.onnx"
    r = run_cli("export", mnist_model, "-o", onnx_path)
    assert r.returncode == 0, r.stderr
    assert "max |onnx - pytorch|" in r.stdout
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert {"icsscan_version", "image_size", "channels", "normalisation", "default_threshold", "calibration",
            "config_hash", "created"} <= set(meta)
    assert meta["image_size"] == "28" and meta["channels"] == "1"

    report = tmp_path / "report"
    r = run_cli("scan", mnist_zero_folders["test"], "--model", onnx_path, "--threshold", 0.5, "--out", report,
                "--format", "csv,json,junit")
    assert r.returncode == 0, r.stderr
    rows = read_rows(report)
    labels = mnist_zero_folders["labels"]
    assert sorted(r["path"] for r in rows) == sorted(labels)  # exactly one row per image
    auc = roc_auc_score([labels[r["path"]] for r in rows], [float(r["score"]) for r in rows])
    assert auc >= 0.95, auc
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and [int(r["rank"]) for r in rows] == list(range(1, 401))
    pct = [float(r["normal_percentile"]) for r in rows]
    assert all(a >= b for a, b in zip(pct, pct[1:]))  # monotone in the score
    summary = json.loads((report / "summary.json").read_text())
    assert summary["complete"] and summary["counts"]["scored"] == 400
    assert "false alarms" in summary["threshold"]["meaning"]
    flagged = sum(r["is_anomaly"] == "true" for r in rows)
    assert summary["counts"]["anomalies"] == flagged > 0
    suite = ET.parse(report / "junit.xml").getroot().find("testsuite")
    assert len(suite.findall("testcase")) == 400 and int(suite.get("failures")) == flagged

    r = run_cli("scan", mnist_zero_folders["test"], "--model", onnx_path, "--threshold", 0.5, "--out", report,
                "--fail-on-anomaly")
    assert r.returncode == 1, r.stderr


@pytest.mark.slow
def test_false_alarm_rate_threshold_matches_calibration(mnist_model, mnist_zero_folders, tmp_path):
    report = tmp_path / "r"
    r = run_cli("scan", mnist_zero_folders["test"] / "normal", "--model", mnist_model, "--false-alarm-rate", 0.05,
                "--out", report)
    assert r.returncode == 0, r.stderr
    summary = json.loads((report / "summary.json").read_text())
    assert summary["threshold"]["source"] == "false-alarm-rate"
    assert summary["threshold"]["expected_false_alarm_rate"] <= 0.05 + 1e-9
    # fresh normal images: the flagged share should be near the target (200 images: allow sampling noise)
    assert summary["counts"]["anomalies"] / summary["counts"]["scored"] <= 0.15


@pytest.mark.slow
def test_library_roundtrip_matches_onnx_scan(mnist_model, mnist_zero_folders, tmp_path):
    from icsscan import ICSDetector
    from icsscan.scan import load_model, score_paths

    det = ICSDetector.load(mnist_model, device="cpu")
    paths = sorted(mnist_zero_folders["labels"])[:64]
    torch_scores = det.score_samples(paths)
    again = ICSDetector.load(mnist_model, device="cpu").score_samples(paths)
    assert np.array_equal(torch_scores, again)  # load is deterministic
    onnx_rows = score_paths(load_model(mnist_model), paths)
    onnx_scores = np.array([r.score for r in onnx_rows])
    assert np.max(np.abs(onnx_scores - torch_scores)) <= 1e-4
    assert ((det.predict(paths, threshold=0.5) == 1) == (torch_scores >= 0.5)).all()
    assert 0 <= det.normal_percentile(torch_scores).min() <= det.normal_percentile(torch_scores).max() <= 1


@pytest.mark.slow
def test_split_cli_and_train_cli_on_300_pngs(mnist_zero_folders, tmp_path):
    from conftest import mnist

    x, y = mnist("MNIST", True)
    folder = tmp_path / "three_hundred"
    write_pngs(folder, x[y == 3][:300], "three")
    out = tmp_path / "split"
    # the CLI's code, not the autoencoder's quality; in this process (run_cli_here): two fresh ones would import
    # torch, scikit-learn and torch's compiler (its optimizers load it) for ~20 s
    r = run_cli_here("split", folder, "--out", out, "--rho", 0.1, "--seed", 0, "--epochs", 2)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out / "split.csv")))
    assert len(rows) == 300
    atyp = [float(r["ssim"]) for r in rows if r["subset"] == "atypical"]
    typ = [float(r["ssim"]) for r in rows if r["subset"] == "typical"]
    assert len(atyp) == 30 and max(atyp) <= min(typ)
    assert (out / "split_preview.png").stat().st_size > 0 and (out / "autoencoder.pt").exists()
    assert json.loads((out / "config.json").read_text())["config"]["seed"] == 0
    assert json.loads((out / "config.json").read_text())["config"]["ae_epochs"] == 2

    reuse = tmp_path / "model_reuse"  # train on that split (and its autoencoder), the seed recorded
    r = run_cli_here("train", folder, "--out", reuse, "--backbone", "small", "--iterations", 5, "--split",
                     out / "split.csv", "--calibration-fraction", 0, "--seed", 0)
    assert r.returncode == 0, r.stderr
    assert json.loads((reuse / "config.json").read_text())["config"]["seed"] == 0
    reused = list(csv.DictReader(open(reuse / "split.csv")))
    assert {r["path"] for r in reused if r["subset"] == "atypical"} == {r["path"] for r in rows if r["subset"] == "atypical"}


def test_design_card_two_commands(tmp_path):
    """`icsscan train ./good_parts` then `icsscan scan ./incoming --threshold 0.5`, verbatim, defaults only.

    Run under umask 022 (issue 16): afterwards the bundle and the reports (one more scan writes every format) are
    world-readable, and no lock or temporary file is left."""
    from test_outputs import assert_umask_modes

    (tmp_path / "good_parts").mkdir()  # 120 of the sample's 400 good images: AUC 0.971 (all 400: 0.978), 10 s sooner
    for p in sorted((SAMPLE / "good").iterdir())[:120]:
        shutil.copy(p, tmp_path / "good_parts" / p.name)
    shutil.copytree(SAMPLE / "incoming", tmp_path / "incoming")
    old_umask = os.umask(0o022)  # inherited by the CLI subprocesses
    try:
        r = run_cli("train", "./good_parts", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        scanned = run_cli("scan", "./incoming", "--threshold", "0.5", cwd=tmp_path)
        every_format = run_cli("scan", "./incoming", "--out", "all-formats", "--format", "csv,json,junit", cwd=tmp_path)
    finally:
        os.umask(old_umask)
    assert every_format.returncode == 0, every_format.stderr
    assert (tmp_path / "all-formats" / "junit.xml").is_file()
    for root in ("icsscan-model", "icsscan-report", "all-formats"):
        assert_umask_modes(tmp_path / root, 0o022)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "a lock or temporary file was left"
    assert (tmp_path / "icsscan-model" / "model.onnx").exists()
    # it says what each part of the score runs on (not "backbone small" for a score led by the pretrained network)
    said = r.stdout + r.stderr
    assert ("score embedding_knn+embedding_ics+ssim (embedding_knn, embedding_ics on pretrained efficientnet-lite0; "
            "ssim on an autoencoder trained here)") in said, said[-2000:]
    r = scanned
    assert r.returncode == 0, r.stderr
    rows = read_rows(tmp_path / "icsscan-report")
    assert len(rows) == 120
    labels = {Path(r["path"]).name: int(r["label"]) for r in csv.DictReader(open(SAMPLE / "labels.csv"))}
    auc = roc_auc_score([labels[Path(r["path"]).name] for r in rows], [float(r["score"]) for r in rows])
    assert auc >= 0.9, auc


def test_scan_does_not_import_torch(tiny_bundle, tmp_path):
    code = (
        "import sys\n"
        "from icsscan.cli import app\n"
        f"sys.argv = ['icsscan', 'scan', {str(SAMPLE / 'incoming')!r}, '--model', {str(tiny_bundle)!r}, "
        f"'--out', {str(tmp_path / 'r')!r}]\n"
        "try:\n    app()\nexcept SystemExit as e:\n    code = e.code\n"
        "print('EXIT', code, 'TORCH', 'torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "EXIT 0 TORCH False" in r.stdout, r.stdout + r.stderr


def test_formula_injection_names_are_neutralised(tiny_bundle, tmp_path):
    src = sorted((SAMPLE / "incoming").glob("*.png"))[:4]
    folder = tmp_path / "names"
    folder.mkdir()
    for prefix, p in zip("=+-@", src):
        shutil.copy(p, folder / f"{prefix}cmd,1 \"q\".png")
    r = run_cli("scan", folder, "--model", tiny_bundle, "--out", tmp_path / "r")
    assert r.returncode == 0, r.stderr
    rows = read_rows(tmp_path / "r")
    assert len(rows) == 4
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@")), cell


@pytest.mark.parametrize("args,code", [
    (["scan", "does-not-exist"], 2),
    (["scan", "EMPTY"], 2),
    (["scan", "INCOMING", "--threshold", "2"], 2),
    (["scan", "INCOMING", "--threshold", "0.5", "--false-alarm-rate", "0.01"], 2),
    (["scan", "INCOMING", "--format", "pdf"], 2),
    (["scan", "INCOMING", "--model", "no-such-model"], 3),
    (["scan", "INCOMING", "--model", "GARBAGE"], 3),
    (["train", "EMPTY"], 2),  # refused before torch is imported: a second, not seven
    (["export", "no-such-bundle"], 3),
])
def test_exit_codes_and_one_line_errors(args, code, tiny_bundle, tmp_path):
    (tmp_path / "empty").mkdir()
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx at all" * 10)
    subst = {"EMPTY": tmp_path / "empty", "INCOMING": SAMPLE / "incoming", "GARBAGE": garbage}
    argv = [str(subst.get(a, a)) for a in args]
    if "--model" not in argv and argv[0] == "scan":
        argv += ["--model", str(tiny_bundle)]
    r = run_cli(*argv, "--out", tmp_path / "out", cwd=tmp_path) if argv[0] != "export" else run_cli(*argv, cwd=tmp_path)
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, r.stderr
