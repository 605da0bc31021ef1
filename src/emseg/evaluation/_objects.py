"""Object-level scores: detection rates, aggregated Jaccard index, panoptic quality, Hausdorff distance.

Objects are connected components, found per class in a semantic label map,
either in 3-D or slice by slice along axis 0 (``per_slice=True``). These
functions hold whole arrays in memory (labelling needs the whole volume);
crop or work block by block for volumes larger than memory.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------- semantic maps


def _check_semantic(prediction: Any, truth: Any, classes: Sequence[Any], background: Any, ignore_label: Any):
    from ._confusion import _check_ignore_label

    pred = np.asarray(prediction)
    true = np.asarray(truth)
    _check_same_shape(pred, true, ("prediction", "truth"))
    for name, values in (("prediction", pred), ("truth", true)):
        if values.dtype.kind not in "iub":
            raise ValueError(f"{name} must hold integer class labels; got dtype {values.dtype}")
    names = [str(c) for c in classes]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"classes must be a non-empty list of unique class names; got {names}")
    if background is not None:
        if isinstance(background, bool) or not isinstance(background, (int, np.integer)) or not 0 <= background < len(names):
            raise ValueError(f"background must be a class index in [0, {len(names)}) or None; got {background!r}")
    ignore_label = _check_ignore_label(ignore_label)
    return pred, true, names, ignore_label


def _foreground_classes(names: list[str], background: int | None):
    return [(k, name) for k, name in enumerate(names) if k != background]


def detection_scores(
    prediction: Any,
    truth: Any,
    *,
    classes: Sequence[Any],
    background: int | None = 0,
    ignore_label: int | None = None,
    per_slice: bool = False,
    connectivity: int = 1,
    detected_above: float = 0.8,
    missed_below: float = 0.1,
) -> dict[str, dict[str, float]]:
    """Object detection rates per class, as defined by Meyer et al.

    Each connected component of ``truth == k`` is a true object of class
    ``k``; its recall is the fraction of its pixels predicted as ``k``. It is
    *detected* when recall > ``detected_above`` (0.8), *missed* when recall <
    ``missed_below`` (0.1) and *under-detected* otherwise.

    Args:
        prediction: integer class labels, any shape ``S`` (e.g. ``(Z, Y, X)``).
        truth: integer class labels of the same shape.
        classes: class names, name ``i`` for label ``i``.
        background: class index left out (no objects); ``None`` scores every class.
        ignore_label: truth value of unlabelled pixels; they belong to no object.
        per_slice: find objects slice by slice along axis 0 (2-D objects).
        connectivity: see :func:`connected_components`.
        detected_above, missed_below: the recall cut-offs.

    Returns:
        ``{class name: {"objects", "detected", "under_detected", "missed",
        "detected_percent", "under_detected_percent", "missed_percent"}}`` for
        each non-background class; percentages of ``objects`` (0-100), ``nan``
        for a class with no true object.
    """
    pred, true, names, ignore_label = _check_semantic(prediction, truth, classes, background, ignore_label)
    if not 0 <= missed_below <= detected_above <= 1:
        raise ValueError(
            f"need 0 <= missed_below <= detected_above <= 1; got missed_below={missed_below!r}, "
            f"detected_above={detected_above!r}"
        )
    result = {}
    for k, name in _foreground_classes(names, background):
        objects, count = connected_components(true == k, per_slice=per_slice, connectivity=connectivity)
        if count:
            sizes = np.bincount(objects.reshape(-1), minlength=count + 1)[1:]
            hits = np.bincount(objects[pred == k], minlength=count + 1)[1:]
            recall = hits / sizes
            detected = int(np.count_nonzero(recall > detected_above))
            missed = int(np.count_nonzero(recall < missed_below))
        else:
            detected = missed = 0
        under = count - detected - missed
        pct = (lambda x: 100.0 * x / count) if count else (lambda x: math.nan)
        result[name] = {
            "objects": count,
            "detected": detected,
            "under_detected": under,
            "missed": missed,
            "detected_percent": pct(detected),
            "under_detected_percent": pct(under),
            "missed_percent": pct(missed),
        }
    return result


def object_scores(
    prediction: Any,
    truth: Any,
    *,
    classes: Sequence[Any],
    background: int | None = 0,
    ignore_label: int | None = None,
    per_slice: bool = False,
    connectivity: int = 1,
) -> dict[str, dict[str, float]]:
    """AJI and panoptic quality per class, with objects = connected components of each class.

    For class ``k`` the instances are the connected components of
    ``prediction == k`` and of ``truth == k``; they are scored with
    :func:`aggregated_jaccard_index` and :func:`panoptic_quality`. Predicted
    objects are labelled before ignored pixels are removed, so an ignored
    region does not split them.

    Args:
        prediction: integer class labels, any shape ``S``.
        truth: integer class labels of the same shape.
        classes: class names, name ``i`` for label ``i``.
        background: class index left out; ``None`` scores every class.
        ignore_label: truth value of pixels left out of both labellings.
        per_slice: find objects slice by slice along axis 0.
        connectivity: see :func:`connected_components`.

    Returns:
        ``{class name: {"aji", "pq", "sq", "rq", "tp", "fp", "fn",
        "true_objects", "predicted_objects"}}``; scores are ``nan`` for a
        class with objects in neither input.
    """
    pred, true, names, ignore_label = _check_semantic(prediction, truth, classes, background, ignore_label)
    keep = None if ignore_label is None else (true != ignore_label)
    result = {}
    for k, name in _foreground_classes(names, background):
        pred_objects, _ = connected_components(pred == k, per_slice=per_slice, connectivity=connectivity)
        true_objects, _ = connected_components(true == k, per_slice=per_slice, connectivity=connectivity)
        if keep is not None:
            pred_objects[~keep] = 0
        p, n_pred = _consecutive(pred_objects, "prediction")
        t, n_true = _consecutive(true_objects, "truth")
        scores = {"aji": _aji(p, t, n_pred, n_true), **_pq(p, t, n_pred, n_true)}
        scores["true_objects"] = n_true
        scores["predicted_objects"] = n_pred
        result[name] = scores
    return result


def _edges(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    # pixels of the mask with a face neighbour outside it (or on the array border)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hausdorff_distance(
    prediction: Any,
    truth: Any,
    *,
    classes: Sequence[Any],
    background: int | None = 0,
    spacing: float | Sequence[float] | None = None,
    percentile: float = 95,
    ignore_label: int | None = None,
) -> dict[str, float]:
    """Percentile (default 95th) symmetric Hausdorff distance between class boundaries.

    For class ``k`` the boundary of a mask is its pixels with a face
    neighbour outside it (array borders count as outside). For each boundary
    pixel of the prediction, the Euclidean distance (in ``spacing`` units) to
    the nearest boundary pixel of the truth is taken, and vice versa; the
    score is the larger of the two ``percentile``-th percentiles (linear
    interpolation). This is what
    ``monai.metrics.compute_hausdorff_distance(..., percentile=95)`` computes.

    Args:
        prediction: integer class labels, 2-D ``(Y, X)`` or 3-D ``(Z, Y, X)``.
        truth: integer class labels of the same shape.
        classes: class names, name ``i`` for label ``i``.
        background: class index left out; ``None`` scores every class.
        spacing: pixel/voxel size per axis (e.g. ``(z, y, x)`` in nm), or one
            number for all axes; ``None`` = 1.
        percentile: in [0, 100]; 100 gives the classic Hausdorff distance.
        ignore_label: truth value of unlabelled pixels; they are removed from
            both masks before boundaries are taken.

    Returns:
        ``{class name: distance}``; ``nan`` for a class missing from the
        prediction or from the truth.
    """
    from scipy import ndimage

    pred, true, names, ignore_label = _check_semantic(prediction, truth, classes, background, ignore_label)
    keep = None if ignore_label is None else (true != ignore_label)
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100]; got {percentile!r}")
    if spacing is None:
        sampling = None
    else:
        sampling = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (true.ndim,)) if np.ndim(spacing) == 0 else np.asarray(spacing, dtype=np.float64)
        if sampling.shape != (true.ndim,) or not np.all(sampling > 0):
            raise ValueError(
                f"spacing must be one positive number or {true.ndim} of them (one per axis); got {spacing!r}"
            )
    result = {}
    for k, name in _foreground_classes(names, background):
        pred_mask, true_mask = pred == k, true == k
        if keep is not None:
            pred_mask &= keep
        if not pred_mask.any() or not true_mask.any():
            result[name] = math.nan
            continue
        pred_edges, true_edges = _edges(pred_mask), _edges(true_mask)
        to_true = ndimage.distance_transform_edt(~true_edges, sampling=sampling)[pred_edges]
        to_pred = ndimage.distance_transform_edt(~pred_edges, sampling=sampling)[true_edges]
        result[name] = float(max(np.percentile(to_true, percentile), np.percentile(to_pred, percentile)))
    return result
