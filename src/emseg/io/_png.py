"""PNG backend: single 2-D grayscale images."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_output
from ._base import ImageData, ImageReaderWriter, Location, format_error

logger = logging.getLogger(__name__)

_PNG_DTYPES = (np.dtype("uint8"), np.dtype("uint16"))


def to_grayscale(data: np.ndarray, path: str | Path) -> np.ndarray:
    """Return a ``(Y, X)`` image from a decoded 2-D image.

    Grayscale+alpha ``(Y, X, 2)`` keeps the gray channel; RGB(A) ``(Y, X, 3|4)``
    is accepted only when the colour channels are equal (grey saved as RGB).

    Raises:
        ImageFormatError: for genuine colour images or other shapes.
    """
    if data.ndim == 2:
        return data
    if data.ndim == 3 and data.shape[-1] == 2:
        return data[..., 0]
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        rgb = data[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return np.ascontiguousarray(rgb[..., 0])
        raise format_error(
            str(path), f"colour image of shape {data.shape}; emseg reads single-channel (grayscale) images"
        )
    raise format_error(str(path), f"image of shape {data.shape}; expected a 2-D grayscale image")


def read_png(path: str | Path) -> np.ndarray:
    """Read one PNG file as a ``(Y, X)`` array, dtype as stored (uint8 or uint16)."""
    import imagecodecs

    try:
        data = imagecodecs.png_decode(Path(path).read_bytes())
    except Exception as exc:  # noqa: BLE001 - imagecodecs raises ValueError or PngError
        raise format_error(str(path), f"cannot decode PNG ({exc})") from exc
    return to_grayscale(np.asarray(data), path)


class PngReaderWriter(ImageReaderWriter):
    """A single 2-D PNG image, read as ``(1, Y, X)``; writes 2-D uint8/uint16 only."""

    name = "png"
    description = "PNG 2-D image (.png): read; write 2-D uint8/uint16 only"
    suffixes = (".png",)
    can_write = True

    def read(self, location: Location) -> ImageData:
        image = read_png(location.file)
        return ImageData(array=image[np.newaxis], path=location.original, format=self.name, is_2d=True)

    def write(
        self,
        location: Location,
        array: Any,
        *,
        chunks: tuple[int, ...] | None,
        voxel_size: tuple[float, float, float] | None,
        overwrite: bool,
        zarr_format: int,
    ) -> None:
        import imagecodecs

        data = np.asarray(array)
        if data.ndim == 3 and data.shape[0] == 1:
            data = data[0]
        if data.ndim != 2 or data.dtype not in _PNG_DTYPES:
            raise ValueError(
                f"PNG output {location.original} takes a 2-D (Y, X) uint8 or uint16 array, got "
                f"shape {data.shape} dtype {data.dtype}; write volumes or other dtypes to .tif, .zarr or .h5"
            )
        if voxel_size is not None:
            logger.debug("voxel_size is not stored in PNG output %s", location.original)
        encoded = imagecodecs.png_encode(np.ascontiguousarray(data))
        with atomic_output(location.file, overwrite=overwrite) as tmp:
            Path(tmp).write_bytes(encoded)
