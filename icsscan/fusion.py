"""Fusion: the components' robust standardisation, their one weighted sum, the weighting rules and their fitting.

Each component is standardised by its median and spread (IQR/1.349) on held-out normal images, weighted, summed
(linearly, or through a signed log first: `fused_sum`), and shifted so that the sigmoid puts 0.5 at the (1 − ρ)
quantile of those normals (`standardise_and_offset`). The weights come from the score string ("fixed"), or without
labels from how well each component tells held-out normals from synthetic anomalies of them ("synthetic",
`weigh_without_labels`; local models also "gated", gated_weights). `fit_fusion` fits a global model's
scorer (scorer.AnomalyScorer), `fit_local_fusion` a local one's (local.LocalScorer).
"""
from __future__ import annotations

import numpy as np
import torch

from .config import EMBED_COMPONENTS, ICSConfig, score_weights
from .models import signed_log1p
from .scorer import SCORE_BATCH, AnomalyScorer, rotation_accuracy

# whole-object label-free weights ∝ (2·AUC − 1)^8 on held-out normals vs synthetic anomalies: the sharper power
# follows the component that sees the synthetic anomalies best without dropping the others. Same fitted
# components of all 150 Table-1 cells (weight_rules.md), CIFAR-10 / F-MNIST / MNIST: power 2 91.11 / 94.22 /
# 98.75, 8 91.01 / 95.06 / 98.86 (both with the signed log; 8 with the linear sum 91.01 / 95.15 / 99.02). The
# power was chosen on those benchmarks (one number for all); the weights a user gets come from their normals alone
WHOLE_OBJECT_POWER = 8


# ---------------------------------------------------------------- the label-free weighting rules

def label_free_weights(normal: dict[str, np.ndarray], synthetic: dict[str, np.ndarray],
                       power: float = 2) -> dict[str, tuple[float, float]]:
    """Each component's (weight, AUC) from how well it tells held-out normals from their synthetic-defect copies.

    weight ∝ (2·AUC − 1)^power (0 at chance; a component that cannot see the defects a user cares about gets no
    say), normalised to sum to 1; if no component beats chance, equal weights.
    """
    from sklearn.metrics import roc_auc_score

    out = {}
    for part in normal:
        y = np.r_[np.zeros(len(normal[part])), np.ones(len(synthetic[part]))]
        auc = float(roc_auc_score(y, np.r_[normal[part], synthetic[part]]))
        out[part] = (max(0.0, 2 * auc - 1) ** power, auc)
    total = sum(w for w, _ in out.values())
    if total <= 0:
        return {p: (1 / len(out), auc) for p, (_, auc) in out.items()}
    return {p: (w / total, auc) for p, (w, auc) in out.items()}


GATE_P_VALUE = 0.01  # a gated component is kept when it beats chance on normals vs synthetic defects at this level
GATED_COMPONENTS = ("gknn",)  # the image-level ones; a local map component sees local changes by construction


def gated_weights(normal: dict[str, np.ndarray], synthetic: dict[str, np.ndarray], fixed: dict[str, float],
                  gated: tuple[str, ...] = GATED_COMPONENTS) -> dict[str, tuple[float, float, float]]:
    """Each component's (weight, AUC, p-value) from held-out normals vs their synthetic-defect copies: the fixed
    weights, with a component of `gated` that cannot tell the two apart better than chance (one-sided
    Mann-Whitney U, p ≥ GATE_P_VALUE) set to 0; renormalised. If nothing would be left, the fixed weights.

    Why a gate and not weights ∝ that AUC (label_free_weights): pics is trained on the same kind of defects and
    scores ~0.92-1.0 there, so proportional weights handed it 0.88 of the say (deeppcb 0.787 vs 0.836 equal).
    The gate asks one question the generator can answer: does the image's mean embedding see small local
    changes *at all*? On many parts it does not (deeppcb: AUC 0.50), and a component at chance in an
    equal-weight average costs the fusion 0.01-0.05 AUC. Only image-level components are gated: with few
    held-out normals (10 → AUC ≥ 0.78 needed) the test would also drop the local ones, which the map needs."""
    from scipy.stats import mannwhitneyu

    out = {}
    for part, weight in fixed.items():
        test = mannwhitneyu(synthetic[part], normal[part], alternative="greater")
        auc = float(test.statistic) / (len(normal[part]) * len(synthetic[part]))
        keep = part not in gated or test.pvalue < GATE_P_VALUE
        out[part] = (weight if keep else 0.0, auc, float(test.pvalue))
    total = sum(w for w, _, _ in out.values())
    if total <= 0:
        return {p: (fixed[p], auc, pv) for p, (_, auc, pv) in out.items()}
    return {p: (w / total, auc, pv) for p, (w, auc, pv) in out.items()}


