"""The Table 1 harness's plumbing (benchmarks/table1.py): cells resume by config digest, raw files merge by cell
key, and the report is built from the raw rows (latest configuration per cell, population std, paper beside ours).
No dataset is read: the data loader is replaced by a tiny random one."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import table1  # noqa: E402


def raw_row(cls: int, method: str, auc: str, seed: int = 0, config_hash: str = "abc", finished: str = "t1",
            dataset: str = "mnist") -> dict:
    return {"dataset": dataset, "class_index": cls, "class_name": table1.CLASS_NAMES[dataset][cls], "method": method,
            "seed": seed, "auc": auc, "iterations": "50", "device": "cpu", "seconds": "2.0",
            "data_source": "torchvision MNIST (original IDX)", "config": "{}", "config_hash": config_hash, "rho": "",
            "note": "", "finished_utc": finished, "threads": "1"}


def write_raw(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=table1.RAW_COLUMNS)
        w.writeheader()
        w.writerows(rows)


def test_merge_adds_only_cells_not_already_present(tmp_path):
    mine, theirs = tmp_path / "table1_raw.csv", tmp_path / "device_raw.csv"
    write_raw(mine, [raw_row(0, "ICS", "90.0")])
    write_raw(theirs, [raw_row(0, "ICS", "11.0"), raw_row(1, "ICS", "80.0"), raw_row(0, "ICS", "70.0", config_hash="other")])
    assert table1.merge(mine, [theirs]) == 2
    assert table1.merge(mine, [theirs]) == 0   # idempotent
    rows = table1.read_raw(mine)
    assert [(r["class_index"], r["config_hash"], r["auc"]) for r in rows] == \
        [("0", "abc", "90.0"), ("1", "abc", "80.0"), ("0", "other", "70.0")]


def test_pixel_baselines_keep_the_digests_of_the_finished_cells():
    """The raw file's OCSVM and IF rows (since 2026-11-28) count as finished: the same planned config, same digest."""
    args = table1.parse_args(["--methods", "OCSVM,IF"])
    assert {c["method"]: c["config_hash"] for c in table1.plan_cells(args)} == {"OCSVM": "a7e435eff4",
                                                                                "IF": "ec4221779a"}
    assert table1.parse_args(["--methods", "OCSVM", "--set", "OCSVM.nu=0.1"]).overrides == {"OCSVM": {"nu": 0.1}}
    changed = table1.plan_cells(table1.parse_args(["--methods", "OCSVM", "--set", "OCSVM.nu=0.1"]))
    assert {c["config_hash"] for c in changed} != {"a7e435eff4"}


def test_cells_are_seed_major_and_deterministic_methods_run_one_seed():
    args = table1.parse_args(["--methods", "OCSVM,IF", "--datasets", "mnist,cifar10", "--classes", "0-1",
                              "--seeds", "0-2"])
    cells = [(c["method"], c["dataset"], c["class_index"], c["seed"]) for c in table1.plan_cells(args)]
    assert len(cells) == 4 + 3 * 4 and cells[0] == ("OCSVM", "mnist", 0, 0)
    assert [c for c in cells if c[0] == "OCSVM"] == [("OCSVM", d, k, 0) for d in ("mnist", "cifar10") for k in (0, 1)]
    assert [c[3] for c in cells if c[0] == "IF"] == [0] * 4 + [1] * 4 + [2] * 4


def test_bad_arguments_are_refused():
    for argv in (["--methods", "DSVDD"], ["--classes", "0-10"], ["--set", "nope"], ["--set", "DSVDD.x=1"]):
        with pytest.raises(SystemExit):
            table1.parse_args(argv)


def tiny_dataset(name: str, root) -> table1.Dataset:
    rng = np.random.default_rng(0)
    images = lambda n: rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)   # noqa: E731
    return table1.Dataset(name, images(60), np.arange(60) % 3, images(30), np.arange(30) % 3, "tiny random")


