"""Inception-v3 as a multi-scale encoder (see :mod:`emseg.models._encoders` for the encoder contract)."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from emseg.models._encoders import _scale

logger = logging.getLogger(__name__)

__all__ = ["InceptionV3Encoder"]


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


