"""Small matplotlib figures written next to outputs (headless: the Agg backend, no display needed)."""
from __future__ import annotations

from pathlib import Path


def save_loss_curve(log: list[dict], path: Path) -> None:
    """The ICS losses (and the rotation loss, when trained) against the iteration, one line each (missing losses are skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for name in ("closeness", "intra_class", "dispersion", "rotation"):
        points = [(row["iteration"], row[name]) for row in log if name in row]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=name.replace("_", "-"))
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title("training losses")
    if ax.lines:
        ax.legend()
    else:  # nothing trained by a loss (a local model whose gate dropped its ICS head): say so, not an empty legend
        ax.set_yscale("linear")
        ax.text(0.5, 0.5, "no network was trained with a loss here", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_roc_curve(fpr, tpr, auroc: float, path: Path, operating_points=()) -> None:
    """The image-level ROC curve (false-alarm rate against detection rate), with the chance diagonal and
    `operating_points` = [(label, false-alarm rate, detection rate)] marked (e.g. the model's threshold)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUROC {auroc:.4f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    for (label, x, y), marker in zip(operating_points, "os^D"):
        ax.plot([x], [y], marker, ms=8, label=f"{label}: {x:.1%} false alarms, {y:.1%} found")
    ax.set_xlabel("false-alarm rate (good images flagged)")
    ax.set_ylabel("detection rate (defective images flagged)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_title("image ROC")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_score_histograms(scores_by_class: dict, path: Path, thresholds: dict | None = None, bins: int = 40) -> None:
    """Histograms of the anomaly scores, one per class (good first), on shared bins, as densities so that
    classes of different sizes compare; vertical lines at `thresholds` = {label: value or None}."""
    import numpy as np

    plt = _pyplot()
    values = [np.asarray(v, dtype=float) for v in scores_by_class.values() if len(v)]
    everything = np.concatenate(values) if values else np.zeros(1)
    lo, hi = float(everything.min()), float(everything.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, scores in scores_by_class.items():
        if len(scores):
            ax.hist(scores, bins=edges, density=True, histtype="stepfilled" if name == "good" else "step",
                    alpha=0.35 if name == "good" else 1.0, lw=1.5, label=f"{name} ({len(scores)})")
    for (label, value), style in zip((thresholds or {}).items(), ("-", ":")):
        if value is not None:
            ax.axvline(value, c="red", ls=style, lw=1.5, label=f"{label} {value:.4g}")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("density")
    ax.set_title("scores by class")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_pro_curve(fpr, pro, aupro: float, limit: float, path: Path) -> None:
    """The per-region-overlap curve against the pixel false-positive rate, shaded up to `limit`."""
    import numpy as np

    plt = _pyplot()
    fpr, pro = np.asarray(fpr), np.asarray(pro)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.plot(fpr, pro, lw=2, label=f"PRO (AUPRO@{limit:g} {aupro:.4f})")
    inside = fpr <= limit
    ax.fill_between(fpr[inside], pro[inside], alpha=0.2)
    ax.axvline(limit, c="grey", ls="--", lw=1)
    ax.set_xlim(0, min(1.0, 2 * limit))
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("pixel false-positive rate (normal pixels)")
    ax.set_ylabel("mean overlap per defect region")
    ax.set_title("per-region overlap (PRO)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
