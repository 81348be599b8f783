"""Known defects pick the recipe (train --defects, fit(defects=...)); out-of-fold calibration on small folders.

Real casting images (../shared/data/industrial/casting; skipped without it), decoded from disk.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DATA_ROOT, run_cli, run_cli_here

CASTING = DATA_ROOT / "industrial" / "casting"
SMALL = dict(bank_size=512, patch_iterations=40, patch_candidates=20_000)  # fast, still the real pipeline


def casting(kind: str) -> list[Path]:
    folder = CASTING / kind
    if not folder.is_dir():
        pytest.skip(f"{folder} not found (set ICSSCAN_DATA to the shared data root)")
    return sorted(folder.iterdir())


def write_exposed(paths: list[Path], gains: list[float], folder: Path) -> Path:
    """Real casting images with their exposure scaled by `gains` (as a darker or brighter capture would be)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path, gain in zip(paths, gains):
        grey = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
        Image.fromarray(np.clip(grey * gain, 0, 255).astype(np.uint8)).save(folder / f"{path.stem}_{gain:.2f}.png")
    return folder


@pytest.fixture(scope="module")
def exposure_case(tmp_path_factory) -> dict[str, Path]:
    """Good parts captured under two lightings, at 1x and 0.5x exposure (so `--brightness auto` normalises them),
    and known defects that are underexposed (0.15x): parts this line rejects because the lighting failed.
    Normalising brightness hides most of that; keeping it shows it."""
    root = tmp_path_factory.mktemp("exposure")
    train = casting("train/good")
    good = write_exposed(train[:20], [1.0, 0.5] * 10, root / "good")
    defects = write_exposed(train[20:26], [0.15] * 6, root / "defects")
    (defects / "broken.png").write_bytes(b"not an image")
    return {"root": root, "good": good, "defects": defects}


@pytest.mark.slow
def test_known_defects_choose_the_recipe_that_separates_them(exposure_case, tmp_path, capfd):
    """A user who keeps brightness (`--brightness keep`) on parts lit two ways, with underexposed rejects: fit
    weighs that recipe and its challengers on the rejects and keeps the one that separates them (brightness
    normalised: on these images the kept features score a dark part as *more* normal), not the configured one;
    config.json records every candidate; the unreadable file among the defects is listed and skipped; scan
    --threshold auto flags the defects."""
    from icsscan import ICSDetector
    from icsscan.config import preset_config

    det = ICSDetector(config=preset_config("default", seed=0, normalise_brightness=False, **SMALL))
    det.fit(exposure_case["good"], defects=exposure_case["defects"])
    assert "broken.png" in capfd.readouterr().err
    known = det.known_defects_
    by_name = {c["name"]: c for c in known["candidates"]}
    assert by_name["brightness normalised"]["auroc"] > by_name["default"]["auroc"] + 0.2, known["candidates"]
    assert known["kept"] == "brightness normalised" and by_name["brightness normalised"]["kept"]
    assert by_name["brightness normalised"]["confidence_beats_default"] >= 0.95
    assert det.config_.normalise_brightness is True and known["n_defects"] == 6 and known["n_unreadable"] == 1
    # 20 images: calibrated in 5 folds, so no patch ICS head (it cannot be fitted per fold), none to weigh
    assert set(by_name) == {"default", "brightness normalised", "bank 1024"} and det.fusion_["pics_weight"] == 0
    auto = known["threshold_auto"]
    good, bad = det.out_of_fold_scores_, det.score_samples(sorted(exposure_case["defects"].glob("*_0.15.png")))
    youden = [np.mean(bad >= t) - np.mean(good >= t) for t in np.r_[good, bad]]
    assert auto["defects_flagged"] - auto["good_flagged"] == pytest.approx(max(youden))
    assert auto["defects_flagged"] == np.mean(bad >= auto["threshold"]) == 1.0
    # the kept recipe's fit is the model: saved, its threshold auto travels in config.json and the ONNX file
    det.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["known_defects"]["kept"] == "brightness normalised" and meta["config"]["normalise_brightness"] is True
    r = run_cli("scan", exposure_case["defects"], "--model", tmp_path / "m", "--threshold", "auto",
                "--out", tmp_path / "report")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["counts"]["anomalies"] == 6 and summary["counts"]["unreadable"] == 1
    assert summary["threshold"]["source"] == "known defects"


