"""Block layout of blockwise prediction: how a volume is cut into blocks, and a predictor seen block by block.

Part of the blockwise engine (:mod:`emseg.inference._blockwise`): the layout
(:class:`BlockLayout`, :func:`choose_block`) and the adapter that lets any
:class:`~emseg.inference.SegmentationPredictor` predict one block
(:func:`as_block_predictor`, :func:`block_labels`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from emseg.inference._tiling import first_argmax

__all__ = ["BLOCK_BYTES", "MAX_PLANE", "PLANE_BLOCK", "BlockLayout", "VolumeBlockAdapter", "as_block_predictor",
           "block_labels", "choose_block", "predict_labels_block"]


#: Memory budget for one block's class probabilities (float32), which sets the z depth of a block.
BLOCK_BYTES = 256 * 2**20


#: Largest slice (pixels) predicted whole in-plane; larger slices are cut into in-plane blocks.
MAX_PLANE = 4096 * 4096


PLANE_BLOCK = 2048


@dataclass(frozen=True)
class BlockLayout:
    """A ``(Z, Y, X)`` volume cut into blocks of ``block`` voxels (the last ones smaller)."""

    shape: tuple[int, int, int]
    block: tuple[int, int, int]

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(math.ceil(s / b) for s, b in zip(self.shape, self.block))  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(np.prod(self.grid))

    def indices(self) -> Iterator[tuple[int, int, int]]:
        yield from itertools.product(*(range(g) for g in self.grid))

    def region(self, index: tuple[int, int, int]) -> tuple[slice, slice, slice]:
        """Global box of block ``index``."""
        return tuple(slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(index, self.block, self.shape))  # type: ignore[return-value]


def choose_block(predictor: Any, shape: tuple[int, int, int], block: tuple[int, int, int] | None = None
                 ) -> tuple[int, int, int]:
    """Block shape: the user's, else whole slices (z-only blocks) sized to :data:`BLOCK_BYTES` (a multiple of
    the predictor's ``slices_per_forward``).

    A predictor may propose its own with ``preferred_block(shape)`` (3-D models).
    """
    if block is not None:
        if len(block) != 3 or any(int(b) < 1 for b in block):
            raise ValueError(f"block must be three positive ints (z, y, x), got {block!r}")
        return tuple(min(int(b), s) for b, s in zip(block, shape))  # type: ignore[return-value]
    preferred = getattr(predictor, "preferred_block", None)
    if preferred is not None:
        return tuple(min(int(b), s) for b, s in zip(preferred(shape), shape))  # type: ignore[return-value]
    z, y, x = shape
    if y * x > MAX_PLANE:
        y, x = min(y, PLANE_BLOCK), min(x, PLANE_BLOCK)
    per_slice = len(predictor.classes) * y * x * 4
    bz = int(max(1, min(32, BLOCK_BYTES // per_slice, z)))
    step = getattr(predictor, "slices_per_forward", lambda s: 1)((shape[1], shape[2]))
    if bz > step > 1:  # whole groups of slices per forward pass in a block (see TiledSeam._slice_groups)
        bz = bz // step * step
    return bz, y, x


class VolumeBlockAdapter:
    """Blockwise interface for a predictor offering only ``predict_proba_volume`` and a ``halo``.

    Reads the block plus ``halo = (hz, hy, hx)`` voxels each side (clipped to the volume), predicts that
    sub-volume and crops it.  Exact where the predictor's output at a voxel depends only on input within
    the halo and not on where its windows start (e.g. 2.5-D slice models along z); otherwise close to,
    but not bit-identical with, whole-volume prediction near block borders.
    """

    def __init__(self, predictor: Any):
        self.predictor = predictor
        self.classes = predictor.classes
        self.halo = tuple(int(h) for h in getattr(predictor, "halo", (0, 0, 0)))

    def __getattr__(self, name: str) -> Any:  # preferred_block, overlap, ... of the wrapped predictor
        return getattr(self.__dict__["predictor"], name)

    def block_input(self, region, shape):
        return tuple(slice(max(0, r.start - h), min(s, r.stop + h)) for r, h, s in zip(region, self.halo, shape))

    def predict_proba_block(self, data, *, origin, region, shape):
        probs = self.predictor.predict_proba_volume(data)
        return probs[(slice(None),) + tuple(slice(r.start - o, r.stop - o) for r, o in zip(region, origin))]


def as_block_predictor(predictor: Any) -> Any:
    """``predictor`` itself if it has the blockwise interface, else a :class:`VolumeBlockAdapter`."""
    if getattr(predictor, "spatial_dims", 2) == 2 and hasattr(predictor, "block_input") \
            and hasattr(predictor, "predict_proba_block"):
        return predictor
    if hasattr(predictor, "predict_proba_volume"):
        return VolumeBlockAdapter(predictor)
    raise TypeError(f"{type(predictor).__name__} has neither predict_proba_block nor predict_proba_volume")


def predict_labels_block(predictor: Any, read: Callable[[tuple[slice, ...]], np.ndarray],
                         region: tuple[slice, slice, slice], shape: tuple[int, int, int], dtype: Any) -> np.ndarray:
    """Labels ``(nz, ny, nx)`` of ``region``: read the predictor's input box, predict, argmax."""
    box = predictor.block_input(region, shape)
    return block_labels(predictor, read(box), origin=tuple(s.start for s in box), region=region, shape=shape,
                        dtype=dtype)


def block_labels(predictor: Any, data: np.ndarray, *, origin, region, shape, dtype: Any) -> np.ndarray:
    """Labels of ``region`` from its input ``data``: the predictor's ``predict_labels_block`` where it has
    one (no probabilities formed), else the argmax of ``predict_proba_block``."""
    if hasattr(predictor, "predict_labels_block"):
        labels = predictor.predict_labels_block(data, origin=origin, region=region, shape=shape)
    else:
        labels = first_argmax(predictor.predict_proba_block(data, origin=origin, region=region, shape=shape))
    return labels.astype(dtype, copy=False)
