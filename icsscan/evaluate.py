"""`icsscan evaluate`: how well a model separates good from defective images of a labelled folder, as a CI gate.

Data flow: `labels.find_items` (labels and masks from an MVTec AD folder or a labels CSV) → `evaluate_items` (the scan
pipeline itself: `scan.load_model`'s ONNX model and `scan.stream_rows`, so every score is the one `scan` gives;
maps go to a background thread that upsamples each to its image's own size and counts it into
`metrics.PixelAccumulator`) → `write_evaluation` (metrics.json, scores.csv, ROC / histogram / PRO plots, overlays
of the worst misses and false alarms, report.html) → `gate_results` (which --min-* gates were met).

Memory stays flat in the folder's size, as in `scan`: scores are kept (a float per image), maps are not; only
the maps of the few images the report shows are held, and pixel metrics are fixed-size histograms.
"""
from __future__ import annotations

import csv
import heapq
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import __version__, data
from .errors import UsageError
from .labels import GOOD, Item, load_mask
from .metrics import AUPRO_FPR_LIMIT, PixelAccumulator, at_threshold, image_metrics, roc_points
from .rawmaps import original_size
from .rowstore import RowTable
from .scan import Row, ScanModel, resolve_threshold, stream_rows

MARKER = ".icsscan-evaluation"
WORST_K = 8  # worst misses and false alarms shown with overlays
OVERLAY_SIDE = 256  # long side of the images in the overlays
OVERLAY_DIR = "overlays"


# --------------------------------------------------------------------------------------------- scoring

class PixelCounter:
    """Counts each scored map into a PixelAccumulator in a background thread (upsampling to the original size,
    reading the mask and histogramming take ~2-5 ms per image; they overlap the next batch's inference). At most
    MAX_PENDING maps wait; `close()` waits for the rest."""

    MAX_PENDING = 16

    def __init__(self) -> None:
        self.accumulator = PixelAccumulator()
        self.problems: list[dict] = []  # masks or originals that could not be read
        self.seconds = 0.0
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending: deque = deque()

    def submit(self, path: str, anomaly_map: np.ndarray, mask: str | None) -> None:
        self._pending.append(self._pool.submit(self._count, path, anomaly_map, mask))
        while len(self._pending) > self.MAX_PENDING:
            self._pending.popleft().result()

    def _count(self, path: str, anomaly_map: np.ndarray, mask: str | None) -> None:
        from .maps import upsample

        started = time.perf_counter()
        try:
            size = original_size(path)
            truth = load_mask(mask, size) if mask else np.zeros(size[::-1], bool)
        except Exception as exc:  # noqa: BLE001 - DecodeError, or a file that changed since it was scored
            self.problems.append({"path": data.printable(path), "reason": str(exc) or type(exc).__name__})
            return
        self.accumulator.add(upsample(anomaly_map, size), truth)
        self.seconds += time.perf_counter() - started

    def close(self) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


class WorstMaps:
    """The maps of the k lowest-scoring defects and the k highest-scoring good images (bounded memory)."""

    def __init__(self, k: int = WORST_K) -> None:
        self.k = k
        self.misses: list = []  # min-heap on -score: the k lowest defect scores
        self.alarms: list = []  # min-heap on score: the k highest good scores

    def offer(self, seq: int, row: Row, label: int, anomaly_map: np.ndarray) -> None:
        heap, key = (self.misses, -row.score) if label == 1 else (self.alarms, row.score)
        entry = (key, -seq, row.path, anomaly_map.astype(np.float16))  # ties: the earlier image, as worst_entries
        if len(heap) < self.k:
            heapq.heappush(heap, entry)
        elif key > heap[0][0]:
            heapq.heapreplace(heap, entry)

    def maps(self) -> dict[str, np.ndarray]:
        return {path: m.astype(np.float32) for _, _, path, m in self.misses + self.alarms}


@dataclass
class Evaluation:
    items: list[Item]
    rows: RowTable  # one row per item, same order
    model: ScanModel
    threshold: float  # the model's default
    far_threshold: float | None  # the threshold for --false-alarm-rate
    false_alarm_rate: float | None
    seconds: float
    pixel: PixelCounter | None  # None: no pixel metrics (no maps or no masks)
    pixel_note: str  # why there are no pixel metrics, or which images they cover
    worst_maps: dict = field(default_factory=dict)

    @property
    def scores(self) -> np.ndarray:
        return self.rows.scores

    @property
    def labels(self) -> np.ndarray:
        return np.fromiter((it.label for it in self.items), dtype=int, count=len(self.items))


