"""Write REPORT_DIR/report.html: one self-contained page to eyeball a scan's results.

The page opens from disk with no server, no network and no JavaScript: CSS is inline, the score histogram
is an SVG drawn here (no matplotlib: `scan` must start fast and never import torch), and the thumbnails are
small PNGs in REPORT_DIR/thumbs/ named by rank. With anomaly maps, each thumbnail pair links to its full-size
overlay: the scan's own in maps/ (scan --maps), else one written here into REPORT_DIR/overlays/ (only for the
cards shown). File names come from the scanned folder and are untrusted: every one is HTML-escaped in text and
URL-quoted in links, and only rank-based names are ever written.
"""
from __future__ import annotations

import os
import re
import warnings
from html import escape
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageOps

from . import __version__, data
from .files import atomic_write, write_text_atomic
from .rowstore import RowTable
from .runinfo import now_iso
from .scan import ScanResult

TOP_K = 24  # thumbnails in each of the "most anomalous" and "most normal" grids
THUMB_SIZE = 128  # max side of a thumbnail in pixels
THUMB_DIR = "thumbs"
THUMB_NAME = re.compile(r"\d{6}(_map)?\.png")
OVERLAY_DIR = "overlays"  # full-size overlays of the shown top images that scan --maps did not write
OVERLAY_NAME = re.compile(r"\d{6}\.png")
MAPS_DIR = "maps"  # where the CLI puts scan --maps overlays (ScanResult.overlays: path → name in it)
MAX_FAILURES_LISTED = 1000  # beyond this the page points to scores.csv instead of growing without bound
HIST_BINS = 40

