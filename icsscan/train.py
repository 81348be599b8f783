"""The ICS training loop (METHOD.md §2): closeness, intra-class and dispersion losses, one optimizer step each.

Read it next to the paper: every iteration samples batches, computes one loss, steps, and moves on to the
next loss. Labels: typical = 0, atypical = 1, so the classifier's sigmoid is the probability of *abnormal*.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .config import ICSConfig
from .models import DistanceHead, ICSClassifier, SymmetricDistanceHead, conv_weights, rotations4


# --- the three losses, in numerically stable form (logits in, never log(sigmoid(.))) -----------------------

def closeness_loss(dist_logits: torch.Tensor) -> torch.Tensor:
    """Typical pairs should be close: −mean log(1 − dist) = mean softplus(logit)."""
    return F.softplus(dist_logits).mean()


def intra_class_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy, typical = 0, atypical = 1."""
    return F.binary_cross_entropy_with_logits(logits, labels)


def dispersion_loss(dist_logits: torch.Tensor) -> torch.Tensor:
    """Atypical pairs should be far apart: −mean log dist = mean softplus(−logit)."""
    return F.softplus(-dist_logits).mean()


def rotation_loss(clf: ICSClassifier, x: torch.Tensor) -> torch.Tensor:
    """Self-supervision: cross-entropy of telling which of the 4 rotations each image was shown in."""
    labels = torch.arange(4, device=x.device).repeat_interleave(len(x))
    return F.cross_entropy(clf.rotation_logits(rotations4(x)), labels)


def pair_logits(head: DistanceHead, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """dist logits for every pair (a_i, b_j) with i ≠ j, flattened."""
    logits = head.pairwise(z_a, z_b) if hasattr(head, "pairwise") else head(z_a[:, None, :], z_b[None, :, :])  # (B, B)
    off_diagonal = ~torch.eye(len(z_a), len(z_b), dtype=torch.bool, device=logits.device)
    return logits[off_diagonal]


# --- the optimiser, shared by both loops -------------------------------------------------------------------

def ics_optimizer(params: list, lr: float, beta1: float) -> torch.optim.Optimizer:
    """Adam with the authors' β1 (0.5 by default, config.beta1)."""
    return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999))


def clipped_step(optimizer: torch.optim.Optimizer, params: list, loss: torch.Tensor, grad_clip: float) -> None:
    """One step on `loss`. The pairwise losses can push z to ever larger norms (dispersion has no bounded
    optimum); clipping keeps Adam's steps finite instead of letting a spike turn the weights into NaN."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()


# --- loop 1: the from-scratch classifier on whole images (the paper) -----------------------------------------

LOSS_SETS = {
    "ics": ("closeness", "intra_class", "dispersion"),  # the method
    "bce": ("intra_class",),                             # NNwICS: ICS split, BCE only (paper baseline)
    "naive": ("naive",),                                 # NaiveNN: every image labelled normal (paper baseline)
    "none": (),                                          # ablation: the rotation task alone (cfg.rotation)
}


def train_ics(images: torch.Tensor, atypical: torch.Tensor, cfg: ICSConfig, device: torch.device,
              losses: str = "ics", on_log: Callable[[dict], None] | None = None) -> ICSClassifier:
    """Train the classifier on `images` (N,C,S,S in [0,1], on device) with the bool mask `atypical`."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    channels, size = images.shape[1], images.shape[-1]
    clf = ICSClassifier(channels, size, cfg.backbone, cfg.width, cfg.hidden_dim, cfg.latent_dim).to(device)
    flat = images.transpose(0, 1).reshape(channels, -1)
    clf.normalize.set_stats(flat.mean(1).tolist(), flat.std(1).tolist())
    head = DistanceHead(cfg.latent_dim).to(device)
    params = [*clf.parameters(), *head.parameters()]
    opt = ics_optimizer(params, cfg.lr, cfg.beta1)
    kernels = conv_weights(clf)

    typical_idx = torch.nonzero(~atypical).squeeze(1).cpu()
    atypical_idx = torch.nonzero(atypical).squeeze(1).cpu()
    everything = torch.arange(len(images))
    B = cfg.batch_size

    def batch_from(pool: torch.Tensor, n: int) -> torch.Tensor:
        return images[pool[torch.randint(len(pool), (n,), generator=gen)].to(device)]

    # The rotation task gets its own Adam (its own moments and a faster rate) over the same network, so the
    # self-supervised steps neither disturb the ICS steps' moment estimates nor crawl at the ICS rate.
    rot_opt = torch.optim.Adam(clf.parameters(), lr=cfg.rotation_lr) if cfg.rotation else None

    def step(loss: torch.Tensor, optimizer: torch.optim.Optimizer = opt) -> float:
        clipped_step(optimizer, params, loss + cfg.l2 * sum((w**2).sum() for w in kernels), cfg.grad_clip)
        return loss.item()

    steps = LOSS_SETS[losses] + (("rotation",) if cfg.rotation else ())
    clf.train()
    head.train()
    for it in range(1, cfg.iterations + 1):
        log = {"iteration": it}
        for name in steps:
            if name == "closeness":
                z_a, z_b = clf.embed(batch_from(typical_idx, B)), clf.embed(batch_from(typical_idx, B))
                log["closeness"] = step(closeness_loss(pair_logits(head, z_a, z_b)))
            elif name == "intra_class":
                half = B // 2  # balanced batch, as in the authors' code: ρ alone would starve the atypical class
                x = torch.cat([batch_from(typical_idx, B - half), batch_from(atypical_idx, half)])
                y = torch.cat([torch.zeros(B - half), torch.ones(half)]).to(device)
                log["intra_class"] = step(intra_class_loss(clf(x), y))
            elif name == "dispersion":
                z_a, z_b = clf.embed(batch_from(atypical_idx, B)), clf.embed(batch_from(atypical_idx, B))
                log["dispersion"] = step(dispersion_loss(pair_logits(head, z_a, z_b)))
            elif name == "naive":
                x = batch_from(everything, B)
                log["intra_class"] = step(intra_class_loss(clf(x), torch.zeros(B, device=device)))
            elif name == "rotation":  # on every normal image, typical or atypical: a 4th step, like the others
                log["rotation"] = step(rotation_loss(clf, batch_from(everything, cfg.rotation_batch)), rot_opt)
        if on_log and (it % cfg.log_every == 0 or it == cfg.iterations or it == 1):
            on_log(log)
    return clf.eval()


