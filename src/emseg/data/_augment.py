"""Patch augmentation: the label array (and weight map) always follows the image geometrically."""

from __future__ import annotations

import numpy as np

from emseg.config import AugmentConfig
from emseg.data._geometric import (
    coarse_elastic_field,
    elastic_field,
    grid_distortion_coords,
    identity_coords,
    rotate_zoom_coords,
    warp,
)

__all__ = ["augment_batch", "epoch_elastic_field"]


def epoch_elastic_field(config: AugmentConfig, patch_shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray | None:
    """Guay et al.'s elastic variant: the one ``(2, Y, X)`` field for all patches of an epoch (else ``None``).

    The coarse grid spacing is ``4 * elastic_sigma`` pixels and the node
    displacements have standard deviation ``elastic_alpha / 4`` pixels.
    """
    if config.elastic != "guay":
        return None
    return coarse_elastic_field(tuple(patch_shape), alpha=config.elastic_alpha / 4.0,
                                spacing=4.0 * config.elastic_sigma, rng=rng)


def _spatial_coords(config: AugmentConfig, shape: tuple[int, int], rng: np.random.Generator,
                    epoch_field: np.ndarray | None) -> np.ndarray | None:
    """The composed source coordinates of the continuous transforms drawn for one patch, or ``None``."""
    p = config.spatial_probability
    coords = None

    def base() -> np.ndarray:
        return identity_coords(shape) if coords is None else coords

    if config.elastic == "simard" and config.elastic_alpha > 0 and rng.random() < p:
        coords = base() + elastic_field(shape, alpha=config.elastic_alpha, sigma=config.elastic_sigma, rng=rng)
    elif config.elastic == "guay" and epoch_field is not None and rng.random() < p:
        coords = base() + epoch_field
    if config.grid_distortion > 0 and rng.random() < p:
        lim = config.grid_distortion
        n = config.grid_steps
        coords = grid_distortion_coords(base(), shape, steps_y=1 + rng.uniform(-lim, lim, n),
                                        steps_x=1 + rng.uniform(-lim, lim, n))
    angle = float(rng.uniform(-config.rotation, config.rotation)) if config.rotation > 0 and rng.random() < p else 0.0
    zoom = 1.0
    if config.zoom is not None and config.zoom != [1.0, 1.0] and rng.random() < p:
        lo, hi = np.log(config.zoom[0]), np.log(config.zoom[1])
        zoom = float(np.exp(rng.uniform(lo, hi)))
    if angle or zoom != 1.0:
        coords = rotate_zoom_coords(base(), shape, angle=angle, zoom=zoom)
    return coords


def augment_batch(
    images: np.ndarray,
    labels: np.ndarray,
    config: AugmentConfig,
    rng: np.random.Generator,
    *,
    weights: np.ndarray | None = None,
    epoch_field: np.ndarray | None = None,
):
    """Randomly flip / rotate / transpose / deform patches and jitter intensity.

    Order: flips, rot90, transpose; then one resampling for free rotation,
    zoom, grid distortion and elastic deformation (data/_geometric.py); then
    brightness / contrast and Gaussian noise (image only).

    Args:
        images: ``(B, C, Y, X)`` or ``(B, C, Z, Y, X)`` float32 normalised patches
            (square in ``(Y, X)`` for rot90 / transpose).
        labels: ``(B, Y, X)`` or ``(B, Z, Y, X)`` int labels.
        config: which transforms are on, and their ranges.
        rng: the random generator (seeded by the trainer).
        weights: optional per-pixel loss weights shaped like ``labels``.
        epoch_field: Guay elastic field of this epoch (:func:`epoch_elastic_field`).

    Returns:
        New ``(images, labels)`` of the same shapes, or ``(images, labels, weights)``
        when ``weights`` is given.
    """
    out_x, out_y, out_w = [], [], []
    square = images.shape[-1] == images.shape[-2]
    shape = tuple(images.shape[-2:])
    no_weights = weights is None
    for b, (x, y) in enumerate(zip(images, labels)):
        w = None if no_weights else weights[b]
        geo = [x, y] + ([] if w is None else [w])  # the spatial axes of all are the last two

        def apply(fn) -> None:
            geo[:] = [fn(a) for a in geo]

        if config.flips:
            if rng.random() < 0.5:
                apply(lambda a: a[..., ::-1, :])
            if rng.random() < 0.5:
                apply(lambda a: a[..., :, ::-1])
        if config.rot90 and square:
            k = int(rng.integers(4))
            apply(lambda a: np.rot90(a, k, axes=(-2, -1)))
        if config.transpose and square and rng.random() < 0.5:
            apply(lambda a: np.swapaxes(a, -1, -2))
        x, y = geo[0], geo[1]
        w = geo[2] if w is not None else None
        coords = _spatial_coords(config, shape, rng, epoch_field)
        if coords is not None:
            x, y, w = warp(np.ascontiguousarray(x), np.ascontiguousarray(y), coords,
                           None if w is None else np.ascontiguousarray(w))
        if config.contrast or config.brightness:
            gain = 1.0 + rng.uniform(-config.contrast, config.contrast)
            shift = rng.uniform(-config.brightness, config.brightness)
            x = x * np.float32(gain) + np.float32(shift)
        if config.noise_std > 0:
            x = x + rng.normal(0.0, config.noise_std, size=x.shape).astype(np.float32)
        out_x.append(np.ascontiguousarray(x, dtype=np.float32))
        out_y.append(np.ascontiguousarray(y))
        if w is not None:
            out_w.append(np.ascontiguousarray(w, dtype=np.float32))
    if no_weights:
        return np.stack(out_x), np.stack(out_y)
    return np.stack(out_x), np.stack(out_y), np.stack(out_w)
