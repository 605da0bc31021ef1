"""OME-Zarr (NGFF 0.4) multiscales and the chunked label stores that blockwise prediction writes.

The format-level half of blockwise prediction (:mod:`emseg.inference`): creating a labels store (a plain
zarr array, or an OME-Zarr group holding level ``0``) with its attributes, reading and updating those
attributes, opening its labels array, and adding the mode-downsampled levels and the ``multiscales``
metadata of a label pyramid. Reading: :func:`multiscales` finds the metadata of NGFF 0.4 and 0.5 groups.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["create_label_store", "downsample_mode", "multiscale_paths", "multiscales", "open_levels", "open_store_array",
           "pyramid_factors", "read_store_attrs", "update_store_attrs", "write_label_pyramid"]

#: zarr v2 chunk keys with ``/`` (nested folders), as NGFF 0.4 asks.
_V2_NESTED = {"name": "v2", "separator": "/"}


def multiscales(attrs: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The ``multiscales`` list of an OME-Zarr group's attributes (NGFF 0.4 at the top, 0.5 under ``ome``)."""
    return attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales") or None


def multiscale_paths(attrs: dict[str, Any]) -> list[str] | None:
    """Array paths of the first multiscale's levels, highest resolution first; None if not OME-Zarr."""
    found = multiscales(attrs)
    return [str(d["path"]) for d in found[0]["datasets"]] if found else None


def open_levels(store: str | os.PathLike) -> tuple[list[Any], bool]:
    """The arrays of a zarr store, read-only: ``([array], False)`` for an array at the root, else
    ``(levels, True)``, the levels of an OME-Zarr group highest resolution first (a group without
    ``multiscales``: its arrays by name)."""
    import zarr

    root = zarr.open(str(store), mode="r")
    if isinstance(root, zarr.Array):
        return [root], False
    paths = multiscale_paths(root.attrs.asdict()) or sorted(root.array_keys())
    return [root[p] for p in paths], True


def read_store_attrs(store: str | os.PathLike, key: str) -> dict[str, Any] | None:
    """The ``key`` attribute (a dict) of a local zarr store's root (format 2 or 3), or None.

    Read from the metadata files themselves (``zarr.json``, then ``.zattrs``; no zarr import): None if there
    is no store, no such attribute, or the metadata cannot be read or parsed.
    """
    root = Path(store)
    for name in ("zarr.json", ".zattrs"):
        meta = root / name
        if meta.is_file():
            try:
                data = json.loads(meta.read_text())
            except (OSError, ValueError):
                return None
            attrs = data.get("attributes", {}) if name == "zarr.json" else data
            found = attrs.get(key) if isinstance(attrs, dict) else None
            if isinstance(found, dict):
                return found
    return None


def update_store_attrs(store: str | os.PathLike, key: str, **changes: Any) -> None:
    """Merge ``changes`` into the ``key`` attribute of the store's root node."""
    import zarr

    node = zarr.open(store=str(store), mode="r+")
    value = dict(node.attrs.get(key, {}))
    value.update(changes)
    node.attrs[key] = value


def create_label_store(store: str | os.PathLike, *, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any,
                       attrs: dict[str, Any], ome: bool, zarr_format: int) -> str:
    """Create a zero-filled labels store carrying ``attrs``; returns the path of the labels array in it.

    ``ome``: an OME-Zarr group (zarr v2) with the array at level ``"0"`` (add the other levels with
    :func:`write_label_pyramid` once it is written); else one array at the store's root, zarr ``zarr_format``.
    """
    import zarr

    store = str(store)
    if ome:
        root = zarr.open_group(store=store, mode="w", zarr_format=2)
        root.attrs.update(attrs)
        zarr.create_array(store=store, name="0", shape=shape, chunks=chunks, dtype=dtype, zarr_format=2,
                          fill_value=0, chunk_key_encoding=_V2_NESTED, dimension_names=None)
        return "0"
    zarr.create_array(store=store, shape=shape, chunks=chunks, dtype=dtype, zarr_format=zarr_format,
                      fill_value=0, attributes=dict(attrs))
    return ""


