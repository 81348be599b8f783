"""Issue 16, item 6: a scan's memory stays flat in the folder size. The compact stores must give exactly what the
lists of Row/Path objects gave (same rows, same ranking, same listing order, same JUnit bytes)."""
from __future__ import annotations

import os
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from icsscan import data
from icsscan.rowstore import PathList, RowTable, rank_order
from icsscan.scan import Row, ScanModel, ScanResult

ODD_NAMES = ["plain.png", "é/ü.png", "tab\there.png", "new\nline.png", "\udcff\udcfe.png", "lone\ud800.png", ""]


def test_path_list_round_trips_any_str():
    paths = PathList(ODD_NAMES)
    assert list(paths) == ODD_NAMES and len(paths) == len(ODD_NAMES)
    assert paths[4] == ODD_NAMES[4] and paths[-1] == "" and paths[1:3] == ODD_NAMES[1:3]
    with pytest.raises(IndexError):
        paths[len(ODD_NAMES)]


def random_rows(rnd: random.Random, n: int) -> list[Row]:
    rows = []
    for i in range(n):
        name = f"{rnd.choice(ODD_NAMES[:5])}-{rnd.randrange(10**6)}"
        kind = rnd.random()
        if kind < 0.1:
            rows.append(Row(name, None, "not a recognised image format"))
        else:  # few distinct scores: many ties, broken by path
            rows.append(Row(name, rnd.choice([0.0, 0.25, 0.5, 0.5 + 1e-12, 0.75, 1.0]), "",
                            *((rnd.randrange(640), rnd.randrange(480)) if kind > 0.6 else (None, None))))
    return rows


def test_row_table_round_trips_rows():
    rows = random_rows(random.Random(1), 500)
    table = RowTable(rows)
    assert list(table) == rows and table[7] == rows[7] and table[-1] == rows[-1]
    assert list(table[10:20]) == rows[10:20]
    assert table.n_failures == sum(r.score is None for r in rows)
    assert table.count_at_or_above(0.5) == sum(r.score is not None and r.score >= 0.5 for r in rows)


@pytest.mark.parametrize("seed", range(5))
def test_rank_order_is_the_old_sort(seed):
    rows = random_rows(random.Random(seed), 2000)
    want = sorted(rows, key=lambda r: (r.score is None, -(r.score or 0.0), r.path))
    table = RowTable(rows)
    assert [table[int(i)] for i in rank_order(table)] == want


def test_ranked_report_and_junit_match_the_row_list_version(tmp_path):
    from icsscan.report import ranked, write_junit

    rows = random_rows(random.Random(7), 300)
    model = ScanModel(Path("m.onnx"), None, 28, 1, 0.5, np.array([0.1, 0.2, 0.6]), "ics", "0" * 64, {})
    result = ScanResult(rows, 0.5, "raw", "flag at 0.5", model, len(rows), 1.0)
    table = ranked(result)
    order = sorted(rows, key=lambda r: (r.score is None, -(r.score or 0.0), r.path))
    assert [row for _, row, _, _ in table] == order and len(table) == len(rows)
    assert [rank for rank, *_ in table] == list(range(1, len(rows) + 1))
    assert table[:3] == list(table)[:3] and table[-1] == list(table)[-1]

    write_junit(tmp_path / "junit.xml", table, result)
    got = ET.parse(tmp_path / "junit.xml").getroot()
    suite = got.find("testsuite")
    assert suite.get("tests") == str(len(rows))
    assert suite.get("failures") == str(sum(r.score is not None and r.score >= 0.5 for r in rows))
    assert suite.get("errors") == str(sum(r.score is None for r in rows))
    cases = suite.findall("testcase")
    assert len(cases) == len(rows)
    assert [c.find("error") is not None for c in cases] == [r.score is None for r in order]
    assert [c.find("failure") is not None for c in cases] == [r.score is not None and r.score >= 0.5 for r in order]


def old_find_images(root: Path) -> list[Path]:
    """The listing before the streaming walk: everything collected, then sorted by relative POSIX path."""
    found, seen, stack = [], set(), [root]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        for entry in os.scandir(folder):
            if entry.is_dir():
                stack.append(Path(entry.path))
            elif entry.is_file() and data.is_image_file(Path(entry.name)):
                found.append(Path(entry.path))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


@pytest.mark.parametrize("seed", range(8))
def test_streaming_walk_lists_in_sorted_relative_path_order(tmp_path, seed):
    """Depth first with a folder sorted as "name/" gives the global sort: "a-b.png" < "a/x.png" < "a.png"."""
    rnd = random.Random(seed)
    names = ["a", "a-b", "a.b", "a0", "A", "b", "é", "a b", "_x", "ab", "a.png"]

    def fill(folder: Path, depth: int) -> None:
        for name in rnd.sample(names, 7):
            target = folder / name
            if depth < 3 and rnd.random() < 0.4 and not target.exists():
                target.mkdir()
                fill(target, depth + 1)
            else:
                file = folder / (name + rnd.choice([".png", ".JPG", ".txt"]))
                if not file.exists():
                    file.write_bytes(b"")

    fill(tmp_path, 0)
    want = old_find_images(tmp_path)
    assert len(want) > 5
    assert data.find_images(tmp_path) == want
    assert list(data.iter_images(tmp_path)) == [str(p) for p in want]
