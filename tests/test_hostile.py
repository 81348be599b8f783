"""Issue 5, hardening: hostile image folders through scan, train and split; output-folder safety.

Every hostile file is generated here (tests/hostile_files.py); nothing binary is checked in.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from conftest import ICSSCAN, run_cli, run_cli_here
from hostile_files import bad_files, encode, make_hostile_folder, noise, tree_state
from icsscan import data
from icsscan.report import safe_text

FORMULA = ("=", "+", "-", "@")
# Training on a handful of 16x16 images: one torch thread is faster, and immune to a busy shared machine
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def all_cells(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return [cell for row in csv.reader(f) for cell in row]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile") / "in" / "hostile"  # alone in "in": hostile/loop -> .. adds nothing
    good, bad = make_hostile_folder(root)
    return root, good, bad


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest resets icsscan's own filter
def test_hostile_files_decode_or_raise_decode_error(hostile):
    """In-process: every file that should decode does; every other raises DecodeError (one line), nothing else."""
    _, good, bad = hostile
    for path in good:
        arr = data.decode_image(path, 16)
        assert arr.shape == (16, 16, 3) and arr.dtype == np.uint8, path
    for path in bad:
        with pytest.raises(data.DecodeError) as info:
            data.decode_image(path, 16)
        assert str(info.value) and "\n" not in str(info.value), path


def test_hostile_folder_scan(hostile, tiny_bundle, tmp_path):
    root, good, bad = hostile
    before = tree_state(root.parent)
    out = tmp_path / "report"
    r = run_cli("scan", root, "--model", tiny_bundle, "--out", out, "--format", "csv,json,junit", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "Warning" not in r.stderr, r.stderr
    assert tree_state(root.parent) == before, "the input folder changed"

    rows = read_csv(out / "scores.csv")
    expected = {safe_text(str(p)) for p in good + bad}
    got = [row["path"] for row in rows]
    assert len(got) == len(expected) == len(good) + len(bad)
    assert set(got) == expected  # one row per image file: none missing, none extra (loops, fifo, .txt ignored)

    by_path = {row["path"]: row for row in rows}
    for row in rows:
        if row["score"]:
            assert 0.0 <= float(row["score"]) <= 1.0 and not row["error"], row
        else:
            assert row["error"].strip(), row
    assert all(by_path[safe_text(str(p))]["score"] for p in good), "a decodable file got no score"
    assert all(by_path[safe_text(str(p))]["error"] for p in bad), "a broken file got a score"
    for cell in all_cells(out / "scores.csv"):
        assert not cell.startswith(FORMULA), cell

    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["complete"] is True and summary["interrupted"] is False
    assert summary["counts"]["files"] == summary["counts"]["rows"] == len(expected)
    assert summary["counts"]["unreadable"] == len(bad)
    failures = {f["path"]: f["reason"] for f in summary["failures"]}
    assert set(failures) == {safe_text(str(p)) for p in bad}
    assert all(reason.strip() for reason in failures.values())

    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")  # valid XML despite control chars in names
    assert int(suite.get("tests")) == len(expected) and int(suite.get("errors")) == len(bad)


@pytest.mark.parametrize("folder_name", ["=SUM(1+1)", "+cmd", "-2+3", "@A1"])
def test_formula_like_folder_names_are_neutralised(folder_name, tiny_bundle, tmp_path):
    """Relative paths start with the folder name: the path cell itself must be defused."""
    folder = tmp_path / folder_name
    folder.mkdir()
    for i in range(2):
        (folder / f"{folder_name}{i}.png").write_bytes(encode(noise((16, 16), "L", seed=i), "PNG"))
    (folder / "broken.png").write_bytes(b"-1+1")
    r = run_cli("scan", "--out", tmp_path / "r", "--model", tiny_bundle, "--", folder_name, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = read_csv(tmp_path / "r" / "scores.csv")
    assert len(rows) == 3
    for cell in all_cells(tmp_path / "r" / "scores.csv"):
        assert not cell.startswith(FORMULA), cell
    assert all(row["path"].startswith("'" + folder_name) for row in rows)


def _train_folder(root: Path, n_good: int = 22) -> list[Path]:
    """n_good + 1 grey 16x16 PNGs plus broken files (incl. a name with a newline); returns the broken ones."""
    root.mkdir(parents=True)
    for i in range(n_good):
        (root / f"good_{i:02d}.png").write_bytes(encode(noise((16, 16), "L", seed=i), "PNG"))
    broken = {k: v for k, v in bad_files().items() if k in (
        "truncated.png", "zero_bytes.png", "text.jpg", "random.png", "bomb_50000x50000.png", "bomb_15000x10000.png")}
    broken["bad\nname.png"] = b"junk"
    # a readable image whose name is not valid UTF-8: it must be trained on and written to split.csv
    (root / os.fsdecode(b"good_latin1_\xe9.png")).write_bytes(encode(noise((16, 16), "L", seed=99), "PNG"))
    paths = []
    for name, blob in broken.items():
        (root / name).write_bytes(blob)
        paths.append(root / name)
    return paths


def _check_skip_warnings(stderr: str, broken: list[Path]) -> None:
    assert "Traceback" not in stderr and "Warning" not in stderr, stderr
    lines = stderr.splitlines()
    warnings = [line for line in lines if line.startswith("warning: skipped ")]
    assert len(warnings) == len(broken), stderr
    for path in broken:
        named = [line for line in warnings if data.printable(path) in line]
        assert len(named) == 1, (path, stderr)
    # nothing else but the known progress lines: each warning really is one line
    others = [line for line in lines if line not in warnings]
    assert all(line.startswith(("icsscan: ", "export: ")) for line in others), others


@pytest.mark.slow
def test_train_skips_bad_files_with_one_line_warnings(tmp_path):
    broken = _train_folder(tmp_path / "good")
    before = tree_state(tmp_path / "good")
    out = tmp_path / "model"
    r = run_cli("train", tmp_path / "good", "--out", out, "--backbone", "small", "--iterations", 5, "--device", "cpu", timeout=600,
                env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    _check_skip_warnings(r.stderr, broken)
    meta = json.loads((out / "config.json").read_text())
    assert meta["n_unreadable_files"] == len(broken)
    assert meta["n_train_files"] + meta["n_calibration_files"] == 23
    assert tree_state(tmp_path / "good") == before


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest resets the filter data.py sets
def test_split_skips_bad_files_with_one_line_warnings(tmp_path):
    broken = _train_folder(tmp_path / "good")
    # in this process (run_cli_here): train's run above is the real process that shows library warnings on stderr,
    # through the same decoding; a second one would spend ~10 s importing torch again
    r = run_cli_here("split", tmp_path / "good", "--out", tmp_path / "split", "--epochs", 1, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    _check_skip_warnings(r.stderr, broken)
    from icsscan.split import read_split_csv

    split = read_split_csv(tmp_path / "split" / "split.csv")
    assert len(split) == 23 and all(Path(p).name.startswith("good_") for p in split)
    assert str(tmp_path / "good" / os.fsdecode(b"good_latin1_\xe9.png")) in split  # round-trips exactly


def test_scan_of_a_folder_whose_name_is_not_utf8(tiny_bundle, tmp_path):
    name = os.fsdecode(b"folder_\xe9\xff")
    folder = tmp_path / name
    folder.mkdir()
    (folder / "a.png").write_bytes(encode(noise((16, 16), "L"), "PNG"))
    # the summary printed on stdout names the report folder in its own (non-UTF-8) bytes: read them as such
    r = subprocess.run([*ICSSCAN, "scan", name, "--model", str(tiny_bundle), "--out", os.fsdecode(b"report_\xe9")],
                       cwd=tmp_path, capture_output=True, text=True, errors="surrogateescape", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    summary = json.loads((tmp_path / os.fsdecode(b"report_\xe9") / "summary.json").read_text(encoding="utf-8"))
    assert summary["counts"]["scored"] == 1 and summary["complete"]


# --------------------------------------------------------------------------------------------- outputs

@pytest.mark.parametrize("verb,marker_name", [("scan", ".icsscan-report"), ("train", "config.json"),
                                              ("split", "split.csv")])
def test_out_refuses_a_foreign_folder(verb, marker_name, tiny_bundle, tmp_path):
    """A non-empty folder that is not ours is refused (exit 2) and left alone, even if it holds a file with
    our marker's name (a project's own config.json must never make `train` replace the folder)."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"i{i}.png").write_bytes(encode(noise((16, 16), "L", seed=i), "PNG"))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("my data")
    if verb != "scan":
        (out / marker_name).write_text('{"name": "my project"}\n' if marker_name.endswith(".json") else "a,b\n1,2\n")
    before = tree_state(out)
    args = ["--model", tiny_bundle] if verb == "scan" else []
    r = run_cli(verb, images, "--out", out, *args)
    assert r.returncode == 2, r.stderr
    assert "--force" in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert tree_state(out) == before


