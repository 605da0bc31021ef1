"""The 2D-3D + 3x3x3 network of Guay et al. (Sci. Rep. 2021) for anisotropic stacks.

Guay, Emam, Anderson, Aronova, Pokrovskaya, Storrie, Leapman, "Dense cellular
segmentation for EM using 2D-3D neural network ensembles", Sci. Rep. 11, 2561
(2021).  The network is written here on MONAI ``Convolution`` / ``UpSample``
blocks because no MONAI network mixes per-block kernel shapes, adds a 2-D class
head in the middle and a 3-D pyramid after it:

1. a 2-D U-Net applied to every section of a ``(Z, Y, X)`` window, written in
   3-D with 1x3x3 kernels and 1x2x2 pooling, except that the first convolution
   of the first two encoder blocks and of the last two decoder blocks is
   3x3x3 (the "+3x3x3" of the name; ``use_3x3x3=False`` makes them 1x3x3);
2. an intermediate 2-D class head (1x1x1 convolution) on the U-Net output;
3. the U-Net features concatenated with the 2-D class scores, a 3x3x3
   convolution, then a two-level 3-D spatial pyramid (average pooling by 1x2x2
   and 2x4x4, a 3x3x3 convolution at each level, trilinear upsampling) whose
   outputs are added to its input (residual add); ``pyramid=False`` leaves
   the pyramid out;
4. a 3x3x3 convolution and the 3-D class head (1x1x1).

Training loss: ``loss(3-D head) + c2d * loss(2-D head)`` (``c2d = 0.33``), via
:class:`~emseg.training.MultiHeadLoss` with :attr:`Hybrid2d3d.aux_loss_weights`;
``multi_loss=False`` drops the 2-D term (the 2-D head still feeds the 3-D part).
L2 regularisation per module: :meth:`Hybrid2d3d.param_groups` names the
parameters of the 2-D U-Net, the 3-D part and the class heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UpSample
from torch import nn

from emseg.models._padding import pad_to_multiple
from emseg.models._unet import encode

__all__ = ["Hybrid2d3d"]

K2D = (1, 3, 3)
K3D = (3, 3, 3)
POOL = (1, 2, 2)
#: Average-pooling factors (z, y, x) of the two pyramid levels.
PYRAMID_LEVELS = ((1, 2, 2), (2, 4, 4))


def _conv(cin: int, cout: int, kernel: Sequence[int], *, norm: str | None, dropout: float = 0.0) -> Convolution:
    return Convolution(3, cin, cout, kernel_size=tuple(kernel), act="relu", norm=norm, dropout=dropout or None,
                       padding=None)


def _block(cin: int, cout: int, first_kernel: Sequence[int], *, norm: str | None, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(_conv(cin, cout, first_kernel, norm=norm), _conv(cout, cout, K2D, norm=norm, dropout=dropout))


class _PyramidLevel(nn.Module):
    """Average-pool by ``factor`` (clipped to the input size), 3x3x3 convolution, upsample back."""

    def __init__(self, channels: int, factor: Sequence[int], *, norm: str | None) -> None:
        super().__init__()
        self.factor = tuple(factor)
        self.conv = _conv(channels, channels, K3D, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        kernel = tuple(min(f, s) for f, s in zip(self.factor, size))
        pooled = F.avg_pool3d(x, kernel, stride=kernel, ceil_mode=True)
        return F.interpolate(self.conv(pooled), size=size, mode="trilinear", align_corners=False)


class Hybrid2d3d(nn.Module):
    """Guay et al.'s 2D-3D + 3x3x3 network: ``(N, C, Z, Y, X)`` -> ``(N, K, Z, Y, X)`` logits.

    Parameters
    ----------
    in_channels, num_classes
        Input channels (1 for EM) and classes ``K``.
    features
        Channels per level of the 2-D U-Net, shallowest first (``len - 1`` poolings, 1x2x2).
    features_3d
        Channels of the 3-D part (default: ``features[0]``).
    use_3x3x3
        3x3x3 first convolution in the first two encoder and last two decoder blocks
        (``False``: every U-Net convolution is 1x3x3, the "2D-3D" ablation).
    multi_loss
        In training mode return ``{"main": 3-D logits, "aux2d": 2-D logits}`` so the
        2-D head is supervised with weight ``c2d``; ``False``: only the 3-D logits.
    pyramid
        Include the two-level 3-D spatial pyramid.
    c2d
        Weight of the 2-D head's loss.
    norm, dropout
        MONAI norm name or ``None``; dropout in the deepest U-Net block.

    In eval mode the forward pass always returns the 3-D logits tensor.  Any
    window size works (the input is padded to a multiple of :attr:`divisor`
    and the logits cropped back); windows of a few sections (e.g. 5 x 256 x 256)
    are what it is made for: nothing pools along z except the 2x4x4 pyramid level.
    """

    spatial_dims = 3

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        features: Sequence[int] = (32, 64, 128, 256),
        features_3d: int | None = None,
        use_3x3x3: bool = True,
        multi_loss: bool = True,
        pyramid: bool = True,
        c2d: float = 0.33,
        norm: str | None = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(features) < 2:
            raise ValueError(f"features must list at least 2 levels, got {list(features)!r}")
        self.use_3x3x3, self.multi_loss, self.use_pyramid, self.c2d = use_3x3x3, multi_loss, pyramid, float(c2d)
        depth = len(features) - 1
        self.depth = depth
        # -- the 2-D U-Net (1x3x3 kernels, 1x2x2 pooling)
        self.encoders = nn.ModuleList()
        channels = in_channels
        for level, feat in enumerate(features):
            first = K3D if use_3x3x3 and level < 2 else K2D
            self.encoders.append(_block(channels, feat, first, norm=norm, dropout=dropout if level == depth else 0.0))
            channels = feat
        self.pool = nn.MaxPool3d(POOL, stride=POOL)
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for j, feat in enumerate(reversed(features[:-1])):
            first = K3D if use_3x3x3 and j >= depth - 2 else K2D
            self.upsamples.append(UpSample(3, channels, feat, scale_factor=POOL, mode="deconv"))
            self.decoders.append(_block(2 * feat, feat, first, norm=norm))
            channels = feat
        # -- class heads
        self.head2d = Convolution(3, channels, num_classes, kernel_size=1, conv_only=True)
        c3 = int(features_3d or features[0])
        self.head3d = Convolution(3, c3, num_classes, kernel_size=1, conv_only=True)
        # -- the 3-D part: features + 2-D class scores -> 3x3x3 -> pyramid (residual) -> 3x3x3
        self.conv_in = _conv(channels + num_classes, c3, K3D, norm=norm)
        self.pyramid = (nn.ModuleList([_PyramidLevel(c3, f, norm=norm) for f in PYRAMID_LEVELS])
                        if pyramid else None)
        self.conv_out = _conv(c3, c3, K3D, norm=norm)

    @property
    def divisor(self) -> tuple[int, int, int]:
        """Multiple of the window size the U-Net needs (the input is padded to it internally)."""
        return (1, 2**self.depth, 2**self.depth)

    @property
    def aux_loss_weights(self) -> dict[str, float]:
        """Weights of the auxiliary outputs in the training loss (empty with ``multi_loss=False``)."""
        return {"aux2d": self.c2d} if self.multi_loss else {}

    def param_groups(self) -> list[dict[str, Any]]:
        """Parameters by module, for per-module L2 regularisation (weight decay).

        Returns:
            ``[{"name": "unet2d", "params": [...]}, {"name": "module3d", ...},
            {"name": "heads", ...}]``: a partition of :meth:`parameters`, ready for
            a ``torch.optim`` optimizer (add ``"weight_decay"`` to each group).
        """
        unet = [*self.encoders, *self.upsamples, *self.decoders]
        part3d = [self.conv_in, self.conv_out, *(self.pyramid or [])]
        heads = [self.head2d, self.head3d]
        return [{"name": name, "params": [p for m in modules for p in m.parameters()]}
                for name, modules in (("unet2d", unet), ("module3d", part3d), ("heads", heads))]

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        if x.ndim != 5:
            raise ValueError(f"hybrid2d3d takes (N, C, Z, Y, X) windows, got shape {tuple(x.shape)}")
        x, crop = pad_to_multiple(x, self.divisor)
        x, skips = encode(self.encoders, self.pool, x)
        for up, dec, skip in zip(self.upsamples, self.decoders, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        logits2d = self.head2d(x)
        h = self.conv_in(torch.cat([x, logits2d], dim=1))
        if self.pyramid is not None:
            h = h + sum(level(h) for level in self.pyramid)
        logits3d = self.head3d(self.conv_out(h))[crop]
        if self.training and self.multi_loss:
            return {"main": logits3d, "aux2d": logits2d[crop]}
        return logits3d
