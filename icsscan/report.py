"""Write a scan's results: ranked scores.csv, summary.json, optional JUnit XML and copies of flagged images.

Every file is written to a temporary name and renamed, and summary.json goes last, so an interrupted run
leaves either the previous state or a complete, self-consistent report (one that says when it is partial).
"""
from __future__ import annotations

import csv
import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from . import __version__
from .files import atomic_write, staged
from .runinfo import machine, now_iso, versions, write_json_atomic
from .rowstore import ReadOnlySequence, RowTable, rank_order
from .files import neutralise, safe_text
from .scan import Row, ScanResult
from .thresholds import false_alarm_rate, percentile_of

MARKER = ".icsscan-report"
REPORT_FILES = ("scores.csv", "summary.json", "junit.xml", "report.html")
CSV_COLUMNS = ["rank", "path", "score", "normal_percentile", "is_anomaly", "error", "peak_x", "peak_y"]
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class Ranked(ReadOnlySequence):
    """The ranked report table: entries (rank, row, normal_percentile, is_anomaly), highest score first,
    unreadable files last, by path. A sequence built on the fly from the scan's compact rows (an entry per
    file would cost hundreds of bytes each); `n_scored` entries with a score come first."""

    def __init__(self, result: ScanResult):
        self.rows = RowTable.of(result.rows)
        self.order = rank_order(self.rows)
        self.threshold = result.threshold
        self.calibration = result.model.calibration
        self.n_scored = len(self.rows) - self.rows.n_failures

    def __len__(self) -> int:
        return len(self.order)

    def _item(self, k: int) -> tuple[int, Row, float | None, bool]:
        row = self.rows.row(int(self.order[k]))
        pct = percentile_of([row.score], self.calibration)[0]
        return k + 1, row, pct, row.score is not None and row.score >= self.threshold


def ranked(result: ScanResult) -> Ranked:
    """(rank, row, normal_percentile, is_anomaly), highest score first; unreadable files last, by path."""
    return Ranked(result)


def mark_report_folder(out: Path) -> None:
    """Create `out` if needed and mark it as an icsscan report folder (so a later run may overwrite it)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("icsscan report folder\n", encoding="utf-8")


def prepare_out_dir(out: str | os.PathLike, force: bool = False) -> Path:
    """Create the report folder; refuse a non-empty folder that is not an earlier icsscan report."""
    from .errors import UsageError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists() and not force:
        raise UsageError(f"--out {out}: folder is not empty and not an icsscan report; choose another or add --force")
    ours = (out / MARKER).is_file()
    mark_report_folder(out)
    flagged = out / "anomalous"
    if ours and (flagged.is_symlink() or flagged.is_file()):
        flagged.unlink()
    elif ours and flagged.is_dir():
        shutil.rmtree(flagged)  # an earlier run's copies would mix with this run's (only in our own folders)
    return out


def write_scores_csv(path: Path, table: list) -> None:
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for rank, row, pct, flagged in table:
            writer.writerow([
                rank, neutralise(row.path),
                "" if row.score is None else f"{row.score:.6f}",
                "" if pct is None else f"{pct:.4f}",
                "" if row.score is None else str(flagged).lower(),
                neutralise(row.error),
                "" if row.peak_x is None else row.peak_x,
                "" if row.peak_y is None else row.peak_y,
            ])


def write_junit(path: Path, table, result: ScanResult) -> None:
    """One test case per image: anomalies are failures, unreadable files are errors. Streamed one test case at
    a time (an ElementTree of the whole folder would grow with it); the bytes are ElementTree's own."""
    clean = lambda s: _XML_ILLEGAL.sub("?", safe_text(s))  # noqa: E731 - XML 1.0 forbids control chars
    suite = ET.Element("testsuite", name="icsscan", tests=str(len(table)),
                       failures=str(result.n_anomalies), errors=str(result.n_failures),
                       time=f"{result.seconds:.3f}", timestamp=now_iso())
    opening = ET.tostring(suite, encoding="unicode", short_empty_elements=False).removesuffix("</testsuite>")
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        f.write("<?xml version='1.0' encoding='UTF-8'?>\n<testsuites>" + opening)
        for rank, row, pct, flagged in table:
            case = ET.Element("testcase", classname="icsscan.scan", name=clean(row.path), time="0")
            if row.score is None:
                ET.SubElement(case, "error", message=clean(row.error), type="unreadable")
            elif flagged:
                pct_text = "" if pct is None else f", above {pct:.1%} of normal images"
                ET.SubElement(case, "failure", type="anomaly",
                              message=f"anomaly score {row.score:.4f} >= threshold {result.threshold:.4g}{pct_text}")
            f.write(ET.tostring(case, encoding="unicode"))
        f.write("</testsuite></testsuites>")