def without_redundant_head(weights: dict[str, float], record: dict[str, float], limit: float,
                           untrained: bool = False) -> dict[str, float]:
    """The weights with the ICS head's (pics) set to 0 when the patch kNN alone already tells held-out normals
    from their synthetic local defects with AUC ≥ `limit` (record["knn_synthetic_auc"]); renormalised. Records
    `pics_redundant` (1.0 dropped, 0.0 kept). limit ≥ 1: never dropped. `untrained`: the head was left out
    before training on that same AUC (fit_local_fusion), so `weights` has no pics; it gets 0.

    Why: the head is there to see what the nearest-neighbour distance misses. Where the kNN already sees the
    synthetic defects, the head adds no detection, only its own false alarms on normal variety (suite, the
    default's fits: kNN's synthetic AUC casting 0.997, magnetic_tile 0.929, deeppcb 0.757; without the head
    0.9983 / 0.9555 / 0.9444 against 0.9962 / 0.9449 / 0.9724 with it; benchmarks/results/industrial.md)."""
    auc = record.get("knn_synthetic_auc")
    if untrained:
        record["pics_redundant"] = 1.0
        return {**weights, "pics": 0.0}
    drop = auc is not None and auc >= limit and weights.get("pics", 0) > 0 and weights.get("knn", 0) > 0
    record["pics_redundant"] = float(drop)
    if not drop:
        return weights
    kept = {p: (0.0 if p == "pics" else w) for p, w in weights.items()}
    total = sum(kept.values())
    return {p: w / total for p, w in kept.items()}


def robust_center_scale(values: np.ndarray) -> tuple[float, float]:
    """Median and IQR/1.349 (the normal-consistent spread); never zero."""
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return float(q50), float(max((q75 - q25) / 1.349, 1e-6))


def standardised(values: np.ndarray, center: float, scale: float, compress: bool = True) -> np.ndarray:
    """FusionBuffers.standardised in NumPy: (value − centre) / spread, through the signed log when `compress`."""
    z = torch.from_numpy(np.asarray((values - center) / scale))
    return (signed_log1p(z) if compress else z).numpy()


def fused_sum(values: dict[str, np.ndarray], fusion: dict[str, float], compress: bool) -> np.ndarray:
    """FusionBuffers.weighted_sum in NumPy: Σ weight · standardised value over `values`' parts."""
    return sum(fusion[f"{p}_weight"] * standardised(v, fusion[f"{p}_center"], fusion[f"{p}_scale"], compress)
               for p, v in values.items())


def standardise_and_offset(values: dict[str, np.ndarray], weights: dict[str, float], rho: float,
                           compress: bool = True) -> dict[str, float]:
    """Each component's centre, spread and weight on reference normals, and the offset that puts 0.5 at (1 − ρ).

    compress: each standardised component through a signed log before the weighted sum (AnomalyScorer.fused_z).
    The whole-object default sums linearly: its label-free weights (∝ (2·AUC − 1)⁸) already mute a component
    that cannot see the synthetic anomalies, and a linear sum lets the one that sees an anomaly clearly speak in
    full. On the same fitted components of all 150 Table-1 cells (benchmarks/weight_rules.md), CIFAR-10 /
    F-MNIST / MNIST: signed log 91.01 / 95.06 / 98.86, linear 91.01 / 95.15 / 99.02."""
    fusion: dict[str, float] = {}
    for part, v in values.items():
        center, scale = robust_center_scale(v)
        fusion[f"{part}_center"], fusion[f"{part}_scale"], fusion[f"{part}_weight"] = center, scale, weights[part]
    z = fused_sum(values, fusion, compress)
    fusion["offset"] = float(np.quantile(np.asarray(z, dtype=np.float64), 1 - rho))
    return fusion


