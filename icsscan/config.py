"""All training knobs in one dataclass, and the two presets (`paper`, `default`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import UsageError

# Score components (see AnomalyScorer): the ICS logit, the split AE's SSIM error, the surprise of the
# rotation head, and the Mahalanobis distance of the latent z to the normal images. One name = that score
# alone ("ics" = the paper's sigmoid output); several joined by "+" = their standardised, weighted average,
# where "maha*2" gives that component weight 2 (default 1).
COMPONENTS = ("ics", "ssim", "rot", "maha")
# Local models (pretrained backbone, see local.py): patch-kNN distance to the memory bank, the ICS head on
# patches, and the global (mean-embedding) kNN distance to the training images.
LOCAL_COMPONENTS = ("knn", "pics", "gknn")
MAP_COMPONENTS = ("knn", "pics")  # the local components with a value per location (the map)


def map_in_score_units(map_units: str, aggregate: str) -> bool:
    """Whether a local model's output map is in the score's units (LocalScorer.in_score_units): map_units "logit"
    with the fused aggregate (the fused map's top-k has its own centre and spread only then)."""
    return map_units == "logit" and aggregate == "fused"

# Whole-object components on a pretrained embedding (embed.py), beside the from-scratch ones in a global model:
# kNN distance of the image's ImageNet EfficientNet-Lite0 embedding to the training images', and the ICS head
# trained on those embeddings.
EMBED_COMPONENTS = ("eknn", "eics")
GLOBAL_COMPONENTS = COMPONENTS + EMBED_COMPONENTS
# What users read (config.json, ONNX metadata, reports, docs) for each component; the short names are the keys
# the code uses (fusion numbers, buffers), and they stay accepted wherever a score string is read (--score, the
# config of older bundles): "knn+pics" and "patch_knn+patch_ics" are the same score.
READABLE_NAMES = {"ics": "ics", "ssim": "ssim", "rot": "rotation", "maha": "mahalanobis",
                  "eknn": "embedding_knn", "eics": "embedding_ics",
                  "knn": "patch_knn", "pics": "patch_ics", "gknn": "global_knn"}
SHORT_NAMES = {readable: short for short, readable in READABLE_NAMES.items()}
GLOBAL_DEFAULT_SCORE = "ics+ssim+rotation*0.7+mahalanobis*2"  # the from-scratch recipe (backbone small / alexnet)
WHOLE_DEFAULT_SCORE = "embedding_knn+embedding_ics+ssim"      # whole-object images (≤ AUTO_LOCAL_ABOVE px), auto
LOCAL_DEFAULT_SCORE = "patch_knn+patch_ics+global_knn"
PRETRAINED_BACKBONES = ("efficientnet-lite0",)
# backbone "auto": images whose usual side is at most this are whole-object thumbnails (MNIST, CIFAR) and get
# the global from-scratch recipe; larger ones are scored locally on pretrained features (README "Choosing").
AUTO_LOCAL_ABOVE = 64
MIN_IMAGES = 20  # training images a global model needs (it trains networks from scratch); local: detector.MIN_LOCAL_IMAGES


def _score_terms(score: str) -> list[tuple[str, str]]:
    """"ics + rotation*0.7" → [("ics", "1"), ("rot", "0.7")] (short name, weight text), whitespace stripped."""
    terms = [(t.split("*", 1) + ["1"])[:2] for t in score.split("+")]
    return [(SHORT_NAMES.get(name.strip(), name.strip()), weight.strip()) for name, weight in terms]


def readable_score(score: str) -> str:
    """A score string in readable names: "knn+pics*0.5" → "patch_knn+patch_ics*0.5" ("auto" and names that are
    no component's are left as they are, for validate to report)."""
    if score == "auto" or not score:
        return score
    return "+".join(READABLE_NAMES.get(name, name) + ("" if weight == "1" else f"*{weight}")
                    for name, weight in _score_terms(score))


def readable(part: str) -> str:
    """A component's readable name ("gknn" → "global_knn")."""
    return READABLE_NAMES.get(part, part)


def networks_of(cfg: "ICSConfig") -> str:
    """What each component of cfg's score runs on, for people: "embedding_knn, embedding_ics on pretrained
    efficientnet-lite0; ssim on an autoencoder trained here" (config.json's `components` block has the detail)."""
    groups: dict[str, list[str]] = {}
    for p in score_parts(cfg.score):
        if p in EMBED_COMPONENTS or p in LOCAL_COMPONENTS:
            where = f"pretrained {PRETRAINED_BACKBONES[0] if not cfg.is_local else cfg.backbone}"
        elif p == "ssim":
            where = "an autoencoder trained here"
        else:
            where = f"a {cfg.backbone} classifier trained here"
        groups.setdefault(where, []).append(readable(p))
    return "; ".join(f"{', '.join(names)} on {where}" for where, names in groups.items())


def score_parts(score: str) -> tuple[str, ...]:
    """Component names of a score string, in order: "ics+rot*0.7" → ("ics", "rot")."""
    return tuple(name for name, _ in _score_terms(score))


def score_weights(score: str) -> dict[str, float]:
    """Each component's share of the average (sums to 1): "ics+maha*3" → {"ics": 0.25, "maha": 0.75}."""
    raw = {name: float(w) for name, w in _score_terms(score)}
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()}


