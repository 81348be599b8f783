"""Compact, append-only stores for a scan's file list and rows, so that a scan's memory barely grows with the
folder: a Python `Row` or `Path` per file costs 300-600 bytes; here a file costs its path's UTF-8 bytes plus
about 30 bytes of typed arrays (an int64 offset, a float64 score, two int32 peak coordinates), and an error
string only for the files that have one.

Both stores behave as read-only sequences (`len`, indexing, slicing, iteration): `PathList` of `str`,
`RowTable` of `Row`, built on the fly. `rank_order` sorts a `RowTable` for the report without
materialising it.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

# Any str, including lone surrogates (file names that are not valid UTF-8 arrive as surrogateescape'd str),
# survives the round trip, and the byte order of the encoding is the code-point order of the strings.
_ERRORS = "surrogatepass"


@dataclass(slots=True)  # one per file is kept until the ranked report: keep them small
class Row:
    path: str
    score: float | None
    error: str = ""
    peak_x: int | None = None  # local models: where the anomaly map peaks, in the original image's pixels
    peak_y: int | None = None


class ReadOnlySequence:
    """`len`, indexing (negative too), slicing and iteration over a subclass's `_item(i)` for 0 ≤ i < len;
    a slice is built by `_from_items` (a list unless overridden)."""

    __slots__ = ()

    def __len__(self) -> int:
        raise NotImplementedError

    def _item(self, i: int):
        raise NotImplementedError

    def _from_items(self, items: Iterator):
        return list(items)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self._from_items(self._item(k) for k in range(*i.indices(len(self))))
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"{type(self).__name__} index out of range")
        return self._item(i)

    def __iter__(self) -> Iterator:
        for i in range(len(self)):
            yield self._item(i)


class PathList(ReadOnlySequence):
    """A list of str kept as one byte buffer plus end offsets."""

    __slots__ = ("_blob", "_ends")

    def __init__(self, paths: Iterable[str] = ()):
        self._blob = bytearray()
        self._ends = array("q")
        self.extend(paths)

    def append(self, path: str) -> None:
        self._blob += path.encode("utf-8", _ERRORS)
        self._ends.append(len(self._blob))

    def extend(self, paths: Iterable[str]) -> None:
        for p in paths:
            self.append(p)

    def __len__(self) -> int:
        return len(self._ends)

    def _item(self, i: int) -> str:
        start = self._ends[i - 1] if i else 0
        return self._blob[start:self._ends[i]].decode("utf-8", _ERRORS)

    def __eq__(self, other) -> bool:
        return list(self) == list(other) if isinstance(other, (list, tuple, PathList)) else NotImplemented

    def __repr__(self) -> str:
        return f"PathList({len(self)} paths)"


class RowTable(ReadOnlySequence):
    """Scan rows (path, score, error, peak_x, peak_y) in typed arrays; a sequence of `Row`."""

    __slots__ = ("_paths", "_scores", "_px", "_py", "_errors")

    def __init__(self, rows: Iterable = ()):
        self._paths = PathList()
        self._scores = array("d")  # NaN: no score (the row's error says why)
        self._px = array("i")  # -1: no peak
        self._py = array("i")
        self._errors: dict[int, str] = {}  # only rows that have one
        self.extend(rows)

    @classmethod
    def of(cls, rows: Iterable) -> "RowTable":
        return rows if isinstance(rows, RowTable) else cls(rows)

    def append(self, row) -> None:
        i = len(self._scores)
        self._paths.append(row.path)
        self._scores.append(float("nan") if row.score is None else row.score)
        self._px.append(-1 if row.peak_x is None else row.peak_x)
        self._py.append(-1 if row.peak_y is None else row.peak_y)
        if row.error:
            self._errors[i] = row.error

    def extend(self, rows: Iterable) -> None:
        for r in rows:
            self.append(r)

    def __len__(self) -> int:
        return len(self._scores)

    def row(self, i: int):
        s, x, y = self._scores[i], self._px[i], self._py[i]
        return Row(self._paths._item(i), None if s != s else s, self._errors.get(i, ""),
                   None if x < 0 else x, None if y < 0 else y)

    _item = row

    def _from_items(self, items: Iterator) -> "RowTable":
        return RowTable(items)

    def path(self, i: int) -> str:
        return self._paths._item(i)

    def __repr__(self) -> str:
        return f"RowTable({len(self)} rows)"

    @property
    def scores(self) -> np.ndarray:
        """float64 array, NaN where a row has no score (a view: do not keep it across appends)."""
        return np.frombuffer(self._scores, dtype=np.float64) if len(self) else np.zeros(0)

    @property
    def n_failures(self) -> int:
        return int(np.isnan(self.scores).sum())

    def count_at_or_above(self, threshold: float) -> int:
        s = self.scores
        return int(np.count_nonzero(s[~np.isnan(s)] >= threshold))


def rank_order(table: RowTable) -> np.ndarray:
    """Row indices, highest score first, ties by path; rows without a score last, by path.

    Only rows that tie on their score are compared by path (in Python, one group of ties at a time), so the
    memory this takes beyond one int64 per row is bounded by the largest group of equal scores.
    """
    scores = table.scores
    n = len(scores)
    if not n:
        return np.zeros(0, dtype=np.int64)
    missing = np.isnan(scores)
    key = np.where(missing, 0.0, -scores)
    order = np.lexsort((key, missing)).astype(np.int64)  # missing last; by score; stable (index) inside ties
    ordered_key, ordered_missing = key[order], missing[order]
    same = (ordered_key[1:] == ordered_key[:-1]) & (ordered_missing[1:] == ordered_missing[:-1])
    if not same.any():
        return order
    # runs of equal (missing, score): [start, end) in `order`
    edges = np.flatnonzero(np.diff(np.concatenate(([0], same.astype(np.int8), [0]))))
    for start, end in zip(edges[::2], edges[1::2] + 1):
        group = order[start:end]
        order[start:end] = sorted(group.tolist(), key=table.path)
    return order
