"""Nearest neighbours, written once: the distance kernel, the memory bank's coreset, and the typical/atypical mark.

Every kNN in icsscan is a *squared* Euclidean distance (the ranking is the same as the distance's, and the
square root near 0 turns float rounding noise into visible differences between onnxruntime and PyTorch):
  - `knn_distance`: mean of the k nearest bank rows (whole-object `eknn`, the local model's image-level
    `gknn`, and leave-one-out with `skip_self` for training rows that are themselves in the bank);
  - `nearest_bank_distance`: the map's per-location nearest bank patch (searched by one matmul, its distance then
    computed directly, which does not cancel in float32);
  - `leave_own_image_out_distance`: nearest bank patch from *another* image (a patch's own image would make it
    look perfectly typical).
`mark_atypical` is the one rule for how many of N normal samples are atypical (the split of images by SSIM,
of embeddings by kNN distance, of patches by bank distance).
"""
from __future__ import annotations

import math

import numpy as np
import torch


def squared_distances(q: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """|q_i − b_j|² for every row of q (..., P, D) and of bank (M, D), by one matmul: (..., P, M)."""
    return (q * q).sum(-1, keepdim=True) - 2.0 * q @ bank.T + (bank * bank).sum(-1)


def knn_distance(q: torch.Tensor, bank: torch.Tensor, k: int = 1, skip_self: bool = False) -> torch.Tensor:
    """Mean squared distance of each row of q (..., P, D) to its k nearest rows of bank (M, D): (..., P).

    skip_self: q's rows are in the bank, so the nearest of each (itself) is left out."""
    d2 = squared_distances(q, bank)
    skip = int(skip_self)
    k = min(k, bank.shape[0] - skip)
    if k == 1 and not skip:  # one reduction, not a sort (the exported gknn)
        return d2.amin(-1).clamp_min(0.0)
    return d2.topk(k + skip, dim=-1, largest=False).values[..., skip:].clamp_min(0.0).mean(-1)


def leave_one_out_knn_distance(e: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Each row's knn_distance to the *other* rows of e (N, D), a chunk of queries at a time."""
    return torch.cat([knn_distance(e[i:i + chunk], e, k, skip_self=True) for i in range(0, len(e), chunk)])


def nearest_bank_distance(q: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Squared distance of each row of q (..., P, D) to its nearest bank row, for the maps: the nearest row is
    *found* by one float32 matmul (−2q·b + |b|²; |q|² does not change the ranking) and its distance then
    computed directly as Σ(q − b)², which does not cancel. The matmul form's own value cancelled and left ~1e-4
    between onnxruntime and PyTorch in float32; float64 fixed that at half the speed (the kNN was ~75 % of a
    304-px scan's time; float32 is 2× faster).

    The search is one matmul and one argmax, argmax_b [q, 1]·[2b, −|b|²]: written as |b|² − 2q·b it was a matmul
    plus an elementwise pass over the (cells × bank rows) matrix — 24 MB per 304-px image, ~15 % of the kNN's
    time in onnxruntime. The bank side is a constant of the exported graph (folded at export)."""
    searched = torch.cat([2.0 * bank, -(bank * bank).sum(-1, keepdim=True)], 1)
    nearest = (torch.cat([q, torch.ones_like(q[..., :1])], -1) @ searched.T).argmax(-1)
    return ((q - bank[nearest]) ** 2).sum(-1)


@torch.no_grad()
def leave_own_image_out_distance(patches: torch.Tensor, owners: torch.Tensor, bank: torch.Tensor,
                                 bank_owners: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Each candidate patch's squared distance to the nearest bank patch from *another* image (owners: which
    image each row came from)."""
    out = []
    for i in range(0, len(patches), chunk):
        d2 = squared_distances(patches[i:i + chunk], bank)
        d2 = d2.masked_fill(owners[i:i + chunk, None] == bank_owners[None, :], float("inf"))
        out.append(d2.amin(1).clamp_min(0))
    return torch.cat(out)


@torch.no_grad()
def greedy_coreset(x: torch.Tensor, m: int, gen: torch.Generator, projection_dim: int = 64) -> torch.Tensor:
    """Indices of m rows of x chosen by greedy k-center (PatchCore): each pick is the row farthest from all
    previous picks. Unlike a random sample, rare-but-normal patches get a representative, so they do not look
    abnormal later; distances are computed in a random projection (Johnson-Lindenstrauss) to save time."""
    if m >= len(x):
        return torch.arange(len(x))
    proj = torch.randn(x.shape[1], projection_dim, generator=gen) / math.sqrt(projection_dim)
    y = x @ proj.to(x.device)
    y2 = (y * y).sum(1)
    picks = [int(torch.randint(len(x), (1,), generator=gen))]
    nearest = y2 - 2.0 * (y @ y[picks[0]]) + y2[picks[0]]  # |y − y_k|² as one matrix-vector product
    for _ in range(m - 1):
        k = int(nearest.argmax())
        picks.append(k)
        nearest = torch.minimum(nearest, y2 - 2.0 * (y @ y[k]) + y2[k])
    return torch.tensor(picks)


# ------------------------------------------------------------------------------------ typical / atypical

MIN_ATYPICAL = 2  # the dispersion loss needs pairs of atypical samples


def n_atypical(n: int, rho: float) -> int:
    """How many of n normal samples are atypical: ⌊ρN⌋ (the paper's ρ), at least MIN_ATYPICAL."""
    return max(MIN_ATYPICAL, int(math.floor(rho * n + 1e-9)))


def mark_atypical(distances: torch.Tensor | np.ndarray, rho: float) -> torch.Tensor:
    """Bool mask (N,): the n_atypical(N, ρ) samples with the largest `distances` (how far each normal sample is
    from the others: kNN distance, or 1 − SSIM), ties broken by position (the earlier sample first)."""
    if not 0 < rho < 0.5:
        raise ValueError(f"rho must satisfy 0 < rho < 0.5, got {rho}")
    d = torch.as_tensor(distances)
    n, k = len(d), n_atypical(len(d), rho)
    if n - k < 2:
        raise ValueError(f"rho={rho} with {n} samples gives {k} atypical and {n - k} typical; each needs ≥ 2")
    atypical = torch.zeros(n, dtype=torch.bool)
    atypical[torch.argsort(d, descending=True, stable=True)[:k]] = True
    return atypical