def test_scan_force_writes_beside_foreign_files(tiny_bundle, tmp_path):
    out = tmp_path / "mine"
    (out / "anomalous").mkdir(parents=True)
    (out / "anomalous" / "keep.txt").write_text("mine")
    (out / "precious.txt").write_text("my data")
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(encode(noise((16, 16), "L"), "PNG"))
    r = run_cli("scan", images, "--model", tiny_bundle, "--out", out, "--force", "--copy-flagged", "--threshold", 0)
    assert r.returncode == 0, r.stderr
    assert (out / "precious.txt").read_text() == "my data" and (out / "anomalous" / "keep.txt").exists()
    assert len(read_csv(out / "scores.csv")) == 1


ESCAPING_NAMES = ["..%2f..%2fescape.png", ".hidden.png", "..png", "...png", "-rf .png", "--out.png",
                  "a%00b.png", "~root.png", "x" * 240 + ".png", "con.png", "sub/../trick.png"]


def test_copy_flagged_never_writes_outside_the_report(tiny_bundle, tmp_path):
    images = tmp_path / "inputs"
    (images / "..%2f").mkdir(parents=True)
    made = []
    for i, name in enumerate(ESCAPING_NAMES + ["..%2f/inner.png"]):
        path = images / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(noise((16, 16), "L", seed=i), "PNG"))
        made.append(path.resolve())
    work = tmp_path / "work"
    work.mkdir()
    out = work / "report"
    before_parent, before_inputs = tree_state(work), tree_state(images)
    r = run_cli("scan", images, "--model", tiny_bundle, "--out", out, "--copy-flagged", "--threshold", 0,
                "--format", "csv,json,junit", cwd=work)
    assert r.returncode == 0, r.stderr
    n_files = len(set(made))
    assert len(read_csv(out / "scores.csv")) == n_files
    assert set(os.listdir(work)) == set(before_parent) | {"report"}, "files appeared beside the report folder"
    assert tree_state(images) == before_inputs
    copies = sorted((out / "anomalous").iterdir())
    assert len(copies) == n_files  # threshold 0 flags every scored image
    for copy in copies:
        assert copy.parent == out / "anomalous" and copy.is_file() and not copy.is_symlink()
        assert not copy.name.startswith((".", "-")) and len(copy.name) < 140
    for path in out.rglob("*"):
        assert path.resolve().is_relative_to(out.resolve())


