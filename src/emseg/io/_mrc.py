"""MRC backend (.mrc, .map, .rec, .st): read-only, memory-mapped."""

from __future__ import annotations

import logging

import numpy as np

from ._base import ImageData, ImageReaderWriter, Location, as_3d, format_error

logger = logging.getLogger(__name__)


class MrcReader(ImageReaderWriter):
    """An MRC volume read with :func:`mrcfile.mmap` as ``(Z, Y, X)`` (sections, rows, columns).

    The header voxel size (Å) is returned in nm; a zero voxel size means
    unknown (None).  The axis mapping fields (MAPC/MAPR/MAPS) are not applied:
    data are returned in file order, as mrcfile gives them.
    """

    name = "mrc"
    description = "MRC (.mrc, .map, .rec, .st): read"
    suffixes = (".mrc", ".map", ".rec", ".st")
    can_write = False

    def read(self, location: Location) -> ImageData:
        import mrcfile

        path = location.original
        try:
            mrc = mrcfile.mmap(location.file, mode="r", permissive=True)
        except Exception as exc:  # noqa: BLE001 - any header/parse failure
            raise format_error(path, f"cannot read as MRC ({exc})") from exc
        try:
            if mrc.data is None:
                raise format_error(path, "the MRC file holds no data")
            array, is_2d = as_3d(mrc.data, path) if mrc.data.ndim != 2 else (mrc.data[np.newaxis], True)
            vs = mrc.voxel_size  # Å, record with x, y, z
            voxel_size = None
            values = (float(vs.z), float(vs.y), float(vs.x))
            if all(v > 0 for v in values):
                voxel_size = tuple(round(v / 10.0, 6) for v in values)
        except BaseException:
            mrc.close()
            raise
        return ImageData(
            array=array,
            path=path,
            format=self.name,
            is_2d=is_2d,
            voxel_size=voxel_size,  # type: ignore[arg-type]
            _closers=[mrc.close],
        )
