"""Per-object morphometry (part of :func:`~emseg.analysis.measure_objects`): what is not additive is
computed on a crop of the object's bounding box (surface area or perimeter, watershed split of touching
objects, distances to other classes), and the table columns derived from the additive moments."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from emseg.analysis._components import _I, _II, _N, _X, _XX, _Y, _YX, _YY, _Z, _ZX, _ZY, _ZZ, _label

#: First search radius for ``distance_to``, in units of the largest voxel size.
_DISTANCE_START_VOXELS = 16


# --------------------------------------------------------------------------- per-object work on crops


def _crop(array: Any, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    return np.asarray(array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])


def _own_mask(labels: Any, class_id: int, lo, hi, first: int, shape, mode: str, connectivity: int) -> np.ndarray:
    """Boolean mask of the object in its bounding-box crop: the crop's component holding its first voxel."""
    crop = _crop(labels, lo, hi) == class_id
    cc, _ = _label(crop, mode, connectivity)
    seed = tuple(int(c) - int(o) for c, o in zip(np.unravel_index(first, tuple(shape)), lo))
    return cc == cc[seed]


def _surface(mask: np.ndarray, spacing: tuple[float, float, float], mode: str) -> float:
    """Surface area (marching cubes) or, in 2-D mode, perimeter (marching squares) of a padded mask."""
    from skimage import measure

    if mode == "2d":
        padded = np.pad(mask[0], 1).astype(np.float32)
        scale = np.asarray(spacing[1:], np.float64)
        total = 0.0
        for contour in measure.find_contours(padded, 0.5):
            total += float(np.sqrt(((np.diff(contour, axis=0) * scale) ** 2).sum(axis=1)).sum())
        return total
    padded = np.pad(mask, 1).astype(np.float32)
    verts, faces, _, _ = measure.marching_cubes(padded, 0.5, spacing=spacing)
    return float(measure.mesh_surface_area(verts, faces))


