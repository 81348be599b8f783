"""icsscan/knn.py: the one kNN kernel (plain, leave-one-out, owner-excluded), the coreset and the atypical rule."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from icsscan.knn import (greedy_coreset, knn_distance, leave_one_out_knn_distance, leave_own_image_out_distance,
                         mark_atypical, n_atypical, nearest_bank_distance)


def _brute(q: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    return ((q[:, None, :] - bank[None, :, :]) ** 2).sum(-1)


def test_knn_distance_matches_brute_force_and_leaves_self_out():
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(50, 8, generator=gen, dtype=torch.float64)
    q = torch.randn(7, 8, generator=gen, dtype=torch.float64)
    d2 = torch.cdist(q, bank) ** 2
    torch.testing.assert_close(knn_distance(q, bank, 3), d2.sort(1).values[:, :3].mean(1))
    self_d2 = (torch.cdist(bank, bank) ** 2).sort(1).values
    torch.testing.assert_close(knn_distance(bank, bank, 2, skip_self=True), self_d2[:, 1:3].mean(1))



def test_knn_distance_nearest_and_batched_shapes():
    """k=1 is the nearest row's squared distance, for (P, D) and (B, P, D) queries alike."""
    gen = torch.Generator().manual_seed(1)
    bank = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    q = torch.randn(2, 5, 6, generator=gen, dtype=torch.float64)
    want = torch.stack([_brute(q[i], bank).min(1).values for i in range(2)])
    torch.testing.assert_close(knn_distance(q, bank), want)
    torch.testing.assert_close(nearest_bank_distance(q, bank), want)
    assert knn_distance(bank[:3], bank).abs().max() < 1e-9  # a bank row is at distance 0 from itself


def test_leave_one_out_and_own_image_exclusions():
    gen = torch.Generator().manual_seed(2)
    e = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    full = _brute(e, e)
    full.fill_diagonal_(float("inf"))
    torch.testing.assert_close(leave_one_out_knn_distance(e, 1, chunk=7), full.min(1).values)
    owners = torch.arange(30) // 3  # 10 images of 3 patches each
    d = _brute(e, e).masked_fill(owners[:, None] == owners[None, :], float("inf"))
    torch.testing.assert_close(leave_own_image_out_distance(e, owners, e, owners, chunk=8), d.min(1).values)


def test_greedy_coreset_picks_distinct_rows_and_covers_outliers():
    gen = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(500, 8, generator=gen) * 0.1, torch.full((1, 8), 50.0)])  # one far outlier
    picks = greedy_coreset(x, 20, torch.Generator().manual_seed(0))
    assert len(set(picks.tolist())) == 20 and 500 in picks.tolist()
    assert torch.equal(greedy_coreset(x, 600, gen), torch.arange(501))


@pytest.mark.parametrize("n,rho,want", [(600, 0.1, 60), (27, 0.1, 2), (29, 0.1, 2), (35, 0.1, 3), (20, 0.05, 2)])
def test_one_count_rule(n, rho, want):
    """⌊ρN⌋, at least 2 (dispersion needs atypical pairs): the same count for the SSIM split of images, the
    kNN split of embeddings and the bank-distance split of patches (round(ρN) there before: 3 of 27)."""
    assert n_atypical(n, rho) == want
    d = torch.arange(n, dtype=torch.float64)
    atypical = mark_atypical(d, rho)
    assert int(atypical.sum()) == want and atypical[n - want:].all()  # the farthest are atypical


def test_mark_atypical_ties_go_to_the_earlier_sample_and_bad_rho_fails():
    d = np.array([1.0, 5.0, 5.0, 5.0, 0.0] * 4)
    assert np.flatnonzero(mark_atypical(d, 0.1).numpy()).tolist() == [1, 2]
    for rho, n in [(0.0, 100), (0.5, 100), (0.1, 3)]:
        with pytest.raises(ValueError):
            mark_atypical(np.zeros(n), rho)


def test_every_split_uses_the_one_rule():
    """No module but knn.py counts atypical samples itself: split, embed and local call mark_atypical."""
    root = Path(__file__).resolve().parents[1] / "icsscan"
    for name in ("split.py", "embed.py", "local.py"):
        text = (root / name).read_text()
        assert "mark_atypical(" in text and "round(rho" not in text and "floor(rho" not in text, name


def test_the_package_has_no_import_cycle():
    """Every `from .x import` (module level or inside functions) forms an acyclic graph."""
    root = Path(__file__).resolve().parents[1] / "icsscan"
    modules = {p.stem for p in root.glob("*.py")}
    graph = {}
    for m in modules:
        deps = set()
        for node in ast.walk(ast.parse((root / f"{m}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        graph[m] = deps & modules - {m}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            assert state.get(d) != 1, "import cycle: " + " -> ".join(path + [m, d])
            if d not in state:
                visit(d, path + [m])
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [])
