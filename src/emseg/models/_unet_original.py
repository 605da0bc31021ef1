"""Ronneberger et al.'s valid-padding U-Net (MICCAI 2015): 572 x 572 in, 388 x 388 out.

Unpadded 3x3 convolutions, 2x2 max pooling, 2x2 up-convolutions halving the
channels, and skip connections cropped to the decoder's size before
concatenation ("crop and concat").  MONAI's U-Nets all use same padding, so
this one is assembled here from MONAI ``Convolution`` / ``UpSample`` blocks.

Because each unpadded convolution loses a pixel per side, the output is
smaller than the input by :attr:`ValidUNet.output_margin` pixels per side (92
for the default depth 4), and only some input sizes are valid (every pooled
map must have an even size).  Prediction tiles the image so the shrinking
outputs cover every pixel (:class:`~emseg.inference.Predictor`); training
crops the labels to the output (the trainer does it for any model whose
output is smaller than its input).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, UpSample
from torch import nn

from emseg.models._unet import encode

__all__ = ["ValidUNet", "valid_unet_output_size"]


def valid_unet_output_size(size: int, depth: int) -> int | None:
    """Output size of a valid-padding U-Net with ``depth`` poolings for input ``size``, or ``None`` if invalid.

    Each level's two 3x3 convolutions take 4 pixels; each pooling needs an even
    size; each up-convolution doubles.  ``valid_unet_output_size(572, 4) == 388``.
    """
    s = int(size)
    for _ in range(depth):
        s -= 4
        if s <= 0 or s % 2:
            return None
        s //= 2
    s -= 4
    if s <= 0:
        return None
    for _ in range(depth):
        s = 2 * s - 4
        if s <= 0:
            return None
    return s


def _double_conv(cin: int, cout: int, *, norm: str | None, act: str, dropout: float = 0.0) -> nn.Sequential:
    common = dict(spatial_dims=2, kernel_size=3, padding=0, norm=norm, act=act)
    return nn.Sequential(Convolution(in_channels=cin, out_channels=cout, **common),
                         Convolution(in_channels=cout, out_channels=cout, dropout=dropout or None, **common))


def _center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    offsets = [(s - t) // 2 for s, t in zip(x.shape[2:], size)]
    return x[(..., *(slice(o, o + t) for o, t in zip(offsets, size)))]


class ValidUNet(nn.Module):
    """The original U-Net: ``(N, C, H, W)`` -> ``(N, K, H - 2m, W - 2m)`` logits, ``m`` = :attr:`output_margin`.

    Parameters
    ----------
    in_channels, out_channels
        Input channels and classes.
    features
        Channels per level (default 64 ... 1024 as in the paper; ``len - 1`` poolings).
    norm
        MONAI norm name or ``None`` (the paper has no normalisation).
    dropout
        Dropout in the deepest block (the paper's "drop-out layers at the end of
        the contracting path").
    """

    spatial_dims = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        features: Sequence[int] = (64, 128, 256, 512, 1024),
        norm: str | None = None,
        act: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(features) < 2:
            raise ValueError(f"features must list at least 2 levels, got {list(features)!r}")
        self.depth = len(features) - 1
        smallest = self.valid_input_size(1)
        #: Pixels lost per side (92 for depth 4: 572 -> 388).
        self.output_margin = (smallest - valid_unet_output_size(smallest, self.depth)) // 2
        self.encoders = nn.ModuleList()
        channels = in_channels
        for level, feat in enumerate(features):
            self.encoders.append(_double_conv(channels, feat, norm=norm, act=act,
                                              dropout=dropout if level == self.depth else 0.0))
            channels = feat
        self.pool = nn.MaxPool2d(2, stride=2)
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for feat in reversed(features[:-1]):
            self.upsamples.append(UpSample(2, channels, feat, scale_factor=2, mode="deconv"))
            self.decoders.append(_double_conv(2 * feat, feat, norm=norm, act=act))
            channels = feat
        self.head = Convolution(2, channels, out_channels, kernel_size=1, conv_only=True)

    @property
    def alignment(self) -> int:
        """Shifts of the input by multiples of this (``2**depth``) shift the output by the same amount."""
        return 2**self.depth

    def output_size(self, size: int) -> int:
        """Output size for input ``size`` along one axis; ``ValueError`` if ``size`` is not valid."""
        out = valid_unet_output_size(size, self.depth)
        if out is None:
            raise ValueError(f"input size {size} is not valid for this valid-padding U-Net (depth {self.depth}); "
                             f"the next valid size is {self.valid_input_size(size)}")
        return out

    def valid_input_size(self, min_size: int) -> int:
        """The smallest valid input size ``>= min_size`` (valid sizes are ``2**depth`` apart)."""
        s = max(1, int(min_size))
        while valid_unet_output_size(s, self.depth) is None:
            s += 1
        return s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for axis, s in enumerate(x.shape[2:]):
            if valid_unet_output_size(s, self.depth) is None:
                raise ValueError(f"input size {s} along axis {axis} is not valid for unet-original (depth "
                                 f"{self.depth}); use {self.valid_input_size(s)} (see valid_input_size)")
        x, skips = encode(self.encoders, self.pool, x)
        for up, dec, skip in zip(self.upsamples, self.decoders, reversed(skips)):
            x = up(x)
            x = dec(torch.cat([_center_crop(skip, x.shape[2:]), x], dim=1))
        return self.head(x)
