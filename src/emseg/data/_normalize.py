"""Intensity normalisation computed on training data and stored with the model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Normalizer"]


@dataclass(frozen=True)
class Normalizer:
    """Z-score normalisation ``(x - mean) / std`` with statistics of the training images."""

    mean: float
    std: float

    @classmethod
    def fit(cls, images: list[np.ndarray]) -> Normalizer:
        total = sum(float(np.sum(im, dtype=np.float64)) for im in images)
        count = sum(im.size for im in images)
        mean = total / count
        var = sum(float(np.sum((im.astype(np.float64) - mean) ** 2)) for im in images) / count
        return cls(mean=mean, std=max(float(np.sqrt(var)), 1e-6))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return ((np.asarray(image, dtype=np.float32) - np.float32(self.mean)) / np.float32(self.std)).astype(np.float32)

    def lookup_table(self, dtype: np.dtype | type) -> np.ndarray | None:
        """``self(v)`` for every value ``v`` of an 8- or 16-bit unsigned ``dtype`` (256 / 65536 float32), else None.

        ``table[image]`` is ``self(image)`` bit for bit (the table is made by this normaliser), so raw slices can
        be normalised wherever they are, e.g. on a GPU after a copy of one byte per voxel instead of four.
        """
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)):
            return None
        return self(np.arange(np.iinfo(dtype).max + 1, dtype=dtype))

    def to_dict(self) -> dict[str, float]:
        return {"mean": float(self.mean), "std": float(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> Normalizer:
        return cls(mean=float(data["mean"]), std=float(data["std"]))
