"""All training knobs in one dataclass, and the two presets (`paper`, `default`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

# Score components (see AnomalyScorer): the ICS logit, the split AE's SSIM error, the surprise of the
# rotation head, and the Mahalanobis distance of the latent z to the normal images. One name = that score
# alone ("ics" = the paper's sigmoid output); several joined by "+" = their standardised, weighted average,
# where "maha*2" gives that component weight 2 (default 1).
COMPONENTS = ("ics", "ssim", "rot", "maha")


def _score_terms(score: str) -> list[tuple[str, str]]:
    """"ics + rot*0.7" → [("ics", "1"), ("rot", "0.7")] (name, weight text), whitespace stripped."""
    terms = [(t.split("*", 1) + ["1"])[:2] for t in score.split("+")]
    return [(name.strip(), weight.strip()) for name, weight in terms]


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
    image_size: int = 0            # 0 = automatic: the training images' usual size, capped at 64 px
    channels: int = 0              # 0 = automatic: 1 if every training image is grey, else 3
    # split (autoencoder + SSIM)
    rho: float = 0.1
    ae_width: int = 32
    ae_code_dim: int = 16          # a tight bottleneck: SSIM separates better (MNIST-0 AUC 99.5 vs 97.2 at 64)
    ae_epochs: int = 8
    ae_lr: float = 2e-3
    ae_batch_size: int = 64
    # ICS classifier
    backbone: str = "small"
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
    # scoring
    score: str = "ics+ssim+rot*0.7+maha*2"  # what the exported model outputs; see README "Scores"
    calibration_fraction: float = 0.1
    # run
    seed: int = 0
    device: str = "auto"
    workers: int = 4
    log_every: int = 10

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ICSConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_overrides(self, **overrides: Any) -> "ICSConfig":
        """A copy with every non-None override applied."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

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
        parts = score_parts(self.score)
        if not parts or any(p not in COMPONENTS for p in parts) or len(set(parts)) != len(parts):
            raise ValueError(f"score must be one or more of {', '.join(COMPONENTS)} joined by '+' "
                             f"(each optionally weighted, e.g. maha*2), got {self.score!r}")
        try:
            weights = [float(w) for _, w in _score_terms(self.score)]
        except ValueError:
            raise ValueError(f"score weights must be numbers (e.g. rot*0.7), got {self.score!r}") from None
        if any(not (w > 0 and w < float("inf")) for w in weights):
            raise ValueError(f"score weights must be positive and finite, got {self.score!r}")
        if "rot" in parts and not self.rotation:
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