# No scripts, no network: the browser enforces what the page promises (only local images and inline CSS).
CSP = "default-src 'none'; script-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'"

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 8px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table.summary td{padding:2px 12px 2px 0;vertical-align:top} table.summary td:first-child{color:#666}
.banner{background:#fff3cd;border:1px solid #e0c060;padding:8px 12px;margin:8px 0}
.grid{display:flex;flex-wrap:wrap;gap:10px}
figure.card{margin:0;width:150px;border:2px solid #ccc;border-radius:4px;padding:6px;background:#fafafa}
figure.card.flagged{border-color:#d33;background:#fff0f0}
figure.card.withmap{width:290px}.pair{display:flex;gap:6px;justify-content:center}
figure.card .pair img{margin:0}
figure.card img,.nothumb{display:block;width:128px;height:128px;margin:auto;object-fit:contain;
  image-rendering:pixelated;background:#eee}
.nothumb{line-height:128px;text-align:center;color:#888;font-size:12px}
figcaption{font-size:12px;margin-top:4px} .path{color:#555;word-break:break-all;font-size:11px}
.flag{color:#d33;font-weight:600} code{word-break:break-all}
table.failures{border-collapse:collapse} table.failures td{border-top:1px solid #eee;padding:3px 10px 3px 0}
svg text{font:11px system-ui,sans-serif;fill:#333}
"""


def esc(value: object) -> str:
    """Text safe inside HTML elements and quoted attributes (undecodable name bytes become \\x escapes)."""
    return escape(str(value).encode("utf-8", "backslashreplace").decode("utf-8"), quote=True)


def write_html_report(result: ScanResult, table: list, out: Path, top_k: int = TOP_K) -> Path:
    """Write out/report.html (and out/thumbs/); `table` is report.ranked(result). Returns the page's path."""
    out = Path(out)
    top, bottom = pick_grids(table, top_k)
    thumbs = write_thumbnails(out, top + bottom)
    map_range = getattr(result.model, "map_range", None)
    heat = write_map_thumbnails(out, top, result.maps, map_range) if result.maps else {}
    full = full_overlays(out, top, result, heat, map_range) if result.maps else {}
    scores = RowTable.of(result.rows).scores
    scores = scores[~np.isnan(scores)]
    body = "\n".join([
        summary_html(result),
        "<h2>Score distribution</h2>",
        histogram_svg(scores, result.model.calibration, result.threshold),
        f"<h2>Most anomalous ({len(top)})</h2>",
        MAP_LEGEND if heat else "",
        grid_html(top, thumbs, heat, full),
        f"<h2>Most normal ({len(bottom)}), for contrast</h2>",
        grid_html(bottom, thumbs),
        failures_html(table),
    ])
    page = out / "report.html"
    write_text_atomic(page, page_html("icsscan report", body))
    return page


def n_scored(table) -> int:
    """Entries with a score; in ranked order they come first (report.Ranked knows their number)."""
    known = getattr(table, "n_scored", None)
    return known if known is not None else sum(1 for entry in table if entry[1].score is not None)


def pick_grids(table, k: int) -> tuple[list, list]:
    """The k highest-scoring rows and the k lowest (lowest first), never showing one image in both grids."""
    n = n_scored(table)
    top = list(table[:min(k, n)])
    bottom = list(table[max(len(top), n - k):n])[::-1]
    return top, bottom


# --------------------------------------------------------------------------------------------- thumbnails

def write_thumbnails(out: Path, entries: list) -> dict[int, str]:
    """Make a thumbnail per entry; returns rank -> relative URL for those that worked (failures are skipped)."""
    try:
        folder = fresh_thumb_dir(out)
    except OSError:
        return {}  # e.g. a read-only or odd thumbs/ entry: the page shows "no preview" instead
    made = {}
    for rank, row, _, _ in entries:
        name = f"{int(rank):06d}.png"  # rank-based: unique, and nothing from the scanned file name
        if make_thumbnail(row.path, folder / name):
            made[rank] = quote(f"{THUMB_DIR}/{name}")
    return made


MAP_LEGEND = ("<p>Beside each image: its anomaly map over it (uncoloured = like normal parts, blue = a little "
              "unusual, yellow to red = clearly abnormal; the ring marks the peak, whose position is "
              "<code>peak_x, peak_y</code> in scores.csv). Click either picture for the full-size overlay.</p>")


def write_map_thumbnails(out: Path, entries: list, maps: dict,
                         map_range: tuple[float, float] | None = None) -> dict[int, str]:
    """For entries whose anomaly map the scan kept: a thumbnail of the image with the map over it."""
    from .maps import overlay

    folder, made = out / THUMB_DIR, {}
    for rank, row, _, _ in entries:
        if row.path not in maps:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rgb = data.decode_image(row.path, thumb_wh(row.path))
            name = f"{int(rank):06d}_map.png"
            save_png_atomic(overlay(rgb, maps[row.path], map_range), folder / name)
            made[rank] = quote(f"{THUMB_DIR}/{name}")
        except Exception:  # noqa: BLE001 - a missing overlay must never fail the scan
            continue
    return made


def full_overlays(out: Path, entries: list, result: ScanResult, heat: dict[int, str],
                  map_range: tuple[float, float] | None = None) -> dict[int, str]:
    """rank → relative URL of the full-size overlay (original | map over it) of each entry with a heat thumbnail:
    the scan's own maps/NAME when scan --maps wrote one, else out/overlays/RANK.png written now (at most one per
    card shown, at the original's size as in scan --maps)."""
    from .maps import side_by_side
    from .scan import original_pixels

    made: dict[int, str] = {}
    try:
        folder = fresh_dir(out, OVERLAY_DIR, OVERLAY_NAME)
    except OSError:
        folder = None
    for rank, row, _, _ in entries:
        if rank not in heat or row.path not in result.maps:
            continue
        written = result.overlays.get(row.path)
        if written and (out / MAPS_DIR / written).is_file() and not (out / MAPS_DIR).is_symlink():
            made[rank] = quote(f"{MAPS_DIR}/{written}")
            continue
        if folder is None:
            continue
        name = f"{int(rank):06d}.png"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = side_by_side(original_pixels(row.path), result.maps[row.path], map_range)
            with atomic_write(folder / name, "wb") as f:
                img.save(f, format="PNG", compress_level=1)  # full size, lossless: at most one per card shown
            made[rank] = quote(f"{OVERLAY_DIR}/{name}")
        except Exception:  # noqa: BLE001 - a missing overlay costs a link, never the report
            continue
    try:
        if folder is not None and not any(folder.iterdir()):
            folder.rmdir()  # every card's overlay was the scan's own (maps/): no empty folder left behind
    except OSError:
        pass
    return made


def thumb_wh(path: str) -> tuple[int, int]:
    """(width, height) of a thumbnail of `path` keeping its aspect ratio (from the header), longer side THUMB_SIZE."""
    with Image.open(path) as img:
        w, h = img.size
    scale = THUMB_SIZE / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def fresh_thumb_dir(out: Path) -> Path:
    """out/thumbs as a real folder (never a symlink leading elsewhere), without an earlier run's thumbnails."""
    return fresh_dir(out, THUMB_DIR, THUMB_NAME)


def fresh_dir(out: Path, name: str, ours: re.Pattern) -> Path:
    """out/name as a real folder (never a symlink leading elsewhere), without an earlier run's files named `ours`."""
    folder = out / name
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        folder.unlink()
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        if ours.fullmatch(old.name) and not old.is_dir():
            old.unlink(missing_ok=True)
    return folder


def make_thumbnail(src: str, dst: Path, size: int = THUMB_SIZE) -> bool:
    """Write a PNG at most `size` px on its longer side; False (never an exception) when anything fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF/metadata chatter from odd files
            with Image.open(src) as img:
                if img.width * img.height > data.DEFAULT_MAX_PIXELS:
                    return False  # same decompression-bomb limit as scanning
                if img.format == "JPEG":
                    img.draft("RGB", (size, size))  # libjpeg decodes at reduced scale: much faster
                img.seek(0)  # first frame of GIF/TIFF, as in scanning
                img.load()
                img = data._flatten_alpha(data._to_8bit(ImageOps.exif_transpose(img)))
                img = img.convert("L" if img.mode == "L" else "RGB")
                img.thumbnail((size, size), Image.Resampling.LANCZOS)  # shrinks only; CSS enlarges tiny ones
                save_png_atomic(img, dst)
        return True
    except Exception:  # noqa: BLE001 - a missing preview must never fail the scan
        return False


def save_png_atomic(img: Image.Image, dst: Path) -> None:
    with atomic_write(dst, "wb") as f:  # replaces a link named dst itself, never the file it points to
        img.save(f, format="PNG")


# --------------------------------------------------------------------------------------------- sections

def summary_html(result: ScanResult) -> str:
    m = result.model
    n_failed = result.n_failures
    images_per_s = f"{len(result.rows) / result.seconds:.1f}" if result.seconds > 0 else "n/a"
    rows = [  # (label, value already made HTML-safe)
        ("files", esc(result.n_files)), ("scored", esc(len(result.rows) - n_failed)),
        ("unreadable", esc(n_failed)), ("anomalies", esc(result.n_anomalies)),
        ("threshold", esc(f"{result.threshold:.4g} ({result.threshold_source})")),
        ("what it means", esc(result.meaning)),
        ("model", f"<code>{esc(m.path)}</code>"), ("model sha256", f"<code>{esc(m.sha256)}</code>"),
        ("score kind", esc(m.score_kind)), ("calibration normals", esc(len(m.calibration))),
        ("time", esc(f"{result.seconds:.2f} s ({images_per_s} images/s)")),
    ]
    cells = "\n".join(f"<tr><td>{label}</td><td>{value}</td></tr>" for label, value in rows)
    banner = ""
    if result.interrupted:
        banner = (f'<p class="banner">Partial report: the scan was interrupted after {len(result.rows)} of '
                  f"{result.n_files} files.</p>")
    return (f"<h1>icsscan report</h1>\n<p>Generated {esc(now_iso())} by icsscan {esc(__version__)}. "
            f'Full ranking: <a href="scores.csv">scores.csv</a>, details: <a href="summary.json">summary.json</a>.</p>'
            f'\n{banner}<table class="summary">\n{cells}\n</table>')


def grid_html(entries: list, thumbs: dict[int, str], heat: dict[int, str] | None = None,
              full: dict[int, str] | None = None) -> str:
    if not entries:
        return "<p>No scored images.</p>"
    heat, full = heat or {}, full or {}
    return ('<div class="grid">\n'
            + "\n".join(card_html(e, thumbs.get(e[0]), heat.get(e[0]), full.get(e[0])) for e in entries)
            + "\n</div>")


def card_html(entry: tuple, thumb: str | None, heat: str | None = None, full: str | None = None) -> str:
    """One image's card; with a heat thumbnail and its full-size overlay (`full`, a relative URL), both pictures
    link to the overlay and the path in the caption links to the original file."""
    rank, row, pct, flagged = entry
    name = esc(Path(row.path).name)
    picture = (f'<img src="{esc(thumb)}" alt="{name}" width="128" height="128">' if thumb
               else '<div class="nothumb">no preview</div>')
    link = file_uri(row.path)
    target = full if heat and full else link
    if target:
        picture = f'<a href="{esc(target)}">{picture}</a>'
    if heat:
        heat_img = f'<img class="heat" src="{esc(heat)}" alt="anomaly map of {name}" width="128" height="128">'
        if full:
            heat_img = f'<a href="{esc(full)}" title="full-size overlay">{heat_img}</a>'
        picture = f'<div class="pair">{picture}{heat_img}</div>'
    path_text = esc(row.path)
    if heat and full and link:
        path_text = f'<a href="{esc(link)}">{path_text}</a>'
    pct_text = "" if pct is None else f"<br>above {pct:.1%} of normals"
    peak_text = "" if row.peak_x is None else f"<br>peak at x={row.peak_x}, y={row.peak_y}"
    flag = ' <span class="flag">anomaly</span>' if flagged else ""
    classes = "card" + (" flagged" if flagged else "") + (" withmap" if heat else "")
    return (f'<figure class="{classes}">{picture}<figcaption>#{rank} · score '
            f'{row.score:.4f}{flag}{pct_text}{peak_text}<br><span class="path">{path_text}</span></figcaption></figure>')


def file_uri(path: str) -> str | None:
    """Percent-encoded file:// URL of the original (spaces, #, %, quotes, non-ASCII and raw bytes all survive)."""
    try:
        return Path(os.path.abspath(path)).as_uri()
    except (ValueError, OSError):
        return None


def failures_html(table) -> str:
    start = n_scored(table)  # unreadable files are ranked last
    n_failed = len(table) - start
    if not n_failed:
        return "<h2>Unreadable files (0)</h2>\n<p>None: every file was scored.</p>"
    failed = [row for _, row, _, _ in table[start:start + MAX_FAILURES_LISTED]]
    rows = "\n".join(f"<tr><td><code>{esc(r.path)}</code></td><td>{esc(r.error)}</td></tr>" for r in failed)
    more = (f"<p>… and {n_failed - MAX_FAILURES_LISTED} more; see scores.csv.</p>"
            if n_failed > MAX_FAILURES_LISTED else "")
    return (f'<h2>Unreadable files ({n_failed})</h2>\n<table class="failures" id="unreadable">\n'
            f"<tr><th>file</th><th>reason</th></tr>\n{rows}\n</table>{more}")


def page_html(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


# --------------------------------------------------------------------------------------------- histogram

def histogram_svg(scores: list[float], calibration: np.ndarray, threshold: float, bins: int = HIST_BINS,
                  width: int = 720, height: int = 260) -> str:
    """Bars: scanned images per score bin. Line: calibration normals, scaled to as many images as were
    scanned (what the bars would look like if every image were normal). Red line: the threshold."""
    scores_a = np.asarray(scores, dtype=np.float64)
    cal = np.asarray(calibration, dtype=np.float64)
    cal = cal[np.isfinite(cal)]
    lo, hi = hist_range(np.concatenate([scores_a, cal, [threshold]]))
    edges = np.linspace(lo, hi, bins + 1)
    counts = np.histogram(scores_a, edges)[0]
    expected = np.histogram(cal, edges)[0] * (len(scores_a) or len(cal)) / len(cal) if len(cal) else None
    ymax = max(float(counts.max(initial=0)), float(expected.max()) if expected is not None else 0.0, 1.0)

    left, right, top, bottom = 48, 12, 44, 36  # the top margin holds the legend and the threshold label
    pw, ph = width - left - right, height - top - bottom
    x = lambda v: left + (v - lo) / (hi - lo) * pw  # noqa: E731
    y = lambda c: top + ph * (1 - c / ymax)  # noqa: E731

    parts = [f'<rect x="{x(a):.1f}" y="{y(c):.1f}" width="{max(x(b) - x(a) - 1, 0.5):.1f}" '
             f'height="{y(0) - y(c):.1f}" fill="#6a8fc8"/>' for a, b, c in zip(edges[:-1], edges[1:], counts) if c]
    if expected is not None:
        pts = [f"{x(edges[0]):.1f},{y(0):.1f}"]
        for a, b, e in zip(edges[:-1], edges[1:], expected):
            pts += [f"{x(a):.1f},{y(e):.1f}", f"{x(b):.1f},{y(e):.1f}"]
        pts.append(f"{x(edges[-1]):.1f},{y(0):.1f}")
        parts.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="#2a2" stroke-width="2"/>')
    tx = x(threshold)
    parts.append(f'<line x1="{tx:.1f}" y1="{top - 6}" x2="{tx:.1f}" y2="{y(0):.1f}" stroke="#d33" '
                 f'stroke-width="2" stroke-dasharray="5,3" class="threshold"/>')
    anchor = "end" if tx > left + pw / 2 else "start"  # keep the label inside the picture
    parts.append(f'<text x="{tx + (-4 if anchor == "end" else 4):.1f}" y="{top - 8}" fill="#d33" '
                 f'text-anchor="{anchor}">threshold {threshold:.4g}</text>')
    parts += axes_svg(lo, hi, ymax, x, y, left, width - right)
    parts.append(legend_svg(left, 4, expected is not None))
    label = (f"Histogram of {len(scores_a)} anomaly scores with the threshold at {threshold:.4g}"
             + (f" and {len(cal)} calibration normals overlaid" if len(cal) else ""))
    return (f'<svg id="score-histogram" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(label)}">\n<title>{esc(label)}</title>\n'
            + "\n".join(parts) + "\n</svg>")


def hist_range(values: np.ndarray) -> tuple[float, float]:
    """Span of all values with a little padding, so clustered scores still get readable bins."""
    values = values[np.isfinite(values)]
    lo, hi = float(values.min()), float(values.max())
    pad = (hi - lo) * 0.03 or 0.05
    return lo - pad, hi + pad


def nice_ticks(lo: float, hi: float, target: int = 6) -> np.ndarray:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) inside [lo, hi]."""
    raw = (hi - lo) / target
    power = 10 ** np.floor(np.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    ticks = np.arange(np.ceil(lo / step) * step, hi + step * 1e-9, step)
    return np.round(ticks, 12)


def axes_svg(lo: float, hi: float, ymax: float, x, y, x0: float, x1: float) -> list[str]:
    base = y(0)
    out = [f'<line x1="{x0}" y1="{base:.1f}" x2="{x1}" y2="{base:.1f}" stroke="#333"/>',
           f'<line x1="{x0}" y1="{y(ymax):.1f}" x2="{x0}" y2="{base:.1f}" stroke="#333"/>',
           f'<text x="{x0 - 6}" y="{base:.1f}" text-anchor="end">0</text>',
           f'<text x="{x0 - 6}" y="{y(ymax) + 4:.1f}" text-anchor="end">{ymax:.0f}</text>',
           f'<text x="{(x0 + x1) / 2:.1f}" y="{base + 30:.1f}" text-anchor="middle">anomaly score</text>']
    for v in nice_ticks(lo, hi):
        out += [f'<line x1="{x(v):.1f}" y1="{base:.1f}" x2="{x(v):.1f}" y2="{base + 4:.1f}" stroke="#333"/>',
                f'<text x="{x(v):.1f}" y="{base + 16:.1f}" text-anchor="middle">{v + 0.0:.3g}</text>']
    return out


def legend_svg(x0: float, y0: float, with_calibration: bool) -> str:
    items = [("#6a8fc8", "scanned images")] + ([("#2a2", "calibration normals, scaled to the scan's count")]
                                                if with_calibration else [])
    rows = [f'<rect x="{x0 + 150 * i}" y="{y0}" width="10" height="10" fill="{c}"/>'
            f'<text x="{x0 + 150 * i + 14}" y="{y0 + 9}">{esc(t)}</text>' for i, (c, t) in enumerate(items)]
    return "\n".join(rows)
