"""The library API in scikit-learn style: constructor stores, fit learns and returns self, clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from icsscan import ICSDetector
from icsscan.config import ICSConfig, preset_config
from icsscan.errors import NotFittedError, UsageError

from conftest import mnist

QUICK = dict(iterations=5, calibration_fraction=0.2, seed=0)  # plumbing: a real fit, not a good model


def test_constructor_only_stores_arguments():
    det = ICSDetector(preset="paper", rho=0.7, iterations=3)  # invalid rho is not checked until fit
    assert det.preset == "paper" and det.rho == 0.7 and det.iterations == 3
    with pytest.raises(UsageError, match="rho"):
        det.fit(np.zeros((30, 8, 8), np.uint8))


def test_unfitted_detector_says_so():
    with pytest.raises(NotFittedError, match="not fitted"):
        ICSDetector().score_samples(np.zeros((2, 8, 8), np.uint8))


def test_too_few_images_is_a_clear_error():
    with pytest.raises(UsageError, match="at least 20"):
        ICSDetector().fit(np.zeros((5, 16, 16), np.uint8))


def test_presets_differ_as_documented():
    paper, default = preset_config("paper"), preset_config("default")
    assert paper.iterations == 10_000 and paper.batch_size == 64 and paper.l2 == 1e-6 and paper.backbone == "alexnet"
    assert paper.score == "ics" and not paper.rotation
    assert default.score == "auto" and default.rotation  # resolved at fit: see test_auto_backbone_and_score
    assert ICSConfig.from_dict(default.to_dict()) == default


@pytest.fixture(scope="module")
def zeros_fit():
    """150 MNIST zeros (an array), briefly trained: shared by the tests below, which must not modify it."""
    x, y = mnist("MNIST", True)
    zeros = x[y == 0][:150]
    cfg = preset_config("default", ae_epochs=3, backbone="small", **QUICK)
    return ICSDetector(config=cfg).fit(zeros), zeros


@pytest.mark.slow
def test_fit_on_arrays_with_calibration_and_percentiles(zeros_fit):
    x, y = mnist("MNIST", True)
    det, zeros = zeros_fit
    others = x[y == 1][:40]
    assert det.image_size_ == 28 and det.channels_ == 1
    assert det.n_calibration_ == 30 and len(det.calibration_scores_) == 30
    assert int(det.split_["atypical"].sum()) == 12  # floor(0.1 * 120)
    scores = det.score_samples(np.concatenate([zeros[:20], others]))
    assert scores.shape == (60,) and ((0 <= scores) & (scores <= 1)).all()
    pct = det.normal_percentile(np.sort(scores))
    assert (np.diff(pct) >= 0).all()
    thr = det.threshold_for_false_alarm_rate(0.1)
    assert np.mean(det.calibration_scores_ >= thr) <= 0.1 + 1e-9
    others_scores = det.score_samples(others)
    np.testing.assert_array_equal(det.predict(others, threshold=thr), (others_scores >= thr).astype(int))
    assert det.predict(others, threshold=0.0).tolist() == [1] * len(others)  # every score is ≥ 0
    assert det.predict(zeros[:20]).tolist() == (det.score_samples(zeros[:20]) >= 0.5).astype(int).tolist()  # default 0.5


def test_params_and_clone_follow_scikit_learn():
    from sklearn.base import clone

    det = ICSDetector(rho=0.2, seed=3, score="patch_knn", verbose=True)
    params = det.get_params()
    assert params["rho"] == 0.2 and params["seed"] == 3 and params["score"] == "patch_knn" and params["verbose"]
    twin = clone(det)
    assert twin is not det and twin.get_params() == params and not hasattr(twin, "scorer_")
    assert det.set_params(seed=5, rho=0.3) is det and det.seed == 5 and det.rho == 0.3
    with pytest.raises(ValueError):
        det.set_params(no_such_parameter=1)


FITTED = {"config_", "image_size_", "channels_", "scorer_", "calibration_scores_", "threshold_", "train_log_",
          "failures_", "timings_", "n_train_", "n_calibration_", "train_paths_", "calibration_paths_", "created_",
          "parity_inputs_", "split_", "metadata_"}


def fitted_attributes(det) -> set[str]:
    return {k for k in vars(det) if k.endswith("_") and not k.startswith("_")}


@pytest.mark.slow  # a fit (shared with the test above): not in the fast set
def test_the_same_attributes_after_fit_and_after_load(zeros_fit, tmp_path):
    """What a fit leaves is there after load too (the image lists as None: the bundle stores only their hash);
    a fitted model and its loaded bundle score alike, and a clone of the fitted one refits from scratch."""
    from sklearn.base import clone

    x, y = mnist("MNIST", True)
    det = zeros_fit[0]
    det.save(tmp_path / "m", export_onnx=False)
    back = ICSDetector.load(tmp_path / "m", device="cpu")
    assert FITTED <= fitted_attributes(det) and fitted_attributes(det) == fitted_attributes(back)
    assert back.train_paths_ is None and back.split_["atypical"].sum() == det.split_["atypical"].sum()
    assert [r["iteration"] for r in back.train_log_] == [r["iteration"] for r in det.train_log_]
    xt = x[:20]
    np.testing.assert_allclose(back.score_samples(xt), det.score_samples(xt), atol=1e-6)
    assert not hasattr(clone(det), "scorer_")
    # a loaded model saves again, split.csv and the training-file hash included
    again = ICSDetector.load(back.save(tmp_path / "again"), device="cpu")
    np.testing.assert_allclose(again.score_samples(xt), det.score_samples(xt), atol=1e-6)
    assert again.metadata_["train_files_hash"] == back.metadata_["train_files_hash"] is not None
    assert (tmp_path / "again" / "split.csv").read_text() == (tmp_path / "m" / "split.csv").read_text()
