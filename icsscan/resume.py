"""Resumable scans: finished rows are appended to REPORT/.scan-partial.csv, flushed after every batch, so a scan
that is interrupted (Ctrl-C, SIGTERM, a killed container) can continue with `scan --resume` where it stopped.

The first line holds the model's SHA-256 and the scanned folder: a partial file made with another model or
folder is refused, never mixed in. Scores are stored at full precision, so the final report is identical to
an uninterrupted run's. The file is removed once a complete report is written.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import IO

from .errors import UsageError
from .scan import Row

PARTIAL = ".scan-partial.csv"
VERSION = 2  # 2: rows carry peak_x, peak_y


def header(model_sha256: str, folder: str | os.PathLike) -> dict:
    return {"icsscan_partial": VERSION, "model_sha256": model_sha256, "folder": os.path.abspath(folder)}


def read_partial(out: Path, model_sha256: str, folder: str | os.PathLike) -> dict[str, Row]:
    """Rows already scored by an interrupted scan of the same folder with the same model ({} when none)."""
    path = Path(out) / PARTIAL
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError(f"--resume: cannot read {path} ({exc.strerror or exc})") from None
    first, _, body = text.partition("\n")
    try:
        found = json.loads(first)
    except ValueError:
        found = None
    want = header(model_sha256, folder)
    if not isinstance(found, dict) or found.get("icsscan_partial") != VERSION:
        raise UsageError(f"--resume: {path} is not an icsscan partial scan; rerun without --resume to start over")
    for key, what in (("model_sha256", "model (SHA-256)"), ("folder", "folder")):
        if found.get(key) != want[key]:
            raise UsageError(f"--resume: the partial scan in {out} was made with another {what} "
                             f"({found.get(key)!s:.80}); rerun without --resume to start over")
    if not body.endswith("\n"):
        body = body[:body.rfind("\n") + 1]  # a kill mid-write leaves at most one torn row: drop it
    rows: dict[str, Row] = {}
    for rec in csv.reader(body.splitlines(keepends=True)):
        if len(rec) != 5:
            continue
        try:
            peak_x, peak_y = (int(rec[3]), int(rec[4])) if rec[3] else (None, None)
            rows[rec[0]] = Row(rec[0], float(rec[1]) if rec[1] else None, rec[2], peak_x, peak_y)
        except ValueError:
            continue
    return rows


class PartialWriter:
    """Appends finished rows to REPORT/.scan-partial.csv (rewritten from `done` when it starts)."""

    def __init__(self, out: Path, model_sha256: str, folder: str | os.PathLike, done: dict[str, Row]):
        from .files import atomic_write

        self.done = done
        self.path = Path(out) / PARTIAL
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            f.write(json.dumps(header(model_sha256, folder)) + "\n")
            self._write(f, done.values())
        self.file = open(self.path, "a", encoding="utf-8", errors="surrogateescape", newline="")

    @staticmethod
    def _write(f: IO, rows) -> None:
        csv.writer(f).writerows([r.path, "" if r.score is None else repr(r.score), r.error,
                                 "" if r.peak_x is None else r.peak_x, "" if r.peak_y is None else r.peak_y]
                                for r in rows)

    def add(self, rows: list[Row]) -> None:
        self._write(self.file, rows)
        self.file.flush()  # per batch: a SIGKILL loses at most the batch in flight

    def close(self, finished: bool) -> None:
        self.file.close()
        if finished:
            self.path.unlink(missing_ok=True)