def weigh_without_labels(normal: dict[str, np.ndarray], synthetic: dict[str, np.ndarray], fixed: dict[str, float],
                         record: dict[str, float], power: float = 2) -> dict[str, float]:
    """The fixed weights times each component's label-free weight (label_free_weights, ∝ (2·AUC − 1)^power),
    normalised; each component's AUC on normals vs synthetic anomalies is recorded as `<part>_synthetic_auc`."""

    found = label_free_weights(normal, synthetic, power)
    weights = {p: w * fixed[p] * len(fixed) for p, (w, _) in found.items()}
    total = sum(weights.values())
    weights = {p: w / total for p, w in weights.items()} if total > 0 else dict(fixed)
    for p, (_, auc) in found.items():
        record[f"{p}_synthetic_auc"] = auc
    return weights


@torch.no_grad()
def fit_fusion(scorer: AnomalyScorer, reference: torch.Tensor, rho: float, synthetic: torch.Tensor | None = None,
               reference_is_training: bool = False, keep: dict | None = None) -> dict[str, float]:
    """Centre and spread of each component on reference normals, and the offset that puts 0.5 at (1 − ρ).

    With `synthetic` (the reference normals with one synthetic anomaly each) the score string's weights are
    multiplied by label-free ones: how well each component separates the two sets (label_free_weights).
    reference_is_training: too few images for a held-out set, the training images stand in (their eknn is
    taken to the nearest *other* training images)."""
    def values_of(images: torch.Tensor, exclude_self: bool = False) -> dict[str, np.ndarray]:
        others = tuple(p for p in scorer.parts if p not in EMBED_COMPONENTS)
        chunks = [scorer.components(images[i:i + SCORE_BATCH], others) for i in range(0, len(images), SCORE_BATCH)
                  ] if others else []
        values = {part: torch.cat([c[part].cpu() for c in chunks]).double().numpy() for part in others}
        if len(others) < len(scorer.parts):  # the embedding once per image (onnxruntime on the CPU: embed_all)
            from .embed import embed_all

            e = embed_all(scorer.embedder.embedding, images).to(images.device)
            got = scorer.embedder.components_of(e, exclude_self=exclude_self)
            values.update({p: got[p].cpu().double().numpy() for p in scorer.parts if p in EMBED_COMPONENTS})
        return values

    fusion: dict[str, float] = {"offset": 0.0}
    if "rot" in scorer.parts:  # recorded for the user: how learnable the rotation task is on their images
        fusion["rot_accuracy"] = rotation_accuracy(scorer.classifier, reference)
    values = values_of(reference, reference_is_training)
    if keep is not None:  # the caller's copy of the reference components (float32 values, as float64)
        keep.update(values)
    weights = score_weights(scorer.kind)
    if synthetic is not None:
        weights = weigh_without_labels(values, values_of(synthetic), weights, fusion, power=WHOLE_OBJECT_POWER)
    compress = synthetic is None  # label-free weights: a linear sum (standardise_and_offset)
    return {**fusion, **standardise_and_offset(values, weights, rho, compress), "compress": float(compress)}