# --- loop 2: a small ICS head on pretrained embeddings (patches: local.py; whole images: embed.py) ----------

class ICSHead(nn.Module):
    """The ICS classifier on pretrained embeddings (of patches: local.py; of whole images: embed.py):
    e → hidden → z → one unit (logit; sigmoid = P(atypical))."""

    def __init__(self, dim: int, hidden: int = 128, latent: int = 64):
        super().__init__()
        self.to_latent = nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, latent))
        self.output = nn.Linear(latent, 1)
        self.register_buffer("e_mean", torch.zeros(dim))
        self.register_buffer("e_std", torch.ones(dim))

    def embed(self, e: torch.Tensor) -> torch.Tensor:
        return self.to_latent((e - self.e_mean) / self.e_std)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.output(self.embed(e))[..., 0]


def train_ics_head(head: ICSHead, embeddings: torch.Tensor, atypical: torch.Tensor, iterations: int,
                   batch: int, lr: float, seed: int, on_log: Callable[[dict], None] | None = None,
                   log_every: int = 50, pair_losses: bool = True, symmetric: bool = True, ema: float = 0.0,
                   beta1: float = 0.5, grad_clip: float = 5.0) -> list[dict]:
    """train_ics's steps on `embeddings` (N, D) of patches or whole images with the bool mask `atypical`:
    closeness (typical pairs), intra-class BCE (typical = 0, atypical = 1, balanced batch), dispersion (atypical
    pairs), one optimizer step each, in the paper's order; the same optimiser (ics_optimizer, clipped_step).

    ema > 0: the head is left with the exponential moving average of its weights over the steps (decay `ema` per
    step; torch.optim.swa_utils), not the last step's: the steps' noise, which decided much of what the head
    flags on unseen parts, averages out.

    Ablations (benchmarks): pair_losses=False trains the intra-class BCE alone (the paper's NNwICS);
    symmetric=False uses the paper's antisymmetric distance head σ(w·(z_i − z_j) + b)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    device = embeddings.device
    head.e_mean.copy_(embeddings.mean(0))
    # per-dimension standardisation, but a near-constant dimension is not blown up: its std is floored at a tenth
    # of the typical one (else float noise of 1e-5 between ONNX and PyTorch features became 1e-3 in the logit)
    std = embeddings.std(0)
    head.e_std.copy_(std.clamp_min(0.1 * float(std.median()) + 1e-6))
    dist = (SymmetricDistanceHead if symmetric else DistanceHead)(head.output.in_features).to(device)
    params = [*head.parameters(), *dist.parameters()]
    opt = ics_optimizer(params, lr, beta1)
    typical_idx = torch.nonzero(~atypical).squeeze(1).cpu()
    atypical_idx = torch.nonzero(atypical).squeeze(1).cpu()

    def sample(pool: torch.Tensor, n: int) -> torch.Tensor:
        return embeddings[pool[torch.randint(len(pool), (n,), generator=gen)].to(device)]

    def step(loss: torch.Tensor) -> float:
        clipped_step(opt, params, loss, grad_clip)
        return loss.item()

    average = AveragedModel(head, multi_avg_fn=get_ema_multi_avg_fn(ema)) if ema else None
    log: list[dict] = []
    head.train()
    for it in range(1, iterations + 1):
        row: dict = {"iteration": it}
        if pair_losses:
            z_a, z_b = head.embed(sample(typical_idx, batch)), head.embed(sample(typical_idx, batch))
            row["closeness"] = step(closeness_loss(pair_logits(dist, z_a, z_b)))
        half = batch // 2
        e = torch.cat([sample(typical_idx, batch - half), sample(atypical_idx, half)])
        y = torch.cat([torch.zeros(batch - half), torch.ones(half)]).to(device)
        row["intra_class"] = step(intra_class_loss(head(e), y))
        if pair_losses:
            z_a, z_b = head.embed(sample(atypical_idx, batch)), head.embed(sample(atypical_idx, batch))
            row["dispersion"] = step(dispersion_loss(pair_logits(dist, z_a, z_b)))
        if average is not None:
            average.update_parameters(head)
        if it % log_every == 0 or it in (1, iterations):
            log.append(row)
            if on_log:
                on_log(row)
    if average is not None:
        head.load_state_dict(average.module.state_dict())
    return log
