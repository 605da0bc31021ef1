"""Encoder U-Nets as in WAE-Net: a classification backbone's feature maps skip-connected to a U-Net decoder.

MONAI's :class:`~monai.networks.nets.FlexibleUNet` does the same for its
registered encoders, but its decoder takes exactly the backbone's features and
has no bottleneck convolution; WAE-Net puts a 1024-channel convolution on the
deepest features, and VGG's stride-1 features and Inception/VGG backbones
(not in MONAI's encoder registry) need a decoder that follows each encoder's
``strides``.  The decoder is built from MONAI's ``Convolution`` and
``UpSample`` blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, UpSample
from torch import nn

__all__ = ["EncoderUNet"]


def _conv(cin: int, cout: int) -> Convolution:
    return Convolution(2, cin, cout, kernel_size=3, norm="batch", act="relu")


class EncoderUNet(nn.Module):
    """Encoder features -> bottleneck convolution -> U-Net decoder -> class logits.

    Parameters
    ----------
    encoder
        A module returning feature maps shallowest first, with ``strides``
        (powers of two, e.g. ``(2, 4, 8, 16, 32)``) and ``out_channels``
        (see :mod:`emseg.models._encoders`).
    num_classes
        Output channels ``K``.
    decoder_channels
        Channels of the decoder stages, deepest first; one stage per factor 2
        from the deepest stride back to the input (5 for stride 32).  A stage
        upsamples by 2 (nearest), concatenates the encoder feature map at that
        stride if there is one and applies two 3x3 conv-BN-ReLU.
    bottleneck_channels
        Channels of the 3x3 conv-BN-ReLU on the deepest features (1024 in
        WAE-Net); Grad-CAM's default layer (``gradcam_layer = "bottleneck"``).

    Input ``(N, C, Y, X)`` with ``Y`` and ``X`` multiples of ``divisor``;
    output ``(N, K, Y, X)`` logits.
    """

    gradcam_layer = "bottleneck"

    def __init__(self, encoder: nn.Module, num_classes: int, *, decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
                 bottleneck_channels: int = 1024) -> None:
        super().__init__()
        strides = tuple(int(s) for s in encoder.strides)
        channels = tuple(int(c) for c in encoder.out_channels)
        depth = int(math.log2(strides[-1]))
        if 2**depth != strides[-1]:
            raise ValueError(f"encoder strides {strides} must be powers of two")
        if len(decoder_channels) != depth:
            raise ValueError(f"decoder_channels must list {depth} stages (one per factor 2 of the encoder's stride "
                             f"{strides[-1]}), got {list(decoder_channels)}")
        self.encoder = encoder
        self._strides = strides
        self.bottleneck = _conv(channels[-1], bottleneck_channels)
        skip = dict(zip(strides[:-1], channels[:-1]))
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self._skip_index: list[int | None] = []
        cin = bottleneck_channels
        for level, cout in enumerate(decoder_channels):
            stride = strides[-1] // 2 ** (level + 1)
            self.upsamples.append(UpSample(2, cin, cin, scale_factor=2, mode="nontrainable", interp_mode="nearest",
                                          align_corners=None))
            extra = skip.get(stride, 0)
            self._skip_index.append(strides.index(stride) if stride in skip else None)
            self.decoders.append(nn.Sequential(_conv(cin + extra, cout), _conv(cout, cout)))
            cin = cout
        self.head = Convolution(2, cin, num_classes, kernel_size=1, conv_only=True)

    @property
    def divisor(self) -> tuple[int, int]:
        """Spatial size multiple the input must have (the encoder's deepest stride)."""
        return (self._strides[-1],) * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        y = self.bottleneck(features[-1])
        for up, dec, index in zip(self.upsamples, self.decoders, self._skip_index):
            y = up(y)
            if index is not None:
                y = torch.cat([y, features[index]], dim=1)
            y = dec(y)
        return self.head(y)
