"""Confusion matrices accumulated block by block along axis 0.

Label volumes can be larger than memory (zarr, HDF5, memory-mapped TIFF), so
everything here reads the inputs a few slices at a time along the first axis
and adds per-block ``np.bincount`` results into one small matrix.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Pixels read from each input per block. A block is always whole slices along
#: axis 0 (at least one), so a 768x1024 z-slice is read in one piece.
_BLOCK_PIXELS = 1 << 22

#: Most classes :func:`evaluate` infers from the labels when no class list is given
#: (a 1024x1024 int64 matrix is 8 MiB); more usually means instance labels.
_MAX_INFERRED_CLASSES = 1024

#: How many offending values an error message lists before eliding the rest.
_MAX_LISTED = 10


class LabelRangeError(ValueError):
    """A counted label value is negative or not below the number of classes.

    Attributes:
        which: ``"prediction"`` or ``"truth"``.
        values: the offending distinct values (at most ``_MAX_LISTED``), ascending.
        distinct: how many distinct offending values there are.
        num_classes: the number of classes checked against, or ``None`` (only negatives refused).
    """

    def __init__(self, message: str, *, which: str, values: list[int], distinct: int, num_classes: int | None):
        super().__init__(message)
        self.which = which
        self.values = values
        self.distinct = distinct
        self.num_classes = num_classes


def _check_ignore_label(ignore_label: Any) -> int | None:
    if ignore_label is None:
        return None
    if isinstance(ignore_label, bool) or not isinstance(ignore_label, (int, np.integer)):
        raise ValueError(f"ignore_label must be an integer label value or None; got {ignore_label!r}")
    return int(ignore_label)


def _as_array_like(data: Any) -> Any:
    """Return something with ``.shape`` that can be sliced along axis 0.

    Paths are opened lazily with :func:`emseg.io.open_image`, which always gives
    a 3-D ``(Z, Y, X)`` array. Lazy arrays (zarr, h5py, dask, memmap) are passed
    through untouched; anything else goes through :func:`numpy.asarray`.
    """
    if isinstance(data, (str, os.PathLike)):
        from emseg.io import open_image  # lazy: only needed for paths

        return open_image(data).array
    if hasattr(data, "shape") and hasattr(data, "__getitem__"):
        return data
    return np.asarray(data)


def _check_shapes(prediction: Any, truth: Any) -> tuple[int, ...]:
    pred_shape = tuple(int(s) for s in prediction.shape)
    truth_shape = tuple(int(s) for s in truth.shape)
    if pred_shape != truth_shape:
        raise ValueError(
            f"prediction and truth must have the same shape; got prediction "
            f"shape {pred_shape} and truth shape {truth_shape}"
        )
    return pred_shape


def _blocks(shape: tuple[int, ...]):
    """Yield slices along axis 0 covering ``shape`` in blocks of whole rows."""
    if len(shape) == 0:
        yield None
        return
    row_pixels = math.prod(shape[1:])
    rows = max(1, _BLOCK_PIXELS // max(1, row_pixels))
    for start in range(0, shape[0], rows):
        yield slice(start, min(start + rows, shape[0]))


def _read(data: Any, block: slice | None, name: str) -> np.ndarray:
    values = np.asarray(data if block is None else data[block]).reshape(-1)
    if values.dtype.kind == "b":
        return values.astype(np.uint8)
    if values.dtype.kind not in "iu":
        raise ValueError(
            f"{name} must hold integer class labels; got dtype {values.dtype}. "
            f"Convert probabilities or scores to labels first (e.g. argmax over "
            f"the class axis) and cast with .astype(int)."
        )
    return values


def _check_range(values: np.ndarray, name: str, num_classes: int | None, ignore_label: int | None) -> None:
    """Raise if any value is negative or, when ``num_classes`` is set, >= it."""
    if values.size == 0:
        return
    low, high = values.min(), values.max()
    if low >= 0 and (num_classes is None or high < num_classes):
        return
    bad = values < 0
    if num_classes is not None:
        bad |= values >= num_classes
    offending = np.unique(values[bad])
    listed = ", ".join(str(int(v)) for v in offending[:_MAX_LISTED])
    if offending.size > _MAX_LISTED:
        listed += f", ... ({offending.size} distinct values)"
    valid = f"[0, {num_classes})" if num_classes is not None else "non-negative integers"
    hint = ""
    if ignore_label is not None:
        hint = (
            f" (pixels where truth == ignore_label={ignore_label} are excluded)"
            if name == "truth"
            else f" (checked where truth != ignore_label={ignore_label})"
        )
    raise LabelRangeError(
        f"{name} contains label values outside the valid range {valid}{hint}: {listed}. "
        f"Pass num_classes/classes covering every label, or set ignore_label for "
        f"an 'unlabelled' value in the truth.",
        which=name, values=[int(v) for v in offending[:_MAX_LISTED]], distinct=int(offending.size),
        num_classes=num_classes,
    )


def _accumulate(
    prediction: Any,
    truth: Any,
    *,
    num_classes: int | None,
    ignore_label: int | None,
) -> np.ndarray:
    """Shared worker for :func:`confusion_matrix` and :func:`evaluate`.

    With ``num_classes=None`` the matrix grows to ``max label seen + 1``.
    """
    shape = _check_shapes(prediction, truth)
    k = 0 if num_classes is None else num_classes
    confusion = np.zeros((k, k), dtype=np.int64)
    for block in _blocks(shape):
        t = _read(truth, block, "truth")
        p = _read(prediction, block, "prediction")
        if ignore_label is not None:
            keep = t != ignore_label
            if not keep.all():
                t, p = t[keep], p[keep]
        _check_range(t, "truth", num_classes, ignore_label)
        _check_range(p, "prediction", num_classes, ignore_label)
        if t.size == 0:
            continue
        if num_classes is None:
            needed = int(max(t.max(), p.max())) + 1
            if needed > _MAX_INFERRED_CLASSES:
                raise ValueError(
                    f"found label value {needed - 1}, which would mean {needed} classes "
                    f"(more than {_MAX_INFERRED_CLASSES}); these look like instance "
                    f"labels, not class labels. Pass classes=[...] to name the classes, "
                    f"or ignore_label for an 'unlabelled' value in the truth."
                )
            if needed > k:
                grown = np.zeros((needed, needed), dtype=np.int64)
                grown[:k, :k] = confusion
                confusion, k = grown, needed
        flat = t.astype(np.int64) * k + p.astype(np.int64)
        confusion += np.bincount(flat, minlength=k * k).reshape(k, k)
    logger.debug("accumulated %d pixels into a %dx%d confusion matrix", confusion.sum(), k, k)
    return confusion


def confusion_matrix(
    prediction: Any,
    truth: Any,
    *,
    num_classes: int,
    ignore_label: int | None = None,
) -> np.ndarray:
    """Count pixels per (true class, predicted class) pair.

    The inputs are read a few whole slices at a time along axis 0, so lazy
    arrays (zarr, h5py, memory-mapped) of any size use bounded memory.

    Args:
        prediction: integer labels, any shape ``(N0, ...)``; a numpy array or
            any object with ``.shape`` that can be sliced along axis 0.
        truth: integer labels of the same shape as ``prediction``.
        num_classes: number of classes ``K``; valid labels are ``0 .. K-1``.
        ignore_label: pixels whose *truth* equals this value are left out
            (their prediction is not looked at). ``None`` keeps every pixel.

    Returns:
        ``(K, K)`` int64 array; rows are the true class, columns the predicted
        class (the same layout as :func:`sklearn.metrics.confusion_matrix`).

    Raises:
        ValueError: shapes differ, a label is not an integer, or a counted
            truth/prediction value is outside ``[0, K)``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}")
    ignore_label = _check_ignore_label(ignore_label)
    prediction = _as_array_like(prediction)
    truth = _as_array_like(truth)
    return _accumulate(prediction, truth, num_classes=int(num_classes), ignore_label=ignore_label)
