"""Pixel/voxel scores beyond IoU and F1: one-vs-rest rates, subset mean IoU, ROC/PR AUC, threshold sweeps.

Everything that reads label or probability volumes does so a few whole slices
at a time along the first spatial axis (see :mod:`._confusion`), so lazy
arrays of any size use bounded memory. Probabilities are reduced to a fixed
histogram per class before any curve is computed.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np

from ._confusion import (
    _as_array_like,
    _blocks,
    _check_ignore_label,
    _check_range,
    _nanmean,
    _ratio,
    _read,
    class_counts,
    f1_from_counts,
    iou_from_confusion,
    iou_from_counts,
)

logger = logging.getLogger(__name__)

#: Keys of each entry returned by :func:`pixel_scores`, in order.
PIXEL_SCORE_KEYS = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "tp", "fp", "fn", "tn")


def _check_confusion(confusion: Any, classes: Sequence[Any]) -> tuple[np.ndarray, list[str]]:
    matrix = np.asarray(confusion)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion must be a square (K, K) matrix; got shape {matrix.shape}")
    if matrix.dtype.kind not in "iu" or (matrix.size and matrix.min() < 0):
        raise ValueError(f"confusion must hold non-negative integer pixel counts; got dtype {matrix.dtype}")
    names = [str(c) for c in classes]
    if len(names) != matrix.shape[0]:
        raise ValueError(
            f"classes must name each of the {matrix.shape[0]} classes of the confusion matrix; "
            f"got {len(names)} names: {names}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique; got {names}")
    return matrix.astype(np.int64), names


def pixel_scores(confusion: Any, classes: Sequence[Any]) -> dict[str, dict[str, float]]:
    """One-vs-rest pixel rates for every class of a confusion matrix.

    For class ``k`` every pixel is a positive when its true class is ``k`` and
    predicted positive when its predicted class is ``k``; with ``N`` counted
    pixels, ``TP = C[k, k]``, ``FN = sum(C[k, :]) - TP``, ``FP = sum(C[:, k]) - TP``
    and ``TN = N - TP - FP - FN``:

    * ``accuracy = (TP + TN) / N`` (one-vs-rest, not the multi-class accuracy)
    * ``sensitivity = TP / (TP + FN)`` (recall, true-positive rate)
    * ``specificity = TN / (TN + FP)`` (true-negative rate)
    * ``ppv = TP / (TP + FP)`` (precision, positive predictive value)
    * ``npv = TN / (TN + FN)`` (negative predictive value)

    Each rate is ``nan`` when its denominator is 0: sensitivity for a class
    absent from the truth, ppv for a class never predicted, and all of them
    when nothing was counted. A class absent from both truth and prediction
    is undefined: all five rates are ``nan`` (not the trivial 1 that
    specificity, npv and accuracy would give), so means over classes leave it
    out.

    Args:
        confusion: ``(K, K)`` non-negative integer counts, rows = true class,
            columns = predicted class (as from :func:`confusion_matrix`).
        classes: ``K`` unique class names, name ``i`` for label ``i``.

    Returns:
        ``{class name: {"accuracy", "sensitivity", "specificity", "ppv", "npv",
        "tp", "fp", "fn", "tn"}}``; rates are floats in [0, 1] or ``nan``,
        counts are ints.
    """
    matrix, names = _check_confusion(confusion, classes)
    total = matrix.sum()
    tp, fp, fn, tn = class_counts(matrix)
    accuracy = _ratio(tp + tn, np.full(tp.shape, total))
    sensitivity = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    ppv = _ratio(tp, tp + fp)
    npv = _ratio(tn, tn + fn)
    empty = (tp + fp + fn) == 0  # absent from truth and prediction: no rate is meaningful
    for rates in (accuracy, specificity, npv):
        rates[empty] = np.nan
    return {
        name: {
            "accuracy": float(accuracy[i]),
            "sensitivity": float(sensitivity[i]),
            "specificity": float(specificity[i]),
            "ppv": float(ppv[i]),
            "npv": float(npv[i]),
            "tp": int(tp[i]),
            "fp": int(fp[i]),
            "fn": int(fn[i]),
            "tn": int(tn[i]),
        }
        for i, name in enumerate(names)
    }


def mean_iou(confusion: Any, classes: Sequence[Any], *, subset: Sequence[Any] | None = None) -> float:
    """Mean IoU over all classes or over a named subset of them.

    ``IoU_k = TP / (TP + FP + FN)``; classes absent from both truth and
    prediction have no IoU and are left out of the mean. Guay et al. (2021)
    report ``MIoU(all)`` (``subset=None``: every class, background included)
    and ``MIoU(org)`` (``subset=`` the organelle classes only).

    Args:
        confusion: ``(K, K)`` counts, rows = truth, columns = prediction.
        classes: ``K`` unique class names.
        subset: names of the classes to average over; ``None`` for all.

    Returns:
        The mean IoU in [0, 1], or ``nan`` when no class of the subset has a
        defined IoU.

    Raises:
        ValueError: a name in ``subset`` is not in ``classes``, or ``subset`` is empty.
    """
    matrix, names = _check_confusion(confusion, classes)
    iou = iou_from_confusion(matrix)
    if subset is None:
        return _nanmean(iou)
    wanted = [str(c) for c in subset]
    if not wanted:
        raise ValueError("subset must name at least one class; got an empty list (pass None for all classes)")
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise ValueError(f"subset names classes that are not in classes={names}: {unknown}")
    index = sorted({names.index(c) for c in wanted})
    return _nanmean(iou[index])


def _check_probabilities(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind not in "fiub":
        raise ValueError(f"probabilities must be numeric; got dtype {values.dtype}")
    values = values.astype(np.float64, copy=False)
    if values.size and not (np.all(values >= 0.0) and np.all(values <= 1.0)):
        bad = values[~((values >= 0.0) & (values <= 1.0))]
        raise ValueError(
            f"probabilities must lie in [0, 1] (no nan); got values such as {bad[:5].tolist()}. "
            f"Apply softmax/sigmoid to network outputs first."
        )
    return values


def _bin_index(values: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum((values * bins).astype(np.int64), bins - 1)


def _curves_from_histograms(positive: np.ndarray, negative: np.ndarray) -> tuple[float, float]:
    """ROC AUC and average precision from per-bin positive/negative counts (bin 0 = lowest score).

    Pixels in the same bin are treated as tied scores: the ROC curve joins the
    bin's corner points with a straight line and average precision takes one
    step per bin, as :func:`sklearn.metrics.roc_auc_score` and
    :func:`sklearn.metrics.average_precision_score` do for tied scores.
    """
    total_pos = positive.sum()
    total_neg = negative.sum()
    # thresholds from the highest bin down
    tps = np.cumsum(positive[::-1]).astype(np.float64)
    fps = np.cumsum(negative[::-1]).astype(np.float64)
    if total_pos > 0 and total_neg > 0:
        tpr = np.concatenate([[0.0], tps / total_pos])
        fpr = np.concatenate([[0.0], fps / total_neg])
        auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    else:
        auc = math.nan
    if total_pos > 0:
        step = positive[::-1] > 0  # recall only changes in bins holding positives
        recall_step = positive[::-1][step] / total_pos
        precision = tps[step] / (tps[step] + fps[step])
        ap = float(np.sum(recall_step * precision))
    else:
        ap = math.nan
    return auc, ap


def probability_auc(
    probabilities: Any,
    truth: Any,
    *,
    classes: Sequence[Any] | None = None,
    ignore_label: int | None = None,
    bins: int = 10000,
) -> dict[str, dict[str, float]]:
    """Per-class area under the ROC curve and average precision (PR AUC), one-vs-rest.

    For class ``k`` the score of a pixel is ``probabilities[k]`` there and it
    is a positive when ``truth == k``. Scores are binned into ``bins`` equal
    bins over [0, 1] per class and class-membership, accumulated a few slices
    at a time, so memory is ``O(K * bins)`` whatever the volume size. Pixels in
    one bin count as tied; the results equal
    :func:`sklearn.metrics.roc_auc_score` / :func:`~sklearn.metrics.average_precision_score`
    exactly when no two different scores share a bin, and differ by at most
    the fraction of positive/negative pairs that do otherwise (about
    ``1 / bins`` for smoothly spread scores).

    Average precision is ``sum_n (R_n - R_{n-1}) P_n`` over descending
    thresholds (scikit-learn's definition, no interpolation).

    Args:
        probabilities: ``(K, *S)`` class probabilities in [0, 1] (e.g. softmax
            output), numpy or lazy array sliced along axis 1.
        truth: ``S``-shaped integer class labels in ``[0, K)``.
        classes: ``K`` class names; ``None`` names them ``class_0 ..``.
        ignore_label: pixels whose truth equals this value are left out.
        bins: histogram bins per class (>= 2).

    Returns:
        ``{class name: {"auc_roc", "average_precision", "positives", "negatives"}}``.
        ``auc_roc`` is ``nan`` when the class has no positive or no negative
        pixels; ``average_precision`` is ``nan`` when it has no positives.
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2; got {bins!r}")
    bins = int(bins)
    ignore_label = _check_ignore_label(ignore_label)
    probabilities = _as_array_like(probabilities)
    truth = _as_array_like(truth)
    prob_shape = tuple(int(s) for s in probabilities.shape)
    truth_shape = tuple(int(s) for s in truth.shape)
    if len(prob_shape) < 1 or prob_shape[1:] != truth_shape:
        raise ValueError(
            f"probabilities must have shape (K, *truth.shape); got probabilities shape "
            f"{prob_shape} and truth shape {truth_shape}"
        )
    k = prob_shape[0]
    names = [f"class_{i}" for i in range(k)] if classes is None else [str(c) for c in classes]
    if len(names) != k:
        raise ValueError(f"classes must name the {k} probability channels; got {len(names)} names: {names}")
    positive = np.zeros((k, bins), dtype=np.int64)
    negative = np.zeros((k, bins), dtype=np.int64)
    for block in _blocks(truth_shape):
        t = _read(truth, block, "truth")
        if block is None:
            p = np.asarray(probabilities).reshape(k, -1)
        else:
            p = np.asarray(probabilities[(slice(None), block)]).reshape(k, -1)
        if ignore_label is not None:
            keep = t != ignore_label
            if not keep.all():
                t, p = t[keep], p[:, keep]
        _check_range(t, "truth", k, ignore_label)
        if t.size == 0:
            continue
        p = _check_probabilities(p)
        for c in range(k):
            index = _bin_index(p[c], bins)
            is_pos = t == c
            pos = np.bincount(index[is_pos], minlength=bins)
            positive[c] += pos
            negative[c] += np.bincount(index, minlength=bins) - pos
    result = {}
    for c, name in enumerate(names):
        auc, ap = _curves_from_histograms(positive[c], negative[c])
        result[name] = {
            "auc_roc": auc,
            "average_precision": ap,
            "positives": int(positive[c].sum()),
            "negatives": int(negative[c].sum()),
        }
    return result


def threshold_sweep(
    prob_fg: Any,
    truth: Any,
    *,
    thresholds: Sequence[float] | np.ndarray = np.arange(0, 1.01, 0.1),
    positive_label: int = 1,
    ignore_label: int | None = None,
) -> dict[str, np.ndarray]:
    """Binary IoU, F1, precision and recall of ``prob_fg >= threshold`` for each threshold.

    Args:
        prob_fg: foreground probability, any shape ``S``, values in [0, 1];
            numpy or lazy array, read a few slices at a time.
        truth: ``S``-shaped integer labels; ``truth == positive_label`` is
            foreground, every other counted value background.
        thresholds: 1-D thresholds; a pixel is predicted foreground when its
            probability is ``>=`` the threshold.
        positive_label: truth value of the foreground class.
        ignore_label: pixels whose truth equals this value are left out.

    Returns:
        Dict of 1-D arrays, one entry per threshold in the given order:
        ``threshold``, ``iou`` = TP/(TP+FP+FN), ``f1`` = 2TP/(2TP+FP+FN),
        ``precision`` = TP/(TP+FP), ``recall`` = TP/(TP+FN) (``nan`` where the
        denominator is 0), and the int64 counts ``tp``, ``fp``, ``fn``.
        ``pandas.DataFrame(result)`` gives a table.
    """
    ignore_label = _check_ignore_label(ignore_label)
    if isinstance(positive_label, bool) or not isinstance(positive_label, (int, np.integer)):
        raise ValueError(f"positive_label must be an integer label value; got {positive_label!r}")
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim != 1 or thresholds.size == 0 or np.isnan(thresholds).any():
        raise ValueError(f"thresholds must be a non-empty 1-D sequence of numbers; got {thresholds!r}")
    order = np.argsort(thresholds, kind="stable")
    sorted_t = thresholds[order]
    prob_fg = _as_array_like(prob_fg)
    truth = _as_array_like(truth)
    shape = tuple(int(s) for s in truth.shape)
    if tuple(int(s) for s in prob_fg.shape) != shape:
        raise ValueError(f"prob_fg and truth must have the same shape; got {tuple(prob_fg.shape)} and {shape}")
    n = sorted_t.size
    # histogram over "how many sorted thresholds are <= p": index j means predicted
    # foreground exactly for the sorted thresholds 0 .. j-1
    pos_hist = np.zeros(n + 1, dtype=np.int64)
    all_hist = np.zeros(n + 1, dtype=np.int64)
    for block in _blocks(shape):
        t = _read(truth, block, "truth")
        p = np.asarray(prob_fg if block is None else prob_fg[block]).reshape(-1)
        if ignore_label is not None:
            keep = t != ignore_label
            if not keep.all():
                t, p = t[keep], p[keep]
        if t.size == 0:
            continue
        p = _check_probabilities(p)
        index = np.searchsorted(sorted_t, p, side="right")
        pos_hist += np.bincount(index[t == positive_label], minlength=n + 1)
        all_hist += np.bincount(index, minlength=n + 1)
    # predicted foreground at sorted threshold j: pixels with index > j
    tp_sorted = np.cumsum(pos_hist[::-1])[::-1][1:]
    pred_sorted = np.cumsum(all_hist[::-1])[::-1][1:]
    tp = np.empty(n, dtype=np.int64)
    predicted = np.empty(n, dtype=np.int64)
    tp[order] = tp_sorted
    predicted[order] = pred_sorted
    fp = predicted - tp
    fn = pos_hist.sum() - tp
    return {
        "threshold": thresholds,
        "iou": iou_from_counts(tp, fp, fn),
        "f1": f1_from_counts(tp, fp, fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }
