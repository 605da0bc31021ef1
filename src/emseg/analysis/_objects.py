"""Objects of a semantic label volume: connected components and their morphometrics.

:func:`measure_objects` turns a ``(Z, Y, X)`` label image (one integer per
class) into a table with one row per object (connected component of one
class): size, surface, bounding box, centroid, principal axes, intensity and
distances to other classes. It works the same way in memory and block by
block, so volumes larger than memory (zarr, HDF5, memory-mapped TIFF) give the
same table as a NumPy array::

    from emseg.analysis import measure_objects, write_table

    table = measure_objects("labels.zarr", image="raw.zarr", voxel_size=(5, 5, 5),
                            classes=["bg", "membrane", "mito"], class_ids=[2],
                            distance_to={"mito": "membrane"})
    write_table(table, ["objects.parquet", "objects.csv"])

How it works, in two passes:

1. **Blocks.** Each block is read, each class is labelled with ``cc3d``
   (connected-components-3d) and every fragment is summarised by additive
   moments: voxel count, sums of coordinates, of their squares and
   cross-products, of intensities and of their squares, bounding box and the
   first voxel in raster order. Fragments that touch across a block face
   (under the requested connectivity, including edge and corner neighbours
   for 18/26 and 8) are joined with a union-find, and their moments added.
   In memory the whole volume is one block, so both ways share every line.
2. **Objects.** Quantities that are not additive are computed per object on
   a crop of its bounding box (memory bounded by the object's size, not the
   volume's): the surface area (marching cubes, or marching squares for the
   perimeter in 2-D mode), the watershed split of touching objects, and the
   distance to another class (on the bounding box grown until the nearest
   voxel of that class is provably inside it).

Memory in blockwise mode: one block of labels (plus image), the boundary
planes of every block for each class (about ``4 bytes x 2 x voxels x
(1/bz + 1/by + 1/bx)``, only planes holding an object are kept), and the
moments of every fragment.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emseg._progress import progress_bar
from emseg.io import normalize_voxel_size, open_image, remove_path, temporary_sibling

logger = logging.getLogger(__name__)

__all__ = ["measure_objects", "write_table"]

#: Lazy arrays up to this many voxels are read whole when no ``block_shape`` is given.
_IN_MEMORY_VOXELS = 1 << 27

#: Block shape used for lazy arrays larger than :data:`_IN_MEMORY_VOXELS`.
_DEFAULT_BLOCK = (64, 512, 512)

#: First search radius for ``distance_to``, in units of the largest voxel size.
_DISTANCE_START_VOXELS = 16

_CONNECTIVITY = {"3d": (6, 18, 26), "2d": (4, 8)}

# Additive moments per fragment, in this column order of the moment matrix.
_SUMS = ("n", "z", "y", "x", "zz", "yy", "xx", "zy", "zx", "yx", "i", "ii")
_N, _Z, _Y, _X, _ZZ, _YY, _XX, _ZY, _ZX, _YX, _I, _II = range(len(_SUMS))


# --------------------------------------------------------------------------- inputs


def _open(data: Any, name: str) -> tuple[Any, Any]:
    """Return ``(array, closer)``: a 3-D ``(Z, Y, X)`` array-like and a close function (or None)."""
    if isinstance(data, (str, os.PathLike)):
        image = open_image(data)
        return image.array, image.close
    if not (hasattr(data, "shape") and hasattr(data, "__getitem__")):
        data = np.asarray(data)
    if len(data.shape) == 2:
        data = np.asarray(data)[None]
    if len(data.shape) != 3:
        raise ValueError(f"{name} must be a (Z, Y, X) or (Y, X) array or a path; got shape {tuple(data.shape)}")
    return data, None


def _check_voxel_size(voxel_size: Any) -> tuple[float, float, float]:
    value = normalize_voxel_size(voxel_size)
    return value if value is not None else (1.0, 1.0, 1.0)


def _check_mode(mode: str, connectivity: int) -> None:
    if mode not in _CONNECTIVITY:
        raise ValueError(f"mode must be '3d' or '2d'; got {mode!r}")
    if connectivity not in _CONNECTIVITY[mode]:
        raise ValueError(
            f"connectivity for mode {mode!r} must be one of {_CONNECTIVITY[mode]}; got {connectivity!r}"
        )


def _class_name(classes: Sequence[str] | None, class_id: int) -> str:
    if classes is not None and 0 <= class_id < len(classes):
        return str(classes[class_id])
    return f"class_{class_id}"


def _resolve_class(classes: Sequence[str] | None, name: Any, what: str) -> int:
    """Class id for a name (or an int / ``class_i``); ValueError listing the names otherwise."""
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        return int(name)
    if classes is not None and name in list(classes):
        return list(classes).index(name)
    match = re.fullmatch(r"class_(\d+)", str(name))
    if match:
        return int(match.group(1))
    known = ", ".join(map(str, classes)) if classes is not None else "class_<i>"
    raise ValueError(f"{what}: unknown class {name!r}; expected one of: {known}")


def _column_suffix(name: str) -> str:
    return re.sub(r"\W+", "_", str(name)).strip("_") or "class"


def _check_block_shape(block_shape: Any) -> tuple[int, int, int] | None:
    if block_shape is None:
        return None
    try:
        out = tuple(int(b) for b in block_shape)
    except (TypeError, ValueError):
        raise ValueError(f"block_shape must be None or three positive ints (z, y, x); got {block_shape!r}") from None
    if len(out) != 3 or any(b < 1 for b in out):
        raise ValueError(f"block_shape must be None or three positive ints (z, y, x); got {block_shape!r}")
    return out  # type: ignore[return-value]


# --------------------------------------------------------------------------- neighbourhoods


def _offsets(mode: str, connectivity: int) -> list[tuple[int, int, int]]:
    """Neighbour offsets ``(dz, dy, dx)`` of one voxel under ``connectivity``."""
    out = []
    for o in itertools.product((-1, 0, 1), repeat=3):
        taxicab = sum(abs(v) for v in o)
        if taxicab == 0:
            continue
        if mode == "2d":
            if o[0] != 0 or taxicab > (1 if connectivity == 4 else 2):
                continue
        elif taxicab > {6: 1, 18: 2, 26: 3}[connectivity]:
            continue
        out.append(o)
    return out


def _label(mask: np.ndarray, mode: str, connectivity: int) -> tuple[np.ndarray, int]:
    """Connected components of a 3-D mask with cc3d; 2-D mode labels each z-slice on its own."""
    if mode == "3d":
        return _cc(mask, connectivity)
    cc = np.zeros(mask.shape, np.uint32)
    n = 0
    for z in range(mask.shape[0]):
        if not mask[z].any():
            continue
        # A (1, Y, X) array with 6/18 is 4/8-connectivity in the plane; cc3d 4.1.1 mislabels some
        # plain 2-D arrays with connectivity=8 (labels on background pixels), so 2-D input is avoided.
        lab, k = _cc(mask[z:z + 1], 6 if connectivity == 4 else 18)
        cc[z] = np.where(lab[0] > 0, lab[0] + np.uint32(n), 0)
        n += k
    return cc, n


def _cc(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    # cc3d 4.1.1 raises "maximum length exception" for connectivity=26 on arrays with two axes of
    # length 1; with any axis of length 1 there are no 3-axis diagonals, so 18 is the same thing.
    if connectivity == 26 and 1 in mask.shape:
        connectivity = 18
    cc, n = _cc3d().connected_components(
        np.ascontiguousarray(mask), connectivity=connectivity, return_N=True, out_dtype=np.uint32
    )
    return cc, int(n)


def _values(data: np.ndarray) -> np.ndarray:
    """Distinct values of an integer array (bincount for small dtypes, which is faster than sorting)."""
    if data.dtype.kind in "bu" and data.dtype.itemsize <= 2:
        return np.flatnonzero(np.bincount(data.ravel().astype(np.intp)))
    return np.unique(data)


def _cc3d():
    try:
        import cc3d
    except ImportError as err:  # pragma: no cover - a required dependency
        raise ImportError("emseg.analysis needs connected-components-3d: pip install connected-components-3d") from err
    return cc3d


# --------------------------------------------------------------------------- moments


def _moments(
    cc: np.ndarray, n: int, origin: Sequence[int], shape: Sequence[int], image: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Additive moments of labels ``1..n`` of ``cc`` (a crop at ``origin`` of a volume of ``shape``).

    Returns arrays of length ``n``: ``sums (n, 12)`` float64 (coordinates are
    integers, exact up to 2**53), ``lo``/``hi`` ``(n, 3)`` bounding box in
    volume coordinates (end exclusive) and ``first`` (raster index of the
    first voxel, a deterministic representative).
    """
    from scipy import ndimage

    flat = np.flatnonzero(cc)
    lab = cc.ravel()[flat].astype(np.intp) - 1
    coords = [c + int(o) for c, o in zip(np.unravel_index(flat, cc.shape), origin)]
    z, y, x = (c.astype(np.float64) for c in coords)
    sums = np.zeros((n, len(_SUMS)))
    weights = {_N: None, _Z: z, _Y: y, _X: x, _ZZ: z * z, _YY: y * y, _XX: x * x, _ZY: z * y, _ZX: z * x, _YX: y * x}
    if image is not None:
        values = np.asarray(image, dtype=np.float64).ravel()[flat]
        weights[_I] = values
        weights[_II] = values * values
    for column, w in weights.items():
        sums[:, column] = np.bincount(lab, weights=w, minlength=n)
    slices = ndimage.find_objects(cc, max_label=n)
    lo = np.array([[s.start + int(o) for s, o in zip(sl, origin)] for sl in slices], np.int64).reshape(n, 3)
    hi = np.array([[s.stop + int(o) for s, o in zip(sl, origin)] for sl in slices], np.int64).reshape(n, 3)
    first = np.full(n, np.iinfo(np.int64).max, np.int64)
    raster = np.ravel_multi_index(tuple(coords), tuple(int(s) for s in shape))
    np.minimum.at(first, lab, raster)
    return {"sums": sums, "lo": lo, "hi": hi, "first": first}


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not parts:
        return {"sums": np.zeros((0, len(_SUMS))), "lo": np.zeros((0, 3), np.int64),
                "hi": np.zeros((0, 3), np.int64), "first": np.zeros(0, np.int64)}
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