@torch.no_grad()
def fit_local_fusion(scorer, reference: list, cfg: ICSConfig, batch: int = 8,
                     reference_is_training: bool = False, synthetic: list | None = None,
                     heads=None, info: dict | None = None, on_log=None, head_allowed: bool = True):
    """Centre and spread of each local component on held-out normals, and the offset putting 0.5 at (1 − ρ).
    Returns (fusion, values, maps): the fitted buffers' values, and the reference's image-level components and
    local maps they were fitted on (local.scores_from_components turns them into the reference's scores).

    `reference` (and `synthetic`): [(images, local.FoldBank or None)], the calibration images fold by fold, each
    scored by the model fitted without its fold (out of fold: local.values_by_fold); None = the model itself.

    With `synthetic` (the held-out normals with one synthetic local defect each, synthetic.synthetic_defects) the
    weights are chosen without labels: local_weights "gated" keeps the score string's weights (equal by default)
    but drops the global gknn when it cannot tell the two sets apart better than chance (gated_weights) and the
    ICS head where the patch kNN alone tells them apart (without_redundant_head); "synthetic" makes each
    component's share grow with how well it separates them.

    `head_allowed` False (a folder calibrated in several folds, detector._fit_local): a gated head is left out as
    if the gate had dropped it (never trained), since its scores of the calibration images would be in-sample.

    `heads` (local.PendingHeads): the ICS heads, not trained yet. Where the gate can drop them, the components
    without them are computed first and the heads are trained (on_log sees their log; `info` gets their split
    and seconds) and computed only if the kNN's AUC keeps them: the same fusion, without the training a dropped
    head never uses.

    Too few images for a held-out set: the training images stand in, and their global kNN distance is taken to
    the nearest *other* training image (to itself it would be 0)."""
    from .local import values_by_fold

    info = {} if info is None else info
    weights = score_weights(cfg.score)
    gate_first = (heads is not None and synthetic is not None and cfg.local_weights == "gated" and cfg.ics_gate < 1
                  and weights.get("knn", 0) > 0 and weights.get("pics", 0) > 0)
    if heads is not None and not gate_first:
        heads.train(info, on_log)
    with scorer.leaving_out({"pics"} if gate_first else set()):
        values, maps = values_by_fold(scorer, reference, reference_is_training, batch, keep_maps=True)
        defected = values_by_fold(scorer, synthetic, False, batch) if synthetic is not None else None
    fusion: dict[str, float] = {}
    if (gate_first and head_allowed  # not allowed: left out as if the gate had dropped it, never trained
            and gated_weights(values, defected, without("pics", weights))["knn"][1] < cfg.ics_gate):
        heads.train(info, on_log)  # the head is kept: train it, and add its values to the others
        with scorer.leaving_out(set(scorer.parts) - {"pics"}):
            head_values, head_maps = values_by_fold(scorer, reference, reference_is_training, batch, keep_maps=True)
            values.update(head_values)
            maps.update(head_maps)
            defected.update(values_by_fold(scorer, synthetic, False, batch))
    if synthetic is not None:  # weights from normal images alone: held-out normals vs their synthetic defects
        if cfg.local_weights == "gated":  # drop the global component if it cannot see small local changes
            gated = gated_weights(values, defected, {p: w for p, w in weights.items() if p in values})
            weights = {p: w for p, (w, _, _) in gated.items()}
            for p, (_, auc, p_value) in gated.items():
                fusion[f"{p}_synthetic_auc"], fusion[f"{p}_gate_p"] = auc, p_value
            weights = without_redundant_head(weights, fusion, cfg.ics_gate, untrained="pics" not in values)
        else:
            weights = weigh_without_labels(values, defected, weights, fusion)
    fusion.update(standardise_and_offset({p: values[p] for p in scorer.parts if p in values}, weights, cfg.rho))
    fusion.update({f"{p}_weight": 0.0 for p in scorer.parts if p not in values})  # never computed: silent
    if maps and cfg.edge_calibration and not reference_is_training:  # training images' maps are biased low
        fusion.update(calibrate_edges(scorer, maps, fusion))
    if scorer.aggregate == "fused" and maps:
        fusion.update(calibrate_fused_local(scorer, values, maps, fusion, cfg.rho))
    if scorer.smoothing and maps:
        fusion.update(calibrate_output_map(scorer, maps, fusion, cfg.edge_calibration and not reference_is_training))
    return fusion, values, maps


def without(part: str, weights: dict[str, float]) -> dict[str, float]:
    return {p: w for p, w in weights.items() if p != part}


EDGE_QUANTILE = 0.99  # the upper tail matched between each side's outermost cells and the interior


