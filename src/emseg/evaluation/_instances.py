"""Objects and instance scores: connected components per class, the aggregated Jaccard index and
panoptic quality of two instance labellings (used by the semantic-map scores in :mod:`._objects`)."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["aggregated_jaccard_index", "connected_components", "panoptic_quality"]


# --------------------------------------------------------------------------- helpers


def _check_connectivity(connectivity: Any, rank: int) -> int:
    if isinstance(connectivity, bool) or not isinstance(connectivity, (int, np.integer)) or not 1 <= connectivity <= max(rank, 1):
        raise ValueError(
            f"connectivity must be an integer in [1, {max(rank, 1)}] for {rank}-D labelling "
            f"(1 = faces only, {max(rank, 1)} = faces, edges and corners); got {connectivity!r}"
        )
    return int(connectivity)


def _structure(ndim: int, *, per_slice: bool, connectivity: int) -> np.ndarray:
    from scipy import ndimage

    if per_slice:
        if ndim < 2:
            raise ValueError(f"per_slice=True needs an array with at least 2 dimensions; got {ndim}-D")
        connectivity = _check_connectivity(connectivity, ndim - 1)
        structure = np.zeros((3,) + (3,) * (ndim - 1), dtype=bool)
        structure[1] = ndimage.generate_binary_structure(ndim - 1, connectivity)
        return structure
    connectivity = _check_connectivity(connectivity, ndim)
    return ndimage.generate_binary_structure(ndim, connectivity)


def connected_components(
    mask: Any, *, per_slice: bool = False, connectivity: int = 1
) -> tuple[np.ndarray, int]:
    """Label the connected components of a binary mask.

    Args:
        mask: bool (or 0/nonzero) array, any shape ``S``; ``(Z, Y, X)`` for volumes.
        per_slice: label each slice along axis 0 on its own (2-D objects of
            a 3-D stack); ids stay unique over the whole stack.
        connectivity: neighbours that touch, as in
            :func:`scipy.ndimage.generate_binary_structure`: 1 = share a face
            (4-/6-connectivity), up to the number of (per-slice) dimensions =
            also edges/corners (8-/26-connectivity).

    Returns:
        ``(labels, count)``: int64 labels of shape ``S`` (0 = outside the
        mask, objects ``1 .. count``) and the number of objects.
    """
    from scipy import ndimage

    values = np.asarray(mask).astype(bool, copy=False)
    if values.ndim == 0:
        raise ValueError("mask must have at least one dimension; got a scalar")
    structure = _structure(values.ndim, per_slice=per_slice, connectivity=connectivity)
    labels = np.zeros(values.shape, dtype=np.int64)
    count = ndimage.label(values, structure=structure, output=labels)
    return labels, int(count)


def _consecutive(labels: np.ndarray, name: str) -> tuple[np.ndarray, int]:
    """Relabel instance ids to ``1 .. n`` (0 stays background); return the flat labels and ``n``."""
    values = np.asarray(labels)
    if values.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integer instance ids; got dtype {values.dtype}")
    flat = values.reshape(-1)
    if flat.size and flat.min() < 0:
        raise ValueError(f"{name} must hold non-negative instance ids (0 = background); found {flat.min()}")
    ids, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.int64)
    if ids.size and ids[0] == 0:
        return inverse, int(ids.size - 1)
    return inverse + 1, int(ids.size)


def _pair_overlaps(pred: np.ndarray, true: np.ndarray, n_pred: int, n_true: int):
    """Sizes of every instance and the overlap of every intersecting (true, pred) pair."""
    pred_sizes = np.bincount(pred, minlength=n_pred + 1)
    true_sizes = np.bincount(true, minlength=n_true + 1)
    both = (pred > 0) & (true > 0)
    key = true[both] * (n_pred + 1) + pred[both]
    keys, inter = np.unique(key, return_counts=True)
    t, p = keys // (n_pred + 1), keys % (n_pred + 1)
    union = true_sizes[t] + pred_sizes[p] - inter
    return pred_sizes, true_sizes, t, p, inter, union


def _check_same_shape(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape; got {a.shape} and {b.shape}")


# --------------------------------------------------------------------------- instance scores


def aggregated_jaccard_index(pred_instances: Any, true_instances: Any) -> float:
    """Aggregated Jaccard index (AJI) of Kumar et al. (2017), IEEE TMI 36(7).

    Each true object ``G_i`` is paired with the predicted object ``S_j`` of
    highest IoU with it (a predicted object may be paired more than once);
    ``C = sum |G_i ∩ S_j|`` and ``U = sum |G_i ∪ S_j|`` over the pairs, a true
    object overlapping no prediction adds ``|G_i|`` to ``U``, and every
    predicted object paired with none adds its size to ``U``. ``AJI = C / U``.

    Args:
        pred_instances: integer instance ids, any shape ``S``; 0 = background.
        true_instances: integer instance ids of the same shape; 0 = background.

    Returns:
        AJI in [0, 1]; ``nan`` when both contain no object.
    """
    pred_arr, true_arr = np.asarray(pred_instances), np.asarray(true_instances)
    _check_same_shape(pred_arr, true_arr, ("pred_instances", "true_instances"))
    pred, n_pred = _consecutive(pred_arr, "pred_instances")
    true, n_true = _consecutive(true_arr, "true_instances")
    return _aji(pred, true, n_pred, n_true)


def _aji(pred: np.ndarray, true: np.ndarray, n_pred: int, n_true: int) -> float:
    if n_pred == 0 and n_true == 0:
        return math.nan
    pred_sizes, true_sizes, t, p, inter, union = _pair_overlaps(pred, true, n_pred, n_true)
    iou = inter / union
    # best prediction per true object: sort by true id, then IoU descending
    order = np.lexsort((-iou, t))
    t, p, inter, union = t[order], p[order], inter[order], union[order]
    _, first = np.unique(t, return_index=True)
    matched_true = np.zeros(n_true + 1, dtype=bool)
    matched_true[t[first]] = True
    used_pred = np.zeros(n_pred + 1, dtype=bool)
    used_pred[p[first]] = True
    intersection = float(inter[first].sum())
    total = float(union[first].sum())
    total += float(true_sizes[1:][~matched_true[1:]].sum())
    total += float(pred_sizes[1:][~used_pred[1:]].sum())
    return intersection / total if total > 0 else math.nan


def panoptic_quality(pred_instances: Any, true_instances: Any) -> dict[str, float]:
    """Panoptic quality (Kirillov et al., 2019) of one instance labelling against another.

    A predicted and a true object match when their IoU is > 0.5 (such a match
    is unique). With ``TP`` matches, ``FP`` unmatched predicted and ``FN``
    unmatched true objects: ``SQ`` = mean IoU of the matches,
    ``RQ = TP / (TP + FP/2 + FN/2)`` and ``PQ = SQ * RQ``.

    Args:
        pred_instances: integer instance ids, any shape ``S``; 0 = background.
        true_instances: integer instance ids of the same shape; 0 = background.

    Returns:
        ``{"pq", "sq", "rq", "tp", "fp", "fn"}``. Everything is ``nan`` (and
        the counts 0) when neither holds an object; with objects but no match
        ``pq = rq = 0`` and ``sq`` is ``nan``.
    """
    pred_arr, true_arr = np.asarray(pred_instances), np.asarray(true_instances)
    _check_same_shape(pred_arr, true_arr, ("pred_instances", "true_instances"))
    pred, n_pred = _consecutive(pred_arr, "pred_instances")
    true, n_true = _consecutive(true_arr, "true_instances")
    return _pq(pred, true, n_pred, n_true)


def _pq(pred: np.ndarray, true: np.ndarray, n_pred: int, n_true: int) -> dict[str, float]:
    if n_pred == 0 and n_true == 0:
        return {"pq": math.nan, "sq": math.nan, "rq": math.nan, "tp": 0, "fp": 0, "fn": 0}
    _, _, _, _, inter, union = _pair_overlaps(pred, true, n_pred, n_true)
    iou = inter / union
    matched = iou[iou > 0.5]
    tp = int(matched.size)
    fp, fn = n_pred - tp, n_true - tp
    denominator = tp + fp / 2 + fn / 2
    sq = float(matched.mean()) if tp else math.nan
    rq = tp / denominator
    pq = float(matched.sum()) / denominator
    return {"pq": pq, "sq": sq, "rq": rq, "tp": tp, "fp": fp, "fn": fn}