def copy_flagged(out: Path, table: list) -> int:
    """Copy flagged images to out/anomalous/ under sanitised names (rank prefix keeps them unique)."""
    target = out / "anomalous"
    target.mkdir(exist_ok=True)
    copied = 0
    for rank, row, _, flagged in table:
        if not flagged:
            continue
        name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(row.path).name).lstrip(".-") or "image"
        try:
            shutil.copyfile(row.path, target / f"{rank:06d}_{name[:120]}")
            copied += 1
        except OSError:
            continue  # the source vanished or is unreadable; its row already says what we know
    return copied


def summary_dict(result: ScanResult, table: list, folder: str, command: list[str] | None,
                 outputs: list[str]) -> dict[str, Any]:
    m = result.model
    n_scored = len(result.rows) - result.n_failures
    return {
        "icsscan_version": __version__,
        "complete": not result.interrupted,
        "interrupted": result.interrupted,
        "finished": now_iso(),
        "command": [safe_text(arg) for arg in command] if command else command,  # argv may hold undecodable bytes
        "folder": safe_text(str(folder)),
        "counts": {"files": result.n_files, "rows": len(result.rows), "scored": n_scored,
                   "unreadable": result.n_failures, "anomalies": result.n_anomalies,
                   "not_reached": result.n_files - len(result.rows)},
        "threshold": {"value": result.threshold, "source": result.threshold_source, "meaning": result.meaning,
                      "expected_false_alarm_rate": false_alarm_rate(m.calibration, result.threshold)},
        "model": {"path": safe_text(str(m.path)), "sha256": m.sha256, "score": m.score_kind,
                  "icsscan_version": m.metadata.get("icsscan_version"), "config_hash": m.metadata.get("config_hash"),
                  "created": m.metadata.get("created"), "image_size": m.image_size,
                  "image_height": m.image_height or m.image_size, "channels": m.channels,
                  "calibration_images": int(len(m.calibration)), "providers": m.providers},
        "timings": {"seconds": round(result.seconds, 3),
                    "images_per_s": round(len(result.rows) / result.seconds, 2) if result.seconds > 0 else None},
        "failures": [{"path": safe_text(r.path), "reason": r.error} for r in result.failures],
        "top_anomalies": [{"rank": k, "path": safe_text(r.path), "score": r.score, "peak_x": r.peak_x,
                           "peak_y": r.peak_y} for k, r, _, f in table[:10] if f],
        "maps": {"model_outputs_maps": m.has_map, "overlays_written": len(result.overlays),
                 "folder": "maps/" if result.overlays else None,
                 "raw_maps_written": result.raw_maps, "raw_folder": "raw_maps/" if result.raw_maps else None},
        "outputs": outputs,
        "versions": versions(),
        "machine": machine(),
    }


def write_report(result: ScanResult, out: Path, folder: str, formats: set[str], command: list[str] | None = None,
                 copy: bool = False, html: bool = True) -> dict[str, Any]:
    table = ranked(result)
    outputs = ["scores.csv", "summary.json"]
    with staged():  # renamed into place together: a full disk part-way leaves the previous report as it was
        write_scores_csv(out / "scores.csv", table)
        if "junit" in formats:
            write_junit(out / "junit.xml", table, result)
            outputs.append("junit.xml")
        if copy and not result.interrupted:
            copy_flagged(out, table)
            outputs.append("anomalous/")
        if html:
            from .html import write_html_report

            write_html_report(result, table, out)
            outputs.append("report.html")
        summary = summary_dict(result, table, folder, command, outputs)
        write_json_atomic(out / "summary.json", summary)  # last: its presence marks a finished report
    for stale in set(REPORT_FILES) - set(outputs):
        (out / stale).unlink(missing_ok=True)  # never leave an older run's results beside a new one
    return summary
