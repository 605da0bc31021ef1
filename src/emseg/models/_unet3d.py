"""3-D U-Nets for anisotropic and isotropic volumes.

``unet3d-thin`` pools only in-plane (1x2x2), for thin windows of a few
sections of serial-section EM (z resolution 10x coarser than x/y), e.g.
5 x 256 x 256; ``unet3d-thick`` pools along all axes (2x2x2), for isotropic
FIB-SEM windows.  Both are the dimension-agnostic :class:`~emseg.models.UNet`
with 3x3x3 convolutions, plus internal padding so any window size works.
"""

from __future__ import annotations

import torch

from emseg.models._padding import pad_to_multiple
from emseg.models._unet import UNet

__all__ = ["UNet3d"]


class UNet3d(UNet):
    """3-D U-Net mapping ``(N, C, Z, Y, X)`` to ``(N, K, Z, Y, X)`` logits for any window size.

    The input is padded at its end (edge values repeated) to a multiple of
    :attr:`divisor` and the logits are cropped back, so e.g. a 5-slice window
    runs through a network that pools along z.  Arguments as
    :class:`~emseg.models.UNet` with ``spatial_dims=3``.
    """

    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        kwargs.setdefault("spatial_dims", 3)
        if kwargs["spatial_dims"] != 3:
            raise ValueError(f"UNet3d is 3-D, got spatial_dims={kwargs['spatial_dims']}")
        super().__init__(in_channels, out_channels, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded, crop = pad_to_multiple(x, self.divisor)
        return super().forward(padded)[crop]