def pixel_plan(items: Sequence[Item], model: ScanModel) -> tuple[bool, str]:
    """Whether pixel metrics can be computed, and a one-line note on what they cover (or why not)."""
    with_mask = sum(1 for it in items if it.label == 1 and it.mask)
    defects = sum(1 for it in items if it.label == 1)
    if not model.has_map:
        return False, "the model outputs no anomaly map (a global model): image metrics only"
    if not with_mask:
        return False, "no ground-truth masks found for the defective images: image metrics only"
    skipped = f"; {defects - with_mask} defective images without a mask left out" if with_mask < defects else ""
    return True, f"{with_mask} defective images with masks and every good image{skipped}"


def evaluate_items(items: list[Item], model: ScanModel, false_alarm_rate: float | None = None,
                   batch_size: int = 64, workers: int = 4, pixels: bool = True,
                   on_progress: Callable[[int, int], None] | None = None) -> Evaluation:
    """Score `items` through the scan pipeline; with `pixels` (and maps and masks) count pixel metrics too."""
    threshold, _ = resolve_threshold(model, None, None)
    far_threshold = resolve_threshold(model, None, false_alarm_rate)[0] if false_alarm_rate is not None else None
    want_pixels, note = pixel_plan(items, model)
    counter = PixelCounter() if pixels and want_pixels else None
    worst = WorstMaps() if model.has_map else None
    by_path = {}  # path → index of its item (a path listed twice: the first listing's label and mask)
    for i, it in enumerate(items):
        by_path.setdefault(it.path, i)
    rows = RowTable()
    seq = [0]

    def on_map(row: Row, rgb: np.ndarray, anomaly_map: np.ndarray) -> None:
        seq[0] += 1
        item = items[by_path[row.path]]
        worst.offer(seq[0], row, item.label, anomaly_map)
        if counter is not None and (item.label == 0 or item.mask):
            counter.submit(row.path, anomaly_map.copy(), item.mask)

    def tick(n: int) -> None:
        if on_progress:
            on_progress(len(rows), len(items))

    started = time.perf_counter()
    try:
        for row in stream_rows(model, [it.path for it in items], batch_size, workers, tick,
                               on_map if worst is not None else None):
            rows.append(row)
    finally:
        if counter is not None:
            counter.close()
    return Evaluation(items, rows, model, threshold, far_threshold, false_alarm_rate, time.perf_counter() - started,
                      counter, note, worst.maps() if worst else {})


# --------------------------------------------------------------------------------------------- metrics

def compute_metrics(ev: Evaluation) -> dict:
    """Image metrics over the scored images, counts at the thresholds, and pixel metrics where there are masks.
    Raises UsageError when the readable images hold only one label."""
    scores, labels = ev.scores, ev.labels
    ok = ~np.isnan(scores)
    classes = np.array([it.cls for it in ev.items], dtype=object)
    if set(labels[ok].tolist()) != {0, 1}:
        have = "good" if not labels[ok].any() else "defective"
        raise UsageError(f"only {have} images could be read ({int(ok.sum())} of {len(ok)} scored); evaluate "
                         "needs both good and defective ones")
    out = {"image": image_metrics(labels[ok], scores[ok], classes[ok])}
    out["at_threshold"] = {"model_default": at_threshold(labels[ok], scores[ok], ev.threshold)}
    if ev.far_threshold is not None:
        out["at_threshold"]["false_alarm_rate"] = {"target_false_alarm_rate": ev.false_alarm_rate,
                                                   **at_threshold(labels[ok], scores[ok], ev.far_threshold)}
    if ev.pixel is not None and ev.pixel.accumulator.has_defects:
        out["pixel"] = {**ev.pixel.accumulator.summary(), "covers": ev.pixel_note,
                        "unreadable_masks": ev.pixel.problems, "seconds": round(ev.pixel.seconds, 3)}
    else:
        out["pixel"] = None
        out["pixel_note"] = ev.pixel_note if ev.pixel is None else "no defect pixels in the readable masks"
    return out


GATES = (("--min-auroc", "image AUROC", ("image", "auroc")),
         ("--min-pixel-auroc", "pixel AUROC", ("pixel", "pixel_auroc")),
         ("--min-aupro", "AUPRO@0.3", ("pixel", "aupro")))


def gate_results(metrics: dict, minimums: dict[str, float | None]) -> list[dict]:
    """One entry per gate given: {gate, metric, required, value, passed, short_by}."""
    out = []
    for flag, name, (section, key) in GATES:
        required = minimums.get(flag)
        if required is None:
            continue
        value = (metrics.get(section) or {}).get(key)
        passed = value is not None and value >= required
        out.append({"gate": flag, "metric": name, "required": required, "value": value, "passed": passed,
                    "short_by": None if passed or value is None else required - value})
    return out


