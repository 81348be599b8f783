"""icsscan/models.py: the from-scratch networks at any size and channel count, and the two distance heads."""
from __future__ import annotations

import pytest
import torch

from icsscan.models import ConvAutoencoder, DistanceHead, ICSClassifier


def test_distance_head_is_sigmoid_of_dense_of_difference():
    head = DistanceHead(3)
    with torch.no_grad():
        head.dense.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
        head.dense.bias.fill_(0.25)
    z_i, z_j = torch.tensor([[1.0, 1.0, 2.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    expected = 1 * 1 + (-2) * (-1) + 0.5 * 2 + 0.25
    assert head(z_i, z_j).item() == pytest.approx(expected)


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32), (1, 9), (3, 100)])
def test_networks_adapt_to_size_and_channels(channels, size):
    x = torch.rand(2, channels, size, size)
    for backbone in ("small", "alexnet"):
        assert ICSClassifier(channels, size, backbone).eval()(x).shape == (2,)
    assert ConvAutoencoder(channels, size)(x).shape == x.shape


def test_pairwise_distance_head_equals_its_per_pair_form():
    """SymmetricDistanceHead.pairwise (two L1 cdists) gives the same logits and gradients as forward on every
    pair (the (A, B, D) tensor of |z_i − z_j|), including weights of both signs."""
    from icsscan.models import SymmetricDistanceHead

    torch.manual_seed(0)
    head = SymmetricDistanceHead(16)
    assert (head.dense.weight > 0).any() and (head.dense.weight < 0).any()
    a, b = torch.randn(9, 16, requires_grad=True), torch.randn(7, 16, requires_grad=True)
    g = torch.randn(9, 7)
    params = [a, b, head.dense.weight, head.dense.bias]
    want = head(a[:, None, :], b[None, :, :])
    got = head.pairwise(a, b)
    assert got.shape == (9, 7)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for g_got, g_want in zip(torch.autograd.grad((got * g).sum(), params), torch.autograd.grad((want * g).sum(), params)):
        torch.testing.assert_close(g_got, g_want, atol=1e-4, rtol=1e-5)
