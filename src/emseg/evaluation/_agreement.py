"""Agreement between two annotations of the same image (inter-annotator IoU)."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from ._confusion import _as_array_like, _blocks, _check_ignore_label, _check_range, _check_shapes, _read
from ._metrics import EvaluationResult

logger = logging.getLogger(__name__)


def annotation_agreement(
    a: Any,
    b: Any,
    *,
    classes: Sequence[Any],
    ignore_label: int | None = None,
    background: int | None = 0,
) -> EvaluationResult:
    """Per-class IoU, mean IoU and confusion matrix between two annotations.

    Neither annotation is taken as the truth: a pixel is left out when
    *either* annotation holds ``ignore_label`` there. The inputs are read a
    few slices at a time along axis 0, as in :func:`confusion_matrix`.

    IoU, F1 and the means are symmetric in ``a`` and ``b``; ``precision`` and
    ``recall`` of the result are those of ``b`` measured against ``a``
    (swapping ``a`` and ``b`` swaps them and transposes the confusion matrix).

    Args:
        a: integer class labels, any shape ``(N0, ...)``; array, lazy array
            or path readable by :func:`emseg.io.open_image`.
        b: integer class labels of the same shape.
        classes: class names, name ``i`` for label ``i``.
        ignore_label: label value meaning "not annotated" in either input.
        background: class left out of the ``*_foreground`` means; ``None`` for none.

    Returns:
        An :class:`EvaluationResult` with ``confusion[i, j]`` = pixels labelled
        ``i`` in ``a`` and ``j`` in ``b``; classes used by neither annotation
        have ``nan`` scores and are left out of the means.
    """
    ignore_label = _check_ignore_label(ignore_label)
    names = [str(c) for c in classes]
    if not names:
        raise ValueError("classes must name at least one class; got an empty list")
    a = _as_array_like(a)
    b = _as_array_like(b)
    shape = _check_shapes(a, b)
    k = len(names)
    confusion = np.zeros((k, k), dtype=np.int64)
    for block in _blocks(shape):
        x = _read(a, block, "a")
        y = _read(b, block, "b")
        if ignore_label is not None:
            keep = (x != ignore_label) & (y != ignore_label)
            if not keep.all():
                x, y = x[keep], y[keep]
        _check_range(x, "a", k, None)
        _check_range(y, "b", k, None)
        if x.size == 0:
            continue
        confusion += np.bincount(x.astype(np.int64) * k + y.astype(np.int64), minlength=k * k).reshape(k, k)
    return EvaluationResult.from_confusion(confusion, classes=names, background=background, ignore_label=ignore_label)
