"""The three ICS losses against hand-computed values, the distance head, and the split's invariants."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from icsscan.models import DistanceHead, ICSClassifier, ConvAutoencoder, conv_weights
from icsscan.split import n_atypical, split_by_ssim, ssim_window
from icsscan.train import closeness_loss, dispersion_loss, intra_class_loss, pair_logits


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_closeness_is_minus_log_one_minus_dist():
    logits = torch.tensor([0.0, 2.0, -1.0])
    expected = -np.mean([math.log(1 - sigmoid(v)) for v in (0.0, 2.0, -1.0)])
    assert closeness_loss(logits).item() == pytest.approx(expected, rel=1e-6)


def test_dispersion_is_minus_log_dist():
    logits = torch.tensor([0.0, 2.0, -1.0])
    expected = -np.mean([math.log(sigmoid(v)) for v in (0.0, 2.0, -1.0)])
    assert dispersion_loss(logits).item() == pytest.approx(expected, rel=1e-6)


def test_intra_class_is_binary_cross_entropy():
    logits, labels = torch.tensor([1.5, -0.5]), torch.tensor([0.0, 1.0])
    expected = -np.mean([math.log(1 - sigmoid(1.5)), math.log(sigmoid(-0.5))])
    assert intra_class_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_losses_stay_finite_for_extreme_logits():
    big = torch.tensor([1e4, -1e4])
    for value in (closeness_loss(big), dispersion_loss(big), intra_class_loss(big, torch.tensor([1.0, 0.0]))):
        assert torch.isfinite(value)


def test_distance_head_is_sigmoid_of_dense_of_difference():
    head = DistanceHead(3)
    with torch.no_grad():
        head.dense.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
        head.dense.bias.fill_(0.25)
    z_i, z_j = torch.tensor([[1.0, 1.0, 2.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    expected = 1 * 1 + (-2) * (-1) + 0.5 * 2 + 0.25
    assert head(z_i, z_j).item() == pytest.approx(expected)


def test_pair_logits_cover_all_off_diagonal_pairs():
    head = DistanceHead(2)
    z = torch.randn(5, 2)
    assert pair_logits(head, z, z).shape == (20,)


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32), (1, 9), (3, 100)])
def test_networks_adapt_to_size_and_channels(channels, size):
    x = torch.rand(2, channels, size, size)
    for backbone in ("small", "alexnet"):
        assert ICSClassifier(channels, size, backbone).eval()(x).shape == (2,)
    assert ConvAutoencoder(channels, size)(x).shape == x.shape


def test_l2_applies_to_conv_kernels_only():
    clf = ICSClassifier(1, 28)
    kernels = conv_weights(clf)
    assert kernels and all(w.dim() == 4 for w in kernels)


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


def test_rotation_only_ablation_trains_no_ics_loss():
    """ics_losses "none": only the rotation step runs, so the ICS output unit keeps its initial weights."""
    from icsscan.config import preset_config
    from icsscan.train import train_ics

    x = torch.rand(32, 1, 16, 16)
    atypical = torch.zeros(32, dtype=torch.bool)
    atypical[:4] = True
    cfg = preset_config("default", backbone="small", image_size=16, channels=1, iterations=3, batch_size=8,
                        rotation_batch=8, ics_losses="none", seed=1, log_every=1)
    log: list[dict] = []
    clf = train_ics(x, atypical, cfg, torch.device("cpu"), losses=cfg.ics_losses, on_log=log.append)
    assert [sorted(k for k in row if k != "iteration") for row in log] == [["rotation"]] * 3
    torch.manual_seed(cfg.seed)  # the classifier train_ics starts from
    fresh = ICSClassifier(1, 16, "small", cfg.width, cfg.hidden_dim, cfg.latent_dim)
    assert torch.equal(clf.output.weight, fresh.output.weight) and torch.equal(clf.output.bias, fresh.output.bias)
    assert not torch.equal(clf.rotation_head.weight, fresh.rotation_head.weight)  # the rotation task did train
    with pytest.raises(ValueError, match="ics_losses"):
        preset_config("default", ics_losses="rotation").validate()
    with pytest.raises(ValueError, match="rotation task"):
        preset_config("default", ics_losses="none", rotation=False).validate()