@torch.no_grad()
def calibrate_edges(scorer, maps: dict[str, torch.Tensor], fusion: dict, batch: int = 64) -> dict[str, float]:
    """Each side's (top, bottom, left, right) affine map onto the interior, from the held-out normals' maps: its
    median and 99th percentile onto the interior's (edge_gain_<side>, edge_shift_<side>; LocalScorer.
    edges_calibrated; a gain above 1 is capped at 1 and the percentile alone matched). A side whose upper tail is
    not above the interior's stays as it is: this removes evidence the border made up, never adds any. Chosen on
    the suite (held-out deeppcb / magnetic_tile normals, test maps of the default before this): the outermost
    row/column alone, per side, at the 99th percentile —
    border peaks 23 % → 3 % / 30 % → 3 %, the maps' top-k AUC 0.973 → 0.986 / 0.848 → 0.870, casting unchanged;
    two rings or one pooled ring did no better on the worse set (industrial.md)."""
    from .local import fused_local_heat

    scorer.set_fusion(fusion)  # the components' centres, spreads and weights the map is standardised with
    return edge_affines(fused_local_heat(scorer, maps, batch, calibrated=False).numpy())


def edge_affines(heat: np.ndarray, prefix: str = "edge") -> dict[str, float]:
    """calibrate_edges' rule on maps `heat` (N, h, w): <prefix>_gain_<side>, <prefix>_shift_<side>."""
    from .local import EDGES, edge_index

    side = edge_index(*heat.shape[1:])
    inside = heat[:, side == EDGES]
    out: dict[str, float] = {}
    if not inside.size:
        return out
    mid, top = np.median(inside), np.quantile(inside, EDGE_QUANTILE)
    for s in range(EDGES):
        values = heat[:, side == s]
        s_mid, s_top = np.median(values), np.quantile(values, EDGE_QUANTILE)
        if s_top <= top:  # no excess at the top: as it is
            out[f"{prefix}_gain_{s}"], out[f"{prefix}_shift_{s}"] = 1.0, 0.0
            continue
        # the spread is only ever narrowed (gain ≤ 1): a wider one would lift the side's extreme values
        gain = min(1.0, (top - mid) / (s_top - s_mid)) if s_top > s_mid else 1.0
        out[f"{prefix}_gain_{s}"], out[f"{prefix}_shift_{s}"] = float(gain), float(top - gain * s_top)
    return out


def calibrate_fused_local(scorer, values: dict[str, np.ndarray], maps: dict[str, torch.Tensor], fusion: dict,
                          rho: float) -> dict[str, float]:
    """For aggregate "fused": the centre and spread of the fused map's top-k on the reference normals, and the
    offset of the score it enters (LocalScorer.fused_logit), given the components' centres, spreads, weights."""
    from .local import fused_local_values

    scorer.set_fusion(fusion)  # the heat map standardises each component with these
    local = fused_local_values(scorer, maps)
    center, scale = robust_center_scale(local)
    total = sum(fusion[f"{p}_weight"] for p in maps)
    z = total * standardised(local, center, scale)
    for part in (p for p in scorer.parts if p not in maps and p in values):  # one never computed is weighed 0
        z = z + fusion[f"{part}_weight"] * standardised(values[part], fusion[f"{part}_center"], fusion[f"{part}_scale"])
    return {"local_center": center, "local_scale": scale, "offset": float(np.quantile(z, 1 - rho))}


@torch.no_grad()
def calibrate_output_map(scorer, maps: dict[str, torch.Tensor], fusion: dict, edges: bool = True,
                         batch: int = 64) -> dict[str, float]:
    """For a blurred output map (map_smoothing), from the reference normals' blurred maps: each side's calibration
    again (map_edge_*, calibrate_edges' rule; `edges`), and the map's top-k centre and spread (map_center,
    map_scale): the overlays' colour range (export.map_colour_range) in the units of the map scan writes. A blur
    lowers a small hot spot's peak, so the range of the unblurred map would leave a blurred defect under-coloured;
    and it let a line of mildly raised edge cells outrank the blurred interior (magnetic_tile, test maps: 9 % →
    34 % of peaks on the border without this, chance 13 %)."""
    from .local import fused_local_heat, top_k_mean

    scorer.set_fusion(fusion)
    heat = fused_local_heat(scorer, maps, batch)
    device = next(scorer.buffers()).device
    blurred = torch.cat([scorer.blurred(heat[i:i + batch].to(device)).cpu() for i in range(0, len(heat), batch)])
    out = edge_affines(blurred.numpy(), prefix="map_edge") if edges else {}
    scorer.set_fusion({**fusion, **out})
    peaks = torch.cat([top_k_mean(scorer.edges_calibrated(blurred[i:i + batch].to(device), "map_edge")).cpu()
                       for i in range(0, len(blurred), batch)])
    center, scale = robust_center_scale(peaks.double().numpy())
    return {**out, "map_center": center, "map_scale": scale}


