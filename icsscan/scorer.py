"""The global model's scorer (`AnomalyScorer`): what `scan` computes for whole-image models and what is exported.

Components: the from-scratch classifier's (ics, rot, maha), the split autoencoder's ssim, and the pretrained
embedding's (eknn, eics, embed.EmbeddingScorer); their fusion is fitted in fusion.py. Local models have their own
scorer (local.LocalScorer).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .config import EMBED_COMPONENTS, GLOBAL_COMPONENTS, score_parts
from .models import ConvAutoencoder, FusionBuffers, ICSClassifier, rotations4
from .split import gaussian_window, ssim_per_image

if TYPE_CHECKING:
    from .embed import EmbeddingScorer

CLASSIFIER_COMPONENTS = ("ics", "rot", "maha")  # read off the from-scratch classifier (one shared pass)
SCORE_BATCH = 64  # images per forward pass when a global model scores (the pretrained embedding runs at 160 px)


class AnomalyScorer(FusionBuffers):
    """What `scan` computes (and what is exported to ONNX): pixels in [0, 1] → anomaly score in [0, 1].

    Components (config.COMPONENTS): "ics" the classifier's logit, "ssim" the split autoencoder's 1 − SSIM(x, x̂),
    "rot" the rotation head's surprise, "maha" the Mahalanobis distance of z to the normal training images.
    kind = "ics": the classifier's sigmoid, as in the paper.  kind = "ssim": (1 − SSIM) / 2.
    kind = several joined by "+": each standardised by its median and spread on held-out normal images,
    compressed by a signed log (far-out values stay ranked instead of saturating, and no single component's
    tail dominates), averaged with the weights of the score string ("rot*0.7"), then shifted so that 0.5 sits
    where the raw ICS output puts it by construction — at the (1 − ρ) quantile of normal images. With label-free
    weights (the whole-object default, fusion["compress"] = 0) the standardised components are summed linearly.
    """

    def __init__(self, classifier: ICSClassifier, autoencoder: ConvAutoencoder, kind: str,
                 fusion: dict[str, float] | None = None, embedder: "EmbeddingScorer | None" = None):
        super().__init__()
        self.classifier, self.autoencoder, self.kind = classifier, autoencoder, kind
        self.embedder = embedder  # the pretrained whole-object components (eknn, eics), when the score has any
        self.parts = score_parts(kind)
        fusion = fusion or {}
        # not fitted yet: the equal-weight average (older bundles' weights are filled by bundle.migrate)
        self.register_fusion(GLOBAL_COMPONENTS, fusion, default_weight=1.0 / len(self.parts))
        self.compress = bool(fusion.get("compress", 1.0))  # the signed log unless the fusion says otherwise
        channels, size = classifier.normalize.mean.shape[1], autoencoder.sizes[0]
        self.register_buffer("ssim_win", gaussian_window(channels, size), persistent=False)

    def components(self, x: torch.Tensor, parts: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """Each requested component (default: this scorer's) per image, the classifier's from one shared pass."""
        parts = parts or self.parts
        scratch = tuple(p for p in parts if p in CLASSIFIER_COMPONENTS)
        out = self.classifier.scores(x, scratch) if scratch else {}
        if any(p in EMBED_COMPONENTS for p in parts):
            got = self.embedder.components(x)
            out.update({p: got[p] for p in parts if p in EMBED_COMPONENTS})
        if "ssim" in parts:
            out["ssim"] = 1.0 - ssim_per_image(x, self.autoencoder(x), self.ssim_win)
        return out

    def fused_z(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of the standardised components, each compressed by a signed log first when
        `self.compress` (fixed weights; see standardise_and_offset for why label-free weights sum linearly).

        Compressing before averaging keeps one component with a heavy tail on normal images (the rotation
        surprise of an odd-looking but normal digit) from outvoting three that agree.
        """
        return self.weighted_sum(values, self.parts, self.compress)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.parts == ("ics",):
            return torch.sigmoid(self.classifier(x))
        if self.parts == ("ssim",):
            return ((1.0 - ssim_per_image(x, self.autoencoder(x), self.ssim_win)) / 2).clamp(0, 1)
        return torch.sigmoid(self.fused_z(self.components(x)) - self.offset)


@torch.no_grad()
def fit_latent_gaussian(classifier: ICSClassifier, images: torch.Tensor) -> None:
    """Mean and (Ledoit-Wolf shrunk) precision of z over the normal training images, into the classifier."""
    from sklearn.covariance import LedoitWolf

    classifier.eval()
    z = torch.cat([classifier.embed(images[i:i + 256]).cpu() for i in range(0, len(images), 256)]).double().numpy()
    gaussian = LedoitWolf().fit(z)
    classifier.z_mean.copy_(torch.from_numpy(gaussian.location_).float())
    classifier.z_precision.copy_(torch.from_numpy(gaussian.precision_).float())


@torch.no_grad()
def rotation_accuracy(classifier: ICSClassifier, images: torch.Tensor) -> float:
    """How often the rotation head names the right one of the 4 rotations of these images."""
    hits, n = 0, 0
    for i in range(0, len(images), 256):
        x = images[i:i + 256]
        logits = classifier.rotation_logits(rotations4(x))
        truth = torch.arange(4, device=x.device).repeat_interleave(len(x))
        hits += int((logits.argmax(1) == truth).sum())
        n += len(truth)
    return hits / max(n, 1)

