"""The CLI's terminal output: rich progress bars on stderr, shown only when stderr is a terminal (CI logs stay
clean), and the summary tables `scan` and `evaluate` print on stdout."""
from __future__ import annotations

import os
import sys
from pathlib import Path
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


def _table_console() -> Console:
    """stdout, as wide as the terminal (100-160 columns), 120 when it is not a terminal (logs, CI)."""
    return Console(soft_wrap=False, width=max(100, min(160, os.get_terminal_size().columns if sys.stdout.isatty() else 120)))


def print_summary(summary: dict, out: Path) -> None:
    from rich.table import Table

    c = summary["counts"]
    table = Table(title="icsscan scan", show_header=False)
    table.add_row("images", str(c["files"]))
    table.add_row("scored", str(c["scored"]))
    table.add_row("unreadable", str(c["unreadable"]))
    table.add_row("anomalies", str(c["anomalies"]))
    table.add_row("threshold", summary["threshold"]["meaning"])
    table.add_row("speed", f"{summary['timings']['images_per_s']} images/s")
    table.add_row("report", str(out))
    _table_console().print(table)


def print_evaluation(metrics: dict, out: Path) -> None:
    from rich.table import Table

    def pct(v):
        return "n/a" if v is None else f"{v:.2%}"

    c, image = metrics["counts"], metrics["image"]
    table = Table(title="icsscan evaluate", show_header=False)
    table.add_row("images", f"{c['images']}: {c['good']} good, {c['defective']} defective scored, "
                            f"{c['unreadable']} unreadable")
    table.add_row("image AUROC", f"{image['auroc']:.4f}")
    table.add_row("average precision", f"{image['average_precision']:.4f}")
    for name, v in image["per_class"].items():
        table.add_row(f"  AUROC {name}", f"{v['auroc']:.4f} ({v['n']} images)")
    for key, title in (("model_default", "at model threshold"), ("false_alarm_rate", "at --false-alarm-rate")):
        t = metrics["at_threshold"].get(key)
        if t:
            table.add_row(f"{title} {t['threshold']:.4g}",
                          f"false alarms {pct(t['false_alarm_rate'])} ({t['fp']}/{t['fp'] + t['tn']}), misses "
                          f"{pct(t['miss_rate'])} ({t['fn']}/{t['fn'] + t['tp']}), F1 {t['f1']:.3f}")
    pixel = metrics.get("pixel")
    if pixel:
        table.add_row("pixel AUROC", f"{pixel['pixel_auroc']:.4f}")
        table.add_row(f"AUPRO (FPR ≤ {pixel['aupro_fpr_limit']:g})", f"{pixel['aupro']:.4f}")
    else:
        table.add_row("pixel metrics", metrics.get("pixel_note", "none"))
    for g in metrics["gates"]:
        value = "n/a" if g["value"] is None else f"{g['value']:.4f}"
        table.add_row(f"gate {g['gate']} {g['required']:g}", f"{'met' if g['passed'] else 'MISSED'} ({value})")
    table.add_row("speed", f"{metrics['timings']['images_per_s']} images/s")
    table.add_row("report", str(out))
    _table_console().print(table)
