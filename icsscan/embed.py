"""Whole-object scoring on a pretrained embedding: is this image, as a whole, unlike the normal ones?

For small whole-object images (a digit, a garment, a photo of one object) the anomaly is what the object *is*,
not a small spot on it. A frozen ImageNet network already knows what objects look like; a few thousand normal
images then only have to say where "normal" lies in its embedding:

  pixels → resized to `embed_size` → frozen EfficientNet-Lite0 → mean-pooled stage-3 and stage-4 maps, each
    L2-normalised, concatenated (a unit vector e; stage 3 keeps strokes and textures that digits differ by,
    stage 4 the object-level shape that photos differ by) →
    "eknn" mean squared distance of e to its K nearest training embeddings (DN2-like; on unit vectors this is
           2 − 2·cosine)
    "eics" the ICS head on embeddings (METHOD.md §2 in the pretrained space): an MLP e → z → logit, trained
           with closeness / intra-class / dispersion on the training embeddings split into typical and
           atypical by their leave-one-out kNN distance (the ρ least typical normals are atypical), with a
           symmetric distance head (the paper's antisymmetric one keeps both pair losses at ln 2)
  → standardised on held-out normals, summed with weights from normal images alone (∝ (2·AUC − 1)⁸ of how
    well each separates held-out normals from synthetic anomalies) → sigmoid, 0.5 at the (1 − ρ) quantile.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .backbones import STAGE_CHANNELS, pretrained_network
from .tracing import onnx_cpu_runner
from .knn import knn_distance, leave_one_out_knn_distance, mark_atypical
from .train import ICSHead, train_ics_head

EMBED_COMPONENTS = ("eknn", "eics")
EMBED_STAGES = (3, 4)
K_NEIGHBOURS = 2


class ImageEmbedding(nn.Module):
    """Pixels in [0, 1] (N, 1|3, H, W) → unit embedding (N, 432): pooled stage 3 and 4 of ImageNet EfficientNet-Lite0."""

    def __init__(self, size: int, pretrained: bool = True):
        super().__init__()
        self.size = size
        self.net = pretrained_network("efficientnet-lite0", pretrained, EMBED_STAGES)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.dim = sum(STAGE_CHANNELS[s] for s in EMBED_STAGES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        if x.shape[-2:] != (self.size, self.size):  # small thumbnails are upsampled: ImageNet's scale of objects
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        maps = self.net(x * 2.0 - 1.0)
        parts = [F.normalize(m.mean((2, 3)), dim=1) for m in maps]
        return torch.cat(parts, 1) / math.sqrt(len(parts))


class EmbeddingScorer(nn.Module):
    """The pretrained whole-object components of a global model: pixels (N, C, S, S) in [0, 1] → eknn, eics.

    Their standardisation and weights live with the other components' in detector.AnomalyScorer."""

    def __init__(self, size: int, n_bank: int, parts: tuple[str, ...], pretrained: bool = True,
                 k: int = K_NEIGHBOURS):
        super().__init__()
        self.parts, self.k = parts, k
        self.embedding = ImageEmbedding(size, pretrained=pretrained)
        self.head = ICSHead(self.embedding.dim)
        # centred like local.py's bank: distances unchanged, less float32 cancellation (ONNX parity)
        self.register_buffer("bank", torch.zeros(n_bank, self.embedding.dim))
        self.register_buffer("bank_mean", torch.zeros(self.embedding.dim))

    def components_of(self, e: torch.Tensor, exclude_self: bool = False) -> dict[str, torch.Tensor]:
        """Each component from embeddings (exclude_self: e are the bank's own rows, as in the training set)."""
        out = {}
        if "eknn" in self.parts:
            out["eknn"] = knn_distance(e - self.bank_mean, self.bank, self.k, skip_self=exclude_self)
        if "eics" in self.parts:
            out["eics"] = self.head(e)
        return out

    def components(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.components_of(self.embedding(x))


@torch.no_grad()
def embed_all(embedding: ImageEmbedding, images, batch: int = 64, tick: Callable[[int], None] | None = None) -> torch.Tensor:
    """Embeddings of `images` (a float tensor, or local.FloatBatches over uint8 pixels), batch by batch.

    On the CPU the frozen network runs in onnxruntime (the graph `scan` will run; 1.6-2x PyTorch eager's
    images/s here); PyTorch when onnxruntime is missing, the export fails, or on a GPU."""
    run = None
    if len(images) and images[:1].device.type == "cpu":  # one export per embedding module (its weights are frozen)
        if "_ort_run" not in embedding.__dict__:
            embedding.__dict__["_ort_run"] = onnx_cpu_runner(embedding, images[:1])
        run = embedding.__dict__["_ort_run"]
    out = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        out.append(torch.from_numpy(run(x.numpy())) if run else embedding(x).cpu())
        if tick:
            tick(len(out[-1]))
    return torch.cat(out) if out else torch.zeros(0, embedding.dim)


def split_by_knn(e: torch.Tensor, rho: float, k: int = K_NEIGHBOURS, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Leave-one-out kNN distance of each training embedding to the others, and the ρ largest marked atypical."""
    distance = leave_one_out_knn_distance(e, k, chunk)
    return distance, mark_atypical(distance, rho)


def fit_embedder(images: torch.Tensor, cfg, on_features: Callable[[int], None] | None = None,
                 on_log: Callable[[dict], None] | None = None) -> tuple[EmbeddingScorer, dict]:
    """The pretrained whole-object components of `cfg.score` from training images (N, C, S, S) in [0, 1]: embed
    them (on_features(n) after each batch), then fit_embedding (on_log(row) during the ICS head's training).
    Returns the scorer on the images' device, in eval mode, and what the bundle records (train_log, timings)."""
    from .config import score_parts

    parts = tuple(p for p in score_parts(cfg.score) if p in EMBED_COMPONENTS)
    embedding = ImageEmbedding(cfg.embed_size).to(images.device).eval()
    train = embed_all(embedding, images, tick=on_features).to(images.device)
    embedder, info = fit_embedding(train, cfg, parts, embedding=embedding, on_log=on_log)
    return embedder.to(images.device).eval(), info


def fit_embedding(train: torch.Tensor, cfg, parts: tuple[str, ...], embedding: ImageEmbedding | None = None,
                  on_log: Callable[[dict], None] | None = None) -> tuple[EmbeddingScorer, dict]:
    """Fit an EmbeddingScorer (everything but the fusion) from the training images' embeddings `train`
    (computed by `embedding`; None: the benchmark's cached embeddings, the network is left untrained-random)."""
    t = time.perf_counter()
    scorer = EmbeddingScorer(cfg.embed_size, len(train), parts, pretrained=False)
    if embedding is not None:
        scorer.embedding = embedding
    train = train.cpu()
    scorer.bank_mean = train.mean(0)
    scorer.bank = train - train.mean(0)
    distance, atypical = split_by_knn(train, cfg.rho)
    log = []
    if "eics" in parts:
        log = train_ics_head(scorer.head, train, atypical, cfg.embed_iterations, cfg.embed_batch, cfg.patch_lr,
                             cfg.seed, on_log=on_log, beta1=cfg.beta1, grad_clip=cfg.grad_clip)
    scorer.eval()
    info = {"n_atypical": int(atypical.sum()), "atypical_distance_cut": float(distance[atypical].min()),
            "train_log": log, "timings": {"train_s": time.perf_counter() - t}}
    return scorer, info
