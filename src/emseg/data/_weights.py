"""Per-voxel loss weight maps: Guay et al. (2021) and Ronneberger et al. (2015).

Both take a label volume ``(Z, Y, X)`` (or one slice ``(Y, X)``) of class
indices and return float32 weights of the same shape for the ``weighted_ce``
loss.  Spatial terms are computed per 2-D slice (z slices are treated as
independent images, as in both papers).  Unlabelled pixels (``ignore_label``
or :data:`IGNORE_INDEX`) get weight 0 and are left out of every count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from emseg._registry import suggest
from emseg.data._load import IGNORE_INDEX

__all__ = ["EdgeTerm", "class_balance_weights", "guay_weight_map", "unet_border_weight_map", "weight_maps_for_slices"]

# exp(-t**2 / (2 sigma**2)) < 1e-6 for t > sigma * sqrt(2 ln 1e6) ~ 5.26 sigma: beyond this
# distance an instance cannot change the Ronneberger border term by more than 1e-6 * w0.
_BORDER_CUTOFF = math.sqrt(2.0 * math.log(1e6))


@dataclass(frozen=True)
class EdgeTerm:
    """One edge-preserving term of :func:`guay_weight_map`.

    Attributes:
        source: classes whose mask is diffused.
        target: classes whose pixels receive the weight.
        alpha: maximum weight of the term (its value is rescaled to ``[0, alpha]``).
        c: threshold in ``[0, 1)`` subtracted from the diffused mask (values below it give 0).
        sigma: standard deviation of the Gaussian, in pixels (in-plane).
    """

    source: tuple[int, ...]
    target: tuple[int, ...]
    alpha: float = 1.0
    c: float = 0.1
    sigma: float = 2.0

    @classmethod
    def from_value(cls, value: EdgeTerm | Mapping[str, Any], index: int = 0) -> EdgeTerm:
        if isinstance(value, EdgeTerm):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"edge_terms[{index}] must be a mapping with keys source, target, alpha, c, sigma; got {value!r}")
        allowed = ["source", "target", "alpha", "c", "sigma"]
        for key in value:
            if key not in allowed:
                raise ValueError(f"edge_terms[{index}] has unknown key {key!r}.{suggest(str(key), allowed)} "
                                 f"Allowed: {', '.join(allowed)}")
        for key in ("source", "target"):
            if key not in value:
                raise ValueError(f"edge_terms[{index}] needs {key!r} (a class index or list of class indices)")
        kwargs = dict(value)
        for key in ("source", "target"):
            v = kwargs[key]
            kwargs[key] = tuple(int(x) for x in (v if isinstance(v, Iterable) and not isinstance(v, str) else [v]))
        return cls(**kwargs)

    def validate(self, num_classes: int, index: int = 0) -> None:
        for key in ("source", "target"):
            classes = getattr(self, key)
            if not classes or any(not 0 <= k < num_classes for k in classes):
                raise ValueError(f"edge_terms[{index}].{key} must list class indices in [0, {num_classes}), got {list(classes)}")
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"edge_terms[{index}].alpha must be >= 0, got {self.alpha}")
        if not 0.0 <= self.c < 1.0:
            raise ValueError(f"edge_terms[{index}].c must be in [0, 1), got {self.c}")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"edge_terms[{index}].sigma must be > 0 pixels, got {self.sigma}")


def _prepare(labels: np.ndarray, ignore_label: int | None) -> tuple[np.ndarray, np.ndarray, bool]:
    """Return ``(labels (Z, Y, X) int64, labelled mask, was_2d)``."""
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be (Z, Y, X) or (Y, X), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    was_2d = labels.ndim == 2
    lab = labels[None] if was_2d else labels
    lab = lab.astype(np.int64, copy=False)
    valid = lab != IGNORE_INDEX
    if ignore_label is not None:
        valid &= lab != ignore_label
    return lab, valid, was_2d


def class_balance_weights(labels: np.ndarray, *, num_classes: int | None = None,
                          ignore_label: int | None = None) -> np.ndarray:
    """Per-class weights ``proportional to 1 / N_k``, scaled so the largest is 1.

    ``N_k`` is the number of labelled pixels of class ``k`` in the whole array;
    the weight of class ``k`` is ``min_j N_j / N_k`` over the classes present
    (so the rarest class gets 1); absent classes get 0.

    Args:
        labels: integer class indices, any shape.
        num_classes: length of the result (default: largest label + 1).
        ignore_label: label of unlabelled pixels (besides :data:`IGNORE_INDEX`).

    Returns:
        ``(num_classes,)`` float64.
    """
    lab, valid, _ = _prepare(labels if np.ndim(labels) in (2, 3) else np.reshape(labels, (1, -1)), ignore_label)
    values = lab[valid]
    if values.size and values.min() < 0:
        raise ValueError(f"labels must be >= 0 (or the ignore label), found {int(values.min())}")
    n = int(values.max()) + 1 if values.size else 0
    if num_classes is None:
        num_classes = n
    elif n > num_classes:
        bad = sorted(set(np.unique(values[values >= num_classes]).tolist()))[:5]
        raise ValueError(f"labels contain {bad} but num_classes is {num_classes}; set ignore_label for unlabelled pixels")
    counts = np.bincount(values, minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes)
    present = counts > 0
    if present.any():
        weights[present] = counts[present].min() / counts[present]
    return weights


def _given_balance(values: Sequence[float] | np.ndarray, min_size: int) -> np.ndarray:
    cb = np.asarray(values, dtype=np.float64).ravel()
    if cb.size < min_size or not np.all(np.isfinite(cb)) or np.any(cb < 0):
        raise ValueError(f"balance_weights must be {min_size} finite values >= 0 (one per class), got {cb.tolist()}")
    return cb


def guay_weight_map(
    labels: np.ndarray,
    *,
    num_classes: int,
    w0: float = 1.0,
    class_balance: bool = True,
    edge_terms: Sequence[EdgeTerm | Mapping[str, Any]] = (),
    ignore_label: int | None = None,
    balance_weights: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Guay et al. (2021) loss weights: constant + class balancing + edge-preserving terms.

    ``W = w0 + W_cb + sum_t E_t`` on labelled pixels, 0 on unlabelled ones, where

    * ``W_cb(x) = min_k N_k / N_{y(x)}``: the class-balancing term, proportional
      to ``1 / N_class`` over the whole volume and scaled so its maximum is 1
      (see :func:`class_balance_weights`);
    * ``E_t`` (one per edge term ``t`` with ``source`` classes ``S``, ``target``
      classes ``T``, ``alpha``, ``c``, ``sigma``), computed per z slice:

      1. ``D = G_sigma * 1[y in S]``: the source mask diffused by a normalised
         2-D Gaussian of standard deviation ``sigma`` (so ``0 <= D <= 1``;
         image edges continue the nearest pixel);
      2. ``R = max(D - c, 0) * 1[y in T]``: thresholded at ``c`` and kept on
         target-class pixels only;
      3. ``E_t = alpha * R / max(R)``: rescaled so its maximum over the volume is
         ``alpha`` (``E_t = 0`` when ``R`` is 0 everywhere).

    Reading of the paper: it describes the edge term as thresholded, rescaled
    diffusions of source-class masks onto target-class pixels; the authors'
    released code (leapmanlab) diffuses with a finite-difference heat equation,
    subtracts a threshold, masks to target classes and rescales by the volume
    maximum.  Here the diffusion is the Gaussian of the paper's description and
    the other steps follow that code.  ``E_t`` is one-sided (weights on the
    target side of an S/T boundary); add the reversed term for both sides.
    Defaults (``w0=1``; ``alpha=1, c=0.1, sigma=2`` per term) are emseg's, not
    values from the paper.

    Args:
        labels: ``(Z, Y, X)`` (or ``(Y, X)``) integer class indices.
        num_classes: number of classes; labels must be in ``[0, num_classes)`` or unlabelled.
        w0: constant term ``>= 0``.
        class_balance: include ``W_cb``.
        edge_terms: :class:`EdgeTerm` or mappings ``{"source": [...], "target": [...],
            "alpha": ..., "c": ..., "sigma": ...}``.
        ignore_label: label of unlabelled pixels (besides :data:`IGNORE_INDEX`).
        balance_weights: optional precomputed ``(num_classes,)`` class-balancing
            weights, e.g. :func:`class_balance_weights` of all training slices
            when this is called slice by slice (the default counts ``labels``).
            Note that the edge terms are always rescaled over ``labels``.

    Returns:
        float32 weights shaped like ``labels``.
    """
    if not (math.isfinite(w0) and w0 >= 0):
        raise ValueError(f"w0 must be a finite number >= 0, got {w0}")
    terms = [EdgeTerm.from_value(t, i) for i, t in enumerate(edge_terms)]
    for i, t in enumerate(terms):
        t.validate(num_classes, i)
    lab, valid, was_2d = _prepare(labels, ignore_label)
    cb = class_balance_weights(lab, num_classes=num_classes, ignore_label=ignore_label)  # also checks the range
    if balance_weights is not None:
        cb = _given_balance(balance_weights, num_classes)
    safe = np.where(valid, lab, 0)
    weights = np.full(lab.shape, float(w0), dtype=np.float64)
    if class_balance:
        weights += cb[safe]
    for term in terms:
        source = np.isin(lab, term.source) & valid
        target = np.isin(lab, term.target) & valid
        # sigma 0 along z: each slice is filtered on its own.
        diffused = ndimage.gaussian_filter(source.astype(np.float64), sigma=(0.0, term.sigma, term.sigma), mode="nearest")
        edge = np.where(target, np.maximum(diffused - term.c, 0.0), 0.0)
        peak = edge.max(initial=0.0)
        if peak > 0:
            weights += term.alpha * edge / peak
    weights[~valid] = 0.0
    out = weights.astype(np.float32)
    return out[0] if was_2d else out


