"""TIFF backend: multipage and single-page TIFF, read lazily, written zlib-compressed."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from typing import Any

import numpy as np

from ._atomic import atomic_output
from ._base import (
    ImageData,
    ImageReaderWriter,
    Location,
    SliceStack,
    damaged_file_error,
    format_error,
)

logger = logging.getLogger(__name__)

# Length units as written by ImageJ / Fiji, converted to nm.
_UNIT_TO_NM = {
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometers": 1.0,
    "nanometre": 1.0,
    "um": 1e3,
    "µm": 1e3,
    "μm": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "micrometers": 1e3,
    "\\u00B5m": 1e3,
    "mm": 1e6,
    "cm": 1e7,
    "a": 0.1,
    "å": 0.1,
    "angstrom": 0.1,
    "angstroms": 0.1,
}
# TIFF ResolutionUnit tag: 2 = inch, 3 = centimetre (1 = none).
_RESUNIT_TO_NM = {2: 2.54e7, 3: 1e7}
# dtypes ImageJ (and so Fiji's default opener) understands.
_IMAGEJ_DTYPES = (np.dtype("uint8"), np.dtype("uint16"), np.dtype("float32"))


def _round(value: float) -> float:
    return float(f"{value:.6g}")


def _pixel_size(tag: Any) -> float | None:
    """Pixel size in units from an X/YResolution tag holding pixels per unit."""
    if tag is None:
        return None
    value = tag.value
    try:
        num, den = (value if isinstance(value, tuple) else (value, 1))[:2]
        return float(den) / float(num) if num else None
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def tiff_voxel_size(tif: Any) -> tuple[float, float, float] | None:
    """Voxel size ``(z, y, x)`` in nm from emseg/tifffile JSON or ImageJ metadata, else None."""
    for meta in tif.shaped_metadata or ():
        value = meta.get("voxel_size") if isinstance(meta, dict) else None
        if value is not None and len(value) == 3:
            return tuple(float(v) for v in value)  # type: ignore[return-value]
    ij = tif.imagej_metadata
    page = tif.pages[0]
    tags = page.tags
    x = _pixel_size(tags.get("XResolution"))
    y = _pixel_size(tags.get("YResolution"))
    if ij:
        unit = str(ij.get("unit", "")).strip().lower()
        scale = _UNIT_TO_NM.get(unit)
        spacing = ij.get("spacing")
        if scale is None or spacing is None or x is None or y is None:
            return None
        return (_round(float(spacing) * scale), _round(y * scale), _round(x * scale))
    return None  # plain TIFF tags carry no z spacing


#: Words of tifffile log messages meaning the file's structure is broken (it then reads less than is there).
_DAMAGE = ("failed to reshape", "corrupted", "invalid page offset", "truncated", "invalid IFD", "invalid tag")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _tifffile_log_held() -> Any:
    """Hold back tifffile's own log records while a file is parsed.

    A truncated file makes tifffile log errors ("invalid page offset", "ImageJ series metadata
    invalid") and carry on with fewer pages; :func:`check_complete` turns that into one clear
    message.  Records of a file that passes the checks are logged again here, as warnings.
    """
    log = logging.getLogger("tifffile")
    handler, propagate = _Collect(), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield handler.records
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def check_complete(tif: Any, series: Any, path: str, expected_pages: int) -> None:
    """Raise :func:`damaged_file_error` if the series' image data runs past the end of the file.

    Cheap: the contiguous extent of the series when tifffile knows it, else the last page's strips
    (reaching the last page follows the chain of page headers; a broken chain means a cut file).
    ImageJ files whose header promises more images than the series holds are cut too (tifffile
    then falls back to the first page alone).
    """
    size = int(tif.filehandle.size)
    ij = tif.imagej_metadata if tif.is_imagej else None
    if ij:
        promised = int(ij.get("images", 1) or 1)
        if promised > expected_pages:
            raise damaged_file_error(path, f"its ImageJ header announces {promised} images but only "
                                           f"{expected_pages} can be read")
    offset = series.dataoffset
    if offset is not None:
        end = int(offset) + int(series.nbytes)
    else:
        try:
            pages = series.pages
            if len(pages) < expected_pages:
                raise IndexError(len(pages))
            last = pages[expected_pages - 1]
            if last is None:
                raise IndexError(expected_pages - 1)
            end = max((int(o) + int(c) for o, c in zip(last.dataoffsets, last.databytecounts)), default=0)
        except (IndexError, ValueError, OSError):
            raise damaged_file_error(path, f"{expected_pages} pages expected, the page headers end early") from None
    if end > size:
        raise damaged_file_error(path, f"it is {size:,} bytes long but its image data run to byte {end:,}")


class TiffReaderWriter(ImageReaderWriter):
    """Multipage TIFF ``(Z, Y, X)`` or single 2-D TIFF ``(Y, X)``.

    Reading uses :func:`tifffile.memmap` for uncompressed contiguous files and
    otherwise decodes only the pages indexed (:class:`SliceStack`).  Writing
    produces zlib-compressed ImageJ TIFFs (uint8, uint16, float32; readable by
    Fiji, with voxel size as ImageJ spacing/resolution in nm) or plain
    zlib-compressed TIFFs with JSON metadata for other dtypes.
    """

    name = "tiff"
    description = "multipage TIFF or single 2-D TIFF (.tif, .tiff): read and write"
    suffixes = (".tif", ".tiff")
    can_write = True

    def read(self, location: Location) -> ImageData:
        import tifffile

        path = location.original
        with _tifffile_log_held() as held:
            try:
                tif = tifffile.TiffFile(location.file)
            except Exception as exc:  # noqa: BLE001 - any parse failure means "not a readable TIFF"
                raise format_error(path, f"cannot read as TIFF ({exc})") from exc
            try:
                data = self._open(tif, location, path)
                damage = next((r.getMessage() for r in held if any(k in r.getMessage() for k in _DAMAGE)), None)
                if damage is not None:  # tifffile carried on with what it could parse
                    data.close()
                    raise damaged_file_error(path, f"its page headers do not hold together ({damage})")
            except BaseException:
                tif.close()
                raise
        for record in held:  # the file passed the checks: tifffile's remarks are worth a look
            if record.levelno >= logging.WARNING:
                logger.warning("%s: tifffile: %s", path, record.getMessage())
        return data

    def _open(self, tif: Any, location: Location, path: str) -> ImageData:
        import tifffile

        if not tif.series:
            raise format_error(path, "the TIFF holds no image series")
        series = tif.series[0]
        shape = tuple(int(s) for s in series.shape)
        dtype = np.dtype(series.dtype)
        voxel_size = tiff_voxel_size(tif)
        axes = str(series.axes)
        # tifffile stores a (Z, Y, 1) stack, e.g. of 1 x 1 images, as one Z x Y page and names the axes of the
        # shape it records 'YQX' or 'YXQ': that recorded shape is the array as written, (Z, Y, X)
        as_written = tif.is_shaped and len(shape) == 3 and axes[-2:] != "YX" and "S" not in axes
        if len(shape) < 2 or (axes[-2:] != "YX" and not as_written) or sum(s > 1 for s in shape[:-2]) > 1:
            raise format_error(
                path,
                f"the TIFF holds an array of shape {shape} (axes {axes!r}); "
                "emseg reads single-channel 2-D (Y, X) or 3-D (Z, Y, X) images",
            )
        page_shape = shape[-2:]
        n_pages = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        is_2d = len(shape) == 2
        check_complete(tif, series, path, 1 if as_written else n_pages)  # as written: one page holds all
        array: Any = None
        try:
            mm = tifffile.memmap(location.file, mode="r", series=0)
            array = mm.reshape((n_pages,) + page_shape)
        except Exception:  # noqa: BLE001 - compressed or non-contiguous: fall back to pages
            array = None
        if array is None and as_written:  # not one page per z: read it whole (such files are tiny)
            array = np.asarray(tif.asarray(series=0)).reshape((n_pages,) + page_shape)
        if array is not None:
            tif.close()
            closers: list = []
        else:
            lock = threading.Lock()

            def read_pages(zs: list[int], _tif: Any = tif) -> np.ndarray:
                try:
                    with lock:
                        data = _tif.asarray(key=zs if len(zs) > 1 else zs[0], series=0)
                    return np.asarray(data).reshape((len(zs),) + page_shape)
                except Exception as exc:  # noqa: BLE001 - a page that cannot be decoded: a damaged file
                    where = f"page {zs[0]}" if len(zs) == 1 else f"pages {zs[0]}-{zs[-1]}"
                    raise damaged_file_error(path, f"cannot read {where} ({type(exc).__name__}: {exc})") from exc

            array = SliceStack((n_pages,) + page_shape, dtype, read_pages)
            closers = [tif.close]
        logger.debug("opened TIFF %s shape=%s dtype=%s lazy=%s", path, array.shape, dtype, type(array).__name__)
        return ImageData(
            array=array,
            path=path,
            format=self.name,
            is_2d=is_2d,
            voxel_size=voxel_size,
            _closers=closers,
        )

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
        import tifffile

        data = np.asarray(array)
        if data.dtype == bool:
            logger.debug("writing boolean array to TIFF as uint8 0/1")
            data = data.astype(np.uint8)
        if chunks is not None:
            logger.debug("chunks=%s ignored for TIFF (written as one strip set per page)", chunks)
        imagej = data.dtype in _IMAGEJ_DTYPES
        kwargs: dict[str, Any] = {"compression": "zlib", "photometric": "minisblack"}
        if imagej:
            metadata: dict[str, Any] = {"axes": "ZYX" if data.ndim == 3 else "YX"}
            if voxel_size is not None:
                metadata.update(spacing=float(voxel_size[0]), unit="nm")
                kwargs["resolution"] = (1.0 / voxel_size[2], 1.0 / voxel_size[1])
            kwargs.update(imagej=True, metadata=metadata)
        else:
            metadata = {"axes": "ZYX" if data.ndim == 3 else "YX"}
            if voxel_size is not None:
                metadata["voxel_size"] = [float(v) for v in voxel_size]
                metadata["unit"] = "nm"
            json.dumps(metadata)  # fail early on odd values
            kwargs["metadata"] = metadata
        with atomic_output(location.file, overwrite=overwrite) as tmp:
            tifffile.imwrite(tmp, data, **kwargs)

