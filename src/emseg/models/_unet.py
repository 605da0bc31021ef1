"""Dimension-agnostic U-Net on MONAI building blocks.

MONAI's ``BasicUNet`` fixes depth (4 poolings) and ``UNet`` uses strided
residual units; the seeds' U-Nets need a configurable depth, max-pooling,
dropout only in the deepest block, and anisotropic kernels/pooling (1x3x3,
1x2x2) for the 2D-3D networks, so the U-Net is assembled here from MONAI's
``Convolution`` and ``UpSample`` blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.factories import Pool
from torch import nn

__all__ = ["UNet"]


def encode(encoders: Sequence[nn.Module], pool: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The contracting path of a U-Net: each encoder but the deepest is followed by ``pool``.

    Returns the deepest encoder's output and the skip tensors, shallowest first (the U-Net, the
    valid-padding U-Net and the 2D-3D hybrid share it).
    """
    skips = []
    for i, enc in enumerate(encoders):
        x = enc(x)
        if i < len(encoders) - 1:
            skips.append(x)
            x = pool(x)
    return x, skips


def _double_conv(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    *,
    kernel_size: int | Sequence[int],
    norm: str | tuple | None,
    act: str | tuple,
    dropout: float,
) -> nn.Sequential:
    common = dict(spatial_dims=spatial_dims, kernel_size=kernel_size, act=act, norm=norm, padding=None)
    return nn.Sequential(
        Convolution(in_channels=in_channels, out_channels=out_channels, **common),
        Convolution(in_channels=out_channels, out_channels=out_channels, dropout=dropout or None, **common),
    )


class UNet(nn.Module):
    """U-Net with same padding, batch norm and optional dropout in the deepest block.

    Parameters
    ----------
    in_channels, out_channels
        Input channels (1 for EM) and number of classes.
    spatial_dims
        2 for slices ``(N, C, Y, X)``, 3 for windows ``(N, C, Z, Y, X)``.
    features
        Channels per level, shallowest first; ``len(features) - 1`` poolings.
    dropout
        Dropout probability in the deepest (bottleneck) block only.
    kernel_size, pool_size
        Convolution kernel and pooling factor, an int or one value per axis
        (e.g. ``(1, 3, 3)`` and ``(1, 2, 2)`` for anisotropic volumes).
    norm
        MONAI norm name (``"batch"``, ``"instance"``, ``None``).
    act
        MONAI activation name (``"relu"``, ``"prelu"``, ``"leakyrelu"``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        spatial_dims: int = 2,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        dropout: float = 0.0,
        kernel_size: int | Sequence[int] = 3,
        pool_size: int | Sequence[int] = 2,
        norm: str | None = "batch",
        act: str = "relu",
    ) -> None:
        super().__init__()
        if len(features) < 2:
            raise ValueError(f"features must list at least 2 levels, got {list(features)!r}")
        self.spatial_dims = spatial_dims
        self.pool_size = pool_size
        conv = dict(kernel_size=kernel_size, norm=norm, act=act)
        self.encoders = nn.ModuleList()
        channels = in_channels
        for level, feat in enumerate(features):
            deepest = level == len(features) - 1
            self.encoders.append(
                _double_conv(spatial_dims, channels, feat, dropout=dropout if deepest else 0.0, **conv)
            )
            channels = feat
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=pool_size, stride=pool_size)
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for feat in reversed(features[:-1]):
            self.upsamples.append(
                UpSample(spatial_dims, channels, feat, scale_factor=pool_size, mode="deconv")
            )
            self.decoders.append(_double_conv(spatial_dims, 2 * feat, feat, dropout=0.0, **conv))
            channels = feat
        self.head = Convolution(spatial_dims, channels, out_channels, kernel_size=1, conv_only=True)

    @property
    def divisor(self) -> tuple[int, ...]:
        """Spatial size multiple the input must have (product of poolings per axis)."""
        pool = self.pool_size
        pool = (pool,) * self.spatial_dims if isinstance(pool, int) else tuple(pool)
        depth = len(self.encoders) - 1
        return tuple(p**depth for p in pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = encode(self.encoders, self.pool, x)
        for up, dec, skip in zip(self.upsamples, self.decoders, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)
