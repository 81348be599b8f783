"""One-class Deep SVDD (Ruff et al., "Deep One-Class Classification", ICML 2018), written for this benchmark.

Follows the paper and its published PyTorch setup:
  * preprocessing: global contrast normalisation (l1) per image, then min-max scaling to [0, 1] with the
    minimum and maximum computed on the (GCN'd) training images of the normal class; the test set reuses them;
  * LeNet-type CNNs: bias-free layers, BatchNorm without affine parameters, LeakyReLU, 2×2 max-pooling;
    MNIST / Fashion-MNIST: 8 and 4 filters of 5×5, a 32-d representation; CIFAR-10: 32/64/128 filters, 128-d;
  * pretraining: a convolutional autoencoder with that encoder (squared reconstruction error), whose encoder
    weights initialise the Deep SVDD network;
  * center c = mean representation of the training images after the initial forward pass (coordinates too
    close to 0 pushed to ±eps, eps = 0.1, as in the reference code, so the trivial all-zero solution is avoided);
  * one-class objective: mean ||φ(x) − c||² + weight decay (Adam's L2, 0.5e-6), Adam lr 1e-4, batch 200,
    learning rate ×0.1 at a milestone; anomaly score ||φ(x) − c||².
Published epochs: AE 250 (MNIST) / 350 (CIFAR-10), Deep SVDD 150 with the milestone at 50. The benchmark may
run fewer (see `DSVDDConfig`), which it records.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class DSVDDConfig:
    ae_epochs: int = 250
    epochs: int = 150
    lr: float = 1e-4
    ae_lr: float = 1e-4
    weight_decay: float = 0.5e-6
    ae_weight_decay: float = 0.5e-6
    batch_size: int = 200
    milestone_fraction: float = 1 / 3   # Deep SVDD: lr × 0.1 after 50 of 150 epochs; scaled with the epochs
    ae_milestone_fraction: float = 0.6  # AE: 250 epochs, milestone 150 in the reference runs
    eps: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------- preprocessing

def global_contrast_normalization(x: np.ndarray) -> np.ndarray:
    """Per image: subtract its mean, divide by its mean absolute deviation (GCN with l1 scale)."""
    x = x.astype(np.float32)
    axes = tuple(range(1, x.ndim))
    x = x - x.mean(axis=axes, keepdims=True)
    scale = np.abs(x).mean(axis=axes, keepdims=True)
    return x / np.maximum(scale, 1e-8)


def to_nchw(images: np.ndarray) -> np.ndarray:
    """uint8 (N,H,W) or (N,H,W,3) → float32 (N,C,H,W) in [0, 1]."""
    x = images.astype(np.float32) / 255.0
    return x[:, None] if x.ndim == 3 else np.moveaxis(x, -1, 1).copy()


class Preprocessor:
    """GCN(l1) + min-max, the min and max fitted on the normal training images only."""

    def fit(self, train: np.ndarray) -> "Preprocessor":
        g = global_contrast_normalization(to_nchw(train))
        self.min_, self.max_ = float(g.min()), float(g.max())
        return self

    def transform(self, images: np.ndarray) -> np.ndarray:
        g = global_contrast_normalization(to_nchw(images))
        return (g - self.min_) / (self.max_ - self.min_)


# --------------------------------------------------------------------------------------------- networks

def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-4, affine=False)


class LeNetMNIST(nn.Module):
    rep_dim = 32

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 5, bias=False, padding=2), _bn(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 4, 5, bias=False, padding=2), _bn(4)
        self.fc1 = nn.Linear(4 * 7 * 7, self.rep_dim, bias=False)

    def forward(self, x):
        x = F.max_pool2d(F.leaky_relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.leaky_relu(self.bn2(self.conv2(x))), 2)
        return self.fc1(x.flatten(1))


class LeNetMNISTAutoencoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = LeNetMNIST()
        self.deconv1, self.bn3 = nn.ConvTranspose2d(2, 4, 5, bias=False, padding=2), _bn(4)
        self.deconv2, self.bn4 = nn.ConvTranspose2d(4, 8, 5, bias=False, padding=3), _bn(8)
        self.deconv3 = nn.ConvTranspose2d(8, 1, 5, bias=False, padding=2)

    def forward(self, x):
        z = self.encoder(x).view(len(x), 2, 4, 4)                     # 32 = 2 × 4 × 4
        h = F.interpolate(F.leaky_relu(z), scale_factor=2)             # 8×8
        h = F.interpolate(F.leaky_relu(self.bn3(self.deconv1(h))), scale_factor=2)  # 16×16
        h = F.interpolate(F.leaky_relu(self.bn4(self.deconv2(h))), scale_factor=2)  # 14 → 28
        return torch.sigmoid(self.deconv3(h))


class LeNetCIFAR(nn.Module):
    rep_dim = 128

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 32, 5, bias=False, padding=2), _bn(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 64, 5, bias=False, padding=2), _bn(64)
        self.conv3, self.bn3 = nn.Conv2d(64, 128, 5, bias=False, padding=2), _bn(128)
        self.fc1 = nn.Linear(128 * 4 * 4, self.rep_dim, bias=False)
        for conv in (self.conv1, self.conv2, self.conv3):
            nn.init.xavier_uniform_(conv.weight, gain=nn.init.calculate_gain("leaky_relu"))

    def forward(self, x):
        x = F.max_pool2d(F.leaky_relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.leaky_relu(self.bn2(self.conv2(x))), 2)
        x = F.max_pool2d(F.leaky_relu(self.bn3(self.conv3(x))), 2)
        return self.fc1(x.flatten(1))


class LeNetCIFARAutoencoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = LeNetCIFAR()
        self.bn_rep = nn.BatchNorm1d(128, eps=1e-4, affine=False)
        self.deconv1, self.bn4 = nn.ConvTranspose2d(8, 128, 5, bias=False, padding=2), _bn(128)
        self.deconv2, self.bn5 = nn.ConvTranspose2d(128, 64, 5, bias=False, padding=2), _bn(64)
        self.deconv3, self.bn6 = nn.ConvTranspose2d(64, 32, 5, bias=False, padding=2), _bn(32)
        self.deconv4 = nn.ConvTranspose2d(32, 3, 5, bias=False, padding=2)
        for deconv in (self.deconv1, self.deconv2, self.deconv3, self.deconv4):
            nn.init.xavier_uniform_(deconv.weight, gain=nn.init.calculate_gain("leaky_relu"))

    def forward(self, x):
        z = self.bn_rep(self.encoder(x)).view(len(x), 8, 4, 4)        # 128 = 8 × 4 × 4
        h = F.leaky_relu(z)
        h = F.interpolate(F.leaky_relu(self.bn4(self.deconv1(h))), scale_factor=2)  # 8
        h = F.interpolate(F.leaky_relu(self.bn5(self.deconv2(h))), scale_factor=2)  # 16
        h = F.interpolate(F.leaky_relu(self.bn6(self.deconv3(h))), scale_factor=2)  # 32
        return torch.sigmoid(self.deconv4(h))


def networks(channels: int) -> tuple[nn.Module, nn.Module]:
    """(Deep SVDD network, autoencoder) for 1-channel 28×28 or 3-channel 32×32 images."""
    if channels == 1:
        return LeNetMNIST(), LeNetMNISTAutoencoder()
    return LeNetCIFAR(), LeNetCIFARAutoencoder()


# --------------------------------------------------------------------------------------------- training

def _loader(x: torch.Tensor, batch_size: int, gen: torch.Generator):
    order = torch.randperm(len(x), generator=gen)
    for i in range(0, len(x), batch_size):
        yield x[order[i:i + batch_size]]


@torch.no_grad()
def _embed(net: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 1000) -> torch.Tensor:
    net.eval()
    return torch.cat([net(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


class DeepSVDD:
    """fit(uint8 images of the normal class) → score_samples(uint8 images): ||φ(x) − c||²."""

    def __init__(self, config: DSVDDConfig | None = None, seed: int = 0, device: str = "cpu"):
        self.config = config or DSVDDConfig()
        self.seed = seed
        self.device = torch.device(device)

    def fit(self, images: np.ndarray) -> "DeepSVDD":
        cfg, dev = self.config, self.device
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        self.pre_ = Preprocessor().fit(images)
        x = torch.from_numpy(self.pre_.transform(images))
        net, ae = networks(x.shape[1])
        net, ae = net.to(dev), ae.to(dev)

        # 1. autoencoder pretraining (squared error summed over pixels, averaged over the batch)
        opt = torch.optim.Adam(ae.parameters(), lr=cfg.ae_lr, weight_decay=cfg.ae_weight_decay)
        milestone = max(1, int(round(cfg.ae_epochs * cfg.ae_milestone_fraction)))
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[milestone], gamma=0.1)
        self.ae_losses_ = []
        for _ in range(cfg.ae_epochs):
            ae.train()
            total = 0.0
            for xb in _loader(x, cfg.batch_size, gen):
                xb = xb.to(dev)
                loss = ((ae(xb) - xb) ** 2).flatten(1).sum(1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(xb)
            sched.step()
            self.ae_losses_.append(total / len(x))
        net.load_state_dict(ae.encoder.state_dict())

        # 2. center c from the initial forward pass
        c = _embed(net, x, dev).mean(0)
        c[(c.abs() < cfg.eps) & (c < 0)] = -cfg.eps
        c[(c.abs() < cfg.eps) & (c >= 0)] = cfg.eps
        self.c_ = c.to(dev)

        # 3. one-class Deep SVDD objective
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        milestone = max(1, int(round(cfg.epochs * cfg.milestone_fraction)))
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[milestone], gamma=0.1)
        self.losses_ = []
        for _ in range(cfg.epochs):
            net.train()
            total = 0.0
            for xb in _loader(x, cfg.batch_size, gen):
                loss = ((net(xb.to(dev)) - self.c_) ** 2).sum(1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(xb)
            sched.step()
            self.losses_.append(total / len(x))
        self.net_ = net.eval()
        return self

    def score_samples(self, images: np.ndarray) -> np.ndarray:
        z = _embed(self.net_, torch.from_numpy(self.pre_.transform(images)), self.device)
        return ((z - self.c_.cpu()) ** 2).sum(1).double().numpy()