def open_store_array(store: str | os.PathLike, path: str = "", *, mode: str = "r+") -> Any:
    """The :class:`zarr.Array` at ``path`` in ``store`` (``""``: the root array)."""
    import zarr

    return zarr.open_array(store=str(store), path=path or None, mode=mode)


def downsample_mode(labels: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Most frequent label in each ``factors`` box (ties: the smaller label); edges padded by replication."""
    pad = [(0, (-s) % f) for s, f in zip(labels.shape, factors)]
    if any(p for _, p in pad):
        labels = np.pad(labels, pad, mode="edge")
    shape = []
    for s, f in zip(labels.shape, factors):
        shape += [s // f, f]
    boxes = labels.reshape(shape)
    axes = tuple(range(1, 2 * len(factors), 2))
    best = np.zeros(tuple(s // f for s, f in zip(labels.shape, factors)), labels.dtype)
    best_count = np.full(best.shape, -1, np.int32)
    for value in np.unique(labels):
        count = (boxes == value).sum(axis=axes, dtype=np.int32)
        better = count > best_count
        best[better] = value
        best_count[better] = count[better]
    return best


def pyramid_factors(voxel_size: tuple[float, float, float] | None, is_2d: bool) -> tuple[int, ...]:
    """Downsampling factors per level: 2 in y and x, and in z too when voxels are (near) isotropic."""
    if is_2d:
        return (2, 2)
    iso = voxel_size is not None and voxel_size[0] <= 1.5 * min(voxel_size[1:])
    return (2 if iso else 1, 2, 2)


def write_label_pyramid(output: str | os.PathLike, *, voxel_size: tuple[float, float, float] | None, is_2d: bool,
                        chunks: tuple[int, ...], min_size: int = 32, max_levels: int = 8) -> list[tuple[int, ...]]:
    """Add levels ``1, 2, ...`` (mode-downsampled labels) and NGFF 0.4 ``multiscales`` to an OME-Zarr store.

    Levels are computed slab by slab (bounded memory).  Returns the level shapes.
    """
    import zarr

    factors = pyramid_factors(voxel_size, is_2d)
    root = zarr.open_group(store=str(output), mode="r+", zarr_format=2)
    level = root["0"]
    shapes = [tuple(level.shape)]
    while len(shapes) < max_levels:
        nxt = tuple(math.ceil(s / f) for s, f in zip(shapes[-1], factors))
        if min(nxt[-2:]) < min_size:
            break
        name = str(len(shapes))
        if name in root:
            del root[name]
        dst = zarr.create_array(store=str(output), name=name, shape=nxt, dtype=level.dtype, fill_value=0,
                                chunks=tuple(min(c, s) for c, s in zip(chunks, nxt)), zarr_format=2,
                                chunk_key_encoding=_V2_NESTED, overwrite=True)
        if is_2d:
            dst[...] = downsample_mode(np.asarray(level[...]), factors)
        else:
            step = max(factors[0], (max(1, chunks[0]) // factors[0]) * factors[0])
            for z0 in range(0, shapes[-1][0], step):
                src = np.asarray(level[z0:z0 + step])
                dst[z0 // factors[0]:(z0 // factors[0]) + math.ceil(src.shape[0] / factors[0])] = \
                    downsample_mode(src, factors)
        shapes.append(nxt)
        level = dst
    unit_scale = list(voxel_size) if voxel_size is not None else [1.0, 1.0, 1.0]
    names = ("y", "x") if is_2d else ("z", "y", "x")
    base = unit_scale[1:] if is_2d else unit_scale
    datasets = []
    for i in range(len(shapes)):
        scale = [float(b) * (f ** i) for b, f in zip(base, factors)]
        datasets.append({"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    axes = [{"name": n, "type": "space", **({"unit": "nanometer"} if voxel_size is not None else {})} for n in names]
    root.attrs["multiscales"] = [{
        "version": "0.4", "name": "labels", "axes": axes, "datasets": datasets, "type": "mode",
        "metadata": {"description": "emseg labels; level i+1 = most frequent label of each "
                                    f"{'x'.join(str(f) for f in factors)} box of level i"},
    }]
    return shapes