# --------------------------------------------------------------------------- union-find


class _UnionFind:
    """Union-find over ids ``0..n-1`` (path halving, union by index)."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return int(a)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> np.ndarray:
        parent = self.parent
        while True:
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                return parent
            parent = nxt


@dataclass
class _ClassState:
    """Fragments of one class gathered over the blocks."""

    parts: list[dict[str, np.ndarray]] = field(default_factory=list)
    count: int = 0  # fragments so far; fragment ids are 1..count (0 is background)
    # (block index, axis, "lo"|"hi") -> (local labels of that boundary plane, id offset)
    faces: dict[tuple[tuple[int, int, int], int, str], tuple[np.ndarray, int]] = field(default_factory=dict)


def _block_grid(shape: Sequence[int], block: Sequence[int]) -> list[list[int]]:
    return [list(range(0, int(s), int(b))) for s, b in zip(shape, block)]


def _face_pairs(state: _ClassState, grid: list[list[int]], offsets: list[tuple[int, int, int]]) -> np.ndarray:
    """``(k, 2)`` fragment ids (1-based) that touch across block faces under ``offsets``."""
    pairs = []
    counts = [len(g) for g in grid]
    for gidx in itertools.product(*(range(c) for c in counts)):
        for axis in range(3):
            if gidx[axis] == 0:
                continue
            upper = state.faces.get((gidx, axis, "lo"))
            if upper is None:
                continue
            up_local, up_offset = upper
            up = np.where(up_local > 0, up_local.astype(np.int64) + up_offset, 0)
            other = [a for a in range(3) if a != axis]
            hp, hq = up.shape
            lower = np.zeros((hp + 2, hq + 2), np.int64)
            for dp, dq in itertools.product((-1, 0, 1), repeat=2):
                nidx = list(gidx)
                nidx[axis] -= 1
                nidx[other[0]] += dp
                nidx[other[1]] += dq
                if not all(0 <= v < c for v, c in zip(nidx, counts)):
                    continue
                face = state.faces.get((tuple(nidx), axis, "hi"))
                if face is None:
                    continue
                local, offset = face
                glob = np.where(local > 0, local.astype(np.int64) + offset, 0)
                src_p = slice(-1, None) if dp == -1 else (slice(0, 1) if dp == 1 else slice(None))
                src_q = slice(-1, None) if dq == -1 else (slice(0, 1) if dq == 1 else slice(None))
                dst_p = slice(0, 1) if dp == -1 else (slice(hp + 1, hp + 2) if dp == 1 else slice(1, hp + 1))
                dst_q = slice(0, 1) if dq == -1 else (slice(hq + 1, hq + 2) if dq == 1 else slice(1, hq + 1))
                lower[dst_p, dst_q] = glob[src_p, src_q]
            for o in offsets:
                if o[axis] != 1:
                    continue
                # the lower neighbour of the upper voxel u is u - o
                op, oq = o[other[0]], o[other[1]]
                below = lower[1 - op: 1 - op + hp, 1 - oq: 1 - oq + hq]
                hit = (up > 0) & (below > 0)
                if hit.any():
                    pairs.append(np.stack([up[hit], below[hit]], axis=1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(pairs), axis=0)


def _merge(state: _ClassState, pairs: np.ndarray) -> dict[str, np.ndarray]:
    """Join fragments linked by ``pairs`` and add up their moments."""
    frags = _concat(state.parts)
    if len(pairs) == 0:
        return frags
    uf = _UnionFind(state.count)
    for a, b in pairs:
        uf.union(int(a) - 1, int(b) - 1)
    _, group = np.unique(uf.roots(), return_inverse=True)
    k = int(group.max()) + 1 if group.size else 0
    sums = np.zeros((k, len(_SUMS)))
    for column in range(len(_SUMS)):
        sums[:, column] = np.bincount(group, weights=frags["sums"][:, column], minlength=k)
    lo = np.full((k, 3), np.iinfo(np.int64).max, np.int64)
    hi = np.full((k, 3), np.iinfo(np.int64).min, np.int64)
    first = np.full(k, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(lo, group, frags["lo"])
    np.maximum.at(hi, group, frags["hi"])
    np.minimum.at(first, group, frags["first"])
    logger.debug("merged %d fragments into %d objects across block faces", state.count, k)
    return {"sums": sums, "lo": lo, "hi": hi, "first": first}


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


_COLUMN_ORDER = (
    "object_id", "class_id", "class_name", "z", "voxel_count", "volume", "area", "surface_area", "perimeter",
    "bbox_z0", "bbox_y0", "bbox_x0", "bbox_z1", "bbox_y1", "bbox_x1",
    "centroid_z", "centroid_y", "centroid_x", "centroid_z_physical", "centroid_y_physical", "centroid_x_physical",
    "axis_major_length", "axis_middle_length", "axis_minor_length", "elongation", "equivalent_diameter",
    "mean_intensity", "std_intensity",
)


def measure_objects(
    labels: Any,
    *,
    image: Any = None,
    voxel_size: Sequence[float] | None = (1.0, 1.0, 1.0),
    classes: Sequence[str] | None = None,
    class_ids: Iterable[int] | None = None,
    connectivity: int | None = None,
    mode: str = "3d",
    split_touching: bool = False,
    min_distance: int = 5,
    distance_to: Mapping[str, str] | None = None,
    block_shape: Sequence[int] | None = None,
    progress: bool = False,
) -> Any:
    """One row per object (connected component of one class) with its morphometrics.

    Args:
        labels: semantic labels ``(Z, Y, X)`` or ``(Y, X)``, integer (one value
            per class): a NumPy array, a lazy array (zarr, h5py, memmap) or a
            path for :func:`emseg.io.open_image`.
        image: raw intensities of the same shape (array or path) for
            ``mean_intensity`` / ``std_intensity``; optional.
        voxel_size: ``(z, y, x)`` size of a voxel (nm for EM); physical columns
            are in these units (nm, nm^2, nm^3). ``None`` means ``(1, 1, 1)``.
        classes: class names, ``classes[i]`` naming label value ``i``;
            default ``"class_<i>"``.
        class_ids: label values to measure; default every non-zero value
            present (or ``1..len(classes)-1`` when ``classes`` is given).
        connectivity: neighbourhood joining voxels into an object: 6, 18 or 26
            in 3-D mode (default 26), 4 or 8 in 2-D mode (default 8).
        mode: ``"3d"``: objects are 3-D components; ``"2d"``: components of
            each z-slice separately (for stacks of non-contiguous sections);
            the slice is then part of the object (column ``z``), sizes are
            areas (``area``, nm^2) and perimeters (``perimeter``, nm).
        split_touching: split objects by a watershed of their distance
            transform (seeds: maxima at least ``min_distance`` voxels apart).
            Done per connected component, on its bounding box.
        min_distance: smallest distance in voxels between two watershed seeds.
        distance_to: ``{object class: other class}`` by name, e.g.
            ``{"mitochondrion": "membrane"}``: adds ``distance_to_<other>`` to
            the rows of the object class: the smallest Euclidean distance
            (physical, ``distance_transform_edt`` with ``sampling=voxel_size``)
            between the centre of one of its voxels and the centre of a voxel
            of the other class. Two cubes with a gap of 5 voxels along x are
            therefore ``6 * voxel_size[2]`` apart. In 2-D mode the distance is
            within the object's slice. ``nan`` when the other class is absent.
        block_shape: ``(z, y, x)`` block size for blockwise processing; default
            the whole volume for NumPy arrays and lazy arrays up to 2**27
            voxels, ``(64, 512, 512)`` beyond. The table is the same either way
            (up to floating-point summation order).
        progress: show a progress bar (on a terminal only).

    Returns:
        A ``pandas.DataFrame`` sorted by class, then by the object's first
        voxel in raster (z, y, x) order, with columns ``object_id`` (1..N),
        ``class_id``, ``class_name``, [``z`` in 2-D mode], ``voxel_count``,
        ``volume`` (3-D) or ``area`` (2-D), ``surface_area`` (3-D: marching
        cubes on the zero-padded object mask with ``spacing=voxel_size`` and
        ``mesh_surface_area``; it cuts the corners, so a cube of side L gets
        somewhat less than 6 L^2) or ``perimeter`` (2-D: marching squares),
        ``bbox_{z,y,x}{0,1}`` (voxel indices, end exclusive),
        ``centroid_{z,y,x}`` (voxels) and ``centroid_{z,y,x}_physical``,
        ``axis_major_length``, [``axis_middle_length``], ``axis_minor_length``
        (full axes of the ellipsoid, or ellipse in 2-D, with the same second
        moments as the object seen as a solid of voxel boxes; physical),
        ``elongation`` (major / minor), ``equivalent_diameter`` (sphere of the
        same volume, or circle of the same area; physical), and when asked
        ``mean_intensity``, ``std_intensity`` (population) and
        ``distance_to_<class>``. ``df.attrs`` holds ``voxel_size``, ``mode``
        and ``connectivity``.

    Raises:
        ValueError: bad shapes, mode, connectivity, voxel size, block shape or
            class names, non-integer labels, image of another shape.
    """
    import pandas as pd

    spacing = _check_voxel_size(voxel_size)
    connectivity = connectivity if connectivity is not None else (26 if mode == "3d" else 8)
    _check_mode(mode, connectivity)
    block_shape = _check_block_shape(block_shape)
    if not isinstance(min_distance, (int, np.integer)) or min_distance < 1:
        raise ValueError(f"min_distance must be a positive int (voxels); got {min_distance!r}")

    lab, close_labels = _open(labels, "labels")
    img, close_image = (None, None) if image is None else _open(image, "image")
    try:
        shape = tuple(int(s) for s in lab.shape)
        dtype = np.dtype(lab.dtype)
        if dtype.kind not in "biu":
            raise ValueError(f"labels must be integer class values; got dtype {dtype}")
        if img is not None and tuple(int(s) for s in img.shape) != shape:
            raise ValueError(f"image shape {tuple(img.shape)} differs from labels shape {shape}")
        wanted = None
        if class_ids is not None:
            wanted = sorted({int(c) for c in class_ids})
        elif classes is not None:
            wanted = list(range(1, len(classes)))
        distance_pairs: dict[int, list[tuple[int, str]]] = {}
        targets: set[int] = set()
        for key, value in (distance_to or {}).items():
            source = _resolve_class(classes, key, "distance_to")
            target = _resolve_class(classes, value, "distance_to")
            distance_pairs.setdefault(source, []).append((target, _column_suffix(_class_name(classes, target))))
            targets.add(target)

        in_memory = block_shape is None and (isinstance(lab, np.ndarray) or math.prod(shape) <= _IN_MEMORY_VOXELS)
        if in_memory:
            lab = np.asarray(lab)
            img = None if img is None else np.asarray(img)
            block = shape
        else:
            block = tuple(min(b, s) for b, s in zip(block_shape or _DEFAULT_BLOCK, shape))
        grid = _block_grid(shape, block)
        offsets = _offsets(mode, connectivity)
        states: dict[int, _ClassState] = {}
        present = {t: np.zeros(shape[0], bool) for t in targets}

        n_blocks = math.prod(len(g) for g in grid)
        with progress_bar("objects: blocks", total=n_blocks, unit="blocks", enabled=progress) as advance:
            for gidx in itertools.product(*(range(len(g)) for g in grid)):
                lo = [grid[a][gidx[a]] for a in range(3)]
                hi = [min(lo[a] + block[a], shape[a]) for a in range(3)]
                data = _crop(lab, lo, hi)
                image_block = None if img is None else _crop(img, lo, hi)
                for t in targets:
                    present[t][lo[0]:hi[0]] |= (data == t).any(axis=(1, 2))
                values = _values(data)
                for value in values:
                    value = int(value)
                    if value == 0 or (wanted is not None and value not in wanted):
                        continue
                    cc, n = _label(data == value, mode, connectivity)
                    if n == 0:
                        continue
                    state = states.setdefault(value, _ClassState())
                    state.parts.append(_moments(cc, n, lo, shape, image_block))
                    for axis in range(3):
                        if gidx[axis] > 0:
                            face = np.take(cc, 0, axis=axis)
                            if face.any():
                                state.faces[(gidx, axis, "lo")] = (face, state.count)
                        if gidx[axis] < len(grid[axis]) - 1:
                            face = np.take(cc, -1, axis=axis)
                            if face.any():
                                state.faces[(gidx, axis, "hi")] = (face, state.count)
                    state.count += n
                advance()

        tables = []
        objects = {c: _merge(st, _face_pairs(st, grid, offsets)) for c, st in sorted(states.items())}
        total = sum(len(m["first"]) for m in objects.values())
        with progress_bar("objects: shapes", total=total, unit="objects", enabled=progress) as advance:
            for class_id, merged in objects.items():
                table = _class_table(
                    class_id, merged, lab, img, shape, spacing, mode, connectivity, split_touching, min_distance,
                    distance_pairs.get(class_id, []), present, advance,
                )
                table.insert(0, "class_name", _class_name(classes, class_id))
                table.insert(0, "class_id", class_id)
                tables.append(table)
        if tables:
            df = pd.concat(tables, ignore_index=True)
        else:
            df = pd.DataFrame(_rows_from_moments(_concat([]), spacing, mode, img is not None))
            df.insert(0, "class_name", pd.Series(dtype=str))
            df.insert(0, "class_id", pd.Series(dtype=np.int64))
            df["surface_area" if mode == "3d" else "perimeter"] = pd.Series(dtype=np.float64)
            df["first"] = pd.Series(dtype=np.int64)
            if mode == "2d":
                df["z"] = pd.Series(dtype=np.int64)
            for pairs in distance_pairs.values():
                for _, suffix in pairs:
                    df[f"distance_to_{suffix}"] = pd.Series(dtype=np.float64)
        df = df.sort_values(["class_id", "first"], kind="stable").drop(columns="first").reset_index(drop=True)
        df.insert(0, "object_id", np.arange(1, len(df) + 1, dtype=np.int64))
        order = [c for c in _COLUMN_ORDER if c in df.columns]
        df = df[order + [c for c in df.columns if c not in order]]
        df.attrs.update({"voxel_size": list(spacing), "mode": mode, "connectivity": connectivity})
        logger.info("%d objects in %d classes (%s mode, connectivity %d)", len(df), len(objects), mode, connectivity)
        return df
    finally:
        for closer in (close_labels, close_image):
            if closer is not None:
                closer()


def _class_table(
    class_id: int, merged: dict[str, np.ndarray], lab: Any, img: Any, shape, spacing, mode: str,
    connectivity: int, split_touching: bool, min_distance: int, distance_pairs: list[tuple[int, str]],
    present: dict[int, np.ndarray], advance,
) -> Any:
    """Rows of one class: per-object crops for surface, split and distances, then moment columns."""
    import pandas as pd

    parts: list[dict[str, np.ndarray]] = []
    surfaces: list[float] = []
    distances: dict[str, list[float]] = {suffix: [] for _, suffix in distance_pairs}
    for i in range(len(merged["first"])):
        lo, hi, first = merged["lo"][i], merged["hi"][i], int(merged["first"][i])
        mask = _own_mask(lab, class_id, lo, hi, first, shape, mode, connectivity)
        if split_touching:
            pieces, k = _split(mask, spacing, mode, connectivity, min_distance)
        else:
            pieces, k = None, 1
        if k == 1:
            piece_masks = [mask]
            parts.append({key: value[i:i + 1] for key, value in merged.items()})
        else:
            image_crop = None if img is None else _crop(img, lo, hi)
            parts.append(_moments(pieces, k, lo, shape, image_crop))
            piece_masks = [pieces == j for j in range(1, k + 1)]
        for piece in piece_masks:
            # crop each piece to its own bounding box before the surface / distance work
            nz = np.nonzero(piece)
            plo = [int(c.min()) for c in nz]
            phi = [int(c.max()) + 1 for c in nz]
            sub = piece[plo[0]:phi[0], plo[1]:phi[1], plo[2]:phi[2]]
            surfaces.append(_surface(sub, spacing, mode))
            origin = [int(l) + p for l, p in zip(lo, plo)]
            for target, suffix in distance_pairs:
                distances[suffix].append(_distance(sub, origin, lab, target, spacing, mode, shape, present[target]))
        advance()
    moments = _concat(parts)
    columns = _rows_from_moments(moments, spacing, mode, img is not None)
    table = pd.DataFrame(columns)
    table["surface_area" if mode == "3d" else "perimeter"] = np.asarray(surfaces, np.float64)
    if mode == "2d":
        table["z"] = moments["lo"][:, 0]
    for suffix, values in distances.items():
        table[f"distance_to_{suffix}"] = np.asarray(values, np.float64)
    table["first"] = moments["first"]
    return table


def write_table(df: Any, path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Write a table to ``.parquet`` and/or ``.csv`` atomically (one file per path given).

    Every file is first written under a hidden temporary name next to it; only
    when all of them are complete are they renamed into place, so a failure
    (a full disk, say) leaves none of the tables, only the previous files.

    Args:
        df: a ``pandas.DataFrame``.
        path: one path or a list of paths; the suffix picks the format.

    Returns:
        The paths written.

    Raises:
        ValueError: a suffix other than ``.parquet`` or ``.csv``.
        OSError: a table could not be written (the message names it); nothing was written.
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    for p in paths:
        if os.fspath(p).lower().rsplit(".", 1)[-1] not in ("parquet", "csv"):
            raise ValueError(f"{os.fspath(p)}: table files must end in .parquet or .csv")
    staged: list[tuple[Path, Path]] = []
    try:
        for p in paths:
            final = Path(p)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = temporary_sibling(final)
            staged.append((tmp, final))
            try:
                if final.suffix.lower() == ".parquet":
                    df.to_parquet(tmp, index=False)
                else:
                    df.to_csv(tmp, index=False)
            except OSError as err:
                failure = OSError(f"could not write the table {final}: {err.strerror or err}. Free some space "
                                  "or choose another --out folder; no table was written")
                failure.errno = err.errno
                raise failure from None
        for tmp, final in staged:
            os.replace(tmp, final)
    except BaseException:
        for tmp, _ in staged:
            remove_path(tmp)
        raise
    return [os.fspath(p) for p in paths]
