"""rich progress bars on stderr, shown only when stderr is a terminal (CI logs stay clean)."""
from __future__ import annotations

import sys
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _progress() -> Progress | None:
    console = Console(stderr=True)
    if not sys.stderr.isatty():
        return None
    return Progress(TextColumn("[bold]{task.description:<7}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    console=console, transient=False)


@contextmanager
def training_progress(detector):
    """Attach a progress hook to an ICSDetector: decode, split (AE epochs), train (iterations + losses)."""
    progress = _progress()
    if progress is None:
        yield
        return
    tasks: dict[str, int] = {}

    def hook(stage: str, completed: int, total: int, info: dict) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(stage, total=total, info="")
        text = " ".join(f"{k} {v:.4f}" for k, v in info.items() if isinstance(v, float))
        progress.update(tasks[stage], completed=completed, total=total, info=text)

    detector.progress = hook
    with progress:
        yield
    detector.progress = None


@contextmanager
def scan_progress():
    """Yields an on_progress(done, total) callback (a no-op when stderr is not a terminal)."""
    progress = _progress()
    if progress is None:
        yield None
        return
    task = progress.add_task("scan", total=None, info="")

    def on_progress(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    with progress:
        yield on_progress
