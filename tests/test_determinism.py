"""Issue 5, hardening: the same seed on CPU gives an identical split.csv and identical scores."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import SAMPLE


@pytest.fixture(scope="module")
def two_fits(tmp_path_factory):
    import torch

    from icsscan import ICSDetector
    from icsscan.config import preset_config
    from icsscan.bundle import write_split_rows

    # 100 of the sample's good images (10 held out to calibrate), small batches: a real (short) run of every stage
    paths = sorted((SAMPLE / "good").glob("*.png"))[:100]
    cfg = preset_config("default", backbone="small", iterations=5, ae_epochs=2, batch_size=16, device="cpu", seed=7)
    out = tmp_path_factory.mktemp("determinism")
    fits = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, and immune to a busy shared machine
    try:
        for k in range(2):
            det = ICSDetector(config=cfg).fit(paths)
            write_split_rows(out / f"split{k}.csv", det.split_)
            fits.append(det)
    finally:
        torch.set_num_threads(threads)
    return fits, out


@pytest.mark.slow
def test_same_seed_same_split_csv(two_fits):
    fits, out = two_fits
    a, b = (out / "split0.csv").read_bytes(), (out / "split1.csv").read_bytes()
    assert a == b
    assert fits[0].split_["atypical"].sum() == int(0.1 * fits[0].n_train_)


@pytest.mark.slow
def test_same_seed_identical_scores(two_fits):
    fits, _ = two_fits
    a, b = fits
    assert len(a.calibration_scores_) == 10 and np.array_equal(a.calibration_scores_, b.calibration_scores_)
    assert a.train_log_ == b.train_log_
    incoming = sorted((SAMPLE / "incoming").glob("*.png"))[:40]
    sa, sb = a.score_samples(incoming), b.score_samples(incoming)
    assert np.isfinite(sa).all() and np.array_equal(sa, sb)
    assert np.ptp(sa) > 0  # a real model, not a constant
