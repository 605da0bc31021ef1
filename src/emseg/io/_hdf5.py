"""HDF5 backend: ``file.h5:path/in/file`` (also .hdf5, .hdf, .he5)."""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_output
from ._base import (
    ImageData,
    ImageReaderWriter,
    Location,
    as_3d,
    format_error,
    voxel_size_from_attrs,
)
from ._chunks import default_chunks, iter_blocks

logger = logging.getLogger(__name__)

_H5_PATH = re.compile(r"^(?P<file>.*?\.(?:h5|hdf5|hdf|he5))(?::(?P<inner>.*))?$", re.IGNORECASE | re.DOTALL)
DEFAULT_DATASET = "data"


def list_datasets(group: Any) -> list[str]:
    """Paths of all datasets under an h5py group, sorted."""
    import h5py

    names: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            names.append(name)

    group.visititems(visit)
    return sorted(names)


class Hdf5ReaderWriter(ImageReaderWriter):
    """A dataset in an HDF5 file, addressed as ``file.h5:path/in/file``.

    Reading returns the :class:`h5py.Dataset` itself (sliced natively, lazily);
    :meth:`ImageData.close` closes the file.  Without a dataset path the file
    must hold exactly one dataset.  Writing defaults to dataset ``"data"``,
    gzip-compressed and chunked, and adds to an existing file; the dataset is
    written under a temporary name and moved into place when complete.
    Voxel size is the ``voxel_size`` (or CREMI ``resolution``) attribute in nm.
    """

    name = "hdf5"
    description = "HDF5 (file.h5:path/in/file; also .hdf5, .hdf): read and write"
    suffixes = (".h5", ".hdf5", ".hdf", ".he5")
    can_write = True

    def parse(self, path: str) -> Location | None:
        match = _H5_PATH.match(path)
        if match is None:
            return None
        return Location(original=path, file=Path(match["file"]), inner=(match["inner"] or "").strip("/"))

    def read(self, location: Location) -> ImageData:
        import h5py

        path = location.original
        try:
            f = h5py.File(location.file, "r")
        except OSError as exc:
            raise format_error(path, f"cannot open as HDF5 ({exc})") from exc
        try:
            inner = location.inner
            if not inner:
                datasets = list_datasets(f)
                if len(datasets) != 1:
                    raise format_error(
                        path,
                        f"the file holds {len(datasets)} datasets; name one as "
                        f"'{location.file}:<dataset>'. Datasets: {datasets}",
                    )
                inner = datasets[0]
            node = f.get(inner)
            if not isinstance(node, h5py.Dataset):
                problem = "is a group, not a dataset" if node is not None else "does not exist"
                raise format_error(
                    path,
                    f"dataset '{inner}' {problem} in {location.file}. "
                    f"Datasets in the file: {list_datasets(f)}",
                )
            array, is_2d = as_3d(node, path)
            voxel_size = voxel_size_from_attrs(node.attrs)
        except BaseException:
            f.close()
            raise
        return ImageData(
            array=array,
            path=path,
            format=self.name,
            is_2d=is_2d,
            voxel_size=voxel_size,
            _closers=[f.close],
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
        import h5py

        inner = location.inner or DEFAULT_DATASET
        target = f"{location.file}:{inner}"
        chunks = tuple(chunks) if chunks is not None else default_chunks(array.shape)
        chunks = tuple(min(c, s) for c, s in zip(chunks, array.shape)) if all(array.shape) else None

        def fill(f: Any, name: str) -> None:
            ds = f.create_dataset(
                name,
                shape=array.shape,
                dtype=array.dtype,
                chunks=chunks,
                compression="gzip",
                compression_opts=4,
            )
            for block in iter_blocks(array.shape, chunks):
                ds[block] = np.asarray(array[block])
            if voxel_size is not None:
                ds.attrs["voxel_size"] = np.asarray(voxel_size, dtype=float)
                ds.attrs["voxel_size_unit"] = "nm"

        if not location.file.exists():
            with atomic_output(location.file, overwrite=True) as tmp:
                with h5py.File(tmp, "w") as f:
                    fill(f, inner)
            return

        try:
            f = h5py.File(location.file, "a")
        except OSError as exc:
            raise format_error(str(location.file), f"exists but cannot be opened as HDF5 ({exc})") from exc
        with f:
            if inner in f and not overwrite:
                raise FileExistsError(
                    f"{target} already exists; pass overwrite=True to replace it"
                )
            parent, _, leaf = inner.rpartition("/")
            tmp_name = f"{parent + '/' if parent else ''}.{leaf}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                fill(f, tmp_name)
                if inner in f:
                    del f[inner]  # space is reclaimed only by h5repack
                f.move(tmp_name, inner)
            except BaseException:
                if tmp_name in f:
                    del f[tmp_name]
                raise
        logger.debug("wrote %s shape=%s dtype=%s", target, array.shape, array.dtype)
