"""Pad a window up to the size a network's poolings need, and crop the output back.

Anisotropic 3-D windows such as 5 x 256 x 256 do not divide by the pooling
factors of every network (a U-Net pooling 2x2x2 three times needs z divisible
by 8), so the 3-D models pad their input internally (edge values repeated)
and crop their logits back to the input's size: any window size works, and
training patches, sliding windows and whole small volumes need no special
casing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["pad_to_multiple"]


def pad_to_multiple(x: torch.Tensor, divisor: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad the trailing spatial axes of ``x`` ``(N, C, *spatial)`` at their end to multiples of ``divisor``.

    Returns:
        The padded tensor (``x`` itself when nothing is needed) and the index
        that crops an output of the padded size back to ``x``'s spatial size.
    """
    spatial = x.shape[2:]
    if len(divisor) != len(spatial):
        raise ValueError(f"divisor {tuple(divisor)} does not match the {len(spatial)} spatial axes of {tuple(x.shape)}")
    extra = [(-s) % d for s, d in zip(spatial, divisor)]
    crop = (slice(None), slice(None), *(slice(0, s) for s in spatial))
    if not any(extra):
        return x, crop
    pad: list[int] = []
    for e in reversed(extra):  # F.pad lists the last axis first
        pad += [0, e]
    return F.pad(x, pad, mode="replicate"), crop
