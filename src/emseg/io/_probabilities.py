"""Probability-map files: one channel (TIFF) or one float array (zarr, HDF5) per class.

Written by ``emseg predict --probabilities``; read back by the napari plugin and anything else that
wants the maps by class name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_output
from ._ome_zarr import multiscales
from ._registry import open_image, write_image

__all__ = ["probabilities_format", "read_class_probabilities", "read_probabilities", "write_probabilities"]

_CONTAINERS = (".zarr", ".h5", ".hdf5", ".hdf")


def probabilities_format(path: str | os.PathLike) -> str:
    """``"tiff"``, ``"zarr"`` or ``"hdf5"``: the container of a probabilities path, from its suffix.

    Raises:
        ValueError: any other suffix.
    """
    text = os.fspath(path).lower()
    if text.endswith((".tif", ".tiff")):
        return "tiff"
    if text.endswith(".zarr"):
        return "zarr"
    if text.endswith((".h5", ".hdf5", ".hdf")):
        return "hdf5"
    raise ValueError(f"--probabilities {os.fspath(path)}: use a .tif, .zarr or .h5 path (one channel/array per class)")


def write_probabilities(path: str | os.PathLike, probs: np.ndarray, classes: list[str], *, is_2d: bool, overwrite: bool) -> None:
    """Write ``(K, Z, Y, X)`` probabilities atomically, one channel per class.

    ``.tif``: an ImageJ hyperstack ``(Z, C, Y, X)`` (Fiji shows one channel per
    class); ``.zarr`` / ``.h5``: one array per class name inside the container.
    """
    import tifffile

    path = Path(path)
    kind = probabilities_format(path)
    if kind == "tiff":
        with atomic_output(path, overwrite=overwrite) as tmp:
            tifffile.imwrite(
                tmp, np.ascontiguousarray(probs.transpose(1, 0, 2, 3)), imagej=True,
                metadata={"axes": "ZCYX", "Labels": list(classes)}, compression="zlib",
            )
        return
    inner = "{tmp}/{name}" if kind == "zarr" else "{tmp}:{name}"
    with atomic_output(path, overwrite=overwrite) as tmp:
        for k, name in enumerate(classes):
            write_image(inner.format(tmp=tmp, name=name), probs[k, 0] if is_2d else probs[k])


def read_probabilities(path: str | os.PathLike) -> dict[str, Any] | None:
    """``{class: (Z, Y, X) or (Y, X) array}`` of a probabilities file, or None if ``path`` is not one.

    TIFF: the channels of an ImageJ ``ZCYX`` float hyperstack with class ``Labels``, in memory.
    ``.zarr`` / ``.h5``: the container's top-level arrays, at least two, all float and of one shape, sorted
    by name (a container keeps no order), kept open and read lazily.
    """
    text = os.fspath(path).rstrip("/\\")
    low = text.lower()
    p = Path(text)
    if low.endswith((".tif", ".tiff")) and p.is_file():
        return _tiff_probabilities(p)
    if not low.endswith(_CONTAINERS) or not p.exists():
        return None
    try:
        arrays = _container_arrays(p)
    except Exception:  # noqa: BLE001 - not a container we understand: not a probabilities file
        return None
    if len(arrays) < 2 or not all(np.issubdtype(a.dtype, np.floating) for a in arrays.values()):
        return None
    if len({tuple(a.shape) for a in arrays.values()}) != 1:
        return None
    return arrays


def read_class_probabilities(path: str | os.PathLike, classes: list[str]) -> np.ndarray:
    """``(K, Z, Y, X)`` float32 probabilities of ``classes``, in that order, from a file written by
    ``emseg predict --probabilities`` (:func:`write_probabilities`).

    ``.tif``: the ImageJ ``(Z, C, Y, X)`` hyperstack (or ``(C, Y, X)`` for one
    slice); ``.zarr`` / ``.h5``: one array per class name inside the container.

    Raises:
        ValueError: the file does not hold one channel per class.
    """
    k = len(classes)
    text = str(path)
    if text.lower().endswith((".tif", ".tiff")):
        import tifffile

        data = np.asarray(tifffile.imread(text), dtype=np.float32)
        if data.ndim == 4 and data.shape[1] == k:
            data = data.transpose(1, 0, 2, 3)
        elif data.ndim == 3 and data.shape[0] == k:
            data = data[:, None]
    else:
        sep = "/" if text.lower().endswith(".zarr") else ":"
        arrays = []
        for name in classes:
            with open_image(f"{text}{sep}{name}") as image:
                arrays.append(np.asarray(image.array, dtype=np.float32))
        data = np.stack(arrays)
    if data.ndim != 4 or data.shape[0] != k:
        raise ValueError(f"--probabilities {path}: expected {k} class channels (K, Z, Y, X) for classes {classes}; "
                         f"got shape {data.shape}")
    return data


def _container_arrays(path: Path) -> dict[str, Any]:
    """Top-level arrays of a zarr store or an HDF5 file, by name (kept open, read lazily)."""
    if path.suffix.lower() == ".zarr":
        import zarr

        root = zarr.open(str(path), mode="r")
        if isinstance(root, zarr.Array) or multiscales(root.attrs.asdict()) or root.attrs.get("ome"):
            return {}
        return {k: root[k] for k in sorted(root.array_keys())}
    import h5py

    f = h5py.File(path, "r")
    return {k: f[k] for k in sorted(f.keys()) if isinstance(f[k], h5py.Dataset)}


def _tiff_probabilities(path: Path) -> dict[str, Any] | None:
    """The channels of an ImageJ ``ZCYX`` float TIFF with class ``Labels`` (``emseg predict --probabilities``)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        meta = tif.imagej_metadata or {}
        series = tif.series[0]
        labels = meta.get("Labels")
        if not labels or "C" not in series.axes or not np.issubdtype(series.dtype, np.floating):
            return None
        data = series.asarray()
        axes = series.axes
    channels = int(data.shape[axes.index("C")])
    if isinstance(labels, str):
        labels = [labels]
    names = [str(n) for n in labels[:channels]]
    if len(names) != channels:
        return None
    moved = np.moveaxis(data, axes.index("C"), 0)
    return {n: moved[k] for k, n in enumerate(names)}
