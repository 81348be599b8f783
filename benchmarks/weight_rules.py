"""Label-free weighting rules for the whole-object components, compared offline on dumped component scores.

Issue 17 asks the default to weigh its components (eknn, eics, ssim) from normal images alone. The rule in the
product (`fusion.weigh_without_labels`: weight ∝ (2·AUC − 1)^8, the AUC of each component on held-out normals
vs synthetic anomalies made from them, the standardised components summed linearly) was chosen here; until
2026-12-02 it was ∝ (2·AUC − 1)² through a signed log, near-equal weights on the digit sets. This script replays
the rules on the *same* fitted components, so that only the rule differs: each cell's scores on held-out normals
(`cal`), synthetic anomalies (`syn`) and the test set, dumped by

    python benchmarks/embed_table1.py --datasets fashion_mnist,mnist --seeds 0 --ablation-seeds 99 \
        --with-ssim --skip-ocsvm --raw /tmp/study_raw.csv --dump benchmarks/.cache/components_embed

Every rule sees only `cal` and `syn` (no test labels); the test labels only score the result. Fusion as in the
product: each component standardised on the held-out normals (robust centre and spread), through a signed log
or not, weighted sum (embed_table1.fused_logit).

    python benchmarks/weight_rules.py --dump benchmarks/.cache/components_embed

Writes benchmarks/results/weight_rules.md and .csv (test AUC per cell and rule, and each rule's weights).
"""
from __future__ import annotations

import argparse
import csv
import itertools
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import paper_eval as pe  # noqa: E402
from embed_table1 import fused_logit, load_cell  # noqa: E402

from icsscan.fusion import WHOLE_OBJECT_POWER  # noqa: E402
from icsscan.fusion import label_free_weights  # noqa: E402

PARTS = ("eknn", "eics", "ssim")
RESULTS = HERE / "results"


def synthetic_auc(cal: np.ndarray, syn: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(cal)), np.ones(len(syn))], np.r_[cal, syn]))


def power_rule(aucs: dict[str, float], power: float) -> dict[str, float]:
    w = {p: max(0.0, 2 * a - 1) ** power for p, a in aucs.items()}
    total = sum(w.values())
    return {p: v / total for p, v in w.items()} if total > 0 else {p: 1 / len(w) for p in w}


def fused_synthetic_auc(values: dict, weights: dict[str, float]) -> float:
    """How well the fused score (standardised on the held-out normals) tells them from their synthetic copies."""
    live = {p: v for p, v in weights.items() if v > 0}
    cal_vs_syn = {"cal": values["cal"], "test": {p: np.r_[values["cal"][p], values["syn"][p]] for p in live}}
    z = fused_logit(cal_vs_syn, live, 0.1)
    n = len(values["cal"]["eknn"])
    return synthetic_auc(z[:n], z[n:])


def subsets_equal() -> list[dict[str, float]]:
    out = []
    for k in range(1, len(PARTS) + 1):
        for sub in itertools.combinations(PARTS, k):
            out.append({p: (1 / k if p in sub else 0.0) for p in PARTS})
    return out


