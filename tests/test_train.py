"""icsscan/train.py: the three ICS losses against hand-computed values, pair logits, L2 on kernels, both loops."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from icsscan.models import DistanceHead, ICSClassifier, conv_weights
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


def test_pair_logits_cover_all_off_diagonal_pairs():
    head = DistanceHead(2)
    z = torch.randn(5, 2)
    assert pair_logits(head, z, z).shape == (20,)


def test_l2_applies_to_conv_kernels_only():
    clf = ICSClassifier(1, 28)
    kernels = conv_weights(clf)
    assert kernels and all(w.dim() == 4 for w in kernels)


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


def test_patch_head_keeps_the_moving_average_of_its_weights():
    """train_ics_head(ema=d) leaves the head with the exponential moving average of the weights after each step
    (the first step's weights, then avg ← d·avg + (1 − d)·w), not the last step's."""
    from icsscan.train import ICSHead, train_ics_head

    torch.manual_seed(0)
    patches = torch.randn(400, 12)
    atypical = torch.arange(400) >= 300
    head = ICSHead(12, hidden=8, latent=4)
    seen = []
    train_ics_head(head, patches, atypical, iterations=5, batch=16, lr=1e-2, seed=0, log_every=1, ema=0.6,
                    on_log=lambda row: seen.append([p.detach().clone() for p in head.parameters()]))
    expected = seen[0]
    for weights in seen[1:]:
        expected = [0.6 * a + 0.4 * w for a, w in zip(expected, weights)]
    for got, want in zip(head.parameters(), expected):
        torch.testing.assert_close(got, want)
    assert any(not torch.allclose(g, l) for g, l in zip(head.parameters(), seen[-1]))
