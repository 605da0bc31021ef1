"""Masked image modelling: hide random blocks of the input, reconstruct their normalised intensities.

As SimMIM (Xie et al. 2022), but for any emseg network: the registry network is built with one output
channel, which serves as the temporary intensity head, and the loss is the mean absolute error over the
masked pixels only.  2.5-D inputs (``context_slices`` channels) are masked at the same pixels in every
channel (the neighbouring sections would otherwise give the answer away) and the centre section is the
target; 3-D inputs are masked in ``(bz, b, b)`` blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["mask_blocks", "masked_input", "mim_loss", "mim_target"]


def mask_blocks(shape: Sequence[int], *, block: Sequence[int], ratio: float, rng: np.random.Generator) -> np.ndarray:
    """A random block mask: ``True`` where the input is hidden.

    The spatial ``shape`` (``(Y, X)`` or ``(Z, Y, X)``) is cut into a grid of ``block``-sized cells (the last
    cell of an axis may be cut short); exactly ``round(ratio * cells)`` cells, at least one, are masked.

    Returns:
        bool array of ``shape``.
    """
    shape, block = tuple(int(s) for s in shape), tuple(int(b) for b in block)
    if len(shape) != len(block):
        raise ValueError(f"block {block} must have one size per axis of {shape}")
    grid = tuple(-(-s // b) for s, b in zip(shape, block))
    cells = int(np.prod(grid))
    count = min(cells, max(1, int(round(ratio * cells))))
    flat = np.zeros(cells, dtype=bool)
    flat[rng.choice(cells, size=count, replace=False)] = True
    mask = flat.reshape(grid)
    for axis, b in enumerate(block):
        mask = np.repeat(mask, b, axis=axis)
    return mask[tuple(slice(0, s) for s in shape)]


def masked_input(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` ``(N, C, *S)`` with the masked pixels (``mask`` ``(N, *S)``) set to 0 in every channel.

    0 is the mean of normalised intensities: a hidden pixel carries no information about its value.
    """
    return x.masked_fill(mask[:, None], 0.0)


def mim_target(x: torch.Tensor) -> torch.Tensor:
    """The intensities to reconstruct, ``(N, 1, *S)``: the centre channel of ``x`` ``(N, C, *S)``."""
    c = x.shape[1] // 2
    return x[:, c:c + 1]


def _centre_crop(t: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    have = t.shape[-len(size):]
    offsets = [(h - s) // 2 for h, s in zip(have, size)]
    return t[(..., *(slice(o, o + s) for o, s in zip(offsets, size)))]


def mim_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between ``prediction`` and ``target`` ``(N, 1, *S)`` over the masked pixels.

    A valid-padding network predicts only the centre of the patch: target and mask are centre-cropped to
    the prediction's size.  0 when no masked pixel is left.
    """
    size = tuple(prediction.shape[2:])
    target, mask = _centre_crop(target, size), _centre_crop(mask, size)
    weight = mask[:, None].to(prediction.dtype)
    return ((prediction.float() - target.float()).abs() * weight).sum() / weight.sum().clamp_min(1.0)
