"""Local scoring: where in the image is it abnormal? ICS on patches of a pretrained network's feature maps.

For large inspection images with a small defect, one global score of a 64-px thumbnail sees nothing. Here every
location of the image at (nearly) its own resolution gets scores, and the image score aggregates the map:

  pixels → frozen ImageNet EfficientNet-Lite0 → patch embeddings e(p) (152-d, one per 8×8 pixels) →
    "knn"  squared distance of e(p) to a memory bank of normal patches (greedy k-center coreset; PatchCore-like)
    "pics" the ICS head on patches (METHOD.md §2 carried to patches): an MLP e → z → logit, trained with
           closeness / intra-class / dispersion on typical normal patches vs atypical ones: the patches a
           synthetic local defect touched on copies of training images (patch_split "synthetic", the default),
           or the ρ least typical normal patches by bank distance (patch_split "knn", the literal split)
    "gknn" squared distance of the image's mean patch embedding to the nearest training image (global, image level)
  → the local maps standardised (centre and spread of their image values on held-out normals), signed-log
    compressed and averaged per location (equal weights by default): the heat map the model outputs
  → image score: the mean of the heat map's 10 highest locations (standardised again on held-out normals, with
    the local components' summed weight) plus the weighted, standardised gknn → sigmoid, shifted so 0.5 sits at
    the (1 − ρ) quantile of normal images.

Why the top-k of the *fused* map and not each map's own top-k, then fused (local_aggregate "separate", the
earlier way): a location counts when both knn and pics see it there. Separately, pics firing on an ordinary
structure of a normal part and knn on another place of it added up (knn+pics, offline, 3 draws of the
synthetic defects: casting 0.96-0.98 → 0.98-0.99; deeppcb 0.81-0.91 → 0.88-0.94; industrial.md).
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .backbones import PatchFeatures
from .config import LOCAL_COMPONENTS, MAP_COMPONENTS, map_in_score_units
from .tracing import onnx_runtime
from .knn import greedy_coreset, knn_distance, leave_own_image_out_distance, mark_atypical, nearest_bank_distance
from .models import FusionBuffers
from .synthetic import synthetic_defects
from .train import ICSHead, train_ics_head

SPLIT_PATCHES = 30_000  # normal patches split into typical / atypical and used to train the ICS head
SYNTHETIC_SPLIT_IMAGES = 150  # training images given synthetic defects for the atypical side (patch_split synthetic)
SYNTHETIC_DEFECTS_PER_IMAGE = 3  # on each of them: the backbone pass costs the same, the head sees 3× the variety
TOP_K = 10  # locations averaged into a map's image value


class PatchICSEnsemble(nn.Module):
    """Several ICS heads on patches, each trained on its own draw of synthetic defects and typical patches; the
    logit is their mean (config patch_heads; not the default). Why try it: what one head flags on unseen parts
    depends on which defects its draw happened to make and on its initialisation (deeppcb, pics alone 0.71-0.81
    over five seeds). Measured: three heads narrow the spread over seeds (deeppcb seeds 0-4, worst 0.866 → 0.893)
    but do not raise the level (mean 0.894 → 0.898; local_seeds.md, industrial.md), at ~20-50 s of training per
    extra head and 8 % of the scan's speed."""

    def __init__(self, dim: int, n: int):
        super().__init__()
        self.members = nn.ModuleList(ICSHead(dim) for _ in range(n))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return sum(member(e) for member in self.members) / len(self.members)


def patch_head(dim: int, n: int) -> nn.Module:
    """One head as before (its state keys unchanged, so older bundles load), or an ensemble of n."""
    return ICSHead(dim) if n == 1 else PatchICSEnsemble(dim, n)


def head_members(head: nn.Module) -> list[ICSHead]:
    return list(head.members) if isinstance(head, PatchICSEnsemble) else [head]


def count_heads(state: dict) -> int:
    """How many ICS heads a saved LocalScorer state holds (1 for bundles from before the ensemble)."""
    return len({k.split(".")[2] for k in state if k.startswith("head.members.")}) or 1