def gate_message(gate: dict) -> str:
    if gate["value"] is None:
        return f"gate missed: {gate['gate']} {gate['required']:g}: no {gate['metric']} was computed"
    return (f"gate missed: {gate['metric']} {gate['value']:.4f} < {gate['gate']} {gate['required']:g} "
            f"(short by {gate['short_by']:.4f})")


# --------------------------------------------------------------------------------------------- outputs

def worst_entries(ev: Evaluation, label: int, k: int = WORST_K) -> list[tuple[int, float]]:
    """(item index, score) of the k lowest-scoring defects (label 1) or highest-scoring good images (label 0)."""
    scores, labels = ev.scores, ev.labels
    idx = np.flatnonzero((labels == label) & ~np.isnan(scores))
    order = idx[np.argsort(scores[idx] if label == 1 else -scores[idx], kind="stable")][:k]
    return [(int(i), float(scores[i])) for i in order]


def draw_overlay(item: Item, anomaly_map: np.ndarray | None, target: Path, map_range=None) -> bool:
    """image | map over it | ground truth (when there is a mask) at OVERLAY_SIDE px; False if it cannot be drawn."""
    from PIL import Image

    from .maps import save_picture, side_by_side

    try:
        w, h = original_size(item.path)
        scale = min(1.0, OVERLAY_SIDE / max(w, h))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = data.decode_image(item.path, size)
        canvas = side_by_side(rgb, anomaly_map, map_range) if anomaly_map is not None else Image.fromarray(rgb)
        if item.mask:
            truth = Image.fromarray(load_mask(item.mask, size).astype(np.uint8) * 255).convert("RGB")
            wide = Image.new("RGB", (canvas.width + size[0] + 4, size[1]), (255, 255, 255))
            wide.paste(canvas, (0, 0))
            wide.paste(truth, (canvas.width + 4, 0))
            canvas = wide
        save_picture(canvas, target)
        return True
    except Exception:  # noqa: BLE001 - a missing picture must never fail the evaluation
        return False


def write_overlays(ev: Evaluation, out: Path) -> dict[str, list[dict]]:
    """Pictures of the worst misses and false alarms in out/overlays/ (named by kind and rank)."""
    folder = out / OVERLAY_DIR
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink(missing_ok=True)
    result = {}
    for kind, label in (("worst_misses", 1), ("false_alarms", 0)):
        entries = []
        for rank, (i, score) in enumerate(worst_entries(ev, label), 1):
            item = ev.items[i]
            name = f"{kind}_{rank:02d}.png"
            drawn = draw_overlay(item, ev.worst_maps.get(item.path), folder / name, getattr(ev.model, "map_range", None))
            threshold_hit = score >= ev.threshold
            entries.append({"path": data.printable(item.path), "class": item.cls, "score": score,
                            "flagged": threshold_hit, "picture": f"{OVERLAY_DIR}/{name}" if drawn else None})
        result[kind] = entries
    return result


def write_scores_csv(ev: Evaluation, path: Path) -> None:
    from .files import atomic_write
    from .files import neutralise

    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "class", "score", "flagged", "error"])
        for k, it in enumerate(ev.items):
            row = ev.rows.row(k)
            writer.writerow([neutralise(it.path), it.label, neutralise(it.cls),
                             "" if row.score is None else f"{row.score:.6f}",
                             "" if row.score is None else str(row.score >= ev.threshold).lower(), neutralise(row.error)])


