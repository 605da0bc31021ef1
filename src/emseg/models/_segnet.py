"""SegNet (Badrinarayanan, Kendall & Cipolla 2017): decoder upsampling by the encoder's max-pooling indices.

MONAI has no SegNet; it is assembled from MONAI ``Convolution`` blocks
(conv-BN-ReLU) and torch's ``MaxPool2d(return_indices=True)`` /
``MaxUnpool2d``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["SegNet"]


def _stack(cin: int, cout: int, n: int, *, last: int | None = None) -> nn.Sequential:
    layers, c = [], cin
    for i in range(n):
        out = last if (last is not None and i == n - 1) else cout
        layers.append(Convolution(2, c, out, kernel_size=3, norm="batch", act="relu"))
        c = out
    return nn.Sequential(*layers)


class SegNet(nn.Module):
    """SegNet encoder-decoder.

    The encoder is VGG-16's 13 convolutions (``features`` channels and
    ``convs`` convolutions per block, each block ending in a 2x2 max-pool that
    remembers where each maximum came from); the decoder mirrors it, placing
    values back at those positions with ``MaxUnpool2d`` (sparse upsampling,
    no learned upsampling and no skip concatenation) before its convolutions.

    Input ``(N, C, Y, X)``, ``Y`` and ``X`` multiples of ``2 ** len(features)``;
    output ``(N, K, Y, X)`` logits.
    """

    def __init__(self, in_channels: int, num_classes: int, *, features: Sequence[int] = (64, 128, 256, 512, 512),
                 convs: Sequence[int] = (2, 2, 3, 3, 3)) -> None:
        super().__init__()
        if len(features) != len(convs):
            raise ValueError(f"features {list(features)} and convs {list(convs)} must have the same length")
        self.encoders = nn.ModuleList()
        c = in_channels
        for f, n in zip(features, convs):
            self.encoders.append(_stack(c, f, n))
            c = f
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.decoders = nn.ModuleList()
        rev = list(features[::-1])
        for i, n in enumerate(convs[::-1]):
            nxt = rev[i + 1] if i + 1 < len(rev) else rev[-1]
            self.decoders.append(_stack(rev[i], rev[i], n, last=nxt))
        self.head = Convolution(2, rev[-1], num_classes, kernel_size=1, conv_only=True)
        self.gradcam_layer = f"encoders.{len(features) - 1}"

    @property
    def divisor(self) -> tuple[int, int]:
        return (2 ** len(self.encoders),) * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices, sizes = [], []
        for enc in self.encoders:
            x = enc(x)
            sizes.append(x.shape)
            x, idx = self.pool(x)
            indices.append(idx)
        for dec, idx, size in zip(self.decoders, reversed(indices), reversed(sizes)):
            x = dec(self.unpool(x, idx, output_size=size))
        return self.head(x)
