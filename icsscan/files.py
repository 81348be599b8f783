"""Writing outputs safely: atomic writes with the user's permissions, writable checks, one writer per folder.

Every file icsscan writes goes through `atomic_write` (a temporary name beside the target, then a rename), so a
reader never sees half a file; the result gets the permissions `open()` would give (0666 minus the umask),
not mkstemp's 0600, so a report written in a container or by CI is readable by whoever may read the folder.
"""
from __future__ import annotations

import contextvars
import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from .errors import UsageError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_staged: contextvars.ContextVar[list | None] = contextvars.ContextVar("icsscan_staged", default=None)


class OutputError(UsageError):
    """An output folder that cannot be written: not writable, full, or in use by another icsscan (exit 2)."""


def umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask is a process-wide write)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(folder: bool = False) -> int:
    """What mkdir() (folder) or open() (file) would give: 0777 / 0666 minus the umask."""
    return (0o777 if folder else 0o666) & ~umask()


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success it replaces `path`, on any failure it is removed.

    Inside `staged()`, the rename waits until the whole group of files is written.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            os.fchmod(f.fileno(), default_mode())
            yield f
        pending = _staged.get()
        if pending is None:
            os.replace(tmp, path)
        else:
            pending.append((tmp, path))
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            raise OutputError(f"{path.parent}: no space left on device while writing {path.name}; "
                              f"the previous {path.name}, if any, is unchanged") from None
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_bytes_atomic(path: str | os.PathLike, data: bytes | memoryview) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


@contextmanager
def staged() -> Iterator[None]:
    """Atomic writes in this block are renamed into place together at its end: a failure part-way (a full
    disk, Ctrl-C) leaves every earlier file as it was, never a mix of old and new."""
    pending: list[tuple[str, Path]] = []
    token = _staged.set(pending)
    try:
        yield
    except BaseException:
        for tmp, _ in pending:
            Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        _staged.reset(token)
    for tmp, path in pending:
        os.replace(tmp, path)


def nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(out: str | os.PathLike, option: str = "--out", parent: bool = False) -> None:
    """Refuse, before any work is spent, an output that cannot be written: the folder itself (or the one it
    would be created in), or with `parent=True` the folder that holds it (bundles are renamed into place there)."""
    out = Path(out)
    where = nearest_existing(out.parent if parent or not out.exists() else out)
    if not where.is_dir():
        raise OutputError(f"{option} {out}: {where} is not a folder")
    try:  # a real write, not os.access: it also sees read-only mounts, ACLs and root squash
        fd, probe = tempfile.mkstemp(prefix=".icsscan-probe.", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{option} {out}: cannot write in {where} ({exc.strerror or exc}); choose a folder you "
                          f"can write to, or fix its permissions") from None


@contextmanager
def out_lock(out: str | os.PathLike, option: str = "--out") -> Iterator[None]:
    """Hold an exclusive lock for `out` (a file `.NAME.lock` beside it); a second icsscan writing the same folder
    is refused at once. The kernel releases a flock when the process dies, so a crash never leaves it held."""
    import fcntl

    out = Path(os.path.abspath(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.parent / f".{out.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(f"{option} {out}: another icsscan is writing there (lock {lock}); wait for it to "
                              f"finish or choose another folder") from None
        try:  # the holder before us may have removed the file after we opened it: lock the one on disk
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        Path(lock).unlink(missing_ok=True)  # while still held, so no one else locks the file being removed
        os.close(fd)


# ------------------------------------------------------------------------------- text written into files

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def safe_text(value: str) -> str:
    """Printable UTF-8 for any file name (undecodable bytes become \\x escapes)."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def neutralise(value: str) -> str:
    """Defuse spreadsheet formulas: a cell starting with = + - @ (or tab/CR) gets a leading apostrophe."""
    value = safe_text(value)
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value
