"""napari reader: emseg's label outputs, probability files and every image format emseg reads.

What a path opens as:

- a ``.zarr`` labels store written by ``emseg predict`` / the Segment widget (``emseg`` attributes with the
  class names; OME-Zarr pyramids as multiscale): a **labels** layer with the class names as its features
  (napari's status bar shows the class under the cursor) and a fixed colour per class (:mod:`._colors`);
- probabilities (``emseg predict --probabilities``): an ImageJ ``ZCYX`` TIFF with class labels (in class
  order), or a ``.zarr`` / ``.h5`` holding one float array per class (sorted by name: a container keeps no
  order): one **image** layer per class;
- anything else :func:`emseg.io.open_image` reads (TIFF, PNG folders, HDF5, zarr, N5, MRC): an **image**
  layer; chunked formats stay lazy (dask arrays read chunk by chunk as napari displays them).

Everything returns napari layer-data tuples, so this module needs neither napari nor Qt.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from emseg.io import ImageFormatError, open_image
from emseg.napari._colors import class_colors

logger = logging.getLogger(__name__)

__all__ = ["emseg_labels_metadata", "napari_get_reader", "read_layers"]

LayerData = tuple[Any, dict[str, Any], str]

_PROBABILITY_CONTAINERS = (".zarr", ".h5", ".hdf5", ".hdf")


def napari_get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """napari's reader hook: :func:`read_layers` if emseg can open ``path``, else None (another reader's turn)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    text = os.fspath(path)
    if emseg_labels_metadata(text) is not None or _probability_arrays(text) is not None:
        return read_layers
    try:
        with open_image(text):
            pass
    except (ImageFormatError, FileNotFoundError, OSError, ValueError):
        return None
    return read_layers


def read_layers(path: str | list[str]) -> list[LayerData]:
    """The napari layers of ``path`` (see the module docstring)."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    text = os.fspath(path)
    name = Path(text.rstrip("/\\")).name
    meta = emseg_labels_metadata(text)
    if meta is not None:
        return [_labels_layer(text, meta, name)]
    probs = _probability_arrays(text)
    if probs is not None:
        colors = class_colors(list(probs))
        return [(array, {"name": f"{name} {cls}", "colormap": _colormap_name(colors.get(k)),
                         "blending": "additive", "contrast_limits": (0.0, 1.0), "visible": k == 1 or len(probs) == 1,
                         "metadata": {"emseg": {"probabilities": cls, "path": text}}}, "image")
                for k, (cls, array) in enumerate(probs.items())]
    return [image_layer(text)]


def image_layer(path: str) -> LayerData:
    """An image layer of any image emseg reads: arrays emseg reads lazily (zarr, HDF5, N5, large TIFF) as dask arrays."""
    data = open_image(path)
    array = data.array
    if not isinstance(array, np.ndarray):  # chunked formats and lazy readers: dask
        array = _lazy(array)
    else:
        data.close()
    if data.is_2d:
        array = array[0]
    scale = None
    if data.voxel_size is not None:
        scale = tuple(data.voxel_size[-array.ndim:])
    meta = {"name": Path(path.rstrip("/\\")).name, "metadata": {"emseg": {"path": path, "format": data.format,
                                                                           "is_2d": data.is_2d}}}
    if scale is not None:
        meta["scale"] = scale
    return array, meta, "image"


def _lazy(array: Any) -> Any:
    """A dask array reading ``array`` chunk by chunk (its own chunks, else one slice at a time)."""
    import dask.array as da

    chunks = getattr(array, "chunks", None)
    if not (isinstance(chunks, tuple) and len(chunks) == len(array.shape)
            and all(isinstance(c, (int, np.integer)) for c in chunks)):
        chunks = (1, *array.shape[1:])
    return da.from_array(array, chunks=chunks, asarray=True, fancy=False)


def emseg_labels_metadata(path: str) -> dict[str, Any] | None:
    """The ``emseg`` attributes (with ``classes``) of a labels ``.zarr`` store, or None if ``path`` is not one."""
    store = Path(path)
    if not store.is_dir() or not path.rstrip("/\\").lower().endswith(".zarr"):
        return None
    for name in ("zarr.json", ".zattrs"):
        file = store / name
        if file.is_file():
            try:
                data = json.loads(file.read_text())
            except (OSError, ValueError):
                return None
            attrs = data.get("attributes", {}) if name == "zarr.json" else data
            found = attrs.get("emseg") if isinstance(attrs, dict) else None
            if isinstance(found, dict) and isinstance(found.get("classes"), list):
                return found
    return None


def _labels_layer(path: str, meta: dict[str, Any], name: str) -> LayerData:
    import zarr

    classes = [str(c) for c in meta["classes"]]
    root = zarr.open(path, mode="r")
    if isinstance(root, zarr.Array):
        data: Any = _lazy(root)
    else:  # an OME-Zarr labels pyramid: every level, lazily, as napari multiscale data
        attrs = root.attrs.asdict()
        multiscales = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
        paths = [d["path"] for d in multiscales[0]["datasets"]] if multiscales else sorted(root.array_keys())
        data = [_lazy(root[p]) for p in paths]
    if meta.get("status") not in (None, "complete"):
        logger.warning("%s is an unfinished prediction (status %r): unpredicted blocks show as class %s",
                       path, meta.get("status"), classes[0])
    unsure = meta.get("unsure_label")
    layer_meta: dict[str, Any] = {
        "name": name,
        "colormap": class_colors(classes, override=meta.get("colors"), unsure=unsure),
        "features": {"class": classes},
        "metadata": {"emseg": {**meta, "path": path}},
    }
    voxel = meta.get("voxel_size")
    ndim = (data[0] if isinstance(data, list) else data).ndim
    if voxel:
        layer_meta["scale"] = tuple(float(v) for v in voxel[-ndim:])
    if isinstance(data, list):
        layer_meta["multiscale"] = True
    return data, layer_meta, "labels"


def _colormap_name(color: str | None) -> str:
    """A napari colormap for one class's probabilities (its class colour where napari names one)."""
    return {"#f2c94c": "yellow", "#eb5757": "red", "#2f80ed": "blue", "#27ae60": "green", "#bb6bd9": "magenta",
            "#56ccf2": "cyan"}.get(str(color), "gray")


def _probability_arrays(path: str) -> dict[str, Any] | None:
    """``{class: (Z, Y, X) or (Y, X) array}`` of a probabilities file, or None if ``path`` is not one."""
    low = path.rstrip("/\\").lower()
    p = Path(path)
    if low.endswith((".tif", ".tiff")) and p.is_file():
        return _tiff_probabilities(p)
    if not low.endswith(_PROBABILITY_CONTAINERS) or not p.exists():
        return None
    try:
        arrays = _container_arrays(p)
    except Exception:  # noqa: BLE001 - not a container we understand: another reader's turn
        return None
    if len(arrays) < 2 or not all(np.issubdtype(a.dtype, np.floating) for a in arrays.values()):
        return None
    if len({tuple(a.shape) for a in arrays.values()}) != 1:
        return None
    return {k: _lazy(a) if a.ndim == 3 else a for k, a in arrays.items()}


def _container_arrays(path: Path) -> dict[str, Any]:
    """Top-level arrays of a zarr store or an HDF5 file, by name (kept open, read lazily)."""
    if path.suffix.lower() == ".zarr":
        import zarr

        root = zarr.open(str(path), mode="r")
        if isinstance(root, zarr.Array) or root.attrs.get("multiscales") or root.attrs.get("ome"):
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
