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

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from emseg.io import ImageFormatError, open_image, open_levels, read_probabilities, read_store_attrs
from emseg.napari._colors import class_colors

logger = logging.getLogger(__name__)

__all__ = ["emseg_labels_metadata", "napari_get_reader", "read_layers"]

LayerData = tuple[Any, dict[str, Any], str]


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
    found = read_store_attrs(store, "emseg")
    return found if found is not None and isinstance(found.get("classes"), list) else None


def _labels_layer(path: str, meta: dict[str, Any], name: str) -> LayerData:
    classes = [str(c) for c in meta["classes"]]
    levels, multiscale = open_levels(path)
    # an OME-Zarr labels pyramid: every level, lazily, as napari multiscale data
    data: Any = [_lazy(level) for level in levels] if multiscale else _lazy(levels[0])
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
    """``{class: array}`` of a probabilities file (:func:`emseg.io.read_probabilities`), 3-D ones lazily."""
    arrays = read_probabilities(path)
    if arrays is None:
        return None
    return {k: _lazy(a) if a.ndim == 3 else a for k, a in arrays.items()}