def test_rerun_into_the_same_report_leaves_no_stale_copies(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        (images / f"i{i}.png").write_bytes(encode(noise((16, 16), "L", seed=i), "PNG"))
    out = tmp_path / "report"
    r = run_cli("scan", images, "--model", tiny_bundle, "--out", out, "--copy-flagged", "--threshold", 0)
    assert r.returncode == 0, r.stderr
    assert len(list((out / "anomalous").iterdir())) == 4
    for p in sorted(images.iterdir())[1:]:
        p.unlink()
    r = run_cli("scan", images, "--model", tiny_bundle, "--out", out, "--copy-flagged", "--threshold", 0)
    assert r.returncode == 0, r.stderr
    assert len(read_csv(out / "scores.csv")) == 1
    assert len(list((out / "anomalous").iterdir())) == 1, "copies from the previous run were left behind"


def test_scan_of_a_single_hostile_file_argument(tiny_bundle, tmp_path):
    """FOLDER may be one file; a broken one gives one error row and exit 0, not a crash."""
    bad = tmp_path / "=bad.png"
    bad.write_bytes(b"")
    r = run_cli("scan", bad, "--model", tiny_bundle, "--out", tmp_path / "r")
    assert r.returncode == 0, r.stderr
    rows = read_csv(tmp_path / "r" / "scores.csv")
    assert len(rows) == 1 and rows[0]["error"] and not rows[0]["score"]
