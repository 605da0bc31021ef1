"""Foreground-restricted Rand and information-theoretic scores (ISBI 2012 challenge).

Definitions follow Arganda-Carreras et al. (2015), "Crowdsourcing the creation
of image segmentation algorithms for connectomics", Front. Neuroanat. 9:142.
With ``S`` the proposed segmentation and ``T`` the ground truth, restricted to
the pixels where ``T`` is not 0 (foreground), ``p_ij`` is the fraction of those
pixels in predicted segment ``i`` and true segment ``j``, ``s_i = sum_j p_ij``
and ``t_j = sum_i p_ij``:

* ``V_Rand_split = sum p_ij^2 / sum t_j^2``
* ``V_Rand_merge = sum p_ij^2 / sum s_i^2``
* ``V_Rand = 2 sum p_ij^2 / (sum s_i^2 + sum t_j^2)`` (harmonic mean of the two)
* ``V_Info_split = I(S; T) / H(S)``
* ``V_Info_merge = I(S; T) / H(T)``
* ``V_Info = 2 I(S; T) / (H(S) + H(T))`` (harmonic mean of the two)

All scores lie in [0, 1]; 1 is a perfect segmentation. A segmentation that
splits true cells lowers the ``split`` scores, one that merges them the
``merge`` scores.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Keys of the dicts returned by :func:`rand_info_scores` and :func:`membrane_scores`.
SCORE_KEYS = ("v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split", "v_info_merge")

_PRED_ZERO = ("singletons", "segment")


def _harmonic(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def _entropy(counts: np.ndarray, n: int) -> float:
    p = counts[counts > 0].astype(np.float64) / n
    return float(-(p * np.log(p)).sum())


def _contingency(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nonzero contingency-table counts (1-D) and consecutive pred / true segment indices per pixel."""
    _, pred_ids = np.unique(pred, return_inverse=True)
    _, true_ids = np.unique(true, return_inverse=True)
    pairs = pred_ids.astype(np.int64).reshape(-1) * (int(true_ids.max()) + 1) + true_ids.reshape(-1)
    _, joint = np.unique(pairs, return_counts=True)
    return joint, pred_ids.reshape(-1), true_ids.reshape(-1)