def unet_border_weight_map(
    labels: np.ndarray,
    *,
    foreground: int | Sequence[int] = 1,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_balance: bool = True,
    connectivity: int = 1,
    ignore_label: int | None = None,
    balance_weights: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Ronneberger et al. (2015) weights ``w = w_c + w0 exp(-(d1 + d2)^2 / (2 sigma^2))``.

    Per z slice, the instances are the connected components of the
    ``foreground`` class mask.  For a labelled pixel outside every instance,
    ``d1`` and ``d2`` are the Euclidean distances (in pixels) to the nearest
    pixel of the nearest and second-nearest instance (1 for a pixel touching an
    instance); the border term is 0 inside instances and where a slice has
    fewer than two instances.  This puts large weights on the thin background
    gaps separating touching objects.  ``w_c`` is the class-balancing weight of
    :func:`class_balance_weights` (``min_k N_k / N_y`` over the whole volume,
    max 1), or 1 with ``class_balance=False``.  Unlabelled pixels get 0 and do
    not separate instances (they count as background for the distances).

    Instances farther than ``~5.26 sigma`` from a pixel are skipped there (their
    contribution is below ``1e-6 w0``).

    Args:
        labels: ``(Z, Y, X)`` (or ``(Y, X)``) integer class indices.
        foreground: class (or classes) whose connected components are the instances.
        w0, sigma: border weight and its width in pixels (paper: 10 and ~5).
        class_balance: use ``w_c``; otherwise ``w_c = 1``.
        connectivity: 1 (4-neighbours) or 2 (8-neighbours) for connected components.
        ignore_label: label of unlabelled pixels (besides :data:`IGNORE_INDEX`).
        balance_weights: optional precomputed per-class ``w_c`` (indexed by label),
            e.g. :func:`class_balance_weights` of all training slices.

    Returns:
        float32 weights shaped like ``labels``.
    """
    if not (math.isfinite(w0) and w0 >= 0):
        raise ValueError(f"w0 must be a finite number >= 0, got {w0}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be > 0 pixels, got {sigma}")
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 (4-neighbours) or 2 (8-neighbours), got {connectivity}")
    fg_classes = [int(foreground)] if isinstance(foreground, (int, np.integer)) else [int(k) for k in foreground]
    lab, valid, was_2d = _prepare(labels, ignore_label)
    if lab[valid].size and lab[valid].min() < 0:
        raise ValueError(f"labels must be >= 0 or unlabelled, found {int(lab[valid].min())}")
    if class_balance:
        cb = class_balance_weights(lab, ignore_label=ignore_label)
        if balance_weights is not None:
            cb = _given_balance(balance_weights, max(cb.size, 1))
            if lab[valid].size and lab[valid].max() >= cb.size:
                raise ValueError(f"balance_weights has {cb.size} values but labels go up to {int(lab[valid].max())}")
        weights = np.where(valid, cb[np.where(valid, lab, 0)] if cb.size else 0.0, 0.0)
    else:
        weights = valid.astype(np.float64)
    structure = ndimage.generate_binary_structure(2, connectivity)
    margin = int(math.ceil(_BORDER_CUTOFF * sigma)) + 1
    for z in range(lab.shape[0]):
        fg = np.isin(lab[z], fg_classes) & valid[z]
        instances, n = ndimage.label(fg, structure=structure)
        if n < 2:
            continue
        d1 = np.full(fg.shape, np.inf)
        d2 = np.full(fg.shape, np.inf)
        for k, box in enumerate(ndimage.find_objects(instances), start=1):
            if box is None:
                continue
            crop = tuple(slice(max(s.start - margin, 0), min(s.stop + margin, size)) for s, size in zip(box, fg.shape))
            d = ndimage.distance_transform_edt(instances[crop] != k)
            a, b = d1[crop], d2[crop]
            b[...] = np.minimum(b, np.maximum(a, d))
            a[...] = np.minimum(a, d)
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))
        keep = valid[z] & ~fg
        weights[z][keep] += border[keep]
    out = weights.astype(np.float32)
    return out[0] if was_2d else out


def weight_maps_for_slices(labels: Sequence[np.ndarray], *, kind: str, num_classes: int, w0: float | None = None,
                           class_balance: bool = True, edge_terms: Sequence[Mapping[str, Any]] = (),
                           sigma: float = 5.0, foreground: Sequence[int] = (1,),
                           balance_from: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
    """Weight maps of training slices (``training.weight_map``), one ``(Y, X)`` float32 map per slice.

    The class-balancing term counts the labelled pixels of ``balance_from``
    (default: ``labels``) together, i.e. of the whole training set; the edge
    terms of ``guay`` are rescaled over each run of consecutive slices of the
    same shape (a training volume), as in Guay et al.

    Args:
        labels: ``(Y, X)`` label slices with :data:`IGNORE_INDEX` for unlabelled pixels.
        kind: ``"guay"`` or ``"unet_border"``.
        num_classes: number of classes.
        w0, class_balance, edge_terms: :func:`guay_weight_map` options (``w0`` default 1).
        sigma, foreground, w0: :func:`unet_border_weight_map` options (``w0`` default 10).
        balance_from: label slices whose class counts give the balance weights.
    """
    if kind not in ("guay", "unet_border"):
        raise ValueError(f"weight map kind must be 'guay' or 'unet_border', got {kind!r}")
    source = list(balance_from if balance_from is not None else labels)
    counts = np.zeros(num_classes, np.int64)
    for lab in source:
        values = np.asarray(lab)[np.asarray(lab) != IGNORE_INDEX]
        counts += np.bincount(values.astype(np.int64).ravel(), minlength=num_classes)[:num_classes]
    balance = np.zeros(num_classes)
    present = counts > 0
    if present.any():
        balance[present] = counts[present].min() / counts[present]
    out: list[np.ndarray] = []
    start = 0
    labels = list(labels)
    while start < len(labels):
        stop = start + 1
        while stop < len(labels) and labels[stop].shape == labels[start].shape:
            stop += 1
        volume = np.stack([np.asarray(lab, np.int64) for lab in labels[start:stop]])
        if kind == "guay":
            maps = guay_weight_map(volume, num_classes=num_classes, w0=1.0 if w0 is None else w0,
                                   class_balance=class_balance, edge_terms=list(edge_terms), balance_weights=balance)
        else:
            maps = unet_border_weight_map(volume, foreground=list(foreground), w0=10.0 if w0 is None else w0,
                                          sigma=sigma, class_balance=class_balance, balance_weights=balance)
        out += list(maps)
        start = stop
    return out
