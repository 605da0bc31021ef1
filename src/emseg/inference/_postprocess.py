"""Post-processing of a label map: a majority (median) filter and removal of small objects.

What Casser et al. (Lucchi++) and PyTorch Connectomics do after prediction, for any number of
classes:

* :func:`majority_filter`: each voxel takes the class most frequent in the ``size`` window around
  it (a mode filter). For two classes and an odd window this *is* the median filter of the 0/1
  map. A tie keeps the voxel's own class when it is among the most frequent, else the lowest tied
  class index. Borders: the map mirrored (scipy's ``reflect``, as ``ndimage.median_filter``).
* :func:`remove_small_objects`: connected components (face connectivity: 4 in 2-D, 6 in 3-D) of
  each foreground class with fewer than ``min_size`` voxels are removed; each one's voxels go to
  the class it shares most of its border with among the voxels that are kept (ties: the lowest
  class index, so background wins a tie), or to background when it touches only removed voxels.
  All removals are decided on the input map, so the result does not depend on class order. For a
  binary map this is "set the small components to background".

``per_slice=True`` (default; slices that are not contiguous, e.g. a set of sections): a 1 x s x s
window and 2-D components of each slice. ``per_slice=False``: a s x s x s window and 3-D
components (a contiguous volume).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_postprocess", "majority_filter", "postprocess_labels", "remove_small_objects"]


def check_postprocess(*, median: int | None = None, min_size: int | None = None) -> None:
    """Raise ``ValueError`` for a ``median`` that is not an odd integer >= 3 or a ``min_size`` < 0."""
    if median is not None and (isinstance(median, bool) or not isinstance(median, (int, np.integer))
                               or median < 3 or median % 2 == 0):
        raise ValueError(f"--median {median}: the filter window must be an odd size >= 3 (3, 5, 7, ...) so that "
                         "it is centred on the voxel; use --median 3 for the smallest smoothing, or leave it out")
    if min_size is not None and (isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer))
                                 or min_size < 0):
        raise ValueError(f"--min-size {min_size}: give a number of voxels >= 0 (objects smaller than it are "
                         "removed; 0 removes nothing), e.g. --min-size 100")


def _as_stack(labels: np.ndarray) -> tuple[np.ndarray, bool]:
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return labels[None], True
    if labels.ndim != 3:
        raise ValueError(f"post-processing needs a 2-D (Y, X) or 3-D (Z, Y, X) label map, got shape {labels.shape}")
    return labels, False


#: Slices filtered at a time (plus the window's halo in 3-D): the counts need ~20 bytes per voxel of a slab,
#: not of the whole stack.
SLAB = 16


def majority_filter(labels: np.ndarray, size: int = 3, *, per_slice: bool = True) -> np.ndarray:
    """The most frequent class in a ``size`` window around each voxel (median for two classes).

    Args:
        labels: ``(Y, X)`` or ``(Z, Y, X)`` integer label map.
        size: odd window size >= 3.
        per_slice: a ``1 x size x size`` window (True) or ``size`` in z too (False).

    Returns:
        A new label map of the same shape and dtype.
    """
    check_postprocess(median=size)
    stack, flat = _as_stack(labels)
    halo = 0 if per_slice else size // 2
    out = np.empty_like(stack)
    for z0 in range(0, stack.shape[0], SLAB):  # slab by slab with the window's halo: the same as all at once
        z1 = min(z0 + SLAB, stack.shape[0])
        lo, hi = max(z0 - halo, 0), min(z1 + halo, stack.shape[0])
        out[z0:z1] = _majority(stack[lo:hi], size, per_slice=per_slice)[z0 - lo:z1 - lo]
    return out[0] if flat else out


def _majority(stack: np.ndarray, size: int, *, per_slice: bool) -> np.ndarray:
    from scipy import ndimage

    window = (1, size, size) if per_slice else (size, size, size)
    n = int(np.prod(window))
    dtype = np.int16 if n < 2**15 else np.int32  # counts 0..n, -1 before the first class
    best_count = np.full(stack.shape, -1, dtype)
    best_label = np.zeros_like(stack)
    own_count = np.zeros(stack.shape, dtype)
    counts = np.empty(stack.shape, np.float32)
    for k in np.unique(stack):  # ascending: a strict > keeps the lowest class index on ties
        member = stack == k
        ndimage.uniform_filter(member.astype(np.float32), size=window, output=counts, mode="reflect")
        count = np.rint(counts * n).astype(dtype)  # exact: a mean of n zeros and ones
        better = count > best_count
        best_count[better] = count[better]
        best_label[better] = k
        own_count[member] = count[member]
    return np.where(own_count == best_count, stack, best_label)


def remove_small_objects(labels: np.ndarray, min_size: int, *, per_slice: bool = True,
                         background: int = 0) -> np.ndarray:
    """Remove connected components of each foreground class below ``min_size`` voxels.

    Args:
        labels: ``(Y, X)`` or ``(Z, Y, X)`` integer label map.
        min_size: components with fewer voxels than this are removed (0 or 1: nothing is).
        per_slice: 2-D components of each slice (True) or 3-D components (False).
        background: the class not treated as objects.

    Returns:
        A new label map: each removed component's voxels take the class it shares most of its
        border with among kept voxels (ties: the lowest class index), or ``background`` if none.
    """
    check_postprocess(min_size=min_size)
    stack, flat = _as_stack(labels)
    if min_size <= 1:
        return stack[0].copy() if flat else stack.copy()
    if per_slice:  # 2-D components never cross slices: slab by slab
        out = np.empty_like(stack)
        for z0 in range(0, stack.shape[0], SLAB):
            out[z0:z0 + SLAB] = _remove_small(stack[z0:z0 + SLAB], min_size, per_slice=True, background=background)
    else:
        out = _remove_small(stack, min_size, per_slice=False, background=background)
    return out[0] if flat else out


def _remove_small(stack: np.ndarray, min_size: int, *, per_slice: bool, background: int) -> np.ndarray:
    from scipy import ndimage

    out = stack.copy()
    structure = ndimage.generate_binary_structure(3, 1)
    if per_slice:
        structure[0] = structure[2] = False
    removed = np.zeros(stack.shape, np.int32)  # 0: kept, i > 0: the i-th removed component
    n_removed = 0
    for k in np.unique(stack):
        if k == background:
            continue
        comps, n = ndimage.label(stack == k, structure=structure)
        sizes = np.bincount(comps.ravel(), minlength=n + 1)
        small = np.flatnonzero(sizes < min_size)
        small = small[small > 0]
        if small.size == 0:
            continue
        renumber = np.zeros(n + 1, np.int32)
        renumber[small] = n_removed + 1 + np.arange(small.size)
        hit = renumber[comps]
        removed[hit > 0] = hit[hit > 0]
        n_removed += small.size
    if n_removed == 0:
        return out
    classes = np.unique(stack)
    c = classes.size
    border = np.zeros((n_removed + 1) * c, np.int64)
    axes = (1, 2) if per_slice else (0, 1, 2)
    for axis in axes:
        for step in (1, -1):
            here = [slice(None)] * 3
            there = [slice(None)] * 3
            here[axis] = slice(None, -1) if step == 1 else slice(1, None)
            there[axis] = slice(1, None) if step == 1 else slice(None, -1)
            a, b = removed[tuple(here)], removed[tuple(there)]
            pair = (a > 0) & (b == 0)  # a removed voxel facing a kept one
            facing = np.searchsorted(classes, stack[tuple(there)][pair])  # its class as 0..C-1
            border += np.bincount(a[pair].astype(np.int64) * c + facing, minlength=border.size)
    border = border.reshape(n_removed + 1, c)
    fill = classes[np.argmax(border, axis=1)]  # first maximum: the lowest class index
    fill[border.max(axis=1) == 0] = background
    mask = removed > 0
    out[mask] = fill[removed[mask]].astype(out.dtype)
    return out


def postprocess_labels(labels: np.ndarray, *, median: int | None = None, min_size: int | None = None,
                       per_slice: bool = True, background: int = 0) -> np.ndarray:
    """:func:`majority_filter` (if ``median``), then :func:`remove_small_objects` (if ``min_size``)."""
    check_postprocess(median=median, min_size=min_size)
    out = np.asarray(labels)
    if median:
        out = majority_filter(out, median, per_slice=per_slice)
    if min_size:
        out = remove_small_objects(out, min_size, per_slice=per_slice, background=background)
    return out


def postprocess_record(*, median: int | None, min_size: int | None, per_slice: bool) -> dict[str, Any] | None:
    """The options as stored in an output's metadata (``None`` when there is no post-processing)."""
    if not median and not min_size:
        return None
    return {"median": median, "min_size": min_size, "mode": "2d-per-slice" if per_slice else "3d",
            "filter": "majority", "connectivity": "face", "small_objects_to": "bordering class"}
