"""Agreement between two annotations of the same image (inter-annotator IoU)."""

from __future__ import annotations

import logging
from typing import Any, Sequence

from ._confusion import _accumulate, _as_array_like, _check_ignore_label, _check_shapes
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
    _check_shapes(a, b)  # its message names a's shape first
    # rows a, columns b; pixels that either annotation left unlabelled are not compared
    confusion = _accumulate(b, a, num_classes=len(names), ignore_label=ignore_label, names=("a", "b"), ignore_either=True)
    return EvaluationResult.from_confusion(confusion, classes=names, background=background, ignore_label=ignore_label)
