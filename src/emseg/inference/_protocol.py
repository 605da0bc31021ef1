"""What every predictor offers: the protocol the blockwise engine, evaluation and Grad-CAM rely on.

A single model (:class:`~emseg.inference.Predictor`), an ensemble
(:class:`~emseg.inference.EnsemblePredictor`, which *has* member predictors) and
an exported network all satisfy :class:`SegmentationPredictor`; code that
predicts (``emseg predict``, the blockwise engine, ``emseg evaluate``, a napari
widget) asks for nothing more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np

from emseg.inference._tiling import first_argmax

__all__ = ["SegmentationPredictor", "volume_labels"]

Region = tuple[slice, slice, slice]


@runtime_checkable
class SegmentationPredictor(Protocol):
    """Raw EM in, class probabilities and labels out; arrays ``(Z, Y, X)``, probabilities ``(K, ...)``.

    Attributes:
        classes: the ``K`` class names, in output order.
        spatial_dims: 2 (slice by slice, with ``context_slices`` neighbours) or 3 (whole volumes).
        context_slices: slices fed per output slice (1 = plain 2-D).
    """

    classes: list[str]
    spatial_dims: int
    context_slices: int

    @property
    def num_classes(self) -> int:
        """``K``."""
        ...

    @property
    def halo(self) -> tuple[int, int, int]:
        """Input voxels ``(z, y, x)`` each side of a block needed for an exact result (an upper bound)."""
        ...

    def block_input(self, region: Region, shape: tuple[int, int, int]) -> Region:
        """Input box (global coordinates) to read for predicting output ``region`` of a ``shape`` volume."""
        ...

    def predict_proba_block(self, data: np.ndarray, *, origin: tuple[int, int, int], region: Region,
                            shape: tuple[int, int, int]) -> np.ndarray:
        """``(K, nz, ny, nx)`` probabilities of ``region`` from raw ``data`` read at ``origin``."""
        ...

    def predict_labels_block(self, data: np.ndarray, *, origin: tuple[int, int, int], region: Region,
                             shape: tuple[int, int, int]) -> np.ndarray:
        """``(nz, ny, nx)`` labels of ``region``, as :meth:`predict_volume` gives them."""
        ...

    def predict_proba_slice(self, image: np.ndarray) -> np.ndarray:
        """``(K, Y, X)`` probabilities of a raw ``(Y, X)`` slice (or ``(C, Y, X)`` with context slices)."""
        ...

    def iter_slices(self, volume: Any, *, progress: Callable[[int], None] | None = None
                    ) -> Iterator[tuple[int, np.ndarray]]:
        """``(z, (K, Y, X) probabilities)`` for every slice of a raw ``(Z, Y, X)`` volume."""
        ...

    def predict_proba_volume(self, volume: Any) -> np.ndarray:
        """``(K, Z, Y, X)`` float32 probabilities of a raw ``(Z, Y, X)`` volume (nothing outside it is seen)."""
        ...

    def predict_volume(self, volume: Any, *, probabilities: bool = False,
                       progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels ``(Z, Y, X)`` and, if asked, probabilities ``(K, Z, Y, X)`` of a raw volume."""
        ...


def volume_labels(predictor: SegmentationPredictor, volume: Any, *, probabilities: bool = False,
                  progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """:meth:`SegmentationPredictor.predict_volume` from the predictor's probabilities.

    Labels are the first class of largest probability. 3-D predictors predict the whole volume at once
    (``progress`` advances by ``Z`` at the end); 2-D ones slice by slice through ``iter_slices``.
    """
    z, y, x = volume.shape
    dtype = np.uint8 if predictor.num_classes <= 255 else np.uint16
    if predictor.spatial_dims == 3:
        p = predictor.predict_proba_volume(volume)
        if progress is not None:
            progress(z)
        return first_argmax(p).astype(dtype), (p if probabilities else None)
    labels = np.empty((z, y, x), dtype)
    probs = np.empty((predictor.num_classes, z, y, x), np.float32)
    for k, p in predictor.iter_slices(volume, progress=progress):
        labels[k] = first_argmax(p)
        probs[:, k] = p
    return labels, probs