def test_a_run_appends_each_cell_and_a_rerun_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(table1, "load_dataset", tiny_dataset)
    monkeypatch.setattr(table1, "use_threads", lambda n: None)   # torch's import is slow and not under test
    argv = ["--datasets", "mnist", "--classes", "0-1", "--methods", "IF", "--seeds", "0-1",
            "--results-dir", str(tmp_path), "--no-report"]
    assert table1.main(argv) == 0
    rows = table1.read_raw(tmp_path / "table1_raw.csv")
    assert [(r["class_index"], r["seed"]) for r in rows] == [("0", "0"), ("1", "0"), ("0", "1"), ("1", "1")]
    assert all(0 <= float(r["auc"]) <= 100 and r["config_hash"] == "ec4221779a" for r in rows)
    assert '"command":"python benchmarks/' in rows[0]["config"] and '"versions"' in rows[0]["config"]
    assert table1.main(argv) == 0   # everything finished: nothing runs, nothing is appended
    assert len(table1.read_raw(tmp_path / "table1_raw.csv")) == 4
    assert "0 cells to run (4 finished" in capsys.readouterr().err
    # a subsampled (smoke) run is another configuration: it runs, and says so in the row
    assert table1.main(argv[:-3] + ["--seeds", "0", "--max-test", "12", "--results-dir", str(tmp_path), "--no-report"]) == 0
    smoke = table1.read_raw(tmp_path / "table1_raw.csv")[4:]
    assert len(smoke) == 2 and smoke[0]["config_hash"] != "ec4221779a" and "max_test" in smoke[0]["note"]


def test_report_from_a_tiny_raw_file(tmp_path, monkeypatch):
    paper = tmp_path / "paper.csv"
    with open(paper, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["dataset", "class_index", "IF", "ICS"])
        w.writeheader()
        w.writerows([{"dataset": "mnist", "class_index": c, "IF": 80.0 + c, "ICS": 90.0} for c in range(10)])
    monkeypatch.setattr(table1, "PAPER_CSV", paper)
    write_raw(tmp_path / "table1_raw.csv", [
        raw_row(0, "IF", "50.0", config_hash="old", finished="2026-01-01"),   # superseded by the later config
        raw_row(0, "IF", "84.0", seed=0, config_hash="new", finished="2026-02-01"),
        raw_row(0, "IF", "86.0", seed=1, config_hash="new", finished="2026-02-01"),
        raw_row(1, "IF", "81.0", config_hash="new", finished="2026-02-01"),
        raw_row(0, "icsscan_eknn", "93.0", finished="2026-02-01")])
    write_raw(tmp_path / "table1_embed_raw.csv", [raw_row(0, "icsscan", "99.0", finished="2026-02-01")])
    table1.report(tmp_path, threads=1)
    table = {(r["class_index"], r["method"]): r for r in table1.read_raw(tmp_path / "table1.csv")}
    assert table[("0", "IF")]["auc_mean"] == "85.00" and table[("0", "IF")]["auc_std"] == "1.00"   # ddof 0
    assert table[("0", "IF")]["n_seeds"] == "2" and table[("0", "IF")]["config_hash"] == "new"
    assert table[("0", "IF")]["run"].startswith("python benchmarks/")
    assert [m for (c, m) in table if c == "0"] == ["icsscan", "IF", "icsscan_eknn"]   # MAIN first, then the others
    md = (tmp_path / "table1.md").read_text(encoding="utf-8")
    assert md.startswith("# Table 1 reproduction") and "Command: `python benchmarks/" in md and "Versions:" in md
    assert "| 0 | 99.0 (90.0; +9.0) | 85.0 ± 1.0 (80.0; +5.0) |" in md
    assert "| **mean** | **99.0** [1 cl.] (90.0; +9.0) | **83.0** [2 cl.] (80.5; +2.5) |" in md
    assert "| IF | IsolationForest on pixels | IF | 83.0 [2] vs 80.5 (+2.5) | – | – |" in md
    assert "| icsscan_eknn | " in md and "| ICS | 93.0 [1] vs 90.0 (+3.0) |" in md   # variants: the paper's ICS


def test_every_result_file_is_indexed_and_every_script_listed():
    """benchmarks/results/README.md names every result file; the project README names every benchmark script."""
    root = Path(__file__).resolve().parents[1]
    index = (root / "benchmarks" / "results" / "README.md").read_text()
    results = [p.name for p in (root / "benchmarks" / "results").iterdir() if p.is_file() and p.name != "README.md"]
    assert results and [n for n in results if f"`{n}`" not in index] == []
    readme = (root / "README.md").read_text()
    scripts = [p.name for p in (root / "benchmarks").iterdir() if p.suffix in (".py", ".sh")]
    assert scripts and [n for n in scripts if f"`{n}`" not in readme] == []
