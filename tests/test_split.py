"""icsscan/split.py: the typical/atypical split by SSIM (counts, order, ties, bad ρ) and the SSIM window."""
from __future__ import annotations

import numpy as np
import pytest

from icsscan.split import n_atypical, split_by_ssim, ssim_window


def test_split_counts_and_order():
    rng = np.random.default_rng(0)
    ssim = rng.random(600)
    rank, atypical = split_by_ssim(ssim, 0.1)
    assert atypical.sum() == 60 == n_atypical(600, 0.1)
    assert ssim[atypical].max() < ssim[~atypical].min()
    assert sorted(rank) == list(range(1, 601))
    assert ssim[rank == 1][0] == ssim.min()


def test_split_ties_are_broken_by_index():
    """Equal SSIM values rank by position: the first of the tied images are the atypical ones, wherever they are."""
    ssim = np.array([0.9] * 5 + [0.5] * 10 + [0.9] * 5)
    rank, atypical = split_by_ssim(ssim, 0.25)
    assert np.flatnonzero(atypical).tolist() == [5, 6, 7, 8, 9]
    assert rank[5:15].tolist() == list(range(1, 11)) and rank[:5].tolist() == list(range(11, 16))


@pytest.mark.parametrize("rho,n", [(0.0, 100), (0.5, 100), (0.1, 3)])
def test_split_rejects_bad_rho(rho, n):
    with pytest.raises(ValueError):
        split_by_ssim(np.linspace(0, 1, n), rho)


def test_ssim_window_shrinks_for_tiny_images():
    assert ssim_window(28) == 11 and ssim_window(10) == 9 and ssim_window(8) == 7
    with pytest.raises(ValueError):
        ssim_window(2)
