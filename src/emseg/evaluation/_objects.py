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

from ._instances import _aji, _check_same_shape, _consecutive, _pq, connected_components

logger = logging.getLogger(__name__)


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