@dataclass(frozen=True)
class ICSConfig:
    preset: str = "default"
    # data
    image_size: int = 0            # 0 = automatic: global models: the usual size capped at 64 px (a square);
                                   # local models: the usual long side clamped to [local_min_side, local_max_side]
    image_height: int = 0          # local models: input height (aspect ratio of the training images kept)
    channels: int = 0              # 0 = automatic: 1 if every training image is grey, else 3
    # split (autoencoder + SSIM)
    rho: float = 0.1
    ae_width: int = 32
    ae_code_dim: int = 16          # a tight bottleneck: SSIM separates better (MNIST-0 AUC 99.5 vs 97.2 at 64)
    ae_epochs: int = 8
    ae_lr: float = 2e-3
    ae_batch_size: int = 64
    # ICS classifier
    backbone: str = "auto"         # small | alexnet (global, from scratch) | efficientnet-lite0 (local,
                                   # pretrained) | auto (resolved at fit from the image size; see AUTO_LOCAL_ABOVE)
    width: int = 16
    hidden_dim: int = 256
    latent_dim: int = 128
    iterations: int = 200
    batch_size: int = 64
    lr: float = 3e-4
    beta1: float = 0.5
    l2: float = 1e-3               # on conv kernels only; the authors' code used 1e-3, the paper's text 1e-6
    grad_clip: float = 5.0         # max gradient norm per step (stabiliser; see train.py)
    # self-supervision: also learn to tell which of 4 rotations an image is shown in (Golan & El-Yaniv 2018),
    # on the same feature extractor. Normal images make that easy; unfamiliar content does not.
    rotation: bool = True
    rotation_batch: int = 64       # images per rotation step (each shown in 4 rotations)
    rotation_lr: float = 1e-3      # its own Adam (see train.py)
    ics_losses: str = "ics"        # which ICS losses train the classifier: ics (closeness, intra-class, dispersion:
                                   # the method) | bce (intra-class only: NNwICS) | none (no ICS loss: the rotation
                                   # task alone shapes the network; an ablation: does ICS training shape what
                                   # maha reads?)
    # scoring
    score: str = "auto"            # what the exported model outputs; see README "Scores". auto: resolved at fit
                                   # (config.resolve_backbone): knn+pics+gknn for large images, eknn+eics for
                                   # whole-object ones, ics+ssim+rot*0.7+maha*2 with backbone small/alexnet. A local model
                                   # given a global-only score string uses LOCAL_DEFAULT_SCORE instead
    # local models (backbone efficientnet-lite0): patch memory bank and the ICS head on patches
    local_min_side: int = 224      # ImageNet's scale: smaller inputs leave too few patches
    local_max_side: int = 640      # deeppcb's defects are a few px wide at 640 and vanish at 224; cost ∝ side²
    patch_pool: int = 1            # K×K averaging of the patch features (odd K; 1 = none). 3×3 (PatchCore's, the
                                   # default before 2026-12-02) blurred defects a few px wide. Offline replica
                                   # (local_seeds.md), default AUC per seed 0 / 1 / 2, 3×3 → none: deeppcb 0.917 /
                                   # 0.899 / 0.895 → 0.963 / 0.965 / 0.956; casting 0.9947 / 0.9937 / 0.9924 →
                                   # 0.9965 / 0.9960 / 0.9940 (knn alone 0.948 → 0.984 on casting seed 0)
    patch_pad: int = 16            # px of reflect-padding around the image before the backbone, cropped off the maps
                                   # (a multiple of 16; 0 = none): the network's zero padding made the outermost
                                   # cells read as anomalous (unseen commutators: 58 of 155 map peaks on the border)
    normalise_brightness: bool | str = "auto"  # True: each image's 1st/99th pixel percentiles brought to the
                                   # training images' typical ones before the backbone (lighting that changes between
                                   # sessions is not a defect: magnetic_tile's test captures are ~2x brighter); False:
                                   # kept (a dark region or a change of exposure is itself evidence: normalising cost
                                   # elpv_poly 0.10 and brick_cracks 0.009); "auto" (default): normalise only where the
                                   # training images' own exposure varies widely (local.resolve_brightness), decided
                                   # at fit and saved as True/False
    edge_calibration: bool = True  # each side's outermost map row/column brought onto the interior's statistics on
                                   # held-out normals (fusion.calibrate_edges): normal maps still peaked on the
                                   # border (deeppcb 58 % of normal images; magnetic_tile 47 %)
    map_smoothing: float = 0.0     # σ, in map cells (8 px), of a Gaussian blur of the *output* map (the image score
                                   # is read before it; 0 = none). At 1.5, through the CLI: pixel AUROC / AUPRO
                                   # magnetic_tile 0.700 / 0.732 → 0.740 / 0.745, deeppcb 0.931 / 0.812 → 0.956 /
                                   # 0.865, but map peaks on the border deeppcb 1 % → 11 % (chance 5 %), casting 5 % →
                                   # 8 %, magnetic_tile 9 % → 11 %, even with the blurred map's own edge calibration:
                                   # not the default. With map_units logit, σ 1: magnetic_tile 0.841 / 0.763 → 0.849
                                   # / 0.755, deeppcb 0.933 / 0.819 → 0.956 / 0.876; border peaks 9 % → 13 %, 1 % → 6 %
                                   # (benchmarks/industrial.md notes)
    map_units: str = "logit"       # what a map cell says. logit: the image's score logit were this cell's region its
                                   # hottest (local evidence, plus the image's global evidence, minus the offset: 0 =
                                   # the threshold 0.5; a whole image that is off reads hotter everywhere). local: the
                                   # fused local evidence alone (bundles before it). Pixel AUROC / AUPRO, cached
                                   # default models: magnetic_tile 0.700 / 0.732 → 0.841 / 0.763 (its "uneven" tiles
                                   # are off as a whole), deeppcb 0.931 / 0.812 → 0.933 / 0.819; peaks unchanged
    bank: str = "coreset"          # coreset (greedy k-center) | random (a fixed random subsample)
    bank_size: int = 2048          # patches in the memory bank: bounds memory and the scan's kNN cost (~half of a
                                   # 304-px scan's graph at 4,096). With unaveraged features 2,048 lost nothing
                                   # measurable (replica seeds 0-2, 4,096 → 2,048: deeppcb mean 0.961 → 0.960,
                                   # casting 0.9955 → 0.9951; knn alone on casting 0.984 → 0.979) and the scan with
                                   # maps runs ~20 % faster; parts with much normal variety: --bank-size 4096
    patch_candidates: int = 100_000  # patches sampled from the training images (evenly per image) for bank and split
    patch_split: str = "synthetic"  # atypical patches for the ICS head: synthetic (the patches a synthetic local
                                   # defect touched, on copies of training images) | knn (the ρ least typical normal
                                   # patches by memory-bank distance: the literal split; it learns borders)
    patch_iterations: int = 1000   # ICS steps on patches (each: closeness, intra-class, dispersion). 300 left the head
                                   # under-trained on deeppcb (same data, same three head seeds, fused
                                   # knn+pics: 0.896 / 0.891 / 0.901 at 300, 0.911 / 0.927 / 0.921 at 1000); casting
                                   # 0.986 / 0.984 → 0.982 / 0.983 (industrial.md)
    patch_ema: float = 0.995       # the head kept is an exponential moving average of its weights over the steps
                                   # (decay per step; 0 = the last step's weights). The head's seed moved deeppcb's
                                   # fused score by ±0.02; averaging the last ~200 steps' weights raised all three
                                   # seeds (industrial.md)
    patch_heads: int = 1           # ICS heads on patches, each on its own draw of synthetic defects; the map reads
                                   # their mean logit. Three narrow the spread over seeds but do not raise the level
                                   # (deeppcb, offline replica local_seeds.md, seeds 0-4: one head 0.917 / 0.899 /
                                   # 0.895 / 0.866 / 0.896, three 0.896 / 0.899 / 0.893 / 0.902 / 0.901, mean 0.894
                                   # vs 0.898; casting seeds 0-2 0.9947 / 0.9937 / 0.9924 vs 0.9943 / 0.9951 / 0.9940),
                                   # and cost: casting train 55 → 102 s, its scan with maps 8 % slower (33.1 vs
                                   # 30.6 img/s, same machine state); so one by default
    patch_batch: int = 256
    patch_lr: float = 1e-3
    local_weights: str = "gated"   # gated: the score string's weights (equal by default), with the global gknn
                                   # dropped when it cannot tell held-out normals from copies with a synthetic local
                                   # defect better than chance (Mann-Whitney p ≥ 0.01; deeppcb: AUC 0.50, dropped);
                                   # fixed: the weights as given; synthetic: each ∝ its AUC there. Not the
                                   # default: pics is *trained* on such defects, so it scores ~1.0 there and took
                                   # 0.88 of the weight (deeppcb: 0.787 vs 0.836 equal; industrial.md)
    ics_gate: float = 0.85         # with local_weights gated: the ICS head (pics) gets weight 0 when the patch kNN
                                   # alone separates held-out normals from their synthetic defects with at least this
                                   # AUC (fusion.without_redundant_head; 1 = always kept, the default before
                                   # 2026-12-04). The kNN's AUC there: casting 0.997, magnetic_tile 0.929 (head
                                   # dropped: 0.9962 → 0.9983, 0.9449 → 0.9555), deeppcb 0.757 (kept: 0.9724; without
                                   # the head 0.9444). 0.85 is the middle of that gap: three sets, one bit each.
                                   # Read before the head is trained: a dropped head costs no training (casting
                                   # train 72.7 → 36.5 s through the CLI)
    local_aggregate: str = "fused"  # fused: the image's local value is the mean of the TOP_K highest locations of the
                                   # fused heat map (knn and pics must agree on *where*); separate: each map's own
                                   # top-k, then fused (bundles before this option; casting knn+pics 0.96 → 0.98)
    # whole-object models: the pretrained embedding components (eknn, eics) of a global model
    embed_size: int = 160          # thumbnails are upsampled to this for the ImageNet network (CIFAR one-vs-rest,
                                   # deer/cat/airplane: 112 px 83.8, 160 px 87.4; deer at 224 px 92.5 vs 91.5
                                   # at 160 for 2× the cost; cost ∝ side²)
    embed_iterations: int = 300    # ICS steps on embeddings (each: closeness, intra-class, dispersion)
    embed_batch: int = 128         # embeddings per step (each pair loss sees batch² pairs)
    global_weights: str = "auto"   # like local_weights, for a global model's fusion, with whole-object synthetic
                                   # anomalies (embed.synthetic_anomalies); auto: synthetic when the score has
                                   # pretrained components, else fixed (the from-scratch recipe's measured weights).
                                   # synthetic: ∝ (2·AUC − 1)⁸, summed linearly; fixed: through a signed log
                                   # (detector.standardise_and_offset, benchmarks/results/weight_rules.md)
    calibration_fraction: float = 0.1
    # run
    seed: int = 0
    device: str = "auto"
    workers: int = 4
    log_every: int = 10

    def __post_init__(self) -> None:  # one spelling of the score in config.json, metadata and reports
        object.__setattr__(self, "score", readable_score(self.score))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ICSConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_overrides(self, **overrides: Any) -> "ICSConfig":
        """A copy with every non-None override applied."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def is_local(self) -> bool:
        """Scored per location on pretrained features (local.py), rather than globally (detector.AnomalyScorer)."""
        return self.backbone in PRETRAINED_BACKBONES

    def validate(self) -> None:
        if not 0 < self.rho < 0.5:
            raise ValueError(f"rho must satisfy 0 < rho < 0.5, got {self.rho}")
        if not 0 <= self.calibration_fraction < 0.5:
            raise ValueError(f"calibration_fraction must be in [0, 0.5), got {self.calibration_fraction}")
        if self.image_size and self.image_size < 8:
            raise ValueError(f"image_size must be ≥ 8, got {self.image_size}")
        if self.channels not in (0, 1, 3):
            raise ValueError(f"channels must be 1 or 3 (or 0 for automatic), got {self.channels}")
        if self.iterations < 1 or self.batch_size < 2:
            raise ValueError("iterations must be ≥ 1 and batch_size ≥ 2")
        parts = score_parts(GLOBAL_DEFAULT_SCORE if self.score == "auto" else self.score)
        known = LOCAL_COMPONENTS if self.is_local else GLOBAL_COMPONENTS
        if self.backbone == "auto":
            known = GLOBAL_COMPONENTS + LOCAL_COMPONENTS
        if not parts or any(p not in known for p in parts) or len(set(parts)) != len(parts):
            raise ValueError(f"score must be one or more of {', '.join(map(readable, known))} (or their short "
                             f"names {', '.join(known)}) joined by '+' (each optionally weighted, e.g. "
                             f"mahalanobis*2), got {self.score!r}")
        if self.backbone == "auto" and any(p in LOCAL_COMPONENTS for p in parts) and any(p in GLOBAL_COMPONENTS for p in parts):
            raise ValueError(f"score {self.score!r} mixes global ({', '.join(map(readable, GLOBAL_COMPONENTS))}) "
                             f"and local ({', '.join(map(readable, LOCAL_COMPONENTS))}) components")
        if self.backbone not in ("auto", "small", "alexnet", *PRETRAINED_BACKBONES):
            raise ValueError(f"backbone must be auto, small, alexnet or {', '.join(PRETRAINED_BACKBONES)}, "
                             f"got {self.backbone!r}")
        if self.ics_losses not in ("ics", "bce", "none"):
            raise ValueError(f"ics_losses must be ics, bce or none, got {self.ics_losses!r}")
        if self.ics_losses == "none" and not self.rotation:
            raise ValueError("ics_losses none needs the rotation task (nothing would train the network)")
        if self.patch_pool < 1 or self.patch_pool % 2 == 0:
            raise ValueError(f"patch_pool must be an odd number ≥ 1, got {self.patch_pool!r}")
        if self.patch_pad < 0 or self.patch_pad % 16:
            raise ValueError(f"patch_pad must be a multiple of 16 (0 = none), got {self.patch_pad!r}")
        if self.normalise_brightness not in (True, False, "auto"):
            raise ValueError(f"normalise_brightness must be True, False or 'auto', got {self.normalise_brightness!r}")
        if self.patch_heads < 1:
            raise ValueError(f"patch_heads must be ≥ 1, got {self.patch_heads!r}")
        if not 0.0 <= self.map_smoothing <= 8.0:
            raise ValueError(f"map_smoothing must be in [0, 8] map cells, got {self.map_smoothing!r}")
        if self.map_units not in ("logit", "local"):
            raise ValueError(f"map_units must be logit or local, got {self.map_units!r}")
        if not 0.0 <= self.patch_ema < 1.0:
            raise ValueError(f"patch_ema must be in [0, 1), got {self.patch_ema!r}")
        if self.patch_split not in ("synthetic", "knn"):
            raise ValueError(f"patch_split must be synthetic or knn, got {self.patch_split!r}")
        if self.local_aggregate not in ("fused", "separate"):
            raise ValueError(f"local_aggregate must be fused or separate, got {self.local_aggregate!r}")
        if self.local_weights not in ("gated", "synthetic", "fixed"):
            raise ValueError(f"local_weights must be gated, synthetic or fixed, got {self.local_weights!r}")
        if self.global_weights not in ("auto", "synthetic", "fixed"):
            raise ValueError(f"global_weights must be auto, synthetic or fixed, got {self.global_weights!r}")
        if self.embed_size < 32 or self.embed_iterations < 1:
            raise ValueError(f"embed_size must be ≥ 32 and embed_iterations ≥ 1, got {self.embed_size}/{self.embed_iterations}")
        if self.bank not in ("coreset", "random") or self.bank_size < 1:
            raise ValueError(f"bank must be coreset or random with bank_size ≥ 1, got {self.bank!r}/{self.bank_size}")
        try:
            weights = [float(w) for _, w in _score_terms(GLOBAL_DEFAULT_SCORE if self.score == "auto" else self.score)]
        except ValueError:
            raise ValueError(f"score weights must be numbers (e.g. rot*0.7), got {self.score!r}") from None
        if any(not (w > 0 and w < float("inf")) for w in weights):
            raise ValueError(f"score weights must be positive and finite, got {self.score!r}")
        if "rot" in parts and self.score != "auto" and not self.rotation and not self.is_local:
            raise ValueError("score 'rot' needs the rotation head (rotation=True)")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")


PRESETS: dict[str, ICSConfig] = {
    # icsscan's own recipe: a narrow CNN, 200 iterations, a self-supervised rotation head on the same
    # features, and a score that averages four standardised signals (ICS logit, split-AE SSIM error, rotation
    # surprise ×0.7, Mahalanobis distance of z ×2: on digits the rotation features transfer to other digits,
    # on photos they carry the score). Fast on a laptop CPU; benchmarks/results/table1.md has the ablation.
    "default": ICSConfig(),
    # The paper's text (Schlachter et al. 2019): AlexNet-like backbone, 10,000 iterations, batch 64,
    # L2 1e-6 on conv weights, Adam(3e-4, beta1 0.5) as in the authors' code, raw ICS output as score.
    "paper": ICSConfig(
        preset="paper", backbone="alexnet", width=64, hidden_dim=512, latent_dim=256, iterations=10_000,
        lr=3e-4, beta1=0.5, l2=1e-6, ae_epochs=30, ae_lr=1e-3, score="ics", rotation=False, log_every=100,
    ),
}


def preset_config(name: str, **overrides: Any) -> ICSConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name].with_overrides(**overrides)


def resolve_backbone(cfg: ICSConfig, shape: tuple[int, int]) -> ICSConfig:
    """backbone "auto" → efficientnet-lite0 (local scores) for images larger than AUTO_LOCAL_ABOVE px, else a
    global model; score "auto" → the measured default of each kind: knn+pics+gknn (local), eknn+eics+ssim
    (whole-object images, backbone auto: the pretrained embedding and the split autoencoder), ics+ssim+rot*0.7+maha*2 (backbone small/alexnet chosen:
    the from-scratch recipe). A local model given a global-only score string gets the local default score;
    global_weights "auto" → synthetic when the score has pretrained components, else fixed."""
    backbone, score = cfg.backbone, cfg.score
    whole_object = max(shape) <= AUTO_LOCAL_ABOVE
    if backbone == "auto":
        backbone = "small" if whole_object else "efficientnet-lite0"
        if score == "auto" and whole_object:
            score = WHOLE_DEFAULT_SCORE
    cfg = cfg.with_overrides(backbone=backbone, score=GLOBAL_DEFAULT_SCORE if score == "auto" else score)
    if cfg.is_local and not any(p in LOCAL_COMPONENTS for p in score_parts(cfg.score)):
        cfg = cfg.with_overrides(score=LOCAL_DEFAULT_SCORE)
    if cfg.global_weights == "auto":
        pretrained = any(p in EMBED_COMPONENTS for p in score_parts(cfg.score))
        cfg = cfg.with_overrides(global_weights="synthetic" if pretrained else "fixed")
    try:
        cfg.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return cfg
