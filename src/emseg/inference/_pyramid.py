"""OME-Zarr (NGFF 0.4) label pyramid of a finished blockwise prediction: mode-downsampled levels."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["downsample_mode", "pyramid_factors", "write_pyramid"]


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


def write_pyramid(output: Path, *, voxel_size: tuple[float, float, float] | None, is_2d: bool,
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
                                chunk_key_encoding={"name": "v2", "separator": "/"}, overwrite=True)
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
