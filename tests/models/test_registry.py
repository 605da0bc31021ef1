"""The model registry builds every torch entry and explains unknown names."""

from __future__ import annotations

import pytest
import torch

from emseg.models import MODELS, build_model, count_parameters


@pytest.mark.parametrize("name", [n for n in MODELS if MODELS.get(n).backend == "torch"
                                  and MODELS.get(n).spatial_dims == 2 and not MODELS.get(n).valid_padding])
def test_every_torch_model_builds_and_runs(name):  # 3-D and valid-padding models: tests/models/test_3d.py
    net = build_model(name, in_channels=1, num_classes=5)
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, 64, 96))
    assert out.shape == (2, 5, 64, 96)
    assert count_parameters(net) > 0


def test_unet2d_options():
    net = build_model("unet2d", in_channels=3, num_classes=2, options={"features": [4, 8, 16], "dropout": 0.5})
    assert net.divisor == (4, 4)
    assert any(isinstance(m, torch.nn.Dropout) for m in net.encoders[-1].modules())
    assert not any(isinstance(m, torch.nn.Dropout) for m in net.encoders[0].modules())
    assert net(torch.randn(1, 3, 16, 16)).shape == (1, 2, 16, 16)


def test_unknown_model_and_option():
    with pytest.raises(ValueError, match="Did you mean 'unet2d'"):
        build_model("unet-2d", in_channels=1, num_classes=2)
    with pytest.raises(ValueError, match="model.depth"):
        build_model("unet2d", in_channels=1, num_classes=2, options={"depth": 3})
