"""What the widgets share: the image of a layer as a ``(Z, Y, X)`` volume, model names, labels layers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from emseg.napari._colors import class_colors

__all__ = ["BLOCKWISE_VOXELS", "CHUNKED_FORMATS", "LayerImage", "WorkerButtons", "follow_layers", "labels_layer_kwargs", "layer_image", "model_name", "source_path"]

#: Images with more voxels than this (or chunked ones opened from a file) are segmented blockwise
#: into a zarr store beside the input and shown lazily.
BLOCKWISE_VOXELS = 2**27

#: Chunked formats (as emseg.io names them): read block by block, so segmented blockwise.
CHUNKED_FORMATS = ("zarr", "hdf5", "n5")


class LayerImage:
    """An image layer's data as the raw ``(Z, Y, X)`` volume emseg predicts.

    Attributes:
        volume: ``(Z, Y, X)`` array (a 2-D layer gets ``Z = 1``); lazy if the layer's data is.
        is_2d: the layer is a single 2-D image.
        path: the file the layer was opened from (None for data made in napari).
        chunked: the layer was opened from a chunked format (zarr, HDF5, N5) and is read lazily.
    """

    def __init__(self, volume: Any, *, is_2d: bool, path: str | None, chunked: bool, name: str) -> None:
        self.volume, self.is_2d, self.path, self.chunked, self.name = volume, is_2d, path, chunked, name

    @property
    def voxels(self) -> int:
        return int(np.prod(self.volume.shape))

    def blockwise(self) -> bool:
        """Segment through the blockwise engine: a chunked image opened from a file, or a very large one."""
        return self.path is not None and (self.chunked or self.voxels > BLOCKWISE_VOXELS)


def source_path(layer: Any) -> str | None:
    """The file a layer was opened from: emseg's reader records it; napari's own readers set ``source.path``."""
    recorded = (getattr(layer, "metadata", None) or {}).get("emseg", {}).get("path")
    path = recorded or getattr(getattr(layer, "source", None), "path", None)
    if path is None:
        return None
    path = os.fspath(path)
    file = path if Path(path).exists() else path.rsplit(":", 1)[0]  # file.h5:dataset
    return path if Path(file).exists() else None


def layer_image(layer: Any) -> LayerImage:
    """The raw ``(Z, Y, X)`` volume of an image layer.

    Raises:
        ValueError: not an image layer, an RGB(A) image, a multiscale layer without a file, or more than
            three dimensions (channels or time): each message says what to do.
    """
    if layer is None:
        raise ValueError("no image layer chosen: open an EM image (File > Open) and pick it under 'image'")
    if getattr(layer, "_type_string", None) != "image":
        raise ValueError(f"layer {layer.name!r} is not an image layer; pick the raw EM image under 'image'")
    if getattr(layer, "rgb", False):
        raise ValueError(f"image {layer.name!r} is RGB: emseg models take single-channel (greyscale) EM images; "
                         "convert it to greyscale first (e.g. Fiji: Image > Type > 8-bit) and open that")
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]  # the full resolution
    if data.ndim == 2:
        volume, is_2d = data[None], True
    elif data.ndim == 3:
        volume, is_2d = data, False
    else:
        raise ValueError(f"image {layer.name!r} has {data.ndim} dimensions {tuple(data.shape)}; emseg segments a "
                         "2-D image or a (Z, Y, X) stack of one channel: split channels or time points into "
                         "separate layers (right-click the layer > Split Stack)")
    path = source_path(layer)
    fmt = (layer.metadata or {}).get("emseg", {}).get("format")
    if fmt is None and path is not None:
        low = path.lower()
        fmt = next((f for f, ext in (("zarr", ".zarr"), ("hdf5", ".h5"), ("hdf5", ".hdf5"), ("n5", ".n5")) if ext in low),
                   None)
    chunked = fmt in CHUNKED_FORMATS and not isinstance(data, np.ndarray)
    return LayerImage(volume, is_2d=is_2d, path=path, chunked=chunked, name=layer.name)


def model_name(model: str | os.PathLike) -> str:
    """A short name for a model: its run folder for ``model.pt``, else the file or folder name."""
    p = Path(os.fspath(model).rstrip("/\\"))
    if p.name == "model.pt":
        return p.parent.name or "model"
    return p.stem if p.suffix.lower() in (".pt", ".onnx", ".zip") else p.name


def labels_layer_kwargs(name: str, classes: list[str], **metadata: Any) -> dict[str, Any]:
    """``add_labels`` keyword arguments: the class names as features, the fixed class colours, emseg metadata."""
    return {"name": name, "features": {"class": list(classes)}, "colormap": class_colors(list(classes)),
            "metadata": {"emseg": {"classes": list(classes), **metadata}}}


def follow_layers(viewer: Any, *choices: Any) -> None:
    """Keep the layer pickers ``choices`` up to date as layers are added to or removed from ``viewer``;
    fill them now."""
    for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
        for widget in choices:
            event.connect(widget.reset_choices)
    for widget in choices:
        widget.reset_choices()


class WorkerButtons:
    """The Run/Cancel buttons and progress bar of a widget that runs one background worker at a time."""

    def _start(self, worker: Any, *, total: int, desc: str, status: str) -> Any:
        """Connect ``worker``'s error and end to the widget, open napari's progress bar, switch Run/Cancel,
        show ``status`` and start it."""
        from napari.utils import progress as napari_progress

        worker.errored.connect(self._fail)
        worker.finished.connect(self._on_finished)
        self._progress = napari_progress(total=total, desc=desc)
        self.worker = worker
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = status
        worker.start()
        return worker

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False