def _split(mask: np.ndarray, spacing, mode: str, connectivity: int, min_distance: int) -> tuple[np.ndarray, int]:
    """Distance-transform watershed of one object's mask; ``(pieces, k)`` with ``pieces`` labelled 1..k."""
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    if mode == "2d":
        plane, sampling = mask[0], spacing[1:]
        sk_conn = 1 if connectivity == 4 else 2
    else:
        plane, sampling = mask, spacing
        sk_conn = {6: 1, 18: 2, 26: 3}[connectivity]
    dist = ndimage.distance_transform_edt(np.pad(plane, 1), sampling=sampling)
    dist = dist[tuple(slice(1, -1) for _ in plane.shape)]
    peaks = peak_local_max(dist, min_distance=min_distance, labels=plane.astype(np.int32), exclude_border=False)
    if len(peaks) <= 1:
        return mask.astype(np.uint32), 1
    markers = np.zeros(plane.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    pieces = watershed(-dist, markers, mask=plane, connectivity=sk_conn).astype(np.uint32)
    return (pieces[None] if mode == "2d" else pieces), len(peaks)


def _distance(
    mask: np.ndarray, lo, labels: Any, target: int, spacing, mode: str, shape, present: np.ndarray
) -> float:
    """Smallest distance between centres of the object's voxels and voxels of class ``target``.

    The bounding box is grown by a margin of ``R`` (physical) along every axis
    until the nearest target voxel found lies within ``R``: any closer target
    voxel would then be inside the grown box, so the answer is exact. ``nan``
    when the class is absent (from the volume, or from the slice in 2-D mode).
    """
    from scipy import ndimage

    z0 = int(lo[0])
    if (mode == "2d" and not present[z0]) or (mode == "3d" and not present.any()):
        return math.nan
    axes = (1, 2) if mode == "2d" else (0, 1, 2)
    hi = [int(l) + int(s) for l, s in zip(lo, mask.shape)]
    radius = _DISTANCE_START_VOXELS * max(spacing[a] for a in axes)
    while True:
        glo, ghi = list(lo), list(hi)
        for a in axes:
            m = math.ceil(radius / spacing[a])
            glo[a], ghi[a] = max(0, int(lo[a]) - m), min(int(shape[a]), int(hi[a]) + m)
        whole = all(glo[a] == 0 and ghi[a] == int(shape[a]) for a in axes)
        target_mask = _crop(labels, glo, ghi) == target
        if target_mask.any():
            inner = tuple(slice(int(l) - g, int(l) - g + s) for l, g, s in zip(lo, glo, mask.shape))
            if mode == "2d":
                edt = ndimage.distance_transform_edt(~target_mask[0], sampling=spacing[1:])[None]
            else:
                edt = ndimage.distance_transform_edt(~target_mask, sampling=spacing)
            found = float(edt[inner][mask].min())
            if found <= radius or whole:
                return found
        elif whole:
            return math.nan
        radius *= 4


# --------------------------------------------------------------------------- table


def _rows_from_moments(
    m: dict[str, np.ndarray], spacing: tuple[float, float, float], mode: str, with_image: bool
) -> dict[str, np.ndarray]:
    """Columns computed from additive moments (one entry per object)."""
    s = m["sums"]
    n = s[:, _N]
    sz, sy, sx = spacing
    out: dict[str, np.ndarray] = {"voxel_count": n.astype(np.int64)}
    if mode == "2d":
        out["area"] = n * sy * sx
    else:
        out["volume"] = n * sz * sy * sx
    for i, axis in enumerate("zyx"):
        out[f"bbox_{axis}0"] = m["lo"][:, i]
    for i, axis in enumerate("zyx"):
        out[f"bbox_{axis}1"] = m["hi"][:, i]
    mean = np.stack([s[:, _Z], s[:, _Y], s[:, _X]], axis=1) / n[:, None]
    for i, axis in enumerate("zyx"):
        out[f"centroid_{axis}"] = mean[:, i]
    for i, axis in enumerate("zyx"):
        out[f"centroid_{axis}_physical"] = mean[:, i] * spacing[i]
    # Covariance of the solid made of the voxel boxes (each box adds s^2/12 per axis), physical units.
    index = {(0, 0): _ZZ, (1, 1): _YY, (2, 2): _XX, (0, 1): _ZY, (0, 2): _ZX, (1, 2): _YX}
    cov = np.zeros((len(n), 3, 3))
    for (a, b), column in index.items():
        value = (s[:, column] / n - mean[:, a] * mean[:, b]) * spacing[a] * spacing[b]
        cov[:, a, b] = cov[:, b, a] = value
    cov += np.diag(np.asarray(spacing) ** 2 / 12.0)
    if mode == "2d":
        eig = np.linalg.eigvalsh(cov[:, 1:, 1:])[:, ::-1] if len(n) else np.zeros((0, 2))
        lengths = 4.0 * np.sqrt(np.clip(eig, 0, None))  # ellipse with the same second moments
        out["axis_major_length"], out["axis_minor_length"] = lengths[:, 0], lengths[:, 1]
        out["equivalent_diameter"] = np.sqrt(4.0 * out["area"] / np.pi)
    else:
        eig = np.linalg.eigvalsh(cov)[:, ::-1] if len(n) else np.zeros((0, 3))
        lengths = np.sqrt(20.0 * np.clip(eig, 0, None))  # ellipsoid with the same second moments
        out["axis_major_length"], out["axis_middle_length"] = lengths[:, 0], lengths[:, 1]
        out["axis_minor_length"] = lengths[:, 2]
        out["equivalent_diameter"] = np.cbrt(6.0 * out["volume"] / np.pi)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["elongation"] = lengths[:, 0] / lengths[:, -1]
    if with_image:
        out["mean_intensity"] = s[:, _I] / n
        out["std_intensity"] = np.sqrt(np.clip(s[:, _II] / n - out["mean_intensity"] ** 2, 0, None))
    return out