def write_evaluation(ev: Evaluation, out: Path, source: dict, gates: dict[str, float | None],
                     command: list[str] | None = None, html: bool = True) -> dict:
    """Write metrics.json, scores.csv, roc.png, histograms.png (pro.png with pixel metrics), overlays/ and
    report.html into `out`; returns the metrics dict (as in metrics.json)."""
    from . import plots
    from .files import staged
    from .files import safe_text
    from .runinfo import machine, now_iso, versions, write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("icsscan evaluation folder\n", encoding="utf-8")
    metrics = compute_metrics(ev)
    scores, labels = ev.scores, ev.labels
    ok = ~np.isnan(scores)
    failures = [{"path": data.printable(it.path), "reason": ev.rows.row(k).error}
                for k, it in enumerate(ev.items) if not ok[k]]
    m = ev.model
    metrics = {
        "icsscan_version": __version__,
        "finished": now_iso(),
        "command": [safe_text(a) for a in command] if command else command,
        "source": source,
        "model": {"path": safe_text(str(m.path)), "sha256": m.sha256, "score": m.score_kind,
                  "outputs_maps": m.has_map, "default_threshold": ev.threshold,
                  "calibration_images": int(len(m.calibration)), "providers": m.providers},
        "counts": {"images": len(ev.items), "scored": int(ok.sum()), "unreadable": len(failures),
                   "good": int(((labels == 0) & ok).sum()), "defective": int(((labels == 1) & ok).sum()),
                   "classes": {c: sum(1 for it in ev.items if it.cls == c) for c in sorted({it.cls for it in ev.items})}},
        **metrics,
        "gates": gate_results(metrics, gates),
        "unreadable": failures,
        "timings": {"seconds": round(ev.seconds, 3),
                    "images_per_s": round(len(ev.items) / ev.seconds, 2) if ev.seconds > 0 else None},
        "versions": versions(),
        "machine": machine(),
    }
    metrics["passed"] = all(g["passed"] for g in metrics["gates"])
    outputs = ["metrics.json", "scores.csv", "roc.png", "histograms.png"]
    classes = np.array([it.cls for it in ev.items], dtype=object)
    with staged():
        write_scores_csv(ev, out / "scores.csv")
        fpr, tpr = roc_points(labels[ok], scores[ok])
        plots.save_roc_curve(fpr, tpr, metrics["image"]["auroc"], out / "roc.png",
                             operating_points=operating_points(metrics))
        by_class = {c: scores[ok & (classes == c)] for c in sorted(set(classes[ok].tolist()), key=lambda c: (c != GOOD, c))}
        plots.save_score_histograms(by_class, out / "histograms.png",
                                    {"model threshold": ev.threshold, "false-alarm-rate threshold": ev.far_threshold})
        if metrics["pixel"]:
            pro_fpr, pro, _ = ev.pixel.accumulator.pro_curve()
            plots.save_pro_curve(pro_fpr, pro, metrics["pixel"]["aupro"], AUPRO_FPR_LIMIT, out / "pro.png")
            outputs.append("pro.png")
        else:
            (out / "pro.png").unlink(missing_ok=True)
        worst = write_overlays(ev, out)
        metrics.update(worst)
        outputs.append(f"{OVERLAY_DIR}/")
        if html:
            write_evaluation_html(metrics, out)
            outputs.append("report.html")
        else:
            (out / "report.html").unlink(missing_ok=True)
        metrics["outputs"] = outputs
        write_json_atomic(out / "metrics.json", metrics)  # last: its presence marks a finished evaluation
    return metrics


def operating_points(metrics: dict) -> list[tuple[str, float, float]]:
    """(label, false-alarm rate, 1 − miss rate) at each threshold, for the ROC plot."""
    points = []
    for key, label in (("model_default", "model threshold"), ("false_alarm_rate", "--false-alarm-rate")):
        entry = metrics["at_threshold"].get(key)
        if entry and entry["false_alarm_rate"] is not None and entry["miss_rate"] is not None:
            points.append((label, entry["false_alarm_rate"], 1 - entry["miss_rate"]))
    return points


# --------------------------------------------------------------------------------------------- report.html

