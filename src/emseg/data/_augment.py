"""Patch augmentation: the label array always follows the image geometrically."""

from __future__ import annotations

import numpy as np

from emseg.config import AugmentConfig

__all__ = ["augment_batch"]


def augment_batch(
    images: np.ndarray, labels: np.ndarray, config: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Randomly flip / rotate by 90 degrees / transpose and jitter intensity.

    Args:
        images: ``(B, C, Y, X)`` float32 normalised patches (square if transposing/rotating).
        labels: ``(B, Y, X)`` int labels.
        config: which transforms are on, and intensity ranges.
        rng: the random generator (seeded by the trainer).

    Returns:
        New ``(images, labels)`` of the same shapes.
    """
    out_x, out_y = [], []
    square = images.shape[-1] == images.shape[-2]
    for x, y in zip(images, labels):
        if config.flips:
            if rng.random() < 0.5:
                x, y = x[:, ::-1, :], y[::-1, :]
            if rng.random() < 0.5:
                x, y = x[:, :, ::-1], y[:, ::-1]
        if config.rot90 and square:
            k = int(rng.integers(4))
            x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(0, 1))
        if config.transpose and square and rng.random() < 0.5:
            x, y = x.transpose(0, 2, 1), y.T
        if config.contrast or config.brightness:
            gain = 1.0 + rng.uniform(-config.contrast, config.contrast)
            shift = rng.uniform(-config.brightness, config.brightness)
            x = x * np.float32(gain) + np.float32(shift)
        out_x.append(np.ascontiguousarray(x, dtype=np.float32))
        out_y.append(np.ascontiguousarray(y))
    return np.stack(out_x), np.stack(out_y)
