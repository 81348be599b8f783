"""ONNX tracing of torch modules and the onnxruntime runner that fitting uses for frozen networks.

`trace_onnx` is the one way icsscan traces a module (export.py's model.onnx, fitting's backbone runners): the
TorchScript exporter (dynamo=False: no onnxscript needed) with TF "same" pads fixed to constants that
onnxruntime folds into the convolutions. `onnx_cpu_runner` opens a traced frozen module in onnxruntime and
checks it against PyTorch first; `onnx_runtime` runs a local model's backbone through such a runner while
fitting (~3x eager PyTorch on the CPU).
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from .backbones import PatchFeatures


@contextmanager
def onnx_runtime(features: PatchFeatures, example: torch.Tensor):
    """Within this block, `features` on CPU inputs shaped like `example` runs in onnxruntime, not PyTorch eager.

    Why: fitting a local model pushes every training image (and the synthetic-defect copies and held-out
    normals) through the frozen backbone once; onnxruntime runs this network ~3x faster than eager PyTorch on
    the CPU (304 px, batch 8, 2 threads: 45 vs 15 images/s). The graph is traced for the example's size (the
    TF "same" padding is fixed per size), so other sizes, GPU tensors and any export failure fall back to
    PyTorch; a graph that disagrees with PyTorch on the example is never used. A block inside another for the
    same size keeps the outer one's graph (and leaves it in place when it ends)."""
    current = features.__dict__.get("_runtime")
    if current is not None and current[0] == tuple(example.shape[1:]):  # inside a block for this size already
        yield True
        return
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
    if "timm" not in sys.modules:  # a module built without timm holds none of its layers; importing it costs ~4 s
        yield
        return
    from timm.layers.conv2d_same import Conv2dSame

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
