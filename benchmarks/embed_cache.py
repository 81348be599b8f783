"""Embeddings of a whole dataset under icsscan's whole-object pretrained embedding, computed once and cached.

The backbone is frozen, so a dataset's embeddings do not depend on the class, the seed or the head trained on
them: `embed_table1.py` reuses them across all 10 classes × 5 seeds. They are computed by the same graph
`icsscan scan` runs (icsscan.embed.ImageEmbedding exported to ONNX, run by onnxruntime on the CPU: 1.6× the
images/s of PyTorch eager here), one thread per process.

    python benchmarks/embed_cache.py --datasets mnist,cifar10 --size 160
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import paper_eval as pe  # noqa: E402


def session_for(size: int, threads: int):
    import onnxruntime as ort
    import torch

    from icsscan.embed import ImageEmbedding

    path = pe.cache_dir() / f"embedding-{size}-constpad.onnx"
    if not path.exists():
        import onnx

        from icsscan.tracing import trace_onnx

        # traced as icsscan's export does: constant pads that onnxruntime folds into the convolutions
        graph = trace_onnx(ImageEmbedding(size).eval(), torch.rand(2, 3, size, size), input_names=["x"],
                           output_names=["e"], dynamic_axes={"x": {0: "n"}, "e": {0: "n"}})
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        onnx.save(graph, str(tmp))
        os.replace(tmp, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def embed_array(session, images: np.ndarray, size: int, batch: int = 64, label: str = "") -> np.ndarray:
    """uint8 (N,H,W) or (N,H,W,3) → float32 (N, D), resized to size×size inside the torch glue first
    (the exported graph takes size×size input)."""
    import torch
    from torch.nn import functional as F

    out, t = [], time.time()
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).float().div_(255)
        x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x[:, None].expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        out.append(session.run(None, {"x": x.contiguous().numpy()})[0])
        if (i // batch) % 50 == 0:
            done = i + len(x)
            print(f"{label} {done}/{len(images)} {done / (time.time() - t):.0f} img/s", flush=True)
    return np.concatenate(out).astype(np.float32)


def cached_embeddings(name: str, size: int, threads: int = 1) -> dict[str, np.ndarray]:
    ds = pe.load_dataset(name)
    tag = "jpeg" if ds.source == pe.CIFAR_JPEG else "orig"
    path = pe.cache_dir() / f"embed-{name}-{tag}-{size}.npz"
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    session = session_for(size, threads)
    t = time.time()
    e_test = embed_array(session, ds.x_test, size, label=f"{name} test")
    e_train = embed_array(session, ds.x_train, size, label=f"{name} train")
    seconds = time.time() - t
    out = {"train": e_train, "test": e_test, "seconds": np.array(seconds),
           "images_per_s": np.array((len(e_train) + len(e_test)) / seconds)}
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="mnist,fashion_mnist,cifar10")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    for name in args.datasets.split(","):
        got = cached_embeddings(name, args.size, args.threads)
        print(f"{name}: train {got['train'].shape} test {got['test'].shape} "
              f"{float(got['images_per_s']):.0f} img/s ({float(got['seconds']):.0f} s)", flush=True)


if __name__ == "__main__":
    main()
