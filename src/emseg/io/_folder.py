"""Folder-of-slices backend: one 2-D PNG or TIFF per z slice, in natural sort order."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from ._base import ImageData, ImageReaderWriter, Location, SliceStack, format_error
from ._png import read_png, to_grayscale

logger = logging.getLogger(__name__)

_SLICE_SUFFIXES = {".png": "png", ".tif": "tiff", ".tiff": "tiff"}
_DIGITS = re.compile(r"(\d+)")


def natural_sort_key(name: str) -> tuple:
    """Sort key putting ``slice2`` before ``slice10`` (digit runs compare as numbers)."""
    parts = _DIGITS.split(name.lower())
    # split() alternates text, digits, text, ...: equal positions always hold equal types.
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def _read_tiff_slice(path: Path) -> np.ndarray:
    import tifffile

    try:
        data = tifffile.imread(path)
    except Exception as exc:  # noqa: BLE001
        raise format_error(str(path), f"cannot read as TIFF ({exc})") from exc
    data = np.asarray(data)
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    return to_grayscale(data, path)


class SliceFolderReader(ImageReaderWriter):
    """A directory of 2-D PNG or TIFF slices, read lazily as ``(Z, Y, X)``.

    Files are ordered by natural sort (``s2.png`` before ``s10.png``); only the
    slices indexed are decoded.  All slices must share shape and dtype; the
    first slice is read on open to learn them.  Hidden files are ignored.
    """

    name = "png-folder"  # or "tiff-folder", see read()
    description = "folder of 2-D PNG or TIFF slices, one per z, natural sort order (folder/): read"
    suffixes = ()
    can_write = False

    def parse(self, path: str) -> Location | None:
        p = Path(path)
        if p.is_dir():
            return Location(original=path, file=p)
        return None

    def read(self, location: Location) -> ImageData:
        folder = location.file
        files = [
            f
            for f in folder.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in _SLICE_SUFFIXES
        ]
        kinds = {_SLICE_SUFFIXES[f.suffix.lower()] for f in files}
        if not files:
            raise format_error(location.original, "the folder holds no .png, .tif or .tiff slices")
        if len(kinds) > 1:
            raise format_error(location.original, "the folder mixes PNG and TIFF slices; keep one kind")
        kind = kinds.pop()
        files.sort(key=lambda f: natural_sort_key(f.name))
        reader = read_png if kind == "png" else _read_tiff_slice
        first = reader(files[0])
        shape, dtype = first.shape, first.dtype

        def read_slices(zs: list[int]) -> np.ndarray:
            out = np.empty((len(zs),) + shape, dtype=dtype)
            for i, z in enumerate(zs):
                image = first if z == 0 else reader(files[z])
                if image.shape != shape or image.dtype != dtype:
                    raise format_error(
                        str(files[z]),
                        f"slice has shape {image.shape} dtype {image.dtype}, but {files[0].name} has "
                        f"shape {shape} dtype {dtype}; all slices in {folder} must match",
                    )
                out[i] = image
            return out

        logger.debug("opened %d %s slices in %s", len(files), kind, folder)
        return ImageData(
            array=SliceStack((len(files),) + shape, dtype, read_slices),
            path=location.original,
            format=f"{kind}-folder",
            is_2d=False,
        )
