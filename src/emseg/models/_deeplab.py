"""DeepLabv3+ (Chen et al. 2018): dilated ResNet, atrous spatial pyramid pooling, low-level fusion decoder.

MONAI has no DeepLab.  It is written here on MONAI parts: the backbone is
MONAI's :class:`~monai.networks.nets.ResNet` with its last stage turned into
a dilated one (stride 1, dilation 2: output stride 16), the pyramid is
MONAI's :class:`~monai.networks.blocks.SimpleASPP` (parallel 1x1 and atrous
3x3 convolutions, rates 6/12/18 by default) plus the image-level pooling
branch of DeepLabv3 that ``SimpleASPP`` lacks, and the decoder uses MONAI
``Convolution`` blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, SimpleASPP
from monai.networks.nets.resnet import ResNet
from torch import nn

__all__ = ["DeepLabV3Plus", "BACKBONES"]

# name -> (block, layers)
BACKBONES = {
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
    "resnet101": ("bottleneck", [3, 4, 23, 3]),
}


def _dilate(layer: nn.Module, dilation: int) -> None:
    """Turn a strided ResNet stage into a dilated one: same receptive field growth, no downsampling."""
    for m in layer.modules():
        if isinstance(m, nn.Conv2d):
            if m.kernel_size == (3, 3):
                m.stride, m.dilation, m.padding = (1, 1), (dilation, dilation), (dilation, dilation)
            elif m.stride != (1, 1):
                m.stride = (1, 1)


class _ResNetBackbone(ResNet):
    first_conv = "conv1.weight"  # for encoder_weights (see emseg.models._encoders.load_encoder_weights)
    head_prefixes = ("fc.",)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        return low, self.layer4(self.layer3(self.layer2(low)))


class _ASPP(nn.Module):
    def __init__(self, cin: int, channels: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.pyramid = SimpleASPP(2, cin, channels, kernel_sizes=(1, *[3] * len(rates)), dilations=(1, *rates),
                                  norm_type="batch", acti_type="relu")
        # image-level features; no batch norm on a 1x1 map (it fails with batch size 1)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, channels, 1), nn.ReLU(inplace=True))
        self.project = Convolution(2, channels * (len(rates) + 2), channels, kernel_size=1, norm="batch", act="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.image_pool(x).expand(-1, -1, *x.shape[2:])
        return self.project(torch.cat([self.pyramid(x), pooled], dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ at output stride 16.

    Parameters
    ----------
    backbone
        ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101`` (MONAI ResNet,
        torchvision key names, downsampling convolutions without bias).
    width
        Multiplier of the backbone's channels (1.0 = the published sizes).
    aspp_channels
        Channels of each pyramid branch and of the decoder (256 in the paper).
    rates
        Atrous rates of the 3x3 pyramid branches (6, 12, 18 at output stride 16).
    low_level_channels
        The stride-4 ``layer1`` features are reduced to this many channels (48)
        before they are concatenated with the 4x-upsampled pyramid output.

    Input ``(N, C, Y, X)``, ``Y`` and ``X`` multiples of 16; output
    ``(N, K, Y, X)`` logits (bilinear upsampling by 4 at the end).
    """

    gradcam_layer = "aspp"

    def __init__(self, in_channels: int, num_classes: int, *, backbone: str = "resnet34", width: float = 1.0,
                 aspp_channels: int = 256, rates: Sequence[int] = (6, 12, 18), low_level_channels: int = 48) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone {backbone!r}: expected one of {', '.join(BACKBONES)}")
        block, layers = BACKBONES[backbone]
        planes = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.backbone = _ResNetBackbone(block=block, layers=layers, block_inplanes=planes, spatial_dims=2,
                                        n_input_channels=in_channels, conv1_t_size=7, conv1_t_stride=2,
                                        feed_forward=False, bias_downsample=False, num_classes=1)
        _dilate(self.backbone.layer4, 2)
        expansion = 4 if block == "bottleneck" else 1
        self.aspp = _ASPP(planes[3] * expansion, aspp_channels, rates)
        self.low_level = Convolution(2, planes[0] * expansion, low_level_channels, kernel_size=1, norm="batch",
                                     act="relu")
        self.decoder = nn.Sequential(
            Convolution(2, aspp_channels + low_level_channels, aspp_channels, kernel_size=3, norm="batch", act="relu"),
            Convolution(2, aspp_channels, aspp_channels, kernel_size=3, norm="batch", act="relu"),
        )
        self.head = Convolution(2, aspp_channels, num_classes, kernel_size=1, conv_only=True)

    divisor = (16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        low, deep = self.backbone(x)
        y = F.interpolate(self.aspp(deep), size=low.shape[2:], mode="bilinear", align_corners=False)
        y = self.decoder(torch.cat([y, self.low_level(low)], dim=1))
        return F.interpolate(self.head(y), size=size, mode="bilinear", align_corners=False)
