"""Per-class segmentation scores (IoU, F1, precision, recall) from a confusion matrix."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._confusion import (
    _accumulate,
    _as_array_like,
    _check_ignore_label,
    _nanmean,
    _ratio,
    class_counts,
    f1_from_counts,
    iou_from_counts,
)

if TYPE_CHECKING:
    from rich.table import Table

logger = logging.getLogger(__name__)

#: Keys of each entry of :attr:`EvaluationResult.per_class`, in table order.
PER_CLASS_KEYS = ("iou", "f1", "precision", "recall", "truth_pixels", "predicted_pixels")


def _json_safe(value: Any) -> Any:
    """Numpy scalars/arrays to Python, ``nan``/``inf`` to ``None``, recursively."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _format(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


@dataclass
class EvaluationResult:
    """Scores of one prediction against one ground truth.

    Attributes:
        classes: class names; index ``i`` is label value ``i``.
        confusion: ``(K, K)`` int64 pixel counts; rows are the true class,
            columns the predicted class. Ignored pixels are not counted.
        per_class: for each class name, ``iou``, ``f1``, ``precision``,
            ``recall`` (floats in [0, 1], ``nan`` where undefined) and
            ``truth_pixels``, ``predicted_pixels`` (ints).
        mean_iou: mean IoU over the classes whose IoU is defined (classes
            absent from both prediction and truth are left out); ``nan`` if none.
        mean_iou_foreground: the same, leaving out class ``background`` as well.
        mean_f1: mean F1 (Dice) over the classes whose F1 is defined.
        mean_f1_foreground: the same, leaving out class ``background``.
        accuracy: fraction of counted pixels whose predicted class is right.
        background: index of the background class, or ``None`` when every
            class is foreground.
        ignore_label: truth label value that was left out, or ``None``.
    """

    classes: list[str]
    confusion: np.ndarray
    per_class: dict[str, dict[str, float]]
    mean_iou: float
    mean_iou_foreground: float
    mean_f1: float
    mean_f1_foreground: float
    accuracy: float
    background: int | None
    ignore_label: int | None

    @classmethod
    def from_confusion(
        cls,
        confusion: Any,
        *,
        classes: list[str],
        background: int | None = 0,
        ignore_label: int | None = None,
    ) -> EvaluationResult:
        """Compute every score from a ``(K, K)`` confusion matrix (rows = truth).

        IoU is ``TP / (TP + FP + FN)`` and F1 ``2 TP / (2 TP + FP + FN)``; both
        are ``nan`` for a class absent from prediction and truth. Precision is
        ``nan`` for a class never predicted, recall for a class absent from the
        truth. Means skip ``nan`` entries.
        """
        matrix = np.asarray(confusion)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"confusion must be a square (K, K) matrix; got shape {matrix.shape}")
        if matrix.dtype.kind not in "iu" or (matrix.size and matrix.min() < 0):
            raise ValueError(
                f"confusion must hold non-negative integer pixel counts; got dtype {matrix.dtype}"
            )
        matrix = matrix.astype(np.int64)
        k = matrix.shape[0]
        classes = [str(c) for c in classes]
        if len(classes) != k:
            raise ValueError(
                f"classes must name each of the {k} classes of the confusion matrix; "
                f"got {len(classes)} names: {classes}"
            )
        if len(set(classes)) != k:
            duplicates = sorted({c for c in classes if classes.count(c) > 1})
            raise ValueError(f"class names must be unique; repeated: {duplicates}")
        if background is not None:
            if isinstance(background, bool) or not isinstance(background, (int, np.integer)) or not 0 <= background < k:
                raise ValueError(
                    f"background must be a class index in [0, {k}) or None; got {background!r}"
                )
            background = int(background)
        ignore_label = _check_ignore_label(ignore_label)

        tp, fp, fn, _ = class_counts(matrix)
        truth_pixels = matrix.sum(axis=1)
        predicted_pixels = matrix.sum(axis=0)
        iou = iou_from_counts(tp, fp, fn)
        f1 = f1_from_counts(tp, fp, fn)
        precision = _ratio(tp, predicted_pixels)
        recall = _ratio(tp, truth_pixels)

        per_class = {
            name: {
                "iou": float(iou[i]),
                "f1": float(f1[i]),
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "truth_pixels": int(truth_pixels[i]),
                "predicted_pixels": int(predicted_pixels[i]),
            }
            for i, name in enumerate(classes)
        }
        foreground = np.ones(k, dtype=bool)
        if background is not None:
            foreground[background] = False
        total = int(matrix.sum())
        return cls(
            classes=classes,
            confusion=matrix,
            per_class=per_class,
            mean_iou=_nanmean(iou),
            mean_iou_foreground=_nanmean(iou[foreground]),
            mean_f1=_nanmean(f1),
            mean_f1_foreground=_nanmean(f1[foreground]),
            accuracy=float(tp.sum() / total) if total else math.nan,
            background=background,
            ignore_label=ignore_label,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict for JSON: numpy values become Python, ``nan`` becomes ``None``."""
        return _json_safe(
            {
                "classes": list(self.classes),
                "confusion": self.confusion,
                "per_class": self.per_class,
                "mean_iou": self.mean_iou,
                "mean_iou_foreground": self.mean_iou_foreground,
                "mean_f1": self.mean_f1,
                "mean_f1_foreground": self.mean_f1_foreground,
                "accuracy": self.accuracy,
                "background": self.background,
                "ignore_label": self.ignore_label,
            }
        )

    def save_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` to ``path`` as strict JSON (no ``NaN`` tokens)."""
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2, allow_nan=False)
            handle.write("\n")

    def to_table(self) -> Table:
        """A :class:`rich.table.Table`: one row per class, then the mean IoU/F1 rows.

        Columns: class, IoU, F1, precision, recall, truth px. The last two rows
        hold the means over all classes and over the foreground classes (IoU
        and F1 columns). Undefined values are shown as ``n/a``.
        """
        from rich.table import Table

        table = Table(title="Segmentation scores")
        table.add_column("class")
        for header in ("IoU", "F1", "precision", "recall", "truth px"):
            table.add_column(header, justify="right")
        for name in self.classes:
            scores = self.per_class[name]
            table.add_row(
                name,
                _format(scores["iou"]),
                _format(scores["f1"]),
                _format(scores["precision"]),
                _format(scores["recall"]),
                f"{scores['truth_pixels']:,}",
            )
        table.add_section()
        table.add_row("mean (all)", _format(self.mean_iou), _format(self.mean_f1), "", "", "")
        table.add_row(
            "mean (foreground)",
            _format(self.mean_iou_foreground),
            _format(self.mean_f1_foreground),
            "",
            "",
            "",
        )
        notes = [f"pixel accuracy {_format(self.accuracy)}"]
        if self.background is not None:
            notes.append(f"foreground = all but {self.classes[self.background]}")
        if self.ignore_label is not None:
            notes.append(f"truth label {self.ignore_label} ignored")
        table.caption = "; ".join(notes)
        return table


