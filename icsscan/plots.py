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
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