def rules(values: dict) -> dict[str, tuple[dict[str, float], bool]]:
    """Every rule's (weights, signed log before the sum?) for one cell, from `cal` and `syn` only."""
    found = label_free_weights({p: values["cal"][p] for p in PARTS}, {p: values["syn"][p] for p in PARTS},
                               WHOLE_OBJECT_POWER)
    product = {p: w for p, (w, _) in found.items()}  # the product's own rule, as the default calls it
    aucs = {p: auc for p, (_, auc) in found.items()}
    square = power_rule(aucs, 2)  # the product's rule before 2026-12-02
    best = max(aucs, key=aucs.get)
    candidates = subsets_equal()
    chosen = max(candidates, key=lambda w: fused_synthetic_auc(values, w))
    chosen_or_square = max(candidates + [square], key=lambda w: fused_synthetic_auc(values, w))
    return {
        f"product: ∝ (2·AUC−1)^{WHOLE_OBJECT_POWER:g}, linear sum": (product, False),
        "∝ (2·AUC−1)², signed log (the product until 2026-12-02)": (square, True),
        "∝ (2·AUC−1)², linear sum": (square, False),
        "equal, signed log": ({p: 1 / 3 for p in PARTS}, True),
        "equal, linear sum": ({p: 1 / 3 for p in PARTS}, False),
        "∝ (2·AUC−1)⁴, signed log": (power_rule(aucs, 4), True),
        "∝ (2·AUC−1)⁸, signed log": (power_rule(aucs, 8), True),
        "∝ (2·AUC−1)¹⁶, linear sum": (power_rule(aucs, 16), False),
        "best component alone (by synthetic AUC)": ({p: float(p == best) for p in PARTS}, True),
        "equal-weight subset with the best fused synthetic AUC, signed log": (chosen, True),
        "the same, the (2·AUC−1)² weights a candidate too": (chosen_or_square, True),
        "(reference) eknn alone": ({"eknn": 1.0, "eics": 0.0, "ssim": 0.0}, True),
        **{f"(ablation) the product's rule without {gone}": (without(values, gone), False) for gone in PARTS},
    }


def without(values: dict, gone: str) -> dict[str, float]:
    """The product's rule on the other two components: what `gone` adds to the default."""
    kept = [p for p in PARTS if p != gone]
    found = label_free_weights({p: values["cal"][p] for p in kept}, {p: values["syn"][p] for p in kept},
                               WHOLE_OBJECT_POWER)
    return {p: (found[p][0] if p in found else 0.0) for p in PARTS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dump", type=Path, required=True)
    args = ap.parse_args()
    rows = []
    labels = {}
    for path in sorted(args.dump.glob("*.npz")):
        name, cls, seed = path.stem.rsplit("-", 2)
        if name not in labels:
            labels[name] = pe.load_dataset(name).y_test
        values = load_cell(path)
        for rule, (w, compress) in rules(values).items():
            live = {p: v for p, v in w.items() if v > 0}
            auc = pe.auc_percent(labels[name], int(cls), fused_logit(values, live, 0.1, compress))
            rows.append({"dataset": name, "class": int(cls), "seed": seed[1:], "rule": rule, "auc": round(auc, 2),
                         **{f"w_{p}": round(w[p], 3) for p in PARTS}})
        print(name, cls, seed, flush=True)
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "weight_rules.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    datasets = sorted({r["dataset"] for r in rows})
    order = list(dict.fromkeys(r["rule"] for r in rows))
    lines = ["# Label-free weighting rules for the whole-object components (`benchmarks/weight_rules.py`)", "",
             f"Command: `python benchmarks/weight_rules.py --dump {args.dump}`; cells: "
             + ", ".join(f"{d} {len({(r['class'], r['seed']) for r in rows if r['dataset'] == d})}" for d in datasets)
             + ". Same fitted components in every rule; the rules see held-out normals and synthetic anomalies only.",
             "", "| rule | " + " | ".join(f"{d} mean AUC" for d in datasets) + " | " +
             " | ".join(f"{d} mean weights eknn / eics / ssim" for d in datasets) + " |",
             "|---|" + "---:|" * len(datasets) + "---|" * len(datasets)]
    for rule in order:
        sel = {d: [r for r in rows if r["dataset"] == d and r["rule"] == rule] for d in datasets}
        aucs = " | ".join(f"{np.mean([r['auc'] for r in sel[d]]):.2f}" for d in datasets)
        ws = " | ".join(" / ".join(f"{np.mean([r[f'w_{p}'] for r in sel[d]]):.2f}" for p in PARTS) for d in datasets)
        lines.append(f"| {rule} | {aucs} | {ws} |")
    (RESULTS / "weight_rules.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
