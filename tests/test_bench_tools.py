"""The benchmark harness's plumbing: data packs for a GPU machine round-trip exactly; raw files merge by cell key."""
from __future__ import annotations

import csv
import struct
import sys
from pathlib import Path

import numpy as np
from PIL import Image

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import device_pack  # noqa: E402
import paper_eval as pe  # noqa: E402
import table1  # noqa: E402


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as in the MNIST distribution: magic (ubyte, ndim), big-endian dims, then the bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def tiny_data_root(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for folder in device_pack.DIGIT_FOLDERS.values():
        raw = root / folder / "raw"
        raw.mkdir(parents=True)
        for split, n in (("train", 30), ("t10k", 20)):
            write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
            write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
    for split in ("train", "test"):
        for name in pe.CLASS_NAMES["cifar10"]:
            folder = root / "CIFAR10-jpeg" / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:04d}.jpg")
    return root


def test_device_pack_round_trip_gives_identical_arrays(tmp_path, monkeypatch):
    monkeypatch.setenv("ICSSCAN_BENCH_CACHE", str(tmp_path / "cache"))
    root = tiny_data_root(tmp_path / "data")
    monkeypatch.setattr(device_pack, "PACK", tmp_path / "pack")
    device_pack.pack(root)
    assert (tmp_path / "pack" / "cifar" / "cifar10-jpeg.blob").stat().st_size > 0
    assert device_pack.unpack(tmp_path / "rebuilt", tmp_path / "pack") == 0
    for name in ("mnist", "fashion_mnist", "cifar10"):
        a, b = pe.load_dataset(name, root), pe.load_dataset(name, tmp_path / "rebuilt")
        assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    # A JPEG changed on the way is caught by the recorded digests (rc 1), not silently used.
    blob = tmp_path / "pack" / "cifar" / "cifar10-jpeg.blob"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert device_pack.unpack(tmp_path / "rebuilt2", tmp_path / "pack") == 1


def test_unpack_without_packs_is_a_clear_error(tmp_path, capsys):
    assert device_pack.unpack(tmp_path / "out", tmp_path / "nothing") == 2
    assert "no pack under" in capsys.readouterr().err


def raw_row(cls: int, method: str, auc: str, config_hash: str = "abc") -> dict:
    return {"dataset": "mnist", "class_index": cls, "class_name": str(cls), "method": method, "seed": 0, "auc": auc,
            "iterations": "50", "device": "cuda", "seconds": "1.0", "data_source": "x", "config": "{}",
            "config_hash": config_hash, "rho": "", "note": "", "finished_utc": "t", "threads": "1"}


def test_merge_adds_only_cells_not_already_present(tmp_path):
    mine, theirs = tmp_path / "table1_raw.csv", tmp_path / "device_raw.csv"
    for path, rows in ((mine, [raw_row(0, "ICS", "90.0")]),
                       (theirs, [raw_row(0, "ICS", "11.0"), raw_row(1, "ICS", "80.0"),
                                 raw_row(0, "ICS", "70.0", config_hash="other")])):
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=table1.RAW_COLUMNS)
            w.writeheader()
            w.writerows(rows)
    table1.merge(mine, [str(theirs)])
    table1.merge(mine, [str(theirs)])   # idempotent
    rows = table1.read_rows(mine)
    assert [(r["class_index"], r["config_hash"], r["auc"]) for r in rows] == \
        [("0", "abc", "90.0"), ("1", "abc", "80.0"), ("0", "other", "70.0")]


def test_new_flags_parse():
    assert table1.parse_args(["--stop-after", "0.5"]).stop_after == 0.5
    assert table1.parse_args(["--merge", "a.csv", "--merge", "b.csv"]).merge == ["a.csv", "b.csv"]
    assert table1.parse_args([]).stop_after is None


def sweep_row(dataset: str, cls: int, rho: float, auc: float, score: str, source: str) -> dict:
    import json
    config = {"score": score, "rho": rho, "seed": 0, "channels": 3 if dataset == "cifar10" else 1}
    return {**raw_row(cls, "icsscan", f"{auc}"), "dataset": dataset, "rho": f"{rho:g}", "data_source": source,
            "config": json.dumps(config), "config_hash": f"{score}-{rho}-{dataset}"}


def test_rho_report_counts_only_the_current_sweep_and_names_each_source(tmp_path):
    rows = [sweep_row("mnist", 0, rho, 10.0, "old", "MNIST src") for rho in (0.05, 0.1)]   # an earlier default
    for ds, src in (("mnist", "MNIST src"), ("fashion_mnist", "Fashion src"), ("cifar10", "CIFAR src")):
        for cls in (0, 1):
            rows += [sweep_row(ds, cls, rho, 90.0 + cls + 10 * rho, "new", src) for rho in (0.05, 0.1)]
    rows.append(sweep_row("mnist", 2, 0.05, 50.0, "new", "MNIST src"))   # class 2 lacks ρ 10 %: not averaged
    with open(tmp_path / "rho_sweep_raw.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=table1.RAW_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    table1.rho_report(tmp_path)
    curve = table1.read_rows(tmp_path / "rho_sweep.csv")
    assert {(r["dataset"], r["data_source"]) for r in curve} == \
        {("mnist", "MNIST src"), ("fashion_mnist", "Fashion src"), ("cifar10", "CIFAR src")}
    mnist = {r["rho"]: r for r in curve if r["dataset"] == "mnist"}
    assert mnist["0.05"]["auc_mean"] == "91.00" and mnist["0.1"]["auc_mean"] == "91.50"   # old cells ignored
    assert mnist["0.1"]["classes"] == "0–1" and mnist["0.1"]["partial"] == "yes" and mnist["0.1"]["score"] == "new"
    assert (tmp_path / "rho_sweep.png").stat().st_size > 1000
    text = "\n".join(table1.rho_lines(tmp_path))
    assert "13 finished cells" in text and "2 cells of earlier configurations" in text
    assert "| MNIST | 0–1 | 0 | 91.00 | 91.50 |" in text


def test_interleaved_rho_sweep_covers_every_dataset_class_by_class():
    args = table1.parse_args(["--rho-sweep", "--interleave", "--classes", "0-1", "--seeds", "0", "--rhos", "0.05,0.2"])
    cells = table1.plan_cells(args, rho_sweep=True)
    assert [(c["dataset"], c["class_index"], c["rho"]) for c in cells[:8]] == [
        ("mnist", 0, 0.05), ("mnist", 0, 0.2), ("fashion_mnist", 0, 0.05), ("fashion_mnist", 0, 0.2),
        ("cifar10", 0, 0.05), ("cifar10", 0, 0.2), ("mnist", 1, 0.05), ("mnist", 1, 0.2)]
    assert len({c["key"] for c in cells}) == 12


def test_every_result_file_is_indexed_and_every_script_listed():
    """benchmarks/results/README.md names every result file; the project README names every benchmark script."""
    root = Path(__file__).resolve().parents[1]
    index = (root / "benchmarks" / "results" / "README.md").read_text()
    results = [p.name for p in (root / "benchmarks" / "results").iterdir() if p.is_file() and p.name != "README.md"]
    assert results and [n for n in results if f"`{n}`" not in index] == []
    readme = (root / "README.md").read_text()
    scripts = [p.name for p in (root / "benchmarks").iterdir() if p.suffix in (".py", ".sh")]
    assert scripts and [n for n in scripts if f"`{n}`" not in readme] == []
