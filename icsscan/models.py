"""Networks: the splitting autoencoder, the ICS classifier (feature extractor → z → one unit), the distance head.

Every network takes images as float tensors in [0, 1], shape (N, C, S, S); the classifier normalises
internally with the training set's per-channel mean/std (stored as buffers), so the exported ONNX graph
takes plain [0, 1] pixels and the scanner needs no normalisation code of its own.
Architectures adapt to any channel count and image size ≥ 8: convolutions halve the size until it is ≤ 4.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .errors import UsageError


def resolve_device(name: str) -> torch.device:
    """"auto" → cuda when available, else cpu; a CUDA device asked for on a machine without one is a UsageError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine (use auto or cpu)")
    return torch.device(name)


def n_halvings(size: int, stop: int = 4) -> int:
    """How many stride-2 stages bring `size` down to ≤ `stop` (at least 2)."""
    n = 0
    while size > stop:
        size = (size + 1) // 2
        n += 1
    return max(2, n)


class Normalize(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    def set_stats(self, mean: list[float], std: list[float]) -> None:
        self.mean.copy_(torch.tensor(mean).view_as(self.mean))
        self.std.copy_(torch.tensor(std).clamp_min(1e-3).view_as(self.std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def small_features(channels: int, image_size: int, width: int) -> tuple[nn.Sequential, int]:
    """icsscan's default extractor: pairs of 3×3 convs + LeakyReLU, average-pooled, widths w, 2w, 4w, 4w…"""
    layers: list[nn.Module] = []
    c_in, size = channels, image_size
    for stage in range(n_halvings(image_size)):
        c_out = width * min(2**stage, 4)
        # GroupNorm (per image, unlike BatchNorm) keeps features alive under L2 on the kernels and does not
        # depend on batch composition, which differs between the three ICS steps (all-typical, mixed, all-atypical).
        layers += [
            nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(min(8, c_out // 4), c_out), nn.LeakyReLU(0.2),
            nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(min(8, c_out // 4), c_out), nn.LeakyReLU(0.2),
            nn.AvgPool2d(2, ceil_mode=True),
        ]
        c_in, size = c_out, (size + 1) // 2
    return nn.Sequential(*layers, nn.Flatten()), c_in * size * size


def alexnet_features(channels: int, image_size: int, width: int) -> tuple[nn.Sequential, int]:
    """The paper's AlexNet-like extractor (5 convs 64-192-384-256-256 at width 64), sized for small images.

    AlexNet's 11×11/stride-4 first layer would destroy 28×28 inputs, so the first two layers use 5×5
    kernels at stride 1 with max-pooling; for inputs over 64 px extra stride-2 pooling keeps the cost bounded.
    """
    w = [width, width * 3, width * 6, width * 4, width * 4]
    pre: list[nn.Module] = []
    size = image_size
    while size > 64:
        pre.append(nn.MaxPool2d(2, ceil_mode=True))
        size = (size + 1) // 2
    layers = pre + [
        nn.Conv2d(channels, w[0], 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(w[0], w[1], 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(w[1], w[2], 3, padding=1), nn.ReLU(),
        nn.Conv2d(w[2], w[3], 3, padding=1), nn.ReLU(),
        nn.Conv2d(w[3], w[4], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Flatten(),
    ]
    for _ in range(3):
        size = (size + 1) // 2
    return nn.Sequential(*layers), w[4] * size * size


BACKBONES = {"small": small_features, "alexnet": alexnet_features}


class ICSClassifier(nn.Module):
    """Feature extractor → dense → latent z → one unit. `forward` returns the logit; sigmoid = P(abnormal)."""

    def __init__(self, channels: int, image_size: int, backbone: str = "small", width: int = 32,
                 hidden_dim: int = 256, latent_dim: int = 128):
        super().__init__()
        backbone = "small" if backbone == "auto" else backbone  # "auto" resolves to small for global models
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose from {sorted(BACKBONES)}")
        self.normalize = Normalize(channels)
        self.features, n_feat = BACKBONES[backbone](channels, image_size, width)
        act = nn.ReLU() if backbone == "alexnet" else nn.LeakyReLU(0.2)
        self.to_latent = nn.Sequential(nn.Linear(n_feat, hidden_dim), act, nn.Linear(hidden_dim, latent_dim))
        self.output = nn.Linear(latent_dim, 1)
        # Self-supervised head (which of 4 rotations?); trained only when the config asks for it.
        self.rotation_head = nn.Linear(n_feat, 4)
        # Gaussian model of z on the normal training images (set after training; for the "maha" score).
        self.register_buffer("z_mean", torch.zeros(latent_dim))
        self.register_buffer("z_precision", torch.eye(latent_dim))
        self.register_buffer("rotation_pick", torch.eye(4).view(4, 1, 4))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.features(self.normalize(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.embed(x))[:, 0]

    def rotation_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.rotation_head(self.features(self.normalize(x)))

    def rotation_surprise(self, x: torch.Tensor) -> torch.Tensor:
        """−Σ_k log P(rotation k | x rotated by k·90°): low for familiar content, high for the unfamiliar."""
        return self.scores(x, ("rot",))["rot"]

    def mahalanobis(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores(x, ("maha",))["maha"]

    def scores(self, x: torch.Tensor, parts: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """The classifier's score components ("ics" logit, "rot" surprise, "maha" distance) from one pass.

        With "rot", the batch goes through the extractor once in each of 4 rotations; the 0° copy also
        feeds z, so asking for all three costs 4 passes, not 6.
        """
        if not parts:
            return {}
        n = x.shape[0]
        images = rotations4(x) if "rot" in parts else x
        h = self.features(self.normalize(images))
        out: dict[str, torch.Tensor] = {}
        if "rot" in parts:
            log_p = torch.log_softmax(self.rotation_head(h), dim=1).view(4, n, 4)
            out["rot"] = -(log_p * self.rotation_pick).sum(dim=(0, 2))  # picks log_p[k, i, k]; no gather needed
        if "ics" in parts or "maha" in parts:
            z = self.to_latent(h[:n])
            if "ics" in parts:
                out["ics"] = self.output(z)[:, 0]
            if "maha" in parts:
                d = z - self.z_mean
                out["maha"] = ((d @ self.z_precision) * d).sum(1).clamp_min(0).sqrt()
        return out


def signed_log1p(z: torch.Tensor) -> torch.Tensor:
    """sign(z)·log(1 + |z|): identity-like near 0, logarithmic far out (keeps strong anomalies ranked)."""
    return torch.sign(z) * torch.log1p(torch.abs(z))


class FusionBuffers(nn.Module):
    """The fitted fusion's numbers as buffers (saved with the weights; constants of the exported graph) and the one
    standardised, weighted sum over them, shared by the global scorer (scorer.AnomalyScorer) and the local one
    (local.LocalScorer): per component a centre, a spread and a weight; one offset. Fitted in fusion.py."""

    def register_fusion(self, parts: tuple[str, ...], fusion: dict[str, float], default_weight: float) -> None:
        for part in parts:
            self.register_buffer(f"{part}_center", torch.tensor(float(fusion.get(f"{part}_center", 0.0))))
            self.register_buffer(f"{part}_scale", torch.tensor(float(fusion.get(f"{part}_scale", 1.0))))
            self.register_buffer(f"{part}_weight", torch.tensor(float(fusion.get(f"{part}_weight", default_weight))))
        self.register_buffer("offset", torch.tensor(float(fusion.get("offset", 0.0))))

    def standardised(self, part: str, value: torch.Tensor, compress: bool = True) -> torch.Tensor:
        """(value − centre) / spread, through the signed log when `compress`."""
        z = (value - getattr(self, f"{part}_center")) / getattr(self, f"{part}_scale")
        return signed_log1p(z) if compress else z

    def weighted_sum(self, values: dict[str, torch.Tensor], parts, compress: bool = True):
        """Σ weight · standardised value over `parts` (0 for none)."""
        return sum(getattr(self, f"{p}_weight") * self.standardised(p, values[p], compress) for p in parts)


def rotations4(x: torch.Tensor) -> torch.Tensor:
    """The batch shown at 0°, 90°, 180°, 270° (stacked in that order along the batch axis)."""
    return torch.cat([x, x.flip(3).transpose(2, 3), x.flip(2).flip(3), x.transpose(2, 3).flip(3)])  # = torch.rot90


class DistanceHead(nn.Module):
    """Training-only: dist(z_i, z_j) = sigmoid(w·(z_i − z_j) + b); `forward` returns the logit."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.dense = nn.Linear(latent_dim, 1)

    def forward(self, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
        return self.dense(z_i - z_j)[..., 0]


class SymmetricDistanceHead(nn.Module):
    """dist(z_i, z_j) = sigmoid(w·|z_i − z_j| + b). The paper's head on (z_i − z_j) is antisymmetric: a pair and
    its swap get logits of opposite sign, so closeness and dispersion both sit at ln 2 and cannot act. On |·|
    both losses can be met (near pairs → small, far pairs → large)."""

    def __init__(self, latent: int):
        super().__init__()
        self.dense = nn.Linear(latent, 1)

    def forward(self, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
        return self.dense((z_i - z_j).abs())[..., 0]

    def pairwise(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        """forward for every pair (a_i, b_j): (A, D), (B, D) → (A, B), without the (A, B, D) tensor of |z_i − z_j|.

        Σ_k w_k |a_ik − b_jk| = L1(a·w⁺, b·w⁺) − L1(a·w⁻, b·w⁻) with w⁺ = max(w, 0), w⁻ = max(−w, 0): two
        torch.cdist(p=1) calls. Same values and gradients as forward (to float rounding; tests/test_models.py),
        ~4x faster on the CPU (256 × 256 pairs of 64-d: 12 vs 47 ms forward + backward, 1 thread), which was
        most of the ICS head's training time."""
        w = self.dense.weight[0]
        pos, neg = w.clamp_min(0.0), (-w).clamp_min(0.0)
        return torch.cdist(z_a * pos, z_b * pos, p=1) - torch.cdist(z_a * neg, z_b * neg, p=1) + self.dense.bias


class ConvAutoencoder(nn.Module):
    """Bottleneck autoencoder for the split: stride-2 conv encoder, dense code, mirrored transposed convs.

    The decoder asks each transposed conv for the encoder's exact sizes, so odd sizes (28 → 14 → 7 → 4)
    come back exactly. Output is a sigmoid, in [0, 1] like the input, so SSIM uses data_range = 1.
    """

    def __init__(self, channels: int, image_size: int, width: int = 32, code_dim: int = 64):
        super().__init__()
        n = n_halvings(image_size)
        widths = [width * min(2**i, 4) for i in range(n)]
        self.sizes = [image_size]
        for _ in range(n):
            self.sizes.append((self.sizes[-1] + 1) // 2)
        self.encoder = nn.ModuleList()
        c_in = channels
        for c_out in widths:
            self.encoder.append(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1))
            c_in = c_out
        self.code_shape = (c_in, self.sizes[-1], self.sizes[-1])
        flat = c_in * self.sizes[-1] ** 2
        self.to_code = nn.Linear(flat, code_dim)
        self.from_code = nn.Linear(code_dim, flat)
        self.decoder = nn.ModuleList()
        for i in reversed(range(n)):
            c_out = channels if i == 0 else widths[i - 1]
            self.decoder.append(nn.ConvTranspose2d(widths[i], c_out, 3, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv in self.encoder:
            h = F.leaky_relu(conv(h), 0.2)
        h = self.from_code(self.to_code(h.flatten(1))).view(-1, *self.code_shape)
        n = len(self.decoder)
        for k, deconv in enumerate(self.decoder):
            size = self.sizes[n - 1 - k]
            h = deconv(h, output_size=[size, size])
            h = torch.sigmoid(h) if k == n - 1 else F.leaky_relu(h, 0.2)
        return h


def conv_weights(*modules: nn.Module) -> list[torch.Tensor]:
    """Conv kernels only: the paper puts L2 on conv layers, not on biases or dense layers."""
    return [m.weight for mod in modules for m in mod.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
