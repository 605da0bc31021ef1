"""Self-dual grain filter (area filter on the tree of shapes), for extra input channels.

Meyer et al. feed the network the image plus grain-filtered copies of it
(``preprocess: {grain_filter: [650, 3200]}``): each copy removes every bright
*and* dark connected "grain" whose area is below the threshold, keeping the
contours of larger shapes exactly.  The filter is computed with higra's tree
of shapes (Géraud et al.): nodes with area < lambda are merged into their
parent and the image is rebuilt from the simplified tree.  Because the tree of
shapes treats bright and dark components alike the filter is self-dual:
``filter(-x) == -filter(x)``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

__all__ = ["GrainFilterCache", "add_grain_channels", "centre_slice", "grain_channels", "grain_filter"]


def _higra():
    try:
        import higra as hg
    except ImportError:  # pragma: no cover - higra is a core dependency
        raise ImportError("the grain filter needs higra: pip install higra") from None
    return hg


def _tree(image: np.ndarray):
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"grain_filter works on 2-D slices (Y, X), got shape {image.shape}")
    hg = _higra()
    # immersion (the default) makes the image well-composed, so the tree and the filter are self-dual
    tree, altitudes = hg.component_tree_tree_of_shapes_image2d(image.astype(np.float64))
    return hg, tree, altitudes, hg.attribute_area(tree)


def _filtered(hg, tree, altitudes, areas, area: int, shape) -> np.ndarray:
    if area < 1:
        raise ValueError(f"grain filter area must be >= 1 pixel, got {area}")
    small = areas < area
    # a deleted node's pixels take the altitude of the nearest kept ancestor (the root is kept)
    small[tree.root()] = False
    simplified, node_map = hg.simplify_tree(tree, small)
    rebuilt = hg.reconstruct_leaf_data(simplified, altitudes[node_map])
    return np.asarray(rebuilt, np.float32).reshape(shape)


def grain_filter(image: np.ndarray, area: int) -> np.ndarray:
    """Remove bright and dark grains smaller than ``area`` pixels from a 2-D image.

    Args:
        image: ``(Y, X)`` numeric image.
        area: area threshold ``lambda`` in pixels; shapes of at least this area stay.

    Returns:
        ``(Y, X)`` float32 filtered image (same value range as the input).
    """
    if area < 1:
        raise ValueError(f"grain filter area must be >= 1 pixel, got {area}")
    hg, tree, altitudes, areas = _tree(image)
    return _filtered(hg, tree, altitudes, areas, int(area), np.shape(image))


def grain_channels(slice_2d: np.ndarray, areas: Sequence[int]) -> np.ndarray:
    """``(len(areas), Y, X)`` float32: one grain-filtered copy of ``slice_2d`` per area.

    The tree of shapes (the costly part, ~seconds for 1024 x 768) is built once for all areas.
    """
    if not len(areas):
        return np.zeros((0, *np.shape(slice_2d)), np.float32)
    hg, tree, altitudes, node_areas = _tree(slice_2d)
    return np.stack([_filtered(hg, tree, altitudes, node_areas, int(a), np.shape(slice_2d)) for a in areas])


class GrainFilterCache:
    """Grain-filter channels keyed by the slice's content (bounded LRU, in memory).

    Used by the :class:`~emseg.inference.Predictor` so validation slices are
    filtered once per training run, not once per epoch.
    """

    def __init__(self, areas: Sequence[int], max_entries: int = 64) -> None:
        self.areas = [int(a) for a in areas]
        self.max_entries = max_entries
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def __call__(self, slice_2d: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(slice_2d)
        key = hashlib.blake2b(array.tobytes(), digest_size=16).hexdigest() + str(array.shape) + str(array.dtype)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        out = grain_channels(array, self.areas)
        self._cache[key] = out
        if len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return out


def centre_slice(image: np.ndarray) -> np.ndarray:
    """The slice a prediction is for: ``image`` itself if ``(Y, X)``, its middle context slice if ``(C, Y, X)``."""
    return image if image.ndim == 2 else image[image.shape[0] // 2]


def add_grain_channels(image: np.ndarray, areas: list[int], grains: np.ndarray | None = None) -> np.ndarray:
    """``(C + len(areas), Y, X)``: the context slices, then one grain-filtered copy of the centre slice per area.

    This channel order is stored implicitly with the model (``preprocess`` in
    the checkpoint) and reproduced by the :class:`~emseg.inference.Predictor`.
    """
    stack = image[None] if image.ndim == 2 else image
    if not areas:
        return stack
    if grains is None:
        grains = grain_channels(centre_slice(image), areas)
    return np.concatenate([stack.astype(np.float32), grains.astype(np.float32)])