def test_bad_known_defects_are_refused_before_any_training(exposure_case, tmp_path):
    """An empty or unreadable --defects folder, one that overlaps the good images, and known defects for a model
    that has no recipes to choose among: a clear one-line error naming the folder (exit 2), nothing written."""
    from icsscan import ICSDetector
    from icsscan.errors import UsageError

    empty = tmp_path / "empty"
    empty.mkdir()
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    for name in ("a.png", "b.jpg"):
        (unreadable / name).write_bytes(b"\x00" * 64)
    good = exposure_case["good"]
    cases = {empty: "no image files", unreadable: "none of its 2 files is a readable image",
             good: "also among the good images"}
    for folder, reason in cases.items():
        with pytest.raises(UsageError, match=reason):
            ICSDetector().fit(good, defects=folder)
    with pytest.raises(UsageError, match="global model"):
        ICSDetector().fit(np.zeros((30, 28, 28), np.uint8), defects=np.zeros((3, 28, 28), np.uint8))
    for folder, reason in ((empty, "no image files"), (exposure_case["root"], "also among the good images")):
        r = run_cli_here("train", good, "--defects", folder, "--out", tmp_path / "model")
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 2 and len(lines) == 1 and str(folder) in lines[0] and reason in lines[0], r.stderr
        assert not (tmp_path / "model").exists()
    r = run_cli("scan", good, "--model", tmp_path / "none", "--threshold", "auto", "--out", tmp_path / "r")
    assert r.returncode != 0


@pytest.mark.slow
def test_out_of_fold_calibration_keeps_its_promise_on_a_small_folder():
    """24 good parts: every one trains, every one is scored by a model fitted without it (5 folds). At 0.5 about
    ρ = 10 % of *new* good parts are flagged, and at --false-alarm-rate 0.05 about 5 % — the promise a model
    calibrated on its own training images would break (it flags far more than it says)."""
    from icsscan import ICSDetector
    from icsscan.config import preset_config

    det = ICSDetector(config=preset_config("default", seed=0, **SMALL)).fit(casting("train/good")[:24])
    assert det.n_train_ == det.n_calibration_ == 24 and det.local_info_["calibration_folds"] == 5
    # 100 new good parts (scoring is most of this test's time): flagged 0.13 / 0.02 / 0.68 below (160: 0.125 / 0.013
    # / 0.68)
    new_good = det.score_samples(casting("test/good")[:100])
    assert abs(np.mean(new_good >= 0.5) - 0.10) <= 0.08
    assert np.mean(new_good >= det.threshold_for_false_alarm_rate(0.05)) <= 0.12
    in_sample = det.score_samples(det.calibration_paths_)
    assert np.mean(new_good >= np.quantile(in_sample, 0.9)) > 0.2  # what in-sample calibration would promise


def test_the_rule_keeps_the_default_unless_a_challenger_beats_it_beyond_noise():
    """recipes.choose: a challenger a little ahead on five defects is noise (the default stays); one that
    separates them where the default cannot is kept; of two that do equally, the faster."""
    from icsscan.recipes import choose

    rng = np.random.default_rng(0)
    good = rng.normal(0, 1, 60)
    default = {"good": good, "defects": np.array([0.2, 0.9, 1.4, 2.2, -0.3]), "fit_s": 30.0}
    # another recipe scores the same images with noise of its own, some defects higher, some lower
    slightly = {"good": good + rng.normal(0, 0.3, 60), "defects": np.array([0.9, 0.6, 2.0, 2.1, -0.2]), "fit_s": 10.0}
    assert choose([default, slightly]) == 0 and slightly["auroc"] > default["auroc"]
    assert 0 < slightly["confidence"] < 0.95
    clearly = {"good": good, "defects": np.array([3.1, 3.5, 4.0, 2.9, 3.3]), "fit_s": 50.0}
    also = {"good": good, "defects": np.array([3.2, 3.6, 4.1, 3.0, 3.4]), "fit_s": 20.0}
    assert choose([default, slightly, clearly]) == 2 and clearly["confidence"] >= 0.95
    assert choose([default, clearly, also]) == 2  # both AUROC 1.0: the faster
