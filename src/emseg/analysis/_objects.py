"""Objects of a semantic label volume: connected components and their morphometrics.

:func:`measure_objects` turns a ``(Z, Y, X)`` label image (one integer per
class) into a table with one row per object (connected component of one
class): size, surface, bounding box, centroid, principal axes, intensity and
distances to other classes. It works the same way in memory and block by
block, so volumes larger than memory (zarr, HDF5, memory-mapped TIFF) give the
same table as a NumPy array::

    from emseg.analysis import measure_objects, write_table   # write_table: emseg.io's

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
from typing import Any

import numpy as np

from emseg._progress import progress_bar
from emseg.analysis._components import (
    _CONNECTIVITY,
    _block_grid,
    _ClassState,
    _concat,
    _face_pairs,
    _label,
    _merge,
    _moments,
    _offsets,
    _values,
)
from emseg.analysis._morphometry import _crop, _distance, _own_mask, _rows_from_moments, _split, _surface
from emseg.io import normalize_voxel_size, open_image, positive_tuple

logger = logging.getLogger(__name__)

__all__ = ["measure_objects"]

#: Lazy arrays up to this many voxels are read whole when no ``block_shape`` is given.
_IN_MEMORY_VOXELS = 1 << 27

#: Block shape used for lazy arrays larger than :data:`_IN_MEMORY_VOXELS`.
_DEFAULT_BLOCK = (64, 512, 512)



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
    return positive_tuple(block_shape, name="block_shape", count=3)  # type: ignore[return-value]


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