@torch.no_grad()
def fuse_global(classifier, autoencoder, embedder, cfg: ICSConfig, reference: torch.Tensor,
                synthetic: torch.Tensor | None = None, reference_is_training: bool = False):
    """A global model's scorer with its fusion fitted on the `reference` normals (fit_fusion).

    Returns (scorer, fusion, reference scores): with one component there is nothing to fuse (fusion None); the
    reference's scores come from the components the fit computed — the scorer's own fusion of them is exactly its
    forward pass (same float32 values and ops) — and are None when the reference is the training set."""
    device = reference.device
    scorer = AnomalyScorer(classifier, autoencoder, cfg.score, embedder=embedder).to(device).eval()
    if len(scorer.parts) == 1:
        return scorer, None, None
    values: dict[str, np.ndarray] = {}
    fusion = fit_fusion(scorer, reference, cfg.rho, synthetic=synthetic, reference_is_training=reference_is_training,
                        keep=values)
    scorer = AnomalyScorer(classifier, autoencoder, cfg.score, fusion, embedder=embedder).to(device).eval()
    if reference_is_training:
        return scorer, fusion, None
    z = scorer.fused_z({p: torch.from_numpy(v).float().to(device) for p, v in values.items()})
    return scorer, fusion, np.sort(torch.sigmoid(z - scorer.offset).double().cpu().numpy())


def fuse_local(scorer, images: np.ndarray, fit_idx: np.ndarray, folds: list[np.ndarray], cfg: ICSConfig,
               device: torch.device, heads=None, info: dict | None = None,
               on_log=None, head_allowed: bool = True) -> tuple[dict[str, float], np.ndarray]:
    """A local scorer's fusion fitted on the calibration normals `images[folds[k]]`, each fold scored by the model
    fitted without it (`info["fold_banks"]`, local.fold_banks; the training images `images[fit_idx]`, scored by
    the model itself leaving each image out of its own kNN, when there are no folds), and written into its
    buffers; returns (fusion, the calibration normals' scores in the folds' order, empty without them).
    Weights "synthetic" and "gated" read copies of those normals with one synthetic local defect each
    (synthetic.synthetic_defects), scored by the same fold's model. `heads`, `info`, `on_log`: the ICS heads still to train, where the gate
    keeps them (fit_local_fusion)."""
    from .tracing import onnx_runtime
    from .local import FloatBatches, scores_from_components
    from .synthetic import synthetic_defects

    info = {} if info is None else info
    banks = info.pop("fold_banks", None) or [None]
    groups = folds if folds else [fit_idx]
    reference = [(FloatBatches(images, cfg.channels, device, rows=rows), bank) for rows, bank in zip(groups, banks)]
    synthetic = None
    if cfg.local_weights in ("synthetic", "gated"):
        base = images[np.concatenate(groups)]
        defected = synthetic_defects(base, images[fit_idx[:64]], cfg.seed)
        ends = np.cumsum([0] + [len(g) for g in groups])
        synthetic = [(FloatBatches(defected[a:b], cfg.channels, device), bank)
                     for a, b, bank in zip(ends[:-1], ends[1:], banks)]
    with onnx_runtime(scorer.features, reference[0][0][:1]):  # the backbone in onnxruntime on the CPU (~3x eager)
        fusion, values, maps = fit_local_fusion(scorer, reference, cfg, reference_is_training=not folds,
                                                synthetic=synthetic, heads=heads, info=info, on_log=on_log,
                                                head_allowed=head_allowed)
    scorer.set_fusion(fusion)
    # the held-out normals' scores from the components already computed (a third backbone pass cost deeppcb 20 s)
    return fusion, (scores_from_components(scorer, values, maps) if folds else np.zeros(0))
