"""The confusion matrix, and IoU / F1 from it: the one implementation every caller uses.

:func:`confusion_from_labels` is the one ``np.bincount`` of (truth, prediction)
pairs; :func:`iou_from_confusion` and :func:`f1_from_confusion` (also over a
stack ``(..., K, K)`` of matrices) the one IoU and F1. Label volumes can be
larger than memory (zarr, HDF5, memory-mapped TIFF), so :func:`confusion_matrix`
reads the inputs a few slices at a time along the first axis and adds the
per-block matrices into one small matrix.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np

from emseg.io import open_image

logger = logging.getLogger(__name__)

#: Pixels read from each input per block. A block is always whole slices along
#: axis 0 (at least one), so a 768x1024 z-slice is read in one piece.
_BLOCK_PIXELS = 1 << 22

#: Most classes :func:`evaluate` infers from the labels when no class list is given
#: (a 1024x1024 int64 matrix is 8 MiB); more usually means instance labels.
_MAX_INFERRED_CLASSES = 1024

#: How many offending values an error message lists before eliding the rest.
_MAX_LISTED = 10


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise ``numerator / denominator`` with ``nan`` where the denominator is 0."""
    numerator = np.asarray(numerator).astype(np.float64)
    denominator = np.asarray(denominator).astype(np.float64)
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    """Mean over the defined (non-nan) values; ``nan`` when none is defined, without a warning."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def confusion_from_labels(prediction: np.ndarray, truth: np.ndarray, *, num_classes: int) -> np.ndarray:
    """``(K, K)`` int64 counts of (true class, predicted class) pairs of in-memory labels.

    The inputs must already hold only labels in ``[0, K)`` (unlabelled pixels
    removed); :func:`confusion_matrix` checks them and reads lazy volumes block
    by block with this function.
    """
    k = int(num_classes)
    flat = np.asarray(truth).astype(np.int64).reshape(-1) * k + np.asarray(prediction).astype(np.int64).reshape(-1)
    return np.bincount(flat, minlength=k * k).reshape(k, k)


def class_counts(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per class ``(tp, fp, fn, tn)`` of a ``(..., K, K)`` confusion matrix (rows truth, columns prediction)."""
    c = np.asarray(confusion)
    tp = np.diagonal(c, axis1=-2, axis2=-1)
    fp = c.sum(axis=-2) - tp
    fn = c.sum(axis=-1) - tp
    tn = c.sum(axis=(-2, -1))[..., None] - tp - fp - fn
    return tp, fp, fn, tn


def iou_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """``TP / (TP + FP + FN)``, ``nan`` where a class is in neither truth nor prediction."""
    return _ratio(tp, tp + fp + fn)


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """``2 TP / (2 TP + FP + FN)`` (the Dice coefficient), ``nan`` where undefined."""
    return _ratio(2 * tp, 2 * tp + fp + fn)


def iou_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Per-class IoU ``(..., K)`` of a ``(..., K, K)`` confusion matrix; ``nan`` for classes used nowhere."""
    tp, fp, fn, _ = class_counts(confusion)
    return iou_from_counts(tp, fp, fn)


def f1_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Per-class F1 (Dice) ``(..., K)`` of a ``(..., K, K)`` confusion matrix; ``nan`` where undefined."""
    tp, fp, fn, _ = class_counts(confusion)
    return f1_from_counts(tp, fp, fn)


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
    names: tuple[str, str] = ("truth", "prediction"),
    ignore_either: bool = False,
) -> np.ndarray:
    """Shared worker for :func:`confusion_matrix`, :func:`evaluate` and :func:`annotation_agreement`.

    With ``num_classes=None`` the matrix grows to ``max label seen + 1``.
    ``names`` name the inputs (rows, columns) in messages; ``ignore_either``
    leaves out pixels where either input (not only the truth) is ``ignore_label``.
    """
    shape = _check_shapes(prediction, truth)
    k = 0 if num_classes is None else num_classes
    confusion = np.zeros((k, k), dtype=np.int64)
    hint = None if ignore_either else ignore_label
    for block in _blocks(shape):
        t = _read(truth, block, names[0])
        p = _read(prediction, block, names[1])
        if ignore_label is not None:
            keep = (t != ignore_label) & (p != ignore_label) if ignore_either else t != ignore_label
            if not keep.all():
                t, p = t[keep], p[keep]
        _check_range(t, names[0], num_classes, hint)
        _check_range(p, names[1], num_classes, hint)
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
        confusion += confusion_from_labels(p, t, num_classes=k)
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
