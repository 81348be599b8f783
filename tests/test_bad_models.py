"""Issue 5, hardening: broken, foreign and tampered models fail with exit 3 and one line; pickles never run."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import SAMPLE, run_cli, run_cli_here
from icsscan.errors import ModelError

INCOMING = SAMPLE / "incoming"


def one_line_error(r) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("icsscan: error: "), lines[0]
    return lines[0]


def foreign_onnx(path: Path) -> Path:
    """A valid ONNX model (Identity, 1x28x28 -> same) with no icsscan metadata."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 28, 28])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, 28, 28])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "foreign", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def with_metadata(src: Path, dst: Path, **changes: str) -> Path:
    model = onnx.load(str(src))
    for entry in model.metadata_props:
        if entry.key in changes:
            entry.value = changes[entry.key]
    onnx.save(model, str(dst))
    return dst


def make_bad_model(kind: str, tiny_onnx: Path, tmp: Path) -> Path:
    blob = tiny_onnx.read_bytes()
    if kind == "truncated":
        (tmp / "trunc.onnx").write_bytes(blob[: len(blob) // 3])
        return tmp / "trunc.onnx"
    if kind == "random":
        (tmp / "bundle").mkdir()
        (tmp / "bundle" / "model.onnx").write_bytes(np.random.default_rng(0).bytes(5000))
        return tmp / "bundle"
    if kind == "empty":
        (tmp / "empty.onnx").write_bytes(b"")
        return tmp / "empty.onnx"
    if kind == "no-metadata":
        return foreign_onnx(tmp / "foreign.onnx")
    if kind == "size-mismatch":
        return with_metadata(tiny_onnx, tmp / "mismatch.onnx", image_size="32")
    if kind == "channels-mismatch":
        return with_metadata(tiny_onnx, tmp / "channels.onnx", channels="3")
    if kind == "malformed-metadata":
        return with_metadata(tiny_onnx, tmp / "malformed.onnx", calibration="{not json")
    if kind == "missing":
        return tmp / "no-such-model"
    if kind == "folder-without-onnx":
        (tmp / "bundle").mkdir()
        (tmp / "bundle" / "config.json").write_text("{}")
        return tmp / "bundle"
    if kind == "a-folder-named-onnx":
        (tmp / "model.onnx").mkdir()
        return tmp / "model.onnx"
    raise ValueError(kind)


@pytest.mark.parametrize("kind,words", [
    ("truncated", "not a valid ONNX model"),
    ("random", "not a valid ONNX model"),
    ("empty", "not a valid ONNX model"),
    ("no-metadata", "no icsscan metadata"),
    ("size-mismatch", "disagrees with metadata"),
    ("channels-mismatch", "disagrees with metadata"),
    ("malformed-metadata", "malformed"),
    ("missing", "model not found"),
    ("folder-without-onnx", "no model.onnx"),
    ("a-folder-named-onnx", "no model.onnx"),
])
def test_scan_with_a_bad_model_exits_3_with_one_line(kind, words, tiny_onnx, tmp_path):
    model = make_bad_model(kind, tiny_onnx, tmp_path)
    r = run_cli("scan", INCOMING, "--model", model, "--out", tmp_path / "report")
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert words in one_line_error(r)
    assert not (tmp_path / "report").exists(), "a report was started with an unusable model"


# --------------------------------------------------------------------------------------------- bundles

def bundle_copy(tiny_bundle: Path, tmp: Path) -> Path:
    dst = tmp / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


@pytest.mark.parametrize("missing", ["config.json", "classifier.pt", "autoencoder.pt", "calibration.json"])
def test_load_refuses_incomplete_bundle(missing, tiny_bundle, tmp_path):
    from icsscan import ICSDetector

    bundle = bundle_copy(tiny_bundle, tmp_path)
    (bundle / missing).unlink()
    with pytest.raises(ModelError, match=f"missing {missing}"):
        ICSDetector.load(bundle, device="cpu")


# `icsscan export` runs in this process (run_cli_here): a fresh one would spend ~7 s importing torch first.
def test_export_of_incomplete_bundle_exits_3(tiny_bundle, tmp_path):
    bundle = bundle_copy(tiny_bundle, tmp_path)
    (bundle / "classifier.pt").unlink()
    r = run_cli_here("export", bundle, "--output", tmp_path / "m.onnx")
    assert r.returncode == 3, r.stderr
    assert "classifier.pt" in one_line_error(r)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("name,content", [
    ("config.json", "{truncated"),
    ("config.json", '{"config": {"image_size": "abc", "channels": 1}, "created": "x"}'),
    ("config.json", '{"config": {"image_size": 2, "channels": 1}}'),
    ("config.json", '["not", "a", "dict"]'),
    ("calibration.json", '{"scores": "lots"}'),
    ("classifier.pt", "not a zip, not a pickle"),
    ("autoencoder.pt", ""),
    ("parity_inputs.npy", "garbage"),
])
def test_load_refuses_corrupt_bundle_files(name, content, tiny_bundle, tmp_path):
    from icsscan import ICSDetector

    bundle = bundle_copy(tiny_bundle, tmp_path)
    (bundle / name).write_text(content)
    with pytest.raises(ModelError) as info:
        ICSDetector.load(bundle, device="cpu")
    assert name in str(info.value) and "\n" not in str(info.value)


def test_load_refuses_weights_of_another_shape(tiny_bundle, tmp_path):
    import torch

    from icsscan import ICSDetector

    bundle = bundle_copy(tiny_bundle, tmp_path)
    torch.save({"weight": torch.zeros(3)}, bundle / "classifier.pt")
    with pytest.raises(ModelError, match="do not match"):
        ICSDetector.load(bundle, device="cpu")
    np.save(bundle / "parity_inputs.npy", np.zeros((2, 5), np.float32))
    torch.save(torch.load(tiny_bundle / "classifier.pt", weights_only=True), bundle / "classifier.pt")
    with pytest.raises(ModelError, match="parity sample"):
        ICSDetector.load(bundle, device="cpu")


# --------------------------------------------------------------------------------------------- pickles

class Evil:
    """Unpickling this calls open(marker, 'w'): the marker file appears if any code path runs the pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(kind: str, target: Path, marker: Path) -> None:
    if kind == "raw-pickle":
        target.write_bytes(pickle.dumps(Evil(marker)))
    elif kind == "torch-zip":
        import torch

        torch.save({"weight": Evil(marker)}, target)  # a real torch zip whose data.pkl runs code
    elif kind == "npy-object":
        np.save(target, np.array([Evil(marker), 1], dtype=object), allow_pickle=True)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("name,kind", [
    ("classifier.pt", "raw-pickle"),
    ("classifier.pt", "torch-zip"),
    ("autoencoder.pt", "raw-pickle"),
    ("autoencoder.pt", "torch-zip"),
    ("parity_inputs.npy", "npy-object"),
])
def test_load_never_runs_a_planted_pickle(name, kind, tiny_bundle, tmp_path):
    from icsscan import ICSDetector

    bundle = bundle_copy(tiny_bundle, tmp_path)
    marker = tmp_path / "PWNED"
    plant(kind, bundle / name, marker)
    with pytest.raises(ModelError):
        ICSDetector.load(bundle, device="cpu")
    assert not marker.exists(), "ICSDetector.load executed pickled code"


@pytest.mark.parametrize("name,kind", [("classifier.pt", "torch-zip"), ("parity_inputs.npy", "npy-object")])
def test_cli_never_runs_a_planted_pickle(name, kind, tiny_bundle, tmp_path):
    bundle = bundle_copy(tiny_bundle, tmp_path)
    marker = tmp_path / "PWNED"
    plant(kind, bundle / name, marker)
    r = run_cli_here("export", bundle, "--output", tmp_path / "out.onnx")
    assert r.returncode == 3, r.stderr
    assert name in one_line_error(r)
    assert not marker.exists() and not (tmp_path / "out.onnx").exists()
    # scan reads only model.onnx: the tampered weights are never touched, and nothing runs
    r = run_cli("scan", INCOMING, "--model", bundle, "--out", tmp_path / "report")
    assert r.returncode == 0, r.stderr
    assert not marker.exists()


@pytest.mark.parametrize("key,value", [
    ("fusion", "garbage"),
    ("fusion", {"ics_center": "not a number"}),
    ("fusion", ["a", "list"]),
    ("threshold", "high"),
    ("threshold", None),
    ("threshold", "nan"),
])
def test_malformed_fusion_or_threshold_is_a_model_error(key, value, tiny_bundle, tmp_path):
    """A hand-edited fusion/threshold in config.json: exit 3 with one line naming the file (was 4)."""
    bundle = bundle_copy(tiny_bundle, tmp_path)
    meta = json.loads((bundle / "config.json").read_text())
    meta[key] = value
    (bundle / "config.json").write_text(json.dumps(meta))
    r = run_cli_here("export", bundle, "--output", tmp_path / "m.onnx")
    assert r.returncode == 3, r.stderr
    line = one_line_error(r)
    assert "config.json" in line and "fusion or threshold" in line