def rand_info_scores(
    pred_segments: Any,
    true_segments: Any,
    *,
    pred_zero: str = "singletons",
    pairs: bool = False,
) -> dict[str, float]:
    """Foreground-restricted V_Rand and V_Info scores of a segment labelling (ISBI 2012).

    See the module docstring for the definitions. Pixels whose true label is 0
    (boundary/background in the truth) are left out everywhere.

    Args:
        pred_segments: integer segment ids, any shape ``S`` (2-D ``(Y, X)`` or
            3-D ``(Z, Y, X)``); the numbers themselves mean nothing.
        true_segments: integer segment ids of the same shape; 0 = not counted.
        pred_zero: what predicted label 0 means inside the true foreground:
            ``"singletons"`` (default) makes each such pixel its own segment,
            as the challenge's scripts treat predicted boundary pixels;
            ``"segment"`` keeps 0 as one ordinary segment (scikit-image's
            behaviour).
        pairs: ``False`` (default) uses the squared joint probabilities of
            the paper, which count every pixel paired with itself;
            ``True`` counts unordered pairs of distinct pixels instead
            (``sum n_ij (n_ij - 1)``), which is what
            :func:`skimage.metrics.adapted_rand_error` does: then, with
            ``are, prec, rec = adapted_rand_error(true_segments, pred_segments)``
            and ``pred_zero="segment"``, ``v_rand = 1 - are``,
            ``v_rand_split = prec`` and ``v_rand_merge = rec`` (scikit-image
            0.26 divides its "precision" by the true image's pair count). The
            V_Info scores are the same either way.

    Returns:
        ``{"v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split",
        "v_info_merge"}``, floats in [0, 1]. All are ``nan`` when no pixel is
        counted. ``v_info_split`` is 1 when the prediction is one segment
        (``H(S) = 0``: nothing split), ``v_info_merge`` 1 when the truth is one
        segment; ``v_info`` is then the harmonic mean of the two. With
        ``pairs=True`` a Rand score whose pair count is 0 is ``nan``.
    """
    if pred_zero not in _PRED_ZERO:
        raise ValueError(f"pred_zero must be one of {_PRED_ZERO}; got {pred_zero!r}")
    pred = np.asarray(pred_segments)
    true = np.asarray(true_segments)
    if pred.shape != true.shape:
        raise ValueError(
            f"pred_segments and true_segments must have the same shape; got {pred.shape} and {true.shape}"
        )
    for name, values in (("pred_segments", pred), ("true_segments", true)):
        if values.dtype.kind not in "iub":
            raise ValueError(f"{name} must hold integer segment ids; got dtype {values.dtype}")
    keep = true != 0
    pred = pred[keep].astype(np.int64)
    true = true[keep].astype(np.int64)
    n = int(true.size)
    if n == 0:
        return {key: math.nan for key in SCORE_KEYS}
    if pred_zero == "singletons":
        zeros = pred == 0
        if zeros.any():
            pred = pred.copy()
            pred[zeros] = int(pred.max()) + 1 + np.arange(int(zeros.sum()))

    joint, pred_ids, true_ids = _contingency(pred, true)
    pred_sizes = np.bincount(pred_ids)
    true_sizes = np.bincount(true_ids)

    # Rand: in counts, the normalisation by n^2 cancels in every ratio
    sum_joint = float(np.dot(joint.astype(np.float64), joint))
    sum_pred = float(np.dot(pred_sizes.astype(np.float64), pred_sizes))
    sum_true = float(np.dot(true_sizes.astype(np.float64), true_sizes))
    if pairs:
        sum_joint, sum_pred, sum_true = sum_joint - n, sum_pred - n, sum_true - n

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else math.nan

    rand_split = ratio(sum_joint, sum_true)
    rand_merge = ratio(sum_joint, sum_pred)
    rand = ratio(2 * sum_joint, sum_pred + sum_true)

    h_pred = _entropy(pred_sizes, n)
    h_true = _entropy(true_sizes, n)
    h_joint = _entropy(joint, n)
    mutual = max(h_pred + h_true - h_joint, 0.0)
    info_split = 1.0 if h_pred == 0 else min(mutual / h_pred, 1.0)
    info_merge = 1.0 if h_true == 0 else min(mutual / h_true, 1.0)
    return {
        "v_rand": rand,
        "v_rand_split": rand_split,
        "v_rand_merge": rand_merge,
        "v_info": _harmonic(info_split, info_merge),
        "v_info_split": info_split,
        "v_info_merge": info_merge,
    }


def _check_mask(mask: Any, name: str) -> np.ndarray:
    values = np.asarray(mask)
    if values.dtype.kind not in "biu":
        raise ValueError(f"{name} must be a boolean or 0/1 integer mask; got dtype {values.dtype}")
    if values.dtype.kind != "b":
        if values.size and (values.min() < 0 or values.max() > 1):
            raise ValueError(
                f"{name} must be a boolean or 0/1 integer mask (1 = membrane); got values "
                f"from {values.min()} to {values.max()}. Threshold probabilities first."
            )
        values = values.astype(bool)
    if values.ndim not in (2, 3):
        raise ValueError(f"{name} must be 2-D (Y, X) or 3-D (Z, Y, X); got shape {values.shape}")
    return values


def membrane_segments(membrane_mask: Any, *, thin: bool = True) -> np.ndarray:
    """Label the regions enclosed by a membrane (boundary) mask, slice by slice.

    Each ``(Y, X)`` slice is handled on its own: with ``thin=True`` the
    membrane is first thinned to 1-pixel-wide lines
    (:func:`skimage.morphology.thin`, like the challenge's Fiji script; the
    slice is framed with membrane while thinning so that lines reaching the
    image border keep their ends), then
    the non-membrane pixels are labelled by 4-connected components (so
    8-connected 1-pixel lines still separate cells).

    Args:
        membrane_mask: ``(Y, X)`` or ``(Z, Y, X)`` bool/0-1 mask, True = membrane.
        thin: thin the membrane before labelling.

    Returns:
        int64 labels of the same shape: 0 on (thinned) membrane pixels, a
        positive id per region, unique over the whole stack.
    """
    from scipy import ndimage
    from skimage.morphology import thin as thin_mask

    mask = _check_mask(membrane_mask, "membrane_mask")
    stack = mask[None] if mask.ndim == 2 else mask
    labels = np.zeros(stack.shape, dtype=np.int64)
    offset = 0
    for z, plane in enumerate(stack):
        if thin and plane.any():
            # a frame of membrane around the slice keeps lines that reach the image
            # border from being shortened at their open ends by the thinning
            plane = thin_mask(np.pad(plane, 1, constant_values=True))[1:-1, 1:-1]
        regions, count = ndimage.label(~plane)  # default structure: 4-connectivity
        labels[z] = np.where(regions > 0, regions + offset, 0)
        offset += count
    return labels[0] if mask.ndim == 2 else labels