def write_evaluation_html(metrics: dict, out: Path) -> Path:
    """out/report.html: the gates, the metrics, the plots and the worst misses and false alarms (pictures in
    out/, file names escaped; no scripts, as scan's report)."""
    from urllib.parse import quote

    from .files import write_text_atomic
    from .html import esc, file_uri, page_html

    def pct(v):
        return "n/a" if v is None else f"{v:.2%}"

    rows = [("images", f"{metrics['counts']['images']} ({metrics['counts']['good']} good, "
                       f"{metrics['counts']['defective']} defective scored; {metrics['counts']['unreadable']} unreadable)"),
            ("image AUROC", f"{metrics['image']['auroc']:.4f}"),
            ("average precision", f"{metrics['image']['average_precision']:.4f}")]
    rows += [(f"AUROC {name} vs good", f"{v['auroc']:.4f} ({v['n']} images)")
             for name, v in metrics["image"]["per_class"].items()]
    for key, title in (("model_default", "at the model's threshold"), ("false_alarm_rate", "at --false-alarm-rate")):
        t = metrics["at_threshold"].get(key)
        if t:
            rows.append((f"{title} ({t['threshold']:.4g})",
                         f"false alarms {pct(t['false_alarm_rate'])} ({t['fp']} of {t['fp'] + t['tn']}), misses "
                         f"{pct(t['miss_rate'])} ({t['fn']} of {t['fn'] + t['tp']}), F1 {t['f1']:.3f}"))
    pixel = metrics.get("pixel")
    if pixel:
        rows += [("pixel AUROC", f"{pixel['pixel_auroc']:.4f}"),
                 (f"AUPRO (FPR ≤ {pixel['aupro_fpr_limit']:g})", f"{pixel['aupro']:.4f}"),
                 ("pixel metrics cover", pixel["covers"])]
    else:
        rows.append(("pixel metrics", metrics.get("pixel_note", "none")))
    table = "\n".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in rows)
    gates = metrics["gates"]
    if gates:
        verdict = "all gates met" if metrics["passed"] else "a gate was missed"
        items = "".join(f"<li>{'✔' if g['passed'] else '✘'} {esc(g['metric'])} "
                        f"{'n/a' if g['value'] is None else format(g['value'], '.4f')} "
                        f"(required ≥ {g['required']:g})</li>" for g in gates)
        gate_html = f'<p class="banner">{esc(verdict)}</p><ul>{items}</ul>'
    else:
        gate_html = "<p>No gates given (--min-auroc, --min-pixel-auroc, --min-aupro).</p>"
    plots = ['<img src="roc.png" alt="image ROC curve" width="500">',
             '<img src="histograms.png" alt="score histograms by class" width="700">']
    if pixel:
        plots.append('<img src="pro.png" alt="PRO curve" width="500">')

    def grid(entries: list[dict], empty: str) -> str:
        if not entries:
            return f"<p>{esc(empty)}</p>"
        cards = []
        for e in entries:
            picture = (f'<img class="wide" src="{esc(quote(e["picture"]))}" alt="{esc(Path(e["path"]).name)}">'
                       if e["picture"] else '<div class="nothumb">no preview</div>')
            link = file_uri(e["path"])
            state = "flagged" if e["flagged"] else "not flagged"
            name = f'<a href="{esc(link)}">{esc(e["path"])}</a>' if link else esc(e["path"])
            cards.append(f'<figure class="case">{picture}<figcaption>{esc(e["class"])} · score {e["score"]:.4f} '
                         f'({state})<br><span class="path">{name}</span></figcaption></figure>')
        return '<div class="grid">' + "\n".join(cards) + "</div>"

    legend = ("<p>Each picture: the image | its anomaly map over it (blue = typical, red = least typical; the ring "
              "marks the peak) | the ground-truth mask, where there is one.</p>") if metrics["model"]["outputs_maps"] else ""
    failures = metrics["unreadable"]
    listed = "".join(f"<tr><td><code>{esc(f['path'])}</code></td><td>{esc(f['reason'])}</td></tr>"
                     for f in failures[:1000])
    more = f"<p>… and {len(failures) - 1000} more; see metrics.json.</p>" if len(failures) > 1000 else ""
    failed = (f'<table class="failures" id="unreadable">{listed}</table>{more}' if failures
              else "<p>None: every image was scored.</p>")
    body = "\n".join([
        "<style>figure.case{margin:0;max-width:820px;border:1px solid #ccc;border-radius:4px;padding:6px;"
        "background:#fafafa} img.wide{display:block;max-width:100%;height:auto} .plots{display:flex;flex-wrap:wrap;"
        "align-items:flex-start;gap:12px} .plots img{max-width:100%;height:auto}</style>",
        "<h1>icsscan evaluation</h1>",
        f"<p>Model <code>{esc(metrics['model']['path'])}</code> on "
        f"<code>{esc(metrics['source'].get('data') or metrics['source'].get('labels'))}</code>, "
        f"{esc(metrics['finished'])}, icsscan {esc(metrics['icsscan_version'])}. "
        'Numbers: <a href="metrics.json">metrics.json</a>, per image: <a href="scores.csv">scores.csv</a>.</p>',
        "<h2>Gates</h2>", gate_html,
        '<h2>Metrics</h2>\n<table class="summary">', table, "</table>",
        '<h2>Plots</h2>\n<div class="plots">' + "\n".join(plots) + "</div>",
        f"<h2>Worst misses: defective images with the lowest scores ({len(metrics['worst_misses'])})</h2>", legend,
        grid(metrics["worst_misses"], "No defective images were scored."),
        f"<h2>False alarms: good images with the highest scores ({len(metrics['false_alarms'])})</h2>",
        grid(metrics["false_alarms"], "No good images were scored."),
        f"<h2>Unreadable files ({len(failures)})</h2>", failed,
    ])
    page = out / "report.html"
    write_text_atomic(page, page_html("icsscan evaluation", body))
    return page