class LocalScorer(FusionBuffers):
    """What `scan` runs for a local model: pixels (N, C, H, W) in [0, 1] → (score (N,), map (N, H/8, W/8))."""

    def __init__(self, channels: int, bank_size: int, n_train: int, parts: tuple[str, ...],
                 fusion: dict[str, float] | None = None, pretrained: bool = True, aggregate: str = "fused",
                 heads: int = 1, pool: int = 1, pad: int = 0, normalise: bool = False, smoothing: float = 0.0,
                 map_units: str = "local"):
        super().__init__()
        self.channels, self.parts, self.aggregate = channels, parts, aggregate
        self.map_units = map_units
        self.map_parts = tuple(p for p in MAP_COMPONENTS if p in parts)  # the components with a value per location
        self.silent: frozenset[str] = frozenset()  # components the fusion weighs 0: not computed (set_fusion)
        self.smoothing = float(smoothing)
        if self.smoothing > 0:  # a constant of the graph, rebuilt from the config (not saved: older bundles load)
            radius = max(1, math.ceil(3 * self.smoothing))
            taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) / self.smoothing) ** 2)
            self.register_buffer("smooth_kernel", (taps / taps.sum()).float(), persistent=False)
        self.features = PatchFeatures(pretrained=pretrained, pool=pool, pad=pad, normalise=normalise)
        dim = self.features.dim
        self.head = patch_head(dim, heads)
        # bank and training embeddings are stored centred on their means (and queries centred the same way):
        # the distances are unchanged, but |q|² − 2q·b + |b|² cancels far less in float32 (ONNX parity)
        self.register_buffer("bank", torch.zeros(bank_size, dim))
        self.register_buffer("bank_mean", torch.zeros(dim))
        self.register_buffer("train_embeddings", torch.zeros(n_train, dim))
        self.register_buffer("train_mean", torch.zeros(dim))
        self.register_fusion(LOCAL_COMPONENTS, {}, default_weight=1.0)  # the values: set_fusion, below
        # the fused map's top-k value (aggregate "fused"); its weight is the local components' summed weight
        self.register_buffer("local_center", torch.tensor(0.0))
        self.register_buffer("local_scale", torch.tensor(1.0))
        # the map's outermost row or column on each side (top, bottom, left, right) mapped affinely onto the
        # interior's statistics (gain, shift; entry 4, the interior, stays 1, 0): fusion.calibrate_edges
        self.register_buffer("edge_gain", torch.ones(EDGES + 1))
        self.register_buffer("edge_shift", torch.zeros(EDGES + 1))
        # the same for the blurred output map (map_smoothing), fitted on it: the blur favoured the border again (a
        # line of mildly raised edge cells survives it, an isolated hot cell inside does not). Not saved with the
        # weights: set from the fusion in config.json (set_fusion), so bundles from before it load unchanged
        self.register_buffer("map_edge_gain", torch.ones(EDGES + 1), persistent=False)
        self.register_buffer("map_edge_shift", torch.zeros(EDGES + 1), persistent=False)
        self.set_fusion(fusion or {})

    def set_fusion(self, fusion: dict[str, float]) -> None:
        """Write the fitted fusion's values (fusion.fit_local_fusion) into the buffers they name: scalars by
        name, the edge calibration as edge_gain_<side> / edge_shift_<side>. A component given weight 0 (the
        gate's gknn, a redundant ICS head) becomes `silent`: the forward pass and the exported graph no longer
        compute it (its term was 0; the ICS head on every location was ~5 % of a scan's arithmetic)."""
        silent = set(self.silent)
        for p in self.parts:  # a fusion without a part's weight (the edge calibration alone) leaves it as it was
            if f"{p}_weight" in fusion:
                (silent.add if float(fusion[f"{p}_weight"]) == 0.0 else silent.discard)(p)
        if not set(self.map_parts) - silent:  # a map needs a component: with all weighed 0, compute them (flat 0)
            silent -= set(self.map_parts)
        self.silent = frozenset(silent)
        buffers = dict(self.named_buffers())
        with torch.no_grad():
            for key, value in fusion.items():
                name, _, side = key.rpartition("_")
                if key in buffers and buffers[key].dim() == 0:
                    buffers[key].fill_(float(value))
                elif name in EDGE_BUFFERS and side.isdigit() and int(side) < EDGES:
                    buffers[name][int(side)] = float(value)

    # ------------------------------------------------------------------------------------ components
    def component_maps(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Per-location maps of the local components (N, h, w), and the image's mean embedding (N, D)."""
        e = self.features(x)
        n, d, h, w = e.shape
        q = e.permute(0, 2, 3, 1).reshape(n, h * w, d)
        maps: dict[str, torch.Tensor] = {}
        if self.computes("knn"):
            maps["knn"] = nearest_bank_distance(q - self.bank_mean, self.bank).view(n, h, w)
        if self.computes("pics"):
            maps["pics"] = self.head(q).view(n, h, w)
        return maps, q.mean(1)

    def components(self, x: torch.Tensor, exclude_self: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Image-level components (N,) and the local maps they came from (exclude_self: x are training images)."""
        maps, pooled = self.component_maps(x)
        values = {p: top_k_mean(m) for p, m in maps.items()}
        if self.computes("gknn"):
            values["gknn"] = knn_distance((pooled - self.train_mean)[None], self.train_embeddings,
                                          skip_self=exclude_self)[0]
        return values, maps

    @contextmanager
    def fitted_without(self, fold: "FoldBank | None"):
        """Within this block the kNN components read `fold`'s bank and training embeddings (fitted without that
        fold's images: out-of-fold calibration, fusion.fit_local_fusion); None: the model's own."""
        if fold is None:
            yield
            return
        names = ("bank", "bank_mean", "train_embeddings", "train_mean")
        before = {name: getattr(self, name) for name in names}
        device = self.bank.device
        try:
            for name in names:
                setattr(self, name, getattr(fold, name).to(device))
            yield
        finally:
            for name, value in before.items():
                setattr(self, name, value)

    def computes(self, part: str) -> bool:
        return part in self.parts and part not in self.silent

    @contextmanager
    def leaving_out(self, parts):
        """Within this block `parts` are not computed either (fitting: the ICS head before it is trained)."""
        before = self.silent
        self.silent = before | frozenset(parts)
        try:
            yield
        finally:
            self.silent = before

    def live(self, parts) -> list[str]:
        """`parts` without the silent ones (their weight is 0: leaving them out changes no value)."""
        return [p for p in parts if p not in self.silent]

    def heat(self, maps: dict[str, torch.Tensor], calibrated: bool = True) -> torch.Tensor | None:
        """The local components fused per location (N, h, w), in the image score's units; None if there are none."""
        if not self.map_parts:
            return None
        total = self.map_weight().clamp_min(1e-12)  # all weighted 0: a flat 0 map
        heat = self.weighted_sum(maps, self.live(self.map_parts)) / total
        return self.edges_calibrated(heat) if calibrated else heat

    def edges_calibrated(self, heat: torch.Tensor, prefix: str = "edge") -> torch.Tensor:
        """The map with each side's outermost row or column brought onto the interior's statistics. Why: even
        with the reflect-padding (patch_pad) the outermost cells of a normal image vary more than the inside, and
        the largest value of a normal image's map sat on them (held-out deeppcb normals: 58 % of peaks on the
        border, where 5 % of the cells are; magnetic_tile 47 % vs 13 %): benchmarks/industrial.md."""
        side = torch.from_numpy(edge_index(heat.shape[-2], heat.shape[-1]))  # a constant of the traced graph
        return heat * getattr(self, f"{prefix}_gain")[side] + getattr(self, f"{prefix}_shift")[side]

    def fused_logit(self, values: dict[str, torch.Tensor], heat: torch.Tensor | None) -> torch.Tensor:
        """The weighted sum of standardised components, before the offset. With aggregate "fused" the local
        components enter as one: the top-k of their fused map, with their summed weight. Why: a location counts
        when knn *and* pics see it; with "separate" pics firing on an ordinary structure of a normal part and
        knn on another place of it add up (casting, knn+pics: 0.96-0.98 separate, 0.98-0.99 fused; industrial.md)."""
        if self.aggregate == "fused" and heat is not None:
            return self.local_term(top_k_mean(heat)) + self.image_terms(values)
        return self.weighted_sum(values, self.live(self.parts))

    def map_weight(self) -> torch.Tensor:
        """The summed weight of the components with a map (they enter the fused score as one)."""
        return sum(getattr(self, f"{p}_weight") for p in self.map_parts)

    def local_term(self, level: torch.Tensor) -> torch.Tensor:
        """The fused map's share of the logit at a given level of it (aggregate "fused"): the image's top-k level
        in `fused_logit`, each cell's in `in_score_units`."""
        return self.map_weight() * self.standardised("local", level)

    def image_terms(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted, standardised components without a map (gknn): one value per image."""
        return self.weighted_sum(values, self.live(p for p in self.parts if p not in self.map_parts))

    def output_map(self, heat: torch.Tensor, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """The map the model outputs: the fused map blurred (`blurred`), its sides calibrated again on the blurred
        maps of held-out normals (map_edge_*: fusion.calibrate_output_map); the fused map itself without a blur.
        Then, with map_units "logit" (`in_score_units`), in the score's units."""
        m = self.edges_calibrated(self.blurred(heat), "map_edge") if self.smoothing else heat
        return self.in_score_units(m, values) if self.scores_map() else m

    def scores_map(self) -> bool:
        return map_in_score_units(self.map_units, self.aggregate)

    def in_score_units(self, m: torch.Tensor, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each cell: the score's logit (z − offset) the image would get were the cell's level its top-k level, i.e.
        the local term of `fused_logit` per cell plus the image's global terms. 0 is the threshold 0.5. Why: pixel
        metrics and a person compare maps across images, and a map of local evidence alone rated an image that is
        off as a whole (magnetic_tile's uneven tiles: 71 % of its defect pixels) as normal everywhere (pixel
        AUROC 0.700 → 0.841; benchmarks/industrial.md). Monotone within an image: peaks stay where they were."""
        return self.local_term(m) + torch.as_tensor(self.image_terms(values)).reshape(-1, 1, 1) - self.offset

    def blurred(self, heat: torch.Tensor) -> torch.Tensor:
        """The map (N, h, w) blurred by a Gaussian of σ = `smoothing` cells (separable; edges replicated).
        Why: a defect is a region, and the raw map's cell-to-cell noise scattered its pixels among normal ones
        (pixel AUROC magnetic_tile 0.700 unblurred, 0.740 at σ 1.5). Only the map: the score reads the raw one."""
        if not self.smoothing:
            return heat
        kernel = self.smooth_kernel
        r = (len(kernel) - 1) // 2
        x = F.pad(heat[:, None], (r, r, r, r), mode="replicate")
        x = F.conv2d(F.conv2d(x, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))
        return x[:, 0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, maps = self.components(x)
        heat = self.heat(maps)
        z = self.fused_logit(values, heat)
        score = torch.sigmoid(z - self.offset)
        if heat is None:  # a purely global score still ships a (flat) map, so every local model has the same outputs
            h, w = math.ceil(x.shape[-2] / self.features.stride), math.ceil(x.shape[-1] / self.features.stride)
            return score, (z - self.offset)[:, None, None].expand(-1, h, w)
        return score, self.output_map(heat, values)


EDGES = 4  # top, bottom, left, right; index 4 = the interior
EDGE_BUFFERS = ("edge_gain", "edge_shift", "map_edge_gain", "map_edge_shift")  # per side, set as <name>_<side>


def edge_index(h: int, w: int) -> np.ndarray:
    """(h, w) int64: which side's outermost row/column each map cell lies on (0 top, 1 bottom, 2 left, 3 right;
    corners count with the top or bottom row) or 4 inside. Maps under 5 cells on a side: all inside (too few
    cells inside to calibrate the edges against)."""
    index = np.full((int(h), int(w)), EDGES, dtype=np.int64)
    if min(h, w) >= 5:
        index[1:-1, 0], index[1:-1, -1], index[0, :], index[-1, :] = 2, 3, 0, 1
    return index


def top_k_mean(m: torch.Tensor) -> torch.Tensor:
    """The image value of a map (N, h, w): the mean of its TOP_K highest locations, not the single max (deeppcb,
    patch-kNN alone: AUC 0.80 vs 0.72 with the max; one noisy location no longer decides alone)."""
    flat = m.flatten(1)
    return flat.topk(min(TOP_K, flat.shape[1]), dim=1).values.mean(1)


@torch.no_grad()
def component_values(scorer: LocalScorer, images, exclude_self: bool = False, batch: int = 8,
                     keep_maps: bool = False):
    """Each image-level component of `scorer` (float64 (N,)) over `images` (a tensor or FloatBatches), a batch at
    a time (exclude_self: the images are the training images, see LocalScorer.components). keep_maps: also
    the local maps (float32 (N, h, w) tensors on the CPU), for what is computed from them after the fact (the
    fused map's top-k once the components' centres and spreads are known)."""
    values: dict[str, list] = {}
    maps: dict[str, list] = {}
    for i in range(0, len(images), batch):
        got, got_maps = scorer.components(images[i:i + batch], exclude_self=exclude_self)
        for part, v in got.items():
            values.setdefault(part, []).append(v.cpu())
        for part, m in got_maps.items() if keep_maps else ():
            maps.setdefault(part, []).append(m.cpu())
    out = {p: torch.cat(v).double().numpy() for p, v in values.items()}
    return (out, {p: torch.cat(m) for p, m in maps.items()}) if keep_maps else out


def values_by_fold(scorer: LocalScorer, pieces: list, exclude_self: bool = False, batch: int = 8,
                   keep_maps: bool = False):
    """component_values over `pieces`, [(images, FoldBank or None)], each scored with its fold's bank
    (LocalScorer.fitted_without), concatenated in order."""
    got = []
    for images, fold in pieces:
        with scorer.fitted_without(fold):
            got.append(component_values(scorer, images, exclude_self, batch, keep_maps))
    values = [g[0] if keep_maps else g for g in got]
    joined = {p: np.concatenate([v[p] for v in values]) for p in values[0]}
    if not keep_maps:
        return joined
    return joined, {p: torch.cat([g[1][p] for g in got]) for p in got[0][1]}


@torch.no_grad()
def fused_local_heat(scorer: LocalScorer, maps: dict[str, torch.Tensor], batch: int = 64,
                     calibrated: bool = True) -> torch.Tensor:
    """The fused map (N, h, w) on the CPU of stored component maps, with the scorer's current buffers
    (calibrated=False: before the edge calibration, which is fitted on it)."""
    device = next(scorer.buffers()).device
    n = len(next(iter(maps.values())))
    out = []
    for i in range(0, n, batch):
        heat = scorer.heat({p: m[i:i + batch].to(device) for p, m in maps.items()}, calibrated)
        out.append(heat.cpu())
    return torch.cat(out)


@torch.no_grad()
def fused_local_values(scorer: LocalScorer, maps: dict[str, torch.Tensor], batch: int = 64) -> np.ndarray:
    """The fused map's top-k (float64 (N,)) of stored component maps, with the scorer's current centres, spreads
    and weights of the local components (exactly what LocalScorer.fused_logit standardises as "local")."""
    return top_k_mean(fused_local_heat(scorer, maps, batch)).double().numpy()


@torch.no_grad()
def scores_from_components(scorer: LocalScorer, values: dict[str, np.ndarray], maps: dict[str, torch.Tensor],
                           batch: int = 64) -> np.ndarray:
    """The scores (float64 (N,)) LocalScorer.forward gives the images whose components (component_values with
    keep_maps) are `values` and `maps`, without a second pass through the backbone: the same fused map, top-k,
    standardisation and offset, with the scorer's current buffers."""
    device = scorer.offset.device
    n = len(next(iter(values.values())))
    out = []
    for i in range(0, n, batch):
        got = {p: torch.from_numpy(v[i:i + batch]).float().to(device) for p, v in values.items()}
        heat = scorer.heat({p: m[i:i + batch].to(device) for p, m in maps.items()})
        out.append(torch.sigmoid(scorer.fused_logit(got, heat) - scorer.offset).cpu())
    return torch.cat(out).double().numpy() if out else np.zeros(0)


# ---------------------------------------------------------------------------------------------- fitting

@torch.no_grad()
def brightness_statistics(images, batch: int = 32) -> torch.Tensor:
    """Each image's brightness statistics (N, 2): its pixels' 1st and 99th percentiles (PatchFeatures.brightness,
    inputs in [0, 1])."""
    return torch.cat([torch.cat(PatchFeatures.brightness(x), 1).flatten(1).cpu()
                      for x in (images[i:i + batch] for i in range(0, len(images), batch))])


def typical_brightness(images, batch: int = 32) -> torch.Tensor:
    """The median over images of each image's brightness statistics: what PatchFeatures' brightness normalisation
    brings every image to."""
    return brightness_statistics(images, batch).median(0).values


# brightness "auto": normalise when the training images' exposure itself varies this much: the 90th percentile
# over images of each image's 99th pixel percentile, over its 10th. The five-set suite (industrial.md, 2026-12-07,
# through the CLI): magnetic_tile 2.02 (its captures are lit differently; kept 0.789, normalised 0.956), elpv_poly
# 1.53, brick_cracks 1.22, casting 1.08, deeppcb 1.00 (keeping wins or ties on each of these four: normalising cost
# elpv_poly 0.10 and brick_cracks 0.009). Where a part's normal images all share one exposure, a change of it is
# worth flagging; where they span a wide range, lighting is a nuisance of the process.
BRIGHTNESS_SPREAD = 1.75


def exposure_spread(stats: torch.Tensor) -> float:
    """How much the images' exposure varies: q90 / q10 over images of their 99th pixel percentile."""
    hi = stats[:, 1].double()
    lo_q, hi_q = torch.quantile(hi, torch.tensor([0.1, 0.9], dtype=torch.float64))
    return float(hi_q / lo_q.clamp_min(1e-3))


def resolve_brightness(cfg, images) -> tuple[object, dict]:
    """cfg with normalise_brightness decided (True / False as given; "auto": by BRIGHTNESS_SPREAD on the training
    images), and what to record of the decision."""
    if cfg.normalise_brightness != "auto":
        return cfg, {"brightness": "normalise" if cfg.normalise_brightness else "keep"}
    spread = exposure_spread(brightness_statistics(images))
    decided = spread > BRIGHTNESS_SPREAD
    return cfg.with_overrides(normalise_brightness=decided), {
        "brightness": "normalise" if decided else "keep", "brightness_rule": "auto",
        "exposure_spread": round(spread, 4), "exposure_spread_limit": BRIGHTNESS_SPREAD}


@torch.no_grad()
def embed_images(features: PatchFeatures, images, per_image: int, gen: torch.Generator,
                 batch: int = 8, tick: Callable[[int], None] | None = None):
    """Stream images through the backbone; keep each image's mean embedding and `per_image` random patches.

    Keeping every patch of every image would not fit in memory (600 images at 640 px: 2.3 GB of floats), and a
    random sample per image keeps every image represented in the candidate pool the bank is drawn from.
    `images[i:j]` gives a float batch (a tensor, or a FloatBatches view over uint8 pixels).
    """
    # the outputs are preallocated once and filled in place: thousands of small kept tensors interleaved with
    # each batch's large temporaries pinned the heap (5,000 images of 304 px: +1.6 GB per 1,800 images of RSS
    # that was never used again)
    pooled = patches = None
    for i in range(0, len(images), batch):
        e = features(images[i:i + batch])
        n, d, h, w = e.shape
        q = e.permute(0, 2, 3, 1).reshape(n, h * w, d)
        k = min(per_image, h * w)
        if pooled is None:
            pooled, patches = torch.empty(len(images), d), torch.empty(len(images), k, d)
        pooled[i:i + n] = q.mean(1).cpu()
        for j in range(n):
            pick = torch.randperm(h * w, generator=gen)[:k].to(q.device)
            patches[i + j] = q[j, pick].cpu()
        del e, q
        if tick:
            tick(n)
    owners = torch.arange(len(images)).repeat_interleave(patches.shape[1])
    return pooled, patches.reshape(-1, patches.shape[-1]), owners


class FloatBatches:
    """uint8 RGB pixels (N, H, W, 3) read as float (N, C, H, W) tensors one slice at a time: training keeps the
    decoded images in uint8 (a quarter of float32's memory: 5,000 images of 300 px are 1.4 GB, not 5.4 GB).
    `rows` selects images of `rgb` without copying them (the fit / calibration split of one decoded array)."""

    def __init__(self, rgb: np.ndarray, channels: int, device: torch.device, rows: np.ndarray | None = None):
        self.all_rgb, self.channels, self.device = rgb, channels, device
        self.rows = np.arange(len(rgb)) if rows is None else np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def pixels(self, index) -> np.ndarray:
        """uint8 RGB of the selected images at `index` (a slice or positions), copied."""
        return self.all_rgb[self.rows[index]]

    def __getitem__(self, index: slice) -> torch.Tensor:
        from .data import to_channels

        return torch.from_numpy(to_channels(self.pixels(index), self.channels)).to(self.device)


class FoldBank:
    """What the kNN components of a model fitted without some images (a calibration fold) read: its memory bank
    and training embeddings, centred on their means as LocalScorer stores them."""

    def __init__(self, bank: torch.Tensor, train_embeddings: torch.Tensor):
        self.bank_mean, self.train_mean = bank.mean(0), train_embeddings.mean(0)
        self.bank, self.train_embeddings = bank - self.bank_mean, train_embeddings - self.train_mean


def choose_bank(patches: torch.Tensor, cfg, gen: torch.Generator) -> torch.Tensor:
    """Rows of `patches` that form the memory bank: a greedy k-center coreset, or a fixed random subsample."""
    if cfg.bank == "coreset":
        return greedy_coreset(patches, cfg.bank_size, gen)
    return torch.randperm(len(patches), generator=gen)[:cfg.bank_size]


def fold_banks(patches: torch.Tensor, owners: torch.Tensor, pooled: torch.Tensor, folds: list[np.ndarray], cfg,
               gen: torch.Generator) -> list[FoldBank]:
    """For each calibration fold, the bank and training embeddings fitted on the *other* images' patches, the
    same way as the model's own (same candidates, same bank size): its images are scored as new images would be.
    The ICS heads are not refitted per fold (a fold's images were among the ~30,000 patches they trained on:
    the one part of the calibration that is not out of fold; a head costs ~30 s, the bank a few)."""
    out = []
    for rows in folds:
        outside = ~torch.isin(owners, torch.as_tensor(rows, dtype=owners.dtype))
        kept = patches[outside]
        keep_images = np.setdiff1d(np.arange(len(pooled)), rows)
        out.append(FoldBank(kept[choose_bank(kept, cfg, gen)], pooled[keep_images]))
    return out


def fit_local(images: FloatBatches, cfg, on_features: Callable[[int], None] | None = None,
              folds: list[np.ndarray] | None = None) -> tuple[LocalScorer, dict, "PendingHeads | None"]:
    """Fit everything of a LocalScorer except its ICS heads and the fusion: brightness level, bank, training
    embeddings (on_features(n) after each batch of images through the backbone); with `folds` (positions in
    `images`), also each calibration fold's bank without its images (info["fold_banks"], fold_banks).

    Returns the scorer, what the bundle should record (timings), and the heads still to train (PendingHeads; None
    without "pics" in the score): the fusion trains them only where the gate keeps them (fusion.fit_local_fusion).
    """
    from .config import score_parts

    device = images.device
    gen = torch.Generator().manual_seed(cfg.seed)
    t = time.perf_counter()
    parts = score_parts(cfg.score)
    scorer = LocalScorer(images.channels, 1, len(images), parts, aggregate=cfg.local_aggregate,
                         heads=cfg.patch_heads if "pics" in parts else 1, pool=cfg.patch_pool,
                         pad=cfg.patch_pad, normalise=cfg.normalise_brightness,
                         smoothing=cfg.map_smoothing, map_units=cfg.map_units).to(device).eval()
    if cfg.normalise_brightness:
        scorer.features.level.copy_(typical_brightness(images))
    per_image = max(16, math.ceil(cfg.patch_candidates / len(images)))
    with onnx_runtime(scorer.features, images[:1]):  # the backbone passes in onnxruntime on the CPU (~3x eager)
        pooled, patches, owners = embed_images(scorer.features, images, per_image, gen,
                                               tick=on_features)
    timings = {"features_s": time.perf_counter() - t}

    t = time.perf_counter()
    chosen = choose_bank(patches, cfg, gen)
    bank = patches[chosen]
    scorer.bank_mean = bank.mean(0).to(device)
    scorer.bank = (bank - bank.mean(0)).to(device)
    scorer.train_mean = pooled.mean(0).to(device)
    scorer.train_embeddings = (pooled - pooled.mean(0)).to(device)
    timings["bank_s"] = time.perf_counter() - t

    info: dict = {"patch_split": cfg.patch_split, "patch_heads": len(head_members(scorer.head)), "timings": timings}
    if folds:
        t = time.perf_counter()
        # their own generator: the heads' draws (from `gen`, below) stay those of a fit without calibration
        info["fold_banks"] = fold_banks(patches, owners, pooled, folds, cfg, torch.Generator().manual_seed(cfg.seed + 1))
        timings["fold_banks_s"] = time.perf_counter() - t
    heads = PendingHeads(scorer, images, cfg, patches, owners, chosen, gen)
    if "pics" not in parts:  # no ICS head in the score: nothing to train (train_patch_heads records the split size)
        train_patch_heads(heads.members, heads.member_seeds, patches, owners, chosen, gen, None, cfg, False, info)
        return scorer, info, None
    return scorer, info, heads


class PendingHeads:
    """A LocalScorer's patch ICS heads with what training them takes (the candidate patches, the bank's rows, the
    generator where fit_local left it), kept until the fusion knows whether the score needs them: where the gate
    drops the head (fusion.without_redundant_head) it is never trained, ~30 s of a 50-70 s fit at 300 px. Member k
    is trained with seed + 1000·k: its own synthetic defects, typical patches, sample order."""

    def __init__(self, scorer: LocalScorer, images: FloatBatches, cfg, patches: torch.Tensor, owners: torch.Tensor,
                 chosen: torch.Tensor, gen: torch.Generator):
        self.scorer, self.images, self.cfg = scorer, images, cfg
        self.patches, self.owners, self.chosen, self.gen = patches, owners, chosen, gen
        self.members = head_members(scorer.head)
        self.member_seeds = [cfg.seed + 1000 * k for k in range(len(self.members))]

    def train(self, info: dict, on_log: Callable[[dict], None] | None = None) -> list[dict]:
        """Train the heads (train_patch_heads) on their synthetic-defect patches; records the split sizes and the
        seconds (info["timings"]: synthetic_features_s, train_s) in `info`; returns the training log."""
        cfg, timings = self.cfg, info.setdefault("timings", {})
        t = time.perf_counter()
        defective = None
        if cfg.patch_split == "synthetic":
            with onnx_runtime(self.scorer.features, self.images[:1]):
                defective = [synthetic_defect_patches(self.scorer.features, self.images, seed)
                             for seed in self.member_seeds]
        timings["synthetic_features_s"] = time.perf_counter() - t
        t = time.perf_counter()
        with torch.enable_grad():  # called from within the fusion's no_grad
            log = train_patch_heads(self.members, self.member_seeds, self.patches, self.owners, self.chosen,
                                    self.gen, defective, cfg, True, info, on_log)
        self.scorer.eval()
        timings["train_s"] = time.perf_counter() - t
        return log


def train_patch_heads(members: list[ICSHead], member_seeds: list[int], patches: torch.Tensor,
                      owners: torch.Tensor, chosen: torch.Tensor, gen: torch.Generator, defective: list | None, cfg,
                      train: bool, info: dict, on_log: Callable[[dict], None] | None = None) -> list[dict]:
    """Train each ICS head on patches (train_ics_head) on its own split: a random SPLIT_PATCHES of the candidate
    patches (the first head's drawn from `gen`, the others' from their seeds) against that head's synthetic-defect
    patches (`defective[k]`), or, with patch_split "knn", the ρ least typical of them. Records the first head's
    split sizes in `info`; returns the training log of all heads, iterations numbered on across them."""
    device = members[0].e_mean.device
    bank = patches[chosen]
    log: list[dict] = []
    for k, (member, seed) in enumerate(zip(members, member_seeds)):
        subset = torch.randperm(len(patches), generator=gen if k == 0 else torch.Generator().manual_seed(seed))
        subset = subset[:SPLIT_PATCHES]
        if not train:  # no ICS head in the score: nothing to split
            info.update(n_patches=len(subset), n_atypical_patches=0)
            break
        if cfg.patch_split == "knn":
            head_patches, atypical, cut = split_by_bank_distance(patches[subset], owners[subset], bank, owners[chosen],
                                                                 cfg.rho)
            info.setdefault("atypical_distance_cut", cut)
        else:
            head_patches = torch.cat([patches[subset], defective[k]])
            atypical = torch.cat([torch.zeros(len(subset), dtype=torch.bool),
                                  torch.ones(len(defective[k]), dtype=torch.bool)])
        info.setdefault("n_patches", int(len(head_patches)))
        info.setdefault("n_atypical_patches", int(atypical.sum()))

        def numbered(row: dict, k: int = k) -> None:
            row.update(head=k, iteration=row["iteration"] + k * cfg.patch_iterations)
            if on_log:
                on_log(row)

        log += train_ics_head(member, head_patches.to(device), atypical.to(device), cfg.patch_iterations,
                              cfg.patch_batch, cfg.patch_lr, seed, ema=cfg.patch_ema, on_log=numbered,
                              beta1=cfg.beta1, grad_clip=cfg.grad_clip)
    return log


def split_by_bank_distance(patches: torch.Tensor, owners: torch.Tensor, bank: torch.Tensor, bank_owners: torch.Tensor,
                           rho: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The literal intra-class split on patches: the ρ least typical normal patches (farthest from the normal
    patches of the *other* images) are atypical. Measured: they are mostly borders and rare structures, and a
    head trained on them learns "border-ness" (casting 0.73, deeppcb 0.59 alone; industrial.md)."""
    distance = leave_own_image_out_distance(patches, owners, bank, bank_owners)
    atypical = mark_atypical(distance, rho)
    return patches, atypical, float(distance[atypical].min())


@torch.no_grad()
def synthetic_defect_patches(features: PatchFeatures, images: "FloatBatches", seed: int,
                             n_images: int = SYNTHETIC_SPLIT_IMAGES, batch: int = 8) -> torch.Tensor:
    """The atypical side of the default patch split: embeddings of the patches that synthetic local defects
    (synthetic_defects: cut-paste, blob, scratch; SYNTHETIC_DEFECTS_PER_IMAGE on each) touched, on copies of up
    to `n_images` training images. Three per image rather than one: the head's output on deeppcb's normal test
    boards depended on which defects one draw happened to make (knn+pics, fused map, 3 draws: 0.88-0.95 with one
    per image, 0.91-0.93 with three; casting 0.98-0.99 either way).

    Why not the ρ least typical normal patches (split_by_bank_distance): those are the parts' own rare
    structures, and the head learnt to flag borders. Normal images made atypical in small places teach it the
    difference that matters to an inspector: a local break in the part's own texture (casting: 0.97 alone vs
    0.73; deeppcb 0.73-0.83 vs 0.59, seed-dependent; benchmarks/results/industrial.md)."""
    rng = np.random.default_rng(seed + 1)
    pick = np.sort(rng.permutation(len(images))[:n_images])
    defected, donors = images.pixels(pick), images.pixels(rng.permutation(len(images))[:64])
    masks = np.zeros(defected.shape[:3], dtype=bool)
    for k in range(SYNTHETIC_DEFECTS_PER_IMAGE):  # several per image: more varied atypical patches, same cost
        defected, changed = synthetic_defects(defected, donors, seed + 2 + 100 * k, return_masks=True)
        masks |= changed
    view = FloatBatches(defected, images.channels, images.device)
    out = []
    for i in range(0, len(view), batch):
        e = features(view[i:i + batch])
        n, d, h, w = e.shape
        # a patch counts as defective when its 8×8 cell holds any changed pixel (max-pooled onto the grid)
        touched = F.adaptive_max_pool2d(torch.from_numpy(masks[i:i + batch, None].astype(np.float32)), (h, w))
        keep = touched[:, 0].reshape(n, h * w).to(e.device) > 0
        out.append(e.permute(0, 2, 3, 1).reshape(n, h * w, d)[keep].cpu())
    return torch.cat(out)


# ---------------------------------------------------------------------------------- label-free weights
