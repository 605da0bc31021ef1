"""The explicit list of backends, chosen by suffix, and the public read/write functions."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ._base import (
    ImageData,
    ImageReaderWriter,
    Location,
    format_error,
    missing_file_error,
    normalize_voxel_size,
    set_format_lines,
)
from ._chunks import validate_chunks
from ._folder import SliceFolderReader
from ._hdf5 import Hdf5ReaderWriter
from ._mrc import MrcReader
from ._n5 import N5Reader
from ._png import PngReaderWriter
from ._tiff import TiffReaderWriter
from ._zarr import ZarrReaderWriter

logger = logging.getLogger(__name__)

#: Backends in the order they are tried.  Containers (HDF5 ``file.h5:ds``,
#: zarr ``store.zarr/inner``) come first because their paths run past the
#: suffix; the folder-of-slices reader is last because it claims any directory.
#: A new format is one new module plus one entry here.
BACKENDS: tuple[ImageReaderWriter, ...] = (
    Hdf5ReaderWriter(),
    ZarrReaderWriter(),
    N5Reader(),
    TiffReaderWriter(),
    PngReaderWriter(),
    MrcReader(),
    SliceFolderReader(),
)


def supported_formats() -> list[str]:
    """One human-readable line per format understood, e.g. ``"HDF5 (file.h5:path/in/file; ...): read and write"``."""
    order = ("tiff", "png", "png-folder", "hdf5", "zarr", "n5", "mrc")
    backends = sorted(BACKENDS, key=lambda b: order.index(b.name) if b.name in order else len(order))
    return [b.description for b in backends]


set_format_lines(supported_formats())


def resolve(path: str | os.PathLike) -> tuple[ImageReaderWriter, Location] | None:
    """The backend claiming ``path`` and its parsed :class:`Location`, or None."""
    text = os.fspath(path)
    for backend in BACKENDS:
        location = backend.parse(text)
        if location is not None:
            return backend, location
    return None


def open_image(path: str | os.PathLike) -> ImageData:
    """Open an image or volume lazily as ``(Z, Y, X)``.

    Args:
        path: a file, folder or container path, e.g. ``"vol.tif"``,
            ``"slices/"``, ``"vol.h5:raw"``, ``"vol.zarr/labels/s0"``,
            ``"tomo.mrc"`` or ``"image.png"``; see :func:`supported_formats`.

    Returns:
        An :class:`ImageData` whose ``array`` is lazy, 3-D ``(Z, Y, X)`` (2-D
        images get ``Z = 1`` and ``is_2d = True``), with the dtype stored in the
        file.  Close it (or use it as a context manager) to release file handles.

    Raises:
        FileNotFoundError: the file, folder or container does not exist.
        ImageFormatError: unknown suffix, unreadable file, or missing dataset
            inside an HDF5/zarr container (the message lists those present).
    """
    text = os.fspath(path)
    found = resolve(text)
    if found is None:
        if not (Path(text).exists() or Path(text).is_symlink()):
            raise missing_file_error(text)
        raise format_error(text, f"unknown format (suffix {Path(text).suffix or 'none'!r})")
    backend, location = found
    if not location.file.exists():
        raise missing_file_error(text, location.file)
    data = backend.read(location)
    logger.debug("opened %s as %s, shape %s, dtype %s", text, data.format, data.array.shape, data.array.dtype)
    return data


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image or volume fully into memory.

    Args:
        path: as for :func:`open_image`.

    Returns:
        A ``(Z, Y, X)`` numpy array (``Z = 1`` for a 2-D image) with the file's dtype.
        It owns its memory: no file stays open.
    """
    with open_image(path) as image:
        array = np.asarray(image.array)
        if isinstance(array, np.memmap) or not array.flags.owndata:
            array = np.array(array, copy=True, subok=False)
    return array


def write_image(
    path: str | os.PathLike,
    array: Any,
    *,
    chunks: tuple[int, ...] | None = None,
    voxel_size: tuple[float, float, float] | None = None,
    overwrite: bool = False,
    zarr_format: int = 3,
) -> None:
    """Write a 2-D ``(Y, X)`` or 3-D ``(Z, Y, X)`` array atomically.

    Formats, chosen by suffix: TIFF (``.tif``/``.tiff``, zlib-compressed,
    ImageJ-compatible for uint8/uint16/float32 so Fiji opens it), zarr
    (``store.zarr`` or ``store.zarr/inner/path``), HDF5 (``file.h5:dataset``,
    dataset ``"data"`` when none is given) and PNG (2-D uint8/uint16 only).
    The dtype is kept (TIFF stores booleans as uint8).  Output is written under
    a temporary name and renamed when complete, so an interrupted write never
    leaves output that looks finished; a lazy input array (e.g.
    :attr:`ImageData.array`) is copied to zarr/HDF5 slab by slab.

    Args:
        path: output path.
        array: ``(Y, X)`` or ``(Z, Y, X)`` array (numpy or numpy-like with
            ``shape``, ``dtype`` and slicing).
        chunks: chunk shape for zarr/HDF5, one int per axis of ``array``;
            default ``(32, 256, 256)`` / ``(512, 512)`` clipped to the shape.
            Ignored for TIFF and PNG.
        voxel_size: ``(z, y, x)`` in nm, stored as attribute ``voxel_size``
            (zarr, HDF5) or ImageJ spacing/resolution (TIFF).
        overwrite: replace existing output; if False an existing output raises.
        zarr_format: 2 or 3, for a new zarr store.

    Raises:
        FileExistsError: the output exists and ``overwrite`` is False.
        ImageFormatError: unknown or read-only format.
        ValueError: bad ``array`` shape, ``chunks``, ``voxel_size`` or ``zarr_format``.
    """
    text = os.fspath(path)
    if not hasattr(array, "shape") or not hasattr(array, "dtype"):
        array = np.asarray(array)
    if len(array.shape) not in (2, 3):
        raise ValueError(
            f"array must be 2-D (Y, X) or 3-D (Z, Y, X), got shape {tuple(array.shape)} for {text}"
        )
    if zarr_format not in (2, 3):
        raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    chunks = validate_chunks(chunks, array.shape)
    voxel_size = normalize_voxel_size(voxel_size)
    found = resolve(text)
    if found is None or not found[0].can_write:
        writable = [b.description for b in BACKENDS if b.can_write]
        what = f"{found[0].name} is read-only here" if found else "unknown output format"
        raise format_error(
            text,
            f"{what}; write to one of: {', '.join(writable)}",
        )
    backend, location = found
    backend.write(
        location,
        array,
        chunks=chunks,
        voxel_size=voxel_size,
        overwrite=overwrite,
        zarr_format=zarr_format,
    )
    logger.debug("wrote %s (%s) shape=%s dtype=%s", text, backend.name, tuple(array.shape), array.dtype)