def evaluate(
    prediction: Any,
    ground_truth: Any,
    *,
    classes: list[str] | None = None,
    ignore_label: int | None = None,
    background: int | None = 0,
) -> EvaluationResult:
    """Score a label prediction against the ground truth, class by class.

    Args:
        prediction: integer labels ``(Z, Y, X)`` (any shape works), as an
            array, a lazy array (zarr, h5py, memmap) or a path readable by
            :func:`emseg.io.open_image`.
        ground_truth: integer labels of the same shape, same kinds of input.
        classes: class names, index ``i`` naming label ``i``. ``None`` names
            them ``class_0 .. class_{K-1}`` with ``K`` = the largest label seen
            in either input (ignored pixels aside) plus one.
        ignore_label: pixels whose ground truth equals this value are not
            counted, whatever was predicted there.
        background: index of the class left out of the ``*_foreground``
            means; ``None`` to count every class as foreground.

    Returns:
        An :class:`EvaluationResult`.

    Raises:
        ValueError: shapes differ, labels are not integers, or a counted label
            is outside ``[0, len(classes))``.
    """
    ignore_label = _check_ignore_label(ignore_label)
    if classes is not None:
        classes = [str(c) for c in classes]
        if not classes:
            raise ValueError("classes must name at least one class; got an empty list")
    prediction = _as_array_like(prediction)
    ground_truth = _as_array_like(ground_truth)
    confusion = _accumulate(
        prediction,
        ground_truth,
        num_classes=None if classes is None else len(classes),
        ignore_label=ignore_label,
    )
    if classes is None:
        k = confusion.shape[0]
        if background is not None and isinstance(background, (int, np.integer)) and background >= k:
            # e.g. only foreground labels seen: still report the background class
            k = int(background) + 1
        k = max(k, 1)
        if k != confusion.shape[0]:
            grown = np.zeros((k, k), dtype=np.int64)
            grown[: confusion.shape[0], : confusion.shape[0]] = confusion
            confusion = grown
        classes = [f"class_{i}" for i in range(k)]
    return EvaluationResult.from_confusion(
        confusion, classes=classes, background=background, ignore_label=ignore_label
    )