def membrane_scores(
    pred_membrane_mask: Any,
    true_membrane_mask: Any,
    *,
    thin: bool = True,
    pred_zero: str = "singletons",
) -> dict[str, float]:
    """ISBI 2012 V_Rand / V_Info scores of a predicted membrane map against a true one.

    Both masks are turned into cell labels with :func:`membrane_segments`
    (thinning both when ``thin=True``, the challenge's "thinned" variants),
    then scored with :func:`rand_info_scores`: true membrane pixels are left
    out, and predicted membrane pixels inside true cells count as one-pixel
    segments (``pred_zero="singletons"``). A 3-D stack is labelled slice by
    slice and scored as one pooled set of pixels.

    Args:
        pred_membrane_mask: ``(Y, X)`` or ``(Z, Y, X)`` bool/0-1, True = membrane.
        true_membrane_mask: same shape, True = membrane.
        thin: thin both membrane maps to 1-pixel lines before labelling.
        pred_zero: passed to :func:`rand_info_scores`.

    Returns:
        The dict of :func:`rand_info_scores`.
    """
    pred = _check_mask(pred_membrane_mask, "pred_membrane_mask")
    true = _check_mask(true_membrane_mask, "true_membrane_mask")
    if pred.shape != true.shape:
        raise ValueError(
            f"pred_membrane_mask and true_membrane_mask must have the same shape; got {pred.shape} and {true.shape}"
        )
    return rand_info_scores(
        membrane_segments(pred, thin=thin), membrane_segments(true, thin=thin), pred_zero=pred_zero
    )


def class_rand_info_scores(
    prediction: Any,
    truth: Any,
    *,
    classes: Any,
    background: int | None = 0,
    ignore_label: int | None = None,
    per_slice: bool = False,
    connectivity: int = 1,
) -> dict[str, dict[str, float]]:
    """V_Rand / V_Info of each class's connected components, for multi-class maps.

    For a foreground class ``k`` the true segments are the connected
    components of ``truth == k`` and the predicted ones those of
    ``prediction == k``; :func:`rand_info_scores` then scores them on the
    pixels of true class ``k`` only (the foreground restriction), with pixels
    of true class ``k`` predicted as another class counted as one-pixel
    segments (``pred_zero="singletons"``, as the ISBI scripts treat predicted
    membrane). Splitting an organelle lowers the ``split`` scores, merging two
    touching ones the ``merge`` scores. For a binary membrane map use
    :func:`membrane_scores` instead (regions enclosed by the membrane).

    Args:
        prediction: integer class labels, any shape ``S`` (``(Y, X)`` or ``(Z, Y, X)``).
        truth: integer class labels of the same shape.
        classes: class names, name ``i`` for label ``i``.
        background: class index left out; ``None`` scores every class.
        ignore_label: truth value of unlabelled pixels; never counted.
        per_slice: components slice by slice along axis 0 (2-D objects).
        connectivity: see :func:`emseg.evaluation.connected_components`.

    Returns:
        ``{class name: scores of rand_info_scores}``; all ``nan`` for a class
        absent from the truth.
    """
    from ._instances import connected_components
    from ._objects import _check_semantic, _foreground_classes

    pred, true, names, ignore_label = _check_semantic(prediction, truth, classes, background, ignore_label)
    result = {}
    for k, name in _foreground_classes(names, background):
        true_segments, _ = connected_components(true == k, per_slice=per_slice, connectivity=connectivity)
        pred_segments, _ = connected_components(pred == k, per_slice=per_slice, connectivity=connectivity)
        result[name] = rand_info_scores(pred_segments, true_segments, pred_zero="singletons")
    return result
