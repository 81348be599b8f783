"""The ICS training loop (METHOD.md §2): closeness, intra-class and dispersion losses, one optimizer step each.

Read it next to the paper: every iteration samples batches, computes one loss, steps, and moves on to the
next loss. Labels: typical = 0, atypical = 1, so the classifier's sigmoid is the probability of *abnormal*.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

from .config import ICSConfig
from .models import DistanceHead, ICSClassifier, conv_weights, rotations4


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


# --- the loop ---------------------------------------------------------------------------------------------

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
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, 0.999))
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
        total = loss + cfg.l2 * sum((w**2).sum() for w in kernels)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        # The pairwise losses can push z to ever larger norms (dispersion has no bounded optimum);
        # clipping keeps Adam's steps finite instead of letting a spike turn the weights into NaN.
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
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
