"""Organelle volume fractions per cell (stereology-style, as in Guay et al. 2021).

The volume fraction of class ``k`` in a cell is the number of voxels of class
``k`` inside the cell divided by the number of voxels of the cell (every
label counted, the cytoplasm and excluded classes included)::

    from emseg.analysis import volume_fractions, compare_fractions

    table = volume_fractions(pred, classes=["cytoplasm", "mito", "nucleus"], cells=cell_ids)
    diff = compare_fractions(truth, pred, classes=[...], cells=cell_ids)

Inputs may be larger than memory: they are read a few z-slices at a time and
counted with ``np.unique`` over (cell, class) pairs.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from emseg.analysis._objects import _open
from emseg.io import normalize_voxel_size

logger = logging.getLogger(__name__)

__all__ = ["compare_fractions", "volume_fractions"]

#: Voxels read from each input per slab (whole z-slices, at least one).
_SLAB_VOXELS = 1 << 24


def _slabs(shape: Sequence[int]):
    rows = max(1, _SLAB_VOXELS // max(1, int(shape[1]) * int(shape[2])))
    for z0 in range(0, int(shape[0]), rows):
        yield slice(z0, min(z0 + rows, int(shape[0])))


def _suffix(name: str) -> str:
    return re.sub(r"\W+", "_", str(name)).strip("_") or "class"


def _counts(labels: Any, classes: Sequence[str], cells: Any, mask: Any) -> dict[tuple[int, int], int]:
    """Voxel counts per ``(cell id, class)``; cell id 0 stands for the whole region when ``cells`` is None."""
    arrays, closers = {}, []
    try:
        for name, data in (("labels", labels), ("cells", cells), ("mask", mask)):
            if data is None:
                continue
            array, closer = _open(data, name)
            arrays[name] = array
            if closer is not None:
                closers.append(closer)
        shape = tuple(int(s) for s in arrays["labels"].shape)
        for name, array in arrays.items():
            if tuple(int(s) for s in array.shape) != shape:
                raise ValueError(f"{name} shape {tuple(array.shape)} differs from labels shape {shape}")
        if np.dtype(arrays["labels"].dtype).kind not in "biu":
            raise ValueError(f"labels must be integer class values; got dtype {arrays['labels'].dtype}")
        k = len(classes)
        totals: dict[tuple[int, int], int] = {}
        for slab in _slabs(shape):
            lab = np.asarray(arrays["labels"][slab]).astype(np.int64).ravel()
            bad = (lab < 0) | (lab >= k)
            if bad.any():
                values = sorted(set(np.unique(lab[bad]).tolist()))[:10]
                raise ValueError(f"labels hold values {values} outside the {k} classes {list(classes)}")
            keep = np.ones(lab.shape, bool)
            cell = np.zeros(lab.shape, np.int64)
            if "cells" in arrays:
                cell = np.asarray(arrays["cells"][slab]).astype(np.int64).ravel()
                keep &= cell > 0
            if "mask" in arrays:
                keep &= np.asarray(arrays["mask"][slab]).astype(bool).ravel()
            keys = cell[keep] * k + lab[keep]
            values, counts = np.unique(keys, return_counts=True)
            for key, count in zip(values.tolist(), counts.tolist()):
                pair = (key // k, key % k)
                totals[pair] = totals.get(pair, 0) + count
        return totals
    finally:
        for closer in closers:
            closer()


def volume_fractions(
    labels: Any,
    *,
    classes: Sequence[str],
    cells: Any = None,
    mask: Any = None,
    exclude: Sequence[int] = (0,),
    voxel_size: Sequence[float] | None = None,
) -> Any:
    """Fraction of each cell's volume occupied by each class.

    Args:
        labels: semantic labels ``(Z, Y, X)`` or ``(Y, X)`` with values
            ``0..len(classes)-1`` (array, lazy array or path).
        classes: class names; ``classes[i]`` names label value ``i``.
        cells: optional instance mask of the same shape: 0 outside every cell,
            ``1..N`` cell ids. Without it the whole volume (or ``mask``) is one
            region, reported as ``cell_id`` 0.
        mask: optional boolean region of the same shape; voxels outside are
            not counted (combined with ``cells`` when both are given).
        exclude: class values given no fraction column (default the
            background, 0). They still count in the cell volume.
        voxel_size: ``(z, y, x)``; when given a ``volume`` column
            (voxel_count times the voxel volume) is added.

    Returns:
        A ``pandas.DataFrame`` with one row per cell present (sorted by id):
        ``cell_id``, ``voxel_count`` (voxels of the cell), [``volume``], and for
        every class not excluded ``voxels_<name>`` and ``fraction_<name>``
        (in [0, 1]).

    Raises:
        ValueError: shapes differ, label values outside ``classes``, or bad arguments.
    """
    import pandas as pd

    classes = [str(c) for c in classes]
    if not classes:
        raise ValueError("classes must name at least one class")
    excluded = {int(e) for e in exclude}
    totals = _counts(labels, classes, cells, mask)
    cell_ids = sorted({cell for cell, _ in totals})
    if cells is None and not cell_ids:
        cell_ids = [0]
    counts = np.zeros((len(cell_ids), len(classes)), np.int64)
    row = {cell: i for i, cell in enumerate(cell_ids)}
    for (cell, cls), n in totals.items():
        counts[row[cell], cls] += n
    size = counts.sum(axis=1)
    table = {"cell_id": np.asarray(cell_ids, np.int64), "voxel_count": size}
    if voxel_size is not None:
        table["volume"] = size * math.prod(normalize_voxel_size(voxel_size))
    with np.errstate(divide="ignore", invalid="ignore"):
        for i, name in enumerate(classes):
            if i in excluded:
                continue
            table[f"voxels_{_suffix(name)}"] = counts[:, i]
            table[f"fraction_{_suffix(name)}"] = np.where(size > 0, counts[:, i] / np.maximum(size, 1), np.nan)
    return pd.DataFrame(table)


def compare_fractions(
    a: Any,
    b: Any,
    *,
    classes: Sequence[str],
    cells: Any = None,
    mask: Any = None,
    exclude: Sequence[int] = (0,),
) -> Any:
    """Volume fractions of two label images (e.g. truth ``a`` and prediction ``b``) side by side.

    Returns:
        A long ``pandas.DataFrame`` with one row per (cell, class not
        excluded): ``cell_id``, ``class_name``, ``fraction_a``,
        ``fraction_b`` and ``difference`` (``fraction_b - fraction_a``).
    """
    import pandas as pd

    fa = volume_fractions(a, classes=classes, cells=cells, mask=mask, exclude=exclude)
    fb = volume_fractions(b, classes=classes, cells=cells, mask=mask, exclude=exclude)
    merged = fa.merge(fb, on="cell_id", how="outer", suffixes=("_a", "_b")).sort_values("cell_id")
    excluded = {int(e) for e in exclude}
    rows = []
    for i, name in enumerate(classes):
        if i in excluded:
            continue
        col = f"fraction_{_suffix(name)}"
        part = pd.DataFrame({
            "cell_id": merged["cell_id"].to_numpy(),
            "class_name": str(name),
            "fraction_a": merged[f"{col}_a"].to_numpy(np.float64),
            "fraction_b": merged[f"{col}_b"].to_numpy(np.float64),
        })
        part["difference"] = part["fraction_b"] - part["fraction_a"]
        rows.append(part)
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["cell_id", "class_name", "fraction_a", "fraction_b", "difference"])
    return out.sort_values(["cell_id"], kind="stable").reset_index(drop=True)
