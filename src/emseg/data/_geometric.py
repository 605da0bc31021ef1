"""Continuous spatial augmentation: free rotation, zoom, grid distortion, elastic deformation.

Every transform is a map from output pixel coordinates to source coordinates
in the ``(Y, X)`` plane; they are composed into one coordinate array and the
patch is resampled once with :func:`scipy.ndimage.map_coordinates`: images
and weight maps linearly, labels by nearest neighbour (so they keep only the
values they had).  Outside the patch the content is mirrored (``mirror`` mode) for
all three, so the label keeps following the image at the borders.  A 3-D patch
``(C, Z, Y, X)`` gets the same in-plane transform on every z slice (the axial
resolution of FIB-SEM / ssTEM stacks usually differs from the lateral one).

Written here rather than taken from MONAI: MONAI's ``Rand2DElastic`` /
``RandGridDistortion`` resample each array separately with its own random
state and have no Guay-style per-epoch field; one composed coordinate map
keeps image, labels and weights aligned by construction.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = [
    "coarse_elastic_field",
    "elastic_field",
    "grid_distortion_coords",
    "identity_coords",
    "rotate_zoom_coords",
    "warp",
]


def identity_coords(shape: tuple[int, int]) -> np.ndarray:
    """``(2, Y, X)`` float64 pixel coordinates (y, x)."""
    return np.stack(np.meshgrid(np.arange(shape[0], dtype=np.float64), np.arange(shape[1], dtype=np.float64),
                                indexing="ij"))


def rotate_zoom_coords(coords: np.ndarray, shape: tuple[int, int], *, angle: float = 0.0, zoom: float = 1.0) -> np.ndarray:
    """Source coordinates of a rotation by ``angle`` degrees and a zoom by ``zoom`` about the patch centre.

    A positive angle turns the content counter-clockwise as displayed (row 0 at
    the top), like ``np.rot90``: ``angle=90`` equals ``np.rot90(patch)`` for a square patch.
    ``zoom > 1`` magnifies (a centred dot of radius r gets radius ``zoom * r``).
    """
    cy, cx = (shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0
    t = math.radians(angle)
    cos, sin = math.cos(t), math.sin(t)
    # Snap to exact values for multiples of 90 degrees so the nearest-neighbour resampling is exact.
    cos, sin = (round(cos) if abs(cos - round(cos)) < 1e-12 else cos), (round(sin) if abs(sin - round(sin)) < 1e-12 else sin)
    dy, dx = (coords[0] - cy) / zoom, (coords[1] - cx) / zoom
    # np.rot90: out[i, j] = in[j, X-1-i]  ->  source (y, x) = (c + dx', c - dy') for 90 degrees.
    src_y = cy + cos * dy + sin * dx
    src_x = cx - sin * dy + cos * dx
    return np.stack([src_y, src_x])


def _distorted_axis(size: int, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots (output positions) and their source positions for one axis."""
    n = steps.size
    knots = np.linspace(0, size - 1, n + 1)
    cells = (knots[1] - knots[0]) * steps
    source = np.concatenate([[0.0], np.cumsum(cells)])
    source *= (size - 1) / source[-1]  # the two ends stay fixed, so the patch keeps its extent
    return knots, source


def grid_distortion_coords(coords: np.ndarray, shape: tuple[int, int], *, steps_y: np.ndarray,
                           steps_x: np.ndarray) -> np.ndarray:
    """Albumentations-style ``GridDistortion``: each of the ``n`` cells per axis is stretched by ``steps``.

    ``steps_y``/``steps_x`` are ``(n,)`` factors ``1 + U(-limit, limit)``; the
    map is piecewise linear and separable (y depends on y only, x on x only);
    unlike albumentations the cumulative map is rescaled so both ends stay put.
    """
    ky, sy = _distorted_axis(shape[0], np.asarray(steps_y, float))
    kx, sx = _distorted_axis(shape[1], np.asarray(steps_x, float))
    return np.stack([np.interp(coords[0], ky, sy), np.interp(coords[1], kx, sx)])


def elastic_field(shape: tuple[int, int], *, alpha: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Simard et al. (2003): ``alpha * G_sigma * U(-1, 1)`` per axis, ``(2, Y, X)`` displacements in pixels."""
    field = rng.uniform(-1.0, 1.0, size=(2, *shape))
    for k in range(2):
        field[k] = ndimage.gaussian_filter(field[k], sigma, mode="reflect")
    return alpha * field


def coarse_elastic_field(shape: tuple[int, int], *, alpha: float, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Guay et al.'s elastic field: ``N(0, alpha^2)`` displacements on a coarse grid, bilinearly upsampled.

    The grid has one node every ``spacing`` pixels (plus the far edge);
    the result is ``(2, Y, X)`` displacements in pixels.  The trainer draws one
    such field per epoch and applies it to every patch of that epoch.
    """
    ny, nx = (max(2, int(math.ceil((s - 1) / spacing)) + 1) for s in shape)
    coarse = rng.normal(0.0, alpha, size=(2, ny, nx))
    gy = np.linspace(0, ny - 1, shape[0])
    gx = np.linspace(0, nx - 1, shape[1])
    grid = np.stack(np.meshgrid(gy, gx, indexing="ij"))
    return np.stack([ndimage.map_coordinates(coarse[k], grid, order=1) for k in range(2)])


def warp(image: np.ndarray, labels: np.ndarray, coords: np.ndarray,
         weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Resample a patch at ``coords`` (``(2, Y, X)`` source positions, from the functions above).

    Args:
        image: ``(C, Y, X)`` or ``(C, Z, Y, X)`` float.
        labels: ``(Y, X)`` or ``(Z, Y, X)`` integers (nearest neighbour).
        coords: ``(2, Y, X)`` source coordinates in the ``(Y, X)`` plane.
        weights: optional map shaped like ``labels`` (linear).

    Returns:
        ``(image, labels, weights)`` with the input shapes and dtypes.
    """
    def each_plane(array: np.ndarray, order: int) -> np.ndarray:
        flat = array.reshape(-1, *array.shape[-2:])
        out = np.stack([ndimage.map_coordinates(plane, coords, order=order, mode="mirror") for plane in flat])
        return out.reshape(array.shape).astype(array.dtype, copy=False)

    return (each_plane(image, 1), each_plane(labels, 0),
            None if weights is None else each_plane(weights, 1))
