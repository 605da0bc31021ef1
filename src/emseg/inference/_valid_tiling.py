"""Tiled prediction for valid-padding networks, whose output is smaller than their input.

MONAI's ``sliding_window_inference`` assumes the output window is the input
window, so for ``unet-original`` (572 in, 388 out) the tiling is done here:
the image is padded by the network's margin (reflect), tiles are cut so that
their *outputs* cover every pixel, and the output tiles are stitched.

The tile step is the largest multiple of the network's pooling alignment
(``2**depth``) not above the output size: every tile then sees the same
pooling grid as one big window over the whole padded image would, so the
stitched result equals a single-window prediction exactly (the tests check
this), and neighbouring output tiles overlap by a few pixels holding identical
values.  Ronneberger's 388-pixel output with alignment 16 gives a step of 384.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["AxisTiling", "axis_tiling", "predict_valid_tiles"]


@dataclass(frozen=True)
class AxisTiling:
    """How one axis of length ``size`` is covered: ``count`` input windows of ``window`` pixels, ``step`` apart.

    The padded axis has ``margin`` pixels before the image and ``pad_after``
    after it; the tile at ``origin`` (padded coordinates) predicts image pixels
    ``[origin, origin + output)``.
    """

    size: int
    window: int
    output: int
    step: int
    count: int
    margin: int

    @property
    def padded(self) -> int:
        return (self.count - 1) * self.step + self.window

    @property
    def pad_after(self) -> int:
        return self.padded - self.size - self.margin

    @property
    def origins(self) -> list[int]:
        return [i * self.step for i in range(self.count)]


def axis_tiling(size: int, window: int, model) -> AxisTiling:
    """Tile one axis of ``size`` pixels for ``model`` (a :class:`~emseg.models._unet_original.ValidUNet`).

    ``window`` (input pixels) is rounded up to a valid size; an axis whose
    output fits in one window gets the smallest valid window that covers it.
    """
    margin = int(model.output_margin)
    window = model.valid_input_size(window)
    output = model.output_size(window)
    if size <= output:
        window = model.valid_input_size(size + 2 * margin)
        output = model.output_size(window)
        return AxisTiling(size, window, output, output, 1, margin)
    step = output // model.alignment * model.alignment
    if step < 1:
        raise ValueError(f"prediction window {window} is too small for this valid-padding network "
                         f"(output {output} < alignment {model.alignment}); use a larger window")
    count = math.ceil((size - output) / step) + 1
    return AxisTiling(size, window, output, step, count, margin)


def predict_valid_tiles(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    *,
    window: Sequence[int],
    batch_size: int = 4,
) -> torch.Tensor:
    """Logits of a valid-padding network for a whole image, by stitched output tiles.

    Args:
        model: maps ``(B, C, h, w)`` valid windows to ``(B, K, h - 2m, w - 2m)``
            logits and has ``output_margin``, ``alignment``, ``output_size``,
            ``valid_input_size``.
        image: ``(1, C, Y, X)`` normalised image.
        window: input window ``(wy, wx)`` (rounded up to valid sizes).
        batch_size: tiles per forward pass.

    Returns:
        ``(1, K, Y, X)`` logits, the same pixels as ``image``.
    """
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be (1, C, Y, X), got {tuple(image.shape)}")
    ty, tx = (axis_tiling(int(n), int(w), model) for n, w in zip(image.shape[2:], window))
    array = image[0].detach().cpu().float().numpy()
    pad = [(0, 0)] + [(t.margin, t.pad_after) for t in (ty, tx)]
    mode = "reflect" if min(array.shape[1:]) > 1 else "edge"
    padded = torch.from_numpy(np.pad(array, pad, mode=mode)).to(image.device, image.dtype)
    origins = [(oy, ox) for oy in ty.origins for ox in tx.origins]
    out: torch.Tensor | None = None
    for start in range(0, len(origins), batch_size):
        chunk = origins[start : start + batch_size]
        tiles = torch.stack([padded[:, oy : oy + ty.window, ox : ox + tx.window] for oy, ox in chunk])
        logits = model(tiles)
        if out is None:
            out = logits.new_empty((1, logits.shape[1], ty.padded - 2 * ty.margin, tx.padded - 2 * tx.margin))
        for (oy, ox), tile in zip(chunk, logits):
            out[0, :, oy : oy + ty.output, ox : ox + tx.output] = tile
    assert out is not None
    return out[:, :, : ty.size, : tx.size]
