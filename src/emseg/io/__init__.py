"""Readers and writers for EM images and volumes.

Every reader returns arrays in ``(Z, Y, X)`` order with the dtype stored in the
file; chunked formats are read lazily.  Backends are chosen by suffix from an
explicit list (``emseg.io._registry.BACKENDS``)::

    from emseg.io import open_image, write_image

    with open_image("raw.h5:volumes/raw") as image:   # lazy
        patch = image.array[0:8, 0:256, 0:256]          # reads only this patch
    write_image("pred.zarr/foreground", patch, voxel_size=(50.0, 4.0, 4.0))

See :func:`supported_formats` for the formats understood.  Beyond single images, ``io`` reads and writes
the other files emseg produces: the chunked label stores of blockwise prediction and their OME-Zarr
pyramids (``_ome_zarr``), probability maps (``_probabilities``) and tables (``_tables``).
"""

from ._atomic import TMP_MARKER, atomic_output, discard, remove_path, remove_stale_temporaries, temporary_sibling
from ._hash import file_sha256
from ._base import ImageData, ImageFormatError, ImageReaderWriter, normalize_voxel_size
from ._chunks import positive_tuple
from ._ome_zarr import (
    create_label_store,
    downsample_mode,
    multiscale_paths,
    multiscales,
    open_levels,
    open_store_array,
    pyramid_factors,
    read_store_attrs,
    update_store_attrs,
    write_label_pyramid,
)
from ._probabilities import probabilities_format, read_class_probabilities, read_probabilities, write_probabilities
from ._registry import open_image, read_image, supported_formats, write_image
from ._registry import resolve as resolve_location
from ._tables import read_table, write_csv_rows, write_table

__all__ = [
    "TMP_MARKER",
    "ImageData",
    "ImageFormatError",
    "ImageReaderWriter",
    "atomic_output",
    "create_label_store",
    "discard",
    "downsample_mode",
    "file_sha256",
    "multiscale_paths",
    "multiscales",
    "normalize_voxel_size",
    "open_image",
    "open_levels",
    "open_store_array",
    "positive_tuple",
    "probabilities_format",
    "pyramid_factors",
    "read_class_probabilities",
    "read_image",
    "read_probabilities",
    "read_store_attrs",
    "read_table",
    "remove_path",
    "remove_stale_temporaries",
    "resolve_location",
    "supported_formats",
    "temporary_sibling",
    "update_store_attrs",
    "write_csv_rows",
    "write_image",
    "write_label_pyramid",
    "write_probabilities",
    "write_table",
]
