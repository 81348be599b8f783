"""Intra-class splitting: train an autoencoder on the normal images, score each by SSIM(x, x̂), and call the
⌊ρN⌋ least similar *atypical* and the rest *typical* (METHOD.md §1)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from pytorch_msssim.ssim import _ssim
from torch.nn import functional as F

from .config import ICSConfig
from .files import atomic_write
from .knn import mark_atypical, n_atypical  # noqa: F401  (n_atypical: the count rule, re-exported)
from .models import ConvAutoencoder


def ssim_window(image_size: int) -> int:
    """pytorch-msssim's Gaussian window is 11 px; smaller images need a smaller odd window (≥ 3)."""
    if image_size >= 11:
        return 11
    win = image_size if image_size % 2 == 1 else image_size - 1
    if win < 3:
        raise ValueError(f"image_size {image_size} is too small for SSIM (needs ≥ 3 px)")
    return win


def gaussian_window(channels: int, image_size: int) -> torch.Tensor:
    """pytorch-msssim's own 1-D Gaussian kernel (σ = 1.5), repeated per channel.

    Passing it precomputed (instead of letting `ssim` build it from the input's shape) keeps it a constant
    in the traced graph, which the ONNX exporter needs.
    """
    from pytorch_msssim.ssim import _fspecial_gauss_1d

    return _fspecial_gauss_1d(ssim_window(image_size), 1.5).repeat(channels, 1, 1, 1)


def ssim_per_image(x: torch.Tensor, y: torch.Tensor, win: torch.Tensor | None = None) -> torch.Tensor:
    """SSIM of each image pair (N,), Gaussian window σ=1.5, averaged over channels, data_range 1."""
    if win is None:
        win = gaussian_window(x.shape[1], x.shape[-1])
    # pytorch-msssim's core SSIM; its public wrapper only adds shape checks and a squeeze of singleton
    # dims, which the ONNX tracer turns into data-dependent `If` nodes.
    per_channel, _ = _ssim(x, y, data_range=1.0, win=win, size_average=False, K=(0.01, 0.03))
    return per_channel.mean(1)


def batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def train_autoencoder(images: torch.Tensor, cfg: ICSConfig, device: torch.device,
                      on_epoch: Callable[[int, float], None] | None = None) -> ConvAutoencoder:
    """MSE training on all given images (already on `device`, float in [0, 1])."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    ae = ConvAutoencoder(images.shape[1], images.shape[-1], cfg.ae_width, cfg.ae_code_dim).to(device)
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.ae_lr)
    n = len(images)
    for epoch in range(cfg.ae_epochs):
        # Halve the learning rate for the last third: the reconstructions settle, so SSIM ranks are stable.
        for group in opt.param_groups:
            group["lr"] = cfg.ae_lr * (0.3 if epoch >= cfg.ae_epochs * 2 // 3 else 1.0)
        order = torch.randperm(n, generator=gen).to(device)
        total = 0.0
        for sl in batches(n, cfg.ae_batch_size):
            x = images[order[sl]]
            loss = F.mse_loss(ae(x), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(x)
        if on_epoch:
            on_epoch(epoch, total / n)
    return ae.eval()


@torch.no_grad()
def ssim_scores(ae: ConvAutoencoder, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    ae.eval()
    out = [ssim_per_image(images[sl], ae(images[sl])).float().cpu() for sl in batches(len(images), batch_size)]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def split_by_ssim(ssim_values: np.ndarray, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """Rank by SSIM ascending (ties broken by index) and mark the n_atypical(N, ρ) = ⌊ρN⌋ lowest atypical
    (knn.mark_atypical, the rule the embedding and patch heads' splits use too).

    Returns (rank, atypical): rank[i] = 1 for the least similar image; atypical is a bool mask.
    """
    atypical = mark_atypical(-np.asarray(ssim_values, dtype=np.float64), rho).numpy()
    return rank_by_ssim(ssim_values), atypical


def rank_by_ssim(ssim_values: np.ndarray) -> np.ndarray:
    """rank[i] (1 = the least similar image), SSIM ascending, ties broken by index."""
    n = len(ssim_values)
    rank = np.empty(n, dtype=np.int64)
    rank[np.lexsort((np.arange(n), ssim_values))] = np.arange(1, n + 1)
    return rank


def write_split_csv(path: Path, paths: Sequence[str], ssim_values: np.ndarray, rank: np.ndarray,
                    atypical: np.ndarray) -> None:
    """split.csv ordered by rank (least similar first): path,ssim,rank,subset."""
    # surrogateescape: a file name that is not valid UTF-8 is written as its own bytes and read back unchanged
    with atomic_write(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "ssim", "rank", "subset"])
        for i in np.argsort(rank):
            writer.writerow([paths[i], f"{ssim_values[i]:.6f}", int(rank[i]), "atypical" if atypical[i] else "typical"])


def read_split_csv(path: Path) -> dict[str, str]:
    """path → subset from a split.csv written by `icsscan split`."""
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        missing = {"path", "subset"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: not a split.csv (missing columns {sorted(missing)})")
        out = {}
        for row in reader:
            if row["subset"] not in ("typical", "atypical"):
                raise ValueError(f"{path}: subset must be typical or atypical, got {row['subset']!r}")
            out[row["path"]] = row["subset"]
        return out


def read_split_rows(path: Path) -> dict:
    """All of a split.csv as the `split_` dict a fit keeps: paths, ssim, rank, atypical (in the file's rank order)."""
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = list(csv.DictReader(f))
    return {"paths": [r["path"] for r in rows], "ssim": np.array([float(r["ssim"]) for r in rows]),
            "rank": np.array([int(r["rank"]) for r in rows], dtype=np.int64),
            "atypical": np.array([r["subset"] == "atypical" for r in rows])}


def save_preview(path: Path, images: torch.Tensor, ssim_values: np.ndarray, per_row: int = 8) -> None:
    """Like the paper's Fig. 1: top row(s) the most typical images, bottom row(s) the most atypical."""
    from torchvision.utils import save_image

    k = min(per_row * 2, len(images) // 2)
    order = np.lexsort((np.arange(len(ssim_values)), ssim_values))
    most_typical = torch.as_tensor(order[::-1][:k].copy())
    most_atypical = torch.as_tensor(order[:k].copy())
    grid = torch.cat([images[most_typical].cpu(), images[most_atypical].cpu()])
    with atomic_write(path, "wb") as f:
        save_image(grid, f, format="PNG", nrow=per_row, padding=2, pad_value=1.0)
